"""The CUDA kernels' logic on a machine without a GPU: tests/cuda_emulation/.

The launchers and kernels of csrc/cuda (mix_fwd.cu, mix_wgrad.cu) are compiled by the host
C++ compiler with -DSMLP_CUDA_EMULATION (csrc/cuda/platform.cuh then takes the stand-ins of
tests/cuda_emulation/cuda_emulation.h for the CUDA headers, warp instructions and launch) and
-DSMLP_TEST_HOOKS=1 (the harness caps the splits through SMLP_CUDA_MAX_SPLITS), and run on
CPU threads: 256 threads per block, real
barriers, NaN-filled shared memory and outputs, ldmatrix / mma.sync emulated with their PTX
fragment layouts. The harness compares every output of every launcher (fp32, fp16, bf16;
strided, channels_last, transposed and expanded views; both weight-gradient modes) with a
float64 reference. It checks index math, masking and synchronisation, not speed or the
hardware's rounding; the GPU tests (test_cuda_backend.py) check the real thing.

Needs a C++20 compiler and the CUDA headers (for the fp16/bf16 types): skipped without them,
unless SMLP_REQUIRE_NVCC=1. SMLP_EMULATION_FULL=1 adds the large shapes (several minutes).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EMULATION = Path(__file__).resolve().parent / "cuda_emulation"
REQUIRE = os.environ.get("SMLP_REQUIRE_NVCC") == "1"
FULL = os.environ.get("SMLP_EMULATION_FULL") == "1"
SOURCES = [
    "csrc/cuda/mix_fwd.cu",
    "csrc/cuda/mix_wgrad.cu",
    "tests/cuda_emulation/harness.cpp",
    "tests/cuda_emulation/runtime.cpp",
]


def cuda_include_dir() -> Path | None:
    candidates = []
    nvcc = os.environ.get("CUDACXX") or shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent / "include")
    candidates.append(Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include")
    for path in candidates:
        if (path / "cuda_fp16.h").is_file() and (path / "cuda_bf16.h").is_file():
            return path
    return None


def skip_or_fail(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"SMLP_REQUIRE_NVCC=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        skip_or_fail("no host C++ compiler (CXX, g++ or clang++) for the emulation")
    include = cuda_include_dir()
    if include is None:
        skip_or_fail("no CUDA headers (cuda_fp16.h, cuda_bf16.h) for the emulation")
    exe = tmp_path_factory.mktemp("emulation") / "harness"
    cmd = [
        cxx,
        "-std=c++20",
        "-O1",
        "-DSMLP_CUDA_EMULATION",
        "-DSMLP_TEST_HOOKS=1",
        f"-I{ROOT / 'csrc'}",
        f"-I{EMULATION}",
        f"-I{include}",
        "-pthread",
        "-x",
        "c++",
        *[str(ROOT / s) for s in SOURCES],
        "-o",
        str(exe),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"{' '.join(cmd)} failed:\n{run.stderr[-6000:]}"
    return exe


@pytest.mark.slow
def test_emulated_launchers_match_float64_reference(harness: Path) -> None:
    run = subprocess.run(
        [str(harness), "full" if FULL else "quick"], capture_output=True, text=True, timeout=1800
    )
    output = run.stdout + run.stderr
    failed = [line for line in output.splitlines() if not line.startswith("PASS")]
    assert run.returncode == 0, "\n".join(failed[-40:])
    passed = len(re.findall(r"^PASS ", run.stdout, flags=re.MULTILINE))
    # 3 dtypes x (5 shapes x (2 forward + 5 weight-gradient + 6 axis) + 6 expanded) + 1.
    assert passed >= 200, f"only {passed} checks ran:\n{output[-3000:]}"
    assert "0 failure(s)" in run.stdout
