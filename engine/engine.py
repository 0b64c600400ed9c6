"""The Persona engine: a thin facade over one module per pipeline stage.

Data flows one way: ``indexers`` (via :mod:`engine.components`) write items; :mod:`engine.events` stores interactions;
:mod:`engine.profiles` models users; :mod:`engine.fitting` trains the model that :mod:`engine.serving` ranks with, and
:mod:`engine.retrieval` finds candidates without one;
:mod:`engine.ranking` re-ranks and diversifies; :mod:`engine.explain` says why; :mod:`engine.search` serves queries.
See docs/architecture.md."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import explain as explaining
from . import imagine
from .components import Components
from .config import Settings
from .errors import BackendUnavailableError, InvalidInputError
from .events import EventLog
from .fitting import LearnedStage
from .items import ItemCatalog
from .llm import LLM
from .llm_feature import fit_and_save, load_stage, yes_scores
from .profiles import ProfileBuilder, UserContext
from .prompts import PromptRegistry
from .ranking import RERANK_MODES, LLMReranker, mmr, pointwise_prompts
from .retrieval import Retriever
from .schema import Collections
from .search import Searcher
from .serving import ModelServing, hits_limit
from .store import Filter, VectorStore, open_store, parse_filter, point_id
from .types import (
    DeleteReport,
    Event,
    EventReport,
    Explanation,
    FitReport,
    IngestReport,
    Item,
    ItemScore,
    Profile,
    Recommendation,
    Recommendations,
    SearchHit,
)

__all__ = ["Components", "Engine"]


class Engine:
    """Open with :meth:`Engine.open`; use as a context manager or call :meth:`close`."""

    def __init__(self, settings: Settings, store: VectorStore, components: Components | None = None) -> None:
        self.settings, self.store = settings, store
        self.components = (components or Components()).bind(settings)
        self.collections = Collections.named(settings.collection_prefix)
        self.items_col, self.events_col, self.users_col = self.collections.items, self.collections.events, self.collections.users
        self.prompts = PromptRegistry(settings.prompts_dir, settings.prompt_versions)
        self._lock, self._profiles_lock = threading.RLock(), threading.Lock()
        comps = self.components
        self.catalog = ItemCatalog(store, self.items_col)
        self.event_log = EventLog(store, self.events_col, self.users_col, self.catalog)
        self.profiles = ProfileBuilder(settings, store, self.catalog, self.users_col, self.prompts, lambda: comps.text_encoder, comps.llm)
        self.retriever = Retriever(settings, store, self.items_col)
        self.ranker = LLMReranker(self.prompts, comps.llm)
        self.searcher = Searcher(settings, store, self.items_col, comps)
        self.learned = LearnedStage(settings, store, self.items_col, self.events_col, self.catalog, self.users_col)
        self.serving = ModelServing(settings, store, self.items_col, self.catalog, self.learned)

    # -- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path | None = None, config: Settings | Mapping[str, Any] | None = None,
             components: Components | None = None) -> Engine:
        """Open (or create) an engine. ``path`` holds the embedded store; ``config`` is a :class:`Settings` or a dict of its
        fields (``PERSONA_*`` environment variables fill the rest); ``components`` injects ready models."""
        try:
            settings = config if isinstance(config, Settings) else Settings(**dict(config or {}))
        except ValidationError as e:
            raise InvalidInputError(f"invalid configuration: {e}") from e
        if path is not None:
            settings = settings.model_copy(update={"path": Path(path)})
        assert settings.path is not None
        Path(settings.path).mkdir(parents=True, exist_ok=True)
        return cls(settings, open_store(Path(settings.path), settings.qdrant_url, settings.qdrant_api_key, settings.cluster.collection_options(),
                                        quantization=settings.quantization), components)

    def close(self) -> None:
        with self._lock:
            try:
                self.serving.close()  # a ranking under way reads the store
                self.components.close()
            finally:  # the store's lock must go even when a component fails to close
                self.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- components (loaded on first use so opening is fast) -----------------------------------

    @property
    def text_encoder(self) -> Any:
        return self.components.text_encoder

    @property
    def clip(self) -> Any:
        """The CLIP model, or None when disabled or its weights cannot be loaded (documented fallback)."""
        return self.components.clip

    def clip_dim(self) -> int | None:
        return self.components.clip_dim()

    def llm(self) -> LLM:
        """The LLM backend; raises BackendUnavailableError when it is disabled or cannot load."""
        return self.components.llm()

    def _ready(self) -> None:
        self.collections.ensure(self.store, self.components)

    # -- writing -------------------------------------------------------------------------------

    def add_items(self, items: Iterable[Item | Mapping[str, Any]] | str | Path, image_dir: str | Path | None = None,
                  progress: bool = False, on_batch: Any = None, local_images: bool = True, ray: Any = None) -> IngestReport:
        """Index items (Item objects, dicts, or a JSONL/CSV/Parquet catalog path). Unchanged items
        are skipped; bad records are reported per item and the rest goes on. ``local_images=False``
        (the HTTP API) refuses image paths on this machine and accepts only URLs (``ray``: a RayBatch encodes on Ray)."""
        self._ready()
        if isinstance(items, (str, Path)):
            items = self.components.read_catalog(items, image_dir, self.settings.ingest.allow_image_paths_outside_catalog)
        items = list(items) if ray is not None else items  # encoded on Ray first, then written
        indexer = self.components.indexer(self.store, self.items_col, self.prompts, recount_popularity=self.event_log.recount, ray=ray, records=items)
        self.catalog.forget()  # here too: a list ranked while items are rewritten is not kept past the ingest
        try:
            return indexer.ingest(items, progress=progress, on_batch=on_batch, local_images=local_images)
        finally:
            self.catalog.forget()

    def add_events(self, events: Iterable[Event | Mapping[str, Any]]) -> EventReport:
        """Store interactions durably (the same event twice counts once; events naming unknown items are refused, reported), then queue the ranking of a small batch's users' lists (``retrieval.warm_users``)."""
        self._ready()
        report = self.event_log.add(events := list(events))
        self.serving.warm(events, self.event_log.history)
        return report

    def delete_items(self, item_ids: Iterable[str]) -> DeleteReport:
        """Remove items with every event about them; lists (a fitted model's too) stop showing them at once, and the next
        fit forgets them. Idempotent: ids not in the catalog are listed in ``not_found``."""
        if isinstance(item_ids, str | bytes):
            raise InvalidInputError("item_ids must be a list of ids (a string would be read as its characters)")
        self._ready()
        found = sorted(self.catalog.known(ids := list(dict.fromkeys(str(i) for i in item_ids))))
        self.catalog.delete(found)  # items first, then events of every id asked: a retry removes any that raced in
        n = self.event_log.delete(Filter(match={"item_id": ids})) if ids else 0
        return DeleteReport(items=len(found), events=n, not_found=sorted(set(ids) - set(found)))

    def delete_user(self, user_id: str) -> DeleteReport:
        """Remove a user's events and profile (summaries, taste and cf vectors) and recount their items' popularity; a
        fitted model keeps only what it learned in aggregate until the next fit. Idempotent."""
        self._ready()
        with self._profiles_lock:  # a profile update running here would write the user's point back from old events
            n = self.event_log.delete(Filter(match={"user_id": str(user_id)}))
            had = self.profiles.delete(str(user_id))
            self.serving.drop(str(user_id))
        return DeleteReport(users=int(had or n > 0), events=n, not_found=[] if had or n else [str(user_id)])

    # -- reading -------------------------------------------------------------------------------

    def history(self, user_id: str) -> list[Event]:
        """A user's events, oldest first."""
        self._ready()
        return self.event_log.history(user_id)

    def item(self, item_id: str) -> dict[str, Any]:
        self._ready()
        return self.catalog.get(item_id)

    def stats(self) -> dict[str, int]:
        self._ready()
        return {"items": self.store.count(self.items_col), "events": self.store.count(self.events_col), "users": self.store.count(self.users_col)}

    def _require_user(self, user_id: str) -> list[Event]:
        self._ready()
        return self.event_log.require_user(str(user_id))

    # -- user modeling -------------------------------------------------------------------------

    def update_profiles(self, user_ids: Iterable[str] | None = None, use_llm: bool | None = None, progress: bool = False, before: float | None = None,
                        ray: Any = None) -> dict[str, Any]:
        """Summarize new session blocks (batched across users) and refresh taste vectors. ``before`` limits histories to
        events earlier than that timestamp (evaluation); ``ray`` (a RayBatch) runs the LLM steps on its actor pool."""
        self._ready()
        with self._profiles_lock:  # delete_user waits: a deleted user must not be written back
            histories = {str(u): [e for e in self._require_user(str(u)) if before is None or e.timestamp < before]
                         for u in (self.event_log.user_ids() if user_ids is None else user_ids)}
            return self.profiles.update(histories, use_llm=use_llm, progress=progress, ray=ray)

    def profile(self, user_id: str) -> Profile:
        return self.profiles.profile(str(user_id), self._require_user(user_id))

    def user_context(self, user_id: str, events: list[Event] | None = None) -> UserContext:
        """What retrieval, ranking and explanation know about a user (liked/other events, their items, taste vectors, the
        profile). ``events`` replaces the stored history (e.g. a training split); else an unknown user is NotFoundError."""
        user_id = str(user_id)
        return self.profiles.context(user_id, self._require_user(user_id) if events is None else events)

    # -- recommendation ------------------------------------------------------------------------

    def recommend(self, user_id: str, k: int = 10, filters: Mapping[str, Any] | None = None, explain: bool = False,
                  rerank: str | None = None, exclude_seen: bool = True) -> Recommendations:
        """Top-``k`` items for a user: Qdrant retrieval (fused multi-vector queries, filters, seen
        items excluded), optional MMR diversity and LLM re-ranking (``pointwise``/``listwise``)."""
        if not 1 <= k <= 1000:
            raise InvalidInputError("k must be between 1 and 1000")
        rerank = rerank or self.settings.retrieval.rerank
        if rerank not in RERANK_MODES:
            raise InvalidInputError(f"rerank must be one of {', '.join(RERANK_MODES)}")
        user_id, rc = str(user_id), self.settings.retrieval
        epoch, events = self.serving.epoch(), self.history(user_id)  # unknown user: a cold start, popular and diverse
        flt = parse_filter(filters)
        if exclude_seen:
            flt.exclude_ids |= {point_id("item", e.item_id) for e in events}
        limit = hits_limit(rc, k, rerank)
        model = self.learned.current() if events else None
        ctx = None if model is not None and rerank == "none" and not explain else self.profiles.context(user_id, events)
        if model is not None:
            (hits, reasons), strategy = self.serving.hits(model, events, limit, flt, rc.mmr_lambda is not None, exclude_seen, epoch), "learned"
        else:
            hits, strategy = self.retriever.retrieve(ctx, limit, flt)
        fallback = None
        if rerank != "none" and strategy != "popular" and len(hits) > 1:
            stage = load_stage(self.learned.root, model) if rerank == "llm_feature" and model is not None else None
            hits[: rc.rerank_candidates], fallback = self.ranker.rerank(rerank, hits[: rc.rerank_candidates], ctx, stage=stage)
            strategy += f"+llm-{rerank}"
        if rc.mmr_lambda is not None:
            hits, strategy = mmr(hits, k, rc.mmr_lambda), strategy + "+mmr"
        out = []
        for h in hits[:k]:
            reason, because = reasons[h.payload["item_id"]] if model is not None else explaining.reason(h, ctx)
            out.append(Recommendation(item_id=h.payload["item_id"], score=h.score, title=h.payload.get("title", ""), reason=reason, because_of=because))
        if explain:
            note = explaining.explain_all(out, lambda r: self._explain(r.item_id, lambda: ctx, r.because_of))
            fallback = "; ".join(x for x in (fallback, note) if x) or None
        return Recommendations(user_id=user_id, items=out, strategy=strategy, fallback=fallback,
                               model_version=model.info.get("version") if model is not None else None)

    def rank(self, user_id: str, item_ids: Sequence[str]) -> list[Recommendation]:
        """``item_ids`` ordered for the user, best first, with exactly the scores :meth:`recommend` gives them (items the
        ranking cannot score last, with -inf). Used for sampled metrics and for re-ordering a caller's own shortlist."""
        user_id, ids = str(user_id), [str(i) for i in item_ids]
        events = self.history(user_id)
        model = self.learned.current() if events else None
        if model is not None:
            ranked = self.serving.rank(model, events, ids)
        else:
            flt = Filter(include_ids={point_id("item", i) for i in ids})
            hits, _ = self.retriever.retrieve(self.profiles.context(user_id, events), len(ids), flt)
            got = {h.payload["item_id"]: h.score for h in hits}
            ranked = sorted(((i, got.get(i, float("-inf"))) for i in ids), key=lambda t: -t[1])
        titles = self.catalog.rows([i for i, s in ranked if s != float("-inf")])  # a fitted model also knows deleted items
        ranked = sorted(((i, s if i in titles else float("-inf")) for i, s in ranked), key=lambda t: -t[1])
        return [Recommendation(item_id=i, score=s, title=(titles.get(i) or {}).get("title", "")) for i, s in ranked]

    def fit(self, progress: bool = False, ray: Any = None) -> FitReport:
        """Train the learned recommender from the stored events alone (each user's last event is the ranker's label); the new
        version is current for the next :meth:`recommend`. Re-run it as data grows (``ray``: a RayBatch computes features)."""
        self._ready()
        report = self.learned.fit(progress=progress, ray=ray)
        if self.settings.fit.llm_feature_users > 0:  # the LLM stage (engine.llm_feature), saved beside the model
            report.info["llm_stage"] = fit_and_save(self.learned.current(), report.path, self.event_log, self.profiles.context,
                                                    self.catalog.rows, self.llm(), self.prompts, self.settings, progress)
        return report

    # -- generation ----------------------------------------------------------------------------

    def yes_no_prompts(self, user_id: str, item_ids: Sequence[str], ctx: UserContext | None = None, prompt: str = "preference_yes_no") -> list[str]:
        """The pointwise Yes/No prompts :meth:`score` sends, one per item (``ctx``: see :meth:`user_context`)."""
        ctx = ctx or self.user_context(user_id)
        return pointwise_prompts(self.prompts, self.catalog.require_rows(item_ids), ctx.summary, ctx.history_rows(), prompt)

    def score(self, user_id: str, item_ids: Sequence[str], prompt: str = "preference_yes_no") -> list[ItemScore]:
        """P(user likes item) from the LLM's Yes/No logprobs, one batched request for all items (the same shared-prefix
        prompts as the pointwise / llm_feature rerank: one P(Yes) per item everywhere)."""
        if not item_ids:
            return []
        ctx, rows = self.user_context(str(user_id)), self.catalog.require_rows([str(i) for i in item_ids])
        probs = yes_scores(self.llm(), self.prompts, rows, ctx.summary, ctx.history_rows(), prompt)
        if len(probs) != len(rows):
            raise BackendUnavailableError("LLM returned a wrong number of scores")
        return [ItemScore(item_id=str(i), probability=0.5 if p is None else float(p)) for i, p in zip(item_ids, probs)]

    def explain(self, user_id: str, item_id: str) -> Explanation:
        """Why ``item_id`` suits the user: one sentence naming the history item the fitted ranker ties
        to it (else the most similar liked item) and the genres they share; checked, else the template."""
        events, item_id = self._require_user(str(user_id)), str(item_id)
        model = self.learned.current()
        why = self.serving.recommend(model, events, 1, Filter(include_ids={point_id("item", item_id)})) if model is not None else []
        return self._explain(item_id, lambda: self.user_context(str(user_id)), [w for _, _, w in why if w])

    def _explain(self, item_id: str, ctx: Callable[[], UserContext], because: list[str] | None = None) -> Explanation:
        return explaining.explain_item(self.catalog, item_id, ctx, self.prompts, self.llm, self.settings.llm.max_new_tokens, because)

    def generate_image(self, user_id: str, prompt: str | None = None, *, n: int = 1, reference_item: str | None = None,
                       seed: int | None = None, steps: int | None = None, size: int | tuple[int, int] | None = None) -> imagine.GeneratedImages:
        """Images for the user: ``prompt`` (else a film poster) blended with their taste; ``reference_item``
        starts from that item's image (img2img). See :mod:`engine.imagine`; limits in ``settings.image``."""
        imagine.check_request(self.settings.image, n, steps, size)
        ref = None if reference_item is None else self.item(str(reference_item))
        return imagine.generate(self.user_context(str(user_id)), self.prompts, self.components, self.settings.image,
                                prompt=prompt, n=n, reference=ref, seed=seed, steps=steps, size=size)

    # -- personalized search -------------------------------------------------------------------

    def search(self, query: str | bytes | Path | Any, user_id: str | None = None, k: int = 10,
               filters: Mapping[str, Any] | None = None) -> list[SearchHit]:
        """Items matching a text query (or an image: bytes, a path or a PIL image), re-ordered for
        the user when ``user_id`` is given by blending query relevance with the user's taste."""
        if not 1 <= k <= 1000:
            raise InvalidInputError("k must be between 1 and 1000")
        self._ready()
        user = None if user_id is None else (lambda: self.user_context(str(user_id)))
        return self.searcher.search(query, k, parse_filter(filters), user)
