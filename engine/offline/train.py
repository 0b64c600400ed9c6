"""Instruction data from interactions and LoRA fine-tuning (``persona train``).

Data (MLLM-MSR style): for a user's history up to a target interaction, the prompt holds the user's
profile (an extractive summary of that history prefix: the LLM summaries of the store cover the whole
history and would leak the target) plus recent liked items, then one candidate. The candidate is the
target item (answer ``Yes``) or an item the user never interacted with (answer ``No``), 1 : ``negatives``.
The listwise variant shows the target among sampled negatives under letter labels; the answer is the
target's label. Prompts are the same templates the engine uses at inference time.

Only the answer token is trained (cross-entropy on the next-token logits at the end of the prompt),
so the LM head runs on one position per example: this is what makes CPU training of the packaged
Gemma 270M take minutes. By default the data comes from the training side of the ml-100k
leave-last-out split, so ``persona eval`` never scores an interaction the adapter was trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidInputError, missing
from ..profiles import extractive_profile, is_positive
from ..types import Event

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "build_instruction_data", "train_lora", "data_hash"]

ADAPTER_META = "persona_adapter.json"


class TrainConfig(BaseModel):
    """What ``persona train`` builds and how it fine-tunes."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    users: int = Field(64, ge=1)
    """Users sampled for instruction data."""
    targets_per_user: int = Field(2, ge=1)
    """Most recent training interactions per user used as positive targets."""
    negatives: int = Field(1, ge=1)
    """Negatives per positive in the pointwise data (MLLM-MSR trains 1 : 1)."""
    format: Literal["pointwise", "listwise", "both"] = "pointwise"
    """Yes/No examples, listwise examples (answer: the positive's label), or both."""
    listwise_candidates: int = Field(5, ge=2, le=26)
    """Candidates per listwise example (1 positive, the rest sampled negatives)."""
    min_history: int = Field(5, ge=1)
    """Targets need at least this many earlier interactions."""
    epochs: int = Field(1, ge=1)
    """Passes over the instruction data."""
    lr: float = Field(5e-4, gt=0)
    """AdamW learning rate of the LoRA weights."""
    batch_size: int = Field(8, ge=1)
    """Examples per optimizer step."""
    lora_r: int = Field(8, ge=1, le=256)
    """LoRA rank (vLLM needs ``--max-lora-rank`` at least this)."""
    lora_alpha: int = Field(16, ge=1)
    """LoRA scaling numerator."""
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA input."""
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    """Linear layers that get LoRA weights (all of these are supported by vLLM's LoRA)."""
    max_prompt_tokens: int = Field(1024, ge=32)
    """Longer prompts are cut from the left (the answer position is kept)."""
    seed: int = 0
    """Seed of user, target and negative sampling and of the LoRA initialisation."""
    device: str = "cpu"
    """Torch device (``cuda`` takes a bigger model on a GPU)."""
    bf16: bool = True
    """Autocast matmuls to bfloat16 where the hardware has it (AMX / AVX512-BF16 CPUs, Ampere+ GPUs; about 2x
    faster on this project's CPU); LoRA weights and the optimizer stay float32."""


def data_hash(examples: Sequence[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def _bf16_ok(torch: Any, dev_type: str) -> bool:
    try:
        if dev_type == "cuda":
            return bool(torch.cuda.is_bf16_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def build_instruction_data(
    eng: Any, histories: dict[str, list[Event]], item_ids: Sequence[str], cfg: TrainConfig,
    exclude: dict[str, set[str]] | None = None, progress: bool = True,
) -> list[dict[str, Any]]:
    """Examples ``{"kind", "user_id", "item_id", "prompt", "completion"}`` from time-ordered histories.

    ``exclude`` lists, per user, items that must never be sampled as negatives (e.g. held-out test items)."""
    from tqdm.auto import tqdm

    from ..profiles import UserContext
    from ..ranking import LABELS, listwise_prompt, pointwise_prompts

    rng = random.Random(cfg.seed)
    users = sorted(u for u, evs in histories.items() if len(evs) > cfg.min_history)
    if not users:
        raise InvalidInputError(f"no user has more than {cfg.min_history} interactions")
    users = sorted(rng.sample(users, min(cfg.users, len(users))), key=lambda u: (len(u), u))
    pool = sorted(set(item_ids))
    thr = eng.settings.profile.positive_rating
    rows_cache: dict[str, dict[str, Any]] = {}

    def rows(ids: list[str]) -> list[dict[str, Any]]:
        need = [i for i in ids if i not in rows_cache]
        if need:
            rows_cache.update(eng.catalog.rows(need))
        return [rows_cache[i] for i in ids]

    out: list[dict[str, Any]] = []
    for uid in tqdm(users, desc="instruction data", disable=not progress, leave=False):
        evs = sorted(histories[uid], key=lambda e: (e.timestamp, e.item_id))
        seen = {e.item_id for e in evs} | (exclude or {}).get(uid, set())
        items = eng.catalog.hits([e.item_id for e in evs])  # payloads of the whole history, fetched once per user

        def negs(n: int, seen: set[str] = seen) -> list[str]:
            chosen: list[str] = []
            while len(chosen) < n:
                c = rng.choice(pool)
                if c not in seen and c not in chosen:
                    chosen.append(c)
            return chosen

        n_t = min(cfg.targets_per_user, len(evs) - cfg.min_history)
        for j in range(len(evs) - n_t, len(evs)):
            prefix, target = evs[:j], evs[j]
            known = [e for e in prefix if e.item_id in items]
            summary = extractive_profile([items[e.item_id].payload for e in known], [is_positive(e, thr) for e in known])
            history = UserContext(uid, pos=[e for e in prefix if is_positive(e, thr)], items=items).history_rows()

            if cfg.format in ("pointwise", "both"):
                for iid, ans in [(target.item_id, "Yes"), *((n, "No") for n in negs(cfg.negatives))]:
                    prompt = pointwise_prompts(eng.prompts, rows([iid]), summary, history)[0]
                    out.append({"kind": "pointwise", "user_id": uid, "item_id": iid, "prompt": prompt, "completion": " " + ans})
            if cfg.format in ("listwise", "both"):
                cands = [target.item_id, *negs(cfg.listwise_candidates - 1)]
                rng.shuffle(cands)
                prompt = listwise_prompt(eng.prompts, rows(cands), summary, history)
                ans = LABELS[cands.index(target.item_id)]
                out.append({"kind": "listwise", "user_id": uid, "item_id": target.item_id, "prompt": prompt, "completion": " " + ans})
    rng.shuffle(out)
    return out


def train_lora(
    examples: Sequence[dict[str, Any]], base_model: str, out_dir: str | Path, cfg: TrainConfig,
    progress: bool = True, extra_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune LoRA weights on the answer token of each example; saves the adapter (peft format,
    loadable by vLLM ``--lora-modules``) with ``persona_adapter.json`` (config, data hash, losses)."""
    try:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise missing("train", "peft / transformers / torch") from e
    from tqdm.auto import tqdm

    from ..llm.models import resolve_model

    if not examples:
        raise InvalidInputError("no instruction examples to train on")
    out = Path(out_dir)
    torch.manual_seed(cfg.seed)
    path = resolve_model(base_model)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"  # the answer is predicted at the last position of every row
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(cfg.device)
    lcfg = LoraConfig(task_type="CAUSAL_LM", r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules))
    model = get_peft_model(model, lcfg)
    params = [p for p in model.parameters() if p.requires_grad]  # the LoRA weights

    answers: list[int] = []
    for ex in examples:
        ids = tok.encode(ex["completion"], add_special_tokens=False)
        if not ids:
            raise InvalidInputError(f"empty completion in example for user {ex.get('user_id')!r}")
        answers.append(ids[0])  # answers are one word; its first token is what inference reads
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    order = list(range(len(examples)))
    steps_total = cfg.epochs * math.ceil(len(order) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps_total // 10)) * max(0.0, 1 - s / steps_total))
    rng = random.Random(cfg.seed)
    dev_type = "cuda" if str(cfg.device).startswith("cuda") else "cpu"
    use_bf16 = cfg.bf16 and _bf16_ok(torch, dev_type)
    losses: list[float] = []
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(total=steps_total, desc="LoRA", disable=not progress)
    for _ in range(cfg.epochs):
        rng.shuffle(order)
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            enc = tok([examples[i]["prompt"] for i in idx], return_tensors="pt", padding=True, truncation=True, max_length=cfg.max_prompt_tokens)
            enc = {k: v.to(cfg.device) for k, v in enc.items()}
            with torch.autocast(device_type=dev_type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(**enc, logits_to_keep=1).logits[:, -1, :].float()
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor([answers[i] for i in idx], device=cfg.device))
            if not torch.isfinite(loss):
                raise InvalidInputError(f"training diverged (loss {loss.item()}); lower --lr")
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(round(float(loss.item()), 5))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    with (out / "train_data.jsonl").open("w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(ex, ensure_ascii=False) + "\n")
    meta = {
        "base_model": base_model,
        "base_model_path": str(path),
        "data_hash": data_hash(examples),
        "examples": len(examples),
        "examples_by_kind": dict(Counter(ex["kind"] for ex in examples)),
        "train_config": cfg.model_dump(),
        "trainable_parameters": sum(p.numel() for p in params),
        "steps": len(losses),
        "loss_first_steps": losses[:5],
        "loss_last_steps": losses[-5:],
        "seconds": round(seconds, 1),
        "bf16_autocast": use_bf16,
        **(extra_meta or {}),
    }
    (out / ADAPTER_META).write_text(json.dumps(meta, indent=2))
    logger.info("adapter saved to %s (%d steps, %.0fs)", out, len(losses), seconds)
    return meta
