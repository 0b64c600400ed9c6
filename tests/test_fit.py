"""Engine.fit() and the learned two-stage path through the public SDK, on the real ml-100k store."""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest

from engine import Engine
from engine.components import Components
from tests.conftest import NO_CLIP, copy_store


@pytest.fixture(scope="module")
def fitted_path(ml_engine_path, tmp_path_factory, text_encoder):
    """A copy of the full ml-100k store with a fitted model (fit runs once for this module)."""
    path = copy_store(ml_engine_path, tmp_path_factory.mktemp("fitted") / "store")
    with Engine.open(path, NO_CLIP, components=Components(text_encoder=text_encoder)) as eng:
        rep = eng.fit()
    assert rep.users >= 943 and rep.events == eng_events(path, text_encoder) and rep.items >= 1600
    assert (path / "models" / "CURRENT").read_text() == rep.version and (path / "models" / rep.version / "ranker.txt").exists()
    return path, rep


def eng_events(path, text_encoder) -> int:
    with Engine.open(path, NO_CLIP, components=Components(text_encoder=text_encoder)) as eng:
        return eng.stats()["events"]


@pytest.fixture
def fitted(fitted_path, make_engine):
    path, rep = fitted_path
    return make_engine(path), rep


def test_recommend_uses_the_fitted_model_with_grounded_varied_reasons(fitted, ml):
    eng, rep = fitted
    for uid in ("1", "7", "13", "181", "405"):
        recs = eng.recommend(uid, k=10)
        assert recs.strategy == "learned" and recs.model_version == rep.version and len(recs.items) == 10
        seen = {e.item_id for e in ml.user_events(uid)}
        assert not seen & {r.item_id for r in recs.items}
        assert [r.score for r in recs.items] == sorted((r.score for r in recs.items), reverse=True)
        for r in recs.items:
            assert r.reason and r.because_of and set(r.because_of) <= seen  # grounded in the user's own history
        top_reason = Counter(r.because_of[0] for r in recs.items).most_common(1)[0][1]
        assert top_reason <= 6, f"user {uid}: one history item is the reason for {top_reason} of 10"


def test_rank_orders_exactly_as_recommend(fitted):
    eng, _ = fitted
    recs = eng.recommend("42", k=20).items
    shuffled = [r.item_id for r in recs][::-1]
    ranked = eng.rank("42", shuffled + ["no-such-item"])
    assert [r.item_id for r in ranked[:20]] == [r.item_id for r in recs]
    assert [r.score for r in ranked[:20]] == pytest.approx([r.score for r in recs])
    assert ranked[-1].item_id == "no-such-item" and ranked[-1].score == float("-inf")


def test_a_new_event_changes_the_next_list_without_refit(fitted):
    eng, rep = fitted
    before = eng.recommend("1", k=10)
    eng.add_events([{"user_id": "1", "item_id": before.items[5].item_id, "timestamp": 2e9, "rating": 5},
                    {"user_id": "1", "item_id": "1", "timestamp": 2e9 + 1, "rating": 5}])  # item 1 is already seen: re-watch
    after = eng.recommend("1", k=10)
    assert after.model_version == rep.version  # no refit
    assert [r.item_id for r in after.items] != [r.item_id for r in before.items]
    assert before.items[5].item_id not in {r.item_id for r in after.items}  # now seen


def test_kept_lists_equal_a_fresh_ranking_and_follow_events_and_deletions(fitted_path, make_engine, tmp_path):
    """The list kept per user (engine.listcache) is read only while the history, the model and this process's catalog
    are as it was ranked from, and it equals a fresh ranking. ``add_events`` for a few users ranks their lists ahead
    (background thread); a write it never saw (another process's) makes the next request rank again. On a copy of the
    fitted store: these writes must not reach the module's other tests."""
    from engine.store import point_id

    eng = make_engine(copy_store(fitted_path[0], tmp_path / "copy"))
    lists = eng.serving.lists
    assert lists.ttl_s == eng.settings.retrieval.cache_ttl_s == 300.0  # the default reaches the kept lists
    ids = lambda recs: [r.item_id for r in recs.items]  # noqa: E731

    def counts_after(fn):
        h, m = lists.hits, lists.misses
        out = fn()
        return out, (lists.hits - h, lists.misses - m)

    first, c = counts_after(lambda: eng.recommend("301", k=10))
    assert c == (0, 1)
    assert counts_after(lambda: eng.recommend("301", k=10)) == (first, (1, 0))
    assert counts_after(lambda: eng.recommend("301", k=10, filters={"genres": "Comedy"}))[1] == (0, 0)  # ranked for it only
    assert counts_after(lambda: eng.recommend("301", k=12))[1] == (0, 1)  # another depth is another list
    assert counts_after(lambda: eng.recommend("301", k=10, exclude_seen=False))[1] == (0, 1)
    assert counts_after(lambda: eng.recommend("301", k=10))[1] == (0, 1)  # one entry per user: the latest ranking
    eng.add_events([{"user_id": "301", "item_id": first.items[3].item_id, "timestamp": 2e9, "rating": 5}])
    assert lists.wait(60)
    after, c = counts_after(lambda: eng.recommend("301", k=10))
    assert c == (1, 0) and first.items[3].item_id not in ids(after)  # read: it was ranked ahead, with the new event
    lists.clear()
    assert eng.recommend("301", k=10) == after  # the kept list is the one ranking gives now
    # a write the warming never saw (as by another process): the fingerprint differs, so the request ranks again
    eng.event_log.add([{"user_id": "301", "item_id": after.items[0].item_id, "timestamp": 2e9 + 5, "rating": 1}])
    later, c = counts_after(lambda: eng.recommend("301", k=10))
    assert c == (0, 1) and after.items[0].item_id not in ids(later)
    # an item deleted here: ranked again without it
    gone = later.items[0].item_id
    eng.delete_items([gone])
    without, c = counts_after(lambda: eng.recommend("301", k=10))
    assert c == (0, 1) and gone not in ids(without) and len(without.items) == 10
    # deleted by another process (not seen by this catalog): the kept list is read, and the item has no payload to serve
    other = without.items[0].item_id
    eng.store.delete(eng.items_col, [point_id("item", other)])
    served, c = counts_after(lambda: eng.recommend("301", k=10))
    assert c == (1, 0) and other not in ids(served) and ids(served)[:9] == ids(without)[1:]
    # a new user's first event is ranked ahead at a default request's depth; a batch of many users is not
    eng.add_events([{"user_id": "new-302", "item_id": "50", "timestamp": 2e9, "rating": 5}])
    assert lists.wait(60) and counts_after(lambda: eng.recommend("new-302", k=10))[1] == (1, 0)
    _, c = counts_after(lambda: (eng.add_events([{"user_id": f"bulk-{u}", "item_id": "50", "timestamp": 2e9, "rating": 5}
                                                 for u in range(9)]), lists.wait(60)))
    assert c == (0, 0)  # 9 users > retrieval.warm_users (8): a bulk load ranks nothing ahead
    kept = len(lists)
    eng.delete_user("new-302")  # an erased user's list leaves memory too
    assert len(lists) == kept - 1 and lists.depth("new-302") is None


def test_filters_apply_to_the_learned_list(fitted):
    eng, _ = fitted
    recs = eng.recommend("7", k=10, filters={"genres": "Horror"})
    assert recs.strategy == "learned" and len(recs.items) == 10
    assert all("Horror" in eng.item(r.item_id)["attributes"]["genres"] for r in recs.items)
    few = eng.recommend("7", k=10, filters={"year": {"lt": 1930}})
    assert all(eng.item(r.item_id)["attributes"]["year"] < 1930 for r in few.items)


def test_cold_user_and_unfitted_store_fall_back(fitted, make_engine, ml_engine_path):
    eng, _ = fitted
    assert eng.recommend("no-such-user", k=5).strategy == "popular"
    plain = make_engine(ml_engine_path)  # never fitted: the documented fusion, flagged by model_version None
    recs = plain.recommend("1", k=5)
    assert recs.model_version is None and recs.strategy == "retrieval"


def test_fitted_model_survives_reopen(fitted_path, text_encoder):
    path, rep = fitted_path
    with Engine.open(path, NO_CLIP, components=Components(text_encoder=text_encoder)) as eng:
        assert eng.recommend("13", k=5).model_version == rep.version


def test_ranker_serves_compiled_code_cached_with_the_model(fitted_path, make_engine):
    """The fitted ranker serves from code compiled by lleaves (``fit.compiled_ranker``, on by default), cached in the
    model's folder for the next process; its scores are LightGBM's to float rounding, and turning it off serves
    LightGBM's own predict."""
    from engine.learned.compiled import available

    if not available():
        pytest.skip("lleaves is not installed (the `learn` extra installs it)")
    path, rep = fitted_path
    (obj,) = (path / "models" / rep.version / "compiled").glob("ranker-*.o")  # written by fit()
    written = obj.stat().st_mtime_ns
    eng = make_engine(path)
    assert eng.learned.current().ranker.compiled
    assert obj.stat().st_mtime_ns == written and len(list(obj.parent.glob("ranker-*.o"))) == 1  # loaded from the cache
    served = eng.recommend("42", k=20).items
    eng.close()
    off = make_engine(path, fit={"compiled_ranker": False})
    assert not off.learned.current().ranker.compiled
    want = {r.item_id: r.score for r in off.rank("42", [r.item_id for r in served])}
    assert [r.score for r in served] == pytest.approx([want[r.item_id] for r in served], rel=1e-9, abs=1e-12)
    assert [r.item_id for r in off.recommend("42", k=20).items][:10] == [r.item_id for r in served][:10]


def test_cf_vectors_live_in_qdrant_and_feed_the_collaborative_source(fitted):
    """The fit writes the ALS item factors (and users' fit-time vectors) as the ``cf`` named vector; serving takes
    the collaborative source's candidates from a Qdrant dot-product query with a request-time fold-in vector, and
    that gives the same pool as the in-memory scan."""
    import numpy as np

    from engine.learned.candidates import pool
    from engine.store import Filter, point_id

    eng, rep = fitted
    model = eng.learned.current()
    V, ids = model.item_factors, model.item_ids
    got = eng.store.retrieve(eng.items_col, [point_id("item", ids[j]) for j in (0, 5, 50)], with_vectors=True)
    assert [np.allclose(h.vectors["cf"], V[j], atol=1e-5) for h, j in zip(got, (0, 5, 50))] == [True] * 3
    eng.update_profiles(["13"])  # users get the vector on their profile point: write again now that 13 has one
    assert eng.learned.write_vectors(model, ids[:3], eng.history("13"))
    u = eng.store.retrieve(eng.users_col, [point_id("user", "13")], with_vectors=True)[0]
    assert np.allclose(u.vectors["cf"], model.state(eng.history("13")).user_vec, atol=1e-4)
    for uid in ("1", "13", "405"):
        events = eng.history(uid)
        seen = {point_id("item", e.item_id) for e in events}
        search = eng.serving.cf_search(model, Filter(exclude_ids=seen))
        assert search is not None
        st = model.state(events)
        from_qdrant = pool(st, model.config, sources=("cf",), tops={"cf": model.index.rows(search(st.user_vec, 300))})
        in_memory = pool(st, model.config, sources=("cf",))
        assert len(set(from_qdrant) & set(in_memory)) >= 0.98 * len(in_memory)
        assert eng.serving.recommend(model, events, 10, Filter(exclude_ids=seen)) == model.recommend(events, 10)


def test_exclude_seen_false_and_one_entry_per_title(fitted, ml):
    eng, _ = fitted
    titles = {it.id: it.title for it in ml.items}
    hit_seen = False
    for uid in ("1", "13", "405", "450"):
        seen = {e.item_id for e in ml.user_events(uid)}
        recs = eng.recommend(uid, k=30, exclude_seen=False).items
        hit_seen |= bool(seen & {r.item_id for r in recs})
        for r in [*recs, *eng.recommend(uid, k=30).items]:
            assert r.title == titles[r.item_id]
        keys = [r.title.lower() for r in eng.recommend(uid, k=50).items]
        assert len(keys) == len(set(keys)) == 50
        assert not set(keys) & {titles[i].lower() for i in seen}  # not a seen film under its second id either
    assert hit_seen  # a heavy user's best items include ones already watched when asked to keep them


def test_small_store_fit_then_profiles_and_cf_from_qdrant(make_engine, ml):
    """After a fit the items carry a ``cf`` vector: profile updates still work (no ``taste_cf``), the users get their
    ``cf`` vector, and the served list equals the model's in-memory one (cheap: 80 items, 60 users)."""
    import numpy as np

    from engine.store import Filter, point_id

    eng = make_engine()
    items = ml.items[:80]
    keep = {it.id for it in items}
    eng.add_items(items)
    eng.add_events([e for e in ml.events if e.item_id in keep and int(e.user_id) <= 60])
    eng.update_profiles(["1", "2"])
    eng.fit()
    eng.update_profiles(["1", "2"])  # a profile rewrite after the fit must not try a taste vector of cf
    model = eng.learned.current()
    u = eng.store.retrieve(eng.users_col, [point_id("user", "1")], with_vectors=True)[0]
    assert "taste_cf" not in (u.vectors or {}) and "taste_text" in u.vectors
    h = eng.store.retrieve(eng.items_col, [point_id("item", items[0].id)], with_vectors=True)[0]
    assert np.allclose(h.vectors["cf"], model.item_factors[model.index.rows([items[0].id])[0]], atol=1e-5)
    events = eng.history("1")
    seen = {point_id("item", e.item_id) for e in events}
    assert eng.serving.cf_search(model, Filter(exclude_ids=seen)) is not None
    assert eng.serving.recommend(model, events, 10, Filter(exclude_ids=seen)) == model.recommend(events, 10)
    assert eng.recommend("1", k=5).strategy == "learned"
    # an item deleted behind this process's back (its title still cached here, the model still ranking it) is
    # replaced by the next pick: the served list keeps its length
    light = min(map(str, range(1, 61)), key=lambda u: len(eng.history(u)))
    picks = [r.item_id for r in eng.recommend(light, k=5).items]
    eng.store.delete(eng.items_col, [point_id("item", picks[1])])
    after = [r.item_id for r in eng.recommend(light, k=5).items]
    assert len(after) == 5 and picks[1] not in after and after[:1] + after[1:4] == [picks[0], *picks[2:]]
    # the cf vectors belong to one version: while another fit rewrites them (state file gone), or with CURRENT
    # pointed back at an older version, the model scans in memory instead of meeting another fit's factors
    old_version = model.info["version"]
    root = eng.learned.root
    assert (root / "CF_VERSION").read_text() == old_version
    (root / "CF_VERSION").unlink()
    assert eng.serving.cf_search(model, Filter(exclude_ids=seen)) is None
    assert eng.serving.recommend(model, events, 10, Filter(exclude_ids=seen)) == model.recommend(events, 10)
    time.sleep(1.1)  # versions carry the fit's second: a distinct one for the same data
    eng.fit()
    new_version = eng.learned.current().info["version"]
    assert new_version != old_version and (root / "CF_VERSION").read_text() == new_version
    misses = eng.serving.lists.misses
    refit = eng.recommend("1", k=5)  # the list kept from the old version is not served by the new one
    assert eng.serving.lists.misses == misses + 1 and refit.model_version == new_version
    (root / ".CURRENT.back").write_text(old_version)
    os.replace(root / ".CURRENT.back", root / "CURRENT")  # a rollback to the older version
    rolled = eng.learned.current()
    assert rolled.info["version"] == old_version and eng.serving.cf_search(rolled, Filter(exclude_ids=seen)) is None


def test_index_mode_takes_content_from_qdrant_and_ranks_as_recommend(make_engine, ml, monkeypatch):
    """A catalog served in index mode (fit.index_items at or below its size): the fit asks the store to build the items'
    HNSW indexes (the embedded engine has no background optimizer), the content source's list comes from a Qdrant query on the
    ``text`` vectors and the cf list from one on the ``cf`` vectors, the served list equals the model's own with the
    exact lists (80 items stay below Qdrant's indexing threshold: an exact index), and rank() gives recommend()'s
    scores."""
    from engine.store import Filter, Point, point_id
    from engine.store.edge import EdgeStore

    optimized = []
    real = EdgeStore.optimize
    monkeypatch.setattr(EdgeStore, "optimize", lambda self, name: optimized.append(name) or real(self, name))
    eng = make_engine(fit={"index_items": 50, "sequence_epochs": 2})
    items = ml.items[:84]
    keep = {it.id for it in items[:80]}  # 4 items without events
    eng.add_items(items)
    eng.add_events([e for e in ml.events if e.item_id in keep and int(e.user_id) <= 60])
    eng.fit()
    model = eng.learned.current()
    assert model.indexed and optimized == [eng.items_col]
    # only items with events hold a cf vector (a refit rewrites those points alone); a vector an older fit left on an
    # item without events (the code before wrote zeros on every item) is dropped by the next write
    import numpy as np

    has = np.any(model.item_factors != 0, axis=1)
    holders = {point_id("item", i) for i, h in zip(model.item_ids, has) if h}
    assert len(holders) == 80
    assert {h.id for h in eng.store.scroll(eng.items_col, Filter(has_vector="cf"))} == holders
    blank = [i for i, h in zip(model.item_ids, has) if not h][:2]
    eng.store.update_vectors(eng.items_col, [Point(point_id("item", i), {"cf": [0.0] * model.item_factors.shape[1]}, {}) for i in blank])
    assert eng.learned.write_vectors(model, [it.id for it in items], [])
    assert {h.id for h in eng.store.scroll(eng.items_col, Filter(has_vector="cf"))} == holders
    asked, texts = [], []
    nearest = eng.store.nearest_keys
    monkeypatch.setattr(eng.store, "nearest_keys", lambda name, using, *a, **kw: texts.append(using) or nearest(name, using, *a, **kw))
    light = sorted(map(str, range(1, 61)), key=lambda u: len(eng.history(u)))
    for uid in [u for u in light if 5 <= len(eng.history(u)) <= 40][:3]:  # users with many unseen items
        events = eng.history(uid)
        search = eng.serving.content_search(model, events)
        got = search(model.meta.emb[model.state(events).liked[-1]], 20)  # items like the last liked one
        asked.append(len(got))
        assert not {e.item_id for e in events} & set(got)
        seen = {point_id("item", e.item_id) for e in events}
        served = eng.serving.recommend(model, events, 10, Filter(exclude_ids=seen))
        assert len(served) == 10 and served == model.recommend(events, 10)
        texts.clear()
        recs = eng.recommend(uid, k=10)
        assert {"text", "cf"} <= set(texts)  # both lists came from Qdrant
        assert recs.strategy == "learned" and len(recs.items) == 10
        ranked = eng.rank(uid, [r.item_id for r in recs.items][::-1])
        assert [r.score for r in ranked] == [r.score for r in recs.items]
    assert asked == [20, 20, 20]
    # items ingested after the fit (unknown to the model) that the index puts first are skipped, and the search asks
    # deeper to fill their places: the same 20 known items as before (22 new ones: more than the 20 extra hits asked)
    target = model.meta.emb[model.index.rows([items[5].id])[0]]
    before = eng.serving.content_search(model, [])(target, 20)
    eng.add_items([items[5].model_copy(update={"id": f"copy{j}"}) for j in range(22)])  # the same text: the same vector
    texts.clear()
    assert eng.serving.content_search(model, [])(target, 20) == before and len(texts) == 2
