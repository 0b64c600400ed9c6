"""Tuned non-LLM baselines on ml-100k under the offline protocol (``engine.offline``).

    PYTHONPATH=. python bench/baselines.py --out docs/offline-baselines-ml100k.json  # full (~25 min on 2 shared CPUs)
    PYTHONPATH=. python bench/baselines.py --quick --out /tmp/baselines-quick.json   # < 2 min

Per user: test = last event, valid = second-to-last, train = the rest (ties in seeded-hash order).
Each method's grid is chosen on valid NDCG@10 (full catalog), refit on train + valid, test read
once. Prints a Markdown table (means with 95% bootstrap CIs) and writes everything, per-user arrays
included, to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from engine.offline.datasets import default_movielens_path, load_movielens  # noqa: E402
from engine.offline.metrics import paired_bootstrap  # noqa: E402
from engine.offline.protocol import METHODS, run_baselines  # noqa: E402


def _ci(m: dict, k: str) -> str:
    d = m[k]
    return f"{d['mean']:.4f} [{d['lo']:.4f}, {d['hi']:.4f}]"


def _params(p: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in p.items() if k != "seed") or "-"


def table(res: dict) -> str:
    rows = [
        "| method | chosen params | valid NDCG@10 | test HR@10 | test NDCG@10 (95% CI) | Recall@50 | AUC (95% CI) | HR@5 | NDCG@5 | MRR@10 | fit s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res["methods"].items():
        t = r["test"]
        rows.append(
            f"| {name} | {_params(r['chosen'])} | {r['valid_ndcg@10']:.4f} | {t['hr@10']['mean']:.4f} | {_ci(t, 'ndcg@10')} | "
            f"{t['recall@50']['mean']:.4f} | {_ci(t, 'auc')} | {t['hr@5']['mean']:.4f} | {t['ndcg@5']['mean']:.4f} | "
            f"{t['mrr@10']['mean']:.4f} | {r['fit_seconds']:.1f} |"
        )
    return "\n".join(rows)


def valid_table(res: dict) -> str:
    rows = ["| method | valid HR@10 | valid NDCG@10 (95% CI) | valid Recall@50 | valid AUC | configs tried | tuning fit s |", "|---|---|---|---|---|---|---|"]
    for name, r in res["methods"].items():
        v = r["valid"]
        rows.append(f"| {name} | {v['hr@10']['mean']:.4f} | {_ci(v, 'ndcg@10')} | {v['recall@50']['mean']:.4f} | {v['auc']['mean']:.4f} | {len(r['trials'])} | {r['tune_seconds']:.1f} |")
    return "\n".join(rows)


def groups_table(res: dict) -> str:
    names = list(res["groups_n"])
    rows = ["| method | " + " | ".join(f"{g} train events (n={res['groups_n'][g]})" for g in names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, r in res["methods"].items():
        rows.append(f"| {name} | " + " | ".join(f"{r['groups'][g]['mean']:.4f}" for g in names) + " |")
    return "\n".join(rows)


def paired_table(res: dict) -> str:
    p = res.get("paired_vs_best")
    if not p:
        return ""
    rows = [f"Paired bootstrap of test NDCG@10 against {p['reference']}:", "", "| method | diff | 95% CI | p |", "|---|---|---|---|"]
    for name, d in p["results"].items():
        rows.append(f"| {name} | {d['diff']:+.4f} | [{d['lo']:+.4f}, {d['hi']:+.4f}] | {d['p']:.3f} |")
    return "\n".join(rows)


def cold_table(res: dict) -> str:
    c = res.get("cold_start")
    if not c:
        return ""
    rows = [f"Simulated cold start ({c['n_users']} users truncated to 5 train events; chosen params refit, no re-tuning):", "",
            "| method | cold test NDCG@10 (95% CI) | cold HR@10 | same users, full history NDCG@10 |", "|---|---|---|---|"]
    for name, r in c["methods"].items():
        rows.append(f"| {name} | {_ci(r['test'], 'ndcg@10')} | {r['test']['hr@10']['mean']:.4f} | {r['same_users_full_history']['ndcg@10']['mean']:.4f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="ml-100k directory (default: engine.offline.datasets.default_movielens_path())")
    ap.add_argument("--out", default=None, help="JSON output path")
    ap.add_argument("--quick", action="store_true", help="small grids, few SASRec epochs, 200 users (< 2 min)")
    ap.add_argument("--which", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument("--users", type=int, default=None, help="evaluate a random subset of this many users")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--cold-start", action="store_true", help="also the simulated cold-start evaluation")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (SASRec); 1 is fastest on a shared 2-core machine")
    ap.add_argument("--sasrec", default="", help="fixed SASRec params, e.g. maxlen=50,batch=32,max_seconds=300")
    ap.add_argument("--sasrec-dropout", default="", help="SASRec dropout grid, e.g. 0.2,0.5 (default: SASRec.GRID)")
    ap.add_argument("--combine", nargs="+", default=None, help="print one table from these result JSONs (no run)")
    args = ap.parse_args(argv)

    if args.combine:
        res = json.loads(Path(args.combine[0]).read_text())
        for p in args.combine[1:]:
            other = json.loads(Path(p).read_text())
            res["methods"].update(other["methods"])
            if other.get("cold_start"):
                if res.get("cold_start"):
                    res["cold_start"]["methods"].update(other["cold_start"]["methods"])
                else:
                    res["cold_start"] = other["cold_start"]
        res["combined_from"] = [{"file": p, "command": json.loads(Path(p).read_text()).get("command")} for p in args.combine]
        res["wall_seconds"] = sum(json.loads(Path(p).read_text())["wall_seconds"] for p in args.combine)
        ms = res["methods"]
        ref = max(ms, key=lambda k: ms[k]["test"]["ndcg@10"]["mean"])
        res["paired_vs_best"] = {
            "reference": ref,
            "metric": "ndcg@10",
            "results": {k: paired_bootstrap(ms[k]["per_user"]["ndcg@10"], ms[ref]["per_user"]["ndcg@10"], n_boot=args.n_boot, seed=res["protocol"]["seed"]) for k in ms if k != ref},
        }
        _report(res, args)
        return 0

    import torch

    torch.set_num_threads(args.threads)
    data = load_movielens(args.data or default_movielens_path())
    users = None
    n_users = args.users if args.users is not None else (200 if args.quick else None)
    if n_users:
        from engine.offline.split import temporal_split

        all_users = temporal_split(data.events, [i.id for i in data.items], seed=args.seed).users
        rng = np.random.default_rng(args.seed)
        users = sorted(rng.choice(all_users, size=min(n_users, len(all_users)), replace=False).tolist())
    which = [w.strip() for w in args.which.split(",") if w.strip()]
    params = {"sasrec": {"threads": args.threads}}
    for kv in filter(None, args.sasrec.split(",")):
        k, v = kv.split("=")
        params["sasrec"][k.strip()] = float(v) if "." in v else int(v)
    t = time.perf_counter()
    grids = {"sasrec": [{"dropout": float(x)} for x in args.sasrec_dropout.split(",")]} if args.sasrec_dropout else None
    res = run_baselines(data, seed=args.seed, users=users, which=which, quick=args.quick, grids=grids, params=params, n_boot=args.n_boot, cold_start=args.cold_start)
    res.pop("_models", None)
    res["command"] = " ".join(["python", "bench/baselines.py", *(argv if argv is not None else sys.argv[1:])])
    res["wall_seconds"] = time.perf_counter() - t
    _report(res, args)
    return 0


def _report(res: dict, args: argparse.Namespace) -> None:
    md = "\n\n".join(x for x in (
        f"ml-100k, {res['protocol']['n_users']} users, {res['protocol']['n_items']} items, seed {res['protocol']['seed']}{' (quick)' if res['protocol']['quick'] else ''}; wall {res['wall_seconds']:.0f} s",
        "Test (refit on train + valid):", table(res), "Validation (chosen configuration, fit on train):", valid_table(res),
        "Test NDCG@10 by train-history length:", groups_table(res), paired_table(res), cold_table(res),
    ) if x)
    print(md)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        res["markdown"] = md
        Path(args.out).write_text(json.dumps(res, indent=1, default=float))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    raise SystemExit(main())
