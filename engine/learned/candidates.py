"""Stage 1: fitted candidate models, the per-user state they produce, and the candidate pool.

In:  ordered sequences (``index.py``), static item metadata (``ItemMeta``: text embeddings, genres, year), a config.
Out: ``Stage1`` (ALS factors, sequence statistics, item rating/time stats), ``UserState`` (per source: what it scores over
     the whole catalog; seen mask, fold-in user vector) and ``pool(state, size)``: a few hundred item rows interleaved
     from the sources' rankings (seen items excluded), with every source's score and full-catalog rank.

How a source is held: ``trans`` and ``cooc`` as ``SparseSource`` (zero off the user's rows of the transition and
co-occurrence matrices, per request) and ``pop``, ``trend``, ``pop_at`` (sorted once per model) as ``SparseSource``,
``sas`` as a dense vector.
Large catalogs (``LearnedConfig.indexed``: at least ``index_items``): the content and collaborative sources are
``ListSource`` top lists of ``index_depth`` unseen items, from a vector index at serving (Qdrant's ``text`` and ``cf``
vectors) or the exact top list (training, and serving without an index); their ranks are ranks within that list, and
the sequence model's score is its probability relative to the best item's among those it can score, the items
with events that it read (no softmax over the catalog; ``LearnedConfig.sas_readable_only``). Training and
serving compute the same, so the ranker is fitted on what it is served.

Sources: ``cf`` (fold-in user vector . item factors), ``trans`` (transitions from the last items), ``cooc``
(co-occurrence with recent items), ``sas`` (the sequence model's next-item probability), ``content`` (text-embedding
similarity to recent liked items; it reaches items with no events too), ``fresh`` (the same similarity among items with
no events only), ``pop`` (all-time), ``trend`` (last ``trend_days`` of the data), ``pop_at`` (popularity around the
user's last event time).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np

from .cf import CF
from .config import LearnedConfig
from .index import Sequence, user_item_matrix
from .meta import ItemMeta
from .seqnet import SeqNet
from .sequence import SequenceStats, SparseRows
from .toplists import EMPTY, ListSource, SparseScores, SparseSource, row_dots, sample_threshold, top_dots, top_rows

__all__ = ["Stage1", "UserState", "user_state", "pool", "rank_cap_of", "source_ranks", "source_top"]

log = logging.getLogger(__name__)

_CACHE_ENTRIES = 1024  # Stage1.cached: every time bucket's popularity (SequenceStats keeps at most 512) and the rest
_CACHE_LOCK = threading.Lock()  # module-level: a Stage1 is pickled for Ray workers


class Stage1:
    """Everything fitted from events that the pool and the features read. Fit twice: without labels, then on all."""

    def __init__(self, cf: CF, seq: SequenceStats, item_rating: np.ndarray, item_first_ts: np.ndarray, item_mean_ts: np.ndarray,
                 sas: SeqNet | None = None, content_pop: np.ndarray | None = None):
        self.cf, self.seq, self.sas = cf, seq, sas
        self.content_pop = content_pop  # ``ItemMeta.popularity_prior`` of this stage's counts (None: models saved before)
        self.item_rating, self.item_first_ts, self.item_mean_ts = item_rating, item_first_ts, item_mean_ts
        V = cf.item_factors
        n = np.linalg.norm(V, axis=1, keepdims=True)
        self.cf_unit = V / np.where(n > 0, n, 1.0)

    @classmethod
    def fit(cls, seqs: dict[str, Sequence], n_items: int, cfg: LearnedConfig, sas: SeqNet | None = None,
            meta: ItemMeta | None = None) -> Stage1:
        """``sas``: a sequence model trained elsewhere (``PersonaModel.fit`` trains one and shares it), kept as is.
        ``meta``: the items' content, for the popularity each item's content predicts (none without it)."""
        X = user_item_matrix(seqs, n_items)
        cf = CF.fit(X, cfg.cf_factors, cfg.cf_reg, cfg.cf_alpha, cfg.cf_iterations, cfg.seed)
        seq = SequenceStats.fit(seqs, n_items, cfg.max_gap, cfg.gap_decay, cfg.cooc_window, cfg.trend_days, cfg.bucket_days)
        items = np.concatenate([s.items for s in seqs.values()] or [np.zeros(0, np.int64)])
        ts = np.concatenate([s.ts for s in seqs.values()] or [np.zeros(0)])
        r = np.concatenate([s.ratings for s in seqs.values()] or [np.zeros(0)])
        cnt = np.bincount(items, minlength=n_items).astype(np.float64)
        ok = ~np.isnan(r)
        rc = np.bincount(items[ok], minlength=n_items)
        rs = np.bincount(items[ok], weights=r[ok], minlength=n_items)
        gmean = float(r[ok].mean()) if ok.any() else np.nan
        item_rating = ((rs + 5 * gmean) / (rc + 5)).astype(np.float32)  # shrunk to the global mean
        item_rating[rc == 0] = np.nan  # no rating yet: unknown, as ``features.cold_item`` shows it in training
        first = np.full(n_items, np.nan)
        np.fmin.at(first, items, ts)
        mean_ts = np.where(cnt > 0, np.bincount(items, weights=ts, minlength=n_items) / np.maximum(cnt, 1), np.nan)
        prior = meta.popularity_prior(cnt, cfg.seed) if meta is not None and "content_pop" not in cfg.drop_features else None
        return cls(cf, seq, item_rating, first.astype(np.float64), mean_ts.astype(np.float64), sas, prior)

    def cached(self, key, make):
        """Per-model memo for history-independent values (sorted popularity, per time bucket too, and masks); the
        oldest entries go past ``_CACHE_ENTRIES``."""
        c = self.__dict__.setdefault("_cache", {})
        v = c.get(key)
        if v is None:
            v = make()
            with _CACHE_LOCK:
                c[key] = v
                while len(c) > _CACHE_ENTRIES:
                    del c[next(iter(c))]
        return v

    def arrays(self) -> dict:
        return {"cf_item_factors": self.cf.item_factors, "item_rating": self.item_rating, "item_first_ts": self.item_first_ts,
                "item_mean_ts": self.item_mean_ts, **self.seq.arrays(), **(self.sas.arrays() if self.sas is not None else {}),
                **({"content_pop": self.content_pop} if self.content_pop is not None else {})}

    @classmethod
    def from_arrays(cls, a: dict, cfg: LearnedConfig) -> Stage1:
        cf = CF(a["cf_item_factors"], cfg.cf_reg, cfg.cf_alpha)
        seq = SequenceStats.from_arrays(a, dict(max_gap=cfg.max_gap, gap_decay=cfg.gap_decay, window=cfg.cooc_window))
        return cls(cf, seq, a["item_rating"], a["item_first_ts"], a["item_mean_ts"], SeqNet.from_arrays(a), a.get("content_pop"))


def _top_list(E: np.ndarray, q: np.ndarray, seen: np.ndarray, depth: int, search=None, norm_max: float = 1.0) -> ListSource:
    """A source's top list by ``E . q``: ``search(q, depth)`` (rows from a vector index, seen items excluded there) or
    the exact top ``depth`` unseen items by ``row_dots`` (``norm_max`` bounds the rows' norms, see ``top_dots``)."""
    if search is not None:
        rows = np.asarray(search(q, depth), np.int64)
        rows = rows[(rows >= 0) & (rows < len(seen))]
        rows = rows[~seen[rows]]
        rows = rows[np.sort(np.unique(rows, return_index=True)[1])][:depth]  # once each, in the index's order
    else:
        rows = top_dots(E, q, ~seen, depth, norm_max)
    return ListSource(rows, lambda r: row_dots(E, r, q))


@dataclass
class UserState:
    """What one history implies over the whole catalog: per source a dense vector (n_items long), a ``ListSource`` or
    a ``SparseSource``."""

    seq: Sequence
    seen: np.ndarray  # bool mask
    last3: np.ndarray  # rows of the last 3 items, most recent last
    trans3: SparseRows  # 3 rows: P(c | last_k) for k = 1, 2, 3 (row 0 = most recent; empty rows when shorter)
    recent: np.ndarray  # the last ``recent`` item rows, most recent last
    liked: np.ndarray  # recent liked item rows (rating >= threshold; all recent when no ratings)
    disliked: np.ndarray  # bool mask over ``recent``: rated at most ``dislike_rating``
    user_vec: np.ndarray
    sources: dict  # name -> a dense score vector, ListSource or SparseSource
    last_ts: float
    cooc_rec: SparseRows  # len(recent) cosine co-occurrence rows
    trans_rec: SparseRows  # len(recent) transition-count rows (the dislike share and the reasons read them once)
    rank_cap: int = 0  # source_ranks: exact ranks up to this, this value beyond (0: exact)
    off: frozenset = frozenset()  # sources without a fitted model (zero scores): they fill no pool slots
    liked_at: np.ndarray | None = None  # positions of ``liked`` in ``recent`` (None: unknown, e.g. a state built by hand)
    # per-request values (features.history_sims, features.dislike_share); not an init field, so a dataclasses.replace()
    # copy starts empty
    memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)


def user_state(s1: Stage1, meta: ItemMeta, seq: Sequence, cfg: LearnedConfig, content_search=None, cf_search=None) -> UserState:
    """Large catalogs: ``content_search(q, limit) -> item rows`` and ``cf_search(user vector, limit) -> item rows`` give
    the content and collaborative sources' top lists from a vector index (else the exact lists)."""
    n = len(s1.item_rating)
    indexed = cfg.indexed(n)
    items = seq.items[(seq.items >= 0) & (seq.items < n)]
    seen = np.zeros(n, bool)
    seen[items] = True
    last3 = items[-3:]
    trans3 = s1.seq.trans_rows(last3[::-1], cfg.trans_smooth).padded(3)
    w = cfg.trans_pos_decay ** np.arange(3)
    recent = items[-cfg.recent :]
    r = seq.ratings[(seq.items >= 0) & (seq.items < n)][-cfg.recent :]
    liked_at = np.flatnonzero(~(r < cfg.like_threshold))  # nan ratings count as liked
    disliked = r <= cfg.dislike_rating  # nan ratings are not dislikes
    if not len(liked_at):
        liked_at = np.arange(len(recent))
    liked = recent[liked_at]
    uvec = s1.cf.user_vector(items)
    src: dict = {}
    if indexed:  # items without events (zero factors) hold no cf vector in the index: none in the exact list either
        blank = s1.cached("cf_blank", lambda: ~np.any(s1.cf.item_factors != 0, axis=1))
        src["cf"] = _top_list(s1.cf.item_factors, uvec.astype(np.float64), seen | blank, cfg.index_depth, cf_search, s1.cf.norm_max) \
            if np.any(uvec) else EMPTY
    else:
        src["cf"] = s1.cf.scores(uvec)
    seen_rows = np.unique(items)
    src["trans"] = SparseScores(*trans3.weighted(w), n).view(seen, seen_rows)
    cooc_rec = s1.seq.cooc_rows(recent)
    rows, vals = cooc_rec.weighted(0.9 ** np.arange(len(recent))[::-1])
    src["cooc"] = SparseScores(rows, vals.astype(np.float32), n).view(seen, seen_rows)
    q = None
    if len(liked) and meta.emb.shape[1] > 1:
        cw = 0.9 ** np.arange(len(liked))[::-1]
        q = cw @ meta.emb[liked]
    if indexed:
        content = _top_list(meta.emb, q, seen, cfg.index_depth, content_search) if q is not None and np.any(q) \
            else EMPTY
        src["content"] = content
        new = s1.cached("new_items", lambda: np.isnan(s1.item_first_ts))  # items without events (cached: no O(n) pass)
        src["fresh"] = content.subset(new)  # the new items in the content list
    else:
        src["content"] = meta.content_scores(q) if q is not None else np.zeros(n, np.float32)
        # new items (no events in the fitted data) by content alone, so a few pool slots always go to them
        has_content = bool(np.any(src["content"]))  # without text vectors or a liked item, no new item is preferred
        src["fresh"] = np.where(np.isnan(s1.item_first_ts) & has_content, src["content"], -np.inf).astype(np.float32)
    if s1.sas is not None:
        # an item without events, or one the sequence model never read (its events all came after its training
        # data), scores as features.cold_item shows new items in training, not with its vector's random init
        unread = s1.cached("sas_unread", lambda: np.isnan(s1.item_first_ts) | ~s1.sas.known)
        if indexed and cfg.sas_readable_only:  # the output layer over the readable items only, relative to their best
            readable = s1.cached("sas_readable", lambda: np.flatnonzero(~unread))
            p = np.zeros(n, np.float32)
            p[readable] = s1.sas.relative_probs(items, readable)
        else:
            p = s1.sas.relative_probs(items) if indexed else s1.sas.probs(items)
            p[unread] = 0.0
        src["sas"] = p.astype(np.float32, copy=False)
    else:
        src["sas"] = np.zeros(n, np.float32)
    last_ts = float(seq.ts[-1]) if len(seq.ts) else s1.seq.t_max
    b = s1.seq.bucket_of(last_ts)
    for name, key, make in (("pop", "pop", lambda: s1.seq.pop), ("trend", "trend", lambda: s1.seq.trend),
                            ("pop_at", ("pop_at", b), lambda: s1.seq.pop_at(last_ts))):
        src[name] = s1.cached(key, lambda make=make: SparseScores.of(make())).view(seen, seen_rows)  # sorted once per model
    off = frozenset() if s1.sas is not None else frozenset({"sas"})
    trans_rec = s1.seq.count_rows(recent)
    return UserState(seq, seen, last3, trans3, recent, liked, disliked, uvec, src, last_ts, cooc_rec, trans_rec, cfg.rank_cap, off, liked_at)


def rank_cap_of(state: UserState, n_unseen: int) -> int | None:
    """The cap ``source_ranks`` applies for this state (None: exact ranks, e.g. fewer unseen items than the cap)."""
    return state.rank_cap if 0 < state.rank_cap < n_unseen else None


def source_ranks(state: UserState, names, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores and full-catalog ranks (0 = best, among unseen items) of ``cand`` for each source (k x len(names)).
    Ranks are exact below ``state.rank_cap`` and equal to it beyond (when set): ``min(#unseen values > score, cap)``."""
    S = np.zeros((len(cand), len(names)), np.float32)
    R = np.zeros((len(cand), len(names)), np.float32)
    unseen = ~state.seen
    cap = rank_cap_of(state, int(unseen.sum()))
    for j, name in enumerate(names):
        v = state.sources[name]
        if isinstance(v, ListSource):  # ranks within the list (its depth is the cap)
            vc = v.score(cand)
            S[:, j] = vc
            R[:, j] = v.ranks(vc)
            continue
        if isinstance(v, SparseSource):
            vc = v.score(cand)
            S[:, j] = vc
            R[:, j] = v.ranks(vc) if cap is None else np.minimum(v.ranks(vc), cap)
            continue
        vc = v[cand]
        S[:, j] = vc
        # One comparison pass over the catalog instead of a partition (the partitions were a quarter of a request's time
        # at 100k items): with a sampled threshold t, every unseen value above a score >= t is in ``top``, and a score
        # below t has every unseen value >= t above it (at least ``cap`` of them, checked, unless no score is below t).
        t = sample_threshold(v, cap) if cap is not None else None
        if t is not None and (int(((v >= t) & unseen).sum()) >= cap or bool((vc >= t).all())):
            top = np.sort(v[(v > t) & unseen])
            R[:, j] = np.where(vc >= t, np.minimum(len(top) - np.searchsorted(top, vc, side="right"), cap), cap)
        elif cap is not None:
            vu = v[unseen]
            top = np.partition(vu, len(vu) - cap)[len(vu) - cap:]  # the cap largest values
            top.sort()
            # x >= the cap-th largest: every larger unseen value is in ``top``, so the count is exact
            R[:, j] = np.where(vc >= top[0], cap - np.searchsorted(top, vc, side="right"), cap)
        else:
            srt = np.sort(v[unseen])
            R[:, j] = len(srt) - np.searchsorted(srt, vc, side="right")
    return S, R


def source_top(state: UserState, name: str, k: int, exclude_seen: bool = True) -> np.ndarray:
    """The source's best ``k`` item rows (ties by row, at the cut too), seen items left out when ``exclude_seen``."""
    v = state.sources[name]
    if isinstance(v, ListSource):  # unseen items only, best first
        return v.rows[:k]
    if isinstance(v, SparseSource):
        return v.top(k, exclude_seen)
    ok = np.isfinite(v)
    if exclude_seen:
        ok &= ~state.seen
    return top_rows(v, ok, k)


def pool(state: UserState, cfg: LearnedConfig, size: int | None = None, sources=None, exclude_seen: bool = True,
         tops: dict | None = None) -> np.ndarray:
    """Item rows interleaved from the sources' rankings (rank / weight order), first ``size`` distinct ones.
    ``tops`` (source name -> item rows, best first) replaces a source's own ranking, e.g. the ``cf`` top from a
    Qdrant query on the stored item factors."""
    size = size or cfg.pool_size
    sources = tuple(sources or cfg.sources)
    rows, keys = [], []
    for j, name in enumerate(sources):
        if name in state.off:
            continue
        if tops is not None and name in tops:
            top = np.asarray(tops[name], np.int64)
            top = top[(top >= 0) & ~(state.seen[np.clip(top, 0, None)] & exclude_seen)][:size]
        else:
            top = source_top(state, name, size, exclude_seen)
        rows.append(top)
        keys.append((np.arange(len(top)) + 0.5) / float(cfg.source_weights.get(name, 1.0)) + j * 1e-6)
    if not rows:
        return np.zeros(0, np.int64)
    rows, keys = np.concatenate(rows), np.concatenate(keys)
    order = np.argsort(keys, kind="stable")
    rows = rows[order]
    _, first = np.unique(rows, return_index=True)
    return rows[np.sort(first)][:size]
