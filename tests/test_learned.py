"""The learned two-stage recommender (engine.learned) on a small synthetic catalog: fast, no store, no encoder."""

from __future__ import annotations

import numpy as np
import pytest

from engine.learned import LearnedConfig, PersonaModel
from engine.learned.candidates import source_top
from engine.learned.index import build_sequences, split_last
from engine.types import Event, Item

N_ITEMS, N_USERS = 60, 120
GENRES = ["Action", "Comedy", "Drama", "Horror"]


def _data(seed=0):
    rng = np.random.default_rng(seed)
    items = [Item(id=f"i{j}", title=f"Item {j}", attributes={"genres": [GENRES[j % 4]], "year": 1980 + j % 20}) for j in range(N_ITEMS)]
    items.append(Item(id="new", title="Brand new", attributes={"genres": ["Drama"], "year": 1999}))
    events = []
    for u in range(N_USERS):
        start, n = int(rng.integers(N_ITEMS)), int(rng.integers(8, 20))
        seq = [(start + k * (1 + u % 2)) % N_ITEMS for k in range(n)]  # strongly sequential: j -> j+1 or j+2
        t0 = 1_000_000 + 1000 * u
        for k, j in enumerate(dict.fromkeys(seq)):
            events.append(Event(user_id=f"u{u}", item_id=f"i{j}", timestamp=t0 + 60 * k, rating=float(rng.integers(1, 6))))
    # one user whose last step is a transition nobody else makes: i0 -> i33
    events += [Event(user_id="odd", item_id=f"i{j}", timestamp=5e6 + k, rating=5.0) for k, j in enumerate([5, 0, 33])]
    emb = rng.normal(size=(N_ITEMS + 1, 16)).astype(np.float32)
    emb[N_ITEMS] = emb[7] + 0.01  # the new item looks like i7
    return items, events, emb


CFG = LearnedConfig(cf_factors=8, cf_iterations=5, pool_size=40, n_estimators=30, early_stopping=10, recent=5, label_folds=4)


@pytest.fixture(scope="module")
def fitted():
    items, events, emb = _data()
    return PersonaModel.fit(events, items, emb, CFG, progress=False), items, events


def _hist(events, user):
    return [e for e in events if e.user_id == user]


def test_fit_and_recommend(fitted):
    model, _, events = fitted
    recs = model.recommend(_hist(events, "u3"), k=10)
    assert len(recs) == 10 and len({r[0] for r in recs}) == 10
    seen = {e.item_id for e in _hist(events, "u3")}
    assert not seen & {r[0] for r in recs}
    assert all(r[2] in seen for r in recs)
    assert model.info["fit_seconds"] > 0 and model.info["train_rows"] > 0


def test_new_event_changes_recommendations_without_refit(fitted):
    model, _, events = fitted
    h = _hist(events, "u4")  # u4 steps by 1
    before = model.recommend(h, k=5)
    last_t = max(e.timestamp for e in h)
    seen = {e.item_id for e in h}
    nxt = next(j for j in range(N_ITEMS) if f"i{j}" not in seen and f"i{(j + 1) % N_ITEMS}" not in seen)
    after = model.recommend(h + [Event(user_id="u4", item_id=f"i{nxt}", timestamp=last_t + 60, rating=5.0)], k=5)
    assert [r[0] for r in after] != [r[0] for r in before]
    st = model.state(h + [Event(user_id="u4", item_id=f"i{nxt}", timestamp=last_t + 60, rating=5.0)])
    assert st.sources["trans"].score([model.index.get(f"i{(nxt + 1) % N_ITEMS}")])[0] > 0
    assert f"i{(nxt + 1) % N_ITEMS}" in [r[0] for r in after]


def test_rank_orders_exactly_as_recommend(fitted):
    model, _, events = fitted
    h = _hist(events, "u10")
    recs = model.recommend(h, k=15)
    ids = [r[0] for r in recs]
    shuffled = list(np.random.default_rng(1).permutation(ids))
    ranked = model.rank(h, shuffled + ["nope"])
    assert [r[0] for r in ranked[:-1]] == ids
    assert np.allclose([r[1] for r in ranked[:-1]], [r[1] for r in recs], rtol=0, atol=0)
    assert ranked[-1] == ("nope", float("-inf"))


def test_save_load_roundtrip(fitted, tmp_path):
    model, _, events = fitted
    path = model.save(tmp_path / "m")
    loaded = PersonaModel.load(path)
    for u in ("u1", "u2", "odd"):
        assert loaded.recommend(_hist(events, u), k=10) == model.recommend(_hist(events, u), k=10)
    assert loaded.info["version"] == model.info["version"]
    assert np.array_equal(loaded.item_factors, model.item_factors)
    assert np.array_equal(loaded.stage1.content_pop, model.stage1.content_pop)


def test_no_label_leakage(fitted):
    model, _, events = fitted
    a, b = model.index.get("i0"), model.index.get("i33")
    train_s1 = model.train_stage1[0]
    assert train_s1.seq.trans[a, b] == 0  # "odd"'s last step, made by nobody else, is unseen by the ranker's stage 1
    assert model.stage1.seq.trans[a, b] > 0  # the serving stage 1 is refitted on all events
    seqs = build_sequences(events, model.index, CFG.seed)
    hist, labels = split_last(seqs)
    # every user's label event is absent from the training stage 1: its popularity counts equal the histories' counts
    counts = np.bincount(np.concatenate([s.items for s in hist.values()]), minlength=len(model.index))
    assert np.array_equal(train_s1.seq.pop, counts)
    assert np.array_equal(model.stage1.seq.pop, np.bincount(np.concatenate([s.items for s in seqs.values()]), minlength=len(model.index)))
    assert len(labels) == len(seqs)
    # label fold f (0-based; its label is the (f + 1)-th event from the end) is fitted without each user's last f + 1 events
    assert len(model.train_stage1) == CFG.label_folds >= 3
    for fold in range(1, CFG.label_folds):
        hist, _ = split_last(hist)
        counts_f = np.bincount(np.concatenate([s.items for s in hist.values()]), minlength=len(model.index))
        assert np.array_equal(model.train_stage1[fold].seq.pop, counts_f), fold


def test_new_item_reaches_users_through_content(fitted):
    model, _, events = fitted
    h = [e for e in _hist(events, "u0")][:3] + [Event(user_id="u0", item_id="i7", timestamp=9e6, rating=5.0)]
    st = model.state(h)
    j = model.index.get("new")
    assert model.stage1.seq.pop[j] == 0 and not model.item_factors[j].any()
    assert j in source_top(st, "content", 5).tolist()
    recs = model.recommend(h, k=CFG.pool_size)
    hit = [r for r in recs if r[0] == "new"]
    assert hit and hit[0][2] == "i7"


def test_training_shows_candidates_as_new_items_exactly_as_serving_sees_a_new_item(fitted):
    from dataclasses import replace as dc_replace

    from engine.learned.features import FEATURE_NAMES, cold_item, dislike_share, features

    model, _, events = fitted
    hist = _hist(events, "u5")
    hist[-2] = hist[-2].model_copy(update={"rating": 1.0})  # a recent film rated low: the dislike share has content ties to read
    st0 = model.state(hist)
    new, warm = model.index.get("new"), model.index.get("i20")
    for cap in (0, 3):  # exact ranks, and ranks capped below where a new item's 0 lands (the cap must apply here too)
        st = dc_replace(st0, rank_cap=cap)
        cand = np.array([new, warm])
        F = features(model.stage1, model.meta, st, cand)
        cold = cold_item(F, st, np.array([True, True]), dislike_share(model.stage1, model.meta, st, cand, content_only=True))
        # a real new item already has the cold values: the training-time rewrite is the identity on it ...
        assert np.array_equal(cold[0], F[0], equal_nan=True)
        # ... and turns a warm item into one that differs from the new item only in content / attribute / user columns
        # (the dislike share of a new item is that of its content ties)
        same = [k for k, f in enumerate(FEATURE_NAMES) if not f.startswith(("content_", "genre_", "year_", "item_year", "dislike_"))]
        assert np.array_equal(cold[1, same], F[0, same], equal_nan=True)
        assert not np.array_equal(cold[1], F[1], equal_nan=True)
    st = st0
    # the new item is in a small pool through the ``fresh`` source, not otherwise
    from dataclasses import replace

    from engine.learned.candidates import pool

    small = replace(CFG, pool_size=20)
    assert new in pool(st, small).tolist()
    assert new not in pool(st, replace(small, sources=tuple(x for x in small.sources if x != "fresh"))).tolist()


def test_fresh_boost_raises_new_items_in_rank_and_recommend_alike(fitted):
    from dataclasses import replace

    model, _, events = fitted
    h = _hist(events, "u0")[:3] + [Event(user_id="u0", item_id="i7", timestamp=9e6, rating=5.0)]
    base = dict(model.rank(h, ["new", "i20"]))
    boosted = PersonaModel(model.index, model.meta, model.stage1, model.ranker, replace(model.config, fresh_boost=3.0), model.info)
    up = dict(boosted.rank(h, ["new", "i20"]))
    assert up["new"] > base["new"] and up["i20"] == base["i20"]
    recs = boosted.recommend(h, k=CFG.pool_size)
    assert [r[0] for r in boosted.rank(h, [r[0] for r in recs])] == [r[0] for r in recs]


def test_new_item_slot_places_the_best_new_item_at_its_position_and_keeps_prefixes(fitted):
    from dataclasses import replace

    model, _, events = fitted
    slot = 2  # the fixture's ranker puts the new item 2nd or 3rd: slot 2 moves it for some users, and keeps a head
    slotted = PersonaModel(model.index, model.meta, model.stage1, model.ranker, replace(model.config, new_item_slot=slot), model.info)
    lists = {u: [r[0] for r in model.recommend(_hist(events, u), k=CFG.pool_size)] for u in (f"u{i}" for i in range(N_USERS))}
    low = [u for u, ids in lists.items() if "new" in ids and ids.index("new") >= slot]
    assert low, "the fixture no longer has users with the new item low in their list"
    for u in low[:5]:
        h, plain = _hist(events, u), lists[u]
        full = [r[0] for r in slotted.recommend(h, k=CFG.pool_size)]
        assert full[slot - 1] == "new" and full[:slot - 1] == plain[:slot - 1]
        assert [i for i in full if i != "new"] == [i for i in plain if i != "new"]
        for k in (1, 3, 5, 10):  # a shorter list is the longer one's head (pages stay consistent)
            assert [r[0] for r in slotted.recommend(h, k=k)] == full[:k]
        assert slotted.rank(h, plain) == model.rank(h, plain)  # a list rule, not a score: rank() keeps the ranker's order
        at = plain.index("new")  # a slot below where the ranker put it: nothing moves
        late = PersonaModel(model.index, model.meta, model.stage1, model.ranker, replace(model.config, new_item_slot=at + 1), model.info)
        assert [r[0] for r in late.recommend(h, k=CFG.pool_size)] == plain


def test_dislike_penalty_lowers_items_tied_to_a_low_rated_film_in_rank_and_recommend_alike(fitted):
    from dataclasses import replace

    model, _, events = fitted
    h = [Event(user_id="x", item_id=f"i{j}", timestamp=9e6 + k, rating=5.0) for k, j in enumerate([40, 41, 42])]
    h.append(Event(user_id="x", item_id="i10", timestamp=9e6 + 10, rating=1.0))  # the latest film, rated 1*
    st = model.state(h)
    share = model.dislike_share(st, model.index.rows(["i11", "i43", "i12"]))
    assert share[0] > share[1] and share[0] > 0.5 > share[1]  # i11 follows i10; i43 follows the liked i42
    penal = PersonaModel(model.index, model.meta, model.stage1, model.ranker, replace(model.config, dislike_penalty=4.0), model.info)
    base, low = dict(model.rank(h, ["i11", "i43"])), dict(penal.rank(h, ["i11", "i43"]))
    assert low["i11"] < base["i11"] and low["i43"] / base["i43"] > low["i11"] / base["i11"]
    recs = penal.recommend(h, k=CFG.pool_size)
    assert [r[0] for r in penal.rank(h, [r[0] for r in recs])] == [r[0] for r in recs]
    for i, score, _ in recs[:: max(1, len(recs) // 15)]:  # alone or in the whole pool: the very same score
        assert dict(penal.rank(h, [i]))[i] == score
    all_low = [e.model_copy(update={"rating": 1.0}) for e in h]  # every film rated low: no contrast, no penalty
    assert dict(penal.rank(all_low, ["i11", "i43"])) == dict(model.rank(all_low, ["i11", "i43"]))
    liked_only = [e for e in h if e.rating > 2]
    assert not model.state(liked_only).disliked.any()
    assert dict(penal.rank(liked_only, ["i11"])) == dict(model.rank(liked_only, ["i11"]))  # no dislikes: no change


def test_an_older_liked_film_with_a_real_tie_explains_an_item_instead_of_a_film_rated_low(fitted):
    """The latest film, i20, is rated 1* and is i21's strongest tie (i20 -> i21 is a common step). When the user
    liked earlier films tied to i21 too, one of them is named; when they did not, or when i20 is itself liked, the
    reason stays i20: an older film is never named without a tie at least half as strong."""
    from engine.learned.ties import ties

    model, _, _ = fitted

    def hist(r_old, r_last):
        h = [Event(user_id="x", item_id=f"i{j}", timestamp=9e6 + k, rating=r_old) for k, j in enumerate([10, 11, 12])]
        h += [Event(user_id="x", item_id=f"i{j}", timestamp=9e6 + 10 + k, rating=3.0) for k, j in enumerate([40, 47, 54, 33])]
        return [*h, Event(user_id="x", item_id="i20", timestamp=9e6 + 20, rating=r_last)]

    top = model.index.rows(["i21", "i22", "i13"])
    got = {(o, last): model.reasons(model.state(hist(o, last)), top) for o, last in [(5.0, 1.0), (3.0, 1.0), (5.0, 5.0)]}
    why = got[5.0, 1.0][0]
    assert why in {"i10", "i11", "i12"}  # an older liked film ...
    st = model.state(hist(5.0, 1.0))
    assert sum(P.sum() for P in ties(model.stage1, model.meta, st, top[:1], model.index.rows([why]))) > 0  # ... with a tie
    assert got[3.0, 1.0][0] == "i20" and got[5.0, 5.0][0] == "i20"
    for reasons in got.values():
        assert set(reasons) <= {f"i{j}" for j in (10, 11, 12, 40, 47, 54, 33, 20)}
    # one older liked film: i19 (i19 -> i21 is a common step) is named; i16 has co-occurrence and cf ties to i21, under half
    def one_liked(j):
        return [Event(user_id="x", item_id=f"i{j}", timestamp=9e6 - 1, rating=5.0), *hist(3.0, 1.0)]

    st0 = model.state(one_liked(16))
    assert sum(P.sum() for P in ties(model.stage1, model.meta, st0, top[:1], model.index.rows(["i16"]))) > 0
    assert model.reasons(st0, top[:1]) == ["i20"] and model.reasons(model.state(one_liked(19)), top[:1]) == ["i19"]


def test_capped_source_ranks_equal_exact_ranks_up_to_the_cap():
    """rank_cap: the O(n) partition, or on large catalogs the one-pass sampled threshold, gives the exact rank below
    the cap and the cap beyond (ties, -inf and catalogs sorted by value included)."""
    from types import SimpleNamespace

    from engine.learned.candidates import source_ranks

    rng = np.random.default_rng(0)
    for trial in range(90):
        large = trial >= 60  # the sampled-threshold path (cap * 16 <= n)
        n = int(rng.integers(20_000, 60_000)) if large else int(rng.integers(5, 2000))
        v = rng.integers(0, 30, n).astype(np.float32) if trial % 2 else rng.standard_normal(n).astype(np.float32)
        if trial % 5 == 0:
            v[rng.random(n) < 0.5] = -np.inf
        if large and trial % 3 == 0:
            v = np.sort(v)  # a strided sample of a sorted catalog
        seen = rng.random(n) < 0.2
        cand = rng.choice(n, min(n, 300), replace=False)
        cap = int(rng.integers(1, 1000)) if large else int(rng.integers(1, int((~seen).sum())))
        S0, R0 = source_ranks(SimpleNamespace(seen=seen, sources={"a": v}, rank_cap=0), ["a"], cand)
        S1, R1 = source_ranks(SimpleNamespace(seen=seen, sources={"a": v}, rank_cap=cap), ["a"], cand)
        assert np.array_equal(S0, S1) and np.array_equal(np.minimum(R0, cap), R1)


def test_sparse_sources_rank_as_their_dense_vectors():
    """A SparseSource (transitions, co-occurrence, popularity: a user's view of scores that are 0 off a few rows) gives
    the scores, capped ranks and top lists of the dense vector, without a pass over the catalog."""
    from types import SimpleNamespace

    from engine.learned.candidates import source_ranks
    from engine.learned.toplists import SparseScores

    rng = np.random.default_rng(3)
    for trial in range(40):
        n = int(rng.integers(20_000, 60_000)) if trial % 2 else int(rng.integers(3, 3000))
        v = np.where(rng.random(n) < rng.choice([0.0, 0.002, 0.05, 0.9]), rng.integers(1, 4, n) / 4.0, 0.0)  # ties
        seen = rng.random(n) < rng.choice([0.0, 0.1, 0.95])
        cand = rng.choice(n, min(n, 300), replace=False)
        dense = SimpleNamespace(seen=seen, sources={"a": v}, rank_cap=0)
        sparse = SimpleNamespace(seen=seen, sources={"a": SparseScores.of(v).view(seen, np.flatnonzero(seen))}, rank_cap=0)
        for cap in (0, int(rng.integers(1, 50))):
            dense.rank_cap = sparse.rank_cap = cap
            S, R = source_ranks(dense, ["a"], cand)
            S1, R1 = source_ranks(sparse, ["a"], cand)
            assert np.array_equal(S, S1) and np.array_equal(R, R1), (trial, cap)
        for k in (1, 7, 400):
            for excl in (True, False):
                assert np.array_equal(source_top(sparse, "a", k, excl), source_top(dense, "a", k, excl)), (trial, k, excl)
    for bad in ([0.0, -1.0, 2.0], [0.0, np.inf, 1.0], [np.nan, 1.0, 0.0]):
        with pytest.raises(ValueError):
            SparseScores.of(np.array(bad))
    with pytest.raises(ValueError):
        SparseScores(np.array([1, 1]), np.array([0.5, 0.7]), 3)  # a row twice


def test_sparse_transition_and_cooccurrence_rows_equal_the_dense_formula(fitted):
    """A user's transition and co-occurrence scores from the sparse rows equal the dense formulas they replace (and the
    raw transition-count rows the dense counts):
    P(next | a) rows weighted by position, summed in float64 (transitions keep float64, co-occurrence is cast to
    float32), and the cosine co-occurrence rows; values read at candidates equal the dense rows there."""
    model = fitted[0]
    seq = model.stage1.seq
    T, Cm = seq.trans.toarray(), seq.cooc.toarray()
    n = T.shape[0]
    rng = np.random.default_rng(5)
    for _ in range(20):
        rows = rng.choice(n, int(rng.integers(1, 8)), replace=False)
        w = 0.6 ** np.arange(len(rows))
        dense_t = T[rows] / (seq.trans_out[rows, None] + 5.0)
        want = (w[:, None] * dense_t).sum(0)
        cols, vals = seq.trans_rows(rows, 5.0).weighted(w)
        got = np.zeros(n)
        got[cols] = vals
        assert vals.dtype == np.float64 and np.array_equal(got, want)
        dense_c = Cm[rows] / (seq.cooc_norm[rows, None] * seq.cooc_norm[None, :])
        sparse_c = seq.cooc_rows(rows)
        cand = rng.choice(n, 30, replace=False)
        assert np.array_equal(sparse_c.at(cand), dense_c[:, cand].astype(np.float32))
        assert np.array_equal(seq.count_rows(rows).at(cand), T[rows][:, cand])  # raw counts (the reasons' ties)
        cols, vals = sparse_c.weighted(w[::-1])
        acc = np.zeros(n)
        for k in range(len(rows)):  # row order: the sum the sparse rows define
            acc = acc + w[::-1][k] * dense_c[k].astype(np.float64)
        got = np.zeros(n)
        got[cols] = vals
        assert np.array_equal(got, acc)
    st = model.state(_hist(fitted[2], "u3"))
    probe = np.arange(n)
    assert len(st.recent) and np.array_equal(st.trans_rec.at(probe), T[st.recent])  # the recent items' rows, in order
    assert st.sources["trans"].score(probe).dtype == np.float64
    assert all(st.sources[s].score(probe).dtype == np.float32 for s in ("cooc", "pop", "trend", "pop_at"))


def test_bagged_ranker_is_the_mean_of_its_boosters_and_survives_save_load(tmp_path):
    """``ranker_bags=3``: three boosters on the same rows (seeds seed..seed+2); the served probability is their mean,
    rank() still orders exactly as recommend(), and a saved model loads with all three. One bag is LightGBM's own text."""
    from dataclasses import replace

    import lightgbm as lgb

    from engine.learned.features import FEATURE_NAMES, features

    items, events, emb = _data()
    model = PersonaModel.fit(events, items, emb, replace(CFG, ranker_bags=3), progress=False)
    boosters = model.ranker.boosters
    h = _hist(events, "u10")
    st = model.state(h)
    cand = np.arange(N_ITEMS)
    F = features(model.stage1, model.meta, st, cand)
    X = F[:, [FEATURE_NAMES.index(c) for c in model.ranker.columns]]
    preds = [b.predict(X) for b in boosters]
    assert len(boosters) == 3 and not np.allclose(preds[0], preds[1]) and not np.allclose(preds[1], preds[2])  # other seeds
    assert np.allclose(model.ranker.predict(F),
                       np.mean(preds, axis=0), rtol=0, atol=1e-12)
    recs = model.recommend(h, k=10)
    assert [r[0] for r in model.rank(h, [r[0] for r in recs][::-1])] == [r[0] for r in recs]
    loaded = PersonaModel.load(model.save(tmp_path / "bagged"))
    assert len(loaded.ranker.boosters) == 3 and loaded.recommend(h, k=10) == recs
    single = PersonaModel.fit(events, items, emb, CFG, progress=False)
    text = (single.save(tmp_path / "single") / "ranker.txt").read_text()
    assert lgb.Booster(model_str=text).num_trees() == single.ranker.booster.num_trees()


def test_sequence_model_numpy_forward_equals_torch():
    """``SeqNet.probs`` (numpy, float64, what serving runs) is the torch network's softmax after the same history, for
    one and two heads and histories shorter and longer than ``maxlen``."""
    import torch

    from engine.learned.index import Sequence
    from engine.learned.seqnet import SeqNet, build_net

    rng = np.random.default_rng(0)
    seqs = {f"u{u}": Sequence(rng.integers(0, 30, int(rng.integers(2, 40))), np.zeros(0), np.zeros(0)) for u in range(20)}
    for heads in (1, 2):
        m = SeqNet.fit(seqs, 30, dim=8, maxlen=12, heads=heads, epochs=2, threads=1)
        net = build_net(30, 8, 12, 2, heads, 0.5).double()
        net.load_state_dict({**{k: torch.from_numpy(v) for k, v in m.w.items()}, "causal": net.causal})
        net.eval()
        for h in (np.array([3]), np.arange(7), rng.integers(0, 30, 25)):
            x = h[-12:]
            with torch.no_grad():
                out = net(torch.from_numpy(x[None] + 1), torch.tensor([len(x)]))[0, -1]
                p = torch.softmax(net.logits(out)[1:], 0).numpy()
            assert np.allclose(m.probs(h), p, rtol=0, atol=1e-12)
            rel = m.relative_probs(h)  # index mode: float32 output layer, relative to the best item
            assert rel.dtype == np.float32 and np.allclose(rel, p / p.max(), rtol=1e-4, atol=1e-6)
            for rows in (np.array([5, 2, 17]), np.arange(29, 0, -1)):  # a few rows; over half the catalog (full product)
                sub = m.relative_probs(h, rows)  # only these rows, in this order, relative to the best of them
                assert sub.dtype == np.float32 and np.allclose(sub, p[rows] / p[rows].max(), rtol=1e-4, atol=1e-6)
        assert m.relative_probs(np.zeros(0, np.int64), np.array([4, 9])).tolist() == [1.0, 1.0]  # no history: uniform
        assert SeqNet.from_arrays(m.arrays()).probs(np.arange(5)).tolist() == m.probs(np.arange(5)).tolist()
    legacy = {k.replace("sas_w.", "sas_"): v for k, v in m.arrays().items() if k != "sas_known"}  # a pre-release layout
    with pytest.raises(ValueError, match="refit"):
        SeqNet.from_arrays(legacy)


def test_sequence_source_trained_without_labels_fills_the_pool_and_survives_save_load(tmp_path):
    """``sas_epochs`` > 0: the network never saw a label fold's event as a target (its training sequences are every user's
    events but the last ``label_folds``), its columns reach the ranker, it fills pool slots when named a pool source,
    items without events score 0 as ``cold_item`` shows them in training, and a saved model serves the same lists.
    Without it the columns stay out and the source fills nothing."""
    from dataclasses import replace

    from engine.learned.candidates import pool

    items, events, emb = _data()
    # "late" is only ever some users' last event: stage 1 serves it with events, but the sequence model never read it
    items = [*items, Item(id="late", title="Late", attributes={"genres": ["Drama"], "year": 1999})]
    emb = np.vstack([emb, emb[:1]])
    events = events + [Event(user_id=f"u{u}", item_id="late", timestamp=9e6, rating=4.0) for u in (1, 2)]
    cfg = replace(CFG, sas_epochs=3, sas_dim=16, sas_maxlen=20, sources=(*CFG.sources, "sas"))
    model = PersonaModel.fit(events, items, emb, cfg, progress=False)
    sas = model.stage1.sas
    assert sas is not None and model.train_stage1[0].sas is sas  # one model, shared by training and serving
    n_seq = sum(1 for s in split_last(build_sequences(events, model.index, CFG.seed), CFG.label_folds)[0].values() if len(s) >= 2)
    assert sas.info["sequences"] == n_seq
    assert {"sas_score", "sas_rank"} <= set(model.ranker.columns)
    h = _hist(events, "u4")
    st = model.state(h)
    p = st.sources["sas"]
    late = model.index.get("late")
    assert not np.isnan(model.stage1.item_first_ts[late]) and not sas.known[late] and p[late] == 0
    assert p[model.index.get("new")] == 0 and 0.9 < p.sum() <= 1 + 1e-6  # the mass of unread items is left out
    top = set(source_top(st, "sas", 5).tolist())
    assert top & set(pool(st, model.config).tolist()) == top
    loaded = PersonaModel.load(model.save(tmp_path / "sas"))
    assert loaded.recommend(h, k=10) == model.recommend(h, k=10)
    off = PersonaModel.fit(events, items, emb, replace(CFG, sas_epochs=0), progress=False)
    assert off.stage1.sas is None and not {"sas_score", "sas_rank"} & set(off.ranker.columns)
    assert "sas" in off.state(h).off and not set(pool(off.state(h), replace(off.config, sources=("sas",))).tolist())
    assert "sas" not in CFG.sources  # a feature only by default


def test_sequence_model_learns_the_next_item_with_the_full_and_the_sampled_softmax():
    """On sequences that step j -> j + 1 or j + 2, the trained network ranks the true next item far above chance, with
    the full softmax and with the sampled one that catalogs above ``full_softmax_items`` use."""
    from engine.learned.seqnet import SeqNet

    items, events, _ = _data()
    from engine.learned.index import ItemIndex

    seqs = build_sequences(events, ItemIndex.build(items, events), 0)
    hist, labels = split_last(seqs)
    for limit in (10**6, 10):
        m = SeqNet.fit(hist, N_ITEMS + 1, dim=16, maxlen=20, epochs=30, threads=1, full_softmax_items=limit, negatives=16)
        assert m.info["sampled_softmax"] == (limit == 10)
        ranks = []
        for u, j in labels.items():
            p = m.probs(hist[u].items)
            ranks.append(int((p > p[j]).sum()))
        assert np.median(ranks) <= 3, (limit, np.median(ranks))  # chance: ~30 of 61


def test_a_format_1_model_loads_and_serves_as_fitted_and_an_unknown_format_is_refused(tmp_path):
    """Models saved before the sequence model (format 1: no ``sas_*`` arrays or config fields) load with no sequence
    model and serve the same lists; a format this code does not know is a clear error, not a crash."""
    import json
    from dataclasses import replace

    items, events, emb = _data()
    model = PersonaModel.fit(events, items, emb, replace(CFG, sas_epochs=0), progress=False)
    d = model.save(tmp_path / "old")
    meta = json.loads((d / "meta.json").read_text())
    meta["format_version"] = 1
    meta["config"] = {k: v for k, v in meta["config"].items() if not k.startswith("sas_")}
    (d / "meta.json").write_text(json.dumps(meta))
    old = PersonaModel.load(d)
    assert old.config.sas_epochs == 0 and old.stage1.sas is None
    h = _hist(events, "u3")
    assert old.recommend(h, k=10) == model.recommend(h, k=10)
    meta["format_version"] = 99
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="model format 99"):
        PersonaModel.load(d)


def test_source_top_is_the_best_k_with_ties_by_row():
    """source_top equals a full sort by (score desc, row asc) over unseen finite scores, on small and large catalogs
    (the sampled-threshold path), with ties at the cut, -inf and sparse sources (mostly zeros)."""
    from types import SimpleNamespace

    rng = np.random.default_rng(1)
    for trial in range(60):
        n = int(rng.integers(20_000, 50_000)) if trial % 2 else int(rng.integers(3, 3000))
        kind = trial % 4
        if kind == 0:
            v = rng.standard_normal(n).astype(np.float32)
        elif kind == 1:
            v = rng.integers(0, 12, n).astype(np.float32)  # many ties
        elif kind == 2:
            v = np.where(rng.random(n) < 0.002, rng.random(n), 0).astype(np.float32)  # sparse, like transitions
        else:
            v = np.where(rng.random(n) < 0.5, rng.standard_normal(n), -np.inf).astype(np.float32)  # like "fresh"
        seen = rng.random(n) < 0.1
        k = int(rng.integers(1, 400))
        st = SimpleNamespace(seen=seen, sources={"a": v})
        for excl in (True, False):
            ok = np.isfinite(v) & (~seen if excl else True)
            rows = np.flatnonzero(ok)
            want = rows[np.lexsort((rows, -v[rows]))][:k]
            assert np.array_equal(source_top(st, "a", k, excl), want), (trial, excl)


def test_top_dots_is_the_exact_float64_top_k_from_a_float32_product():
    """top_dots (what an index-mode fit reads the exact content and cf lists with) equals the best k of the float64
    row_dots over every row, ties by row, on normalised and unnormalised rows, near-duplicate scores and zero rows."""
    from engine.learned.toplists import row_dots, top_dots, top_rows

    rng = np.random.default_rng(3)
    differs = 0
    for trial in range(40):
        n, d = int(rng.integers(50, 30_000)), int(rng.choice([8, 64, 384]))
        E = rng.standard_normal((n, d)).astype(np.float32) * (rng.random((n, 1)).astype(np.float32) * 3 if trial % 2 else 1)
        if trial % 4 == 0:  # unit rows, as the text embeddings (norm_max 1.0 there)
            E /= np.linalg.norm(E, axis=1, keepdims=True)
        if trial % 3 == 0:  # copies of one row, each one component 1 ulp off: the float32 order is not the answer
            m = n // 2
            E[:m] = E[0]
            j = rng.integers(0, d, m)
            E[np.arange(m), j] = np.nextafter(E[np.arange(m), j], np.where(rng.random(m) < 0.5, np.inf, -np.inf).astype(np.float32))
        E[rng.random(n) < 0.05] = 0
        q = rng.standard_normal(d)
        ok = rng.random(n) > 0.1
        k = int(rng.integers(1, 200))
        norm = 1.0 if trial % 4 == 0 else float(np.linalg.norm(E, axis=1).max())
        want = top_rows(row_dots(E, np.arange(n), q), ok, k)
        assert np.array_equal(top_dots(E, q, ok, k, norm), want), trial
        differs += not np.array_equal(top_rows((E @ q.astype(np.float32)).astype(np.float32), ok, k), want)
    assert differs >= 1  # the float32 order alone is wrong in some trial(s): the re-scoring is what the test checks


@pytest.fixture(scope="module")
def indexed():
    """The same data served in index mode (every catalog size counts as large): content from a top list of 15."""
    from dataclasses import replace

    items, events, emb = _data()
    return PersonaModel.fit(events, items, emb, replace(CFG, index_items=10, index_depth=15), progress=False), events, emb


def _exact_search(model, emb, history, cosine=True):
    """A stand-in vector index that answers exactly: item ids by cosine with the query (``text``) or by dot product
    with the item factors (``cf``), the history's items excluded."""
    E = emb / np.linalg.norm(emb, axis=1, keepdims=True) if cosine else model.item_factors.astype(np.float64)
    ids = [f"i{j}" for j in range(N_ITEMS)] + ["new"] if cosine else model.item_ids
    seen = {e.item_id for e in history}

    def search(q, limit):
        order = np.argsort(-(E @ (q / np.linalg.norm(q))), kind="stable")
        return [ids[j] for j in order if ids[j] not in seen][:limit]
    return search


def test_index_mode_serves_what_it_was_trained_on(indexed, tmp_path):
    """Index mode: the content source is a top list (no dense vector), ranks are within the list, the sequence model's
    score is relative to its best item; an exact index gives the very list training computed, so recommend() and rank()
    with it equal the model's own (exact) answers; a saved model keeps the mode, an old config loads without it."""
    from engine.learned.toplists import ListSource

    model, events, emb = indexed
    assert model.indexed
    h = _hist(events, "u7")
    st = model.state(h)
    for name in ("content", "cf"):
        assert isinstance(st.sources[name], ListSource) and len(st.sources[name].rows) == 15
        assert not st.seen[st.sources[name].rows].any()
    assert np.isclose(st.sources["sas"].max(), 1.0)
    search, cf = _exact_search(model, emb, h), _exact_search(model, emb, h, cosine=False)
    both = model.state(h, search, cf)
    assert all(np.array_equal(both.sources[n].rows, st.sources[n].rows) for n in ("content", "cf"))
    recs = model.recommend(h, k=10)
    assert recs == model.recommend(h, k=10, content_search=search, cf_search=cf)
    ranked = dict(model.rank(h, [r[0] for r in recs], content_search=search, cf_search=cf))
    assert all(ranked[i] == s for i, s, _ in recs)
    # an index answering each item twice, and more than asked, gives the same list (once each, the best ``depth``)
    assert model.recommend(h, k=10, content_search=lambda q, n: search(q, n) + search(q, 2 * n)) == recs
    # a worse index (the list's second half only) changes the content ranks, not the contract
    worse = lambda q, n: search(q, n)[7:]  # noqa: E731
    assert np.array_equal(model.state(h, worse).sources["content"].rows, st.sources["content"].rows[7:])
    half = model.recommend(h, k=10, content_search=worse)
    assert len(half) == 10 and not {e.item_id for e in h} & {r[0] for r in half}
    loaded = PersonaModel.load(model.save(tmp_path / "m"))
    assert loaded.indexed and loaded.recommend(h, k=10) == recs
    old = LearnedConfig.from_dict({k: v for k, v in model.config.to_dict().items() if k != "index_items"})
    assert old.index_items == 0 and not old.indexed(10**9)


def test_row_dots_give_each_row_the_same_value_whatever_rows_come_with_it():
    """rank() must equal recommend() to the bit in index mode: a row's product may not depend on the batch around it
    (BLAS kernels treat a batch's tail rows differently); float32 rows of odd widths, float32 or float64 queries."""
    from engine.learned.toplists import row_dots

    rng = np.random.default_rng(3)
    for d in (1, 7, 32, 383, 384, 8193):  # 8193: past einsum's one-row buffer (the pairwise sum serves)
        E = (rng.standard_normal((500 if d < 1000 else 40, d)) * 3).astype(np.float32)
        for q in (rng.standard_normal(d), rng.standard_normal(d).astype(np.float32)):
            rows = rng.permutation(len(E))[:301]
            full = row_dots(E, rows, q)
            assert full.dtype == np.float64 and np.allclose(full, E[rows].astype(np.float64) @ np.float64(q), rtol=1e-12, atol=1e-9)
            for k in (1, 2, 3, 5, 8, 17, 64):
                for i in range(0, len(rows), 37 if len(rows) > 100 else 3):
                    assert np.array_equal(row_dots(E, rows[i : i + k], q), full[i : i + k]), (d, k, i)
            assert np.array_equal(row_dots(E, rows[::-1], q), full[::-1])


def test_index_mode_sequence_model_reads_only_the_items_it_can_score(indexed):
    """Index mode: the sequence score is computed for the items with events that the network read (the others score
    0 either way), relative to the best of them; it equals the catalog-wide score rescaled, and a model saved before
    the switch keeps the catalog-wide one."""
    from dataclasses import replace

    model, events, _ = indexed
    assert model.config.sas_readable_only
    s1 = model.stage1
    unread = np.isnan(s1.item_first_ts) | ~s1.sas.known
    old = PersonaModel(model.index, model.meta, s1, model.ranker, replace(model.config, sas_readable_only=False), model.info)
    for u in ("u3", "u7", "u11"):
        h = _hist(events, u)
        new, before = model.state(h).sources["sas"], old.state(h).sources["sas"]
        assert not new[unread].any() and not before[unread].any()
        assert np.isclose(new.max(), 1.0)
        assert np.allclose(new, before / before[~unread].max(), rtol=1e-5, atol=1e-7)
    # few items with events, the catalog's best among those without: the layer reads the few (a gathered copy of
    # their weights), and the two normalisations differ
    from engine.learned.candidates import Stage1, user_state

    h = _hist(events, "u7")
    seq = model.sequence(h)
    first = s1.item_first_ts.copy()
    best = int(np.argmax(s1.sas.relative_probs(seq.items)))
    first[np.r_[best, np.flatnonzero(np.arange(len(first)) % 3 != 0)]] = np.nan
    sparse = Stage1(s1.cf, s1.seq, s1.item_rating, first, s1.item_mean_ts, s1.sas)
    readable = ~np.isnan(first) & s1.sas.known
    assert 0 < readable.sum() < len(first) / 2
    new = user_state(sparse, model.meta, seq, model.config).sources["sas"]
    before = user_state(sparse, model.meta, seq, replace(model.config, sas_readable_only=False)).sources["sas"]
    assert not new[~readable].any() and np.isclose(new.max(), 1.0) and before.max() < 0.999
    assert np.allclose(new, before / before[readable].max(), rtol=1e-5, atol=1e-7)
    saved = {k: v for k, v in model.config.to_dict().items() if k != "sas_readable_only"}
    assert not LearnedConfig.from_dict(saved).sas_readable_only


def test_index_mode_ranks_match_the_dense_ranks_inside_the_list(indexed):
    """Within the top list, a candidate's content rank is its dense full-catalog rank (the list is the exact top)."""
    from engine.learned.candidates import source_ranks
    from engine.learned.toplists import row_dots

    model, events, _ = indexed
    h = _hist(events, "u9")
    st = model.state(h)
    lst = st.sources["content"]
    dense = np.where(st.seen, -np.inf, 0.0)
    for j in range(len(st.seen)):
        if not st.seen[j]:
            dense[j] = lst.score(np.array([j]))[0]
    cand = np.flatnonzero(~st.seen)
    _, R = source_ranks(st, ["content"], cand)
    want = np.array([(dense[~st.seen] > dense[c]).sum() for c in cand])
    assert np.array_equal(R[:, 0], np.minimum(want, len(lst.rows)))
    q = (0.9 ** np.arange(len(st.liked))[::-1]) @ model.meta.emb[st.liked]  # the weighted liked vector
    assert np.allclose(row_dots(model.meta.emb, lst.rows, q), lst.scores, rtol=0, atol=1e-12)


def test_promote_first_moves_only_the_first_marked_entry_up_to_its_position():
    from engine.learned.toplists import promote_first

    order = np.array([0, 1, 3, 4, 6, 5, 2, 7])
    marked = np.isin(order, [2, 5])  # two new items: 5 (6th) is the first, 2 (7th) the second
    assert promote_first(order, marked, 1).tolist() == [5, 0, 1, 3, 4, 6, 2, 7]
    assert promote_first(order, marked, 3).tolist() == [0, 1, 5, 3, 4, 6, 2, 7]
    assert promote_first(order, marked, 5).tolist() == [0, 1, 3, 4, 5, 6, 2, 7]
    for p in (0, 6, 7, 20):  # off, at its own position, below it, past the list: unchanged
        assert promote_first(order, marked, p).tolist() == order.tolist()
    assert promote_first(order, np.zeros(8, bool), 2).tolist() == order.tolist()
    assert promote_first(order[:0], marked[:0], 2).tolist() == []


def test_stage1_cache_keeps_a_bounded_number_of_vectors():
    """Per-time-bucket popularity is memoised per model, but not without bound: past the limit the oldest entry is
    made again when asked for, the newest are kept."""
    from engine.learned.candidates import Stage1

    s1 = Stage1.__new__(Stage1)
    made = []

    def make(b):
        made.append(b)
        return np.full(3, b)

    for b in range(3000):
        assert s1.cached(("pop_at", b), lambda b=b: make(b))[0] == b
    assert len(made) == 3000
    s1.cached(("pop_at", 2999), lambda: make(-1))  # recent: kept
    assert made[-1] == 2999
    assert s1.cached(("pop_at", 0), lambda: make(0))[0] == 0 and made[-1] == 0 and len(made) == 3001  # evicted: made again


def test_sparse_row_reads_equal_dense_indexing_on_small_and_large_catalogs():
    """SparseRows.at reads the same values as indexing the dense rows, both when it builds dense rows (a small catalog)
    and when it searches the entries (a large one); SparseRows.weighted sums in row order either way."""
    import scipy.sparse as sp

    from engine.learned.sequence import SparseRows

    rng = np.random.default_rng(7)
    for n in (50, 3000, 200_000):
        nnz = min(n * n // 5, 100_000)
        m = sp.csr_matrix((rng.random(nnz).astype(np.float32) + 0.1, (rng.integers(0, n, nnz), rng.integers(0, n, nnz))), shape=(n, n))
        m.sum_duplicates()  # sorted indices, each entry once
        rows = rng.permutation(np.argsort(-np.diff(m.indptr), kind="stable")[:10])  # rows with entries
        D = m[rows].toarray()
        cand = rng.permutation(np.union1d(rng.choice(n, min(n, 200), replace=False), np.flatnonzero(D.any(0))[:100]))
        assert (D[:, cand] > 0).sum() >= 10
        sr = SparseRows([m.indices[m.indptr[r] : m.indptr[r + 1]].astype(np.int64) for r in rows],
                        [m.data[m.indptr[r] : m.indptr[r + 1]] for r in rows], n)
        assert np.array_equal(sr.at(cand), D[:, cand]) and np.array_equal(sr.at(cand[::-1]), D[:, cand[::-1]])
        first = sr.at(cand)  # the same array object again: the same (read-only) answer; another one is read afresh
        assert sr.at(cand) is first and not first.flags.writeable and np.array_equal(sr.at(cand.copy()), D[:, cand])
        w = 0.9 ** np.arange(10)
        acc = np.zeros(n)
        for k in range(10):
            acc = acc + w[k] * D[k].astype(np.float64)
        cols, vals = sr.weighted(w)
        got = np.zeros(n)
        got[cols] = vals
        assert np.array_equal(got, acc)


def test_als_fit_raises_no_blas_thread_warning(monkeypatch):
    """``fit_als`` builds and fits implicit's ALS under a one-thread BLAS limit, so implicit's constructor check
    ("OpenBLAS is configured to use N threads ...") stays quiet in `persona fit` and `make demo` output."""
    import warnings

    import scipy.sparse as sp
    from threadpoolctl import threadpool_limits

    implicit_utils = pytest.importorskip("implicit.utils")
    from engine.learned.cf import fit_als

    monkeypatch.setattr(implicit_utils, "_checked_blas_config", False)  # implicit checks once per process
    X = sp.random(30, 20, density=0.3, format="csr", random_state=0, dtype=np.float32)
    with threadpool_limits(2, "blas"), warnings.catch_warnings(record=True) as got:  # as on a 2-core machine
        warnings.simplefilter("always")
        V = fit_als(X, factors=4, iterations=2, backend="implicit")
    assert V.shape == (20, 4) and np.isfinite(V).all()
    assert not [w for w in got if "threads" in str(w.message)], [str(w.message) for w in got]


def test_popularity_prior_is_a_content_guess_and_never_an_items_own_count():
    """Each item's log popularity as its content predicts it: items with events get it from a ridge fitted without them
    (changing an item's own count leaves its value), items without events from the ridge fitted on all; nan without
    text vectors."""
    from scipy.stats import spearmanr

    from engine.learned.meta import ItemMeta

    rng = np.random.default_rng(3)
    n, known = 400, 340
    emb = rng.normal(size=(n, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    truth = 2.5 + 2.0 * emb @ rng.normal(size=16)  # here content decides popularity
    counts = np.maximum(1, np.round(np.expm1(np.clip(truth, 0, None)))).astype(np.int64)
    counts[known:] = 0  # new items
    meta = ItemMeta(emb, np.zeros((n, 1), np.float32), ["x"], np.full(n, np.nan, np.float32))
    p = meta.popularity_prior(counts)
    assert p.dtype == np.float32 and np.isfinite(p).all()
    assert spearmanr(p[:known], np.log1p(counts[:known])).correlation > 0.8
    assert spearmanr(p[known:], truth[known:]).correlation > 0.8  # new items: a real guess, not a constant
    bumped = counts.copy()
    bumped[7] *= 3  # item 7's own count never reaches its own value; the models fitted with it move
    q = meta.popularity_prior(bumped)
    assert q[7] == pytest.approx(p[7], abs=1e-6)
    assert not np.allclose(q[known:], p[known:])
    flat = ItemMeta(np.zeros((n, 1), np.float32), meta.genres, ["x"], meta.year)
    assert np.isnan(flat.popularity_prior(counts)).all()
    # a small catalog, where one item's count could tip the choice of the ridge penalty: still never its own value
    small = ItemMeta(emb[:30], meta.genres[:30], ["x"], meta.year[:30])
    c30 = np.random.default_rng(1).integers(1, 50, 30)  # with the penalty chosen on every item's error, one of items 0-5 moved by 0.45 here
    p30 = small.popularity_prior(c30)
    for j in range(6):
        bumped = c30.copy()
        bumped[j] *= 100
        assert small.popularity_prior(bumped)[j] == pytest.approx(p30[j], abs=1e-9)
    broken = emb.copy()
    broken[5] = np.nan  # one broken vector costs its own guess, not everyone's
    assert np.isfinite(ItemMeta(broken, meta.genres, ["x"], meta.year).popularity_prior(counts)).all()


def test_content_popularity_feature_is_stage_ones_prior_and_a_new_items_value_in_training(fitted):
    from engine.learned.features import FEATURE_NAMES, cold_item, features

    model, _, events = fitted
    col = FEATURE_NAMES.index("content_pop")
    st = model.state(_hist(events, "u4"))
    cand = np.array([model.index.get("new"), model.index.get("i3"), model.index.get("i40")])
    F = features(model.stage1, model.meta, st, cand)
    assert np.array_equal(F[:, col], model.stage1.content_pop[cand]) and np.isfinite(F[:, col]).all()
    assert np.array_equal(cold_item(F, st, np.ones(3, bool), np.zeros(3))[:, col], F[:, col])  # content: shown as it is
    # the ranker's training stage 1 predicts from its own (label-free) counts
    s0 = model.train_stage1[0]
    assert np.array_equal(s0.content_pop, model.meta.popularity_prior(s0.seq.pop, CFG.seed))
    assert "content_pop" in model.ranker.columns


def test_a_format_3_model_without_the_dislike_share_column_loads_and_serves_as_fitted(tmp_path):
    """Models saved before ``dislike_share`` was a column (format 3) load and serve the lists they were fitted for,
    with the serving penalty they were saved with."""
    import json
    from dataclasses import replace

    items, events, emb = _data()
    model = PersonaModel.fit(events, items, emb, replace(CFG, drop_features=("attributes", "dislike"), dislike_penalty=2.0), progress=False)
    assert "dislike_share" not in model.ranker.columns
    d = model.save(tmp_path / "v3")
    meta = json.loads((d / "meta.json").read_text())
    meta["format_version"] = 3
    (d / "meta.json").write_text(json.dumps(meta))
    old = PersonaModel.load(d)
    assert old.config.dislike_penalty == 2.0 and old.ranker.columns == model.ranker.columns
    h = _hist(events, "u6")
    h[-1] = h[-1].model_copy(update={"rating": 1.0})  # the penalty has a film rated low to read
    assert old.recommend(h, k=10) == model.recommend(h, k=10)
    assert old.rank(h, [f"i{j}" for j in range(30)]) == model.rank(h, [f"i{j}" for j in range(30)])


def test_a_format_2_model_without_content_popularity_loads_and_serves_as_fitted(tmp_path):
    """Models saved before ``content_pop`` (format 2) load without it, the column stays nan, and the lists are the
    ones they were fitted to serve."""
    import json
    from dataclasses import replace

    from engine.learned.features import FEATURE_NAMES, features

    items, events, emb = _data()
    model = PersonaModel.fit(events, items, emb, replace(CFG, drop_features=("attributes", "content_pop")), progress=False)
    assert model.stage1.content_pop is None and "content_pop" not in model.ranker.columns
    d = model.save(tmp_path / "v2")
    meta = json.loads((d / "meta.json").read_text())
    meta["format_version"] = 2
    (d / "meta.json").write_text(json.dumps(meta))
    old = PersonaModel.load(d)
    assert old.stage1.content_pop is None
    h = _hist(events, "u6")
    assert old.recommend(h, k=10) == model.recommend(h, k=10)
    F = features(old.stage1, old.meta, old.state(h), np.arange(5))
    assert np.isnan(F[:, FEATURE_NAMES.index("content_pop")]).all()


def test_history_similarities_are_computed_once_per_request_with_the_values_of_separate_products(fitted):
    """The features and the dislike share of one request share the recent items' similarity products
    (``features.history_sims``); every value equals the separate product each computed before."""
    from dataclasses import replace

    from engine.learned.features import FEATURE_NAMES, dot64, features, history_sims
    from engine.learned.ties import ties

    model, _, events = fitted
    h = _hist(events, "u5")
    h[-2] = h[-2].model_copy(update={"rating": 1.0})  # a film rated low among the recent ones, and liked ones
    st = model.state(h)
    cand = model.index.rows([f"i{j}" for j in range(0, 60, 3)])
    s1, meta = model.stage1, model.meta
    F = features(s1, meta, st, cand)
    assert history_sims(s1, meta, st, cand)[1] is history_sims(s1, meta, st, cand)[1]  # one product per candidate array
    col = {f: F[:, k] for k, f in enumerate(FEATURE_NAMES)}
    liked = dot64(meta.emb[cand], meta.emb[st.liked])
    assert np.array_equal(col["cf_sim_max"], dot64(s1.cf_unit[cand], s1.cf_unit[st.recent]).max(1))
    assert np.array_equal(col["content_max"], liked.max(1)) and np.array_equal(col["content_mean"], liked.mean(1))
    assert 0 < len(st.liked) < len(st.recent) and np.array_equal(st.recent[st.liked_at], st.liked)
    explicit = ties(s1, meta, st, cand, rows=st.recent)  # the ties of given rows: their own products, not the memo
    for a, b in zip(ties(s1, meta, st, cand), explicit, strict=True):
        assert np.array_equal(a, b)
    bare = replace(st, liked_at=None)  # a hand-built state: no liked positions, and a copy starts with an empty memo
    assert not bare.memo and np.array_equal(features(s1, meta, bare, cand), F, equal_nan=True)


def test_dislike_share_is_a_ranker_column_and_the_penalty_reads_the_same_values(fitted):
    """``dislike_share``: per candidate, the share of its ties to the recent history from films rated low -- a feature
    column (float32 of the same values the serving penalty subtracts), 0 when nothing recent was rated low, and for a
    candidate shown as new (``cold_item``) the share of its content ties alone."""
    from engine.learned.features import FEATURE_NAMES, cold_item, dislike_share, features, recent_ties

    model, _, events = fitted
    s1, meta = model.stage1, model.meta
    cand = model.index.rows([f"i{j}" for j in range(0, 60, 3)])
    h = _hist(events, "u5")
    h[-2] = h[-2].model_copy(update={"rating": 1.0})
    st = model.state(h)
    F = features(s1, meta, st, cand)
    share = dislike_share(s1, meta, st, cand)
    assert share is model.dislike_share(st, cand)  # one computation per request, read by the column and the penalty
    col = F[:, FEATURE_NAMES.index("dislike_share")]
    assert np.array_equal(col, share.astype(np.float32)) and 0 < share.max() <= 1 and share.min() >= 0
    # the definition, from the tie matrices: the mean over the kinds a candidate has any tie of
    parts = [P[st.disliked].sum(0) / np.where(P.sum(0) > 0, P.sum(0), 1) for P in recent_ties(s1, meta, st, cand)]
    has = np.array([P.sum(0) > 0 for P in recent_ties(s1, meta, st, cand)])
    assert np.allclose(share, np.sum(parts, 0) / np.maximum(has.sum(0), 1))
    content = dislike_share(s1, meta, st, cand, content_only=True)
    cold = cold_item(F, st, np.arange(len(cand)) % 2 == 0, content)
    assert np.array_equal(cold[::2, FEATURE_NAMES.index("dislike_share")], content[::2].astype(np.float32))
    assert np.array_equal(cold[1::2], F[1::2], equal_nan=True)
    liked_only = model.state([e.model_copy(update={"rating": 5.0}) for e in _hist(events, "u5")])
    assert not features(s1, meta, liked_only, cand)[:, FEATURE_NAMES.index("dislike_share")].any()
