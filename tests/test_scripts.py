"""scripts/gpu_session.sh and scripts/gpu_sanitize.py, as far as a machine without a GPU can
take them: the session script's argument errors and its refusal without CUDA; the sanitizer
program's answer check, which must pass right answers and fail wrong or NaN ones."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import smlp_kernels

ROOT = Path(__file__).resolve().parents[1]
SESSION = ROOT / "scripts" / "gpu_session.sh"


def _session(tmp_path, *args, **env):
    full_env = {**os.environ, "SMLP_GPU_SESSION_DIR": str(tmp_path / "s"), **env}
    full_env["PYTHON"] = sys.executable
    return subprocess.run(["bash", str(SESSION), *args], capture_output=True, text=True,
                          env=full_env, timeout=120, check=False)  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "name at least one step"),
        (("bogus",), "unknown step or option 'bogus'"),
        (("--deadline", "soon", "env"), "--deadline must be a whole number"),
    ],
)
def test_gpu_session_bad_arguments(tmp_path, args, message):
    proc = _session(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_gpu_session_refuses_without_cuda(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = _session(tmp_path, "build", "test", OUT=str(out))
    assert proc.returncode == 1
    summary = (tmp_path / "s" / "summary.txt").read_text()
    assert "build: no CUDA device" in summary
    assert "step build" not in summary  # nothing was attempted
    # What the device tool brings back: the summary and one archive.
    assert sorted(p.name for p in out.iterdir()) == ["gpu-session-build-test.tar.gz",
                                                     "summary.txt"]  # fmt: skip


def test_gpu_session_deadline_leaves_steps_unrun(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = _session(tmp_path, "--deadline", "39", "env", OUT=str(out))
    assert proc.returncode == 1
    summary = (tmp_path / "s" / "summary.txt").read_text()
    assert "env: not run (deadline)" in summary
    assert "step env" not in summary
    assert (out / "gpu-session-env.tar.gz").is_file()


def _cuda_sass_tools() -> str | None:
    """Why the sass step cannot run here (None: it can)."""
    try:
        from smlp_kernels import _C
    except ImportError as exc:
        return f"no extension: {exc}"
    if not _C.build_info()["with_cuda"]:
        return "the extension was built without CUDA"
    try:
        import triton

        if not Path(triton.knobs.nvidia.cuobjdump.path).is_file():
            return "Triton ships no cuobjdump here"
    except Exception as exc:  # no Triton, or one without the knob
        return f"no cuobjdump from Triton: {exc}"
    return None


_NO_SASS = _cuda_sass_tools()


@pytest.mark.skipif(_NO_SASS is not None, reason=str(_NO_SASS))
def test_gpu_session_sass_counts_instructions(tmp_path):
    """The sass step needs no GPU: it dumps the built extension's SASS and counts classes."""
    proc = _session(tmp_path, "sass")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in (tmp_path / "s" / "sass-summary.txt").read_text().splitlines()]
    assert all(len(r) == 4 and int(r[3]) > 0 for r in rows), rows
    classes = {(arch, op) for arch, kernel, op, _ in rows if "mix_fwd_kernel" in kernel}
    # 16-bit forward kernels on the tensor cores, on both architectures.
    assert {("sm_80", "HMMA"), ("sm_90a", "HMMA")} <= classes, classes


def _sanitize_module():
    spec = importlib.util.spec_from_file_location(
        "gpu_sanitize", ROOT / "scripts" / "gpu_sanitize.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_gpu_sanitize_check_passes_right_answers(dtype):
    mod = _sanitize_module()
    gen = torch.Generator().manual_seed(0)
    for shape in mod.SHAPES:
        assert mod.check("reference", shape, dtype, "cpu", gen) is None


@pytest.mark.parametrize(
    "corrupt, expect",
    [
        (lambda y: y * (1 + 1e-3), "y: error"),
        (lambda y: y.index_fill(0, torch.tensor([0]), float("nan")), "y has NaN"),
    ],
)
def test_gpu_sanitize_check_fails_wrong_answers(monkeypatch, corrupt, expect):
    mod = _sanitize_module()

    def wrong(*args, **kwargs):
        return corrupt(smlp_kernels.smlp_mix(*args, **kwargs))

    monkeypatch.setattr(mod, "smlp_kernels", types.SimpleNamespace(smlp_mix=wrong))
    gen = torch.Generator().manual_seed(0)
    why = mod.check("reference", mod.SHAPES[0], "fp32", "cpu", gen)
    assert why is not None and why.startswith(expect), why


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        return g * 1.01


def test_gpu_sanitize_check_fails_wrong_gradients(monkeypatch):
    mod = _sanitize_module()

    def wrong(*args, **kwargs):  # right forward, every gradient 1% off
        return _ScaleGrad.apply(smlp_kernels.smlp_mix(*args, **kwargs))

    monkeypatch.setattr(mod, "smlp_kernels", types.SimpleNamespace(smlp_mix=wrong))
    gen = torch.Generator().manual_seed(0)
    why = mod.check("reference", mod.SHAPES[0], "fp32", "cpu", gen)
    assert why is not None and why.startswith("dx: error"), why


def test_gpu_sanitize_cli_on_cpu():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_sanitize.py"), "--device", "cpu",
         "--backends", "reference", "--dtypes", "fp32,bf16", "--quick"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("ok   ") == 4
    assert "0 failure(s)" in proc.stdout
