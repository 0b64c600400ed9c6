"""Typed inputs and results of the SDK."""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "Item",
    "Event",
    "ItemError",
    "IngestReport",
    "EventReport",
    "DeleteReport",
    "Recommendation",
    "Recommendations",
    "SummaryVersion",
    "Profile",
    "SearchHit",
    "Explanation",
    "ItemScore",
    "FitReport",
    "event_sort_key",
    "sort_events",
    "genres_of",
]

# No control characters. Written with the characters themselves (not ``\x`` escapes) because some
# JSON-schema consumers (schemathesis' generator) mis-read escaped ranges in the OpenAPI pattern.
_ID = "^[^\x00-\x1f]+$"


class Item(BaseModel):
    """A catalog item. Only ``id`` is required; items with no image or no description are still indexed."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=200, pattern=_ID)
    title: str = ""
    description: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    image: str | None = None
    """Path, ``file://`` or ``http(s)://`` URL of the item image."""

    def checked(self) -> Item:
        """This item validated again (fields can be assigned after construction without checks): what is stored."""
        return Item.model_validate(self.model_dump(warnings=False))

    @field_validator("id", mode="before")
    @classmethod
    def _id_str(cls, v: Any) -> Any:
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, float):
            if not v.is_integer():
                raise ValueError("id must be a string or an integer")
            v = int(v)
        return str(v).strip() if isinstance(v, (int, str)) else v


class Event(BaseModel):
    """One interaction. Idempotent: the same event (same ``id``, or same user/item/time/kind) counts once."""

    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=200, pattern=_ID)
    item_id: str = Field(min_length=1, max_length=200, pattern=_ID)
    timestamp: float
    kind: str = Field("rating", pattern=r"^[a-z_]{1,32}$")
    rating: float | None = None
    text: str | None = Field(None, max_length=20_000)
    id: str | None = Field(None, min_length=1, max_length=200, pattern=_ID)

    @field_validator("user_id", "item_id", "id", mode="before")
    @classmethod
    def _ids(cls, v: Any) -> Any:
        return Item._id_str(v)

    @field_validator("timestamp")
    @classmethod
    def _seconds(cls, v: float) -> float:
        # Time features (trend windows, recency gaps, weekly buckets) read seconds; an absurd time would stretch the
        # buckets over every real event (or overflow them) for all users
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        if not MIN_TIMESTAMP <= v <= MAX_TIMESTAMP:
            hint = " (milliseconds? divide by 1000)" if MAX_TIMESTAMP < v <= MAX_TIMESTAMP * 1000 else ""
            raise ValueError(f"must be seconds since 1970 between {MIN_TIMESTAMP:g} and {MAX_TIMESTAMP:g}{hint}")
        return v

    @field_validator("rating")
    @classmethod
    def _rating(cls, v: float | None) -> float | None:
        if v is not None and not (math.isfinite(v) and abs(v) <= MAX_RATING):
            raise ValueError(f"must be a finite number of at most {MAX_RATING:g} in size")
        return v

    def checked(self) -> Event:
        """This event validated again (fields can be assigned after construction without checks): what is stored."""
        return Event.model_validate(self.model_dump(warnings=False))


MIN_TIMESTAMP = -1e10
"""Earliest accepted event time, in seconds since 1970 (about the year 1653)."""
MAX_TIMESTAMP = 1e11
"""Latest accepted event time, in seconds since 1970 (about the year 5138): milliseconds (1.7e12 today) are refused."""
MAX_RATING = 1e6


def genres_of(attributes: dict[str, Any]) -> list[str]:
    """The item's genres from ``genres`` or ``genre`` (a list, or a string split on ``|`` or ``,``): strings, once each,
    whatever was stored (numbers read as text; nested values, which no genre is, are skipped)."""
    g = attributes.get("genres") or attributes.get("genre") or []
    if isinstance(g, str):
        g = g.replace("|", ",").split(",")
    if not isinstance(g, list | tuple):
        g = [g]
    out = (str(x).strip() for x in g if isinstance(x, str | int | float) and not isinstance(x, bool))
    return list(dict.fromkeys(x for x in out if x))


def event_sort_key(user_id: str, item_id: str, timestamp: float, seed: int = 0) -> tuple[float, int]:
    """The one order of a user's events, used by serving, fitting and evaluation alike: by time, and
    equal timestamps (44% of ml-100k users rated their last two movies in the same second) by a
    seeded hash of ``(seed, user_id, item_id)``. The hash is a deterministic pseudo-random shuffle
    inside a tie group; sorting ties by item id would leak the id order into sequential models."""
    return (float(timestamp), _tie_hash(str(user_id), str(item_id), seed))


@functools.lru_cache(maxsize=1 << 17)  # serving re-sorts the same histories on every call
def _tie_hash(user_id: str, item_id: str, seed: int) -> int:
    h = hashlib.blake2b(f"{seed}\x1f{user_id}\x1f{item_id}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big")


def sort_events(events: list, seed: int = 0) -> list:
    """One user's events sorted by :func:`event_sort_key`, hashing only events whose timestamp is
    shared (the same order as ``sorted(events, key=...)``, several times faster on long histories)."""
    import numpy as np

    if len(events) < 2:
        return list(events)
    ts = np.array([float(e.timestamp) for e in events])
    _, inv, cnt = np.unique(ts, return_inverse=True, return_counts=True)
    h = np.zeros(len(events), dtype=np.uint64)
    for k in np.flatnonzero(cnt[inv] > 1):
        e = events[k]
        h[k] = _tie_hash(str(e.user_id), str(e.item_id), seed)
    return [events[k] for k in np.lexsort((h, ts))]


class ItemError(BaseModel):
    item_id: str | None
    index: int
    """Position of the record in the input."""
    error: str
    fatal: bool
    """True when the item was not stored; false for a warning (e.g. image skipped, text truncated)."""


class IngestReport(BaseModel):
    total: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    errors: list[ItemError] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def items_per_s(self) -> float:
        return self.total / self.seconds if self.seconds else 0.0


class EventReport(BaseModel):
    total: int = 0
    added: int = 0
    duplicates: int = 0
    failed: int = 0
    errors: list[str] = Field(default_factory=list)


class DeleteReport(BaseModel):
    """What :meth:`Engine.delete_items` / :meth:`Engine.delete_user` removed. Deleting is idempotent: what was not
    there is counted as 0 (or listed in ``not_found``)."""

    items: int = 0
    users: int = 0
    events: int = 0
    not_found: list[str] = Field(default_factory=list)


class Recommendation(BaseModel):
    item_id: str
    score: float
    title: str = ""
    reason: str | None = None
    """One line saying why, grounded in the user's own history."""
    because_of: list[str] = Field(default_factory=list)
    """History item ids the reason refers to."""


class Recommendations(BaseModel):
    user_id: str
    items: list[Recommendation]
    strategy: str
    """How the list was made, e.g. ``retrieval``, ``retrieval+llm-pointwise``, ``popular`` (cold start)."""
    fallback: str | None = None
    """Set when the LLM step failed and retrieval order was used instead, with the reason."""
    model_version: str | None = None
    """The fitted model (:meth:`Engine.fit`) that ranked the list; None when no model is fitted and the
    documented fusion of content and popularity ranked it."""


class FitReport(BaseModel):
    """What :meth:`Engine.fit` trained: the versioned model, its size and timings."""

    version: str
    path: str
    users: int
    items: int
    events: int
    seconds: float
    info: dict[str, Any] = Field(default_factory=dict)
    """Stage timings, training-pool recall, trees, data hash (from the learned model)."""


class SummaryVersion(BaseModel):
    version: int
    block_index: int
    summary: str
    source: Literal["llm", "extractive"]
    prompt: str
    """Prompt name@version that wrote it (``computed``: no LLM was asked)."""
    structured: dict[str, Any] | None = None
    """The structured summary the text was rendered from: ``liked``/``disliked`` attributes,
    ``liked_items`` ids, ``note``; ``fallback`` says why it was computed from counts instead of the LLM."""
    created_at: float
    block_end: float
    """Timestamp of the last event the summary covers."""


class Profile(BaseModel):
    user_id: str
    n_events: int
    n_positive: int
    n_blocks: int
    summary: str | None
    summary_source: Literal["llm", "extractive"] | None
    structured: dict[str, Any] | None = None
    """The latest structured summary (see :class:`SummaryVersion`)."""
    versions: list[SummaryVersion] = Field(default_factory=list)
    recent_items: list[str] = Field(default_factory=list)
    has_taste_vectors: dict[str, bool] = Field(default_factory=dict)


class SearchHit(BaseModel):
    item_id: str
    score: float
    title: str = ""
    relevance: float
    """Similarity to the query alone."""
    personal: float | None = None
    """Similarity to the user's profile (None without a user)."""


class Explanation(BaseModel):
    user_id: str
    item_id: str
    text: str
    grounded_in: list[str]
    """History item ids the explanation cites."""
    source: Literal["llm", "template"]
    fallback: str | None = None
    """Why the template reason was used instead of the LLM's sentence (None when the LLM's was kept or no LLM was asked)."""


class ItemScore(BaseModel):
    item_id: str
    probability: float
    """P(Yes) from the LLM, normalised over Yes/No."""
