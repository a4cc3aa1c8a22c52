"""Register use and spills of every CUDA kernel, from ``ptxas -v``, for sm_80 and sm_90a.

Each kernel source is compiled once per architecture with the build's flags (two compiles at
a time), and the test asserts that no kernel spills or has a stack frame, except the entries
of ALLOWED_SPILLS, each with its reason, whose byte counts are asserted exactly. sm_90a is
compiled with an explicit ``-gencode=arch=compute_90a,code=sm_90a`` (``-arch=sm_90a`` also runs
a plain sm_90 pass, which rejects wgmma and TMA).

Without nvcc the tests skip, unless SMLP_REQUIRE_NVCC=1, where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["csrc/cuda/mix_fwd.cu", "csrc/cuda/mix_wgrad.cu"]
ARCHS = ["80", "90a"]
REQUIRE_NVCC = os.environ.get("SMLP_REQUIRE_NVCC") == "1"

pytestmark = pytest.mark.slow  # about a minute on 2 cores: 4 compiles, 2 at a time

# Kernel families (the identifier as it appears, length-prefixed, in the mangled name) and
# how many instantiations each architecture must have.
EXPECTED_KERNELS = {
    "14mix_fwd_kernel": 5,  # {f16, bf16} x {16x16, 8x8} tiles + f32
    "19axis_mix_fwd_kernel": 3,
    "17fuse_wgrad_kernel": 3,
    "20spatial_wgrad_kernel": 6,  # 3 dtypes x {smlp_mix, row/col mix}
    "16sum_slots_kernel": 1,
    "16fill_zero_kernel": 1,
}

# (arch, mangled-name substring) -> (spill store bytes, spill load bytes, why it is allowed).
# Empty: no kernel spills. An entry must match exactly, so a change shows up here.
ALLOWED_SPILLS: dict[tuple[str, str], tuple[int, int, str]] = {}


@dataclass(frozen=True)
class KernelReport:
    arch: str
    name: str  # mangled
    registers: int
    stack_frame: int
    spill_stores: int
    spill_loads: int


def find_nvcc() -> str | None:
    for candidate in (
        os.environ.get("CUDACXX"),
        shutil.which("nvcc"),
        os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"),
    ):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def compile_flags(arch: str) -> list[str]:
    # The flags CMakeLists.txt gives smlp_cuda in a Release build.
    return [
        "-O3",
        "-DNDEBUG",
        "-std=c++17",
        "--expt-relaxed-constexpr",
        f"-I{ROOT / 'csrc'}",
        f"-gencode=arch=compute_{arch},code=sm_{arch}",
        "-Xptxas=-v",
    ]


def parse_ptxas(output: str) -> list[KernelReport]:
    reports, current, frame = [], None, None
    for line in output.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)' for 'sm_(\w+)'", line):
            current, frame = (m.group(1), m.group(2)), None
        elif m := re.search(
            r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line
        ):
            frame = tuple(int(v) for v in m.groups())
        elif (m := re.search(r"Used (\d+) registers", line)) and current is not None:
            assert frame is not None, f"no stack frame line for {current[0]}"
            reports.append(KernelReport(current[1], current[0], int(m.group(1)), *frame))
            current = None
    return reports


def compile_one(nvcc: str, source: str, arch: str, out_dir: Path) -> tuple[str, str, str]:
    obj = out_dir / f"{Path(source).stem}.sm_{arch}.o"
    cmd = [nvcc, *compile_flags(arch), "-c", str(ROOT / source), "-o", str(obj)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"{' '.join(cmd)} failed:\n{run.stderr[-4000:]}"
    return source, arch, run.stdout + run.stderr


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[KernelReport]:
    nvcc = find_nvcc()
    if nvcc is None:
        if REQUIRE_NVCC:
            pytest.fail("SMLP_REQUIRE_NVCC=1 but no nvcc was found (CUDACXX, PATH, CUDA_HOME)")
        pytest.skip("nvcc not found (set CUDACXX or put nvcc on PATH); ptxas report skipped")
    out_dir = tmp_path_factory.mktemp("ptxas")
    jobs = [(source, arch) for source in SOURCES for arch in ARCHS]
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outputs = list(pool.map(lambda job: compile_one(nvcc, *job, out_dir), jobs))
    found = []
    for source, arch, text in outputs:
        parsed = parse_ptxas(text)
        assert parsed, f"no ptxas report for {source} sm_{arch}:\n{text[-2000:]}"
        assert {r.arch for r in parsed} == {arch}, (source, arch)
        found.extend(parsed)
    return found


def demangle(names: list[str]) -> list[str]:
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None:
        return names
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True)
    return out.stdout.splitlines() if out.returncode == 0 else names


def test_ptxas_summary(reports: list[KernelReport]) -> None:
    """Prints the table (pytest -rP shows it): registers, stack frame and spills per kernel."""
    names = demangle([r.name for r in reports])
    for r, name in sorted(zip(reports, names, strict=True), key=lambda p: (p[0].arch, p[1])):
        short = re.sub(r"smlp::cuda::|\(.*$|^void ", "", name)
        print(
            f"sm_{r.arch:4} regs {r.registers:3} stack {r.stack_frame:3} "
            f"spill st/ld {r.spill_stores}/{r.spill_loads}  {short}"
        )
    assert len(names) == len(reports)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_is_compiled(reports: list[KernelReport], arch: str) -> None:
    mine = [r for r in reports if r.arch == arch]
    for family, count in EXPECTED_KERNELS.items():
        got = sum(family in r.name for r in mine)
        assert got == count, f"sm_{arch}: {got} instantiations of {family}, expected {count}"
    assert len(mine) == sum(EXPECTED_KERNELS.values()), [r.name for r in mine]


def _allowance(report: KernelReport) -> tuple[int, int] | None:
    for (arch, pattern), (stores, loads, _reason) in ALLOWED_SPILLS.items():
        if arch == report.arch and pattern in report.name:
            return stores, loads
    return None


@pytest.mark.parametrize("arch", ARCHS)
def test_no_spills(reports: list[KernelReport], arch: str) -> None:
    bad = []
    for r in (r for r in reports if r.arch == arch):
        allowed = _allowance(r)
        if allowed is None:
            if r.spill_stores or r.spill_loads or r.stack_frame:
                bad.append(
                    f"{r.name}: {r.spill_stores} B spill stores, {r.spill_loads} B spill loads, "
                    f"{r.stack_frame} B stack frame"
                )
        elif (r.spill_stores, r.spill_loads) != allowed:
            bad.append(f"{r.name}: spills {r.spill_stores}/{r.spill_loads}, allowed {allowed}")
    assert not bad, "\n".join(bad)


def test_allow_list_entries_are_used(reports: list[KernelReport]) -> None:
    for arch, pattern in ALLOWED_SPILLS:
        assert any(r.arch == arch and pattern in r.name for r in reports), (arch, pattern)


def test_parser_reads_ptxas_output() -> None:
    """The parser on a captured ptxas report, so a format change fails loudly."""
    sample = (
        "ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90a'\n"
        "ptxas info    : Function properties for _Z3fooPf\n"
        "    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n"
        "ptxas info    : Used 40 registers, used 1 barriers, 380 bytes cmem[0]\n"
    )
    assert parse_ptxas(sample) == [KernelReport("90a", "_Z3fooPf", 40, 8, 4, 12)]
