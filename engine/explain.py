"""Reasons and explanations for a recommended item, grounded in the user's own history.

In: the target item hit (with vectors), the :class:`~engine.profiles.UserContext`, and for
generated explanations the prompt registry and an LLM getter.
Out: a short template reason (:func:`reason`) or an :class:`Explanation`. A generated text is
kept only when it cites an item of the user's history and passes the injection guard
(:func:`looks_injected`); otherwise the template reason is used.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .errors import BackendUnavailableError
from .items import prompt_row
from .llm import LLM
from .profiles import UserContext
from .prompts import PromptRegistry
from .store import Hit
from .store.base import cosine
from .types import Explanation

__all__ = ["explain", "looks_injected", "reason", "title_key"]

# Text that tries to steer the model; generated explanations containing it are discarded.
INJECTION = re.compile(
    r"ignore (all |any )?(previous|prior|above|earlier) (instructions|prompts?)|system prompt|rank (this|it) (item )?first|<<<|>>>",
    re.I,
)


def looks_injected(text: str) -> bool:
    """True when ``text`` contains instruction-like text or prompt fence markers."""
    return INJECTION.search(text) is not None


def title_key(title: str) -> str:
    """Title without a trailing year, lower-case, for checking that an explanation cites it."""
    return re.sub(r"\s*\(\d{4}\)\s*$", "", title).lower().strip()


def reason(hit: Hit, ctx: UserContext) -> tuple[str | None, list[str]]:
    """Ground the reason in the user's own history: the most similar liked item (and shared genres)."""
    vec = (hit.vectors or {}).get("text")
    best, best_sim = None, -2.0
    for e in ctx.pos[-50:]:
        h = ctx.items.get(e.item_id)
        if h is None or not vec or "text" not in (h.vectors or {}):
            continue
        sim = cosine(vec, h.vectors["text"])
        if sim > best_sim:
            best, best_sim = h, sim
    if best is None:
        return ("Popular with other users" if not ctx.pos else None), []
    shared = sorted(set((hit.payload.get("attributes") or {}).get("genres") or []) & set((best.payload.get("attributes") or {}).get("genres") or []))
    extra = f" (also {', '.join(shared[:2])})" if shared else ""
    return f"Because you liked {best.payload.get('title') or best.payload['item_id']}{extra}", [best.payload["item_id"]]


def history_reason(hit: Hit, source: Hit | None, liked: bool) -> tuple[str | None, list[str]]:
    """The reason for a fitted model's pick: the history item its features tie to it most strongly
    (transition, co-occurrence, collaborative or content similarity), with the genres they share.
    ``liked`` says whether the user rated that item at or above the positive threshold."""
    if source is None:
        return None, []
    shared = sorted(set((hit.payload.get("attributes") or {}).get("genres") or []) & set((source.payload.get("attributes") or {}).get("genres") or []))
    extra = f" (also {', '.join(shared[:2])})" if shared else ""
    verb = "liked" if liked else "watched"
    return f"Because you {verb} {source.payload.get('title') or source.payload['item_id']}{extra}", [source.payload["item_id"]]


def explain(target: Hit, ctx: UserContext, prompts: PromptRegistry, llm: Callable[[], LLM], max_new_tokens: int) -> Explanation:
    """Why ``target`` suits the user: an LLM sentence citing up to 3 similar liked items, else the template reason."""
    user_id, item_id = ctx.user_id, target.payload["item_id"]
    vec = (target.vectors or {}).get("text")
    liked = [ctx.items[e.item_id] for e in ctx.pos if e.item_id in ctx.items]
    liked.sort(key=lambda h: -cosine(vec, h.vectors["text"]) if vec and "text" in (h.vectors or {}) else 0.0)
    grounding = liked[:3]
    if not grounding:
        return Explanation(user_id=user_id, item_id=item_id, text="Popular with other users.", grounded_in=[], source="template")
    try:
        prompt = prompts.render("explain", history=[prompt_row(h) for h in grounding], item=prompt_row(target))
        text = "You may like this because " + llm().generate([prompt], max_new_tokens, stop=["\n"])[0].strip()
        cited = [h.payload["item_id"] for h in grounding if title_key(h.payload.get("title", "")) in text.lower()]
        if text.strip() and not looks_injected(text) and cited:
            return Explanation(user_id=user_id, item_id=item_id, text=text[:500], grounded_in=cited, source="llm")
    except BackendUnavailableError:
        pass
    text, because = reason(target, ctx)
    return Explanation(user_id=user_id, item_id=item_id, text=text or "", grounded_in=because, source="template")

