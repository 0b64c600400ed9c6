"""HTTP API (FastAPI).

- Writes need the API key (``PERSONA_API_KEY``, header ``X-API-Key``); without a configured key writes are refused.
- Errors map through ``engine.http_status`` (one place).
- Limits: request bodies (``max_body_bytes``, 413), batch sizes and ``k`` (422), and an admission limit
  (``max_inflight``) that answers 503 with Retry-After instead of queueing without bound.
- A client that disconnects cancels its request's LLM work (vLLM aborts the generation).
- ``/metrics``: Prometheus text format (per-app registry).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, StringConstraints, WithJsonSchema, model_validator

from engine import Engine, Event, Item, OverloadedError, PersonaError, http_status
from engine.cancel import CancelScope, cancel_scope, check_cancelled
from engine.errors import CancelledRequestError, missing
from engine.store.base import FILTER_FIELD_PATTERN
from engine.types import EventReport, Explanation, IngestReport, Profile, Recommendations, SearchHit

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
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or wrong X-API-Key"},
    413: _ERRORS[413],
    503: {"model": ErrorOut, "description": "overloaded, or writes disabled (no PERSONA_API_KEY)"},
}


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
    max_body_bytes: int | None = None,
) -> FastAPI:
    """Arguments left out come from the engine's settings (``PERSONA_API_KEY``, ``PERSONA_API_MAX_INFLIGHT``,
    ``PERSONA_API_MAX_BODY_BYTES``)."""
    owned = engine is None
    eng = engine or Engine.open(path)
    key = api_key if api_key is not None else (eng.settings.api_key or "")
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
    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Required for writes (PERSONA_API_KEY)")

    def require_key(x_api_key: str | None = Security(api_key_header)) -> None:
        if not key:
            raise HTTPException(503, "writes are disabled: set PERSONA_API_KEY")
        if not x_api_key or not hmac.compare_digest(x_api_key.encode(), key.encode()):
            raise HTTPException(401, "missing or wrong X-API-Key")

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

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}, "description": "Prometheus metrics"}})
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

    @app.get("/items/{item_id}", responses=_ERRORS)
    async def get_item(item_id: str) -> dict[str, Any]:
        return await run(eng.item, item_id)

    @app.get("/users/{user_id}/recommendations", response_model=Recommendations, responses=_ERRORS)
    async def recommendations(
        request: Request, user_id: str, k: int = Query(10, ge=1, le=MAX_K),
        rerank: str | None = Query(None, pattern="^(none|pointwise|listwise)$"), explain: bool = False,
    ) -> Recommendations:
        return await run(eng.recommend, user_id, k=k, rerank=rerank, explain=explain, request=request)

    @app.get("/users/{user_id}/profile", response_model=Profile, responses=_ERRORS)
    async def profile(user_id: str) -> Profile:
        return await run(eng.profile, user_id)

    @app.post("/explain", response_model=Explanation, responses=_ERRORS)
    async def explain(request: Request, body: ExplainIn) -> Explanation:
        return await run(eng.explain, body.user_id, body.item_id, request=request)

    @app.post("/search", response_model=list[SearchHit], responses=_ERRORS)
    async def search(request: Request, body: SearchIn) -> list[SearchHit]:
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
    app.include_router(dashboard_router(eng))
    return app
