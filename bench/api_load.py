"""Load test of the HTTP API on loopback: recommendations without LLM under concurrent clients.

    .venv/bin/python bench/api_load.py [--path DIR] [--concurrency 8] [--seconds 30]

Measured in the same run:
1. baseline: ``Engine.recommend`` called in-process, one at a time (no HTTP);
2. ``persona serve`` (uvicorn, one process) driven by a bounded asyncio client (``--concurrency``
   requests in flight) for ``--seconds``: requests/s, p50/p95/p99 latency, status counts.
The server's admission limit is raised above the client concurrency so nothing is refused."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from engine import Engine
from engine.offline.datasets import load_movielens

ROOT = Path(__file__).resolve().parents[1]


def ensure_store(path: str) -> list[str]:
    with Engine.open(path, {"llm": {"backend": "none"}, "clip": {"enabled": False}}) as eng:
        if eng.stats()["items"] == 0:
            ml = load_movielens()
            eng.add_items(ml.items, progress=True)
            eng.add_events(ml.events)
        users = sorted({h.payload["user_id"] for h in eng.store.scroll(eng.events_col)})
    return users


def baseline(path: str, users: list[str], n: int) -> dict[str, float]:
    with Engine.open(path, {"llm": {"backend": "none"}, "clip": {"enabled": False}}) as eng:
        eng.recommend(users[0], k=10)
        lat = []
        t0 = time.perf_counter()
        for u in users[:n]:
            t1 = time.perf_counter()
            eng.recommend(u, k=10)
            lat.append((time.perf_counter() - t1) * 1000)
        wall = time.perf_counter() - t0
    return {"requests_per_s": round(n / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)), 2), "p95_ms": round(float(np.percentile(lat, 95)), 2)}


async def drive(url: str, users: list[str], concurrency: int, seconds: float, key: str) -> dict[str, object]:
    lat: list[float] = []
    status: dict[str, int] = {}
    stop = time.perf_counter() + seconds
    rng = random.Random(0)

    async def worker(c: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop:
            u = rng.choice(users)
            t0 = time.perf_counter()
            try:
                r = await c.get(f"/users/{u}/recommendations", params={"k": 10})
                key = str(r.status_code)
            except httpx.HTTPError as e:
                key = type(e).__name__
            lat.append((time.perf_counter() - t0) * 1000)
            status[key] = status.get(key, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, headers={"X-API-Key": key}) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "requests": len(lat), "requests_per_s": round(len(lat) / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2), "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2), "status": status,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", default=os.path.expanduser("~/.local/share/persona"))
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    users = ensure_store(args.path)
    base = baseline(args.path, users, min(300, len(users)))
    key = secrets.token_urlsafe(32)  # the API refuses every request without a key (503) or with a wrong one (401)
    env = {**os.environ, "PERSONA_LLM__BACKEND": "none", "PERSONA_CLIP__ENABLED": "false", "PERSONA_API_MAX_INFLIGHT": str(args.concurrency * 4),
           "PERSONA_API_KEY": key}
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "--path", args.path, "serve", "--port", str(args.port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        asyncio.run(drive(url, users, args.concurrency, 3, key))  # warm-up
        load = asyncio.run(drive(url, users, args.concurrency, args.seconds, key))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out = {
        "concurrency": args.concurrency, "seconds": args.seconds,
        "baseline_in_process_sequential": base,
        "http_api": load,
        "ratio_api_rps_vs_in_process": round(float(load["requests_per_s"]) / base["requests_per_s"], 2),  # type: ignore[arg-type]
        "cpu_cores": os.cpu_count(),
    }
    print(json.dumps(out, indent=2))
    if set(load["status"]) != {"200"}:  # type: ignore[arg-type]
        raise SystemExit(f"not every request succeeded: {load['status']} (the numbers above do not measure recommendations)")


if __name__ == "__main__":
    main()
