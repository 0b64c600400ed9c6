"""HTTP API (FastAPI). Writes need the API key (``PERSONA_API_KEY``); errors map through ``engine.http_status``."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from engine import Engine, Event, Item, OverloadedError, PersonaError, http_status
from engine.types import EventReport, Explanation, IngestReport, Profile, Recommendations, SearchHit

logger = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_K = 100


class ItemsIn(BaseModel):
    items: list[Item] = Field(max_length=MAX_BATCH)


class EventsIn(BaseModel):
    events: list[Event] = Field(max_length=10 * MAX_BATCH)


class ExplainIn(BaseModel):
    user_id: str = Field(max_length=200)
    item_id: str = Field(max_length=200)


class SearchIn(BaseModel):
    query: str = Field(min_length=1, max_length=2000)
    user_id: str | None = Field(None, max_length=200)
    k: int = Field(10, ge=1, le=MAX_K)
    filters: dict[str, Any] | None = None


def create_app(path: str | Path | None = None, engine: Engine | None = None, api_key: str | None = None, max_inflight: int = 8) -> FastAPI:
    eng = engine or Engine.open(path)
    key = api_key if api_key is not None else os.environ.get("PERSONA_API_KEY", "")
    app = FastAPI(title="Persona", version="0.1.0", description="Retrieval-augmented multimodal personalization.")
    slots = asyncio.Semaphore(max_inflight)

    def require_key(x_api_key: str | None = Header(None)) -> None:
        if not key:
            raise HTTPException(503, "writes are disabled: set PERSONA_API_KEY")
        if not x_api_key or not hmac.compare_digest(x_api_key, key):
            raise HTTPException(401, "missing or wrong X-API-Key")

    async def run(fn: Any, *args: Any, **kw: Any) -> Any:
        # Admission limit: answer 503 + Retry-After instead of queueing without bound.
        if slots.locked():
            raise OverloadedError("too many requests in flight", retry_after_s=1)
        async with slots:
            return await asyncio.to_thread(fn, *args, **kw)

    @app.exception_handler(PersonaError)
    async def _persona_error(_: Request, exc: PersonaError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, OverloadedError) else None
        return JSONResponse({"detail": str(exc), "type": type(exc).__name__}, status_code=int(http_status(exc)), headers=headers)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **eng.stats()}

    @app.post("/items", response_model=IngestReport, dependencies=[Depends(require_key)])
    async def add_items(body: ItemsIn) -> IngestReport:
        return await run(eng.add_items, body.items)

    @app.post("/events", response_model=EventReport, dependencies=[Depends(require_key)])
    async def add_events(body: EventsIn) -> EventReport:
        return await run(eng.add_events, body.events)

    @app.get("/users/{user_id}/recommendations", response_model=Recommendations)
    async def recommendations(
        user_id: str, k: int = Query(10, ge=1, le=MAX_K), rerank: str | None = Query(None, pattern="^(none|pointwise|listwise)$"),
        explain: bool = False,
    ) -> Recommendations:
        return await run(eng.recommend, user_id, k=k, rerank=rerank, explain=explain)

    @app.get("/users/{user_id}/profile", response_model=Profile)
    async def profile(user_id: str) -> Profile:
        return await run(eng.profile, user_id)

    @app.post("/explain", response_model=Explanation)
    async def explain(body: ExplainIn) -> Explanation:
        return await run(eng.explain, body.user_id, body.item_id)

    @app.post("/search", response_model=list[SearchHit])
    async def search(body: SearchIn) -> list[SearchHit]:
        return await run(eng.search, body.query, user_id=body.user_id, k=body.k, filters=body.filters)

    @app.on_event("shutdown")
    def _close() -> None:
        eng.close()

    return app
