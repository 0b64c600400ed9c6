"""Stage 2: the LLM's P(Yes) as a feature beside the learned ranker's own score, over its top-N.

In: the learned ranker's list (hits with stage-1 scores, best first), the
:class:`~engine.profiles.UserContext`, the prompt registry and an LLM.
Out: :func:`yes_scores` (P(Yes) per candidate, one shared prefix per user: the prompts differ only in
the candidate part, so the LLM computes the user part once); :func:`list_features` (per-candidate
feature rows); :class:`LLMStage` (a small L2-regularised logistic model over those rows, trained on
fitted users' labels: the last stored event of each user, ranked by the label-free stage-1 models
the ranker was trained with) and :func:`rerank` (top-N reordered by it, the rest unchanged).

Whether it helps is measured by ``bench/llm_ablation.py`` (docs/llm-ablation.md); it is off by
default (``retrieval.rerank="llm_feature"`` turns it on; ``fit.llm_feature_users`` > 0 trains it).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .llm import LLM
from .prompts import PromptRegistry
from .types import sort_events

logger = logging.getLogger(__name__)

__all__ = ["FEATURES", "LLMStage", "fit_and_save", "list_features", "load_stage", "rerank_order", "shared_prompts", "train_stage", "yes_scores"]

FEATURES = ("stage1_centered", "log_rank", "llm_logit", "llm_logit_centered")
"""Per-candidate features: stage-1 score minus the list's mean, log(1 + rank), logit P(Yes) and
logit P(Yes) minus the list's mean (the model's scale differs between users; the centred value is
what orders a list)."""

FILE = "llm_stage.json"


def shared_prompts(llm: LLM, prompts: PromptRegistry, rows: Sequence[dict[str, Any]], summary: str | None,
                   history: list[dict[str, Any]], template: str = "preference_yes_no") -> tuple[str, list[str]]:
    """The Yes/No prompts for ``rows`` (in the model's chat template) split into the common prefix
    (the user's part) and one suffix per candidate."""
    full = [llm.chat_prompt(prompts.render(template, summary=summary, history=history, candidate=r)) for r in rows]
    prefix = os.path.commonprefix(full)
    # Cut at the last line break so the prefix ends on a token boundary in every tokenizer.
    cut = prefix.rfind("\n") + 1
    prefix = prefix[:cut] if cut > 0 else ""
    return prefix, [p[len(prefix):] for p in full]


def yes_scores(llm: LLM, prompts: PromptRegistry, rows: Sequence[dict[str, Any]], summary: str | None,
               history: list[dict[str, Any]], template: str = "preference_yes_no") -> list[float | None]:
    """P(Yes) per candidate row, scored with one shared prefix per user."""
    if not rows:
        return []
    prefix, suffixes = shared_prompts(llm, prompts, rows, summary, history, template)
    return llm.yes_probabilities_shared(prefix, suffixes)


def _logit(p: float | None) -> float:
    p = 0.5 if p is None or not math.isfinite(p) else min(max(float(p), 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def list_features(stage1_scores: Sequence[float], probs: Sequence[float | None]) -> np.ndarray:
    """Feature rows (:data:`FEATURES`) for one user's list, best stage-1 first."""
    s = np.asarray(stage1_scores, np.float64)
    lg = np.array([_logit(p) for p in probs], np.float64)
    rank = np.log1p(np.arange(len(s), dtype=np.float64))
    return np.stack([s - s.mean(), rank, lg, lg - lg.mean()], axis=1)


@dataclass
class LLMStage:
    """Logistic model over :data:`FEATURES` (standardised): ``score = w . (x - mu) / sd + b``."""

    weights: list[float]
    bias: float
    mean: list[float]
    std: list[float]
    info: dict[str, Any] = field(default_factory=dict)

    def score(self, X: np.ndarray) -> np.ndarray:
        Z = (np.asarray(X, np.float64) - np.asarray(self.mean)) / np.asarray(self.std)
        return Z @ np.asarray(self.weights) + self.bias

    @classmethod
    def train(cls, lists: Sequence[np.ndarray], labels: Sequence[np.ndarray], l2: float = 1.0, info: dict | None = None) -> LLMStage:
        """Fit on per-user feature rows and 0/1 labels (the held-out item is 1) by Newton's method."""
        X = np.concatenate(list(lists))
        y = np.concatenate(list(labels)).astype(np.float64)
        mu, sd = X.mean(0), X.std(0)
        sd[sd < 1e-9] = 1.0
        Z = np.hstack([(X - mu) / sd, np.ones((len(X), 1))])
        w = np.zeros(Z.shape[1])
        reg = np.full(Z.shape[1], l2)
        reg[-1] = 0.0  # the bias is not shrunk
        for _ in range(50):
            p = 1 / (1 + np.exp(-(Z @ w)))
            g = Z.T @ (p - y) + reg * w
            H = (Z * (p * (1 - p))[:, None]).T @ Z + np.diag(reg) + 1e-9 * np.eye(len(w))
            step = np.linalg.solve(H, g)
            w -= step
            if np.abs(step).max() < 1e-8:
                break
        meta = {"rows": int(len(y)), "positives": int(y.sum()), "features": list(FEATURES), **(info or {})}
        return cls(w[:-1].tolist(), float(w[-1]), mu.tolist(), sd.tolist(), meta)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FILE
        path.write_text(json.dumps({"features": list(FEATURES), "weights": self.weights, "bias": self.bias,
                                    "mean": self.mean, "std": self.std, "info": self.info}, indent=1))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> LLMStage | None:
        """The stage saved in ``directory``, or None when that fitted model has none."""
        path = Path(directory) / FILE
        if not path.exists():
            return None
        d = json.loads(path.read_text())
        if d.get("features") != list(FEATURES):
            logger.warning("%s was trained on other features; ignored", path)
            return None
        return cls(d["weights"], d["bias"], d["mean"], d["std"], d.get("info") or {})


def rerank_order(stage: LLMStage, stage1_scores: Sequence[float], probs: Sequence[float | None]) -> tuple[list[int], np.ndarray]:
    """Indexes of the list in stage 2's order (ties keep stage-1 order) and the stage-2 scores."""
    s = stage.score(list_features(stage1_scores, probs))
    order = sorted(range(len(s)), key=lambda i: (-float(s[i]), i))
    return order, s


def train_stage(model: Any, histories: dict[str, list], context: Any, rows: Any, llm: LLM, prompts: PromptRegistry,
                top_n: int, users: int, seed: int = 0, progress: bool = False) -> LLMStage | None:
    """Train the stage on fitted users' labels, as :meth:`Engine.fit` trains the ranker: for up to
    ``users`` sampled users with 3+ events, the last stored event is the label, the earlier ones the
    history; the list is the ranker's top-``top_n`` from the label-free stage-1 models it was trained
    with (``model.train_stage1[0]``), so the label never shaped its own candidates.

    ``context(user_id, events)`` gives the :class:`~engine.profiles.UserContext`; ``rows(item_ids)``
    the prompt rows. Returns None when no sampled user's label reaches the top-N."""
    s1 = getattr(model, "train_stage1", None)
    if not s1:
        logger.warning("the fitted model has no label-free stage 1 (loaded from disk?): no LLM stage trained")
        return None
    label_free = type(model)(model.index, model.meta, s1[0], model.ranker, model.config, model.info)
    eligible = sorted(u for u, h in histories.items() if len(h) >= 3)
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(eligible, size=min(users, len(eligible)), replace=False).tolist()) if eligible else []
    feats, labels = [], []
    for u in picked:
        evs = sort_events(list(histories[u]), model.config.seed)
        hist, label = evs[:-1], evs[-1].item_id
        top = label_free.recommend(hist, k=top_n, exclude_seen=True)
        y = np.array([1.0 if i == label else 0.0 for i, _, _ in top])
        if not len(top) or y.sum() == 0:
            continue  # no ranking signal inside this list
        found = rows([i for i, _, _ in top])
        # The stored summary was written from the whole history, label included: leave it out here
        # (serving sees a summary, so the stage learns from slightly weaker prompts; documented skew).
        ctx = context(u, hist).without_summary()
        probs = yes_scores(llm, prompts, [found[i] for i, _, _ in top if i in found], ctx.summary, ctx.history_rows())
        if len(probs) != len(top):
            continue
        feats.append(list_features([s for _, s, _ in top], probs))
        labels.append(y)
        if progress:
            logger.info("LLM stage: %d/%d lists scored", len(feats), len(picked))
    if not feats:
        return None
    return LLMStage.train(feats, labels, info={"users_sampled": len(picked), "lists": len(feats), "top_n": top_n, "llm": llm.name})


def fit_and_save(model: Any, path: str | Path, event_log: Any, context: Any, rows: Any, llm: LLM,
                 prompts: PromptRegistry, settings: Any, progress: bool = False) -> dict[str, Any] | None:
    """:func:`train_stage` on the histories in ``event_log`` with the engine's settings, saved in the
    fitted model's folder ``path``; its info (None when nothing could be trained)."""
    histories = {u: event_log.history(u) for u in event_log.user_ids()}
    stage = train_stage(model, histories, context, rows, llm, prompts, settings.retrieval.rerank_candidates,
                        settings.fit.llm_feature_users, settings.seed, progress)
    if stage is None:
        return None
    stage.save(path)
    return stage.info


_LOADED: dict[tuple[str, float], LLMStage] = {}


def load_stage(root: Path, model: Any) -> LLMStage | None:
    """The LLM stage saved beside the fitted ``model`` (cached by file and modification time)."""
    path = Path(root) / str(model.info.get("version")) / FILE
    try:
        key = (str(path), path.stat().st_mtime)
    except FileNotFoundError:
        return None
    if key not in _LOADED:
        stage = LLMStage.load(path.parent)
        if stage is None:
            return None
        _LOADED.clear()  # one live model at a time
        _LOADED[key] = stage
    return _LOADED[key]
