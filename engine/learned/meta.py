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

    def _design(self, rows: np.ndarray | slice) -> np.ndarray:
        """Ridge inputs: embedding, genres, centred year / 20 (0 when unknown), a missing-year flag, a bias (float64)."""
        y = self.year[rows].astype(np.float64)
        known = np.isfinite(y)
        mid = float(np.nanmedian(self.year)) if np.isfinite(self.year).any() else 0.0
        yc = np.where(known, (y - mid) / 20.0, 0.0)
        return np.hstack([self.emb[rows], self.genres[rows], yc[:, None], (~known)[:, None], np.ones((len(yc), 1))]).astype(np.float64)

    def popularity_prior(self, counts: np.ndarray, seed: int = 0, chunk: int = 16384) -> np.ndarray:
        """``log1p(events)`` per item as a ridge regression on its content predicts it (float32, one per row).

        Fitted on the items with events only (an item without any is new, not unpopular). Those items get their value
        from a model fitted without them (5 seeded folds), so a ranker trained on it sees for an established item what a
        new item gets from the model fitted on all: a content guess, never its own count. The ridge penalty is the one of
        1, 10, 100 with the least out-of-fold error. Without text vectors or with fewer than 20 items with events: nan.
        The inputs are built ``chunk`` rows at a time (a catalog's float64 design matrix would not fit in memory)."""
        counts = np.asarray(counts, np.float64)
        n = len(counts)
        has = np.flatnonzero(counts > 0)
        out = np.full(n, np.nan, np.float32)
        if self.emb.shape[1] <= 1 or len(has) < 4 * _PRIOR_FOLDS:
            return out
        t = np.log1p(counts)

        def chunks(rows):
            for s in range(0, len(rows), chunk):
                r = rows[s : s + chunk]
                yield r, self._design(r)

        folds = [np.sort(f) for f in np.array_split(has[np.random.default_rng(seed).permutation(len(has))], _PRIOR_FOLDS)]
        grams = []
        for f in folds:  # per fold X'X and X't; the model without fold f uses the sums over the others
            d = self._design(f[:1]).shape[1]
            G, b = np.zeros((d, d)), np.zeros(d)
            for r, X in chunks(f):
                G += X.T @ X
                b += X.T @ t[r]
            grams.append((G, b))
        G, b = sum(g for g, _ in grams), sum(v for _, v in grams)
        eye = np.eye(len(b))
        oof = np.zeros((n, len(_PRIOR_LAMBDAS)))
        for f, (Gf, bf) in zip(folds, grams):
            W = np.stack([np.linalg.solve(G - Gf + lam * eye, b - bf) for lam in _PRIOR_LAMBDAS], 1)
            for r, X in chunks(f):
                oof[r] = X @ W
        k = int(np.argmin(((oof[has] - t[has, None]) ** 2).mean(0)))
        w = np.linalg.solve(G + _PRIOR_LAMBDAS[k] * eye, b)
        for r, X in chunks(np.flatnonzero(counts <= 0)):  # new items: the model fitted on all
            out[r] = X @ w
        out[has] = oof[has, k]
        return out
