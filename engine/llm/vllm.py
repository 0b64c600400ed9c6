"""vLLM backend over its OpenAI-compatible HTTP API (completions, logprobs, structured outputs, and
chat with images for vision models). ``usage`` adds up the token counts the server reports.

Several replicas (``llm.url`` as a comma list, ``llm.urls``) are balanced on the client: each
request goes to the healthy replica with the fewest requests in flight (ties: round robin). A
replica that cannot be reached (or answers 502/503/504) is taken out for ``llm.replica_down_s``
and the request is retried on the next one; after that time it comes back only once its
``/health`` answers. Other answers (a 400 or 500 about this request) are not retried elsewhere.
Requests are idempotent (temperature 0), so a retry cannot double an effect.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..cancel import CancelScope, check_cancelled, current_scope
from ..config import LLMConfig
from ..errors import BackendUnavailableError, CancelledRequestError, missing
from .base import LLM, image_mime, yes_probability
from .models import is_packaged
from .replicas import Replica

logger = logging.getLogger(__name__)

CHAT_MARK = "PERSONA_USER_TURN_7f3a"
"""Placeholder user message whose rendering splits the chat template into the text before and after a turn."""



class _Refused(BackendUnavailableError):
    """The server answered, but not with a usable result for this request (others may still work)."""


class VLLMClient(LLM):
    def __init__(self, config: LLMConfig) -> None:
        try:
            import httpx
        except ImportError as e:
            raise missing("llm", "httpx") from e
        urls = config.replica_urls()
        if not urls:
            raise BackendUnavailableError("llm.url is not set (PERSONA_LLM__URL)")
        self.config = config
        self.replicas = [Replica(u) for u in urls]
        self.base = urls[0]
        self._lock = threading.Lock()
        self._rr = itertools.count()
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self.http = httpx.Client(timeout=config.timeout_s, headers=headers)
        self._httpx = httpx
        self._usage_lock = threading.Lock()
        self.usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        """Totals of the server-reported ``usage`` over this client's requests (measured, not estimated)."""
        self.model = config.adapter or (self._served_model() if is_packaged(config.model) else config.model)
        self.name = f"vllm:{self.model}"
        self._chat: tuple[str, ...] | None = None
        self.last_usage: dict[str, Any] | None = None
        """The ``usage`` block of the last Yes/No request (prompt tokens, cached tokens when the server reports them)."""

    # -- replicas ------------------------------------------------------------------------------

    def _healthy(self, rep: Replica) -> bool:
        """A replica in its down time is skipped; after it, one ``/health`` call decides."""
        now, probe_s = time.monotonic(), min(5.0, self.config.timeout_s)
        with self._lock:  # single flight: while one request probes, the others skip the replica
            if rep.down_until == 0.0 or rep.down_until > now:
                return rep.down_until == 0.0
            rep.down_until = now + probe_s
        try:
            ok = self.http.get(rep.root + "/health", timeout=probe_s).status_code == 200
        except self._httpx.HTTPError:
            ok = False
        with self._lock:
            rep.down_until = 0.0 if ok else now + self.config.replica_down_s
        if ok:
            logger.info("vLLM replica %s is back", rep.base)
        return ok

    def _order(self) -> list[Replica]:
        """Replicas to try, best first: fewest in flight, round robin among equals."""
        with self._lock:
            start = next(self._rr) % len(self.replicas)
            rotated = self.replicas[start:] + self.replicas[:start]
            return sorted(rotated, key=lambda r: r.inflight)

    def _mark_down(self, rep: Replica, why: str) -> None:
        with self._lock:
            rep.failures += 1
            rep.down_until = time.monotonic() + self.config.replica_down_s
        if len(self.replicas) > 1:
            logger.warning("vLLM replica %s taken out for %.0fs: %s", rep.base, self.config.replica_down_s, why)

    def replica_status(self) -> list[dict[str, Any]]:
        """Per replica: URL, up, requests in flight, requests sent, failures."""
        return [r.status() for r in self.replicas]

    def _post(self, path: str, body: dict[str, Any], root: bool = False) -> dict[str, Any]:
        scope, errors = current_scope(), []
        candidates = [r for r in self._order() if self._healthy(r)] or self._order()  # all down: try anyway
        for rep in candidates:
            url = (rep.root if root else rep.base) + path
            with self._lock:
                rep.inflight += 1
                rep.requests += 1
            try:
                r = self.http.post(url, json=body) if scope is None else self._post_cancellable(url, body, scope)
            except (self._httpx.ConnectError, self._httpx.ConnectTimeout, self._httpx.PoolTimeout) as e:
                self._mark_down(rep, f"{type(e).__name__}: {e}")  # never reached: another replica may take it
                errors.append(f"{rep.base}: {type(e).__name__}: {e}")
                continue
            except self._httpx.HTTPError as e:  # a read timeout on a busy replica: retrying elsewhere would double the work
                raise BackendUnavailableError(f"vLLM request failed: {type(e).__name__}: {e}") from e
            finally:
                with self._lock:
                    rep.inflight -= 1
            if r.status_code in (502, 503, 504):  # the replica (or its proxy) is down or overloaded, not this request
                self._mark_down(rep, f"HTTP {r.status_code}")
                errors.append(f"{rep.base}: HTTP {r.status_code}: {r.text[:200]}")
                continue
            return self._json(r)
        raise BackendUnavailableError(f"vLLM unreachable ({len(candidates)} replica(s)): " + "; ".join(errors))

    def _json(self, r: Any) -> dict[str, Any]:
        if r.status_code >= 400:
            # Auth or a wrong model/route fail every request alike; other errors concern this request.
            kind = BackendUnavailableError if r.status_code in (401, 403, 404) else _Refused
            raise kind(f"vLLM answered {r.status_code}: {r.text[:300]}")
        try:
            data = r.json()
        except ValueError as e:
            raise _Refused(f"vLLM answered non-JSON: {r.text[:200]!r}") from e
        if not isinstance(data, dict):
            raise _Refused("vLLM answered an unexpected shape")
        self._count(data.get("usage"))
        return data

    def _count(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        with self._usage_lock:
            self.usage["requests"] += 1
            for k in ("prompt_tokens", "completion_tokens"):
                n = usage.get(k)  # counts only: a server's odd usage field must not fail the answer
                self.usage[k] += int(n) if isinstance(n, int | float) and not isinstance(n, bool) and 0 <= n < float("inf") else 0

    def _post_cancellable(self, url: str, body: dict[str, Any], scope: CancelScope) -> Any:
        """The request on a private event loop so that cancelling the scope cancels the request task,
        which closes its connection: vLLM notices the disconnect and aborts the generation."""
        import asyncio

        check_cancelled()

        async def send() -> Any:
            async with self._httpx.AsyncClient(timeout=self.config.timeout_s, headers=self.http.headers) as c:
                return await c.post(url, json=body)

        loop = asyncio.new_event_loop()
        try:
            task = loop.create_task(send())

            def cancel() -> None:
                try:
                    loop.call_soon_threadsafe(task.cancel)
                except RuntimeError:  # the loop already finished and closed
                    pass

            unregister = scope.on_cancel(cancel)
            try:
                return loop.run_until_complete(task)
            except asyncio.CancelledError as e:
                raise CancelledRequestError("LLM request cancelled (client disconnected); vLLM aborts it") from e
            finally:
                unregister()
        finally:
            loop.close()

    def _served_model(self) -> str:
        errors = []
        for rep in self._order():
            try:
                r = self.http.get(rep.base + "/models")
                cards = r.json()["data"]
                # With LoRA enabled vLLM lists adapters too (they name their base model as parent).
                models = [m["id"] for m in cards if not m.get("parent")] or [m["id"] for m in cards]
                break
            except Exception as e:
                self._mark_down(rep, str(e))
                errors.append(f"{rep.base}: {e}")
        else:
            raise BackendUnavailableError(f"vLLM unreachable: {'; '.join(errors)}")
        if not models:
            raise BackendUnavailableError("vLLM serves no model")
        return models[0]

    def _choices(self, data: dict[str, Any], n: int) -> list[dict[str, Any]]:
        try:
            choices = sorted(data["choices"], key=lambda c: c["index"])
        except (KeyError, TypeError) as e:
            raise _Refused(f"vLLM answer lacks choices: {str(data)[:200]}") from e
        if len(choices) != n:
            raise _Refused(f"vLLM returned {len(choices)} choices for {n} prompts")
        return choices

    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = ()) -> list[str]:
        if not prompts:
            return []
        body = {
            "model": self.model, "prompt": list(prompts), "max_tokens": max_new_tokens, "temperature": 0.0,
            "repetition_penalty": 1.15, "stop": list(stop) or None,
        }
        return [str(c.get("text", "")).strip() for c in self._choices(self._post("/completions", body), len(prompts))]

    def yes_probabilities(self, prompts: Sequence[str]) -> list[float | None]:
        if not prompts:
            return []
        body = {"model": self.model, "prompt": list(prompts), "max_tokens": 1, "temperature": 0.0, "logprobs": 20}
        out: list[float | None] = []
        data = self._post("/completions", body)
        self.last_usage = data.get("usage")
        for c in self._choices(data, len(prompts)):
            try:
                top = c["logprobs"]["top_logprobs"][0]
                out.append(yes_probability({str(k): v for k, v in top.items()}))
            except (KeyError, TypeError, IndexError, AttributeError):  # no table, or not a token -> logprob mapping
                out.append(None)
        return out

    def yes_probabilities_shared(self, prefix: str, suffixes: Sequence[str]) -> list[float | None]:
        """One request with every ``prefix + suffix``, the shared prefix first: vLLM's automatic
        prefix caching (``--enable-prefix-caching``, on in compose and the tests) computes the
        prefix's blocks once and reuses them for every candidate."""
        self.last_usage = None
        return self.yes_probabilities([prefix + s for s in suffixes])

    def choose_sequence(self, prompt: str, labels: Sequence[str], n: int) -> list[str]:
        n = min(n, len(labels))
        alt = "(" + "|".join(re.escape(lab) for lab in labels) + ")"
        body = {
            "model": self.model, "prompt": prompt, "max_tokens": 4 * n + 4, "temperature": 0.0,
            "structured_outputs": {"regex": f" {alt}(, {alt}){{{n - 1}}}"},
        }
        text = self._choices(self._post("/completions", body), 1)[0].get("text", "")
        return [t.strip() for t in str(text).split(",") if t.strip()]

    def describe_images(self, prompts: Sequence[str], images: Sequence[bytes | None], max_new_tokens: int) -> list[str | None]:
        """One chat request per item, the image (if any) first as an OpenAI ``image_url`` data URI
        (vision models only). An item the server refuses (a broken image, an error on that request)
        gets None and a logged reason, so one bad poster does not cost the batch; an unreachable
        server raises :class:`BackendUnavailableError` (the caller falls back for all)."""
        import base64

        out: list[str | None] = []
        for i, (prompt, img) in enumerate(zip(prompts, images)):
            content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
            if img:
                uri = f"data:{image_mime(img)};base64," + base64.b64encode(img).decode()
                content.insert(0, {"type": "image_url", "image_url": {"url": uri}})
            body = {"model": self.model, "messages": [{"role": "user", "content": content}], "max_tokens": max_new_tokens, "temperature": 0.0}
            try:
                data = self._post("/chat/completions", body)
                msg = self._choices(data, 1)[0].get("message") or {}
            except _Refused as e:
                logger.warning("vLLM refused item %d of %d (%s image): %s", i, len(prompts), "with" if img else "no", e)
                out.append(None)
                continue
            out.append(str(msg.get("content") or "").strip())
        return out

    def chat_prompt(self, text: str) -> str:
        """The served model's chat template, rendered by the server once (``/tokenize`` with a marker
        message, then ``/detokenize``) and cached as the text around the user turn; identity when the
        server has no template for the model (base models)."""
        if self._chat is None:
            self._chat = self._chat_parts()
        return self._chat[0] + text + self._chat[1] if self._chat else text

    def _chat_parts(self) -> tuple[str, ...] | None:
        body = {"model": self.model, "messages": [{"role": "user", "content": CHAT_MARK}], "add_generation_prompt": True,
                "add_special_tokens": False}
        try:
            toks = self._post("/tokenize", body, root=True).get("tokens") or []
            text = str(self._post("/detokenize", {"model": self.model, "tokens": toks}, root=True).get("prompt") or "")
        except BackendUnavailableError as e:
            if "answered" not in str(e):
                return None  # unreachable: ask again next time
            logger.info("vLLM renders no chat template for %s (%s); prompts stay completion-style", self.model, str(e)[:120])
            return ()
        if CHAT_MARK not in text:
            return ()
        head, _, tail = text.partition(CHAT_MARK)
        return head, tail

    def generate_json(self, prompts: Sequence[str], schema: dict | Sequence[dict], max_new_tokens: int) -> list[str]:
        """Constrained decoding through vLLM structured outputs (``structured_outputs.json``): one
        completions request per distinct schema, sent concurrently so the server batches them."""
        if not prompts:
            return []
        schemas = [schema] * len(prompts) if isinstance(schema, dict) else list(schema)
        groups: dict[str, list[int]] = {}
        for i, sc in enumerate(schemas):
            groups.setdefault(json.dumps(sc, sort_keys=True), []).append(i)

        def run(idx: list[int]) -> list[str]:
            body = {
                "model": self.model, "prompt": [prompts[i] for i in idx], "max_tokens": max_new_tokens, "temperature": 0.0,
                "structured_outputs": {"json": schemas[idx[0]]},
            }
            return [str(c.get("text", "")).strip() for c in self._choices(self._post("/completions", body), len(idx))]

        out = [""] * len(prompts)
        with ThreadPoolExecutor(max_workers=min(8, len(groups))) as pool:
            for idx, texts in zip(groups.values(), pool.map(run, groups.values())):
                for i, t in zip(idx, texts):
                    out[i] = t
        return out

    def count_tokens(self, text: str) -> int:
        data = self._post("/tokenize", {"model": self.model, "prompt": text}, root=True)
        return int(data.get("count", len(data.get("tokens", []))))

    def close(self) -> None:
        self.http.close()
