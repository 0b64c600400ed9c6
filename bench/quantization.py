"""Qdrant scalar quantization (int8) against float32 vectors on the same data, through the product's edge store.

    python bench/quantization.py                      # 100k x 384-d, clustered vectors
    python bench/quantization.py --items 20000 --random

Builds the same collection twice with ``engine.store.EdgeStore`` (``quantization="none"`` and ``"int8"``), runs
Qdrant's optimizer (the HNSW build ``Engine.fit()`` runs), then times 300 top-100 queries (the depth of the
content and cf sources in index mode) on each and compares their hits with the exact top 100 (numpy, float64).
The int8 store's queries fetch 2x the hits through the int8 copy and rescore them (``engine.store`` does so on every
query), so the float32 store is also timed searching 200 deep and keeping 100: the same search width.
The vectors are clustered by default (2,000 centres plus noise: near neighbours exist, as in text embeddings); with
``--random`` they are i.i.d. unit vectors like ``bench/scale.py``'s, where HNSW's recall is low for both. Queries are
means of 5 catalog vectors plus noise, built like the content source's query from recent items.
Prints build seconds, query p50/p95, recall@100 and the largest gap between a returned score and the exact cosine,
with the int8 / float32 ratios measured in this run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.store import Point, VectorQuery, point_id  # noqa: E402
from engine.store.edge import EdgeStore  # noqa: E402


def data(n: int, dim: int, random: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    if random:
        X = rng.standard_normal((n, dim)).astype(np.float32)
    else:
        centres = rng.standard_normal((2000, dim)).astype(np.float32)
        X = centres[rng.integers(0, 2000, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Q = X[rng.choice(n, (300, 5))].mean(1) + 0.05 * rng.standard_normal((300, dim)).astype(np.float32)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    return X, Q.astype(np.float32)


def timed(store: EdgeStore, row: dict, X: np.ndarray, Q: np.ndarray, exact: np.ndarray, depth: int, fetch: int) -> dict:
    """``fetch`` hits per query, the first ``depth`` kept: fetch = 2 x depth searches a float32 index as wide as the
    int8 one with 2x oversampling."""
    ms, recall, gap = [], [], 0.0
    for rep in range(2):  # the first pass warms the caches; the second is timed
        ms, recall = [], []
        for qi, q in enumerate(Q):
            t = time.perf_counter()
            hits = store.query("items", [VectorQuery(vector=q.tolist(), using="text")], limit=fetch, with_payload=False)[:depth]
            ms.append((time.perf_counter() - t) * 1e3)
            ids = np.array([row[h.id] for h in hits])
            recall.append(len(set(ids.tolist()) & set(exact[qi].tolist())) / depth)
            if rep and len(ids):
                gap = max(gap, float(np.abs(np.array([h.score for h in hits]) - X[ids].astype(np.float64) @ q).max()))
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)), "recall": float(np.mean(recall)), "score_gap": gap}


def run(root: Path, quantization: str, X: np.ndarray, Q: np.ndarray, exact: np.ndarray, depth: int) -> dict:
    store = EdgeStore(root, quantization=quantization)
    store.ensure_collection("items", {"text": X.shape[1]}, quantize=True)
    pid = [point_id("item", str(i)) for i in range(len(X))]
    row = {p: i for i, p in enumerate(pid)}
    for s in range(0, len(X), 2000):
        store.upsert("items", [Point(pid[i], {"text": X[i].tolist()}, {}) for i in range(s, min(len(X), s + 2000))])
    t = time.perf_counter()
    store.optimize("items")
    out = {"build_s": time.perf_counter() - t, "top": timed(store, row, X, Q, exact, depth, depth)}
    if quantization == "none":
        out["wide"] = timed(store, row, X, Q, exact, depth, 2 * depth)
    store.close()
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--random", action="store_true", help="i.i.d. unit vectors instead of clustered ones")
    a = ap.parse_args(argv)
    X, Q = data(a.items, a.dim, a.random)
    exact = np.argsort(-(Q.astype(np.float64) @ X.T.astype(np.float64)), axis=1)[:, : a.depth]
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for quant in ("none", "int8"):
            res[quant] = run(Path(tmp) / quant, quant, X, Q, exact, a.depth)
            shutil.rmtree(Path(tmp) / quant, ignore_errors=True)
    rows = [("float32", res["none"]["build_s"], res["none"]["top"]),
            (f"float32, top {2 * a.depth} searched", res["none"]["build_s"], res["none"]["wide"]),
            ("int8 (rescored, 2x oversampled)", res["int8"]["build_s"], res["int8"]["top"])]
    kind = "random" if a.random else "clustered"
    print(f"{a.items:,} x {a.dim}-d {kind} vectors, top {a.depth}, 300 queries, the same data in each store")
    print(f"{'':34s} {'build s':>8s} {'p50 ms':>7s} {'p95 ms':>7s} {'recall':>7s} {'max |score - exact|':>20s}")
    for name, b, r in rows:
        print(f"{name:34s} {b:8.1f} {r['p50']:7.2f} {r['p95']:7.2f} {r['recall']:7.3f} {r['score_gap']:20.1e}")
    n, w, q = res["none"]["top"], res["none"]["wide"], res["int8"]["top"]
    print(f"int8 / float32: build {res['int8']['build_s'] / res['none']['build_s']:.2f}x; query p50 {q['p50'] / n['p50']:.2f}x "
          f"({q['p50'] / w['p50']:.2f}x the float32 search as wide), recall {q['recall'] - n['recall']:+.3f} ({q['recall'] - w['recall']:+.3f})")


if __name__ == "__main__":
    main()
