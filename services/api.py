"""HTTP API (FastAPI).

- Keys and scopes (header ``X-API-Key``): ``PERSONA_API_KEY`` is an admin key, ``PERSONA_API_KEYS`` maps
  more keys to ``read`` / ``write`` / ``admin``. Only ``/health`` is public; reads need ``read``, writes
  ``write``. A per-user token (services/tokens.py, signed with ``PERSONA_API_TOKEN_SECRET``) has the
  ``user`` scope: it reads items and its own user's profile, recommendations, explanations and search,
  nothing of other users (403). Requests that make the LLM work are rate-limited per key (per user for
  tokens). The app refuses to start with a short or well-known key or secret (see :func:`check_keys`).
- Errors map through ``engine.http_status`` (one place).
- Limits: request bodies (``max_body_bytes``, 413), batch sizes and ``k`` (422), and an admission limit
  (``max_inflight``) that answers 503 with Retry-After instead of queueing without bound.
- A client that disconnects cancels its request's LLM work (vLLM aborts the generation).
- ``/metrics``: Prometheus text format (per-app registry).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import re
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyCookie, APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, StringConstraints, WithJsonSchema, model_validator

from engine import Engine, Event, Item, OverloadedError, PersonaError, http_status
from engine.cancel import CancelScope, cancel_scope, check_cancelled
from engine.errors import CancelledRequestError, missing
from engine.store.base import FILTER_FIELD_PATTERN
from engine.types import DeleteReport, EventReport, Explanation, FitReport, IngestReport, Profile, Recommendations, SearchHit
from services.tokens import TOKEN_PREFIX, TokenError, verify_user_token

logger = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_K = 100
ID = Field(min_length=1, max_length=200)


class ItemsIn(BaseModel):
    items: list[Item] = Field(max_length=MAX_BATCH)


class EventsIn(BaseModel):
    events: list[Event] = Field(max_length=10 * MAX_BATCH)


class ExplainIn(BaseModel):
    user_id: str = ID
    item_id: str = ID


class RangeIn(BaseModel):
    """A numeric range; at least one bound."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> RangeIn:
        if not self.model_dump(exclude_none=True):
            raise ValueError("a range needs at least one of gt, gte, lt, lte")
        return self


FilterKey = Annotated[str, StringConstraints(pattern=FILTER_FIELD_PATTERN, max_length=256)]
FilterValue = StrictStr | StrictInt | StrictBool | Annotated[list[StrictStr], Field(min_length=1)] | Annotated[list[StrictInt], Field(min_length=1)] | RangeIn


_BOUND = {"type": "number"}
# Spelled out because pydantic's patternProperties would leave other keys unconstrained in the spec.
_FILTERS_SCHEMA = {"anyOf": [{"type": "object", "propertyNames": {"pattern": FILTER_FIELD_PATTERN, "maxLength": 256},
    "additionalProperties": {"anyOf": [
        {"type": "string"}, {"type": "integer"}, {"type": "boolean"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1}, {"type": "array", "items": {"type": "integer"}, "minItems": 1},
        {"type": "object", "properties": {"gt": _BOUND, "gte": _BOUND, "lt": _BOUND, "lte": _BOUND}, "additionalProperties": False, "minProperties": 1},
    ]}}, {"type": "null"}]}


class SearchIn(BaseModel):
    query: str = Field(min_length=1, max_length=2000)
    user_id: str | None = Field(None, min_length=1, max_length=200)
    k: int = Field(10, ge=1, le=MAX_K)
    filters: Annotated[dict[FilterKey, FilterValue] | None, WithJsonSchema(_FILTERS_SCHEMA)] = Field(
        None, description='Item attribute filters: {"genres": "Comedy"}, {"genres": ["Comedy", "Drama"]}, {"year": {"gte": 1990}}'
    )

    def filter_spec(self) -> dict[str, Any] | None:
        if self.filters is None:
            return None
        return {k: v.model_dump(exclude_none=True) if isinstance(v, RangeIn) else v for k, v in self.filters.items()}


class ImageIn(BaseModel):
    """One personalized image; ``steps``/``size`` past the server's ``image.max_steps``/``image.max_size`` answer 422."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(None, min_length=1, max_length=1000)
    reference_item: str | None = Field(None, min_length=1, max_length=200, description="start from this item's image (img2img)")
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    steps: int | None = Field(None, ge=1, le=200)
    size: int | None = Field(None, ge=64, le=4096, multiple_of=8)


class Health(BaseModel):
    status: str
    items: int
    events: int
    users: int


class ErrorOut(BaseModel):
    detail: Any
    type: str | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "unknown user or item"},
    413: {"model": ErrorOut, "description": "request body too large"},
    503: {"model": ErrorOut, "description": "overloaded (see Retry-After)"},
}
_READ_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    401: {"model": ErrorOut, "description": "missing or wrong X-API-Key, or an invalid or expired user token"},
    403: {"model": ErrorOut, "description": "the key's scope is too small (or a user token asks for another user)"},
    503: {"model": ErrorOut, "description": "overloaded, or the API disabled (no key configured)"},
}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {k: v for k, v in _READ_ERRORS.items() if k != 404}
_LLM_ERRORS: dict[int | str, dict[str, Any]] = {**_READ_ERRORS, 429: {"model": ErrorOut, "description": "LLM rate limit of this key (see Retry-After)"}}


SCOPES = ("read", "write", "admin")
"""Scopes a key can have; each includes the ones before it."""
LEVELS = ("user", *SCOPES)
"""``user`` (a per-user token) is below ``read``: its own user's data only."""
MIN_KEY_CHARS = 16
_WEAK_KEYS = {"changeme", "change", "secret", "password", "passwd", "test", "testing", "admin", "default", "persona",
              "apikey", "key", "token", "me", "my", "pass", "letmein", "qwerty", "example", "dummy", "insecure", "12345678", "0123456789"}


def check_keys(keys: dict[str, str], allow_weak: bool = False, what: str = "API key") -> None:
    """Refuse (ValueError) an empty key, an unknown scope, and unless ``allow_weak`` a key shorter than
    16 characters, with fewer than 8 distinct characters, or made of well-known words (change-me, secret...)."""
    for k, scope in keys.items():
        if scope not in SCOPES:
            raise ValueError(f"API key scope {scope!r} is not one of {SCOPES}")
        if not k or not k.strip():
            raise ValueError(f"an {what} is empty")
        if k.startswith(TOKEN_PREFIX):  # such a key would be read as a user token and never work
            raise ValueError(f"an {what} must not start with {TOKEN_PREFIX!r} (the user-token prefix)")
        if allow_weak:
            continue
        rest = re.sub(r"[^a-z0-9]+", "", k.lower())
        for w in sorted(_WEAK_KEYS, key=len, reverse=True):  # what is left once the well-known words are gone
            rest = rest.replace(w, "")
        if len(k) < MIN_KEY_CHARS or len(set(k)) < 8 or len(rest) < 8:
            raise ValueError(
                f"refusing to start with a weak {what} ({k[:2]}..., {len(k)} characters): use at least {MIN_KEY_CHARS} random characters, "
                "e.g. `openssl rand -hex 24` (PERSONA_API_ALLOW_WEAK_KEYS=true for development only)"
            )


@dataclass(frozen=True)
class Caller:
    """Who made a request: ``who`` keys the rate limit (a digest of the key, or the token's user),
    ``scope`` is one of :data:`LEVELS`, ``user`` the one user a ``user`` token may read."""

    who: str
    scope: str
    user: str | None = None

    def may_read_user(self, user_id: str | None) -> bool:
        return self.scope != "user" or user_id == self.user


class _RateLimit:
    """Token bucket per key: ``per_minute`` requests, refilled continuously."""

    def __init__(self, per_minute: int) -> None:
        self.rate, self.buckets, self.lock = per_minute, {}, threading.Lock()  # type: ignore[var-annotated]

    def take(self, who: str) -> float:
        """0 when allowed, else seconds until a request would be."""
        if self.rate <= 0:
            return 60.0
        now = time.monotonic()
        with self.lock:
            tokens, last = self.buckets.get(who, (float(self.rate), now))
            tokens = min(float(self.rate), tokens + (now - last) * self.rate / 60.0)
            if tokens >= 1:
                self.buckets[who] = (tokens - 1, now)
                return 0.0
            self.buckets[who] = (tokens, now)
            return (1 - tokens) * 60.0 / self.rate


class _Metrics:
    def __init__(self, eng: Engine) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
            from prometheus_client.core import GaugeMetricFamily
        except ImportError as e:
            raise missing("server", "prometheus-client") from e
        self.registry = CollectorRegistry()
        self.requests = Counter("persona_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("persona_http_request_seconds", "HTTP request latency", ["method", "route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.inflight = Gauge("persona_inflight_requests", "Engine calls running now", registry=self.registry)
        self.rejected = Counter("persona_rejected_requests", "Requests refused before any work", ["reason"], registry=self.registry)
        self.cancelled = Counter("persona_cancelled_requests", "Requests whose client disconnected (LLM work cancelled)", registry=self.registry)

        class _Store:
            def collect(self) -> Any:
                g = GaugeMetricFamily("persona_store_points", "Points stored per kind", labels=["kind"])
                for k, v in eng.stats().items():
                    g.add_metric([k], v)
                yield g

        self.registry.register(_Store())  # type: ignore[arg-type]


class _BodyLimit:
    """Pure ASGI middleware: refuse bodies over the limit (Content-Length, or counted while streaming)."""

    def __init__(self, app: Any, limit: int, on_reject: Any) -> None:
        self.app, self.limit, self.on_reject = app, limit, on_reject

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            self.on_reject()
            return await self._too_large(send)
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return msg

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            self.on_reject()
            await self._too_large(send)

    async def _too_large(self, send: Any) -> None:
        body = b'{"detail":"request body too large","type":"InvalidInputError"}'
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class _Observe:
    """Pure ASGI middleware counting requests by route template and status (Starlette's
    BaseHTTPMiddleware would hide client disconnects from the endpoints)."""

    def __init__(self, app: Any, metrics: _Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500

        async def sending(msg: dict[str, Any]) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - t0)


def create_app(
    path: str | Path | None = None, engine: Engine | None = None, api_key: str | None = None, max_inflight: int | None = None,
    max_body_bytes: int | None = None, api_keys: dict[str, str] | None = None, allow_weak_keys: bool | None = None,
    llm_requests_per_minute: int | None = None, token_secret: str | None = None,
) -> FastAPI:
    """Arguments left out come from the engine's settings (``PERSONA_API_KEY``, ``PERSONA_API_KEYS``,
    ``PERSONA_API_ALLOW_WEAK_KEYS``, ``PERSONA_API_LLM_REQUESTS_PER_MINUTE``, ``PERSONA_API_MAX_INFLIGHT``,
    ``PERSONA_API_MAX_BODY_BYTES``, ``PERSONA_API_TOKEN_SECRET``). ``api_key`` is an admin key; ``api_keys``
    maps keys to scopes; ``token_secret`` verifies per-user tokens. Raises ValueError for a weak key or secret."""
    st = (engine.settings if engine is not None else None)
    key = api_key if api_key is not None else ((st.api_key if st else None) or "")
    keys: dict[str, str] = dict(api_keys if api_keys is not None else (st.api_keys if st else {}))
    if key:
        keys[key] = "admin"
    weak_ok = allow_weak_keys if allow_weak_keys is not None else bool(st and st.api_allow_weak_keys)
    secret = token_secret if token_secret is not None else ((st.api_token_secret if st else None) or "")
    if engine is None:  # refuse a weak key before opening the store (and before its settings are known)
        from engine.config import Settings

        st0 = Settings(path=Path(path)) if path is not None else Settings()
        if api_key is None and st0.api_key:
            keys[st0.api_key] = "admin"
        if api_keys is None:
            keys = {**st0.api_keys, **keys}
        weak_ok = allow_weak_keys if allow_weak_keys is not None else st0.api_allow_weak_keys
        if token_secret is None:
            secret = st0.api_token_secret or ""
    check_keys(keys, weak_ok)
    if secret:  # empty: user tokens are off
        check_keys({secret: "admin"}, weak_ok, what="token secret")
        if secret in keys:
            raise ValueError("PERSONA_API_TOKEN_SECRET must differ from every API key")
    owned = engine is None
    eng = engine or Engine.open(path)
    limiter = _RateLimit(llm_requests_per_minute if llm_requests_per_minute is not None else eng.settings.api_llm_requests_per_minute)
    max_inflight = max_inflight or eng.settings.api_max_inflight
    max_body_bytes = max_body_bytes or eng.settings.api_max_body_bytes

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # The pool stays: lifespan can run more than once per app (test clients), idle threads cost nothing.
        if owned:  # an engine passed in belongs to the caller
            eng.close()

    app = FastAPI(title="Persona", version="0.1.0", description="Retrieval-augmented multimodal personalization.", lifespan=lifespan)
    slots = asyncio.Semaphore(max_inflight)
    # Engine calls run on about as many threads as there are cores: more threads only fight over the
    # GIL and the cores (bench/api_load.py, 8 clients, 2 cores: 31 req/s with a thread per request, 42 with 2).
    pool = ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2)), thread_name_prefix="persona-api")
    metrics = _Metrics(eng)
    app.add_middleware(_BodyLimit, limit=max_body_bytes, on_reject=lambda: metrics.rejected.labels("too_large").inc())
    app.add_middleware(_Observe, metrics=metrics)
    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key with a scope: read, write or admin")

    def identify(x_api_key: str | None) -> Caller:
        if not keys and not secret:
            raise HTTPException(503, "the API is disabled: set PERSONA_API_KEY or PERSONA_API_KEYS")
        if secret and x_api_key and x_api_key.startswith(TOKEN_PREFIX):
            try:
                user = verify_user_token(secret, x_api_key)
            except TokenError as e:
                raise HTTPException(401, str(e)) from None
            return Caller(who="user:" + hashlib.sha256(user.encode()).hexdigest()[:16], scope="user", user=user)
        given = (x_api_key or "").encode()
        found = None
        for k, sc in keys.items():  # compare with every key: the time does not tell which matched
            if hmac.compare_digest(given, k.encode()):
                found = (k, sc)
        if not x_api_key or found is None:
            raise HTTPException(401, "missing or wrong X-API-Key")
        return Caller(who=hashlib.sha256(found[0].encode()).hexdigest()[:16], scope=found[1])

    def need(scope: str) -> Any:
        def check(x_api_key: str | None = Security(api_key_header)) -> Caller:
            """The caller when its key has ``scope`` or more (``user``: a user token, checked per route)."""
            caller = identify(x_api_key)
            if LEVELS.index(caller.scope) < LEVELS.index(scope):
                raise HTTPException(403, f"this key's scope is {caller.scope!r}; {scope!r} needed")
            return caller

        return check

    user_or_read = Depends(need("user"))  # a read key, or a user token checked by own()

    def own(caller: Caller, user_id: str | None) -> None:
        """A user token reads its own user only."""
        if not caller.may_read_user(user_id):
            raise HTTPException(403, "this user token may only read its own user")

    require_key = need("write")

    def llm_wait(caller: Caller) -> float:
        """Takes one LLM request from the caller's bucket: 0 when allowed, else the seconds to wait (counted as rejected)."""
        wait = limiter.take(caller.who)
        if wait:
            metrics.rejected.labels("llm_rate").inc()
        return wait

    def llm_quota(caller: Caller) -> None:
        if wait := llm_wait(caller):
            raise HTTPException(429, "LLM request rate limit reached for this key", headers={"Retry-After": str(max(1, math.ceil(wait)))})

    async def run(fn: Any, *args: Any, request: Request | None = None, **kw: Any) -> Any:
        # Admission limit: answer 503 + Retry-After instead of queueing without bound.
        if slots.locked():
            metrics.rejected.labels("overloaded").inc()
            raise OverloadedError("too many requests in flight", retry_after_s=1)
        async with slots:
            metrics.inflight.inc()
            try:
                scope = CancelScope()

                def work() -> Any:
                    with cancel_scope(scope):
                        check_cancelled()  # the client left while this waited for a thread
                        return fn(*args, **kw)

                fut = asyncio.get_running_loop().run_in_executor(pool, work)
                while request is not None:
                    done, _ = await asyncio.wait({fut}, timeout=0.2)
                    if done:
                        break
                    if await request.is_disconnected():
                        scope.cancel()  # the worker thread stops its LLM call; wait for it so the slot stays honest
                        metrics.cancelled.inc()
                        try:
                            await fut
                        except CancelledRequestError:
                            pass
                        raise CancelledRequestError("client disconnected")
                return await fut
            finally:
                metrics.inflight.dec()

    @app.exception_handler(PersonaError)
    async def _persona_error(_: Request, exc: PersonaError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, OverloadedError) else None
        status = int(http_status(exc))
        detail: Any = str(exc)
        if status == 422:  # the same shape as FastAPI's own validation errors
            detail = [{"loc": ["body"], "msg": str(exc), "type": "invalid_input"}]
        return JSONResponse({"detail": detail, "type": type(exc).__name__}, status_code=status, headers=headers)

    @app.get("/health", response_model=Health)
    async def health() -> dict[str, Any]:
        return {"status": "ok", **eng.stats()}

    @app.get("/metrics", response_class=Response, dependencies=[Depends(need("read"))],
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus metrics"}, **_READ_ERRORS})
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/items", response_model=IngestReport, dependencies=[Depends(require_key)], responses=_WRITE_ERRORS)
    async def add_items(body: ItemsIn) -> IngestReport:
        """Batch upsert. Returns once the batch is durably stored (acknowledged items survive a crash).
        Images must be http(s) URLs: the server never reads its own files for a client."""
        return await run(eng.add_items, body.items, local_images=False)

    @app.post("/events", response_model=EventReport, dependencies=[Depends(require_key)], responses=_WRITE_ERRORS)
    async def add_events(body: EventsIn) -> EventReport:
        return await run(eng.add_events, body.events)

    @app.delete("/items/{item_id}", response_model=DeleteReport, dependencies=[Depends(require_key)], responses=_WRITE_ERRORS)
    async def delete_item(item_id: str) -> DeleteReport:
        """Remove the item and every event about it (write scope). Idempotent: an id not in the catalog is listed in
        ``not_found``. Lists stop showing it at once; the next fit forgets it."""
        return await run(eng.delete_items, [item_id])

    @app.delete("/users/{user_id}", response_model=DeleteReport, dependencies=[Depends(need("admin"))], responses=_WRITE_ERRORS)
    async def delete_user(user_id: str) -> DeleteReport:
        """Erase a user: their events and profile (every summary version, taste and cf vectors); admin scope.
        Idempotent. A fitted model keeps only what it learned in aggregate until the next fit."""
        return await run(eng.delete_user, user_id)

    @app.post("/fit", response_model=FitReport, dependencies=[Depends(need("admin"))], responses=_WRITE_ERRORS)
    async def fit() -> FitReport:
        """Train the learned recommender on every stored event (:meth:`Engine.fit`; minutes on a large store) and
        make the new version live; the next recommendation uses it. Admin scope: it costs CPU and replaces the model."""
        return await run(eng.fit)

    @app.get("/items/{item_id}", responses=_READ_ERRORS, dependencies=[Depends(need("user"))])
    async def get_item(item_id: str) -> dict[str, Any]:
        return await run(eng.item, item_id)

    @app.get("/users/{user_id}/recommendations", response_model=Recommendations, responses=_LLM_ERRORS)
    async def recommendations(
        request: Request, user_id: str, k: int = Query(10, ge=1, le=MAX_K),
        rerank: str | None = Query(None, pattern="^(none|pointwise|listwise|llm_feature)$"), explain: bool = False,
        who: Caller = user_or_read,
    ) -> Recommendations:
        """Needs ``read`` (or this user's token); with ``rerank`` pointwise/listwise (or that server default)
        or ``explain`` it makes the LLM work and counts against the key's LLM rate limit."""
        own(who, user_id)
        if explain or (rerank or eng.settings.retrieval.rerank) != "none":
            llm_quota(who)
        return await run(eng.recommend, user_id, k=k, rerank=rerank, explain=explain, request=request)

    @app.get("/users/{user_id}/profile", response_model=Profile, responses=_READ_ERRORS)
    async def profile(user_id: str, who: Caller = user_or_read) -> Profile:
        """Needs ``read`` (or this user's token)."""
        own(who, user_id)
        return await run(eng.profile, user_id)

    @app.post("/explain", response_model=Explanation, responses=_LLM_ERRORS)
    async def explain(request: Request, body: ExplainIn, who: Caller = user_or_read) -> Explanation:
        """Needs ``read`` (or this user's token); counts against the key's LLM rate limit."""
        own(who, body.user_id)
        llm_quota(who)
        return await run(eng.explain, body.user_id, body.item_id, request=request)

    @app.post("/search", response_model=list[SearchHit], responses=_READ_ERRORS)
    async def search(request: Request, body: SearchIn, who: Caller = user_or_read) -> list[SearchHit]:
        """Needs ``read``; a user token may search unpersonalized or personalized for its own user."""
        if body.user_id is not None:
            own(who, body.user_id)
        return await run(eng.search, body.query, user_id=body.user_id, k=body.k, filters=body.filter_spec(), request=request)

    @app.post("/users/{user_id}/images", response_class=Response, dependencies=[Depends(require_key)],
              responses={200: {"content": {"image/png": {}}, "description": "the image; X-Persona-Items: the history item ids it drew on (URL-encoded, comma-separated)"},
                         **_WRITE_ERRORS, 404: _ERRORS[404]})
    async def generate_image(request: Request, user_id: str, body: ImageIn) -> Response:
        """A personalized image (PNG). Heavy: needs the write key and counts against the admission limit."""
        import io
        from urllib.parse import quote

        def draw() -> tuple[bytes, list[str]]:  # PNG encoding off the event loop too
            out = eng.generate_image(user_id, body.prompt, reference_item=body.reference_item, seed=body.seed, steps=body.steps, size=body.size)
            buf = io.BytesIO()
            out.images[0].save(buf, format="PNG")
            return buf.getvalue(), out.item_ids

        png, items = await run(draw, request=request)
        return Response(png, media_type="image/png", headers={"X-Persona-Items": ",".join(quote(i, safe="") for i in items)[:4000]})

    from services.dashboard import dashboard_router  # read-only web UI at /ui (services/dashboard.py)

    ui_cookie = APIKeyCookie(name="persona_key", auto_error=False)

    def ui_read(x_api_key: str | None = Security(api_key_header), cookie: str | None = Security(ui_cookie)) -> Caller:
        """The dashboard shows users' histories: the read scope, from the header or (browsers) the cookie."""
        return need("read")(x_api_key or cookie)

    def ui_llm_allowed(request: Request) -> bool:
        """The dashboard's LLM re-ranking counts against the same per-key LLM rate limit as the API's."""
        return not llm_wait(ui_read(request.headers.get("X-API-Key"), request.cookies.get("persona_key")))

    app.include_router(dashboard_router(eng, llm_allowed=ui_llm_allowed, run=run), dependencies=[Depends(ui_read)])
    return app
