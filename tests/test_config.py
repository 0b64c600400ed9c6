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
    """Every field of Settings and of every section reachable from it (wherever the section class lives)."""
    from pydantic import BaseModel

    todo, seen = [Settings], set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        todo += [f.annotation for f in model.model_fields.values() if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)]
        name = model.__name__
        for fname, field in model.model_fields.items():
            assert field.description, f"{name}.{fname} has no docstring"
    assert len(seen) == 11  # Settings and its ten sections: the walk reached them all


def test_invalid_config_is_clear(tmp_path):
    from engine import Engine

    with pytest.raises(InvalidInputError, match="retrieval"):
        Engine.open(tmp_path, {"retrieval": {"candidates": -1}})
    with pytest.raises(ValidationError):
        LLMConfig(backend="gpt")


def test_every_fit_setting_reaches_the_learned_config(monkeypatch):
    """Each ``fit.*`` knob that is also a ``LearnedConfig`` field (some renamed) is what a fit trains with: set from the
    environment to a non-default value, it must come out of ``LearnedStage.config()`` unchanged."""
    pytest.importorskip("lightgbm")
    from engine.config import FitConfig
    from engine.fitting import LearnedStage
    from engine.learned import LearnedConfig

    renamed = {"sequence_epochs": "sas_epochs", "device": "sas_device"}
    learned = {f for f in LearnedConfig.__dataclass_fields__}
    values = {"pool_size": 123, "cf_factors": 17, "label_folds": 5, "threads": 1, "sequence_epochs": 5, "device": "cuda",
              "dislike_penalty": 3.5, "fresh_boost": 1.25, "new_item_slot": 4, "index_items": 777,
              "index_depth": 55}
    mapped = {f for f in FitConfig.model_fields if renamed.get(f, f) in learned}
    assert mapped == set(values), "a fit setting named like a LearnedConfig field is missing from this test"
    for k, v in values.items():
        assert v != FitConfig.model_fields[k].default, k  # a default value would pass without the env route
        monkeypatch.setenv(f"PERSONA_FIT__{k.upper()}", str(v))
    cfg = LearnedStage(Settings(), None, "items", "events", None).config()
    for k, v in values.items():
        assert getattr(cfg, renamed.get(k, k)) == v, k
    # the defaults are written twice (FitConfig for users, LearnedConfig for bench/learned_val.py, which chooses them):
    # they must be the same values, or the bench would measure a model users never get
    learned_defaults = {f.name: f.default for f in LearnedConfig.__dataclass_fields__.values()}
    for k in values:
        assert FitConfig.model_fields[k].default == learned_defaults[renamed.get(k, k)], k
