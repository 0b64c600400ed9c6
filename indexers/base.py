"""One small interface for every encoder: a named vector of fixed size from a batch of inputs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

__all__ = ["Encoder"]


class Encoder(ABC):
    """Turns a batch of texts or images into L2-normalised float32 rows."""

    vector_name: str
    """Name of the Qdrant named vector it fills."""
    modality: Literal["text", "image"]
    dim: int
    fingerprint: str
    """Changes whenever the vectors would change (model, weights); part of every item's content hash."""

    @abstractmethod
    def encode(self, inputs: Sequence[Any]) -> np.ndarray: ...


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)
