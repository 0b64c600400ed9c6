"""Does SASRec carry signal the fitted ranker lacks? VALIDATION only (the test event is never read).

Fits ``PersonaModel`` and the offline SASRec baseline (its tuned settings: dropout 0.5, maxlen 50, batch 32, lr 0.002,
``--epochs`` fixed, no early stopping) on the same train events (``bench.learned_val.split``), then scores, per user,
the ranker's 300-item pool (``recommend(k=300)``) and the sampled 1:20 items (``rank``) by
``logit(ranker probability) + w * z(SASRec logit)`` (the ranker's binary objective gives probabilities: blended in
log-odds; the SASRec logit z-scored over the catalog per user) for each ``w``:

    python -m bench.sasrec_blend [--epochs 39] [--weights 0,0.01,0.03,0.1,0.3,1]

``w = 0`` is the ranker alone. A post-hoc blend is the cheap test of whether a SASRec feature is worth building.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.learned_val import embeddings, split
from engine.learned import LearnedConfig, PersonaModel
from engine.offline.datasets import load_movielens
from engine.offline.evaluate import auc
from engine.offline.seqmodels import SASRec
from engine.types import sort_events


def log_odds(p) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=39, help="SASRec epochs (39: the baseline's best on valid)")
    ap.add_argument("--weights", default="0,0.01,0.03,0.1,0.2,0.3,0.5,1,2")
    a = ap.parse_args(argv)
    ml = load_movielens()
    train, valid = split(ml.events)
    by_user: dict = {}
    for e in train:
        by_user.setdefault(e.user_id, []).append(e)
    by_user = {u: sort_events(v) for u, v in by_user.items()}
    E, eids = embeddings(ml.items)
    t = time.perf_counter()
    model = PersonaModel.fit(train, ml.items, E, LearnedConfig(), embedding_ids=eids, progress=False)
    print(f"ranker fit {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    sas = SASRec(dropout=0.5, maxlen=50, batch=32, lr=0.002, epochs=a.epochs, threads=2, seed=0).fit(train, model.index.ids)
    print(f"SASRec fit {time.perf_counter() - t:.0f} s ({a.epochs} epochs)", flush=True)
    users = sorted(valid)
    logits = sas.score_many([by_user[u] for u in users])
    all_ids = model.index.ids
    per_user = []
    for r, u in enumerate(users):
        hist = by_user[u]
        touched = {e.item_id for e in hist}
        rng = np.random.default_rng([0, int(u)])  # the same negatives as bench.learned_val.sampled_auc
        sampled = [valid[u], *[i for i in rng.permutation(all_ids)[:200] if i not in touched and i != valid[u]][:20]]
        rs = dict(model.rank(hist, sampled))
        pool = model.recommend(hist, k=300)
        z = (logits[r] - logits[r].mean()) / (logits[r].std() + 1e-9)
        per_user.append((log_odds([rs[i] for i in sampled]), z[model.index.rows(sampled)],
                         log_odds([p[1] for p in pool]), z[model.index.rows([p[0] for p in pool])], [p[0] for p in pool], valid[u]))
    print(f"\nvalid, {len(users)} users; SASRec alone AUC 1:20 {np.mean([auc(list(zs)) for _, zs, *_ in per_user]):.4f}")
    print(f"{'w':>6s} {'NDCG@10 (pool)':>15s} {'AUC 1:20':>9s}")
    for w in [float(x) for x in a.weights.split(",")]:
        nd, au = [], []
        for rs, zs, ps, zp, pids, target in per_user:
            au.append(auc(list(rs + w * zs)))
            top = [pids[o] for o in np.argsort(-(ps + w * zp), kind="stable")[:10]]
            nd.append(1.0 / np.log2(top.index(target) + 2) if target in top else 0.0)
        print(f"{w:6.2f} {np.mean(nd):15.4f} {np.mean(au):9.4f}", flush=True)


if __name__ == "__main__":
    main()
