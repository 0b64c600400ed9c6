"""The API as a real server process: kill -9 during batch upserts loses no acknowledged item;
a client disconnect cancels the LLM work (in-process and on vLLM)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import _free_port

ROOT = Path(__file__).resolve().parents[1]
KEY = "kt-5e2a8c4f1b7d9e3a6c0f"


def _start(path: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PERSONA_API_KEY": KEY, "PERSONA_CLIP__ENABLED": "false", "PERSONA_LLM__BACKEND": "none", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "--path", str(path), "serve", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server did not start:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_kill9_during_batch_upsert_loses_no_acknowledged_item(tmp_path, ml):
    items = [i.model_dump() for i in ml.items[:500]]  # 10 batches: enough to kill one mid-flight, and CI time
    batches = [items[i : i + 50] for i in range(0, len(items), 50)]
    port, log = _free_port(), tmp_path / "server.log"
    proc = _start(tmp_path / "store", port, log)
    acked: list[str] = []
    url = f"http://127.0.0.1:{port}"

    def client() -> None:
        with httpx.Client(timeout=120) as c:
            for b in batches:
                try:
                    r = c.post(url + "/items", json={"items": b}, headers={"X-API-Key": KEY})
                except httpx.HTTPError:
                    return  # the server died mid-request: this batch was never acknowledged
                assert r.status_code == 200, r.text
                acked.extend(i["id"] for i in b)

    t = threading.Thread(target=client)
    t.start()
    while len(acked) < 3 * 50 and t.is_alive():
        time.sleep(0.05)
    time.sleep(0.3)  # well inside the next batch's encoding/upsert
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t.join()
    n_acked = len(acked)
    assert 150 <= n_acked < len(items)

    proc = _start(tmp_path / "store", port, log)
    try:
        with httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": KEY}) as c:
            missing = [i for i in acked if c.get(f"/items/{i}").status_code != 200]
            assert not missing, f"{len(missing)} acknowledged items lost, e.g. {missing[:5]}"
            assert c.get("/health").json()["items"] >= n_acked
            for b in batches:  # the client retries everything: unchanged items are skipped, the rest added
                assert c.post("/items", json={"items": b}, headers={"X-API-Key": KEY}).status_code == 200
            assert c.get("/health").json()["items"] == len(items)  # no duplicates, nothing lost
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.slow
def test_client_disconnect_cancels_in_process_llm_rerank(ml_engine_path, make_engine, local_llm):
    """200 candidates re-ranked pointwise take 25 LLM batches; the client hangs up once the first batch
    has started and the engine stops between batches. Proven by counters (batches run after the
    disconnect vs the total), not by seconds, so a loaded machine cannot make it flaky."""
    import uvicorn

    from services.api import create_app

    eng = make_engine(ml_engine_path, llm_obj=local_llm, retrieval={"rerank_candidates": 200})
    total = -(-200 // local_llm.config.batch_size)
    app = create_app(engine=eng, api_key=KEY)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    try:
        while not server.started:
            time.sleep(0.1)
        start = local_llm.batches_run
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /users/1/recommendations?k=10&rerank=pointwise HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode() + b"\r\n\r\n")
        deadline = time.time() + 600  # only a guard against hanging the suite; the assertions count batches
        while local_llm.batches_run == start and time.time() < deadline:
            time.sleep(0.05)
        m = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"X-API-Key": KEY}).text
        assert _metric(m, "persona_inflight_requests") == 1.0  # still working
        s.close()
        at_disconnect = local_llm.batches_run
        while time.time() < deadline:
            m = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"X-API-Key": KEY}).text
            if _metric(m, "persona_inflight_requests") == 0.0:
                break
            time.sleep(0.2)
        assert _metric(m, "persona_inflight_requests") == 0.0, "engine call still running after the client left"
        assert _metric(m, "persona_cancelled_requests_total") == 1.0
        after = local_llm.batches_run - at_disconnect
        # the batch in flight when the disconnect is noticed may finish; no further one starts
        assert after <= 2, f"{after} LLM batches ran after the disconnect"
        assert local_llm.batches_run - start < total, "the whole rerank ran: nothing was cancelled"
    finally:
        server.should_exit = True
        th.join(timeout=30)


@pytest.mark.slow
def test_cancel_aborts_the_vllm_request(vllm_url):
    """Cancelling the scope closes the HTTP request; vLLM aborts the generation (its running-requests
    gauge drops to 0 long before 1500 tokens could have been generated on this CPU)."""
    from engine.cancel import CancelScope, cancel_scope
    from engine.config import LLMConfig
    from engine.errors import CancelledRequestError
    from engine.llm.vllm import VLLMClient

    llm = VLLMClient(LLMConfig(backend="vllm", url=vllm_url, timeout_s=300))
    root = vllm_url.removesuffix("/v1")
    scope, result = CancelScope(), {}

    def work() -> None:
        with cancel_scope(scope):
            t0 = time.time()
            try:
                llm.generate(["Once upon a time, in a city by the sea,"], max_new_tokens=1500)
                result["outcome"] = "finished"
            except CancelledRequestError:
                result["outcome"] = "cancelled"
            result["seconds"] = time.time() - t0

    th = threading.Thread(target=work)
    th.start()
    running = 0.0
    for _ in range(50):  # wait until vLLM reports the request running
        running = _metric(httpx.get(root + "/metrics").text, "vllm:num_requests_running") or 0.0
        if running >= 1:
            break
        time.sleep(0.1)
    assert running >= 1
    time.sleep(1.0)
    scope.cancel()
    th.join(timeout=10)
    assert result.get("outcome") == "cancelled", result
    for _ in range(50):
        if (_metric(httpx.get(root + "/metrics").text, "vllm:num_requests_running") or 0.0) == 0.0:
            break
        time.sleep(0.1)
    assert (_metric(httpx.get(root + "/metrics").text, "vllm:num_requests_running") or 0.0) == 0.0
