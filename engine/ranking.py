"""Ranking of retrieved candidates: LLM re-ranking (pointwise or listwise) and MMR diversity.

In: hits from :mod:`engine.retrieval`, the :class:`~engine.profiles.UserContext`, the prompt
registry and an LLM getter.
Out: re-ordered, re-scored hits plus a note when the LLM could not be used as asked (the
retrieval order is kept then); prompt builders shared with evaluation and training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import BackendUnavailableError
from .items import prompt_row
from .llm import LLM
from .profiles import UserContext
from .prompts import PromptRegistry
from .store import Hit

__all__ = ["LABELS", "LLMReranker", "listwise_order", "listwise_prompt", "mmr", "pointwise_prompts", "rescored"]

LABELS = [chr(ord("A") + i) for i in range(26)]
"""Candidate labels of listwise prompts (at most 26 candidates per list)."""


def pointwise_prompts(
    prompts: PromptRegistry, rows: Sequence[dict[str, Any]], summary: str | None, history: list[dict[str, Any]], template: str = "preference_yes_no"
) -> list[str]:
    """One Yes/No prompt per candidate row (they share the user part, so prefix caching applies)."""
    return [prompts.render(template, summary=summary, history=history, candidate=r) for r in rows]


def listwise_prompt(
    prompts: PromptRegistry, rows: Sequence[dict[str, Any]], summary: str | None, history: list[dict[str, Any]], template: str = "rank_listwise"
) -> str:
    """One prompt listing the candidate rows under labels A, B, ... (see :data:`LABELS`)."""
    cands = [dict(r, label=lab) for r, lab in zip(rows, LABELS)]
    return prompts.render(template, summary=summary, history=history, candidates=cands)


def listwise_order(chosen: Sequence[str], labels: Sequence[str]) -> tuple[list[int], str | None]:
    """Candidate indexes in the order the LLM chose their labels. Unknown and repeated labels are
    dropped and candidates it left out follow in their original order; the note says which happened."""
    valid, seen = [], set()
    for lab in chosen:
        if lab in labels and lab not in seen:
            valid.append(lab)
            seen.add(lab)
    problem = None
    if len(valid) != len(chosen):
        problem = "LLM ranking had unknown or duplicate ids; they were dropped"
    if len(valid) < len(labels):
        problem = problem or "LLM ranking was truncated; the rest kept retrieval order"
    order = [list(labels).index(lab) for lab in valid] + [i for i, lab in enumerate(labels) if lab not in seen]
    return order, problem


def rescored(h: Hit, score: float) -> Hit:
    return Hit(id=h.id, score=score, payload=h.payload, vectors=h.vectors)


def mmr(hits: list[Hit], k: int, lam: float) -> list[Hit]:
    """Maximal marginal relevance on the ``text`` vectors: ``lam`` weighs the (min-max scaled)
    score against the similarity to the items already chosen. Returns up to ``k`` hits."""
    vecs = [np.asarray((h.vectors or {}).get("text", []), np.float32) for h in hits]
    chosen: list[int] = []
    scores = np.array([h.score for h in hits], np.float32)
    if scores.size and scores.max() > scores.min():
        scores = (scores - scores.min()) / (scores.max() - scores.min())
    while len(chosen) < min(k, len(hits)):
        best, best_val = -1, -1e9
        for i in range(len(hits)):
            if i in chosen:
                continue
            sim = max((float(vecs[i] @ vecs[j]) for j in chosen if vecs[i].size and vecs[j].size), default=0.0)
            val = lam * scores[i] - (1 - lam) * sim
            if val > best_val:
                best, best_val = i, val
        chosen.append(best)
    return [hits[i] for i in chosen]


class LLMReranker:
    """Re-ranks candidates with the LLM: ``pointwise`` by P(Yes), ``listwise`` by generated label order."""

    def __init__(self, prompts: PromptRegistry, llm_getter: Callable[[], LLM]) -> None:
        self.prompts, self.llm = prompts, llm_getter

    def rerank(self, mode: str, hits: list[Hit], ctx: UserContext) -> tuple[list[Hit], str | None]:
        """Hits in the LLM's order with scores in [0, 1], and a note when the order is not fully the LLM's."""
        try:
            llm = self.llm()
            history, summary = ctx.history_rows(), ctx.summary
            if mode == "pointwise":
                probs = llm.yes_probabilities(pointwise_prompts(self.prompts, [prompt_row(h) for h in hits], summary, history))
                if len(probs) != len(hits) or any(p is None for p in probs):
                    return hits, "LLM gave no Yes/No probability; retrieval order kept"
                order = sorted(range(len(hits)), key=lambda i: (-float(probs[i]), i))  # type: ignore[arg-type]
                return [rescored(hits[i], float(probs[i])) for i in order], None  # type: ignore[arg-type]
            hits = hits[: len(LABELS)]
            labels = LABELS[: len(hits)]
            prompt = listwise_prompt(self.prompts, [prompt_row(h) for h in hits], summary, history)
            order, problem = listwise_order(llm.choose_sequence(prompt, labels, len(labels)), labels)
            n = len(order)
            return [rescored(hits[i], (n - r) / n) for r, i in enumerate(order)], problem
        except BackendUnavailableError as e:
            return hits, f"LLM unavailable, retrieval order kept: {e}"
