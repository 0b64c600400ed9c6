"""Cluster settings (``Settings.cluster``) reach Qdrant's collection creation through qdrant-client.

qdrant-client's local mode accepts the options but keeps one shard, so the tests look at what
reaches the real client's ``create_collection`` (a pass-through recorder around the real method),
at the JSON qdrant-client's REST transport puts on the wire, and at the edge store's warning."""

from __future__ import annotations

import logging

import pytest

from engine.config import Settings
from engine.errors import InvalidInputError
from engine.store import open_store
from engine.store.client import QdrantClientStore

CLUSTER = {"shard_number": 6, "replication_factor": 2, "write_consistency_factor": 2, "on_disk_payload": True, "on_disk_vectors": True}


def test_env_settings_reach_create_collection_on_a_real_client(tmp_path, monkeypatch):
    for k, v in CLUSTER.items():
        monkeypatch.setenv(f"PERSONA_CLUSTER__{k.upper()}", str(v).lower())
    settings = Settings(path=tmp_path, qdrant_url="local")
    assert settings.cluster.collection_options() == CLUSTER
    store = open_store(tmp_path, settings.qdrant_url, collection_options=settings.cluster.collection_options())
    assert isinstance(store, QdrantClientStore)
    calls = []
    real = store.client.create_collection

    def recording(*args, **kw):
        calls.append((args, kw))
        return real(*args, **kw)

    store.client.create_collection = recording
    store.ensure_collection("items", {"text": 8, "image": 4}, {"genre": "keyword"})
    store.ensure_collection("items", {"text": 8, "image": 4})  # exists: not created again
    assert len(calls) == 1
    (name,), kw = calls[0]
    assert name == "items"
    assert {k: kw[k] for k in ("shard_number", "replication_factor", "write_consistency_factor", "on_disk_payload")} == {
        k: v for k, v in CLUSTER.items() if k != "on_disk_vectors"
    }
    assert {k: (p.size, p.on_disk) for k, p in kw["vectors_config"].items()} == {"text": (8, True), "image": (4, True)}
    info = store.client.get_collection("items")  # the real collection exists with the on-disk vectors
    assert {k: (p.size, p.on_disk) for k, p in info.config.params.vectors.items()} == {"text": (8, True), "image": (4, True)}
    store.close()


def test_defaults_leave_the_layout_to_qdrant(tmp_path):
    assert Settings(path=tmp_path).cluster.collection_options() == {}


def test_write_consistency_above_replication_is_refused():
    with pytest.raises(ValueError, match="write_consistency_factor"):
        Settings(cluster={"replication_factor": 2, "write_consistency_factor": 3})
    with pytest.raises(InvalidInputError):
        from engine import Engine

        Engine.open(config={"cluster": {"shard_number": 0}})


def test_replicas_without_full_write_consistency_warn_about_counts(caplog):
    """Popularity counts are read with Qdrant's count, which takes no read consistency: with
    replicas, only writes acknowledged by every replica make them exact, and the settings say so."""
    with caplog.at_level(logging.WARNING, logger="engine.sections"):
        Settings(cluster={"replication_factor": 3, "write_consistency_factor": 2})
    assert any("popularity recount" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="engine.sections"):
        Settings(cluster={"replication_factor": 3, "write_consistency_factor": 3})
        Settings(cluster={"shard_number": 4})
    assert not caplog.records


def test_edge_store_ignores_the_layout_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="engine.store"):
        store = open_store(tmp_path, None, collection_options={"shard_number": 3})
    assert type(store).__name__ == "EdgeStore"
    assert "shard_number=3 ignored" in caplog.text
    store.close()


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")  # checked in a background thread; racy here
def test_layout_goes_on_the_wire_of_qdrant_clients_rest_transport(qdrant_recorder):
    """What a Qdrant server receives from qdrant-client's own request serialization (the server side
    here only records; the collection semantics on a real cluster are Qdrant's)."""
    url, requests = qdrant_recorder
    store = QdrantClientStore(url, api_key=None, collection_options=CLUSTER)
    store.ensure_collection("persona_items", {"text": 384}, {"genre": "keyword"})
    store.close()
    created = [b for m, p, b in requests if m == "PUT" and p.startswith("/collections/persona_items") and "/index" not in p]
    assert len(created) == 1
    body = created[0]
    assert {k: body[k] for k in ("shard_number", "replication_factor", "write_consistency_factor", "on_disk_payload")} == {
        "shard_number": 6, "replication_factor": 2, "write_consistency_factor": 2, "on_disk_payload": True
    }
    assert body["vectors"]["text"] == {"size": 384, "distance": "Cosine", "on_disk": True}
    assert any(m == "PUT" and p.startswith("/collections/persona_items/index") for m, p, _ in requests)
