"""Embedded backend: Qdrant's own engine in-process (qdrant-edge-py), one shard per collection."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from ..errors import BackendUnavailableError, ConflictError, NotFoundError
from ..fsutil import write_atomic
from . import edge_convert as conv
from .base import Filter, Hit, Point, VectorQuery, VectorStore
from .edge_build import aside_of, build_copy, build_in_child, copy_shard, finish_swap, recover, replay, swap_in, undo_swap
from .edge_convert import DISTANCE, INDEX, INDEXING_KB, SEARCH, quantization_config, scoring, to_filter, upgrade_config

logger = logging.getLogger(__name__)

# Payload-only collections still need one vector entry in the edge config; a sparse one costs nothing.
_PLACEHOLDER_SPARSE = "_none"


def _drop_store(shards: dict, fd: int) -> None:
    for shard in list(shards.values()):
        try:
            shard.close()
        except Exception:  # noqa: BLE001 - garbage collection: nothing to report to
            logger.warning("an edge shard of a store dropped without close() failed to close", exc_info=True)
    shards.clear()
    os.close(fd)


class EdgeStore(VectorStore):
    """Each collection is an edge shard under ``<root>/<name>``; writes go through the shard's WAL.

    One ``EdgeStore`` per root at a time, in any process: an exclusive ``flock`` on ``<root>/.lock`` is taken before the
    first shard is opened and held until :meth:`close`. Qdrant's own lock covers one shard's WAL only, and a second
    process loading a shard that another holds rewrote that shard's payload-index journal before its WAL lock failed
    (CI: "Tracker journal ... is shorter than expected" in the first process's next flush). The kernel drops the lock
    when a process dies."""

    def __init__(self, root: Path, quantization: str = "int8") -> None:
        """``quantization`` (``int8`` or ``none``): of the collections created with ``quantize`` from now on."""
        self.root, self._quantization = Path(root), quantization_config(quantization)
        self.root.mkdir(parents=True, exist_ok=True)
        self._shards: dict[str, qe.EdgeShard] = {}
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._lock_finalizer: weakref.finalize | None = None
        self._journals: dict[str, list[Any]] = {}  # writes to a collection while its index is built beside it
        self._swaps = 0  # shards replaced by index builds: a read that fails on a replaced shard retries

    def _dir(self, name: str) -> Path:
        return self.root / name

    def _already_open(self) -> ConflictError:
        return ConflictError(f"the store at {self.root} is already open in another Engine or process (one writer per path)")

    def _hold_root(self) -> None:
        """Take the store-wide lock (idempotent); a clear ConflictError when another holder has it."""
        if self._lock_fd is not None:
            return
        try:
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # read-only or foreign-owned folder: say which file, not a bare errno
            raise BackendUnavailableError(f"cannot open the store's lock file {self.root / '.lock'}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise self._already_open() from e
            raise BackendUnavailableError(f"cannot lock the store at {self.root}: {e.strerror}") from e
        self._lock_fd = fd
        # a store dropped without close() must not keep the path locked for the rest of the process: its shards are
        # closed first, then the lock goes (the finalizer holds the shard dict, not the store)
        self._lock_finalizer = weakref.finalize(self, _drop_store, self._shards, fd)

    def _release_root(self) -> None:
        if self._lock_fd is not None:
            self._lock_finalizer.detach()
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def _release_if_idle(self) -> None:
        """After a failed first open: no shard is open, so nothing needs the lock."""
        if not self._shards:
            self._release_root()

    def _shard(self, name: str) -> qe.EdgeShard:
        shard = self._shards.get(name)
        if shard is not None:
            return shard
        with self._lock:
            if name not in self._shards:
                if not self.has_collection(name):
                    raise NotFoundError(f"collection {name!r} does not exist")
                self._hold_root()
                try:
                    recover(self._dir(name))  # an index build's swap cut short by a crash
                    upgrade_config(self._dir(name))  # a store made before INDEXING_KB
                    self._shards[name] = qe.EdgeShard.load(str(self._dir(name)))
                except Exception as e:
                    self._release_if_idle()
                    if "WouldBlock" in str(e):
                        raise self._already_open() from e
                    raise
            return self._shards[name]

    def _update(self, name: str, op: Any) -> None:
        """Every write: to the live shard, and to the journal replayed on a copy being built (:meth:`optimize`)."""
        self._shard(name).update(op)
        if name in self._journals:
            self._journals[name].append(op)

    def _read(self, name: str, fn: Any) -> Any:
        swaps, shard = self._swaps, self._shard(name)
        while True:
            try:
                return fn(shard)
            except Exception:
                if self._swaps == swaps:  # not a swap (a closed store stays closed)
                    raise
                swaps, shard = self._swaps, self._shard(name)  # an index build swapped the shard: again on the new one

    def has_collection(self, name: str) -> bool:
        return name in self._shards or self._dir(name).exists() or aside_of(self._dir(name)).exists()

    def ensure_collection(self, name: str, vectors: Mapping[str, int], indexes: Mapping[str, str] | None = None,
                          quantize: bool = False) -> None:
        with self._lock:
            meta_path = self.root / f"{name}.vectors.json"
            if self.has_collection(name):
                shard = self._shard(name)
                have = json.loads(meta_path.read_text()) if meta_path.exists() else {}
                for vname, size in vectors.items():
                    if vname in have and have[vname] != size:
                        raise ConflictError(f"collection {name!r}: vector {vname!r} has size {have[vname]}, not {size}")
                    if vname not in have:
                        self._update(name, qe.UpdateOperation.create_dense_vector(vname, int(size), qe.Distance.Cosine))
                        have[vname] = int(size)
                write_atomic(meta_path, json.dumps(have))
            else:
                cfg = qe.EdgeConfig(
                    vectors={k: qe.EdgeVectorParams(size=int(v), distance=qe.Distance.Cosine) for k, v in vectors.items()}
                    or None,
                    sparse_vectors=None if vectors else {_PLACEHOLDER_SPARSE: qe.EdgeSparseVectorParams()},
                    quantization_config=self._quantization if quantize else None,  # every named vector, cf added later too
                    optimizers=qe.EdgeOptimizersConfig(indexing_threshold=INDEXING_KB),
                )
                self._hold_root()
                try:
                    write_atomic(meta_path, json.dumps({k: int(v) for k, v in vectors.items()}))
                    self._shards[name] = qe.EdgeShard.create(str(self._dir(name)), cfg)
                except Exception:
                    self._release_if_idle()
                    raise
                shard = self._shards[name]
            schema = shard.info().payload_schema
            for fname, kind in (indexes or {}).items():
                if fname not in schema:
                    self._update(name, qe.UpdateOperation.create_field_index(fname, INDEX[kind]))

    def ensure_vector(self, name: str, vector: str, size: int, distance: str = "cosine") -> None:
        with self._lock:
            self._shard(name)  # NotFoundError for an unknown collection
            meta_path = self.root / f"{name}.vectors.json"
            have = json.loads(meta_path.read_text()) if meta_path.exists() else {}
            # Same size and distance: keep (older stores recorded the size alone, as an int: cosine).
            want = {"size": int(size), "distance": distance}
            if have.get(vector) == want or (distance == "cosine" and have.get(vector) == int(size)):
                return
            if vector in have:  # a derived vector (cf) of another shape: refit rewrites it
                self._update(name, qe.UpdateOperation.delete_vector_name(vector))
            self._update(name, qe.UpdateOperation.create_dense_vector(vector, int(size), DISTANCE[distance]))
            have[vector] = want
            write_atomic(meta_path, json.dumps(have))

    def update_vectors(self, name: str, points: Sequence[Point]) -> None:
        if not points:
            return
        pts = [qe.PointVectors(id=p.id, vector={k: [float(x) for x in v] for k, v in p.vectors.items()}) for p in points]
        with self._lock:
            self._update(name, qe.UpdateOperation.update_vectors(pts))

    def upsert(self, name: str, points: Sequence[Point]) -> None:
        if not points:
            return
        pts = [qe.Point(id=p.id, vector={k: [float(x) for x in v] for k, v in p.vectors.items()}, payload=p.payload) for p in points]
        with self._lock:
            self._update(name, qe.UpdateOperation.upsert_points(pts))

    def set_payload(self, name: str, ids: Sequence[str], payload: Mapping[str, Any]) -> None:
        with self._lock:
            self._update(name, qe.UpdateOperation.set_payload(list(ids), dict(payload)))

    def delete(self, name: str, ids: Sequence[str]) -> None:
        if ids:
            with self._lock:
                self._update(name, qe.UpdateOperation.delete_points(list(ids)))

    def delete_vectors(self, name: str, ids: Sequence[str], vector: str) -> None:
        with self._lock:  # the engine refuses the whole write for an id it does not hold: those it has only
            have = [h.id for h in self.retrieve(name, list(ids), fields=())]
            if have:
                self._update(name, qe.UpdateOperation.delete_vectors(have, [vector]))

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False, fields: Sequence[str] | None = None) -> list[Hit]:
        if not ids:
            return []
        sel = True if fields is None else qe.PayloadSelector.Include(list(fields))
        recs = self._read(name, lambda sh: sh.retrieve(list(ids), with_payload=sel, with_vector=with_vectors))
        by_id = {str(r.id): Hit.of(r) for r in recs}
        return [by_id[i] for i in ids if i in by_id]

    def scroll(self, name: str, flt: Filter | None = None, with_vectors: bool = False, batch: int = 512) -> Iterator[Hit]:
        offset = None
        while True:
            req = qe.ScrollRequest(offset=offset, limit=batch, filter=to_filter(flt), with_payload=True, with_vector=with_vectors)
            recs, offset = self._read(name, lambda sh, req=req: sh.scroll(req))  # pages resume by id after a swap
            yield from (Hit.of(r) for r in recs)
            if offset is None or not recs:
                return

    def count(self, name: str, flt: Filter | None = None) -> int:
        return int(self._read(name, lambda sh: sh.count(qe.CountRequest(exact=True, filter=to_filter(flt)))))

    def query(self, name: str, queries: Sequence[VectorQuery], limit: int, flt: Filter | None = None, with_vectors: bool = False,
              rrf_k: int = 60, with_payload: bool = True) -> list[Hit]:
        if not queries:
            return []
        f = to_filter(flt)
        if len(queries) == 1:
            req = conv.one_query(queries[0], limit, f, with_payload, with_vectors)
        else:
            pre = [qe.Prefetch(query=scoring(q), limit=q.limit, filter=f, params=None if q.order_by else SEARCH) for q in queries]
            req = qe.QueryRequest(prefetches=pre, query=qe.Fusion.Rrf(k=rrf_k, weights=[q.weight for q in queries]), filter=f,
                                  limit=limit, with_payload=with_payload, with_vector=with_vectors)
        return [Hit.of(p) for p in self._read(name, lambda sh: sh.query(req))]

    def nearest_keys(self, name: str, using: str, vector: Sequence[float], limit: int, flt: Filter | None = None) -> list[int]:
        req = conv.one_query(VectorQuery(using, vector=list(vector), limit=limit), limit, to_filter(flt))
        return conv.id_keys(self._read(name, lambda sh: sh.query(req)))

    def top_by(self, name: str, field: str, limit: int, flt: Filter | None = None) -> list[Hit]:
        req = qe.QueryRequest(
            query=qe.OrderBy(key=field, direction=qe.Direction.Desc), filter=to_filter(flt), limit=limit, with_payload=True
        )
        return [Hit.of(p) for p in self._read(name, lambda sh: sh.query(req))]

    def optimize(self, name: str) -> bool:
        """Qdrant's optimizers (HNSW for every named vector past Qdrant's indexing threshold), run now: the embedded
        engine has no background optimizer, so without this every query scans every point (100k x 384-d: a scan
        ~10 ms, HNSW ~2 ms; bench/scale.py). qdrant-edge keeps the GIL while it builds (118 s at 100k items on 2 cores),
        so the build runs in a child process on a copy of the shard (``edge_build``): this process keeps answering,
        by scanning, and its writes meanwhile are replayed on the copy before it replaces the shard. Costs the
        shard's size again on disk and in the child's memory for the build; writes wait while the shard is copied,
        everything waits while the built copy loads (twice: replay, then swap; well under a second at 100k items).
        False when nothing was built (a build of this collection already under way, or the store closed meanwhile)."""
        with self._lock:
            shard, live = self._shard(name), self._dir(name)
            if name in self._journals:
                return False
            shard.flush()
            copy = build_copy(live)
            copy_shard(live, copy)
            journal = self._journals[name] = []
        try:
            built = build_in_child(copy)
            with self._lock:
                self._journals.pop(name, None)
                if not built or self._shards.get(name) is not shard:
                    return False
                replay(copy, journal)
                del self._shards[name]  # before close: a reader that meets the closed shard retries on the new one
                self._swaps += 1
                try:
                    shard.close()
                except Exception:
                    self._shards[name] = shard
                    raise
                swap_in(live, copy)
                try:
                    self._shards[name] = qe.EdgeShard.load(str(live))
                except Exception as e:
                    undo_swap(live)
                    self._shards[name] = qe.EdgeShard.load(str(live))
                    raise BackendUnavailableError(f"the built index of {name!r} did not load; the shard is as before: {e}") from e
                finish_swap(live)
                logger.info("index of %s built beside it (%d writes replayed) and swapped in", name, len(journal))
                return True
        finally:
            with self._lock:
                if self._journals.get(name) is journal:  # the build failed before its swap: stop journaling
                    del self._journals[name]
            shutil.rmtree(copy, ignore_errors=True)  # whatever is left of the copy (nothing once swapped in)

    def flush(self, collection: str | None = None) -> None:
        with self._lock:  # a shard's flush costs milliseconds even with nothing to write (4 ms at 100k items): only those asked
            for name, shard in self._shards.items():
                if collection is None or name == collection:
                    shard.flush()

    def close(self) -> None:
        with self._lock:
            failed = []
            for name, shard in list(self._shards.items()):
                try:
                    shard.close()
                    del self._shards[name]
                except Exception as e:  # keep it (and the lock): another process must not load a shard still open here
                    failed.append((name, e))
            if failed:
                raise BackendUnavailableError(f"could not close {[n for n, _ in failed]}: {failed[0][1]}") from failed[0][1]
            self._release_root()
