"""Readers for public data sets used by the demo, tests and benchmarks (read in place, never copied)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInputError
from ..types import Event, Item

__all__ = ["MovieLens", "load_movielens", "default_movielens_path"]


def default_movielens_path() -> Path:
    """``PERSONA_ML100K`` or ``../shared/data/ml-100k`` next to the working directory or this checkout."""
    env = os.environ.get("PERSONA_ML100K")
    if env:
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        cand = base.parent / "shared" / "data" / "ml-100k"
        if cand.exists():
            return cand
    return Path.cwd().parent / "shared" / "data" / "ml-100k"


@dataclass
class MovieLens:
    items: list[Item]
    events: list[Event]
    root: Path

    def user_events(self, user_id: str) -> list[Event]:
        return sorted((e for e in self.events if e.user_id == user_id), key=lambda e: e.timestamp)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", errors="replace") as f:
        header = [h.split(":")[0] for h in f.readline().rstrip("\n").split("\t")]
        return [dict(zip(header, line.rstrip("\n").split("\t"))) for line in f if line.strip()]


def load_movielens(root: str | Path | None = None) -> MovieLens:
    """MovieLens-100k with plot descriptions, credits and poster paths (RecBole atomic files)."""
    root = Path(root) if root else default_movielens_path()
    if not (root / "ml-100k.inter").exists():
        raise InvalidInputError(f"MovieLens-100k not found under {root} (set PERSONA_ML100K)")
    details: dict[str, dict] = {}
    det_path = root / "item_details.jsonl"
    if det_path.exists():
        with det_path.open(encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                details[str(d["movie_id"])] = d
    items = []
    for row in _rows(root / "ml-100k.item"):
        iid = row["item_id"]
        d = details.get(iid, {})
        attrs: dict = {"genres": row.get("class", "").split()}
        year = row.get("release_year", "")
        if year.isdigit():
            attrs["year"] = int(year)
        for key in ("director", "cast", "age_rating"):
            if d.get(key):
                attrs[key] = d[key][:5] if isinstance(d[key], list) else d[key]
        poster = root / "posters" / f"{iid}.jpg"
        items.append(
            Item(
                id=iid,
                title=row.get("movie_title", "").strip() + (f" ({year})" if year.isdigit() else ""),
                description=d.get("description") or None,
                attributes=attrs,
                image=str(poster) if poster.exists() else None,
            )
        )
    events = [
        Event(user_id=r["user_id"], item_id=r["item_id"], rating=float(r["rating"]), timestamp=float(r["timestamp"]))
        for r in _rows(root / "ml-100k.inter")
    ]
    return MovieLens(items=items, events=events, root=root)

