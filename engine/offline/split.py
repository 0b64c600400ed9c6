"""Temporal train / valid / test split shared by every method of the offline benchmark.

Protocol
--------
* Events are ordered per user by time; **ties** (equal timestamps: 44% of ml-100k users rated their
  last two movies in the same second) are broken by a seeded hash of ``(seed, user_id, item_id)``,
  i.e. a deterministic pseudo-random shuffle inside each group of equal timestamps, identical for
  every method. Sorting ties by item id (or by file order, which follows item id in ml-100k) leaks
  the id order into the "sequence": an id-ordered tie group makes "the next item has a larger id"
  learnable, which sequential models (first-order transitions, SASRec) exploit and which moves
  even EASE's HR@10 a lot. A seeded shuffle removes that signal, and changing ``seed`` shows how
  much the tie order matters.
* Users with at least 3 events are evaluated: **test** = the last event, **valid** = the
  second-to-last, **train** = the rest. Users with fewer events contribute all their events to
  training and are not evaluated.
* Hyper-parameters are chosen on the *valid* stage: fit on :meth:`Split.fit_events` ``("valid")``
  (train events only), score the valid item given each user's train history. The chosen
  configuration is then **refit** on ``fit_events("test")`` (train + valid events) and the test
  item is read once, scored given the user's train + valid history.
* Every evaluated item also has **sampled candidates**: ``[positive] + n_neg`` negatives drawn
  (seeded, per user and stage) from items the user never interacted with in any split, for the
  sampled AUC / HR@5 / NDCG@5 / MRR@10 numbers. Full-catalog ranks (the headline numbers) rank
  the held-out item among all items the user has not already seen in the history given.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidInputError
from ..types import Event, event_sort_key, sort_events

__all__ = ["event_sort_key", "order_history", "temporal_split", "Split", "STAGES"]

STAGES = ("valid", "test")


def _hash64(*parts: object) -> int:
    h = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode("utf-8"), digest_size=8)
    return int.from_bytes(h.digest(), "big")


def order_history(events: Iterable[Event], seed: int = 0) -> list[Event]:
    """``events`` sorted by :func:`event_sort_key` (:func:`engine.types.sort_events`)."""
    return sort_events(list(events), seed)


@dataclass
class Split:
    """Per-user ordered train histories, valid/test held-out events and sampled candidates."""

    item_ids: list[str]
    train: dict[str, list[Event]]
    valid: dict[str, Event]
    test: dict[str, Event]
    candidates: dict[str, dict[str, list[str]]]
    """``candidates[stage][user]`` = [held-out item, n_neg negatives]."""
    seed: int = 0
    n_neg: int = 20
    extra: dict[str, list[Event]] = field(default_factory=dict)
    """Events of users with fewer than 3 events (training only, never evaluated)."""

    @property
    def users(self) -> list[str]:
        """Evaluated users (at least 3 events), sorted."""
        return sorted(self.test)

    def fit_events(self, stage: str) -> list[Event]:
        """Events a model may be fit on: train (stage ``valid``) or train + valid (stage ``test``)."""
        _check(stage)
        out: list[Event] = []
        for u, evs in self.train.items():
            out.extend(evs)
            if stage == "test" and u in self.valid:
                out.append(self.valid[u])
        for evs in self.extra.values():
            out.extend(evs)
        return out

    def history(self, user_id: str, stage: str) -> list[Event]:
        """The user's ordered events known when scoring ``stage``."""
        _check(stage)
        h = list(self.train.get(user_id, []))
        if stage == "test" and user_id in self.valid:
            h.append(self.valid[user_id])
        return h

    def target(self, user_id: str, stage: str) -> Event:
        _check(stage)
        return (self.valid if stage == "valid" else self.test)[user_id]


def _check(stage: str) -> None:
    if stage not in STAGES:
        raise InvalidInputError(f"stage must be one of {STAGES}, not {stage!r}")


def temporal_split(events: Iterable[Event], item_ids: Sequence[str], seed: int = 0, n_neg: int = 20) -> Split:
    """Leave-last-out by time (see the module docstring) with seeded tie order and negatives."""
    catalog = list(dict.fromkeys(str(i) for i in item_ids))
    by_user: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_user[e.user_id].append(e)
    train: dict[str, list[Event]] = {}
    valid: dict[str, Event] = {}
    test: dict[str, Event] = {}
    extra: dict[str, list[Event]] = {}
    cands: dict[str, dict[str, list[str]]] = {s: {} for s in STAGES}
    cat_arr = np.array(catalog, dtype=object)
    for u in sorted(by_user):
        evs = order_history(by_user[u], seed)
        if len(evs) < 3:
            extra[u] = evs
            continue
        train[u], valid[u], test[u] = evs[:-2], evs[-2], evs[-1]
        seen = {e.item_id for e in evs}
        pool = np.array([i not in seen for i in catalog])
        pool_ids = cat_arr[pool]
        for stage, pos in (("valid", valid[u]), ("test", test[u])):
            rng = np.random.default_rng([seed, _hash64("neg", stage, u) & 0xFFFFFFFF])
            k = min(n_neg, len(pool_ids))
            negs = rng.choice(len(pool_ids), size=k, replace=False)
            cands[stage][u] = [pos.item_id] + [str(pool_ids[j]) for j in negs]
    return Split(item_ids=catalog, train=train, valid=valid, test=test, candidates=cands, seed=seed, n_neg=n_neg, extra=extra)
