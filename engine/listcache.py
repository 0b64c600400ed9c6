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
another process changes in the catalog (an item re-ingested with a new text through another API replica on a shared
Qdrant server) reaches a kept list at the user's next event, a fit, a restart or when the list is ``ttl_s`` old,
whichever comes first. A deleted item is never served from one: the served list reads the items' payloads, and a
deleted item has none.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

__all__ = ["ListCache", "history_fingerprint"]

logger = logging.getLogger(__name__)

_MAX_QUEUED = 64
"""Rankings queued or running on the background thread at most; past this, ``submit`` drops new ones."""


def history_fingerprint(events: Sequence[Any]) -> bytes:
    """A digest of what the ranking reads of a history: item, time and rating of every event, in order. Another order
    of the same events gives another digest: a needless recomputation, never a wrong list."""
    text = "\x1f".join(f"{e.item_id}\x1e{float(e.timestamp)!r}\x1e{e.rating!r}" for e in events)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class _Kept(NamedTuple):
    key: Hashable
    fingerprint: bytes  # history_fingerprint of the history it was ranked from
    value: Any
    depth: int
    ticket: int  # start order of its ranking
    started: float  # clock() when the request that ranked it began


class ListCache:
    """A thread-safe LRU of ``user_id -> _Kept(key, fingerprint, value, depth, ticket, started)``: one entry per user, the
    latest ranking (by when it started: one that started earlier never replaces it). An entry is read for at most
    ``ttl_s`` seconds after its ranking started (None or 0: no limit); ``clock`` is the time source (tests pass their own)."""

    def __init__(self, max_users: int, ttl_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_users, self.ttl_s, self._clock = max_users, ttl_s, clock
        self._entries: OrderedDict[str, _Kept] = OrderedDict()
        self._running: dict[str, tuple[Hashable, bytes, Future]] = {}  # user -> the ranking being computed now
        self._drops = 0  # users dropped so far (see epoch)
        self._tickets = itertools.count()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._queued: dict[Future, str | None] = {}  # background rankings not finished -> their tag (a user id)
        self.hits = self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def epoch(self) -> int:
        """Read before the history a ranking is computed from, and pass to :meth:`get_or_compute` as ``since``: if a
        user is dropped (erased) in between, the ranking is not kept (it may have read that user's events)."""
        return self._drops

    def get_or_compute(self, user_id: str, key: Hashable, events: Sequence[Any], compute: Callable[[], Any], depth: int = 0,
                       since: int | None = None) -> Any:
        """The kept value for ``(key, events)``, else ``compute()``'s, kept with ``depth`` (what :meth:`depth` returns)."""
        if self.max_users <= 0:
            return compute()
        fp = history_fingerprint(events)
        with self._lock:
            drops, now = self._drops if since is None else since, self._clock()
            entry = self._entries.get(user_id)
            if entry is not None and entry.key == key and entry.fingerprint == fp and (not self.ttl_s or now - entry.started <= self.ttl_s):
                self._entries.move_to_end(user_id)
                self.hits += 1
                return entry.value
            running = self._running.get(user_id)
            if running is not None and running[0] == key and running[1] == fp:
                self.hits += 1
                wait = running[2]
            else:
                self.misses += 1
                wait, mine, ticket = None, Future(), next(self._tickets)
                self._running[user_id] = (key, fp, mine)
        if wait is not None:
            try:
                return wait.result()
            except Exception:  # the other ranking failed (or was interrupted): this request ranks on its own
                return compute()
        try:
            value = compute()  # outside the lock: other users' requests must not wait for this ranking
        except Exception as e:
            self._finish(user_id, mine)
            mine.set_exception(e)
            raise
        except BaseException:  # an interrupt belongs to this thread only: waiters rank on their own
            self._finish(user_id, mine)
            mine.cancel()
            raise
        self._finish(user_id, mine, _Kept(key, fp, value, depth, ticket, now), drops)
        mine.set_result(value)
        return value

    def _finish(self, user_id: str, mine: Future, entry: _Kept | None = None, drops: int = 0) -> None:
        """In one step: stop advertising ``mine`` and keep ``entry`` (unless a user was dropped since ``drops``, or a
        ranking that started later is kept already)."""
        with self._lock:
            if self._running.get(user_id, (None, None, None))[2] is mine:
                del self._running[user_id]
            if entry is None or self._drops != drops:
                return
            old = self._entries.get(user_id)
            if old is not None and old.ticket > entry.ticket:
                return
            self._entries[user_id] = entry
            self._entries.move_to_end(user_id)
            while len(self._entries) > self.max_users:
                self._entries.popitem(last=False)

    def depth(self, user_id: str) -> int | None:
        """The depth kept with the user's list (None: no list kept here)."""
        with self._lock:
            entry = self._entries.get(user_id)
            return entry.depth if entry is not None else None

    def submit(self, fn: Callable[[], Any], tag: str | None = None) -> bool:
        """Run ``fn`` on the background thread; False (not run) when off, closed, ``_MAX_QUEUED`` are waiting, or a
        ranking with the same ``tag`` is queued and not started. Its errors are logged."""
        with self._lock:
            if self.max_users <= 0 or self._closed or len(self._queued) >= _MAX_QUEUED:
                return False
            if tag is not None and tag in self._queued.values():
                return False
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="persona-rank-ahead")
            pool = self._pool
            fut: Future = Future()  # a placeholder holding the slot until the real one exists
            self._queued[fut] = tag
        try:
            real = pool.submit(self._run, fn, fut)
        except RuntimeError:  # closed meanwhile
            with self._lock:
                self._queued.pop(fut, None)
            return False
        real.add_done_callback(lambda _f: self._done(fut))
        return True

    def _run(self, fn: Callable[[], Any], slot: Future) -> None:
        with self._lock:
            if slot in self._queued:
                self._queued[slot] = None  # started: a new event of this user queues another ranking
        try:
            fn()
        except Exception as e:  # the request ranks the list itself then
            logger.warning("list not ranked ahead (%s: %s)", type(e).__name__, e)

    def _done(self, slot: Future) -> None:
        with self._lock:
            mine = self._queued.pop(slot, False) is not False  # close() may have settled it already
        if mine:
            slot.set_result(None)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the rankings :meth:`submit` queued so far; False if some are unfinished after ``timeout`` s."""
        with self._lock:
            slots = list(self._queued)
        _, not_done = concurrent.futures.wait(slots, timeout)
        return not not_done

    def drop(self, user_id: str) -> None:
        """Forget a user (an erased user's list must not stay in memory, nor come back from a ranking under way)."""
        with self._lock:
            self._entries.pop(user_id, None)
            self._drops += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._drops += 1

    def close(self) -> None:
        """Stop the background thread: queued rankings are cancelled, one running is waited for."""
        with self._lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            slots, self._queued = list(self._queued), {}
        for s in slots:  # whatever the cancelled ones' callbacks did not settle
            s.set_result(None)
