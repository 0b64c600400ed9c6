"""Ranked lists kept per user in this process, so a request that repeats one already ranked is read, not recomputed.

In:  a user id, the request's ``key`` (model version, whether the ``cf`` vectors served, the catalog's generation,
     ``exclude_seen`` and the depth asked) and the user's history as the request read it; a ``compute`` function.
Out: :meth:`ListCache.get_or_compute` returns what ``compute()`` returns for that key and history: from memory when
     this process ranked the same key and history before, else computed and kept. Past ``max_users`` users the least
     recently used are dropped.

Why a kept list is never stale: it is used only when the history read for this request is the one it was ranked from
(a fingerprint of every event's item, time and rating, in the store's order) under the same key, so events written by
any process, a refit and a deletion of items in this process all lead to a new ranking. What the list does not see is
a re-ingested item's new text vector written by another process (in index mode the content source reads it): that
reaches the user's list at their next event, a fit, or a restart. The engine fills the cache ahead of reads as well:
``Engine.add_events`` ranks the lists of the users a small batch touched (``retrieval.warm_users``), so the request
after an event finds its list ready.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

__all__ = ["ListCache", "history_fingerprint"]

logger = logging.getLogger(__name__)


def history_fingerprint(events: Sequence[Any]) -> int:
    """What the ranking reads of a history (item, time and rating of every event, in order) as one hash. A different
    order of the same events gives another fingerprint: a needless recomputation, never a wrong list."""
    return hash((len(events), tuple((e.item_id, e.timestamp, e.rating) for e in events)))


class ListCache:
    """A thread-safe LRU of ``user_id -> (key, fingerprint, value)``; one entry per user (the latest ranking)."""

    def __init__(self, max_users: int) -> None:
        self.max_users = max_users
        self._entries: OrderedDict[str, tuple[Hashable, int, Any]] = OrderedDict()
        self._depths: dict[str, int] = {}  # the depth each user last asked for: what warming ranks ahead
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get_or_compute(self, user_id: str, key: Hashable, events: Sequence[Any], compute: Callable[[], Any]) -> Any:
        if self.max_users <= 0:
            return compute()
        fp = history_fingerprint(events)
        with self._lock:
            entry = self._entries.get(user_id)
            if entry is not None and entry[0] == key and entry[1] == fp:
                self._entries.move_to_end(user_id)
                self.hits += 1
                return entry[2]
            self.misses += 1
        value = compute()  # outside the lock: another user's request must not wait for this ranking
        with self._lock:
            self._entries[user_id] = (key, fp, value)
            self._entries.move_to_end(user_id)
            while len(self._entries) > self.max_users:
                old, _ = self._entries.popitem(last=False)
                self._depths.pop(old, None)
        return value

    def remember_depth(self, user_id: str, depth: int) -> None:
        if self.max_users > 0:
            with self._lock:
                self._depths[user_id] = depth

    def depth(self, user_id: str) -> int | None:
        """The depth of the user's last request in this process (None: none since it started or since :meth:`drop`)."""
        return self._depths.get(user_id)

    def drop(self, user_id: str) -> None:
        """Forget a user (an erased user's list must not stay in memory)."""
        with self._lock:
            self._entries.pop(user_id, None)
            self._depths.pop(user_id, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._depths.clear()
