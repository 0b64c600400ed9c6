"""Ingestion throughput on the full ml-100k catalog against the raw encoders on the same inputs.

    .venv/bin/python bench/ingest.py [--clip random] [--limit N]

Prints items/s for the pipeline (validation, image reading/decoding, hashing, encoding, Qdrant edge
upserts) and for the bare encoders (the ceiling), measured in the same run, and their ratio.
``--clip random`` adds open_clip ViT-B-32 with random weights (no CLIP weights ship on PyPI; the
throughput is that of the real model)."""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from engine import Engine
from engine.offline.datasets import load_movielens
from indexers.images import decode_image, read_image_bytes
from indexers.ingest import clip_text, item_text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clip", choices=["off", "random"], default="off")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    items = load_movielens().items[: args.limit]
    cfg = {"llm": {"backend": "none"}, "clip": {"enabled": args.clip != "off", "pretrained": None}}
    with tempfile.TemporaryDirectory() as d:
        eng = Engine.open(d, cfg)
        text, clip = eng.text_encoder, eng.clip  # load models outside both timings
        bs = eng.settings.text.batch_size
        # Ceiling: the encoders alone on the same inputs (images already decoded, texts built).
        texts = [item_text(i) for i in items]
        imgs = [decode_image(read_image_bytes(i.image, None, 10**8), 10**8) for i in items if i.image] if clip else []
        ctexts = [clip_text(i) for i in items]
        text.encode(texts[:bs])  # warm-up

        def raw() -> float:
            t0 = time.perf_counter()
            for i in range(0, len(texts), bs):
                text.encode(texts[i : i + bs])
                if clip:
                    clip.encode_texts(ctexts[i : i + bs])
            if clip:
                for i in range(0, len(imgs), eng.settings.clip.batch_size):
                    clip.encode_images(imgs[i : i + eng.settings.clip.batch_size])
            return time.perf_counter() - t0

        raw_runs = [raw()]
        t0 = time.perf_counter()
        rep = eng.add_items(items, progress=False)
        pipe_s = time.perf_counter() - t0
        assert rep.added == len(items), rep
        t0 = time.perf_counter()
        rerun = eng.add_items(items, progress=False)
        rerun_s = time.perf_counter() - t0
        raw_runs.append(raw())  # before and after the pipeline, so drift in machine speed can't flatter it
        raw_s = min(raw_runs)  # the ceiling: the faster of the two raw runs
        eng.close()
    out = {
        "items": len(items),
        "clip": args.clip,
        "raw_encoders_items_per_s": round(len(items) / raw_s, 1),
        "raw_runs_items_per_s": [round(len(items) / r, 1) for r in raw_runs],
        "pipeline_items_per_s": round(len(items) / pipe_s, 1),
        "ratio_pipeline_vs_raw": round(raw_s / pipe_s, 3),
        "rerun_unchanged_items_per_s": round(len(items) / rerun_s, 1),
        "rerun_unchanged": rerun.unchanged,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
