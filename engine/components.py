"""Models the engine runs: the text encoder, CLIP, and the LLM, loaded on first use or injected.

In: :class:`Settings` (what to load), or ready objects passed to :class:`Components` (tests, apps
sharing one model between engines).
Out: ``text_encoder``, ``clip`` (None when disabled or its weights cannot load: documented
fallback), ``clip_text``/``clip_image`` encoders (the one CLIP encoding path of ingest and search),
``llm()``, ``image_generator`` (diffusers, for :mod:`engine.imagine`), and the item indexer and catalog reader built from them.

This is the only engine module that imports ``indexers`` (lazily, so opening an engine stays fast
and ``indexers`` may import engine's base modules without a cycle).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from .config import Settings
from .errors import BackendUnavailableError, PersonaError
from .llm import LLM, open_llm
from .prompts import PromptRegistry
from .store import VectorStore

logger = logging.getLogger(__name__)

__all__ = ["Components"]


class Components:
    """Lazily built models. Pass ``text_encoder``, ``clip`` (an ``indexers.clip.ClipModel``) or
    ``llm`` or ``image_generator`` (an ``engine.imagine.ImageGenerator``) to use ready objects instead of loading them from the settings; the engine binds its
    settings with :meth:`bind` when it opens."""

    def __init__(
        self, settings: Settings | None = None, *, text_encoder: Any = None, clip: Any = None, llm: LLM | None = None, image_generator: Any = None
    ) -> None:
        self.settings = settings
        self._lock = threading.RLock()
        self._text, self._clip, self._llm = text_encoder, clip, llm
        self._image = image_generator
        self._clip_error: str | None = None
        self._llm_error: str | None = None

    def bind(self, settings: Settings) -> Components:
        """Use ``settings`` for whatever is not injected; returns self."""
        self.settings = settings
        return self

    @property
    def _settings(self) -> Settings:
        if self.settings is None:
            self.settings = Settings()
        return self.settings

    @property
    def text_encoder(self) -> Any:
        with self._lock:
            if self._text is None:
                from indexers.text import SentenceTransformerEncoder

                self._text = SentenceTransformerEncoder(self._settings.text)
            return self._text

    @property
    def clip(self) -> Any:
        """The CLIP model, or None when disabled or its weights cannot be loaded (documented fallback)."""
        with self._lock:
            cfg = self._settings.clip
            if self._clip is None and self._clip_error is None and cfg.enabled:
                try:
                    from indexers.clip import ClipModel

                    self._clip = ClipModel(cfg)
                except PersonaError as e:
                    if cfg.required:
                        raise
                    self._clip_error = str(e)
                    logger.warning("CLIP disabled, indexing without image vectors: %s", e)
            return self._clip

    @property
    def clip_error(self) -> str | None:
        """Why CLIP is unavailable (None when it loaded or was not tried)."""
        return self._clip_error

    @property
    def meaningful_clip(self) -> bool:
        """CLIP vectors help ranking; random-weight CLIP (``pretrained=None``) would only add noise."""
        return self._settings.clip.enabled and self._settings.clip.pretrained is not None

    def clip_dim(self) -> int | None:
        """CLIP's vector size from its config (no weights loaded); None when disabled or unknown."""
        if not self._settings.clip.enabled:
            return None
        try:
            import open_clip

            return int(open_clip.get_model_config(self._settings.clip.model)["embed_dim"])
        except Exception:
            return None

    @property
    def clip_text(self) -> Any:
        """CLIP text encoder (named vector ``clip_text``), or None without CLIP."""
        from indexers.clip import ClipTextEncoder

        return ClipTextEncoder(self.clip) if self.clip is not None else None

    @property
    def clip_image(self) -> Any:
        """CLIP image encoder (named vector ``image``), or None without CLIP."""
        from indexers.clip import ClipImageEncoder

        return ClipImageEncoder(self.clip) if self.clip is not None else None

    def decode_image(self, data: bytes, ref: str = "image") -> Any:
        """An RGB image from bytes, with the ingest limits (pixel bombs refused)."""
        from indexers.images import decode_image

        return decode_image(data, self._settings.ingest.max_image_pixels, ref)

    def llm(self) -> LLM:
        """The LLM backend; raises BackendUnavailableError when it is disabled or cannot load."""
        with self._lock:
            if self._llm is None:
                if self._llm_error is not None:
                    raise BackendUnavailableError(self._llm_error)
                try:
                    llm = open_llm(self._settings.llm)
                except PersonaError as e:
                    self._llm_error = str(e)
                    raise BackendUnavailableError(f"LLM unavailable: {e}") from e
                if llm is None:
                    self._llm_error = "LLM disabled (llm.backend=none)"
                    raise BackendUnavailableError(self._llm_error)
                self._llm = llm
            return self._llm

    @property
    def image_generator(self) -> Any:
        """The image backend (:class:`engine.imagine.DiffusersGenerator` from ``settings.image`` unless
        injected; its weights load on the first image). BackendUnavailableError when disabled."""
        with self._lock:
            if self._image is None:
                if not self._settings.image.enabled:
                    raise BackendUnavailableError("image generation disabled (image.enabled=false)")
                from .imagine import DiffusersGenerator

                self._image = DiffusersGenerator(self._settings.image)
            return self._image

    def read_image(self, ref: str) -> Any:
        """An RGB image from a stored item's image reference (path or URL), with the ingest limits."""
        from indexers.images import read_image_bytes

        data = read_image_bytes(ref, None, self._settings.ingest.max_image_bytes)
        return self.decode_image(data, ref)

    def text_encoder_factory(self) -> Any:
        """A picklable zero-argument callable that builds this text encoder elsewhere (a Ray actor):
        the injected encoder itself, or a fresh one from the settings."""
        if self._text is not None:
            return _Ready(self._text)
        import functools

        from indexers.text import SentenceTransformerEncoder

        return functools.partial(SentenceTransformerEncoder, self._settings.text)

    def indexer(
        self, store: VectorStore, collection: str, prompts: PromptRegistry, recount_popularity: Any = None, ray: Any = None, records: Any = None
    ) -> Any:
        """An ``indexers.ingest.ItemIndexer`` writing ``collection`` with these models
        (``recount_popularity(item_ids)``: see ``ItemIndexer``). With ``ray`` (an
        ``engine.batch.RayBatch``) the text vectors of ``records`` are computed on Ray first."""
        from indexers.ingest import ItemIndexer

        summarizer = None
        if self._settings.ingest.summarizer == "llm":
            from indexers.summarize import LLMItemSummarizer

            summarizer = LLMItemSummarizer(self.llm, prompts, vision=self._settings.llm.vision)
        text = self.text_encoder
        if ray is not None:
            from indexers.distributed import ray_text_encoder

            text = ray_text_encoder(records, ray, text, self.text_encoder_factory())
        return ItemIndexer(store, collection, text, self.clip_image, self.clip_text, summarizer=summarizer, config=self._settings.ingest,
                           recount_popularity=recount_popularity)

    @staticmethod
    def read_catalog(path: str | Path, image_dir: str | Path | None = None, allow_outside: bool = False) -> Any:
        """Item records from a JSONL/CSV/Parquet catalog file."""
        from indexers.catalog import read_catalog

        return read_catalog(path, image_dir, allow_outside)

    def close(self) -> None:
        """Close the LLM if one was loaded or injected."""
        with self._lock:
            if self._llm is not None:
                self._llm.close()


class _Ready:
    """A factory returning an existing object (pickled with it to where it is called)."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __call__(self) -> Any:
        return self.obj
