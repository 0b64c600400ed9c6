"""Recommendation latency and LLM prompt cost per ranked list.

    .venv/bin/python bench/recommend.py [--path DIR] [--users 200] [--candidates 20]

1. p50/p95 latency of ``recommend`` without an LLM (Qdrant edge retrieval + reasons), over users.
2. Prompt tokens the LLM must process to rank one list of candidates, measured in the same run:
   - per-candidate prompts (the MLLM-MSR way: every candidate gets its own full prompt);
   - Persona pointwise: one batched request whose prompts share a prefix (profile + history), so
     with prefix caching (vLLM ``--enable-prefix-caching``) the prefix is processed once;
   - Persona listwise: one prompt holding all candidates.
Tokens are counted with the served model's tokenizer (packaged Gemma 3 270M)."""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from engine import Engine
from engine.offline.datasets import load_movielens
from engine.ranking import listwise_prompt


def common_prefix_len(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", default=os.path.expanduser("~/.local/share/persona"))
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--candidates", type=int, default=20)
    args = ap.parse_args()
    eng = Engine.open(args.path, {"llm": {"backend": "none"}})
    if eng.stats()["items"] == 0:
        ml = load_movielens()
        eng.add_items(ml.items, progress=True)
        eng.add_events(ml.events)
    users = sorted({h.payload["user_id"] for h in eng.store.scroll(eng.events_col)}, key=lambda u: (len(u), u))[: args.users]
    eng.recommend(users[0], k=10)  # warm-up
    lat = []
    for u in users:
        t0 = time.perf_counter()
        eng.recommend(u, k=10)
        lat.append((time.perf_counter() - t0) * 1000)

    from transformers import AutoTokenizer

    from engine.llm.models import packaged_gemma_dir

    tok = AutoTokenizer.from_pretrained(str(packaged_gemma_dir()))
    per_candidate, pointwise, listwise = [], [], []
    for u in users[:50]:
        ctx = eng.user_context(u, eng.history(u))
        cands = [r.item_id for r in eng.recommend(u, k=args.candidates).items]
        prompts = eng.yes_no_prompts(u, cands, ctx=ctx)
        ids = [tok.encode(p) for p in prompts]
        per_candidate.append(sum(len(x) for x in ids))
        pre = common_prefix_len(ids)
        pointwise.append(pre + sum(len(x) - pre for x in ids))
        rows = eng.catalog.rows(cands)
        lp = listwise_prompt(eng.prompts, [rows[c] for c in cands], ctx.summary, ctx.history_rows())
        listwise.append(len(tok.encode(lp)) + 2 * len(cands))  # + the generated labels
    out = {
        "users": len(users),
        "recommend_no_llm_ms": {"p50": round(float(np.percentile(lat, 50)), 2), "p95": round(float(np.percentile(lat, 95)), 2)},
        "candidates_per_list": args.candidates,
        "prompt_tokens_per_list": {
            "per_candidate_prompts (MLLM-MSR)": round(float(np.mean(per_candidate))),
            "persona_pointwise_shared_prefix": round(float(np.mean(pointwise))),
            "persona_listwise": round(float(np.mean(listwise))),
        },
        "ratio_vs_per_candidate": {
            "pointwise": round(float(np.mean(per_candidate) / np.mean(pointwise)), 2),
            "listwise": round(float(np.mean(per_candidate) / np.mean(listwise)), 2),
        },
    }
    eng.close()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
