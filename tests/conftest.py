"""Shared fixtures: real components only (packaged MiniLM, Qdrant edge engine, ml-100k), loaded once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from engine import Engine  # noqa: E402
from engine.datasets import default_movielens_path, load_movielens  # noqa: E402

ML = default_movielens_path()


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="no CUDA GPU here"))


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
    from engine.config import LLMConfig
    from engine.llm.local import TransformersLLM

    return TransformersLLM(LLMConfig(batch_size=8))


NO_CLIP = {"clip": {"enabled": False}, "llm": {"backend": "none"}}


@pytest.fixture
def make_engine(tmp_path, text_encoder):
    """Engine factory sharing the session's text encoder (and optionally an LLM)."""
    opened = []

    def make(path: Path | None = None, llm=None, **cfg) -> Engine:
        conf = {**NO_CLIP, **cfg}
        if llm is not None:
            conf["llm"] = {"backend": "transformers", **cfg.get("llm", {})}
        eng = Engine.open(path or tmp_path / "store", conf)
        eng._text = text_encoder
        if llm is not None:
            eng._llm = llm
        opened.append(eng)
        return eng

    yield make
    for eng in opened:
        try:
            eng.close()
        except Exception:
            pass


@pytest.fixture(scope="session")
def ml_engine_path(tmp_path_factory, ml, text_encoder):
    """The whole ml-100k catalog and ratings indexed once (text vectors; no CLIP weights on PyPI)."""
    path = tmp_path_factory.mktemp("ml100k")
    eng = Engine.open(path, NO_CLIP)
    eng._text = text_encoder
    rep = eng.add_items(ml.items)
    assert rep.failed == 0 and rep.added == len(ml.items)
    er = eng.add_events(ml.events)
    assert er.added == len(ml.events)
    eng.close()
    return path


@pytest.fixture
def ml_engine(ml_engine_path, make_engine):
    return make_engine(ml_engine_path)
