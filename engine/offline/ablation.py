"""Ablations and candidate-pool recall of the learned recommender, on the VALIDATION stage only.

In: a store that holds the items and the valid stage's fit events (what ``persona eval`` builds for Persona's valid
row), the split, the evaluated users.
Out: a JSON-ready dict: the full model's valid metrics (NDCG@10, HR@10, Recall@50, sampled AUC) with 95% bootstrap
intervals; for each source and each feature group removed in turn, the same metrics and the paired bootstrap
difference against the full model; the pool's recall (share of users whose held-out valid item is in the pool of
``pool_size``) for the full pool and for each single source at the same size.

Every variant is ``PersonaModel.fit`` on exactly the inputs :meth:`Engine.fit` reads from that store
(``LearnedStage.training_inputs``) with one ``LearnedConfig`` change, scored in memory with the model's own
``recommend`` / ``rank`` (the served path adds the Qdrant ``cf`` query and per-title dedupe, both checked equal or
near-equal elsewhere). The test event is never read here.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ..errors import ConflictError
from .metrics import paired_bootstrap, summarize
from .protocol import evaluate_scorer
from .split import Split

logger = logging.getLogger(__name__)

__all__ = ["run_ablations", "ablation_lines"]

SHOWN = ("ndcg@10", "hr@10", "recall@50", "auc")


def _variants(cfg: Any, groups: list[str]) -> dict[str, dict[str, Any]]:
    out = {f"-source {s}": {"sources": tuple(x for x in cfg.sources if x != s)} for s in cfg.sources}
    out |= {f"-features {g}": {"drop_features": (*cfg.drop_features, g)} for g in groups if g not in cfg.drop_features}
    out |= {f"+features {g}": {"drop_features": tuple(d for d in cfg.drop_features if d != g)} for g in cfg.drop_features}
    return out


def run_ablations(store_path: Any, split: Split, users: list[str], seed: int = 0, n_boot: int = 1000, config: dict | None = None,
                  components: Any = None, only: tuple[str, ...] | None = None, progress: bool = False) -> dict[str, Any]:
    """Refit with each source / feature group left out on the valid store at ``store_path``; see the module doc."""
    from ..engine import Engine
    from ..learned import LearnedConfig, PersonaModel
    from ..learned.candidates import pool
    from ..learned.features import GROUPS

    t_all = time.perf_counter()
    with Engine.open(store_path, config, components=components) as eng:
        events, items, emb, ids = eng.learned.training_inputs()
        base = eng.learned.config()
    held = {(t.user_id, t.item_id, t.timestamp) for t in (split.target(u, "valid") for u in split.users)}
    if any((e.user_id, e.item_id, e.timestamp) in held for e in events):
        raise ConflictError("a held-out valid event is in the ablation store")
    variants = {"full": {}} | _variants(base, [g for g in GROUPS if g != "extra"])
    if only:
        variants = {k: v for k, v in variants.items() if k == "full" or k in only}
    per_user: dict[str, dict[str, np.ndarray]] = {}
    recall: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for name, over in variants.items():
        t = time.perf_counter()
        cfg = LearnedConfig.from_dict({**base.to_dict(), **over})
        model = PersonaModel.fit(events, items, emb, cfg, embedding_ids=ids or None, progress=False)

        def scorer(u, hist, cands, model=model):
            ranked = [i for i, _, _ in model.recommend(hist, k=50)]
            sc = dict(model.rank(hist, cands))
            return ranked, [sc[c] for c in cands]

        per_user[name] = evaluate_scorer(scorer, split, "valid", users)
        if name == "full":  # the pool and each single source at the same size, on the full model's state
            rows = {s: [] for s in ("pool", *cfg.sources)}
            for u in users:
                st = model.state(split.history(u, "valid"))
                target = model.index.rows([split.target(u, "valid").item_id])[0]
                rows["pool"].append(target in set(pool(st, cfg).tolist()))
                for s in cfg.sources:
                    rows[s].append(target in set(pool(st, cfg, sources=(s,)).tolist()))
            recall = {k: np.asarray(v, np.float64) for k, v in rows.items()}
        seconds[name] = round(time.perf_counter() - t, 1)
        msg = f"[ablate] {name}: valid NDCG@10 {per_user[name]['ndcg@10'].mean():.4f} AUC {per_user[name]['auc'].mean():.4f} ({seconds[name]}s)"
        logger.info(msg)
        if progress:
            print(msg, flush=True)
    full = per_user["full"]
    out: dict[str, Any] = {
        "stage": "valid", "users": len(users), "pool_size": base.pool_size, "config": base.to_dict(),
        "full": summarize({k: full[k] for k in SHOWN}, n_boot=n_boot, seed=seed),
        "variants": {}, "seconds": seconds,
        "pool_recall": {k: summarize({"recall": v}, n_boot=n_boot, seed=seed)["recall"] for k, v in recall.items()},
    }
    for name, pu in per_user.items():
        if name == "full":
            continue
        out["variants"][name] = {
            "valid": summarize({k: pu[k] for k in SHOWN}, n_boot=n_boot, seed=seed),
            "minus_full": {m: paired_bootstrap(pu[m], full[m], n_boot=n_boot, seed=seed) for m in ("ndcg@10", "auc")},
        }
    out["wall_seconds"] = round(time.perf_counter() - t_all, 1)
    return out


def _c(s: dict[str, float]) -> str:
    return f"{s['mean']:.4f} [{s['lo']:.4f}, {s['hi']:.4f}]"


def _d(p: dict[str, float]) -> str:
    return f"{p['diff']:+.4f} [{p['lo']:+.4f}, {p['hi']:+.4f}]"


def ablation_lines(ab: dict[str, Any]) -> list[str]:
    """Markdown section for a ``run_ablations`` result."""
    lines = [f"## Ablations and pool recall (VALID, {ab['users']} users; tuning data, not test)", "",
             "Each row refits the learned model with one source or feature group removed (`-`) or a default-off group "
             "put back (`+`); differences are paired bootstraps against the full model (95% CI).", "",
             "| variant | NDCG@10 | AUC | NDCG@10 minus full | AUC minus full |", "|---|---|---|---|---|",
             f"| full | {_c(ab['full']['ndcg@10'])} | {_c(ab['full']['auc'])} | | |"]
    for name, v in ab["variants"].items():
        lines.append(f"| {name} | {_c(v['valid']['ndcg@10'])} | {_c(v['valid']['auc'])} | {_d(v['minus_full']['ndcg@10'])} | "
                     f"{_d(v['minus_full']['auc'])} |")
    lines += ["", f"Candidate pool recall at {ab['pool_size']} (share of users whose held-out valid item is in it):", "",
              "| pool | recall |", "|---|---|"]
    for k, s in ab["pool_recall"].items():
        lines.append(f"| {'all sources (served pool)' if k == 'pool' else k + ' alone'} | {_c(s)} |")
    return lines + [""]
