"""The vLLM client's replica balancer against two small local HTTP servers (stand-ins for vLLM's
``/health`` and ``/v1/completions`` routes, so the probe can be counted and slowed; the real vLLM
server's failover is in tests/test_llm_backends.py::test_replicas_balance_and_fail_over)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from engine.config import LLMConfig
from engine.llm.vllm import VLLMClient


def _server(health_delay: float, hits: list[str]) -> ThreadingHTTPServer:
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):  # quiet
            pass

        def do_GET(self):
            hits.append(self.path)
            time.sleep(health_delay)
            self.send_response(200)
            self.end_headers()

        def do_POST(self):
            n = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(n))
            hits.append(self.path)
            out = json.dumps({"choices": [{"index": i, "text": "ok"} for i in range(len(body["prompt"]))],
                              "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_a_recovering_replica_is_probed_once_not_by_every_request():
    a_hits: list[str] = []
    b_hits: list[str] = []
    a, b = _server(0.5, a_hits), _server(0.0, b_hits)
    try:
        urls = [f"http://127.0.0.1:{s.server_address[1]}/v1" for s in (a, b)]
        client = VLLMClient(LLMConfig(backend="vllm", urls=urls, model="served-model", replica_down_s=30))
        client.replicas[0].down_until = time.monotonic() - 1  # was taken out; its down time is over
        results: list[list[str]] = []
        threads = [threading.Thread(target=lambda: results.append(client.generate(["hi"], 1))) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert results == [["ok"]] * 6  # every request answered (by b while a was being probed)
        assert a_hits.count("/health") == 1, a_hits  # single flight: one probe, however many requests came
        assert client.replica_status()[0]["up"]  # the probe answered 200: a is back
    finally:
        a.shutdown()
        b.shutdown()
