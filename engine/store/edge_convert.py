"""Persona's store types to qdrant-edge's and back (filters, scoring queries, index and distance kinds)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from ..fsutil import write_atomic
from .base import OVERSAMPLING, QUANTILE, Filter, VectorQuery, point_key, quantization_kind

__all__ = ["DISTANCE", "INDEX", "INDEXING_KB", "SEARCH", "id_keys", "one_query", "quantization_config", "scoring", "to_filter",
           "upgrade_config"]

INDEX = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
}
DISTANCE = {"cosine": qe.Distance.Cosine, "dot": qe.Distance.Dot}


# Every vector query: hits found through an int8 copy are oversampled and rescored with the originals (qdrant-edge's
# default returned the int8 approximations, a few thousandths off, and missed 7.5% of an exact top 10 in
# tests/test_quantization.py); float collections ignore it.
SEARCH = qe.SearchParams(quantization=qe.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING))


# Every collection indexes a segment past this many KB of vectors when optimized (Qdrant's default is 10,000 KB). A
# refit rewrites the cf vectors of the items with events only; their points move to a segment of their own, which at
# 100k items (6% with events) stayed just under the default and was scanned by every query from then on. The embedded
# engine optimizes only in fit() (no background optimizer), so ingestion does not pay for it.
INDEXING_KB = 1000
# The optimizer settings a shard's edge_config.json holds (null: Qdrant's default), as qdrant-edge writes them.
_OPTIMIZER_KEYS = ("deleted_threshold", "vacuum_min_vector_number", "default_segment_number", "max_segment_size",
                   "indexing_threshold", "prevent_unoptimized")


def upgrade_config(shard: Path) -> bool:
    """Set :data:`INDEXING_KB` in the shard's ``edge_config.json`` where it holds Qdrant's default: a null threshold, or
    no ``optimizers`` block at all (what qdrant-edge wrote for every store created before INDEXING_KB); run with the
    store's lock held, before the shard is loaded. True when the file was rewritten."""
    path = shard / "edge_config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):  # no such file (yet), or not ours to fix: Qdrant says what is wrong when it loads
        return False
    if not isinstance(cfg, dict):
        return False
    opt = cfg.get("optimizers")
    if opt is None:  # created without optimizer settings (every store before INDEXING_KB): Qdrant's defaults
        opt = cfg["optimizers"] = dict.fromkeys(_OPTIMIZER_KEYS)
    if not isinstance(opt, dict) or opt.get("indexing_threshold") is not None:
        return False
    opt["indexing_threshold"] = INDEXING_KB
    try:
        write_atomic(path, json.dumps(cfg))
    except OSError:  # the shard still loads with Qdrant's default; its refits' segments may then go unindexed
        return False
    return True


def quantization_config(kind: str) -> qe.ScalarQuantizationConfig | None:
    """``int8``: Qdrant's scalar quantization, the int8 copy kept in RAM; ``none``: None."""
    if quantization_kind(kind) == "int8":
        return qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=QUANTILE, always_ram=True)
    return None


def to_filter(flt: Filter | None) -> qe.Filter | None:
    if flt is None or flt.is_empty():
        return None
    must: list[Any] = []
    for key, value in flt.match.items():
        m = qe.MatchAny(any=list(value)) if isinstance(value, list) else qe.MatchValue(value)
        must.append(qe.FieldCondition(key=key, match=m))
    for key, rng in flt.ranges.items():
        must.append(qe.FieldCondition(key=key, range=qe.RangeFloat(**rng)))
    if flt.include_ids is not None:
        must.append(qe.HasIdCondition(set(flt.include_ids) or {str(uuid.UUID(int=0))}))
    if flt.has_vector:
        must.append(qe.HasVectorCondition(flt.has_vector))
    must_not = [qe.HasIdCondition(set(flt.exclude_ids))] if flt.exclude_ids else None
    return qe.Filter(must=must or None, must_not=must_not)


def scoring(q: VectorQuery) -> Any:
    if q.order_by:
        return qe.OrderBy(key=q.order_by, direction=qe.Direction.Desc)
    if q.vector is not None:
        return qe.Query.Nearest([float(x) for x in q.vector], using=q.using)
    rq = qe.RecommendQuery(positives=[[float(x) for x in v] for v in q.positives], negatives=[[float(x) for x in v] for v in q.negatives])
    return qe.Query.RecommendBestScore(rq, using=q.using)


def one_query(q: VectorQuery, limit: int, flt: qe.Filter | None, with_payload: bool = False, with_vector: bool = False) -> qe.QueryRequest:
    """The request for one query (no fusion): the store's search params, unless it orders by a payload field (no vectors
    to rescore). ``EdgeStore.query`` with one query and ``EdgeStore.nearest_keys`` (ids only) send it."""
    return qe.QueryRequest(query=scoring(q), filter=flt, limit=limit, with_payload=with_payload, with_vector=with_vector,
                           params=None if q.order_by else SEARCH)


def id_keys(points) -> list[int]:
    """The points' ids as ``point_key`` integers: qdrant-edge hands a UUID id back as a ``uuid.UUID``, whose ``.int``
    ``point_key`` reads directly, not ``str()`` and a ``Hit`` per point (~3x the cost of the keys)."""
    return [point_key(p.id) for p in points]
