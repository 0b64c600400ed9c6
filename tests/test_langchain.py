"""PersonaRetriever with the real langchain-core (no mocks) over a small ml-100k store."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("langchain_core", reason="langchain extra not installed")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.runnables import ConfigurableField, RunnableLambda  # noqa: E402

from engine import Engine  # noqa: E402
from engine.components import Components  # noqa: E402
from engine.errors import InvalidInputError  # noqa: E402
from engine.integrations.langchain import PersonaRetriever  # noqa: E402

NO_CLIP = {"clip": {"enabled": False}, "llm": {"backend": "none"}}
N_ITEMS = 300


@pytest.fixture(scope="module")
def eng(ml, text_encoder, tmp_path_factory):
    eng = Engine.open(tmp_path_factory.mktemp("lc") / "store", NO_CLIP, components=Components(text_encoder=text_encoder))
    items = [it for it in ml.items if int(it.id) <= N_ITEMS]
    assert eng.add_items(items).failed == 0
    users = {str(u) for u in range(1, 41)}
    events = [e for e in ml.events if e.user_id in users and int(e.item_id) <= N_ITEMS]
    assert eng.add_events(events).added == len(events)
    yield eng
    eng.close()


def format_docs(docs: list[Document]) -> str:
    return "\n".join(f"- {d.metadata['title']}: {d.metadata['reason']}" for d in docs)


def _grounded(eng, docs: list[Document]) -> None:
    for d in docs:
        stored = eng.item(d.metadata["item_id"])
        assert d.metadata["title"] == stored["title"] and d.page_content.startswith(stored["title"])
        assert d.id == d.metadata["item_id"] and d.metadata["reason"]
        assert isinstance(d.metadata["score"], float)


def test_search_documents_match_engine_search(eng):
    r = PersonaRetriever(engine=eng, user_id="1", k=5)
    docs = r.invoke("space adventure with robots")
    hits = eng.search("space adventure with robots", user_id="1", k=5)
    assert [d.metadata["item_id"] for d in docs] == [h.item_id for h in hits]
    assert all(d.metadata["source"] == "search" and d.metadata["personal"] is not None for d in docs)
    assert [d.metadata["score"] for d in docs] == sorted((d.metadata["score"] for d in docs), reverse=True)
    _grounded(eng, docs)
    plain = PersonaRetriever(engine=eng, k=3).invoke("space adventure with robots")
    assert len(plain) == 3 and all(d.metadata["personal"] is None for d in plain)


def test_empty_query_recommends_unseen_items(eng):
    r = PersonaRetriever(engine=eng, user_id="1", k=6)
    docs = r.invoke("")
    recs = eng.recommend("1", k=6)
    assert [d.metadata["item_id"] for d in docs] == [x.item_id for x in recs.items]
    seen = {e.item_id for e in eng.history("1")}
    assert docs and not seen & {d.metadata["item_id"] for d in docs}
    assert all(d.metadata["source"] == "recommend" for d in docs)
    _grounded(eng, docs)
    forced = PersonaRetriever(engine=eng, user_id="1", k=6, mode="recommend").invoke("ignored text")
    assert [d.metadata["item_id"] for d in forced] == [d.metadata["item_id"] for d in docs]


def test_lcel_chain_invoke_batch_and_async(eng):
    chain = PersonaRetriever(engine=eng, user_id="2", k=4) | RunnableLambda(format_docs)
    text = chain.invoke("a romantic comedy")
    titles = [h.title for h in eng.search("a romantic comedy", user_id="2", k=4)]
    assert text.splitlines() and all(t in text for t in titles)
    out = chain.batch(["a romantic comedy", "", "war film"])
    assert out[0] == text and len(out) == 3 and all(o.count("\n") == 3 for o in out)
    assert asyncio.run(chain.ainvoke("a romantic comedy")) == text


def test_user_is_configurable_per_call(eng):
    r = PersonaRetriever(engine=eng, k=3).configurable_fields(user_id=ConfigurableField(id="user_id"))
    docs = r.invoke("", config={"configurable": {"user_id": "3"}})
    assert [d.metadata["item_id"] for d in docs] == [x.item_id for x in eng.recommend("3", k=3).items]


def test_recommend_needs_a_user(eng):
    with pytest.raises(InvalidInputError):
        PersonaRetriever(engine=eng, mode="recommend").invoke("")
