"""Vector store backends behind one interface."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import Filter, Hit, Point, VectorQuery, VectorStore, parse_filter, point_id, point_key

__all__ = ["Filter", "Hit", "Point", "VectorQuery", "VectorStore", "parse_filter", "point_id", "point_key", "open_store"]


logger = logging.getLogger(__name__)


def open_store(
    path: Path, qdrant_url: str | None = None, api_key: str | None = None, collection_options: Mapping[str, Any] | None = None, *,
    quantization: str = "int8",
) -> VectorStore:
    """The embedded edge engine under ``path``, or a Qdrant server when ``qdrant_url`` is set.

    ``collection_options`` (sharding, replication, on-disk storage; see ``ClusterConfig``) apply to
    collections the server backend creates; the edge engine is a single local shard and ignores them.
    ``quantization`` (``int8`` or ``none``; ``Settings.quantization``): of new collections searched by vector, on both.
    """
    if qdrant_url:
        from .client import QdrantClientStore

        return QdrantClientStore(qdrant_url, api_key=api_key, path=Path(path) / "qdrant-local", collection_options=collection_options,
                                 quantization=quantization)
    if collection_options:
        logger.warning(
            "cluster settings %s ignored: the embedded edge store is one local shard (set qdrant_url to use a Qdrant cluster)",
            ", ".join(f"{k}={v}" for k, v in sorted(collection_options.items())),
        )
    from .edge import EdgeStore

    return EdgeStore(Path(path) / "collections", quantization=quantization)
