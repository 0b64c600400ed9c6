"""Recommendation latency and LLM prompt cost per ranked list.

    .venv/bin/python bench/recommend.py [--path DIR] [--users 200] [--candidates 20]

1. p50/p95 latency of ``recommend(k=10)`` without an LLM, with the fitted learned model (fitted
   first if the store has none) and with the unfitted fusion, against ONE raw Qdrant query (nearest
   neighbours of an item's text vector, k=10) on the same store in the same run: the printed ratio is
   recommend p95 / raw-query p95.
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

import numpy as np

from engine import Engine
from engine.offline.datasets import load_movielens
from engine.offline.metrics import latencies_ms
from engine.ranking import listwise_prompt
from engine.store import VectorQuery


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
    ap.add_argument("--no-tokens", action="store_true", help="skip the prompt-token part (needs the packaged Gemma tokenizer)")
    args = ap.parse_args()
    # no kept lists (engine.listcache): every timed request ranks (the warm-up call would make the first one a read)
    eng = Engine.open(args.path, {"llm": {"backend": "none"}, "retrieval": {"cache_users": 0}})
    if eng.stats()["items"] == 0:
        ml = load_movielens()
        eng.add_items(ml.items, progress=True)
        eng.add_events(ml.events)
    if eng.learned.current() is None:
        print(f"fitting: {eng.fit().seconds:.1f}s")
    users = sorted({h.payload["user_id"] for h in eng.store.scroll(eng.events_col)}, key=lambda u: (len(u), u))[: args.users]
    vecs = {h.payload["item_id"]: h.vectors["text"] for h in eng.store.scroll(eng.items_col, with_vectors=True) if h.vectors and "text" in h.vectors}
    probe = [vecs[eng.history(u)[-1].item_id] for u in users]

    def timed(fn) -> list[float]:
        return latencies_ms(fn, len(users))

    raw = timed(lambda i: eng.store.query(eng.items_col, [VectorQuery("text", vector=probe[i], limit=10)], limit=10))
    lat = timed(lambda i: eng.recommend(users[i], k=10))
    strategy = eng.recommend(users[0], k=10).strategy
    eng.close()
    eng = Engine.open(args.path, {"llm": {"backend": "none"}, "fit": {"use_model": False}})
    fused = timed(lambda i: eng.recommend(users[i], k=10))
    p = lambda xs, q: round(float(np.percentile(xs, q)), 2)  # noqa: E731
    latency = {
        "raw_qdrant_query_ms": {"p50": p(raw, 50), "p95": p(raw, 95)},
        f"recommend_{strategy}_ms": {"p50": p(lat, 50), "p95": p(lat, 95), "p95_ratio_to_raw_query": round(p(lat, 95) / p(raw, 95), 2)},
        "recommend_fusion_unfitted_ms": {"p50": p(fused, 50), "p95": p(fused, 95), "p95_ratio_to_raw_query": round(p(fused, 95) / p(raw, 95), 2)},
    }
    if args.no_tokens:
        eng.close()
        print(json.dumps({"users": len(users), "latency": latency}, indent=2))
        return

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
        "latency": latency,
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
