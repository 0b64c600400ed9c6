"""Top lists and ranks over a catalog without sorting it: the helpers stage 1 reads its sources with.

In:  a score per catalog item (dense vectors) or a source's best items (a vector index's answer).
Out: ``top_rows`` (the best k rows, ties by row), ``sample_threshold`` (a value about 4x k items exceed, from a strided
     sample: one comparison pass instead of a partition), ``ListSource`` (a source read from a top list: its rows,
     scores and the rank a score would have in it), ``SparseScores`` / ``SparseSource`` (scores that are zero off a few
     rows, and a user's view of them: what a dense vector would answer, from those rows alone), ``lookup`` (values at
     keys in a sorted key array), ``row_dots`` (row-wise float64 products, each value independent of the other rows
     computed with it), ``top_dots`` (the best k rows by those products without a float64 product over the catalog),
     ``promote_first`` (a list with its first marked entry moved up to a position).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ListSource", "SparseScores", "SparseSource", "EMPTY", "lookup", "promote_first", "row_dots", "sample_threshold", "top_dots", "top_rows"]


class ListSource:
    """A source read from a top list instead of a dense vector over the catalog: ``rows`` (unseen items, best first:
    score desc, row asc) with their ``scores``, and ``score(rows)`` for any rows (the same row-wise float64 products)."""

    def __init__(self, rows: np.ndarray, score):
        self.score = score
        rows = np.asarray(rows, np.int64)
        sc = score(rows)
        o = np.lexsort((rows, -sc))
        self.rows, self.scores = rows[o], sc[o]
        self._sorted = np.sort(sc)

    def subset(self, keep: np.ndarray) -> ListSource:
        """The list's rows where ``keep`` (a bool mask over the catalog) holds, in the same order."""
        out = ListSource.__new__(ListSource)
        m = keep[self.rows]
        out.score, out.rows, out.scores = self.score, self.rows[m], self.scores[m]
        out._sorted = np.sort(out.scores)
        return out

    def ranks(self, values: np.ndarray) -> np.ndarray:
        """How many list scores are above each value (the list's length for a value below its end)."""
        return len(self._sorted) - np.searchsorted(self._sorted, values, side="right")


class SparseScores:
    """Non-negative scores over a catalog of ``n`` items that are 0 except on a few rows, sorted once (score desc, row
    asc). ``view(seen, seen_rows)`` gives a user's ``SparseSource``. History-independent ones (popularity, trend,
    popularity around a time) are built once per model; a user's transition and co-occurrence scores per request."""

    def __init__(self, rows: np.ndarray, values: np.ndarray, n: int):
        rows, values = np.asarray(rows, np.int64), np.asarray(values)
        if not np.isfinite(values).all() or (values < 0).any():
            raise ValueError("SparseScores holds finite non-negative scores only")
        keep = values > 0  # zeros are implicit
        rows, values = rows[keep], values[keep]
        step = np.diff(rows)
        if (step < 0).any():  # by row, for lookups
            o = np.argsort(rows, kind="stable")
            rows, values, step = rows[o], values[o], np.diff(rows[o])
        if (step == 0).any():
            raise ValueError("SparseScores takes each row once")
        self.rows, self.values, self.n = rows, values, n
        d = np.argsort(-values, kind="stable")  # score desc, ties by row (rows ascend)
        self.desc, self.neg = rows[d], -values[d]  # best first; negated scores, ascending

    @classmethod
    def of(cls, v: np.ndarray) -> SparseScores:
        """From a dense non-negative vector over the catalog."""
        rows = np.flatnonzero(v)
        return cls(rows, v[rows], len(v))

    def score(self, rows: np.ndarray) -> np.ndarray:
        return lookup(self.rows, self.values, np.asarray(rows, np.int64))

    def view(self, seen: np.ndarray, seen_rows: np.ndarray) -> SparseSource:
        return SparseSource(self, seen, seen_rows)


class SparseSource:
    """A user's view of ``SparseScores`` (``seen``: bool mask, ``seen_rows``: its rows): it answers as the dense vector
    over the catalog would (``score``, ``ranks`` among unseen items, ``top``), at a cost that grows with the history
    and the entries it reads, not with the catalog."""

    def __init__(self, scores: SparseScores, seen: np.ndarray, seen_rows: np.ndarray):
        self.scores, self.seen, self.n_seen = scores, seen, len(seen_rows)
        sv = scores.score(seen_rows)
        self._seen_sorted = np.sort(sv[sv > 0])  # the seen items' non-zero scores
        self.positive_unseen = len(scores.rows) - len(self._seen_sorted)

    def score(self, rows: np.ndarray) -> np.ndarray:
        return self.scores.score(rows)

    def ranks(self, values: np.ndarray) -> np.ndarray:
        """How many unseen items score above each (non-negative) value: all items above, less the seen ones."""
        above = np.searchsorted(self.scores.neg, -np.asarray(values), side="left")
        return above - (len(self._seen_sorted) - np.searchsorted(self._seen_sorted, values, side="right"))

    def top(self, k: int, exclude_seen: bool = True) -> np.ndarray:
        """``top_rows`` of the dense vector: the best ``k`` rows (seen ones left out when ``exclude_seen``), score desc,
        ties by row; past the entries, the lowest rows that score 0."""
        sc, seen = self.scores, self.seen
        out = sc.desc[: k + len(self._seen_sorted)] if exclude_seen else sc.desc[:k]
        if exclude_seen:
            out = out[~seen[out]][:k]
        need = min(k, sc.n) - len(out)
        if need > 0:  # among the first need + |entries| + |seen| rows, at least ``need`` score 0 and are allowed
            head = np.arange(min(sc.n, need + len(sc.rows) + (self.n_seen if exclude_seen else 0)))
            fill = np.ones(len(head), bool)
            fill[sc.rows[sc.rows < len(head)]] = False
            if exclude_seen:
                fill &= ~seen[head]
            out = np.concatenate([out, head[fill][:need]])
        return out


def lookup(keys: np.ndarray, vals: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``vals`` at each query's position in the ascending, distinct ``keys`` (0 where a query is absent; ``vals``' dtype)."""
    out = np.zeros(len(queries), vals.dtype)
    if len(keys) and len(queries):
        pos = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)
        hit = keys[pos] == queries
        out[hit] = vals[pos[hit]]
    return out


EMPTY = ListSource(np.zeros(0, np.int64), lambda r: np.zeros(len(r)))  # a source with nothing to go on (no liked item)


def row_dots(E: np.ndarray, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``E[rows] . q`` in float64, row by row (each value independent of which other rows are computed with it)."""
    rows = np.asarray(rows, np.int64)
    if not len(rows):
        return np.zeros(0)
    A, q = E[rows].astype(np.float64), np.asarray(q, np.float64)
    if A.shape[1] > 8192:  # einsum sums a lone row in buffered chunks of 8192, so its last bit would depend on the batch
        return (A * q).sum(1)
    # einsum's own loop runs along each row alone (no BLAS, whose kernels treat a batch's last rows differently): the same
    # value whatever rows come with it, ~10x faster than a float64 product then a pairwise sum over 300 x 384. Its
    # kernel is CPU-specific (ARM builds fuse multiply-adds): a Ray cluster mixing x86 and ARM workers could fit
    # index-mode training rows that differ in the last bit
    return np.einsum("ij,j->i", A, q)


def sample_threshold(v: np.ndarray, need: int) -> float | None:
    """A value that about 4x ``need`` of ``v`` exceed, read off a strided sample (None: the catalog is too small for
    this to beat a partition, or the sample's value is not finite)."""
    n = len(v)
    if need <= 0 or need * 16 > n:
        return None
    step = max(1, n // 4096)
    sample = v[::step]
    q = len(sample) - 1 - min(len(sample) - 1, (4 * need) // step)
    t = float(np.partition(sample, q)[q])
    return t if np.isfinite(t) else None


def top_rows(v: np.ndarray, ok: np.ndarray, k: int) -> np.ndarray:
    """The best ``k`` rows of ``v`` where ``ok`` holds: score desc, ties by row (at the cut too)."""
    t = sample_threshold(v, k)
    if t is None or int(((v >= t) & ok).sum()) < k:  # the sampled cut was too high: the exact one, by a partition
        k = min(k, int(ok.sum()))
        if k <= 0:
            return np.zeros(0, np.int64)
        vo = v[ok]
        t = float(np.partition(vo, len(vo) - k)[len(vo) - k])
    above = np.flatnonzero(ok & (v > t))
    above = above[np.lexsort((above, -v[above]))][:k]
    if len(above) < k:  # the rest are ties at the cut value: lowest rows first
        above = np.concatenate([above, np.flatnonzero(ok & (v == t))[: k - len(above)]])
    return above


def top_dots(E: np.ndarray, q: np.ndarray, ok: np.ndarray, k: int, norm_max: float) -> np.ndarray:
    """``top_rows(row_dots(E, all rows, q), ok, k)``, exactly, from a float32 product: every row whose float32 score is
    within twice the float32 error bound of the k-th is re-scored by ``row_dots``. ``norm_max`` bounds the rows' L2 norms.
    At 1M x 384 the float64 product would cast the matrix (3 GB) on every call; this reads it once, in float32."""
    q = np.asarray(q, np.float64)
    qn = float(np.linalg.norm(q))
    if not qn > 0:
        return top_rows(np.zeros(len(E)), ok, k)  # every score is 0: the first k ok rows
    s = np.asarray(E @ (q / qn).astype(np.float32), np.float32)  # a unit query: no float32 underflow, the same order
    first = top_rows(s, ok, k)
    if not len(first):
        return first
    # |float32 dot - exact| <= (d + 2) u sum|E_i q_i| <= (d + 2) u |E_row| (u = 2^-24, the query's rounding included);
    # twice that as tolerance, and a window of twice the tolerance below the k-th (its own error and the row's)
    tol = 2.0 * (E.shape[1] + 2) * 2.0**-24 * max(norm_max, 1.0)
    near = np.flatnonzero(ok & (s >= float(s[first[-1]]) - 2 * tol))
    exact = np.concatenate([row_dots(E, near[b : b + 65536], q) for b in range(0, len(near), 65536)])  # bounded memory
    return near[top_rows(exact, np.ones(len(near), bool), k)]


def promote_first(order: np.ndarray, marked: np.ndarray, position: int) -> np.ndarray:
    """``order`` with its first entry whose ``marked`` flag is set (``marked`` aligned with ``order``) moved up to the
    1-based ``position``, the entries it passes shifted down by one; unchanged when ``position`` < 1, nothing is
    marked, or the first marked entry already sits at or above ``position``. Every head of the result is the head of
    the result for a longer ``order`` (pages stay consistent)."""
    hit = np.flatnonzero(marked) if position > 0 else ()
    if not len(hit) or hit[0] < position:
        return order
    return np.insert(np.delete(order, hit[0]), position - 1, order[hit[0]])
