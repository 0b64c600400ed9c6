"""Collaborative item factors (implicit-feedback ALS) and a real-time user vector by fold-in.

In:  a CSR users x items matrix (binary or rating weights).
Out: ``CF.item_factors`` (n_items x f, float32; rows of items with no events are zero) -- stored in Qdrant as the
     named vector ``cf`` -- and ``CF.user_vector(item_rows, weights)``: the exact ALS least-squares user solution
     given the fixed item factors, so a new event changes the user vector at once without a refit.

ALS is fitted with ``implicit`` (CPU) when importable, else with a small numpy ALS (same objective, Hu et al. 2008):
confidence c = 1 + alpha * r, preference p = 1 for observed items.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import scipy.sparse as sp

__all__ = ["CF", "fit_als"]

log = logging.getLogger(__name__)


def _numpy_als(X: sp.csr_matrix, factors: int, reg: float, alpha: float, iterations: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_u, n_i = X.shape
    U = rng.normal(0, 0.01, (n_u, factors)).astype(np.float64)
    V = rng.normal(0, 0.01, (n_i, factors)).astype(np.float64)
    Xt = X.T.tocsr()
    for _ in range(iterations):
        U = _solve_all(X, V, reg, alpha)
        V = _solve_all(Xt, U, reg, alpha)
    return V.astype(np.float32)


def _solve_all(X: sp.csr_matrix, Y: np.ndarray, reg: float, alpha: float) -> np.ndarray:
    YtY = Y.T @ Y
    out = np.zeros((X.shape[0], Y.shape[1]))
    for r in range(X.shape[0]):
        cols = X.indices[X.indptr[r] : X.indptr[r + 1]]
        if len(cols):
            out[r] = _fold(YtY, Y[cols], X.data[X.indptr[r] : X.indptr[r + 1]], reg, alpha)
    return out


def _fold(YtY: np.ndarray, Yu: np.ndarray, r: np.ndarray, reg: float, alpha: float) -> np.ndarray:
    c = 1.0 + alpha * r
    A = YtY + (Yu.T * (c - 1.0)) @ Yu + reg * np.eye(YtY.shape[0])
    b = Yu.T @ c
    return np.linalg.solve(A, b)


def fit_als(X: sp.csr_matrix, factors: int = 64, reg: float = 0.05, alpha: float = 10.0, iterations: int = 15, seed: int = 0,
            backend: str = "auto") -> np.ndarray:
    """Item factors of implicit ALS on ``X`` (users x items)."""
    t = time.perf_counter()
    V = None
    if backend in ("auto", "implicit"):
        try:
            from implicit.cpu.als import AlternatingLeastSquares
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1, "blas"):  # built inside too: the constructor warns when BLAS has more threads
                m = AlternatingLeastSquares(factors=factors, regularization=reg, alpha=alpha, iterations=iterations,
                                            random_state=seed, calculate_training_loss=False, num_threads=2)
                m.fit(X.astype(np.float32).tocsr(), show_progress=False)
            V = np.asarray(m.item_factors, dtype=np.float32)
        except ImportError:
            if backend == "implicit":
                raise
    if V is None:
        V = _numpy_als(X.astype(np.float64).tocsr(), factors, reg, alpha, iterations, seed)
    V = V[:, :factors].copy()  # implicit may pad
    V[np.asarray(X.getnnz(axis=0)).ravel() == 0] = 0.0
    log.info("ALS %d factors on %s in %.2fs", factors, X.shape, time.perf_counter() - t)
    return V


class CF:
    """Item factors plus the fold-in that turns a history into a user vector."""

    def __init__(self, item_factors: np.ndarray, reg: float = 0.05, alpha: float = 10.0):
        self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        self.reg, self.alpha = float(reg), float(alpha)
        V = self.item_factors.astype(np.float64)
        self._YtY = V.T @ V
        self.norm_max = float(np.sqrt(np.einsum("ij,ij->i", V, V).max())) if len(V) else 0.0  # bounds top_dots' error

    @classmethod
    def fit(cls, X: sp.csr_matrix, factors: int = 64, reg: float = 0.05, alpha: float = 10.0, iterations: int = 15, seed: int = 0) -> CF:
        return cls(fit_als(X, factors, reg, alpha, iterations, seed), reg, alpha)

    @property
    def dim(self) -> int:
        return self.item_factors.shape[1]

    def user_vector(self, item_rows: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Least-squares user vector for a history (rows of known items; unknown rows < 0 are ignored)."""
        rows = np.asarray(item_rows, dtype=np.int64)
        ok = (rows >= 0) & (rows < len(self.item_factors))
        rows = rows[ok]
        if not len(rows):
            return np.zeros(self.dim, np.float32)
        w = np.ones(len(rows)) if weights is None else np.asarray(weights, np.float64)[ok]
        rows, inv = np.unique(rows, return_inverse=True)  # repeated events add up, as in the fitted matrix
        r = np.bincount(inv, weights=w) if weights is not None else np.ones(len(rows))
        return _fold(self._YtY, self.item_factors[rows].astype(np.float64), r, self.reg, self.alpha).astype(np.float32)

    def scores(self, user_vec: np.ndarray) -> np.ndarray:
        return self.item_factors @ user_vec
