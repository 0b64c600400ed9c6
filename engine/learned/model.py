"""``PersonaModel``: the learned two-stage recommender (stage-1 candidate models + LightGBM ranker).

In (fit):   events (user_id, item_id, timestamp, rating), items (id, attributes{genres, year}), optional item text
            embeddings (rows aligned with ``embedding_ids``, default the ``items`` order), ``LearnedConfig``.
Out:        a model whose ``recommend(history, k)`` returns ``[(item_id, score, reason_item_id)]`` from a user's history
            alone (events or item ids, any order; they are ordered here), so a new event changes the next result
            without a refit. ``rank(history, item_ids)`` scores given items through the same code path.
            ``save(dir)`` / ``load(dir)``: arrays.npz + ranker.txt (LightGBM) + meta.json (format version, model
            version, fit time, data hash, config, feature columns); ``load(dir, compiled=True)`` also compiles the
            ranker (``Ranker.compile``) with its code cached in ``dir/compiled``.

Fit protocol (no label leakage): stage 1 (ALS, transitions, co-occurrence, popularity, item stats) is fitted on every
user's events but the last; the ranker learns to find each user's last event in the pool built from those models; then
stage 1 is refitted on ALL events for serving (the ranker is kept). ``label_folds`` (4 by default) counts
the folds: each after the first takes the event before as the label, stage 1 fitted without it and every later one. The sequence model (``sas_epochs`` > 0) is
trained once, on every user's events but the last ``label_folds``, and serves as it is (it never saw a label as a target).

``item_factors`` (the ``cf`` named vector) and ``item_ids`` are exposed for storage in Qdrant.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from .candidates import Stage1, pool, source_top, user_state
from .config import LearnedConfig
from .features import dislike_share, features
from .index import ItemIndex, Sequence, build_sequences, order_events, split_last
from .meta import ItemMeta
from .ranker import Ranker, TrainingData, build_training, train_ranker
from .seqnet import SeqNet
from .ties import reasons
from .toplists import promote_first

__all__ = ["PersonaModel", "FORMAT_VERSION", "COMPILED_DIR", "data_hash"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 4  # 2: the sequence model's arrays and feature columns; 3: ``content_pop``; 4: ``dislike_share`` (older code would fail on them, so it refuses)
COMPILED_DIR = "compiled"  # in a saved model's folder: the ranker's compiled code (Ranker.compile), per CPU
_READS = (1, 2, 3, 4)  # formats 1 (no sequence model), 2 (no ``content_pop``) and 3 (no ``dislike_share``) load and serve as they were fitted


def data_hash(events, items=()) -> str:
    h = hashlib.sha256()
    for e in sorted((str(e.user_id), str(e.item_id), float(e.timestamp), e.rating) for e in events):
        h.update(repr(e).encode())
    for iid in sorted(str(it.id) for it in items):
        h.update(iid.encode())
    return h.hexdigest()


def _concat(parts: list[TrainingData]) -> TrainingData:
    if len(parts) == 1:
        return parts[0]
    users = [f"{k}:{u}" for k, p in enumerate(parts) for u in p.users]
    return TrainingData(np.concatenate([p.X for p in parts]), np.concatenate([p.y for p in parts]),
                        np.concatenate([p.group for p in parts]), users, float(np.mean([p.recall for p in parts])))


class PersonaModel:
    def __init__(self, index: ItemIndex, meta: ItemMeta, stage1: Stage1, ranker: Ranker, config: LearnedConfig, info: dict):
        self.index, self.meta, self.stage1, self.ranker, self.config, self.info = index, meta, stage1, ranker, config, info

    # --- fit -----------------------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, events, items, item_embeddings: np.ndarray | None = None, config: LearnedConfig | None = None,
            embedding_ids=None, extra_fn=None, progress: bool = True, map_chunks=None) -> PersonaModel:
        """Fit stage 1 without each user's last event, train the ranker on those last events (and, per further label fold, on
        the event before, stage 1 refitted without it), refit stage 1 on all.

        ``extra_fn(user_id, history: Sequence, candidate_rows) -> values`` adds the external feature column to training.
        ``map_chunks``: computes the ranker's rows for chunks of users elsewhere (``engine.batch.RayBatch.map_chunks``).
        """
        from tqdm.auto import tqdm

        cfg = config or LearnedConfig()
        t0 = time.perf_counter()
        events = list(events)
        items = list(items)
        index = ItemIndex.build(items, events)
        seqs = build_sequences(events, index, cfg.seed)
        meta = ItemMeta.build(items, index, item_embeddings, embedding_ids)
        parts, stage_times = [], {}
        sas = None
        sas_args = dict(dim=cfg.sas_dim, maxlen=cfg.sas_maxlen, dropout=cfg.sas_dropout, lr=cfg.sas_lr, batch=cfg.sas_batch,
                        full_softmax_items=cfg.sas_full_softmax_items, negatives=cfg.sas_negatives,
                        epochs=cfg.sas_epochs, seed=cfg.seed, threads=cfg.threads, device=cfg.sas_device, progress=progress)
        if cfg.sas_epochs > 0:  # once, without every fold's labels; shared by the training and the serving stage 1
            t = time.perf_counter()
            sas = SeqNet.fit(split_last(seqs, cfg.label_folds)[0], len(index), **sas_args)
            stage_times["sequence_model"] = time.perf_counter() - t
        bar = tqdm(total=len(seqs) * cfg.label_folds, desc="ranker rows", disable=not progress, leave=False)
        cur = seqs
        train_stage1 = []
        for fold in range(cfg.label_folds):
            hist, labels = split_last(cur)
            if cfg.label_min_rating is not None:  # learn the next item the user LIKES (unrated events count as liked)
                labels = {u: j for u, j in labels.items() if not cur[u].ratings[-1] < cfg.label_min_rating}
            t = time.perf_counter()
            s1 = Stage1.fit(hist, len(index), cfg, sas, meta)
            train_stage1.append(s1)
            stage_times[f"stage1_train_{fold}"] = time.perf_counter() - t
            t = time.perf_counter()
            part = build_training(s1, meta, hist, labels, cfg, extra_fn, bar, map_chunks=map_chunks)
            stage_times[f"rows_{fold}"] = time.perf_counter() - t
            log.info("fold %d: %d labelled users, pool recall %.3f, %d rows", fold, len(labels), part.recall, len(part.y))
            parts.append(part)
            cur = hist
        bar.close()
        data = _concat(parts)
        t = time.perf_counter()
        ranker = train_ranker(data, cfg)
        stage_times["ranker"] = time.perf_counter() - t
        if sas is not None and cfg.sas_refit:  # serve from a model that has seen every event, as the rest of stage 1
            t = time.perf_counter()
            sas = SeqNet.fit(seqs, len(index), **sas_args)
            stage_times["sequence_model_serve"] = time.perf_counter() - t
        t = time.perf_counter()
        s1 = Stage1.fit(seqs, len(index), cfg, sas, meta)
        stage_times["stage1_serve"] = time.perf_counter() - t
        fit_s = time.perf_counter() - t0
        info = {"fit_seconds": round(fit_s, 2), "stage_seconds": {k: round(v, 2) for k, v in stage_times.items()},
                "train_pool_recall": round(data.recall, 4), "train_users": len(data.users), "train_rows": int(len(data.y)),
                "trees": ranker.booster.num_trees(), "ranker_bags": len(ranker.boosters), "data_hash": data_hash(events, items), "fitted_at": time.time(),
                "n_items": len(index), "n_users": len(seqs), "n_events": len(events)}
        info["version"] = f"{FORMAT_VERSION}-{info['data_hash'][:12]}-{int(info['fitted_at'])}"
        log.info("PersonaModel fitted in %.1fs (%s)", fit_s, info["stage_seconds"])
        model = cls(index, meta, s1, ranker, cfg, info)
        model.train_stage1 = train_stage1  # the label-free stage-1 models the ranker was trained with (not saved)
        return model

    # --- serving -------------------------------------------------------------------------------------------------
    @property
    def item_ids(self) -> list[str]:
        return self.index.ids

    @property
    def item_factors(self) -> np.ndarray:
        """ALS item factors, one row per ``item_ids`` entry (the ``cf`` named vector)."""
        return self.stage1.cf.item_factors

    def sequence(self, history) -> Sequence:
        """Order a history (Event-like objects, or item ids already in order) and map it to rows; unknown items dropped."""
        history = list(history)
        if history and not isinstance(history[0], str):
            history = order_events(history, self.config.seed)
            ids = [str(e.item_id) for e in history]
            ts = np.array([float(e.timestamp) for e in history])
            r = np.array([np.nan if getattr(e, "rating", None) is None else float(e.rating) for e in history])
        else:
            ids = [str(i) for i in history]
            ts = np.full(len(ids), self.stage1.seq.t_max)
            r = np.full(len(ids), np.nan)
        rows = self.index.rows(ids)
        ok = rows >= 0
        return Sequence(rows[ok], ts[ok], r[ok])

    def _extra(self, extra_feature, cand: np.ndarray):
        if extra_feature is None or "extra" not in self.ranker.columns:
            return None
        ids = [self.index.ids[j] for j in cand]
        if callable(extra_feature):
            return np.asarray(extra_feature(ids), np.float32)
        return np.array([extra_feature.get(i, np.nan) for i in ids], np.float32)

    def _score(self, st, cand: np.ndarray, extra_feature=None) -> np.ndarray:
        F = features(self.stage1, self.meta, st, cand, self._extra(extra_feature, cand))
        scores = self.ranker.predict(F)
        shift = np.zeros(len(cand))  # serving-time adjustments, in log-odds (binary objective) or score units
        if self.config.fresh_boost:
            shift[np.isnan(self.stage1.item_first_ts[cand])] += self.config.fresh_boost
        if self.config.dislike_penalty and st.disliked.any() and not st.disliked.all():  # all low: no contrast to use
            shift -= self.config.dislike_penalty * self.dislike_share(st, cand)
        m = shift != 0  # only shifted items change: the others keep the ranker's exact score, whatever the batch
        if not m.any():
            return scores
        scores = scores.copy()
        if self.config.objective == "binary":  # probabilities: shift their log-odds
            p = np.clip(scores[m], 1e-12, 1 - 1e-12)
            scores[m] = 1.0 / (1.0 + (1 - p) / p * np.exp(-shift[m]))
        else:
            scores[m] += shift[m]
        return scores

    def dislike_share(self, st, cand: np.ndarray) -> np.ndarray:
        """Per candidate, the share of its ties to the recent history that come from films the user rated low
        (``features.dislike_share``, also a ranker column; the features of the same ``cand`` computed it already)."""
        return dislike_share(self.stage1, self.meta, st, cand)

    @property
    def indexed(self) -> bool:
        """Served in index mode (``LearnedConfig.index_items``): the content and cf sources are top lists from a vector index."""
        return self.config.indexed(len(self.index))

    def state(self, history, content_search=None, cf_search=None):
        """The user state of ``history``. In index mode, ``content_search(vector, limit) -> item ids`` (best first, by
        cosine with the items' text vectors) and ``cf_search(user vector, limit) -> item ids`` (by dot product with the
        ``cf`` item factors), the history's items excluded, give the two sources' top lists (else the exact lists)."""
        def rows_of(search):
            if search is None or not self.indexed:
                return None
            return lambda q, limit: self.index.rows([str(i) for i in search(np.asarray(q, np.float32), limit)])
        return user_state(self.stage1, self.meta, self.sequence(history), self.config, rows_of(content_search), rows_of(cf_search))

    def recommend(self, history, k: int = 10, exclude_seen: bool = True, extra_feature=None,
                  cf_search=None, content_search=None) -> list[tuple[str, float, str | None]]:
        """Top ``k`` ``(item_id, score, reason_item_id)``; the reason is the history item tied most strongly to the item.

        ``cf_search(user_vector, limit) -> item ids`` (best first, by dot product with the ``cf`` item factors): the
        collaborative source's candidates from a vector index (Qdrant) instead of the in-memory scan; the user vector
        is folded in from this history now, so events after the fit count. ``content_search``: see :meth:`state`."""
        st = self.state(history, content_search, cf_search)  # state() reads the searches in index mode only
        tops = None
        if cf_search is not None and not self.indexed and "cf" in self.config.sources and np.any(st.user_vec):
            # ask the index only as deep as the pool reaches into the collaborative ranking (~60 of 300 here), plus slack
            used = pool(st, self.config, exclude_seen=exclude_seen)
            top = source_top(st, "cf", self.config.pool_size, exclude_seen)
            depth = int(np.flatnonzero(np.isin(top, used))[-1]) + 1 if np.isin(top, used).any() else 0
            ids = cf_search(np.asarray(st.user_vec, np.float32), min(self.config.pool_size, depth + 20))
            tops = {"cf": self.index.rows(list(ids))}
        cand = pool(st, self.config, exclude_seen=exclude_seen, tops=tops)
        scores = self._score(st, cand, extra_feature)
        order = np.lexsort((cand, -scores))
        if self.config.new_item_slot:  # off by default: no per-request gather of the candidates' first-event times
            order = promote_first(order, np.isnan(self.stage1.item_first_ts[cand[order]]), self.config.new_item_slot)
        order = order[:k]
        top = cand[order]
        reasons = self.reasons(st, top)
        return [(self.index.ids[j], float(scores[o]), reasons[n]) for n, (j, o) in enumerate(zip(top, order))]

    def rank(self, history, item_ids, extra_feature=None, content_search=None, cf_search=None) -> list[tuple[str, float]]:
        """``item_ids`` ordered (best first) by the exact scores ``recommend`` gives them (with the same searches);
        unknown ids last (score -inf)."""
        st = self.state(history, content_search, cf_search)
        rows = self.index.rows(list(item_ids))
        known = rows >= 0
        scores = np.full(len(rows), -np.inf)
        scores[known] = self._score(st, rows[known], extra_feature)
        order = np.lexsort((np.where(known, rows, len(self.index)), -scores))
        return [(str(item_ids[o]), float(scores[o])) for o in order]

    def reasons(self, st, top: np.ndarray) -> list[str | None]:
        """For each item, the id of the history item named as its reason (``ties.reasons``: the strongest transition /
        co-occurrence / cf / content tie, a liked item's ties counting double; varied; an older liked film over one
        rated low when its tie is at least half as strong)."""
        return [None if r is None else self.index.ids[r] for r in reasons(self.stage1, self.meta, self.config, st, top)]

    def compile(self, directory=None) -> bool:
        """Serve the ranker from compiled code (``Ranker.compile``), its cache in ``directory/compiled`` when given
        (the folder the model is saved in). False: lleaves is missing or failed, and LightGBM serves."""
        return self.ranker.compile(None if directory is None else Path(directory) / COMPILED_DIR)

    # --- persistence ---------------------------------------------------------------------------------------------
    def save(self, directory) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays = {"item_ids": np.array(self.index.ids, dtype=object).astype(str), "emb": self.meta.emb, "genres": self.meta.genres,
                  "year": self.meta.year, **self.stage1.arrays()}
        np.savez_compressed(d / "arrays.npz", **arrays)
        (d / "ranker.txt").write_text(self.ranker.to_text())
        meta = {"format_version": FORMAT_VERSION, **self.info, "config": self.config.to_dict(), "ranker_columns": self.ranker.columns,
                "genre_names": self.meta.genre_names}
        (d / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        log.info("saved model %s to %s", self.info.get("version"), d)
        return d

    @classmethod
    def load(cls, directory, compiled: bool = False) -> PersonaModel:
        """The model saved in ``directory``; ``compiled``: its ranker serves compiled code (``Ranker.compile``, cached
        in ``directory/compiled``) when lleaves works here."""
        d = Path(directory)
        meta = json.loads((d / "meta.json").read_text())
        if meta.get("format_version") not in _READS:
            raise ValueError(f"{d}: model format {meta.get('format_version')}, this code reads {list(_READS)}")
        cfg = LearnedConfig.from_dict(meta["config"])
        with np.load(d / "arrays.npz", allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        index = ItemIndex(a["item_ids"].tolist())
        im = ItemMeta(a["emb"], a["genres"], meta["genre_names"], a["year"])
        s1 = Stage1.from_arrays(a, cfg)
        ranker = Ranker.from_text((d / "ranker.txt").read_text(), meta["ranker_columns"])
        info = {k: v for k, v in meta.items() if k not in ("config", "ranker_columns", "genre_names", "format_version")}
        model = cls(index, im, s1, ranker, cfg, info)
        if compiled:
            model.compile(d)
        return model
