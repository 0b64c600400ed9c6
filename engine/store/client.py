"""Server backend: a Qdrant server through qdrant-client (``url=local`` uses its local mode, for tests)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailableError, ConflictError, NotFoundError, missing
from .base import OVERSAMPLING, QUANTILE, Filter, Hit, Point, VectorQuery, VectorStore, quantization_kind

logger = logging.getLogger(__name__)

try:
    from qdrant_client import QdrantClient
    from qdrant_client import models as qm
except ImportError:  # pragma: no cover - exercised only without the extra
    QdrantClient = None  # type: ignore[assignment,misc]


_INDEX = {"keyword": "keyword", "integer": "integer", "float": "float"}
_LAYOUT = {"shard_number", "replication_factor", "write_consistency_factor", "on_disk_payload"}


def _to_filter(flt: Filter | None) -> qm.Filter | None:
    if flt is None or flt.is_empty():
        return None
    must: list[Any] = []
    for key, value in flt.match.items():
        m = qm.MatchAny(any=list(value)) if isinstance(value, list) else qm.MatchValue(value=value)
        must.append(qm.FieldCondition(key=key, match=m))
    for key, rng in flt.ranges.items():
        must.append(qm.FieldCondition(key=key, range=qm.Range(**rng)))
    if flt.include_ids is not None:
        must.append(qm.HasIdCondition(has_id=sorted(flt.include_ids)))
    if flt.has_vector:
        must.append(qm.HasVectorCondition(has_vector=flt.has_vector))
    must_not = [qm.HasIdCondition(has_id=sorted(flt.exclude_ids))] if flt.exclude_ids else None
    return qm.Filter(must=must or None, must_not=must_not)


def _scoring(q: VectorQuery) -> Any:
    if q.order_by:
        return qm.OrderByQuery(order_by=qm.OrderBy(key=q.order_by, direction=qm.Direction.DESC))
    if q.vector is not None:
        return [float(x) for x in q.vector]
    return qm.RecommendQuery(
        recommend=qm.RecommendInput(
            positive=[[float(x) for x in v] for v in q.positives],
            negative=[[float(x) for x in v] for v in q.negatives] or None,
            strategy=qm.RecommendStrategy.BEST_SCORE,
        )
    )


def url_is_local(client: Any) -> bool:
    return type(getattr(client, "_client", None)).__name__ == "QdrantLocal"


class QdrantClientStore(VectorStore):
    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        path: Path | None = None,
        timeout_s: float = 30.0,
        collection_options: Mapping[str, Any] | None = None,
        quantization: str = "int8",
    ) -> None:
        """``collection_options``: ``create_collection`` keyword arguments for new collections
        (``shard_number``, ``replication_factor``, ``write_consistency_factor``, ``on_disk_payload``)
        and ``on_disk_vectors`` for every named vector. ``quantization`` (``int8``: Qdrant's scalar quantization, the
        int8 copy kept in RAM; or ``none``): of the collections created with ``quantize`` from now on."""
        if QdrantClient is None:
            raise missing("server", "qdrant-client")
        self._quantization = None if quantization_kind(quantization) == "none" else qm.ScalarQuantization(
            scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, quantile=QUANTILE, always_ram=True))
        opts = dict(collection_options or {})
        self._on_disk_vectors: bool | None = opts.pop("on_disk_vectors", None)
        unknown = set(opts) - _LAYOUT
        if unknown:
            raise ConflictError(f"unknown collection options: {sorted(unknown)}")
        self.collection_options = opts
        if url == "local":
            if path is None:
                raise ConflictError("qdrant_url=local needs a path")
            Path(path).mkdir(parents=True, exist_ok=True)
            self.client = QdrantClient(path=str(path))
        else:
            self.client = QdrantClient(url=url, api_key=api_key, timeout=int(timeout_s))
        self._lock = threading.RLock()
        # every query, as on the edge store: hits found through an int8 copy oversampled and rescored with the originals
        # (float collections ignore it); local mode has no quantization and warns about the parameter, so not there
        self._params = None if url_is_local(self.client) else qm.SearchParams(
            quantization=qm.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING))

    def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except (ValueError, KeyError) as e:
            if "not found" in str(e).lower():
                raise NotFoundError(str(e)) from e
            raise
        except Exception as e:  # network errors from httpx/grpc surface as one clear error
            if type(e).__module__.startswith(("httpx", "httpcore", "grpc", "qdrant_client.http.exceptions")):
                raise BackendUnavailableError(f"Qdrant server error: {e}") from e
            raise

    def has_collection(self, name: str) -> bool:
        return bool(self._call(self.client.collection_exists, name))

    def ensure_collection(self, name: str, vectors: Mapping[str, int], indexes: Mapping[str, str] | None = None,
                          quantize: bool = False) -> None:
        with self._lock:
            if not self.has_collection(name):
                self._call(
                    self.client.create_collection,
                    name,
                    vectors_config={
                        k: qm.VectorParams(size=int(v), distance=qm.Distance.COSINE, on_disk=self._on_disk_vectors) for k, v in vectors.items()
                    },
                    quantization_config=self._quantization if quantize else None,
                    **self.collection_options,
                )
                if self.collection_options and url_is_local(self.client):
                    logger.info("qdrant-client local mode keeps one shard; %s apply on a server", self.collection_options)
            else:
                info = self._call(self.client.get_collection, name)
                have = info.config.params.vectors or {}
                for vname, size in vectors.items():
                    if vname in have and have[vname].size != size:
                        raise ConflictError(f"collection {name!r}: vector {vname!r} has size {have[vname].size}, not {size}")
                    if vname not in have:
                        raise ConflictError(f"collection {name!r} lacks vector {vname!r}; re-create it to add one")
            for fname, kind in (indexes or {}).items():
                if url_is_local(self.client):
                    continue  # local mode has no payload indexes
                try:
                    self.client.create_payload_index(name, fname, field_schema=_INDEX[kind])
                except Exception as e:  # local mode ignores indexes; a server may already have it
                    logger.debug("payload index %s.%s: %s", name, fname, e)

    def ensure_vector(self, name: str, vector: str, size: int, distance: str = "cosine") -> None:
        with self._lock:
            info = self._call(self.client.get_collection, name)
            have = info.config.params.vectors or {}
            dist = {"cosine": qm.Distance.COSINE, "dot": qm.Distance.DOT}[distance]
            if vector in have and have[vector].size == int(size) and have[vector].distance == dist:
                return
            if vector in have:  # a derived vector (cf) of another shape: refit rewrites it
                self._call(self.client.delete_vector_name, name, vector, wait=True)
            self._call(self.client.create_vector_name, name, vector, qm.DenseVectorNameConfig(dense=qm.DenseVectorConfig(size=int(size), distance=dist)), wait=True)

    def update_vectors(self, name: str, points: Sequence[Point]) -> None:
        if points:
            pts = [qm.PointVectors(id=p.id, vector={k: list(map(float, v)) for k, v in p.vectors.items()}) for p in points]
            self._call(self.client.update_vectors, name, points=pts, wait=True)

    def upsert(self, name: str, points: Sequence[Point]) -> None:
        if points:
            pts = [qm.PointStruct(id=p.id, vector={k: list(map(float, v)) for k, v in p.vectors.items()}, payload=p.payload) for p in points]
            self._call(self.client.upsert, name, points=pts, wait=True)

    def set_payload(self, name: str, ids: Sequence[str], payload: Mapping[str, Any]) -> None:
        self._call(self.client.set_payload, name, payload=dict(payload), points=list(ids), wait=True)

    def delete(self, name: str, ids: Sequence[str]) -> None:
        if ids:
            self._call(self.client.delete, name, points_selector=qm.PointIdsList(points=list(ids)), wait=True)

    def delete_vectors(self, name: str, ids: Sequence[str], vector: str) -> None:
        for attempt in range(2) if ids else ():  # the server refuses ids it does not hold: those it has, read again once
            have = [r.id for r in self._call(self.client.retrieve, name, ids=list(ids), with_payload=False, with_vectors=False)]
            try:  # when a point was deleted between the read and the write
                if have:
                    self._call(self.client.delete_vectors, name, vectors=[vector], points=have, wait=True)
                return
            except Exception:
                if attempt:
                    raise

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False, fields: Sequence[str] | None = None) -> list[Hit]:
        if not ids:
            return []
        sel = True if fields is None else list(fields)
        recs = self._call(self.client.retrieve, name, ids=list(ids), with_payload=sel, with_vectors=with_vectors)
        by_id = {str(r.id): Hit.of(r) for r in recs}
        return [by_id[i] for i in ids if i in by_id]

    def scroll(self, name: str, flt: Filter | None = None, with_vectors: bool = False, batch: int = 512) -> Iterator[Hit]:
        offset = None
        while True:
            recs, offset = self._call(
                self.client.scroll, name, scroll_filter=_to_filter(flt), limit=batch, offset=offset,
                with_payload=True, with_vectors=with_vectors,
            )
            yield from (Hit.of(r) for r in recs)
            if offset is None or not recs:
                return

    def count(self, name: str, flt: Filter | None = None) -> int:
        return int(self._call(self.client.count, name, count_filter=_to_filter(flt), exact=True).count)

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
        if not queries:
            return []
        f = _to_filter(flt)
        if len(queries) == 1:
            q = queries[0]
            res = self._call(
                self.client.query_points, name, query=_scoring(q), using=q.using, query_filter=f, limit=limit,
                with_payload=with_payload, with_vectors=with_vectors, search_params=None if q.order_by else self._params,
            )
        else:
            pre = [qm.Prefetch(query=_scoring(q), using=None if q.order_by else q.using, limit=q.limit, filter=f,
                               params=None if q.order_by else self._params) for q in queries]  # an order_by has no vectors to rescore
            res = self._call(
                self.client.query_points, name, prefetch=pre,
                query=qm.RrfQuery(rrf=qm.Rrf(k=rrf_k, weights=[q.weight for q in queries])),
                query_filter=f, limit=limit, with_payload=with_payload, with_vectors=with_vectors,
            )
        return [Hit.of(p) for p in res.points]

    def top_by(self, name: str, field: str, limit: int, flt: Filter | None = None) -> list[Hit]:
        recs, _ = self._call(
            self.client.scroll, name, scroll_filter=_to_filter(flt), limit=limit, with_payload=True,
            order_by=qm.OrderBy(key=field, direction=qm.Direction.DESC),
        )
        return [Hit.of(r) for r in recs]

    def flush(self, collection: str | None = None) -> None:
        pass  # the server persists on its own (wait=True on every write)

    def close(self) -> None:
        self.client.close()
