"""The learned recommender's sequence model (``engine.learned.seqnet``) trained on a CPU and on a torch device, in one run.

1. ml-100k, the product's settings (``LearnedConfig`` defaults: 39 epochs, dropout 0.2, maxlen 50, full softmax):
   train on every user's events but the last two, score the second-to-last (VALID) over the whole catalog (seen items
   excluded) with the numpy forward pass that serving runs: NDCG@10 / HR@10 and training seconds per device.
2. Synthetic catalogs of 100k and 1M items (sequences that drift through neighbouring item ids with popular jumps):
   seconds per epoch with the sampled softmax (the default above ``LearnedConfig.sas_full_softmax_items``) and, on
   the device, the full softmax;
   the numpy serving cost of one history's probabilities over the catalog.

    python -m bench.seqnet_device [--data DIR] [--device cuda] [--out FILE.json]   # DIR: PERSONA_ML100K's default

Without a GPU it runs the CPU rows only (``--device cpu`` skips the device rows).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from engine.learned import LearnedConfig
from engine.learned.index import ItemIndex, Sequence, build_sequences, split_last
from engine.learned.seqnet import SeqNet
from engine.offline.datasets import load_movielens


def movielens(path: Path | None) -> tuple[dict[str, Sequence], dict[str, int], int]:
    """Train histories (all but each user's last two events, in the product's order), valid labels, catalog size."""
    events = load_movielens(path).events
    index = ItemIndex.build((), events)
    train_plus_valid, _test = split_last(build_sequences(events, index, 0))  # the test event is dropped unread
    train, valid = split_last(train_plus_valid)
    return train, valid, len(index)


def valid_scores(m: SeqNet, train: dict[str, Sequence], valid: dict[str, int]) -> tuple[float, float, float]:
    nd = hr = 0.0
    t = time.perf_counter()
    for u, j in valid.items():
        p = m.probs(train[u].items)
        p[train[u].items] = -np.inf
        rank = int((p > p[j]).sum())
        if rank < 10:
            hr += 1
            nd += 1 / math.log2(rank + 2)
    n = max(1, len(valid))
    return nd / n, hr / n, (time.perf_counter() - t) / n * 1e3


def synthetic(n_items: int, n_users: int, length: int, seed: int = 0) -> dict[str, Sequence]:
    rng = np.random.default_rng(seed)
    pop = rng.zipf(1.3, size=4 * n_users * length) % n_items
    out, k = {}, 0
    for u in range(n_users):
        cur, items = int(rng.integers(n_items)), []
        for _ in range(length):
            if rng.random() < 0.2:
                cur = int(pop[k])
                k += 1
            else:
                cur = (cur + int(rng.integers(1, 4))) % n_items
            items.append(cur)
        out[f"s{u}"] = Sequence(np.asarray(items, np.int64), np.zeros(length), np.full(length, np.nan))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="ml-100k folder (default: engine.offline.datasets' own)")
    ap.add_argument("--device", default=None, help="torch device for the device rows (default: cuda when present)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for the CPU rows")
    ap.add_argument("--users", type=int, default=20000, help="synthetic users (50 events each)")
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    import torch

    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    devices = ["cpu"] + ([a.device] if a.device != "cpu" else [])
    cfg = LearnedConfig()
    kw = dict(dim=cfg.sas_dim, maxlen=cfg.sas_maxlen, dropout=cfg.sas_dropout, lr=cfg.sas_lr, batch=cfg.sas_batch, threads=a.threads)
    rows: list[dict] = []

    def row(**r):
        rows.append(r)
        print(json.dumps(r), flush=True)

    print(f"torch {torch.__version__}; device {a.device}: {torch.cuda.get_device_name(0) if a.device.startswith('cuda') else '-'}", flush=True)
    train, valid, n = movielens(a.data)
    for dev in devices:
        t = time.perf_counter()
        m = SeqNet.fit(train, n, epochs=cfg.sas_epochs, seed=0, device=dev, **kw)
        secs = time.perf_counter() - t
        nd, hr, ms = valid_scores(m, train, valid)
        row(data="ml-100k valid", items=n, device=dev, epochs=cfg.sas_epochs, train_s=round(secs, 1), ndcg10=round(nd, 4),
            hr10=round(hr, 4), serve_ms=round(ms, 3))
    for size in [int(s) for s in a.sizes.split(",") if s]:
        seqs = synthetic(size, a.users, 50)
        for dev in devices:
            for full in ([False, True] if dev != "cpu" and size <= 100_000 else [False]):
                t = time.perf_counter()
                m = SeqNet.fit(seqs, size, epochs=1, seed=0, device=dev, full_softmax_items=size if full else cfg.sas_full_softmax_items,
                                 negatives=cfg.sas_negatives, **kw)
                secs = time.perf_counter() - t
                hist = seqs["s0"].items
                t = time.perf_counter()
                for _ in range(5):
                    m.probs(hist)
                row(data="synthetic", items=size, users=a.users, device=dev, softmax="full" if full else f"sampled {cfg.sas_negatives}",
                    epoch_s=round(secs, 1), serve_ms=round((time.perf_counter() - t) / 5 * 1e3, 2))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
