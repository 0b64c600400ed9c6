"""The event log: validated, deduplicated interaction writes and history reads.

In: events (``Event`` objects or dicts) and user ids.
Out: an :class:`EventReport` per write (events naming unknown items are refused; the same event
twice counts once), histories oldest first, and :meth:`EventLog.require_user` for the reads that
need a known user.

Popularity is derived, never incremented: after the events are upserted (and flushed), each
touched item's ``popularity`` is set to the number of its events in the events collection
(:meth:`EventLog.recount`). The write is idempotent, so a crash between the event upsert and the
count update is repaired by retrying the same call (the retry recounts even when every event is a
duplicate), and concurrent writers cannot lose or double counts: recounts are serialized in the
process and each sets the true count after its own upsert.

Across processes (several API workers or hosts writing one Qdrant server; the embedded store
admits one process per path) a lock cannot be shared, so each recount converges instead: after
setting a count it checks that item again and sets it again until a check finds payload and count
equal. The writer whose check comes last saw every writer's events (each upserts before it checks)
and every other writer's last set (each sets before its own last check), so the final count is
exact whatever the interleaving (tests/test_security.py races another writer between the count and
the set, and runs two processes on one store).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from .errors import NotFoundError
from .items import ItemCatalog
from .store import Filter, Point, VectorStore, point_id
from .store.base import chunks
from .types import Event, EventReport, sort_events

__all__ = ["EventLog", "stored_events", "validate_events"]

log = logging.getLogger(__name__)
_MAX_ROUNDS = 8  # check-and-set rounds per item batch; each round only re-checks what the last one changed

# Count-then-set must not interleave between writers in this process (a slower writer would set an
# older count after a newer one); one lock for every store is enough, recounts are short.
_RECOUNT_LOCK = threading.Lock()


def validate_events(events: Iterable[Event | Mapping[str, Any]], report: EventReport) -> list[Event]:
    """Valid events; each invalid record counts as failed in ``report`` with its index and reason."""
    valid: list[Event] = []
    for i, raw in enumerate(events):
        report.total += 1
        try:
            valid.append(raw.checked() if isinstance(raw, Event) else Event.model_validate(dict(raw)))
        except ValidationError as e:
            report.failed += 1
            err = e.errors()[0]
            report.errors.append(f"event {i}: {'.'.join(map(str, err['loc'])) or 'record'}: {err['msg']}")
        except (TypeError, ValueError) as e:
            report.failed += 1
            report.errors.append(f"event {i}: not a mapping ({e})")
    return valid


def stored_events(store: VectorStore, events_col: str, items: set[str] | None = None) -> list[Event]:
    """Every stored event, validated (and naming one of ``items`` when given): one stored before today's checks (e.g. a
    time in milliseconds), or left by a delete that raced an insert, is skipped and counted in a warning."""
    events, bad = [], 0
    for h in store.scroll(events_col):
        try:
            e = Event.model_validate(h.payload)
        except ValidationError:
            bad += 1
            continue
        if items is None or e.item_id in items:
            events.append(e)
        else:
            bad += 1
    if bad:
        log.warning("skipped %d stored events that fail today's event checks (engine.types.Event) or name no stored item", bad)
    return events


class EventLog:
    """Events collection writes and reads; item popularity counts live on the item payloads."""

    def __init__(self, store: VectorStore, events_col: str, users_col: str, catalog: ItemCatalog) -> None:
        self.store, self.events_col, self.users_col, self.catalog = store, events_col, users_col, catalog

    def add(self, events: Iterable[Event | Mapping[str, Any]]) -> EventReport:
        """Store interactions durably (see the module docstring for what is refused or counted)."""
        report = EventReport()
        valid = validate_events(events, report)
        known = self.catalog.known([e.item_id for e in valid])
        touched: dict[str, None] = {}
        for batch in chunks(valid, 2000):
            pts = {}
            for e in batch:
                if e.item_id not in known:
                    report.failed += 1
                    report.errors.append(f"event for user {e.user_id}: unknown item {e.item_id!r}")
                    continue
                key = e.id or f"{e.user_id}|{e.item_id}|{e.timestamp!r}|{e.kind}"
                pid = point_id("event", key)
                if pid in pts:
                    report.duplicates += 1
                    continue
                pts[pid] = Point(id=pid, vectors={}, payload=e.model_dump())
            existing = {h.id for h in self.store.retrieve(self.events_col, list(pts))}
            new = [p for pid, p in pts.items() if pid not in existing]
            report.duplicates += len(pts) - len(new)
            self.store.upsert(self.events_col, new)
            report.added += len(new)
            # every known item of the call, duplicates included: a retry after a crash must recount
            touched.update(dict.fromkeys(p.payload["item_id"] for p in pts.values()))
        if touched:
            self.store.flush(self.events_col)  # the events are durable before any count derived from them
            self.recount(list(touched))
            self.store.flush(self.catalog.collection)
        return report

    def delete(self, flt: Filter) -> int:
        """Delete the events matching ``flt`` (e.g. one user's, or every event of some items); returns how many. The
        items they named get their popularity recounted, so a retry after a crash repairs the counts too."""
        hits = list(self.store.scroll(self.events_col, flt))
        for b in chunks([h.id for h in hits], 2000):
            self.store.delete(self.events_col, b)
        self.store.flush(self.events_col)  # gone for good before the counts are derived from what is left
        self.recount({str(h.payload.get("item_id")) for h in hits})
        self.store.flush(self.catalog.collection)
        return len(hits)

    def recount(self, item_ids: Iterable[str]) -> None:
        """Set each item's ``popularity`` to the number of its events (idempotent; unknown items skipped)."""
        ids = list(dict.fromkeys(str(i) for i in item_ids))
        with _RECOUNT_LOCK:
            for b in chunks(ids, 500):
                pending = [point_id("item", i) for i in b]
                for _ in range(_MAX_ROUNDS):
                    pending = self._set_counts(pending)
                    if not pending:  # a check found every count right: exact, see the module docstring
                        break
                else:  # another writer kept changing them; its own checks end on the true count
                    log.warning("popularity of %d items still changing after %d rounds", len(pending), _MAX_ROUNDS)

    def _set_counts(self, pids: list[str]) -> list[str]:
        """Set each item's popularity to its event count where they differ; the ids that were set."""
        changed = []
        for h in self.store.retrieve(self.catalog.collection, pids):
            n = self.store.count(self.events_col, Filter(match={"item_id": h.payload["item_id"]}))
            if float(h.payload.get("popularity") or 0) != float(n):
                self.store.update_present(self.catalog.collection, [Point(h.id, {}, {})], {"popularity": float(n)})  # deleted meanwhile: skipped
                changed.append(h.id)
        return changed

    def history(self, user_id: str) -> list[Event]:
        """A user's events, oldest first (empty for an unknown user)."""
        hits = self.store.scroll(self.events_col, Filter(match={"user_id": str(user_id)}))
        return sort_events([_stored_event(h.payload) for h in hits])

    def require_user(self, user_id: str) -> list[Event]:
        """The user's history; NotFoundError when the user has neither events nor a profile."""
        events = self.history(user_id)
        if not events and not self.store.retrieve(self.users_col, [point_id("user", str(user_id))]):
            raise NotFoundError(f"unknown user {user_id!r}")
        return events

    def user_ids(self) -> list[str]:
        """Every user with at least one event, sorted."""
        return sorted({h.payload["user_id"] for h in self.store.scroll(self.events_col)})


_EVENT_FIELDS = tuple(Event.model_fields)
_EVENT_FIELD_SET = frozenset(_EVENT_FIELDS)


def _stored_event(payload: Mapping[str, Any]) -> Event:
    """An ``Event`` from a stored payload, which was validated on the way in: not validated again (a third of
    recommend's time once). A full payload (every event this code writes) is set directly, as
    ``Event.model_construct`` would set it, without its per-field alias loop (a history read 1.18x faster, scroll
    included: ~0.16 ms of a request for a user of 80 events, ``bench/read_costs.py``); any other shape (an older version's write) goes through ``model_construct``
    itself, for its defaults (``tests/test_engine.py`` checks both agree with it)."""
    if payload.keys() != _EVENT_FIELD_SET:
        return Event.model_construct(**payload)
    m = Event.__new__(Event)
    object.__setattr__(m, "__dict__", {name: payload[name] for name in _EVENT_FIELDS})
    object.__setattr__(m, "__pydantic_fields_set__", set(_EVENT_FIELD_SET))
    object.__setattr__(m, "__pydantic_extra__", None)
    object.__setattr__(m, "__pydantic_private__", None)
    return m
