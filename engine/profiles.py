"""User modeling: taste vectors, the recurrent natural-language preference summary (MLLM-MSR),
and the per-request :class:`UserContext`.

For each new session block, the LLM rewrites the user's summary from the previous one, the block's
items and counts computed in code, as a JSON object over a closed per-user vocabulary
(:mod:`engine.summaries`: validated, with a computed fallback, flagged), rendered to the text that
prompts and the dashboard show. Every version is kept. The latest summary is embedded and stored with the user's
taste vectors (recency-weighted means of item vectors), so retrieval works with no LLM reachable.

In: time-sorted histories (from ``events``) and item payloads/vectors (from ``items``).
Out: stored user points (:meth:`ProfileBuilder.update`), :class:`Profile` views, and the
:class:`UserContext` that retrieval, ranking and explanation read.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .config import Settings
from .errors import BackendUnavailableError
from .items import ItemCatalog, genres_of, prompt_row
from .llm import LLM
from .prompts import PromptRegistry
from .sessions import fold_blocks, split_blocks
from .store import Hit, Point, VectorStore, point_id
from .summaries import Facts, Rated, attributes_of, claims_backed, render_summary, settle, step_prompt
from .types import Event, Profile, SummaryVersion

logger = logging.getLogger(__name__)

SUMMARY_PROMPT = "preference_update"
TASTE_PREFIX = "taste_"
NOT_TASTE = frozenset({"cf"})
"""Item vectors that make no taste vector: ``cf`` (the fitted collaborative factors) has its own user vector."""


@dataclass
class UserState:
    """What is stored per user (payload of the user point) plus the vectors."""

    user_id: str
    summary: str | None = None
    summary_source: str | None = None
    structured: dict[str, Any] | None = None
    versions: list[dict[str, Any]] = field(default_factory=list)
    summarized_until: float = float("-inf")
    n_blocks: int = 0
    vectors: dict[str, list[float]] = field(default_factory=dict)

    def payload(self, events: Sequence[Event], positives: Sequence[Event]) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "summary": self.summary,
            "summary_source": self.summary_source,
            "summary_structured": self.structured,
            "versions": self.versions,
            "summarized_until": self.summarized_until if np.isfinite(self.summarized_until) else None,
            "n_blocks": self.n_blocks,
            "n_events": len(events),
            "n_positive": len(positives),
            "recent_items": [e.item_id for e in positives[-20:]][::-1],
            "updated_at": time.time(),
        }


@dataclass
class UserContext:
    """What one request knows about a user: liked (``pos``) and other (``neg``) events oldest
    first, their items with vectors, taste vectors, and the stored profile state."""

    user_id: str
    pos: list[Event] = field(default_factory=list)
    neg: list[Event] = field(default_factory=list)
    items: dict[str, Hit] = field(default_factory=dict)
    taste: dict[str, list[float]] = field(default_factory=dict)
    state: UserState | None = None

    @property
    def summary(self) -> str | None:
        return self.state.summary if self.state is not None else None

    def history_rows(self, n: int = 8) -> list[dict[str, Any]]:
        """Prompt rows of the ``n`` most recent liked items, newest first."""
        rows = []
        for e in reversed(self.pos):
            h = self.items.get(e.item_id)
            if h is not None:
                rows.append(prompt_row(h))
            if len(rows) == n:
                break
        return rows

    def without_summary(self) -> UserContext:
        """A copy without the stored profile (no summary text, no summary vector): for ablations."""
        return replace(self, state=None)


def is_positive(e: Event, threshold: float) -> bool:
    return e.rating is None or e.rating >= threshold


def taste_vectors(
    positives: Sequence[Event], item_vectors: dict[str, dict[str, list[float]]], half_life: float
) -> dict[str, list[float]]:
    """Recency-weighted mean of the positive items' vectors, per named vector, L2-normalised."""
    acc: dict[str, np.ndarray] = {}
    n = len(positives)
    for i, e in enumerate(positives):
        w = 0.5 ** ((n - 1 - i) / half_life)
        for name, vec in (item_vectors.get(e.item_id) or {}).items():
            if name in NOT_TASTE:
                continue
            v = np.asarray(vec, np.float32) * w
            acc[name] = acc[name] + v if name in acc else v
    out = {}
    for name, v in acc.items():
        norm = float(np.linalg.norm(v))
        if norm > 0:
            out[TASTE_PREFIX + name] = (v / norm).tolist()
    return out


def extractive_profile(items: Sequence[dict[str, Any]], liked: Sequence[bool]) -> str:
    """Deterministic summary used when no LLM is reachable: favourite and disliked genres, recent likes."""
    pos, neg = Counter(), Counter()
    for it, ok in zip(items, liked):
        (pos if ok else neg).update(genres_of(it.get("attributes") or {}))
    likes = ", ".join(g for g, _ in pos.most_common(4)) or "no clear genre yet"
    titles = [it.get("title", "") for it, ok in zip(items, liked) if ok][-3:]
    text = f"Likes {likes}."
    dislikes = [g for g, c in neg.most_common(3) if c > pos.get(g, 0)]
    if dislikes:
        text += f" Rarely enjoys {', '.join(dislikes)}."
    if titles:
        text += f" Recently liked {'; '.join(titles)}."
    return text


class ProfileBuilder:
    """Stored user profiles: load, update from histories, and build request contexts.
    ``text_getter``/``llm_getter`` return the (lazily loaded) text encoder and LLM."""

    def __init__(
        self,
        settings: Settings,
        store: VectorStore,
        catalog: ItemCatalog,
        users_col: str,
        prompts: PromptRegistry,
        text_getter: Callable[[], Any],
        llm_getter: Callable[[], LLM],
    ) -> None:
        self.s = settings
        self.store, self.catalog, self.users_col = store, catalog, users_col
        self.prompts = prompts
        self._text_getter = text_getter
        self._llm_getter = llm_getter

    def context(self, user_id: str, events: list[Event]) -> UserContext:
        """The :class:`UserContext` of ``user_id`` given its (time-sorted) ``events``."""
        thr = self.s.profile.positive_rating
        pos = [e for e in events if is_positive(e, thr)]
        neg = [e for e in events if not is_positive(e, thr)]
        items = self.catalog.hits([e.item_id for e in events], with_vectors=True)
        vecs = {i: h.vectors or {} for i, h in items.items()}
        taste = taste_vectors([e for e in pos if e.item_id in items], vecs, self.s.profile.recency_half_life)
        return UserContext(user_id, pos, neg, items, taste, self.load_state(user_id, with_vectors=True))

    def delete(self, user_id: str) -> bool:
        """Remove the user's point (every summary version, taste and cf vectors); whether there was one."""
        pid = point_id("user", user_id)
        had = bool(self.store.retrieve(self.users_col, [pid], fields=["user_id"]))
        self.store.delete(self.users_col, [pid])
        self.store.flush()
        return had

    def profile(self, user_id: str, events: list[Event]) -> Profile:
        """The public :class:`Profile` view of a user."""
        st = self.load_state(user_id, with_vectors=True)
        pos = [e for e in events if is_positive(e, self.s.profile.positive_rating)]
        return Profile(
            user_id=user_id,
            n_events=len(events),
            n_positive=len(pos),
            n_blocks=st.n_blocks if st else 0,
            summary=st.summary if st else None,
            summary_source=st.summary_source if st else None,  # type: ignore[arg-type]
            structured=st.structured if st else None,
            versions=[SummaryVersion(**v) for v in (st.versions if st else [])],
            recent_items=[e.item_id for e in pos[-20:]][::-1],
            has_taste_vectors={k: True for k in (st.vectors if st else {}) if k not in NOT_TASTE},
        )

    def load_state(self, user_id: str, with_vectors: bool = False) -> UserState | None:
        hits = self.store.retrieve(self.users_col, [point_id("user", user_id)], with_vectors=with_vectors)
        if not hits:
            return None
        p = hits[0].payload
        until = p.get("summarized_until")
        return UserState(
            user_id=user_id,
            summary=p.get("summary"),
            summary_source=p.get("summary_source"),
            structured=p.get("summary_structured"),
            versions=list(p.get("versions") or []),
            summarized_until=float(until) if until is not None else float("-inf"),
            n_blocks=int(p.get("n_blocks") or 0),
            vectors=hits[0].vectors or {},
        )

    def update(self, histories: dict[str, list[Event]], use_llm: bool | None = None, progress: bool = True, ray: Any = None) -> dict[str, Any]:
        """Bring the given users' profiles up to date with their (time-sorted) histories.
        Only blocks after what was already summarized cost LLM calls; blocks of all users at the
        same depth go to the LLM as one batch (with ``ray``, a :class:`engine.batch.RayBatch`,
        split across its pool of LLM actors)."""
        use_llm = self.s.profile.use_llm if use_llm is None else use_llm
        thr = self.s.profile.positive_rating
        states: dict[str, UserState] = {}
        pending: dict[str, list[list[Event]]] = {}
        items = self.catalog.hits(sorted({e.item_id for evs in histories.values() for e in evs}), with_vectors=True)
        rated = {i: Rated(i, h.payload.get("title", ""), tuple(attributes_of(h.payload)), None) for i, h in items.items()}
        for uid, events in histories.items():
            st = self.load_state(uid) or UserState(user_id=uid)
            if st.structured and not claims_backed(st.structured, self._facts(events, st.summarized_until, rated)):
                # written by older code with claims today's rules reject: summarize again from the first block (the old
                # versions stay in the history)
                logger.info("user %s: stored summary claims unbacked attributes; re-summarizing", uid)
                st = UserState(user_id=uid, versions=st.versions, vectors=st.vectors)
            states[uid] = st
            new = [e for e in events if e.timestamp > st.summarized_until]
            blocks = fold_blocks(split_blocks(new, self.s.sessions.gap_s, self.s.sessions.max_block_items), self.s.profile.max_blocks_per_update)
            pending[uid] = blocks  # type: ignore[assignment]

        llm: LLM | None = None
        pool: Any = None
        llm_error = None
        if use_llm and any(pending.values()):
            try:
                if ray is not None:
                    pool = ray.llm_pool(self.s.llm)
                else:
                    llm = self._llm_getter()
            except Exception as e:  # documented fallback: extractive summaries
                llm_error = f"{type(e).__name__}: {e}"
                logger.warning("LLM unavailable, using extractive summaries: %s", llm_error)
        try:  # the Ray actors hold a model each: release them whatever stops the update
            tpl = self.prompts.get(SUMMARY_PROMPT)
            depth = max((len(b) for b in pending.values()), default=0)
            n_calls = 0
            pr = self.s.profile
            bar = tqdm(total=sum(len(b) for b in pending.values()), desc="summarizing blocks", unit="block", disable=not progress)
            for d in range(depth):
                batch = [(uid, blocks[d]) for uid, blocks in pending.items() if d < len(blocks)]
                rows = []
                for uid, block in batch:
                    facts = self._facts(histories[uid], block[-1].timestamp, rated)
                    shown = sorted((e for e in block if e.item_id in items), key=lambda e: (not is_positive(e, thr), -e.timestamp))
                    rows.append((uid, block, facts, shown[: pr.summary_items_per_block]))
                outs: list[str | None] = [None] * len(rows)
                if llm is not None or pool is not None:
                    prompts = [step_prompt(self.prompts, tpl.ref, facts, states[uid].structured, states[uid].n_blocks, shown, rated, thr)
                               for uid, _, facts, shown in rows]
                    schemas = [facts.schema() for _, _, facts, _ in rows]
                    try:
                        if pool is not None:  # the actors apply their model's chat template
                            outs = pool.generate_json(prompts, schemas, pr.summary_max_new_tokens)
                        else:
                            outs = list(llm.generate_json([llm.chat_prompt(p) for p in prompts], schemas, pr.summary_max_new_tokens))
                        n_calls += 1
                    except BackendUnavailableError as e:
                        llm_error = str(e)
                        logger.warning("LLM failed, using computed summaries: %s", e)
                        llm = None
                        if pool is not None:
                            pool.close()
                            pool = None
                for (uid, block, facts, _), out in zip(rows, outs):
                    st = states[uid]
                    obj, src = settle(out, facts, "LLM disabled" if not use_llm else "LLM unavailable")
                    text = render_summary(obj, facts.titles)
                    st.summary, st.summary_source, st.structured = text, src, obj
                    st.versions.append(
                        {
                            "version": len(st.versions) + 1,
                            "block_index": st.n_blocks,
                            "summary": text,
                            "structured": obj,
                            "source": src,
                            "prompt": tpl.ref if out is not None else "computed",
                            "created_at": time.time(),
                            "block_end": block[-1].timestamp,
                        }
                    )
                    st.n_blocks += 1
                    st.summarized_until = max(st.summarized_until, block[-1].timestamp)
                bar.update(len(rows))
            bar.close()
        finally:
            if pool is not None:
                pool.close()
        self._write(states, histories, items)
        return {"users": len(states), "blocks": sum(len(b) for b in pending.values()), "llm_batches": n_calls, "llm_error": llm_error}

    def _facts(self, events: list[Event], until: float, rated: dict[str, Rated]) -> Facts:
        """What the history up to ``until`` backs (the closed world a summary step is checked against)."""
        seen = [replace(rated[e.item_id], rating=e.rating) for e in events if e.timestamp <= until and e.item_id in rated]
        return Facts.of(seen, self.s.profile.positive_rating, self.s.profile.negative_rating)

    def _write(self, states: dict[str, UserState], histories: dict[str, list[Event]], items: dict[str, Any]) -> None:
        thr = self.s.profile.positive_rating
        summaries = [st.summary or "" for st in states.values()]
        sum_vecs = self._text_getter().encode(summaries) if summaries else []
        points = []
        for (uid, st), sv in zip(states.items(), sum_vecs):
            events = histories[uid]
            positives = [e for e in events if is_positive(e, thr)]
            vecs = taste_vectors(positives, {i: (h.vectors or {}) for i, h in items.items()}, self.s.profile.recency_half_life)
            if st.summary:
                vecs["summary"] = np.asarray(sv).tolist()
            points.append(Point(id=point_id("user", uid), vectors=vecs, payload=st.payload(events, positives)))
        self.store.upsert(self.users_col, points)
        self.store.flush()
