"""Validated configuration. Every field is documented; every field can be set from the
environment as ``PERSONA_<FIELD>`` or, for nested sections, ``PERSONA_<SECTION>__<FIELD>``
(e.g. ``PERSONA_LLM__URL=http://localhost:8000/v1``). The sections of the models, ingestion, images and the
cluster layout live in ``engine.sections`` (their classes are importable from here too; the ``PACKAGED_*`` model names
from there)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .sections import (
    ClipConfig,
    ClusterConfig,
    ImageConfig,
    IngestConfig,
    LLMConfig,
    Section,
    TextEncoderConfig,
)

__all__ = ["Settings", "FitConfig", "TextEncoderConfig", "ClipConfig", "LLMConfig", "SessionConfig", "ProfileConfig",
           "RetrievalConfig", "IngestConfig", "ImageConfig", "ClusterConfig"]


class SessionConfig(Section):
    gap_s: float = Field(3600.0, gt=0)
    """A new session block starts after this many seconds without events."""
    max_block_items: int = Field(20, ge=1)
    """A block is closed once it holds this many events."""


class ProfileConfig(Section):
    positive_rating: float = 4.0
    """Ratings at or above this count as positive; events without a rating always count as positive."""
    recency_half_life: float = Field(20.0, gt=0)
    """Half-life, in events, of the recency weight in taste vectors."""
    summary_items_per_block: int = Field(8, ge=1)
    """Items shown to the LLM per block update (the most recent positives)."""
    negative_rating: float = 2.0
    """Ratings at or below this count as dislikes in structured summaries and in their faithfulness check."""
    summary_max_new_tokens: int = Field(120, ge=16, le=1024)
    """Token budget of one structured summary (a JSON object: liked, disliked, liked_items, note)."""
    max_blocks_per_update: int | None = Field(4, ge=1)
    """At most this many LLM steps per user per update; an older backlog is folded into one block (None: no cap)."""
    use_llm: bool = True
    """Write preference summaries with the LLM; when false (or no LLM is reachable) an extractive summary is used."""


class RetrievalConfig(Section):
    candidates: int = Field(100, ge=1, le=2000)
    """Candidates fetched per prefetch before fusion."""
    rrf_k: int = Field(60, ge=1)
    """Reciprocal-rank-fusion constant."""
    recent_positives: int = Field(10, ge=1)
    """Most recent positive items used as examples in the recommend query."""
    popularity_weight: float = Field(0.2, ge=0)
    """Weight of the popularity prefetch in the fusion (0 disables it; below 1 it separates candidates more, see VectorStore.query)."""
    mmr_lambda: float | None = Field(None, ge=0, le=1)
    """Diversify the final list with MMR (1 = relevance only); ``None`` disables it."""
    search_profile_weight: float = Field(0.35, ge=0, le=1)
    """In personalized search, how much the user's profile counts against query relevance."""
    rerank: Literal["none", "pointwise", "listwise", "llm_feature"] = "none"
    """LLM re-ranking of the retrieved candidates; ``llm_feature`` reorders the fitted ranker's top ``rerank_candidates`` by the LLM stage trained by ``fit.llm_feature_users`` (off by default: docs/llm-ablation.md)."""
    rerank_candidates: int = Field(20, ge=2, le=200)
    """How many retrieved candidates the LLM sees when re-ranking."""
    cache_users: int = Field(10_000, ge=0)
    """Users whose latest list from the fitted model this process keeps (``engine.listcache``; a few KB each: the ids, scores and reasons of one list): a request whose user's history, model and catalog are as when it was ranked reads it. 0: off."""
    cache_ttl_s: float = Field(300.0, ge=0)
    """A kept list is read for at most this many seconds after its ranking started (0: until the history, model or catalog changes). Within one process every change is seen at once; this bounds how long another process's catalog writes (API replicas sharing a Qdrant server: an item re-ingested with a new text) stay unseen in a list of a user who does nothing. An item deleted anywhere is never served (its payload is gone); items new since the fit wait for the next fit either way."""
    warm_users: int = Field(8, ge=0, le=10_000)
    """``add_events`` queues the ranking of the lists of the users a batch touched, when they are at most this many (a live user's event, not a bulk load), on one background thread: the request that follows reads it from ``cache_users``, or waits for it if it is under way. 0: never."""


class FitConfig(Section):
    """The learned recommender that :meth:`Engine.fit` trains (collaborative ALS vectors, transition
    and co-occurrence statistics, popularity/trend, LightGBM ranker). Defaults chosen on the ml-100k
    validation split (second-to-last events; ``bench/learned_val.py``)."""

    use_model: bool = True
    """Rank with the fitted model when one exists; ``False`` keeps the content/popularity fusion."""
    pool_size: int = Field(300, ge=10, le=5000)
    """Candidates the sources put in the pool the ranker scores."""
    cf_factors: int = Field(64, ge=2, le=1024)
    """Dimensions of the collaborative (ALS) item and user vectors."""
    label_folds: int = Field(4, ge=1, le=5)
    """Ranker labels per user: the last ``label_folds`` stored events, each with the events before it as the history (stage 1 refitted without it). Valid, seeds 0-9 (``bench/learned_val.py``): 2 -> 3 NDCG@10 0.1453 -> 0.1482 (session 29); 3 -> 4 -> 5 0.1478 -> 0.1517 -> 0.1511, AUC 1:20 0.9305 / 0.9306 / 0.9310 (session 30); about 3 s of fit per fold on ml-100k."""
    threads: int = Field(2, ge=1, le=256)
    """CPU threads for ALS, the sequence model and LightGBM."""
    sequence_epochs: int = Field(39, ge=0, le=1000)
    """Training epochs of the SASRec-style sequence model whose next-item probability is a ranker feature (0: none). Valid, 5 fit seeds: NDCG@10 0.1364 -> 0.1392, AUC 1:20 0.9236 -> 0.9276; about 40 s of a 2-core fit on ml-100k. Catalogs above 5k items train it with a sampled softmax (2048 items per batch)."""
    device: str = "cpu"
    """Torch device that trains the sequence model (``cuda`` on a GPU machine); serving computes it in numpy."""
    dislike_penalty: float = Field(1.0, ge=0.0, le=50.0)
    """Log-odds taken from a candidate in proportion to the share of its ties to the user's recent films that come from films they rated 2 or less (explicit negative feedback; 0 turns it off), on top of what the ranker learned from that share (the ``dislike_share`` feature). Saved with the fitted model. Valid, seeds 0-4, penalty 0 / 1 / 2: NDCG@10 0.1467 / 0.1461 / 0.1455, NDCG@10 of the users whose next film they liked 0.1571 / 0.1578 / 0.1578, AUC 1:20 0.9308 / 0.9304 / 0.9292, such items in top-10s 12.4% / 11.4% / 10.4%."""
    fresh_boost: float = Field(0.0, ge=0.0, le=20.0)
    """Log-odds added at serving to the ranker's score of items without events in the fitted data (new arrivals): the prior that a new item is as likely as an established one with the same content match, which training cannot learn. Saved with the fitted model. 0 (off) by default: on ml-100k's valid split +2 lifts new items from median rank 191 to 38 in their users' lists but none into the top 10, and costs the others NDCG@10 0.1430 -> 0.1364 (README, "The ranker's defaults"); a catalog whose new arrivals sell like established items can set it."""
    new_item_slot: int = Field(0, ge=0, le=1000)
    """List position (1-based) where the best-scored item without events in the fitted data (a new arrival) is placed when the ranker put it lower; 0: off. A list rule, not a score: the item keeps its own (lower) score, ``rank()`` keeps the ranker's order, a shorter list is the head of a longer one, and lists with payload filters, MMR or an LLM rerank are ordered by score without it. Saved with the fitted model. Off by default: on ml-100k's valid split it costs warm users more than it gives (README, "new-item slot")."""
    index_items: int = Field(50_000, ge=0)
    """Catalogs of at least this many items are served in index mode: the content and collaborative sources' top lists come from the vector index (Qdrant HNSW on the ``text`` and ``cf`` vectors, built at the end of the fit) instead of a product with every item's vector per request, their rank features are ranks within those lists, and the sequence model scores relative to its best item among those with events; training computes the same from the exact lists. 0: never. Measured at 100k items in ``docs/scale.md``."""
    index_depth: int = Field(100, ge=10, le=1000)
    """Index mode: how many items each of the two index queries (content and collaborative) returns per request, and so the depth of those sources' top lists and the cap of their rank features. A shallower list costs less HNSW work per request: at 100k items 50 took the two queries from 3.45 / 3.84 to 2.20 / 3.02 ms (``bench/request_split.py``, alternated twice). It also halves how many items without events the content source can offer (it is their only route into the pool), which ml-100k cannot measure, so the default stays 100. On ml-100k's valid split forced into index mode, 50 and 100 scored alike (docs/scale.md). Saved with the fitted model."""
    compiled_ranker: bool = True
    """Serve the ranker's trees compiled to native code with lleaves (LLVM; in the ``learn`` extra, Python < 3.14) instead of LightGBM's predict: the same scores to float rounding, the ranker's time per request at 100k items about 2 -> 0.5 ms (``bench/request_split.py``, run with this off and on). Compiled when ``fit()`` saves the model and cached in its folder per CPU; a process on another CPU compiles on its first load (about 1.5 s here for the default 300 trees; requests wait for it as they wait for the model to load). Without a working lleaves, LightGBM serves (logged)."""
    keep_versions: int = Field(3, ge=1, le=100)
    """Fitted model versions kept on disk (older ones are deleted after a successful fit)."""
    llm_feature_users: int = Field(0, ge=0, le=100_000)
    """Users whose last stored event trains the LLM stage (P(Yes) beside the ranker's score over its top ``retrieval.rerank_candidates``; ``retrieval.rerank="llm_feature"`` serves it). 0: no LLM stage (the default: it did not help with the packaged models, docs/llm-ablation.md)."""


class Settings(BaseSettings):
    """Everything Persona can be configured with."""

    model_config = SettingsConfigDict(
        env_prefix="PERSONA_", env_nested_delimiter="__", extra="forbid", use_attribute_docstrings=True, frozen=True
    )

    path: Path | None = None
    """Data folder of the embedded store (default: ``~/.local/share/persona``)."""
    qdrant_url: str | None = None
    """Use a Qdrant server through qdrant-client instead of the embedded edge engine; ``local`` runs qdrant-client's local mode under ``path``."""
    qdrant_api_key: str | None = Field(None, repr=False, exclude=True)
    """API key of the Qdrant server."""
    cluster: ClusterConfig = ClusterConfig()
    """Sharding, replication and on-disk storage of collections on a (distributed) Qdrant server."""
    quantization: Literal["int8", "none"] = "int8"
    """Qdrant scalar quantization of the items collection's vectors (the one searched by vector) when it is created, both backends; an existing collection keeps its own. HNSW searches an int8 copy kept in RAM; every query oversamples 2x and rescores with the float32 originals. At 100k x 384-d the index built 2.7-3.6x faster, and a top-100 query found as many true neighbours as a float32 search twice as deep in ~0.4x its time (``bench/quantization.py``, docs/scale.md). Catalogs below Qdrant's indexing threshold are searched exactly either way. ``none``: float32 only."""
    collection_prefix: str = Field("persona", pattern=r"^[A-Za-z0-9_-]{1,40}$")
    """Prefix of the Qdrant collection names."""
    api_key: str | None = Field(None, repr=False, exclude=True)
    """An ``admin`` key of the HTTP API (header ``X-API-Key``; ``PERSONA_API_KEY``). With no key at all
    only ``/health`` answers. The API refuses to start with a short or well-known key."""
    api_keys: dict[str, Literal["admin", "write", "read"]] = Field(default_factory=dict, repr=False, exclude=True)
    """More API keys with their scope, e.g. ``PERSONA_API_KEYS='{"k1...": "read", "k2...": "write"}'``:
    ``read`` reads items, users and recommendations (LLM work rate-limited), ``write`` also adds items
    and events, ``admin`` everything."""
    api_token_secret: str | None = Field(None, repr=False, exclude=True)
    """Secret that signs per-user tokens (``persona user-token USER_ID``; ``PERSONA_API_TOKEN_SECRET``): a
    token reads only its own user's profile, recommendations, explanations and search. Unset: no user
    tokens. Checked like the keys (at least 16 random characters); rotating it revokes every token."""
    api_allow_weak_keys: bool = False
    """Development only: accept API keys shorter than 16 characters or on the well-known list."""
    api_llm_requests_per_minute: int = Field(30, ge=0, le=100_000)
    """Per key: requests that make the LLM work (``/explain``, recommendations with ``rerank`` or
    ``explain``) beyond this many a minute get 429 with Retry-After (0: such requests are refused)."""
    api_max_inflight: int = Field(8, ge=1, le=10_000)
    """HTTP API admission limit: requests beyond this many in flight get 503 with Retry-After."""
    api_max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    """Largest HTTP request body the API accepts (413 beyond)."""
    prompts_dir: Path | None = None
    """Folder of prompt templates that override the packaged ones (same file names)."""
    prompt_versions: dict[str, int] = {"preference_yes_no": 1}
    """Version used when code asks for a prompt by name only; unlisted prompts use their latest version.
    ``preference_yes_no@v2`` (compact) is an experiment: compare with ``persona prompts compare``."""
    text: TextEncoderConfig = TextEncoderConfig()
    """Sentence-transformers text encoder."""
    clip: ClipConfig = ClipConfig()
    """open_clip image/text encoder."""
    llm: LLMConfig = LLMConfig()
    """LLM backend for summaries, ranking, explanations."""
    sessions: SessionConfig = SessionConfig()
    """How histories are split into blocks."""
    profile: ProfileConfig = ProfileConfig()
    """User modeling."""
    retrieval: RetrievalConfig = RetrievalConfig()
    """Candidate retrieval and ranking."""
    ingest: IngestConfig = IngestConfig()
    """Catalog ingestion limits."""
    image: ImageConfig = ImageConfig()
    """Personalized image generation (diffusers)."""
    fit: FitConfig = FitConfig()
    """The learned recommender trained by ``Engine.fit()`` / ``persona fit``."""
    seed: int = 0
    """Seed for every random choice (negative sampling, tie breaks)."""

    @model_validator(mode="after")
    def _default_path(self) -> Settings:
        if self.path is None:
            base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
            object.__setattr__(self, "path", base / "persona")
        return self
