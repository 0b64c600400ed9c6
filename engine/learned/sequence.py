"""Sequential statistics from ordered user histories: transitions, co-occurrence, popularity, trend, time-local popularity.

In:  ``{user: Sequence}`` (see ``index.py``), the catalog size.
Out: ``SequenceStats`` with
     - ``trans``  CSR items x items: b counted after a within ``max_gap`` steps, weight ``gap_decay ** (gap - 1)``;
     - ``cooc``   CSR items x items: symmetric counts of pairs within ``window`` positions (diagonal empty);
     - ``pop``    events per item; ``trend`` events in the last ``trend_days`` before the data's latest timestamp;
     - ``time_pop`` items x time buckets, for the popularity of an item around any given time;
     and ``trans_rows(items)`` / ``cooc_rows(items)``: a user's rows of those matrices, normalised, as ``SparseRows`` (a
     request's cost grows with the rows' entries, not with the catalog). Fitted only on the events it is given: the
     ranker's training copy never sees the label events.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from .index import Sequence
from .toplists import lookup

__all__ = ["SequenceStats", "SparseRows"]

log = logging.getLogger(__name__)

DAY = 86400.0


_DENSE_CELLS = 1 << 16  # rows x catalog up to this: dense rows (a small catalog, e.g. ml-100k's 1,682 items x 10 rows)


def _csr_rows(m: sp.csr_matrix, rows) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each row's sorted column indices (int64) and data, as slices of ``m``."""
    ip, ix, d = m.indptr, m.indices, m.data
    rows = [int(r) for r in np.asarray(rows, np.int64)]
    return [ix[ip[r] : ip[r + 1]].astype(np.int64) for r in rows], [d[ip[r] : ip[r + 1]] for r in rows]


class SparseRows:
    """A few catalog-wide rows that are zero except on their entries: row k is ``cols[k]`` (sorted, distinct) with
    float32 ``vals[k]``. What a user's transition and co-occurrence rows are, without n-sized arrays."""

    def __init__(self, cols: list[np.ndarray], vals: list[np.ndarray], n: int):
        self.cols, self.vals, self.n = cols, vals, n
        self._flat = None
        self._last: tuple | None = None  # (candidates, their values): the dislike share reads the features' again

    def __len__(self) -> int:
        return len(self.cols)

    def padded(self, k: int) -> SparseRows:
        """The same rows, then empty ones up to ``k`` rows."""
        e = np.zeros(0, np.int64)
        return SparseRows(self.cols + [e] * (k - len(self)), self.vals + [e.astype(np.float32)] * (k - len(self)), self.n)

    def at(self, cand: np.ndarray) -> np.ndarray:
        """The rows' values at ``cand`` (len(self) x len(cand), float32; 0 off the entries; read-only: the same array
        answers a second call with the same ``cand`` array object, so callers must not change ``cand`` in place)."""
        cand = np.asarray(cand, np.int64)
        last = self._last
        if last is not None and last[0] is cand:
            return last[1]
        out = self._at(cand)
        out.flags.writeable = False
        self._last = (cand, out)
        return out

    def _at(self, cand: np.ndarray) -> np.ndarray:
        if self._flat is None:  # built once: features, the dislike share and the reasons all read the same rows
            if len(self) * self.n <= _DENSE_CELLS:  # a small catalog: dense rows (the same values, indexed directly)
                dense = np.zeros((len(self), self.n), np.float32)
                for k, (c, v) in enumerate(zip(self.cols, self.vals)):
                    dense[k, c] = v
                self._flat = dense
            else:
                e = [np.zeros(0, np.int64)]
                self._flat = (np.concatenate([c + k * self.n for k, c in enumerate(self.cols)] + e),
                              np.concatenate([*self.vals, np.zeros(0, np.float32)]))
        if isinstance(self._flat, np.ndarray):
            return self._flat[:, cand]
        q = (np.arange(len(self), dtype=np.int64)[:, None] * self.n + cand[None, :]).ravel()  # one search for all rows
        return lookup(*self._flat, q).reshape(len(self), len(cand))

    def weighted(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``sum_k w[k] * row_k`` in float64 on the union of the entries (sorted columns, values), added in row order:
        exactly what summing the dense rows' weighted products over axis 0 gives there."""
        if not len(self):
            return np.zeros(0, np.int64), np.zeros(0)
        parts = [wk * v.astype(np.float64) for wk, v in zip(np.asarray(w, np.float64), self.vals)]
        total = sum(len(c) for c in self.cols)
        if self.n <= 16 * total + 4096:  # rows that cover much of the catalog: a scatter beats a sort (same sums)
            acc = np.zeros(self.n)
            for c, x in zip(self.cols, parts):
                acc[c] += x
            cols = np.flatnonzero(acc)  # the union, less sums of exactly 0 (which SparseScores leaves implicit anyway)
            return cols, acc[cols]
        cols, inv = np.unique(np.concatenate(self.cols), return_inverse=True)
        out = np.zeros(len(cols))
        np.add.at(out, inv, np.concatenate(parts))
        return cols, out


def _pairs(seqs, offsets):
    a, b, g = [], [], []
    for s in seqs:
        it = s.items
        for d in offsets:
            if len(it) > d:
                a.append(it[:-d])
                b.append(it[d:])
                g.append(np.full(len(it) - d, d))
    if not a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(a), np.concatenate(b), np.concatenate(g)


class SequenceStats:
    def __init__(self, trans, cooc, pop, trend, time_pop, t0: float, bucket: float, t_max: float, params: dict):
        self.trans: sp.csr_matrix = trans
        self.cooc: sp.csr_matrix = cooc
        self.pop = pop
        self.trend = trend
        self.time_pop = time_pop
        self.t0, self.bucket, self.t_max = float(t0), float(bucket), float(t_max)
        self.params = dict(params)
        self._finish()

    def _finish(self):
        for m in (self.trans, self.cooc):  # SparseRows search each row's entries
            if not m.has_sorted_indices:
                m.sort_indices()
        self.trans_out = np.asarray(self.trans.sum(axis=1)).ravel()
        self.cooc_norm = np.sqrt(np.maximum(self.pop, 1.0))
        self.n_items = len(self.pop)

    @classmethod
    def fit(cls, seqs: dict[str, Sequence], n_items: int, max_gap: int = 3, gap_decay: float = 0.5, window: int = 10,
            trend_days: float = 30.0, bucket_days: float = 7.0, max_buckets: int = 512) -> SequenceStats:
        ss = [s for s in seqs.values() if len(s)]
        a, b, g = _pairs(ss, range(1, max_gap + 1))
        trans = sp.csr_matrix(((gap_decay ** (g - 1)).astype(np.float32), (a, b)), shape=(n_items, n_items))
        trans.sum_duplicates()
        a, b, _ = _pairs(ss, range(1, window + 1))
        keep = a != b
        a, b = a[keep], b[keep]
        cooc = sp.csr_matrix((np.ones(2 * len(a), np.float32), (np.r_[a, b], np.r_[b, a])), shape=(n_items, n_items))
        cooc.sum_duplicates()
        items = np.concatenate([s.items for s in ss]) if ss else np.zeros(0, np.int64)
        ts = np.concatenate([s.ts for s in ss]) if ss else np.zeros(0)
        pop = np.bincount(items, minlength=n_items).astype(np.float32)
        t_max = float(ts.max()) if len(ts) else 0.0
        t0 = float(ts.min()) if len(ts) else 0.0
        trend = np.bincount(items[ts >= t_max - trend_days * DAY], minlength=n_items).astype(np.float32)
        bucket = max(bucket_days * DAY, (t_max - t0) / max_buckets + 1.0)
        nb = int((t_max - t0) // bucket) + 1
        bi = ((ts - t0) // bucket).astype(np.int64)
        time_pop = np.zeros((n_items, nb), np.float32)
        np.add.at(time_pop, (items, bi), 1.0)
        params = dict(max_gap=max_gap, gap_decay=gap_decay, window=window, trend_days=trend_days, bucket_days=bucket_days)
        log.info("sequence stats: %d transitions nnz, %d co-occurrence nnz, %d events", trans.nnz, cooc.nnz, len(items))
        return cls(trans, cooc, pop, trend, time_pop, t0, bucket, t_max, params)

    # --- scoring -------------------------------------------------------------------------------------------------
    def trans_rows(self, items: np.ndarray, smooth: float = 5.0) -> SparseRows:
        """P(next | a) rows (smoothed by ``smooth`` pseudo-counts) for each item ``a`` in ``items``."""
        rows = np.asarray(items, np.int64)
        cols, data = _csr_rows(self.trans, rows)
        return SparseRows(cols, [x / (self.trans_out[r] + smooth) for r, x in zip(rows, data)], self.n_items)

    def count_rows(self, items: np.ndarray) -> SparseRows:
        """Raw transition-count rows (a -> next) of ``items``."""
        return SparseRows(*_csr_rows(self.trans, np.asarray(items, np.int64)), self.n_items)

    def cooc_rows(self, items: np.ndarray) -> SparseRows:
        """Cosine-normalised co-occurrence rows of ``items``."""
        rows = np.asarray(items, np.int64)
        cols, data = _csr_rows(self.cooc, rows)
        return SparseRows(cols, [x / (self.cooc_norm[r] * self.cooc_norm[c]) for r, c, x in zip(rows, cols, data)], self.n_items)

    def bucket_of(self, t: float) -> int:
        return int(np.clip((t - self.t0) // self.bucket, 0, self.time_pop.shape[1] - 1))

    def pop_at(self, t: float, half_width: int = 1) -> np.ndarray:
        """Events per item in the time buckets around ``t`` (clipped to the fitted span)."""
        b = self.bucket_of(t)
        return self.time_pop[:, max(0, b - half_width) : b + half_width + 1].sum(1)

    # --- persistence ---------------------------------------------------------------------------------------------
    def arrays(self, prefix: str = "seq_") -> dict:
        out = {f"{prefix}pop": self.pop, f"{prefix}trend": self.trend, f"{prefix}time_pop": self.time_pop,
               f"{prefix}scalars": np.array([self.t0, self.bucket, self.t_max])}
        for name, m in (("trans", self.trans), ("cooc", self.cooc)):
            out[f"{prefix}{name}_data"], out[f"{prefix}{name}_indices"], out[f"{prefix}{name}_indptr"] = m.data, m.indices, m.indptr
        return out

    @classmethod
    def from_arrays(cls, a: dict, params: dict, prefix: str = "seq_") -> SequenceStats:
        n = len(a[f"{prefix}pop"])
        mats = [sp.csr_matrix((a[f"{prefix}{k}_data"], a[f"{prefix}{k}_indices"], a[f"{prefix}{k}_indptr"]), shape=(n, n)) for k in ("trans", "cooc")]
        t0, bucket, t_max = a[f"{prefix}scalars"]
        return cls(mats[0], mats[1], a[f"{prefix}pop"], a[f"{prefix}trend"], a[f"{prefix}time_pop"], t0, bucket, t_max, params)
