"""`persona demo` as a user runs it: real data, progress, reuse of the index on the second run."""

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_twice_reuses_index(tmp_path):
    cmd = [sys.executable, "-m", "services.cli", "--path", str(tmp_path / "demo"), "demo", "--users", "1,7", "-k", "10", "--no-llm"]
    env = {**os.environ, "PERSONA_CLIP__ENABLED": "false"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "1682 added" in first.stdout and "indexing items" in first.stderr  # progress bar on stderr
    assert first.stdout.count("Because you liked") == 20
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "0 added, 0 updated, 1682 unchanged (reused)" in second.stdout
    assert "already stored (reused)" in second.stdout
    recs = lambda out: [l for l in out.splitlines() if "Because you liked" in l]  # noqa: E731
    assert recs(first.stdout) == recs(second.stdout)


def test_prompts_cli(tmp_path):
    out = subprocess.run([sys.executable, "-m", "services.cli", "prompts", "list"], capture_output=True, text=True, check=True).stdout
    assert "preference_update@v1" in out and "rank_listwise@v1" in out
