"""engine.offline: split, metrics, bootstrap and baselines (fast; ml-100k with tiny configs)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.offline.baselines import ALS, EASE, ItemKNN, Markov, Popularity, TextKNN, ease_weights, item_texts
from engine.offline.metrics import bootstrap_ci, full_rank, paired_bootstrap, rank_from_list, sampled_metrics, user_metrics
from engine.offline.protocol import evaluate_scorer, model_scorer, truncate_histories, tune_and_test
from engine.offline.split import event_sort_key, order_history, temporal_split
from engine.types import Event


def ev(u, i, t):
    return Event(user_id=str(u), item_id=str(i), timestamp=float(t))


# -- metrics ------------------------------------------------------------------------------------


def test_full_rank_ties_count_half_and_seen_excluded():
    s = np.array([5.0, 3.0, 3.0, 3.0, 9.0, 1.0])
    assert full_rank(s, 1) == 2 + 0.5 * 2  # items 0 and 4 higher, 2 and 3 tied
    assert full_rank(s, 1, exclude=[4, 2]) == 1 + 0.5 * 1
    assert full_rank(s, 4) == 0
    assert full_rank(np.zeros(11), 0) == 5.0  # constant scores: middle rank, no free hit at K=1


def test_full_and_sampled_metrics_by_hand():
    index = {str(i): i for i in range(6)}
    s = np.array([5.0, 3.0, 3.0, 3.0, 9.0, 1.0])
    m = user_metrics("1", index, seen=["4"], candidates=["1", "0", "5", "2"], scores=s)
    assert m["rank"] == 1 + 0.5 * 2
    assert m["hr@10"] == 1.0 and m["ndcg@10"] == pytest.approx(1 / math.log2(4))
    assert m["recall@50"] == 1.0
    # candidates: pos 3 vs negatives 5, 1, 3 -> below 1, tied 1 of 3
    assert m["auc"] == pytest.approx(1.5 / 3)
    assert m["mrr@10"] == pytest.approx(1 / 2.5)
    sm = sampled_metrics([2.0] + [1.0] * 20)
    assert sm["auc"] == 1.0 and sm["hr@5"] == 1.0 and sm["ndcg@5"] == 1.0 and sm["mrr@10"] == 1.0
    sm = sampled_metrics([1.0] * 21)
    assert sm["auc"] == 0.5 and sm["hr@5"] == 0.0 and sm["mrr@10"] == 0.0


def test_ranked_list_metrics_miss_beyond_n():
    assert rank_from_list(["a", "b", "c"], "c", exclude=["b"]) == 1.0
    assert rank_from_list(["a", "b"], "z") == math.inf
    m = user_metrics("z", {c: i for i, c in enumerate("abcz")}, seen=[], candidates=["z", "a"], ranked=["a", "b"])
    assert m["hr@10"] == 0.0 and m["ndcg@10"] == 0.0 and m["auc"] == 0.0


def test_bootstrap_ci_contains_mean_and_shrinks():
    rng = np.random.default_rng(1)
    small, big = rng.random(100), rng.random(5000)
    m1, lo1, hi1 = bootstrap_ci(small, n_boot=500)
    m2, lo2, hi2 = bootstrap_ci(big, n_boot=500)
    assert lo1 <= m1 <= hi1 and lo2 <= m2 <= hi2
    assert hi2 - lo2 < (hi1 - lo1) / 3


def test_paired_bootstrap_detects_difference():
    rng = np.random.default_rng(2)
    a = rng.random(500)
    b = a - 0.05 + rng.normal(0, 0.02, 500)
    r = paired_bootstrap(a, b, n_boot=500)
    assert r["diff"] == pytest.approx(0.05, abs=0.01) and r["lo"] > 0 and r["p"] < 0.01
    noise = rng.normal(0, 0.02, 500)
    same = paired_bootstrap(a, a + noise - noise.mean(), n_boot=500)  # no mean difference
    assert same["lo"] < 0 < same["hi"] and same["p"] > 0.05


# -- split ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split(ml):
    return temporal_split(ml.events, [i.id for i in ml.items], seed=0)


def test_split_no_leak_for_any_user(ml, split):
    assert len(split.users) == 943
    fit_v = {(e.user_id, e.item_id) for e in split.fit_events("valid")}
    fit_t = {(e.user_id, e.item_id) for e in split.fit_events("test")}
    for u in split.users:
        v, t = split.valid[u], split.test[u]
        assert (u, v.item_id) not in fit_v and (u, t.item_id) not in fit_v
        assert (u, v.item_id) in fit_t and (u, t.item_id) not in fit_t
        hv = split.history(u, "valid")
        assert all(e.item_id not in (v.item_id, t.item_id) for e in hv)
        assert split.history(u, "test")[-1] is v
        assert event_sort_key(u, v.item_id, v.timestamp, 0) < event_sort_key(u, t.item_id, t.timestamp, 0)
        assert event_sort_key(u, hv[-1].item_id, hv[-1].timestamp, 0) < event_sort_key(u, v.item_id, v.timestamp, 0)
    assert len(split.fit_events("test")) == len(ml.events) - len(split.users)  # everything but test events


def test_candidates_never_interacted(ml, split):
    seen: dict[str, set] = {}
    for e in ml.events:
        seen.setdefault(e.user_id, set()).add(e.item_id)
    for stage in ("valid", "test"):
        for u in split.users:
            c = split.candidates[stage][u]
            assert c[0] == split.target(u, stage).item_id and len(c) == 21 and len(set(c)) == 21
            assert not (set(c[1:]) & seen[u])


def test_split_deterministic_and_seed_changes_only_ties_and_negatives(ml, split):
    again = temporal_split(ml.events, [i.id for i in ml.items], seed=0)
    assert again.candidates == split.candidates and {u: e.item_id for u, e in again.test.items()} == {u: e.item_id for u, e in split.test.items()}
    other = temporal_split(ml.events, [i.id for i in ml.items], seed=1)
    assert other.candidates["test"] != split.candidates["test"]
    changed = 0
    for u in split.users:
        a = split.train[u] + [split.valid[u], split.test[u]]
        b = other.train[u] + [other.valid[u], other.test[u]]
        assert [e.timestamp for e in a] == [e.timestamp for e in b]  # same chronology
        assert sorted(e.item_id for e in a) == sorted(e.item_id for e in b)
        changed += split.test[u].item_id != other.test[u].item_id
        if split.test[u].item_id != other.test[u].item_id:
            assert split.test[u].timestamp == other.test[u].timestamp  # differs only inside a tie group
    assert changed > 50  # ties are common in ml-100k


def test_ties_are_shuffled_not_id_ordered():
    evs = [ev("u", i, 0) for i in range(100, 140)]
    ids = [int(e.item_id) for e in order_history(evs, seed=0)]
    assert ids != sorted(ids) and sorted(ids) == list(range(100, 140))
    assert ids == [int(e.item_id) for e in order_history(list(reversed(evs)), seed=0)]


# -- baselines -----------------------------------------------------------------------------------


def test_ease_matches_closed_form():
    X = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0]], float)
    lam = 2.0
    events = [ev(u, i, 0) for u in range(5) for i in range(4) if X[u, i]]
    m = EASE(lam=lam).fit(events, [str(i) for i in range(4)])
    P = np.linalg.inv(X.T @ X + lam * np.eye(4))
    B = np.eye(4) - P / np.diag(P)[None, :]
    assert np.allclose(m.B, B) and np.allclose(np.diag(m.B), 0)
    assert np.allclose(ease_weights(X.T @ X, lam), B)
    hist = [ev("new", 0, 0), ev("new", 2, 1)]
    assert np.allclose(m.score("new", hist), np.array([1, 0, 1, 0]) @ B)


def test_markov_scores_what_follows_last_item():
    items = [str(i) for i in range(5)]
    events = [ev("a", 0, 1), ev("a", 1, 2), ev("a", 2, 3), ev("b", 0, 1), ev("b", 1, 2), ev("b", 3, 3), ev("c", 1, 1), ev("c", 3, 2)]
    m = Markov(w=0.0, window=1).fit(events, items)
    s = m.score("x", [ev("x", 4, 0), ev("x", 1, 1)])
    assert s[3] == pytest.approx(2 / 3) and s[2] == pytest.approx(1 / 3) and s[0] == s[4] == 0
    s0 = m.score("x", [ev("x", 0, 0)])
    assert s0[1] == pytest.approx(1.0)
    blended = Markov(w=0.5, window=1).fit(events, items).score("x", [ev("x", 0, 0)])
    assert blended[3] > 0 and blended[1] > blended[3]


def test_als_fold_in_matches_recalculate_user(ml, split):
    from scipy import sparse

    m = ALS(factors=8, iterations=2, regularization=0.1, alpha=5.0).fit(split.fit_events("valid"), split.item_ids)
    h = np.array([1, 7, 30, 200])
    row = sparse.csr_matrix((np.ones(4, np.float32), (np.zeros(4, int), h)), shape=(1, m.n))
    assert np.allclose(np.asarray(m.model.recalculate_user(0, row)).ravel(), m.user_factors(h), atol=1e-4)


@pytest.mark.parametrize(
    "cls,params",
    [
        (Popularity, {}),
        (ItemKNN, {"k": 20, "shrink": 10}),
        (EASE, {"lam": 500}),
        (ALS, {"factors": 8, "iterations": 2}),
        (Markov, {"w": 0.1}),
    ],
)
def test_baselines_score_catalog_and_beat_chance(ml, split, cls, params):
    users = split.users[::8]
    r = tune_and_test(cls, split, [params], {"seed": 0}, users=users, n_boot=50)
    assert len(r["per_user"]["ndcg@10"]) == len(users)
    m = cls(**params).fit(split.fit_events("test"), split.item_ids)
    s = m.score(users[0], split.history(users[0], "test"))
    assert s.shape == (len(split.item_ids),) and np.isfinite(s).all()
    assert r["test"]["auc"]["mean"] > 0.6


def test_sasrec_tiny(ml, split):
    from engine.offline.seqmodels import SASRec

    users = split.users[::20]
    m = SASRec(epochs=2, eval_every=1, patience=1, maxlen=20, dim=16, blocks=1, threads=1, batch=256)
    m.set_validation([([e.item_id for e in split.history(u, "valid")], split.target(u, "valid").item_id) for u in users])
    m.fit(split.fit_events("valid"), split.item_ids)
    assert 1 <= m.fitted_params["epochs"] <= 2 and len(m.curve) >= 1
    s = m.score(users[0], split.history(users[0], "test"))
    assert s.shape == (len(split.item_ids),) and np.isfinite(s).all()
    many = m.score_many([split.history(u, "test") for u in users[:3]])
    assert np.allclose(many[0], s, atol=1e-5)


def test_textknn_with_given_embeddings(ml, split):
    rng = np.random.default_rng(0)
    emb = {i: rng.normal(size=8) for i in split.item_ids}
    m = TextKNN(embeddings=emb, recent=3).fit(split.fit_events("valid"), split.item_ids)
    u = split.users[0]
    s = m.score(u, split.history(u, "valid"))
    assert s.shape == (len(split.item_ids),) and np.isfinite(s).all()
    texts = item_texts(ml.items)
    assert ml.items[0].title in texts[ml.items[0].id] and "Genres:" in texts[ml.items[0].id]


def test_evaluate_scorer_accepts_ranked_lists(split):
    users = split.users[:30]
    pop = Popularity().fit(split.fit_events("valid"), split.item_ids)
    full = evaluate_scorer(model_scorer(pop), split, "valid", users)
    order = [split.item_ids[j] for j in np.argsort(-pop.counts, kind="stable")]
    ranked = evaluate_scorer(lambda u, h, c: order[:100], split, "valid", users)
    assert ranked["hr@10"].sum() >= 0 and len(ranked["ndcg@10"]) == 30
    assert abs(full["hr@10"].mean() - ranked["hr@10"].mean()) <= 0.1  # same ranking up to tie order


def test_truncate_histories(ml):
    events, cold = truncate_histories(ml.events, 0.1, 5, seed=0)
    assert 80 <= len(cold) <= 100
    sp = temporal_split(events, [i.id for i in ml.items], seed=0)
    assert all(len(sp.train[u]) == 5 for u in cold)


def test_cold_splits_keep_the_main_targets_and_hide_cold_items(split):
    from engine.offline.coldstart import cold_item_split, cold_user_split

    cu, cold = cold_user_split(split, seed=0)
    assert 0.08 * len(split.users) <= len(cold) <= 0.12 * len(split.users)
    for u in cold:
        assert cu.train[u] == order_history(split.train[u], split.seed)[-5:]  # the LAST five, right before valid/test
        assert cu.test[u] == split.test[u] and cu.valid[u] == split.valid[u]
    warm = next(u for u in split.users if u not in set(cold))
    assert cu.train[warm] == split.train[warm]
    ci, users, items = cold_item_split(split, seed=0)
    assert users and all(split.test[u].item_id in items for u in users)
    fit = ci.fit_events("test")
    assert not {e.item_id for e in fit} & items and len(fit) < len(split.fit_events("test"))
    assert all(e.item_id not in items for u in users for e in ci.history(u, "test"))


def test_sort_events_is_sorted_by_event_sort_key(ml):
    """The fast order (hashing only tied timestamps) that serving and fitting use equals the defining key's."""
    from engine.types import sort_events

    for uid in ("1", "13", "405"):
        evs = ml.user_events(uid)[::-1]  # any input order
        for seed in (0, 7):
            want = sorted(evs, key=lambda e: event_sort_key(e.user_id, e.item_id, e.timestamp, seed))
            assert [e.item_id for e in sort_events(evs, seed)] == [e.item_id for e in want]
