"""The roofline's ceilings: the CPU's FMA peak (csrc/cpu/fma_peak.cpp), the compute ceiling
per dtype, and the flagging of floor% above 100 in the report.

The FMA peak is a real measurement on this machine: it must be at least the rate torch's own
fp32 matmul reaches here (a peak cannot be below an achieved rate), and not so high that the
loop cannot have run. The instruction-level tests read the built module with objdump.
"""

from __future__ import annotations

import csv
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from _helpers import bench_report_meta

from smlp_kernels import _extension
from smlp_kernels.bench import roofline
from smlp_kernels.bench.analysis import ROOFLINE_WARNING, roofline_warnings
from smlp_kernels.bench.report import (
    CSV_EXTRA_FIELDS,
    build_report,
    format_tables,
    validate_report,
    write_csv,
)
from smlp_kernels.bench.roofline import (
    Ceilings,
    compute_ceilings,
    fma_peak_isas,
    measure_ceilings,
    measure_fma_peak,
)
from smlp_kernels.bench.runner import RESULT_FIELDS
from smlp_kernels.bench.timing import TimingConfig


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


FLAGS = _cpu_flags()
IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
HAS_AVX512_BF16 = "avx512_bf16" in FLAGS  # Linux's name for CPUID's AVX512_BF16
EXT = _extension.load_extension()
needs_ext = pytest.mark.skipif(
    EXT is None, reason=f"extension unavailable: {_extension.extension_status()[1]}"
)


def _matmul_rate(n: int = 512, calls: int = 7) -> float:
    """torch's fp32 matmul rate here, from its fastest call, as the ceilings measure it."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


# At most 4 vector instructions per cycle at 6 GHz per thread: a rate above that means the
# loop did not run the steps it counts.
def _impossible(r: dict) -> float:
    return r["threads"] * 6e9 * 4 * r["flops_per_step"]


# --------------------------------------------------------------------------------------------
# The FMA peak
# --------------------------------------------------------------------------------------------


@needs_ext
def test_fp32_peak_is_at_least_what_torch_matmul_reaches():
    threads = torch.get_num_threads()
    matmul = _matmul_rate()
    start = time.perf_counter()
    r = measure_fma_peak("fp32", threads=threads, size="quick")
    took = time.perf_counter() - start
    assert r["threads"] == threads and r["flop_per_s"] > 0
    # A peak is never below an achieved rate (10% for the noise of two measurements).
    assert r["flop_per_s"] >= 0.9 * matmul, (r, matmul)
    assert r["flop_per_s"] < _impossible(r), r
    assert r["flop_per_s_wall"] > 0 and r["checksum"] != 0
    # Quick: each trial is about 10 ms of one thread's CPU time.
    assert r["trials"] * r["cpu_seconds"] < 0.2, r
    assert took < 10, took  # wall time, generous for a machine shared with other jobs


@needs_ext
def test_no_more_threads_than_logical_cpus():
    """More threads would count time-shared cores twice (each thread's work over its CPU
    time is added up)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    r = measure_fma_peak("fp32", threads=4 * cpus, size="quick")
    assert r["threads"] == cpus


@needs_ext
def test_fp64_peak_is_about_half_the_fp32_peak():
    fp32 = measure_fma_peak("fp32", size="quick")
    fp64 = measure_fma_peak("fp64", size="quick")
    assert fp64["isa"] == fp32["isa"] and fp64["lanes"] * 2 == fp32["lanes"]
    # Same instructions per cycle, half the lanes; noise of a shared machine allowed.
    assert 0.3 < fp64["flop_per_s"] / fp32["flop_per_s"] < 0.8, (fp32, fp64)


@needs_ext
@pytest.mark.skipif(not HAS_AVX512_BF16, reason="the CPU does not report avx512_bf16")
def test_bf16_dot_peak_where_the_cpu_has_avx512_bf16():
    assert fma_peak_isas("bf16") == ["avx512bf16"]
    r = measure_fma_peak("bf16", size="quick")
    assert r["isa"] == "avx512bf16" and r["instruction"].startswith("vdpbf16ps")
    # Counted as 2 FLOPs per bf16 product: 16 fp32 lanes x 2 products x 2 = 64.
    assert r["lanes"] == 16 and r["flops_per_step"] == 64
    assert 0 < r["flop_per_s"] < _impossible(r)


@needs_ext
@pytest.mark.skipif(HAS_AVX512_BF16, reason="the CPU has avx512_bf16 (tested above)")
def test_no_bf16_peak_without_avx512_bf16():
    assert fma_peak_isas("bf16") == []
    with pytest.raises(ValueError, match="bf16"):
        measure_fma_peak("bf16", size="quick")


@needs_ext
def test_narrower_instruction_sets_are_slower_or_equal_but_positive():
    isas = fma_peak_isas("fp32")
    assert isas and isas[-1] == ("sse" if "sse2" in FLAGS else "generic")
    if "avx512f" in FLAGS:
        assert isas[0] == "avx512"
    rates = {isa: measure_fma_peak("fp32", isa=isa, size="quick") for isa in isas}
    # Not necessarily the widest: AVX2 may beat AVX-512 where one 512-bit port runs slower.
    fastest = max(r["flop_per_s"] for r in rates.values())
    for isa, r in rates.items():
        assert r["isa"] == isa and r["flop_per_s"] > 0
    if "sse" in rates and len(rates) > 1:
        # 4 lanes and no FMA: well below any FMA path.
        assert rates["sse"]["flop_per_s"] < 0.75 * fastest
    with pytest.raises(ValueError, match="unknown instruction set"):
        measure_fma_peak("fp32", isa="avx9000", size="quick")
    with pytest.raises(ValueError, match="dtype"):
        measure_fma_peak("fp16", size="quick")


_INSN = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")
_BOOKKEEPING = re.compile(r"^(add|sub|inc|dec|cmp|test|nop\w*|xchg|j\w+)$")


def _register_loops(disassembly: str) -> list[list[tuple[str, str]]]:
    """The bodies of the loops of the module: runs of instructions that end in a jump back
    to one of them, as (mnemonic, operands)."""
    loops, run = [], []
    for line in disassembly.splitlines():
        m = _INSN.match(line)
        if not m:
            run = []
            continue
        addr, mnemonic, operands = m.groups()
        run.append((addr, mnemonic, operands))
        jump = re.match(r"j\w+\s+([0-9a-f]+)\b", f"{mnemonic} {operands}")
        if jump and mnemonic != "jmp":
            target = jump.group(1)
            for i, (a, _, _) in enumerate(run):
                if a == target:
                    loops.append([(mn, ops) for _, mn, ops in run[i:]])
                    break
            run = []
    return loops


@needs_ext
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump not found")
@pytest.mark.skipif(not IS_X86, reason="the kernels checked here are x86 ones")
@pytest.mark.parametrize(
    "pattern, register, instructions, accumulators",
    [
        (r"vfmadd\d+ps", "zmm", 16, 16),
        (r"vfmadd\d+pd", "zmm", 16, 16),
        (r"vfmadd\d+ps", "ymm", 12, 12),
        (r"vfmadd\d+pd", "ymm", 12, 12),
        (r"vdpbf16ps", "zmm", 16, 16),
        (r"mulps|addps", "xmm", 24, 12),  # no FMA: a mul and an add per chain
        (r"mulpd|addpd", "xmm", 24, 12),
    ],
)
def test_the_peak_loops_are_register_only(pattern, register, instructions, accumulators):
    """Every kernel's loop is its arithmetic on registers plus the loop counter: no load, no
    store (no memory operand at all), and as many independent accumulators as it counts.
    Every kernel is in the module whatever this CPU runs (dispatch is at run time)."""
    dis = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(Path(EXT.__file__))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    want = re.compile(rf"^({pattern})$")
    found = []
    for body in _register_loops(dis):
        arithmetic = [ops for mn, ops in body if want.match(mn)]
        others = [mn for mn, _ in body if not want.match(mn)]
        if not arithmetic or not all(_BOOKKEEPING.match(mn) for mn in others):
            continue
        if all(f"%{register}" in ops and "(" not in ops for ops in arithmetic):
            destinations = {ops.split(",")[-1] for ops in arithmetic}
            found.append((len(arithmetic), len(destinations)))
    assert (instructions, accumulators) in found, (
        f"no loop of {instructions} register-only {pattern} on {accumulators} {register} "
        f"accumulators in {EXT.__file__}: {found}"
    )


# --------------------------------------------------------------------------------------------
# The compute ceiling per dtype
# --------------------------------------------------------------------------------------------


def test_compute_ceilings_per_dtype():
    compute = roofline._compute_ceilings
    peaks = {"fp32": 200e9, "fp64": 100e9, "bf16": 400e9}
    matmul = {"fp32": 150e9, "fp16": 20e9, "bf16": 30e9, "fp64": 80e9}
    rates, source, notes = compute("cpu", set(matmul), peaks, matmul, "")
    assert source == {
        "fp32": "fma_peak_fp32",
        "fp16": "fma_peak_fp32",  # computed in fp32
        "bf16": "fma_peak_bf16",
        "fp64": "fma_peak_fp64",
    }
    assert rates == {"fp32": 200e9, "fp16": 200e9, "bf16": 400e9, "fp64": 100e9}
    assert notes == []
    # No AVX512-BF16: bf16 is computed in fp32.
    rates, source, _ = compute("cpu", {"bf16"}, {"fp32": 200e9}, {"bf16": 30e9}, "")
    assert source == {"bf16": "fma_peak_fp32"} and rates["bf16"] == 200e9
    # A matmul faster than the peak (a matrix unit, or a peak measured low) is the ceiling.
    rates, source, notes = compute("cpu", {"bf16"}, peaks, {"bf16": 900e9}, "")
    assert source == {"bf16": "torch_matmul"} and rates["bf16"] == 900e9
    assert "beat the bf16 FMA peak" in notes[0]
    # No extension: torch's matmul, labelled a lower bound, with the reason.
    rates, source, notes = compute("cpu", {"fp32"}, {}, {"fp32": 150e9}, "not built")
    assert source == {"fp32": "torch_matmul_lower_bound"} and rates["fp32"] == 150e9
    assert "lower bound" in notes[0] and "not built" in notes[0]
    # CUDA: the large matmul is the ceiling.
    rates, source, notes = compute("cuda", {"bf16"}, {}, {"bf16": 700e12}, "")
    assert source == {"bf16": "torch_matmul"} and rates == {"bf16": 700e12} and notes == []


def test_reports_from_before_the_fma_peak_read_their_matmul_as_the_ceiling():
    old = {"device": "cpu", "copy_bytes_per_s": 1e10, "matmul_flop_per_s": {"fp32": 1e11}}
    assert compute_ceilings(old) == ({"fp32": 1e11}, {"fp32": "torch_matmul"})


FAST = TimingConfig(rep_ms=5, min_reps=2)


@needs_ext
def test_cpu_ceilings_use_the_fma_peak_and_keep_the_matmul_rate():
    c = measure_ceilings(torch.device("cpu"), {"fp32", "fp64"}, size="quick", timing=FAST)
    assert c.compute_source == {"fp32": "fma_peak_fp32", "fp64": "fma_peak_fp64"}
    assert c.compute_flop_per_s["fp32"] == c.fma_peak_flop_per_s["fp32"] > 0
    assert c.matmul_flop_per_s["fp32"] > 0 and c.matmul_flop_per_s["fp64"] > 0
    assert "vfmadd" in c.details["fma_peak_fp32"] or "mul" in c.details["fma_peak_fp32"]
    assert set(c.fma_peak_flop_per_s) == {"fp32", "fp64"}


def test_cpu_peak_is_the_fastest_instruction_set_and_a_shared_machine_is_noted(monkeypatch):
    """Every FMA instruction set is measured and the fastest is the peak (here a fake CPU
    whose AVX2 path beats its AVX-512 one; SSE only counts without an FMA path); a
    wall-clock rate far below the per-CPU-time rate adds a note."""

    class FakeExtension:
        def cpu_fma_peak_isas(self, kind):
            return ["avx512", "avx2", "sse"]

        def __init__(self):
            self.measured: list[str] = []

        def cpu_fma_peak(self, kind, threads, isa, seconds, trials):
            self.measured.append(isa)
            rate = {"avx512": 100e9, "avx2": 130e9, "sse": 40e9}[isa]
            return dict(
                flop_per_s=rate, flop_per_s_wall=0.5 * rate, isa=isa, instruction=f"{isa} fma",
                threads=threads, lanes=8, chains=12, flops_per_step=16, iterations=1, trials=1,
            )  # fmt: skip

    fake = FakeExtension()
    monkeypatch.setattr(roofline, "load_extension", lambda: fake)
    monkeypatch.setattr(roofline, "require_extension", lambda: fake)
    peaks, details, reason, notes = roofline._cpu_fma_peaks({"fp32"}, "quick")
    assert peaks == {"fp32": 130e9} and reason == ""
    assert fake.measured == ["avx512", "avx2"]  # SSE (no FMA) is not worth measuring here
    assert details["fma_peak_fp32"].startswith("avx2: avx2 fma")
    assert len(notes) == 1 and "50% of its per-CPU-time rate" in notes[0]


def test_threads_are_capped_by_the_cgroup_quota(monkeypatch):
    monkeypatch.setattr(roofline, "_cgroup_cpu_quota", lambda: 1.5)
    monkeypatch.setattr(roofline.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert roofline._logical_cpus() == 2
    monkeypatch.setattr(roofline, "_cgroup_cpu_quota", lambda: None)
    assert roofline._logical_cpus() == 64


def test_cpu_ceilings_without_the_extension_are_a_labelled_lower_bound(monkeypatch):
    monkeypatch.setattr(roofline, "load_extension", lambda: None)
    monkeypatch.setattr(roofline, "extension_status", lambda: (False, "not built (test)"))
    c = measure_ceilings(torch.device("cpu"), {"fp32"}, size="quick", timing=FAST)
    assert c.compute_source == {"fp32": "torch_matmul_lower_bound"}
    assert c.compute_flop_per_s["fp32"] == c.matmul_flop_per_s["fp32"]
    assert c.fma_peak_flop_per_s == {} and "not built (test)" in c.notes[0]
    line = format_tables(_doc([_row("a", "cpu", 50.0)], c.as_dict())).splitlines()[1]
    assert "(torch matmul: a lower bound)" in line and "FMA peak" not in line
    assert "lower bound" in format_tables(_doc([], c.as_dict()))


# --------------------------------------------------------------------------------------------
# floor% over 100 in the report
# --------------------------------------------------------------------------------------------


def _row(case: str, provider: str, pct: float | None) -> dict:
    row = dict.fromkeys(RESULT_FIELDS)
    row.update(
        case_id=case, kind="op", name="smlp_mix", label="T4", batch=8, channels=640,
        out_channels=640, height=7, width=7, dtype="fp32", mode="fwd", device="cpu",
        provider=provider, status="ok", median_ms=1.0, p20_ms=0.9, p80_ms=1.1, reps=5,
        flops=10**9, bytes=10**6, roofline_pct=pct, floor_ms=None if pct is None else pct / 100,
    )  # fmt: skip
    return row


def _doc(results: list[dict], ceilings: dict) -> dict:
    meta = bench_report_meta(
        device={"type": "cpu", "name": "test CPU"}, suites=["cpu"], duration_s=1.0
    )
    return build_report(meta, ceilings, {}, results, [])


CPU_CEILINGS = Ceilings(
    "cpu",
    101.6e9,
    compute_flop_per_s={"fp32": 412.0e9},
    compute_source={"fp32": "fma_peak_fp32"},
    matmul_flop_per_s={"fp32": 191.4e9},
    fma_peak_flop_per_s={"fp32": 412.0e9},
).as_dict()


def test_floor_pct_over_100_is_flagged_in_table_json_and_csv(tmp_path):
    rows = [_row("case-a", "cpu", 172.6), _row("case-a", "reference", 40.0)]
    doc = _doc(rows, CPU_CEILINGS)
    assert validate_report(doc) == []
    assert doc["warnings"] == [
        {
            "case_id": "case-a",
            "provider": "cpu",
            "roofline_pct": 172.6,
            "message": ROOFLINE_WARNING,
        }
    ]
    assert roofline_warnings(rows[1:]) == []
    text = format_tables(doc)
    lines = text.splitlines()
    cpu_line = next(line for line in lines if " cpu " in line and "T4" in line)
    ref_line = next(line for line in lines if " reference " in line)
    assert "172.6!" in cpu_line and "40.0" in ref_line and "!" not in ref_line
    assert any(
        line.startswith("! floor% over 100 is a measurement error") and "(1 row;" in line
        for line in lines
    )
    path = tmp_path / "r.csv"
    write_csv(doc, path)
    with path.open() as f:
        reader = csv.DictReader(f)
        out = list(reader)
    assert reader.fieldnames == [*RESULT_FIELDS, *CSV_EXTRA_FIELDS]
    assert out[0]["roofline_warning"] == ROOFLINE_WARNING and out[1]["roofline_warning"] == ""
    assert float(out[0]["torch_matmul_flop_per_s"]) == 191.4e9
    assert float(out[0]["compute_ceiling_flop_per_s"]) == 412.0e9
    assert out[0]["compute_ceiling"] == "fma_peak_fp32"


def test_no_flag_at_or_below_100():
    doc = _doc([_row("a", "cpu", 100.0), _row("b", "cpu", None)], CPU_CEILINGS)
    assert doc["warnings"] == []
    assert "measurement error" not in format_tables(doc)


def test_ceilings_line_labels_the_matmul_rate():
    line = format_tables(_doc([], CPU_CEILINGS)).splitlines()[1]
    assert line == (
        "measured ceilings: copy 101.6 GB/s (read + write), FMA peak fp32 412.0 GFLOP/s; "
        "torch matmul fp32 191.4 GFLOP/s (an achieved rate, not a ceiling)"
    )
    # fp16 on the fp32 peak says so; CUDA's matmul is the ceiling and is not repeated.
    fp16 = dict(
        CPU_CEILINGS,
        compute_flop_per_s={"fp16": 412.0e9},
        compute_source={"fp16": "fma_peak_fp32"},
        matmul_flop_per_s={"fp16": 20e9},
    )
    line = format_tables(_doc([], fp16)).splitlines()[1]
    assert "compute fp16 412.0 GFLOP/s (the fp32 peak)" in line
    assert "torch matmul fp16 20.0 GFLOP/s (an achieved rate" in line
    gpu = Ceilings("cuda", 3e12, {"bf16": 790e12}, {"bf16": "torch_matmul"}, {"bf16": 790e12})
    doc = _doc([], gpu.as_dict())
    doc["meta"]["device"]["type"] = "cuda"
    line = format_tables(doc).splitlines()[1]
    assert line == (
        "measured ceilings: copy 3000.0 GB/s (read + write), compute bf16 790.0 TFLOP/s "
        "(torch matmul)"
    )
