"""docker-compose.yml is valid against the Compose Specification schema and wires the stack as documented.

The schema is the one shipped inside the ``docker-compose`` 1.29.2 wheel on PyPI
(``compose/config/compose_spec.json``), fetched with pip (no install) the first time."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def compose_schema(tmp_path_factory) -> dict:
    cache = Path.home() / ".cache" / "persona" / "compose_spec.json"
    if not cache.exists():
        d = tmp_path_factory.mktemp("compose-wheel")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(d), "docker-compose==1.29.2"], check=True)
        wheel = next(d.glob("docker_compose-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            data = z.read("compose/config/compose_spec.json")
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(data)
    return json.loads(cache.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_matches_the_compose_spec(compose_schema, compose):
    import jsonschema

    validator = jsonschema.Draft201909Validator(compose_schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_schema_catches_mistakes(compose_schema, compose):
    """The validation is not vacuous: a typo'd key and a bad depends_on condition are rejected."""
    import copy

    import jsonschema

    bad = copy.deepcopy(compose)
    bad["services"]["api"]["healthchek"] = bad["services"]["api"].pop("healthcheck")
    assert list(jsonschema.Draft201909Validator(compose_schema).iter_errors(bad))
    bad = copy.deepcopy(compose)
    bad["services"]["api"]["depends_on"]["qdrant"]["condition"] = "when_ready"
    assert list(jsonschema.Draft201909Validator(compose_schema).iter_errors(bad))


def test_stack_wiring(compose):
    s = compose["services"]
    assert set(s) >= {"qdrant", "vllm", "vllm-cpu", "api"}
    q = s["qdrant"]
    assert q["image"].startswith("qdrant/qdrant:") and "QDRANT__SERVICE__API_KEY" in q["environment"]
    assert any(v.endswith(":/qdrant/storage") for v in q["volumes"])
    for name in ("vllm", "vllm-cpu"):
        cmd = " ".join(s[name]["command"]) if isinstance(s[name]["command"], list) else s[name]["command"]
        assert "--enable-prefix-caching" in cmd and "--enable-lora" in cmd and "--lora-modules persona-lora=" in cmd
        assert "healthcheck" in s[name]
    assert s["vllm"]["image"].startswith("vllm/vllm-openai:")
    assert s["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert s["vllm-cpu"]["profiles"] == ["cpu"]
    api = s["api"]
    assert api["build"] == "." and (ROOT / "Dockerfile").exists()
    assert api["depends_on"]["qdrant"]["condition"] == "service_healthy" and "healthcheck" in api
    env = api["environment"]
    assert env["PERSONA_QDRANT_URL"].startswith("http://qdrant:") and "PERSONA_API_KEY" in env and "PERSONA_LLM__URL" in env


def test_stack_is_locked_down(compose):
    """No default keys, ports on 127.0.0.1 only, vLLM behind a key Persona sends, no runtime LoRA loading by default."""
    import re

    text = (ROOT / "docker-compose.yml").read_text()
    assert "change-me" not in text and "changeme" not in text
    s = compose["services"]
    for name, svc in s.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
        for var, value in (svc.get("environment") or {}).items():
            if var.endswith("API_KEY"):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", str(value)), (name, var, value)
    for name in ("vllm", "vllm-cpu"):
        cmd = " ".join(s[name]["command"]) if isinstance(s[name]["command"], list) else s[name]["command"]
        assert '--api-key "$${VLLM_API_KEY}"' in cmd
        assert s[name]["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"].endswith(":-False}")
    assert s["api"]["environment"]["PERSONA_LLM__API_KEY"] == s["vllm"]["environment"]["VLLM_API_KEY"]
