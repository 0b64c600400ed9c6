"""What the served reasons name, over every third user of a fitted store (e.g. `make demo`'s).

    PERSONA_ML100K=... persona --path /tmp/demo demo          # a fitted ml-100k store
    python bench/reasons.py /tmp/demo                         # users 1, 4, 7, ... (315 on ml-100k)

Prints, over the users' `recommend(k=10)` lists: the share of reasons ("because you liked / watched X") that name a
film the user rated 2 or less, the share naming one rated 4 or more, and how many users have no history item named
for more than 5 of their 10 items (variety), with the mean of each user's most-named item's count.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path", help="a store fitted with `persona fit` (or `make demo`)")
    ap.add_argument("--every", type=int, default=3, help="every n-th user id, from 1")
    args = ap.parse_args()
    from engine import Engine

    with Engine.open(args.path, {"clip": {"enabled": False}, "llm": {"backend": "none"}}) as eng:
        users = sorted(eng.event_log.user_ids(), key=lambda u: (len(u), u))[:: args.every]  # numeric ids in numeric order
        low = liked = total = 0
        most = []
        for u in users:
            rating = {e.item_id: e.rating for e in eng.history(u)}
            named = [r.because_of[0] for r in eng.recommend(u, k=10).items if r.because_of]
            most.append(max(collections.Counter(named).values(), default=0))
            for i in named:
                r = rating.get(i)
                total += 1
                low += r is not None and r <= 2
                liked += r is not None and r >= 4
    print(json.dumps({"users": len(users), "reasons": total, "share_rated_le2": round(low / max(total, 1), 4),
                      "share_rated_ge4": round(liked / max(total, 1), 4), "users_no_item_over_5": sum(m <= 5 for m in most),
                      "mean_most_named": round(float(np.mean(most)), 2) if most else None}))


if __name__ == "__main__":
    main()
