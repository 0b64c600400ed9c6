"""Settings sections of the encoders, the LLM, ingestion, image generation and the cluster layout (``engine.config``
assembles them into ``Settings``; import them from there or here). Every field is documented."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Section", "TextEncoderConfig", "ClipConfig", "LLMConfig", "IngestConfig", "ImageConfig", "ClusterConfig",
           "PACKAGED_MINILM", "PACKAGED_GEMMA", "PACKAGED_QWEN"]

logger = logging.getLogger(__name__)

PACKAGED_MINILM = "packaged:all-MiniLM-L6-v2"
PACKAGED_GEMMA = "packaged:gemma-3-270m"
PACKAGED_QWEN = "packaged:qwen2.5-0.5b-instruct"


class Section(BaseModel):
    """A settings section: unknown fields refused, field docstrings kept, immutable."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class TextEncoderConfig(Section):
    model: str = PACKAGED_MINILM
    """sentence-transformers model name or folder; ``packaged:all-MiniLM-L6-v2`` loads the copy shipped on PyPI."""
    batch_size: int = Field(64, ge=1, le=4096)
    """Texts per encoder batch."""
    device: str = "cpu"
    """Torch device for the encoder."""


class ClipConfig(Section):
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


class LLMConfig(Section):
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


class IngestConfig(Section):
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


class ImageConfig(Section):
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


class ClusterConfig(Section):
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
            logger.warning("cluster.write_consistency_factor (%s) < replication_factor (%s): a popularity recount may read "
                           "a replica behind the latest events; set them equal for exact counts", self.write_consistency_factor or 1, self.replication_factor)
        return self

    def collection_options(self) -> dict[str, int | bool]:
        """The options that are set: keyword arguments of qdrant-client's ``create_collection``, and ``on_disk_vectors`` (``VectorParams.on_disk`` of every named vector)."""
        opts = {"shard_number": self.shard_number, "replication_factor": self.replication_factor, "write_consistency_factor": self.write_consistency_factor,
                "on_disk_payload": self.on_disk_payload, "on_disk_vectors": self.on_disk_vectors}
        return {k: v for k, v in opts.items() if v is not None}
