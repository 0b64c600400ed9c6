"""Metrics against hand-computed values; the protocol never leaks test items."""

import math

import pytest

from engine.offline.evaluate import auc, hit_rate, leave_last_out, mrr, ndcg, rank_of_positive, summarize


def test_metrics_by_hand():
    # positive first; 3 negatives above it, one tie, rest below
    scores = [0.5, 0.9, 0.8, 0.7, 0.5, 0.1, 0.0]
    assert rank_of_positive(scores) == 4.5
    assert auc(scores) == pytest.approx((2 + 0.5) / 6)
    assert hit_rate(4.5, 5) == 1.0 and hit_rate(4.5, 4) == 0.0
    assert ndcg(1, 5) == 1.0 and ndcg(3, 5) == pytest.approx(1 / math.log2(4)) and ndcg(6, 5) == 0.0
    assert mrr(2, 5) == 0.5 and mrr(11, 10) == 0.0
    m = summarize([[1.0, 0.0, 0.0], [0.0, 1.0, 0.5]], ks=(1, 2))
    assert m["AUC"] == pytest.approx(0.5) and m["HR@1"] == 0.5 and m["HR@2"] == 0.5
    assert m["NDCG@2"] == pytest.approx(0.5) and m["MRR@2"] == pytest.approx(0.5)


def test_leave_last_out_no_leak_and_deterministic(ml):
    a = leave_last_out(ml.events, [i.id for i in ml.items], seed=3)
    b = leave_last_out(ml.events, [i.id for i in ml.items], seed=3)
    assert a.candidates == b.candidates and len(a.test) == 943
    for uid, test in a.test.items():
        hist = a.train[uid]
        assert all(e.timestamp <= test.timestamp for e in hist)
        assert test not in hist
        cands = a.candidates[uid]
        assert cands[0] == test.item_id and len(cands) == 21 and len(set(cands)) == 21
        interacted = {e.item_id for e in ml.user_events(uid)}
        assert not set(cands[1:]) & interacted  # negatives were never seen by the user
    train = {(e.user_id, e.item_id, e.timestamp) for e in a.train_events()}
    assert not any((t.user_id, t.item_id, t.timestamp) in train for t in a.test.values())


@pytest.mark.slow
@pytest.mark.full
def test_evaluate_small_run_reproducible(tmp_path, ml, text_encoder, monkeypatch):
    from engine import Engine
    from engine.components import Components
    from engine.offline import evaluate as ev

    orig = Engine.open.__func__

    def open_shared(cls, path=None, config=None):
        return orig(cls, path, config, components=Components(text_encoder=text_encoder))

    monkeypatch.setattr(Engine, "open", classmethod(open_shared))
    r1 = ev.evaluate(tmp_path / "e", ml, users=60, sasrec=True, sasrec_epochs=5, config={"llm": {"backend": "none"}}, progress=False)
    r2 = ev.evaluate(tmp_path / "e", ml, users=60, sasrec=True, sasrec_epochs=5, config={"llm": {"backend": "none"}}, progress=False)
    assert r1["metrics"] == r2["metrics"]
    m = r1["metrics"]
    assert 0.35 < m["random"]["AUC"] < 0.65
    assert m["popularity"]["AUC"] > m["random"]["AUC"]
    md = ev.write_report(r1, tmp_path / "rep")
    assert (tmp_path / "rep" / "metrics.png").stat().st_size > 1000 and "| persona retrieval |" in md.read_text()


@pytest.mark.slow
def test_persona_eval_public_path_report(tmp_path, ml, text_encoder, ml_items_path, monkeypatch):
    """`persona eval` end to end on a user sample: baselines and Persona (Engine.fit + recommend +
    rank) on the same split, intervals around every mean, a paired comparison, and the report files."""
    # the fit reads PERSONA_* like any engine: 3 epochs of the sequence model instead of 39 keep this test ~150 s shorter
    # (the model still trains and serves; its default length is the eval report's business, not this plumbing test's)
    monkeypatch.setenv("PERSONA_FIT__SEQUENCE_EPOCHS", "3")
    from types import SimpleNamespace

    from engine.components import Components
    from engine.offline.persona_eval import run_report, write_report
    from tests.conftest import copy_store

    copy_store(ml_items_path, tmp_path / "e" / "items")  # the catalog indexed once per session
    (tmp_path / "e" / "items" / ".complete").write_text("ok")
    # the first 300 users' 31k events: both fits (valid, then train+valid for test) take a third of the full data's time
    data = SimpleNamespace(items=ml.items, events=[e for e in ml.events if int(e.user_id) <= 300])
    rep = run_report(tmp_path / "e", data, users=40, quick=True, baselines=("popularity", "ease"), n_boot=200, progress=False,
                     components=Components(text_encoder=text_encoder))
    p = rep["persona"]
    assert p["info"]["test"]["model_version"] != p["info"]["valid"]["model_version"]  # refit on train+valid for test
    for r in [p, *rep["baselines"].values()]:
        for m in ("hr@10", "ndcg@10", "recall@50", "auc", "hr@5", "ndcg@5", "mrr@10"):
            c = r["test"][m]
            assert c["lo"] <= c["mean"] <= c["hi"]
    assert len(p["per_user"]["ndcg@10"]) == 40 and rep["provenance"]["commit"] and rep["provenance"]["data_sha256"]
    assert set(rep["persona_vs_best"]) == {"ndcg@10", "hr@10", "auc"}
    md = write_report(rep, tmp_path / "rep")
    text = md.read_text()
    assert "| **persona** (fit + recommend) |" in text and "| ease |" in text and (tmp_path / "rep" / "metrics.png").stat().st_size > 1000


def test_ablations_and_pool_recall_on_valid(tmp_path, ml, text_encoder, ml_items_path):
    """`persona eval --ablate-only`: refits on the VALID store with a source removed, paired differences against
    the full model, and the pool's recall next to single sources at the same size (150 users keep it cheap)."""
    from types import SimpleNamespace

    from engine.components import Components
    from engine.offline.persona_eval import ablation_report, write_ablations
    from tests.conftest import copy_store

    copy_store(ml_items_path, tmp_path / "e" / "items")
    (tmp_path / "e" / "items" / ".complete").write_text("ok")
    data = SimpleNamespace(items=ml.items, events=[e for e in ml.events if int(e.user_id) <= 150])
    ab = ablation_report(tmp_path / "e", data, users=60, n_boot=200, only=("-source cooc",), progress=False,
                         components=Components(text_encoder=text_encoder))
    assert ab["stage"] == "valid" and ab["users"] == 60 and set(ab["variants"]) == {"-source cooc"}
    full, v = ab["full"], ab["variants"]["-source cooc"]
    for s in [*full.values(), *v["valid"].values(), *ab["pool_recall"].values()]:
        assert s["lo"] <= s["mean"] <= s["hi"]
    assert full["auc"]["mean"] > 0.7  # far above chance on the sampled 1:20 candidates
    d = v["minus_full"]["ndcg@10"]
    assert d["diff"] == pytest.approx(v["valid"]["ndcg@10"]["mean"] - full["ndcg@10"]["mean"], abs=1e-9)
    rec = ab["pool_recall"]
    assert set(rec) == {"pool", "cf", "trans", "cooc", "content", "pop", "trend", "pop_at", "fresh"}
    assert rec["pool"]["mean"] > rec["pop"]["mean"] and rec["pool"]["mean"] > rec["content"]["mean"]
    text = write_ablations(ab, tmp_path / "rep").read_text()
    assert "| -source cooc |" in text and "| cooc alone |" in text and (tmp_path / "rep" / "ablations.json").exists()


def test_cold_start_persona_and_baselines_on_the_same_targets(tmp_path, ml, text_encoder, ml_items_path):
    """`persona eval --cold-start` on 150 users: Persona (fit + recommend) and baselines for cold users (last 5
    events) and cold items (all events removed), with intervals and the paired comparison."""
    from types import SimpleNamespace

    from engine.components import Components
    from engine.offline.coldstart import cold_lines, run_cold_start
    from engine.offline.split import temporal_split
    from tests.conftest import copy_store

    copy_store(ml_items_path, tmp_path / "e" / "items")  # stage_store copies <path>/items for each setting
    (tmp_path / "e" / "items" / ".complete").write_text("ok")
    data = SimpleNamespace(items=ml.items, events=[e for e in ml.events if int(e.user_id) <= 150])
    split = temporal_split(data.events, [i.id for i in data.items], seed=0)
    cs = run_cold_start(tmp_path / "e", data, split, split.users, {"popularity": {}, "itemknn": {"k": 50}, "textknn": {"recent": 3}},
                        n_boot=200, components=Components(text_encoder=text_encoder), item_slot=3)
    cu, ci = cs["cold_users"], cs["cold_items"]
    assert cu["n_users"] == 15 and set(cu["methods"]) == {"persona", "popularity", "itemknn", "textknn"}
    assert ci["n_users"] >= 5 and set(ci["methods"]) == {"persona", "popularity", "textknn"}
    assert ci["methods"]["popularity"]["test"]["ndcg@10"]["mean"] == 0.0  # no events: popularity ranks them last
    for r in (cu, ci):
        for m in r["methods"].values():
            assert all(s["lo"] <= s["mean"] <= s["hi"] for s in m["test"].values())
    assert "persona_vs_best" in cu and "| persona |" in "\n".join(cold_lines(cs))
    # the opt-in new-item slot: the same ranker refitted with fit.new_item_slot=3, every user scored both ways
    sl = ci["slot"]
    assert sl["position"] == 3 and sl["same_ranker"] and sl["new"]["n_users"] == ci["n_users"] and sl["others"]["n_users"] > 100
    assert sl["new"]["without"]["ndcg@10"] == ci["methods"]["persona"]["test"]["ndcg@10"]
    # a warm target can only move down when a new item takes position 3; a new target only up (it is the best new item,
    # or it stays below the one that moves)
    assert sl["others"]["with"]["ndcg@10"]["mean"] <= sl["others"]["without"]["ndcg@10"]["mean"]
    assert sl["new"]["with"]["ndcg@10"]["mean"] >= sl["new"]["without"]["ndcg@10"]["mean"]
    assert "Opt-in new-item slot" in "\n".join(cold_lines(cs))
