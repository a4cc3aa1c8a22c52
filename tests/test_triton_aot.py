"""Ahead-of-time compilation of every Triton kernel, in every autotune config, for sm_80 and
sm_90, without a GPU.

``scripts/triton_aot.py`` does the work (this file imports it): it runs the backend's
primitives on meta tensors with the JIT kernels replaced by recorders and every config
tried, so the compilations are exactly the launchers' launches, specialised as Triton's
launcher does, then compiles each for ``GPUTarget("cuda", 80 | 90, 32)`` and reads
registers and spills from the log of the ``ptxas -v`` run Triton makes itself. A
compilation FAILS here when

* it fails (any stage, ptxas included);
* its shared memory exceeds the per-block opt-in limit (A100: 166912 bytes, H100:
  232448 bytes), which is what makes Triton raise OutOfResources at the first launch;
* ptxas reports spill stores or spill loads (any byte);
* a 16-bit compile holds no matrix-unit instruction (every kernel but the re-layout copy
  ``pixel_major_kernel`` is built on tl.dot, so its 16-bit PTX must use wgmma or
  mma.sync, never the FMA path).

Version 1's GEMMs (``test_v1_pipelined_wgmma_on_hopper``) must also, in their default
config at the 8 sMLPNet stage shapes in bf16, keep wgmma in flight on sm_90
(``wgmma.wait_group`` >= 1, fed by cp.async) and use mma.sync on sm_80.

Shapes (C, C_out, H, W): the four sMLPNet-T stages T1-T4 with C_out = C, 96x56x28 for
H != W, and 16x128x128 for the largest tile. The full matrix (every launch: HAS_* /
DETERMINISTIC flags, forward and input-gradient strides; every config, shape and arch, in
fp16, bf16 and fp32 and with fp16 / bf16 x on float32 parameters) is ~3000 distinct
compilations of 1 to 30 s each: hours on our 2-core machines. So:

* the default (CI) run, the script's ``--ci`` subset, compiles every distinct config of
  those shapes on both archs, on its heaviest launch (every optional operand present: both
  biases, F, partial-sum stores):
  - in a 16-bit dtype on sm_80 and on sm_90, fp16 and bf16 alternating over the configs
    and between the archs. This is the matrix-unit path: mma.sync on sm_80; on sm_90
    wgmma where a dot's tile suits a warpgroup, else mma.sync; fp16 and bf16 compile
    alike (measured over all configs: same registers, spills and shared memory for 94 of
    104 config x arch pairs, the rest within 9 registers and 100 spill bytes, never a
    different verdict);
  - and in fp32 on sm_80: IEEE fp32 dots take a different (FMA) path, and fp32 tiles need
    twice the shared memory. fp32 shared memory was the same on both archs for every
    config, and sm_80's limit is the lower one; fp32 on sm_90 (the slowest compiles) is left
    to the full matrix.
  With the current config lists the whole file takes about a minute on our 2-core
  machines. ``test_ci_subset_covers_every_config`` checks the coverage against the family
  modules' config lists, and ``test_recording_covers_every_launch`` that the recording
  reaches every launch variant;
* ``test_full_matrix`` (marked slow, run only with SMLP_AOT_FULL=1) compiles all of it.

The compile runs in a child process with TRITON_INTERPRET removed: tests/conftest.py turns
the interpreter on for CPU-only sessions, and kernels defined under it are
InterpretedFunction objects, which triton.compile cannot take (recording needs no compile,
so it runs here). The child uses a process pool over the machine's cores and a throw-away
Triton cache. The results table is attached to each test's report (shown for failures, or
for every test with ``-rP``) and written, with the JSON, under the pytest tmp dir.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed: nothing to compile", allow_module_level=True)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "triton_aot.py"
_spec = importlib.util.spec_from_file_location("triton_aot", SCRIPT)
aot = importlib.util.module_from_spec(_spec)
sys.modules["triton_aot"] = aot  # dataclasses look their module up
_spec.loader.exec_module(aot)

SHAPES = {
    "T1": (80, 80, 56, 56),
    "T2": (160, 160, 28, 28),
    "T3": (320, 320, 14, 14),
    "T4": (640, 640, 7, 7),
    "96x56x28": (96, 96, 56, 28),
    "16x128x128": (16, 16, 128, 128),
}
ARCH_IDS = {80: "sm80", 90: "sm90"}
COPY_KERNELS = ("pixel_major_kernel",)  # re-layout copies: no product, no matrix unit
FULL_ENV = "SMLP_AOT_FULL"
CHILD_TIMEOUT_S = {False: 1800, True: 6 * 3600}  # a hang guard, by full


def _run_child(out_dir: Path, *options: str, shapes: tuple[str, ...] = tuple(SHAPES)) -> dict:
    """Run scripts/triton_aot.py on shapes (default SHAPES) with the interpreter off; its
    records."""
    out = out_dir / "aot.json"
    package_root = str(Path(importlib.util.find_spec("smlp_kernels").origin).parents[1])
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(out_dir / "triton-cache")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(SCRIPT), "--shapes", ",".join(shapes), "--json", str(out), *options]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False,
                          timeout=CHILD_TIMEOUT_S["--ci" not in options])  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stderr[-8000:]}")
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(cpu_after, f) - getattr(cpu_before, f) for f in ("ru_utime", "ru_stime"))
    records = json.loads(out.read_text())
    (out_dir / "aot.txt").write_text(_table(records))
    return {"records": records, "seconds": time.perf_counter() - start, "cpu_seconds": cpu,
            "dir": str(out_dir)}  # fmt: skip


def _failures(row: dict) -> list[str]:
    """Why one record fails the criteria (empty: it passes)."""
    if not row["ok"]:
        return [f"compile failed: {row['error']}"]
    limit = aot.ARCHS[row["arch"]].max_shared
    why = []
    if row["smem"] > limit:
        why.append(f"shared {row['smem']} B > {limit} B")
    if row["spill_bytes"] > 0:
        why.append(f"spills {row['spill_stores']} B stores / {row['spill_loads']} B loads")
    if (
        row["dtype"] != "fp32"
        and row["kernel"] not in COPY_KERNELS
        and row["wgmma"] + row["mma_sync"] == 0
    ):
        why.append("no wgmma or mma.sync in a 16-bit compile")
    return why


def _table(rows: list[dict]) -> str:
    head = ("kernel", "config", "dtype", "arch", "regs", "spill", "smem", "wgmma/mma",
            "launch", "flags", "verdict")  # fmt: skip
    lines = []
    for r in sorted(rows, key=lambda r: (r["kernel"], r["arch"], r["config"], r["dtype"])):
        dtype = r["dtype"] if r["param_dtype"] == r["dtype"] else f"{r['dtype']}/{r['param_dtype']}"
        lines.append((
            r["kernel"], r["config"], dtype, ARCH_IDS[r["arch"]], str(r["regs"]),
            str(r["spill_bytes"]), str(r["smem"]), f"{r['wgmma']}/{r['mma_sync']}",
            f"{r['launch']} {r['shape']}", r["flags"], "; ".join(_failures(r)) or "ok",
        ))  # fmt: skip
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)).rstrip()
                     for x in [head, *lines])  # fmt: skip


def _check(request, report: dict, rows: list[dict], what: str) -> None:
    assert rows, f"no compilation results for {what}"
    timing = (f"{len(report['records'])} compilations in {report['seconds']:.0f} s "
              f"({report['cpu_seconds']:.0f} CPU-s); table and JSON in "
              f"{report['dir']}")  # fmt: skip
    request.node.add_report_section("call", "aot table", f"{timing}\n{_table(rows)}")
    bad = [r for r in rows if _failures(r)]
    if bad:
        pytest.fail(
            f"{len(bad)} of {len(rows)} {what} compilations fail "
            f"(shared limit, no spills, compiles):\n{_table(bad)}",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def ci_report(tmp_path_factory) -> dict:
    return _run_child(tmp_path_factory.mktemp("aot-ci"), "--ci")


@pytest.fixture(scope="module")
def recorded() -> list:
    """Every launch for SHAPES on both archs and in every dtype pair (no compile)."""
    return aot.record(SHAPES, list(aot.ARCHS), list(aot.DTYPES), params="both")


def test_specialize_matches_triton_launcher():
    """specialize reproduces what Triton's launcher does with run-time ints."""
    try:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import BaseBackend
    except ImportError as exc:  # a Triton without it: nothing to compare against
        pytest.skip(f"triton has no native_specialize_impl to compare with: {exc}")
    for value in (0, 1, 2, 7, 16, 56, 3136, 250880, 2**31 - 16, 2**31, 2**40 + 3):
        ty, div = native_specialize_impl(BaseBackend, value, False, True, True)
        expected = ("constexpr", False) if ty == "constexpr" else (ty, div == "D")
        assert aot.specialize(value) == expected, value


def test_ptx_counts():
    """wgmma, mma.sync, TMA and cp.async copies and the deepest wgmma wait are counted, and
    nothing else is."""
    ptx = "\n".join([
        "\twgmma.fence.sync.aligned;",
        "\twgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%f1}, %rd1, %rd2, 1, 1, 1;",
        "\twgmma.commit_group.sync.aligned;",
        "\twgmma.wait_group.sync.aligned 1;",
        "\twgmma.wait_group.sync.aligned 0;",
        "\tmma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f2}, {%r1}, {%r2}, {%f3};",
        "\tmma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f4}, {%r3}, {%r4}, {%f5};",
        "\tcp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%r5], "
        "[%rd3, {%r6, %r7}], [%r8];",
        "\tcp.async.cg.shared.global [ %r9 + 0 ], [ %rd4 + 0 ], 0x10, %r10;",
        "\tcp.async.ca.shared.global [ %r11 + 0 ], [ %rd5 + 0 ], 0x4, %r12;",
        "\tcp.async.commit_group;",
        "\tcp.async.wait_group 0;",
        "\tfma.rn.f32 %f6, %f7, %f8, %f9;",
        "// mma.sync in a comment",
    ])  # fmt: skip
    assert aot.ptx_counts(ptx) == {
        "wgmma": 1, "mma_sync": 2, "tma": 1, "cp_async": 2, "wait_group_max": 1,
        "wgmma_shapes": "m64n64k16",
    }  # fmt: skip
    assert aot.ptx_counts("") == {"wgmma": 0, "mma_sync": 0, "tma": 0, "cp_async": 0,
                                  "wait_group_max": 0, "wgmma_shapes": ""}  # fmt: skip
    two = "\n".join(f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.bf16.bf16 {{%f1}};"
                    for n in (256, 16, 128, 16))  # fmt: skip
    assert aot.ptx_counts(two)["wgmma_shapes"] == "m64n16k16,m64n128k16,m64n256k16"


def _family_configs(c: int, c_out: int, h: int, w: int) -> dict[str, list]:
    """What the family modules' config lists offer each kernel for one shape: the mix runs
    forward and (channels swapped) for the input gradient; the weight gradient along W and
    along H, with and without F; the axis mix along W and along H."""
    from smlp_kernels.triton import axis, gemm, mix, wgrad_fuse

    lists = {
        "concat_kernel": [
            gemm.concat_config(ch, h, w, fp32) for ch in (c, c_out) for fp32 in (False, True)
        ],
        # y = A F^T forward (N = C_out) and for the input gradient (N = C); Z (N = 2C).
        "fuse_gemm_kernel": [
            cfg
            for n in (c_out, c, 2 * c)
            for fp32 in (False, True)
            for cfg in gemm.gemm_configs(n, fp32)
        ],
        "fuse_wgrad_kernel": [gemm.wgrad_configs(c_out, 3 * c, fp32)[0] for fp32 in (False, True)],
        "mix_fwd_kernel": mix.configs(c, c_out, h, w) + mix.configs(c_out, c, h, w),
        "mix_wgrad_fuse_kernel": wgrad_fuse.configs(c, c_out, h, w),
        "axis_wgrad_kernel": [
            cfg
            for has_f in (True, False)
            for s, length in ((h, w), (w, h))
            for cfg in axis.wgrad_configs(s, length, has_f)
        ],
        "axis_mix_kernel": axis.mix_configs(w) + axis.mix_configs(h),
    }
    return lists


def test_ci_subset_covers_every_config(recorded):
    """Every config the family modules offer for SHAPES is launched by the recording, and
    is in the CI subset on every arch, with one dtype at least, exactly once per dtype."""
    launched = {(j.kernel, j.config, j.arch) for j in recorded}
    ci = aot.ci_jobs(recorded)
    compiled = {(j.kernel, j.config, j.arch) for j in ci}
    for shape in SHAPES.values():
        for kernel, configs in _family_configs(*shape).items():
            for cfg in configs:
                for arch in aot.ARCHS:
                    assert (kernel, str(cfg), arch) in launched, (shape, kernel, cfg, arch)
                    assert (kernel, str(cfg), arch) in compiled, (shape, kernel, cfg, arch)
    assert len({(j.kernel, j.config, j.arch, j.dtype) for j in ci}) == len(ci) == len(set(ci))
    # fp32 on sm_90 only for a config no 16-bit launch uses.
    half_configs = {(j.kernel, j.config) for j in recorded if j.dtype != "fp32"}
    for j in ci:
        if j.arch == 90 and j.dtype == "fp32":
            assert (j.kernel, j.config) not in half_configs, j


@pytest.mark.parametrize(
    "shape",
    [(80, 80, 56, 56), (160, 160, 28, 28), (320, 320, 14, 14), (640, 640, 7, 7), (3, 5, 1, 57)],
    ids=lambda s: "C{}-Co{}-H{}-W{}".format(*s),
)
def test_configs_are_legal_tiles(shape):
    """Every config: powers of two, pixel boxes of >= 16 (a tl.dot K dimension >= 16)."""
    for name, configs in _family_configs(*shape).items():
        assert configs, name
        for cfg in configs:
            k = cfg.constexprs()
            for key, value in k.items():
                assert value >= 1 and value & (value - 1) == 0, (name, key, value)
            if "BLOCK_U" in k:
                assert k["BLOCK_H"] * k["BLOCK_W"] >= 16, (name, cfg)
                assert k["BLOCK_C"] >= 16 and k["BLOCK_U"] >= 16 and k["BLOCK_V"] >= 16
            if name == "axis_wgrad_kernel":
                assert k["BLOCK_C"] * k["BLOCK_S"] >= 16 and k["BLOCK_L"] >= 16
            if name == "concat_kernel":
                assert min(k["BLOCK_C"], k["BLOCK_H"], k["BLOCK_W"]) >= 16, (name, cfg)
                assert k["BLOCK_H"] >= shape[2] and k["BLOCK_W"] >= shape[3], (name, cfg)
            if name in ("fuse_gemm_kernel", "fuse_wgrad_kernel"):
                assert min(k.values()) >= 16, (name, cfg)


def test_recording_covers_every_launch(recorded):
    """The recording reaches every launch variant of every kernel: both biases present or
    not, both reductions (atomics and partial sums), z = F^T g and z = g, forward and
    input-gradient strides, both dtypes of the parameters; and the defaults are marked."""

    def variants(kernel: str) -> set:
        return {(j.flags, j.param_dtype == j.dtype) for j in recorded if j.kernel == kernel}

    def flags(**kw: bool) -> str:
        return " ".join(f"{k}={int(v)}" for k, v in sorted(kw.items()))

    two = (False, True)
    assert variants("mix_fwd_kernel") == {(flags(HAS_RB=r, HAS_CB=c), p)
                                          for r in two for c in two for p in two}  # fmt: skip
    assert variants("mix_wgrad_fuse_kernel") == {
        (flags(DETERMINISTIC=d, HAS_RB=r, HAS_CB=c), p)
        for d in two for r in two for c in two for p in two
    }  # fmt: skip
    # Without F the weight gradient reads no parameter: its launches do not depend on them.
    assert variants("axis_wgrad_kernel") == {(flags(DETERMINISTIC=d, HAS_F=f), p)
                                             for d in two for f in two
                                             for p in (two if f else (True,))}  # fmt: skip
    assert variants("axis_mix_kernel") == {(flags(HAS_BIAS=b), p) for b in two for p in two}
    # Version 1: the pre-pass with and without biases and prologue; the weight-gradient GEMM
    # storing or adding (later chunks) its slots, or with atomics; neither depends on the
    # parameters' dtype (A is the pre-pass's, in the compute dtype).
    assert variants("concat_kernel") == {(flags(HAS_RB=r, HAS_CB=c, PROLOGUE=q), p)
                                         for r in two for c in two for q in two
                                         for p in two}  # fmt: skip
    assert variants("fuse_wgrad_kernel") == {(flags(ACCUMULATE=a, DETERMINISTIC=d), True)
                                             for a in two for d in two}  # fmt: skip
    assert variants("fuse_gemm_kernel") == {("", True)}
    # The input gradient: the mix kernel on transposed weights (stride 1 along the rows).
    transposed = [
        j for j in recorded if j.launch == "mix input-grad" and j.kernel == "mix_fwd_kernel"
    ]
    for name in ("sfo", "srw0", "scw0"):
        assert transposed and all((name, 1) in j.constexprs for j in transposed), name
    transposed = [
        j for j in recorded if j.launch == "mix input-grad" and j.kernel == "concat_kernel"
    ]
    for name in ("srw0", "scw0"):
        assert transposed and all((name, 1) in j.constexprs for j in transposed), name
    for kernel in aot.ROLES:
        assert any(j.default for j in recorded if j.kernel == kernel), kernel
    # Kernels with a choice of configs: the alternatives are launched too.
    for kernel in ("mix_fwd_kernel", "mix_wgrad_fuse_kernel", "axis_wgrad_kernel",
                   "axis_mix_kernel", "fuse_gemm_kernel"):  # fmt: skip
        assert any(not j.default for j in recorded if j.kernel == kernel), kernel


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    """Bad arguments exit with 2 and a message naming the argument; so does the
    interpreter (the kernels cannot compile under it)."""
    out = str(tmp_path / "x.json")
    for argv, named in (
        (["--arch", "75", "--json", out], "--arch"),
        (["--dtype", "fp64", "--json", out], "--dtype"),
        (["--shapes", "T9", "--json", out], "--shapes"),
        (["--shapes", "0x7x7", "--json", out], "--shapes"),
        (["--jobs", "0", "--json", out], "--jobs"),
        (["--ci", "--dtype", "fp16", "--json", out], "--ci"),
        (["--arch", "90"], "--json"),
    ):
        with pytest.raises(SystemExit) as exc:
            aot.main(argv)
        assert exc.value.code == 2, argv
        assert named in capsys.readouterr().err, argv
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--json", out], env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 2 and "TRITON_INTERPRET" in proc.stderr
    assert not Path(out).exists()


@pytest.mark.parametrize("arch", list(aot.ARCHS), ids=ARCH_IDS.get)
@pytest.mark.parametrize("kernel", list(aot.ROLES))
def test_aot_compile(request, ci_report, kernel, arch):
    rows = [r for r in ci_report["records"] if r["kernel"] == kernel and r["arch"] == arch]
    _check(request, ci_report, rows, f"{kernel} {ARCH_IDS[arch]}")


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get(FULL_ENV) != "1",
    reason=f"the full AOT matrix takes hours on 2 cores; set {FULL_ENV}=1 to run it",
)
def test_full_matrix(request, tmp_path):
    report = _run_child(tmp_path, "--variants", "all", "--params", "both")
    _check(request, report, report["records"], "full-matrix")


STAGES = ("T1", "T2", "T3", "T4", "B1", "B2", "B3", "B4")


@pytest.fixture(scope="module")
def v1_report(tmp_path_factory) -> dict:
    """Version 1's default configs at the 8 sMLPNet stage shapes, bf16, sm_80 and sm_90."""
    out = tmp_path_factory.mktemp("aot-v1")
    return _run_child(out, "--backend", "triton", "--dtype", "bf16", "--default-only",
                      shapes=STAGES)  # fmt: skip


@pytest.mark.parametrize("role", ["fwd", "wgrad_fuse"])
def test_v1_pipelined_wgmma_on_hopper(request, v1_report, role):
    """Version 1's GEMMs, default config, every stage shape, bf16: on sm_90 wgmma kept in
    flight (``wgmma.wait_group`` >= 1: the next loads and products overlap the previous
    ones) with cp.async copies; on both archs no spills and shared memory within the
    limit."""
    rows = [r for r in v1_report["records"] if r["role"] == role and r["default"]
            and r["kernel"] in ("fuse_gemm_kernel", "fuse_wgrad_kernel")]  # fmt: skip
    _check(request, v1_report, rows, f"version 1 {role}")
    for arch in aot.ARCHS:
        assert {r["shape"] for r in rows if r["arch"] == arch} == set(STAGES), arch
    for r in rows:
        where = f"{r['kernel']} {r['shape']} sm_{r['arch']} {r['config']}"
        if r["arch"] == 90:
            assert r["wgmma"] > 0, f"{where}: no wgmma"
            assert r["wait_group_max"] >= 1, f"{where}: every wgmma waited at once"
            assert r["cp_async"] > 0, f"{where}: no cp.async copies"
        else:
            assert r["mma_sync"] > 0, f"{where}: no mma.sync"
