import json

from fastapi.testclient import TestClient

from services.api import create_app
from services.tokens import mint_user_token

KEY = "pk-7f3a9c2e5b1d4e6f8a0b"  # admin
H = {"X-API-Key": KEY}


def test_api_roundtrip_and_auth(make_engine, ml):
    eng = make_engine()
    app = create_app(engine=eng, api_key=KEY)
    anon, c = TestClient(app), TestClient(app, headers=H)
    items = [i.model_dump() for i in ml.items[:60]]
    assert anon.post("/items", json={"items": items}).status_code == 401
    assert anon.post("/items", json={"items": items}, headers={"X-API-Key": "wrong"}).status_code == 401
    r = c.post("/items", json={"items": items})
    assert r.status_code == 200 and r.json()["added"] == 60
    ev = [{"user_id": "u1", "item_id": i["id"], "timestamp": n, "rating": 5} for n, i in enumerate(items[:10])]
    assert anon.post("/events", json={"events": ev}).status_code == 401
    assert c.post("/events", json={"events": ev}).json()["added"] == 10
    assert anon.get("/users/u1/recommendations?k=5").status_code == 401
    recs = c.get("/users/u1/recommendations?k=5").json()
    assert len(recs["items"]) == 5
    assert c.get("/users/nobody/profile").status_code == 404
    assert c.get("/users/u1/recommendations?k=100000").status_code == 422
    assert c.post("/explain", json={"user_id": "u1", "item_id": "nope"}).status_code == 404
    assert c.post("/search", json={"query": "toy", "user_id": "u1", "k": 3}).status_code == 200
    assert c.get("/health").json()["items"] == 60


# -- auth: every route has a case ------------------------------------------------------------------

# (method, path) -> the smallest scope that may call it ("public": no key; "user": a token of the user
# in the path or body, see test_user_token_reads_only_its_own_user). A route added without a case here fails.
AUTH_CASES = {
    ("GET", "/health"): "public",
    ("GET", "/metrics"): "read",
    ("POST", "/items"): "write",
    ("POST", "/events"): "write",
    ("GET", "/items/{item_id}"): "user",
    ("GET", "/users/{user_id}/recommendations"): "user",
    ("GET", "/users/{user_id}/profile"): "user",
    ("POST", "/explain"): "user",
    ("POST", "/search"): "user",
    ("POST", "/users/{user_id}/images"): "write",
    ("POST", "/fit"): "admin",
    ("DELETE", "/items/{item_id}"): "write",
    ("DELETE", "/users/{user_id}"): "admin",
}
# routes that make the LLM work (own per-key rate limit) -> the query string that does it
LLM_CASES = {("POST", "/explain"): "", ("GET", "/users/{user_id}/recommendations"): "?rerank=pointwise"}
READ_KEY, WRITE_KEY = "rk-0a1b2c3d4e5f6a7b8c9d", "wk-9f8e7d6c5b4a3f2e1d0c"
SCOPED = {READ_KEY: "read", WRITE_KEY: "write"}
SECRET = "ts-4c1e9a7b3f5d2e8a6b0c"  # signs user tokens


def _request(c, method, path, items, headers=None, query=""):
    if method == "DELETE":  # idempotent: every allowed scope gets 200; an id no other case reads
        return c.request(method, path.replace("{item_id}", "no-such-item").replace("{user_id}", "no-such-user"), headers=headers or {})
    url = path.replace("{item_id}", items[0]["id"]).replace("{user_id}", "u1") + query
    bodies = {
        "/items": {"items": items[:2]},
        "/events": {"events": [{"user_id": "u1", "item_id": items[0]["id"], "timestamp": 1, "rating": 5}]},
        "/explain": {"user_id": "u1", "item_id": items[1]["id"]},
        "/search": {"query": "toy", "k": 3},
        "/users/{user_id}/images": {"seed": 0},
    }
    return c.request(method, url, json=bodies.get(path), headers=headers or {})


def test_every_route_has_an_auth_case(make_engine, ml, tiny_image_generator):
    eng = make_engine(image_generator=tiny_image_generator, image={"size": 64, "steps": 1})
    items = [i.model_dump() for i in ml.items[:5]]
    eng.add_items(items)
    eng.add_events([{"user_id": "u1", "item_id": items[0]["id"], "timestamp": 0, "rating": 5}])
    # a second user with a few events, so POST /fit has something to learn from
    eng.add_events([{"user_id": u, "item_id": items[j]["id"], "timestamp": 10 * j + k, "rating": 4} for k, u in enumerate(("u2", "u3"))
                    for j in range(4)])
    app = create_app(engine=eng, api_key=KEY, api_keys=SCOPED, token_secret=SECRET)
    routes = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
    u1_token = mint_user_token(SECRET, "u1")  # _request names user u1
    assert routes == set(AUTH_CASES), f"routes without an auth case: {routes ^ set(AUTH_CASES)}"
    c = TestClient(app)
    locked = TestClient(create_app(engine=eng, api_key="", api_keys={}))  # no key configured: only /health
    order = ["public", "user", "read", "write", "admin"]
    for (method, path), need in AUTH_CASES.items():
        anon = _request(c, method, path, items)
        wrong = _request(c, method, path, items, {"X-API-Key": "nope"})
        for key, scope in ((u1_token, "user"), (READ_KEY, "read"), (WRITE_KEY, "write"), (KEY, "admin")):
            r = _request(c, method, path, items, {"X-API-Key": key})
            expect = 200 if order.index(scope) >= order.index(need) else 403
            assert r.status_code == expect, (method, path, scope, r.text)
        if need == "public":
            assert anon.status_code == 200, (method, path, anon.text)
        else:
            assert anon.status_code == 401 and wrong.status_code == 401, (method, path)
            assert _request(locked, method, path, items, {"X-API-Key": ""}).status_code == 503
    spec = app.openapi()
    assert "APIKeyHeader" in spec["components"]["securitySchemes"]
    assert spec["paths"]["/items"]["post"]["security"] and spec["paths"]["/search"]["post"]["security"]
    assert "security" not in spec["paths"]["/health"]["get"]
    assert spec["paths"]["/fit"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/FitReport")


def test_llm_routes_have_their_own_rate_limit(make_engine, ml):
    eng = make_engine()
    items = [i.model_dump() for i in ml.items[:5]]
    eng.add_items(items)
    eng.add_events([{"user_id": "u1", "item_id": items[0]["id"], "timestamp": 0, "rating": 5}])
    c = TestClient(create_app(engine=eng, api_key=KEY, api_keys=SCOPED, llm_requests_per_minute=2))
    for (method, path), query in LLM_CASES.items():
        assert _request(c, method, path, items, query=query).status_code == 401  # anonymous callers never reach the LLM
    h = {"X-API-Key": READ_KEY}
    codes = [_request(c, m, p, items, h, q).status_code for (m, p), q in LLM_CASES.items() for _ in range(2)]
    assert codes.count(200) == 2 and codes.count(429) == 2
    r = _request(c, "POST", "/explain", items, h)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    # the limit is per key, and plain recommendations and reads are not counted
    assert _request(c, "POST", "/explain", items, {"X-API-Key": WRITE_KEY}).status_code == 200
    assert _request(c, "GET", "/users/{user_id}/recommendations", items, h, "?rerank=none").status_code == 200
    off = TestClient(create_app(engine=eng, api_key=KEY, llm_requests_per_minute=0))
    assert _request(off, "POST", "/explain", items, H).status_code == 429


def test_weak_keys_refused_at_start(make_engine):
    import pytest

    eng = make_engine()
    for weak in ("change-me", "changeme", "secret", "password", "test", "short-key-123", "change-me-change-me",
                 "aaaaaaaaaaaaaaaaaaaa", "secret-password-test"):
        with pytest.raises(ValueError, match="weak API key"):
            create_app(engine=eng, api_key=weak)
        with pytest.raises(ValueError, match="weak API key"):
            create_app(engine=eng, api_key=KEY, api_keys={weak: "read"})
    with pytest.raises(ValueError, match="scope"):
        create_app(engine=eng, api_key=KEY, api_keys={READ_KEY: "root"})
    assert create_app(engine=eng, api_key="dev", allow_weak_keys=True) is not None


def test_limits_and_errors(make_engine, ml):
    eng = make_engine()
    app = create_app(engine=eng, api_key=KEY, max_body_bytes=20_000)
    c = TestClient(app, headers=H)
    big = {"items": [{"id": str(i), "description": "x" * 5000} for i in range(10)]}
    r = c.post("/items", json=big)
    assert r.status_code == 413
    assert c.get("/users/u/recommendations?k=0").status_code == 422
    assert c.post("/search", json={"query": "x", "filters": {"year": {"between": 3}}}).status_code == 422
    assert c.post("/search", json={"query": "x", "filters": {"bad key!": 1}}).status_code == 422
    # found by the fuzzer: these used to reach Qdrant and fail there (500)
    assert c.post("/search", json={"query": "x", "filters": {"0.": 1}}).status_code == 422
    assert c.post("/search", json={"query": "x", "filters": {"year": 10**30}}).status_code == 422
    assert c.get("/items/nope").status_code == 404
    assert eng.stats()["items"] == 0  # nothing half-written by the refused request
    m = c.get("/metrics").text
    assert 'persona_rejected_requests_total{reason="too_large"} 1.0' in m


def test_api_refuses_server_side_image_paths(make_engine, ml, tmp_path):
    eng = make_engine()
    secret = tmp_path / "secret.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(secret)
    c = TestClient(create_app(engine=eng, api_key=KEY), headers=H)
    r = c.post("/items", json={"items": [{"id": "x", "title": "X", "image": str(secret)}]})
    assert r.status_code == 200 and r.json()["added"] == 1
    assert "local image paths are not accepted" in json.dumps(r.json()["errors"])
    assert c.get("/items/x").json()["has_image"] is False


def test_metrics_count_requests(make_engine, ml):
    eng = make_engine()
    c = TestClient(create_app(engine=eng, api_key=KEY), headers=H)
    c.post("/items", json={"items": [i.model_dump() for i in ml.items[:3]]})
    c.get("/users/nobody/profile")
    c.get("/users/nobody/profile")
    m = c.get("/metrics")
    assert m.headers["content-type"].startswith("text/plain")
    assert 'persona_http_requests_total{method="GET",route="/users/{user_id}/profile",status="404"} 2.0' in m.text
    assert 'persona_store_points{kind="items"} 3.0' in m.text
    assert "persona_http_request_seconds_bucket" in m.text


def test_admission_limit_answers_503_with_retry_after(make_engine, ml):
    """With one slot, a request arriving while a batch upsert runs is refused at once, not queued."""
    import asyncio

    import httpx

    eng = make_engine()
    _ = eng.text_encoder  # loaded before timing
    app = create_app(engine=eng, api_key=KEY, max_inflight=1)
    items = [i.model_dump() for i in ml.items[:400]]

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", headers=H) as c:
            slow = asyncio.create_task(c.post("/items", json={"items": items}))
            for _ in range(3000):  # wait for the event (the upsert holds the slot), not for a number of seconds
                m = (await c.get("/metrics")).text
                if "persona_inflight_requests 1.0" in m or slow.done():
                    break
                await asyncio.sleep(0.01)
            quick = await c.post("/search", json={"query": "toy"})
            return await slow, quick

    slow, quick = asyncio.run(go())
    assert slow.status_code == 200 and slow.json()["added"] == 400
    assert quick.status_code == 503 and quick.headers["Retry-After"] == "1"


def test_user_token_reads_only_its_own_user(make_engine, ml, capsys, monkeypatch):
    """Per-user read access: a token minted for u1 reads u1's data; other users' reads are 403 (before
    any lookup, so a token cannot probe which users exist), every write and admin route is 403, and an
    expired, forged or foreign-secret token is 401."""
    import time

    import pytest

    from services.cli import main
    from services.tokens import verify_user_token

    eng = make_engine()
    items = [i.model_dump() for i in ml.items[:8]]
    eng.add_items(items)
    eng.add_events([{"user_id": u, "item_id": items[n]["id"], "timestamp": n, "rating": 5} for u in ("u1", "u2") for n in range(3)])
    c = TestClient(create_app(engine=eng, api_key=KEY, token_secret=SECRET, llm_requests_per_minute=1))
    tok = {"X-API-Key": mint_user_token(SECRET, "u1")}
    item = items[5]["id"]

    assert c.get("/users/u1/profile", headers=tok).json()["user_id"] == "u1"
    assert len(c.get("/users/u1/recommendations?k=3", headers=tok).json()["items"]) == 3
    assert c.post("/search", json={"query": "toy", "user_id": "u1", "k": 2}, headers=tok).status_code == 200
    assert c.post("/search", json={"query": "toy", "k": 2}, headers=tok).status_code == 200  # not personalized
    assert c.get(f"/items/{item}", headers=tok).status_code == 200
    assert c.post("/explain", json={"user_id": "u1", "item_id": item}, headers=tok).status_code == 200

    for other in ("u2", "nobody"):  # cross-user reads: 403, whether or not the user exists
        assert c.get(f"/users/{other}/profile", headers=tok).status_code == 403
        assert c.get(f"/users/{other}/recommendations", headers=tok).status_code == 403
        assert c.post("/explain", json={"user_id": other, "item_id": item}, headers=tok).status_code == 403
        assert c.post("/search", json={"query": "toy", "user_id": other}, headers=tok).status_code == 403
    assert c.get("/users/u2/profile", headers=H).status_code == 200  # the admin key still reads everyone

    # no writes, not even for its own user; no metrics or dashboard (it shows every user)
    ev = {"events": [{"user_id": "u1", "item_id": item, "timestamp": 99, "rating": 1}]}
    assert c.post("/events", json=ev, headers=tok).status_code == 403
    assert c.post("/items", json={"items": items[:1]}, headers=tok).status_code == 403
    assert c.post("/users/u1/images", json={"seed": 0}, headers=tok).status_code == 403
    assert c.get("/metrics", headers=tok).status_code == 403
    assert c.get("/ui/", headers=tok).status_code == 403
    assert eng.stats()["events"] == 6

    # the LLM quota is per user, not per token: a fresh token for u1 does not get a fresh quota
    again = {"X-API-Key": mint_user_token(SECRET, "u1")}
    assert c.post("/explain", json={"user_id": "u1", "item_id": item}, headers=again).status_code == 429

    good = tok["X-API-Key"]
    prefix, user, exp, sig = good.split(".")
    u2_part = mint_user_token(SECRET, "u2").split(".")[1]
    refused = {
        "expired": mint_user_token(SECRET, "u1", ttl_s=60, now=time.time() - 120),
        "other user, u1's signature": ".".join((prefix, u2_part, exp, sig)),
        "later expiry, old signature": ".".join((prefix, user, str(int(exp) + 86400), sig)),
        "other secret": mint_user_token("ts-other-secret-9d8c7b6a5f", "u1"),
        "no signature": ".".join((prefix, user, exp, "")),
        "truncated": good[:-4],
    }
    for why, bad in refused.items():
        r = c.get("/users/u1/profile", headers={"X-API-Key": bad})
        assert r.status_code == 401, why
        assert SECRET not in r.text
    assert c.get("/users/u2/profile", headers={"X-API-Key": refused["other user, u1's signature"]}).status_code == 401
    # a server without a token secret accepts no tokens
    assert TestClient(create_app(engine=eng, api_key=KEY)).get("/users/u1/profile", headers=tok).status_code == 401

    for weak in ("change-me", "secret", "short"):
        with pytest.raises(ValueError, match="weak token secret"):
            create_app(engine=eng, api_key=KEY, token_secret=weak)
    with pytest.raises(ValueError, match="differ"):
        create_app(engine=eng, api_key=KEY, token_secret=KEY)

    monkeypatch.setenv("PERSONA_API_TOKEN_SECRET", SECRET)  # `persona user-token u1`
    assert main(["user-token", "u1", "--ttl", "600"]) == 0
    minted = capsys.readouterr().out.strip()
    assert verify_user_token(SECRET, minted) == "u1" and int(minted.split(".")[2]) <= time.time() + 600
    monkeypatch.delenv("PERSONA_API_TOKEN_SECRET")
    assert main(["user-token", "u1"]) == 2
