"""Item summaries through the LLM backend: text-only from title, description and attributes
(``summary_source = "llm-text"``), or from the image too through a vision model served by vLLM
(``"llm-vision"``, when ``llm.vision`` is set). Failures fall back to the extractive summary
(``"extractive"``), so ingestion never stops on a model error."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from engine.errors import BackendUnavailableError
from engine.items import genres_of
from engine.prompts import PromptRegistry
from engine.types import Item

from .ingest import extractive_summary

logger = logging.getLogger(__name__)

PROMPT = "item_summary"


def _attributes_text(item: Item) -> str:
    parts = []
    if genres_of(item.attributes):
        parts.append("genres " + ", ".join(genres_of(item.attributes)))
    for k, v in item.attributes.items():
        if k in ("genres", "genre"):
            continue
        parts.append(f"{k} {', '.join(map(str, v[:3])) if isinstance(v, list) else v}")
    return "; ".join(parts)


class LLMItemSummarizer:
    def __init__(self, llm_getter: Callable[[], Any], prompts: PromptRegistry, max_new_tokens: int = 48, vision: bool = False) -> None:
        self._llm_getter = llm_getter
        self.prompts = prompts
        self.max_new_tokens = max_new_tokens
        self.vision = vision
        self.fingerprint = f"summary:{prompts.get(PROMPT).ref}:{'vision' if vision else 'text'}"

    def summarize(self, items: Sequence[Item], images: Sequence[bytes | None] | None = None) -> list[tuple[str, str]]:
        fallback = [(extractive_summary(it), "extractive") for it in items]
        try:
            llm = self._llm_getter()
            prompts = [
                self.prompts.render(PROMPT, item={"title": it.title, "description": it.description or "", "attributes_text": _attributes_text(it)})
                for it in items
            ]
            if self.vision and images is not None and hasattr(llm, "describe_images"):
                outs = llm.describe_images(prompts, list(images), self.max_new_tokens)
                source = "llm-vision"
            else:
                outs = llm.generate(prompts, self.max_new_tokens, stop=["\n"])
                source = "llm-text"
        except BackendUnavailableError as e:
            logger.warning("item summaries: LLM unavailable, extractive fallback: %s", e)
            return fallback
        out = []
        for fb, text in zip(fallback, outs):
            text = (text or "").replace("<<<", " ").replace(">>>", " ").strip()
            out.append((text[:400], source) if len(text) >= 10 else fb)
        return out
