"""Ingestion: formats, bad input reported per item, unchanged items skipped, resume after kill -9."""

import io
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from engine.store import point_id


@pytest.fixture(scope="module")
def posters(ml):
    return [i for i in ml.items if i.image][:6]


def _png(mode="RGB", size=(32, 48), frames=1):
    buf = io.BytesIO()
    color = {"RGB": (200, 10, 10), "CMYK": (0, 255, 255, 0), "P": 3, "LA": (100, 200)}[mode]
    im = Image.new(mode, size, color)
    if frames > 1:
        ims = [Image.new("P", size, i * 40) for i in range(frames)]
        ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:])
    else:
        im.save(buf, format="JPEG" if mode == "CMYK" else "PNG")
    return buf.getvalue()


def test_bad_input_reported_rest_goes_on(make_engine, tmp_path, posters):
    from engine.sections import PACKAGED_MINILM  # noqa: F401

    d = tmp_path / "imgs"
    d.mkdir()
    good = Path(posters[0].image).read_bytes()
    (d / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (d / "garbage.jpg").write_bytes(b"not an image at all")
    (d / "cmyk.jpg").write_bytes(_png("CMYK"))
    (d / "anim.gif").write_bytes(_png(frames=3))
    bomb = Image.new("1", (12000, 12000))  # 144 Mpx, tiny file: a decompression bomb
    bomb.save(d / "bomb.png")
    records = [
        {"id": "ok", "title": "Fine", "description": "A fine film.", "image": posters[0].image},
        {"id": "trunc", "title": "Truncated poster", "image": str(d / "truncated.jpg")},
        {"id": "garbage", "title": "Garbage poster", "image": str(d / "garbage.jpg")},
        {"id": "bomb", "title": "Bomb", "image": str(d / "bomb.png")},
        {"id": "cmyk", "title": "CMYK poster", "image": str(d / "cmyk.jpg")},
        {"id": "anim", "title": "Animated", "image": str(d / "anim.gif")},
        {"id": "missing-img", "title": "No file", "image": str(d / "nope.jpg")},
        {"id": "huge", "title": "Huge", "description": "word " * 220_000},
        {"title": "no id"},
        {"id": "ok", "title": "duplicate of ok"},
        {"id": "nan", "title": "NaN attrs", "attributes": {"score": float("nan"), "genres": ["Drama"], "x": [1.0, math.inf]}},
        {"id": "bare"},
    ]
    eng = make_engine(clip={"enabled": True, "pretrained": None}, ingest={"max_image_pixels": 50_000_000})
    rep = eng.add_items(records)
    errs = {(e.item_id, e.fatal): e.error for e in rep.errors}
    assert rep.total == 12 and rep.added == 10 and rep.failed == 2
    assert "missing id" in errs[(None, True)]
    assert "duplicate" in errs[("ok", True)]
    for bad in ("trunc", "garbage", "missing-img"):
        assert "image skipped" in errs[(bad, False)], bad
    assert "decompression bomb" in errs[("bomb", False)] or "pixel limit" in errs[("bomb", False)]
    assert "truncated" in errs[("huge", False)]
    assert "not finite" in errs[("nan", False)]
    assert ("cmyk", False) not in errs and ("anim", False) not in errs
    # everything valid is stored and retrievable, with or without image / description
    payloads = {p["item_id"]: p for p in (eng.item(i) for i in ["ok", "trunc", "bomb", "cmyk", "anim", "huge", "nan", "bare"])}
    assert payloads["ok"]["has_image"] and payloads["cmyk"]["has_image"] and payloads["anim"]["has_image"]
    assert not payloads["trunc"]["has_image"] and not payloads["bomb"]["has_image"]
    assert len(payloads["huge"]["description"]) == eng.settings.ingest.max_description_chars
    assert payloads["nan"]["attributes"] == {"genres": ["Drama"], "x": [1.0]}
    assert payloads["bare"]["summary"]
    hits = eng.store.retrieve(eng.items_col, [point_id("item", "ok"), point_id("item", "bare")], with_vectors=True)
    assert set(hits[0].vectors) == {"text", "image", "clip_text"} and "image" not in hits[1].vectors
    assert eng.search("Truncated poster", k=3)[0].item_id == "trunc"  # no image, no description: still found


def test_formats_and_rerun_skips_unchanged(make_engine, tmp_path, ml):
    items = ml.items[:40]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps(i.model_dump()) for i in items) + "\n{broken json\n")
    csvp = tmp_path / "c.csv"
    import csv

    with csvp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["item_id", "title", "description", "genres"])
        w.writeheader()
        for i in items:
            w.writerow({"item_id": i.id, "title": i.title, "description": i.description or "", "genres": "|".join(i.attributes["genres"])})
    pq = tmp_path / "c.parquet"
    import pyarrow as pa
    import pyarrow.parquet as papq

    papq.write_table(pa.Table.from_pylist([{"id": i.id, "title": i.title, "description": i.description} for i in items]), pq)

    eng = make_engine()
    rep = eng.add_items(jsonl)
    assert rep.added == 40 and rep.failed == 1 and "invalid JSON" in rep.errors[-1].error
    again = eng.add_items(jsonl)
    assert again.added == 0 and again.unchanged == 40 and again.updated == 0
    assert eng.catalog.folded_titles([items[0].id, "no-such-id"]) == {items[0].id: " ".join(items[0].title.lower().split())}
    changed = eng.add_items([dict(items[0].model_dump(), title="New  Title")])
    assert changed.updated == 1 and eng.item(items[0].id)["title"] == "New  Title"
    assert eng.catalog.folded_titles([items[0].id]) == {items[0].id: "new title"}  # the served list's de-dup cache forgot the old one
    assert eng.stats()["items"] == 40
    assert make_engine(tmp_path / "csv").add_items(csvp).added == 40
    e3 = make_engine(tmp_path / "pq")
    assert e3.add_items(pq).added == 40 and e3.item(items[1].id)["title"] == items[1].title


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from engine import Engine
    from engine.offline.datasets import load_movielens
    items = load_movielens().items
    eng = Engine.open(sys.argv[1], {"clip": {"enabled": False}, "llm": {"backend": "none"}, "ingest": {"batch_size": 50}})
    def on_batch(rep):
        print("stored", rep.added + rep.unchanged, flush=True)
    eng.add_items(items, on_batch=on_batch)
    print("finished", flush=True)
    """
)


@pytest.mark.full  # the API kill -9 test (tests/test_api_server.py) covers crash safety in the default run
def test_resume_after_kill(tmp_path, make_engine, ml):
    path = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    stored = 0
    for line in proc.stdout:
        if line.startswith("stored"):
            stored = int(line.split()[1])
            if stored >= 300:
                proc.send_signal(signal.SIGKILL)  # mid-run, no chance to clean up
                break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and 300 <= stored < len(ml.items)
    eng = make_engine(path)
    assert eng.stats()["items"] >= stored  # every acknowledged batch survived
    rep = eng.add_items(ml.items)
    assert rep.failed == 0 and rep.unchanged >= stored and rep.added + rep.unchanged == len(ml.items)
    assert eng.stats()["items"] == len(ml.items)  # no duplicates, none lost
    ids = {h.payload["item_id"] for h in eng.store.scroll(eng.items_col)}
    assert ids == {i.id for i in ml.items}
