"""Splitting a user's history into session blocks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class _Timed(Protocol):
    timestamp: float


def split_blocks(events: Sequence[_Timed], gap_s: float, max_items: int) -> list[list[_Timed]]:
    """Time-ordered blocks: a new block starts after a gap longer than ``gap_s`` or once a block holds ``max_items``."""
    blocks: list[list[_Timed]] = []
    last = None
    for e in sorted(events, key=lambda e: e.timestamp):
        if not blocks or len(blocks[-1]) >= max_items or (last is not None and e.timestamp - last > gap_s):
            blocks.append([])
        blocks[-1].append(e)
        last = e.timestamp
    return blocks


def fold_blocks(blocks: list[list[_Timed]], cap: int | None) -> list[list[_Timed]]:
    """At most ``cap`` blocks: a long backlog (first import) has its oldest blocks folded into one,
    so a recurrent update still runs in order but costs at most ``cap`` steps."""
    if not cap or len(blocks) <= cap:
        return blocks
    return [[e for b in blocks[: len(blocks) - cap + 1] for e in b], *blocks[len(blocks) - cap + 1 :]]
