"""Bad input that used to be accepted and then broke the store for everyone (or leaked a file): each case gets a clear
per-record error or a documented normalisation, and the store keeps fitting, searching and recommending."""

from __future__ import annotations

import json
import math
import threading

import pytest

from engine import Engine, Event, InvalidInputError, Item, NotFoundError
from engine.store import Point, point_id

FAST_FIT = {"fit": {"sequence_epochs": 0, "threads": 1}}


def _catalog(n: int = 12) -> list[dict]:
    genres = ["Comedy", "Drama", "Action"]
    return [{"id": f"i{k}", "title": f"Film {k}", "attributes": {"genres": [genres[k % 3]], "year": 1990 + k}} for k in range(n)]


def _events(users: int = 6, n: int = 12) -> list[Event]:
    return [Event(user_id=f"u{u}", item_id=f"i{(u + k) % n}", timestamp=1_000_000 + 100 * k, rating=1 + (u + k) % 5)
            for u in range(users) for k in range(6)]


def _nested(depth: int):
    v: object = "x"
    for _ in range(depth):
        v = [v]
    return v


def test_deep_or_huge_attributes_refuse_or_drop_and_the_store_keeps_working(make_engine):
    eng = make_engine(**FAST_FIT)
    assert eng.add_items(_catalog()).added == 12
    rep = eng.add_items([
        {"id": "deep", "title": "Deep", "attributes": {"a": _nested(200)}},
        {"id": "ok-depth", "title": "Eight levels", "attributes": {"a": _nested(8)}},
        {"id": "bigint", "title": "Big", "attributes": {"x": 2**64, "year": 10**30, "n": 5, "flag": True}},
    ])
    errs = {(e.item_id, e.fatal): e.error for e in rep.errors}
    assert rep.failed == 1 and "nested more than 8 levels" in errs[("deep", True)]
    assert "beyond 64-bit" in errs[("bigint", False)]
    assert eng.item("bigint")["attributes"] == {"n": 5, "flag": True}  # never a silently rounded float
    with pytest.raises(NotFoundError):
        eng.item("deep")
    eng.add_events(_events() + [Event(user_id="u0", item_id="ok-depth", timestamp=2e6)])
    assert eng.fit().items >= 12
    assert eng.search("Film", k=3) and eng.recommend("u1", k=3).items


def test_genres_and_people_of_any_shape_are_normalised_and_read_by_every_stage(make_engine):
    eng = make_engine(**FAST_FIT)
    odd = [
        {"id": "int-genre", "title": "Int genre", "attributes": {"genres": 5, "director": 1972}},
        {"id": "mixed", "title": "Mixed", "attributes": {"genres": ["Comedy", 1, {"x": 1}], "cast": ["A", 2, ["B"]]}},
        {"id": "piped", "title": "Piped", "attributes": {"genres": "Comedy|Drama", "director": {"name": "X"}}},
    ]
    rep = eng.add_items(_catalog() + odd)
    assert rep.failed == 0
    stored = {i: eng.item(i)["attributes"] for i in ("int-genre", "mixed", "piped")}
    assert stored["int-genre"] == {"genres": ["5"], "director": "1972"} or stored["int-genre"] == {"genres": ["5"], "director": ["1972"]}
    assert stored["mixed"] == {"genres": ["Comedy", "1"], "cast": ["A", "2"]}
    assert stored["piped"] == {"genres": ["Comedy", "Drama"]}
    warned = {e.item_id for e in rep.errors if not e.fatal}
    assert warned == {"int-genre", "mixed", "piped"}
    evs = _events() + [Event(user_id=f"u{u}", item_id=i, timestamp=3e6 + u, rating=4) for u in range(3) for i in ("int-genre", "mixed", "piped")]
    eng.add_events(evs)
    eng.update_profiles([f"u{u}" for u in range(6)], use_llm=False)
    assert eng.fit().items == 15
    assert eng.recommend("u0", k=5).items
    assert [h.item_id for h in eng.search("Comedy", k=15, filters={"genres": "Comedy"})]  # the split string matches a filter


def test_event_times_and_ratings_out_of_range_are_refused_with_a_hint(make_engine):
    eng = make_engine()
    eng.add_items(_catalog())
    rep = eng.add_events([
        {"user_id": "u", "item_id": "i1", "timestamp": 1.7e12},
        {"user_id": "u", "item_id": "i1", "timestamp": 1e308},
        {"user_id": "u", "item_id": "i2", "timestamp": -1e308},
        {"user_id": "u", "item_id": "i3", "timestamp": 1.7e9, "rating": 1e300},
        {"user_id": "u", "item_id": "i4", "timestamp": 1.7e9, "rating": 4},
    ])
    assert rep.added == 1 and rep.failed == 4
    assert "milliseconds" in rep.errors[0] and "seconds since 1970" in rep.errors[1]
    assert Event(user_id="u", item_id="i", timestamp=-86400 * 365 * 100).timestamp < 0  # 1870: history is fine


def test_model_instances_changed_after_construction_are_validated_again(make_engine):
    eng = make_engine()
    eng.add_items(_catalog())
    ev = Event(user_id="u1", item_id="i1", timestamp=10)
    ev.timestamp = "yesterday"  # pydantic models do not check assignments
    blank = Event(user_id="u1", item_id="i2", timestamp=11)
    blank.user_id = ""
    rep = eng.add_events([ev, blank, Event(user_id="u1", item_id="i3", timestamp=12)])
    assert rep.added == 1 and rep.failed == 2
    assert [e.item_id for e in eng.history("u1")] == ["i3"]
    it = Item(id="z", title="Z")
    it.id = ""
    rep = eng.add_items([it])
    assert rep.failed == 1 and rep.added == 0


def test_fit_skips_stored_events_that_fail_todays_checks(make_engine, caplog):
    """A store written before the time bounds may hold an absurd time: the fit leaves it out (logged) instead of failing."""
    eng = make_engine(**FAST_FIT)
    eng.add_items(_catalog())
    eng.add_events(_events())
    bad = Event.model_construct(user_id="u0", item_id="i5", timestamp=1e308, kind="rating", rating=3.0, text=None, id=None)
    eng.store.upsert(eng.events_col, [Point(point_id("event", "legacy-bad"), {}, bad.model_dump())])
    with caplog.at_level("WARNING", logger="engine.events"):
        rep = eng.fit()
    assert rep.events == len(_events()) and "skipped 1 stored events" in caplog.text


def test_an_unreadable_fitted_model_falls_back_to_the_fusion_flagged(make_engine, caplog):
    eng = make_engine(**FAST_FIT)
    eng.add_items(_catalog())
    eng.add_events(_events())
    rep = eng.fit()
    assert eng.recommend("u0", k=3).model_version == rep.version
    (eng.learned.root / rep.version / "meta.json").write_text("{not json")
    eng.close()
    again = make_engine(path=eng.settings.path, **FAST_FIT)
    with caplog.at_level("ERROR", logger="engine.fitting"):
        recs = again.recommend("u0", k=3)
    assert recs.model_version is None and recs.items and "cannot be loaded" in caplog.text
    assert again.fit().version  # a new fit replaces it
    assert again.recommend("u0", k=3).model_version is not None


def test_two_fits_at_once_both_finish_and_one_model_serves(make_engine, monkeypatch):
    """Two fits of the same data in the same second (two POST /fit) have one version name: each saves into its own
    temporary folder, so neither moves or deletes the other's files (both wait in ``save`` until the other is there)."""
    from engine.learned import PersonaModel

    eng = make_engine(**FAST_FIT)
    eng.add_items(_catalog())
    eng.add_events(_events())
    fit_model = PersonaModel.fit

    def same_version(*a, **kw):
        m = fit_model(*a, **kw)
        m.info["version"] = "2-samedata0000-1800000000"  # what two fits of one store in one second are named
        return m

    monkeypatch.setattr(PersonaModel, "fit", same_version)
    both, save = threading.Barrier(2, timeout=60), PersonaModel.save

    def save_together(self, d):
        both.wait()
        return save(self, d)

    monkeypatch.setattr(PersonaModel, "save", save_together)
    out: dict[int, object] = {}

    def fit(k: int) -> None:
        try:
            out[k] = eng.fit().version
        except Exception as e:  # the test reports it below
            out[k] = e

    threads = [threading.Thread(target=fit, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(v, str) for v in out.values()), out
    assert eng.recommend("u0", k=3).model_version in set(out.values())
    assert not [p for p in eng.learned.root.iterdir() if p.name.startswith(".tmp-")]


def test_a_refused_local_image_path_is_not_stored_nor_served(make_engine, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from services.api import create_app

    secret = tmp_path / "outside" / "private.png"
    secret.parent.mkdir()
    secret.write_bytes(b"TOP-SECRET-NOT-AN-IMAGE")
    eng = make_engine()
    key = "bad-input-test-key-3b9e71c0a5d2"
    with TestClient(create_app(engine=eng, api_key=key), headers={"X-API-Key": key}) as c:
        r = c.post("/items", json={"items": [{"id": "x", "title": "X", "image": str(secret)}, {"id": "u", "title": "U", "image": "https://example.org/p.jpg"}]})
        assert r.status_code == 200
        assert eng.item("x").get("image") is None  # the API never reads server files for a client, nor keeps their paths
        assert c.get("/ui/posters/x").status_code == 404
    assert eng.item("u")["image"] == "https://example.org/p.jpg"  # a URL the browser loads itself stays


def test_catalog_ids_cannot_name_images_outside_the_image_folder_and_bad_json_is_clear(tmp_path):
    from indexers.catalog import read_catalog

    imgs, out = tmp_path / "imgs", tmp_path / "outside"
    imgs.mkdir()
    out.mkdir()
    (out / "secret.png").write_bytes(b"x")
    (imgs / "good.png").write_bytes(b"x")
    cat = tmp_path / "cat.jsonl"
    cat.write_text("\n".join(json.dumps(r) for r in [{"id": "../outside/secret"}, {"id": str(out / "secret")}, {"id": "good"}]))
    recs = {r["id"]: r for r in read_catalog(cat, image_dir=imgs)}
    assert "image" not in recs["../outside/secret"] and "image" not in recs[str(out / "secret")]
    assert recs["good"]["image"].endswith("good.png")
    for text, why in (("{bad json", "not valid JSON"), ("5", "expected a list"), ('{"items": 5}', "expected a list")):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(InvalidInputError, match=why):
            list(read_catalog(bad))


@pytest.mark.parametrize("table, expected", [
    ({"Yes": -0.1, "No": -2.4}, pytest.approx(1 / (1 + math.exp(-2.3)))),
    ({"Yes": -1000.0, "No": -1001.0}, pytest.approx(1 / (1 + math.exp(-1.0)))),  # shifted: no underflow to 0/0
    ({"Yes": 1000.0, "No": -1.0}, None),  # above 0: not a log-probability
    ({"Yes": None}, None), ({"Yes": "x"}, None), ({"Yes": float("nan")}, None), ({"Maybe": -0.1}, None),
])
def test_yes_probability_reads_garbage_tables_as_no_answer(table, expected):
    from engine.llm import yes_probability

    assert yes_probability(table) == expected


def test_vllm_garbage_answers_give_no_score_not_an_error():
    """A server that answers with odd logprob tables or usage fields: each candidate without a readable table scores
    None (the ranker's order is kept, flagged), and the answer is not lost over an odd usage count."""
    import http.server

    from engine.config import LLMConfig
    from engine.llm.vllm import VLLMClient

    tables = [{"Yes": 1000.0}, None, [["Yes", -0.1]], {"Yes": "x"}, {"Yes": -0.2, "No": -1.8}]

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, obj):
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._send({"data": [{"id": "served"}]})

        def do_POST(self):
            n = len(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["prompt"])
            choices = [{"index": k, "text": "", "logprobs": {"top_logprobs": [tables[k % len(tables)]]}} for k in range(n)]
            self._send({"choices": choices, "usage": {"prompt_tokens": "n/a", "completion_tokens": None}})

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        llm = VLLMClient(LLMConfig(backend="vllm", url=f"http://127.0.0.1:{srv.server_address[1]}/v1"))
        out = llm.yes_probabilities([f"p{k}" for k in range(len(tables))])
        assert out[:4] == [None, None, None, None] and out[4] == pytest.approx(1 / (1 + math.exp(-1.6)))
        assert llm.generate(["x"] * 5, 1) == [""] * 5  # the odd usage field does not fail an answer
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=5)


def test_item_model_accepts_no_deep_attributes_through_the_sdk(make_engine):
    eng: Engine = make_engine()
    rep = eng.add_items([Item(id="d", title="D", attributes={"a": _nested(50)})])
    assert rep.failed == 1 and "nested" in rep.errors[0].error
    rep = eng.add_items([{"id": "l", "attributes": [1, 2]}, {"id": "s", "attributes": "abc"}, {"id": "ok"}])
    assert rep.added == 1 and rep.failed == 2 and all("attributes must be an object" in e.error for e in rep.errors)
