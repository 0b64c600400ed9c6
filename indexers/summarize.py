"""Item summaries through the LLM backend: text-only from title, description and attributes
(``summary_source = "llm-text"``), or from the image too through a vision model served by vLLM
(``"llm-vision"``, when ``llm.vision`` is set and the item has an image; items without one get a
text-only request to the same model). Failures fall back to the extractive summary
(``"extractive"``) per item, with a warning the ingest report carries, so ingestion never stops
on a model error and one bad poster does not cost the other items their summaries."""

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
VISION_PROMPT = "item_summary_vision"

Summary = tuple[str, str, "str | None"]
"""(summary, summary_source, warning for the ingest report or None)."""


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
        refs = prompts.get(PROMPT).ref + (f"+{prompts.get(VISION_PROMPT).ref}" if vision else "")
        self.fingerprint = f"summary:{refs}:{'vision' if vision else 'text'}"

    def _prompt(self, name: str, item: Item) -> str:
        return self.prompts.render(name, item={"title": item.title, "description": item.description or "", "attributes_text": _attributes_text(item)})

    def summarize(self, items: Sequence[Item], images: Sequence[bytes | None] | None = None) -> list[Summary]:
        fallback = [extractive_summary(it) for it in items]
        images = list(images) if images is not None else [None] * len(items)
        try:
            llm = self._llm_getter()
            if self.vision and hasattr(llm, "describe_images"):
                prompts = [self._prompt(VISION_PROMPT if img else PROMPT, it) for it, img in zip(items, images)]
                outs: list[str | None] = llm.describe_images(prompts, images, self.max_new_tokens)
                sources = ["llm-vision" if img else "llm-text" for img in images]
            else:
                outs = llm.generate([self._prompt(PROMPT, it) for it in items], self.max_new_tokens, stop=["\n"])
                sources = ["llm-text"] * len(items)
        except BackendUnavailableError as e:
            logger.warning("item summaries: LLM unavailable, extractive fallback for %d items: %s", len(items), e)
            return [(fb, "extractive", f"summary: LLM unavailable, extractive fallback ({e})"[:300]) for fb in fallback]
        out: list[Summary] = []
        for it, fb, text, source in zip(items, fallback, outs, sources):
            if text is None:  # the server refused this item (reason logged by the backend)
                out.append((fb, "extractive", "summary: the LLM refused this item (e.g. an undecodable image), extractive fallback"))
                continue
            text = text.replace("<<<", " ").replace(">>>", " ").strip()
            if len(text) < 10:
                logger.info("item %s: LLM summary too short (%r), extractive fallback", it.id, text)
                out.append((fb, "extractive", None))
            else:
                out.append((text[:400], source, None))
        return out
