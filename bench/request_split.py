"""Where one ``Engine.recommend(k=10)`` of the fitted model spends its time, by wall clock, and how that grows with the
user's history. Kept lists off (``retrieval.cache_users=0``): every request ranks, as a user new to the process does.

    .venv/bin/python bench/request_split.py --path /tmp/split100k [--items 100000] [--events 20000] [--users 600] [--json out.json]
        [--ranker-ab] [--refits N] [--compare OTHER_STORE]

Builds the store at ``--path`` once if it holds no fitted model (``bench/scale.py``'s synthetic catalog with random
384-d unit text vectors, its event log of 1,000 users, then ``Engine.fit``: ~2.5 min at 100k items on 2 cores), and reuses
it after. Each stage is timed by a wrapper around a public function (``time.perf_counter`` before and after, ~1 us per
call), not by cProfile, whose per-call overhead inflated the many small calls (decoding the Qdrant hits looked like 1.5
ms of a request under cProfile and is ~0.03 ms by wall clock). Stages nest (``model.recommend`` holds ``user state``,
which holds the Qdrant queries and the sequence model), so the column does not sum to the total; stage means are over
all timed requests (both of each user's), the p50 / p95 over each user's faster one. The first
``--warmup`` users are served untimed; each timed user is served twice and the faster of the two counts.
``--ranker-ab`` then serves each timed user once with LightGBM's predict and once with the compiled ranker
(``fit.compiled_ranker``), alternating which goes first, and prints both and their ratio. ``--refits N`` first fits
the store again N times on the same events (what a scheduled refit costs: its seconds, and the HNSW build's within them),
before any request is timed. ``--compare OTHER_STORE`` then serves each timed user from this store and from another
fitted one (e.g. one built and fitted by older code, its layout kept) in turn, in one process, alternating which goes
first, and prints both.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from scale import RandomUnitEncoder, catalog, event_log  # noqa: E402

import engine.events as events_mod  # noqa: E402
import engine.items as items_mod  # noqa: E402
import engine.learned.features as features_mod  # noqa: E402
import engine.learned.model as model_mod  # noqa: E402
import engine.learned.ranker as ranker_mod  # noqa: E402
import engine.learned.seqnet as seqnet_mod  # noqa: E402
import engine.serving as serving_mod  # noqa: E402
import engine.store.edge as edge_mod  # noqa: E402
from engine import Engine  # noqa: E402
from engine.components import Components  # noqa: E402
from engine.types import Item  # noqa: E402

CONFIG = {"llm": {"backend": "none"}, "clip": {"enabled": False}, "profile": {"use_llm": False}, "retrieval": {"cache_users": 0}}
STAGES = [  # (owner, attribute, label): a missing attribute fails loudly, so a refactor cannot silently drop a stage;
    # entries with one label add up
    (serving_mod.ModelServing, "hits", "served list (ModelServing.hits)"),
    (model_mod.PersonaModel, "recommend", "model.recommend"),
    (model_mod, "user_state", "user state"),
    (edge_mod.EdgeStore, "nearest_keys", "Qdrant queries (cf, text)"),
    (seqnet_mod.SeqNet, "relative_probs", "sequence model"),  # index mode (large catalogs)
    (seqnet_mod.SeqNet, "probs", "sequence model"),  # below fit.index_items (neither calls the other)
    (model_mod, "features", "ranker features"),
    (ranker_mod.Ranker, "predict", "LightGBM"),
    (features_mod, "dislike_share", "dislike share (within the features)"),  # the penalty reads the features' memo
    (model_mod, "reasons", "reasons"),
    (model_mod, "pool", "pool"),
    (items_mod.ItemCatalog, "hits", "payloads of the picks"),
    (events_mod.EventLog, "history", "the user's events"),
]


def instrument() -> collections.defaultdict:
    spent: collections.defaultdict = collections.defaultdict(float)
    for owner, name, label in STAGES:
        fn = getattr(owner, name)

        def timed(*a, _fn=fn, _label=label, **kw):
            t = time.perf_counter()
            try:
                return _fn(*a, **kw)
            finally:
                spent[_label] += time.perf_counter() - t
        setattr(owner, name, timed)
    return spent


def open_store(path: Path, items: int, events: int) -> Engine:
    eng = Engine.open(path, CONFIG, components=Components(text_encoder=RandomUnitEncoder()))
    if eng.learned.current() is None:
        cat, pop, main = catalog(items)
        t = time.time()
        eng.add_items([Item(**d) for d in cat], progress=False)
        eng.add_events(event_log(1000, events, pop, main))
        eng.fit()
        print(f"built {path}: {items:,} items, {events:,} events, {time.time() - t:.0f} s", flush=True)
    return eng


def alternated(users: list[str], serve: dict, passes: int = 1) -> dict:
    """Each user's request timed both ways of ``serve`` (two names -> a function serving one user), which one goes
    first alternating by user and pass, so drift in the machine's speed hits both alike; over several passes each
    user's faster request counts. p50 / p95 ms per way."""
    a, b = serve
    best: dict[str, dict[str, float]] = {a: {}, b: {}}
    for rep in range(passes):
        for i, u in enumerate(users):
            for name in ((a, b) if (i + rep) % 2 == 0 else (b, a)):
                t = time.perf_counter()
                serve[name](u)
                ms = (time.perf_counter() - t) * 1e3
                best[name][u] = min(ms, best[name].get(u, ms))
    return {k: {"p50": float(np.percentile(list(v.values()), 50)), "p95": float(np.percentile(list(v.values()), 95))} for k, v in best.items()}


def ranker_ab(eng: Engine, users: list[str]) -> dict:
    """Each user's request timed with the fitted ranker served by LightGBM's predict and by its compiled code
    (``Ranker.compile``), in turn (:func:`alternated`)."""
    model = eng.learned.current()
    compiled = model.ranker
    if not compiled.compiled:
        return {"skipped": "the ranker is not compiled here (lleaves missing, or fit.compiled_ranker is false)"}
    plain = ranker_mod.Ranker(compiled.booster, compiled.columns, compiled.boosters[1:])  # the same boosters, LightGBM's predict

    def served_by(ranker):
        def serve(u: str) -> None:
            model.ranker = ranker
            eng.recommend(u, k=10)
        return serve
    try:
        out = alternated(users, {"lightgbm": served_by(plain), "compiled": served_by(compiled)})
    finally:
        model.ranker = compiled
    out["ratio_p50"] = out["lightgbm"]["p50"] / out["compiled"]["p50"]
    out["ratio_p95"] = out["lightgbm"]["p95"] / out["compiled"]["p95"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", type=Path, required=True, help="store folder (built here when it holds no fitted model)")
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=600, help="users timed (of the log's 1,000, after the warm-up ones)")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--ranker-ab", action="store_true", help="then serve each timed user with LightGBM's predict and with "
                    "the compiled ranker in turn (order alternating), and print both and their ratio")
    ap.add_argument("--compare", type=Path, default=None, help="then serve each timed user from this store and from "
                    "the fitted store at COMPARE in turn, and print both")
    ap.add_argument("--refits", type=int, default=0, help="fit() again this many times first, and print each one's seconds")
    a = ap.parse_args()
    eng = open_store(a.path, a.items, a.events)
    refits = []
    for _ in range(a.refits):
        t = time.perf_counter()
        rep = eng.fit()
        refits.append({"seconds": round(time.perf_counter() - t, 1), "index_build_seconds": rep.info.get("index_build_seconds")})
        print(f"refit {len(refits)}: {refits[-1]['seconds']} s, of which the HNSW build {refits[-1]['index_build_seconds']} s", flush=True)
    users = [f"u{u}" for u in range(a.warmup + a.users)]
    lengths = {u: len(eng.history(u)) for u in users}
    for u in users[: a.warmup]:
        eng.recommend(u, k=10)
    spent = instrument()
    best: dict[str, float] = {}
    for _ in range(2):
        for u in users[a.warmup :]:
            t = time.perf_counter()
            eng.recommend(u, k=10)
            ms = (time.perf_counter() - t) * 1e3
            best[u] = min(ms, best.get(u, ms))
            spent["Engine.recommend (whole request)"] += ms / 1e3
    spent = dict(spent)  # the split of the requests above: the A/B's requests are timed on their own
    ab = ranker_ab(eng, users[a.warmup :]) if a.ranker_ab else None
    cmp = None
    if a.compare:
        other = open_store(a.compare, a.items, a.events)
        for u in users[: a.warmup]:
            other.recommend(u, k=10)
        cmp = alternated(users[a.warmup :], {"this": lambda u: eng.recommend(u, k=10), "other": lambda u: other.recommend(u, k=10)}, passes=2)
        other.close()
    eng.close()
    n = 2 * a.users
    ms = np.array(list(best.values()))
    out = {"items": a.items, "events": a.events, "users": a.users, "recommend_ms": {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
           "mean": float(ms.mean())}, "refits": refits, "stages_mean_ms": {k: v / n * 1e3 for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}, "by_history": []}
    print(f"recommend(k=10), kept lists off, {a.users} users (faster of two requests each): p50 {out['recommend_ms']['p50']:.2f} ms, "
          f"p95 {out['recommend_ms']['p95']:.2f} ms, mean {out['recommend_ms']['mean']:.2f} ms\n\n| stage | mean ms per request |\n|---|---|")
    for k, v in out["stages_mean_ms"].items():
        print(f"| {k} | {v:.2f} |")
    print("\n| events in the history | users | p50 ms | p95 ms |\n|---|---|---|---|")
    x = np.array([lengths[u] for u in best])
    for lo, hi in ((0, 10), (10, 20), (20, 40), (40, 80), (80, 10**9)):
        m = (x >= lo) & (x < hi)
        if m.any():
            row = {"from": lo, "to": hi, "users": int(m.sum()), "p50": float(np.percentile(ms[m], 50)), "p95": float(np.percentile(ms[m], 95))}
            out["by_history"].append(row)
            print(f"| {lo}-{hi - 1 if hi < 10**9 else ''} | {row['users']} | {row['p50']:.2f} | {row['p95']:.2f} |")
    if cmp is not None:
        out["compare"] = {"other_store": str(a.compare), **cmp}
        print(f"\nSame users, one process, this store and {a.compare} in turn: p50 / p95 {cmp['this']['p50']:.2f} / "
              f"{cmp['this']['p95']:.2f} ms here, {cmp['other']['p50']:.2f} / {cmp['other']['p95']:.2f} ms there")
    if ab is not None:
        out["ranker_ab"] = ab
        if "skipped" in ab:
            print(f"\nranker A/B skipped: {ab['skipped']}")
        else:
            print(f"\nSame users, same run, LightGBM's predict and the compiled ranker in turn: LightGBM p50 / p95 "
                  f"{ab['lightgbm']['p50']:.2f} / {ab['lightgbm']['p95']:.2f} ms, compiled {ab['compiled']['p50']:.2f} / "
                  f"{ab['compiled']['p95']:.2f} ms; LightGBM / compiled: p50 {ab['ratio_p50']:.3f}x, p95 {ab['ratio_p95']:.3f}x")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
