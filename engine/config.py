"""Validated configuration. Every field is documented; every field can be set from the
environment as ``PERSONA_<FIELD>`` or, for nested sections, ``PERSONA_<SECTION>__<FIELD>``
(e.g. ``PERSONA_LLM__URL=http://localhost:8000/v1``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "FitConfig", "TextEncoderConfig", "ClipConfig", "LLMConfig", "SessionConfig", "ProfileConfig",
           "RetrievalConfig", "IngestConfig", "ImageConfig", "ClusterConfig"]

PACKAGED_MINILM = "packaged:all-MiniLM-L6-v2"
PACKAGED_GEMMA = "packaged:gemma-3-270m"
PACKAGED_QWEN = "packaged:qwen2.5-0.5b-instruct"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class TextEncoderConfig(_Section):
    model: str = PACKAGED_MINILM
    """sentence-transformers model name or folder; ``packaged:all-MiniLM-L6-v2`` loads the copy shipped on PyPI."""
    batch_size: int = Field(64, ge=1, le=4096)
    """Texts per encoder batch."""
    device: str = "cpu"
    """Torch device for the encoder."""


class ClipConfig(_Section):
    enabled: bool = True
    """Compute CLIP image and text vectors (named vectors ``image`` and ``clip_text``)."""
    model: str = "ViT-B-32"
    """open_clip architecture name."""
    pretrained: str | None = "laion2b_s34b_b79k"
    """open_clip pretrained tag (downloaded from the hub); ``None`` builds the architecture with random weights (tests only)."""
    required: bool = False
    """Fail if the weights cannot be loaded; when false, CLIP vectors are skipped with a warning and retrieval uses the other vectors."""
    batch_size: int = Field(32, ge=1, le=1024)
    """Images per encoder batch."""
    device: str = "cpu"
    """Torch device for the encoder."""


class LLMConfig(_Section):
    backend: Literal["auto", "transformers", "vllm", "none"] = "auto"
    """``vllm`` talks to an OpenAI-compatible server at ``url``; ``transformers`` runs in-process; ``auto`` picks vllm when ``url`` is set, else transformers; ``none`` disables LLM features (documented fallbacks are used)."""
    url: str | None = None
    """Base URL of the vLLM OpenAI-compatible API, e.g. ``http://localhost:8000/v1``; a comma-separated list names several replicas (see ``urls``)."""
    urls: list[str] = Field(default_factory=list)
    """More vLLM replicas serving the same model (``PERSONA_LLM__URLS='["http://a:8000/v1","http://b:8000/v1"]'``):
    requests go to the healthy replica with the fewest requests in flight; one that fails to answer is
    taken out for ``replica_down_s`` and the request goes to the next; it comes back once its ``/health`` answers."""
    replica_down_s: float = Field(10.0, ge=0)
    """How long a replica that failed stays out before a health check may bring it back."""
    api_key: str | None = Field(None, repr=False, exclude=True)  # never written into reports
    """Bearer token for the vLLM server, if it requires one."""
    model: str = PACKAGED_QWEN
    """Model name served by vLLM, or a local folder / hub name for the in-process backend. Packaged (GGUF
    Q4_K_M from PyPI, de-quantized to float32): ``packaged:qwen2.5-0.5b-instruct`` (the default: an
    instruction-tuned model with a chat template, chosen on summary faithfulness, docs/llm-models.md)
    or ``packaged:gemma-3-270m`` (a smaller base model, no chat template)."""
    adapter: str | None = None
    """LoRA adapter: a folder for the in-process backend, the adapter's served name for vLLM."""
    timeout_s: float = Field(120.0, gt=0)
    """Timeout of one LLM request."""
    max_new_tokens: int = Field(80, ge=1, le=4096)
    """Token budget for generated summaries and explanations."""
    batch_size: int = Field(8, ge=1, le=512)
    """Prompts per in-process forward pass."""
    device: str = "cpu"
    """Torch device for the in-process backend."""
    vision: bool = False
    """The vLLM model accepts images (OpenAI chat ``image_url``): item summaries then see the poster."""

    def replica_urls(self) -> list[str]:
        """Every vLLM base URL: ``url`` (split at commas) then ``urls``, without duplicates."""
        out: list[str] = []
        for u in [*(self.url or "").split(","), *self.urls]:
            u = u.strip().rstrip("/")
            if u and u not in out:
                out.append(u)
        return out


class SessionConfig(_Section):
    gap_s: float = Field(3600.0, gt=0)
    """A new session block starts after this many seconds without events."""
    max_block_items: int = Field(20, ge=1)
    """A block is closed once it holds this many events."""


class ProfileConfig(_Section):
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


class RetrievalConfig(_Section):
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
    warm_users: int = Field(8, ge=0, le=10_000)
    """``add_events`` queues the ranking of the lists of the users a batch touched, when they are at most this many (a live user's event, not a bulk load), on one background thread: the request that follows reads it from ``cache_users``, or waits for it if it is under way. 0: never."""


class FitConfig(_Section):
    """The learned recommender that :meth:`Engine.fit` trains (collaborative ALS vectors, transition
    and co-occurrence statistics, popularity/trend, LightGBM ranker). Defaults chosen on the ml-100k
    validation split (second-to-last events; ``bench/learned_val.py``)."""

    use_model: bool = True
    """Rank with the fitted model when one exists; ``False`` keeps the content/popularity fusion."""
    pool_size: int = Field(300, ge=10, le=5000)
    """Candidates the sources put in the pool the ranker scores."""
    cf_factors: int = Field(64, ge=2, le=1024)
    """Dimensions of the collaborative (ALS) item and user vectors."""
    label_folds: int = Field(2, ge=1, le=5)
    """Ranker labels per user: the last stored event, and (2) also the one before it."""
    threads: int = Field(2, ge=1, le=256)
    """CPU threads for ALS, the sequence model and LightGBM."""
    sequence_epochs: int = Field(39, ge=0, le=1000)
    """Training epochs of the SASRec-style sequence model whose next-item probability is a ranker feature (0: none). Valid, 5 fit seeds: NDCG@10 0.1364 -> 0.1392, AUC 1:20 0.9236 -> 0.9276; about 40 s of a 2-core fit on ml-100k. Catalogs above 5k items train it with a sampled softmax (2048 items per batch)."""
    device: str = "cpu"
    """Torch device that trains the sequence model (``cuda`` on a GPU machine); serving computes it in numpy."""
    dislike_penalty: float = Field(2.0, ge=0.0, le=50.0)
    """Log-odds taken from a candidate in proportion to the share of its ties to the user's recent films that come from films they rated 2 or less (explicit negative feedback; 0 turns it off). Saved with the fitted model. Valid: 2 keeps NDCG@10 (0.1438 -> 0.1442) and cuts such items in top-10s from 12.5% to 10.2%."""
    fresh_boost: float = Field(0.0, ge=0.0, le=20.0)
    """Log-odds added at serving to the ranker's score of items without events in the fitted data (new arrivals): the prior that a new item is as likely as an established one with the same content match, which training cannot learn. Saved with the fitted model. 0 (off) by default: on ml-100k's valid split +2 lifts new items from median rank 191 to 38 in their users' lists but none into the top 10, and costs the others NDCG@10 0.1430 -> 0.1364 (README, "The ranker's defaults"); a catalog whose new arrivals sell like established items can set it."""
    new_item_slot: int = Field(0, ge=0, le=1000)
    """List position (1-based) where the best-scored item without events in the fitted data (a new arrival) is placed when the ranker put it lower; 0: off. A list rule, not a score: the item keeps its own (lower) score, ``rank()`` keeps the ranker's order, a shorter list is the head of a longer one, and lists with payload filters, MMR or an LLM rerank are ordered by score without it. Saved with the fitted model. Off by default: on ml-100k's valid split it costs warm users more than it gives (README, "new-item slot")."""
    index_items: int = Field(50_000, ge=0)
    """Catalogs of at least this many items are served in index mode: the content and collaborative sources' top lists come from the vector index (Qdrant HNSW on the ``text`` and ``cf`` vectors, built at the end of the fit) instead of a product with every item's vector per request, their rank features are ranks within those lists, and the sequence model scores relative to its best item; training computes the same from the exact lists. 0: never. Measured at 100k items in ``docs/scale.md``."""
    keep_versions: int = Field(3, ge=1, le=100)
    """Fitted model versions kept on disk (older ones are deleted after a successful fit)."""
    llm_feature_users: int = Field(0, ge=0, le=100_000)
    """Users whose last stored event trains the LLM stage (P(Yes) beside the ranker's score over its top ``retrieval.rerank_candidates``; ``retrieval.rerank="llm_feature"`` serves it). 0: no LLM stage (the default: it did not help with the packaged models, docs/llm-ablation.md)."""


class IngestConfig(_Section):
    summarizer: Literal["extractive", "llm"] = "extractive"
    """Item summaries: ``extractive`` (title, genres, first sentence; instant) or ``llm`` (through the LLM backend; a vision model when ``llm.vision`` is set)."""
    batch_size: int = Field(64, ge=1)
    """Items encoded and upserted together."""
    max_description_chars: int = Field(8000, ge=100)
    """Longer descriptions are truncated (and reported)."""
    max_image_pixels: int = Field(40_000_000, ge=1)
    """Images larger than this are refused as possible decompression bombs."""
    max_image_bytes: int = Field(20_000_000, ge=1)
    """Image files larger than this are refused (counted while reading)."""
    allow_image_paths_outside_catalog: bool = False
    """Catalog files may name absolute image paths or paths with ``..`` (off: images must lie in the
    image folder, or the catalog's folder). Items passed from code are trusted and not confined."""
    image_fetch_timeout_s: float = Field(10.0, gt=0)
    """Total time allowed for fetching one image URL, redirects included."""
    image_url_allowed_hosts: list[str] = Field(default_factory=list)
    """Hosts that image URLs (and their redirects) may reach although they resolve to private,
    loopback or link-local addresses (e.g. an internal image server)."""


class ImageConfig(_Section):
    enabled: bool = True
    """Allow personalized image generation (``Engine.generate_image``, ``persona imagine``, ``POST /users/{id}/images``)."""
    model: str = "stabilityai/sd-turbo"
    """diffusers text-to-image pipeline: a hub name or a local folder (any pipeline ``AutoPipelineForText2Image`` loads); the default is a 1-4 step distilled model."""
    steps: int = Field(2, ge=1, le=200)
    """Denoising steps when the caller gives none (1-4 suits distilled models)."""
    max_steps: int = Field(8, ge=1, le=200)
    """Most steps a caller may ask for (more is refused, HTTP 422)."""
    size: int = Field(512, ge=64, le=4096, multiple_of=8)
    """Image side in pixels when the caller gives none."""
    max_size: int = Field(768, ge=64, le=4096)
    """Largest image side a caller may ask for (more is refused, HTTP 422)."""
    max_images: int = Field(4, ge=1, le=64)
    """Most images per request."""
    guidance: float = Field(0.0, ge=0, le=30)
    """Classifier-free guidance scale; 0 for distilled turbo models, about 7 for classic Stable Diffusion."""
    strength: float = Field(0.6, gt=0, le=1)
    """img2img: how far the result may move away from the reference item's image (0 keeps it, 1 ignores it)."""
    device: str = "auto"
    """Torch device: ``auto`` picks CUDA when present, else CPU (float16 on GPU, float32 on CPU)."""
    safety_checker: bool = True
    """Run the Stable Diffusion safety checker on every image (flagged images come back blacked out); generation fails rather than run without it when it cannot be loaded."""
    safety_checker_model: str = "CompVis/stable-diffusion-safety-checker"
    """Safety checker weights used when the pipeline ships none."""
    history_items: int = Field(5, ge=1, le=50)
    """Best-liked items whose attributes shape the prompt."""

    @model_validator(mode="after")
    def _limits(self) -> ImageConfig:
        if self.steps > self.max_steps:
            raise ValueError("image.steps must not exceed image.max_steps")
        if self.size > self.max_size:
            raise ValueError("image.size must not exceed image.max_size")
        return self


class ClusterConfig(_Section):
    """How collections are laid out on a distributed Qdrant (``qdrant_url`` set). Applied when a collection is created; an existing collection keeps its layout. The embedded edge engine is one local shard and ignores these (with a warning when they differ from the defaults)."""

    shard_number: int | None = Field(None, ge=1, le=1024)
    """Shards per collection (Qdrant's default when unset: one per node at creation); pick a multiple of the node count so shards can be rebalanced when nodes are added."""
    replication_factor: int | None = Field(None, ge=1, le=16)
    """Copies of each shard (>= 2 survives the loss of a node); at most the number of nodes."""
    write_consistency_factor: int | None = Field(None, ge=1, le=16)
    """Replicas that must acknowledge a write before it succeeds; at most ``replication_factor``. Set it equal to ``replication_factor`` for exact popularity counts: the recount reads counts with Qdrant's ``count``, which takes no read-consistency option and may read any replica."""
    on_disk_payload: bool | None = None
    """Keep payloads on disk (read through the page cache) instead of in RAM."""
    on_disk_vectors: bool | None = None
    """Keep original vectors on disk (memory-mapped) instead of in RAM; the HNSW graph stays in memory."""

    @model_validator(mode="after")
    def _consistency(self) -> ClusterConfig:
        if self.write_consistency_factor and self.write_consistency_factor > (self.replication_factor or 1):
            raise ValueError("cluster.write_consistency_factor must not exceed cluster.replication_factor")
        if (self.replication_factor or 1) > 1 and (self.write_consistency_factor or 1) < self.replication_factor:
            logging.getLogger(__name__).warning("cluster.write_consistency_factor (%s) < replication_factor (%s): a popularity recount may read "
                                                "a replica behind the latest events; set them equal for exact counts", self.write_consistency_factor or 1, self.replication_factor)
        return self

    def collection_options(self) -> dict[str, int | bool]:
        """The options that are set: keyword arguments of qdrant-client's ``create_collection``, and ``on_disk_vectors`` (``VectorParams.on_disk`` of every named vector)."""
        opts = {"shard_number": self.shard_number, "replication_factor": self.replication_factor, "write_consistency_factor": self.write_consistency_factor,
                "on_disk_payload": self.on_disk_payload, "on_disk_vectors": self.on_disk_vectors}
        return {k: v for k, v in opts.items() if v is not None}


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
