"""The three collections (items, events, users) and their vector sizes and payload indexes.

In: the collection prefix, the store, and the components (for vector sizes).
Out: :class:`Collections` names; :meth:`Collections.ensure` creates what is missing, loading the
text encoder only when a collection must be created.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .components import Components
from .items import ITEM_INDEXES
from .profiles import TASTE_PREFIX
from .store import VectorStore

__all__ = ["Collections"]


@dataclass
class Collections:
    items: str
    events: str
    users: str
    ready: bool = False
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @classmethod
    def named(cls, prefix: str) -> Collections:
        return cls(f"{prefix}_items", f"{prefix}_events", f"{prefix}_users")

    def ensure(self, store: VectorStore, components: Components) -> None:
        if self.ready:
            return
        with self._lock:
            if all(store.has_collection(c) for c in (self.items, self.events, self.users)):
                self.ready = True  # no need to load encoders just to learn vector sizes
                return
            dim = components.text_encoder.dim
            cdim = components.clip_dim()
            item_vecs = {"text": dim} | ({"image": cdim, "clip_text": cdim} if cdim else {})
            store.ensure_collection(self.items, item_vecs, ITEM_INDEXES, quantize=True)  # the only one searched by vector
            store.ensure_collection(self.events, {}, {"user_id": "keyword", "item_id": "keyword"})
            user_vecs = {"summary": dim} | {TASTE_PREFIX + k: v for k, v in item_vecs.items()}
            store.ensure_collection(self.users, user_vecs, {"user_id": "keyword"})
            self.ready = True
