"""bench/request_split.py: every stage it times still exists under its name (cheap), and it runs end to end on a small
store (``full``); bench/read_costs.py runs end to end too (``full``)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_timed_stage_exists():
    spec = importlib.util.spec_from_file_location("bench_request_split", ROOT / "bench" / "request_split.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # imports only: the wrappers are installed by main(), in its own process
    assert len({(o, n) for o, n, _ in mod.STAGES}) == len(mod.STAGES) and len({label for _, _, label in mod.STAGES}) == 12
    for owner, name, label in mod.STAGES:
        assert callable(getattr(owner, name)), f"{label}: {owner!r}.{name} is gone"


@pytest.mark.full
def test_small_store_end_to_end(tmp_path):
    out = subprocess.run([sys.executable, "bench/request_split.py", "--path", str(tmp_path / "store"), "--items", "2000", "--events", "3000",
                          "--users", "40", "--warmup", "10", "--json", str(tmp_path / "split.json"), "--ranker-ab", "--refits", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    rep = json.loads((tmp_path / "split.json").read_text())
    stages = rep["stages_mean_ms"]
    assert rep["recommend_ms"]["p50"] > 0 and sum(r["users"] for r in rep["by_history"]) == 40
    assert len(rep["refits"]) == 1 and rep["refits"][0]["seconds"] > 0
    # every stage ran in every request (the sequence model and the payloads included), and nested ones fit inside
    assert all(v > 0 for v in stages.values()) and len(stages) == 13, stages  # the 12 stages and the whole request
    ab = rep["ranker_ab"]
    from engine.learned.compiled import available

    if available():  # both rankers timed on every user; the ratio is the numbers' own, not asserted
        assert ab["lightgbm"]["p50"] > 0 and ab["compiled"]["p50"] > 0 and ab["ratio_p50"] > 0, ab
    else:
        assert "skipped" in ab
    assert stages["user state"] <= stages["model.recommend"] <= stages["served list (ModelServing.hits)"] <= stages["Engine.recommend (whole request)"]


@pytest.mark.full
def test_read_costs_bench_runs_and_its_baselines_agree(tmp_path):
    """bench/read_costs.py: both comparisons run on a small store, and each checks that the code it times against gives
    the same keys and the same events (it asserts before it times)."""
    out = subprocess.run([sys.executable, "bench/read_costs.py", "--path", str(tmp_path / "store"), "--items", "1000", "--events", "3000"],
                         cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "point keys, ms per 100-hit query" in out.stdout and "history, 1000 users" in out.stdout, out.stdout
