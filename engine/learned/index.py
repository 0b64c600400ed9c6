"""Item index, ordered user sequences and the sparse user-item matrix.

In:  ``Item`` / ``Event`` objects (or plain ids), a tie-break ``seed``.
Out: ``ItemIndex`` (item id <-> row), ``Sequence`` per user (item rows, timestamps, ratings, in event order),
     ``user_item_matrix`` (scipy CSR, users x items).

Event order is ``(timestamp, tie_key(seed, user_id, item_id))``: equal timestamps are common in ml-100k and a seeded
hash keeps the order reproducible without favouring low item ids. ``event_sort_key`` is the single place that
defines it (to be unified with the offline protocol's key).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..types import event_sort_key as _types_key
from ..types import sort_events

__all__ = ["tie_key", "event_sort_key", "order_events", "ItemIndex", "Sequence", "build_sequences", "split_last", "user_item_matrix"]

log = logging.getLogger(__name__)


def tie_key(seed: int, user_id: str, item_id: str) -> int:
    """The hash that breaks timestamp ties (see :func:`engine.types.event_sort_key`)."""
    return _types_key(str(user_id), str(item_id), 0.0, seed)[1]


def event_sort_key(event, seed: int = 0) -> tuple[float, int]:
    """Sort key of one event within its user's history: :func:`engine.types.event_sort_key`."""
    return _types_key(str(event.user_id), str(event.item_id), event.timestamp, seed)


def order_events(events: list, seed: int = 0) -> list:
    """``sorted(events, key=event_sort_key)``, hashing only events whose timestamp is shared (same order, faster)."""
    return sort_events(events, seed)


class ItemIndex:
    """Bidirectional item id <-> dense row map. Catalog order first, then ids seen only in events."""

    def __init__(self, ids: Iterable[str]):
        self.ids: list[str] = []
        self.pos: dict[str, int] = {}
        for i in ids:
            self.add(str(i))

    @classmethod
    def build(cls, items: Iterable = (), events: Iterable = ()) -> ItemIndex:
        idx = cls(getattr(it, "id", it) for it in items)
        for e in events:
            idx.add(str(e.item_id))
        return idx

    def add(self, item_id: str) -> int:
        j = self.pos.get(item_id)
        if j is None:
            j = self.pos[item_id] = len(self.ids)
            self.ids.append(item_id)
        return j

    def get(self, item_id: str, default: int = -1) -> int:
        return self.pos.get(str(item_id), default)

    def rows(self, item_ids: Seq[str]) -> np.ndarray:
        """Rows of ``item_ids``; -1 for unknown ids."""
        return np.fromiter((self.pos.get(str(i), -1) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Sequence:
    """One user's events in order: item rows, timestamps (s), ratings (nan when absent)."""

    items: np.ndarray
    ts: np.ndarray
    ratings: np.ndarray

    def __len__(self) -> int:
        return len(self.items)

    def head(self, n: int) -> Sequence:
        return Sequence(self.items[:n], self.ts[:n], self.ratings[:n])


def build_sequences(events: Iterable, index: ItemIndex, seed: int = 0, add_unknown: bool = False) -> dict[str, Sequence]:
    """Group events by user and order them with ``event_sort_key``. Unknown items are dropped unless ``add_unknown``."""
    by_user: dict[str, list] = defaultdict(list)
    for e in events:
        by_user[str(e.user_id)].append(e)
    out: dict[str, Sequence] = {}
    dropped = 0
    for uid, evs in by_user.items():
        evs = order_events(evs, seed)
        rows = [index.add(str(e.item_id)) if add_unknown else index.get(str(e.item_id)) for e in evs]
        keep = [k for k, r in enumerate(rows) if r >= 0]
        dropped += len(rows) - len(keep)
        out[uid] = Sequence(
            np.array([rows[k] for k in keep], dtype=np.int64),
            np.array([float(evs[k].timestamp) for k in keep], dtype=np.float64),
            np.array([np.nan if evs[k].rating is None else float(evs[k].rating) for k in keep], dtype=np.float64),
        )
    if dropped:
        log.debug("dropped %d events of unknown items", dropped)
    return out


def split_last(seqs: dict[str, Sequence], n: int = 1, min_history: int = 1) -> tuple[dict[str, Sequence], dict[str, int]]:
    """Each user's history without its last ``n`` events, and the first of those as the label (users with enough events)."""
    hist, label = {}, {}
    for u, s in seqs.items():
        if len(s) >= min_history + n:
            hist[u] = s.head(len(s) - n)
            label[u] = int(s.items[len(s) - n])
        else:
            hist[u] = s.head(max(0, len(s) - n))
    return hist, label


def user_item_matrix(seqs: dict[str, Sequence], n_items: int, users: Seq[str] | None = None, weight: str = "binary") -> sp.csr_matrix:
    """CSR users x items (row order ``users`` or ``sorted(seqs)``); ``weight`` 'binary' or 'rating' (nan -> 1)."""
    users = list(users) if users is not None else sorted(seqs)
    rows, cols, vals = [], [], []
    for r, u in enumerate(users):
        s = seqs.get(u)
        if s is None or not len(s):
            continue
        rows.append(np.full(len(s), r))
        cols.append(s.items)
        vals.append(np.ones(len(s)) if weight == "binary" else np.nan_to_num(s.ratings, nan=1.0))
    if not rows:
        return sp.csr_matrix((len(users), n_items), dtype=np.float32)
    m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(users), n_items), dtype=np.float32)
    m.sum_duplicates()
    if weight == "binary":
        m.data[:] = 1.0
    return m
