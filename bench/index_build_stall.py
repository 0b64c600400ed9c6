"""Serving while the embedded store builds its vector index: in-process build against the build beside it.

    .venv/bin/python bench/index_build_stall.py [--items 100000]

qdrant-edge keeps Python's GIL while its optimizers run, so a build in the serving process stops every thread of
it. ``EdgeStore.optimize`` (what ``fit()`` calls in index mode) builds in a child process on a copy of the shard
instead. One store of ``--items`` random 384-d unit vectors (``text``) plus 64-d ``cf`` vectors, as
``bench/scale.py`` makes them; a thread queries it (top-10 on ``text``) back to back throughout, and:

1. **in-process**: the shard's copy is built by qdrant-edge in this process (what ``optimize`` did before);
2. **beside**: ``EdgeStore.optimize("items")``, the child process, then the swap.

For each: the build's seconds, queries answered during it, and the query latency p50 / p99 / max during it (a
stalled thread's query waits for the whole build), against the same thread's p50 before either build.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Prober(threading.Thread):
    """Queries back to back; records (start, seconds) per query."""

    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self.fn, self.rows, self.stop = fn, [], threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            t = time.perf_counter()
            self.fn(i)
            self.rows.append((t, time.perf_counter() - t))
            i += 1

    def during(self, t0: float, t1: float) -> dict:
        # a query that started before the build and ended inside it counts: it is the one a stall holds up
        lat = np.array([s for t, s in self.rows if t + s >= t0 and t <= t1]) * 1e3
        if not len(lat):
            return {"queries": 0}
        return {"queries": int(len(lat)), "p50_ms": round(float(np.percentile(lat, 50)), 2),
                "p99_ms": round(float(np.percentile(lat, 99)), 2), "max_ms": round(float(lat.max()), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    import qdrant_edge as qe

    from engine.store import Point, VectorQuery, point_id
    from engine.store.edge import EdgeStore

    rng = np.random.default_rng(0)
    out: dict = {"items": args.items, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(dir=os.environ.get("PERSONA_SCALE_TMP")) as tmp:
        store = EdgeStore(Path(tmp) / "store")
        store.ensure_collection("items", {"text": 384, "cf": 64}, {"item_id": "keyword"})
        t = time.perf_counter()
        for lo in range(0, args.items, 2000):
            n = min(2000, args.items - lo)
            text = rng.standard_normal((n, 384)).astype(np.float32)
            cf = rng.standard_normal((n, 64)).astype(np.float32)
            store.upsert("items", [Point(point_id("item", str(lo + k)), {"text": text[k].tolist(), "cf": cf[k].tolist()},
                                         {"item_id": str(lo + k)}) for k in range(n)])
        store.flush()
        out["ingest_s"] = round(time.perf_counter() - t, 1)
        probes = rng.standard_normal((256, 384)).astype(np.float32).tolist()
        prober = Prober(lambda i: store.query("items", [VectorQuery("text", vector=probes[i % 256], limit=10)], 10))
        prober.start()
        time.sleep(3)
        out["before_build"] = prober.during(0, time.perf_counter())

        copy = Path(tmp) / "copy"
        shutil.copytree(Path(tmp) / "store" / "items", copy)
        t0 = time.perf_counter()
        shard = qe.EdgeShard.load(str(copy))
        built = shard.optimize()
        shard.close()
        t1 = time.perf_counter()
        out["in_process"] = {"built": bool(built), "build_s": round(t1 - t0, 1), **prober.during(t0, t1)}
        print("in-process:", out["in_process"], flush=True)
        time.sleep(2)

        t0 = time.perf_counter()
        built = store.optimize("items")
        t1 = time.perf_counter()
        out["beside"] = {"built": bool(built), "build_s": round(t1 - t0, 1), **prober.during(t0, t1)}
        print("beside:", out["beside"], flush=True)
        time.sleep(2)
        out["after_build_hnsw"] = prober.during(t1 + 0.5, time.perf_counter())
        prober.stop.set()
        prober.join()
        store.close()
    print(json.dumps(out))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
