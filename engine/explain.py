"""Reasons and explanations for a recommended item, grounded in the user's own history.

In: the target item hit (with vectors), the :class:`~engine.profiles.UserContext`, and for
generated explanations the prompt registry and an LLM getter.
Out: a short template reason (:func:`reason`, :func:`history_reason`) or an :class:`Explanation`:
one LLM sentence that phrases computed facts (:func:`facts`: the history item the ranker ties to
the target, liked or watched, shared genres), kept only when :func:`check_grounded` finds it cites
that item and names no other title or genre (and no injected text); otherwise the template reason,
flagged in ``fallback``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from .errors import BackendUnavailableError, NotFoundError
from .llm import LLM
from .profiles import UserContext
from .prompts import PromptRegistry
from .store import Hit
from .store.base import cosine
from .types import Explanation, genres_of

logger = logging.getLogger(__name__)

__all__ = ["check_grounded", "explain", "explain_all", "explain_item", "facts", "history_reason", "looks_injected", "reason", "title_key", "title_variants"]

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
    shared = sorted(set(_genres(hit)) & set(_genres(best)))
    extra = f" (also {', '.join(shared[:2])})" if shared else ""
    return f"Because you liked {best.payload.get('title') or best.payload['item_id']}{extra}", [best.payload["item_id"]]


def history_reason(hit: Hit, source: Hit | None, liked: bool) -> tuple[str | None, list[str]]:
    """The reason for a fitted model's pick: the history item its features tie to it most strongly
    (transition, co-occurrence, collaborative or content similarity), with the genres they share.
    ``liked`` says whether the user rated that item at or above the positive threshold."""
    if source is None:
        return None, []
    shared = sorted(set(_genres(hit)) & set(_genres(source)))
    extra = f" (also {', '.join(shared[:2])})" if shared else ""
    verb = "liked" if liked else "watched"
    return f"Because you {verb} {source.payload.get('title') or source.payload['item_id']}{extra}", [source.payload["item_id"]]


def facts(target: Hit, source: Hit, liked: bool) -> dict[str, object]:
    """What an explanation may say: the recommended title, the history item tied to it (``source``),
    whether the user liked or only watched it, and the genres the two share (from both payloads)."""
    shared = sorted(set(_genres(target)) & set(_genres(source)))
    return {"item": target.payload.get("title") or target.payload["item_id"], "source": source.payload.get("title") or source.payload["item_id"],
            "verb": "liked" if liked else "watched", "shared": shared}


def _genres(h: Hit) -> list[str]:
    return genres_of(h.payload.get("attributes") or {})


_QUOTED = re.compile(r"[\"“”«»]([^\"“”«»]{3,})[\"“”«»]")
_YEAR = re.compile(r"\((19|20)\d\d\)")
_WORD = re.compile(r"[\w'&:-]+|[.!?]")
_LINKS = {"of", "the", "and", "in", "a", "&", "on", "to"}


def title_variants(title: str) -> set[str]:
    """Lower-case ways a text may write ``title``: without the year, with a trailing article moved
    to the front (MovieLens writes "Godfather, The") and without the article."""
    base = title_key(title)
    m = re.match(r"^(.*), (the|a|an)$", base)
    core = m.group(1) if m else re.sub(r"^(the|a|an) ", "", base)
    out = {base, core}
    if m:
        out.add(f"{m.group(2)} {core}")
    return {v for v in out if len(v) >= 2}


def _capitalised_run(text: str) -> str | None:
    """A run of 2+ capitalised words not at a sentence start (a name or title), else None."""
    words, run, start = _WORD.findall(text), [], True
    for w in words:
        if w in ".!?":
            run, start = [], True
            continue
        if w[0].isupper() and not start:
            run.append(w)
            if len(run) >= 2:
                return " ".join(run)
        elif not (run and w.lower() in _LINKS):
            run = []
        start = False
    return None


def check_grounded(text: str, target: Hit, source: Hit, ctx: UserContext) -> str | None:
    """Why ``text`` is not grounded (None when it is): it must cite the ``source`` title, name no
    other title (history titles other than the source, quoted names, ``(year)``, runs of capitalised
    words left after the allowed names are removed) and no genre outside the target's payload."""
    if looks_injected(text):
        return "instruction-like text"
    low = text.lower()
    src, tgt = title_variants(source.payload.get("title", "")), title_variants(target.payload.get("title", ""))
    if not any(v in low for v in src):
        return "does not cite the history item"
    for h in ctx.items.values():
        for k in title_variants(h.payload.get("title", "")):
            if len(k) > 3 and not any(k in v for v in src | tgt) and re.search(rf"\b{re.escape(k)}\b", low):
                return f"names another history item ({h.payload.get('title')})"
    allowed = set(_genres(target))
    vocab = {g for h in [target, source, *ctx.items.values()] for g in _genres(h)}
    for g in vocab - allowed:
        if re.search(rf"\b{re.escape(g.lower())}\b", low):
            return f"names a genre the item does not have ({g})"
    rest = text
    names = [source.payload.get("title", ""), target.payload.get("title", "")]
    variants = {n for t in names for n in [t, *title_variants(t)]} | {g.lower() for g in allowed}
    for v in sorted(variants, key=len, reverse=True):
        rest = re.compile(re.escape(v), re.I).sub(" x ", rest)  # a removed name breaks a capitalised run
    if _QUOTED.search(rest) or _YEAR.search(rest):
        return "names a title outside the facts"
    run = _capitalised_run(rest)
    return f"names something outside the facts ({run})" if run else None


def explain_item(catalog, item_id: str, ctx: Callable[[], UserContext], prompts: PromptRegistry, llm: Callable[[], LLM], max_new_tokens: int,
                 because: list[str] | None = None) -> Explanation:
    """:func:`explain` for an item of ``catalog`` (an ``ItemCatalog``; NotFoundError when unknown), ``because``: the
    history item ids the fitted ranker ties to it, the first one named (else the most similar liked item)."""
    found = catalog.hits([item_id, *(because or [])[:1]], with_vectors=True)
    if item_id not in found:
        raise NotFoundError(f"unknown item {item_id!r}")
    return explain(found[item_id], ctx(), prompts, llm, max_new_tokens, found.get(because[0]) if because else None)


def explain(target: Hit, ctx: UserContext, prompts: PromptRegistry, llm: Callable[[], LLM], max_new_tokens: int,
            source: Hit | None = None) -> Explanation:
    """Why ``target`` suits the user in one LLM sentence constrained to :func:`facts`; the sentence
    is checked (:func:`check_grounded`) and the template reason replaces it when it fails (flagged in
    ``fallback``). ``source`` is the history item the ranker ties to the target (its ``because_of``);
    without one, the most similar liked item (content vectors) is the tie."""
    user_id, item_id = ctx.user_id, target.payload["item_id"]
    if source is None:
        _, because = reason(target, ctx)
        source = ctx.items.get(because[0]) if because else None
    if source is None:
        return Explanation(user_id=user_id, item_id=item_id, text="Popular with other users.", grounded_in=[], source="template")
    liked = any(e.item_id == source.payload["item_id"] for e in ctx.pos)
    template, because = history_reason(target, source, liked)
    problem = None
    try:
        model = llm()
        prompt = model.chat_prompt(prompts.render("explain", **facts(target, source, liked)))
        # Small models often copy the facts with their fence markers; the markers themselves are harmless.
        text = re.sub(r"<<<|>>>", "", model.generate([prompt], max_new_tokens, stop=["\n"])[0]).strip()
        problem = check_grounded(text, target, source, ctx) if text else "empty answer"
        if problem is None:
            return Explanation(user_id=user_id, item_id=item_id, text=text[:500], grounded_in=because, source="llm")
    except BackendUnavailableError as e:
        logger.warning("explanation for %s: LLM unavailable: %s", item_id, e)
        problem = "LLM unavailable"  # the details (replica URLs, server text) stay in the log, not in responses
    return Explanation(user_id=user_id, item_id=item_id, text=template or "", grounded_in=because, source="template",
                       fallback=f"LLM sentence rejected: {problem}")


def explain_all(recs: list, make: Callable[[object], Explanation]) -> str | None:
    """Replace each recommendation's reason with ``make(rec)``'s explanation; a note when any fell back."""
    notes = []
    for r in recs:
        try:
            ex = make(r)
        except BackendUnavailableError as e:
            logger.warning("explanation: LLM unavailable: %s", e)
            notes.append("LLM unavailable")
            continue
        r.reason, r.because_of = ex.text, ex.grounded_in
        if ex.fallback:
            notes.append(ex.fallback)
    return f"explanations: {len(notes)} of {len(recs)} used the template reason ({notes[0]})" if notes else None
