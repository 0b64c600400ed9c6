"""The LLM in ranking, measured: shared-prefix Yes/No scoring equals scoring each full prompt, with the
real in-process model (the session's packaged Gemma 270M)."""

import pytest

pytestmark = pytest.mark.slow

PREFIX = (
    "Task: decide whether a viewer will enjoy a movie.\n\nMovies the viewer liked recently:\n"
    "- <<<Star Wars (1977)>>> (<<<Action, Sci-Fi>>>)\n- <<<Fargo (1996)>>> (<<<Crime, Drama>>>)\n\n"
)
SUFFIXES = [
    f"Candidate movie: <<<{t}>>>; genres: <<<{g}>>>\nWill the viewer enjoy the candidate movie? Answer Yes or No.\nAnswer:"
    for t, g in [("Toy Story (1995)", "Animation"), ("Heat (1995)", "Action, Crime, Thriller"),
                 ("Wallace & Gromit: The Best of Aardman Animation (1996)", "Animation, Comedy"), ("Alien", "Horror")]
]


def test_shared_prefix_scores_equal_full_prompts(local_llm):
    full = local_llm.yes_probabilities([PREFIX + s for s in SUFFIXES])
    t0 = local_llm.tokens_run
    shared = local_llm.yes_probabilities_shared(PREFIX, SUFFIXES)
    used = local_llm.tokens_run - t0
    assert len(shared) == len(full) and all(p is not None for p in shared)
    assert max(abs(a - b) for a, b in zip(full, shared)) < 1e-4
    assert len({round(p, 4) for p in shared}) > 1, "every candidate got the same score: the suffix was ignored"
    naive_tokens = sum(local_llm.count_tokens(PREFIX + s) for s in SUFFIXES)
    assert used < naive_tokens - 2 * local_llm.count_tokens(PREFIX) // 2, "the prefix was run more than once"


# -- the LLM beside a fitted ranker (a small fitted store: 120 users of ml-100k, whole catalog) ---------

import re  # noqa: E402
from collections import Counter  # noqa: E402

from engine import Engine  # noqa: E402
from engine.components import Components  # noqa: E402
from engine.explain import title_variants  # noqa: E402
from engine.items import genres_of  # noqa: E402
from tests.conftest import NO_CLIP, copy_store  # noqa: E402


@pytest.fixture(scope="module")
def small_fitted(ml, ml_items_path, tmp_path_factory, text_encoder):
    path = copy_store(ml_items_path, tmp_path_factory.mktemp("llmrank") / "store")
    with Engine.open(path, NO_CLIP, components=Components(text_encoder=text_encoder)) as eng:
        eng.add_events([e for e in ml.events if int(e.user_id) <= 120])
        eng.fit()
    return path


def _named_titles(text: str, ml) -> set[str]:
    """Catalog items whose title a text names (any variant of 5+ characters, on word boundaries)."""
    low = text.lower()
    return {it.id for it in ml.items for v in title_variants(it.title) if len(v) >= 5 and re.search(rf"\b{re.escape(v)}\b", low)}


def test_grounded_explanations_name_only_history_items_and_item_genres(small_fitted, make_engine, local_llm, ml):
    """Real in-process LLM; every title an explanation names is in the user's history (or is the item
    itself) and every genre it names is in the item's payload; the ranker's reasons vary across a top-10."""
    eng = make_engine(small_fitted, llm_obj=local_llm)
    all_genres = {g for it in ml.items for g in genres_of(it.attributes)}
    checked = 0
    for uid in ("1", "7"):
        history = {e.item_id for e in eng.history(uid)}
        recs = eng.recommend(uid, k=10)
        assert recs.strategy == "learned"
        assert Counter(r.because_of[0] for r in recs.items).most_common(1)[0][1] <= 5, "one history item explains most of the list"
        for r in recs.items[:2]:
            ex = eng.explain(uid, r.item_id)
            payload_genres = set(genres_of(eng.item(r.item_id).get("attributes") or {}))
            named = _named_titles(ex.text, ml) - {r.item_id}
            assert named <= history, (ex.text, named - history)
            for g in all_genres - payload_genres:
                assert not re.search(rf"\b{re.escape(g.lower())}\b", ex.text.lower()), (ex.text, g)
            assert ex.grounded_in and set(ex.grounded_in) <= history
            assert ex.source == "llm" or ex.fallback  # a rejected sentence is flagged
            checked += 1
    assert checked == 4


def test_listwise_with_shuffled_labels_real_llm(small_fitted, make_engine, local_llm):
    from engine.ranking import listwise_rerank

    eng = make_engine(small_fitted, llm_obj=local_llm)
    # the very list recommend(rerank="listwise") re-ranks: the top rerank_candidates, whatever k is asked for
    recs = eng.recommend("13", k=eng.settings.retrieval.rerank_candidates).items
    hits = eng.catalog.hits([r.item_id for r in recs])
    ordered = [hits[r.item_id] for r in recs]
    out, note, info = listwise_rerank(eng.prompts, local_llm, ordered, eng.user_context("13"))
    assert sorted(h.payload["item_id"] for h in out) == sorted(r.item_id for r in recs)
    assert set(info["chosen"]) <= set(info["labels"]) and info["labels"] != sorted(info["labels"])
    if info["failure"]:
        assert [h.payload["item_id"] for h in out] == [r.item_id for r in recs] and info["failure"] in note
    via_engine = eng.recommend("13", k=6, rerank="listwise")
    assert via_engine.strategy.endswith("+llm-listwise")
    assert (via_engine.fallback is not None) == bool(info["failure"] or note)


def test_llm_feature_stage_serves_through_recommend(small_fitted, make_engine, local_llm):
    """Without a fitted LLM stage the ranker's order is kept (flagged); with one saved beside the model,
    recommend(rerank="llm_feature") reorders the top-N by it with real P(Yes) scores."""
    import numpy as np

    from engine.llm_feature import LLMStage, list_features, rerank_order

    eng = make_engine(small_fitted, llm_obj=local_llm, retrieval={"rerank_candidates": 5})
    base = eng.recommend("7", k=5)
    none = eng.recommend("7", k=5, rerank="llm_feature")
    assert [r.item_id for r in none.items] == [r.item_id for r in base.items] and "no LLM stage" in none.fallback
    # A stage that trusts only the LLM (trained on lists where the LLM's top item is the label).
    rng = np.random.default_rng(0)
    lists, labels = [], []
    for _ in range(100):
        p = rng.uniform(0.1, 0.9, 5)
        lists.append(list_features(rng.normal(size=5), p.tolist()))
        labels.append((np.arange(5) == p.argmax()).astype(float))
    stage = LLMStage.train(lists, labels)
    stage.save(eng.learned.root / base.model_version)
    got = eng.recommend("7", k=5, rerank="llm_feature")
    assert got.fallback is None and got.strategy == "learned+llm-llm_feature"
    ids = [r.item_id for r in base.items]
    assert sorted(r.item_id for r in got.items) == sorted(ids)
    # the served order is the stage's order over the ranker's scores and the real P(Yes) that score() gives
    probs = [s.probability for s in eng.score("7", ids)]
    order, _ = rerank_order(stage, [r.score for r in base.items], probs)
    assert [r.item_id for r in got.items] == [ids[i] for i in order]
    assert len(set(probs)) > 1  # real, distinct model scores


@pytest.mark.full
def test_fit_trains_the_llm_stage_on_fitted_users(small_fitted, tmp_path, make_engine, local_llm):
    """Engine.fit with fit.llm_feature_users trains the stage from the stored events (real LLM) and saves it
    beside the model; recommend(rerank="llm_feature") then serves it without a fallback."""
    path = copy_store(small_fitted, tmp_path / "store")
    eng = make_engine(path, llm_obj=local_llm, fit={"llm_feature_users": 40}, retrieval={"rerank_candidates": 10})
    rep = eng.fit()
    info = rep.info.get("llm_stage")
    assert info and info["lists"] >= 1 and info["top_n"] == 10
    assert (path / "models" / rep.version / "llm_stage.json").exists()
    recs = eng.recommend("7", k=10, rerank="llm_feature")
    assert recs.fallback is None and recs.strategy == "learned+llm-llm_feature"
