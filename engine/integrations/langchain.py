"""LangChain retriever over an :class:`engine.Engine` (``pip install 'persona-engine[langchain]'``).

:class:`PersonaRetriever` is a ``langchain_core`` ``BaseRetriever``: it answers a query with the
user's personalized search (:meth:`Engine.search`) and an empty query (or ``mode="recommend"``)
with the user's recommendations (:meth:`Engine.recommend`). Each :class:`Document` holds the stored
item's title and description; its metadata carries ``item_id``, ``title``, ``score``, ``reason``,
``genres``, ``year`` and ``source`` (``search`` or ``recommend``). Being a Runnable, it composes in
LCEL chains and supports ``invoke``, ``batch`` and their async forms::

    from langchain_core.runnables import RunnableLambda
    from engine.integrations.langchain import PersonaRetriever

    retriever = PersonaRetriever(engine=eng, user_id="42", k=5)
    chain = retriever | RunnableLambda(lambda docs: "\\n".join(d.metadata["title"] for d in docs))
    chain.invoke("space adventure")       # personalized search
    chain.invoke("")                      # recommendations
"""

from __future__ import annotations

from typing import Any, Literal

from ..errors import missing

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
except ImportError as e:  # langchain is an extra
    raise missing("langchain", "langchain-core") from e

from pydantic import ConfigDict, Field

__all__ = ["PersonaRetriever", "item_document"]


def item_document(payload: dict[str, Any], **metadata: Any) -> Document:
    """A Document for one stored item (its payload): title and description as the text."""
    title = payload.get("title") or ""
    text = title if not payload.get("description") else f"{title}\n\n{payload['description']}"
    attrs = payload.get("attributes") or {}
    meta = {"item_id": payload["item_id"], "title": title, "genres": list(attrs.get("genres") or []), "year": attrs.get("year"), **metadata}
    return Document(page_content=text, metadata=meta, id=str(payload["item_id"]))


class PersonaRetriever(BaseRetriever):
    """Personalized search or recommendations of a Persona engine as LangChain Documents.

    ``mode``: ``auto`` (search when the query has text, else recommend), ``search`` or
    ``recommend`` (the query is ignored). ``user_id`` may be None for plain (unpersonalized) search;
    recommending needs one. ``filters`` are the engine's item filters (``{"genres": "Comedy"}``).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: Any
    """An open :class:`engine.Engine`."""
    user_id: str | None = None
    k: int = Field(10, ge=1, le=1000)
    mode: Literal["auto", "search", "recommend"] = "auto"
    filters: dict[str, Any] | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        recommend = self.mode == "recommend" or (self.mode == "auto" and not (query or "").strip())
        if recommend:
            if self.user_id is None:
                from ..errors import InvalidInputError

                raise InvalidInputError("recommendations need a user_id")
            recs = self.engine.recommend(self.user_id, k=self.k, filters=self.filters)
            payloads = self.engine.catalog.hits([r.item_id for r in recs.items])
            return [
                item_document(payloads[r.item_id].payload, score=r.score, reason=r.reason, because_of=list(r.because_of),
                              source="recommend", strategy=recs.strategy, model_version=recs.model_version)
                for r in recs.items if r.item_id in payloads
            ]
        hits = self.engine.search(query, user_id=self.user_id, k=self.k, filters=self.filters)
        payloads = self.engine.catalog.hits([h.item_id for h in hits])
        return [
            item_document(payloads[h.item_id].payload, score=h.score, reason=_search_reason(h), relevance=h.relevance,
                          personal=h.personal, source="search")
            for h in hits if h.item_id in payloads
        ]


def _search_reason(hit: Any) -> str:
    if hit.personal is None:
        return f"matches the query (similarity {hit.relevance:.2f})"
    return f"matches the query (similarity {hit.relevance:.2f}) and your taste (similarity {hit.personal:.2f})"
