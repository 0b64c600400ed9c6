"""Candidate retrieval: candidate sources fused in one Qdrant query, and the cold start.

In: a :class:`~engine.profiles.UserContext`, a candidate count and a :class:`Filter`.
Out: fused hits (with vectors) and the strategy name: ``popular`` (no liked items: popular items
diversified by genre), ``item-to-item`` (up to 2 liked items) or ``retrieval``.

A candidate source is a function ``(ctx, n, settings) -> list[VectorQuery]``; the retriever asks
every source in :attr:`Retriever.sources` and the store fuses all queries with reciprocal rank
fusion. Add a source (collaborative, sequential, ...) by appending to that list.
"""

from __future__ import annotations

from collections.abc import Callable

from .config import Settings
from .profiles import TASTE_PREFIX, UserContext
from .store import Filter, Hit, VectorQuery, VectorStore
from .types import genres_of

__all__ = ["CandidateSource", "DEFAULT_SOURCES", "Retriever", "diversify_by_genre"]

CandidateSource = Callable[[UserContext, int, Settings], list[VectorQuery]]


def item_to_item(ctx: UserContext, n: int, s: Settings) -> list[VectorQuery]:
    """Near the recently liked items, away from recently disliked ones."""
    recent = [ctx.items[e.item_id].vectors for e in reversed(ctx.pos) if e.item_id in ctx.items and ctx.items[e.item_id].vectors][: s.retrieval.recent_positives]
    negs = [ctx.items[e.item_id].vectors for e in reversed(ctx.neg) if e.item_id in ctx.items and ctx.items[e.item_id].vectors][:5]
    return [VectorQuery("text", positives=[v["text"] for v in recent if "text" in v], negatives=[v["text"] for v in negs if "text" in v], limit=n)]


def taste_and_summary(ctx: UserContext, n: int, s: Settings) -> list[VectorQuery]:
    """Near the taste vector and the embedded preference summary (users with more than 2 likes)."""
    if len(ctx.pos) <= 2:
        return []
    queries = []
    if TASTE_PREFIX + "text" in ctx.taste:
        queries.append(VectorQuery("text", vector=ctx.taste[TASTE_PREFIX + "text"], limit=n))
    if ctx.state is not None and "summary" in ctx.state.vectors:
        queries.append(VectorQuery("text", vector=ctx.state.vectors["summary"], limit=n, weight=0.5))
    return queries


def popularity_prior(ctx: UserContext, n: int, s: Settings) -> list[VectorQuery]:
    """On real catalogs, well-liked items are strong candidates for everyone."""
    return [VectorQuery("text", vector=None, limit=n, weight=s.retrieval.popularity_weight, order_by="popularity")]


def clip_taste(ctx: UserContext, n: int, s: Settings) -> list[VectorQuery]:
    """Near the CLIP taste vectors (only with pretrained CLIP weights: random ones are noise)."""
    if not (s.clip.enabled and s.clip.pretrained is not None):
        return []
    return [VectorQuery(name, vector=ctx.taste[TASTE_PREFIX + name], limit=n, weight=0.5) for name in ("image", "clip_text") if TASTE_PREFIX + name in ctx.taste]


DEFAULT_SOURCES: list[CandidateSource] = [item_to_item, taste_and_summary, popularity_prior, clip_taste]


def diversify_by_genre(pool: list[Hit], k: int) -> list[Hit]:
    """The first ``k`` of ``pool`` (best first) with no first genre repeated before every first genre
    in the pool has had a turn; items without genres are never held back."""
    picked, rest, seen_genres = [], [], set()
    for h in pool:
        g = tuple(sorted(genres_of(h.payload.get("attributes") or {})))
        (rest if g and g[0] in seen_genres else picked).append(h)
        if g:
            seen_genres.add(g[0])
    return (picked + rest)[:k]


class Retriever:
    """Fuses the candidate sources in one store query; popular, genre-diverse items on cold start."""

    def __init__(self, settings: Settings, store: VectorStore, items_col: str, sources: list[CandidateSource] | None = None) -> None:
        self.settings, self.store, self.items_col = settings, store, items_col
        self.sources: list[CandidateSource] = list(DEFAULT_SOURCES if sources is None else sources)

    def retrieve(self, ctx: UserContext, limit: int, flt: Filter) -> tuple[list[Hit], str]:
        """Up to ``limit`` hits (with vectors) passing ``flt``, and the strategy used."""
        rc = self.settings.retrieval
        if not ctx.pos:
            return self.popular(limit, flt), "popular"
        n = max(rc.candidates, limit)
        queries = [q for source in self.sources for q in source(ctx, n, self.settings)]
        queries = [q for q in queries if (q.vector is not None or q.positives or q.order_by) and q.weight > 0]
        hits = self.store.query(self.items_col, queries, limit=limit, flt=flt, with_vectors=True, rrf_k=rc.rrf_k)
        return hits, "retrieval" if len(ctx.pos) > 2 else "item-to-item"

    def popular(self, k: int, flt: Filter) -> list[Hit]:
        """Cold start: popular items, diversified by genre."""
        return diversify_by_genre(self.store.top_by(self.items_col, "popularity", max(5 * k, 50), flt), k)
