"""In-process LLM backend (transformers): the embedded default."""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Sequence
from typing import Any

from ..cancel import check_cancelled, current_scope
from ..config import LLMConfig
from ..errors import BackendUnavailableError, InvalidInputError, missing
from .base import LLM
from .models import resolve_model

logger = logging.getLogger(__name__)


class TransformersLLM(LLM):
    def __init__(self, config: LLMConfig) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise missing("llm", "transformers") from e
        self.config = config
        self._torch = torch
        path = resolve_model(config.model)
        try:
            self.tok = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(config.device).eval()
        except Exception as e:
            raise BackendUnavailableError(f"cannot load LLM {config.model!r}: {e}") from e
        if config.adapter:
            try:
                from peft import PeftModel
            except ImportError as e:
                raise missing("train", "peft") from e
            self.model = PeftModel.from_pretrained(self.model, config.adapter).eval()
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.name = f"transformers:{config.model}" + (f"+{config.adapter}" if config.adapter else "")
        self._lock = threading.Lock()  # one forward pass at a time: torch already uses every core
        self.batches_run = 0
        """Forward batches started so far (a counter: tests prove cancellation by it, not by seconds)."""
        self.tokens_run = 0
        """Prompt tokens run through the model by the Yes/No scorers (bench/llm_score.py reads it)."""
        self._yes_ids = self._word_ids(["Yes", " Yes", "yes", " yes"])
        self._no_ids = self._word_ids(["No", " No", "no", " no"])
        self.max_len = min(int(getattr(self.model.config, "max_position_embeddings", 8192) or 8192), 8192)
        self._grammar: Any = None  # xgrammar's GrammarCompiler once built; False without xgrammar

    def _word_ids(self, words: list[str]) -> list[int]:
        ids = set()
        for w in words:
            t = self.tok.encode(w, add_special_tokens=False)
            if len(t) == 1:
                ids.add(t[0])
        return sorted(ids)

    def count_tokens(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=True))

    def _batches(self, prompts: Sequence[str]):
        bs = self.config.batch_size
        for i in range(0, len(prompts), bs):
            check_cancelled()  # a disconnected API client stops the work between batches
            self.batches_run += 1
            yield list(prompts[i : i + bs])

    def _encode(self, prompts: list[str], reserve: int):
        enc = self.tok(prompts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_len - reserve)
        return {k: v.to(self.config.device) for k, v in enc.items()}

    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = ()) -> list[str]:
        out: list[str] = []
        torch = self._torch
        with self._lock, torch.inference_mode():
            for batch in self._batches(prompts):
                enc = self._encode(batch, max_new_tokens)
                gen = self.model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tok.pad_token_id,
                    repetition_penalty=1.15, stopping_criteria=self._stop_on_cancel(),
                )
                check_cancelled()
                for row in gen[:, enc["input_ids"].shape[1] :]:
                    text = self.tok.decode(row, skip_special_tokens=True)
                    for s in stop:
                        if s and s in text:
                            text = text[: text.index(s)]
                    out.append(text.strip())
        return out

    def _stop_on_cancel(self) -> Any:
        from transformers import StoppingCriteria, StoppingCriteriaList

        scope = current_scope()
        if scope is None:
            return None

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                return scope.cancelled

        return StoppingCriteriaList([_Cancelled()])

    def _next_logprobs(self, batch: list[str]):
        torch = self._torch
        enc = self._encode(batch, 1)
        self.tokens_run += int(enc["attention_mask"].sum())
        # Only the last position's logits: the LM head over Gemma's 262k vocabulary at every position
        # would cost more than the rest of the forward pass.
        logits = self.model(**enc, logits_to_keep=1).logits[:, -1, :].float()
        return torch.log_softmax(logits, dim=-1)

    def yes_probabilities(self, prompts: Sequence[str]) -> list[float | None]:
        if not self._yes_ids or not self._no_ids:
            raise BackendUnavailableError("the tokenizer has no single-token Yes/No")
        torch = self._torch
        res: list[float | None] = []
        with self._lock, torch.inference_mode():
            for batch in self._batches(prompts):
                lp = self._next_logprobs(batch)
                y = torch.logsumexp(lp[:, self._yes_ids], dim=-1)
                n = torch.logsumexp(lp[:, self._no_ids], dim=-1)
                res.extend(torch.sigmoid(y - n).tolist())
        return res

    def yes_probabilities_shared(self, prefix: str, suffixes: Sequence[str]) -> list[float | None]:
        """P(Yes) for each ``prefix + suffix`` with the shared part computed once: the token ids common
        to every full prompt run through the model one time, then its key/value cache is copied per
        batch and only the suffix tokens are run. The suffixes are left-padded *after* the shared part
        (attention mask zero there, position ids continuing from the prefix), so each row's answer is
        read at the last position and equals scoring the full prompt alone (tested within 1e-4)."""
        if not suffixes:
            return []
        if not self._yes_ids or not self._no_ids:
            raise BackendUnavailableError("the tokenizer has no single-token Yes/No")
        torch = self._torch
        # Tokenize full prompts (exactly what yes_probabilities sees) and share their longest common
        # token prefix: a BPE merge across the prefix/suffix boundary can then never change a result.
        full = [self._ids(prefix + s) for s in suffixes]
        shared = _common_prefix_len(full)
        shared = min(shared, min(len(f) for f in full) - 1)  # every row keeps >= 1 token of its own
        if shared < 1:
            return self.yes_probabilities([prefix + s for s in suffixes])
        dev = self.config.device
        res: list[float | None] = []
        with self._lock, torch.inference_mode():
            check_cancelled()
            self.batches_run += 1
            head = torch.tensor([full[0][:shared]], device=dev)
            base = self.model(input_ids=head, use_cache=True, logits_to_keep=1).past_key_values
            self.tokens_run += shared
            tails = [f[shared:] for f in full]
            for i in range(0, len(tails), self.config.batch_size):
                check_cancelled()
                self.batches_run += 1
                batch = tails[i : i + self.config.batch_size]
                width = max(len(t) for t in batch)
                pad = self.tok.pad_token_id
                ids = torch.tensor([[pad] * (width - len(t)) + t for t in batch], device=dev)
                tail_mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in batch], device=dev)
                mask = torch.cat([torch.ones((len(batch), shared), dtype=tail_mask.dtype, device=dev), tail_mask], dim=1)
                pos = (shared + tail_mask.cumsum(1) - 1).clamp(min=shared)
                cache = copy.deepcopy(base)
                cache.batch_repeat_interleave(len(batch))
                out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                                 logits_to_keep=1)
                self.tokens_run += int(tail_mask.sum())
                lp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
                y = torch.logsumexp(lp[:, self._yes_ids], dim=-1)
                n = torch.logsumexp(lp[:, self._no_ids], dim=-1)
                res.extend(torch.sigmoid(y - n).tolist())
        return res

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=True, truncation=True, max_length=self.max_len - 1)["input_ids"]

    def choose_sequence(self, prompt: str, labels: Sequence[str], n: int) -> list[str]:
        """Greedy decoding restricted to the remaining labels (each must be one token after a space)."""
        torch = self._torch
        label_ids: dict[int, str] = {}
        for lab in labels:
            t = self.tok.encode(" " + lab, add_special_tokens=False)
            if len(t) != 1:
                raise InvalidInputError(f"label {lab!r} is not a single token")
            label_ids[t[0]] = lab
        chosen: list[str] = []
        text = prompt
        with self._lock, torch.inference_mode():
            enc = self._encode([text], n * 2)
            ids = enc["input_ids"]
            past = None
            step_ids = ids
            attn = enc["attention_mask"]
            comma = self.tok.encode(",", add_special_tokens=False)
            for _ in range(min(n, len(labels))):
                check_cancelled()
                out = self.model(input_ids=step_ids, attention_mask=attn, past_key_values=past, use_cache=True, logits_to_keep=1)
                past = out.past_key_values
                logits = out.logits[0, -1]
                allowed = [i for i, lab in label_ids.items() if lab not in chosen]
                best = max(allowed, key=lambda i: float(logits[i]))
                chosen.append(label_ids[best])
                step_ids = torch.tensor([[best, *comma]], device=ids.device)
                attn = torch.cat([attn, torch.ones((1, step_ids.shape[1]), dtype=attn.dtype, device=attn.device)], dim=1)
        return chosen

    def chat_prompt(self, text: str) -> str:
        """One user turn through the tokenizer's chat template (identity for base models without one)."""
        if not getattr(self.tok, "chat_template", None):
            return text
        return str(self.tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True))

    def generate_json(self, prompts: Sequence[str], schema: dict | Sequence[dict], max_new_tokens: int) -> list[str]:
        """Constrained decoding with xgrammar (the grammar engine vLLM uses for structured outputs):
        each prompt's schema (e.g. its user's enums) is compiled to a token mask, so the answer is a
        JSON object of that schema unless ``max_new_tokens`` cuts it. Without xgrammar installed (it
        is in the ``llm`` extra) the model generates freely, with a warning. Callers validate the
        result either way (and fall back where it does not parse)."""
        schemas = [schema] * len(prompts) if isinstance(schema, dict) else list(schema)
        if self._grammar_compiler() is None:
            return super().generate_json(prompts, schemas, max_new_tokens)
        return self._constrained(prompts, schemas, max_new_tokens)

    def _grammar_compiler(self) -> Any:
        """xgrammar's compiler for this tokenizer (built once; it caches compiled schemas), or None
        when xgrammar is not installed."""
        if self._grammar is None:
            try:
                import xgrammar as xgr
            except ImportError:
                logger.warning("xgrammar is not installed: generate_json generates freely, callers still validate (pip install 'persona-engine[llm]')")
                self._grammar = False
                return None
            # The model's vocabulary can be larger than the tokenizer's (padding rows): masks must cover it.
            info = xgr.TokenizerInfo.from_huggingface(self.tok, vocab_size=int(self.model.config.vocab_size))
            self._grammar = xgr.GrammarCompiler(info)
        return self._grammar or None

    def _constrained(self, prompts: Sequence[str], schemas: list[dict], max_new_tokens: int) -> list[str]:
        from xgrammar.contrib.hf import LogitsProcessor

        compiler = self._grammar_compiler()
        # Compact JSON: with free whitespace a small model can spend its whole budget on newlines.
        # Property order as given: the grammar fixes it, and the prompt asks for "liked" first.
        grammars = [compiler.compile_json_schema(json.dumps(s), any_whitespace=False) for s in schemas]
        torch = self._torch
        out: list[str] = []
        bs = self.config.batch_size
        with self._lock, torch.inference_mode():
            for b0 in range(0, len(prompts), bs):
                check_cancelled()
                self.batches_run += 1
                enc = self._encode(list(prompts[b0 : b0 + bs]), max_new_tokens)
                gen = self.model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tok.pad_token_id,
                    logits_processor=[LogitsProcessor(grammars[b0 : b0 + bs])],  # one per generate() call
                    stopping_criteria=self._stop_on_cancel(),
                )
                check_cancelled()
                out += [self.tok.decode(row, skip_special_tokens=True).strip() for row in gen[:, enc["input_ids"].shape[1] :]]
        return out


def _common_prefix_len(rows: list[list[int]]) -> int:
    first = rows[0]
    n = min(len(r) for r in rows)
    for i in range(n):
        t = first[i]
        if any(r[i] != t for r in rows):
            return i
    return n
