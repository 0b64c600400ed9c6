"""Validation of the learned recommender on ml-100k (VALID only; the test event is never read).

Split per user, events ordered by ``engine.learned.event_sort_key``: train = all but the last two, valid = the
second-to-last, test = the last (dropped here). Fits ``PersonaModel`` on train and reports full-catalog HR@10 and
NDCG@10 (seen train items excluded) on valid for all users, next to a closed-form EASE and a first-order Markov
chain fitted on the same train events, plus the pool's recall per source and for the union, and ablations.

    python -m bench.learned_val                      # main table
    python -m bench.learned_val --ablate             # + each source / feature group removed in turn
    python -m bench.learned_val --set pool_size=200 --set objective=binary
    python -m bench.learned_val --cold-items 0.1 --set cold_frac=0.2   # + new items: 10% of items lose their train events
    python -m bench.learned_val --no-baselines --sweep new_item_slot=5,10      # the new-item slot on the main split
    python -m bench.learned_val --cold-items 0.1 --cold-only --slots 0,5,10   # ... and where 10% of items are new
    python -m bench.learned_val --no-baselines --sweep dislike_penalty=0,1,2   # serving-time knobs on one fitted model

``--cold-items F`` also fits on train without every event of a seeded share F of the items and scores the users whose
valid item is one of them (reachable only through content): NDCG@10 / HR@10 on the full catalog, pool recall, and
sampled 1:20 AUC (20 items the user never touched in train or valid) through ``PersonaModel.rank``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from engine.learned import LearnedConfig, PersonaModel
from engine.learned.candidates import pool, source_top
from engine.learned.features import GROUPS
from engine.learned.index import ItemIndex, build_sequences, user_item_matrix
from engine.offline.datasets import load_movielens
from engine.offline.evaluate import auc
from indexers.ingest import item_text

# The product's item text (title, genres, director, cast, description: ``indexers.ingest.item_text``), so the content
# features here are the ones Engine.fit() reads from the store. Until 2026-12 this bench embedded "title. genres.
# description" instead (cosine 0.84 on average to the stored vectors), so its numbers were not the product's.
EMB_CACHE = Path(os.environ.get("PERSONA_EMB_CACHE", "/tmp/persona_learn/ml100k_minilm_product.npz"))
log = logging.getLogger("learned_val")


def embeddings(items):
    if EMB_CACHE.exists():
        z = np.load(EMB_CACHE)
        return z["emb"], z["ids"].tolist()
    from indexers.text import SentenceTransformerEncoder

    E = SentenceTransformerEncoder().encode([item_text(it) for it in items]).astype(np.float32)
    EMB_CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(EMB_CACHE, ids=np.array([it.id for it in items]), emb=E)
    return E, [it.id for it in items]


def split(events, seed=0):
    """train events, {user: valid item id}. The last event of each user (test) is dropped unread."""
    idx = ItemIndex.build((), events)
    seqs = build_sequences(events, idx, seed)
    keep, valid = set(), {}
    for u, s in seqs.items():
        if len(s) < 3:
            continue
        for j in s.items[:-2]:
            keep.add((u, idx.ids[j]))
        valid[u] = idx.ids[s.items[-2]]
    # the same user/item never repeats in ml-100k; order positions are what matter
    train = [e for e in events if (e.user_id, e.item_id) in keep]
    return train, valid


def metrics(ranked_rows, target_row, k=10):
    hit = np.flatnonzero(ranked_rows[:k] == target_row)
    return (1.0, 1.0 / np.log2(hit[0] + 2)) if len(hit) else (0.0, 0.0)


def topk_excl(scores, seen_mask, k=10):
    s = np.where(seen_mask, -np.inf, scores)
    top = np.argpartition(-s, k)[:k]
    return top[np.argsort(-s[top], kind="stable")]


def baselines(train, valid_users, idx, seed=0, lam=300.0):
    seqs = build_sequences(train, idx, seed)
    users = sorted(seqs)
    X = user_item_matrix(seqs, len(idx), users).toarray()
    G = X.T @ X + lam * np.eye(X.shape[1])
    P = np.linalg.inv(G)
    B = -P / np.diag(P)
    np.fill_diagonal(B, 0.0)
    pop = X.sum(0)
    T = np.zeros((len(idx), len(idx)))
    for s in seqs.values():
        np.add.at(T, (s.items[:-1], s.items[1:]), 1.0)
    out = {"EASE": {}, "Markov": {}}
    urow = {u: r for r, u in enumerate(users)}
    for u, _vid in valid_users.items():
        x = X[urow[u]]
        seen = x > 0
        out["EASE"][u] = topk_excl(x @ B, seen)
        out["Markov"][u] = topk_excl(T[seqs[u].items[-1]] + 1e-6 * pop / pop.max(), seen)
    return out


def sampled_negatives(all_ids, touched, target: str, key: int, n_neg: int = 20, seed: int = 0) -> list:
    """``n_neg`` seeded random items (seed, key) that are neither in ``touched`` nor ``target``."""
    r = np.random.default_rng([seed, key])
    return [i for i in r.permutation(all_ids)[:200] if i not in touched and i != target][:n_neg]


def sampled_auc(model: PersonaModel, hist, target: str, all_ids, touched, key: int, n_neg: int = 20, seed: int = 0) -> float:
    """AUC of ``target`` against ``n_neg`` seeded random items the user never touched, through ``PersonaModel.rank``."""
    negs = sampled_negatives(all_ids, touched, target, key, n_neg, seed)
    sc = dict(model.rank(hist, [target, *negs]))
    return auc([sc[target], *(sc[x] for x in negs)])


def evaluate(model: PersonaModel, train_by_user, valid, with_pool=True, liked=None):
    """``liked``: users whose valid event is rated >= 4; their NDCG@10 is reported apart (``NDCG@10 liked``)."""
    hr, nd, rec_src, rec_pool = [], [], {s: [] for s in model.config.sources}, []
    nd_liked, dis_top = [], []
    times, aucs = [], []
    all_ids = model.index.ids
    for u, vid in sorted(valid.items()):
        aucs.append(sampled_auc(model, train_by_user[u], vid, all_ids, {e.item_id for e in train_by_user[u]}, int(u)))
        v = model.index.get(vid)
        t = time.perf_counter()
        recs = model.recommend(train_by_user[u], k=10)
        times.append(time.perf_counter() - t)
        rows = model.index.rows([r[0] for r in recs])
        st = model.state(train_by_user[u])
        # share of the top 10 tied mostly to films the user rated low ("because you watched X (2*)")
        dis_top.append(float(np.mean(model.dislike_share(st, rows) > 0.5)) if len(rows) else 0.0)
        h, n = metrics(rows, v)
        hr.append(h), nd.append(n)
        if liked is not None and u in liked:
            nd_liked.append(n)
        if with_pool:
            rec_pool.append(v in set(pool(st, model.config).tolist()))
            for s in model.config.sources:
                rec_src[s].append(v in set(source_top(st, s, model.config.pool_size).tolist()))
    return {"HR@10": np.mean(hr), "NDCG@10": np.mean(nd), "AUC": np.mean(aucs), "NDCG@10 liked": np.mean(nd_liked) if nd_liked else np.nan,
            "top10_disliked_ties": float(np.mean(dis_top)), "pool_recall": np.mean(rec_pool) if rec_pool else np.nan,
            "source_recall": {s: float(np.mean(v)) for s, v in rec_src.items() if v}, "ms_per_user": 1000 * np.median(times)}


def cold_items(ml, train, train_by_user, valid, E, eids, cfg, frac, seed=0, slots=()):
    """The new-item setting on the validation split (see the module doc). ``slots``: ``new_item_slot`` values each
    scored on that model for the users whose valid item is new and for every other user (full-catalog, k=10)."""
    rng = np.random.default_rng([seed, 29])
    with_events = sorted({e.item_id for e in train} | set(valid.values()))
    cold = set(rng.choice(with_events, size=int(round(frac * len(with_events))), replace=False).tolist())
    tr = [e for e in train if e.item_id not in cold]
    by_user: dict = {}
    for e in tr:
        by_user.setdefault(e.user_id, []).append(e)
    users = sorted(u for u, v in valid.items() if v in cold and by_user.get(u))
    model = PersonaModel.fit(tr, ml.items, E, cfg, embedding_ids=eids, progress=False)
    all_ids = [it.id for it in ml.items]
    touched = {u: {e.item_id for e in evs} for u, evs in train_by_user.items()}
    hr, nd, rec, aucs, pos = [], [], [], [], []
    for u in users:
        v = model.index.get(valid[u])
        rows = model.index.rows([r[0] for r in model.recommend(by_user[u], k=model.config.pool_size)])
        h, n = metrics(rows, v)
        hr.append(h), nd.append(n)
        rec.append(v in set(pool(model.state(by_user[u]), model.config).tolist()))
        if v in rows:
            pos.append(int(np.flatnonzero(rows == v)[0]) + 1)
        aucs.append(sampled_auc(model, by_user[u], valid[u], all_ids, touched[u], int(u), seed=seed))
    out = {"users": len(users), "cold_items": len(cold), "NDCG@10": float(np.mean(nd)), "HR@10": float(np.mean(hr)),
           "pool_recall": float(np.mean(rec)), "AUC": float(np.mean(aucs)), "median_rank_in_list": float(np.median(pos)) if pos else None}
    others = sorted(u for u, v in valid.items() if v not in cold and by_user.get(u) and model.index.get(v) >= 0)
    for slot in slots:
        m = PersonaModel(model.index, model.meta, model.stage1, model.ranker, replace(model.config, new_item_slot=int(slot)), model.info)
        for name, us in (("new", users), ("others", others)):
            r = [metrics(m.index.rows([x[0] for x in m.recommend(by_user[u], k=10)]), m.index.get(valid[u])) for u in us]
            out[f"slot={slot} {name}"] = {"users": len(us), "HR@10": float(np.mean([x[0] for x in r])), "NDCG@10": float(np.mean([x[1] for x in r]))}
    return out


def cold_main(a, ml, train, train_by_user, valid, E, eids, base, rows):
    slots = [int(x) for x in a.slots.split(",") if x.strip()]
    rows["cold_items"] = c = cold_items(ml, train, train_by_user, valid, E, eids, base, a.cold_items, slots=slots)
    print(f"new items ({c['cold_items']} items, {c['users']} users whose valid item is new): NDCG@10 {c['NDCG@10']:.4f} "
          f"HR@10 {c['HR@10']:.4f} pool recall {c['pool_recall']:.3f} (median rank there {c['median_rank_in_list']}) AUC 1:20 {c['AUC']:.4f}", flush=True)
    for key, r in c.items():
        if key.startswith("slot="):
            print(f"  {key:22s} ({r['users']} users): NDCG@10 {r['NDCG@10']:.4f} HR@10 {r['HR@10']:.4f}", flush=True)
    if a.json and a.cold_only:
        a.json.write_text(json.dumps({"config": base.to_dict(), "rows": rows}, indent=2, default=float))


def load_split():
    """ml-100k, its train events and valid items (``split``), train events per user, and the item text vectors:
    ``(ml, train, valid, train_by_user, E, embedding_ids)``."""
    ml = load_movielens()
    train, valid = split(ml.events)
    train_by_user: dict = {}
    for e in train:
        train_by_user.setdefault(e.user_id, []).append(e)
    E, eids = embeddings(ml.items)
    return ml, train, valid, train_by_user, E, eids


def parse_set(pairs):
    out = {}
    for p in pairs or []:
        k, v = p.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", help="LearnedConfig override key=json_value")
    ap.add_argument("--ablate", action="store_true")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--json", type=Path, help="write results here")
    ap.add_argument("--cold-items", type=float, default=0.0, help="share of items that lose their train events (new items)")
    ap.add_argument("--cold-only", action="store_true", help="with --cold-items: skip the main fit and table")
    ap.add_argument("--slots", default="", help="with --cold-items: new_item_slot values to score there, e.g. 0,3,10")
    ap.add_argument("--sweep", action="append", help="serving-time LearnedConfig field=v1,v2,...: the fitted model re-scored with each")
    a = ap.parse_args(argv)
    if (a.cold_only or a.slots) and not a.cold_items:
        ap.error("--cold-only and --slots need --cold-items")
    if a.cold_only and (a.sweep or a.ablate):
        ap.error("--sweep and --ablate need the main fit (drop --cold-only)")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    ml, train, valid, train_by_user, E, eids = load_split()
    base = LearnedConfig.from_dict({**LearnedConfig().to_dict(), **parse_set(a.set)})
    rows = {}
    if a.cold_only and a.cold_items:
        return cold_main(a, ml, train, train_by_user, valid, E, eids, base, rows)
    t = time.perf_counter()
    model = PersonaModel.fit(train, ml.items, E, base, embedding_ids=eids, progress=False)
    fit_s = time.perf_counter() - t
    rating = {(e.user_id, e.item_id): e.rating for e in ml.events}
    liked = {u for u, v in valid.items() if not (rating.get((u, v)) or 5) < 4}
    res = evaluate(model, train_by_user, valid, liked=liked)
    print(f"valid NDCG@10 on the {len(liked)} users whose valid item is rated >= 4: {res['NDCG@10 liked']:.4f}")
    rows["learned"] = res
    print(f"fit {fit_s:.1f}s {model.info['stage_seconds']} trees={model.info['trees']} train_pool_recall={model.info['train_pool_recall']}")
    print("top features:", {k: round(v) for k, v in list(model.ranker.importance().items())[:12]})
    if not a.no_baselines:
        idx = model.index
        for name, tops in baselines(train, valid, idx).items():
            m = [metrics(tops[u], idx.get(v)) for u, v in valid.items()]
            rows[name] = {"HR@10": np.mean([x[0] for x in m]), "NDCG@10": np.mean([x[1] for x in m])}
    print(f"\nvalid, {len(valid)} users, full catalog, seen excluded; pool_size={base.pool_size}")
    print(f"{'model':28s} {'NDCG@10':>8s} {'HR@10':>7s} {'pool rec':>8s} {'AUC 1:20':>8s}")
    for name, r in rows.items():
        print(f"{name:28s} {r['NDCG@10']:8.4f} {r['HR@10']:7.4f} {r.get('pool_recall', float('nan')):8.3f} {r.get('AUC', float('nan')):8.4f}")
    print(f"top-10 items tied mostly to low-rated films (dislike share > 0.5): {res['top10_disliked_ties']:.4f}")
    for spec in a.sweep or []:
        key, vals = spec.split("=", 1)
        for v in vals.split(","):
            m = PersonaModel(model.index, model.meta, model.stage1, model.ranker, replace(model.config, **{key: json.loads(v)}), model.info)
            r = rows[f"{key}={v}"] = evaluate(m, train_by_user, valid, with_pool=False, liked=liked)
            print(f"{key}={v:<10s} NDCG@10 {r['NDCG@10']:.4f} HR@10 {r['HR@10']:.4f} AUC {r['AUC']:.4f} "
                  f"NDCG@10 liked {r['NDCG@10 liked']:.4f} top-10 disliked ties {r['top10_disliked_ties']:.4f}", flush=True)
    print("pool recall per source (top pool_size each):", {s: round(v, 3) for s, v in res["source_recall"].items()})
    print(f"serving median {res['ms_per_user']:.2f} ms/user (recommend, k=10)")
    if a.cold_items:
        cold_main(a, ml, train, train_by_user, valid, E, eids, base, rows)
    if a.ablate:
        print("\nablations (NDCG@10 / HR@10 / pool recall; delta NDCG vs full)")
        variants = {f"-source {s}": dict(sources=tuple(x for x in base.sources if x != s)) for s in base.sources}
        variants.update({f"-features {g}": dict(drop_features=(*base.drop_features, g)) for g in GROUPS
                         if g != "extra" and g not in base.drop_features})
        variants.update({f"+features {g}": dict(drop_features=tuple(d for d in base.drop_features if d != g)) for g in base.drop_features})
        for name, over in variants.items():
            cfg = LearnedConfig.from_dict({**base.to_dict(), **over})
            m = PersonaModel.fit(train, ml.items, E, cfg, embedding_ids=eids, progress=False)
            r = evaluate(m, train_by_user, valid, with_pool=name.startswith("-source"))
            rows[name] = r
            print(f"{name:28s} {r['NDCG@10']:8.4f} {r['HR@10']:7.4f} {r['pool_recall']:8.3f} {r['AUC']:8.4f}  {r['NDCG@10'] - res['NDCG@10']:+.4f}", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"config": base.to_dict(), "fit_s": fit_s, "rows": rows}, indent=2, default=float))


if __name__ == "__main__":
    main()
