"""The ranker's trees compiled to native code (lleaves, on LLVM) for serving.

In:  a LightGBM model's text (``Booster.model_to_string()``), an optional cache folder.
Out: :func:`compile_booster` -> a ``predict(X: float64 [n, features]) -> float64 [n]`` callable giving LightGBM's
     ``Booster.predict`` to float rounding (the trees are summed in blocks, so the last bit can differ), or None when
     lleaves is not installed or cannot compile here (logged; the caller keeps LightGBM's own predict).

Why: scoring a request's ~300 candidates with 300 trees took ~2 ms in ``Booster.predict`` at 100k items (a tenth of
the request, ``bench/request_split.py``) and ~0.15-0.2 ms compiled. Compiling takes ~1.5 s per 300 trees, so the object
code is cached as ``<cache>/ranker-<key>.o``. The key hashes the model text with everything the code depends on
(lleaves and llvmlite versions, the host CPU's name and features): lleaves loads a cache file without checking it,
and a store moved to another CPU must not run code built for this one. A ``.sha256`` beside each file is checked
before it is loaded; a file that does not match it is compiled again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["compile_booster", "available"]

log = logging.getLogger(__name__)


def available() -> bool:
    """Whether lleaves (and a compatible llvmlite) can be imported here."""
    try:
        import lleaves  # noqa: F401
        import llvmlite.binding  # noqa: F401
    except ImportError:
        return False
    return True


def _key(model_text: str) -> str:
    from importlib.metadata import version

    import llvmlite.binding as llvm

    h = hashlib.sha256(model_text.encode())
    for part in (version("lleaves"), version("llvmlite"), llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()):
        h.update(b"\0" + str(part).encode())
    return h.hexdigest()[:24]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_aside(path: Path, write) -> None:
    """``write(tmp)`` then move it to ``path``: a process reading the cache never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _compiled(src: Path, cache: Path | None):
    import lleaves

    model = lleaves.Model(model_file=str(src))
    if cache is None:
        model.compile()
        return model
    digest = cache.with_name(cache.name + ".sha256")
    try:  # lleaves hands the file to LLVM unchecked, and a truncated object (a copy cut short) can abort the process
        intact = cache.exists() and digest.read_text().strip() == _digest(cache)
    except OSError:
        intact = False
    if intact:
        model.compile(cache=str(cache))
        return model
    _write_aside(cache, lambda tmp: model.compile(cache=str(tmp)))
    _write_aside(digest, lambda tmp: tmp.write_text(_digest(cache)))  # after the object: a mismatch only recompiles
    return model


def compile_booster(model_text: str, cache_dir: Path | None = None) -> Callable[[np.ndarray], np.ndarray] | None:
    """Compile one LightGBM model (its text) and return its predict function, or None (see the module docstring).

    ``cache_dir``: where the object code is read from, or written to after compiling (created). A cache that cannot
    be written or read only costs the compile time."""
    if not available():
        return None
    with tempfile.TemporaryDirectory(prefix="persona-lleaves-") as tmp:
        src = Path(tmp) / "model.txt"
        src.write_text(model_text)
        model = None
        if cache_dir is not None:
            try:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                model = _compiled(src, Path(cache_dir) / f"ranker-{_key(model_text)}.o")
            except Exception as e:  # a read-only folder, a damaged cache file: compile in memory instead
                log.warning("compiled ranker cache in %s unusable (%s: %s): compiling in memory", cache_dir, type(e).__name__, e)
        try:
            model = model or _compiled(src, None)
        except Exception as e:  # an llvmlite lleaves cannot drive, a model it cannot read: LightGBM's predict serves
            log.warning("the ranker could not be compiled with lleaves (%s: %s); LightGBM's predict serves", type(e).__name__, e)
            return None

    def predict(X: np.ndarray) -> np.ndarray:
        return model.predict(np.ascontiguousarray(X, dtype=np.float64), n_jobs=1)
    return predict
