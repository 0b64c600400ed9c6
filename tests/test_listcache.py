"""engine.listcache: a kept list is returned only for the same key and history; least recently used users go first."""

from __future__ import annotations

from engine.listcache import ListCache, history_fingerprint
from engine.types import Event


def _ev(item: str, ts: float, rating: float | None = 4.0) -> Event:
    return Event(user_id="u", item_id=item, timestamp=ts, rating=rating)


def test_same_key_and_history_read_anything_else_ranks_again():
    cache, calls = ListCache(max_users=10), []

    def compute(tag):
        return lambda: calls.append(tag) or [tag]

    h = [_ev("a", 1.0), _ev("b", 2.0)]
    assert cache.get_or_compute("u", ("v1", 20), h, compute(1)) == [1]
    assert cache.get_or_compute("u", ("v1", 20), list(h), compute(2)) == [1]  # an equal history read again
    assert cache.get_or_compute("u", ("v2", 20), h, compute(3)) == [3]  # another model version
    assert cache.get_or_compute("u", ("v2", 20), [*h, _ev("c", 3.0)], compute(4)) == [4]  # one more event
    assert cache.get_or_compute("u", ("v2", 20), [_ev("a", 1.0), _ev("b", 2.0, 1.0), _ev("c", 3.0)], compute(5)) == [5]  # a rating changed
    assert cache.get_or_compute("u", ("v2", 20), [_ev("a", 1.0), _ev("b", 2.5, 1.0), _ev("c", 3.0)], compute(6)) == [6]  # a time changed
    assert calls == [1, 3, 4, 5, 6] and (cache.hits, cache.misses) == (1, 5)
    assert history_fingerprint(h) != history_fingerprint(h[::-1])  # another order: ranked again, never a wrong list


def test_least_recently_used_users_are_dropped_and_zero_turns_it_off():
    cache = ListCache(max_users=2)
    h = [_ev("a", 1.0)]
    for u in ("x", "y"):
        cache.get_or_compute(u, "k", h, lambda u=u: u)
    cache.get_or_compute("x", "k", h, lambda: "again")  # x is now the most recent
    cache.get_or_compute("z", "k", h, lambda: "z")  # y goes
    assert len(cache) == 2 and cache.get_or_compute("x", "k", h, lambda: "new") == "x"
    assert cache.get_or_compute("y", "k", h, lambda: "y2") == "y2"
    cache.remember_depth("x", 30)
    assert cache.depth("x") == 30
    cache.drop("x")
    assert cache.depth("x") is None
    off, n = ListCache(max_users=0), []
    for _ in range(2):
        off.get_or_compute("u", "k", h, lambda: n.append(1) or 1)
    assert len(n) == 2 and len(off) == 0
