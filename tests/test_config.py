import pytest
from pydantic import ValidationError

from engine import InvalidInputError, Settings
from engine.config import LLMConfig


def test_env_vars(monkeypatch, tmp_path):
    monkeypatch.setenv("PERSONA_LLM__URL", "http://localhost:8000/v1")
    monkeypatch.setenv("PERSONA_QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("PERSONA_PATH", str(tmp_path))
    s = Settings()
    assert s.llm.url == "http://localhost:8000/v1" and s.qdrant_url == "http://qdrant:6333" and s.path == tmp_path


def test_every_field_documented():
    from engine import config

    for name in config.__all__:
        model = getattr(config, name)
        for fname, field in model.model_fields.items():
            assert field.description, f"{name}.{fname} has no docstring"


def test_invalid_config_is_clear(tmp_path):
    from engine import Engine

    with pytest.raises(InvalidInputError, match="retrieval"):
        Engine.open(tmp_path, {"retrieval": {"candidates": -1}})
    with pytest.raises(ValidationError):
        LLMConfig(backend="gpt")
