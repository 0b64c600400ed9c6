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


def test_cluster_profile(compose):
    """Profile `cluster`: three Qdrant peers in distributed mode (one starts the Raft cluster with
    --uri, two join with --bootstrap), the p2p port unpublished, one API key for all, and an API
    service that creates sharded, replicated collections on them."""
    s = compose["services"]
    peers = [f"qdrant-node{i}" for i in (1, 2, 3)]
    uris = []
    for name in peers:
        svc = s[name]
        assert svc["profiles"] == ["cluster"] and svc["image"] == s["qdrant"]["image"]
        env = svc["environment"]
        assert env["QDRANT__CLUSTER__ENABLED"] == "true" and env["QDRANT__SERVICE__API_KEY"] == s["qdrant"]["environment"]["QDRANT__SERVICE__API_KEY"]
        cmd = svc["command"]
        assert cmd[0] == "./qdrant"
        uri = cmd[cmd.index("--uri") + 1]
        assert uri == f"http://{name}:{env['QDRANT__CLUSTER__P2P__PORT']}"
        uris.append(uri)
        if name != "qdrant-node1":
            assert cmd[cmd.index("--bootstrap") + 1] == uris[0]
            assert svc["depends_on"]["qdrant-node1"]["condition"] == "service_healthy"
        else:
            assert "--bootstrap" not in cmd
        assert not any(":6335" in str(p) for p in svc.get("ports", [])), "the p2p port takes unauthenticated writes"
        assert any(v.startswith(f"{name}-data:") for v in svc["volumes"]) and f"{name}-data" in compose["volumes"]
        assert "healthcheck" in svc
    assert len(set(uris)) == 3
    api = s["api-cluster"]
    assert api["profiles"] == ["cluster"] and api["build"] == s["api"]["build"]
    env = api["environment"]
    assert env["PERSONA_QDRANT_URL"].split("//")[1].split(":")[0] in peers
    assert env["PERSONA_QDRANT_API_KEY"] == s["api"]["environment"]["PERSONA_QDRANT_API_KEY"]
    assert {p: c["condition"] for p, c in api["depends_on"].items()} == dict.fromkeys(peers, "service_healthy")

    # The cluster settings in the environment are valid Persona settings and fit a 3-node cluster.
    import re

    from engine.config import Settings

    def default(value: str) -> str:
        m = re.fullmatch(r"\$\{[A-Z_]+:-([^}]*)\}", value)
        return m.group(1) if m else value

    cluster = {k.removeprefix("PERSONA_CLUSTER__").lower(): default(str(v)) for k, v in env.items() if k.startswith("PERSONA_CLUSTER__")}
    cfg = Settings(cluster=cluster).cluster
    assert cfg.shard_number and cfg.shard_number % len(peers) == 0
    assert 2 <= (cfg.replication_factor or 1) <= len(peers)
