"""Where the learned recommender loses sampled AUC on ml-100k's VALID split (the test event is never read).

Same split, item text, fit and 1:20 negatives as ``bench/learned_val.py`` (20 seeded items the user never touched in
train), so its mean AUC is that bench's. Per user it scores the valid item and its negatives three ways:

- ``served``: ``PersonaModel.rank`` (what ``recommend`` would give them: the ranker plus the serving-time shifts,
  e.g. ``dislike_penalty``);
- ``ranker``: the ranker's own probability (no serving-time shift);
- each single source feature alone (``sas_score``, ``cooc_score``, ...), as a reference.

and splits the AUC lost (1 - AUC, summed over users) by whether the pool (``pool_size`` items) holds the valid item and
by the valid item's popularity in train (quintiles).

    python -m bench.auc_breakdown [--set num_leaves=15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from bench.learned_val import load_split, parse_set, sampled_negatives
from engine.learned import LearnedConfig, PersonaModel
from engine.learned.candidates import pool
from engine.learned.features import FEATURE_NAMES, features
from engine.offline.evaluate import auc

SINGLE = ("sas_score", "cooc_score", "cf_score", "trans_score", "pop_score", "content_score")


def per_user(model: PersonaModel, train_by_user: dict, valid: dict, n_neg: int = 20) -> list[dict]:
    """One dict per valid user: AUCs (served, ranker, each of ``SINGLE``), pool membership, train popularity."""
    pop = np.zeros(len(model.index))
    for evs in train_by_user.values():
        rows = model.index.rows([e.item_id for e in evs])
        np.add.at(pop, rows[rows >= 0], 1)
    all_ids, out = model.index.ids, []
    for u, vid in sorted(valid.items()):
        touched = {e.item_id for e in train_by_user[u]}
        items = [vid, *sampled_negatives(all_ids, touched, vid, int(u), n_neg)]  # learned_val.sampled_auc's negatives
        served = dict(model.rank(train_by_user[u], items))
        st = model.state(train_by_user[u])
        rows = model.index.rows(items)
        F = features(model.stage1, model.meta, st, rows)
        d = {"user": u, "served": auc([served[i] for i in items]), "ranker": auc(list(model.ranker.predict(F))),
             "in_pool": bool(rows[0] in set(pool(st, model.config).tolist())), "pop": float(pop[rows[0]])}
        for f in SINGLE:
            d[f] = auc(list(np.nan_to_num(F[:, FEATURE_NAMES.index(f)].astype(float), nan=-1e9)))
        out.append(d)
    return out


def table(rows: list[dict]) -> str:
    cols = ("served", "ranker", *SINGLE)
    lost = sum(1 - r["served"] for r in rows)
    pop = np.array([r["pop"] for r in rows])
    edges = np.quantile(pop, [0.2, 0.4, 0.6, 0.8])
    groups = {"all": rows, "valid item in pool": [r for r in rows if r["in_pool"]],
              "valid item not in pool": [r for r in rows if not r["in_pool"]]}
    for q in range(5):
        lo, hi = (edges[q - 1] if q else -np.inf), (edges[q] if q < 4 else np.inf)
        bounds = " ".join(b for b in (f">{lo:g}" if q else "", f"<={hi:g}" if q < 4 else "") if b)
        groups[f"popularity quintile {q + 1} ({bounds} train events)"] = [r for r in rows if lo < r["pop"] <= hi]
    lines = ["| users | n | share of AUC lost | " + " | ".join(cols) + " |", "|---" * (len(cols) + 3) + "|"]
    for name, g in groups.items():
        share = sum(1 - r["served"] for r in g) / lost if lost else 0.0
        lines.append(f"| {name} | {len(g)} | {share:.3f} | " + " | ".join(f"{np.mean([r[c] for r in g]):.4f}" for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", help="LearnedConfig override key=json_value")
    ap.add_argument("--json", type=Path, help="write the per-user rows here")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    ml, train, valid, train_by_user, E, eids = load_split()
    cfg = LearnedConfig.from_dict({**LearnedConfig().to_dict(), **parse_set(a.set)})
    model = PersonaModel.fit(train, ml.items, E, cfg, embedding_ids=eids, progress=False)
    rows = per_user(model, train_by_user, valid)
    print(f"valid, {len(rows)} users, sampled 1:20 AUC (mean per user)\n")
    print(table(rows))
    if a.json:
        a.json.write_text(json.dumps({"config": cfg.to_dict(), "rows": rows}, default=float))


if __name__ == "__main__":
    main()
