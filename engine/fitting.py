"""Stage: the learned recommender, fitted from the store and served beside it.

In: the store's events (every user's history) and items (attributes and ``text`` vectors).
Out: :meth:`LearnedStage.fit` trains :class:`engine.learned.PersonaModel` and saves it versioned
under ``<path>/models/<version>/`` (``CURRENT`` names the live one, written atomically, so a
reader sees the old model or the new one, never half of one). :meth:`LearnedStage.current` is the
model ``recommend()`` ranks with (None before the first fit); :meth:`LearnedStage.recommend`
returns scored item ids with the history item each one is tied to most strongly.

No external split is needed: for each user the last stored event is the ranker's label and the
earlier ones its history (see ``engine/learned/model.py``). Recommending reads the user's current
history from the store, so a new event changes the next list through the sequence features
without a refit. The sources are computed in memory beside Qdrant (fine to ~10^5 items); payload
filters run in Qdrant.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .config import Settings
from .errors import DependencyMissingError, InvalidInputError, missing
from .items import ItemCatalog
from .store import Filter, VectorStore, point_id
from .types import Event, FitReport, Item

logger = logging.getLogger(__name__)

__all__ = ["LearnedStage"]

_SCORE_ALL_LIMIT = 20_000
"""With a payload filter, score every matching item up to this many (exact); beyond, filter the pool."""


class LearnedStage:
    def __init__(self, settings: Settings, store: VectorStore, items_col: str, events_col: str, catalog: ItemCatalog) -> None:
        self.settings, self.store, self.items_col, self.events_col, self.catalog = settings, store, items_col, events_col, catalog
        self.root = Path(settings.path or ".") / "models"
        self._lock = threading.Lock()
        self._loaded: tuple[str, object] | None = None

    # -- fitting ---------------------------------------------------------------------------------

    def _config(self):
        from .learned import LearnedConfig

        f = self.settings.fit
        return LearnedConfig(seed=self.settings.seed, pool_size=f.pool_size, cf_factors=f.cf_factors, label_folds=f.label_folds, threads=f.threads)

    def fit(self, progress: bool = False, ray: Any = None) -> FitReport:
        """Train on every stored event; save a new version and make it current. ``ray`` (an
        ``engine.batch.RayBatch``) computes the ranker's training rows on Ray (identical rows)."""
        try:
            from .learned import PersonaModel
        except ImportError as e:
            raise missing("learn", "implicit / lightgbm / scipy") from e
        t0 = time.perf_counter()
        events = [Event.model_validate(h.payload) for h in self.store.scroll(self.events_col)]
        if len({e.user_id for e in events}) < 2:
            raise InvalidInputError("fit needs events from at least 2 users")
        items, ids, vecs = [], [], []
        for h in self.store.scroll(self.items_col, with_vectors=True):
            p = h.payload
            items.append(Item(id=p["item_id"], title=p.get("title") or p["item_id"], attributes=p.get("attributes") or {}))
            v = (h.vectors or {}).get("text")
            if v:
                ids.append(p["item_id"])
                vecs.append(v)
        emb = np.asarray(vecs, np.float32) if vecs else None
        logger.info("fitting on %d events, %d items", len(events), len(items))
        model = PersonaModel.fit(events, items, emb, self._config(), embedding_ids=ids or None, progress=progress,
                                 map_chunks=ray.map_chunks if ray is not None else None)
        version = model.info["version"]
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{version}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save(tmp)
        final = self.root / version
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        cur = self.root / ".CURRENT.tmp"
        cur.write_text(version)
        os.replace(cur, self.root / "CURRENT")  # atomic switch to the new version
        with self._lock:
            self._loaded = (version, model)
        self._prune(version)
        info = {k: v for k, v in model.info.items() if k != "version"}
        return FitReport(version=version, path=str(final), users=info["n_users"], items=info["n_items"], events=info["n_events"],
                         seconds=round(time.perf_counter() - t0, 2), info=info)

    def _prune(self, keep: str) -> None:
        versions = sorted((d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.stat().st_mtime)
        for d in versions[: max(0, len(versions) - self.settings.fit.keep_versions)]:
            if d.name != keep:
                shutil.rmtree(d, ignore_errors=True)

    # -- serving ---------------------------------------------------------------------------------

    def current(self):
        """The live fitted model, or None when none is fitted (or ``fit.use_model`` is off)."""
        if not self.settings.fit.use_model:
            return None
        pointer = self.root / "CURRENT"
        try:
            version = pointer.read_text().strip()
        except FileNotFoundError:
            return None
        with self._lock:
            if self._loaded is not None and self._loaded[0] == version:
                return self._loaded[1]
            try:
                from .learned import PersonaModel
            except ImportError as e:
                raise DependencyMissingError(f"a fitted model exists but its dependencies are missing: {e}") from e
            model = PersonaModel.load(self.root / version)
            self._loaded = (version, model)
            logger.info("loaded fitted model %s", version)
            return model

    def recommend(self, model, events: list[Event], k: int, flt: Filter) -> list[tuple[str, float, str | None]]:
        """Top ``k`` (item id, score, reason item id) for a history under ``flt`` (seen items in
        ``flt.exclude_ids`` are left out). With payload conditions, every matching item is scored
        (exact) when there are at most ``_SCORE_ALL_LIMIT``; otherwise the pool is filtered."""
        if not (flt.match or flt.ranges or flt.include_ids is not None):
            out = model.recommend(events, k=k + len(flt.exclude_ids), exclude_seen=True)
            return [r for r in out if point_id("item", r[0]) not in flt.exclude_ids][:k]
        allowed = [h.payload["item_id"] for h in itertools.islice(self.store.scroll(self.items_col, flt), _SCORE_ALL_LIMIT + 1)]
        if len(allowed) > _SCORE_ALL_LIMIT:  # too many to score: keep the pool's items that match
            pool = model.recommend(events, k=model.config.pool_size, exclude_seen=True)
            inside = Filter(match=flt.match, ranges=flt.ranges, exclude_ids=flt.exclude_ids, include_ids={point_id("item", r[0]) for r in pool})
            ok = {h.payload["item_id"] for h in self.store.scroll(self.items_col, inside)}
            return [r for r in pool if r[0] in ok][:k]
        ranked = [r for r in model.rank(events, allowed) if np.isfinite(r[1])][:k]
        reasons = model.reasons(model.state(events), model.index.rows([i for i, _ in ranked])) if ranked else []
        return [(i, s, why) for (i, s), why in zip(ranked, reasons)]

    def rank(self, model, events: list[Event], item_ids: list[str]) -> list[tuple[str, float]]:
        """``item_ids`` best first, by exactly the scores :meth:`recommend` gives them."""
        return model.rank(events, item_ids)
