"""The read-only dashboard at /ui: server-side checks (TestClient) and browser checks (Playwright
driving Debian's Chromium headless against uvicorn) over a small ml-100k store."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from engine import Engine, Item
from engine.components import Components

NO_CLIP = {"clip": {"enabled": False}, "llm": {"backend": "none"}}
N_ITEMS = 150
USERS = {str(u) for u in range(1, 21)}
CHROMIUM = os.environ.get("PERSONA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(ml, text_encoder, tmp_path_factory):
    """A small ml-100k store (posters from the data set) plus items whose image must never be served."""
    tmp = tmp_path_factory.mktemp("dash")
    eng = Engine.open(tmp / "store", NO_CLIP, components=Components(text_encoder=text_encoder))
    items = [it for it in ml.items if int(it.id) <= N_ITEMS]
    assert sum(it.image is not None for it in items) > N_ITEMS // 2
    real = next(it.image for it in items if it.image)
    link = tmp / "link.jpg"
    link.symlink_to(real)
    bad = {"b-url": "https://example.org/p.jpg", "b-passwd": "/etc/passwd", "b-rel": "posters/1.jpg", "b-link": str(link),
           "b-dir": str(tmp / "dir.jpg")}
    items += [Item(id=k, title=f"Bad image {k}", image=v) for k, v in bad.items()]
    assert eng.add_items(items).failed == 0
    (tmp / "dir.jpg").mkdir()  # after indexing: the indexer does not expect a directory there
    events = [e for e in ml.events if e.user_id in USERS and int(e.item_id) <= N_ITEMS]
    assert eng.add_events(events).added == len(events)
    eng.update_profiles(sorted({e.user_id for e in events}), use_llm=False)
    yield eng
    eng.close()


KEY = "ui-test-key-5f0c2a9e7d41b3"


@pytest.fixture(scope="module")
def app(store):
    from services.api import create_app

    return create_app(engine=store, api_key=KEY)


@pytest.fixture(scope="module")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        yield c


def test_dashboard_needs_the_read_scope(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as anonymous:
        assert anonymous.get("/ui/users/1").status_code == 401  # users' histories are not public
        assert anonymous.get("/ui/users/1", cookies={"persona_key": KEY}).status_code == 200


def test_pages_render(client, store):
    r = client.get("/ui")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert 'id="genre"' in r.text and "Comedy" in r.text and "/ui/posters/" in r.text
    comedy = client.get("/ui", params={"genre": "Comedy"}).text
    assert "in Comedy" in comedy
    u = client.get("/ui/users/1")
    assert u.status_code == 200 and 'id="recommendations"' in u.text and 'id="summary"' in u.text
    latest = store.history("1")[-1].item_id
    assert u.text.index(f'data-item-id="{latest}"', u.text.index('id="history"')) > 0
    s = client.get("/ui/users/1", params={"q": "space adventure"})
    assert 'id="search-results"' in s.text and "results for" in s.text
    assert client.get("/ui/items/1").status_code == 200 and 'id="similar"' in client.get("/ui/items/1").text
    h = client.get("/ui/health").text
    assert "LLM backend" in h and "none" in h and str(store.stats()["events"]) in h
    assert client.get("/ui/users/nobody").status_code == 404 and client.get("/ui/items/nope").status_code == 404
    assert client.get("/ui/user", params={"user": "1"}, follow_redirects=False).headers["location"].endswith("/ui/users/1")
    assert not any(p.startswith("/ui") for p in client.get("/openapi.json").json()["paths"])


def test_titles_are_escaped(client, store):
    store.add_items([Item(id="x-html", title='<script>alert(1)</script> "Q"', description="<b>bold</b>")])
    t = client.get("/ui/items/x-html").text
    assert "<script>alert(1)</script>" not in t and "&lt;script&gt;" in t and "<b>bold</b>" not in t


def test_posters_only_stored_regular_files(client, store):
    ok = client.get("/ui/posters/1")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg"
    assert ok.content == Path(store.item("1")["image"]).read_bytes()
    for iid in ("b-url", "b-passwd", "b-rel", "b-link", "b-dir", "unknown"):
        assert client.get(f"/ui/posters/{iid}").status_code == 404, iid
    for probe in ("/ui/posters/..%2F..%2Fetc%2Fpasswd", "/ui/posters/1?path=/etc/passwd", "/ui/posters//etc/passwd"):
        r = client.get(probe)
        assert r.status_code == 404 or r.content == ok.content, probe
    assert 'src="https://example.org/p.jpg"' in client.get("/ui/items/b-url").text


# -- browser ------------------------------------------------------------------------------------

def _chromium_reason() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright not installed (pip install -e '.[test]'; make test does)"
    if not Path(CHROMIUM).exists():
        return f"chromium not found at {CHROMIUM} (apt-get install chromium; make test does)"
    return None


browser_only = pytest.mark.skipif(_chromium_reason() is not None, reason=_chromium_reason() or "")


@pytest.fixture(scope="module")
def server(app):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.time() + 20
    while not srv.started:
        assert th.is_alive() and time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    th.join(10)


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        ctx.add_cookies([{"name": "persona_key", "value": KEY, "url": server}])  # the read key, as a browser sends it
        pg = ctx.new_page()
        errors: list[str] = []
        # The one item whose image is an outside URL (no network here) may show up in similar items.
        pg.on("console", lambda m: errors.append(f"{m.text} {m.location}") if m.type == "error" and "example.org" not in str(m.location) else None)
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
        pg.errors = errors  # type: ignore[attr-defined]
        yield pg
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    d = Path(os.environ.get("PERSONA_TEST_ARTIFACTS") or tmp_path_factory.mktemp("screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _posters_loaded(pg) -> tuple[int, int]:
    """(posters served by /ui/posters, those with naturalWidth > 0) once every one finished loading."""
    js = "Array.from(document.images).filter(i => i.src.includes('/ui/posters/'))"
    pg.wait_for_function(f"{js}.every(i => i.complete)", timeout=15000)
    return pg.evaluate(f"[{js}.length, {js}.filter(i => i.naturalWidth > 0).length]")


@pytest.mark.browser
@browser_only
def test_browser_catalog_and_genre_filter(page, server, shots):
    page.goto(server + "/ui")
    n, ok = _posters_loaded(page)
    assert n > 5 and ok == n
    page.select_option("#genre", "Comedy")  # the plain-JS change handler submits the form
    page.wait_for_url("**genre=Comedy**")
    assert "in Comedy" in page.inner_text("main")
    n, ok = _posters_loaded(page)
    assert n > 0 and ok == n
    assert page.get_attribute("#catalog img", "alt").startswith("Poster: ")
    page.screenshot(path=str(shots / "catalog.png"), full_page=False)
    assert page.errors == []


@pytest.mark.browser
@browser_only
def test_browser_user_page_search_item_health(page, server, shots, store):
    uid = min(sorted(USERS), key=lambda u: abs(len(store.history(u)) - 25))  # a mid-sized history in this subset
    page.goto(server + "/ui")
    page.fill("#user-id", uid)
    page.click("#user-jump button")
    page.wait_for_url(f"**/ui/users/{uid}")
    n, ok = _posters_loaded(page)
    assert n > 10 and ok == n, page.errors
    assert page.locator("#recommendations li").count() == len(store.recommend(uid, k=12).items) > 0 and page.locator("#history li").count() > 5
    assert page.locator("#recommendations .reason").first.inner_text().strip()
    first_hist = page.get_attribute("#history li", "data-item-id")
    assert first_hist == store.history(uid)[-1].item_id  # most recent first
    page.screenshot(path=str(shots / "user.png"), full_page=False)
    page.fill("#q", "space adventure")
    page.click("form[role=search] button")
    page.wait_for_selector("#search-results li")
    assert page.locator("#search-results li").count() == 12
    n, ok = _posters_loaded(page)
    assert ok == n
    page.screenshot(path=str(shots / "user-search.png"), full_page=False)
    page.click("#search-results li a")
    page.wait_for_selector("#similar li")
    n, ok = _posters_loaded(page)
    assert n > 1 and ok == n
    page.screenshot(path=str(shots / "item.png"), full_page=False)
    page.goto(server + "/ui/health")
    assert "none" in page.inner_text("#model-version")
    page.screenshot(path=str(shots / "health.png"))
    assert page.errors == []
    if os.environ.get("PERSONA_UPDATE_SCREENSHOTS"):
        shutil.copy(shots / "user.png", ROOT / "docs" / "dashboard-user.png")


def test_eval_page_shows_the_committed_report(store, tmp_path):
    """/ui/eval renders the report `persona eval` wrote (docs/eval-ml100k), its plot, and says so when none exists."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from services.dashboard import dashboard_router

    docs = Path(__file__).resolve().parents[1] / "docs" / "eval-ml100k"
    app = FastAPI()
    app.include_router(dashboard_router(store, report_dir=docs))
    with TestClient(app) as c:
        page = c.get("/ui/eval").text
        assert 'id="eval"' in page and "<th scope=\"row\">persona</th>" in page and "sasrec" in page and "Paired bootstrap" in page
        plot = c.get("/ui/eval/metrics.png")
        assert plot.status_code == 200 and plot.content[:8] == b"\x89PNG\r\n\x1a\n"
    empty = FastAPI()
    empty.include_router(dashboard_router(store, report_dir=tmp_path))
    with TestClient(empty) as c:
        assert 'id="eval-missing"' in c.get("/ui/eval").text and c.get("/ui/eval/metrics.png").status_code == 404


def test_rerank_switch_falls_back_flagged_without_an_llm(client):
    """The user page's rerank switch: with no LLM configured the list keeps its order and says why."""
    page = client.get("/ui/users/1", params={"rerank": "pointwise"}).text
    assert 'id="rerank"' in page and '<option value="pointwise" selected>' in page
    assert "fallback:" in page and "llm-pointwise" in page
    assert client.get("/ui/users/1", params={"rerank": "bogus"}).status_code == 422


def test_rerank_switch_counts_against_the_keys_llm_rate_limit(store):
    """The dashboard's LLM re-ranking is LLM work like the API's: with one LLM request a minute per key, the second
    page asking for it shows the ranker's order and says so, without asking the LLM; plain pages are not limited, and
    the limit is the API's own bucket (the API's LLM routes then answer 429 for the same key)."""
    from fastapi.testclient import TestClient

    from services.api import create_app

    with TestClient(create_app(engine=store, api_key=KEY, llm_requests_per_minute=1), headers={"X-API-Key": KEY}) as c:
        first = c.get("/ui/users/1", params={"rerank": "pointwise"}).text
        assert 'id="llm-limited"' not in first and "llm-pointwise" in first  # asked (no LLM here: the fallback says so)
        second = c.get("/ui/users/1", params={"rerank": "listwise"}).text
        assert 'id="llm-limited"' in second and "llm-listwise" not in second and 'id="recommendations"' in second
        assert 'id="llm-limited"' not in c.get("/ui/users/1").text
        assert c.get("/users/1/recommendations", params={"k": 5, "rerank": "pointwise"}).status_code == 429


def test_user_page_goes_through_the_apis_admission_limit(store, monkeypatch):
    """The user page's engine work (its LLM re-ranking above all) runs like an API request: past ``max_inflight`` the
    page is answered 503 with Retry-After instead of queueing without bound."""
    import threading

    from fastapi.testclient import TestClient

    from services.api import create_app

    entered, release, recommend = threading.Event(), threading.Event(), store.recommend

    def slow(*a, **kw):
        entered.set()
        release.wait(30)
        return recommend(*a, **kw)

    monkeypatch.setattr(store, "recommend", slow)
    with TestClient(create_app(engine=store, api_key=KEY, max_inflight=1), headers={"X-API-Key": KEY}) as c:
        first: dict = {}
        t = threading.Thread(target=lambda: first.setdefault("r", c.get("/ui/users/1")))
        t.start()
        assert entered.wait(30)
        busy = c.get("/ui/users/2")
        release.set()
        t.join(30)
    assert busy.status_code == 503 and busy.headers.get("Retry-After") and first["r"].status_code == 200
