"""The one small interface every vector store backend implements.

Backends: the embedded Qdrant edge engine (``EdgeStore``) and a Qdrant server through
qdrant-client (``QdrantClientStore``). Congruence tests run the same calls on both.
"""

from __future__ import annotations

import functools
import math
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInputError

__all__ = ["Point", "Hit", "VectorQuery", "Filter", "VectorStore", "point_id", "point_key", "parse_filter", "QUANTIZATION", "QUANTILE", "OVERSAMPLING",
           "quantization_kind"]

_NS = uuid.UUID("8f5f2b0e-5a0c-4a8e-9a52-7c0d5b1e4f11")


QUANTIZATION = ("int8", "none")
"""``Settings.quantization``: Qdrant's int8 scalar quantization of the vectors of collections searched by vector, or none."""
QUANTILE, OVERSAMPLING = 0.99, 2.0  # the int8 range covers this quantile; hits searched per hit returned, then rescored


def quantization_kind(kind: str) -> str:
    """``kind`` when it is one of :data:`QUANTIZATION`; ValueError otherwise."""
    if kind not in QUANTIZATION:
        raise ValueError(f"quantization must be one of {QUANTIZATION}, not {kind!r}")
    return kind


@functools.lru_cache(maxsize=1 << 17)  # uuid5 costs ~20 us; recommend() maps every history item on each call
def point_id(kind: str, key: str) -> str:
    """Deterministic Qdrant point id (a UUID) for a user-facing id, so re-ingestion never duplicates."""
    return str(uuid.uuid5(_NS, f"{kind}:{key}"))


def point_key(pid: str | int | uuid.UUID) -> int:
    """A point id as the integer :meth:`VectorStore.nearest_keys` answers with: a UUID's 128-bit value, an unsigned
    integer id itself. One id, one key; a UUID given as a string or a ``uuid.UUID`` has the same key."""
    # qdrant-edge hands hits back as uuid.UUID (200 a request): reading .int skips the string cache, whose key hashing
    # runs UUID.__hash__ in Python (several times the cost of .int, more on a cache miss)
    if isinstance(pid, uuid.UUID):
        return pid.int
    if isinstance(pid, int):
        return pid
    return _str_key(pid)


@functools.lru_cache(maxsize=1 << 17)
def _str_key(pid: str) -> int:
    return int(pid) if str(pid).isdigit() else uuid.UUID(str(pid)).int  # an integer id comes back from Hit.of as "7"


@dataclass
class Point:
    id: str
    vectors: dict[str, list[float]]
    payload: dict[str, Any]


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)
    vectors: dict[str, list[float]] | None = None

    @classmethod
    def of(cls, p: Any) -> Hit:
        """From a point as qdrant-client or qdrant-edge returns it (``id``, ``payload``, ``vector``, maybe ``score``)."""
        vec, payload = p.vector, p.payload  # each attribute read converts from the client's objects: read once
        return cls(str(p.id), float(getattr(p, "score", 0.0) or 0.0), dict(payload) if payload else {}, vec if isinstance(vec, dict) else None)


@dataclass
class VectorQuery:
    """One similarity query on a named vector: nearest to ``vector``, or a recommend query
    (best score over ``positives``, pushed away from ``negatives``)."""

    using: str
    vector: Sequence[float] | None = None
    positives: Sequence[Sequence[float]] = ()
    negatives: Sequence[Sequence[float]] = ()
    limit: int = 100
    weight: float = 1.0
    order_by: str | None = None
    """Instead of similarity: the points with the largest values of this numeric payload field."""


@dataclass
class Filter:
    """Backend-neutral filter: payload conditions that must hold, ids to exclude or keep, a named vector present."""

    match: dict[str, Any] = field(default_factory=dict)
    """field -> value (equality) or list of values (any of)."""
    ranges: dict[str, dict[str, float]] = field(default_factory=dict)
    """field -> {gt, gte, lt, lte}."""
    exclude_ids: set[str] = field(default_factory=set)
    include_ids: set[str] | None = None
    has_vector: str | None = None
    """Only points that hold this named vector (points may lack one, e.g. ``cf`` on items without events)."""

    def is_empty(self) -> bool:
        return not (self.match or self.ranges or self.exclude_ids or self.include_ids is not None or self.has_vector)


_RANGE_OPS = {"gt", "gte", "lt", "lte"}
FILTER_FIELD_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63}){0,3}$"
_FIELD = re.compile(FILTER_FIELD_PATTERN)


def _check_int64(key: str, values: list[Any]) -> None:
    # Qdrant stores integers as 64-bit; a bigger one would fail deep inside the engine.
    if any(isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63 for v in values):
        raise InvalidInputError(f"filter {key!r}: integers must fit in 64 bits")


def parse_filter(spec: Mapping[str, Any] | None) -> Filter:
    """Turn the user-facing filter dict into a :class:`Filter`.

    ``{"genres": "Comedy"}`` matches a value (or a value inside a list field),
    ``{"genres": ["Comedy", "Drama"]}`` matches any of them,
    ``{"year": {"gte": 1990, "lt": 2000}}`` is a numeric range.
    Fields are matched against item attributes (``attributes.<field>``).
    """
    f = Filter()
    for key, value in (spec or {}).items():
        if not isinstance(key, str) or not _FIELD.match(key):
            raise InvalidInputError(f"invalid filter field {key!r}: dotted identifiers only, e.g. 'genres' or 'attributes.year'")
        path = key if key.startswith("attributes.") or key in ("item_id", "title") else f"attributes.{key}"
        if isinstance(value, Mapping):
            bad = set(value) - _RANGE_OPS
            if bad or not value:
                raise InvalidInputError(f"filter {key!r}: range keys must be among {sorted(_RANGE_OPS)}")
            try:
                f.ranges[path] = {op: float(v) for op, v in value.items()}
            except (TypeError, ValueError, OverflowError) as e:
                raise InvalidInputError(f"filter {key!r}: range bounds must be numbers") from e
            if not all(math.isfinite(v) for v in f.ranges[path].values()):
                raise InvalidInputError(f"filter {key!r}: range bounds must be finite")
        elif isinstance(value, (list, tuple, set)):
            vals = list(value)
            if not vals or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in vals):
                raise InvalidInputError(f"filter {key!r}: a list must hold strings or integers")
            if len({type(v) for v in vals}) > 1:
                raise InvalidInputError(f"filter {key!r}: mixed value types")
            _check_int64(key, vals)
            f.match[path] = vals
        elif isinstance(value, (str, int, bool)):
            _check_int64(key, [value])
            f.match[path] = value
        else:
            raise InvalidInputError(f"filter {key!r}: unsupported value {value!r}")
    return f


class VectorStore(ABC):
    """Collections of points with named dense vectors and a JSON payload."""

    @abstractmethod
    def ensure_collection(self, name: str, vectors: Mapping[str, int], indexes: Mapping[str, str] | None = None,
                          quantize: bool = False) -> None:
        """Create the collection if missing (vector name -> size, cosine distance; payload
        field -> index type among keyword/integer/float). A collection with no vectors holds payload only.
        ``quantize``: a collection searched by vector; its vectors (those added later too) get the store's
        quantization (``int8`` unless the store was opened with ``none``). An existing collection keeps its own."""

    @abstractmethod
    def has_collection(self, name: str) -> bool: ...

    @abstractmethod
    def upsert(self, name: str, points: Sequence[Point]) -> None: ...

    @abstractmethod
    def ensure_vector(self, name: str, vector: str, size: int, distance: str = "cosine") -> None:
        """Add the dense named vector ``vector`` to an existing collection (``distance``: cosine or dot); one
        already there with another size is dropped and re-created (its values are lost)."""

    @abstractmethod
    def update_vectors(self, name: str, points: Sequence[Point]) -> None:
        """Set the given named vectors on existing points; their other vectors and payload are kept
        (``Point.payload`` is ignored)."""

    @abstractmethod
    def set_payload(self, name: str, ids: Sequence[str], payload: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def delete(self, name: str, ids: Sequence[str]) -> None:
        """Remove these points (ids not there are ignored)."""

    def delete_vectors(self, name: str, ids: Sequence[str], vector: str) -> None:
        """Remove the named vector ``vector`` from these points (their other vectors and payload stay; ids not
        there are ignored). Not abstract, so a backend written before it still loads; a fit then keeps its cf vectors
        out of the store (logged) and serves them from memory."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete named vectors")

    def update_present(self, name: str, points: Sequence[Point] = (), payload: Mapping[str, Any] | None = None) -> None:
        """:meth:`update_vectors` (``points``) or :meth:`set_payload` (their ids, ``payload``) on the points still stored:
        a point deleted meanwhile (both backends refuse the whole write then) is skipped, the others written."""
        def write(pts: Sequence[Point]) -> None:
            if payload is None:
                self.update_vectors(name, pts)
            else:
                self.set_payload(name, [p.id for p in pts], payload)
        try:
            write(points)
        except Exception:
            have = {h.id for h in self.retrieve(name, [p.id for p in points])}
            if len(have) == len({p.id for p in points}):
                raise  # not a deleted point: a real error
            write([p for p in points if p.id in have])

    @abstractmethod
    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False, fields: Sequence[str] | None = None) -> list[Hit]:
        """Points by id, in the order asked; unknown ids are left out. ``fields``: only these payload keys."""

    @abstractmethod
    def scroll(self, name: str, flt: Filter | None = None, with_vectors: bool = False, batch: int = 512) -> Iterator[Hit]: ...

    @abstractmethod
    def count(self, name: str, flt: Filter | None = None) -> int: ...

    @abstractmethod
    def query(
        self,
        name: str,
        queries: Sequence[VectorQuery],
        limit: int,
        flt: Filter | None = None,
        with_vectors: bool = False,
        rrf_k: int = 60,
        with_payload: bool = True,
    ) -> list[Hit]:
        """Run one query, or several fused with Qdrant's weighted reciprocal rank fusion, under ``flt``.
        ``with_payload=False`` returns ids and scores only (empty payloads): much less to decode for long lists.
        Qdrant scores position p (0-based) as ``1 / ((p + 1) / weight + k - 1)``: a weight below 1
        stretches that list's ranks, so it separates its candidates more strongly."""

    def nearest_keys(self, name: str, using: str, vector: Sequence[float], limit: int, flt: Filter | None = None) -> list[int]:
        """The ids of the ``limit`` points nearest ``vector`` on the named vector ``using`` under ``flt``, best first, as
        :func:`point_key` integers: what :meth:`query` returns, without scores or payloads. For callers that map the ids
        of long lists (the learned recommender's ~250 hits a request), where building each hit costs more than the
        search (bench/request_split.py)."""
        hits = self.query(name, [VectorQuery(using, vector=list(vector), limit=limit)], limit, flt, with_payload=False)
        return [point_key(h.id) for h in hits]

    @abstractmethod
    def top_by(self, name: str, field: str, limit: int, flt: Filter | None = None) -> list[Hit]:
        """Points with the largest values of a numeric payload field (needs a float/integer index)."""

    def optimize(self, name: str) -> bool:
        """Build the collection's vector indexes (HNSW) now, so queries stop scanning every point; True when done here.
        A Qdrant server builds them by itself past its indexing threshold (False: nothing to do)."""
        return False

    @abstractmethod
    def flush(self, collection: str | None = None) -> None:
        """Make the writes so far durable: of ``collection`` only, else of every collection open here."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chunks(seq: Sequence[Any] | Iterable[Any], n: int) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for x in seq:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    import numpy as np

    x, y = np.asarray(a, np.float32), np.asarray(b, np.float32)
    d = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y) / d if d else 0.0
