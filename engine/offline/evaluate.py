"""Offline evaluation on ml-100k: leave-last-out by time, 1 positive : 20 sampled negatives per user
(MLLM-MSR AUC protocol), HR/NDCG/MRR@K over the same candidate lists (UniMP style), with honest
baselines computed in the same run on the same candidates.

Leak-free by construction: the evaluation store only ever receives training events (everything
before each user's last interaction), popularity is counted on training events, and negatives are
items the user never interacted with.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import InvalidInputError
from ..store import Filter, point_id
from ..types import Event
from .datasets import MovieLens, load_movielens

logger = logging.getLogger(__name__)

__all__ = ["Split", "leave_last_out", "auc", "hit_rate", "ndcg", "mrr", "rank_of_positive", "evaluate", "compare_prompts"]


# -- metrics (candidate list: index 0 is the positive) ---------------------------------------------

def rank_of_positive(scores: Sequence[float]) -> float:
    """1-based rank of the positive (scores[0]); ties count half, so random tie-breaks don't flatter."""
    s = np.asarray(scores, np.float64)
    higher = float(np.sum(s[1:] > s[0]))
    ties = float(np.sum(s[1:] == s[0]))
    return 1.0 + higher + ties / 2.0


def auc(scores: Sequence[float]) -> float:
    """Fraction of negatives scored below the positive (ties count 0.5)."""
    s = np.asarray(scores, np.float64)
    neg = s[1:]
    return float((np.sum(neg < s[0]) + 0.5 * np.sum(neg == s[0])) / len(neg))


def hit_rate(rank: float, k: int) -> float:
    return 1.0 if rank <= k else 0.0


def ndcg(rank: float, k: int) -> float:
    return 1.0 / math.log2(rank + 1) if rank <= k else 0.0


def mrr(rank: float, k: int) -> float:
    return 1.0 / rank if rank <= k else 0.0


def summarize(all_scores: Sequence[Sequence[float]], ks: Sequence[int] = (5, 10)) -> dict[str, float]:
    ranks = [rank_of_positive(s) for s in all_scores]
    out = {"AUC": float(np.mean([auc(s) for s in all_scores]))}
    for k in ks:
        out[f"HR@{k}"] = float(np.mean([hit_rate(r, k) for r in ranks]))
        out[f"NDCG@{k}"] = float(np.mean([ndcg(r, k) for r in ranks]))
        out[f"MRR@{k}"] = float(np.mean([mrr(r, k) for r in ranks]))
    out["users"] = len(all_scores)
    return out


# -- protocol --------------------------------------------------------------------------------------

@dataclass
class Split:
    train: dict[str, list[Event]]
    test: dict[str, Event]
    candidates: dict[str, list[str]]
    """Per user: [positive, 20 negatives]."""
    seed: int
    n_neg: int

    def train_events(self) -> list[Event]:
        return [e for evs in self.train.values() for e in evs]


def leave_last_out(events: Sequence[Event], item_ids: Sequence[str], n_neg: int = 20, seed: int = 0) -> Split:
    by_user: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_user[e.user_id].append(e)
    rng = np.random.default_rng(seed)
    all_items = np.array(sorted(set(item_ids)))
    train, test, cands = {}, {}, {}
    for uid in sorted(by_user, key=lambda u: (len(u), u)):
        evs = sorted(by_user[uid], key=lambda e: (e.timestamp, e.item_id))
        if len(evs) < 2:
            continue
        train[uid], test[uid] = evs[:-1], evs[-1]
        seen = {e.item_id for e in evs}
        pool = all_items[~np.isin(all_items, list(seen))]
        negs = rng.choice(pool, size=min(n_neg, len(pool)), replace=False).tolist()
        cands[uid] = [evs[-1].item_id, *negs]
    return Split(train, test, cands, seed, n_neg)


# -- scorers -----------------------------------------------------------------------------------------

Scorer = Callable[[str, list[str]], list[float]]


def random_scorer(seed: int) -> Scorer:
    rng = np.random.default_rng(seed + 1)
    return lambda uid, cands: rng.random(len(cands)).tolist()


def popularity_scorer(split: Split) -> Scorer:
    pop = Counter(e.item_id for e in split.train_events())
    return lambda uid, cands: [float(pop.get(c, 0)) for c in cands]


def knn_scorer(split: Split, item_vecs: dict[str, np.ndarray], last_n: int = 30) -> Scorer:
    """Item-kNN on text embeddings: mean similarity to the user's most recent training items."""

    def score(uid: str, cands: list[str]) -> list[float]:
        hist = [item_vecs[e.item_id] for e in split.train[uid][-last_n:] if e.item_id in item_vecs]
        if not hist:
            return [0.0] * len(cands)
        h = np.stack(hist)
        return [float((h @ item_vecs[c]).mean()) if c in item_vecs else -1.0 for c in cands]

    return score


@dataclass
class EvalResult:
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def run_scorer(name: str, scorer: Scorer, users: Sequence[str], split: Split, result: EvalResult, progress: bool = True) -> None:
    t0 = time.perf_counter()
    all_scores = []
    for uid in tqdm(users, desc=name, disable=not progress, leave=False):
        s = scorer(uid, split.candidates[uid])
        if len(s) != len(split.candidates[uid]):
            raise RuntimeError(f"{name} returned {len(s)} scores for {len(split.candidates[uid])} candidates")
        all_scores.append(s)
    result.metrics[name] = summarize(all_scores)
    result.seconds[name] = round(time.perf_counter() - t0, 2)


def persona_retrieval_scorer(eng: Any, split: Split, use_summary: bool) -> Scorer:
    """Persona's own Qdrant retrieval (fused multi-vector queries), restricted to the candidate list."""

    def score(uid: str, cands: list[str]) -> list[float]:
        flt = Filter(include_ids={point_id("item", c) for c in cands})
        ctx = eng.user_context(uid, split.train[uid])
        hits, _ = eng.retriever.retrieve(ctx if use_summary else ctx.without_summary(), len(cands), flt)
        by_id = {h.payload["item_id"]: h.score for h in hits}
        return [by_id.get(c, -1.0) for c in cands]

    return score


def persona_llm_scorer(
    eng: Any, split: Split, mode: str, use_summary: bool, llm: Any = None, prompt: str | None = None,
    tokens: list[int] | None = None,
) -> Scorer:
    """LLM pointwise (P(Yes)) or listwise (label order) over the candidate list. ``llm`` overrides the
    engine's backend (e.g. with a LoRA adapter), ``prompt`` the template (``name@vN``); prompt token
    counts are appended to ``tokens`` when given."""
    from ..ranking import LABELS, listwise_prompt

    def score(uid: str, cands: list[str]) -> list[float]:
        ctx = eng.user_context(uid, split.train[uid])
        if not use_summary:
            ctx = ctx.without_summary()
        model = llm or eng.llm()
        if mode == "pointwise":
            prompts = eng.yes_no_prompts(uid, cands, ctx=ctx, prompt=prompt or "preference_yes_no")
            if tokens is not None:
                tokens.append(sum(model.count_tokens(p) for p in prompts))
            probs = model.yes_probabilities(prompts)
            return [0.5 if p is None else float(p) for p in probs]
        rows = eng.catalog.rows(cands)
        order = sorted(range(len(cands)), key=lambda i: (cands[i]))  # label order independent of the positive
        labels = LABELS[: len(cands)]
        text = listwise_prompt(eng.prompts, [rows[cands[i]] for i in order], ctx.summary, ctx.history_rows(), prompt or "rank_listwise")
        if tokens is not None:
            tokens.append(model.count_tokens(text))
        chosen = model.choose_sequence(text, labels, len(labels))
        pos = {}
        for r, lab in enumerate(chosen):
            pos.setdefault(lab, r)
        s = [0.0] * len(cands)
        for lab, i in zip(labels, order):
            s[i] = float(len(labels) - pos.get(lab, len(labels)))
        return s

    return score


def _setup(path: str | Path, data: MovieLens, seed: int, users: int | None, config: dict[str, Any] | None, progress: bool) -> tuple[Any, Split, list[str]]:
    """The evaluation store: all items, training events only (checked), and the sampled users."""
    from ..engine import Engine

    split = leave_last_out(data.events, [i.id for i in data.items], seed=seed)
    all_users = sorted(split.test, key=lambda u: int(u) if u.isdigit() else u)
    rng = np.random.default_rng(seed)
    eval_users = all_users if users is None else sorted(rng.choice(all_users, size=min(users, len(all_users)), replace=False).tolist())
    cfg = {"clip": {"enabled": False}, **(config or {})}
    eng = Engine.open(Path(path), cfg)
    try:
        eng.add_items(data.items, progress=progress)
        ev = eng.add_events(split.train_events())
        if ev.failed:
            raise RuntimeError(f"{ev.failed} training events refused")
        stored = {(e.user_id, e.item_id, e.timestamp) for e in (split.test[u] for u in eval_users)}
        leaked = [h for u in eval_users[:50] for h in eng.store.scroll(eng.events_col, Filter(match={"user_id": u})) if (h.payload["user_id"], h.payload["item_id"], h.payload["timestamp"]) in stored]
        if leaked:
            raise RuntimeError(f"test events leaked into the evaluation store: {len(leaked)}")
    except BaseException:
        eng.close()
        raise
    return eng, split, eval_users


def evaluate(
    path: str | Path,
    data: MovieLens | None = None,
    users: int | None = None,
    llm_users: int = 0,
    seed: int = 0,
    sasrec: bool = True,
    sasrec_epochs: int = 60,
    config: dict[str, Any] | None = None,
    progress: bool = True,
    adapter: str | None = None,
    llm_rows: str = "all",
) -> dict[str, Any]:
    """Run the protocol; returns the report dict (also what ``persona eval`` writes). With ``adapter``
    (a LoRA folder, or its served name on vLLM) the LLM rows are computed before and after it."""
    data = data or load_movielens()
    t0 = time.perf_counter()
    eng, split, eval_users = _setup(path, data, seed, users, config, progress)
    llm_sample = sorted(np.random.default_rng(seed + 7).choice(eval_users, size=min(llm_users, len(eval_users)), replace=False).tolist()) if llm_users else []
    result = EvalResult()
    result.seconds["setup"] = round(time.perf_counter() - t0, 2)

    vecs = {h.payload["item_id"]: np.asarray(h.vectors["text"], np.float32) for h in eng.store.scroll(eng.items_col, with_vectors=True)}
    run_scorer("random", random_scorer(seed), eval_users, split, result, progress)
    run_scorer("popularity", popularity_scorer(split), eval_users, split, result, progress)
    run_scorer("item-kNN (text)", knn_scorer(split, vecs), eval_users, split, result, progress)
    if sasrec:
        from .sasrec import train_sasrec

        t1 = time.perf_counter()
        model = train_sasrec(split, [i.id for i in data.items], seed=seed, epochs=sasrec_epochs, progress=progress)
        result.seconds["sasrec-train"] = round(time.perf_counter() - t1, 2)
        run_scorer("SASRec", model.scorer(split), eval_users, split, result, progress)
    run_scorer("persona retrieval", persona_retrieval_scorer(eng, split, use_summary=False), eval_users, split, result, progress)

    if llm_sample:
        result.notes["llm"] = f"LLM variants on a sample of {len(llm_sample)} users (seed {seed + 7}); baselines above on {len(eval_users)}"
        t1 = time.perf_counter()
        st = eng.update_profiles(llm_sample, progress=progress)
        result.seconds["summaries"] = round(time.perf_counter() - t1, 2)
        result.notes["summaries"] = json.dumps(st)
        for name, sc in [
            ("popularity", popularity_scorer(split)),
            ("persona retrieval", persona_retrieval_scorer(eng, split, use_summary=False)),
            ("persona retrieval + summary", persona_retrieval_scorer(eng, split, use_summary=True)),
            ("persona + LLM pointwise (no summary)", persona_llm_scorer(eng, split, "pointwise", use_summary=False)),
            ("persona + LLM pointwise", persona_llm_scorer(eng, split, "pointwise", use_summary=True)),
            ("persona + LLM listwise", persona_llm_scorer(eng, split, "listwise", use_summary=True)),
        ]:
            if llm_rows == "pointwise" and ("listwise" in name or "no summary" in name):
                continue  # --llm-rows pointwise: only the rows a pointwise adapter is compared on
            run_scorer(f"[sample] {name}", sc, llm_sample, split, result, progress)
        if adapter:
            from ..llm import open_llm

            tuned = open_llm(eng.settings.llm.model_copy(update={"adapter": adapter}))
            result.notes["adapter"] = _adapter_note(adapter)
            for name, sc in [
                ("persona + LLM pointwise + LoRA", persona_llm_scorer(eng, split, "pointwise", use_summary=True, llm=tuned)),
                ("persona + LLM listwise + LoRA", persona_llm_scorer(eng, split, "listwise", use_summary=True, llm=tuned)),
            ]:
                if llm_rows == "pointwise" and "listwise" in name:
                    continue
                run_scorer(f"[sample] {name}", sc, llm_sample, split, result, progress)
            tuned.close()
    report = {
        "protocol": {
            "split": "leave-last-out by timestamp",
            "negatives_per_user": split.n_neg,
            "negatives": "uniform over items the user never interacted with",
            "seed": seed,
            "users": len(eval_users),
            "llm_users": len(llm_sample),
        },
        "metrics": result.metrics,
        "seconds": result.seconds,
        "notes": result.notes,
        "config": json.loads(eng.settings.model_dump_json()),
        "models": {"text": eng.settings.text.model, "llm": eng.settings.llm.model if llm_sample else None},
        "prompts": {n: eng.prompts.get(n).ref for n in sorted({t.name for t in eng.prompts.list()})},
        "platform": platform.platform(),
    }
    eng.close()
    return report


PROMPT_MODES = {"preference_yes_no": "pointwise", "rank_listwise": "listwise"}


def compare_prompts(
    path: str | Path, refs: Sequence[str], data: MovieLens | None = None, users: int = 20, seed: int = 0,
    config: dict[str, Any] | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ranking prompt variants (``name@vN``) on the same users and candidates, one row each:
    metrics, prompt tokens per user (all candidates of one list), LLM seconds per user."""
    from ..config import Settings
    from ..prompts import PromptRegistry

    settings = Settings(**(config or {}))
    reg = PromptRegistry(settings.prompts_dir, settings.prompt_versions)
    for ref in refs:  # broken or non-ranking templates fail here, naming file and line, before the store or a model loads
        reg.check(ref)
        if reg.get(ref).name not in PROMPT_MODES:
            raise InvalidInputError(f"{ref}: only ranking prompts can be compared by metrics: {sorted(PROMPT_MODES)}")
    data = data or load_movielens()
    eng, split, sample = _setup(path, data, seed, users, config, progress)
    try:
        eng.llm()  # load (and fail) before the clock starts
        st = eng.update_profiles(sample, progress=progress)
        result, rows = EvalResult(), []
        for ref in refs:
            tpl = eng.prompts.get(ref)
            toks: list[int] = []
            scorer = persona_llm_scorer(eng, split, PROMPT_MODES[tpl.name], use_summary=True, prompt=tpl.ref, tokens=toks)
            run_scorer(tpl.ref, scorer, sample, split, result, progress)
            m = result.metrics[tpl.ref]
            rows.append({"prompt": tpl.ref, "file": str(tpl.path), **{k: m[k] for k in ("AUC", "HR@5", "NDCG@5", "MRR@5", "HR@10", "NDCG@10")},
                         "prompt_tokens_per_user": round(float(np.mean(toks)), 1),
                         "seconds_per_user": round(result.seconds[tpl.ref] / max(1, len(sample)), 3)})
        return {
            "users": len(sample), "seed": seed, "llm": eng.llm().name, "rows": rows,
            "protocol": f"leave-last-out, 1 positive : {split.n_neg} negatives, same users and candidates for every prompt",
            "summaries": st,
        }
    finally:
        eng.close()


def write_comparison(report: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = "__vs__".join(r["prompt"].replace("@", "_") for r in report["rows"])
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    cols = ["AUC", "HR@5", "NDCG@5", "MRR@5", "HR@10", "NDCG@10", "prompt_tokens_per_user", "seconds_per_user"]
    lines = [f"# Prompt comparison ({report['users']} users, seed {report['seed']}, {report['llm']})", "",
             report["protocol"], "", "| prompt | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in report["rows"]:
        lines.append(f"| {r['prompt']} | " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) and c in cols[:6] else str(r[c]) for c in cols) + " |")
    md = out / f"{stem}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def _adapter_note(adapter: str) -> str:
    meta = Path(adapter) / "persona_adapter.json"
    if not meta.exists():
        return f"LoRA adapter {adapter}"
    m = json.loads(meta.read_text())
    return (f"LoRA adapter {adapter}: {m.get('examples')} examples {m.get('examples_by_kind')}, data sha256 {str(m.get('data_hash'))[:12]}, "
            f"{m.get('steps')} steps in {m.get('seconds')}s, trained on training-split interactions only")


def write_report(report: dict[str, Any], out: Path) -> Path:
    """Markdown + JSON + a PNG plot of the metrics."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    cols = ["AUC", "HR@5", "NDCG@5", "MRR@5", "HR@10", "NDCG@10", "MRR@10", "users"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in report["metrics"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" if c != "users" else str(m[c]) for c in cols) + " |")
    table = "\n".join(lines)
    p = report["protocol"]
    md = [
        "# Persona evaluation on MovieLens-100k",
        "",
        f"Protocol: {p['split']}; 1 positive : {p['negatives_per_user']} negatives ({p['negatives']}); seed {p['seed']}; {p['users']} users.",
        "",
        table,
        "",
        *(f"- {k}: {v}" for k, v in report["notes"].items()),
        "",
        f"Timings (s): {json.dumps(report['seconds'])}",
        "",
        f"Models: {json.dumps(report['models'])}; prompts: {json.dumps(report['prompts'])}",
        "",
        "![metrics](metrics.png)",
    ]
    (out / "report.md").write_text("\n".join(md) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(report["metrics"])
        metrics = ["AUC", "HR@5", "NDCG@5", "MRR@5", "HR@10"]
        fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(names)), 4.5))
        w = 0.8 / len(metrics)
        for j, m in enumerate(metrics):
            ax.bar([i + j * w for i in range(len(names))], [report["metrics"][n][m] for n in names], w, label=m)
        ax.set_xticks([i + 0.4 - w / 2 for i in range(len(names))])
        ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.legend(ncol=len(metrics), fontsize=8)
        ax.set_title("ml-100k, leave-last-out, 1:20 candidates")
        fig.tight_layout()
        fig.savefig(out / "metrics.png", dpi=110)
        plt.close(fig)
    except ImportError:
        logger.warning("matplotlib missing: no plot (pip install 'persona-engine[eval]')")
    return out / "report.md"
