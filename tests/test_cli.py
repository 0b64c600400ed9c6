"""`persona demo` as a user runs it: real data, progress, reuse of the index on the second run."""

import json
import os
import re
import subprocess
import sys

import pytest


def _demo(path, *extra):
    cmd = [sys.executable, "-m", "services.cli", "--path", str(path), "demo", "--users", "1,7", "-k", "10", "--no-llm", *extra]
    # 4 epochs of the sequence model instead of 39: the fit still trains and serves it, about 45 s sooner (its
    # default length is the eval report's business, not this command test's)
    env = {**os.environ, "PERSONA_CLIP__ENABLED": "false", "PERSONA_FIT__SEQUENCE_EPOCHS": "4"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_demo_on_an_indexed_catalog(tmp_path, ml_items_path):
    """`persona demo` as a user runs it the second time: the catalog is already indexed (a copy of the
    session's store), so nothing is re-encoded; ratings, profiles and lists come from the command."""
    from tests.conftest import copy_store

    copy_store(ml_items_path, tmp_path / "demo")
    run = _demo(tmp_path / "demo")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "0 added, 0 updated, 1682 unchanged (reused)" in run.stdout and "indexing items" in run.stderr
    assert "events: 100000 added" in run.stdout and "fit: model " in run.stdout
    assert run.stdout.count("(learned):") == 2 and run.stdout.count("  -  Because you ") == 20
    checks = [line for line in run.stdout.splitlines() if "check: genres of the items rated >= 4 (rated <= 2):" in line]
    assert len(checks) == 2 and all(line.split(":", 2)[2].strip() for line in checks), checks  # the reader's check is filled in
    # each genre shows its low-rated count beside the liked one: "Drama 52 (232)"
    assert all(re.fullmatch(r"[^,]+ \d+ \(\d+\)(, [^,]+ \d+ \(\d+\))*", line.split(":", 2)[2].strip()) for line in checks), checks
    recent = [line.split("recent likes: ", 1)[1] for line in run.stdout.splitlines() if line.startswith("  recent likes: ")]
    assert len(recent) == 2 and all(r not in ("", "none") and len(r.split("; ")) == 5 for r in recent), recent
    # `persona profiles` after the demo: the two users are up to date, a third gets its blocks summarized
    cmd = [sys.executable, "-m", "services.cli", "--path", str(tmp_path / "demo"), "profiles", "--users", "1,7,13", "--no-llm"]
    prof = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PERSONA_CLIP__ENABLED": "false"}, timeout=600)
    assert prof.returncode == 0, prof.stderr[-2000:]
    st = json.loads(prof.stdout)
    assert st["users"] == 3 and st["blocks"] > 0 and st["llm_batches"] == 0


@pytest.mark.slow
@pytest.mark.full
def test_demo_twice_reuses_index(tmp_path):
    first = _demo(tmp_path / "demo")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "1682 added" in first.stdout and "indexing items" in first.stderr  # progress bar on stderr
    assert first.stdout.count("  -  Because you ") == 20
    second = _demo(tmp_path / "demo")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "0 added, 0 updated, 1682 unchanged (reused)" in second.stdout
    assert "already stored (reused)" in second.stdout
    recs = lambda out: [line for line in out.splitlines() if "Because you liked" in line]  # noqa: E731
    assert recs(first.stdout) == recs(second.stdout)


def test_prompts_cli(tmp_path):
    out = subprocess.run([sys.executable, "-m", "services.cli", "prompts", "list"], capture_output=True, text=True, check=True).stdout
    assert "preference_update@v1" in out and "rank_listwise@v1" in out
    assert "preference_yes_no@v1" in out and "(default)" in out.split("preference_yes_no@v1")[1].splitlines()[0]
    assert "preference_yes_no@v2" in out


def test_prompts_compare_rejects_broken_template_before_loading_models(tmp_path):
    d = tmp_path / "prompts"
    d.mkdir()
    (d / "preference_yes_no.v3.j2").write_text("Viewer: {{ summary }}\n{% for x in history %}\n{{ x.title }\n{% endfor %}\n")
    r = subprocess.run([sys.executable, "-m", "services.cli", "--path", str(tmp_path / "p"), "prompts", "compare",
                        "preference_yes_no@v1", "preference_yes_no@v3", "--prompts-dir", str(d), "--users", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert f"{d / 'preference_yes_no.v3.j2'}:3" in r.stderr and "syntax error" in r.stderr
    r = subprocess.run([sys.executable, "-m", "services.cli", "--path", str(tmp_path / "p"), "prompts", "compare", "explain@v1",
                        "preference_yes_no@v1", "--users", "2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "only ranking prompts" in r.stderr


@pytest.mark.slow
@pytest.mark.full
def test_prompts_compare_side_by_side(tmp_path, capsys, ml_items_path):
    """Two versions of the pointwise prompt on the same users and candidates: one row each, saved."""
    import json

    from services.cli import main
    from tests.conftest import copy_store

    copy_store(ml_items_path, tmp_path / "store" / "eval-ml100k")  # the catalog indexed once per session
    out = tmp_path / "cmp"
    rc = main(["--path", str(tmp_path / "store"), "prompts", "compare", "preference_yes_no@v1", "preference_yes_no@v2",
               "--users", "3", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| preference_yes_no@v1 |" in text and "| preference_yes_no@v2 |" in text
    saved = json.loads(next(out.glob("*.json")).read_text())
    rows = {r["prompt"]: r for r in saved["rows"]}
    assert set(rows) == {"preference_yes_no@v1", "preference_yes_no@v2"} and saved["users"] == 3
    for r in rows.values():
        assert 0.0 <= r["AUC"] <= 1.0 and r["seconds_per_user"] > 0
    # v2 is the compact variant: fewer prompt tokens for the same 21 candidates
    assert rows["preference_yes_no@v2"]["prompt_tokens_per_user"] < rows["preference_yes_no@v1"]["prompt_tokens_per_user"]
    assert (out / next(out.glob("*.md")).name).read_text().count("| preference_yes_no@v") == 2


def test_help_of_every_command_renders():
    """`persona --help` and each subcommand's --help print their text (a bare '%' in a help string made argparse
    raise TypeError in the top-level help, which lists every subcommand's help)."""
    import contextlib
    import io
    import re

    from services.cli import build_parser

    parser = build_parser()
    names = re.search(r"\{([^}]+)\}", parser.format_usage()).group(1).split(",")  # the usage line lists the commands
    assert {"demo", "eval", "fit", "recommend"} <= set(names), names
    for argv in (["--help"], *([name, "--help"] for name in names)):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
            parser.parse_args(argv)
        assert done.value.code == 0 and "usage:" in out.getvalue(), argv


def test_serve_runs_blas_on_one_thread_unless_the_environment_says_otherwise(monkeypatch):
    """`persona serve` limits numpy's BLAS to one thread (parallel requests; bench/api_load.py) unless
    OPENBLAS_NUM_THREADS / OMP_NUM_THREADS is set. Called in the main thread, where OpenBLAS applies it."""
    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    from services import cli

    def blas():
        np.ones(2) @ np.ones(2)
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before = blas()
    if (os.cpu_count() or 1) < 2:
        pytest.skip("OpenBLAS caps its threads at the core count: one core cannot show the difference")
    try:
        with threadpool_limits(2, "blas"):
            monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
            cli.serve_blas_threads()
            assert blas() == [2] * len(before)  # the operator's setting wins
            monkeypatch.delenv("OPENBLAS_NUM_THREADS")
            monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
            cli.serve_blas_threads()
            assert blas() == [1] * len(before)
    finally:
        threadpool_limits(before[0] if before else None, "blas")
