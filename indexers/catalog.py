"""Catalog readers: JSONL, CSV or Parquet files into item records (dicts), plus an optional image folder."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from engine.errors import InvalidInputError, missing

from .images import confine_path

logger = logging.getLogger(__name__)

_CORE = {"id", "title", "description", "image", "attributes"}
_ID_ALIASES = ("id", "item_id", "movie_id")
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp", ".gif")


def _normalize(rec: dict[str, Any], image_dir: Path | None, root: Path | None = None, allow_outside: bool = False) -> dict[str, Any]:
    """Map a flat record to Item fields: known columns stay, everything else becomes an attribute.
    A local image path must lie inside ``root`` (the image folder, else the catalog's folder): an
    absolute path or one with ``..`` is dropped with ``_image_error`` unless ``allow_outside``."""
    out: dict[str, Any] = {}
    attrs = rec.get("attributes")
    if isinstance(attrs, str) and attrs.strip().startswith("{"):
        try:
            attrs = json.loads(attrs)
        except ValueError:
            pass
    attributes: dict[str, Any] = dict(attrs) if isinstance(attrs, dict) else {}
    for key, value in rec.items():
        if key in _ID_ALIASES and "id" not in out and value not in (None, ""):
            out["id"] = value
        elif key in ("title", "description", "image"):
            if value not in (None, ""):
                out[key] = value
        elif key != "attributes" and key not in _ID_ALIASES:
            attributes[key] = value
    out["attributes"] = attributes
    root = image_dir if image_dir is not None else root
    if "image" in out and urlparse(str(out["image"])).scheme not in ("http", "https"):
        ref = str(out["image"])
        ref = urlparse(ref).path if ref.startswith("file:") else ref
        try:
            out["image"] = str(confine_path(ref, root or Path("."), allow_outside))
        except InvalidInputError as e:
            out["_image_error"] = str(e)
            del out["image"]
    if image_dir is not None and "id" in out:
        stem = Path(str(out["id"]))  # the id names the file: "../x" or "/x" must not reach outside the image folder
        if "image" not in out and "_image_error" not in out and not (stem.is_absolute() or ".." in stem.parts or "\0" in str(stem)):
            for ext in _IMAGE_EXT:
                cand = image_dir / f"{out['id']}{ext}"  # a symlink the folder's owner put there is theirs to follow
                if cand.exists():
                    out["image"] = str(cand)
                    break
    return out


def read_catalog(path: str | Path, image_dir: str | Path | None = None, allow_outside: bool = False) -> Iterator[dict[str, Any]]:
    """Yield item records from ``.jsonl``/``.json``, ``.csv`` or ``.parquet``. A record that cannot be
    parsed is yielded as ``{"_error": ...}`` so the ingestion report names it and the rest goes on.
    Local image paths are confined to ``image_dir`` (else the catalog's folder) unless ``allow_outside``."""
    path = Path(path)
    idir = Path(image_dir) if image_dir else None
    root = path.parent
    if not path.exists():
        raise InvalidInputError(f"catalog {path} not found")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        with path.open(encoding="utf-8", errors="replace") as f:
            if suffix == ".json":
                try:
                    data = json.load(f)
                except ValueError as e:
                    raise InvalidInputError(f"catalog {path.name} is not valid JSON ({e})") from None
                rows = data if isinstance(data, list) else data.get("items") if isinstance(data, dict) else None
                if not isinstance(rows, list):
                    raise InvalidInputError(f"catalog {path.name}: expected a list of items or an object with an \"items\" list")
                for rec in rows:
                    yield _normalize(rec, idir, root, allow_outside) if isinstance(rec, dict) else {"_error": "record is not an object"}
                return
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError as e:
                    yield {"_error": f"line {lineno}: invalid JSON ({e})"}
                    continue
                yield _normalize(rec, idir, root, allow_outside) if isinstance(rec, dict) else {"_error": f"line {lineno}: not an object"}
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", errors="replace", newline="") as f:
            for rec in csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","):
                yield _normalize({k: v for k, v in rec.items() if k is not None}, idir, root, allow_outside)
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise missing("data", "pyarrow") from e
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for rec in batch.to_pylist():
                yield _normalize(rec, idir, root, allow_outside)
    else:
        raise InvalidInputError(f"catalog {path}: unsupported format {suffix!r} (use .jsonl, .csv or .parquet)")
