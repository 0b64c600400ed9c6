"""What one ``recommend`` costs inside the fitted model on a large catalog, with the vector store left out.

    .venv/bin/python bench/model_serving.py [--items 1000000] [--events 20000] [--users 200] [--index-items N] [--out FILE.json]

Fits ``PersonaModel`` (the learned recommender with ``LearnedConfig`` defaults: index mode from ``index_items``) on
``bench/scale.py``'s synthetic catalog and event log, with random 384-d unit vectors as text vectors. Then it times
``PersonaModel.recommend(k=10)`` for the first ``--users`` users, the content and cf searches answered from the exact
top lists computed beforehand: what Qdrant's HNSW answers, without its cost (``bench/scale.py`` times the store and the
whole ``Engine.recommend``). Each user is served once before the timed pass, as a warm server would have the per-time-
bucket popularity cached. Prints the fit's stage seconds, p50 / p95, and where a request's time goes (cProfile's
cumulative time per request for the named steps, so the shares carry the profiler's overhead).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

STEPS = {  # (file suffix, function name) -> label
    ("learned/model.py", "state"): "user state (all sources)",
    ("learned/seqnet.py", "relative_probs"): "  sequence model (items with events)",
    ("learned/candidates.py", "pool"): "candidate pool",
    ("learned/features.py", "features"): "features",
    ("learned/ranker.py", "predict"): "ranker (LightGBM)",
    ("learned/features.py", "dislike_share"): "  dislike share (within the features)",
    ("learned/model.py", "reasons"): "reasons",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--index-items", type=int, help="LearnedConfig.index_items (index mode from this catalog size; its default if unset)")
    ap.add_argument("--out", type=Path, help="write the numbers here as JSON")
    args = ap.parse_args()
    from scale import catalog, event_log

    from engine.learned import LearnedConfig, PersonaModel
    from engine.types import Event, Item

    raw, pop, main_genre = catalog(args.items)
    log = [Event(**e) for e in event_log(1000, args.events, pop, main_genre)]
    items = [Item(**d) for d in raw]
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((args.items, 384), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    t = time.perf_counter()
    cfg = LearnedConfig() if args.index_items is None else LearnedConfig(index_items=args.index_items)
    model = PersonaModel.fit(log, items, emb, cfg, embedding_ids=[it.id for it in items], progress=False)
    out: dict = {"items": args.items, "events": len(log), "indexed": model.indexed, "fit_s": round(time.perf_counter() - t, 1),
                 "fit_stage_s": model.info.get("stage_seconds")}
    print(f"fit {out['fit_s']} s, stages {out['fit_stage_s']}", flush=True)
    del emb, items, raw

    hist: dict[str, list] = {}
    for e in log:
        hist.setdefault(e.user_id, []).append(e)
    users = [u for u in (f"u{k}" for k in range(args.users)) if u in hist]
    lists = {}
    for u in users:  # the exact lists (top_dots over the catalog): what the searches below answer
        st = model.state(hist[u])
        lists[u] = {k: [model.index.ids[j] for j in st.sources[k].rows] for k in ("content", "cf")} if model.indexed else None

    def serve(u):
        s = lists[u]
        if s is None:
            return model.recommend(hist[u], k=10)
        return model.recommend(hist[u], k=10, content_search=lambda q, lim: s["content"][:lim], cf_search=lambda q, lim: s["cf"][:lim])

    for u in users:
        serve(u)
    ms = []
    for u in users:
        t = time.perf_counter()
        serve(u)
        ms.append((time.perf_counter() - t) * 1e3)
    out.update(users=len(users), recommend_p50_ms=round(float(np.percentile(ms, 50)), 2), recommend_p95_ms=round(float(np.percentile(ms, 95)), 2))
    print(f"PersonaModel.recommend(k=10), {len(users)} users, searches from exact lists: "
          f"p50 {out['recommend_p50_ms']} ms, p95 {out['recommend_p95_ms']} ms", flush=True)

    prof = cProfile.Profile()
    prof.enable()
    for u in users:
        serve(u)
    prof.disable()
    stats = pstats.Stats(prof).stats
    steps = {}
    for (file, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.items():
        for (suffix, fn), label in STEPS.items():
            if name == fn and file.endswith(suffix):
                steps[label] = steps.get(label, 0.0) + ct / len(users) * 1e3
    total = sum(v[3] for k, v in stats.items() if k[2] == "recommend" and k[0].endswith("learned/model.py")) / len(users) * 1e3
    out["profiled_ms_per_request"] = {"total": round(total, 2), **{k.strip(): round(v, 2) for k, v in steps.items()}}
    print(f"where the time goes (cProfile, ms per request; total {total:.2f}):")
    for label in STEPS.values():
        print(f"  {label:38s} {steps.get(label, 0.0):7.2f}")
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
