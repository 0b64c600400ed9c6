"""Stage: the learned recommender, fitted from the store (serving it: ``engine.serving``).

In: the store's events (every user's history) and items (attributes and ``text`` vectors).
Out: :meth:`LearnedStage.fit` trains :class:`engine.learned.PersonaModel` and saves it versioned under
``<path>/models/<version>/`` (``CURRENT`` names the live one, written atomically, so a reader sees the old model or the
new one, never half of one; a version that cannot be read is logged, and the last model loaded, else the unfitted
fusion, serves).
:meth:`LearnedStage.current` is the model ``recommend()`` ranks with (None before the first fit); :meth:`LearnedStage.cf_version`
names the version whose ``cf`` vectors the store holds.

No external split is needed: for each user the last stored event is the ranker's label and the earlier ones its history
(``engine/learned/model.py``). Recommending reads the user's current history from the store, so a new event changes the
next list through the sequence features without a refit. Payload filters run in Qdrant.

Collaborative vectors live in Qdrant: each fit writes the ALS item factors as the named vector ``cf`` (dot product) on
the item points and each user's fit-time fold-in vector as ``cf`` on the users collection, and names the version in
``models/CF_VERSION``. Serving takes the collaborative candidates from a Qdrant query on ``cf`` with a query vector
folded in from the user's CURRENT history (so events after the fit count). On large catalogs (index mode,
``LearnedConfig.index_items``) the collaborative and content sources are top lists from Qdrant queries on the ``cf``
and ``text`` vectors (features included: ranks within those lists), and the fit builds the HNSW indexes. The other
sources and the features are computed in memory. Re-ingesting an item drops its ``cf`` vector until the next fit (the
item is still reached through the other sources); a model whose vectors were not written falls back to an in-memory scan.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .config import Settings
from .errors import DependencyMissingError, InvalidInputError, missing
from .events import stored_events
from .fsutil import file_lock, write_atomic
from .items import ItemCatalog
from .store import Filter, Point, VectorStore, point_id
from .types import Event, FitReport, Item

logger = logging.getLogger(__name__)

__all__ = ["LearnedStage"]

CF_VECTOR = "cf"
_CF_STATE = "CF_VERSION"
"""File beside CURRENT naming the version whose cf vectors the store holds; absent while they are
rewritten. Every process checks it before a cf query, so a model never meets another fit's factors
(a fit in another process, a crash mid-write, or CURRENT pointed back at an older version)."""


class LearnedStage:
    def __init__(self, settings: Settings, store: VectorStore, items_col: str, events_col: str, catalog: ItemCatalog,
                 users_col: str | None = None) -> None:
        self.settings, self.store, self.items_col, self.events_col, self.catalog = settings, store, items_col, events_col, catalog
        self.users_col = users_col
        self.root = Path(settings.path or ".") / "models"
        self._lock = threading.Lock()
        self._loaded: tuple[str, object] | None = None
        self._pointer: tuple[int, str] | None = None  # (CURRENT's mtime_ns, version): CURRENT is re-read only when it changes
        self._cf_state: tuple[tuple[int, int], str | None] | None = None  # (inode, mtime) of CF_VERSION, its content
        self._broken: tuple | None = None  # (CURRENT as in _pointer, when): a version that failed to load, retried after 60 s

    # -- fitting ---------------------------------------------------------------------------------

    def config(self):
        """The ``LearnedConfig`` a fit uses (from ``settings.fit``; every other knob at its validated default)."""
        from .learned import LearnedConfig

        f = self.settings.fit
        return LearnedConfig(seed=self.settings.seed, pool_size=f.pool_size, cf_factors=f.cf_factors, label_folds=f.label_folds, threads=f.threads,
                             dislike_penalty=f.dislike_penalty, sas_epochs=f.sequence_epochs, sas_device=f.device,
                             index_items=f.index_items, index_depth=f.index_depth, new_item_slot=f.new_item_slot, fresh_boost=f.fresh_boost)

    def fit(self, progress: bool = False, ray: Any = None) -> FitReport:
        """Train on every stored event; save a new version and make it current. ``ray``: training rows on Ray (identical)."""
        try:
            from .learned import PersonaModel
        except ImportError as e:
            raise missing("learn", "implicit / lightgbm / scipy") from e
        t0 = time.perf_counter()
        events, items, emb, ids = self.training_inputs()
        if len({e.user_id for e in events}) < 2:
            raise InvalidInputError("fit needs events from at least 2 users")
        logger.info("fitting on %d events, %d items", len(events), len(items))
        model = PersonaModel.fit(events, items, emb, self.config(), embedding_ids=ids or None, progress=progress,
                                 map_chunks=ray.map_chunks if ray is not None else None)
        version = model.info["version"]
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{version}-{uuid.uuid4().hex[:12]}"  # own folder: two fits of one version can overlap
        try:
            model.save(tmp)
            if self.settings.fit.compiled_ranker:  # before the folder moves into place: its cache goes with it
                model.compile(tmp)
            final, index_s = self._switch(model, version, tmp, items, events)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # moved into place on success; a failed fit leaves nothing behind
        with self._lock:
            self._loaded = (version, model)
        self._prune(version)
        info = {k: v for k, v in model.info.items() if k != "version"} | ({"index_build_seconds": index_s} if index_s is not None else {})
        return FitReport(version=version, path=str(final), users=info["n_users"], items=info["n_items"], events=info["n_events"],
                         seconds=round(time.perf_counter() - t0, 2), info=info)

    def _switch(self, model, version: str, tmp: Path, items: list[Item], events: list[Event]) -> tuple[Path, float | None]:
        """Under the fit lock: the cf vectors, the saved folder moved into place, the HNSW build (its seconds), CURRENT."""
        index_s = None
        with file_lock(self.root / ".fit.lock"):  # two fits (API and CLI) must not interleave their cf writes
            (self.root / _CF_STATE).unlink(missing_ok=True)  # every process scans in memory until the new vectors are complete
            cf_written = self.write_vectors(model, [it.id for it in items], events)
            self.store.flush()  # the vectors are durable before CF_VERSION names them
            final = self.root / version
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            if cf_written:
                write_atomic(self.root / _CF_STATE, version)
            t = time.perf_counter()
            if model.indexed:  # served from the vector index: build it now (the embedded engine has no background optimizer)
                try:
                    if self.store.optimize(self.items_col):
                        index_s = round(time.perf_counter() - t, 2)
                        logger.info("built the items' vector indexes in %.1fs", index_s)
                except Exception as e:  # queries still answer (by scanning): a failed build must not lose the fit
                    logger.warning("vector index not built (%s); queries scan every item until a later fit builds it", e)
            write_atomic(self.root / "CURRENT", version)  # atomic switch to the new version
        return final, index_s

    def training_inputs(self) -> tuple[list[Event], list[Item], np.ndarray | None, list[str]]:
        """What a fit reads from the store: every event, every item, the items' ``text`` vectors and their ids."""
        items, ids, blocks, page = [], [], [], []
        for h in self.store.scroll(self.items_col, with_vectors=True):
            p = h.payload
            items.append(Item(id=p["item_id"], title=p.get("title") or p["item_id"], attributes=p.get("attributes") or {}))
            v = (h.vectors or {}).get("text")
            if v:
                ids.append(p["item_id"])
                page.append(v)
                if len(page) == 4096:  # to float32 page by page: 1M vectors as Python lists would be ~12 GB of float objects
                    blocks.append(np.asarray(page, np.float32))
                    page = []
        if page:
            blocks.append(np.asarray(page, np.float32))
        events = stored_events(self.store, self.events_col, {it.id for it in items})  # none of a deleted item
        return events, items, (np.concatenate(blocks) if blocks else None), ids

    def write_vectors(self, model, item_ids: list[str], events: list[Event]) -> bool:
        """Write ``model``'s item factors on the stored ``item_ids`` and the fold-in vectors of ``events``' users (those
        with a profile point) as the ``cf`` named vector; False if the store refuses (serving then scans in memory).

        In index mode only items with events get one: the others' factors are zero, and a point keeps no vector of an
        older fit that this model has none for. A refit then rewrites the points of items with events alone, so the
        HNSW build after it leaves the rest of the catalog's index as it was (on a long-tail catalog, most of it)."""
        V = model.item_factors
        rows = model.index.rows(item_ids)
        try:
            self.store.ensure_vector(self.items_col, CF_VECTOR, V.shape[1], "dot")
            known, stale = [(i, r) for i, r in zip(item_ids, rows) if r >= 0], []
            if model.indexed:
                has = np.any(V != 0, axis=1)
                known = [(i, r) for i, r in known if has[r]]
                keep = {point_id("item", i) for i, h in zip(model.item_ids, has) if h}
                stale = [h.id for h in self.store.scroll(self.items_col, Filter(has_vector=CF_VECTOR), batch=4096) if h.id not in keep]
                for k in range(0, len(stale), 4096):
                    self.store.delete_vectors(self.items_col, stale[k : k + 4096], CF_VECTOR)
            for k in range(0, len(known), 1024):  # lists built per batch: 1M items' factors as Python floats are ~2 GB
                self.store.update_present(self.items_col, [Point(point_id("item", i), {CF_VECTOR: V[r].tolist()}, {}) for i, r in known[k : k + 1024]])
            by_user: dict[str, list[Event]] = {}
            for e in events:
                by_user.setdefault(e.user_id, []).append(e)
            have = {h.payload.get("user_id") for h in self.store.scroll(self.users_col)} if self.users_col else set()
            users = [u for u in by_user if u in have]
            if users:
                self.store.ensure_vector(self.users_col, CF_VECTOR, V.shape[1], "dot")
                upts = [Point(point_id("user", u), {CF_VECTOR: model.stage1.cf.user_vector(model.sequence(by_user[u]).items).astype(float).tolist()}, {}) for u in users]
                for k in range(0, len(upts), 1024):
                    self.store.update_present(self.users_col, upts[k : k + 1024])  # a user deleted meanwhile is skipped
        except Exception as e:  # the in-memory scan still serves; a store error must not lose the fit
            logger.warning("cf vectors not written to the store (%s); the collaborative source scans in memory", e)
            return False
        logger.info("wrote %d item and %d user cf vectors (%d older item vectors dropped)", len(known), len(users), len(stale))
        return True

    def _prune(self, keep: str) -> None:
        for d in self.root.glob(".tmp-*"):  # left by a process killed mid-fit
            try:
                stale = time.time() - d.stat().st_mtime > 86_400
            except OSError:  # another fit's folder, moved or removed meanwhile
                continue
            if stale:
                shutil.rmtree(d, ignore_errors=True)
        def saved_at(d: Path) -> float:  # meta.json is written once: the folder's own time moves when compiled/ is made in it
            for f in (d / "meta.json", d):
                try:
                    return f.stat().st_mtime
                except OSError:  # gone meanwhile (another process pruned it)
                    continue
            return 0.0
        versions = sorted((d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=saved_at)
        for d in versions[: max(0, len(versions) - self.settings.fit.keep_versions)]:
            if d.name != keep:
                shutil.rmtree(d, ignore_errors=True)

    # -- the live model ----------------------------------------------------------------------------

    def current(self):
        """The live fitted model, or None when none is fitted (or ``fit.use_model`` is off)."""
        if not self.settings.fit.use_model:
            return None
        pointer = self.root / "CURRENT"
        try:
            st = pointer.stat()
            mtime = (st.st_ino, st.st_mtime_ns)  # os.replace gives a new inode: coarse mtimes cannot hide a switch
            if self._pointer is not None and self._pointer[0] == mtime:
                version = self._pointer[1]
            else:
                version = pointer.read_text().strip()
                self._pointer = (mtime, version)
        except FileNotFoundError:
            return None
        with self._lock:
            if self._loaded is not None and self._loaded[0] == version:
                return self._loaded[1]
            try:
                from .learned import PersonaModel
            except ImportError as e:
                raise DependencyMissingError(f"a fitted model exists but its dependencies are missing: {e}") from e
            failed = self._broken is not None and self._broken[0] == self._pointer and time.monotonic() - self._broken[1] < 60
            try:  # unreadable (a disk fault, a copy cut short, another format): logged, tried again a minute later
                model = None if failed else PersonaModel.load(self.root / version, self.settings.fit.compiled_ranker)
            except ImportError as e:
                raise DependencyMissingError(f"the fitted model needs a missing dependency: {e}") from e
            except Exception as e:
                self._broken, model = (self._pointer, time.monotonic()), None
                logger.error("fitted model %s cannot be loaded (%s: %s); the last model loaded here serves, else the "
                             "unfitted fusion (model_version None)", version, type(e).__name__, e)
            if model is None:
                return self._loaded[1] if self._loaded is not None else None
            self._loaded = (version, model)
            logger.info("loaded fitted model %s", version)
            return model

    def cf_version(self) -> str | None:
        """The fitted version whose cf vectors the store holds now (None: absent or being rewritten)."""
        path = self.root / _CF_STATE
        try:
            st = path.stat()
            key = (st.st_ino, st.st_mtime_ns)
            if self._cf_state is not None and self._cf_state[0] == key:
                return self._cf_state[1]
            self._cf_state = (key, path.read_text().strip() or None)
            return self._cf_state[1]
        except FileNotFoundError:
            return None
