"""Deleting items (a product withdrawn) and users (a user's right to erasure) through the SDK and the API."""

from __future__ import annotations

import pytest

from engine import DeleteReport, Event, NotFoundError

FAST_FIT = {"fit": {"sequence_epochs": 0, "threads": 1}}


BACKENDS = pytest.mark.parametrize("backend", ["edge", "qdrant-client"])


def _store(make_engine, backend: str = "edge"):
    eng = make_engine(**FAST_FIT, **({"qdrant_url": "local"} if backend == "qdrant-client" else {}))
    eng.add_items([{"id": f"i{k}", "title": f"Film {k}", "attributes": {"genres": [["Comedy", "Drama"][k % 2]]}} for k in range(15)])
    eng.add_events([Event(user_id=f"u{u}", item_id=f"i{(u + k) % 15}", timestamp=1_000_000 + 60 * k, rating=4)
                    for u in range(8) for k in range(7)])
    return eng


@BACKENDS
def test_deleted_items_leave_lists_histories_and_counts_at_once_and_the_next_fit(make_engine, backend):
    eng = _store(make_engine, backend)
    eng.fit()
    top = [r.item_id for r in eng.recommend("u0", k=5).items]
    gone = top[:2]
    before = eng.stats()
    rep = eng.delete_items([*gone, "never-there"])
    assert rep == DeleteReport(items=2, events=rep.events, not_found=["never-there"]) and rep.events > 0
    assert eng.stats()["items"] == before["items"] - 2 and eng.stats()["events"] == before["events"] - rep.events
    for g in gone:
        with pytest.raises(NotFoundError):
            eng.item(g)
    # the fitted model still knows them, but the served list does not show them (and is still full)
    after = eng.recommend("u0", k=5)
    assert after.model_version is not None and len(after.items) == 5 and not set(gone) & {r.item_id for r in after.items}
    assert not set(gone) & {e.item_id for u in range(8) for e in eng.history(f"u{u}")}
    assert not set(gone) & {r.item_id for r in eng.search("Film", k=15)}
    assert len(eng.fit().info) and not set(gone) & set(eng.learned.current().item_ids)
    assert eng.delete_items(gone) == DeleteReport(not_found=sorted(gone))  # idempotent


@BACKENDS
def test_a_deleted_user_is_gone_from_histories_profiles_and_popularity(make_engine, backend):
    eng = _store(make_engine, backend)
    eng.update_profiles(None, use_llm=False)
    eng.fit()
    touched = {e.item_id for e in eng.history("u3")}
    pop = {i: eng.item(i)["popularity"] for i in touched}
    rep = eng.delete_user("u3")
    assert rep.users == 1 and rep.events == 7 and rep.not_found == []
    assert eng.history("u3") == []
    with pytest.raises(NotFoundError):
        eng.profile("u3")
    assert {i: eng.item(i)["popularity"] for i in touched} == {i: p - 1 for i, p in pop.items()}
    assert eng.recommend("u3", k=3).model_version is None  # starts cold, like any unknown user
    assert eng.delete_user("u3") == DeleteReport(not_found=["u3"])
    assert eng.fit().users == 7


def test_delete_routes_need_their_scope_and_report(make_engine):
    from fastapi.testclient import TestClient

    from services.api import create_app

    eng = _store(make_engine)
    admin, write = "pk-del-7f3a9c2e5b1d4e6f", "wk-del-9f8e7d6c5b4a3f2e"
    c = TestClient(create_app(engine=eng, api_key=admin, api_keys={write: "write"}))
    assert c.delete("/items/i1", headers={"X-API-Key": write}).json() == {"items": 1, "users": 0, "events": 2, "not_found": []}
    assert c.delete("/users/u2", headers={"X-API-Key": write}).status_code == 403
    r = c.delete("/users/u2", headers={"X-API-Key": admin})
    assert r.status_code == 200 and r.json()["users"] == 1 and c.get("/users/u2/profile", headers={"X-API-Key": admin}).status_code == 404


def test_cli_delete_prints_the_report(make_engine, tmp_path, capsys):
    import json

    from services.cli import main

    eng = _store(make_engine)
    path = eng.settings.path
    eng.close()
    assert main(["--path", str(path), "delete", "items", "i1", "nope"]) == 0
    assert json.loads(capsys.readouterr().out) == {"items": 1, "users": 0, "events": 2, "not_found": ["nope"]}
    assert main(["--path", str(path), "delete", "user", "u2"]) == 0
    assert json.loads(capsys.readouterr().out)["users"] == 1
    with pytest.raises(SystemExit):
        main(["--path", str(path), "delete", "user", "u3", "u4"])


def test_a_string_is_not_a_list_of_ids(make_engine):
    from engine import InvalidInputError

    eng = _store(make_engine)
    with pytest.raises(InvalidInputError, match="list of ids"):
        eng.delete_items("i12")  # would have deleted i1 and i2
    assert eng.stats()["items"] == 15


def test_rank_and_long_lists_after_many_deletes_before_a_refit(make_engine):
    """A fitted model still ranks deleted items until its next fit: rank() puts them last (-inf), and recommend() keeps
    its lists full however many of its favourites went."""
    eng = make_engine(**FAST_FIT)
    eng.add_items([{"id": f"i{k}", "title": f"Film {k}"} for k in range(60)])
    eng.add_events([Event(user_id=f"u{u}", item_id=f"i{(3 * u + k) % 60}", timestamp=1_000_000 + 60 * k, rating=4)
                    for u in range(20) for k in range(8)])
    eng.fit()
    top = [r.item_id for r in eng.recommend("u0", k=20).items]
    eng.delete_items(top[:15])
    ranked = eng.rank("u0", [top[0], top[16]])
    assert [r.item_id for r in ranked] == [top[16], top[0]] and ranked[1].score == float("-inf")
    after = eng.recommend("u0", k=20)
    assert after.model_version is not None and len(after.items) == 20 and not set(top[:15]) & {r.item_id for r in after.items}
    eng.add_items([{"id": top[0], "title": "Back again"}])  # written again: the model may show it again
    assert top[0] not in eng.catalog.deleted


def test_delete_user_waits_for_a_running_profile_update(make_engine, monkeypatch):
    """A profile update reads histories first and writes every user's point at the end: an erasure in between must not
    be undone by that write, so it waits for the update and then removes what the update wrote."""
    import threading

    eng = _store(make_engine)
    started, go, update = threading.Event(), threading.Event(), eng.profiles.update

    def slow_update(*a, **kw):
        started.set()
        go.wait(30)
        return update(*a, **kw)

    monkeypatch.setattr(eng.profiles, "update", slow_update)
    t = threading.Thread(target=eng.update_profiles, args=(["u3"],), kwargs={"use_llm": False})
    t.start()
    assert started.wait(30)
    out = {}
    d = threading.Thread(target=lambda: out.setdefault("rep", eng.delete_user("u3")))
    d.start()
    d.join(0.5)
    assert d.is_alive()  # waiting for the update
    go.set()
    t.join(30)
    d.join(30)
    assert out["rep"].users == 1 and eng.history("u3") == []
    with pytest.raises(NotFoundError):
        eng.profile("u3")
