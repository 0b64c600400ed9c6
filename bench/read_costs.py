"""Two per-request read costs against a baseline measured in the same run (session 29, issue 19):

1. point keys of Qdrant's hits: ``point_key`` on fresh ``uuid.UUID`` objects (as qdrant-edge returns hits; 100 per
   query, ids drawn from a 100k catalog) against the version before session 29, an ``lru_cache`` on every id (copied
   below as the baseline), with its cache cold and warm;
2. a user's history: ``EventLog.history`` (events set from their stored payloads) against building the same events
   with ``Event.model_construct`` from the same scroll, alternated per user, and the events checked equal.

    .venv/bin/python bench/read_costs.py [--path /tmp/read_costs] [--items 5000] [--events 40000]

The store at ``--path`` is built once (``bench/scale.py``'s synthetic catalog and event log, random text vectors).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import timeit
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from request_split import open_store  # noqa: E402

from engine.store import Filter, point_key  # noqa: E402
from engine.types import Event, sort_events  # noqa: E402


@functools.lru_cache(maxsize=1 << 17)
def point_key_before(pid):
    """``point_key`` as it was before session 29: every id through the cache."""
    if isinstance(pid, int):
        return pid
    if isinstance(pid, uuid.UUID):
        return pid.int
    return int(pid) if str(pid).isdigit() else uuid.UUID(str(pid)).int


def keys(queries: int = 2000) -> None:
    rng = np.random.default_rng(0)
    catalog = [uuid.uuid4().int for _ in range(100_000)]
    stream = [[uuid.UUID(int=catalog[i]) for i in rng.integers(0, len(catalog), 100)] for _ in range(queries)]

    def per_query(fn, n=queries, repeat=5):
        return min(timeit.repeat(lambda: [[fn(u) for u in q] for q in stream[:n]], number=1, repeat=repeat)) / n * 1e3

    assert all(point_key(u) == point_key_before(u) for q in stream[:50] for u in q)
    point_key_before.cache_clear()
    cold = min(timeit.repeat(lambda: [point_key_before.cache_clear(), [[point_key_before(u) for u in q] for q in stream[:300]]],
                             number=1, repeat=3)) / 300 * 1e3
    per_query(point_key_before, repeat=1)  # fill the cache with every id of the stream
    warm, now = per_query(point_key_before), per_query(point_key)
    print(f"point keys, ms per 100-hit query: before {cold:.4f} (cold cache) / {warm:.4f} (warm), now {now:.4f}: "
          f"{warm / now:.1f}x the warm baseline")


def history(eng, users: list[str], passes: int = 5) -> None:
    log = eng.event_log

    def before(u):
        hits = eng.store.scroll(eng.events_col, Filter(match={"user_id": u}))
        return sort_events([Event.model_construct(**h.payload) for h in hits])

    n_events = 0
    for u in users:
        got, want = log.history(u), before(u)
        assert got == want and [e.model_fields_set for e in got] == [e.model_fields_set for e in want]
        n_events += len(got)
    best = {"before": float("inf"), "now": float("inf")}
    for rep in range(passes):
        for name, fn in (("before", before), ("now", log.history)) if rep % 2 else (("now", log.history), ("before", before)):
            t = time.perf_counter()
            for u in users:
                fn(u)
            best[name] = min(best[name], (time.perf_counter() - t) / len(users) * 1e3)
    per_event = {k: v / (n_events / len(users)) * 1e3 for k, v in best.items()}
    print(f"history, {len(users)} users, {n_events / len(users):.1f} events each: before {best['before']:.3f} ms "
          f"({per_event['before']:.2f} us an event), now {best['now']:.3f} ms ({per_event['now']:.2f} us): "
          f"{best['before'] / best['now']:.2f}x (scroll included)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", type=Path, default=Path("/tmp/read_costs"))
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--events", type=int, default=40_000)
    args = ap.parse_args(argv)
    keys()
    eng = open_store(args.path, args.items, args.events)
    try:
        history(eng, [f"u{u}" for u in range(1000)])
    finally:
        eng.close()


if __name__ == "__main__":
    main()
