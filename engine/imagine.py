"""Personalized image generation (UniMP's generation task).

In: a :class:`~engine.profiles.UserContext` (liked events, their items, the stored preference
summary), an optional user prompt, an optional reference item (its image drives img2img), and an
:class:`ImageGenerator` backend (:class:`DiffusersGenerator` by default).
Out: :class:`GeneratedImages`: PIL images, the exact prompt sent to the pipeline, and the ids of
the history items it drew on.

Item text is untrusted. The prompt uses only the *attributes* of the user's best-liked items
(genres, decade, short keyword tags that match a strict pattern), never titles or descriptions; the
preference summary and the user's own prompt go through the ``fence`` filter, and summary sentences
that look like instructions are dropped.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .cancel import check_cancelled
from .config import ImageConfig
from .errors import BackendUnavailableError, InvalidInputError
from .explain import looks_injected, title_key
from .items import genres_of
from .profiles import UserContext
from .prompts import PromptRegistry

logger = logging.getLogger(__name__)

__all__ = ["DiffusersGenerator", "GeneratedImages", "ImageGenerator", "ImagePrompt", "ImageRequest", "build_prompt",
           "check_request", "generate", "prompt_context", "taste_attributes"]

# A tag is one to three plain words: anything longer or with punctuation is dropped, so a hostile
# catalog cannot smuggle sentences into the prompt through attributes.
_TAG = re.compile(r"^[A-Za-z][A-Za-z'&-]*(?: [A-Za-z][A-Za-z'&-]*){0,2}$")
_KEYWORD_FIELDS = ("keywords", "tags", "themes", "mood")


def _tags(values: Any, limit: int = 24) -> list[str]:
    if isinstance(values, str):
        values = [v.strip() for v in re.split(r"[|,;]", values)]
    if not isinstance(values, list):
        return []
    out = []
    for v in values:
        v = str(v).strip()
        if v and len(v) <= limit and _TAG.match(v) and not looks_injected(v):
            out.append(v.lower())
    return out


def _decade(attrs: dict[str, Any]) -> str | None:
    y = attrs.get("year")
    try:
        y = int(y)
    except (TypeError, ValueError):
        return None
    return f"{y // 10 * 10}s" if 1800 <= y <= 2200 else None


@dataclass(frozen=True)
class ImagePrompt:
    """The prompt and what it was built from."""

    text: str
    item_ids: list[str]
    genres: list[str]
    decade: str | None
    keywords: list[str]


@dataclass
class ImageRequest:
    """What a backend is asked to draw. ``init_image`` (a PIL image) switches to img2img."""

    prompt: str
    n: int = 1
    seed: int | None = None
    steps: int = 2
    width: int = 512
    height: int = 512
    guidance: float = 0.0
    init_image: Any = None
    strength: float = 0.6


@dataclass
class GeneratedImages:
    """Result of :meth:`Engine.generate_image`."""

    user_id: str
    images: list[Any]
    prompt: str
    item_ids: list[str]
    seed: int | None
    steps: int
    size: tuple[int, int]
    reference_item: str | None = None
    genres: list[str] = field(default_factory=list)
    nsfw: list[bool] = field(default_factory=list)


def best_liked(ctx: UserContext, n: int) -> list[str]:
    """Ids of the user's ``n`` best-liked items: highest rating first, then most recent."""
    order = sorted(enumerate(ctx.pos), key=lambda t: (-(t[1].rating if t[1].rating is not None else 0.0), -t[0]))
    out: list[str] = []
    for _, e in order:
        if e.item_id in ctx.items and e.item_id not in out:
            out.append(e.item_id)
        if len(out) == n:
            break
    return out


def taste_attributes(ctx: UserContext, n: int = 5) -> tuple[list[str], list[str], str | None, list[str]]:
    """(item ids, top genres, most common decade, keywords) of the user's best-liked items."""
    ids = best_liked(ctx, n)
    genres: Counter[str] = Counter()
    decades: Counter[str] = Counter()
    keywords: Counter[str] = Counter()
    for rank, iid in enumerate(ids):
        attrs = ctx.items[iid].payload.get("attributes") or {}
        w = 1.0 + 0.01 * (len(ids) - rank)  # ties go to the better-liked item
        for g in _tags(genres_of(attrs)):
            genres[g] += w
        d = _decade(attrs)
        if d:
            decades[d] += w
        for f in _KEYWORD_FIELDS:
            for k in _tags(attrs.get(f))[:3]:
                keywords[k] += w
    top = [g for g, _ in genres.most_common(3)]
    return ids, top, (decades.most_common(1)[0][0] if decades else None), [k for k, _ in keywords.most_common(4)]


_NEGATION = re.compile(r"\b(not|no|never|rarely|dislikes?|avoids?|hates?|less|without)\b", re.I)


def _safe_summary(summary: str | None, titles: list[str]) -> str | None:
    """Summary sentences fit for an image prompt: none that look like instructions, none naming a
    history title (item text), none with a negation (text encoders would draw the disliked genre)."""
    if not summary:
        return None
    keys = [t for t in (title_key(x) for x in titles) if len(t) >= 2]
    kept = []
    for s in re.split(r"(?<=[.!?])\s+", summary):
        low = s.lower()
        if s.strip() and not looks_injected(s) and not _NEGATION.search(s) and not any(k in low for k in keys):
            kept.append(s.strip())
    return " ".join(kept)[:200] or None


def prompt_context(
    ctx: UserContext, user_prompt: str | None = None, reference: dict[str, Any] | None = None, history_items: int = 5
) -> dict[str, Any]:
    """The variables of ``image_prompt`` templates (attributes only; see the module docstring), plus ``item_ids``."""
    ids, genres, decade, keywords = taste_attributes(ctx, history_items)
    ref = None
    if reference is not None:
        attrs = reference.get("attributes") or {}
        ref = {"genres": _tags(genres_of(attrs))[:3], "decade": _decade(attrs)}
    titles = [h.payload.get("title") or "" for h in ctx.items.values()]
    return {"user_prompt": (user_prompt or "").strip() or None, "genres": genres, "decade": decade, "keywords": keywords,
            "summary": _safe_summary(ctx.summary, titles), "reference": ref, "item_ids": ids}


def build_prompt(
    ctx: UserContext, prompts: PromptRegistry, user_prompt: str | None = None, *, reference: dict[str, Any] | None = None,
    history_items: int = 5, template: str = "image_prompt",
) -> ImagePrompt:
    """The personalized prompt: the user's prompt (or a proposed item: a poster for a new film in
    their top genres) blended with the attributes of their best-liked items and their summary."""
    var = prompt_context(ctx, user_prompt, reference, history_items)
    ids = var.pop("item_ids")
    text = prompts.render(template, **var)
    return ImagePrompt(text=" ".join(text.split()), item_ids=ids, genres=var["genres"], decade=var["decade"], keywords=var["keywords"])


def check_request(cfg: ImageConfig, n: int, steps: int | None, size: int | tuple[int, int] | None) -> tuple[int, int, int]:
    """Validated (steps, width, height); InvalidInputError (HTTP 422) past the configured limits."""
    if not 1 <= n <= cfg.max_images:
        raise InvalidInputError(f"n must be between 1 and {cfg.max_images}")
    steps = cfg.steps if steps is None else steps
    if not 1 <= steps <= cfg.max_steps:
        raise InvalidInputError(f"steps must be between 1 and {cfg.max_steps}")
    w, h = (cfg.size, cfg.size) if size is None else (size, size) if isinstance(size, int) else tuple(size)
    for side in (w, h):
        if not 64 <= side <= cfg.max_size or side % 8:
            raise InvalidInputError(f"image size must be a multiple of 8 between 64 and {cfg.max_size}")
    return steps, int(w), int(h)


class ImageGenerator(ABC):
    """A text-to-image backend (img2img when the request carries ``init_image``)."""

    @abstractmethod
    def generate(self, request: ImageRequest) -> tuple[list[Any], list[bool]]:
        """``request.n`` PIL images and, per image, whether the safety checker flagged it."""


class DiffusersGenerator(ImageGenerator):
    """A diffusers pipeline, loaded by name on first use (``ImageConfig.model``), or injected:
    ``DiffusersGenerator(pipeline=StableDiffusionPipeline(...))``. The img2img pipeline is derived
    from the same components (no second copy of the weights)."""

    def __init__(self, config: ImageConfig | None = None, *, pipeline: Any = None) -> None:
        self.config = config or ImageConfig()
        self._pipe, self._img2img = pipeline, None
        self._lock = threading.Lock()

    @property
    def device(self) -> str:
        if self.config.device != "auto":
            return self.config.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def pipeline(self) -> Any:
        with self._lock:
            if self._pipe is None:
                self._pipe = self._load()
            return self._pipe

    def _load(self) -> Any:
        try:
            import torch
            from diffusers import AutoPipelineForText2Image
        except ImportError as e:
            raise BackendUnavailableError("image generation needs diffusers: pip install 'persona-engine[diffusers]'") from e
        device = self.device
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(self.config.model, torch_dtype=dtype)
        except Exception as e:
            raise BackendUnavailableError(f"image model {self.config.model!r} unavailable: {e}") from e
        if self.config.safety_checker and getattr(pipe, "safety_checker", None) is None:
            pipe = self._with_safety_checker(pipe, dtype)
        return pipe.to(device)

    def _with_safety_checker(self, pipe: Any, dtype: Any) -> Any:
        if "safety_checker" not in getattr(pipe, "components", {}):
            raise BackendUnavailableError(f"{type(pipe).__name__} has no safety checker slot; set image.safety_checker=false to run it unchecked")
        try:
            from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
            from transformers import CLIPImageProcessor

            checker = StableDiffusionSafetyChecker.from_pretrained(self.config.safety_checker_model, torch_dtype=dtype)
            processor = CLIPImageProcessor.from_pretrained(self.config.safety_checker_model)
        except Exception as e:
            raise BackendUnavailableError(f"safety checker {self.config.safety_checker_model!r} unavailable (set image.safety_checker=false to run without): {e}") from e
        pipe.register_modules(safety_checker=checker, feature_extractor=processor)
        if hasattr(pipe, "register_to_config"):
            pipe.register_to_config(requires_safety_checker=True)
        return pipe

    def _img2img_pipeline(self) -> Any:
        pipe = self.pipeline()
        with self._lock:
            if self._img2img is None:
                from diffusers import AutoPipelineForImage2Image

                self._img2img = AutoPipelineForImage2Image.from_pipe(pipe)
            return self._img2img

    def generate(self, request: ImageRequest) -> tuple[list[Any], list[bool]]:
        import torch

        pipe = self._img2img_pipeline() if request.init_image is not None else self.pipeline()
        device = getattr(pipe, "device", torch.device("cpu"))
        gen = None
        if request.seed is not None:
            gen = torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(int(request.seed))

        def on_step(_pipe: Any, _step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            check_cancelled()  # a client that left stops the denoising loop
            return kwargs

        kw: dict[str, Any] = dict(
            prompt=request.prompt, num_images_per_prompt=request.n, guidance_scale=request.guidance, generator=gen,
            callback_on_step_end=on_step, output_type="pil",
        )
        if request.init_image is not None:
            init = request.init_image.convert("RGB").resize((request.width, request.height))
            # diffusers runs int(steps * strength) steps: ask for enough that `steps` of them run.
            kw.update(image=init, strength=request.strength, num_inference_steps=max(request.steps, math.ceil(request.steps / request.strength)))
        else:
            kw.update(num_inference_steps=request.steps, width=request.width, height=request.height)
        check_cancelled()
        with torch.inference_mode():
            out = pipe(**kw)
        flags = getattr(out, "nsfw_content_detected", None) or [False] * len(out.images)
        return list(out.images), [bool(f) for f in flags]


def generate(
    ctx: UserContext, prompts: PromptRegistry, components: Any, cfg: ImageConfig, *, prompt: str | None = None,
    n: int = 1, reference: dict[str, Any] | None = None, seed: int | None = None,
    steps: int | None = None, size: int | tuple[int, int] | None = None,
) -> GeneratedImages:
    """Validate the request, build the personalized prompt, and run ``components.image_generator``
    (img2img from ``reference``'s image, read through ``components.read_image``, when given)."""
    steps, w, h = check_request(cfg, n, steps, size)
    if prompt is not None and len(prompt) > 1000:
        raise InvalidInputError("prompt must be at most 1000 characters")
    init_image = None
    if reference is not None:
        if not reference.get("image"):
            raise InvalidInputError(f"item {reference.get('item_id')!r} has no image to start from")
        init_image = components.read_image(reference["image"])
    generator: ImageGenerator = components.image_generator
    ip = build_prompt(ctx, prompts, prompt, reference=reference, history_items=cfg.history_items)
    req = ImageRequest(ip.text, n=n, seed=seed, steps=steps, width=w, height=h, guidance=cfg.guidance, init_image=init_image, strength=cfg.strength)
    images, flags = generator.generate(req)
    return GeneratedImages(
        user_id=ctx.user_id, images=images, prompt=ip.text, item_ids=ip.item_ids, seed=seed, steps=steps, size=(w, h),
        reference_item=(reference or {}).get("item_id"), genres=ip.genres, nsfw=flags,
    )
