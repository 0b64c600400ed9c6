"""LLM backends behind one interface."""

from __future__ import annotations

import logging

from ..config import LLMConfig
from .base import LLM, yes_probability

__all__ = ["LLM", "open_llm", "yes_probability"]

logger = logging.getLogger(__name__)


def open_llm(config: LLMConfig) -> LLM | None:
    """The configured backend; ``None`` when the backend is ``none``."""
    backend = config.backend
    if backend == "none":
        return None
    if backend == "vllm" or (backend == "auto" and config.replica_urls()):
        from .vllm import VLLMClient

        return VLLMClient(config)
    from .local import TransformersLLM

    return TransformersLLM(config)
