"""Structured preference summaries: the closed vocabulary, facts computed in code, the JSON schema
the LLM fills, the validator, the rendering to text, and the faithfulness metric.

A summary is a JSON object ``{"liked": [...], "disliked": [...], "liked_items": [...], "note": "..."}``.
Attributes come from a per-user closed vocabulary built from the catalog's own payload (genres,
decades from ``year``, directors and cast where the payload has them); ``liked_items`` are ids of the
user's positively rated history. The validator drops everything outside the vocabulary or the
history; when nothing usable is left, :func:`computed_summary` (counts only, no LLM) replaces it,
flagged with ``fallback``. :func:`faithfulness` checks claims against the user's own ratings.

In: item payloads with the user's ratings. Out: the structured object and its rendered text.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .items import genres_of
from .llm.base import first_json_object

__all__ = [
    "Facts",
    "Rated",
    "attributes_of",
    "claims_backed",
    "computed_summary",
    "faithfulness",
    "note_claims",
    "render_summary",
    "settle",
    "step_prompt",
    "summary_schema",
    "validate_summary",
]

MAX_LIKED, MAX_DISLIKED, MAX_ITEMS, NOTE_CHARS = 4, 3, 3, 160
MIN_SUPPORT = 2
"""An attribute claim is supported when at least this many items of the history back it."""
PEOPLE = (("director", "directed by"), ("cast", "starring"))
"""Payload keys holding people, and how their attribute label reads."""
PEOPLE_PREFIXES = tuple(label + " " for _, label in PEOPLE)
COMMON_GENRES = (
    "Action", "Adventure", "Animation", "Biography", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Family",
    "Fantasy", "Film-Noir", "History", "Horror", "Musical", "Music", "Mystery", "Romance", "Sci-Fi", "Science Fiction",
    "Sport", "Thriller", "War", "Western",
)
"""Genre words a summary's free-text note is checked for even when the user's history has none of them."""


def attributes_of(payload: dict[str, Any], cast_limit: int = 3) -> list[str]:
    """The item's attribute labels: genres, its decade (``1990s``), ``directed by X``, ``starring Y``
    (the first ``cast_limit`` cast members: the leads)."""
    attrs = payload.get("attributes") or {}
    out = list(dict.fromkeys(genres_of(attrs)))
    year = attrs.get("year")
    if isinstance(year, int | float) and 1800 <= year <= 2100:
        out.append(f"{int(year) // 10 * 10}s")
    for key, label in PEOPLE:
        vals = attrs.get(key) or []
        vals = vals if isinstance(vals, list | tuple) else [vals]  # one name, or anything odd (skipped below)
        out.extend(f"{label} {v}" for v in list(vals)[: cast_limit if key == "cast" else 2] if isinstance(v, str) and v)
    return out


@dataclass(frozen=True)
class Rated:
    """One history entry as summaries see it."""

    item_id: str
    title: str
    attributes: tuple[str, ...]
    rating: float | None


@dataclass
class Facts:
    """Counts computed in code over a history: for every attribute, how many positively rated
    (``pos``) and low-rated (``neg``) items carry it. The per-user vocabulary is every attribute
    carried by at least :data:`MIN_SUPPORT` items of the history (a single item can support no claim)."""

    pos: Counter = field(default_factory=Counter)
    neg: Counter = field(default_factory=Counter)
    seen: Counter = field(default_factory=Counter)
    positive_ids: list[str] = field(default_factory=list)
    history_ids: set[str] = field(default_factory=set)
    titles: dict[str, str] = field(default_factory=dict)
    low_ids: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, history: Iterable[Rated], positive: float, negative: float) -> Facts:
        # One entry per film, with its latest rating (a later unrated view keeps it; the history is in time order),
        # counted in the payload's attribute order, not a set's hash order: equal counts rank alike in every process.
        f, latest = cls(), {}
        for r in history:
            prev = latest.pop(r.item_id, None)
            latest[r.item_id] = replace(r, rating=prev.rating) if r.rating is None and prev and prev.rating is not None else r
        for r in latest.values():
            f.history_ids.add(r.item_id)
            f.titles[r.item_id] = r.title
            f.seen.update(dict.fromkeys(r.attributes).keys())
            if r.rating is None or r.rating >= positive:
                f.pos.update(dict.fromkeys(r.attributes).keys())
                f.positive_ids.append(r.item_id)
            elif r.rating <= negative:
                f.neg.update(dict.fromkeys(r.attributes).keys())
                f.low_ids.add(r.item_id)
        return f

    def backs(self, attr: str, key: str) -> bool:
        """Whether the history backs ``attr`` as ``liked`` (>= :data:`MIN_SUPPORT` liked items carry it, more than
        low-rated ones) or ``disliked`` (>= MIN_SUPPORT low-rated, at least twice the liked, and a low share among its
        liked-or-low items at least the user's overall one; unrated items count as liked). Stricter than the metric's
        two-item rule: 40 low-rated dramas and 3 liked are no "likes Drama"; rating 83% of everything low while liking
        52 dramas (82% of them low) is how the user rates, not a "dislikes Drama"."""
        mine, other = self.support(key), self.support("disliked" if key == "liked" else "liked")
        if key == "liked":
            return mine[attr] >= MIN_SUPPORT and mine[attr] > other[attr]
        low, rated = len(self.low_ids), len(self.low_ids) + len(self.positive_ids)
        return (mine[attr] >= MIN_SUPPORT and mine[attr] >= 2 * other[attr]
                and mine[attr] * rated >= low * (mine[attr] + other[attr]))

    def support(self, key: str) -> Counter:
        """Per attribute, how many positively (``liked``) or low-rated (``disliked``) items carry it."""
        return self.pos if key == "liked" else self.neg

    def claimable(self, key: str, limit: int = 2 * MAX_LIKED) -> list[str]:
        """The attributes the history backs as ``liked`` (or ``disliked``), most backed first, at
        most ``limit``: what the schema lets the model choose from, so every claim is true and
        among the user's main tastes (not a side genre two liked items happen to share)."""
        return [a for a, _ in self.support(key).most_common() if self.backs(a, key)][:limit]

    def schema(self) -> dict[str, Any]:
        """The JSON schema a recurrent step's answer is constrained to (:func:`summary_schema` with
        this history's claimable attributes per key and its positively rated ids)."""
        return summary_schema(self.vocabulary, self.positive_ids, self.claimable("liked"), self.claimable("disliked"))

    @property
    def vocabulary(self) -> list[str]:
        return [a for a, n in self.seen.most_common() if n >= MIN_SUPPORT]

    def table(self, limit: int = 16) -> list[dict[str, Any]]:
        """The vocabulary with its counts (prompt rows): genres and keywords first, then decades,
        then people, each most seen first. A small model copies the first rows it reads; every
        movie has a decade, so by count alone decades would crowd out what the history is about."""
        def kind(a: str) -> int:
            return 2 if a.startswith(PEOPLE_PREFIXES) else 1 if re.fullmatch(r"\d{4}s", a) else 0

        rows = sorted(self.vocabulary, key=lambda a: (kind(a), -self.seen[a]))  # stable: ties keep payload order
        return [{"attribute": a, "liked": self.pos[a], "disliked": self.neg[a], "seen": self.seen[a]} for a in rows[:limit]]


def summary_schema(vocabulary: Sequence[str], item_ids: Sequence[str], liked: Sequence[str] | None = None,
                   disliked: Sequence[str] | None = None) -> dict[str, Any]:
    """JSON schema of one summary: this user's liked item ids as an enum, and the attributes as
    enums of ``vocabulary`` or, per key, of ``liked`` / ``disliked`` (:meth:`Facts.claimable`:
    constrained decoding then cannot produce a claim the history does not back)."""
    def arr(values: Sequence[str], cap: int, least: int = 0) -> dict[str, Any]:
        if not values:
            return {"type": "array", "items": {"type": "string"}, "maxItems": 0}
        return {"type": "array", "items": {"type": "string", "enum": list(values)}, "minItems": min(least, len(values)), "maxItems": cap}

    return {
        "type": "object",
        "properties": {  # a history that backs a liked attribute gets a summary naming at least one
            "liked": arr(vocabulary if liked is None else liked, MAX_LIKED, least=1 if liked is not None else 0),
            "disliked": arr(vocabulary if disliked is None else disliked, MAX_DISLIKED),
            "liked_items": arr(item_ids, MAX_ITEMS),
            "note": {"type": "string", "maxLength": NOTE_CHARS},
        },
        "required": ["liked", "disliked", "liked_items", "note"],
        "additionalProperties": False,
    }


def _strings(v: Any) -> list[str]:
    if isinstance(v, str):
        v = [v]
    # Attribute names are shown fenced in the prompt; a copied fence is not a different attribute.
    return [str(x).replace("<<<", "").replace(">>>", "").strip() for x in v if isinstance(x, str | int | float)] if isinstance(v, list) else []


def clean_note(text: Any) -> str:
    text = re.sub(r"<{2,}|>{2,}|`{3,}", " ", str(text or ""))
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > NOTE_CHARS:
        text = text[:NOTE_CHARS].rsplit(" ", 1)[0] + "…"
    return text


_DECADES = re.compile(r"(?:'|\b(?:1[89]|20))?\d0'?s\b")
_RATING_TALK = re.compile(r"\d|\brat(?:ed|ing|ings)\b", re.I)
"""A note is a sentence about taste: numbers (other than decades) and talk of ratings restate, often
wrongly, the counts the summary is built from ("mostly rated 4-5" of a user who rates low)."""


def claims_backed(summary: dict[str, Any], facts: Facts) -> bool:
    """Whether every liked / disliked attribute a stored summary claims is backed by today's rules
    (:meth:`Facts.backs`): a summary kept from older code that fails is re-made, not shown."""
    return all(facts.backs(a, key) for key in ("liked", "disliked") for a in _strings(summary.get(key)))


def validate_summary(text: str, facts: Facts) -> tuple[dict[str, Any] | None, dict[str, int]]:
    """Parse and clean a model's JSON summary against the closed world of ``facts``: attributes
    outside the vocabulary and item ids outside the user's positively rated history are dropped.
    Returns ``(summary, dropped counts)``; ``None`` when nothing usable remains (caller falls back)."""
    dropped = {"attributes": 0, "items": 0}
    obj = first_json_object(text or "")
    if obj is None:
        return None, dropped
    # A claim must be backed (Facts.backs: by at least two items, and by more liked than disliked
    # ones or the reverse); being in the vocabulary is not enough.
    out: dict[str, Any] = {}
    for key, cap in (("liked", MAX_LIKED), ("disliked", MAX_DISLIKED)):
        vals = list(dict.fromkeys(_strings(obj.get(key))))
        keep = sorted((v for v in vals if facts.backs(v, key)), key=lambda a: -facts.support(key)[a])  # most backed first
        dropped["attributes"] += len(vals) - len(keep)
        out[key] = keep[:cap]
    out["disliked"] = [a for a in out["disliked"] if a not in out["liked"]]
    ids = list(dict.fromkeys(_strings(obj.get("liked_items"))))
    keep_ids = [i for i in ids if i in facts.positive_ids]
    dropped["items"] = len(ids) - len(keep_ids)
    out["liked_items"] = keep_ids[:MAX_ITEMS]
    note = clean_note(obj.get("note"))
    words = set(COMMON_GENRES) | {a for a in facts.seen if not a.startswith(PEOPLE_PREFIXES)}
    named = note_claims(note, sorted(words))
    if any(not (facts.backs(a, "liked") or facts.backs(a, "disliked")) for a in named) or _RATING_TALK.search(_DECADES.sub("", note)):
        dropped["note"] = 1  # names a genre or decade the history does not back, or restates ratings: drop it
        note = ""
    out["note"] = note
    if not out["liked"] and not out["disliked"]:
        return None, dropped
    return out, dropped


def computed_summary(facts: Facts, reason: str) -> dict[str, Any]:
    """The summary from counts alone (no LLM): attributes liked in at least two items, most liked
    first; disliked ones where low ratings outnumber positive ones. Flagged with ``fallback``."""
    liked = [a for a, _ in facts.pos.most_common() if facts.backs(a, "liked")][:MAX_LIKED]
    disliked = [a for a, _ in facts.neg.most_common() if facts.backs(a, "disliked")][:MAX_DISLIKED]
    return {"liked": liked, "disliked": disliked, "liked_items": facts.positive_ids[-MAX_ITEMS:][::-1], "note": "", "fallback": reason}


def _join(xs: Sequence[str]) -> str:
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]


def _phrase(attr: str) -> str:
    """How an attribute label reads in a sentence: ``1990s films``, ``films directed by X``."""
    if re.fullmatch(r"\d{4}s", attr):
        return f"{attr} films"
    return f"films {attr}" if attr.startswith(PEOPLE_PREFIXES) else attr


def render_summary(summary: dict[str, Any], titles: dict[str, str]) -> str:
    """The natural-language summary that prompts and the dashboard show (starts with ``Likes``)."""
    liked = [_phrase(a) for a in summary.get("liked") or []]
    text = f"Likes {_join(liked)}." if liked else "Likes no clear attribute yet."
    if summary.get("disliked"):
        text += f" Dislikes {_join([_phrase(a) for a in summary['disliked']])}."
    names = [titles[i] for i in summary.get("liked_items") or [] if titles.get(i)]
    if names:
        text += f" Liked for example {'; '.join(names)}."
    if summary.get("note"):
        text += f" {summary['note'].rstrip('.')}."
    return text


def _word_re(word: str) -> re.Pattern[str]:
    stem = re.escape(word.lower()).replace(r"\-", "[- ]?")
    return re.compile(rf"(?<![a-z0-9]){stem}s?(?![a-z0-9])")


def note_claims(note: str, genre_words: Iterable[str]) -> list[str]:
    """Genres (from ``genre_words``, the catalog's genres) and decades (``1950s``, ``'50s``) a free-text note names."""
    low = (note or "").lower()
    found = [g for g in genre_words if _word_re(g).search(low)]
    found += [f"{19 if int(d) > 20 else 20}{d}s" for d in re.findall(r"(?<![0-9a-z])'(\d0)s", low)]
    found += [m + "s" for m in re.findall(r"(?<![0-9])((?:18|19|20)\d0)'?s", low)]
    return list(dict.fromkeys(found))


def faithfulness(summary: dict[str, Any], facts: Facts, genre_words: Iterable[str]) -> dict[str, int]:
    """Claims of one summary and how many the user's own history supports: a liked attribute is
    supported when at least :data:`MIN_SUPPORT` positively rated items carry it, a disliked one
    when that many low-rated items do; genres and decades the note names must be liked-supported
    or carried by a low-rated item the note could be talking about (any mention counts as a claim)."""
    liked = summary.get("liked") or []
    disliked = summary.get("disliked") or []
    note = note_claims(summary.get("note") or "", genre_words)
    attrs = set(facts.seen)
    note_ok = sum(1 for a in note if a in attrs and (facts.pos[a] >= MIN_SUPPORT or facts.neg[a] >= MIN_SUPPORT))
    return {
        "liked": len(liked), "liked_supported": sum(facts.pos[a] >= MIN_SUPPORT for a in liked),
        "disliked": len(disliked), "disliked_supported": sum(facts.neg[a] >= MIN_SUPPORT for a in disliked),
        "note": len(note), "note_supported": note_ok,
    }


def step_prompt(
    prompts: Any, ref: str, facts: Facts, previous: dict[str, Any] | None, block_index: int,
    shown: Sequence[Any], rated: dict[str, Rated], positive: float,
) -> str:
    """One recurrent update's prompt (before the chat template): the previous structured summary,
    the counts, and the block's ``shown`` events (``item_id``, ``rating``) described by ``rated``."""
    # Item lines carry genres and decade only: people that matter already sit in the counts table,
    # and the shorter prompt halves the cost on small CPUs.
    rows = [
        {"id": e.item_id, "title": rated[e.item_id].title, "attributes": [a for a in rated[e.item_id].attributes if not a.startswith(PEOPLE_PREFIXES)],
         "rating": e.rating, "liked": e.rating is None or e.rating >= positive}
        for e in shown
    ]
    return str(prompts.render(ref, previous=previous, block_index=block_index, facts=facts.table(), items=rows))


def settle(out: str | None, facts: Facts, no_llm_reason: str) -> tuple[dict[str, Any], str]:
    """The stored summary for one step and its source: the validated model answer (``llm``), or the
    computed one (``extractive``, flagged) when there was no answer or it was unusable."""
    if out is None:
        return computed_summary(facts, no_llm_reason), "extractive"
    obj, dropped = validate_summary(out, facts)
    if obj is None:
        return computed_summary(facts, "unusable LLM output"), "extractive"
    if any(dropped.values()):
        obj["dropped"] = dropped  # claims outside the vocabulary or the history, removed
    return obj, "llm"
