"""The one feature function of the ranker, shared by training and serving.

In:  ``Stage1``, ``ItemMeta``, a ``UserState`` (``candidates.user_state``), candidate item rows, an optional external
     column (e.g. an LLM P(Yes), one value per candidate; nan when absent).
Out: a float32 matrix (candidates x ``FEATURE_NAMES``). Every value of a row depends only on the user and that
     candidate -- never on which other items are in the pool -- so ``rank()`` and ``recommend()`` agree exactly.

``GROUPS`` names the feature groups used for ablations (``LearnedConfig.drop_features`` takes names or groups).
``cold_item(F, state, rows, content_dislike)`` rewrites rows to the values the same candidates would have with no events at
all; the ranker's training shows a share of its candidates that way (``LearnedConfig.cold_frac``), so new items are ranked
by their content instead of last. ``dislike_share`` (a column, and the serving penalty's input) is the share of a
candidate's ties to the recent history (``recent_ties``) that come from films the user rated low.
"""

from __future__ import annotations

import logging

import numpy as np

from .candidates import Stage1, UserState, rank_cap_of, source_ranks
from .config import SOURCES
from .meta import ItemMeta
from .toplists import ListSource, SparseSource

__all__ = ["FEATURE_NAMES", "GROUPS", "features", "cold_item", "dot64", "history_sims", "recent_ties", "dislike_share", "resolve_drop"]

log = logging.getLogger(__name__)

DAY = 86400.0

GROUPS: dict[str, list[str]] = {
    "src_cf": ["cf_score", "cf_rank", "cf_sim_max"],
    "src_trans": ["trans_score", "trans_rank", "trans_l1", "trans_l2", "trans_l3", "trans_l1_count"],
    "src_cooc": ["cooc_score", "cooc_rank", "cooc_max"],
    "src_content": ["content_score", "content_rank", "content_max", "content_mean"],
    "src_pop": ["pop_score", "pop_rank", "trend_score", "trend_rank", "pop_at_score", "pop_at_rank"],
    "src_sas": ["sas_score", "sas_rank"],
    "attributes": ["genre_overlap", "year_gap", "item_year"],
    "user": ["hist_len", "user_mean_rating", "days_to_data_end"],
    "item": ["item_rating", "item_age_days", "item_mean_ts_gap_days"],
    "content_pop": ["content_pop"],
    "dislike": ["dislike_share"],
    "extra": ["extra"],
}
FEATURE_NAMES: list[str] = [f for g in GROUPS.values() for f in g]
_COL = {f: k for k, f in enumerate(FEATURE_NAMES)}


def resolve_drop(drop) -> list[str]:
    out = []
    for d in drop or ():
        out.extend(GROUPS.get(d, [d]))
    unknown = [d for d in out if d not in _COL]
    if unknown:
        raise ValueError(f"unknown features {unknown}")
    return out


def dot64(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A @ B.T`` in float64, rounded to float32: a float32 GEMM's last bit depends on the BLAS thread count (Ray
    workers run with one thread), and one ulp at a tree's split threshold changes the fitted model."""
    return (A.astype(np.float64) @ B.astype(np.float64).T).astype(np.float32)


def history_sims(s1: Stage1, meta: ItemMeta, st: UserState, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The recent items' similarities to ``cand`` (each len(st.recent) x len(cand), float32, read-only, by ``dot64``):
    the cosine of their cf factors, and the dot product of their text vectors (None without text vectors). A request's
    features and dislike share read the same candidates: a second call with the same ``cand`` array object answers
    from the state's memo (callers must not change ``cand`` in place)."""
    last = st.memo.get("sims")
    if last is not None and last[0] is cand:
        return last[1]
    rec = st.recent
    out = [dot64(s1.cf_unit[rec], s1.cf_unit[cand]), dot64(meta.emb[rec], meta.emb[cand]) if meta.emb.shape[1] > 1 else None]
    for m in out:
        if m is not None:
            m.flags.writeable = False
    st.memo["sims"] = (cand, tuple(out))
    return out[0], out[1]


def recent_ties(s1: Stage1, meta: ItemMeta, st: UserState, cand: np.ndarray, content_only: bool = False) -> list[np.ndarray]:
    """The recent items' ties to ``cand`` (non-negative, recent x candidates), one matrix per kind: transition counts,
    cosine co-occurrence, cf and content similarity (the last two clipped at 0); ``content_only``: the content kind alone
    (what a candidate without events is tied by)."""
    cand = np.asarray(cand, np.int64)
    cf, text = history_sims(s1, meta, st, cand)
    if content_only:
        return [] if text is None else [np.clip(text, 0, None)]
    return [st.trans_rec.at(cand), st.cooc_rec.at(cand), *(np.clip(m, 0, None) for m in (cf, text) if m is not None)]


def dislike_share(s1: Stage1, meta: ItemMeta, st: UserState, cand: np.ndarray, content_only: bool = False) -> np.ndarray:
    """Per candidate, the share of its ties to the recent history that come from items the user disliked (mean over
    the tie kinds it has any of; 0 without ties, and 0 everywhere when no recent film was rated low). Depends only on the
    user and that candidate. The features' column and the serving penalty read it for the same ``cand`` array object: the
    second call answers from the state's memo (callers must not change ``cand`` in place; the result is read-only)."""
    key = "dislike_content" if content_only else "dislike"
    last = st.memo.get(key)
    if last is not None and last[0] is cand:
        return last[1]
    out = np.zeros(len(cand))
    if len(st.recent) and len(cand) and st.disliked.any():  # none rated low: every share is 0, no ties to read
        den = np.zeros(len(cand))
        for P in recent_ties(s1, meta, st, cand, content_only):
            tot = P.sum(0, dtype=np.float64)
            has = tot > 0
            out[has] += P[st.disliked].sum(0, dtype=np.float64)[has] / tot[has]
            den += has
        out /= np.maximum(den, 1)
    out.flags.writeable = False
    st.memo[key] = (cand, out)
    return out


def features(s1: Stage1, meta: ItemMeta, st: UserState, cand: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
    cand = np.asarray(cand, np.int64)
    F = np.full((len(cand), len(FEATURE_NAMES)), np.nan, np.float32)

    def put(name, v):
        F[:, _COL[name]] = v

    S, R = source_ranks(st, SOURCES, cand)
    for j, name in enumerate(SOURCES):
        put(f"{name}_score", S[:, j])
        put(f"{name}_rank", R[:, j])
    # transitions from each of the last three items separately
    T = st.trans3.at(cand)
    for k in range(3):
        put(f"trans_l{k + 1}", T[k])
    if len(st.last3):
        put("trans_l1_count", st.trans_rec.at(cand)[-1])  # the last item's count row: the last of the recent items' rows
    else:
        put("trans_l1_count", 0.0)
    rec = st.recent
    if len(rec):
        cf_sims, text_sims = history_sims(s1, meta, st, cand)
        put("cooc_max", st.cooc_rec.at(cand).max(0))
        put("cf_sim_max", cf_sims.max(0))
    if len(st.liked) and meta.emb.shape[1] > 1:
        # candidates x liked, C-ordered as the product was before the memo: the mean sums each row in the same order
        sims = dot64(meta.emb[cand], meta.emb[st.liked]) if st.liked_at is None else np.ascontiguousarray(text_sims[st.liked_at].T)
        put("content_max", sims.max(1))
        put("content_mean", sims.mean(1))
    # attributes
    liked = st.liked
    if len(liked):
        ug = meta.genres[liked].mean(0)
        gc = meta.genres[cand]
        put("genre_overlap", (gc @ ug) / np.maximum(gc.sum(1), 1.0))
        uy = np.nanmean(meta.year[liked]) if np.isfinite(meta.year[liked]).any() else np.nan
        put("year_gap", meta.year[cand] - uy)
    put("item_year", meta.year[cand])
    # user
    r = st.seq.ratings
    put("hist_len", float(len(st.seq)))
    put("user_mean_rating", float(np.nanmean(r)) if len(r) and np.isfinite(r).any() else np.nan)
    put("days_to_data_end", (s1.seq.t_max - st.last_ts) / DAY)
    # item, relative to the user's time
    put("item_rating", s1.item_rating[cand])
    put("item_age_days", (st.last_ts - s1.item_first_ts[cand]) / DAY)
    put("item_mean_ts_gap_days", (st.last_ts - s1.item_mean_ts[cand]) / DAY)
    if s1.content_pop is not None:  # what the content predicts, never the item's own count: cold_item leaves it
        put("content_pop", s1.content_pop[cand])
    put("dislike_share", dislike_share(s1, meta, st, cand))
    if extra is not None:
        put("extra", np.asarray(extra, np.float32))
    return F


_COLD_ZERO = [_COL[f] for f in ("trans_l1", "trans_l2", "trans_l3", "trans_l1_count", "cooc_max", "cf_sim_max")]
_COLD_NAN = [_COL[f] for f in ("item_rating", "item_age_days", "item_mean_ts_gap_days")]


def cold_item(F: np.ndarray, st: UserState, rows: np.ndarray, content_dislike: np.ndarray) -> np.ndarray:
    """``F`` with ``rows`` (bool mask or indices) set to a never-interacted item's values: every event-based source
    scores 0 (zero ALS factors, no transitions, co-occurrence or popularity) at the full-catalog rank that 0 has for this
    user; no rating or event times; the dislike share is ``content_dislike`` (``dislike_share(..., content_only=True)`` of
    the same candidates as ``F``'s rows: a new item is tied to the history by its content alone). Content (``content_pop``
    too: a guess from content, never the item's count), attribute and user columns are left as they are."""
    F = F.copy()
    unseen = ~st.seen
    cap = rank_cap_of(st, int(unseen.sum()))  # as source_ranks computes it
    for name in SOURCES:
        if name == "content":
            continue
        F[rows, _COL[f"{name}_score"]] = 0.0
        v = st.sources[name]
        if isinstance(v, ListSource):  # a rank within the list (index mode): the list items scoring above 0
            F[rows, _COL[f"{name}_rank"]] = float(v.ranks(np.zeros(1))[0])
            continue
        r = float(v.positive_unseen if isinstance(v, SparseSource) else (v[unseen] > 0).sum())
        F[rows, _COL[f"{name}_rank"]] = r if cap is None else min(r, cap)
    for c in _COLD_ZERO:
        F[rows, c] = 0.0
    for c in _COLD_NAN:
        F[rows, c] = np.nan
    F[rows, _COL["dislike_share"]] = np.asarray(content_dislike)[rows]
    return F
