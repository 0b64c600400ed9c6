"""``Settings.quantization``: Qdrant's int8 scalar quantization reaches the collections searched by vector (items) on
both backends, an HNSW index searched through the int8 copy answers like float32 (exact scores, the same top hits),
and every query asks for the rescoring, on the wire too."""

from __future__ import annotations

import json

import numpy as np
import pytest
from qdrant_client import models as qm

from engine.config import Settings
from engine.store import Point, VectorQuery, open_store, point_id
from engine.store.client import QdrantClientStore
from engine.store.edge import EdgeStore

INT8 = {"scalar": {"type": "int8", "quantile": 0.99, "always_ram": True}}


def _edge_quantization(collections_dir, name: str):
    return json.loads((collections_dir / name / "edge_config.json").read_text()).get("quantization_config")


@pytest.mark.parametrize("env, want", [(None, "int8"), ("none", "none"), ("int8", "int8")])
def test_the_setting_reaches_searched_collections_on_both_backends(tmp_path, monkeypatch, env, want):
    monkeypatch.delenv("PERSONA_QUANTIZATION", raising=False)
    if env is not None:
        monkeypatch.setenv("PERSONA_QUANTIZATION", env)
    q = Settings(path=tmp_path).quantization
    assert q == want
    edge = open_store(tmp_path / "e", quantization=q)
    client = open_store(tmp_path / "c", "local", quantization=q)
    calls = []
    real = client.client.create_collection

    def recording(*args, **kw):  # local mode accepts quantization but does not keep it: look at what the real call got
        calls.append(kw)
        return real(*args, **kw)

    client.client.create_collection = recording
    try:
        for s in (edge, client):
            s.ensure_collection("items", {"text": 8}, quantize=True)
            s.ensure_collection("users", {"summary": 8})  # read by id only: never quantized
        assert _edge_quantization(tmp_path / "e" / "collections", "items") == (INT8 if want == "int8" else None)
        assert _edge_quantization(tmp_path / "e" / "collections", "users") is None
        items, users = calls[0]["quantization_config"], calls[1]["quantization_config"]
        assert users is None and (items is None) == (want == "none")
        if want == "int8":
            assert isinstance(items, qm.ScalarQuantization) and items.scalar.type == qm.ScalarType.INT8 and items.scalar.always_ram
    finally:
        edge.close()
        client.close()


@pytest.mark.parametrize("setting", ["int8", "none"])
def test_engine_open_passes_the_setting_to_its_store(make_engine, tmp_path, setting):
    eng = make_engine(tmp_path / setting, quantization=setting)
    eng.add_items([{"id": "1", "title": "Heat", "description": "A heist film."}])
    root = tmp_path / setting / "collections"
    assert _edge_quantization(root, eng.items_col) == (INT8 if setting == "int8" else None)
    assert _edge_quantization(root, eng.users_col) is None


def test_unknown_quantization_is_refused(tmp_path):
    with pytest.raises(ValueError, match="int8"):
        Settings(path=tmp_path, quantization="int4")
    for make in (lambda: EdgeStore(tmp_path / "e", quantization="int4"), lambda: QdrantClientStore("local", path=tmp_path / "c", quantization="int4")):
        with pytest.raises(ValueError, match="int8"):
            make()


def test_int8_hnsw_answers_like_float32_and_a_store_reopened_with_another_setting_too(tmp_path):
    """8,000 x 384-d clustered vectors (past Qdrant's indexing threshold, so ``optimize`` builds HNSW; the int8 copy
    is on disk beside the originals, for a dot-product ``cf`` vector added after creation too). Through the int8 copy
    the hits are rescored with the originals (qdrant-edge's default returned the int8 approximations, a few
    thousandths off) and oversampled 2x (without it 7.5% of the exact top 10 were missed here). Each store is
    reopened with the other setting, which applies to new collections only: its queries still answer exactly (an
    int8 collection opened with ``none`` is still rescored)."""
    rng = np.random.default_rng(0)
    n = 8000
    X = (rng.normal(size=(50, 384))[rng.integers(0, 50, n)] + 0.5 * rng.normal(size=(n, 384))).astype(np.float32)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    C = rng.normal(size=(n, 64)).astype(np.float32)  # a dot-product vector added after creation, like fit()'s cf
    pts = [Point(point_id("item", str(i)), {"text": X[i].tolist(), "cf": C[i].tolist()}, {"i": i}) for i in range(n)]
    answers = {}
    for q, other in (("none", "int8"), ("int8", "none")):
        store = EdgeStore(tmp_path / q, quantization=q)
        store.ensure_collection("items", {"text": 384}, quantize=True)
        store.ensure_vector("items", "cf", 64, "dot")
        store.upsert("items", pts)
        assert store.optimize("items") is True
        store.close()
        for vec in ("text", "cf"):  # the vector added later is quantized too
            assert bool(list((tmp_path / q).glob(f"items/segments/*/vector_storage-{vec}/quantized.data"))) == (q == "int8"), vec
        store = EdgeStore(tmp_path / q, quantization=other)
        answers[q] = [store.query("items", [VectorQuery("text", vector=X[i].tolist())], 10) for i in range(0, 400, 20)]
        store.close()
    for q, per_query in answers.items():
        overlap = []
        for i, hits in zip(range(0, 400, 20), per_query):
            rows = [h.payload["i"] for h in hits]
            np.testing.assert_allclose([h.score for h in hits], Xn[rows] @ Xn[i], atol=1e-5)
            overlap.append(len(set(rows) & set(np.argsort(-(Xn @ Xn[i]))[:10].tolist())) / 10)
        assert np.mean(overlap) >= 0.97, (q, np.mean(overlap))


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")  # checked in a background thread; racy here
def test_a_server_receives_the_rescoring_with_every_query(qdrant_recorder):
    url, requests = qdrant_recorder
    store = QdrantClientStore(url, api_key=None)
    store.query("persona_items", [VectorQuery("text", vector=[0.1] * 4)], 5)
    store.query("persona_items", [VectorQuery("text", vector=[0.1] * 4, limit=7), VectorQuery("clip_text", vector=[0.2] * 4, limit=7),
                                  VectorQuery("", order_by="popularity", limit=7)], 5)
    store.close()
    queries = [b for m, p, b in requests if m == "POST" and p.startswith("/collections/persona_items/points/query")]
    assert len(queries) == 2
    want = {"quantization": {"rescore": True, "oversampling": 2.0}}
    assert {k: v for k, v in queries[0]["params"].items() if v is not None} == want
    got = [{k: v for k, v in (p.get("params") or {}).items() if v is not None} for p in queries[1]["prefetch"]]
    assert got == [want, want, {}]  # an order_by prefetch has no vectors to rescore: nothing asked
