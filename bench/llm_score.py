"""LLM P(Yes) for one user's top-N list: shared-prefix scoring against per-candidate prompting, same run.

For each user (ml-100k, seeded) the pointwise prompt (``preference_yes_no``) is rendered for N candidates;
the prompts share the user part (profile, liked movies) and differ in the candidate line. Two ways, run
alternately per user so the machine's load hits both alike:

* per-candidate: every full prompt scored on its own (``LLM.yes_probabilities``; in vLLM one request per
  candidate, each with its own ``cache_salt`` so the prefix cache cannot serve it);
* shared prefix: ``LLM.yes_probabilities_shared`` (in-process: the prefix once, its key/value cache reused;
  vLLM: one request with the prefix first, its prefix cache on).

Prints tokens run through the model and seconds per list for both, their ratios, and the largest
difference between the two P(Yes) vectors.

    python -m bench.llm_score --users 3 --top-n 20                        # in-process, packaged Gemma 270M
    python -m bench.llm_score --model packaged:qwen2.5-0.5b-instruct
    python -m bench.llm_score --vllm-url http://127.0.0.1:8000/v1         # also the vLLM server
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from engine.config import LLMConfig
from engine.items import genres_of
from engine.llm_feature import shared_prompts
from engine.offline.datasets import load_movielens
from engine.prompts import PromptRegistry


def user_lists(n_users: int, top_n: int, seed: int):
    """(history rows, candidate rows) per sampled user: the 8 latest liked movies, N unseen movies."""
    ml = load_movielens()
    items = {it.id: it for it in ml.items}

    def row(iid):
        it = items[iid]
        g = genres_of(it.attributes)
        return {"id": iid, "title": it.title, "genres": g, "summary": f"{it.title}. {', '.join(g)}."}

    by_user: dict[str, list] = {}
    for e in ml.events:
        by_user.setdefault(e.user_id, []).append(e)
    rng = np.random.default_rng(seed)
    users = rng.choice(sorted(by_user, key=int), size=n_users, replace=False)
    out = []
    for u in users:
        evs = sorted(by_user[u], key=lambda e: e.timestamp)
        liked = [row(e.item_id) for e in evs if (e.rating or 5) >= 4][-8:][::-1]
        seen = {e.item_id for e in evs}
        cands = rng.choice([i for i in items if i not in seen], size=top_n, replace=False)
        out.append((str(u), liked, [row(i) for i in cands]))
    return out


def in_process(llm, prompts, lists, top_n) -> dict:
    res = {"per_candidate": {"tokens": [], "seconds": []}, "shared_prefix": {"tokens": [], "seconds": []}, "max_abs_diff": 0.0}
    llm.yes_probabilities_shared(*shared_prompts(llm, prompts, lists[0][2][:2], None, lists[0][1]))  # warm-up
    for _, hist, cands in lists:
        prefix, sufs = shared_prompts(llm, prompts, cands, None, hist)
        t, k = time.perf_counter(), llm.tokens_run
        a = llm.yes_probabilities([prefix + s for s in sufs])
        res["per_candidate"]["seconds"].append(time.perf_counter() - t)
        res["per_candidate"]["tokens"].append(llm.tokens_run - k)
        t, k = time.perf_counter(), llm.tokens_run
        b = llm.yes_probabilities_shared(prefix, sufs)
        res["shared_prefix"]["seconds"].append(time.perf_counter() - t)
        res["shared_prefix"]["tokens"].append(llm.tokens_run - k)
        res["max_abs_diff"] = max(res["max_abs_diff"], max(abs(x - y) for x, y in zip(a, b)))
        print(json.dumps({k: {m: v[-1] for m, v in res[k].items()} for k in ("per_candidate", "shared_prefix")}), flush=True)
    return res


def vllm(url, prompts, lists, model) -> dict:
    """vLLM: per-candidate requests with distinct cache salts vs one prefix-first request. Tokens are the
    server's prompt tokens minus the ones it reports as served from its prefix cache (when it reports them)."""
    from engine.llm.vllm import VLLMClient

    c = VLLMClient(LLMConfig(backend="vllm", url=url, model=model))
    res = {"per_candidate": {"tokens": [], "seconds": []}, "shared_prefix": {"tokens": [], "seconds": []}}

    def computed(usage):
        if not usage:
            return None
        cached = ((usage.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0
        return int(usage["prompt_tokens"]) - int(cached)

    for n, (_, hist, cands) in enumerate(lists):
        prefix, sufs = shared_prompts(c, prompts, cands, None, hist)
        t, tokens = time.perf_counter(), 0
        for j, s in enumerate(sufs):
            body = {"model": c.model, "prompt": [prefix + s], "max_tokens": 1, "temperature": 0.0, "logprobs": 20,
                    "cache_salt": f"bench-{time.time()}-{n}-{j}"}
            r = c.http.post(c.base + "/completions", json=body)
            r.raise_for_status()
            tokens += computed(r.json().get("usage")) or 0
        res["per_candidate"]["seconds"].append(time.perf_counter() - t)
        res["per_candidate"]["tokens"].append(tokens)
        t = time.perf_counter()
        c.yes_probabilities_shared(prefix, sufs)
        res["shared_prefix"]["seconds"].append(time.perf_counter() - t)
        res["shared_prefix"]["tokens"].append(computed(c.last_usage))
    c.close()
    return res


def summary(res: dict) -> dict:
    out = {}
    for way in ("per_candidate", "shared_prefix"):
        tok = [t for t in res[way]["tokens"] if t is not None]
        out[way] = {"tokens_per_list": float(np.mean(tok)) if tok else None, "seconds_per_list": float(np.mean(res[way]["seconds"]))}
    pc, sp = out["per_candidate"], out["shared_prefix"]
    out["tokens_ratio"] = pc["tokens_per_list"] / sp["tokens_per_list"] if pc["tokens_per_list"] and sp["tokens_per_list"] else None
    out["seconds_ratio"] = pc["seconds_per_list"] / sp["seconds_per_list"]
    if "max_abs_diff" in res:
        out["max_abs_diff_pyes"] = res["max_abs_diff"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=3)
    ap.add_argument("--top-n", type=int, default=20)
    ap.add_argument("--model", default="packaged:gemma-3-270m")
    ap.add_argument("--vllm-url", default=None)
    ap.add_argument("--vllm-model", default="persona-gemma", help="the served model name (tests/conftest.py serves persona-gemma)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from engine.llm.local import TransformersLLM

    prompts = PromptRegistry()
    lists = user_lists(a.users, a.top_n, a.seed)
    report = {"users": a.users, "top_n": a.top_n, "model": a.model}
    llm = TransformersLLM(LLMConfig(model=a.model, batch_size=a.top_n))
    report["in_process"] = summary(in_process(llm, prompts, lists, a.top_n))
    if a.vllm_url:
        report["vllm"] = summary(vllm(a.vllm_url, prompts, lists, a.vllm_model))
    print(json.dumps(report, indent=1))
    for backend in ("in_process", "vllm"):
        if backend in report:
            r = report[backend]
            print(f"{backend}: tokens per list {r['per_candidate']['tokens_per_list']} -> {r['shared_prefix']['tokens_per_list']}"
                  f" ({r['tokens_ratio'] and round(r['tokens_ratio'], 2)}x fewer); seconds per list "
                  f"{r['per_candidate']['seconds_per_list']:.2f} -> {r['shared_prefix']['seconds_per_list']:.2f} ({r['seconds_ratio']:.2f}x faster)")


if __name__ == "__main__":
    main()
