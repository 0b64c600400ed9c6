from fastapi.testclient import TestClient

from services.api import create_app


def test_api_roundtrip_and_auth(make_engine, ml):
    eng = make_engine()
    app = create_app(engine=eng, api_key="secret")
    c = TestClient(app)
    items = [i.model_dump() for i in ml.items[:60]]
    assert c.post("/items", json={"items": items}).status_code == 401
    assert c.post("/items", json={"items": items}, headers={"X-API-Key": "wrong"}).status_code == 401
    r = c.post("/items", json={"items": items}, headers={"X-API-Key": "secret"})
    assert r.status_code == 200 and r.json()["added"] == 60
    ev = [{"user_id": "u1", "item_id": i["id"], "timestamp": n, "rating": 5} for n, i in enumerate(items[:10])]
    assert c.post("/events", json={"events": ev}).status_code == 401
    assert c.post("/events", json={"events": ev}, headers={"X-API-Key": "secret"}).json()["added"] == 10
    recs = c.get("/users/u1/recommendations?k=5").json()
    assert len(recs["items"]) == 5
    assert c.get("/users/nobody/profile").status_code == 404
    assert c.get("/users/u1/recommendations?k=100000").status_code == 422
    assert c.post("/explain", json={"user_id": "u1", "item_id": "nope"}).status_code == 404
    assert c.post("/search", json={"query": "toy", "user_id": "u1", "k": 3}).status_code == 200
    assert c.get("/health").json()["items"] == 60
