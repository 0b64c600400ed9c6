"""The ranker's trees compiled to native code (lleaves, on LLVM) for serving.

In:  a LightGBM model's text (``Booster.model_to_string()``), an optional cache folder.
Out: :func:`compile_booster` -> a ``predict(X: float64 [n, features]) -> float64 [n]`` callable giving LightGBM's
     ``Booster.predict`` to float rounding (the trees are summed in blocks, so the last bit can differ; each row's sum
     is the same whatever the batch), or None when lleaves is not installed or anything in compiling fails (logged;
     the caller keeps LightGBM's own predict). Nothing here raises.

Why: LightGBM's predict was ~2 ms of a ~15 ms request at 100k items and ~0.5 ms compiled (``bench/request_split.py``
with ``fit.compiled_ranker`` off and on, docs/scale.md). Compiling the default 300-tree ranker takes about a second and a half here, so the
object code is cached as ``<cache>/ranker-<key>.o``. The key hashes the model text with everything the code depends on
(lleaves and llvmlite versions, the target triple, the host CPU's name and features, this module's compile options):
lleaves loads a cache file without checking it, and a store moved to another CPU must not run code built for this
one. A ``.sha256`` beside each file is checked against the bytes read, which are then loaded from a private copy
(another process may replace or prune the shared file meanwhile); a file that does not match is compiled again: LLVM
given a truncated object (a copy cut short) can abort the process. ``Ranker.compile`` then checks the code against
LightGBM on probe rows before it serves.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..fsutil import write_atomic

__all__ = ["compile_booster", "available"]

log = logging.getLogger(__name__)

_FORMAT = "persona-lleaves-1 fp64 fblocksize=34 fcodemodel=large"  # in the key: a change of options is a new file
_LOCK = threading.Lock()  # one compile at a time: _watched_compile swaps a process-wide handler


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

    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # some hosts cannot list them; lleaves then compiles for the CPU name alone, and so does the key
        features = ""
    h = hashlib.sha256(model_text.encode())
    for part in (_FORMAT, version("lleaves"), version("llvmlite"), llvm.get_process_triple(), llvm.get_host_cpu_name(), features):
        h.update(b"\0" + str(part).encode())
    return h.hexdigest()[:24]


def _watched_compile(model, cache: Path | None) -> bool:
    """``model.compile(cache=...)``; False when an error was swallowed on the way. lleaves reads and writes the cache
    file from inside LLVM callbacks, where an error (a file gone, a full disk) goes to ``sys.unraisablehook`` instead
    of being raised, and a failed read leaves an empty module behind. The hook is watched meanwhile, for this thread's
    errors only, and passes every error on."""
    errors: list = []
    me, previous = threading.get_ident(), sys.unraisablehook

    def hook(unraisable):
        if threading.get_ident() == me:
            errors.append(unraisable.exc_value)
        previous(unraisable)
    sys.unraisablehook = hook
    try:
        model.compile(cache=None if cache is None else str(cache))
    finally:
        if sys.unraisablehook is hook:  # another thread's hook set meanwhile stays
            sys.unraisablehook = previous
    return not errors


def _compiled(src: Path, cache: Path | None, work: Path):
    """The compiled lleaves model of the model file ``src``, through the cache file ``cache`` (None: no cache).
    ``work``: a private folder. A cache file is read once, checked against its digest and loaded from a private copy of
    those bytes, so a file replaced or pruned by another process meanwhile cannot reach LLVM half-read."""
    import lleaves

    model = lleaves.Model(model_file=str(src))
    if cache is None:
        if not _watched_compile(model, None):
            raise RuntimeError("lleaves reported an error while compiling")
        return model
    digest = cache.with_name(cache.name + ".sha256")
    try:
        blob = cache.read_bytes()
        intact = digest.read_text().strip() == hashlib.sha256(blob).hexdigest()
    except OSError:
        intact = False
    if intact:
        private = work / "cached.o"
        private.write_bytes(blob)
        if _watched_compile(model, private):
            return model
        log.warning("the compiled ranker's cache %s could not be loaded: compiling again", cache)
        model = lleaves.Model(model_file=str(src))  # the failed load left an empty module behind
    fresh = work / "fresh.o"
    clean = _watched_compile(model, fresh)  # with a file that does not exist yet, lleaves only writes it: the code is good
    if not (clean and fresh.is_file() and fresh.stat().st_size > 0):  # compiled, but its object file was not written whole
        log.warning("the compiled ranker could not be cached in %s: compiled for this process only", cache.parent)
        return model
    blob = fresh.read_bytes()
    try:
        write_atomic(cache, blob)
        write_atomic(digest, hashlib.sha256(blob).hexdigest())  # after the object: a mismatch only recompiles
    except OSError as e:
        log.warning("the compiled ranker could not be cached in %s (%s): compiled for this process only", cache.parent, e)
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
            model = _compiled(src, cache, Path(tmp))
    except Exception as e:  # noqa: BLE001 - an llvmlite lleaves cannot drive, no temp space, a model it cannot read
        log.warning("the ranker could not be compiled with lleaves (%s: %s); LightGBM's predict serves", type(e).__name__, e)
        return None

    def predict(X: np.ndarray) -> np.ndarray:
        return model.predict(np.ascontiguousarray(X, dtype=np.float64), n_jobs=1)
    return predict
