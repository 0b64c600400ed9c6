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

    def chat_prompt(self, text: str) -> str:
        """``text`` as one user turn in the model's chat template, ready for the assistant's answer;
        unchanged for base models without a template (they are prompted completion-style)."""
        return text

    def yes_probabilities_shared(self, prefix: str, suffixes: Sequence[str]) -> list[float | None]:
        """P(Yes) for each ``prefix + suffix``: one user's shared context with one candidate per
        suffix. Backends reuse the prefix's computation where they can (past key values in-process,
        prefix caching in vLLM); this default scores the concatenations."""
        return self.yes_probabilities([prefix + s for s in suffixes])

    def generate_json(self, prompts: Sequence[str], schema: dict, max_new_tokens: int) -> list[str]:
        """Completions meant to be one JSON object matching ``schema`` each (constrained decoding
        where the backend has it: vLLM structured outputs). Callers still validate the result; this
        default generates freely."""
        return self.generate(prompts, max_new_tokens)

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
