"""The ranker's trees compiled with lleaves (``engine.learned.compiled``) against LightGBM's own predict: the same
scores to float rounding, a cache keyed by the model and the CPU, and LightGBM when compiling is not possible."""

from __future__ import annotations

import numpy as np
import pytest

lgb = pytest.importorskip("lightgbm")

from engine.learned import compiled  # noqa: E402
from engine.learned.features import FEATURE_NAMES  # noqa: E402
from engine.learned.ranker import Ranker  # noqa: E402


def _booster(seed: int, trees: int = 60, features: int = 6, objective: str = "binary"):
    """A small LightGBM model trained here on random rows with missing values (no shipped weights)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(2000, features))
    y = (X[:, 0] + 0.5 * X[:, 1] * X[:, 2] + rng.normal(scale=0.5, size=len(X)) > 0).astype(float)
    X[rng.random(X.shape) < 0.15] = np.nan  # the ranker's features hold NaN (a missing rating, no sequence model)
    params = {"objective": objective, "num_leaves": 7, "learning_rate": 0.1, "verbose": -1, "seed": seed, "num_threads": 1}
    return lgb.train(params, lgb.Dataset(X, y), num_boost_round=trees), X


@pytest.fixture(scope="module")
def needs_lleaves():
    if not compiled.available():
        pytest.skip("lleaves is not installed (the `learn` extra installs it)")


@pytest.mark.parametrize("objective", ["binary", "regression"])
def test_compiled_predict_equals_lightgbm(needs_lleaves, objective):
    booster, X = _booster(0, objective=objective)
    predict = compiled.compile_booster(booster.model_to_string())
    assert predict is not None
    want = booster.predict(X)
    got = predict(X)
    assert got.dtype == np.float64 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert not np.allclose(want, want.mean())  # a model that learned something: equality is not trivial
    np.testing.assert_allclose(predict(X[:1].astype(np.float32)), booster.predict(X[:1].astype(np.float32)), rtol=1e-12)


def test_cache_is_keyed_by_the_model_and_reused(needs_lleaves, tmp_path):
    a, X = _booster(0)
    b, _ = _booster(1)
    first = compiled.compile_booster(a.model_to_string(), tmp_path / "cache")
    files = sorted((tmp_path / "cache").glob("ranker-*.o"))
    assert len(files) == 1 and files[0].stat().st_size > 0 and files[0].with_name(files[0].name + ".sha256").exists()
    again = compiled.compile_booster(a.model_to_string(), tmp_path / "cache")  # loaded from the file
    assert sorted((tmp_path / "cache").glob("ranker-*.o")) == files
    np.testing.assert_array_equal(again(X), first(X))
    other = compiled.compile_booster(b.model_to_string(), tmp_path / "cache")  # another model: its own file
    assert len(list((tmp_path / "cache").glob("ranker-*.o"))) == 2
    np.testing.assert_allclose(other(X), b.predict(X), rtol=1e-12, atol=1e-15)
    assert not list((tmp_path / "cache").glob(".*"))  # nothing half-written left beside them


def test_damaged_cache_file_is_compiled_again(needs_lleaves, tmp_path):
    """A cache file cut short (a store copy interrupted) would reach LLVM unchecked: its digest catches it first."""
    booster, X = _booster(0)
    compiled.compile_booster(booster.model_to_string(), tmp_path)
    (obj,) = tmp_path.glob("ranker-*.o")
    whole = obj.read_bytes()
    obj.write_bytes(whole[: len(whole) // 3])
    predict = compiled.compile_booster(booster.model_to_string(), tmp_path)
    np.testing.assert_allclose(predict(X), booster.predict(X), rtol=1e-12, atol=1e-15)
    assert len(obj.read_bytes()) > len(whole) // 3  # rewritten whole
    (tmp_path / (obj.name + ".sha256")).unlink()  # no digest: not trusted either
    assert compiled.compile_booster(booster.model_to_string(), tmp_path) is not None
    assert (tmp_path / (obj.name + ".sha256")).exists()


def test_unusable_cache_folder_compiles_in_memory(needs_lleaves, tmp_path, caplog):
    booster, X = _booster(0)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    predict = compiled.compile_booster(booster.model_to_string(), blocker)
    assert predict is not None and "compiled for this process only" in caplog.text
    np.testing.assert_allclose(predict(X), booster.predict(X), rtol=1e-12, atol=1e-15)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed error, passed on to pytest's hook
def test_cache_write_failing_inside_lleaves_leaves_no_file(needs_lleaves, tmp_path, monkeypatch, caplog):
    """lleaves writes the object from an LLVM callback that swallows errors (a full disk): that file must not be moved
    into place and trusted; the compiled code still serves this process, compiled once."""
    import pathlib

    booster, X = _booster(0)

    def full_disk(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")
    import lleaves

    calls = []
    real_compile = lleaves.Model.compile

    def counted(self, *a, **k):
        calls.append(k.get("cache"))
        return real_compile(self, *a, **k)
    monkeypatch.setattr(lleaves.Model, "compile", counted)
    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk)
    predict = compiled.compile_booster(booster.model_to_string(), tmp_path)
    monkeypatch.undo()
    assert predict is not None and "could not be cached" in caplog.text and len(calls) == 1  # compiled once
    np.testing.assert_allclose(predict(X), booster.predict(X), rtol=1e-12, atol=1e-15)
    assert list(tmp_path.iterdir()) == []  # neither the half file nor a digest of it


def test_any_failure_in_compiling_means_lightgbm(needs_lleaves, tmp_path, monkeypatch, caplog):
    import tempfile

    booster, _ = _booster(0)

    def no_temp_space(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(tempfile, "TemporaryDirectory", no_temp_space)
    assert compiled.compile_booster(booster.model_to_string(), tmp_path) is None
    assert "LightGBM's predict serves" in caplog.text


def test_ranker_mean_of_bags_compiled_and_its_fallback(needs_lleaves, monkeypatch, tmp_path):
    cols = list(FEATURE_NAMES[:6])
    (a, X), (b, _) = _booster(0), _booster(1)
    F = np.full((len(X), len(FEATURE_NAMES)), 7.0)  # columns the ranker does not use hold junk
    F[:, :6] = X
    ranker = Ranker(a, cols, [b])
    lgb_scores = ranker.predict(F)
    assert not ranker.compiled and ranker.compile(tmp_path) and ranker.compiled
    np.testing.assert_allclose(ranker.predict(F), lgb_scores, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(lgb_scores, (a.predict(X) + b.predict(X)) / 2, rtol=1e-12)
    import pickle

    copy = pickle.loads(pickle.dumps(ranker))  # to a Ray worker: native code does not travel, LightGBM predicts there
    assert not copy.compiled and np.allclose(copy.predict(F), lgb_scores, rtol=0, atol=1e-12)
    monkeypatch.setattr(compiled, "available", lambda: False)  # lleaves missing: LightGBM serves
    fresh = Ranker(a, cols, [b])
    assert not fresh.compile(tmp_path) and not fresh.compiled
    np.testing.assert_array_equal(fresh.predict(F), lgb_scores)


def test_compiled_code_that_disagrees_with_lightgbm_never_serves(needs_lleaves, monkeypatch, caplog):
    """``Ranker.compile`` checks the compiled code against LightGBM on probe rows (a stale or bad build is refused)."""
    from engine.learned import ranker as ranker_mod

    a, X = _booster(0)
    cols = list(FEATURE_NAMES[:6])
    monkeypatch.setattr(ranker_mod, "compile_booster", lambda text, cache_dir=None: (lambda M: np.zeros(len(M))))
    r = Ranker(a, cols)
    assert not r.compile() and not r.compiled and "does not match" in caplog.text
    F = np.zeros((len(X), len(FEATURE_NAMES)))
    F[:, :6] = X
    np.testing.assert_array_equal(r.predict(F), a.predict(X, num_threads=1))


def test_llvmlite_that_cannot_load_means_unavailable(monkeypatch):
    """llvmlite raises OSError (not ImportError) when its shared library cannot load: LightGBM serves."""
    import builtins

    real_import = builtins.__import__

    def broken(name, *a, **k):
        if name.startswith(("lleaves", "llvmlite")):
            raise OSError("libllvmlite.so: cannot open shared object file")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", broken)
    assert not compiled.available() and compiled.compile_booster("tree") is None
