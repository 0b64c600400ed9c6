"""Non-LLM baselines for the offline protocol, each ``fit(train_events, item_ids)`` then
``score(user_id, history) -> np.ndarray`` over the catalog (in ``item_ids`` order).

``history`` is the user's ordered events known at scoring time (train for the valid stage,
train + valid for the test stage), so one fitted object serves any stage and users unseen at fit
time are scored by fold-in. Scores of items already in the history are not masked here: the
metrics exclude them.

Every class lists its tuning grid in ``GRID`` (full) and ``QUICK_GRID``; ``protocol.run_baselines``
picks on valid NDCG@10 and refits on train + valid.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..types import Event, Item

__all__ = [
    "Baseline",
    "Popularity",
    "ItemKNN",
    "EASE",
    "ALS",
    "Markov",
    "TextKNN",
    "grid",
    "item_texts",
    "interaction_matrix",
]


def grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """Cartesian product of keyword axes as a list of parameter dicts."""
    keys = list(axes)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(axes[k] for k in keys))]


def interaction_matrix(events: Sequence[Event], index: dict[str, int]):
    """Binary user x item CSR matrix (users in first-seen order) and the user index."""
    from scipy import sparse

    users: dict[str, int] = {}
    rows, cols = [], []
    for e in events:
        j = index.get(e.item_id)
        if j is None:
            continue
        rows.append(users.setdefault(e.user_id, len(users)))
        cols.append(j)
    X = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(users), len(index)))
    X.data[:] = 1.0  # duplicates count once
    X.sum_duplicates()
    X.data[:] = 1.0
    return X, users


class Baseline:
    """Base class: holds the catalog index."""

    name = "baseline"
    GRID: list[dict[str, Any]] = [{}]
    QUICK_GRID: list[dict[str, Any]] = [{}]

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.fitted_params: dict[str, Any] = {}
        self.fit_seconds = 0.0

    def _index(self, item_ids: Sequence[str]) -> None:
        self.item_ids = list(item_ids)
        self.index = {i: k for k, i in enumerate(self.item_ids)}
        self.n = len(self.item_ids)

    def _hist_idx(self, history: Sequence[Event]) -> np.ndarray:
        return np.fromiter((self.index[e.item_id] for e in history if e.item_id in self.index), dtype=np.int64)

    def fit(self, train_events: Sequence[Event], item_ids: Sequence[str]) -> Baseline:
        t = time.perf_counter()
        self._index(item_ids)
        self._fit(list(train_events))
        self.fit_seconds = time.perf_counter() - t
        return self

    def _fit(self, events: list[Event]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, user_id: str, history: Sequence[Event]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class Popularity(Baseline):
    """Interaction count in the fit events."""

    name = "popularity"

    def _fit(self, events: list[Event]) -> None:
        c = np.zeros(self.n)
        for e in events:
            j = self.index.get(e.item_id)
            if j is not None:
                c[j] += 1
        self.counts = c

    def score(self, user_id: str, history: Sequence[Event]) -> np.ndarray:
        return self.counts.copy()


class ItemKNN(Baseline):
    """Item-based collaborative filtering: cosine on the binary user-item matrix with shrinkage
    ``co / (sqrt(n_i n_j) + shrink)``, top-``k`` neighbours per item, score = sum over history."""

    name = "itemknn"
    GRID = grid(k=[3, 5, 10, 20, 50, 100, 200, 400], shrink=[0, 10, 50])  # k=10 won at the old edge: 3, 5 added
    QUICK_GRID = grid(k=[50, 200], shrink=[10])

    def _fit(self, events: list[Event]) -> None:
        X, _ = interaction_matrix(events, self.index)
        co = (X.T @ X).toarray().astype(np.float64)
        cnt = np.diag(co).copy()
        sim = co / (np.sqrt(np.outer(cnt, cnt)) + float(self.params.get("shrink", 0)) + 1e-12)
        np.fill_diagonal(sim, 0.0)
        k = int(self.params.get("k", 100))
        if 0 < k < self.n:  # keep each item's k most similar neighbours (row-wise)
            drop = np.argpartition(-sim, k, axis=1)[:, k:]
            np.put_along_axis(sim, drop, 0.0, axis=1)
        self.sim = sim

    def score(self, user_id: str, history: Sequence[Event]) -> np.ndarray:
        h = self._hist_idx(history)
        return self.sim[h].sum(0) if len(h) else np.zeros(self.n)


class EASE(Baseline):
    """EASE (Steck, 2019): B = I - P diagMat(1 / diag(P)), P = (X^T X + lambda I)^-1; score = x_u B."""

    name = "ease"
    GRID = grid(lam=[50, 100, 200, 350, 500, 750, 1000, 2000])
    QUICK_GRID = grid(lam=[200, 500])

    def _fit(self, events: list[Event]) -> None:
        X, _ = interaction_matrix(events, self.index)
        self.B = ease_weights((X.T @ X).toarray().astype(np.float64), float(self.params.get("lam", 500)))

    def score(self, user_id: str, history: Sequence[Event]) -> np.ndarray:
        h = np.unique(self._hist_idx(history))
        return self.B[h].sum(0) if len(h) else np.zeros(self.n)


def ease_weights(gram: np.ndarray, lam: float) -> np.ndarray:
    """Closed-form EASE weights from the item Gram matrix X^T X."""
    G = gram + lam * np.eye(len(gram))
    P = np.linalg.inv(G)
    B = -P / np.diag(P)[None, :]
    np.fill_diagonal(B, 0.0)
    return B


class ALS(Baseline):
    """Implicit-feedback ALS (``implicit``; CPU), users folded in from their history at scoring time
    with the exact solve of ``recalculate_user`` (numpy, faster per user; so valid- and test-stage histories are scored the same way).
    ``alpha`` is implicit's confidence scale (an observed item weighs ``alpha``; unobserved 1)."""

    name = "als"
    GRID = grid(factors=[32, 64, 128], regularization=[0.01, 0.1, 1.0], alpha=[1.0, 2.0, 5.0, 10.0], iterations=[20])
    QUICK_GRID = grid(factors=[64], regularization=[0.1], alpha=[10.0], iterations=[10])

    def _fit(self, events: list[Event]) -> None:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        X, self.users = interaction_matrix(events, self.index)
        self.model = AlternatingLeastSquares(
            factors=int(self.params.get("factors", 64)),
            regularization=float(self.params.get("regularization", 0.1)),
            alpha=float(self.params.get("alpha", 10.0)),
            iterations=int(self.params.get("iterations", 20)),
            random_state=int(self.params.get("seed", 0)),
            num_threads=int(self.params.get("threads", 2)),
            calculate_training_loss=False,
        )
        with threadpool_limits(1, "blas"):  # implicit's own threads; OpenBLAS threads would contend
            self.model.fit(X, show_progress=False)
        self.item_factors = Y = np.asarray(self.model.item_factors, np.float64)
        self._YtY = Y.T @ Y
        self._alpha = float(self.model.alpha)
        self._reg = float(self.model.regularization)

    def user_factors(self, h: np.ndarray) -> np.ndarray:
        """Fold-in: the exact ALS user solve of implicit's ``recalculate_user`` for history items ``h``
        (x = (Y^T C Y + reg I)^-1 Y^T C p with confidence ``alpha`` on the history, 1 elsewhere)."""
        Y = self.item_factors
        Yh = Y[h]
        A = self._YtY + self._reg * np.eye(Y.shape[1]) + (self._alpha - 1.0) * (Yh.T @ Yh)
        return np.linalg.solve(A, self._alpha * Yh.sum(0))

    def score(self, user_id: str, history: Sequence[Event]) -> np.ndarray:
        h = np.unique(self._hist_idx(history))
        if not len(h):
            return np.zeros(self.n)
        return self.item_factors @ self.user_factors(h)


class Markov(Baseline):
    """First-order transitions: P(b | a) from the count of b right after a in each fit sequence
    (ordered with the split's seeded tie order), scored from the user's last item and blended with
    popularity: ``(1 - w) P(b | last) + w P(b)``. ``window`` > 1 also counts b within the next
    ``window`` positions, weighted 1 / distance (window 1 = plain first order)."""

    name = "markov"
    GRID = grid(w=[0.0, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95], window=[1, 2, 3, 5])  # w=0.8, window=3 won at the old edges
    QUICK_GRID = grid(w=[0.05, 0.2], window=[1])

    def _fit(self, events: list[Event]) -> None:
        from .split import order_history

        seed = int(self.params.get("seed", 0))
        window = int(self.params.get("window", 1))
        by_user: dict[str, list[Event]] = {}
        for e in events:
            by_user.setdefault(e.user_id, []).append(e)
        T = np.zeros((self.n, self.n))
        pop = np.zeros(self.n)
        for evs in by_user.values():
            seq = self._hist_idx(order_history(evs, seed))
            np.add.at(pop, seq, 1.0)
            for d in range(1, window + 1):
                if len(seq) > d:
                    np.add.at(T, (seq[:-d], seq[d:]), 1.0 / d)
        rs = T.sum(1, keepdims=True)
        self.P = np.divide(T, rs, out=np.zeros_like(T), where=rs > 0)
        self.pop = pop / max(pop.sum(), 1.0)

    def score(self, user_id: str, history: Sequence[Event]) -> np.ndarray:
        w = float(self.params.get("w", 0.1))
        h = self._hist_idx(history)
        if not len(h):
            return self.pop.copy()
        return (1 - w) * self.P[h[-1]] + w * self.pop


def item_texts(items: Sequence[Item]) -> dict[str, str]:
    """Title, genres and description of each item (the content baseline's text)."""
    out = {}
    for it in items:
        genres = it.attributes.get("genres") or []
        parts = [it.title or it.id]
        if genres:
            parts.append("Genres: " + ", ".join(str(g) for g in genres) + ".")
        if it.description:
            parts.append(it.description)
        out[it.id] = " ".join(parts)
    return out


_EMB_CACHE: dict[str, np.ndarray] = {}


def encode_texts(texts: Sequence[str], cache_dir: str | None = None) -> np.ndarray:
    """Normalized MiniLM embeddings (``indexers.text.SentenceTransformerEncoder``), cached per process
    and on disk (``PERSONA_OFFLINE_CACHE`` or ``~/.cache/persona/offline``) by a hash of the texts."""
    import hashlib
    import os
    from pathlib import Path

    key = hashlib.sha256("\x1e".join(texts).encode("utf-8")).hexdigest()[:24]
    if key in _EMB_CACHE:
        return _EMB_CACHE[key]
    d = Path(cache_dir or os.environ.get("PERSONA_OFFLINE_CACHE") or Path.home() / ".cache" / "persona" / "offline")
    f = d / f"minilm-{key}.npy"
    if f.exists():
        _EMB_CACHE[key] = np.load(f)
        return _EMB_CACHE[key]
    from ..components import Components  # the engine's one door to the encoders

    emb = np.asarray(Components().text_encoder.encode(list(texts)), np.float32)
    try:
        d.mkdir(parents=True, exist_ok=True)
        np.save(f, emb)
    except OSError:
        pass
    _EMB_CACHE[key] = emb
    return emb


class TextKNN(Baseline):
    """Content baseline: mean cosine between each item's text embedding and the user's ``recent``
    last items (``recent=0``: the whole history). Needs ``texts`` ({item_id: text}) or
    ``embeddings`` ({item_id: vector}) passed to the constructor."""

    name = "textknn"
    GRID = grid(recent=[1, 3, 10, 30, 0])
    QUICK_GRID = grid(recent=[3, 10])

    def _fit(self, events: list[Event]) -> None:
        emb = self.params.get("embeddings")
        if emb is None:
            texts = self.params.get("texts") or {}
            ids = [i for i in self.item_ids]
            vecs = encode_texts([texts.get(i, i) for i in ids])
            emb = dict(zip(ids, vecs))
        dim = len(next(iter(emb.values())))
        E = np.zeros((self.n, dim), np.float32)
        for i, v in emb.items():
            j = self.index.get(i)
            if j is not None:
                E[j] = v
        norms = np.linalg.norm(E, axis=1, keepdims=True)
        self.E = E / np.maximum(norms, 1e-12)

    def score(self, user_id: str, history: Sequence[Event]) -> np.ndarray:
        h = self._hist_idx(history)
        r = int(self.params.get("recent", 10))
        if r > 0:
            h = h[-r:]
        if not len(h):
            return np.zeros(self.n)
        return (self.E @ self.E[h].mean(0)).astype(np.float64)


def public_params(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters worth reporting (drops large objects such as texts / embeddings)."""
    return {k: v for k, v in params.items() if k not in ("texts", "embeddings", "verbose") and not (isinstance(v, float) and math.isnan(v))}
