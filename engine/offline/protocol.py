"""Tune on valid, refit on train + valid, read test once: the offline benchmark protocol.

``evaluate_scorer(fn, split, stage)`` evaluates any scorer ``fn(user_id, history, candidates)``
returning a full-catalog score vector (``np.ndarray`` in ``split.item_ids`` order), a ranked list of
item ids (top-N, beyond N = miss; what ``Engine.recommend()`` gives) or ``(ranked ids, candidate
scores)``. ``run_baselines`` runs the tuned baselines of :mod:`engine.offline.baselines` and
:mod:`engine.offline.seqmodels` through it and returns means with 95% bootstrap CIs, the grids and
choices, fit seconds, per-user arrays (for paired tests) and per-history-length breakdowns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..types import Event
from .baselines import ALS, EASE, Baseline, ItemKNN, Markov, Popularity, TextKNN, item_texts, public_params
from .metrics import METRICS, paired_bootstrap, summarize, user_metrics
from .split import Split, order_history, temporal_split

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "DEFAULT_METHODS",
    "BUCKETS",
    "evaluate_scorer",
    "model_scorer",
    "tune_and_test",
    "run_baselines",
    "truncate_histories",
    "group_breakdown",
    "baseline_classes",
    "cold_start_eval",
]


def _methods() -> dict[str, type[Baseline]]:
    from .seqmodels import SASRec

    return {c.name: c for c in (Popularity, ItemKNN, EASE, ALS, Markov, SASRec, TextKNN)}


METHODS = ("popularity", "itemknn", "ease", "als", "markov", "sasrec", "textknn")
DEFAULT_METHODS = METHODS
BUCKETS = ((0, 30, "<=30"), (31, 100, "31-100"), (101, 10**9, ">100"))
"""Train-event-count buckets of the per-user-group breakdown."""

Scorer = Callable[[str, list[Event], list[str]], Any]


def evaluate_scorer(fn: Scorer, split: Split, stage: str, users: Sequence[str] | None = None, progress: bool = False) -> dict[str, np.ndarray]:
    """Per-user metric arrays (``METRICS`` + ``rank``) of ``fn`` on ``stage``, in ``users`` order."""
    from tqdm.auto import tqdm

    users = list(users) if users is not None else split.users
    index = {i: k for k, i in enumerate(split.item_ids)}
    rows = []
    for u in tqdm(users, desc=f"eval {stage}", disable=not progress, leave=False):
        hist = split.history(u, stage)
        cands = split.candidates[stage][u]
        out = fn(u, hist, cands)
        seen = [e.item_id for e in hist]
        target = split.target(u, stage).item_id
        if isinstance(out, np.ndarray):
            if out.shape != (len(split.item_ids),):
                raise ValueError(f"full-catalog scores must have shape ({len(split.item_ids)},), got {out.shape}")
            rows.append(user_metrics(target, index, seen, cands, scores=out))
        elif isinstance(out, tuple):
            ranked, cs = out
            rows.append(user_metrics(target, index, seen, cands, ranked=list(ranked), cand_scores=cs))
        else:
            rows.append(user_metrics(target, index, seen, cands, ranked=list(out)))
    keys = list(METRICS) + ["rank"]
    return {k: np.array([r[k] for r in rows], np.float64) for k in keys}


def model_scorer(model: Baseline) -> Scorer:
    """Adapter: a fitted baseline as an ``evaluate_scorer`` function."""
    return lambda u, hist, cands: model.score(u, hist)


def _mean(per_user: dict[str, np.ndarray], k: str = "ndcg@10") -> float:
    return float(np.mean(per_user[k])) if len(per_user[k]) else float("nan")


def tune_and_test(
    cls: type[Baseline],
    split: Split,
    grid: Sequence[dict[str, Any]],
    base: dict[str, Any] | None = None,
    users: Sequence[str] | None = None,
    progress: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Pick the grid point with the best valid NDCG@10 (fit on train), refit it on train + valid
    (with any ``fitted_params`` such as SASRec's best epoch), and evaluate test once."""
    base = dict(base or {})
    users = list(users) if users is not None else split.users
    trials = []
    best: tuple[float, dict[str, Any], dict[str, Any], dict[str, np.ndarray]] | None = None
    for cfg in grid:
        model = cls(**{**base, **cfg})
        if getattr(model, "uses_validation", False):
            model.set_validation([([e.item_id for e in split.history(u, "valid")], split.target(u, "valid").item_id) for u in users])
        model.fit(split.fit_events("valid"), split.item_ids)
        pu = evaluate_scorer(model_scorer(model), split, "valid", users)
        v = _mean(pu)
        trial = {"params": public_params(cfg), "valid_ndcg@10": v, "valid_hr@10": _mean(pu, "hr@10"), "fit_seconds": model.fit_seconds, **({"fitted": model.fitted_params} if model.fitted_params else {})}
        if hasattr(model, "train_info"):
            trial["train_info"] = model.train_info
            trial["curve"] = getattr(model, "curve", [])
        trials.append(trial)
        if progress:
            logger.info("%s %s valid NDCG@10 %.4f (%.1fs)", cls.name, trial["params"], v, model.fit_seconds)
            print(f"  {cls.name} {trial['params']} {model.fitted_params or ''} valid NDCG@10={v:.4f} ({model.fit_seconds:.1f}s)", flush=True)
        if best is None or v > best[0]:
            best = (v, cfg, dict(model.fitted_params), pu)
    assert best is not None
    v_best, cfg, fitted, valid_pu = best
    # The refit trains for the chosen fitted params (e.g. SASRec's best epoch) with no time cap.
    final = cls(**{**base, **cfg, **fitted, **({"max_seconds": 0} if "max_seconds" in base else {})})
    final.fit(split.fit_events("test"), split.item_ids)
    test_pu = evaluate_scorer(model_scorer(final), split, "test", users)
    return {
        "method": cls.name,
        "grid": [public_params(g) for g in grid],
        "trials": trials,
        "chosen": {**public_params(cfg), **fitted},
        "valid_ndcg@10": v_best,
        "valid": summarize({k: valid_pu[k] for k in METRICS}, n_boot=n_boot, seed=seed),
        "test": summarize({k: test_pu[k] for k in METRICS}, n_boot=n_boot, seed=seed),
        "fit_seconds": final.fit_seconds,
        "tune_seconds": float(sum(t["fit_seconds"] for t in trials)),
        "per_user": {k: test_pu[k].tolist() for k in list(METRICS) + ["rank"]},
        **({"refit_info": final.train_info} if hasattr(final, "train_info") else {}),
        "model": final,
    }


def group_breakdown(split: Split, users: Sequence[str], per_user: dict[str, Sequence[float]], metric: str = "ndcg@10") -> dict[str, dict[str, float]]:
    """Mean ``metric`` per train-history-length bucket (``BUCKETS``)."""
    n_train = np.array([len(split.train[u]) for u in users])
    vals = np.asarray(per_user[metric], np.float64)
    out = {}
    for lo, hi, name in BUCKETS:
        m = (n_train >= lo) & (n_train <= hi)
        out[name] = {"n": int(m.sum()), "mean": float(vals[m].mean()) if m.any() else float("nan")}
    return out


def truncate_histories(events: Sequence[Event], frac: float = 0.1, keep: int = 5, seed: int = 0) -> tuple[list[Event], list[str]]:
    """Simulated cold start: a random ``frac`` of users keep only their first ``keep`` + 2 events (in
    the seeded split order), i.e. ``keep`` train events, one valid and one test event, for fitting
    and scoring alike. Returns (events, the truncated users)."""
    by_user: dict[str, list[Event]] = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append(e)
    eligible = sorted(u for u, evs in by_user.items() if len(evs) > keep + 2)
    rng = np.random.default_rng(seed)
    k = int(round(frac * len(eligible)))
    cold = sorted(rng.choice(eligible, size=k, replace=False).tolist()) if k else []
    cold_set = set(cold)
    out: list[Event] = []
    for u, evs in by_user.items():
        out.extend(order_history(evs, seed)[: keep + 2] if u in cold_set else evs)
    return out, cold


def _base_params(name: str, data: Any, seed: int, quick: bool, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    base: dict[str, Any] = {"seed": seed}
    if name == "textknn":
        base["texts"] = item_texts(data.items)
    if name == "sasrec":  # CPU budget (2 shared cores): maxlen 50, 1 thread, <= 7 min per tuning fit
        base.update({"epochs": 300, "eval_every": 3, "patience": 3, "threads": 1, "maxlen": 50, "batch": 32, "lr": 2e-3, "max_seconds": 420, "verbose": True} if not quick else {"epochs": 4, "eval_every": 2, "patience": 2, "threads": 2, "maxlen": 50, "dim": 32, "batch": 64})
    base.update(overrides.get(name, {}))
    return base


def run_baselines(
    data: Any,
    seed: int = 0,
    users: Sequence[str] | None = None,
    which: Sequence[str] = DEFAULT_METHODS,
    progress: bool = True,
    quick: bool = False,
    grids: dict[str, list[dict[str, Any]]] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    n_boot: int = 1000,
    cold_start: bool = False,
) -> dict[str, Any]:
    """Tune each method on valid (NDCG@10, full catalog), refit on train + valid, evaluate test.

    ``data``: an object with ``items`` and ``events`` (``engine.offline.datasets.MovieLens``). ``users``:
    the evaluated users (default all with >= 3 events; fitting always uses every user's events).
    ``grids`` / ``params`` override a method's grid / fixed parameters. Returns a JSON-ready dict
    (per-user arrays included) with the fitted final models under ``_models`` (pop it before
    ``json.dump``).
    """
    t_all = time.perf_counter()
    registry = _methods()
    grids, params = grids or {}, params or {}
    split = temporal_split(data.events, [i.id for i in data.items], seed=seed)
    users = sorted(users) if users is not None else split.users
    result: dict[str, Any] = {
        "protocol": {
            "split": "per user: test = last event, valid = second-to-last, train = rest (users with >= 3 events); "
            "equal timestamps in seeded-hash order",
            "selection": "grid on valid NDCG@10 (full catalog, seen items excluded); refit on train+valid; test read once",
            "sampled": f"1 positive : {split.n_neg} never-interacted negatives",
            "seed": seed,
            "n_users": len(users),
            "n_items": len(split.item_ids),
            "quick": quick,
        },
        "methods": {},
        "_models": {},
    }
    for name in which:
        cls = registry[name]
        grid = grids.get(name) or (cls.QUICK_GRID if quick else cls.GRID)
        base = _base_params(name, data, seed, quick, params)
        if progress:
            print(f"[{name}] {len(grid)} configs", flush=True)
        r = tune_and_test(cls, split, grid, base, users, progress=progress, n_boot=n_boot, seed=seed)
        result["_models"][name] = r.pop("model")
        r["groups"] = group_breakdown(split, users, r["per_user"])
        r["fixed_params"] = public_params(base)
        result["methods"][name] = r
        if progress:
            t = r["test"]
            print(f"[{name}] chosen {r['chosen']} valid NDCG@10={r['valid_ndcg@10']:.4f} test NDCG@10={t['ndcg@10']['mean']:.4f} HR@10={t['hr@10']['mean']:.4f}", flush=True)
    ms = result["methods"]
    if ms:
        ref = max(ms, key=lambda k: ms[k]["test"]["ndcg@10"]["mean"])
        result["paired_vs_best"] = {
            "reference": ref,
            "metric": "ndcg@10",
            "results": {k: paired_bootstrap(ms[k]["per_user"]["ndcg@10"], ms[ref]["per_user"]["ndcg@10"], n_boot=n_boot, seed=seed) for k in ms if k != ref},
        }
    result["users"] = users
    result["groups_n"] = {name: n for name, n in ((b[2], sum(1 for u in users if b[0] <= len(split.train[u]) <= b[1])) for b in BUCKETS)}
    if cold_start and ms:
        result["cold_start"] = cold_start_eval(data, {k: {**ms[k]["fixed_params"], **ms[k]["chosen"]} for k in ms}, seed, users, ms, n_boot, progress)
    result["seconds"] = time.perf_counter() - t_all
    return result


def baseline_classes() -> dict[str, type[Baseline]]:
    """Baseline name -> class (SASRec imported on demand)."""
    return _methods()


def cold_start_eval(data: Any, chosen: dict[str, dict[str, Any]], seed: int, users: Sequence[str], main: dict[str, Any], n_boot: int, progress: bool) -> dict[str, Any]:
    """Refit each method (its chosen parameters, no re-tuning) with a seeded 10% of users cut to their LAST 5 train
    events (``coldstart.cold_user_split``: same test targets as the main run), and evaluate test on those users; also
    gives the same users' test metrics with full histories from the main run (paired)."""
    from .coldstart import cold_user_split

    registry = _methods()
    split, cold = cold_user_split(temporal_split(data.events, [i.id for i in data.items], seed=seed), seed=seed)
    cold = [u for u in cold if u in set(users)]
    pos = {u: k for k, u in enumerate(users)}
    out: dict[str, Any] = {"n_users": len(cold), "users": cold, "methods": {}}
    for name, p in chosen.items():
        p = dict(p)
        if name == "textknn":
            p["texts"] = item_texts(data.items)
        model = registry[name](**p)
        model.fit(split.fit_events("test"), split.item_ids)
        pu = evaluate_scorer(model_scorer(model), split, "test", cold)
        full = {k: np.asarray(main[name]["per_user"][k])[[pos[u] for u in cold]] for k in METRICS}
        out["methods"][name] = {
            "test": summarize({k: pu[k] for k in METRICS}, n_boot=n_boot, seed=seed),
            "same_users_full_history": summarize(full, n_boot=n_boot, seed=seed),
            "fit_seconds": model.fit_seconds,
        }
        if progress:
            print(f"[cold {name}] NDCG@10={np.mean(pu['ndcg@10']):.4f} (full history {np.mean(full['ndcg@10']):.4f})", flush=True)
    return out
