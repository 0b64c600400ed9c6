"""The Persona engine: index items, record events, model users, retrieve then generate."""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from .config import Settings
from .errors import BackendUnavailableError, InvalidInputError, NotFoundError, PersonaError
from .llm import LLM, open_llm
from .profiles import TASTE_PREFIX, ProfileBuilder, is_positive
from .prompts import PromptRegistry
from .store import Filter, Hit, Point, VectorQuery, VectorStore, open_store, parse_filter, point_id
from .store.base import chunks, cosine
from .types import (
    Event,
    EventReport,
    Explanation,
    IngestReport,
    Item,
    ItemScore,
    Profile,
    Recommendation,
    Recommendations,
    SearchHit,
    SummaryVersion,
)

logger = logging.getLogger(__name__)

# Text that tries to steer the model; generated explanations containing it are discarded.
_INJECTION = re.compile(
    r"ignore (all |any )?(previous|prior|above|earlier) (instructions|prompts?)|system prompt|rank (this|it) (item )?first|<<<|>>>",
    re.I,
)
LABELS = [chr(ord("A") + i) for i in range(26)]


class Engine:
    """Open with :meth:`Engine.open`; use as a context manager or call :meth:`close`."""

    def __init__(self, settings: Settings, store: VectorStore) -> None:
        self.settings = settings
        self.store = store
        pre = settings.collection_prefix
        self.items_col, self.events_col, self.users_col = f"{pre}_items", f"{pre}_events", f"{pre}_users"
        self.prompts = PromptRegistry(settings.prompts_dir, settings.prompt_versions)
        self._lock = threading.RLock()
        self._text: Any = None
        self._clip: Any = None
        self._clip_error: str | None = None
        self._llm: LLM | None = None
        self._llm_error: str | None = None
        self._collections_ready = False

    # -- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path | None = None, config: Settings | Mapping[str, Any] | None = None) -> "Engine":
        """Open (or create) an engine. ``path`` holds the embedded store; ``config`` is a
        :class:`Settings` or a dict of its fields (environment variables ``PERSONA_*`` fill the rest)."""
        try:
            if isinstance(config, Settings):
                settings = config
            else:
                settings = Settings(**dict(config or {}))
        except ValidationError as e:
            raise InvalidInputError(f"invalid configuration: {e}") from e
        if path is not None:
            settings = settings.model_copy(update={"path": Path(path)})
        assert settings.path is not None
        Path(settings.path).mkdir(parents=True, exist_ok=True)
        store = open_store(Path(settings.path), settings.qdrant_url, settings.qdrant_api_key)
        return cls(settings, store)

    def close(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.close()
            self.store.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- components (loaded on first use so opening is fast) -----------------------------------

    @property
    def text_encoder(self) -> Any:
        with self._lock:
            if self._text is None:
                from indexers.text import SentenceTransformerEncoder

                self._text = SentenceTransformerEncoder(self.settings.text)
            return self._text

    @property
    def clip(self) -> Any:
        """The CLIP model, or None when disabled or its weights cannot be loaded (documented fallback)."""
        with self._lock:
            if self._clip is None and self._clip_error is None and self.settings.clip.enabled:
                try:
                    from indexers.clip import ClipModel

                    self._clip = ClipModel(self.settings.clip)
                except PersonaError as e:
                    if self.settings.clip.required:
                        raise
                    self._clip_error = str(e)
                    logger.warning("CLIP disabled, indexing without image vectors: %s", e)
            return self._clip

    def clip_dim(self) -> int | None:
        if not self.settings.clip.enabled:
            return None
        try:
            import open_clip

            return int(open_clip.get_model_config(self.settings.clip.model)["embed_dim"])
        except Exception:
            return None

    def llm(self) -> LLM:
        """The LLM backend; raises BackendUnavailableError when it is disabled or cannot load."""
        with self._lock:
            if self._llm is None:
                if self._llm_error is not None:
                    raise BackendUnavailableError(self._llm_error)
                try:
                    llm = open_llm(self.settings.llm)
                except PersonaError as e:
                    self._llm_error = str(e)
                    raise BackendUnavailableError(f"LLM unavailable: {e}") from e
                if llm is None:
                    self._llm_error = "LLM disabled (llm.backend=none)"
                    raise BackendUnavailableError(self._llm_error)
                self._llm = llm
            return self._llm

    def _ensure_collections(self) -> None:
        if self._collections_ready:
            return
        with self._lock:
            if all(self.store.has_collection(c) for c in (self.items_col, self.events_col, self.users_col)):
                self._collections_ready = True  # no need to load encoders just to learn vector sizes
                return
            dim = self.text_encoder.dim
            cdim = self.clip_dim()
            item_vecs = {"text": dim} | ({"image": cdim, "clip_text": cdim} if cdim else {})
            from indexers.ingest import ITEM_INDEXES

            self.store.ensure_collection(self.items_col, item_vecs, ITEM_INDEXES)
            self.store.ensure_collection(self.events_col, {}, {"user_id": "keyword", "item_id": "keyword"})
            user_vecs = {"summary": dim} | {TASTE_PREFIX + k: v for k, v in item_vecs.items()}
            self.store.ensure_collection(self.users_col, user_vecs, {"user_id": "keyword"})
            self._collections_ready = True

    def _indexer(self) -> Any:
        from indexers.clip import ClipImageEncoder, ClipTextEncoder
        from indexers.ingest import ItemIndexer

        clip = self.clip
        summarizer = None
        if self.settings.ingest.summarizer == "llm":
            from indexers.summarize import LLMItemSummarizer

            summarizer = LLMItemSummarizer(self.llm, self.prompts, vision=self.settings.llm.vision)
        return ItemIndexer(
            self.store,
            self.items_col,
            self.text_encoder,
            ClipImageEncoder(clip) if clip else None,
            ClipTextEncoder(clip) if clip else None,
            summarizer=summarizer,
            config=self.settings.ingest,
        )

    # -- writing -------------------------------------------------------------------------------

    def add_items(
        self,
        items: Iterable[Item | Mapping[str, Any]] | str | Path,
        image_dir: str | Path | None = None,
        progress: bool = False,
        on_batch: Any = None,
        local_images: bool = True,
    ) -> IngestReport:
        """Index items (Item objects, dicts, or a JSONL/CSV/Parquet catalog path). Unchanged items
        are skipped; bad records are reported per item and the rest goes on. ``local_images=False``
        (the HTTP API) refuses image paths on this machine and accepts only URLs."""
        self._ensure_collections()
        if isinstance(items, (str, Path)):
            from indexers.catalog import read_catalog

            items = read_catalog(items, image_dir)
        return self._indexer().ingest(items, progress=progress, on_batch=on_batch, local_images=local_images)

    def add_events(self, events: Iterable[Event | Mapping[str, Any]]) -> EventReport:
        """Store interactions durably. The same event twice counts once; events naming unknown
        items are refused and reported."""
        self._ensure_collections()
        report = EventReport()
        valid: list[Event] = []
        for i, raw in enumerate(events):
            report.total += 1
            try:
                valid.append(raw if isinstance(raw, Event) else Event.model_validate(dict(raw)))
            except ValidationError as e:
                report.failed += 1
                err = e.errors()[0]
                report.errors.append(f"event {i}: {'.'.join(map(str, err['loc'])) or 'record'}: {err['msg']}")
            except (TypeError, ValueError) as e:
                report.failed += 1
                report.errors.append(f"event {i}: not a mapping ({e})")
        known = {h.payload["item_id"] for b in chunks(sorted({e.item_id for e in valid}), 1000) for h in self.store.retrieve(self.items_col, [point_id("item", i) for i in b])}
        popularity: Counter[str] = Counter()
        for batch in chunks(valid, 2000):
            pts = {}
            for e in batch:
                if e.item_id not in known:
                    report.failed += 1
                    report.errors.append(f"event for user {e.user_id}: unknown item {e.item_id!r}")
                    continue
                key = e.id or f"{e.user_id}|{e.item_id}|{e.timestamp!r}|{e.kind}"
                pid = point_id("event", key)
                if pid in pts:
                    report.duplicates += 1
                    continue
                pts[pid] = Point(id=pid, vectors={}, payload=e.model_dump())
            existing = {h.id for h in self.store.retrieve(self.events_col, list(pts))}
            new = [p for pid, p in pts.items() if pid not in existing]
            report.duplicates += len(pts) - len(new)
            self.store.upsert(self.events_col, new)
            report.added += len(new)
            popularity.update(p.payload["item_id"] for p in new)
        if popularity:
            ids = list(popularity)
            for b in chunks(ids, 500):
                for h in self.store.retrieve(self.items_col, [point_id("item", i) for i in b]):
                    iid = h.payload["item_id"]
                    self.store.set_payload(self.items_col, [h.id], {"popularity": float(h.payload.get("popularity") or 0) + popularity[iid]})
        self.store.flush()
        return report

    # -- reading -------------------------------------------------------------------------------

    def history(self, user_id: str) -> list[Event]:
        """A user's events, oldest first."""
        self._ensure_collections()
        hits = self.store.scroll(self.events_col, Filter(match={"user_id": str(user_id)}))
        return sorted((Event.model_validate(h.payload) for h in hits), key=lambda e: (e.timestamp, e.item_id))

    def item(self, item_id: str) -> dict[str, Any]:
        self._ensure_collections()
        hits = self.store.retrieve(self.items_col, [point_id("item", str(item_id))])
        if not hits:
            raise NotFoundError(f"unknown item {item_id!r}")
        return hits[0].payload

    def _items(self, item_ids: Sequence[str], with_vectors: bool = False) -> dict[str, Hit]:
        out = {}
        for b in chunks(list(item_ids), 1000):
            for h in self.store.retrieve(self.items_col, [point_id("item", i) for i in b], with_vectors=with_vectors):
                out[h.payload["item_id"]] = h
        return out

    def _require_user(self, user_id: str) -> list[Event]:
        events = self.history(user_id)
        if not events and not self.store.retrieve(self.users_col, [point_id("user", str(user_id))]):
            raise NotFoundError(f"unknown user {user_id!r}")
        return events

    def stats(self) -> dict[str, int]:
        self._ensure_collections()
        return {"items": self.store.count(self.items_col), "events": self.store.count(self.events_col), "users": self.store.count(self.users_col)}

    # -- user modeling -------------------------------------------------------------------------

    def _profiles(self) -> ProfileBuilder:
        return ProfileBuilder(self.settings, self.store, self.items_col, self.users_col, self.prompts, self.text_encoder, self.llm)

    def update_profiles(self, user_ids: Iterable[str] | None = None, use_llm: bool | None = None, progress: bool = False, before: float | None = None) -> dict[str, Any]:
        """Summarize new session blocks (batched across users) and refresh taste vectors.
        ``before`` limits histories to events earlier than that timestamp (evaluation)."""
        self._ensure_collections()
        if user_ids is None:
            user_ids = sorted({h.payload["user_id"] for h in self.store.scroll(self.events_col)})
        histories = {}
        for uid in user_ids:
            evs = self._require_user(str(uid))
            histories[str(uid)] = [e for e in evs if before is None or e.timestamp < before]
        return self._profiles().update(histories, use_llm=use_llm, progress=progress)

    def profile(self, user_id: str) -> Profile:
        events = self._require_user(str(user_id))
        st = self._profiles().load_state(str(user_id), with_vectors=True)
        thr = self.settings.profile.positive_rating
        pos = [e for e in events if is_positive(e, thr)]
        return Profile(
            user_id=str(user_id),
            n_events=len(events),
            n_positive=len(pos),
            n_blocks=st.n_blocks if st else 0,
            summary=st.summary if st else None,
            summary_source=st.summary_source if st else None,  # type: ignore[arg-type]
            versions=[SummaryVersion(**v) for v in (st.versions if st else [])],
            recent_items=[e.item_id for e in pos[-20:]][::-1],
            has_taste_vectors={k: True for k in (st.vectors if st else {})},
        )

    # -- retrieval -----------------------------------------------------------------------------

    def _user_context(self, user_id: str, events: list[Event]) -> dict[str, Any]:
        thr = self.settings.profile.positive_rating
        pos = [e for e in events if is_positive(e, thr)]
        neg = [e for e in events if not is_positive(e, thr)]
        items = self._items([e.item_id for e in events], with_vectors=True)
        from .profiles import taste_vectors

        taste = taste_vectors([e for e in pos if e.item_id in items], {i: h.vectors or {} for i, h in items.items()}, self.settings.profile.recency_half_life)
        st = self._profiles().load_state(user_id, with_vectors=True)
        return {"pos": pos, "neg": neg, "items": items, "taste": taste, "state": st}

    def _meaningful_clip(self) -> bool:
        # Random-weight CLIP vectors (pretrained=None) would only add noise to ranking.
        return self.settings.clip.enabled and self.settings.clip.pretrained is not None

    def _retrieve(self, user_id: str, events: list[Event], limit: int, flt: Filter, ctx: dict[str, Any] | None = None) -> tuple[list[Hit], str, dict[str, Any]]:
        ctx = ctx or self._user_context(user_id, events)
        pos, items, taste, st = ctx["pos"], ctx["items"], ctx["taste"], ctx["state"]
        rc = self.settings.retrieval
        n = max(rc.candidates, limit)
        if not pos:
            return self._popular(limit, flt), "popular", ctx
        recent = [items[e.item_id].vectors for e in reversed(pos) if e.item_id in items and items[e.item_id].vectors][: rc.recent_positives]
        negs = [items[e.item_id].vectors for e in reversed(ctx["neg"]) if e.item_id in items and items[e.item_id].vectors][:5]
        queries = [VectorQuery("text", positives=[v["text"] for v in recent if "text" in v], negatives=[v["text"] for v in negs if "text" in v], limit=n)]
        strategy = "item-to-item"
        if len(pos) > 2:
            strategy = "retrieval"
            if "taste_text" in taste:
                queries.append(VectorQuery("text", vector=taste["taste_text"], limit=n))
            if st is not None and "summary" in st.vectors:
                queries.append(VectorQuery("text", vector=st.vectors["summary"], limit=n, weight=0.5))
        # Popularity prior: on real catalogs, well-liked items are strong candidates for everyone.
        queries.append(VectorQuery("text", vector=None, limit=n, weight=rc.popularity_weight, order_by="popularity"))
        if self._meaningful_clip():
            for name in ("image", "clip_text"):
                if TASTE_PREFIX + name in taste:
                    queries.append(VectorQuery(name, vector=taste[TASTE_PREFIX + name], limit=n, weight=0.5))
        queries = [q for q in queries if (q.vector is not None or q.positives or q.order_by) and q.weight > 0]
        hits = self.store.query(self.items_col, queries, limit=limit, flt=flt, with_vectors=True, rrf_k=rc.rrf_k)
        return hits, strategy, ctx

    def _popular(self, k: int, flt: Filter) -> list[Hit]:
        """Cold start: popular items, diversified by genre (no genre set repeated before all have had a turn)."""
        pool = self.store.top_by(self.items_col, "popularity", max(5 * k, 50), flt)
        picked, rest, seen_genres = [], [], set()
        for h in pool:
            g = tuple(sorted((h.payload.get("attributes") or {}).get("genres") or []))
            (rest if g and g[0] in seen_genres else picked).append(h)
            if g:
                seen_genres.add(g[0])
        return (picked + rest)[:k]

    def _mmr(self, hits: list[Hit], k: int, lam: float) -> list[Hit]:
        vecs = [np.asarray((h.vectors or {}).get("text", []), np.float32) for h in hits]
        chosen: list[int] = []
        scores = np.array([h.score for h in hits], np.float32)
        if scores.size and scores.max() > scores.min():
            scores = (scores - scores.min()) / (scores.max() - scores.min())
        while len(chosen) < min(k, len(hits)):
            best, best_val = -1, -1e9
            for i in range(len(hits)):
                if i in chosen:
                    continue
                sim = max((float(vecs[i] @ vecs[j]) for j in chosen if vecs[i].size and vecs[j].size), default=0.0)
                val = lam * scores[i] - (1 - lam) * sim
                if val > best_val:
                    best, best_val = i, val
            chosen.append(best)
        return [hits[i] for i in chosen]

    def _reason(self, hit: Hit, ctx: dict[str, Any]) -> tuple[str | None, list[str]]:
        """Ground the reason in the user's own history: the most similar liked item."""
        vec = (hit.vectors or {}).get("text")
        best, best_sim = None, -2.0
        for e in ctx["pos"][-50:]:
            h = ctx["items"].get(e.item_id)
            if h is None or not vec or "text" not in (h.vectors or {}):
                continue
            sim = cosine(vec, h.vectors["text"])
            if sim > best_sim:
                best, best_sim = h, sim
        if best is None:
            return ("Popular with other users" if not ctx["pos"] else None), []
        shared = sorted(set((hit.payload.get("attributes") or {}).get("genres") or []) & set((best.payload.get("attributes") or {}).get("genres") or []))
        extra = f" (also {', '.join(shared[:2])})" if shared else ""
        return f"Because you liked {best.payload.get('title') or best.payload['item_id']}{extra}", [best.payload["item_id"]]

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        filters: Mapping[str, Any] | None = None,
        explain: bool = False,
        rerank: str | None = None,
        exclude_seen: bool = True,
    ) -> Recommendations:
        """Top-``k`` items for a user: Qdrant retrieval (fused multi-vector queries, filters, seen
        items excluded), optional MMR diversity and LLM re-ranking (``pointwise``/``listwise``)."""
        if not 1 <= k <= 1000:
            raise InvalidInputError("k must be between 1 and 1000")
        rerank = rerank or self.settings.retrieval.rerank
        if rerank not in ("none", "pointwise", "listwise"):
            raise InvalidInputError("rerank must be none, pointwise or listwise")
        self._ensure_collections()
        user_id = str(user_id)
        events = self.history(user_id)  # an unknown user is a cold start: popular, diverse items
        flt = parse_filter(filters)
        if exclude_seen:
            flt.exclude_ids |= {point_id("item", e.item_id) for e in events}
        rc = self.settings.retrieval
        limit = max(k, rc.rerank_candidates if rerank != "none" else 0, 3 * k if rc.mmr_lambda is not None else 0)
        hits, strategy, ctx = self._retrieve(user_id, events, limit, flt)
        fallback = None
        if rerank != "none" and strategy != "popular" and len(hits) > 1:
            hits, fallback = self._rerank(rerank, hits[: rc.rerank_candidates], ctx)
            strategy += f"+llm-{rerank}"
        if rc.mmr_lambda is not None:
            hits = self._mmr(hits, k, rc.mmr_lambda)
            strategy += "+mmr"
        out = []
        for h in hits[:k]:
            reason, because = self._reason(h, ctx)
            out.append(Recommendation(item_id=h.payload["item_id"], score=h.score, title=h.payload.get("title", ""), reason=reason, because_of=because))
        if explain:
            for r in out:
                try:
                    ex = self.explain(user_id, r.item_id, _ctx=ctx)
                    r.reason, r.because_of = ex.text, ex.grounded_in
                except BackendUnavailableError as e:
                    fallback = fallback or f"explanations: {e}"
        return Recommendations(user_id=user_id, items=out, strategy=strategy, fallback=fallback)

    # -- generation ----------------------------------------------------------------------------

    def _history_rows(self, ctx: dict[str, Any], n: int = 8) -> list[dict[str, Any]]:
        rows = []
        for e in reversed(ctx["pos"]):
            h = ctx["items"].get(e.item_id)
            if h is not None:
                rows.append(_row(h))
            if len(rows) == n:
                break
        return rows

    def _summary(self, ctx: dict[str, Any]) -> str | None:
        st = ctx["state"]
        return st.summary if st is not None else None

    def yes_no_prompts(self, user_id: str, item_ids: Sequence[str], ctx: dict[str, Any] | None = None, prompt: str = "preference_yes_no") -> list[str]:
        ctx = ctx or self._user_context(user_id, self._require_user(user_id))
        cands = self._items(item_ids)
        missing = [i for i in item_ids if i not in cands]
        if missing:
            raise NotFoundError(f"unknown item(s): {', '.join(map(repr, missing[:5]))}")
        history, summary = self._history_rows(ctx), self._summary(ctx)
        return [self.prompts.render(prompt, summary=summary, history=history, candidate=_row(cands[i])) for i in item_ids]

    def score(self, user_id: str, item_ids: Sequence[str], prompt: str = "preference_yes_no") -> list[ItemScore]:
        """P(user likes item) from the LLM's Yes/No logprobs, one batched request for all items."""
        if not item_ids:
            return []
        prompts = self.yes_no_prompts(str(user_id), [str(i) for i in item_ids], prompt=prompt)
        probs = self.llm().yes_probabilities(prompts)
        if len(probs) != len(prompts):
            raise BackendUnavailableError("LLM returned a wrong number of scores")
        return [ItemScore(item_id=str(i), probability=0.5 if p is None else float(p)) for i, p in zip(item_ids, probs)]

    def _rerank(self, mode: str, hits: list[Hit], ctx: dict[str, Any]) -> tuple[list[Hit], str | None]:
        try:
            llm = self.llm()
            history, summary = self._history_rows(ctx), self._summary(ctx)
            if mode == "pointwise":
                prompts = [self.prompts.render("preference_yes_no", summary=summary, history=history, candidate=_row(h)) for h in hits]
                probs = llm.yes_probabilities(prompts)
                if len(probs) != len(hits) or any(p is None for p in probs):
                    return hits, "LLM gave no Yes/No probability; retrieval order kept"
                order = sorted(range(len(hits)), key=lambda i: (-float(probs[i]), i))  # type: ignore[arg-type]
                return [_rescored(hits[i], float(probs[i])) for i in order], None  # type: ignore[arg-type]
            hits = hits[: len(LABELS)]
            labels = LABELS[: len(hits)]
            cands = [dict(_row(h), label=lab) for h, lab in zip(hits, labels)]
            prompt = self.prompts.render("rank_listwise", summary=summary, history=history, candidates=cands)
            chosen = llm.choose_sequence(prompt, labels, len(labels))
            valid, seen = [], set()
            for lab in chosen:
                if lab in labels and lab not in seen:
                    valid.append(lab)
                    seen.add(lab)
            problem = None
            if len(valid) != len(chosen):
                problem = "LLM ranking had unknown or duplicate ids; they were dropped"
            if len(valid) < len(labels):
                problem = problem or "LLM ranking was truncated; the rest kept retrieval order"
            order = [labels.index(lab) for lab in valid] + [i for i, lab in enumerate(labels) if lab not in seen]
            n = len(order)
            return [_rescored(hits[i], (n - r) / n) for r, i in enumerate(order)], problem
        except BackendUnavailableError as e:
            return hits, f"LLM unavailable, retrieval order kept: {e}"

    def explain(self, user_id: str, item_id: str, _ctx: dict[str, Any] | None = None) -> Explanation:
        """Why ``item_id`` suits the user, citing items from the user's own history."""
        user_id, item_id = str(user_id), str(item_id)
        target = self._items([item_id], with_vectors=True).get(item_id)
        if target is None:
            raise NotFoundError(f"unknown item {item_id!r}")
        ctx = _ctx or self._user_context(user_id, self._require_user(user_id))
        vec = (target.vectors or {}).get("text")
        liked = [ctx["items"][e.item_id] for e in ctx["pos"] if e.item_id in ctx["items"]]
        liked.sort(key=lambda h: -cosine(vec, h.vectors["text"]) if vec and "text" in (h.vectors or {}) else 0.0)
        grounding = liked[:3]
        if not grounding:
            return Explanation(user_id=user_id, item_id=item_id, text="Popular with other users.", grounded_in=[], source="template")
        try:
            llm = self.llm()
            prompt = self.prompts.render("explain", history=[_row(h) for h in grounding], item=_row(target))
            text = llm.generate([prompt], self.settings.llm.max_new_tokens, stop=["\n"])[0]
            text = "You may like this because " + text.strip()
            cited = [h.payload["item_id"] for h in grounding if _title_key(h.payload.get("title", "")) in text.lower()]
            if text.strip() and not _INJECTION.search(text) and cited:
                return Explanation(user_id=user_id, item_id=item_id, text=text[:500], grounded_in=cited, source="llm")
        except BackendUnavailableError:
            pass
        reason, because = self._reason(target, ctx)
        return Explanation(user_id=user_id, item_id=item_id, text=reason or "", grounded_in=because, source="template")

    # -- personalized search -------------------------------------------------------------------

    def search(
        self,
        query: str | bytes | Path | Any,
        user_id: str | None = None,
        k: int = 10,
        filters: Mapping[str, Any] | None = None,
    ) -> list[SearchHit]:
        """Items matching a text query (or an image: bytes, a path or a PIL image), re-ordered for
        the user when ``user_id`` is given by blending query relevance with the user's taste."""
        if not 1 <= k <= 1000:
            raise InvalidInputError("k must be between 1 and 1000")
        self._ensure_collections()
        flt = parse_filter(filters)
        n = max(self.settings.retrieval.candidates, k)
        if isinstance(query, str):
            if not query.strip():
                raise InvalidInputError("empty query")
            qv = self.text_encoder.encode([query[:2000]])[0].tolist()
            queries = [VectorQuery("text", vector=qv, limit=n)]
            if self._meaningful_clip() and self.clip is not None:
                cq = self.clip.encode_texts([query[:300]])[0].tolist()
                queries += [VectorQuery("image", vector=cq, limit=n, weight=0.5), VectorQuery("clip_text", vector=cq, limit=n, weight=0.5)]
            using = "text"
        else:
            if self.clip is None:
                raise BackendUnavailableError(f"image search needs CLIP weights: {self._clip_error or 'CLIP disabled'}")
            from indexers.images import decode_image

            if isinstance(query, Path):
                query = query.read_bytes()
            img = decode_image(query, self.settings.ingest.max_image_pixels, "query image") if isinstance(query, (bytes, bytearray)) else query
            qv = self.clip.encode_images([img])[0].tolist()
            queries, using = [VectorQuery("image", vector=qv, limit=n)], "image"
        hits = self.store.query(self.items_col, queries, limit=n, flt=flt, with_vectors=True)
        rel = np.array([cosine(qv, (h.vectors or {}).get(using, [])) if (h.vectors or {}).get(using) else 0.0 for h in hits], np.float32)
        personal = None
        if user_id is not None:
            events = self._require_user(str(user_id))
            ctx = self._user_context(str(user_id), events)
            taste = ctx["taste"].get(TASTE_PREFIX + "text")
            if taste is not None:
                personal = np.array([cosine(taste, (h.vectors or {}).get("text", [])) if (h.vectors or {}).get("text") else 0.0 for h in hits], np.float32)
        w = self.settings.retrieval.search_profile_weight
        score = _minmax(rel) if personal is None else (1 - w) * _minmax(rel) + w * _minmax(personal)
        order = np.argsort(-score, kind="stable")[:k]
        return [
            SearchHit(
                item_id=hits[i].payload["item_id"], title=hits[i].payload.get("title", ""), score=float(score[i]),
                relevance=float(rel[i]), personal=None if personal is None else float(personal[i]),
            )
            for i in order
        ]


def _minmax(x: np.ndarray) -> np.ndarray:
    if x.size == 0 or float(x.max() - x.min()) < 1e-9:
        return np.zeros_like(x)
    return (x - x.min()) / (x.max() - x.min())


def _row(h: Hit) -> dict[str, Any]:
    p = h.payload
    from indexers.ingest import genres_of

    return {"id": p["item_id"], "title": p.get("title", ""), "genres": genres_of(p.get("attributes") or {}), "summary": p.get("summary") or ""}


def _rescored(h: Hit, score: float) -> Hit:
    return Hit(id=h.id, score=score, payload=h.payload, vectors=h.vectors)


def _title_key(title: str) -> str:
    """Title without a trailing year, lower-case, for checking that an explanation cites it."""
    return re.sub(r"\s*\(\d{4}\)\s*$", "", title).lower().strip()
