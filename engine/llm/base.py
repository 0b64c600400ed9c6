"""One small LLM interface with two real backends: vLLM over its OpenAI-compatible API, and
transformers in-process. Both are prompted completion-style so base models work too."""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence

__all__ = ["LLM", "yes_probability"]

YES_WORDS = ("yes",)
NO_WORDS = ("no",)


def _norm(tok: str) -> str:
    return re.sub(r"[^a-z]", "", tok.lower())


def yes_probability(top_logprobs: dict[str, float]) -> float | None:
    """P(Yes) normalised over Yes/No from a next-token top-logprob table; None if neither is present."""
    yes = [math.exp(lp) for t, lp in top_logprobs.items() if _norm(t) in YES_WORDS]
    no = [math.exp(lp) for t, lp in top_logprobs.items() if _norm(t) in NO_WORDS]
    py, pn = sum(yes), sum(no)
    if py + pn <= 0:
        return None
    return py / (py + pn)


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

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
