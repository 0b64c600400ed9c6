"""Stage 2: a LightGBM ranker over the candidate pool, trained from events alone.

Training rows (``build_training``): for each user the LAST event is the label and the earlier events the history.
The stage-1 models that compute the features for those rows (``Stage1`` given here) must be fitted on the histories
only -- all events but each user's last -- so no feature has seen the label. The negatives are a sample of the other
items of the user's pool plus ``rand_neg`` random unseen catalog items; users whose label is not in the pool are left
out (no ranking signal). A seeded ``cold_frac`` of each user's candidates is shown as new items
(``features.cold_item``). ``PersonaModel.fit`` then refits stage 1 on all events for serving.

In:  ``Stage1``, ``ItemMeta``, histories ``{user: Sequence}``, labels ``{user: item row}``, ``LearnedConfig``.
Out: ``Ranker`` (a LightGBM booster plus the feature columns it uses): ``predict(F) -> scores``, ``to_text`` /
     ``from_text``. With ``valid_frac`` > 0, early stopping on that share of users held out (NDCG@10 within the
     pool); the default (0) trains ``n_estimators`` trees on every user.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from .candidates import Stage1, pool, user_state
from .compiled import compile_booster
from .config import LearnedConfig
from .features import FEATURE_NAMES, GROUPS, cold_item, dislike_share, features, resolve_drop
from .index import Sequence, tie_key
from .meta import ItemMeta

__all__ = ["TrainingData", "build_training", "Ranker", "train_ranker", "pessimistic_ndcg"]

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    X: np.ndarray
    y: np.ndarray
    group: np.ndarray  # rows per user, in order
    users: list
    recall: float  # share of labelled users whose label is in the pool


def _user_rows(s1: Stage1, meta: ItemMeta, hist: dict[str, Sequence], labels: dict[str, int], cfg: LearnedConfig, users, extra_fn=None) -> list:
    """``(user, X, y)`` for each of ``users`` whose label is in its pool (None for the others).
    The negatives are sampled with a per-user RNG, so any split of the users gives the same rows."""
    out = []
    for u in users:
        st = user_state(s1, meta, hist[u], cfg)
        cand = pool(st, cfg)
        y = (cand == labels[u]).astype(np.float32)
        if not y.any():
            out.append(None)
            continue
        if cfg.neg_sample and len(cand) > cfg.neg_sample + 1:  # the label plus a random sample of the other candidates
            rng = np.random.default_rng([cfg.seed, tie_key(cfg.seed, u, "negatives")])
            neg = np.flatnonzero(y == 0)
            keep = np.sort(np.r_[np.flatnonzero(y > 0), rng.choice(neg, cfg.neg_sample, replace=False)])
            cand, y = cand[keep], y[keep]
        if cfg.rand_neg:
            rng = np.random.default_rng([cfg.seed, tie_key(cfg.seed, u, "random negatives")])
            free = np.flatnonzero(~st.seen)
            extra_rows = np.setdiff1d(rng.choice(free, min(len(free), cfg.rand_neg), replace=False), cand)
            cand, y = np.r_[cand, extra_rows], np.r_[y, np.zeros(len(extra_rows), np.float32)]
        extra = extra_fn(u, hist[u], cand) if extra_fn is not None else None
        F = features(s1, meta, st, cand, extra)
        if cfg.cold_frac > 0:  # a share of the candidates, label included, as new items (independent of the label)
            rng = np.random.default_rng([cfg.seed, tie_key(cfg.seed, u, "cold")])
            F = cold_item(F, st, rng.random(len(cand)) < cfg.cold_frac, dislike_share(s1, meta, st, cand, content_only=True))
        out.append((u, F, y))
    return out


def _chunk_rows(chunk, shared) -> list:
    s1, meta, hist, labels, cfg = shared
    return _user_rows(s1, meta, hist, labels, cfg, chunk)


def build_training(s1: Stage1, meta: ItemMeta, hist: dict[str, Sequence], labels: dict[str, int], cfg: LearnedConfig,
                   extra_fn=None, progress=None, map_chunks=None) -> TrainingData:
    """Training rows for every labelled user. ``map_chunks(fn, chunks, shared)`` (e.g.
    ``engine.batch.RayBatch.map_chunks``) computes chunks of users elsewhere; the rows are identical."""
    users = sorted(labels)
    chunk_users = min(512, max(16, -(-len(users) // 8)))  # at least 8 chunks to spread, at most 512 users per task
    chunks = [users[i : i + chunk_users] for i in range(0, len(users), chunk_users)]
    if map_chunks is not None and extra_fn is None and len(chunks) > 1:
        parts = map_chunks(_chunk_rows, chunks, (s1, meta, {u: hist[u] for u in users}, labels, cfg))
        if progress is not None:
            progress.update(len(users))
    else:
        parts = []
        for c in chunks:
            parts.append(_user_rows(s1, meta, hist, labels, cfg, c, extra_fn))
            if progress is not None:
                progress.update(len(c))
    rows = [r for part in parts for r in part if r is not None]
    hit = len(rows)
    X = np.concatenate([r[1] for r in rows]) if rows else np.zeros((0, len(FEATURE_NAMES)), np.float32)
    y = np.concatenate([r[2] for r in rows]) if rows else np.zeros(0)
    return TrainingData(X, y, np.array([len(r[2]) for r in rows], np.int64), [r[0] for r in rows], hit / max(1, len(labels)))


def _probe_rows(n_features: int) -> np.ndarray:
    """Rows that reach many branches of the ranker's trees: zeros, missing values, and values over the features' scales
    (scores in [0, 1], log-odds, ranks up to the cap, days and years)."""
    rng = np.random.default_rng(0)
    return np.vstack([np.zeros(n_features), np.full(n_features, np.nan), rng.uniform(0, 1, (8, n_features)),
                      rng.normal(0, 3, (8, n_features)), rng.uniform(0, 2000, (8, n_features))])


_BAG_SEP = "\n### persona ranker bag ###\n"  # between boosters in ranker.txt (one booster: LightGBM's own text)


class Ranker:
    """One or more LightGBM boosters over the same columns; ``predict`` is their mean (``LearnedConfig.ranker_bags``)."""

    def __init__(self, booster, columns: list[str], more: list | None = None):
        self.booster = booster
        self.boosters = [booster, *(more or [])]
        self.columns = list(columns)
        self._idx = np.array([FEATURE_NAMES.index(c) for c in self.columns])
        self._compiled: list | None = None  # compile(): native predict functions, one per booster

    def compile(self, cache_dir=None) -> bool:
        """Serve from the boosters compiled to native code (``engine.learned.compiled``: lleaves; the same scores as
        LightGBM's predict to float rounding, in about a quarter of its time at 100k items); False, and LightGBM's
        predict serves, when lleaves is missing or fails. ``cache_dir``: the compiled code's cache (the model's folder)."""
        fns = [compile_booster(b.model_to_string(), cache_dir) for b in self.boosters]
        if any(f is None for f in fns):
            return False
        probe = _probe_rows(len(self.columns))
        for f, b in zip(fns, self.boosters):  # code that does not reproduce LightGBM here (a stale cache, a bad build) never serves
            if not np.allclose(f(probe), b.predict(probe, num_threads=1), rtol=1e-9, atol=1e-12):
                log.error("the compiled ranker does not match LightGBM's predict on probe rows: LightGBM serves")
                return False
        self._compiled = fns
        return True

    @property
    def compiled(self) -> bool:
        """Whether :meth:`predict` runs compiled code."""
        return self._compiled is not None

    def __getstate__(self):  # native code does not pickle (Ray workers): a copy predicts with LightGBM
        return {**self.__dict__, "_compiled": None}

    def predict(self, F: np.ndarray) -> np.ndarray:
        if not len(F):
            return np.zeros(0)
        X = F[:, self._idx]
        fns = self._compiled  # read once: the whole call runs one way
        if fns is not None:
            return np.mean([f(X) for f in fns], axis=0)
        return np.mean([b.predict(X, num_threads=1) for b in self.boosters], axis=0)

    def importance(self) -> dict:
        gain = sum(b.feature_importance("gain") for b in self.boosters)
        return dict(sorted(zip(self.columns, gain.tolist()), key=lambda kv: -kv[1]))

    def to_text(self) -> str:
        return _BAG_SEP.join(b.model_to_string() for b in self.boosters)

    @classmethod
    def from_text(cls, text: str, columns: list[str]) -> Ranker:
        import lightgbm as lgb

        boosters = [lgb.Booster(model_str=t) for t in text.split(_BAG_SEP)]
        return cls(boosters[0], columns, boosters[1:])


def _slice(data: TrainingData, users_mask: np.ndarray):
    starts = np.r_[0, np.cumsum(data.group)[:-1]]
    rows = np.concatenate([np.arange(s, s + g) for s, g, m in zip(starts, data.group, users_mask) if m] or [np.zeros(0, np.int64)])
    return data.X[rows], data.y[rows], data.group[users_mask]


def pessimistic_ndcg(scores: np.ndarray, y: np.ndarray, group: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k of the single positive per group, ties counted against it (LightGBM's own NDCG rewards ties,
    so a one-tree model with many tied scores looks best and early stopping would stop at once)."""
    total, s0 = 0.0, 0
    for g in group:
        sc, yy = scores[s0 : s0 + g], y[s0 : s0 + g]
        s0 += g
        pos = np.flatnonzero(yy > 0)
        if len(pos):
            r = int((sc >= sc[pos[0]]).sum()) - 1
            total += 1.0 / np.log2(r + 2) if r < k else 0.0
    return total / max(1, len(group))


def train_ranker(data: TrainingData, cfg: LearnedConfig) -> Ranker:
    import lightgbm as lgb

    t = time.perf_counter()
    drop = set(resolve_drop(cfg.drop_features))
    cols = [c for c in FEATURE_NAMES if c not in drop]
    if np.isnan(data.X[:, FEATURE_NAMES.index("extra")]).all() and "extra" in cols:
        cols.remove("extra")
    if cfg.sas_epochs <= 0:  # no sequence model: its columns are constant zeros
        cols = [c for c in cols if c not in GROUPS["src_sas"]]
    idx = np.array([FEATURE_NAMES.index(c) for c in cols])
    hold = np.array([(tie_key(cfg.seed + 101, u, "") % 1000) < cfg.valid_frac * 1000 for u in data.users])
    if hold.all() or not hold.any():
        hold = np.zeros(len(data.users), bool)
    Xtr, ytr, gtr = _slice(data, ~hold)
    params = dict(objective=cfg.objective, learning_rate=cfg.learning_rate, num_leaves=cfg.num_leaves,
                  min_child_samples=cfg.min_child_samples, feature_fraction=cfg.feature_fraction,
                  bagging_fraction=cfg.bagging_fraction, bagging_freq=1, lambda_l2=cfg.lambda_l2, num_threads=cfg.threads,
                  seed=cfg.seed, deterministic=True, force_row_wise=True, verbose=-1, metric="None")
    if cfg.objective == "lambdarank":
        params["lambdarank_truncation_level"] = 20
    dtr = lgb.Dataset(Xtr[:, idx], ytr, group=gtr, feature_name=cols, free_raw_data=False)
    callbacks, valid_sets, feval = [], [], None
    if hold.any():
        Xva, yva, gva = _slice(data, hold)
        valid_sets = [lgb.Dataset(Xva[:, idx], yva, group=gva, reference=dtr)]
        callbacks.append(lgb.early_stopping(cfg.early_stopping, verbose=False))

        def feval(preds, ds):
            return "ndcg10_pessimistic", pessimistic_ndcg(preds, yva, gva), True

    boosters = []
    for bag in range(max(1, cfg.ranker_bags)):
        booster = lgb.train({**params, "seed": cfg.seed + bag}, dtr, num_boost_round=cfg.n_estimators, valid_sets=valid_sets,
                            feval=feval, callbacks=callbacks)
        if valid_sets:
            booster = booster if booster.best_iteration <= 0 else _trim(booster)
        boosters.append(booster)
    log.info("ranker %s: %d users (%d held out), %d rows, %d booster(s) of %s trees, best valid %s, %.1fs", cfg.objective,
             len(data.users), int(hold.sum()), len(data.y), len(boosters), [b.num_trees() for b in boosters],
             [dict(b.best_score.get("valid_0", {})) for b in boosters], time.perf_counter() - t)
    return Ranker(boosters[0], cols, boosters[1:])


def _trim(booster):
    import lightgbm as lgb

    best = booster.best_iteration
    b = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    b.best_iteration, b.best_score = best, booster.best_score
    return b
