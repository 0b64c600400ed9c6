"""One small LLM interface with two real backends: vLLM over its OpenAI-compatible API, and
transformers in-process. Both are prompted completion-style so base models work too."""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence

__all__ = ["LLM", "first_json_object", "json_matches", "yes_probability"]

YES_WORDS = ("yes",)
NO_WORDS = ("no",)


# Magic bytes -> MIME type for image data URIs (vLLM decodes any PIL format, but says what it got).
_IMAGE_MAGIC = ((b"\x89PNG", "image/png"), (b"GIF8", "image/gif"), (b"RIFF", "image/webp"), (b"BM", "image/bmp"))


def image_mime(data: bytes) -> str:
    return next((mime for magic, mime in _IMAGE_MAGIC if data.startswith(magic)), "image/jpeg")


def _norm(tok: str) -> str:
    return re.sub(r"[^a-z]", "", tok.lower())


def yes_probability(top_logprobs: dict[str, float]) -> float | None:
    """P(Yes) normalised over Yes/No from a next-token top-logprob table; None if neither is present, or if the
    table is not one (a log-probability that is not a number, NaN or above 0: a server's garbage, not a score)."""
    lps: dict[str, list[float]] = {"yes": [], "no": []}
    for t, lp in top_logprobs.items():
        side = "yes" if _norm(t) in YES_WORDS else "no" if _norm(t) in NO_WORDS else None
        if side is None:
            continue
        try:
            lp = float(lp)
        except (TypeError, ValueError):
            return None
        if not (math.isfinite(lp) or lp == -math.inf) or lp > 1e-6:
            return None
        lps[side].append(lp)
    if not lps["yes"] and not lps["no"]:
        return None
    top = max(lps["yes"] + lps["no"])
    if top == -math.inf:
        return None
    py, pn = (sum(math.exp(lp - top) for lp in lps[k]) for k in ("yes", "no"))  # shifted by the max: no overflow
    return py / (py + pn)


def first_json_object(text: str) -> dict | None:
    """The first complete JSON object in ``text`` (models may wrap it in prose or code fences)."""
    start = text.find("{")
    while start != -1:
        depth, in_str, esc = 0, False, False
        for i in range(start, len(text)):
            c = text[i]
            if in_str:
                if esc:
                    esc = False
                elif c == "\\":
                    esc = True
                elif c == '"':
                    in_str = False
            elif c == '"':
                in_str = True
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    try:
                        obj = json.loads(text[start : i + 1])
                    except ValueError:
                        break
                    return obj if isinstance(obj, dict) else None
        start = text.find("{", start + 1)
    return None


def json_matches(text: str, schema: dict) -> bool:
    """``text`` holds a JSON object with the schema's required keys (values are the caller's to check)."""
    obj = first_json_object(text or "")
    return obj is not None and all(k in obj for k in schema.get("required") or [])


class LLM(ABC):
    """What Persona needs from a language model."""

    name: str

    @abstractmethod
    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = ()) -> list[str]:
        """Greedy completions, one per prompt, in one batched call."""

    @abstractmethod
    def yes_probabilities(self, prompts: Sequence[str]) -> list[float | None]:
        """For prompts ending right before the answer word: P(Yes) over {Yes, No}. One batched call;
        callers put the shared prefix first so the server's prefix cache serves it."""

    @abstractmethod
    def choose_sequence(self, prompt: str, labels: Sequence[str], n: int) -> list[str]:
        """Constrained decoding: ``n`` labels from ``labels`` (comma separated), the most likely first."""

    @abstractmethod
    def count_tokens(self, text: str) -> int: ...

    def chat_prompt(self, text: str) -> str:
        """``text`` as one user turn in the model's chat template, ready for the assistant's answer;
        unchanged for base models without a template (they are prompted completion-style)."""
        return text

    def yes_probabilities_shared(self, prefix: str, suffixes: Sequence[str]) -> list[float | None]:
        """P(Yes) for each ``prefix + suffix``: one user's shared context with one candidate per
        suffix. Backends reuse the prefix's computation where they can (past key values in-process,
        prefix caching in vLLM); this default scores the concatenations."""
        return self.yes_probabilities([prefix + s for s in suffixes])

    def generate_json(self, prompts: Sequence[str], schema: dict | Sequence[dict], max_new_tokens: int) -> list[str]:
        """Completions meant to be one JSON object matching ``schema`` each (constrained decoding
        where the backend has it: vLLM structured outputs). ``schema`` is one schema for all prompts
        or one per prompt (e.g. per-user enums). Callers still validate the result; this default
        generates freely."""
        return self.generate(prompts, max_new_tokens)

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
