"""Schemathesis fuzzes the API from its own OpenAPI spec: no generated input may cause a 5xx, and
responses must match the documented schemas. (Driven through hypothesis directly: schemathesis'
pytest fixture loader does not work with pytest 9.)"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from engine import Engine
from engine.components import Components
from services.api import create_app

KEY = "fz-3c7e1a9b5d2f8e4a6c0b"


@pytest.fixture(scope="module")
def api_schema(request, tmp_path_factory, ml, text_encoder):
    # Images: the tiny random-weight diffusers pipeline, small limits (POST /users/{id}/images answers PNGs, not 502s).
    images = request.getfixturevalue("tiny_image_generator")
    cfg = {"clip": {"enabled": False}, "llm": {"backend": "none"}, "image": {"size": 64, "max_size": 128, "steps": 1, "max_steps": 2}}
    eng = Engine.open(tmp_path_factory.mktemp("fuzz"), cfg, components=Components(text_encoder=text_encoder, image_generator=images))
    eng.add_items(ml.items[:80])
    ids = {i.id for i in ml.items[:80]}
    eng.add_events([e for e in ml.events if e.item_id in ids and e.user_id in {"1", "2", "3"}])
    app = create_app(engine=eng, api_key=KEY, max_inflight=64)
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    eng.close()


def _fuzz(schema, max_examples: int, checks=None, excluded_checks=None) -> list[str]:
    failures, operations = [], 0
    for result in schema.get_all_operations():
        op = result.ok()
        operations += 1

        @given(case=op.as_strategy())
        @settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            case.call_and_validate(headers={"X-API-Key": KEY}, checks=checks, excluded_checks=excluded_checks)

        try:
            run()
        except Exception as e:  # collect every operation's failure, then report them all
            subs = getattr(e, "exceptions", None) or [e]
            detail = "\n  ".join(f"{type(x).__name__}: {str(x)[:1200]}" for x in subs)
            failures.append(f"{op.method.upper()} {op.path}: {detail}")
    assert operations >= 9
    return failures


def test_no_server_errors(api_schema, request):
    # 30 generated requests per operation in make test (its 30-minute budget), 60 in make test-full
    failures = _fuzz(api_schema, 60 if request.config.getoption("--run-full") else 30, checks=[not_a_server_error])
    assert not failures, "\n\n".join(failures)


def test_responses_match_the_spec(api_schema):
    """The built-in schemathesis checks: status codes, content types and bodies as documented.

    ``positive_data_acceptance`` is left out: schemathesis 4.32 sometimes labels an item with
    ``"id": ""`` (minLength 1) as schema-valid, then flags the 422. Generating 300 positive cases
    for the same schema standalone never produces such an id, so the label, not the API, is wrong."""
    failures = _fuzz(api_schema, 20, excluded_checks=[positive_data_acceptance])
    assert not failures, "\n\n".join(failures)
