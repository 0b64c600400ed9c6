"""Ranking of retrieved candidates: LLM re-ranking (pointwise or listwise) and MMR diversity.

In: hits from :mod:`engine.retrieval`, the :class:`~engine.profiles.UserContext`, the prompt
registry and an LLM getter.
Out: re-ordered, re-scored hits plus a note when the LLM could not be used as asked (the
retrieval order is kept then); prompt builders shared with evaluation and training.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import BackendUnavailableError
from .items import prompt_row
from .llm import LLM
from .llm_feature import rerank_order, yes_scores
from .profiles import UserContext
from .prompts import PromptRegistry
from .store import Hit

logger = logging.getLogger(__name__)

__all__ = [
    "LABELS", "RERANK_MODES", "LLMReranker", "listwise_failure", "listwise_order", "listwise_prompt", "listwise_rerank", "mmr", "pointwise_prompts",
    "rescored", "shuffled_labels",
]

RERANK_MODES = ("none", "pointwise", "listwise", "llm_feature")
"""What ``recommend(rerank=...)`` accepts (see :class:`LLMReranker`)."""

LABELS = [chr(ord("A") + i) for i in range(26)]
"""Candidate labels of listwise prompts (at most 26 candidates per list)."""


def pointwise_prompts(
    prompts: PromptRegistry, rows: Sequence[dict[str, Any]], summary: str | None, history: list[dict[str, Any]], template: str = "preference_yes_no"
) -> list[str]:
    """One Yes/No prompt per candidate row (they share the user part, so prefix caching applies)."""
    return [prompts.render(template, summary=summary, history=history, candidate=r) for r in rows]


def listwise_prompt(
    prompts: PromptRegistry, rows: Sequence[dict[str, Any]], summary: str | None, history: list[dict[str, Any]], template: str = "rank_listwise",
    labels: Sequence[str] | None = None,
) -> str:
    """One prompt listing the candidate rows, in the order given, under ``labels`` (default A, B, ...)."""
    cands = [dict(r, label=lab) for r, lab in zip(rows, labels or LABELS)]
    return prompts.render(template, summary=summary, history=history, candidates=cands)


def shuffled_labels(n: int, key: str, seed: int = 0) -> tuple[list[int], list[str]]:
    """Per user (``key``): the order candidates are shown in (a permutation of ``range(n)``) and
    the label each shown candidate gets (the first ``n`` letters, shuffled). Neither the stage-1
    order nor the alphabet then matches a good answer, so a model that copies either is caught."""
    h = hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(h, "big"))
    return rng.permutation(n).tolist(), [LABELS[i] for i in rng.permutation(n)]


def listwise_failure(chosen: Sequence[str], shown_labels: Sequence[str]) -> str | None:
    """Why an answer measures the prompt rather than the model: ``label_order`` (A, B, C...),
    ``prompt_echo`` (the labels in the order the prompt lists them), ``empty``; None when it is neither."""
    chosen = [c for c in chosen if c in shown_labels]
    if not chosen:
        return "empty"
    if len(chosen) > 1 and chosen == sorted(shown_labels)[: len(chosen)]:
        return "label_order"
    if len(chosen) > 1 and chosen == list(shown_labels)[: len(chosen)]:
        return "prompt_echo"
    return None


def listwise_rerank(
    prompts: PromptRegistry, llm: LLM, hits: list[Hit], ctx: UserContext, seed: int = 0
) -> tuple[list[Hit], str | None, dict[str, Any]]:
    """Listwise LLM order of ``hits`` (stage-1 order in, at most 26) with labels shuffled per user.
    An answer in label order or echoing the prompt's order is a failure: the stage-1 order is kept
    and the note says so. Returns the hits, the note and ``{"failure": kind or None, ...}``."""
    hits = hits[: len(LABELS)]
    shown, labels = shuffled_labels(len(hits), ctx.user_id, seed)
    rows = [prompt_row(hits[i]) for i in shown]
    prompt = llm.chat_prompt(listwise_prompt(prompts, rows, ctx.summary, ctx.history_rows(), labels=labels))
    chosen = llm.choose_sequence(prompt, labels, len(labels))
    failure = listwise_failure(chosen, labels)
    info: dict[str, Any] = {"failure": failure, "chosen": list(chosen), "labels": labels}
    if failure:
        n = len(hits)
        return [rescored(h, (n - r) / n) for r, h in enumerate(hits)], f"LLM listwise answer failed ({failure}); ranker order kept", info
    order, problem = listwise_order(chosen, labels)
    n = len(order)
    return [rescored(hits[shown[i]], (n - r) / n) for r, i in enumerate(order)], problem, info


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
    """Re-ranks candidates with the LLM: ``pointwise`` by P(Yes) (one shared prefix per user),
    ``listwise`` by generated label order (labels shuffled per user, failures fall back),
    ``llm_feature`` by the fitted LLM stage (:mod:`engine.llm_feature`) over the ranker's scores."""

    def __init__(self, prompts: PromptRegistry, llm_getter: Callable[[], LLM]) -> None:
        self.prompts, self.llm = prompts, llm_getter

    def rerank(self, mode: str, hits: list[Hit], ctx: UserContext, stage: Any = None) -> tuple[list[Hit], str | None]:
        """Hits in the LLM's order and a note when the order is not fully the LLM's. Scores are in
        [0, 1] for pointwise/listwise, stage 2's logit for ``llm_feature`` (``stage``: an
        :class:`~engine.llm_feature.LLMStage`; without one the ranker's order is kept, flagged)."""
        try:
            if mode == "llm_feature" and stage is None:
                return hits, "no LLM stage fitted (fit.llm_feature_users); ranker order kept"
            llm = self.llm()
            history, summary = ctx.history_rows(), ctx.summary
            if mode in ("pointwise", "llm_feature"):
                probs = yes_scores(llm, self.prompts, [prompt_row(h) for h in hits], summary, history)
                if len(probs) != len(hits) or any(p is None for p in probs):
                    return hits, "LLM gave no Yes/No probability; retrieval order kept"
                if mode == "llm_feature":
                    order, s = rerank_order(stage, [h.score for h in hits], probs)
                    return [rescored(hits[i], float(s[i])) for i in order], None
                order = sorted(range(len(hits)), key=lambda i: (-float(probs[i]), i))  # type: ignore[arg-type]
                return [rescored(hits[i], float(probs[i])) for i in order], None  # type: ignore[arg-type]
            out, note, _ = listwise_rerank(self.prompts, llm, hits, ctx)
            return out, note
        except BackendUnavailableError as e:
            logger.warning("rerank %s: LLM unavailable, retrieval order kept: %s", mode, e)
            return hits, "LLM unavailable, retrieval order kept"  # details in the log, not in responses
