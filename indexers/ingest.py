"""Batched, resumable, safe catalog ingestion into the items collection.

Each batch is validated, hashed and compared with what is stored (content hash), so re-runs skip
unchanged items and a run killed half-way resumes without duplicates (ids are deterministic).
Preparing the next batch (validation, image reading and decoding) runs in a worker thread while
the current batch is encoded, so the pipeline stays close to the raw encoder throughput.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np
from pydantic import ValidationError
from tqdm.auto import tqdm

from engine.config import IngestConfig
from engine.errors import InvalidInputError
from engine.items import genres_of
from engine.store import Point, VectorStore, point_id
from engine.types import IngestReport, Item, ItemError

from .base import Encoder
from .images import decode_image, read_image_bytes

logger = logging.getLogger(__name__)


def item_text(item: Item) -> str:
    """What the sentence encoder reads for an item."""
    parts = [item.title]
    a = item.attributes
    if genres_of(a):
        parts.append("Genres: " + ", ".join(genres_of(a)) + ".")
    for key in ("director", "cast"):
        v = a.get(key)
        if v:
            parts.append(f"{key.title()}: {', '.join(map(str, v[:3])) if isinstance(v, list) else v}.")
    if item.description:
        parts.append(item.description[:1000])
    return " ".join(p for p in parts if p)


def clip_text(item: Item) -> str:
    """CLIP reads 77 tokens: title and genres."""
    g = genres_of(item.attributes)
    return f"{item.title}. {', '.join(g)}" if g else item.title or item.id


def extractive_summary(item: Item) -> str:
    """Deterministic fallback summary: title, genres and the first sentence of the description."""
    g = genres_of(item.attributes)
    first = ""
    if item.description:
        first = item.description.strip().split(". ")[0][:240].rstrip(".") + "."
    head = item.title or item.id
    if item.attributes.get("year"):
        head += f" ({item.attributes['year']})"
    return " ".join(x for x in [head + ("; " + ", ".join(g) if g else "") + ".", first] if x.strip())


MAX_ATTRIBUTE_DEPTH = 8
"""Lists / objects nested deeper than this in an item's attributes refuse the item: the store reads payloads back with
a recursion limit, and one unreadable item would break fits, searches and cold-start lists for everyone."""
_INT_RANGE = (-(2**63), 2**63 - 1)  # the store's integers; larger ones would come back as rounded floats


def _clean_value(v: Any, depth: int = 0) -> tuple[Any, bool]:
    """JSON-safe copy of an attribute value; the flag says something was dropped (NaN, inf, integers beyond 64 bits)."""
    if depth > MAX_ATTRIBUTE_DEPTH:
        raise InvalidInputError(f"attributes nested more than {MAX_ATTRIBUTE_DEPTH} levels deep")
    if isinstance(v, float):
        return (None, True) if not math.isfinite(v) else (v, False)
    if isinstance(v, int) and not isinstance(v, bool) and not _INT_RANGE[0] <= v <= _INT_RANGE[1]:
        return None, True
    if isinstance(v, (str, int, bool)) or v is None:
        return v, False
    if isinstance(v, (list, tuple)):
        out, bad = [], False
        for x in v:
            c, b = _clean_value(x, depth + 1)
            bad |= b
            if c is not None:
                out.append(c)
        return out, bad
    if isinstance(v, dict):
        d, bad = {}, False
        for k, x in v.items():
            c, b = _clean_value(x, depth + 1)
            bad |= b
            if c is not None:
                d[str(k)] = c
        return d, bad
    if isinstance(v, np.generic):
        return _clean_value(v.item(), depth)
    return str(v), False


_NAMES = ("director", "cast")  # people: a name or a list of names (summaries and prompts read them as text)


def _names(v: Any) -> tuple[list[str] | str | None, bool]:
    """A people attribute as text: a name stays a name, a list keeps its names (numbers as text); anything else
    (objects, nested lists) is dropped, flagged."""
    if isinstance(v, str):
        return v, False
    vals = v if isinstance(v, list) else [v]
    keep = [str(x) for x in vals if isinstance(x, str | int | float) and not isinstance(x, bool)]
    return (keep or None), len(keep) != len(vals)


def clean_attributes(attrs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """JSON-safe attributes and the keys where something was dropped or changed. ``genres`` / ``genre`` become a list
    of strings (a ``"Comedy|Drama"`` string split, numbers as text, duplicates and nested values dropped) so filters,
    features and summaries read one shape; ``director`` / ``cast`` a name or a list of names. Raises
    ``InvalidInputError`` for nesting deeper than :data:`MAX_ATTRIBUTE_DEPTH`."""
    clean, dropped = {}, []
    for k, v in attrs.items():
        c, bad = _clean_value(v)
        key = str(k)
        if key in ("genres", "genre") and c is not None:
            g = genres_of({key: c})
            bad |= not (isinstance(c, list) and c == g or isinstance(c, str))
            c = g
        elif key in _NAMES and c is not None:
            c, b = _names(c)
            bad |= b
        if bad:
            dropped.append(key)
        if c is not None:
            clean[key] = c
    return clean, dropped


@dataclass
class _Prepared:
    index: int
    item: Item
    pid: str
    hash: str
    image_bytes: bytes | None = None
    image: Any = None
    warnings: list[str] = field(default_factory=list)
    existing: dict[str, Any] | None = None


class ItemIndexer:
    """Writes items as named vectors (``text``, ``image``, ``clip_text``) plus payload."""

    def __init__(
        self,
        store: VectorStore,
        collection: str,
        text_encoder: Encoder,
        clip_image: Encoder | None = None,
        clip_text_encoder: Encoder | None = None,
        summarizer: Any = None,
        config: IngestConfig | None = None,
        recount_popularity: Callable[[list[str]], None] | None = None,
    ) -> None:
        """``recount_popularity(item_ids)`` resets the popularity of re-indexed items from the event
        log after they are written (the payload read before the write may be stale by then);
        without it the old value is carried over."""
        self.store, self.collection = store, collection
        self.recount_popularity = recount_popularity
        self.text, self.clip_image, self.clip_text = text_encoder, clip_image, clip_text_encoder
        self.summarizer = summarizer
        self.config = config or IngestConfig()
        fps = [text_encoder.fingerprint] + [e.fingerprint for e in (clip_image,) if e is not None]
        if summarizer is not None:
            fps.append(getattr(summarizer, "fingerprint", "summary"))
        self.fingerprint = "|".join(fps)

    # -- preparation (worker thread) -------------------------------------------------------------

    def _prepare(self, batch: Sequence[tuple[int, Any]], seen: set[str], report: IngestReport, local_images: bool = True) -> list[_Prepared]:
        out: list[_Prepared] = []
        for idx, rec in batch:
            raw_id = rec.get("id") if isinstance(rec, dict) else getattr(rec, "id", None)
            try:
                if isinstance(rec, dict) and "_error" in rec:
                    raise InvalidInputError(rec["_error"])
                if isinstance(rec, dict):
                    if rec.get("id") in (None, ""):
                        raise InvalidInputError("missing id")
                    if not isinstance(rec.get("attributes") or {}, dict):
                        raise InvalidInputError(f"attributes must be an object, got {type(rec['attributes']).__name__}")
                    attrs, dropped = clean_attributes(dict(rec.get("attributes") or {}))
                    rec = {**rec, "attributes": attrs}
                    if rec.get("description") is not None and not isinstance(rec["description"], str):
                        d = rec["description"]
                        rec["description"] = None if isinstance(d, float) and not math.isfinite(d) else str(d)
                    if rec.get("title") is None or (isinstance(rec.get("title"), float) and not math.isfinite(rec["title"])):
                        rec["title"] = ""
                    item = Item.model_validate({k: v for k, v in rec.items() if not k.startswith("_")})
                elif isinstance(rec, Item):
                    item = rec.checked()  # re-validated: fields may have been assigned after construction
                    attrs, dropped = clean_attributes(item.attributes)
                    item = item.model_copy(update={"attributes": attrs})
                else:
                    raise InvalidInputError(f"expected an Item or a dict, got {type(rec).__name__}")
            except ValidationError as e:
                first = e.errors()[0]
                where = ".".join(map(str, first.get("loc", ()))) or "record"
                report.errors.append(ItemError(item_id=str(raw_id) if raw_id is not None else None, index=idx, error=f"{where}: {first['msg']}", fatal=True))
                report.failed += 1
                continue
            except InvalidInputError as e:
                report.errors.append(ItemError(item_id=str(raw_id) if raw_id not in (None, "") else None, index=idx, error=str(e), fatal=True))
                report.failed += 1
                continue
            if item.id in seen:
                report.errors.append(ItemError(item_id=item.id, index=idx, error="duplicate id in this input (first one kept)", fatal=True))
                report.failed += 1
                continue
            seen.add(item.id)
            p = _Prepared(index=idx, item=item, pid=point_id("item", item.id), hash="")
            if dropped:
                p.warnings.append(f"attributes dropped or changed (not finite, beyond 64-bit integers, or of a type that key cannot hold): {', '.join(dropped)}")
            if item.description and len(item.description) > self.config.max_description_chars:
                p.warnings.append(f"description truncated from {len(item.description)} to {self.config.max_description_chars} characters")
                item.description = item.description[: self.config.max_description_chars]
            if isinstance(rec, dict) and rec.get("_image_error"):
                p.warnings.append(f"image skipped: {rec['_image_error']}")
            if item.image:
                try:
                    p.image_bytes = read_image_bytes(
                        item.image, None, self.config.max_image_bytes, timeout_s=self.config.image_fetch_timeout_s,
                        allow_local=local_images, allowed_hosts=self.config.image_url_allowed_hosts,
                    )
                except InvalidInputError as e:
                    p.warnings.append(f"image skipped: {e}")
                    if urlparse(item.image).scheme not in ("http", "https"):
                        # a local path this ingest did not read is not stored: the dashboard serves stored poster paths
                        item.image = None
            h = hashlib.sha256()
            h.update(json.dumps(item.model_dump(), sort_keys=True, ensure_ascii=False).encode())
            h.update(hashlib.sha256(p.image_bytes or b"").digest())
            h.update(self.fingerprint.encode())
            p.hash = h.hexdigest()
            out.append(p)
        existing = {hit.id: hit.payload for hit in self.store.retrieve(self.collection, [p.pid for p in out])}
        todo = []
        for p in out:
            p.existing = existing.get(p.pid)
            if p.existing is not None and p.existing.get("content_hash") == p.hash:
                report.unchanged += 1
                continue
            if p.image_bytes is not None and self.clip_image is not None:
                try:
                    p.image = decode_image(p.image_bytes, self.config.max_image_pixels, ref=str(p.item.image))
                except InvalidInputError as e:
                    p.warnings.append(f"image skipped: {e}")
            todo.append(p)
        return todo

    # -- encoding and writing (caller thread) ----------------------------------------------------

    def _write(self, todo: list[_Prepared], report: IngestReport) -> None:
        if not todo:
            return
        items = [p.item for p in todo]
        if self.summarizer is not None:
            summaries = self.summarizer.summarize(items, [p.image_bytes for p in todo])
        else:
            summaries = [(extractive_summary(it), "extractive", None) for it in items]
        vectors: dict[str, np.ndarray] = {self.text.vector_name: self.text.encode([item_text(it) for it in items])}
        if self.clip_text is not None:
            vectors[self.clip_text.vector_name] = self.clip_text.encode([clip_text(it) for it in items])
        img_rows = [i for i, p in enumerate(todo) if p.image is not None]
        img_vecs = self.clip_image.encode([todo[i].image for i in img_rows]) if self.clip_image is not None and img_rows else None
        now = time.time()
        points = []
        for i, p in enumerate(todo):
            vecs = {name: arr[i].tolist() for name, arr in vectors.items()}
            if img_vecs is not None and i in img_rows:
                vecs[self.clip_image.vector_name] = img_vecs[img_rows.index(i)].tolist()
            summary, source, summary_warning = summaries[i]
            if summary_warning:
                p.warnings.append(summary_warning)
            old = p.existing or {}
            payload = {
                "item_id": p.item.id,
                "title": p.item.title,
                "description": p.item.description,
                "summary": summary,
                "summary_source": source,
                "attributes": p.item.attributes,
                "image": p.item.image,
                "has_image": self.clip_image is not None and p.image is not None,
                "content_hash": p.hash,
                "indexed_at": now,
                "popularity": float(old.get("popularity", 0.0)),
            }
            points.append(Point(id=p.pid, vectors=vecs, payload=payload))
            if p.existing is None:
                report.added += 1
            else:
                report.updated += 1
            for w in p.warnings:
                report.errors.append(ItemError(item_id=p.item.id, index=p.index, error=w, fatal=False))
        self.store.upsert(self.collection, points)
        rewritten = [p.item.id for p in todo if p.existing is not None]
        if rewritten and self.recount_popularity is not None:
            self.recount_popularity(rewritten)

    def ingest(
        self, records: Iterable[Any], progress: bool = True, total: int | None = None, on_batch: Any = None,
        local_images: bool = True,
    ) -> IngestReport:
        """Index records; ``on_batch(report)`` is called after each batch is durably written.
        ``local_images=False`` accepts only image URLs (no server-side paths)."""
        report = IngestReport()
        t0 = time.perf_counter()
        seen: set[str] = set()
        if total is None and hasattr(records, "__len__"):
            total = len(records)  # type: ignore[arg-type]
        bar = tqdm(total=total, desc="indexing items", unit="item", disable=not progress)

        def batches() -> Iterator[list[tuple[int, Any]]]:
            buf: list[tuple[int, Any]] = []
            for i, rec in enumerate(records):
                buf.append((i, rec))
                if len(buf) == self.config.batch_size:
                    yield buf
                    buf = []
            if buf:
                yield buf

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="persona-prep") as pool:
            it = batches()
            pending = None
            first = next(it, None)
            if first is not None:
                pending = (len(first), pool.submit(self._prepare, first, seen, report, local_images))
            while pending is not None:
                n, fut = pending
                todo = fut.result()
                nxt = next(it, None)
                pending = (len(nxt), pool.submit(self._prepare, nxt, seen, report, local_images)) if nxt is not None else None
                self._write(todo, report)
                report.total += n
                bar.update(n)
                if on_batch is not None:
                    self.store.flush()
                    on_batch(report)
        bar.close()
        self.store.flush()
        report.seconds = time.perf_counter() - t0
        report.errors.sort(key=lambda e: e.index)
        return report
