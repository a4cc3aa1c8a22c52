"""Ahead-of-time compilation of the Triton kernels for GPUs this machine need not have.

For each launch site of ``_launch.py`` and each configuration ``_tuning`` offers there, this
module rebuilds the arguments a real launch on a realistic contiguous shape would pass,
specialises them as Triton's launcher does, compiles the kernel for sm_80 and sm_90 with
``triton.compile`` (no driver needed: the target is given, nothing queries a device), and
reads registers and spills from the ``ptxas -v`` log of Triton's own ptxas run (its
bundled ptxas, with the flags a real launch uses), and shared memory from the metadata.
``tests/test_triton_aot.py`` drives it and holds the pass criteria; it can also be run by
hand:

    python -m smlp_kernels.triton._aot --out results.json [--full] [--jobs N]

The kernels must be real ``JITFunction`` objects, so this module refuses to run under the
Triton interpreter (``TRITON_INTERPRET=1``); the test runs it in a child process with that
variable removed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass, field
from typing import Any

KERNELS = ("mix_fwd_kernel", "mix_wgrad_fuse_kernel", "axis_wgrad_kernel", "axis_mix_kernel")


@dataclass(frozen=True)
class Arch:
    """A compilation target and the limits its kernels must respect."""

    capability: int
    gpu: str  # the GPU the limits are taken from
    ptxas_arch: str  # ptxas --gpu-name, as Triton itself calls it
    max_shared: int  # bytes of dynamic shared memory one block may opt in to
    num_sms: int  # sizes SPLITS as _launch._splits does on that GPU


ARCHS = (
    Arch(80, "A100", "sm_80", 166912, 108),  # 163 KB per block
    Arch(90, "H100", "sm_90a", 232448, 132),  # 227 KB per block
)

# (C, C_out, H, W): the four sMLPNet-T stages, one H != W shape and the largest tile.
SHAPES = (
    (80, 80, 56, 56),
    (160, 160, 28, 28),
    (320, 320, 14, 14),
    (640, 640, 7, 7),
    (96, 96, 56, 28),
    (16, 16, 128, 128),
)
BATCH = 64  # a training batch: enters only run-time ints (tile counts, loop bounds)
DTYPES = ("fp16", "bf16", "fp32")
_ELEM_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
_BASE_ADDRESS = 1 << 20  # allocations are at least 16-byte aligned


# --------------------------------------------------------------------------------------------
# Launcher specialisation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ptr:
    """A tensor argument: its element type and its data pointer's byte offset from an
    allocation (a slice such as fuse_weight[:, C:2C] starts C elements in)."""

    dtype: str
    offset_bytes: int = 0


def specialize(value: Ptr | int) -> tuple[str, bool]:
    """(signature type, divisible by 16) of a run-time argument, as Triton 3.6's launcher
    specialises it (``native_specialize_impl``): an int equal to 1 becomes the constexpr 1;
    other ints are i32 or i64 by range and carry a divisibility-by-16 hint when they are
    multiples of 16 (0 included); pointers carry the hint when their address is."""
    if isinstance(value, Ptr):
        return "*" + value.dtype, (_BASE_ADDRESS + value.offset_bytes) % 16 == 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"run-time arguments here are ints or pointers, not {value!r}")
    if value == 1:
        return "constexpr", False
    ty = "i32" if -(2**31) <= value < 2**31 else "i64"
    return ty, value % 16 == 0


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _splits(n_work: int, programs_per_split: int, num_sms: int) -> int:
    """_launch._splits on a GPU with num_sms SMs (about four programs per SM in all)."""
    target = max(1, (4 * num_sms) // max(1, programs_per_split))
    return max(1, min(n_work, target))


def _named(names: tuple[str, ...], values: tuple[int, ...]) -> list[tuple[str, int]]:
    return list(zip(names, values, strict=True))


def _strides(*shape: int) -> tuple[int, ...]:
    """Strides of a contiguous tensor."""
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= n
    return tuple(reversed(out))


# --------------------------------------------------------------------------------------------
# Jobs: one compilation each
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One compilation. Everything but the labels is an input of triton.compile, so two
    jobs that compare equal compile to the same binary."""

    kernel: str
    config: str
    dtype: str  # x's dtype (COMPUTE)
    param_dtype: str
    arch: int
    num_warps: int
    num_stages: int
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, Any], ...]  # COMPUTE as its name ("fp16")
    divisible: tuple[str, ...]
    launch: str = field(default="", compare=False)  # e.g. "mix_fwd input-grad"
    shape: str = field(default="", compare=False)  # e.g. "C80-Co80-H56-W56"
    flags: str = field(default="", compare=False)  # e.g. "HAS_RB=1 HAS_CB=0"


def _job(
    kernel: str,
    args: list[tuple[str, Ptr | int]],
    meta: dict[str, Any],
    cfg,
    *,
    dtype: str,
    param_dtype: str,
    arch: Arch,
    launch: str,
    shape: str,
) -> Job:
    """A Job from a launch's positional (name, value) arguments and constexpr keywords."""
    signature, constexprs, divisible = [], {}, []
    for name, value in args:
        ty, div = specialize(value)
        signature.append((name, ty))
        if ty == "constexpr":
            constexprs[name] = value
        if div:
            divisible.append(name)
    kw = {**meta, **cfg.constexprs()}
    for name, value in kw.items():
        signature.append((name, "constexpr"))
        constexprs[name] = value
    flags = " ".join(f"{k}={int(v)}" for k, v in meta.items() if isinstance(v, bool))
    return Job(
        kernel=kernel,
        config=str(cfg),
        dtype=dtype,
        param_dtype=param_dtype,
        arch=arch.capability,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        signature=tuple(signature),
        constexprs=tuple(constexprs.items()),
        divisible=tuple(divisible),
        launch=launch,
        shape=shape,
        flags=flags,
    )


def _bools(*names: str) -> Iterator[dict[str, bool]]:
    """Every True/False assignment of the named flags."""
    for i in range(2 ** len(names)):
        yield {n: bool(i >> k & 1) for k, n in enumerate(names)}


def launch_jobs(
    c: int, c_out: int, h: int, w: int, dtype: str, param_dtype: str, arch: Arch
) -> list[Job]:
    """Every compilation the triton backend may trigger for one shape, dtype and GPU.

    Mirrors the launch sites of ``_launch.py`` (argument order, stride swaps, placeholder
    pointers for absent biases, SPLITS) on contiguous tensors: x (B, C, H, W), g and y
    (B, C_out, H, W), row weight (W, W), column weight (H, H), fuse_weight (C_out, 3C),
    biases (W,) and (H,), float32 reduction buffers. Parameters are in param_dtype.
    """
    from . import _tuning

    b = BATCH
    shape = f"C{c}-Co{c_out}-H{h}-W{w}"
    prec = "ieee"  # PyTorch's default float32 matmul precision; 16-bit dots ignore it
    jobs: list[Job] = []
    xp, pp, f32 = Ptr(dtype), Ptr(param_dtype), Ptr("fp32")

    def add(kernel, args, flags, cfg, launch):
        meta = {**flags, "COMPUTE": dtype, "PREC": prec}
        jobs.append(
            _job(kernel, args, meta, cfg, dtype=dtype, param_dtype=param_dtype, arch=arch,
                 launch=launch, shape=shape)
        )  # fmt: skip

    # mix_fwd_kernel: the forward (biases present or not) and the input gradient, which runs
    # on g with channels swapped, transposed parameters and no biases.
    for transposed in (False, True):
        c_in, c_o = (c_out, c) if transposed else (c, c_out)
        configs = _tuning.mix_fwd_configs(c_in, c_o, h, w)
        if transposed:
            sfo, sfc, srw, scw = 1, 3 * c, (1, w), (1, h)
        else:
            sfo, sfc, srw, scw = 3 * c, 1, (w, 1), (h, 1)
        no_bias = [{"HAS_RB": False, "HAS_CB": False}]
        for flags in no_bias if transposed else _bools("HAS_RB", "HAS_CB"):
            for cfg in configs:
                k = cfg.constexprs()
                n_o = _cdiv(c_o, k["BLOCK_O"])
                n_h, n_w = _cdiv(h, k["BLOCK_H"]), _cdiv(w, k["BLOCK_W"])
                args = [
                    ("x_ptr", xp), *_named(("sxb", "sxc", "sxh", "sxw"), _strides(b, c_in, h, w)),
                    ("rw_ptr", pp), ("srw0", srw[0]), ("srw1", srw[1]),
                    ("rb_ptr", pp), ("srb", 1 if flags["HAS_RB"] else 0),
                    ("cw_ptr", pp), ("scw0", scw[0]), ("scw1", scw[1]),
                    ("cb_ptr", pp), ("scb", 1 if flags["HAS_CB"] else 0),
                    ("f_ptr", pp), ("sfo", sfo), ("sfc", sfc), ("f_blk", c),
                    ("y_ptr", xp), *_named(("syb", "syo", "syh", "syw"), _strides(b, c_o, h, w)),
                    ("C", c_in), ("C_OUT", c_o), ("H", h), ("W", w),
                    ("n_o", n_o), ("n_h", n_h), ("n_w", n_w),
                ]  # fmt: skip
                launch = "mix_fwd input-grad" if transposed else "mix_fwd forward"
                add("mix_fwd_kernel", args, flags, cfg, launch)

    # mix_wgrad_fuse_kernel: d fuse_weight, biases present or not, atomics or partials.
    for flags in _bools("HAS_RB", "HAS_CB", "DETERMINISTIC"):
        for cfg in _tuning.mix_wgrad_fuse_configs(c, c_out, h, w):
            k = cfg.constexprs()
            n_o, n_c = _cdiv(c_out, k["BLOCK_O"]), _cdiv(c, k["BLOCK_C"])
            n_h, n_w = _cdiv(h, k["BLOCK_H"]), _cdiv(w, k["BLOCK_W"])
            splits = _splits(b * n_h * n_w, n_o * n_c, arch.num_sms)
            args = [
                ("g_ptr", xp), *_named(("sgb", "sgo", "sgh", "sgw"), _strides(b, c_out, h, w)),
                ("x_ptr", xp), *_named(("sxb", "sxc", "sxh", "sxw"), _strides(b, c, h, w)),
                ("rw_ptr", pp), ("srw0", w), ("srw1", 1),
                ("rb_ptr", pp), ("srb", 1 if flags["HAS_RB"] else 0),
                ("cw_ptr", pp), ("scw0", h), ("scw1", 1),
                ("cb_ptr", pp), ("scb", 1 if flags["HAS_CB"] else 0),
                ("out_ptr", f32), ("B", b), ("C", c), ("C_OUT", c_out), ("H", h), ("W", w),
                ("n_h", n_h), ("n_w", n_w), ("SPLITS", splits),
            ]  # fmt: skip
            add("mix_wgrad_fuse_kernel", args, flags, cfg, "mix_bwd d_fuse")

    # axis_wgrad_kernel: row (axis 3) and column (axis 2) weight gradients, of the fused op
    # (HAS_F: z = F_blk^T g, F_blk a column slice of fuse_weight) and of row_mix / col_mix.
    for has_f in (True, False):
        c_g = c_out if has_f else c
        for axis in (3, 2):
            s_len, length = (h, w) if axis == 3 else (w, h)
            sg, sx = _strides(b, c_g, h, w), _strides(b, c, h, w)
            if axis == 2:
                sg, sx = (sg[0], sg[1], sg[3], sg[2]), (sx[0], sx[1], sx[3], sx[2])
            if has_f:
                blk = 1 if axis == 3 else 2
                f_arg = Ptr(param_dtype, blk * c * _ELEM_BYTES[param_dtype])
                sfo, sfc = 3 * c, 1
            else:
                f_arg, sfo, sfc = xp, 0, 0
            for flags in _bools("DETERMINISTIC"):
                for cfg in _tuning.axis_wgrad_configs(s_len, length, has_f):
                    k = cfg.constexprs()
                    n_s, n_c = _cdiv(s_len, k["BLOCK_S"]), _cdiv(c, k["BLOCK_C"])
                    splits = _splits(b * n_s * n_c, 1, arch.num_sms)
                    args = [
                        ("g_ptr", xp), *_named(("sgb", "sgc", "sgs", "sgl"), sg),
                        ("x_ptr", xp), *_named(("sxb", "sxc", "sxs", "sxl"), sx),
                        ("f_ptr", f_arg), ("sfo", sfo), ("sfc", sfc),
                        ("dw_ptr", f32), ("db_ptr", f32),
                        ("B", b), ("C", c), ("C_G", c_g), ("S", s_len), ("L", length),
                        ("n_s", n_s), ("n_c", n_c), ("SPLITS", splits),
                    ]  # fmt: skip
                    launch = f"{'mix_bwd' if has_f else 'axis_mix_bwd'} d_weight axis {axis}"
                    add("axis_wgrad_kernel", args, {"HAS_F": has_f, **flags}, cfg, launch)

    # axis_mix_kernel: row_mix / col_mix forward (bias or not) and input gradient (W^T).
    for axis in (3, 2):
        s_len, length = (h, w) if axis == 3 else (w, h)
        sx = _strides(b, c, h, w)
        if axis == 2:
            sx = (sx[0], sx[1], sx[3], sx[2])
        for transposed in (False, True):
            sw0, sw1 = (1, length) if transposed else (length, 1)
            for flags in [{"HAS_BIAS": False}] if transposed else _bools("HAS_BIAS"):
                for cfg in _tuning.axis_mix_configs(length):
                    n_q = _cdiv(c * s_len, cfg.constexprs()["BLOCK_Q"])
                    args = [
                        ("x_ptr", xp), *_named(("sxb", "sxc", "sxs", "sxl"), sx),
                        ("w_ptr", pp), ("sw0", sw0), ("sw1", sw1),
                        ("bias_ptr", pp), ("sbias", 1 if flags["HAS_BIAS"] else 0),
                        ("y_ptr", xp), *_named(("syb", "syc", "sys", "syl"), sx),
                        ("C", c), ("S", s_len), ("L", length), ("n_q", n_q),
                    ]  # fmt: skip
                    launch = f"axis_mix {'input-grad' if transposed else 'forward'} axis {axis}"
                    add("axis_mix_kernel", args, flags, cfg, launch)
    return jobs


def _weight(job: Job) -> int:
    """Sort key that puts the heaviest variant of a config first: every optional operand
    present (biases, F, partial-sum stores); sorting is stable, so among equals the first
    launch site and shape of launch_jobs and SHAPES."""
    return -sum(1 for _, v in job.constexprs if v is True)


def matrix(full: bool = True) -> list[Job]:
    """Every launch site x flag combination x config x shape x arch, in fp16, bf16 and fp32
    with parameters in x's dtype; with full=True also fp16 and bf16 x with float32
    parameters (master weights under mixed precision). Duplicates removed."""
    dtype_pairs = [(d, d) for d in DTYPES]
    if full:
        dtype_pairs += [("fp16", "fp32"), ("bf16", "fp32")]
    jobs: list[Job] = []
    for arch in ARCHS:
        for shape in SHAPES:
            for dtype, param_dtype in dtype_pairs:
                jobs += launch_jobs(*shape, dtype, param_dtype, arch)
    return list(dict.fromkeys(jobs))


def ci_jobs() -> list[Job]:
    """The default (CI) subset of matrix(): every distinct (kernel, config) of the shapes on
    each arch, on its heaviest launch variant (see _weight), with parameters in x's dtype:

    * in a 16-bit dtype on both archs (the matrix-unit path: mma.sync on sm_80; on sm_90
      wgmma where the tile allows it, else mma.sync: see matrix_instructions), fp16 and
      bf16 alternating over the configs and between the archs, since the two compile alike
      (same registers, spills and shared memory in all but a few cases);
    * in fp32 on sm_80 (IEEE fp32 dots take the FMA path, and fp32 tiles the most shared
      memory). fp32 shared memory does not depend on the arch and sm_80's limit is the
      lower one; fp32 on sm_90, whose compiles take longest, is left to the full matrix.
    """
    heaviest: dict[tuple, Job] = {}
    for job in sorted(matrix(full=False), key=_weight):
        if job.param_dtype == job.dtype:
            heaviest.setdefault((job.kernel, job.config, job.arch, job.dtype), job)
    configs = sorted({(k[0], k[1]) for k in heaviest})
    out: list[Job] = []
    for arch in ARCHS:
        for i, (kernel, config) in enumerate(configs):
            half = ("fp16", "bf16")[(i + arch.capability // 10) % 2]
            out.append(heaviest[(kernel, config, arch.capability, half)])
            if arch.capability == 80:
                out.append(heaviest[(kernel, config, arch.capability, "fp32")])
    return out


# --------------------------------------------------------------------------------------------
# Compiling one job
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    job: Job
    ok: bool
    error: str = ""
    registers: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    stack_frame: int = -1
    shared: int = -1
    # Matrix-unit instructions in the PTX (see matrix_instructions): Hopper's asynchronous
    # warpgroup ones and the synchronous warp-level ones of Ampere, which sm_90 also runs.
    wgmma: int = -1
    mma_sync: int = -1
    seconds: float = 0.0


_PTXAS_SPILLS = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
_PTXAS_REGS = re.compile(r"Used (\d+) registers")


def parse_ptxas(log: str) -> tuple[int, int, int, int]:
    """(registers, spill store bytes, spill load bytes, stack frame bytes) from ptxas -v."""
    spills = _PTXAS_SPILLS.search(log)
    regs = _PTXAS_REGS.search(log)
    if spills is None or regs is None:
        raise ValueError(f"no register / spill line in the ptxas log:\n{log}")
    frame, stores, loads = (int(g) for g in spills.groups())
    return int(regs.group(1)), stores, loads, frame


def matrix_instructions(ptx: str) -> tuple[int, int]:
    """(wgmma, mma.sync): how many ``wgmma.mma_async`` and ``mma.sync`` instructions the PTX
    holds, each counted once per appearance in the code (not per execution).

    On sm_90 Triton lowers a tl.dot to wgmma only when the tile suits a warpgroup (at least
    64 rows per 4 warps, among other conditions); otherwise it falls back to mma.sync, which
    cannot reach Hopper's peak matrix rate (only wgmma can). Neither appears for IEEE fp32
    dots (FMA)."""
    wgmma = mma = 0
    for line in ptx.splitlines():
        op = line.lstrip()
        if op.startswith("wgmma.mma_async"):
            wgmma += 1
        elif op.startswith("mma.sync"):
            mma += 1
    return wgmma, mma


def _tl_dtype(name: str):
    import triton.language as tl

    return {"fp16": tl.float16, "bf16": tl.bfloat16, "fp32": tl.float32}[name]


def compile_job(job: Job) -> Result:
    """Compile one job for its arch and read its resources. Never raises: a failure is a
    Result with ok=False and the error text."""
    start = time.perf_counter()
    try:
        import triton
        from triton import knobs
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        from . import kernels

        fn = getattr(kernels, job.kernel)
        if not isinstance(fn, triton.runtime.jit.JITFunction):
            raise RuntimeError(
                f"{job.kernel} is a {type(fn).__name__}, not a JITFunction: "
                "unset TRITON_INTERPRET to compile ahead of time"
            )
        constexprs = {k: (_tl_dtype(v) if k == "COMPUTE" else v) for k, v in job.constexprs}
        index = {name: i for i, name in enumerate(fn.arg_names)}
        attrs = {(index[n],): [["tt.divisibility", 16]] for n in job.divisible}
        given = dict(job.signature)
        if set(given) != set(fn.arg_names):
            raise ValueError(f"arguments {sorted(given)} do not match {fn.arg_names}")
        signature = {name: given[name] for name in fn.arg_names}
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        arch = next(a for a in ARCHS if a.capability == job.arch)
        # Triton runs ptxas -v itself; with dump_ptxas_log it prints the log, which is read
        # here instead of running ptxas a second time. always_compile: a cache hit would
        # skip ptxas and print nothing.
        log = io.StringIO()
        with knobs.nvidia.scope(), knobs.compilation.scope(), redirect_stdout(log):
            knobs.nvidia.dump_ptxas_log = True
            knobs.compilation.always_compile = True
            compiled = triton.compile(
                src,
                target=GPUTarget("cuda", job.arch, 32),
                options={"num_warps": job.num_warps, "num_stages": job.num_stages},
            )
        shared = int(compiled.metadata.shared)
        wgmma, mma_sync = matrix_instructions(compiled.asm["ptx"])
        try:
            registers, stores, loads, frame = parse_ptxas(log.getvalue())
        except ValueError:  # a Triton that no longer prints the log: run ptxas here
            ptx = compiled.asm["ptx"]
            registers, stores, loads, frame = _ptxas_resources(ptx, arch.ptxas_arch)
    except Exception as exc:  # reported, and failed, by the test
        error = f"{type(exc).__name__}: {exc}"[:4000]
        return Result(job, False, error=error, seconds=time.perf_counter() - start)
    return Result(
        job,
        True,
        registers=registers,
        spill_stores=stores,
        spill_loads=loads,
        stack_frame=frame,
        shared=shared,
        wgmma=wgmma,
        mma_sync=mma_sync,
        seconds=time.perf_counter() - start,
    )


def _ptxas_resources(ptx: str, gpu_name: str) -> tuple[int, int, int, int]:
    """Run Triton's bundled ptxas -v on the PTX, with the flags Triton itself uses."""
    import triton

    ptxas = triton.knobs.nvidia.ptxas.path
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [ptxas, "-lineinfo", "-v", f"--gpu-name={gpu_name}", src, "-o", src + ".o"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed ({proc.returncode}):\n{proc.stderr}")
    return parse_ptxas(proc.stderr)


def run_jobs(jobs: list[Job], workers: int) -> list[Result]:
    if workers <= 1:
        return [compile_job(j) for j in jobs]
    # Longest first (mix_* kernels take several times as long) so that the pool ends evenly.
    order = sorted(range(len(jobs)), key=lambda i: not jobs[i].kernel.startswith("mix_"))
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        done = pool.map(compile_job, [jobs[i] for i in order])
        results = dict(zip(order, done, strict=True))
    return [results[i] for i in range(len(jobs))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--full", action="store_true", help="the full matrix (slow)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET to compile ahead of time", file=sys.stderr)
        return 2
    start = time.perf_counter()
    jobs = matrix(full=True) if args.full else ci_jobs()
    results = run_jobs(jobs, args.jobs)
    import triton

    # CPU seconds of this process and its workers (and their ptxas runs): on a shared
    # machine the wall time says little about what the compile itself costs.
    cpu = sum(
        u.ru_utime + u.ru_stime
        for u in (resource.getrusage(resource.RUSAGE_SELF),
                  resource.getrusage(resource.RUSAGE_CHILDREN))
    )  # fmt: skip
    report = {
        "triton": triton.__version__,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": cpu,
        "workers": args.jobs,
        "full": args.full,
        "archs": [asdict(a) for a in ARCHS],
        "results": [{**asdict(r), "job": asdict(r.job)} for r in results],
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
