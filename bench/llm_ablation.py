"""Ablation: the learned ranker with and without the LLM stage (P(Yes) as a feature over its top-N),
and the listwise prompt's failure rate, on the VALIDATION split of ml-100k (the test event is never read).

The store holds the items and the train events only (``temporal_split(...).fit_events("valid")``);
``Engine.fit()`` trains the learned model; each user's list is ``Engine.recommend(k=50)`` (the public
path). For the top-N of that list the LLM's P(Yes) is computed with one shared prefix per user
(:func:`engine.llm_feature.yes_scores`) and cached in ``--cache`` (the run can be resumed and time-boxed
with ``--max-minutes``). Stage 2 (:class:`engine.llm_feature.LLMStage`) is trained by K-fold cross-fitting
over the evaluated users: each user's list is reordered by a model trained on the other folds' valid labels,
so no user's own label reaches their list. Reported: NDCG@10 and HR@10 with and without the stage, paired
bootstrap intervals, the AUC of P(Yes) inside the top-N, and the listwise failure rate (``--listwise``).

    python -m bench.llm_ablation --users 200 --model packaged:qwen2.5-0.5b-instruct --out docs/llm-ablation.json
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from engine import Engine
from engine.items import prompt_row
from engine.llm_feature import LLMStage, list_features, rerank_order, yes_scores
from engine.offline.datasets import load_movielens
from engine.offline.metrics import bootstrap_ci, paired_bootstrap
from engine.offline.split import temporal_split
from engine.ranking import listwise_rerank

log = logging.getLogger("llm_ablation")


def ndcg_hr(ranked: list[str], target: str, k: int = 10) -> tuple[float, float]:
    if target in ranked[:k]:
        r = ranked.index(target)
        return 1.0 / np.log2(r + 2), 1.0
    return 0.0, 0.0


def auc_in_list(probs: list[float], pos: int) -> float | None:
    others = [p for i, p in enumerate(probs) if i != pos]
    if not others:
        return None
    return float(np.mean([1.0 if probs[pos] > o else 0.5 if probs[pos] == o else 0.0 for o in others]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--top-n", type=int, default=20)
    ap.add_argument("--model", default="packaged:qwen2.5-0.5b-instruct")
    ap.add_argument("--items-store", default="/tmp/evfull/eval-ml100k/items", help="an indexed ml-100k catalog to copy (else indexed here)")
    ap.add_argument("--work", default="/tmp/llm-ablation")
    ap.add_argument("--cache", default=None, help="JSONL of per-user LLM scores (default WORK/scores-MODEL.jsonl)")
    ap.add_argument("--max-minutes", type=float, default=20.0)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--listwise", type=int, default=0, help="also run the shuffled listwise prompt for this many users")
    ap.add_argument("--prompt-version", type=int, default=2, help="preference_yes_no version (2: compact, no descriptions)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    ml = load_movielens()
    split = temporal_split(ml.events, [i.id for i in ml.items], seed=a.seed)
    rng = np.random.default_rng(a.seed)
    users = sorted(rng.choice(split.users, size=min(a.users, len(split.users)), replace=False).tolist(), key=int)
    store = work / "valid"
    cfg = {"clip": {"enabled": False}, "llm": {"backend": "transformers", "model": a.model, "batch_size": 10},
           "profile": {"use_llm": False}, "prompt_versions": {"preference_yes_no": a.prompt_version}}
    fresh = not (store / ".fitted").exists()
    if fresh:
        shutil.rmtree(store, ignore_errors=True)
        src = Path(a.items_store)
        if (src / ".complete").exists():
            shutil.copytree(src, store)
        with Engine.open(store, cfg) as eng:
            if not (src / ".complete").exists():
                eng.add_items(ml.items, progress=True)
            eng.add_events(split.fit_events("valid"))
            eng.fit()
        (store / ".fitted").write_text("ok")
    cache = Path(a.cache or work / f"scores-{a.model.replace(':', '_').replace('/', '_')}-v{a.prompt_version}-n{a.top_n}.jsonl")
    done = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            d = json.loads(line)
            done[d["user"]] = d
    t_start = time.perf_counter()
    lw_rows = []
    with Engine.open(store, cfg) as eng:
        llm = eng.llm()
        with cache.open("a") as fh:
            for n, u in enumerate(users):
                if u in done:
                    continue
                if time.perf_counter() - t_start > 60 * a.max_minutes:
                    log.warning("time box reached after %d new users", n)
                    break
                recs = eng.recommend(u, k=50)
                ctx = eng.user_context(u)
                top = recs.items[: a.top_n]
                hits = eng.catalog.hits([r.item_id for r in top])
                rows = [prompt_row(hits[r.item_id]) for r in top]
                t0, tok0 = time.perf_counter(), llm.tokens_run
                probs = yes_scores(llm, eng.prompts, rows, ctx.summary, ctx.history_rows())
                d = {"user": u, "ranked": [r.item_id for r in recs.items], "scores": [r.score for r in recs.items],
                     "probs": probs, "target": split.target(u, "valid").item_id,
                     "llm_s": round(time.perf_counter() - t0, 2), "tokens": llm.tokens_run - tok0}
                fh.write(json.dumps(d) + "\n")
                fh.flush()
                done[u] = d
                log.info("user %s (%d/%d) %.1fs %d tokens", u, len(done), len(users), d["llm_s"], d["tokens"])
        for u in users[: a.listwise]:
            recs = eng.recommend(u, k=a.top_n)
            hits = eng.catalog.hits([r.item_id for r in recs.items])
            ordered = [hits[r.item_id] for r in recs.items]
            _, note, info = listwise_rerank(eng.prompts, llm, ordered, eng.user_context(u), seed=a.seed)
            lw_rows.append({"user": u, "failure": info.get("failure"), "note": note})
    report = evaluate([done[u] for u in users if u in done], a)
    if lw_rows:
        fails = [r for r in lw_rows if r["failure"]]
        report["listwise"] = {"users": len(lw_rows), "failures": len(fails), "rate": len(fails) / len(lw_rows),
                              "kinds": {k: sum(1 for r in fails if r["failure"] == k) for k in {r["failure"] for r in fails}}}
    report["command"] = "python -m bench.llm_ablation " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if v is not None and k not in ("items_store", "work", "cache", "out"))
    print(json.dumps({k: v for k, v in report.items() if k != "per_user"}, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))


def evaluate(rows: list[dict], a) -> dict:
    """Cross-fitted stage 2 over the users scored so far; metrics with and without it."""
    n = len(rows)
    fold = np.arange(n) % a.folds
    base_nd, base_hr, st_nd, st_hr, llm_nd, aucs = [], [], [], [], [], []
    feats = [list_features(r["scores"][: len(r["probs"])], r["probs"]) for r in rows]
    labels = [np.array([1.0 if i == r["target"] else 0.0 for i in r["ranked"][: len(r["probs"])]]) for r in rows]
    stages = {}
    for f in range(a.folds):
        tr = [i for i in range(n) if fold[i] != f and labels[i].sum() > 0]
        if tr:
            stages[f] = LLMStage.train([feats[i] for i in tr], [labels[i] for i in tr])
    for i, r in enumerate(rows):
        N = len(r["probs"])
        nd, hr = ndcg_hr(r["ranked"], r["target"])
        base_nd.append(nd)
        base_hr.append(hr)
        stage = stages.get(fold[i])
        order = rerank_order(stage, r["scores"][:N], r["probs"])[0] if stage else list(range(N))
        re = [r["ranked"][j] for j in order] + r["ranked"][N:]
        nd2, hr2 = ndcg_hr(re, r["target"])
        st_nd.append(nd2)
        st_hr.append(hr2)
        by_llm = sorted(range(N), key=lambda j: (-(r["probs"][j] if r["probs"][j] is not None else 0.5), j))
        llm_nd.append(ndcg_hr([r["ranked"][j] for j in by_llm] + r["ranked"][N:], r["target"])[0])
        if labels[i].sum() > 0:
            aucs.append(auc_in_list([p if p is not None else 0.5 for p in r["probs"]], int(labels[i].argmax())))

    def ci(v):
        m, lo, hi = bootstrap_ci(v)
        return {"mean": m, "lo": lo, "hi": hi}

    whole = LLMStage.train([feats[i] for i in range(n) if labels[i].sum() > 0], [labels[i] for i in range(n) if labels[i].sum() > 0])
    return {
        "users": n, "top_n": a.top_n, "model": a.model, "split": "valid (second-to-last event), store holds train events only",
        "target_in_top_n": float(np.mean([lab.sum() > 0 for lab in labels])),
        "ranker": {"ndcg@10": ci(base_nd), "hr@10": ci(base_hr)},
        "ranker+llm_stage": {"ndcg@10": ci(st_nd), "hr@10": ci(st_hr)},
        "llm_only_in_top_n": {"ndcg@10": ci(llm_nd)},
        "paired_stage_minus_ranker": {"ndcg@10": paired_bootstrap(st_nd, base_nd), "hr@10": paired_bootstrap(st_hr, base_hr)},
        "pyes_auc_in_top_n": ci(aucs) if aucs else None,
        "stage_weights_all_users": dict(zip(whole.info["features"], whole.weights)),
        "llm_seconds_per_list": float(np.mean([r["llm_s"] for r in rows])) if rows else None,
        "llm_tokens_per_list": float(np.mean([r["tokens"] for r in rows])) if rows else None,
    }


if __name__ == "__main__":
    main()
