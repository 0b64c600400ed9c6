"""Vector store backends behind one interface."""

from __future__ import annotations

from pathlib import Path

from .base import Filter, Hit, Point, VectorQuery, VectorStore, parse_filter, point_id

__all__ = ["Filter", "Hit", "Point", "VectorQuery", "VectorStore", "parse_filter", "point_id", "open_store"]


def open_store(path: Path, qdrant_url: str | None = None, api_key: str | None = None) -> VectorStore:
    """The embedded edge engine under ``path``, or a Qdrant server when ``qdrant_url`` is set."""
    if qdrant_url:
        from .client import QdrantClientStore

        return QdrantClientStore(qdrant_url, api_key=api_key, path=Path(path) / "qdrant-local")
    from .edge import EdgeStore

    return EdgeStore(Path(path) / "collections")
