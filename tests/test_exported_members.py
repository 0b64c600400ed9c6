"""The public API is small and deliberate (httpx tests/test_exported_members.py style)."""

import engine


def test_all_exports():
    exported = set(engine.__all__)
    public = {name for name in dir(engine) if not name.startswith("_")} | {"Engine", "__version__"}
    # Submodules are importable but not part of the API surface.
    import types

    public = {n for n in public if not isinstance(getattr(engine, n, None), types.ModuleType)}
    assert exported == public, f"exported {sorted(exported ^ public)}"


def test_single_exception_root():
    for name in engine.__all__:
        obj = getattr(engine, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, engine.PersonaError), name


def test_http_status_mapping():
    from http import HTTPStatus

    assert engine.http_status(engine.NotFoundError("x")) == HTTPStatus.NOT_FOUND
    assert engine.http_status(engine.InvalidInputError("x")) == HTTPStatus.UNPROCESSABLE_ENTITY
    assert engine.http_status(engine.OverloadedError()) == HTTPStatus.SERVICE_UNAVAILABLE
    assert engine.http_status(engine.BackendUnavailableError("x")) == HTTPStatus.BAD_GATEWAY
    assert engine.http_status(RuntimeError()) == HTTPStatus.INTERNAL_SERVER_ERROR


def test_core_import_is_light():
    import subprocess
    import sys

    code = "import sys, engine; bad = [m for m in ('torch', 'transformers', 'sentence_transformers', 'open_clip') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
