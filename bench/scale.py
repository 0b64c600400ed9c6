"""Cost curves from 10k to 1M items on synthetic catalogs and event logs.

    nice -n 10 .venv/bin/python bench/scale.py [--quick] [--sizes 10000,100000,1000000]
        [--encoder auto|minilm|random] [--out docs/scale]

Each size runs in its own process (so peak RSS is that size's) on the embedded edge store:

- catalog: N items with synthetic titles, descriptions and attributes (genres, year); item
  popularity follows a power law (Zipf, s=1.1 over the popularity rank);
- event log: users with one or two favourite genres, sessions (gaps > 1 h, 30-300 s inside),
  items drawn by popularity (70 % inside a favourite genre), ratings 1-5;
- vectors: random unit vectors of MiniLM's dimension (384; deterministic per text, cost ~nothing)
  for the catalog at every size, so ingest there measures the pipeline and the store only; and,
  in the same run, the real packaged MiniLM encoder on a sample of the same catalog (``--sample``
  items, own store): pipeline vs raw encoder on the same texts, the ratio that counts for an
  encoder-bound ingest (MiniLM runs at ~40 items/s on 2 cores: 10k items alone would take minutes,
  100k most of an hour). ``--encoder minilm`` encodes the whole catalog with MiniLM instead.
  The output says which was used.

Measured in one run on the same data, per size:
1. ingest throughput (``Engine.add_items``, items/s) against the raw encoder on the same texts;
2. ``add_events`` throughput, and ``Engine.fit()`` time at 1/4, 1/2 and all of the event log
   (cumulative), with a power-law fit ``seconds ~ events^b`` (b printed);
3. ``recommend(k=10)`` p50/p95 without LLM (fitted model, and the unfitted fusion) against ONE raw
   Qdrant query (k=10 nearest neighbours of an item's text vector) on the same store, timed twice: as
   ingested (the embedded engine scans every point) and as served (after a fit in index mode, at
   ``fit.index_items`` items and more, has built the HNSW indexes). These are the first requests after the
   fit. The fitted model is timed again in a steady state, as a long-running server sees it: after an untimed
   warm-up over other users, on users new to the process, with the raw query on their probes in the same state;
   then as a live user sees it (``after_event``): users new to the process each send one new event (``add_events``,
   which queues the ranking of their list, ``retrieval.warm_users``) and ask at once or 0.1 s later; the other half
   of them the same on the store reopened without ranking ahead;
4. peak RSS of the process and disk per item (store + fitted model).
Above ``ONE_FIT_ITEMS`` items ``fit()`` runs once, on the whole (cut-down) event log, instead of at 1/4, 1/2 and
all of it: the first fit in index mode builds the HNSW indexes of the whole catalog (later ones re-index the points of
the items with events), which at 1M items took most of an hour on 2 cores; that size then has no fit exponent. The output says so. Writes ``scale.json``, ``scale.md`` (table) and ``scale.png`` (cost vs size) under --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GENRES = [f"genre{i:02d}" for i in range(24)]
ONE_FIT_ITEMS = 200_000
"""Above this, fit() runs once on the whole log (see the docstring)."""


# -- synthetic data ------------------------------------------------------------------------------


def _words(rng: np.random.Generator, n: int) -> list[str]:
    syl = ["ka", "lo", "mi", "ra", "ten", "su", "vor", "el", "qui", "dan", "po", "ri", "sha", "nu", "zel", "ta"]
    return ["".join(rng.choice(syl, size=rng.integers(2, 4))) for _ in range(n)]


def catalog(n: int, seed: int = 0) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Items (dicts for ``add_items``), popularity weights (power law) and each item's main genre."""
    rng = np.random.default_rng(seed)
    vocab = _words(rng, 3000)
    main = rng.integers(0, len(GENRES), n)
    second = rng.integers(0, len(GENRES), n)
    years = rng.integers(1950, 2026, n)
    pop = 1.0 / np.arange(1, n + 1) ** 1.1
    pop = pop[rng.permutation(n)]  # popularity rank independent of the id
    wi = rng.integers(0, len(vocab), (n, 18))
    items = []
    for i in range(n):
        w = [vocab[j] for j in wi[i]]
        genres = [GENRES[main[i]]] + ([GENRES[second[i]]] if second[i] != main[i] and i % 3 == 0 else [])
        items.append({
            "id": f"i{i}",
            "title": f"{w[0].title()} {w[1]}",
            "description": f"A {genres[0]} story of {w[2]} and {w[3]}: " + " ".join(w[4:]) + ".",
            "attributes": {"genres": genres, "year": int(years[i])},
        })
    return items, pop / pop.sum(), main


def event_log(n_users: int, n_events: int, pop: np.ndarray, main: np.ndarray, seed: int = 1) -> list[dict]:
    """Sessions of events: users favour one or two genres; items drawn by popularity."""
    rng = np.random.default_rng(seed)
    n = len(pop)
    by_genre = [np.flatnonzero(main == g) for g in range(len(GENRES))]
    genre_p = [pop[ix] / pop[ix].sum() for ix in by_genre]
    per_user = rng.geometric(1.0 / max(2.0, n_events / n_users), n_users) + 1
    per_user = np.maximum(2, np.round(per_user * n_events / per_user.sum())).astype(int)
    events, t0 = [], 1_600_000_000.0
    glob = rng.choice(n, size=int(per_user.sum()) + 10, p=pop)
    gi = 0
    for u in range(n_users):
        fav = rng.choice(len(GENRES), size=rng.integers(1, 3), replace=False)
        t = t0 + rng.uniform(0, 3e7)
        k = int(per_user[u])
        in_genre = rng.random(k) < 0.7
        for j in range(k):
            if rng.random() < 0.2:
                t += rng.uniform(3700, 5e5)  # a new session
            else:
                t += rng.uniform(30, 300)
            if in_genre[j]:
                g = int(fav[rng.integers(len(fav))])
                item = int(by_genre[g][rng.choice(len(by_genre[g]), p=genre_p[g])]) if len(by_genre[g]) else int(glob[gi])
            else:
                item = int(glob[gi])
                gi += 1
            events.append({"user_id": f"u{u}", "item_id": f"i{item}", "timestamp": t, "rating": float(rng.integers(1, 6))})
    return events


class RandomUnitEncoder:
    """Random unit vectors of the encoder's dimension, deterministic per text (scale runs where
    the real encoder would take too long; said so in the output)."""

    modality = "text"
    vector_name = "text"

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim
        self.fingerprint = f"random-unit:{dim}"

    def encode(self, inputs) -> np.ndarray:
        out = np.empty((len(inputs), self.dim), np.float32)
        for i, s in enumerate(inputs):
            seed = int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
            out[i] = np.random.default_rng(seed).standard_normal(self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


# -- one size (child process) --------------------------------------------------------------------


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 3)


def raw_encoder_ips(enc, texts: list[str], bs: int) -> float:
    """Items per second of the bare encoder over ``texts`` in batches of ``bs`` (the ingest ceiling)."""
    t0 = time.perf_counter()
    for i in range(0, len(texts), bs):
        enc.encode(texts[i : i + bs])
    return len(texts) / (time.perf_counter() - t0)


def minilm_sample(items: list[dict], root: str) -> dict:
    """Ingest vs the raw packaged MiniLM encoder on the same sample of the catalog (own store)."""
    from engine import Engine
    from indexers.ingest import item_text

    eng = Engine.open(Path(root) / "minilm-sample", {"llm": {"backend": "none"}, "clip": {"enabled": False}})
    enc = eng.text_encoder  # loaded outside both timings
    texts = [item_text(_as_item(it)) for it in items]
    bs = eng.settings.text.batch_size
    enc.encode(texts[:bs])
    before = raw_encoder_ips(enc, texts, bs)
    t0 = time.perf_counter()
    rep = eng.add_items(items, progress=False)
    ips = len(items) / (time.perf_counter() - t0)
    assert rep.added == len(items), rep
    raw_ips = max(before, raw_encoder_ips(enc, texts, bs))  # the ceiling: the faster of two raw runs around the pipeline
    eng.close()
    return {"items": len(items), "items_per_s": round(ips, 1), "raw_encoder_items_per_s": round(raw_ips, 1), "ratio_to_raw_encoder": round(ips / raw_ips, 3)}


def run_size(n: int, encoder: str, users: int, events: int, probes: int, sample: int = 0, one_fit: bool = False) -> dict:
    from engine import Engine
    from engine.components import Components
    from engine.offline.metrics import latencies_ms
    from engine.store import VectorQuery
    from indexers.ingest import item_text

    load0 = os.getloadavg()[0]
    t_gen = time.perf_counter()
    items, pop, main = catalog(n)
    log = event_log(users, events, pop, main)
    gen_s = time.perf_counter() - t_gen
    out: dict = {"items": n, "users": users, "events": len(log), "encoder": encoder, "generate_s": round(gen_s, 1)}
    cfg = {"llm": {"backend": "none"}, "clip": {"enabled": False}, "profile": {"use_llm": False}}
    with tempfile.TemporaryDirectory(dir=os.environ.get("PERSONA_SCALE_TMP")) as d:
        if sample and encoder == "random":
            out["ingest_minilm_sample"] = minilm_sample(items[:sample], d)
        comps = Components(text_encoder=RandomUnitEncoder()) if encoder == "random" else Components()
        eng = Engine.open(d, cfg, components=comps)
        enc = eng.text_encoder
        texts = [item_text(_as_item(it)) for it in items[: min(n, 2_000)]]  # throughput is flat in count
        bs = eng.settings.text.batch_size
        enc.encode(texts[:bs])  # warm-up, outside both timings
        raw_before = raw_encoder_ips(enc, texts, bs)
        t0 = time.perf_counter()
        rep = eng.add_items(items, progress=False)
        ingest_s = time.perf_counter() - t0
        assert rep.added == n, rep
        print(f"# ingested {n:,} items in {ingest_s:.0f}s", file=sys.stderr, flush=True)
        raw_ips = max(raw_before, raw_encoder_ips(enc, texts, bs))  # the ceiling: the faster of two raw runs around the pipeline
        out["ingest"] = {
            "items_per_s": round(n / ingest_s, 1), "seconds": round(ingest_s, 1),
            "raw_encoder_items_per_s": round(raw_ips, 1), "raw_measured_on": len(texts),
            "ratio_to_raw_encoder": round(n / ingest_s / raw_ips, 3),
        }
        # one raw query before any fit: the store as ingested (the embedded engine scans every point until a fit in
        # index mode builds the HNSW indexes)
        uids = [f"u{u}" for u in range(min(users, probes))]
        # steady state: after a warm-up over other users, time users not seen yet (see the latency block below)
        warm_ids = [f"u{u}" for u in range(probes, 2 * probes)] if users >= 3 * probes else []
        new_ids = [f"u{u}" for u in range(2 * probes, 3 * probes)] if warm_ids else []
        wanted = set(uids + new_ids)
        last = {e["user_id"]: e["item_id"] for e in log if e["user_id"] in wanted}
        hits = eng.catalog.hits([last[u] for u in uids + new_ids], with_vectors=True)
        probe = [hits[last[u]].vectors["text"] for u in uids]
        probe_new = [hits[last[u]].vectors["text"] for u in new_ids]

        def raw_query(i, probe=probe):
            return eng.store.query(eng.items_col, [VectorQuery("text", vector=probe[i], limit=10)], limit=10)

        scan = latencies_ms(raw_query, len(uids))
        fits = []
        steps = [len(log)] if one_fit else [len(log) // 4, len(log) // 2, len(log)]
        done, ev_s = 0, 0.0
        for upto in steps:
            t0 = time.perf_counter()
            er = eng.add_events(log[done:upto])
            ev_s += time.perf_counter() - t0
            assert not er.errors, er.errors[:3]
            done = upto
            t0 = time.perf_counter()
            rep_fit = eng.fit()
            print(f"# fit at {upto:,} events: {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
            fits.append({"events": upto, "fit_s": round(time.perf_counter() - t0, 2),
                         "index_build_s": rep_fit.info.get("index_build_seconds")})  # HNSW build, inside fit_s
        out["add_events_per_s"] = round(len(log) / ev_s, 1)
        out["fit"] = fits
        if len(fits) >= 2:
            # the model's fit without the HNSW build (a cost of the catalog, not of the events)
            b, _ = np.polyfit(np.log([f["events"] for f in fits]), np.log([f["fit_s"] - (f.get("index_build_s") or 0) for f in fits]), 1)
            out["fit_exponent"] = round(float(b), 2)
        else:
            out["fit_once"] = "fit() run once on the whole log at this size (--one-fit-above): no exponent here"

        # Latency: the same users for every variant; a raw query = k=10 neighbours of an item's text vector, on the
        # store as served (HNSW when the fit built it) and, above, as ingested (a scan of every point).
        def timed(fn) -> list[float]:
            return latencies_ms(fn, len(uids))

        rawq = timed(raw_query)
        lat = {"raw_qdrant_query_ms": {"p50": _pct(rawq, 50), "p95": _pct(rawq, 95)},
               "raw_qdrant_scan_ms": {"p50": _pct(scan, 50), "p95": _pct(scan, 95)}}
        out["index_mode"] = bool(eng.learned.current() is not None and eng.learned.current().indexed)
        for name in ("fitted", "fusion"):
            if name == "fusion":  # the same store, reopened without the fitted model
                eng.close()
                eng = Engine.open(d, cfg | {"fit": {"use_model": False}}, components=comps)
            ms = timed(lambda i, e=eng: e.recommend(uids[i], k=10))
            strategy = eng.recommend(uids[0], k=10).strategy
            lat[f"recommend_{name}_ms"] = {"p50": _pct(ms, 50), "p95": _pct(ms, 95), "strategy": strategy,
                                           "p95_ratio_to_raw_query": round(_pct(ms, 95) / _pct(rawq, 95), 2),
                                           "p95_ratio_to_raw_scan": round(_pct(ms, 95) / _pct(scan, 95), 2)}
            if name == "fitted" and new_ids:
                # Steady state, as a long-running server sees it: the timings above are the first requests after the
                # fit, and they pay first-touch costs (the store's pages mapped in, each user's data read) that
                # a server has paid long before. Warm up on other users (untimed), then time users new to this
                # process, and the raw query on their probes, in the same state.
                for u in warm_ids:
                    eng.recommend(u, k=10)
                ms = latencies_ms(lambda i, e=eng: e.recommend(new_ids[i], k=10), len(new_ids))  # before their raw queries:
                rq = latencies_ms(lambda i: raw_query(i, probe_new), len(new_ids))  # those would warm the graph near them
                lat["raw_qdrant_query_steady_ms"] = {"p50": _pct(rq, 50), "p95": _pct(rq, 95)}
                lat["recommend_fitted_steady_ms"] = {"p50": _pct(ms, 50), "p95": _pct(ms, 95), "warm_up_users": len(warm_ids),
                                                     "p95_ratio_to_raw_query": round(_pct(ms, 95) / _pct(rq, 95), 2)}
                eng.close()  # one new event per user, then their request: half the new users as configured, half without ranking ahead
                half = len(new_ids) // 2
                for key, extra, sl in (("after_event", {}, slice(0, half)), ("after_event_no_warming", {"retrieval": {"warm_users": 0}}, slice(half, None))):
                    eng = Engine.open(d, cfg | extra, components=comps)
                    lat[key] = after_event(eng, warm_ids, new_ids[sl], probe_new[sl], n)
                    eng.close()
                eng = Engine.open(d, cfg, components=comps)
        out["latency"] = lat
        out["probes"] = len(uids)
        eng.store.flush()
        eng.close()
        disk = _du(Path(d))
        out["disk_bytes_per_item"] = round(disk / n)
        out["disk_mb"] = round(disk / 1e6, 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["load_avg_1m"] = [round(load0, 1), round(os.getloadavg()[0], 1)]  # machine load at start and end (shared cores)
    return out


def after_event(eng, warm_ids: list[str], users: list[str], probes: list, n_items: int, pause_s: float = 0.1) -> dict:
    """What a live user sees. Each user sends one new event (``add_events``; with ``retrieval.warm_users`` it queues
    the ranking of their list on the background thread), then asks for their list: half of them at once (a request
    that meets the ranking under way waits for it), the other half after ``pause_s`` (a person's think time), with
    one raw Qdrant query on their probe timed just before, in the same state. Then every user asks again (the kept
    list, ``engine.listcache``). After an untimed warm-up over ``warm_ids``; hits and misses of the kept lists counted."""
    from engine.store import VectorQuery

    for u in warm_ids:
        eng.recommend(u, k=10)
    lists = eng.serving.lists
    h0, m0 = lists.hits, lists.misses
    write, at_once, paused, raw, again = [], [], [], [], []
    for i, u in enumerate(users):
        ev = {"user_id": u, "item_id": f"i{(i * 7919) % n_items}", "timestamp": 1.9e9 + 10 * i, "rating": 4.0}
        t0 = time.perf_counter()
        rep = eng.add_events([ev])
        write.append((time.perf_counter() - t0) * 1000)
        assert rep.added == 1 and not rep.errors, rep
        if i % 2:
            time.sleep(pause_s)
            raw.append(_timed(lambda i=i: eng.store.query(eng.items_col, [VectorQuery("text", vector=probes[i], limit=10)], limit=10)))
            paused.append(_timed(lambda u=u: eng.recommend(u, k=10)))
        else:
            at_once.append(_timed(lambda u=u: eng.recommend(u, k=10)))
        again.append(_timed(lambda u=u: eng.recommend(u, k=10)))
    assert lists.wait(120)  # every ranking ahead counted before the counters are read
    out = {"add_events_1_event_ms": {"p50": _pct(write, 50), "p95": _pct(write, 95)},
           "raw_qdrant_query_ms": {"p50": _pct(raw, 50), "p95": _pct(raw, 95)}}
    for key, xs in (("recommend_at_once_ms", at_once), ("recommend_after_pause_ms", paused), ("recommend_again_ms", again)):
        out[key] = {"p50": _pct(xs, 50), "p95": _pct(xs, 95), "p95_ratio_to_raw_query": round(_pct(xs, 95) / _pct(raw, 95), 2)}
    out |= {"users": len(users), "pause_s": pause_s, "kept_list_hits": lists.hits - h0, "kept_list_misses": lists.misses - m0,
            "warm_users": eng.settings.retrieval.warm_users}
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def _as_item(d: dict):
    from engine.types import Item

    return Item(**d)


# -- driver --------------------------------------------------------------------------------------


def plan(n: int, quick: bool, max_events: int = 200_000, one_fit_items: int = ONE_FIT_ITEMS) -> dict:
    """Users and events per size; large sizes get a cut-down log (printed)."""
    events = min(n * 2, max_events)
    users = min(max(n // 10, 500), 10_000, max(500, events // 20))  # ~20 events per user whatever the cap
    return {"users": users, "events": events, "probes": 100 if quick else 200, "one_fit": n > one_fit_items}


def table(rows: list[dict]) -> str:
    head = ("| items | encoder | events | MiniLM sample: ingest / raw items/s (ratio) | ingest items/s | raw encoder items/s | ingest/raw | add_events ev/s | fit s (at events) | fit exponent "
            "| raw query p50/p95 ms (as served) | raw scan p50/p95 ms (as ingested) | recommend fitted p50/p95 ms (x raw p95) | steady state: raw query, recommend fitted p50/p95 ms (x raw p95) | after one new event: add_events; recommend at once; recommend 0.1 s later, p50/p95 ms (x the raw query 0.1 s after an event, p95); the same without ranking ahead | recommend fusion p50/p95 ms (x raw p95) | peak RSS MB | disk B/item |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lat = r["latency"]
        fitted, steady = lat.get("recommend_fitted_ms"), lat.get("recommend_fitted_steady_ms")
        fus = lat["recommend_fusion_ms"]
        fit_s = ", ".join(f"{f['fit_s']} ({f['events']}" + (f"; HNSW {f['index_build_s']}" if f.get("index_build_s") else "") + ")"
                          for f in r["fit"]) or "skipped"
        lines.append(
            f"| {r['items']:,} | {r['encoder']} | {r['events']:,} | {_sample(r)} | {r['ingest']['items_per_s']} | {r['ingest']['raw_encoder_items_per_s']} "
            f"| {r['ingest']['ratio_to_raw_encoder']} | {r['add_events_per_s']} | {fit_s} | {r.get('fit_exponent', '-')} "
            f"| {lat['raw_qdrant_query_ms']['p50']}/{lat['raw_qdrant_query_ms']['p95']} "
            + (f"| {lat['raw_qdrant_scan_ms']['p50']}/{lat['raw_qdrant_scan_ms']['p95']} " if "raw_qdrant_scan_ms" in lat else "| - ")
            + (f"| {fitted['p50']}/{fitted['p95']} ({fitted['p95_ratio_to_raw_query']}x) " if fitted else "| - ")
            + (f"| {lat['raw_qdrant_query_steady_ms']['p50']}/{lat['raw_qdrant_query_steady_ms']['p95']}, {steady['p50']}/{steady['p95']} "
               f"({steady['p95_ratio_to_raw_query']}x) " if steady else "| - ")
            + f"| {_after(lat)} | {fus['p50']}/{fus['p95']} ({fus['p95_ratio_to_raw_query']}x) | {r['peak_rss_mb']} | {r['disk_bytes_per_item']} |"
        )
    return "\n".join(lines)


def _after(lat: dict) -> str:
    def one(a: dict) -> str:
        w, now, rec = a["add_events_1_event_ms"], a["recommend_at_once_ms"], a["recommend_after_pause_ms"]
        return f"{w['p50']}/{w['p95']}, {now['p50']}/{now['p95']}, {rec['p50']}/{rec['p95']} ({rec['p95_ratio_to_raw_query']}x)"
    return "; ".join(one(lat[k]) for k in ("after_event", "after_event_no_warming") if k in lat) or "-"


def _sample(r: dict) -> str:
    m = r.get("ingest_minilm_sample")
    return f"{m['items_per_s']} / {m['raw_encoder_items_per_s']} ({m['ratio_to_raw_encoder']})" if m else "-"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["items"] for r in rows]
    fig, ax = plt.subplots(1, 4, figsize=(20, 4.2))
    ax[0].plot(n, [r["ingest"]["items_per_s"] for r in rows], "o-", label="ingest (add_items)")
    ax[0].plot(n, [r["ingest"]["raw_encoder_items_per_s"] for r in rows], "s--", label="raw encoder")
    ax[0].set(xscale="log", yscale="log", xlabel="items", ylabel="items/s", title="Ingest throughput")
    for r in rows:
        ax[0].annotate(r["encoder"] + " vectors", (r["items"], r["ingest"]["items_per_s"]), fontsize=8)
    sm = [r for r in rows if r.get("ingest_minilm_sample")]
    if sm:
        ax[0].plot([r["items"] for r in sm], [r["ingest_minilm_sample"]["items_per_s"] for r in sm], "^-", label="ingest, MiniLM sample")
        ax[0].plot([r["items"] for r in sm], [r["ingest_minilm_sample"]["raw_encoder_items_per_s"] for r in sm], "v--", label="raw MiniLM, same sample")
    lat = lambda r, k, q: (r["latency"].get(k) or {}).get(q, np.nan)  # noqa: E731
    for key, label in (("raw_qdrant_scan_ms", "raw Qdrant query, as ingested (scan)"), ("raw_qdrant_query_ms", "raw Qdrant query, as served"), ("recommend_fitted_ms", "recommend (fitted)"),
                       ("recommend_fitted_steady_ms", "recommend (fitted, steady state)"), ("recommend_fusion_ms", "recommend (fusion)")):
        ax[1].plot(n, [lat(r, key, "p95") for r in rows], "o-", label=f"{label} p95")
    for key, label in (("after_event", "ranked ahead"), ("after_event_no_warming", "not ranked ahead")):
        after = [(r["latency"].get(key) or {}).get("recommend_after_pause_ms", {}).get("p95", np.nan) for r in rows]
        ax[1].plot(n, after, "^-" if key == "after_event" else "v--", label=f"recommend 0.1 s after a new event, list {label}, p95")
    ax[1].set(xscale="log", yscale="log", xlabel="items", ylabel="ms", title="Latency, k=10, no LLM")
    for r in rows:
        if r["fit"]:
            b = f"b={r['fit_exponent']}" if "fit_exponent" in r else "one fit"
            ax[2].plot([f["events"] for f in r["fit"]], [f["fit_s"] for f in r["fit"]], "o-", label=f"fit, {r['items']:,} items ({b})")
            if any(f.get("index_build_s") for f in r["fit"]):
                ax[2].plot([f["events"] for f in r["fit"]], [f["fit_s"] - (f.get("index_build_s") or 0) for f in r["fit"]], "x:",
                           label=f"fit without the HNSW build, {r['items']:,} items")
    ax[2].set(xscale="log", yscale="log", xlabel="events", ylabel="fit seconds", title="fit() time vs events")
    ax[3].plot(n, [r["peak_rss_mb"] for r in rows], "o-", label="peak RSS of the process (MB)")
    ax[3].plot(n, [r["disk_bytes_per_item"] / 1e3 for r in rows], "s--", label="disk per item (KB)")
    ax[3].set(xscale="log", yscale="log", xlabel="items", title="Memory and disk")
    for a in ax:
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="10k items only (a couple of minutes)")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--encoder", choices=["auto", "minilm", "random"], default="auto", help="auto: random vectors + a MiniLM sample")
    ap.add_argument("--sample", type=int, default=1000, help="catalog items ingested with MiniLM for the ingest/raw-encoder ratio")
    ap.add_argument("--out", default=None, help="folder for scale.json/.md/.png (default: docs/scale, or none with --quick)")
    ap.add_argument("--max-events", type=int, default=200_000, help="cap on the event log per size (default 200k)")
    ap.add_argument("--one-fit-above", type=int, default=ONE_FIT_ITEMS, help="sizes above this fit once, on the whole log")
    ap.add_argument("--merge", action="store_true", help="keep the other sizes' rows already in --out/scale.json (a size run separately)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-args", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        import logging

        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")  # the phases, live
        print(json.dumps(run_size(args.child, **json.loads(args.child_args))))
        return
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    out_dir = Path(args.out) if args.out else (None if args.quick else ROOT / "docs" / "scale")
    rows = []
    for n in sizes:
        p = plan(n, args.quick, args.max_events, args.one_fit_above)
        enc = "minilm" if args.encoder == "minilm" else "random"
        note = [f"{n:,} items: vectors from the packaged MiniLM encoder" if enc == "minilm" else
                f"{n:,} items: RANDOM unit vectors (384-d) for the catalog, not the encoder; MiniLM measured on a {args.sample:,}-item sample of it"]
        if n * 2 > p["events"]:
            note.append(f"event log cut down to {p['events']:,} events ({p['users']:,} users)")
        if p["one_fit"]:
            note.append("fit() run once on the whole log (the first fit builds the whole HNSW index): no fit exponent at this size")
        print("# " + "; ".join(note), flush=True)
        child_args = json.dumps({"encoder": enc, "users": p["users"], "events": p["events"], "probes": p["probes"], "one_fit": p["one_fit"], "sample": args.sample})
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, __file__, "--child", str(n), "--child-args", child_args], cwd=ROOT, stdout=subprocess.PIPE, text=True)  # stderr: the child's log, live
        if res.returncode != 0:
            print(f"# {n:,} items FAILED (exit {res.returncode}); continuing", flush=True)
            continue
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        row["notes"] = note
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not rows:
        sys.exit(1)
    cmd = ".venv/bin/python bench/scale.py " + " ".join(sys.argv[1:])
    for r in rows:
        r["command"] = cmd
    if args.merge and out_dir is not None and (out_dir / "scale.json").exists():
        mine = {r["items"] for r in rows}
        rows = sorted([r for r in json.loads((out_dir / "scale.json").read_text())["rows"] if r["items"] not in mine] + rows, key=lambda r: r["items"])
    md = table(rows)
    print(md)
    for r in rows:
        lat = r["latency"]
        best = lat.get("recommend_fitted_ms") or lat["recommend_fusion_ms"]
        m = r.get("ingest_minilm_sample")
        real = f"MiniLM sample ingest/raw encoder = {m['ratio_to_raw_encoder']}; " if m else ""
        scan = f", / raw scan p95 = {best['p95_ratio_to_raw_scan']}" if "p95_ratio_to_raw_scan" in best else ""
        if lat.get("recommend_fitted_steady_ms"):
            st = lat["recommend_fitted_steady_ms"]
            scan += f"; steady state (new users after {st['warm_up_users']} others): p50/p95 {st['p50']}/{st['p95']} ms = {st['p95_ratio_to_raw_query']}x raw p95"
        for key, what in (("after_event", "ranked ahead by add_events"), ("after_event_no_warming", "without warming")):
            if key in lat:
                a, now, w = lat[key]["recommend_after_pause_ms"], lat[key]["recommend_at_once_ms"], lat[key]["add_events_1_event_ms"]
                scan += (f"; after a new event ({what}): add_events p95 {w['p95']} ms, recommend at once p50/p95 {now['p50']}/{now['p95']} ms, "
                         f"0.1 s later {a['p50']}/{a['p95']} ms = {a['p95_ratio_to_raw_query']}x raw p95 then")
        print(f"ratios @ {r['items']:,} items: {real}ingest/raw encoder = {r['ingest']['ratio_to_raw_encoder']} ({r['encoder']}); "
              f"recommend p95 / raw query p95 = {best['p95_ratio_to_raw_query']}{scan} ({best['strategy']}, index mode {r.get('index_mode')}); "
              f"fit exponent = {r.get('fit_exponent', 'n/a')}")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        md = table(rows)
        cmds = sorted({r.get("command", cmd) for r in rows})
        (out_dir / "scale.json").write_text(json.dumps({"commands": cmds, "machine": f"{os.cpu_count()} CPUs (shared)", "rows": rows}, indent=2))
        (out_dir / "scale.md").write_text("Commands:\n" + "".join(f"- `{c}`\n" for c in cmds) + f"\n{md}\n\nNotes:\n"
                                          + "\n".join(f"- {n}" for r in rows for n in r["notes"]) + "\n")
        plot(rows, out_dir / "scale.png")
        print(f"wrote {out_dir}/scale.json, scale.md, scale.png")


if __name__ == "__main__":
    main()
