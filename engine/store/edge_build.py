"""Index builds for the embedded engine beside the live shard, so that serving does not stall.

qdrant-edge keeps Python's GIL while its optimizers run (about a minute at 100k items on 2 cores), so an
in-process build stops every thread of the process: an API server answers nothing meanwhile. Here the
build runs in a child process on a copy of the shard; the live shard keeps answering (by scanning) and
taking writes, which the caller journals and replays on the built copy before swapping it in.

In: a shard folder (flushed, no writes while it is copied). Out: a built copy, then the swap. Crash
safety: the live folder is renamed aside before the copy takes its place, and :func:`recover` (run
before a shard is loaded) puts the aside folder back when the swap did not finish, or deletes it when
it did; a leftover copy is deleted. At no point is the only complete copy of the data deleted.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from ..errors import BackendUnavailableError

logger = logging.getLogger(__name__)

__all__ = ["aside_of", "build_copy", "build_in_child", "copy_shard", "recover", "swap_in"]

# The child lowers its own priority: serving keeps the cores first, the build takes what is left.
_CHILD = (
    "import os, sys\n"
    "os.nice(10)\n"
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


def recover(live: Path) -> None:
    """Finish or undo an interrupted swap of ``live``, and delete leftover copies. Idempotent."""
    aside = aside_of(live)
    if aside.exists():
        if live.exists():  # the swap finished: the aside folder is the old shard
            shutil.rmtree(aside, ignore_errors=True)
        else:  # interrupted between the two renames: the old shard is complete, put it back
            os.replace(aside, live)
            logger.warning("an interrupted index build of %s was rolled back; the shard is as before the build", live)
    for stale in live.parent.glob(f".{live.name}.build-*"):
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
    child fails (its exit status and the tail of its stderr)."""
    r = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, check=False)
    if r.returncode != 0 or not r.stdout.strip():
        raise BackendUnavailableError(f"index build exited with status {r.returncode}: {r.stderr.strip()[-500:]}")
    return r.stdout.strip().splitlines()[-1] == "BUILT"


def swap_in(live: Path, built: Path) -> None:
    """Put ``built`` where ``live`` is (both closed). The old folder goes aside first and is deleted last."""
    aside = aside_of(live)
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(live, aside)
    try:
        os.replace(built, live)
    except BaseException:
        os.replace(aside, live)
        raise
    shutil.rmtree(aside, ignore_errors=True)
