"""Ahead-of-time compilation of every Triton kernel, in every autotune config, for sm_80 and
sm_90, without a GPU.

The compile lives in ``smlp_kernels/triton/_aot.py``: for each launch site of ``_launch.py``
it rebuilds the arguments a real launch on contiguous tensors passes, specialises them as
Triton's launcher does (an int equal to 1 becomes a constexpr; ints and pointers divisible
by 16 get ``tt.divisibility``), compiles with ``triton.compile`` for
``GPUTarget("cuda", 80 | 90, 32)`` and reads registers and spills from the log of the
``ptxas -v`` run Triton makes itself. A compilation FAILS here when

* it fails (any stage, ptxas included);
* ``metadata.shared`` exceeds the per-block opt-in limit (A100: 166912 bytes, H100:
  232448 bytes), which is what makes Triton raise OutOfResources at the first launch;
* ptxas reports spill stores or spill loads (any byte);
* a 16-bit compile holds no matrix-unit instruction (every kernel is built on tl.dot, so
  its 16-bit PTX must use wgmma or mma.sync, never the FMA path).

The table also counts the wgmma and mma.sync instructions in each PTX: on sm_90 only
wgmma reaches the matrix units' peak, so the count says which dots of a config can.

Shapes (C, C_out, H, W): the four sMLPNet-T stages (80, 56), (160, 28), (320, 14), (640, 7)
with C_out = C, (96, 96, 56, 28) for H != W, and (16, 16, 128, 128) for the largest tile.
The full matrix (every launch site x HAS_* / DETERMINISTIC flag x config x shape x arch, in
fp16, bf16 and fp32 and with fp16 / bf16 x on float32 parameters) is ~2900 distinct
compilations of 1 to 30 s each: hours on our 2-core machines. So:

* the default (CI) run, ``_aot.ci_jobs``, compiles every distinct config that
  ``_tuning.all_configs`` returns for those shapes on both archs, on its heaviest launch
  variant (every optional operand present: both biases, F, partial-sum stores):
  - in a 16-bit dtype on sm_80 and on sm_90, fp16 and bf16 alternating over the configs
    and between the archs. This is the matrix-unit path: mma.sync on sm_80; on sm_90
    wgmma where a dot's tile suits a warpgroup, else mma.sync;
    fp16 and bf16 compile alike (measured over all configs: same registers, spills and
    shared memory for 94 of 104 config x arch pairs, the rest within 9 registers and 100
    spill bytes, never a different verdict);
  - and in fp32 on sm_80: IEEE fp32 dots take a different (FMA) path, and fp32 tiles need
    twice the shared memory. fp32 shared memory was the same on both archs for every
    config, and sm_80's limit is the lower one; fp32 on sm_90 (the slowest compiles) is left
    to the full matrix.
  With the current config lists the whole file takes about a minute on our 2-core
  machines (58 s measured).
  ``test_ci_subset_covers_every_config`` checks the coverage;
* ``test_full_matrix`` (marked slow, run only with SMLP_AOT_FULL=1) compiles all of it.

``test_jobs_are_the_launchers_launches`` keeps ``_aot`` honest: it runs ``_launch.py`` on
meta tensors with the kernels replaced by recorders, every config tried, and checks that
the specialised arguments of every launch are exactly the full matrix's compilations.

The compile runs in a child process with TRITON_INTERPRET removed: tests/conftest.py turns
the interpreter on for CPU-only sessions, and kernels defined under it are
InterpretedFunction objects (so are the helpers they call), which triton.compile cannot
take. The child uses a process pool over the machine's cores and a throw-away Triton cache.
The results table (kernel, config, dtype, arch, registers, spills, shared bytes, wgmma and
mma.sync counts) is attached to each test's report (shown for failures, or for every test
with ``-rP``) and written, with the JSON, under the pytest tmp dir.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed: nothing to compile", allow_module_level=True)

from smlp_kernels.triton import _aot, _tuning

ARCH_IDS = {a.capability: a.ptxas_arch.removesuffix("a") for a in _aot.ARCHS}
FULL_ENV = "SMLP_AOT_FULL"
CHILD_TIMEOUT_S = {False: 1800, True: 6 * 3600}  # a hang guard, by full


def _run_child(out_dir: Path, full: bool) -> dict:
    """Run ``python -m smlp_kernels.triton._aot`` with the interpreter off; its JSON."""
    out = out_dir / "aot.json"
    package_root = str(Path(importlib.util.find_spec("smlp_kernels").origin).parents[1])
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(out_dir / "triton-cache")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "smlp_kernels.triton._aot", "--out", str(out)]
    if full:
        cmd.append("--full")
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S[full], check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stderr[-8000:]}")
    report = json.loads(out.read_text())
    report["dir"] = str(out_dir)
    (out_dir / "aot.txt").write_text(_table(report["results"]))
    return report


def _failures(row: dict) -> list[str]:
    """Why one result fails the criteria (empty: it passes)."""
    if not row["ok"]:
        return [f"compile failed: {row['error']}"]
    limit = next(a.max_shared for a in _aot.ARCHS if a.capability == row["job"]["arch"])
    why = []
    if row["shared"] > limit:
        why.append(f"shared {row['shared']} B > {limit} B")
    if row["spill_stores"] > 0 or row["spill_loads"] > 0:
        why.append(f"spills {row['spill_stores']} B stores / {row['spill_loads']} B loads")
    if row["job"]["dtype"] != "fp32" and row["wgmma"] + row["mma_sync"] == 0:
        why.append("no wgmma or mma.sync in a 16-bit compile")
    return why


def _table(rows: list[dict]) -> str:
    head = ("kernel", "config", "dtype", "arch", "regs", "spill st/ld", "shared",
            "wgmma/mma", "launch", "flags", "verdict")  # fmt: skip
    lines = []
    for r in sorted(rows, key=lambda r: (r["job"]["kernel"], r["job"]["arch"], r["job"]["config"],
                                         r["job"]["dtype"])):  # fmt: skip
        j = r["job"]
        dtype = j["dtype"] if j["param_dtype"] == j["dtype"] else f"{j['dtype']}/{j['param_dtype']}"
        lines.append((
            j["kernel"], j["config"], dtype, ARCH_IDS[j["arch"]],
            str(r["registers"]), f"{r['spill_stores']}/{r['spill_loads']}", str(r["shared"]),
            f"{r['wgmma']}/{r['mma_sync']}", f"{j['launch']} {j['shape']}", j["flags"],
            "; ".join(_failures(r)) or "ok",
        ))  # fmt: skip
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)).rstrip()
                     for x in [head, *lines])  # fmt: skip


def _check(request, report: dict, rows: list[dict], what: str) -> None:
    assert rows, f"no compilation results for {what}"
    timing = (f"{len(report['results'])} compilations in {report['seconds']:.0f} s "
              f"({report['cpu_seconds']:.0f} CPU-s, {report['workers']} workers); "
              f"table and JSON in {report['dir']}")  # fmt: skip
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
    return _run_child(tmp_path_factory.mktemp("aot-ci"), full=False)


def test_specialize_matches_triton_launcher():
    """_aot.specialize reproduces what Triton's launcher does with run-time ints."""
    try:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import BaseBackend
    except ImportError as exc:  # a Triton without it: nothing to compare against
        pytest.skip(f"triton has no native_specialize_impl to compare with: {exc}")
    for value in (0, 1, 2, 7, 16, 56, 3136, 250880, 2**31 - 16, 2**31, 2**40 + 3):
        ty, div = native_specialize_impl(BaseBackend, value, False, True, True)
        expected = ("constexpr", False) if ty == "constexpr" else (ty, div == "D")
        assert _aot.specialize(value) == expected, value


def test_matrix_instructions_counts_ptx_lines():
    """wgmma and mma.sync instructions are counted, and nothing else is."""
    ptx = "\n".join([
        "\twgmma.fence.sync.aligned;",
        "\twgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%f1}, %rd1, %rd2, 1, 1, 1;",
        "\twgmma.commit_group.sync.aligned;",
        "\tmma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f2}, {%r1}, {%r2}, {%f3};",
        "\tmma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f4}, {%r3}, {%r4}, {%f5};",
        "\tfma.rn.f32 %f6, %f7, %f8, %f9;",
        "// mma.sync in a comment",
    ])  # fmt: skip
    assert _aot.matrix_instructions(ptx) == (1, 2)
    assert _aot.matrix_instructions("") == (0, 0)


def test_ci_subset_covers_every_config():
    """Every distinct config all_configs returns for the shapes, in every arch, with at
    least one dtype, is in the default run."""
    jobs = _aot.ci_jobs()
    compiled = {(j.kernel, j.config, j.arch) for j in jobs}
    for shape in _aot.SHAPES:
        for kernel, configs in _tuning.all_configs(*shape).items():
            for cfg in configs:
                for arch in _aot.ARCHS:
                    assert (kernel, str(cfg), arch.capability) in compiled, (shape, kernel, cfg)
    assert len(set(jobs)) == len(jobs)


class _Recorder:
    """Stands in for a kernel in _launch: ``kernel[grid](*args, **kwargs)`` is recorded."""

    def __init__(self, name: str, arg_names: list[str], calls: list):
        self.name, self.arg_names, self.calls = name, arg_names, calls

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((self.name, self.arg_names, args, kwargs))

        return launch


def _canonical(kernel, signature, constexprs, divisible, num_warps, num_stages) -> tuple:
    return (
        kernel,
        tuple(sorted(signature.items())),
        tuple(sorted(constexprs.items())),
        tuple(sorted(divisible)),
        num_warps,
        num_stages,
    )


def _recorded_inputs(name, arg_names, args, kwargs) -> tuple:
    """The compile inputs of one recorded launch, specialised as Triton's launcher does."""
    import triton.language as tl

    names = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
    signature, constexprs, divisible = {}, {}, []
    for arg_name, value in zip(arg_names, args, strict=False):
        if isinstance(value, torch.Tensor):
            value = _aot.Ptr(names[value.dtype], value.storage_offset() * value.element_size())
        signature[arg_name], div = _aot.specialize(value)
        if signature[arg_name] == "constexpr":
            constexprs[arg_name] = value
        if div:
            divisible.append(arg_name)
    kw = dict(kwargs)
    warps, stages = kw.pop("num_warps"), kw.pop("num_stages")
    kw["COMPUTE"] = {tl.float16: "fp16", tl.bfloat16: "bf16", tl.float32: "fp32"}[kw["COMPUTE"]]
    signature.update(dict.fromkeys(kw, "constexpr"))
    constexprs.update(kw)
    return _canonical(name, signature, constexprs, divisible, warps, stages)


@pytest.mark.parametrize("arch", _aot.ARCHS, ids=lambda a: ARCH_IDS[a.capability])
def test_jobs_are_the_launchers_launches(arch, monkeypatch):
    """launch_jobs() yields exactly the compile inputs that _launch.py passes to Triton, for
    every shape, dtype pair, flag and config: _launch runs on meta tensors with its kernels
    replaced by recorders and every config of _tuning tried."""
    from smlp_kernels import _config
    from smlp_kernels.triton import _launch, kernels

    calls: list = []
    for name in _aot.KERNELS:
        recorder = _Recorder(name, getattr(kernels, name).arg_names, calls)
        monkeypatch.setattr(_launch, name, recorder)
    monkeypatch.setattr(_launch, "INTERPRETED", False)  # dtypes as on a GPU
    monkeypatch.setattr(_launch, "_check_device", lambda x: None)
    monkeypatch.setattr(_launch, "_num_sms", lambda device: arch.num_sms)
    monkeypatch.setattr(_launch, "_precision", lambda: "ieee")

    def every_config(key, configs, device, run, **options):
        for cfg in configs:
            run(cfg)
        return configs[0]

    monkeypatch.setattr(_tuning, "pick", every_config)
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    pairs = [(d, d) for d in _aot.DTYPES] + [("fp16", "fp32"), ("bf16", "fp32")]
    for c, c_out, h, w in _aot.SHAPES:
        for x_name, p_name in pairs:
            xd, pd = dtypes[x_name], dtypes[p_name]

            def empty(*shape, dtype):
                return torch.empty(shape, dtype=dtype, device="meta")

            x, g = empty(_aot.BATCH, c, h, w, dtype=xd), empty(_aot.BATCH, c_out, h, w, dtype=xd)
            rw, rb, cw, cb = (
                empty(w, w, dtype=pd),
                empty(w, dtype=pd),
                empty(h, h, dtype=pd),
                empty(h, dtype=pd),
            )
            fw = empty(c_out, 3 * c, dtype=pd)
            for row_bias in (rb, None):
                for col_bias in (cb, None):
                    _launch.mix_fwd(x, rw, row_bias, cw, col_bias, fw)
                    for det in (False, True):
                        with _config.deterministic(det):
                            _launch.mix_bwd(g, x, rw, row_bias, cw, col_bias, fw)
            for axis, weight, bias in ((3, rw, rb), (2, cw, cb)):
                _launch.axis_mix_fwd(x, weight, bias, axis)
                _launch.axis_mix_fwd(x, weight, None, axis)
                for det in (False, True):
                    with _config.deterministic(det):
                        _launch.axis_mix_bwd(torch.empty_like(x), x, weight, axis)
    launched = {_recorded_inputs(*call) for call in calls}
    jobs = {
        _canonical(j.kernel, dict(j.signature), dict(j.constexprs), j.divisible, j.num_warps,
                   j.num_stages)
        for j in _aot.matrix(full=True)
        if j.arch == arch.capability
    }  # fmt: skip
    assert launched - jobs == set(), "launches the AOT jobs miss"
    assert jobs - launched == set(), "AOT jobs no launch makes"


@pytest.mark.parametrize("arch", [a.capability for a in _aot.ARCHS], ids=ARCH_IDS.get)
@pytest.mark.parametrize("kernel", _aot.KERNELS)
def test_aot_compile(request, ci_report, kernel, arch):
    rows = [r for r in ci_report["results"]
            if r["job"]["kernel"] == kernel and r["job"]["arch"] == arch]  # fmt: skip
    _check(request, ci_report, rows, f"{kernel} {ARCH_IDS[arch]}")


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get(FULL_ENV) != "1",
    reason=f"the full AOT matrix takes hours on 2 cores; set {FULL_ENV}=1 to run it",
)
def test_full_matrix(request, tmp_path):
    report = _run_child(tmp_path, full=True)
    _check(request, report, report["results"], "full-matrix")
