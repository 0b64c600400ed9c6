"""Per-user ranking metrics (one held-out item per user) and bootstrap confidence intervals.

Full catalog: the held-out item is ranked among all catalog items except those the user has already
seen in the history given to the scorer. Ties count half: the 0-based rank is
``#(higher) + #(tied) / 2`` (the expected position under a random tie-break, rounded toward the
middle), so a constant scorer gets no free hits. HR@K = rank < K; NDCG@K = 1 / log2(rank + 2) when
rank < K; Recall@50 equals HR@50 with one held-out item.

Sampled (1 positive : n negatives): AUC = fraction of negatives scored below the positive (ties 0.5),
HR@5, NDCG@5 and MRR@10 (= 1 / (rank + 1) when rank < 10) from the rank among the candidates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "latencies_ms",
    "FULL_METRICS",
    "SAMPLED_METRICS",
    "METRICS",
    "full_rank",
    "rank_from_list",
    "full_metrics",
    "sampled_metrics",
    "user_metrics",
    "bootstrap_ci",
    "paired_bootstrap",
    "summarize",
]

FULL_METRICS = ("hr@10", "ndcg@10", "recall@50")
SAMPLED_METRICS = ("auc", "hr@5", "ndcg@5", "mrr@10")
METRICS = FULL_METRICS + SAMPLED_METRICS


def full_rank(scores: np.ndarray, target: int, exclude: Iterable[int] = ()) -> float:
    """0-based rank of ``scores[target]`` among the items not in ``exclude`` (ties count half).

    NaN scores count as the lowest score.
    """
    s = np.asarray(scores, np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    t = s[target]
    higher = s > t
    tied = s == t
    ex = np.fromiter((int(i) for i in exclude), dtype=np.int64)
    ex = ex[(ex != target) & (ex >= 0) & (ex < len(s))]
    if len(ex):
        ex = np.unique(ex)
        n_higher = int(higher.sum() - higher[ex].sum())
        n_tied = int(tied.sum() - tied[ex].sum()) - 1
    else:
        n_higher, n_tied = int(higher.sum()), int(tied.sum()) - 1
    return n_higher + 0.5 * n_tied


def rank_from_list(ranked: Sequence[str], target: str, exclude: Iterable[str] = ()) -> float:
    """0-based rank of ``target`` in a top-N list (seen items skipped); ``inf`` when absent (a miss)."""
    ex = set(exclude) - {target}
    r = 0
    for i in ranked:
        if i in ex:
            continue
        if i == target:
            return float(r)
        r += 1
    return math.inf


def full_metrics(rank: float) -> dict[str, float]:
    return {
        "hr@10": float(rank < 10),
        "ndcg@10": 1.0 / math.log2(rank + 2) if rank < 10 else 0.0,
        "recall@50": float(rank < 50),
    }


def sampled_metrics(cand_scores: Sequence[float]) -> dict[str, float]:
    """Metrics from candidate scores; index 0 is the positive."""
    s = np.asarray(cand_scores, np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    pos, neg = s[0], s[1:]
    n = len(neg)
    below = float((neg < pos).sum())
    tied = float((neg == pos).sum())
    auc = (below + 0.5 * tied) / n if n else math.nan
    rank = float((neg > pos).sum()) + 0.5 * tied
    return {
        "auc": auc,
        "hr@5": float(rank < 5),
        "ndcg@5": 1.0 / math.log2(rank + 2) if rank < 5 else 0.0,
        "mrr@10": 1.0 / (rank + 1) if rank < 10 else 0.0,
    }


def user_metrics(
    target: str,
    index: Mapping[str, int],
    seen: Iterable[str],
    candidates: Sequence[str],
    scores: np.ndarray | None = None,
    ranked: Sequence[str] | None = None,
    cand_scores: Sequence[float] | None = None,
) -> dict[str, float]:
    """All metrics for one user from (a) a full-catalog score vector over ``index`` or (b) a ranked
    list of top-N item ids (beyond N = miss), plus sampled candidate scores.

    With ``scores`` the candidate scores default to ``scores`` at the candidates. With only
    ``ranked`` and no ``cand_scores``, candidates are scored by list position (absent ones tie last).
    """
    seen = list(seen)
    if scores is not None:
        scores = np.asarray(scores, np.float64)
        rank = full_rank(scores, index[target], (index[i] for i in seen if i in index))
        if cand_scores is None:
            cand_scores = [scores[index[c]] if c in index else -np.inf for c in candidates]
    elif ranked is not None:
        rank = rank_from_list(ranked, target, seen)
        if cand_scores is None:
            pos = {i: -float(r) for r, i in enumerate(ranked)}
            cand_scores = [pos.get(c, -np.inf) for c in candidates]
    else:
        raise ValueError("give scores or ranked")
    return {**full_metrics(rank), **sampled_metrics(cand_scores), "rank": rank}


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean, lo, hi): percentile bootstrap CI of the mean over users."""
    v = np.asarray(values, np.float64)
    if len(v) == 0:
        return (math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = _boot_means(v, n_boot, rng)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(v.mean()), float(lo), float(hi)


def _boot_means(v: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty(n_boot)
    step = max(1, 2_000_000 // max(1, len(v)))
    for b in range(0, n_boot, step):
        k = min(step, n_boot - b)
        out[b : b + k] = v[rng.integers(0, len(v), size=(k, len(v)))].mean(1)
    return out


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """Paired bootstrap over users of mean(a - b): difference, percentile CI and two-sided p-value.

    The p-value tests "no difference" by resampling the centred differences:
    ``(1 + #|mean* - mean| >= |mean|) / (n_boot + 1)``.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError("paired_bootstrap needs per-user arrays of the same users")
    d = a - b
    rng = np.random.default_rng(seed)
    means = _boot_means(d, n_boot, rng)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    m = float(d.mean())
    p = (1 + int((np.abs(means - m) >= abs(m) - 1e-15).sum())) / (n_boot + 1)
    return {"diff": m, "lo": float(lo), "hi": float(hi), "p": float(min(1.0, p))}


def summarize(per_user: Mapping[str, Sequence[float]], n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    """{metric: {mean, lo, hi}} for each per-user metric array (``rank`` skipped)."""
    out = {}
    for k, v in per_user.items():
        if k == "rank":
            continue
        mean, lo, hi = bootstrap_ci(v, n_boot=n_boot, seed=seed)
        out[k] = {"mean": mean, "lo": lo, "hi": hi}
    return out


def latencies_ms(fn: Callable[[int], object], n: int) -> list[float]:
    """Milliseconds of ``fn(i)`` for ``i`` in ``range(n)``, after one untimed warm-up call ``fn(0)``
    (benches time a raw store query and ``recommend()`` with it, in the same run)."""
    fn(0)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out

