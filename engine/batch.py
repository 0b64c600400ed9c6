"""Stage: batch work on Ray (extra ``ray``) for catalogs and user sets larger than one process.

In: a Ray address (``None`` starts a local Ray; ``"auto"`` joins the cluster this machine is part
of; ``ray://host:10001`` a remote one), and the work: texts to encode, or chunks of users to map.
Out: the same results as the in-process path, computed by Ray Data pipelines:

- :meth:`RayBatch.encode`: texts through an actor pool of encoders (each actor loads the model
  once; ``batch_size`` texts per call; ``actors`` actors), vectors returned in input order;
- :meth:`RayBatch.map_chunks`: a pure function over chunks of work (e.g. the ranker's training
  rows for chunks of users), with large shared state put once in Ray's object store;
- :meth:`RayBatch.llm_pool`: ``actors`` Ray actors each holding one LLM (built once from an
  ``LLMConfig``), kept for a whole profile update: each recurrent summary step's prompts are split
  across them (``generate_json``), in input order.

Ingestion (``Engine.add_items(..., ray=...)``) encodes the catalog here and writes from the
driver; ``Engine.fit(ray=...)`` computes the ranker's features for chunks of users here;
``Engine.update_profiles(..., ray=...)`` runs the summary steps' LLM calls on the pool. The
store writes stay on the driver: Qdrant's own sharding spreads them (see ``Settings.cluster``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import missing

logger = logging.getLogger(__name__)

__all__ = ["LLMPool", "RayBatch"]


class _EncodeActor:
    """One encoder per actor, built once by ``factory`` (a picklable zero-argument callable)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.encoder = factory()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vecs = self.encoder.encode([str(t) for t in batch["text"]])
        return {"i": batch["i"], "vector": np.asarray(vecs, np.float32)}


class _ChunkFn:
    """Applies ``fn(chunk, shared)`` to each chunk; ``shared`` is fetched from the object store once per actor."""

    def __init__(self, fn: Callable[[Any, Any], Any], shared_ref: Any) -> None:
        import ray

        self.fn, self.shared = fn, ray.get(shared_ref[0])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pickle

        out = [pickle.dumps(self.fn(pickle.loads(c), self.shared)) for c in batch["chunk"]]
        return {"k": batch["k"], "out": np.array(out, dtype=object)}


class _LLMActor:
    """One LLM per actor (``open_llm(config)``, loaded once); prompts arrive without the chat template."""

    def __init__(self, config: Any) -> None:
        from .llm import open_llm

        self.llm = open_llm(config)

    def generate_json(self, prompts: list[str], schemas: list[dict], max_new_tokens: int) -> list[str]:
        if self.llm is None:
            raise RuntimeError("llm.backend is none")
        return list(self.llm.generate_json([self.llm.chat_prompt(p) for p in prompts], schemas, max_new_tokens))


class LLMPool:
    """Ray actors holding one LLM each (see :meth:`RayBatch.llm_pool`); ``close()`` ends them."""

    def __init__(self, config: Any, actors: int) -> None:
        import ray

        self._ray = ray
        remote = ray.remote(num_cpus=1)(_LLMActor)
        self.actors = [remote.remote(config) for _ in range(max(1, actors))]

    def generate_json(self, prompts: Sequence[str], schemas: Sequence[dict], max_new_tokens: int) -> list[str]:
        """Like ``LLM.generate_json`` over raw prompts (each actor applies its model's chat template),
        split in contiguous parts across the actors; any actor failure raises BackendUnavailableError."""
        from .errors import BackendUnavailableError

        n = len(prompts)
        if not n:
            return []
        per = -(-n // len(self.actors))
        refs = [a.generate_json.remote(list(prompts[i : i + per]), list(schemas[i : i + per]), max_new_tokens)
                for a, i in zip(self.actors, range(0, n, per))]
        try:
            return [o for part in self._ray.get(refs) for o in part]
        except Exception as e:  # an actor that could not load its model, or died
            raise BackendUnavailableError(f"LLM on Ray failed: {type(e).__name__}: {str(e)[:300]}") from e

    def close(self) -> None:
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []


class RayBatch:
    """A connection to Ray for batch work; use as a context manager (it shuts down a Ray it started)."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, actors: int = 2, batch_size: int = 64) -> None:
        try:
            import ray
            import ray.data  # noqa: F401  (Ray Data is part of the extra)
        except ImportError as e:
            raise missing("ray", "ray[data]") from e
        self.actors, self.batch_size = max(1, actors), batch_size
        self._started = not ray.is_initialized()
        if self._started:
            kw: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": False}
            if address is None and num_cpus is not None:
                kw["num_cpus"] = num_cpus
            ray.init(**kw)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        self.address = address

    def encode(self, texts: Sequence[str], factory: Callable[[], Any], dim: int) -> np.ndarray:
        """Vectors of ``texts`` (rows in input order) from an actor pool of ``factory()`` encoders."""
        import ray

        if not texts:
            return np.zeros((0, dim), np.float32)
        ds = ray.data.from_items([{"i": i, "text": t} for i, t in enumerate(texts)], override_num_blocks=max(1, min(len(texts) // self.batch_size, 4 * self.actors)))
        out = ds.map_batches(
            _EncodeActor, fn_constructor_args=(factory,), batch_size=self.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(self.actors, max(1, len(texts) // self.batch_size))),
        )
        vecs = np.zeros((len(texts), dim), np.float32)
        for b in out.iter_batches(batch_size=4096, batch_format="numpy"):
            vecs[b["i"]] = np.stack(b["vector"]) if b["vector"].dtype == object else b["vector"]
        return vecs

    def map_chunks(self, fn: Callable[[Any, Any], Any], chunks: Sequence[Any], shared: Any) -> list[Any]:
        """``[fn(chunk, shared) for chunk in chunks]`` on Ray, in input order. ``fn`` must be a
        picklable module-level function; ``shared`` is put once in the object store."""
        import pickle

        import ray

        if not chunks:
            return []
        ref = ray.put(shared)
        ds = ray.data.from_items([{"k": k, "chunk": pickle.dumps(c)} for k, c in enumerate(chunks)], override_num_blocks=len(chunks))
        out = ds.map_batches(
            _ChunkFn, fn_constructor_args=(fn, [ref]), batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(self.actors, len(chunks))),
        )
        res: list[Any] = [None] * len(chunks)
        for b in out.iter_batches(batch_size=64, batch_format="numpy"):
            for k, o in zip(b["k"], b["out"]):
                res[int(k)] = pickle.loads(o)
        return res

    def llm_pool(self, config: Any) -> LLMPool:
        """``actors`` Ray actors, each with one LLM built from ``config`` (an ``LLMConfig``)."""
        return LLMPool(config, self.actors)

    def close(self) -> None:
        import ray

        if self._started and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> RayBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
