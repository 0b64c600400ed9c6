"""Faithfulness of structured preference summaries on ml-100k (``persona eval-summaries``).

Each sampled user's whole history runs through the same recurrent update as
:meth:`engine.profiles.ProfileBuilder.update` (session blocks, the oldest folded so that at most
``max_blocks`` LLM steps run, blocks of all users at one depth batched), straight from the events:
no store, no encoder. The final summary's claims are checked with :func:`engine.summaries.faithfulness`;
the report gives the share supported (per-user mean, percentile bootstrap CI over users), the pooled
share, fallbacks, dropped out-of-vocabulary claims, seconds and tokens.

The validator drops unsupported claims before a summary is stored, so the stored summaries are
faithful by construction; the model's own faithfulness is therefore measured on its raw answers
(every step, before the validator; an answer that does not parse counts as no claims and as a
fallback). That is the number that compares models.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Settings
from ..llm import LLM
from ..llm.base import first_json_object
from ..prompts import PromptRegistry
from ..sessions import fold_blocks, split_blocks
from ..summaries import Facts, Rated, attributes_of, faithfulness, render_summary, settle, step_prompt
from .datasets import MovieLens
from .metrics import bootstrap_ci

__all__ = ["evaluate_summaries", "write_summary_report"]

logger = logging.getLogger(__name__)
KEYS = ("liked", "disliked", "note")


def evaluate_summaries(
    ml: MovieLens, llm: LLM | None, users: int = 200, seed: int = 0, max_blocks: int = 2, settings: Settings | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Summaries for a seeded sample of ``users`` and their faithfulness (``llm=None``: the computed summaries)."""
    s = settings or Settings()
    thr, neg = s.profile.positive_rating, s.profile.negative_rating
    prompts = PromptRegistry(s.prompts_dir, s.prompt_versions)
    ref = prompts.get("preference_update").ref
    rng = np.random.default_rng(seed)
    uids = sorted({e.user_id for e in ml.events}, key=int)
    sample = sorted(rng.choice(uids, size=min(users, len(uids)), replace=False).tolist(), key=int)
    rated = {i.id: Rated(i.id, i.title, tuple(attributes_of({"attributes": i.attributes})), None) for i in ml.items}
    genre_words = sorted({g for i in ml.items for g in i.attributes.get("genres", [])})
    hist = {u: [e for e in ml.user_events(u) if e.item_id in rated] for u in sample}
    blocks = {u: fold_blocks(split_blocks(h, s.sessions.gap_s, s.sessions.max_block_items), max_blocks) for u, h in hist.items()}
    state: dict[str, tuple[dict[str, Any] | None, str, Facts | None]] = {u: (None, "", None) for u in sample}
    raw: dict[str, list[int]] = {u: [0, 0] for u in sample}  # the model's own claims, supported, over all steps
    raw_keys = {k: [0, 0] for k in KEYS}
    unparsed = 0
    t0, n_prompt_tokens, n_out_tokens, n_calls = time.time(), 0, 0, 0
    for d in range(max(len(b) for b in blocks.values())):
        todo = [u for u in sample if d < len(blocks[u])]
        facts = {}
        for u in todo:
            end = blocks[u][d][-1].timestamp
            facts[u] = Facts.of([Rated(r.item_id, r.title, r.attributes, e.rating) for e in hist[u] if e.timestamp <= end
                                 for r in [rated[e.item_id]]], thr, neg)
        outs: list[str | None] = [None] * len(todo)
        if llm is not None:
            texts = []
            for u in todo:
                shown = sorted(blocks[u][d], key=lambda e: (not (e.rating is None or e.rating >= thr), -e.timestamp))
                texts.append(llm.chat_prompt(step_prompt(prompts, ref, facts[u], state[u][0], d, shown[: s.profile.summary_items_per_block], rated, thr)))
            n_prompt_tokens += sum(llm.count_tokens(t) for t in texts)
            outs = list(llm.generate_json(texts, [facts[u].schema() for u in todo], s.profile.summary_max_new_tokens))
            n_out_tokens += sum(llm.count_tokens(o) for o in outs if o)
            n_calls += len(todo)
        for u, out in zip(todo, outs):
            if out is not None:
                parsed = first_json_object(out)
                unparsed += parsed is None
                r = faithfulness(parsed or {}, facts[u], genre_words)
                raw[u][0] += sum(r[k] for k in KEYS)
                raw[u][1] += sum(r[f"{k}_supported"] for k in KEYS)
                for k in KEYS:
                    raw_keys[k][0] += r[k]
                    raw_keys[k][1] += r[f"{k}_supported"]
            obj, src = settle(out, facts[u], "no LLM")
            state[u] = (obj, src, facts[u])
        if progress:
            logger.info("depth %d: %d users, %.0f s", d, len(todo), time.time() - t0)
    seconds = time.time() - t0
    rows, per_user = [], []
    for u in sample:
        obj, src, f = state[u]
        assert obj is not None and f is not None
        r = faithfulness(obj, f, genre_words)
        claims = sum(r[k] for k in KEYS)
        ok = sum(r[f"{k}_supported"] for k in KEYS)
        if claims:
            per_user.append(ok / claims)
        rows.append({"user_id": u, "source": src, "summary": render_summary(obj, f.titles), "structured": obj, **r})
    mean, lo, hi = bootstrap_ci(per_user, seed=seed)
    raw_per_user = [ok / n for n, ok in raw.values() if n]
    raw_mean, raw_lo, raw_hi = bootstrap_ci(raw_per_user, seed=seed) if raw_per_user else (None, None, None)
    tot = {k: sum(r[k] for r in rows) for k in KEYS}
    sup = {k: sum(r[f"{k}_supported"] for r in rows) for k in KEYS}
    return {
        "model": getattr(llm, "name", "computed (no LLM)"), "prompt": ref, "users": len(sample), "seed": seed, "max_blocks": max_blocks,
        "steps": n_calls, "seconds": seconds, "prompt_tokens": n_prompt_tokens, "output_tokens": n_out_tokens,
        "supported_mean": mean, "supported_lo": lo, "supported_hi": hi, "users_with_claims": len(per_user),
        "pooled": {k: (sup[k] / tot[k] if tot[k] else None) for k in KEYS}, "claims": tot,
        "fallbacks": sum(r["source"] != "llm" for r in rows),
        "raw_supported_mean": raw_mean, "raw_supported_lo": raw_lo, "raw_supported_hi": raw_hi, "raw_unparsed": unparsed,
        "raw_pooled": {k: (v[1] / v[0] if v[0] else None) for k, v in raw_keys.items()}, "raw_claims": {k: v[0] for k, v in raw_keys.items()},
        "dropped_attributes": sum((r["structured"].get("dropped") or {}).get("attributes", 0) for r in rows),
        "dropped_items": sum((r["structured"].get("dropped") or {}).get("items", 0) for r in rows),
        "rows": rows,
    }


def write_summary_report(rep: dict[str, Any], out: Path, command: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summaries.json").write_text(json.dumps(rep, indent=1, default=str))
    p = rep["pooled"]
    lines = [
        "# Structured summary faithfulness (ml-100k)", "", f"Command: `{command}`", "",
        f"Model `{rep['model']}`, prompt `{rep['prompt']}`, {rep['users']} users (seed {rep['seed']}), at most {rep['max_blocks']} recurrent steps per user.",
        "A liked attribute is supported when at least 2 of the user's items rated >= 4 carry it, a disliked one when 2 items rated <= 2 do;",
        "genres and decades named in the free-text note count as claims too.", "",
        "The stored summaries pass the validator, which drops unsupported claims, so they are faithful by construction;",
        "the model's own answers (every step, before the validator) are the measure of the model.", "",
        "| claims | supported (mean over users) | 95% CI | liked | disliked | note | unparsed answers | fallbacks | LLM steps | seconds | prompt tok | output tok |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rp = rep.get("raw_pooled") or {}
    if rep.get("raw_supported_mean") is not None:
        lines.append(
            f"| model's raw answers | {rep['raw_supported_mean']:.3f} | [{rep['raw_supported_lo']:.3f}, {rep['raw_supported_hi']:.3f}] | "
            + " | ".join(f"{rp[k]:.3f} ({rep['raw_claims'][k]})" if rp.get(k) is not None else "- (0)" for k in KEYS)
            + f" | {rep['raw_unparsed']} | - | {rep['steps']} | {rep['seconds']:.0f} | {rep['prompt_tokens']} | {rep['output_tokens']} |"
        )
    lines += [
        f"| stored (after the validator) | {rep['supported_mean']:.3f} | [{rep['supported_lo']:.3f}, {rep['supported_hi']:.3f}] | "
        + " | ".join(f"{p[k]:.3f} ({rep['claims'][k]})" if p[k] is not None else "- (0)" for k in KEYS)
        + f" | - | {rep['fallbacks']} ({rep['dropped_attributes']} attrs, {rep['dropped_items']} ids dropped) | {rep['steps']} | {rep['seconds']:.0f} | {rep['prompt_tokens']} | {rep['output_tokens']} |",
        "", "## First users", "",
    ]
    lines += [f"- user {r['user_id']} ({r['source']}): {r['summary']}" for r in rep["rows"][:8]]
    md = out / "summaries.md"
    md.write_text("\n".join(lines) + "\n")
    return md
