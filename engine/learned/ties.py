"""Ties between a user's history and candidate items: what the dislike penalty and the reasons read.

In:  the fitted ``Stage1`` and ``ItemMeta``, a ``UserState`` (``candidates.user_state``), candidate item rows.
Out: ``ties`` -- non-negative (history rows x candidates) matrices, one per kind: transition counts, cosine
     co-occurrence, cf similarity and content similarity (``features.recent_ties`` for the recent items, which
     ``features.dislike_share`` reads too); ``reasons`` -- per item, the history row named as "because you liked /
     watched X".

A reason is the item of the user's own history with the strongest tie to the recommended item, among the recent items
(``LearnedConfig.recent``), a liked one's ties counting double (an item tied to none of them -- rare: content similarity
ties almost everything -- names the latest film). Two rules keep a list's reasons varied and meaningful, each naming
only an item with a real tie: once a history item explains ``REASON_CAP`` better-ranked items, the next-strongest
recent tie is named instead if it is at least half as strong; and an item whose strongest tie is a film the user rated
low (``dislike_rating``) is explained by an older liked film when that film's tie is at least half as strong (on the
weighted scale, where the low-rated film's ties count half when the user liked any recent film).
"""

from __future__ import annotations

import numpy as np

from .candidates import Stage1, UserState
from .config import LearnedConfig
from .features import dot64, recent_ties
from .meta import ItemMeta

__all__ = ["REASON_CAP", "ties", "reasons"]

REASON_CAP = 3  # a history item explains at most this many better-ranked items when another strong tie exists


def ties(s1: Stage1, meta: ItemMeta, st: UserState, cand: np.ndarray, rows: np.ndarray | None = None) -> list[np.ndarray]:
    """Ties of ``rows`` (default: the recent items, from the state's cached rows) x ``cand``, one matrix per kind."""
    if rows is None:  # the recent items: the rows and similarities the features read for the same candidates
        return recent_ties(s1, meta, st, cand)
    rows = np.asarray(rows, np.int64)

    def sim(E):  # dot64: a product's last bit depends on how many candidates are scored together; rank() must match
        return np.clip(dot64(E[rows], E[cand]), 0, None)

    parts = [s1.seq.count_rows(rows).at(cand), s1.seq.cooc_rows(rows).at(cand), sim(s1.cf_unit)]
    if meta.emb.shape[1] > 1:
        parts.append(sim(meta.emb))
    return parts


def _older_liked(st: UserState, cfg: LearnedConfig, n_items: int) -> np.ndarray:
    """Up to ``cfg.recent`` items liked before the recent window (by their latest rating; no rating counts as liked, as
    in ``user_state``), most recent first, none of them a recent item."""
    ok = (st.seq.items >= 0) & (st.seq.items < n_items)
    n_old = max(0, int(ok.sum()) - len(st.recent))
    items, r = st.seq.items[ok][:n_old], st.seq.ratings[ok][:n_old]
    done, out = set(st.recent.tolist()), []
    for i, liked in zip(items[::-1].tolist(), (~(r < cfg.like_threshold))[::-1].tolist()):
        if i in done:  # a recent item, or rated again later: its latest rating decided
            continue
        done.add(i)
        if liked:
            out.append(i)
            if len(out) == cfg.recent:
                break
    return np.array(out, np.int64)


def reasons(s1: Stage1, meta: ItemMeta, cfg: LearnedConfig, st: UserState, top: np.ndarray) -> list[int | None]:
    """For each item row in ``top`` (best first), the history item row named as its reason (None without a history)."""
    rec = st.recent
    if not len(rec) or not len(top):
        return [None] * len(top)
    A = np.zeros((len(rec), len(top)))
    scale = []  # each kind's largest recent tie: an older film's ties are read on the same scale
    for P in ties(s1, meta, st, top):
        m = P.max()
        scale.append(m)
        if m > 0:
            A += P / m
    A *= np.where(np.isin(rec, st.liked), 1.0, 0.5)[:, None]  # "because you liked X" over a film rated low, at equal ties
    tied = A > 0  # an alternative reason must have a real tie, not only the recency epsilon below
    A += 1e-3 * np.linspace(0, 1, len(rec))[:, None]  # ties go to the most recent
    old, B = None, None  # older liked films and their ties to ``top``: read only when a film rated low would be named
    used: dict[int, int] = {}  # item row -> items it already explains
    out = []
    for j in range(len(top)):
        col = A[:, j]
        best = int(col.argmax())
        if used.get(int(rec[best]), 0) >= REASON_CAP and len(rec) > 1:  # no film rated low unless the best is one
            ok = [int(i) for i in np.argsort(-col)[:8]
                  if tied[i, j] and used.get(int(rec[i]), 0) < REASON_CAP and (st.disliked[best] or not st.disliked[i])]
            alt = max(ok, key=lambda i: col[i], default=None)
            if alt is not None and col[alt] >= 0.5 * col[best]:
                best = int(alt)
        row = int(rec[best])
        if st.disliked[best]:
            if old is None:
                old = _older_liked(st, cfg, len(s1.item_rating))
                B = np.zeros((len(old), len(top)))
                for P, m in zip(ties(s1, meta, st, top, old) if len(old) else [], scale):
                    if m > 0:  # a kind no recent film has has no scale to be read on: left out
                        B += P / m
            ok = [int(i) for i in np.argsort(-B[:, j]) if B[i, j] > 0 and used.get(int(old[i]), 0) < REASON_CAP]
            if ok and B[ok[0], j] >= 0.5 * col[best]:
                row = int(old[ok[0]])
        used[row] = used.get(row, 0) + 1
        out.append(row)
    return out
