"""One vLLM replica's bookkeeping for the client-side balancer in ``engine/llm/vllm.py``."""

from __future__ import annotations

import re
import time
from typing import Any

__all__ = ["Replica"]


class Replica:
    """One vLLM server: its base URL, requests in flight, and when it may be tried again."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.root = re.sub(r"/v1$", "", base)
        self.inflight = 0
        self.down_until = 0.0
        self.requests = 0
        self.failures = 0

    def status(self) -> dict[str, Any]:
        return {"url": self.base, "up": self.down_until <= time.monotonic(), "inflight": self.inflight,
                "requests": self.requests, "failures": self.failures}
