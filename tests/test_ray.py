"""Batch work on Ray (extra ``ray``): the Ray Data paths give exactly the in-process results.

One local Ray instance with 2 CPUs for the module; small data (60 ml-100k items; 120 users' events
on the indexed ml-100k catalog)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ray.data")

from engine.batch import RayBatch  # noqa: E402


@pytest.fixture(scope="module")
def ray_batch():
    with RayBatch(num_cpus=2, actors=2, batch_size=32) as rb:
        yield rb


def _points(eng):
    out = {}
    for h in eng.store.scroll(eng.items_col, with_vectors=True):
        p = {k: v for k, v in h.payload.items() if k != "indexed_at"}
        out[h.id] = (p, np.asarray(h.vectors["text"], np.float32))
    return out


def test_ingest_on_ray_matches_in_process(ray_batch, make_engine, ml, tmp_path):
    items = ml.items[:60]
    local = make_engine(tmp_path / "local")
    on_ray = make_engine(tmp_path / "ray")
    r1 = local.add_items(items)
    r2 = on_ray.add_items(items, ray=ray_batch)
    assert (r1.added, r1.failed) == (r2.added, r2.failed) == (60, 0)
    a, b = _points(local), _points(on_ray)
    assert a.keys() == b.keys() and len(a) == 60
    for pid in a:
        assert a[pid][0] == b[pid][0]
        np.testing.assert_allclose(a[pid][1], b[pid][1], atol=1e-5)  # same model in the actors; float32 rounding across processes


def test_fit_features_on_ray_match_in_process(ray_batch, make_engine, ml, ml_items_path, tmp_path):
    from tests.conftest import copy_store

    users = sorted({e.user_id for e in ml.events}, key=int)[:120]
    keep = set(users)
    events = [e for e in ml.events if e.user_id in keep]
    calls = []
    real = ray_batch.map_chunks
    ray_batch.map_chunks = lambda fn, chunks, shared: calls.append(len(chunks)) or real(fn, chunks, shared)  # counts, then runs on Ray
    models = []
    for name, rb in (("local", None), ("ray", ray_batch)):
        eng = make_engine(copy_store(ml_items_path, tmp_path / name))
        eng.add_events(events)
        rep = eng.fit(ray=rb)
        models.append((rep, eng.learned.current()))
    ray_batch.map_chunks = real
    assert calls and min(calls) >= 2, "the training rows were not computed on Ray"
    (rep_a, ma), (rep_b, mb) = models
    assert ma.info["train_rows"] == mb.info["train_rows"] > 0
    assert ma.info["data_hash"] == mb.info["data_hash"]
    assert ma.ranker.to_text() == mb.ranker.to_text()  # identical rows -> identical deterministic LightGBM model
    u = users[0]
    assert [i for i, _, _ in ma.recommend(events_of(events, u), k=10)] == [i for i, _, _ in mb.recommend(events_of(events, u), k=10)]


def events_of(events, user):
    return [e for e in events if e.user_id == user]


@pytest.mark.full  # 339 s on 2 busy cores (three model copies generate): make test-full runs it
@pytest.mark.slow
def test_profile_summaries_on_ray_actors_match_in_process(ray_batch, make_engine, ml, tmp_path, local_llm):
    """The recurrent summary steps' LLM calls on a pool of two Ray actors (each loads the packaged
    Gemma itself) give the same stored summaries as the in-process model, one prompt per call on
    both sides so padding cannot change the numbers."""
    users = ["1", "2"]
    ids = {e.item_id for u in users for e in ml.user_events(u)[:12]}
    items = [i for i in ml.items if i.id in ids]
    events = [e for u in users for e in ml.user_events(u)[:12]]
    from engine.sections import PACKAGED_GEMMA

    cfg = {"profile": {"max_blocks_per_update": 1}, "llm": {"model": PACKAGED_GEMMA, "batch_size": 1}}
    local, on_ray = make_engine(tmp_path / "local", llm_obj=local_llm, **cfg), make_engine(tmp_path / "ray", llm_obj=local_llm, **cfg)
    for eng in (local, on_ray):
        eng.add_items(items)
        eng.add_events(events)
    for u in users:  # one prompt per generate call, as each actor gets one
        assert local.update_profiles([u])["llm_error"] is None
    st = on_ray.update_profiles(users, ray=ray_batch)
    assert st["llm_error"] is None and st["llm_batches"] == 1 and st["blocks"] == 2
    for u in users:
        a, b = local.profile(u), on_ray.profile(u)
        assert b.versions[-1].prompt == "preference_update@v2"  # the model answered: not the computed fallback
        assert (a.summary, a.structured, a.summary_source) == (b.summary, b.structured, b.summary_source)


def test_profiles_on_ray_fall_back_when_the_actors_cannot_load_the_model(ray_batch, make_engine, ml, tmp_path):
    """An LLM that cannot load on the actors: the update still stores every user's computed
    summary, flagged, and reports the error (nothing lost, nothing half-written)."""
    users = ["1", "2"]
    events = [e for u in users for e in ml.user_events(u)[:8]]
    ids = {e.item_id for e in events}
    eng = make_engine(tmp_path / "s", llm={"backend": "transformers", "model": str(tmp_path / "no-such-model")})
    eng.add_items([i for i in ml.items if i.id in ids])
    eng.add_events(events)
    st = eng.update_profiles(users, ray=ray_batch)
    assert st["llm_error"] and "Ray" in st["llm_error"]
    for u in users:
        p = eng.profile(u)
        assert p.summary_source == "extractive" and p.structured["fallback"] == "LLM unavailable" and p.summary.startswith("Likes ")
