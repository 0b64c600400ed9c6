"""Static per-item data the features read: L2-normalised text embeddings, genre multi-hot, release year.

In:  the catalog's items (``attributes["genres"]``, ``attributes["year"]``), the ``ItemIndex``, their text vectors.
Out: ``ItemMeta`` (rows aligned with the index; zero embedding rows and nan years where missing),
     ``content_scores(q)`` (the float64 content product over the catalog, without re-casting it per call) and
     ``popularity_prior(counts)`` (each item's log popularity as its content predicts it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..types import genres_of
from .index import ItemIndex

__all__ = ["ItemMeta"]

_PRIOR_FOLDS, _PRIOR_LAMBDAS = 5, (1.0, 10.0, 100.0)
_EMB64_CACHE_BYTES = 640 << 20  # float64 copy kept up to ~200k items at 384-d; above, the per-call cast stays


@dataclass
class ItemMeta:
    """Static per-item data: L2-normalised embeddings (zero rows when missing), genre multi-hot, year (nan)."""

    emb: np.ndarray
    genres: np.ndarray
    genre_names: list
    year: np.ndarray

    @classmethod
    def build(cls, items, index: ItemIndex, embeddings: np.ndarray | None = None, embedding_ids=None) -> ItemMeta:
        n = len(index)
        by_id = {str(it.id): it for it in items}
        names = sorted({g for it in items for g in genres_of(it.attributes)})
        gpos = {g: k for k, g in enumerate(names)}
        genres = np.zeros((n, max(1, len(names))), np.float32)
        year = np.full(n, np.nan, np.float32)
        for j, iid in enumerate(index.ids):
            it = by_id.get(iid)
            if it is None:
                continue
            for g in genres_of(it.attributes):
                genres[j, gpos[g]] = 1.0
            y = it.attributes.get("year")
            if isinstance(y, int | float) and not isinstance(y, bool) and math.isfinite(y):
                year[j] = y
        if embeddings is None:
            emb = np.zeros((n, 1), np.float32)
        else:
            embeddings = np.asarray(embeddings, np.float32)
            emb = np.zeros((n, embeddings.shape[1]), np.float32)
            ids = list(embedding_ids) if embedding_ids is not None else [str(it.id) for it in items]
            rows = index.rows(ids)
            ok = rows >= 0
            emb[rows[ok]] = embeddings[ok]
            norm = np.linalg.norm(emb, axis=1, keepdims=True)
            emb = emb / np.where(norm > 0, norm, 1.0)
        return cls(emb, genres, names, year)

    def __getstate__(self) -> dict:  # Ray ships the model to workers: not the float64 copy (each builds its own)
        d = dict(self.__dict__)
        d.pop("_emb64", None)
        return d

    def content_scores(self, q: np.ndarray) -> np.ndarray:
        """``emb @ q`` for a float64 query: the float64 product the features were fitted with, without re-casting the
        whole matrix on every call (the cast was most of a request's time at 10k items) while a float64 copy is small."""
        e64 = self.__dict__.get("_emb64")
        if e64 is None and self.emb.nbytes <= _EMB64_CACHE_BYTES // 2:
            e64 = self.__dict__["_emb64"] = self.emb.astype(np.float64)
        return (self.emb if e64 is None else e64) @ q

    def _design(self, rows: np.ndarray, mid: float) -> np.ndarray:
        """Ridge inputs (float64): embedding, genres, then 3 columns: (year - ``mid``) / 20 clipped to +-5 (0 when
        unknown), a missing-year flag, a bias. A non-finite input is 0: one broken vector must not turn every item's value to nan."""
        y = self.year[rows].astype(np.float64)
        known = np.isfinite(y)
        yc = np.clip(np.where(known, (y - mid) / 20.0, 0.0), -5.0, 5.0)
        X = np.hstack([self.emb[rows], self.genres[rows], yc[:, None], (~known)[:, None], np.ones((len(yc), 1))])
        return np.nan_to_num(X, copy=False, nan=0.0, posinf=0.0, neginf=0.0)

    def popularity_prior(self, counts: np.ndarray, seed: int = 0, chunk: int = 16384) -> np.ndarray:
        """``log1p(events)`` per item as a ridge regression on its content predicts it (float32, one per row).

        Fitted on the items with events only (an item without any is new, not unpopular). Those items get their value
        from a model fitted without their fold (5 seeded folds), its penalty (1, 10 or 100) chosen by the error on the
        other folds of models fitted without the fold and that one, so an item's own count never reaches its own value:
        a ranker trained on it sees for an established item what a new item gets, a content guess. New items get the
        model fitted on all, its penalty chosen by the out-of-fold error. Without text vectors or with fewer than 20
        items with events: nan. Inputs are built ``chunk`` rows at a time (a catalog's float64 design matrix would not
        fit in memory); fold errors come from the folds' sums of squares, not from predictions."""
        counts = np.asarray(counts, np.float64)
        n = len(counts)
        has = np.flatnonzero(counts > 0)
        out = np.full(n, np.nan, np.float32)
        if self.emb.shape[1] <= 1 or len(has) < 4 * _PRIOR_FOLDS:
            return out
        t = np.log1p(counts)
        mid = float(np.nanmedian(self.year)) if np.isfinite(self.year).any() else 0.0

        def chunks(rows):
            for s in range(0, len(rows), chunk):
                r = rows[s : s + chunk]
                yield r, self._design(r, mid)

        folds = [np.sort(f) for f in np.array_split(has[np.random.default_rng(seed).permutation(len(has))], _PRIOR_FOLDS)]
        d = self.emb.shape[1] + self.genres.shape[1] + 3  # _design's columns
        sums = []  # per fold: X'X, X't, t't
        for f in folds:
            G, b = np.zeros((d, d)), np.zeros(d)
            for r, X in chunks(f):
                G += X.T @ X
                b += X.T @ t[r]
            sums.append((G, b, float(t[f] @ t[f])))
        G, b = sum(s[0] for s in sums), sum(s[1] for s in sums)
        eye = np.eye(len(b))

        def fit(without, lam):  # the ridge fitted on every fold but ``without``
            return np.linalg.solve(G - sum(sums[k][0] for k in without) + lam * eye, b - sum(sums[k][1] for k in without))

        def err(w, k):  # squared error on fold k: w'Gw - 2w'b + t't
            Gk, bk, tk = sums[k]
            return float(w @ Gk @ w - 2 * w @ bk + tk)

        def best(out_of: tuple) -> float:  # the penalty whose models fitted without ``out_of`` and fold k err least on k
            rest = [k for k in range(_PRIOR_FOLDS) if k not in out_of]
            return min(_PRIOR_LAMBDAS, key=lambda lam: sum(err(fit(out_of + (k,), lam), k) for k in rest))

        for f, rows in enumerate(folds):
            w = fit((f,), best((f,)))  # nothing of fold f chose its penalty or fitted its model
            for r, X in chunks(rows):
                out[r] = X @ w
        w = fit((), best(()))
        for r, X in chunks(np.flatnonzero(counts <= 0)):  # new items: the model fitted on all
            out[r] = X @ w
        return out
