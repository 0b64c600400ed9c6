"""The embedded store builds its vector index beside the live shard (a child process on a copy) and swaps it in.

The build itself is Qdrant's (qdrant-edge's optimizers, run for real in a child process). These tests pin what
Persona adds around it: writes made while the child builds are replayed on the copy, a failed build leaves the store
as it was, and a swap cut short by a crash is rolled back or finished on the next open. Small shards stay below
Qdrant's indexing threshold (the child answers "nothing built"), so where the swap itself is under test the wrapper
reports a build; the copy, the child, the replay and the swap are all real.
"""

from __future__ import annotations

import numpy as np
import pytest

import engine.store.edge as edge
from engine.errors import BackendUnavailableError
from engine.store import Point, VectorQuery, point_id
from engine.store.edge import EdgeStore
from engine.store.edge_build import aside_of

N = 200


def _points(lo: int, hi: int, rng: np.random.Generator) -> list[Point]:
    vecs = rng.normal(size=(hi - lo, 8)).astype(np.float32)
    return [Point(id=point_id("item", str(i)), vectors={"text": v.tolist()}, payload={"item_id": str(i)}) for i, v in zip(range(lo, hi), vecs)]


def _store(root):
    st = EdgeStore(root)
    st.ensure_collection("items", {"text": 8}, {"item_id": "keyword"})
    st.upsert("items", _points(0, N, np.random.default_rng(0)))
    return st


def _leftovers(root) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".items."))


def test_writes_during_the_build_are_replayed_on_the_built_copy(tmp_path, monkeypatch):
    """While the child builds, this process answers queries and takes writes (upsert, payload, vectors); after the
    swap every one of them is in the shard, nothing else changed, and no copy is left behind."""
    st = _store(tmp_path / "s")
    real, seen = edge.build_in_child, {}
    late = _points(N, N + 20, np.random.default_rng(1))

    def build_and_write(path):
        # the store's lock is free while the child runs: serve a query and write, as an API thread would
        seen["hits"] = len(st.query("items", [VectorQuery("text", vector=[1.0] * 8, limit=5)], 5))
        st.upsert("items", late)
        st.set_payload("items", [point_id("item", "3")], {"tag": "during"})
        st.update_vectors("items", [Point(point_id("item", "4"), {"text": [0.0] * 7 + [1.0]}, {})])
        st.ensure_vector("items", "cf", 4)  # a named vector added, as a fit adds ``cf``
        st.update_vectors("items", [Point(point_id("item", "5"), {"cf": [0.0, 1.0, 0.0, 0.0]}, {})])
        out = real(path)
        assert out is False  # 200 points: below Qdrant's indexing threshold, a plain index
        return True  # swap the copy in anyway: the path under test

    before = {h.id: h.payload for h in st.scroll("items")}
    monkeypatch.setattr(edge, "build_in_child", build_and_write)
    try:
        assert st.optimize("items") is True
        assert seen["hits"] == 5
        after = {h.id: h for h in st.scroll("items", with_vectors=True)}
        assert len(after) == N + 20 and st.count("items") == N + 20
        assert after[point_id("item", "3")].payload["tag"] == "during"
        assert np.allclose(after[point_id("item", "4")].vectors["text"], [0.0] * 7 + [1.0], atol=1e-6)
        assert np.allclose(after[point_id("item", "5")].vectors["cf"], [0.0, 1.0, 0.0, 0.0], atol=1e-6)
        cf_hits = st.query("items", [VectorQuery("cf", vector=[0.0, 1.0, 0.0, 0.0], limit=1)], 1)
        assert [h.id for h in cf_hits] == [point_id("item", "5")]
        assert all(after[i].payload == p for i, p in before.items() if i != point_id("item", "3"))
        assert _leftovers(tmp_path / "s") == []
        st.upsert("items", _points(N + 20, N + 21, np.random.default_rng(2)))  # writes after the swap reach the new shard
    finally:
        st.close()
    monkeypatch.undo()
    reopened = EdgeStore(tmp_path / "s")
    try:
        assert reopened.count("items") == N + 21 and reopened.optimize("items") is False  # a real child: nothing to build
    finally:
        reopened.close()


def test_a_failed_build_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    st = _store(tmp_path / "s")

    def fail(path):
        raise BackendUnavailableError("index build exited with status 137: killed")

    monkeypatch.setattr(edge, "build_in_child", fail)
    try:
        with pytest.raises(BackendUnavailableError, match="137"):
            st.optimize("items")
        assert _leftovers(tmp_path / "s") == [] and st.count("items") == N
        st.upsert("items", _points(N, N + 1, np.random.default_rng(1)))
        assert st.count("items") == N + 1
    finally:
        st.close()


def test_the_store_closed_during_a_build_keeps_its_data_and_drops_the_copy(tmp_path, monkeypatch):
    st = _store(tmp_path / "s")
    real = edge.build_in_child

    def close_then_build(path):
        st.upsert("items", _points(N, N + 1, np.random.default_rng(1)))
        st.close()
        return real(path) or True

    monkeypatch.setattr(edge, "build_in_child", close_then_build)
    assert st.optimize("items") is False
    monkeypatch.undo()
    assert _leftovers(tmp_path / "s") == []
    reopened = EdgeStore(tmp_path / "s")
    try:
        assert reopened.count("items") == N + 1
    finally:
        reopened.close()


def test_a_real_build_swaps_in_an_hnsw_index_with_the_same_answers(tmp_path):
    """The child builds for real: the shard's indexing threshold is lowered to 1 KB (qdrant-edge rewrites a shard's
    config when it is loaded with one), so 200 points get an HNSW index; queries answer as before, from the index."""
    import qdrant_edge as qe

    root = tmp_path / "s"
    _store(root).close()
    cfg = qe.EdgeConfig(vectors={"text": qe.EdgeVectorParams(size=8, distance=qe.Distance.Cosine)},
                        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1))
    qe.EdgeShard.load(str(root / "items"), cfg).close()
    st = EdgeStore(root)
    try:
        probes = np.random.default_rng(5).normal(size=(5, 8)).tolist()
        before = [[h.id for h in st.query("items", [VectorQuery("text", vector=q, limit=5)], 5)] for q in probes]
        assert st.optimize("items") is True
        after = [[h.id for h in st.query("items", [VectorQuery("text", vector=q, limit=5)], 5)] for q in probes]
        assert after == before and st.count("items") == N and _leftovers(root) == []
    finally:
        st.close()
    info = qe.EdgeShard.load(str(root / "items"))
    try:
        assert info.info().indexed_vectors_count == N
    finally:
        info.close()


def test_one_build_per_collection_at_a_time(tmp_path, monkeypatch):
    """A second optimize() while one builds returns at once: one copy, one child. (The second call is made once
    only, so that a missing guard fails here instead of recursing, a shard copy per level.)"""
    st = _store(tmp_path / "s")
    real, builds, inner = edge.build_in_child, [], []

    def build(path):
        builds.append(path)
        if len(builds) == 1:
            inner.append(st.optimize("items"))
        return real(path)

    monkeypatch.setattr(edge, "build_in_child", build)
    try:
        assert st.optimize("items") is False
        assert inner == [False] and len(builds) == 1
    finally:
        st.close()


@pytest.mark.parametrize("cut", ["between_the_renames", "after_both_renames"])
def test_a_swap_cut_short_is_rolled_back_or_finished_on_open(tmp_path, cut):
    """A crash between the swap's two renames leaves the old shard aside and no live folder: the next open puts it
    back. A crash after both leaves the old shard aside beside the new one: the next open keeps the new one and
    deletes the old. Leftover copies go too. (The old shard here has one point less, to tell them apart.)"""
    import shutil

    root = tmp_path / "s"
    st = _store(root)
    st.close()
    live = root / "items"
    shutil.copytree(live, tmp_path / "old")
    st = EdgeStore(root)
    st.upsert("items", _points(N, N + 1, np.random.default_rng(1)))
    st.close()
    (root / ".items.build-0123abcd").mkdir()
    if cut == "between_the_renames":
        shutil.rmtree(live)
        (tmp_path / "old").rename(aside_of(live))  # the old shard, complete, waiting aside
        want = N
    else:
        (tmp_path / "old").rename(aside_of(live))
        want = N + 1
    st = EdgeStore(root)
    try:
        assert st.has_collection("items") and st.count("items") == want
        assert _leftovers(root) == [] and live.exists()
    finally:
        st.close()


def test_reads_retry_on_the_new_shard_when_a_swap_closes_theirs(tmp_path, monkeypatch):
    """A read holding the shard when a build swaps it in (here: the swap runs inside the read, after the shard was
    fetched) is answered from the new shard, not "Shard is not initialized"; on a closed store it still fails."""
    st = _store(tmp_path / "s")
    monkeypatch.setattr(edge, "build_in_child", lambda p: True)
    real, swapped = edge.to_filter, []

    def swap_first(flt):
        if not swapped:
            swapped.append(st.optimize("items"))
        return real(flt)

    monkeypatch.setattr(edge, "to_filter", swap_first)
    try:
        assert st.count("items") == N and swapped == [True]
        assert len(st.query("items", [VectorQuery("text", vector=[1.0] * 8, limit=3)], 3)) == 3
    finally:
        st.close()


@pytest.mark.parametrize("made", ["now", "before", "before-settings"])
def test_points_rewritten_after_a_build_get_an_index_of_their_own(tmp_path, made):
    """A refit rewrites the cf vectors of the items with events only; Qdrant moves those points to a segment of their
    own. The store indexes a segment once it holds about 1 MB of vectors (Qdrant's default waits for 10 MB: these
    12,000 128-d points, 6 MB, would stay a scan, and so would the 2,100 rewritten ones, 1.05 MB, which are too few
    for Qdrant to rebuild the old segment instead). A store made before this setting ("before": Qdrant's default in
    its shard's config, or no optimizer settings at all) gets it when it is opened."""
    import json

    rng = np.random.default_rng(5)
    X = rng.normal(size=(12_000, 128)).astype(np.float32)
    with EdgeStore(tmp_path / "s") as st:
        st.ensure_collection("items", {"text": 128}, quantize=True)
    conf = tmp_path / "s" / "items" / "edge_config.json"
    if made != "now":
        cfg = json.loads(conf.read_text())
        if made == "before":
            cfg["optimizers"]["indexing_threshold"] = None
        else:  # what a store created before INDEXING_KB really holds: no optimizers block at all
            del cfg["optimizers"]
        conf.write_text(json.dumps(cfg))
    with EdgeStore(tmp_path / "s") as st:
        st.upsert("items", [Point(point_id("item", str(i)), {"text": X[i].tolist()}, {"item_id": str(i)}) for i in range(12_000)])
        assert st.optimize("items") is True
        st.ensure_vector("items", "cf", 8, "dot")
        st.update_vectors("items", [Point(point_id("item", str(i)), {"cf": [1.0] * 8}, {}) for i in range(2100)])
        assert st.optimize("items") is True  # the 2,100 moved points are indexed, not left to a scan
        q = X[7] / np.linalg.norm(X[7])
        assert st.query("items", [VectorQuery("text", vector=q.tolist(), limit=1)], 1)[0].payload["item_id"] == "7"
    assert json.loads(conf.read_text())["optimizers"]["indexing_threshold"] == 1000
