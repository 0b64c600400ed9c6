"""Static per-item data the features read: L2-normalised text embeddings, genre multi-hot, release year.

In:  the catalog's items (``attributes["genres"]``, ``attributes["year"]``), the ``ItemIndex``, their text vectors.
Out: ``ItemMeta`` (rows aligned with the index; zero embedding rows and nan years where missing) and
     ``content_scores(q)`` (the float64 content product over the catalog, without re-casting it per call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..types import genres_of
from .index import ItemIndex

__all__ = ["ItemMeta"]

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
