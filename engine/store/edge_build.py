"""Index builds for the embedded engine beside the live shard, so that serving does not stall.

qdrant-edge keeps Python's GIL while its optimizers run (118 s at 100k items on 2 cores), so an
in-process build stops every thread of the process: an API server answers nothing meanwhile. Here the
build runs in a child process on a copy of the shard; the live shard keeps answering (by scanning) and
taking writes, which the caller journals and replays on the built copy before swapping it in.

In: a shard folder (flushed, no writes while it is copied). Out: a built copy, then the swap. Crash
safety: the copy is fsynced, then the live folder is renamed aside and the copy takes its place; the
aside folder is deleted only once the new shard has loaded. :func:`recover` (run before a shard is
loaded) puts the aside folder back when the swap was cut between the renames, or deletes it when both
were done; leftover copies are deleted. At no point is the only complete copy of the data deleted.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from ..errors import BackendUnavailableError

logger = logging.getLogger(__name__)

__all__ = ["aside_of", "build_copy", "build_in_child", "copy_shard", "finish_swap", "recover", "replay", "swap_in", "undo_swap"]

# The child lowers its own priority (serving keeps the cores first), offers itself to the OOM killer first (it holds
# a second copy of the shard in memory, and losing it loses nothing) and dies with its parent (Linux).
_CHILD = (
    "import os, sys\n"
    "os.nice(10)\n"
    "try:\n"
    "    open('/proc/self/oom_score_adj', 'w').write('1000')\n"
    "except OSError:\n"
    "    pass\n"
    "try:\n"
    "    import ctypes\n"
    "    ctypes.CDLL(None).prctl(1, 9)\n"  # PR_SET_PDEATHSIG, SIGKILL: an orphaned build is of no use
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "import qdrant_edge as qe\n"
    "s = qe.EdgeShard.load(sys.argv[1])\n"
    "built = s.optimize()\n"
    "s.flush()\n"
    "s.close()\n"
    "print('BUILT' if built else 'NOTHING')\n"
)


def aside_of(live: Path) -> Path:
    """Where the live folder waits during a swap."""
    return live.with_name(f".{live.name}.aside")


def build_copy(live: Path) -> Path:
    """A fresh path beside ``live`` for its copy (hidden: not a collection name the store would list)."""
    return live.with_name(f".{live.name}.build-{uuid.uuid4().hex[:8]}")


def _stale_copies(live: Path) -> list[Path]:
    return list(live.parent.glob(f".{glob.escape(live.name)}.build-" + "?" * 8))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Every file and folder under ``root`` on disk: the copy replaces the only other complete one."""
    for d, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(d, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(d))


def recover(live: Path) -> None:
    """Finish or undo an interrupted swap of ``live``, and delete leftover copies; run with the store's lock held,
    before the shard is loaded. Idempotent."""
    aside = aside_of(live)
    try:
        if aside.exists():
            if live.exists():  # both renames done (the copy was on disk before them): the aside folder is the old shard
                shutil.rmtree(aside)
            else:  # cut between the renames: the old shard is complete, put it back
                os.replace(aside, live)
                _fsync_dir(live.parent)
                logger.warning("an interrupted index build of %s was rolled back; the shard is as before the build", live)
    except OSError as e:
        raise BackendUnavailableError(f"cannot finish an interrupted index build of {live}: {e}") from e
    for stale in _stale_copies(live):
        shutil.rmtree(stale, ignore_errors=True)


def copy_shard(live: Path, dst: Path) -> None:
    """Copy a flushed shard folder (the caller holds its writes off meanwhile)."""
    try:
        shutil.copytree(live, dst)
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)
        raise


def build_in_child(path: Path) -> bool:
    """Run Qdrant's optimizers on the shard at ``path`` in a child process; True when it built anything.
    Waiting for the child releases the GIL, so the parent's other threads go on. BackendUnavailableError when the
    child cannot start or fails (its exit status or signal and the tail of its stderr)."""
    try:
        r = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, check=False)
    except OSError as e:  # e.g. an embedding host whose sys.executable is not Python
        raise BackendUnavailableError(f"cannot start the index build ({sys.executable!r}): {e}") from e
    if r.returncode != 0 or not r.stdout.strip():
        how = f"was killed by signal {-r.returncode}" if r.returncode < 0 else f"exited with status {r.returncode}"
        raise BackendUnavailableError(f"the index build {how}: {r.stderr.strip()[-500:] or 'no message'}")
    return r.stdout.strip().splitlines()[-1] == "BUILT"


def replay(path: Path, ops: list) -> None:
    """Apply the writes made to the live shard during the build (qdrant-edge update operations) to the copy."""
    import qdrant_edge as qe

    shard = qe.EdgeShard.load(str(path))
    try:
        for op in ops:
            shard.update(op)
        shard.flush()
    finally:
        shard.close()


def swap_in(live: Path, built: Path) -> None:
    """Put ``built`` where ``live`` is (both closed): ``built`` goes to disk first, the live folder aside, then
    ``built`` in its place. The aside folder stays until :func:`finish_swap` (or :func:`undo_swap`)."""
    _fsync_tree(built)
    aside = aside_of(live)
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(live, aside)
    try:
        os.replace(built, live)
    except BaseException:
        os.replace(aside, live)
        raise
    _fsync_dir(live.parent)


def finish_swap(live: Path) -> None:
    """The new shard loaded: the old one can go."""
    shutil.rmtree(aside_of(live), ignore_errors=True)


def undo_swap(live: Path) -> None:
    """The new shard did not load: the old one (every write included) back in place; the new one deleted."""
    failed = build_copy(live)
    os.replace(live, failed)
    os.replace(aside_of(live), live)
    _fsync_dir(live.parent)
    shutil.rmtree(failed, ignore_errors=True)
