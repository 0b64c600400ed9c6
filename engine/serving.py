"""Stage: serving the fitted model (``engine.fitting`` trains it): the list for a user's history, with reasons.

In:  the live model (:meth:`LearnedStage.current`), a user's events (any order), a :class:`Filter`, a depth.
Out: :meth:`ModelServing.recommend` -> ``[(item id, score, reason item id)]``; :meth:`ModelServing.hits` -> the served
     store hits (one per title) with their reasons; :meth:`ModelServing.rank` -> given items by the same scores;
     :meth:`ModelServing.warm` ranks a user's list ahead of their next request.

The collaborative candidates come from a Qdrant query on the ``cf`` vectors with a query vector folded in from the
user's CURRENT history, when the store holds the live model's vectors (``LearnedStage.cf_version``), else from an
in-memory scan; in index mode the content source's top list comes from a query on the ``text`` vectors too. Payload
filters run in Qdrant. Lists without filters of the caller's own are kept per user (``engine.listcache``) until the
user's history, the model or the catalog changes.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from . import explain as explaining
from .config import Settings
from .fitting import CF_VECTOR, LearnedStage
from .items import ItemCatalog, folded_title
from .listcache import ListCache
from .profiles import is_positive
from .store import Filter, Hit, VectorStore, point_id, point_key
from .types import Event

__all__ = ["ModelServing", "hits_limit"]

TEXT_VECTOR = "text"
_SCORE_ALL_LIMIT = 20_000
"""With a payload filter, score every matching item up to this many (exact); beyond, filter the pool."""
_EXTRA_PICKS = 10
"""``hits`` ranks this many more than it serves: a second id of a title already listed or seen is dropped."""
_KEEP_DEPTH = 200
"""Lists deeper than this are ranked for their request only (a kept list holds its ids, scores and reasons)."""


def hits_limit(rc, k: int, rerank: str) -> int:
    """Hits ``Engine.recommend(k)`` retrieves under ``rc`` (``RetrievalConfig``): the LLM re-ranker's candidates, or 3k
    for MMR; ``add_events`` ranks a default request's ahead."""
    return max(k, rc.rerank_candidates if rerank != "none" else 0, 3 * k if rc.mmr_lambda is not None else 0)


class ModelServing:
    def __init__(self, settings: Settings, store: VectorStore, items_col: str, catalog: ItemCatalog, learned: LearnedStage) -> None:
        self.settings, self.store, self.items_col, self.catalog, self.learned = settings, store, items_col, catalog, learned
        self._keys: tuple[object, dict[int, str]] | None = None  # (model, {point key: item id}) for the index queries
        self.lists = ListCache(settings.retrieval.cache_users, settings.retrieval.cache_ttl_s)

    def _key_items(self, model) -> dict[int, str]:
        """``{point key: item id}`` for the model's items: the index queries answer with keys (``nearest_keys``), not hits."""
        cached = self._keys
        if cached is None or cached[0] is not model:
            cached = self._keys = (model, {point_key(point_id("item", i)): i for i in model.item_ids})
        return cached[1]

    def _vector_search(self, model, vector: str, exclude_ids, deeper: bool = False, after: bool = False):
        """``search(vector, limit)``: the ``limit`` best items the model knows, best first. Items it does not know
        (ingested after the fit) are skipped, asking Qdrant up to 3 times deeper (2x, 4x, 8x) when they took places; a
        list still short after that is served short (a refit makes them known). ``deeper``: Qdrant is asked
        for half as many more hits (at least 20) from the start: HNSW's ``ef`` follows the limit, and a deeper search
        comes closer to the exact list the ranker was trained on (the content list). ``after``: the exclusions are
        dropped from a deeper unfiltered query instead of filtered in Qdrant (when they are fewer than the hits asked).
        For ``cf`` in index mode: only items with events hold one there, few enough that Qdrant scans them rather than
        walk a graph, and a scan checks a filter on every point of the collection."""
        ids, exclude = self._key_items(model), set(exclude_ids)
        skip = {point_key(p) for p in exclude}

        def search(vec: np.ndarray, limit: int) -> list[str]:
            n = limit + max(20, limit // 2) if deeper else limit
            m, flt = (n + len(exclude), None) if after and len(exclude) <= n else (n, Filter(exclude_ids=exclude))
            q, cap = vec.tolist(), 8 * m
            while True:
                keys = self.store.nearest_keys(self.items_col, vector, q, m, flt)
                out = [ids[k] for k in keys if k in ids and k not in skip]
                if len(out) >= limit or len(keys) < m or m >= cap:  # enough, nothing more to find, or 3 rounds deeper
                    return out[:limit]
                m *= 2  # twice as deep (HNSW's ef grows with it), only when unknown items took places
        return search

    def cf_served(self, model) -> bool:
        """Whether the store holds ``model``'s ``cf`` vectors now."""
        return self.learned.cf_version() == model.info.get("version")

    def cf_search(self, model, flt: Filter, served: bool | None = None):
        """The Qdrant query on the ``cf`` vectors for ``model`` (None when its vectors are not in the store; ``served``:
        :meth:`cf_served` as the caller read it)."""
        return self._vector_search(model, CF_VECTOR, flt.exclude_ids, after=model.indexed) if (self.cf_served(model) if served is None else served) \
            else None

    def content_search(self, model, events: list[Event]):
        """Index mode: the content source's top list from a Qdrant query on the items' ``text`` vectors (None otherwise)."""
        return self._vector_search(model, TEXT_VECTOR, {point_id("item", e.item_id) for e in events}, deeper=True) if model.indexed else None

    def searches(self, model, events: list[Event], flt: Filter, exclude_seen: bool = True, cf_served: bool | None = None) -> tuple[Any, Any]:
        """The (cf, content) searches a request passes to the model. In index mode both lists are features, so they
        exclude the history only (never the caller's filter: an item's score must not depend on it)."""
        history = {point_id("item", e.item_id) for e in events}
        if model.indexed:
            return self.cf_search(model, Filter(exclude_ids=history), cf_served), self.content_search(model, events)
        seen = history if exclude_seen else set()
        return self.cf_search(model, Filter(exclude_ids=flt.exclude_ids | seen), cf_served), None  # only as deep as the pool needs

    def recommend(self, model, events: list[Event], k: int, flt: Filter, exclude_seen: bool = True,
                  epoch: int | None = None) -> list[tuple[str, float, str | None]]:
        """Top ``k`` (item id, score, reason item id) for a history under ``flt`` (items in ``flt.exclude_ids``
        are left out; the history's items too when ``exclude_seen``). With payload conditions, every matching item
        is scored (exact) when there are at most ``_SCORE_ALL_LIMIT``; otherwise the pool is filtered. Without them or
        exclusions of the caller's own, the list is kept (``engine.listcache``) until the history or the model changes
        (``epoch``: :meth:`epoch` read before ``events`` were, so a list of a user erased meanwhile is not kept)."""
        generation, deleted = self.catalog.generation, self.catalog.deleted  # in this order: see ItemCatalog.generation
        seen = {point_id("item", e.item_id) for e in events} if exclude_seen else set()
        gone = {point_id("item", i) for i in deleted}
        if gone:  # deleted since the fit: the model still ranks them, so they would crowd the list out
            flt = dataclasses.replace(flt, exclude_ids=flt.exclude_ids | gone)
        if not (flt.match or flt.ranges or flt.include_ids is not None):
            extra, cf_on = flt.exclude_ids - seen, self.cf_served(model)

            def ranked():
                cf, cs = self.searches(model, events, flt, exclude_seen, cf_on)
                return model.recommend(events, k=k + len(extra), exclude_seen=exclude_seen, cf_search=cf, content_search=cs)
            if extra - gone or not events or k > _KEEP_DEPTH:  # the caller's own exclusions, or deep: for this request only
                out = ranked()
            else:
                key = (model.info.get("version"), model.info.get("fitted_at"), cf_on, generation, exclude_seen, k)
                out = self.lists.get_or_compute(str(events[0].user_id), key, events, ranked, depth=k, since=epoch)
            return [r for r in out if point_id("item", r[0]) not in flt.exclude_ids][:k]
        cf, cs = self.searches(model, events, flt, exclude_seen)
        allowed = [h.payload["item_id"] for h in itertools.islice(self.store.scroll(self.items_col, flt), _SCORE_ALL_LIMIT + 1)]
        if len(allowed) > _SCORE_ALL_LIMIT:  # too many to score: keep the pool's items that match
            pool = model.recommend(events, k=model.config.pool_size, exclude_seen=exclude_seen, cf_search=cf, content_search=cs)
            inside = Filter(match=flt.match, ranges=flt.ranges, exclude_ids=flt.exclude_ids, include_ids={point_id("item", r[0]) for r in pool})
            ok = {h.payload["item_id"] for h in self.store.scroll(self.items_col, inside)}
            return [r for r in pool if r[0] in ok][:k]
        ranked = [r for r in model.rank(events, allowed, content_search=cs, cf_search=cf) if np.isfinite(r[1])][:k]
        reasons = model.reasons(model.state(events, cs, cf), model.index.rows([i for i, _ in ranked])) if ranked else []
        return [(i, s, why) for (i, s), why in zip(ranked, reasons)]

    def warm(self, events: list, history: Callable[[str], list[Event]]) -> None:
        """After ``events`` were stored (Event objects or mappings): when they touch at most ``retrieval.warm_users``
        users, queue the ranking of each one's list on the background thread (``ListCache.submit``), at the depth of
        their list kept here, else of a default ``Engine.recommend(k=10)``. A request meanwhile waits for that ranking
        instead of repeating it; a failure is logged, and the request ranks the list then."""
        rc = self.settings.retrieval
        cap, users, limit = rc.warm_users, set(), hits_limit(rc, 10, rc.rerank)
        for e in events if cap > 0 and self.lists.max_users > 0 else ():
            u = e.user_id if isinstance(e, Event) else e.get("user_id") if isinstance(e, Mapping) else None
            if u is not None:
                users.add(str(u))
            if len(users) > cap:  # a bulk load: nothing ranked ahead
                return
        for u in sorted(users):  # one queued ranking per user: a later one reads the same (newer) history
            self.lists.submit(lambda u=u: self._rank_ahead(u, history, limit), tag=u)

    def _rank_ahead(self, user_id: str, history: Callable[[str], list[Event]], limit: int) -> None:
        epoch = self.lists.epoch()  # before the history: see recommend
        events, depth = history(user_id), self.lists.depth(user_id) or limit + _EXTRA_PICKS
        model = self.learned.current() if events and depth <= _KEEP_DEPTH else None
        if model is not None:
            self.recommend(model, events, depth, Filter(exclude_ids={point_id("item", e.item_id) for e in events}), epoch=epoch)

    def epoch(self) -> int:
        """Read before a request reads the user's history, and passed to :meth:`recommend` (``ListCache.epoch``)."""
        return self.lists.epoch()

    def drop(self, user_id: str) -> None:
        """Forget a user's kept list (``Engine.delete_user``), and any ranking of theirs under way."""
        self.lists.drop(user_id)

    def close(self) -> None:
        """Stop ranking ahead (``Engine.close`` calls it before the store closes)."""
        self.lists.close()

    def hits(self, model, events: list[Event], limit: int, flt: Filter, with_vectors: bool = False,
             exclude_seen: bool = True, epoch: int | None = None) -> tuple[list[Hit], dict]:
        """The served list: store hits (scores from the model) and ``{item_id: (reason, because_of)}``.

        One entry per title: a catalog can hold one title under several ids (ml-100k has 18 such titles), and the
        second copy (or, with ``exclude_seen``, a copy of a seen title) is no new recommendation. A few extra picks
        make up for the dropped ones."""
        picks = self.recommend(model, events, limit + _EXTRA_PICKS, flt, exclude_seen, epoch)
        seen = set(self.catalog.folded_titles([e.item_id for e in events]).values()) if exclude_seen else set()
        seen.discard("")

        def choose(titles: dict[str, str]) -> list:  # the first ``limit`` picks with a title not listed or seen yet
            out, taken = [], set(seen)
            for iid, score, why in picks:
                key = titles.get(iid)  # None: not in the store
                if key is not None and not (key and key in taken):
                    taken.add(key)
                    out.append((iid, score, why))
                    if len(out) == limit:
                        break
            return out

        def payloads(chosen: list) -> dict[str, Hit]:  # each id once: a film named as the reason for several picks is read once
            return self.catalog.hits(list(dict.fromkeys([i for i, _, _ in chosen] + [w for _, _, w in chosen if w])), with_vectors=with_vectors)
        # the picks chosen by their titles (cached per process), so only those and their reasons' payloads are read (~half
        # of all the picks'); when one of them is gone from the store meanwhile, again from every pick's stored payload
        served = choose(self.catalog.folded_titles([i for i, _, _ in picks]))
        found = payloads(served)
        if any(i not in found for i, _, _ in served):
            found = payloads(picks)
            served = choose({i: folded_title(found[i].payload) for i, _, _ in picks if i in found})
        thr = self.settings.profile.positive_rating
        liked = {e.item_id: is_positive(e, thr) for e in events}
        hits, reasons = [], {}
        for iid, score, why in served:
            h = found[iid]
            hits.append(Hit(id=h.id, score=score, payload=h.payload, vectors=h.vectors))
            reasons[iid] = explaining.history_reason(h, found.get(why) if why else None, liked.get(why or "", False))
        return hits, reasons

    def rank(self, model, events: list[Event], item_ids: list[str]) -> list[tuple[str, float]]:
        """``item_ids`` best first, by exactly the scores :meth:`recommend` gives them."""
        if not model.indexed:
            return model.rank(events, item_ids)
        cf, cs = self.searches(model, events, Filter())
        return model.rank(events, item_ids, content_search=cs, cf_search=cf)
