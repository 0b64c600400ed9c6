"""The same calls on both vector store backends give the same answers (qdrant-client congruence-test style):
the embedded Qdrant edge engine, and qdrant-client (its local mode stands in for the server API)."""

import uuid

import numpy as np
import pytest

from engine.store import Filter, Point, VectorQuery, parse_filter, point_id, point_key
from engine.store.client import QdrantClientStore
from engine.store.edge import EdgeStore

N = 300


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(N, 16)).astype(np.float32)
    img = rng.normal(size=(N, 8)).astype(np.float32)
    genres = ["Drama", "Comedy", "Action", "Horror"]
    points = [
        Point(
            id=point_id("item", str(i)),
            vectors={"text": vecs[i].tolist(), **({"image": img[i].tolist()} if i % 3 else {})},
            payload={"item_id": str(i), "popularity": float((i * 7919) % 1009), "attributes": {"genres": [genres[i % 4], genres[(i // 4) % 4]], "year": 1950 + i % 50}},
        )
        for i in range(N)
    ]
    out = []
    for s in (EdgeStore(tmp_path_factory.mktemp("edge")), QdrantClientStore("local", path=tmp_path_factory.mktemp("qc"))):
        s.ensure_collection("items", {"text": 16, "image": 8}, {"item_id": "keyword", "popularity": "float", "attributes.genres": "keyword"})
        s.upsert("items", points)
        out.append(s)
    yield out, vecs, img
    for s in out:
        s.close()


def _ids(hits):
    return [h.payload["item_id"] for h in hits]


def test_count_and_retrieve(stores):
    (a, b), _, _ = stores
    assert a.count("items") == b.count("items") == N
    ids = [point_id("item", str(i)) for i in (5, 1, 999, 7)]
    assert _ids(a.retrieve("items", ids)) == _ids(b.retrieve("items", ids)) == ["5", "1", "7"]
    assert [h.payload for h in a.retrieve("items", ids, fields=["item_id", "popularity"])] == [
        h.payload for h in b.retrieve("items", ids, fields=["item_id", "popularity"])] == [
        {"item_id": i, "popularity": float((int(i) * 7919) % 1009)} for i in ("5", "1", "7")]
    f = parse_filter({"genres": "Drama"})
    assert a.count("items", f) == b.count("items", f) > 0


@pytest.mark.parametrize(
    "spec",
    [None, {"genres": "Comedy"}, {"genres": ["Horror", "Action"]}, {"year": {"gte": 1970, "lt": 1990}}, {"genres": "Drama", "year": {"lte": 1960}}],
)
def test_nearest_with_filters(stores, spec):
    (a, b), vecs, _ = stores
    q = [VectorQuery("text", vector=vecs[3].tolist())]
    f = parse_filter(spec)
    f.exclude_ids = {point_id("item", "3")}
    ra, rb = a.query("items", q, 10, f), b.query("items", q, 10, f)
    assert _ids(ra) == _ids(rb) and len(ra) == 10 and "3" not in _ids(ra)
    assert np.allclose([h.score for h in ra], [h.score for h in rb], atol=1e-4)


def test_query_without_payload_returns_the_same_ids_and_scores(stores):
    (a, b), vecs, _ = stores
    q = [VectorQuery("text", vector=vecs[8].tolist())]
    for s in (a, b):
        full, bare = s.query("items", q, 20), s.query("items", q, 20, with_payload=False)
        assert [h.id for h in bare] == [h.id for h in full] and all(h.payload == {} and h.vectors is None for h in bare)
        assert np.allclose([h.score for h in bare], [h.score for h in full])


def test_nearest_keys_are_the_query_ids_as_integers(stores):
    (a, b), vecs, _ = stores
    f = parse_filter({"genres": "Drama"})
    f.exclude_ids = {point_id("item", "8")}
    answers = []
    for s in (a, b):
        for flt in (None, f):
            full = s.query("items", [VectorQuery("text", vector=vecs[8].tolist())], 25, flt)
            keys = s.nearest_keys("items", "text", vecs[8].tolist(), 25, flt)
            assert keys == [point_key(h.id) for h in full] and len(keys) == 25
            answers.append(keys)
    assert answers[:2] == answers[2:]  # and the same on both backends
    pid = point_id("item", "8")
    assert point_key(pid) == point_key(uuid.UUID(pid)) == uuid.UUID(pid).int and point_key(7) == point_key("7") == 7
    assert point_key(pid) not in answers[1]


def test_recommend_query(stores):
    (a, b), vecs, _ = stores
    q = [VectorQuery("text", positives=[vecs[1].tolist(), vecs[2].tolist()], negatives=[vecs[4].tolist()])]
    f = Filter(exclude_ids={point_id("item", i) for i in ("1", "2", "4")})
    assert _ids(a.query("items", q, 10, f)) == _ids(b.query("items", q, 10, f))


def test_fusion_and_order_by(stores):
    (a, b), vecs, img = stores
    qs = [
        VectorQuery("text", vector=vecs[10].tolist(), limit=50),
        VectorQuery("image", vector=img[11].tolist(), limit=50, weight=0.5),
        VectorQuery("text", order_by="popularity", limit=50, weight=0.5),
    ]
    ra, rb = a.query("items", qs, 15), b.query("items", qs, 15)
    # RRF ties may be broken differently; everything strictly above the last score must agree.
    cut = max(min(h.score for h in ra), min(h.score for h in rb)) + 1e-6
    assert {h.payload["item_id"] for h in ra if h.score > cut} == {h.payload["item_id"] for h in rb if h.score > cut}
    assert np.allclose(sorted(h.score for h in ra), sorted(h.score for h in rb), atol=1e-4)
    top_a, top_b = a.top_by("items", "popularity", 5), b.top_by("items", "popularity", 5)
    assert [h.payload["popularity"] for h in top_a] == [h.payload["popularity"] for h in top_b]


def test_scroll_and_payload_update(stores):
    (a, b), _, _ = stores
    for s in (a, b):
        s.set_payload("items", [point_id("item", "0")], {"popularity": 5000.0})
    assert _ids(a.top_by("items", "popularity", 1)) == _ids(b.top_by("items", "popularity", 1)) == ["0"]
    assert sorted(_ids(a.scroll("items", Filter(match={"item_id": ["1", "2"]})))) == sorted(_ids(b.scroll("items", Filter(match={"item_id": ["1", "2"]})))) == ["1", "2"]


def test_added_dot_vector_keeps_other_vectors_and_payload(tmp_path):
    """A named vector added after the fact (the fitted ``cf`` factors, dot product) answers the same on both
    backends, and writing it keeps each point's other vectors and payload; a new size re-creates it."""
    rng = np.random.default_rng(1)
    text = rng.normal(size=(40, 8)).astype(np.float32)
    cf = rng.normal(size=(40, 4)).astype(np.float32) * rng.uniform(0.1, 3, size=(40, 1)).astype(np.float32)
    pts = [Point(point_id("item", str(i)), {"text": text[i].tolist()}, {"item_id": str(i)}) for i in range(40)]
    q = rng.normal(size=4).astype(np.float32)
    expect = [str(i) for i in np.argsort(-(cf @ q))[:10]]  # dot, not cosine: the norms matter
    for s in (EdgeStore(tmp_path / "e"), QdrantClientStore("local", path=tmp_path / "q")):
        with s:
            s.ensure_collection("items", {"text": 8}, {"item_id": "keyword"})
            s.upsert("items", pts)
            s.ensure_vector("items", "cf", 4, "dot")
            s.ensure_vector("items", "cf", 4, "dot")  # idempotent
            s.update_vectors("items", [Point(point_id("item", str(i)), {"cf": cf[i].tolist()}, {}) for i in range(40)])
            got = _ids(s.query("items", [VectorQuery("cf", vector=q.tolist())], 10))
            assert got == expect
            h = s.retrieve("items", [point_id("item", "3")], with_vectors=True)[0]
            assert h.payload["item_id"] == "3"
            assert np.allclose(h.vectors["text"], text[3] / np.linalg.norm(text[3]), atol=1e-5)
            assert np.allclose(h.vectors["cf"], cf[3], atol=1e-5)
            ex = Filter(exclude_ids={point_id("item", expect[0])})
            assert _ids(s.query("items", [VectorQuery("cf", vector=q.tolist())], 3, ex)) == expect[1:4]
            s.ensure_vector("items", "cf", 6, "dot")  # another size: dropped and re-created
            s.update_vectors("items", [Point(point_id("item", "0"), {"cf": [1.0] * 6}, {})])
            assert len(s.retrieve("items", [point_id("item", "0")], with_vectors=True)[0].vectors["cf"]) == 6
            s.ensure_vector("items", "cf", 6, "cosine")  # same size, another distance: re-created too
            s.update_vectors("items", [Point(point_id("item", "0"), {"cf": [2.0] * 6}, {})])
            assert np.allclose(s.retrieve("items", [point_id("item", "0")], with_vectors=True)[0].vectors["cf"], 6 ** -0.5, atol=1e-5)  # cosine stores unit vectors


def test_points_can_lack_a_named_vector_and_drop_it(tmp_path):
    """A named vector on some points only (a fit's ``cf`` in index mode: items with events): queries on it reach
    those points alone, ``Filter(has_vector=...)`` selects them, and ``delete_vectors`` removes the vector from
    points (unknown ids ignored) while their other vectors and payload stay; the same on both backends."""
    rng = np.random.default_rng(2)
    text = rng.normal(size=(30, 8)).astype(np.float32)
    cf = rng.normal(size=(30, 4)).astype(np.float32)
    q = rng.normal(size=4).astype(np.float32)
    holders = [i for i in range(30) if i % 3 == 0]
    for s in (EdgeStore(tmp_path / "e"), QdrantClientStore("local", path=tmp_path / "q")):
        with s:
            s.ensure_collection("items", {"text": 8}, {"item_id": "keyword"})
            s.upsert("items", [Point(point_id("item", str(i)), {"text": text[i].tolist()}, {"item_id": str(i)}) for i in range(30)])
            s.ensure_vector("items", "cf", 4, "dot")
            s.update_vectors("items", [Point(point_id("item", str(i)), {"cf": cf[i].tolist()}, {}) for i in holders])
            got = _ids(s.query("items", [VectorQuery("cf", vector=q.tolist())], 30))
            assert got == [str(i) for i in sorted(holders, key=lambda i: -float(cf[i] @ q))]
            assert sorted(_ids(s.scroll("items", Filter(has_vector="cf")))) == sorted(map(str, holders))
            assert s.count("items", Filter(has_vector="cf", match={"item_id": "3"})) == 1
            s.delete_vectors("items", [point_id("item", "0"), point_id("item", "3"), point_id("item", "nope")], "cf")
            s.delete_vectors("items", [], "cf")
            left = [i for i in holders if i not in (0, 3)]
            assert sorted(_ids(s.scroll("items", Filter(has_vector="cf")))) == sorted(map(str, left))
            assert sorted(_ids(s.query("items", [VectorQuery("cf", vector=q.tolist())], 30))) == sorted(map(str, left))
            h = s.retrieve("items", [point_id("item", "3")], with_vectors=True)[0]
            assert h.payload == {"item_id": "3"} and set(h.vectors or {}) == {"text"} and s.count("items") == 30


def test_optimize_builds_the_index_and_keeps_every_answer(tmp_path):
    """optimize(): the embedded engine runs Qdrant's optimizers now (HNSW past Qdrant's indexing threshold; 300 points
    stay a plain index, as on a server) and answers as before, later writes are still found; a Qdrant server
    (qdrant-client) optimizes by itself, so there it does nothing. Both say whether they built anything. bench/scale.py times a 100k-item query
    before and after (a scan, then HNSW)."""
    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(N, 16)).astype(np.float32)
    pts = [Point(id=point_id("item", str(i)), vectors={"text": vecs[i].tolist()}, payload={"item_id": str(i)}) for i in range(N)]
    edge, client = EdgeStore(tmp_path / "e"), QdrantClientStore("local", path=tmp_path / "c")
    try:
        for s in (edge, client):
            s.ensure_collection("items", {"text": 16}, {"item_id": "keyword"})
            s.upsert("items", pts)
        queries = [vecs[i] + 0.1 for i in (0, 17, 123)]
        before = [_ids(edge.query("items", [VectorQuery("text", vector=q.tolist(), limit=10)], 10)) for q in queries]
        # Qdrant's answer: whether it built anything (nothing below its indexing threshold); a server: nothing to do
        assert edge.optimize("items") is False and client.optimize("items") is False
        for q, want in zip(queries, before):
            got = _ids(edge.query("items", [VectorQuery("text", vector=q.tolist(), limit=10)], 10))
            assert got == want == _ids(client.query("items", [VectorQuery("text", vector=q.tolist(), limit=10)], 10))
        edge.upsert("items", [Point(id=point_id("item", "late"), vectors={"text": (queries[0] * 3).tolist()}, payload={"item_id": "late"})])
        assert _ids(edge.query("items", [VectorQuery("text", vector=queries[0].tolist(), limit=1)], 1)) == ["late"]
    finally:
        edge.close()
        client.close()


def test_delete_removes_points_from_every_answer_on_both_backends(tmp_path):
    """``delete`` on both backends: the points leave counts, retrieve, scroll and queries; unknown ids are ignored."""
    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(20, 8)).astype(np.float32)
    pts = [Point(point_id("item", str(i)), {"text": vecs[i].tolist()}, {"item_id": str(i)}) for i in range(20)]
    answers = []
    for s in (EdgeStore(tmp_path / "edge"), QdrantClientStore("local", path=tmp_path / "qc")):
        s.ensure_collection("items", {"text": 8}, {"item_id": "keyword"})
        s.upsert("items", pts)
        s.delete("items", [point_id("item", i) for i in ("3", "4", "not-there")])
        s.delete("items", [])
        s.flush()
        near = _ids(s.query("items", [VectorQuery("text", vector=vecs[3].tolist())], 20))
        answers.append((s.count("items"), _ids(s.retrieve("items", [point_id("item", i) for i in ("2", "3", "4")])),
                        sorted(h.payload["item_id"] for h in s.scroll("items")), near))
        s.close()
    assert answers[0] == answers[1]
    count, got, scrolled, near = answers[0]
    assert count == 18 and got == ["2"] and "3" not in scrolled and "4" not in scrolled and len(near) == 18 and "3" not in near


def test_update_present_skips_a_point_deleted_meanwhile_on_both_backends(tmp_path):
    """Both backends refuse a whole vector or payload write that names a missing point; ``update_present`` writes the
    others (a fit's cf vectors and a popularity recount racing a delete)."""
    pts = [Point(point_id("item", str(i)), {"text": [1.0, float(i)]}, {"item_id": str(i)}) for i in range(4)]
    for s in (EdgeStore(tmp_path / "edge"), QdrantClientStore("local", path=tmp_path / "qc")):
        s.ensure_collection("items", {"text": 2}, {"item_id": "keyword"})
        s.upsert("items", pts)
        s.ensure_vector("items", "cf", 2, "dot")
        s.delete("items", [pts[1].id])
        with pytest.raises(Exception):  # noqa: B017 - each backend raises its own error type
            s.update_vectors("items", [Point(p.id, {"cf": [0.5, 0.5]}, {}) for p in pts])
        s.update_present("items", [Point(p.id, {"cf": [0.5, 0.5]}, {}) for p in pts])
        s.update_present("items", [Point(p.id, {}, {}) for p in pts], {"popularity": 7.0})
        got = s.retrieve("items", [p.id for p in pts], with_vectors=True)
        assert [h.payload["item_id"] for h in got] == ["0", "2", "3"]
        assert all(h.vectors["cf"] == pytest.approx([0.5, 0.5]) and h.payload["popularity"] == 7.0 for h in got)
        s.close()
