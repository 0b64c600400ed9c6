"""Instruction data, LoRA training on the packaged Gemma 270M, and the adapter in both LLM backends."""

from __future__ import annotations

import json

import httpx
import pytest

from engine.offline.evaluate import leave_last_out
from engine.offline.train import ADAPTER_META, TrainConfig, build_instruction_data, data_hash
from engine.sections import PACKAGED_GEMMA


@pytest.fixture(scope="module")
def split(ml):
    return leave_last_out(ml.events, [i.id for i in ml.items], seed=0)


def _data(eng, ml, split, **cfg):
    exclude = {u: {e.item_id} for u, e in split.test.items()}
    return build_instruction_data(eng, split.train, [i.id for i in ml.items], TrainConfig(**cfg), exclude=exclude, progress=False)


def test_instruction_data_pointwise_and_listwise(ml_engine, ml, split):
    ex = _data(ml_engine, ml, split, users=6, targets_per_user=2, format="both")
    point = [e for e in ex if e["kind"] == "pointwise"]
    lists = [e for e in ex if e["kind"] == "listwise"]
    assert len(point) == 6 * 2 * 2 and len(lists) == 6 * 2  # 1 : 1 negatives, one list per target
    assert sum(e["completion"] == " Yes" for e in point) == sum(e["completion"] == " No" for e in point)
    for e in point:
        assert e["prompt"].endswith("Answer:")
        uid, iid = e["user_id"], e["item_id"]
        interacted = {x.item_id for x in split.train[uid]}
        # positives are the user's own training interactions; negatives never interacted, never the held-out item
        assert (iid in interacted) == (e["completion"] == " Yes")
        assert iid != split.test[uid].item_id
    for e in lists:
        label = e["completion"].strip()
        title = ml_engine.item(e["item_id"])["title"]
        line = next(line for line in e["prompt"].splitlines() if line.startswith(f"{label}. "))
        assert title[:20] in line
    # deterministic: same config, same data hash
    assert data_hash(ex) == data_hash(_data(ml_engine, ml, split, users=6, targets_per_user=2, format="both"))


def test_instruction_prompt_has_no_target_leak(ml_engine, ml, split):
    """The prompt for a target is built from the history *before* it: the target is not among the liked items."""
    for e in _data(ml_engine, ml, split, users=5, targets_per_user=1):
        if e["completion"] == " Yes":
            title = ml_engine.item(e["item_id"])["title"]
            liked = e["prompt"].split("Movies the viewer liked recently:")[1].split("Candidate movie:")[0]
            assert title not in liked


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory, ml_items_path):
    """`persona train` as a user runs it, on a small sample (4 users, 2 targets each, 1:1 negatives, 4 per step).
    Its store starts as a copy of the session's indexed catalog, so the command re-encodes nothing."""
    from services.cli import main
    from tests.conftest import copy_store

    base = tmp_path_factory.mktemp("train")
    copy_store(ml_items_path, base / "store" / "eval-ml100k")
    out = base / "persona-lora"
    rc = main(["--path", str(base / "store"), "train", "--out", str(out), "--users", "4", "--targets-per-user", "2",
               "--epochs", "2", "--lr", "1e-3", "--batch-size", "4", "--model", PACKAGED_GEMMA])
    assert rc == 0
    meta = json.loads((out / ADAPTER_META).read_text())
    ex = [json.loads(line) for line in (out / "train_data.jsonl").read_text().splitlines()]
    return out, meta, ex


@pytest.mark.slow
def test_train_saves_adapter_with_config_and_hash(tiny_adapter):
    out, meta, ex = tiny_adapter
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    saved = json.loads((out / ADAPTER_META).read_text())
    assert saved["data_hash"] == data_hash(ex) == meta["data_hash"]
    assert saved["examples"] == len(ex) == 16 and saved["steps"] == 8
    assert saved["train_config"]["lora_r"] == 8
    assert len((out / "train_data.jsonl").read_text().splitlines()) == len(ex)
    # it learned something: the mean loss of the last steps is below that of the first ones
    assert sum(saved["loss_last_steps"]) < sum(saved["loss_first_steps"])


@pytest.mark.slow
def test_adapter_changes_in_process_scores(tiny_adapter, local_llm):
    from engine.config import LLMConfig
    from engine.llm.local import TransformersLLM

    out, _, ex = tiny_adapter
    tuned = TransformersLLM(LLMConfig(model=PACKAGED_GEMMA, adapter=str(out), batch_size=8))
    prompts = [e["prompt"] for e in ex[:8]]
    base, after = local_llm.yes_probabilities(prompts), tuned.yes_probabilities(prompts)
    assert max(abs(a - b) for a, b in zip(base, after)) > 0.02
    assert "+" in tuned.name


@pytest.mark.slow
def test_adapter_served_by_vllm_matches_in_process(tiny_adapter, vllm_url):
    """vLLM (started with --enable-lora) loads the adapter by name; its P(Yes) agrees with the in-process backend."""
    from engine.config import LLMConfig
    from engine.llm.local import TransformersLLM
    from engine.llm.vllm import VLLMClient

    out, _, ex = tiny_adapter
    r = httpx.post(vllm_url + "/load_lora_adapter", json={"lora_name": "persona-test-lora", "lora_path": str(out)}, timeout=120)
    assert r.status_code == 200, r.text
    served = VLLMClient(LLMConfig(backend="vllm", url=vllm_url, adapter="persona-test-lora"))
    assert served.model == "persona-test-lora"
    local = TransformersLLM(LLMConfig(model=PACKAGED_GEMMA, adapter=str(out), batch_size=8))
    prompts = [e["prompt"] for e in ex[:6]]
    pv, pl = served.yes_probabilities(prompts), local.yes_probabilities(prompts)
    assert all(p is not None for p in pv)
    assert max(abs(a - b) for a, b in zip(pv, pl)) < 0.05, (pv, pl)
    base = VLLMClient(LLMConfig(backend="vllm", url=vllm_url)).yes_probabilities(prompts)
    assert max(abs(a - b) for a, b in zip(base, pv)) > 0.02  # the adapter is really applied


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError):
        TrainConfig(users=0)
    with pytest.raises(ValueError):
        TrainConfig(format="pairwise")
    with pytest.raises(ValueError):
        TrainConfig(listwise_candidates=40)
