"""Index mode against dense serving at one catalog size, on one store, in one run.

    .venv/bin/python bench/index_mode.py [--items 100000] [--events 20000]

Builds the synthetic catalog and event log of ``bench/scale.py`` (random 384-d unit vectors), then:
1. fits with ``fit.index_items=0`` (every source dense over the catalog per request) and times ``recommend(k=10)`` and
   one raw Qdrant query on the store as ingested (the embedded engine scans every point);
2. fits again in index mode (the content and cf sources read from Qdrant top lists; the fit builds the HNSW indexes)
   and times both again;
3. serves the dense model once more on the now-indexed store (its cf source scanned in memory), so the comparison is
   not only "HNSW vs scan".
Prints p50/p95 (200 users), the ratios to the raw query, both fits' seconds (and the HNSW build's), and how much the
two models' top-10s overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=1_000)
    args = ap.parse_args()
    from scale import RandomUnitEncoder, catalog, event_log

    from engine import Engine
    from engine.components import Components
    from engine.offline.metrics import latencies_ms
    from engine.store import VectorQuery

    base = {"llm": {"backend": "none"}, "clip": {"enabled": False}, "profile": {"use_llm": False}}
    comps = Components(text_encoder=RandomUnitEncoder())
    items, pop, main_genre = catalog(args.items)
    log = event_log(args.users, args.events, pop, main_genre)
    uids = [f"u{u}" for u in range(min(200, args.users))]
    last = {e["user_id"]: e["item_id"] for e in log}
    out: dict = {"items": args.items, "events": len(log), "probes": len(uids)}

    def measure(eng, tag: str) -> list[tuple[str, ...]]:
        hits = eng.catalog.hits([last[u] for u in uids], with_vectors=True)
        probe = [hits[last[u]].vectors["text"] for u in uids]
        raw = latencies_ms(lambda i: eng.store.query(eng.items_col, [VectorQuery("text", vector=probe[i], limit=10)], limit=10), len(uids))
        eng.recommend(uids[0], k=10)
        rec = latencies_ms(lambda i: eng.recommend(uids[i], k=10), len(uids))
        row = {"raw_p50": np.percentile(raw, 50), "raw_p95": np.percentile(raw, 95), "recommend_p50": np.percentile(rec, 50),
               "recommend_p95": np.percentile(rec, 95)}
        row = {k: round(float(v), 2) for k, v in row.items()}
        row["p95_ratio_to_raw"] = round(row["recommend_p95"] / row["raw_p95"], 2)
        out[tag] = row
        print(f"{tag}: {row}", flush=True)
        return [tuple(x.item_id for x in eng.recommend(u, k=10).items) for u in uids[:50]]

    with tempfile.TemporaryDirectory(dir=os.environ.get("PERSONA_SCALE_TMP")) as path:
        eng = Engine.open(path, base | {"fit": {"index_items": 0}}, components=comps)
        eng.add_items(items, progress=False)
        eng.add_events(log)
        t = time.perf_counter()
        dense_version = eng.fit().version
        out["fit_dense_s"] = round(time.perf_counter() - t, 1)
        dense = measure(eng, "dense (store as ingested: scans)")
        eng.close()
        eng = Engine.open(path, base | {"fit": {"index_items": 1}}, components=comps)
        time.sleep(1.1)  # a distinct version second
        t = time.perf_counter()
        rep = eng.fit()
        out["fit_index_mode_s"] = round(time.perf_counter() - t, 1)
        out["hnsw_build_s"] = rep.info.get("index_build_seconds")
        indexed = measure(eng, "index mode (HNSW)")
        root = eng.learned.root
        (root / ".CURRENT.bench").write_text(dense_version)
        os.replace(root / ".CURRENT.bench", root / "CURRENT")  # serve the dense model again, on the indexed store
        measure(eng, "dense again (HNSW store; its cf source scanned in memory)")
        eng.close()
    out["top10_overlap_dense_vs_index_mode"] = round(float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(dense, indexed)])), 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
