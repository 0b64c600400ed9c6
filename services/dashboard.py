"""Read-only web dashboard at ``/ui``: server-rendered Jinja2 pages over an :class:`engine.Engine`.

- ``/ui`` catalog browser (posters, genre filter, most popular first, paged)
- ``/ui/users/{id}`` history (most recent first), preference summary and its versions,
  recommendations with scores and reasons, personalized search (``?q=``)
- ``/ui/items/{id}`` one item and similar items (search by the item's own text)
- ``/ui/health`` store counts, LLM backend, fitted model version
- ``/ui/eval`` the latest ``persona eval`` report (``report.json`` and ``metrics.png`` in ``report_dir``:
  the argument, else ``PERSONA_EVAL_REPORT_DIR``, else ``reports/eval``)
- ``/ui/posters/{id}`` an item's poster: only the local path stored on that item, only a regular
  file (no symlink) with an image extension; there is no path parameter. Item images given as
  http(s) URLs are linked directly by the browser.

Nothing here writes. Pages run the engine's synchronous calls on Starlette's thread pool and are
left out of the OpenAPI schema. Mount with ``app.include_router(dashboard_router(eng))``.
"""

from __future__ import annotations

import mimetypes
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from engine import Engine, NotFoundError, PersonaError
from engine.items import genres_of
from engine.store import parse_filter

__all__ = ["dashboard_router", "IMAGE_TYPES"]

TEMPLATES = Path(__file__).parent / "templates"
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif", ".webp": "image/webp"}
PAGE = 24


def poster_file(payload: dict[str, Any]) -> Path | None:
    """The local poster file of an item payload, or None: an absolute path (or ``file://``) to a
    regular file, not a symlink, with an image extension."""
    ref = payload.get("image")
    if not isinstance(ref, str) or not ref:
        return None
    if ref.startswith("file://"):
        ref = ref[len("file://"):]
    elif "://" in ref:
        return None
    p = Path(ref)
    if not p.is_absolute() or p.suffix.lower() not in IMAGE_TYPES:
        return None
    try:
        st = os.lstat(p)
    except OSError:
        return None
    return p if stat.S_ISREG(st.st_mode) else None


EVAL_METRICS = ("hr@10", "ndcg@10", "recall@50", "auc", "hr@5")


def eval_rows(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows (method, metric -> mean/lo/hi) of a ``persona eval`` report.json."""
    methods = [("persona", rep["persona"])] + list(rep.get("baselines", {}).items())
    return [{"method": name, **{m: r["test"][m] for m in EVAL_METRICS if m in r.get("test", {})}} for name, r in methods]


def dashboard_router(eng: Engine, prefix: str = "/ui", report_dir: str | Path | None = None,
                     llm_allowed: Callable[[Request], bool] | None = None, run: Callable[..., Awaitable[Any]] | None = None) -> APIRouter:
    """The /ui pages. ``llm_allowed(request)``: whether this request may make the LLM work now (the API passes its
    per-key LLM rate limit); when it says no, the user page shows the ranker's order and says why. ``run(fn,
    request=...)``: the API's runner for the user page's engine work (admission limit, cancelled when the client leaves)."""
    router = APIRouter(prefix=prefix, include_in_schema=False)
    templates = Jinja2Templates(directory=str(TEMPLATES))

    def poster_url(request: Request, payload: dict[str, Any] | None) -> str | None:
        if not payload or not payload.get("image"):
            return None
        ref = str(payload["image"])
        if ref.startswith(("http://", "https://")):
            return ref
        if poster_file(payload) is None:  # a placeholder rather than a broken image
            return None
        return str(request.url_for("dashboard_poster", item_id=payload["item_id"]))

    def item_url(request: Request, item_id: str) -> str:
        return str(request.url_for("dashboard_item", item_id=item_id))

    def user_url(request: Request, user_id: str) -> str:
        return str(request.url_for("dashboard_user", user_id=user_id))

    def render(request: Request, name: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.update(poster_url=lambda p: poster_url(request, p), item_url=lambda i: item_url(request, i),
                   user_url=lambda u: user_url(request, u), prefix=prefix, genres_of=genres_of)
        return templates.TemplateResponse(request, name, ctx, status_code=status_code)

    def not_found(request: Request, what: str) -> HTMLResponse:
        return render(request, "dashboard/error.html", status_code=404, title="Not found", message=what)

    def payloads(item_ids: list[str]) -> dict[str, dict[str, Any]]:
        return {i: h.payload for i, h in eng.catalog.hits(item_ids).items()}

    @router.get("", response_class=HTMLResponse, name="dashboard_catalog")
    def catalog(request: Request, genre: str | None = Query(None, max_length=100), page: int = Query(1, ge=1, le=1000)) -> HTMLResponse:
        all_genres = sorted({g for h in eng.store.scroll(eng.items_col) for g in genres_of(h.payload.get("attributes") or {})})
        genre = genre or None
        flt = parse_filter({"genres": genre} if genre else None)
        hits = eng.store.top_by(eng.items_col, "popularity", page * PAGE + 1, flt)
        shown = [h.payload for h in hits[(page - 1) * PAGE: page * PAGE]]
        return render(request, "dashboard/catalog.html", title="Catalog", items=shown, genres=all_genres, genre=genre, page=page,
                      has_next=len(hits) > page * PAGE, total=eng.store.count(eng.items_col, flt))

    @router.get("/user", name="dashboard_user_jump")
    def user_jump(request: Request, user: str = Query(..., min_length=1, max_length=200)) -> RedirectResponse:
        """The header's user box (a form cannot put the id in the path)."""
        return RedirectResponse(user_url(request, user.strip()), status_code=303)

    @router.get("/users/{user_id}", response_class=HTMLResponse, name="dashboard_user")
    async def user(request: Request, user_id: str, q: str | None = Query(None, max_length=500),
                   rerank: Literal["none", "pointwise", "listwise"] = Query("none")) -> HTMLResponse:
        limited = rerank != "none" and llm_allowed is not None and not llm_allowed(request)
        q = (q or "").strip()

        def page() -> dict[str, Any] | None:
            try:
                profile = eng.profile(user_id)
            except NotFoundError:
                return None
            history = list(reversed(eng.history(user_id)))[:30]
            # LLM trouble falls back to the ranker's order, flagged; so does a rate-limited request, without asking the LLM
            recs = eng.recommend(user_id, k=12, rerank="none" if limited else rerank)
            results = eng.search(q, user_id=user_id, k=12) if q else []
            found = payloads([e.item_id for e in history] + [r.item_id for r in recs.items] + [h.item_id for h in results])
            return dict(profile=profile, history=history, recs=recs, results=results, items=found)

        # through the API's admission limit and its cancel-on-disconnect (the LLM re-ranking is the costly part)
        ctx = await run(page, request=request) if run is not None else await run_in_threadpool(page)
        if ctx is None:
            return not_found(request, f"No events for user {user_id!r}.")
        return render(request, "dashboard/user.html", title=f"User {user_id}", user_id=user_id, q=q, rerank=rerank, limited=limited, **ctx)

    @router.get("/items/{item_id}", response_class=HTMLResponse, name="dashboard_item")
    def item(request: Request, item_id: str) -> HTMLResponse:
        try:
            payload = eng.item(item_id)
        except NotFoundError:
            return not_found(request, f"No item {item_id!r}.")
        text = " ".join(x for x in (payload.get("title"), payload.get("description")) if x)[:1000]
        similar = [h for h in eng.search(text, k=9) if h.item_id != item_id][:8] if text else []
        return render(request, "dashboard/item.html", title=payload.get("title") or item_id, item=payload, similar=similar,
                      items=payloads([h.item_id for h in similar]))

    @router.get("/health", response_class=HTMLResponse, name="dashboard_health")
    def health(request: Request) -> HTMLResponse:
        try:
            model = eng.learned.current()
            version, model_error = (model.info.get("version") if model is not None else None), None
        except PersonaError as e:
            version, model_error = None, str(e)
        llm = eng.settings.llm
        return render(request, "dashboard/health.html", title="Health", stats=eng.stats(), llm_backend=llm.backend, llm_model=llm.model,
                      model_version=version, model_error=model_error)

    reports = Path(report_dir or os.environ.get("PERSONA_EVAL_REPORT_DIR") or "reports/eval")

    @router.get("/eval", response_class=HTMLResponse, name="dashboard_eval")
    def evaluation(request: Request) -> HTMLResponse:
        import json

        try:
            rep = json.loads((reports / "report.json").read_text())
            rows, prov, problem = eval_rows(rep), rep.get("provenance", {}), None
        except (OSError, ValueError, KeyError, TypeError) as e:
            rows, prov, problem = [], {}, f"no readable report in {reports} ({type(e).__name__}); run `persona eval --out {reports}`"
        has_plot = (reports / "metrics.png").is_file()
        return render(request, "dashboard/eval.html", title="Evaluation", rows=rows, metrics=EVAL_METRICS, prov=prov, problem=problem,
                      has_plot=has_plot, best=rep.get("best_baseline") if rows else None, paired=rep.get("persona_vs_best", {}) if rows else {})

    @router.get("/eval/metrics.png", name="dashboard_eval_plot")
    def evaluation_plot() -> FileResponse:
        path = reports / "metrics.png"
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                raise HTTPException(404, "no plot")
        except OSError as e:
            raise HTTPException(404, "no plot") from e
        return FileResponse(path, media_type="image/png", headers={"X-Content-Type-Options": "nosniff"})

    @router.get("/posters/{item_id}", name="dashboard_poster")
    def poster(item_id: str) -> FileResponse:
        try:
            payload = eng.item(item_id)
        except NotFoundError:
            raise HTTPException(404, "unknown item") from None
        path = poster_file(payload)
        if path is None:
            raise HTTPException(404, "no local poster for this item")
        media = IMAGE_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media, headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})

    return router
