"""Cold-start evaluation, on the same held-out test events as the main run (so the comparison is paired).

Two settings, each with Persona through the public path (a store with that setting's fit events, ``Engine.fit``,
``Engine.recommend`` / ``Engine.rank``) beside the baselines at their valid-chosen parameters (no re-tuning):

- **cold users**: a seeded 10% of users keep only their LAST ``keep`` (5) training events before the held-out
  valid/test events; everyone else is unchanged. The test target of every cold user is exactly their main-run test
  event, so the same users' full-history scores from the main run are a paired reference. (The older simulation
  kept each user's FIRST 5 + 2 events: its targets were the users' earliest events, scored by models fitted on data
  up to years later, and differed from the main run's, so neither the level nor the difference meant much.)
- **cold items**: a seeded 10% of the items with events lose ALL their events from the fit data (the items stay in
  the catalog); evaluated are the users whose test event is one of them, with histories without those items. Such
  an item can be reached only through its content (text vector); popularity ranks it last by construction, so the
  popularity row is the floor and ``textknn`` the content-only reference.

Tuning never reads these numbers; the test events are the main split's.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import METRICS, paired_bootstrap, summarize
from .protocol import evaluate_scorer, model_scorer
from .split import Split, order_history

logger = logging.getLogger(__name__)

__all__ = ["cold_user_split", "cold_item_split", "run_cold_start", "cold_lines"]

COLD_METHODS = ("popularity", "itemknn", "ease", "als", "markov", "textknn")
"""Baselines refitted for cold start (SASRec left out: minutes per fit on 2 cores)."""


def cold_user_split(split: Split, frac: float = 0.1, keep: int = 5, seed: int = 0) -> tuple[Split, list[str]]:
    """``split`` with a seeded ``frac`` of the users (those with more than ``keep`` train events) cut to their last
    ``keep`` train events; valid/test targets and candidates unchanged. Returns (split, cold users)."""
    eligible = sorted(u for u in split.users if len(split.train[u]) > keep)
    rng = np.random.default_rng([seed, 17])
    k = int(round(frac * len(eligible)))
    cold = sorted(rng.choice(eligible, size=k, replace=False).tolist()) if k else []
    train = dict(split.train)
    for u in cold:
        train[u] = order_history(train[u], split.seed)[-keep:]
    return Split(split.item_ids, train, split.valid, split.test, split.candidates, split.seed, split.n_neg, split.extra), cold


def cold_item_split(split: Split, frac: float = 0.1, seed: int = 0) -> tuple[Split, list[str], set[str]]:
    """``split`` without any event of a seeded ``frac`` of the items that have events (valid targets on them are
    dropped too). Returns (split, users whose test event is a cold item, cold items)."""
    with_events = sorted({e.item_id for evs in split.train.values() for e in evs} | {e.item_id for e in split.test.values()})
    rng = np.random.default_rng([seed, 29])
    cold_items = set(rng.choice(with_events, size=int(round(frac * len(with_events))), replace=False).tolist())
    train = {u: [e for e in evs if e.item_id not in cold_items] for u, evs in split.train.items()}
    valid = {u: e for u, e in split.valid.items() if e.item_id not in cold_items}
    extra = {u: [e for e in evs if e.item_id not in cold_items] for u, evs in split.extra.items()}
    users = sorted(u for u, e in split.test.items() if e.item_id in cold_items and train[u])
    return Split(split.item_ids, train, valid, split.test, split.candidates, split.seed, split.n_neg, extra), users, cold_items


def _persona(path: Path, name: str, data: Any, split: Split, users: list[str], components: Any, progress: bool,
             fit_cfg: dict | None = None) -> tuple[dict, dict]:
    from ..engine import Engine
    from .persona_eval import NO_MODELS, stage_store

    cfg = dict(NO_MODELS) | ({"fit": fit_cfg} if fit_cfg else {})
    store = stage_store(path, data, split, "test", dict(NO_MODELS), components, progress, name=name)
    with Engine.open(store, cfg, components=components) as eng:
        fit = eng.fit(progress=progress)

        def scorer(u, hist, cands):
            ranked = [r.item_id for r in eng.recommend(u, k=50).items]
            sc = {r.item_id: r.score for r in eng.rank(u, cands)}
            return ranked, [sc[c] for c in cands]

        pu = evaluate_scorer(scorer, split, "test", users)
        model = eng.learned.current()
        ranker = hashlib.sha256(model.ranker.to_text().encode()).hexdigest()[:16] if model is not None else None
    return pu, {"fit_seconds": fit.seconds, "model_version": fit.version, "ranker_sha256": ranker}


def _with_slot(res: dict, root: Path, data: Any, sp: Split, new_users: list[str], every: list[str], components: Any,
               progress: bool, slot: int, n_boot: int, seed: int) -> tuple[dict, dict]:
    """Persona without and with the new-item slot on ``every`` user; ``res["slot"]`` gets both on the users whose test
    item is new and on the others (paired differences). Returns the plain model's metrics on ``new_users``."""
    plain, info = _persona(root, "cold_items", data, sp, every, components, progress)
    slotted, sinfo = _persona(root, "cold_items_slot", data, sp, every, components, progress, fit_cfg={"new_item_slot": slot})
    pos, new = {u: k for k, u in enumerate(every)}, set(new_users)
    at = {"new": [pos[u] for u in new_users], "others": [k for k, u in enumerate(every) if u not in new]}
    res["slot"] = {"position": slot, "same_ranker": info["ranker_sha256"] == sinfo["ranker_sha256"]}
    for g, ix in at.items():
        res["slot"][g] = {
            "n_users": len(ix),
            "without": summarize({m: plain[m][ix] for m in METRICS}, n_boot=n_boot, seed=seed),
            "with": summarize({m: slotted[m][ix] for m in METRICS}, n_boot=n_boot, seed=seed),
            "ndcg@10_diff": paired_bootstrap(slotted["ndcg@10"][ix], plain["ndcg@10"][ix], n_boot=n_boot, seed=seed),
        }
    return {m: plain[m][at["new"]] for m in plain}, info


def run_cold_start(path: str | Path, data: Any, split: Split, users: list[str], chosen: dict[str, dict[str, Any]],
                   main_persona: dict[str, np.ndarray] | None = None, n_boot: int = 1000, seed: int = 0, components: Any = None,
                   progress: bool = False, item_slot: int = 0) -> dict[str, Any]:
    """Both cold-start settings (see the module doc). ``chosen``: baseline name -> its full fit parameters;
    ``main_persona``: Persona's per-user test metrics from the main run, in ``users`` order (paired reference).
    ``item_slot`` > 0: in the cold-item setting, Persona also refitted with ``fit.new_item_slot`` at that position
    (the same seed, so the same ranker) and both scored on every user: the users whose item is new and the others."""
    from .baselines import item_texts
    from .protocol import baseline_classes

    registry = baseline_classes()
    root = Path(path)
    pos = {u: k for k, u in enumerate(users)}
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    cu_split, cold_users = cold_user_split(split, seed=seed)
    cold_users = [u for u in cold_users if u in pos]
    ci_split, ci_users, cold_items = cold_item_split(split, seed=seed)
    ci_users = [u for u in ci_users if u in pos]
    for key, sp, us, names in (("cold_users", cu_split, cold_users, COLD_METHODS), ("cold_items", ci_split, ci_users, ("popularity", "textknn"))):
        res: dict[str, Any] = {"n_users": len(us), "methods": {}}
        if not us:
            out[key] = res
            continue
        if key == "cold_items" and item_slot > 0:
            pu, info = _with_slot(res, root, data, sp, us, [u for u in users if sp.train.get(u)], components, progress, item_slot,
                                  n_boot, seed)
        else:
            pu, info = _persona(root, key, data, sp, us, components, progress)
        res["methods"]["persona"] = {"test": summarize({k: pu[k] for k in METRICS}, n_boot=n_boot, seed=seed), **info}
        if key == "cold_users" and main_persona is not None:
            full = {k: np.asarray(main_persona[k])[[pos[u] for u in us]] for k in ("ndcg@10", "auc")}
            res["methods"]["persona"]["same_users_full_history"] = summarize(full, n_boot=n_boot, seed=seed)
            res["persona_cold_minus_full"] = paired_bootstrap(pu["ndcg@10"], full["ndcg@10"], n_boot=n_boot, seed=seed)
        per = {"persona": pu}
        for name in names:
            if name not in chosen:
                continue
            params = dict(chosen[name]) | ({"texts": item_texts(data.items)} if name == "textknn" else {})
            model = registry[name](**params)
            model.fit(sp.fit_events("test"), sp.item_ids)
            per[name] = evaluate_scorer(model_scorer(model), sp, "test", us)
            res["methods"][name] = {"test": summarize({k: per[name][k] for k in METRICS}, n_boot=n_boot, seed=seed),
                                    "fit_seconds": model.fit_seconds}
        best = max((n for n in per if n != "persona"), key=lambda n: per[n]["ndcg@10"].mean(), default=None)
        if best:
            res["persona_vs_best"] = {"baseline": best, **{m: paired_bootstrap(pu[m], per[best][m], n_boot=n_boot, seed=seed)
                                                            for m in ("ndcg@10", "auc")}}
        if progress:
            print(f"[{key}] n={len(us)} " + ", ".join(f"{n} {p['ndcg@10'].mean():.4f}" for n, p in per.items()), flush=True)
        out[key] = res
    out["cold_items_n"] = len(cold_items)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def cold_lines(cs: dict[str, Any]) -> list[str]:
    """Markdown section for a ``run_cold_start`` result."""
    def c(s):
        return f"{s['mean']:.4f} [{s['lo']:.4f}, {s['hi']:.4f}]"

    lines = ["## Cold start (test; same held-out events as above)", "",
             "Cold users: a seeded 10% of users keep only their last 5 training events. Cold items: a seeded 10% of the "
             f"items ({cs.get('cold_items_n', '?')}) lose all their events from the fit data; evaluated are the users whose "
             "test item is one of them (reachable only through content).", ""]
    for key, title in (("cold_users", "cold users"), ("cold_items", "cold items")):
        r = cs.get(key) or {}
        lines += [f"**{title}** (n={r.get('n_users', 0)}):", "", "| method | NDCG@10 | HR@10 | AUC |", "|---|---|---|---|"]
        for name, m in r.get("methods", {}).items():
            lines.append(f"| {name} | {c(m['test']['ndcg@10'])} | {c(m['test']['hr@10'])} | {c(m['test']['auc'])} |")
        if "persona_vs_best" in r:
            p = r["persona_vs_best"]
            lines.append(f"\nPersona minus {p['baseline']}: NDCG@10 {p['ndcg@10']['diff']:+.4f} [{p['ndcg@10']['lo']:+.4f}, "
                         f"{p['ndcg@10']['hi']:+.4f}], AUC {p['auc']['diff']:+.4f} [{p['auc']['lo']:+.4f}, {p['auc']['hi']:+.4f}].")
        if "slot" in r:
            sl = r["slot"]
            lines.append(f"\nOpt-in new-item slot (`fit.new_item_slot={sl['position']}`, refitted with the same seed; same ranker: "
                         f"{'yes' if sl.get('same_ranker') else 'NO'}): "
                         + "; ".join(f"{g} (n={sl[g]['n_users']}) NDCG@10 {sl[g]['without']['ndcg@10']['mean']:.4f} -> "
                                     f"{sl[g]['with']['ndcg@10']['mean']:.4f} (paired {sl[g]['ndcg@10_diff']['diff']:+.4f} "
                                     f"[{sl[g]['ndcg@10_diff']['lo']:+.4f}, {sl[g]['ndcg@10_diff']['hi']:+.4f}]), HR@10 "
                                     f"{sl[g]['without']['hr@10']['mean']:.4f} -> {sl[g]['with']['hr@10']['mean']:.4f}"
                                     for g in ("new", "others")) + ". Off by default (valid; README).")
        if "persona_cold_minus_full" in r:
            p = r["persona_cold_minus_full"]
            lines.append(f"Persona with 5 events minus the same users with full history: NDCG@10 {p['diff']:+.4f} "
                         f"[{p['lo']:+.4f}, {p['hi']:+.4f}].")
        lines.append("")
    return lines
