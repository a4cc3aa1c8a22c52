"""Tests of the compiled extension smlp_kernels._C and its lazy loader.

They run on a CPU-only machine. Without a built extension they skip with the loader's
reason, unless SMLP_REQUIRE_EXTENSION=1 (CI), where that is a failure. With
SMLP_REQUIRE_CUDA_BUILD=1 the extension must also have been built with CUDA for the
architectures in SMLP_CUDA_ARCHS (default "80;90a"). cuda_probe exists in a test build only
(SMLP_TEST_HOOKS=1 at build time); its tests skip in a release build, unless
SMLP_REQUIRE_TEST_HOOKS=1, where that is a failure.
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Iterator

import pytest
import torch

from smlp_kernels import _extension
from smlp_kernels._version import __version__

REQUIRE_EXTENSION = os.environ.get("SMLP_REQUIRE_EXTENSION") == "1"
REQUIRE_CUDA_BUILD = os.environ.get("SMLP_REQUIRE_CUDA_BUILD") == "1"
REQUIRE_TEST_HOOKS = os.environ.get("SMLP_REQUIRE_TEST_HOOKS") == "1"
HAS_GPU = torch.cuda.is_available()
BUILT_WITHOUT_CUDA = "built without CUDA"


def _expected_archs() -> list[str]:
    raw = os.environ.get("SMLP_CUDA_ARCHS", "").strip() or "80;90a"
    return [arch for arch in re.split(r"[;,\s]+", raw) if arch]


@pytest.fixture(scope="module")
def ext() -> types.ModuleType:
    module = _extension.load_extension()
    if module is None:
        _, reason = _extension.extension_status()
        if REQUIRE_EXTENSION:
            pytest.fail(f"SMLP_REQUIRE_EXTENSION=1 but the extension is unavailable: {reason}")
        pytest.skip(f"extension unavailable: {reason}")
    return module


@pytest.fixture()
def fresh_loader() -> Iterator[None]:
    """Forget the cached load before and after a test that fakes the import."""
    _extension._load.cache_clear()
    yield
    _extension._load.cache_clear()


def test_extension_required_by_ci_is_available() -> None:
    available, reason = _extension.extension_status()
    if not REQUIRE_EXTENSION:
        pytest.skip("SMLP_REQUIRE_EXTENSION is not 1")
    assert available, reason


def test_status_agrees_with_loaders() -> None:
    available, reason = _extension.extension_status()
    module = _extension.load_extension()
    assert available == (module is not None)
    assert reason
    if available:
        assert _extension.require_extension() is module
        assert reason == f"loaded from {module.__file__}"
    else:
        with pytest.raises(RuntimeError, match=re.escape(reason)):
            _extension.require_extension()


def test_version(ext: types.ModuleType) -> None:
    assert ext.version() == __version__


def test_build_info(ext: types.ModuleType) -> None:
    info = ext.build_info()
    assert set(info) == {
        "version",
        "with_cuda",
        "cuda_archs",
        "cuda_version",
        "openmp",
        "compiler",
        "test_hooks",
    }
    assert info["version"] == __version__
    assert isinstance(info["with_cuda"], bool)
    assert isinstance(info["openmp"], bool)
    assert isinstance(info["test_hooks"], bool)
    assert hasattr(ext, "cuda_probe") == info["test_hooks"]
    assert isinstance(info["cuda_archs"], list)
    assert all(isinstance(arch, str) for arch in info["cuda_archs"])
    assert isinstance(info["cuda_version"], str)
    assert isinstance(info["compiler"], str)
    assert re.fullmatch(r"\S+ \d+(\.\d+)*", info["compiler"]), info["compiler"]
    if info["with_cuda"]:
        assert info["cuda_archs"], "a CUDA build names its architectures"
        assert all(re.fullmatch(r"\d+[af]?", arch) for arch in info["cuda_archs"])
        assert re.fullmatch(r"\d+\.\d+", info["cuda_version"]), info["cuda_version"]
    else:
        assert info["cuda_archs"] == []
        assert info["cuda_version"] == ""


def test_cuda_runtime_info(ext: types.ModuleType) -> None:
    info = ext.cuda_runtime_info()
    assert set(info) == {"device_count", "error", "runtime_version", "driver_version"}
    for key in ("device_count", "runtime_version", "driver_version"):
        assert isinstance(info[key], int)
        assert info[key] >= 0
    assert isinstance(info["error"], str)

    build = ext.build_info()
    if not build["with_cuda"]:
        assert info == {
            "device_count": 0,
            "error": BUILT_WITHOUT_CUDA,
            "runtime_version": 0,
            "driver_version": 0,
        }
        return
    # cudart is linked statically, so the runtime is the toolkit the build used.
    major, minor = divmod(info["runtime_version"], 1000)
    assert f"{major}.{minor // 10}" == build["cuda_version"]
    if HAS_GPU:
        assert info["error"] == ""
        assert info["device_count"] >= 1
        assert info["driver_version"] > 0
    else:
        assert info["device_count"] == 0
        assert info["error"] != ""


@pytest.fixture()
def hooks(ext: types.ModuleType) -> types.ModuleType:
    """The extension, if it is a test build (SMLP_TEST_HOOKS=1): it has cuda_probe."""
    if not ext.build_info()["test_hooks"]:
        reason = "a release build: cuda_probe needs a test build (SMLP_TEST_HOOKS=1)"
        if REQUIRE_TEST_HOOKS:
            pytest.fail(f"SMLP_REQUIRE_TEST_HOOKS=1 but {reason}")
        pytest.skip(reason)
    return ext


@pytest.mark.skipif(HAS_GPU, reason="needs a machine without a usable CUDA device")
def test_cuda_probe_raises_without_device(hooks: types.ModuleType) -> None:
    ext = hooks
    with pytest.raises(RuntimeError) as raised:
        ext.cuda_probe(41)
    if ext.build_info()["with_cuda"]:
        # The failing CUDA call's own error string reaches Python.
        cuda_error = ext.cuda_runtime_info()["error"]
        assert cuda_error
        assert cuda_error in str(raised.value)
    else:
        assert str(raised.value) == BUILT_WITHOUT_CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA device")
def test_cuda_probe_runs_on_gpu(hooks: types.ModuleType) -> None:
    ext = hooks
    if not ext.build_info()["with_cuda"]:
        pytest.skip("the extension was built without CUDA")
    assert ext.cuda_probe(41) == 42
    assert ext.cuda_probe(-1, stream=torch.cuda.current_stream().cuda_stream) == 0
    side_stream = torch.cuda.Stream()
    assert ext.cuda_probe(7, side_stream.cuda_stream) == 8


@pytest.mark.skipif(not REQUIRE_CUDA_BUILD, reason="SMLP_REQUIRE_CUDA_BUILD is not 1")
def test_required_cuda_build(ext: types.ModuleType) -> None:
    info = ext.build_info()
    assert info["with_cuda"], "SMLP_REQUIRE_CUDA_BUILD=1 but the extension has no CUDA"
    assert info["cuda_archs"] == _expected_archs()


def test_loader_reports_import_failure(fresh_loader: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_import(name: str) -> types.ModuleType:
        raise ImportError("undefined symbol: _ZN4smlp7missingEv")

    monkeypatch.setattr(_extension.importlib, "import_module", broken_import)
    assert _extension.load_extension() is None
    available, reason = _extension.extension_status()
    assert not available
    assert "failed to import" in reason
    assert "undefined symbol" in reason
    with pytest.raises(RuntimeError, match="undefined symbol"):
        _extension.require_extension()


def test_loader_rejects_stale_build(fresh_loader: None, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = types.SimpleNamespace(version=lambda: "0.0.0-stale")
    monkeypatch.setattr(_extension.importlib, "import_module", lambda name: stale)
    available, reason = _extension.extension_status()
    assert not available
    assert "stale" in reason
    assert "0.0.0-stale" in reason
