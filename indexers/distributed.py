"""Catalog encoding on Ray Data (extra ``ray``): the text vectors of a whole catalog are computed by
an actor pool of encoders (``engine.batch.RayBatch.encode``), then the usual indexer writes them.

:func:`ray_text_encoder` returns an :class:`~indexers.base.Encoder` that serves those precomputed
vectors by text (same model, same normalisation: the stored vectors are identical to the
in-process path) and falls back to the local encoder for any text it was not given (e.g. a
description the indexer truncates)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pydantic import ValidationError

from engine.types import Item

from .base import Encoder
from .ingest import item_text

logger = logging.getLogger(__name__)

__all__ = ["PrecomputedTextEncoder", "ray_text_encoder"]


class PrecomputedTextEncoder(Encoder):
    """Vectors computed elsewhere for known texts; the ``base`` encoder for the rest."""

    def __init__(self, base: Encoder, texts: Sequence[str], vectors: np.ndarray) -> None:
        self.base = base
        self.vector_name, self.modality, self.dim, self.fingerprint = base.vector_name, base.modality, base.dim, base.fingerprint
        self._row = {t: i for i, t in enumerate(texts)}
        self._vectors = vectors
        self.fallbacks = 0

    def encode(self, inputs: Sequence[Any]) -> np.ndarray:
        out = np.zeros((len(inputs), self.dim), np.float32)
        miss = [i for i, t in enumerate(inputs) if t not in self._row]
        for i, t in enumerate(inputs):
            if t in self._row:
                out[i] = self._vectors[self._row[t]]
        if miss:
            self.fallbacks += len(miss)
            out[miss] = self.base.encode([inputs[i] for i in miss])
        return out


def ray_text_encoder(records: Sequence[Any], batch: Any, base: Encoder, factory: Callable[[], Encoder]) -> PrecomputedTextEncoder:
    """Encode the texts of ``records`` (Items or dicts; invalid ones are left to the indexer to
    report) on Ray with ``factory()`` encoders, and serve them to the indexer."""
    texts: dict[str, None] = {}
    for rec in records:
        try:
            item = rec if isinstance(rec, Item) else Item.model_validate(rec)
        except (ValidationError, TypeError, ValueError):
            continue
        texts.setdefault(item_text(item))
    uniq = list(texts)
    vectors = batch.encode(uniq, factory, base.dim)
    logger.info("encoded %d texts on Ray", len(uniq))
    return PrecomputedTextEncoder(base, uniq, vectors)
