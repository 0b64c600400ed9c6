"""bench/scale.py: the synthetic data has the shape it claims (cheap), and ``--quick`` runs end to end (``full``)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "bench" / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_synthetic_catalog_and_log(scale):
    items, pop, main = scale.catalog(2000)
    assert len(items) == 2000 and len({i["id"] for i in items}) == 2000
    assert all(i["title"] and i["description"] and i["attributes"]["genres"] for i in items)
    log = scale.event_log(200, 4000, pop, main)
    assert 3000 <= len(log) <= 5000 and len({e["user_id"] for e in log}) == 200
    counts = np.array(sorted(Counter(e["item_id"] for e in log).values(), reverse=True), float)
    top = counts[: max(1, len(counts) // 100)].sum() / counts.sum()
    assert top > 0.1, "popularity should be heavy-tailed: the top 1% of items take >10% of events"
    by_user: dict[str, list[float]] = {}
    for e in log:
        by_user.setdefault(e["user_id"], []).append(e["timestamp"])
    gaps = np.concatenate([np.diff(ts) for ts in by_user.values()])
    assert (gaps > 0).all() and (gaps > 3600).mean() > 0.05 and (gaps < 300).mean() > 0.5  # sessions
    enc = scale.RandomUnitEncoder(384)
    v = enc.encode(["a", "b", "a"])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1) and np.array_equal(v[0], v[2])


@pytest.mark.full
def test_quick_run_writes_the_report(tmp_path):
    out = subprocess.run([sys.executable, "bench/scale.py", "--quick", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    # --quick: random catalog vectors plus the packaged MiniLM on a sample (its ingest / raw-encoder ratio)
    assert "MiniLM measured on a 1,000-item sample" in out.stdout and "MiniLM sample ingest/raw encoder = " in out.stdout
    assert "ratios @ 10,000 items" in out.stdout
    rep = json.loads((tmp_path / "scale.json").read_text())
    row = rep["rows"][0]
    assert row["ingest_minilm_sample"]["items"] == 1000 and row["ingest_minilm_sample"]["ratio_to_raw_encoder"] > 0
    assert row["items"] == 10_000 and row["ingest"]["items_per_s"] > 0 and len(row["fit"]) == 3 and "fit_exponent" in row
    assert (tmp_path / "scale.png").stat().st_size > 10_000
    lat = row["latency"]  # a live user: one event, then the request; with and without the list ranked ahead
    assert lat["after_event"]["warm_users"] > 0 and lat["after_event_no_warming"]["warm_users"] == 0
    assert all(lat[k][m]["p95"] > 0 for k in ("after_event", "after_event_no_warming") for m in ("add_events_1_event_ms", "recommend_after_pause_ms"))
    on, off = lat["after_event"], lat["after_event_no_warming"]  # each user: the ranking, the request after, again
    assert (on["kept_list_misses"], on["kept_list_hits"]) == (on["users"], 2 * on["users"])  # ranked ahead, then read twice
    assert (off["kept_list_misses"], off["kept_list_hits"]) == (off["users"], off["users"])  # ranked by the request


def test_model_serving_bench_runs_in_index_mode(tmp_path):
    """bench/model_serving.py on a small catalog forced into index mode: it fits, serves every user from the exact
    lists, and reports latencies and a breakdown of steps that each take part of the total."""
    out = tmp_path / "serving.json"
    cmd = [sys.executable, str(ROOT / "bench" / "model_serving.py"), "--items", "3000", "--events", "1500", "--users", "20",
           "--index-items", "1000", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["indexed"] and r["users"] == 20 and 0 < r["recommend_p50_ms"] <= r["recommend_p95_ms"]
    prof = r["profiled_ms_per_request"]
    assert 0 < prof["user state (all sources)"] < prof["total"]
    assert 0 < prof["ranker (LightGBM)"] < prof["total"] and 0 < prof["features"] < prof["total"]
    assert prof["sequence model (items with events)"] < prof["user state (all sources)"]  # nested in it
