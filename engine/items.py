"""Items: attribute helpers, prompt rows and item lookup (a base module: indexers may import it).

In: the items collection of the store (payloads written by ``indexers.ingest``).
Out: payloads and hits by item id (:class:`ItemCatalog`), and the compact row that prompts show
for an item (:func:`prompt_row`).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from typing import Any

from .errors import NotFoundError
from .store import Hit, VectorStore, point_id
from .store.base import chunks
from .types import genres_of

__all__ = ["ITEM_INDEXES", "ItemCatalog", "genres_of", "prompt_row", "folded_title"]

# Payload indexes of the items collection (filters, popularity order, cold-start genres).
ITEM_INDEXES = {"item_id": "keyword", "popularity": "float", "attributes.genres": "keyword", "attributes.year": "float"}


def prompt_row(hit: Hit) -> dict[str, Any]:
    """What prompts show of an item: id, title, genres and summary."""
    p = hit.payload
    return {"id": p["item_id"], "title": p.get("title", ""), "genres": genres_of(p.get("attributes") or {}), "summary": p.get("summary") or ""}


def folded_title(payload: dict[str, Any]) -> str:
    """An item's title, case- and space-folded: two ids with one key are the same film to a user."""
    return " ".join(str(payload.get("title") or "").lower().split())


class ItemCatalog:
    """Reads items by id from the items collection."""

    _TITLE_CACHE_MAX = 500_000

    def __init__(self, store: VectorStore, collection: str) -> None:
        self.store, self.collection = store, collection
        self._titles: dict[str, str] = {}  # item id -> folded_title; cleared by forget() (Engine.add_items calls it)
        self.deleted: set[str] = set()
        """Ids this process deleted that are not stored again: a fitted model still ranks them until its next fit."""
        self._writes, self._deleted_lock = itertools.count(1), threading.Lock()
        self.generation = 0
        """Counts this process's writes to the catalog (kept ranked lists, ``engine.listcache``, are ranked again); bumped
        after :attr:`deleted` is replaced, so a reader that reads it first never pairs a new count with an old set."""

    def folded_titles(self, item_ids: Sequence[str]) -> dict[str, str]:
        """``{item_id: folded_title}`` of the known items among ``item_ids``. Cached per process, because the served list
        is de-duplicated against every seen title on each call (a heavy user's ~700 payloads); the cache is cleared
        by :meth:`forget`, so a title changed by another process is seen after its next ingest here or a restart."""
        t = self._titles  # one dict for this call, whatever forget() does meanwhile
        missing = [i for i in dict.fromkeys(item_ids) if i not in t]
        if missing:
            if len(t) + len(missing) > self._TITLE_CACHE_MAX:
                t = self._titles = {}
            t.update({i: folded_title(h.payload) for i, h in self.hits(missing, fields=["title"]).items()})
        return {i: t[i] for i in item_ids if i in t}

    def forget(self) -> None:
        """Drop cached titles (after items were written), and from :attr:`deleted` the ids written again."""
        self._titles = {}
        back = self.known(sorted(self.deleted)) if self.deleted else set()  # store reads outside the lock
        with self._deleted_lock:  # replaced, never changed in place: readers iterate it without a lock
            self.deleted = self.deleted - back
            self.generation = next(self._writes)

    def get(self, item_id: str) -> dict[str, Any]:
        """The stored payload of one item; NotFoundError when unknown."""
        hits = self.store.retrieve(self.collection, [point_id("item", str(item_id))])
        if not hits:
            raise NotFoundError(f"unknown item {item_id!r}")
        return hits[0].payload

    def hits(self, item_ids: Sequence[str], with_vectors: bool = False, fields: Sequence[str] | None = None) -> dict[str, Hit]:
        """Known items among ``item_ids`` as ``{item_id: Hit}`` (unknown ids are left out); ``fields``: only these
        payload keys (``item_id`` is always included)."""
        out = {}
        fields = None if fields is None else ["item_id", *fields]
        for b in chunks(list(item_ids), 1000):
            for h in self.store.retrieve(self.collection, [point_id("item", i) for i in b], with_vectors=with_vectors, fields=fields):
                out[h.payload["item_id"]] = h
        return out

    def rows(self, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Prompt rows (:func:`prompt_row`) of the known items among ``item_ids``."""
        return {i: prompt_row(h) for i, h in self.hits(item_ids).items()}

    def require_rows(self, item_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Prompt rows in the order asked; NotFoundError naming the unknown ids."""
        rows = self.rows(item_ids)
        missing = [i for i in item_ids if i not in rows]
        if missing:
            raise NotFoundError(f"unknown item(s): {', '.join(map(repr, missing[:5]))}")
        return [rows[i] for i in item_ids]

    def delete(self, item_ids: Sequence[str]) -> None:
        """Remove these items' points (their events are the caller's: :meth:`engine.events.EventLog.delete`); they are
        remembered in :attr:`deleted` until written again."""
        self.store.delete(self.collection, [point_id("item", str(i)) for i in item_ids])
        self.store.flush(self.collection)
        with self._deleted_lock:
            self.deleted = self.deleted | {str(i) for i in item_ids}
            self.generation = next(self._writes)
        self._titles = {}  # not forget(): it would look up the ids just deleted

    def known(self, item_ids: Sequence[str]) -> set[str]:
        """The ids among ``item_ids`` that are stored."""
        return set(self.hits(sorted(set(item_ids))))
