"""engine.listcache: a kept list is returned only for the same key and history; one ranking per key and history at a
time; an erased user's list is not kept; least recently used users go first."""

from __future__ import annotations

import threading
import time

from engine.listcache import ListCache, history_fingerprint
from engine.types import Event


def _ev(item: str, ts: float, rating: float | None = 4.0) -> Event:
    return Event(user_id="u", item_id=item, timestamp=ts, rating=rating)


def test_same_key_and_history_read_anything_else_ranks_again():
    cache, calls = ListCache(max_users=10), []

    def compute(tag):
        return lambda: calls.append(tag) or [tag]

    h = [_ev("a", 1.0), _ev("b", 2.0)]
    assert cache.get_or_compute("u", ("v1", 20), h, compute(1), depth=20) == [1]
    assert cache.get_or_compute("u", ("v1", 20), list(h), compute(2)) == [1]  # an equal history read again
    assert cache.get_or_compute("u", ("v2", 20), h, compute(3)) == [3]  # another model version
    assert cache.get_or_compute("u", ("v2", 20), [*h, _ev("c", 3.0)], compute(4)) == [4]  # one more event
    assert cache.get_or_compute("u", ("v2", 20), [_ev("a", 1.0), _ev("b", 2.0, 1.0), _ev("c", 3.0)], compute(5)) == [5]  # a rating
    assert cache.get_or_compute("u", ("v2", 20), [_ev("a", 1.0), _ev("b", 2.5, 1.0), _ev("c", 3.0)], compute(6)) == [6]  # a time
    assert calls == [1, 3, 4, 5, 6] and (cache.hits, cache.misses) == (1, 5)
    assert history_fingerprint(h) != history_fingerprint(h[::-1])  # another order: ranked again, never a wrong list
    # CPython's hash(-1.0) == hash(-2.0): the digest must still tell these apart
    assert history_fingerprint([_ev("a", 1.0, -1.0)]) != history_fingerprint([_ev("a", 1.0, -2.0)])
    assert history_fingerprint([_ev("a", 1.0, None)]) != history_fingerprint([_ev("a", 1.0, 0.0)])


def test_least_recently_used_users_are_dropped_and_zero_turns_it_off():
    cache = ListCache(max_users=2)
    h = [_ev("a", 1.0)]
    for u in ("x", "y"):
        cache.get_or_compute(u, "k", h, lambda u=u: u, depth=30)
    cache.get_or_compute("x", "k", h, lambda: "again")  # a read: x is now the most recent
    cache.get_or_compute("z", "k", h, lambda: "z")  # y goes
    assert len(cache) == 2 and cache.get_or_compute("x", "k", h, lambda: "new") == "x" and cache.depth("x") == 30
    assert cache.get_or_compute("y", "k", h, lambda: "y2") == "y2"
    cache.drop("x")
    assert cache.depth("x") is None
    off, n = ListCache(max_users=0), []
    for _ in range(2):
        off.get_or_compute("u", "k", h, lambda: n.append(1) or 1)
    assert len(n) == 2 and len(off) == 0 and not off.submit(lambda: None)


def test_a_list_older_than_the_ttl_is_ranked_again():
    """The TTL bounds how long catalog writes of another process stay unseen: past it the same key and history rank
    again (a clock the test moves, so no sleeping), and the new ranking's age counts from its own start."""
    now = [100.0]
    cache, calls = ListCache(max_users=10, ttl_s=60.0, clock=lambda: now[0]), []
    h = [_ev("a", 1.0)]

    def rank():  # a ranking that takes 50 s: its list's age counts from when it started
        calls.append(now[0])
        now[0] += 50.0
        return len(calls)
    assert cache.get_or_compute("u", "k", h, rank) == 1  # started at 100, done at 150
    now[0] = 160.0  # exactly the TTL after the start: still read
    assert cache.get_or_compute("u", "k", h, rank) == 1
    now[0] = 160.5
    assert cache.get_or_compute("u", "k", h, rank) == 2  # started at 160.5, done at 210.5
    now[0] = 220.0  # 59.5 s after that start
    assert cache.get_or_compute("u", "k", h, rank) == 2
    assert calls == [100.0, 160.5] and (cache.hits, cache.misses) == (2, 2)
    for off in (None, 0):  # no limit
        forever = ListCache(max_users=10, ttl_s=off, clock=lambda: now[0])
        forever.get_or_compute("u", "k", h, lambda: "first")
        now[0] += 1e9
        assert forever.get_or_compute("u", "k", h, lambda: "again") == "first"


def _until(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_one_ranking_at_a_time_and_an_erased_user_is_not_kept():
    cache, calls = ListCache(max_users=10), []
    started, release = threading.Event(), threading.Event()
    h = [_ev("a", 1.0)]

    def held():  # a ranking that finishes only when the test says so
        calls.append(1)
        started.set()
        assert release.wait(10)
        return ["ahead"]

    assert cache.submit(lambda: cache.get_or_compute("u", "k", h, held), tag="u")  # ranked ahead on the background thread
    assert started.wait(10)
    assert cache.submit(lambda: None, tag="x") and not cache.submit(lambda: None, tag="x")  # one queued ranking per user
    got = []
    t = threading.Thread(target=lambda: got.append(cache.get_or_compute("u", "k", h, lambda: calls.append(2) or ["again"])))
    t.start()
    _until(lambda: cache.hits == 1)  # the request found the ranking under way and waits for it
    assert not got and calls == [1]
    release.set()
    t.join(10)
    assert got == [["ahead"]] and calls == [1] and cache.wait(10)
    # a ranking under way when its user is erased is returned to its caller but not kept
    started.clear(), release.clear()
    epoch = cache.epoch()  # read before "the history", as the engine does
    assert cache.submit(lambda: cache.get_or_compute("v", "k", h, held, since=epoch), tag="v")
    assert started.wait(10)
    cache.drop("v")
    release.set()
    assert cache.wait(10) and cache.depth("v") is None and len(cache) == 1  # only u's list
    # a ranking that read the history before an erasure and only then asks: not kept either
    stale = cache.epoch()
    cache.drop("w")
    assert cache.get_or_compute("w", "k", h, lambda: ["old"], since=stale) == ["old"] and cache.depth("w") is None
    # an interrupted ranking: a waiter ranks on its own instead of being interrupted too
    started.clear(), release.clear()

    def interrupted():
        started.set()
        assert release.wait(10)
        raise KeyboardInterrupt

    boom = []
    t1 = threading.Thread(target=lambda: boom.append(_raises(lambda: cache.get_or_compute("z", "k", h, interrupted))))
    t1.start()
    assert started.wait(10)
    got.clear()
    t2 = threading.Thread(target=lambda: got.append(cache.get_or_compute("z", "k", h, lambda: ["own"])))
    t2.start()
    _until(lambda: cache.hits == 2)
    release.set()
    t1.join(10), t2.join(10)
    assert boom == [KeyboardInterrupt] and got == [["own"]]
    cache.close()
    assert not cache.submit(lambda: None) and cache.wait(1)


def _raises(fn):
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - the test checks which one
        return type(e)
    return None
