"""open_clip image and text encoders (named vectors ``image`` and ``clip_text``), sharing one model."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from engine.config import ClipConfig
from engine.errors import BackendUnavailableError, missing

from .base import Encoder, normalize

logger = logging.getLogger(__name__)


def _weights_reachable(model: str, tag: str) -> bool:
    """True if the weights are a local file, already cached, or the hub answers; avoids minutes of
    download retries on an offline machine."""
    import os
    import socket
    from pathlib import Path
    from urllib.parse import urlparse

    if Path(tag).exists():
        return True
    try:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(model, tag)
        hf_id = cfg.get("hf_hub", "").rstrip("/")
        if hf_id:
            from huggingface_hub import try_to_load_from_cache

            for fname in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
                if isinstance(try_to_load_from_cache(hf_id, fname), str):
                    return True
    except Exception:  # unknown tag etc.: let open_clip report it
        return True
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


class ClipModel:
    """Loads an open_clip model once; ``pretrained=None`` builds it with random weights (tests only:
    no CLIP weights ship on PyPI, so the code path is real but the vectors carry no meaning)."""

    def __init__(self, config: ClipConfig | None = None) -> None:
        self.config = config or ClipConfig()
        try:
            import open_clip
            import torch
        except ImportError as e:
            raise missing("clip", "open_clip_torch") from e
        self._torch = torch
        if self.config.pretrained and not _weights_reachable(self.config.model, self.config.pretrained):
            raise BackendUnavailableError(
                f"CLIP weights {self.config.model}/{self.config.pretrained} are not cached and the model hub is unreachable"
            )
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.config.model, pretrained=self.config.pretrained, device=self.config.device
            )
        except Exception as e:
            raise BackendUnavailableError(
                f"cannot load CLIP {self.config.model}/{self.config.pretrained}: {type(e).__name__}: {e}"
            ) from e
        model.eval()
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(self.config.model)
        self.dim = int(open_clip.get_model_config(self.config.model)["embed_dim"])
        self.fingerprint = f"clip:{self.config.model}:{self.config.pretrained or 'random-init'}"
        if self.config.pretrained is None:
            logger.warning("CLIP %s has random weights (pretrained=None): its vectors carry no meaning", self.config.model)

    def encode_images(self, images: Sequence[object]) -> np.ndarray:
        torch = self._torch
        if not images:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode():
            batch = torch.stack([self.preprocess(im) for im in images]).to(self.config.device)
            return normalize(self.model.encode_image(batch).float().cpu().numpy())

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode():
            tokens = self.tokenizer(list(texts)).to(self.config.device)
            return normalize(self.model.encode_text(tokens).float().cpu().numpy())


class ClipImageEncoder(Encoder):
    modality = "image"
    vector_name = "image"

    def __init__(self, model: ClipModel) -> None:
        self.model, self.dim, self.fingerprint = model, model.dim, model.fingerprint

    def encode(self, inputs: Sequence[object]) -> np.ndarray:
        return self.model.encode_images(inputs)


class ClipTextEncoder(Encoder):
    modality = "text"
    vector_name = "clip_text"

    def __init__(self, model: ClipModel) -> None:
        self.model, self.dim, self.fingerprint = model, model.dim, model.fingerprint

    def encode(self, inputs: Sequence[str]) -> np.ndarray:
        return self.model.encode_texts(inputs)
