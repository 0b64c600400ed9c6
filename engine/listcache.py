"""Ranked lists kept per user in this process, so a request that repeats one already ranked is read, not recomputed.

In:  a user id, the request's ``key`` (what the list depends on besides the history: model, catalog state, depth...)
     and the user's history as the request read it; a ``compute`` function.
Out: :meth:`ListCache.get_or_compute` returns what ``compute()`` returns for that key and history: from memory when
     this process ranked the same key and history before, else computed (once: a request for the same key and history
     while it is being computed waits for that result) and kept. Past ``max_users`` users the least recently used go.
     :meth:`ListCache.submit` runs a ranking on the one background thread (``add_events`` ranks ahead with it).

A kept list is used only when the history read for this request is the one it was ranked from (a digest of every
event's item, time and rating, in the store's order) under an equal key, so events written by any process lead to a
new ranking. The key carries what this process knows of the model and the catalog (``engine.serving``); what
another process changes in the catalog (an item deleted or re-ingested) reaches a kept list at the user's next event,
a fit or a restart. A deleted item is never served from one: the served list reads the items' payloads, and a deleted
item has none.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["ListCache", "history_fingerprint"]

logger = logging.getLogger(__name__)

_MAX_PENDING = 64
"""Rankings queued on the background thread at most; past this, ``submit`` drops new ones (the request ranks then)."""


def history_fingerprint(events: Sequence[Any]) -> bytes:
    """A digest of what the ranking reads of a history: item, time and rating of every event, in order. Another order
    of the same events gives another digest: a needless recomputation, never a wrong list."""
    text = "\x1f".join(f"{e.item_id}\x1e{float(e.timestamp)!r}\x1e{e.rating!r}" for e in events)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class ListCache:
    """A thread-safe LRU of ``user_id -> (key, fingerprint, value, depth)``: one entry per user, the latest ranking."""

    def __init__(self, max_users: int) -> None:
        self.max_users = max_users
        self._entries: OrderedDict[str, tuple[Hashable, bytes, Any, int]] = OrderedDict()
        self._running: dict[str, tuple[Hashable, bytes, Future]] = {}  # user -> the ranking being computed now
        self._drops = 0  # users dropped so far: a ranking that began before a drop is not kept (it may be theirs)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: set[Future] = set()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get_or_compute(self, user_id: str, key: Hashable, events: Sequence[Any], compute: Callable[[], Any], depth: int = 0) -> Any:
        """The kept value for ``(key, events)``, else ``compute()``'s, kept with ``depth`` (what :meth:`depth` returns)."""
        if self.max_users <= 0:
            return compute()
        fp = history_fingerprint(events)
        with self._lock:
            entry = self._entries.get(user_id)
            if entry is not None and entry[0] == key and entry[1] == fp:
                self._entries.move_to_end(user_id)
                self.hits += 1
                return entry[2]
            running = self._running.get(user_id)
            if running is not None and running[0] == key and running[1] == fp:
                self.hits += 1
                wait = running[2]
            else:
                self.misses += 1
                wait, mine, drops = None, Future(), self._drops
                self._running[user_id] = (key, fp, mine)
        if wait is not None:
            try:
                return wait.result()
            except Exception:  # the other ranking failed: this request ranks on its own
                return compute()
        try:
            value = compute()  # outside the lock: other users' requests must not wait for this ranking
        except BaseException as e:
            mine.set_exception(e)
            raise
        finally:
            with self._lock:
                if self._running.get(user_id, (None, None, None))[2] is mine:
                    del self._running[user_id]
        with self._lock:
            if self._drops == drops:  # a user erased meanwhile (perhaps this one): not kept
                self._entries[user_id] = (key, fp, value, depth)
                self._entries.move_to_end(user_id)
                while len(self._entries) > self.max_users:
                    self._entries.popitem(last=False)
        mine.set_result(value)
        return value

    def depth(self, user_id: str) -> int | None:
        """The depth kept with the user's list (None: no list kept here)."""
        with self._lock:
            entry = self._entries.get(user_id)
            return entry[3] if entry is not None else None

    def submit(self, fn: Callable[[], Any]) -> bool:
        """Run ``fn`` on the background thread (False: too many queued, or off). Its errors are logged."""
        if self.max_users <= 0:
            return False
        with self._lock:
            if len(self._pending) >= _MAX_PENDING:
                return False
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="persona-rank-ahead")
            fut = self._pool.submit(self._logged, fn)
            self._pending.add(fut)
        fut.add_done_callback(self._done)
        return True

    @staticmethod
    def _logged(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as e:  # the request ranks the list itself then
            logger.warning("list not ranked ahead (%s: %s)", type(e).__name__, e)

    def _done(self, fut: Future) -> None:
        with self._lock:
            self._pending.discard(fut)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the rankings queued by :meth:`submit`; False if some are still running after ``timeout`` s."""
        with self._lock:
            pending = list(self._pending)
        for f in pending:
            try:
                f.result(timeout)
            except TimeoutError:
                return False
        return True

    def drop(self, user_id: str) -> None:
        """Forget a user (an erased user's list must not stay in memory, nor come back from a ranking under way)."""
        with self._lock:
            self._entries.pop(user_id, None)
            self._drops += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def close(self) -> None:
        """Stop the background thread: queued rankings are cancelled, one running is waited for."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
