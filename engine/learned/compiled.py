"""The ranker's trees compiled to native code (lleaves, on LLVM) for serving.

In:  a LightGBM model's text (``Booster.model_to_string()``), an optional cache folder.
Out: :func:`compile_booster` -> a ``predict(X: float64 [n, features]) -> float64 [n]`` callable giving LightGBM's
     ``Booster.predict`` to float rounding (the trees are summed in blocks, so the last bit can differ; each row's sum
     is the same whatever the batch), or None when lleaves is not installed or anything in compiling fails (logged;
     the caller keeps LightGBM's own predict). Nothing here raises.

Why: LightGBM's predict was ~2 ms of a ~15 ms request at 100k items and ~0.5 ms compiled (``bench/request_split.py
--ranker-ab``, docs/scale.md). Compiling the default 300-tree ranker takes about a second and a half here, so the
object code is cached as ``<cache>/ranker-<key>.o``. The key hashes the model text with everything the code depends on
(lleaves and llvmlite versions, the target triple, the host CPU's name and features, this module's compile options):
lleaves loads a cache file without checking it, and a store moved to another CPU must not run code built for this
one. A ``.sha256`` beside each file is checked before it is loaded, and a file that does not match it is compiled
again: LLVM given a truncated object (a copy cut short) can abort the process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["compile_booster", "available"]

log = logging.getLogger(__name__)

_FORMAT = "persona-lleaves-1 fp64 fblocksize=34 fcodemodel=large"  # in the key: a change of options is a new file
_LOCK = threading.Lock()  # one compile at a time: the write check below hooks a process-wide handler


def available() -> bool:
    """Whether lleaves and a compatible llvmlite load here (llvmlite raises OSError when its library cannot load)."""
    try:
        import lleaves  # noqa: F401
        import llvmlite.binding  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure means: LightGBM serves
        return False
    return True


def _key(model_text: str) -> str:
    from importlib.metadata import version

    import llvmlite.binding as llvm

    h = hashlib.sha256(model_text.encode())
    for part in (_FORMAT, version("lleaves"), version("llvmlite"), llvm.get_process_triple(), llvm.get_host_cpu_name(),
                 llvm.get_host_cpu_features().flatten()):
        h.update(b"\0" + str(part).encode())
    return h.hexdigest()[:24]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _compile_writing(model, tmp: Path) -> bool:
    """``model.compile(cache=tmp)``; True when lleaves wrote the object file whole. lleaves writes it from inside an
    LLVM callback, where an error (a full disk, a read-only folder) is reported to ``sys.unraisablehook`` and not
    raised, so the hook is watched for the duration."""
    errors: list = []
    previous = sys.unraisablehook

    def hook(unraisable):
        errors.append(unraisable.exc_value)
        previous(unraisable)
    sys.unraisablehook = hook
    try:
        model.compile(cache=str(tmp))
    finally:
        sys.unraisablehook = previous
    return not errors and tmp.is_file() and tmp.stat().st_size > 0


def _compiled(src: Path, cache: Path | None):
    import lleaves

    model = lleaves.Model(model_file=str(src))
    if cache is None:
        model.compile()
        return model
    digest = cache.with_name(cache.name + ".sha256")
    try:
        intact = cache.is_file() and digest.read_text().strip() == _digest(cache)
    except OSError:
        intact = False
    if intact:
        model.compile(cache=str(cache))
        return model
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:  # written aside and moved into place: a process reading the cache never sees half a file
        if not _compile_writing(model, tmp):  # compiled, but the file is not whole: served uncached
            log.warning("the compiled ranker could not be cached in %s: compiled for this process only", cache.parent)
            return model
        text = _digest(tmp)
        os.replace(tmp, cache)
        dtmp = digest.with_name(f".{digest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        dtmp.write_text(text)
        os.replace(dtmp, digest)  # after the object: a reader that sees another process's object with it recompiles
    except OSError as e:
        log.warning("the compiled ranker could not be cached in %s (%s): compiled for this process only", cache.parent, e)
    finally:
        for leftover in cache.parent.glob(f".{cache.name}*.{os.getpid()}.*"):
            leftover.unlink(missing_ok=True)
    return model


def compile_booster(model_text: str, cache_dir: Path | None = None) -> Callable[[np.ndarray], np.ndarray] | None:
    """Compile one LightGBM model (its text) and return its predict function, or None (see the module docstring).

    ``cache_dir``: where the object code is read from, or written to after compiling (created). A cache that cannot
    be written or read only costs the compile time."""
    if not available():
        return None
    try:
        with _LOCK, tempfile.TemporaryDirectory(prefix="persona-lleaves-") as tmp:
            src = Path(tmp) / "model.txt"
            src.write_text(model_text)
            cache = None
            if cache_dir is not None:
                try:
                    Path(cache_dir).mkdir(parents=True, exist_ok=True)
                    cache = Path(cache_dir) / f"ranker-{_key(model_text)}.o"
                except OSError as e:
                    log.warning("no cache for the compiled ranker in %s (%s): compiled for this process only", cache_dir, e)
            model = _compiled(src, cache)
    except Exception as e:  # noqa: BLE001 - an llvmlite lleaves cannot drive, no temp space, a model it cannot read
        log.warning("the ranker could not be compiled with lleaves (%s: %s); LightGBM's predict serves", type(e).__name__, e)
        return None

    def predict(X: np.ndarray) -> np.ndarray:
        return model.predict(np.ascontiguousarray(X, dtype=np.float64), n_jobs=1)
    return predict
