"""Personalized search: items matching a text or image query, re-ordered by the user's taste.

In: a query (text; or image bytes, a path or a PIL image), an optional user context, filters.
Out: :class:`SearchHit` rows with the query relevance, the personal score and their blend
(``retrieval.search_profile_weight``). Queries are encoded by the same encoders as ingestion
(:class:`~engine.components.Components`: ``text_encoder``, ``clip_text``, ``clip_image``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .components import Components
from .config import Settings
from .errors import BackendUnavailableError, InvalidInputError
from .profiles import TASTE_PREFIX, UserContext
from .store import Filter, Hit, VectorQuery, VectorStore
from .store.base import cosine
from .types import SearchHit

__all__ = ["Searcher", "minmax"]


def minmax(x: np.ndarray) -> np.ndarray:
    """Scaled to [0, 1]; all zeros when constant."""
    if x.size == 0 or float(x.max() - x.min()) < 1e-9:
        return np.zeros_like(x)
    return (x - x.min()) / (x.max() - x.min())


def _similarity(vec: Any, hits: list[Hit], using: str) -> np.ndarray:
    return np.array([cosine(vec, (h.vectors or {}).get(using, [])) if (h.vectors or {}).get(using) else 0.0 for h in hits], np.float32)


class Searcher:
    def __init__(self, settings: Settings, store: VectorStore, items_col: str, components: Components) -> None:
        self.settings, self.store, self.items_col, self.components = settings, store, items_col, components

    def queries(self, query: Any, n: int) -> tuple[list[VectorQuery], list[float], str]:
        """The store queries for ``query``, its main vector and the named vector it lives in."""
        comps = self.components
        if isinstance(query, str):
            if not query.strip():
                raise InvalidInputError("empty query")
            qv = comps.text_encoder.encode([query[:2000]])[0].tolist()
            queries = [VectorQuery("text", vector=qv, limit=n)]
            if comps.meaningful_clip and comps.clip is not None:
                cq = comps.clip_text.encode([query[:300]])[0].tolist()
                queries += [VectorQuery("image", vector=cq, limit=n, weight=0.5), VectorQuery("clip_text", vector=cq, limit=n, weight=0.5)]
            return queries, qv, "text"
        if comps.clip is None:
            raise BackendUnavailableError(f"image search needs CLIP weights: {comps.clip_error or 'CLIP disabled'}")
        if isinstance(query, Path):
            query = query.read_bytes()
        img = comps.decode_image(query, "query image") if isinstance(query, (bytes, bytearray)) else query
        qv = comps.clip_image.encode([img])[0].tolist()
        return [VectorQuery("image", vector=qv, limit=n)], qv, "image"

    def search(self, query: Any, k: int, flt: Filter, user: Callable[[], UserContext] | None = None) -> list[SearchHit]:
        """Top-``k`` matches; with ``user`` (returns the user's context), blended with the
        similarity to the user's text taste."""
        n = max(self.settings.retrieval.candidates, k)
        queries, qv, using = self.queries(query, n)
        hits = self.store.query(self.items_col, queries, limit=n, flt=flt, with_vectors=True)
        rel = _similarity(qv, hits, using)
        taste = user().taste.get(TASTE_PREFIX + "text") if user is not None else None
        personal = _similarity(taste, hits, "text") if taste is not None else None
        w = self.settings.retrieval.search_profile_weight
        score = minmax(rel) if personal is None else (1 - w) * minmax(rel) + w * minmax(personal)
        order = np.argsort(-score, kind="stable")[:k]
        return [
            SearchHit(
                item_id=hits[i].payload["item_id"], title=hits[i].payload.get("title", ""), score=float(score[i]),
                relevance=float(rel[i]), personal=None if personal is None else float(personal[i]),
            )
            for i in order
        ]
