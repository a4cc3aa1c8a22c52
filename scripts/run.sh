#!/usr/bin/env bash
# The project's entry points, from a fresh clone on any machine:
#
#   bash scripts/run.sh bench  # the main job: smlp-bench, the benchmark harness (extra
#                              # arguments go to smlp-bench; none: its default suite)
#   bash scripts/run.sh demo   # run the op and the drop-in module, report
#   bash scripts/run.sh test   # the test suite, one process per core (extra arguments go
#                              # to pytest; -n 0: one process)
#
# Each one installs what it needs first:
#   1. outside a virtual environment, creates and activates .venv (with the system's
#      site-packages visible, so a machine's own torch is reused);
#   2. installs torch==2.13.0 only if no torch can be imported;
#   3. installs this package in editable mode (building smlp_kernels._C with CMake, with
#      its CUDA part when nvcc is found), with the "test" extra for the tests and the
#      "bench" extra (matplotlib for --plot) for the benchmarks. Where the
#      build tools (setuptools, pybind11, cmake, ninja) are already installed, as on our
#      offline GPU machines, it builds with them and fetches nothing it already has.
set -euo pipefail
cd "$(dirname "$0")/.."

job=${1:-}
case "$job" in
  bench) extras="[bench]" ;;
  demo) extras="" ;;
  test) extras="[test]" ;;
  *) echo "usage: bash scripts/run.sh bench|demo|test [smlp-bench or pytest args...]" >&2; exit 2 ;;
esac
shift

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv --system-site-packages .venv
  fi
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi

if ! python -c "import torch" 2>/dev/null; then
  # The CPU wheel here; with no torch at all, a bare "torch" requirement would pull
  # several GB of CUDA wheels.
  python -m pip install torch==2.13.0
fi
pytest_benchmark_ok='
import importlib.metadata as md
import pytest
v = tuple(int(p) for p in md.version("pytest-benchmark").split(".")[:3] if p.isdigit())
raise SystemExit(0 if v >= (5, 3, 1) else 1)
'
if python -c "import setuptools, pybind11" 2>/dev/null && command -v cmake >/dev/null \
    && command -v ninja >/dev/null; then
  python -m pip install --no-build-isolation --no-deps -e .
  # The "test" extra's ranges; a machine's own older pytest-benchmark (seen through the
  # system's site-packages) fails under pytest 9.2, so its version is checked too.
  if [[ "$job" == test ]] && ! python -c "$pytest_benchmark_ok" 2>/dev/null; then
    python -m pip install "pytest>=7" "pytest-benchmark>=5.3.1"
  fi
  # Plots are optional for the benchmarks: offline, smlp-bench runs without matplotlib and
  # only --plot refuses.
  if [[ "$job" == bench ]] && ! python -c "import matplotlib" 2>/dev/null; then
    python -m pip install "matplotlib>=3.7" || echo "run.sh: no matplotlib; smlp-bench --plot will not work" >&2
  fi
else
  python -m pip install -e ".${extras}"
fi

case "$job" in
  bench) exec python -m smlp_kernels.bench "$@" ;;  # the smlp-bench command
  demo) exec python -m smlp_kernels.demo "$@" ;;
  test)
    # One test process per core (pytest-xdist, in the "test" extra), each test file whole
    # in one process; "-n 0" among the arguments runs them in this one.
    if python -c "import xdist" 2>/dev/null; then
      exec python -m pytest -n auto --dist loadfile "$@"
    fi
    exec python -m pytest "$@"
    ;;
esac
