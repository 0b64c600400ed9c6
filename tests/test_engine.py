"""End to end on real ml-100k data with the real encoder and the real Qdrant edge engine."""

import pytest

from engine import Engine, InvalidInputError, NotFoundError, Recommendations
from engine.components import Components


def test_recommend_unseen_with_reasons(ml_engine, ml):
    recs = ml_engine.recommend("1", k=10)
    assert isinstance(recs, Recommendations) and len(recs.items) == 10
    seen = {e.item_id for e in ml.user_events("1")}
    assert not seen & {r.item_id for r in recs.items}
    assert len({r.item_id for r in recs.items}) == 10
    for r in recs.items:
        assert r.reason and r.reason.startswith("Because you liked") and r.because_of
        assert set(r.because_of) <= seen  # grounded in the user's own history
    assert [r.score for r in recs.items] == sorted((r.score for r in recs.items), reverse=True)


def test_filters(ml_engine):
    recs = ml_engine.recommend("7", k=10, filters={"genres": "Horror"})
    assert recs.items
    for r in recs.items:
        assert "Horror" in ml_engine.item(r.item_id)["attributes"]["genres"]
    recs = ml_engine.recommend("7", k=5, filters={"year": {"gte": 1990, "lt": 1995}})
    assert all(1990 <= ml_engine.item(r.item_id)["attributes"]["year"] < 1995 for r in recs.items)
    with pytest.raises(InvalidInputError):
        ml_engine.recommend("7", filters={"year": {"approx": 3}})


def test_cold_start_popular_and_diverse(ml_engine):
    recs = ml_engine.recommend("no-such-user", k=10)
    assert recs.strategy == "popular" and len(recs.items) == 10
    first_genres = [ml_engine.item(r.item_id)["attributes"]["genres"][0] for r in recs.items]
    assert len(set(first_genres)) >= 4  # not ten dramas
    assert "Star Wars (1977)" in [r.title for r in recs.items]  # the most rated movie in ml-100k


def test_one_event_item_to_item(ml_engine, make_engine, tmp_path):
    ml_engine.add_events([{"user_id": "newbie", "item_id": "50", "timestamp": 1e9, "rating": 5}])
    recs = ml_engine.recommend("newbie", k=5)
    assert recs.strategy == "item-to-item" and "50" not in [r.item_id for r in recs.items]
    assert all("Star Wars" in (r.reason or "") for r in recs.items)


def test_unknown_ids_are_clear(ml_engine):
    with pytest.raises(NotFoundError, match="unknown user"):
        ml_engine.profile("no-such-user")
    with pytest.raises(NotFoundError, match="unknown item"):
        ml_engine.item("no-such-item")
    rep = ml_engine.add_events([{"user_id": "1", "item_id": "no-such-item", "timestamp": 1.0}, {"user_id": "1"}])
    assert rep.failed == 2 and rep.added == 0 and any("unknown item" in e for e in rep.errors)
    with pytest.raises(InvalidInputError):
        ml_engine.recommend("1", k=0)


def test_events_idempotent(ml_engine):
    before = ml_engine.stats()["events"]
    ev = {"user_id": "1", "item_id": "1", "timestamp": 874965758.0, "rating": 5}  # already in ml-100k
    rep = ml_engine.add_events([ev, ev])
    assert rep.added == 0 and rep.duplicates == 2
    assert ml_engine.stats()["events"] == before


def test_history_reads_back_the_events_as_written(ml_items_path, make_engine, tmp_path):
    """The history is built from stored payloads without validating them again: the same events, fields and fields set
    as ``Event.model_construct`` gives, usable like any validated event. Its own store: the raw write below is an
    event that ``fit()`` would skip (extra key), so it must not reach the session's shared store."""
    from engine.store import Point, point_id
    from engine.types import Event
    from tests.conftest import copy_store

    eng = make_engine(copy_store(ml_items_path, tmp_path / "store"))
    evs = [Event(user_id="reader", item_id="50", timestamp=1e9, rating=4.5, kind="view", text="loved the score"),
           Event(user_id="reader", item_id="1", timestamp=1e9 + 5)]
    assert eng.add_events([e.model_dump() for e in evs]).added == 2
    got = eng.history("reader")
    assert got == evs and [type(e) for e in got] == [Event, Event] and [repr(g) for g in got] == [repr(e) for e in evs]
    for g, e in zip(got, evs):
        assert g.model_dump() == e.model_dump() and g.model_fields_set == set(Event.model_fields)  # a full payload
        assert g.model_copy(update={"rating": 1.0}).rating == 1.0 and Event.model_validate(g.model_dump()) == g
    # a payload written without some optional fields and with a key that is no field (by an older version): defaults
    # and fields set as model_construct gives them
    partial = {"user_id": "reader", "item_id": "2", "timestamp": 1e9 + 9, "rating": 3.0, "old_field": 1}
    eng.store.upsert(eng.events_col, [Point(point_id("event", "reader-old"), {}, partial)])
    old = eng.history("reader")[-1]
    built = Event.model_construct(**partial)
    assert old == built and repr(old) == repr(built) and old.kind == "rating" and old.text is None
    assert old.model_fields_set == built.model_fields_set == {"user_id", "item_id", "timestamp", "rating"}


def test_search_personalized(ml_engine):
    plain = ml_engine.search("space adventure with aliens", k=10)
    assert plain and plain[0].personal is None
    titles = [h.title for h in plain]
    assert any("Alien" in t or "Star" in t for t in titles[:5])
    a = ml_engine.search("a funny movie", user_id="1", k=10)
    b = ml_engine.search("a funny movie", user_id="7", k=10)
    assert all(h.personal is not None for h in a)
    assert [h.item_id for h in a] != [h.item_id for h in b]
    with pytest.raises(InvalidInputError):
        ml_engine.search("  ")


def test_data_survives_reopen(ml_engine_path, make_engine, text_encoder):
    first = make_engine(ml_engine_path)
    r1 = first.recommend("13", k=10)
    s1 = first.stats()
    first.close()
    again = Engine.open(ml_engine_path, {"clip": {"enabled": False}, "llm": {"backend": "none"}}, components=Components(text_encoder=text_encoder))
    try:
        assert again.stats() == s1
        assert [r.item_id for r in again.recommend("13", k=10).items] == [r.item_id for r in r1.items]
    finally:
        again.close()


def test_mmr_diversifies(ml_engine_path, make_engine):
    first = make_engine(ml_engine_path)
    plain = first.recommend("181", k=10)
    from engine import ConflictError

    with pytest.raises(ConflictError, match="already open"):
        make_engine(ml_engine_path).stats()  # one engine per path: a clear error, not a corrupted store
    first.close()
    diverse_eng = make_engine(ml_engine_path, retrieval={"mmr_lambda": 0.3})
    diverse = diverse_eng.recommend("181", k=10)
    assert diverse.strategy.endswith("+mmr") and len({r.item_id for r in diverse.items}) == 10
    import numpy as np

    def redundancy(recs):
        """Max pairwise similarity and mean nearest-neighbour similarity inside the list (what MMR reduces)."""
        hits = diverse_eng.catalog.hits([r.item_id for r in recs.items], with_vectors=True)
        v = np.stack([hits[r.item_id].vectors["text"] for r in recs.items])
        s = v @ v.T
        np.fill_diagonal(s, -1.0)
        return s.max(), s.max(axis=1).mean()

    (p_max, p_nn), (d_max, d_nn) = redundancy(plain), redundancy(diverse)
    assert d_max < p_max and d_nn < p_nn
