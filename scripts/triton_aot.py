#!/usr/bin/env python
"""Compile the triton backend's kernels ahead of time for sm_80 / sm_90, without a GPU,
and report what each compilation uses: registers, spills, shared memory and the
matrix-unit and copy instructions of its PTX.

The compilations are the launchers' own. The backends' primitives (``--backend``: version 1,
``triton``, and version 0, ``triton_v0``; both by default) run on meta tensors
(batch 128), called as the op layer calls them (the input gradients are the forward
primitives on transposed weight views), with every JIT kernel of the family modules
replaced by a recorder and every tile configuration of the autotuner tried; each recorded
launch is specialised as Triton's launcher does (an int equal to 1 becomes a constexpr;
ints and pointers divisible by 16 carry the divisibility hint), then compiled with
``triton.compile`` for ``GPUTarget("cuda", 80 | 90, 32)``. Registers and spills come from
the log of the ``ptxas -v`` run Triton makes itself, shared memory from the metadata.

Usage (lists are comma-separated, and each option may also be repeated):

    python scripts/triton_aot.py --arch 90 --dtype bf16 --shapes T1,T4 --json out.json

writes a JSON list with one record per (kernel, shape, config): kernel, role (fwd: the mix,
forward and input gradient; prepass: version 1's concat pre-pass; wgrad_fuse; wgrad_axis;
axis_mix), shape, config, default
(the config used without tuning), arch, dtype, param_dtype, flags, launches, wgmma,
wgmma_shapes, mma_sync, tma (cp.async.bulk.tensor copies), cp_async (cp.async copies),
wait_group_max (the deepest wgmma.wait_group), regs, spill_bytes, smem, ok, error, seconds, triton.
By default each record compiles the heaviest launch of its (kernel, shape, config): every
optional operand present (biases, F, partial-sum stores); ``--variants all`` records every
distinct launch instead. Shapes are the sMLPNet stage labels of
``smlp_kernels.bench.cases.STAGE_SHAPES`` (C_out = C), or CxHxW (e.g. 96x56x28).

The kernels must be real JIT functions, so the script refuses to run with
``TRITON_INTERPRET=1``. ``tests/test_triton_aot.py`` imports this file and holds the pass
criteria (compiles, shared memory within the per-block limit, no spills, 16-bit compiles
on the matrix units).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import redirect_stdout
from dataclasses import dataclass, field, replace
from typing import Any

BATCH = 128  # a training batch: enters only run-time ints (tile counts, loop bounds)
DTYPES = ("fp32", "fp16", "bf16")
BACKENDS = ("triton", "triton_v0")  # version 1 and version 0 of the fused mix
ROLES = {
    "fuse_gemm_kernel": "fwd",
    "fuse_wgrad_kernel": "wgrad_fuse",
    "concat_kernel": "prepass",
    "pixel_major_kernel": "prepass",
    "line_wgrad_kernel": "wgrad_axis",
    "mix_fwd_kernel": "fwd",
    "mix_wgrad_fuse_kernel": "wgrad_fuse",
    "axis_wgrad_kernel": "wgrad_axis",
    "axis_mix_kernel": "axis_mix",
}
_BASE_ADDRESS = 1 << 20  # allocations are at least 16-byte aligned


@dataclass(frozen=True)
class Arch:
    """A compilation target and the limits its kernels must respect."""

    capability: int
    gpu: str  # the GPU the limits are taken from
    max_shared: int  # bytes of dynamic shared memory one block may opt in to
    num_sms: int  # sizes the weight-gradient splits as on that GPU


ARCHS = {
    80: Arch(80, "A100", 166912, 108),  # 163 KB per block
    90: Arch(90, "H100", 232448, 132),  # 227 KB per block
}


# --------------------------------------------------------------------------------------------
# Recording the launchers' launches
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


@dataclass(frozen=True)
class Job:
    """One compilation. Everything but the labels is an input of triton.compile, so two
    jobs that compare equal compile to the same binary."""

    module: str  # the family module that defines the kernel
    kernel: str
    config: str
    num_warps: int
    num_stages: int
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, Any], ...]  # COMPUTE as its name ("fp16")
    divisible: tuple[str, ...]
    arch: int
    dtype: str = field(default="", compare=False)  # x's dtype
    param_dtype: str = field(default="", compare=False)
    default: bool = field(default=False, compare=False)  # the config used without tuning
    shape: str = field(default="", compare=False)
    launch: str = field(default="", compare=False)  # the primitive call, e.g. "mix input-grad"

    @property
    def flags(self) -> str:
        return " ".join(f"{k}={int(v)}" for k, v in self.constexprs if isinstance(v, bool))

    @property
    def weight(self) -> int:
        """How many optional operands the launch has (biases, F, partial-sum stores)."""
        return sum(1 for _, v in self.constexprs if v is True)


_DTYPE_NAMES = {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32"}


class _Recorder:
    """Stands in for a JIT kernel: ``kernel[grid](*args, **kwargs)`` becomes a Job."""

    def __init__(self, module: str, name: str, arg_names: list[str], state: dict):
        self.module, self.name, self.arg_names, self.state = module, name, arg_names, state

    def __getitem__(self, grid):
        return self._launch

    def _launch(self, *args, **kwargs) -> None:
        signature, constexprs, divisible = [], {}, []
        for name, value in zip(self.arg_names, args, strict=False):
            if hasattr(value, "storage_offset"):  # a tensor
                offset = value.storage_offset() * value.element_size()
                value = Ptr(_DTYPE_NAMES[str(value.dtype)], offset)
            ty, div = specialize(value)
            signature.append((name, ty))
            if ty == "constexpr":
                constexprs[name] = value
            if div:
                divisible.append(name)
        kw = dict(kwargs)
        warps, stages = kw.pop("num_warps"), kw.pop("num_stages")
        if "COMPUTE" in kw:
            kw["COMPUTE"] = str(kw["COMPUTE"])  # a tl.dtype: "fp16", "bf16", "fp32"
        signature += [(name, "constexpr") for name in kw]
        constexprs.update(kw)
        if len(signature) != len(self.arg_names):
            raise TypeError(f"{self.name}: launched with {len(signature)} of "
                            f"{len(self.arg_names)} arguments")  # fmt: skip
        s = self.state
        self.state["jobs"].append(Job(
            self.module, self.name, str(s["config"]), warps, stages,
            tuple(sorted(signature)), tuple(sorted(constexprs.items())), tuple(sorted(divisible)),
            s["arch"], s["dtype"], s["param_dtype"], s["default"], s["shape"], s["launch"],
        ))  # fmt: skip


def family_modules() -> list:
    """The backend's kernel-family modules (every public module of smlp_kernels.triton)."""
    import importlib
    import pkgutil

    import smlp_kernels.triton as pkg

    names = [m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")]
    return [importlib.import_module(f"{pkg.__name__}.{n}") for n in sorted(names)]


@contextlib.contextmanager
def _recording(state: dict, all_configs: bool) -> Iterator[None]:
    """Kernels replaced by recorders, the dtype rules and split counts of a GPU of the
    state's arch, PyTorch's default float32 precision, and every config (or the default)
    launched by the tuner."""
    from unittest import mock

    from smlp_kernels.triton import _common, _tuning

    def every_config(key, configs, device, run, **options):
        for cfg in configs if all_configs else configs[:1]:
            state.update(config=cfg, default=cfg == configs[0])
            run(cfg)
        return configs[0]

    with contextlib.ExitStack() as stack:
        for module in family_modules():
            for name, fn in vars(module).items():
                if name.endswith("_kernel") and hasattr(fn, "arg_names"):
                    rec = _Recorder(module.__name__, name, list(fn.arg_names), state)
                    stack.enter_context(mock.patch.object(module, name, rec))
        num_sms = ARCHS[state["arch"]].num_sms
        stack.enter_context(mock.patch.object(_common, "INTERPRETED", False))
        stack.enter_context(mock.patch.object(_common, "num_sms", lambda device: num_sms))
        stack.enter_context(mock.patch.object(_common, "precision", lambda: "ieee"))
        stack.enter_context(mock.patch.object(_tuning, "pick", every_config))
        yield


def _drive(backend, state: dict, c: int, c_out: int, h: int, w: int, torch_dtype, param_dtype):
    """Every launch the op layer can make for one shape and dtype pair, through the
    backend's primitives: biases present or not, both deterministic modes, both axes."""
    import torch

    def empty(*shape, dtype=param_dtype):
        return torch.empty(shape, dtype=dtype, device="meta")

    x, g = empty(BATCH, c, h, w, dtype=torch_dtype), empty(BATCH, c_out, h, w, dtype=torch_dtype)
    rw, rb, cw, cb = empty(w, w), empty(w), empty(h, h), empty(h)
    f_id, f_row, f_col = empty(c_out, 3 * c).split(c, dim=1)

    def launch(label: str):
        state["launch"] = label
        return backend

    for row_bias in (rb, None):
        for col_bias in (cb, None):
            launch("mix forward").mix(x, rw, row_bias, cw, col_bias, f_id, f_row, f_col)
            if backend.fused_prologue:
                scale, shift = empty(c), empty(c)
                launch("mix_bn_gelu forward").mix_bn_gelu(
                    x, scale, shift, rw, row_bias, cw, col_bias, f_id, f_row, f_col
                )
            for det in (False, True):
                launch(f"mix_wgrad deterministic={det}").mix_wgrad(
                    g, x, rw, row_bias, cw, col_bias, f_id, f_row, f_col, det
                )
    launch("mix input-grad").mix(g, rw.t(), None, cw.t(), None, f_id.t(), f_row.t(), f_col.t())
    g = empty(BATCH, c, h, w, dtype=torch_dtype)
    for axis, weight, bias in ((3, rw, rb), (2, cw, cb)):
        launch(f"axis_mix axis={axis}").axis_mix(x, weight, bias, axis)
        launch(f"axis_mix axis={axis}").axis_mix(x, weight, None, axis)
        launch(f"axis_mix input-grad axis={axis}").axis_mix(g, weight.t(), None, axis)
        for det in (False, True):
            launch(f"axis_wgrad axis={axis} deterministic={det}").axis_wgrad(g, x, axis, det)


def record(shapes: dict[str, tuple[int, int, int, int]], archs: list[int], dtypes: list[str],
           params: str = "same", all_configs: bool = True,
           backends: tuple[str, ...] = BACKENDS) -> list[Job]:  # fmt: skip
    """Every launch the backends make for these shapes ((C, C_out, H, W) by label), archs
    and x dtypes, parameters in x's dtype ("same"), in float32 ("fp32") or both ("both"):
    one Job per distinct (compilation, shape), in launch order."""
    import torch

    from smlp_kernels.triton import TritonBackend, TritonV0Backend

    torch_dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    classes = {"triton": TritonBackend, "triton_v0": TritonV0Backend}
    state: dict = {"jobs": []}
    for arch in archs:
        state["arch"] = arch
        with _recording(state, all_configs):
            for label, (c, c_out, h, w) in shapes.items():
                for dtype in dtypes:
                    p_names = {"same": [dtype], "fp32": ["fp32"], "both": [dtype, "fp32"]}[params]
                    for p_name in dict.fromkeys(p_names):
                        state.update(shape=label, dtype=dtype, param_dtype=p_name)
                        for name in backends:
                            _drive(classes[name](), state, c, c_out, h, w, torch_dtypes[dtype],
                                   torch_dtypes[p_name])  # fmt: skip
    seen: dict[tuple, Job] = {}
    for job in state["jobs"]:
        first = seen.setdefault((job, job.shape), job)
        if job.default and not first.default:  # a config that is some launch's default
            seen[(job, job.shape)] = replace(first, default=True)
    return list(seen.values())


def heaviest(jobs: list[Job]) -> list[Job]:
    """One job per (kernel, shape, config, arch, dtype, param dtype): its heaviest launch,
    the first of equals, in the order of the jobs."""
    out: dict[tuple, Job] = {}
    for job in jobs:
        key = (job.kernel, job.shape, job.config, job.arch, job.dtype, job.param_dtype)
        kept = out.setdefault(key, job)
        if job.weight > kept.weight:
            out[key] = replace(job, default=job.default or kept.default)
        elif job.default and not kept.default:
            out[key] = replace(kept, default=True)
    return list(out.values())


def ci_jobs(jobs: list[Job]) -> list[Job]:
    """The CI subset: every distinct (kernel, config) of the jobs, on each arch, once, on
    its heaviest launch with parameters in x's dtype:

    * in a 16-bit dtype on both archs (the matrix-unit path: mma.sync on sm_80; on sm_90
      wgmma where the tile allows it, else mma.sync), fp16 and bf16 alternating over the
      configs and between the archs, since the two compile alike;
    * in fp32 on sm_80 (IEEE fp32 dots take the FMA path, and fp32 tiles take the most
      shared memory; fp32 shared memory does not depend on the arch, and sm_80's limit is
      the lower one); fp32 on sm_90, whose compiles take longest, is left to the full run,
      except for a config only float32 launches use (version 1 gives float32 its own
      tiles), which is compiled in fp32 on both archs.
    """
    best: dict[tuple, Job] = {}
    for job in sorted(jobs, key=lambda j: -j.weight):
        if job.param_dtype == job.dtype:
            best.setdefault((job.kernel, job.config, job.arch, job.dtype), job)
    configs = sorted({(k[0], k[1]) for k in best})
    out: list[Job] = []
    for arch in sorted({k[2] for k in best}):
        for i, (kernel, config) in enumerate(configs):
            halves = ("fp16", "bf16") if (i + arch // 10) % 2 == 0 else ("bf16", "fp16")
            half = next((best[k] for h in halves if (k := (kernel, config, arch, h)) in best),
                        None)  # fmt: skip
            single = best.get((kernel, config, arch, "fp32"))
            out += [j for j in (half, single if arch == 80 or half is None else None) if j]
    return out


# --------------------------------------------------------------------------------------------
# Compiling
# --------------------------------------------------------------------------------------------

_PTXAS_SPILLS = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_WAIT_GROUP = re.compile(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)")


def parse_ptxas(log: str) -> tuple[int, int, int, int]:
    """(registers, spill store bytes, spill load bytes, stack frame bytes) from ptxas -v."""
    spills = _PTXAS_SPILLS.search(log)
    regs = _PTXAS_REGS.search(log)
    if spills is None or regs is None:
        raise ValueError(f"no register / spill line in the ptxas log:\n{log}")
    frame, stores, loads = (int(g) for g in spills.groups())
    return int(regs.group(1)), stores, loads, frame


_WGMMA_SHAPE = re.compile(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)")


def ptx_counts(ptx: str) -> dict[str, Any]:
    """Instructions of the PTX, each counted once per appearance in the code (not per
    execution): wgmma (``wgmma.mma_async``: Hopper's warpgroup matrix unit, the only one that
    reaches its peak), mma_sync (``mma.sync``: Ampere's, which sm_90 also runs; neither
    appears for IEEE fp32 dots, which take the FMA path), tma (``cp.async.bulk.tensor``
    copies), cp_async (``cp.async`` copies to shared memory, not the bulk ones),
    wait_group_max (the deepest ``wgmma.wait_group`` argument, 0 if none) and wgmma_shapes
    (the distinct wgmma instruction shapes, e.g. "m64n128k16", comma-separated)."""
    out: dict[str, Any] = {"wgmma": 0, "mma_sync": 0, "tma": 0, "cp_async": 0,
                           "wait_group_max": 0}  # fmt: skip
    shapes: set[str] = set()
    for line in ptx.splitlines():
        op = line.lstrip()
        if op.startswith("wgmma.mma_async"):
            out["wgmma"] += 1
            if shape := _WGMMA_SHAPE.match(op):
                shapes.add(shape.group(1))
        elif op.startswith("mma.sync"):
            out["mma_sync"] += 1
        elif op.startswith("cp.async.bulk.tensor"):
            out["tma"] += 1
        elif op.startswith(("cp.async.ca.", "cp.async.cg.")):
            out["cp_async"] += 1
        elif wait := _WAIT_GROUP.match(op):
            out["wait_group_max"] = max(out["wait_group_max"], int(wait.group(1)))
    out["wgmma_shapes"] = ",".join(
        sorted(shapes, key=lambda t: [int(n) for n in re.findall(r"\d+", t)])
    )
    return out


def compile_job(job: Job) -> dict:
    """Compile one job and measure it. Never raises: a failure is a record with ok False
    and the error text."""
    start = time.perf_counter()
    out: dict[str, Any] = {"ok": False, "error": ""}
    try:
        import importlib

        import triton
        import triton.language as tl
        from triton import knobs
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        fn = getattr(importlib.import_module(job.module), job.kernel)
        if not isinstance(fn, triton.runtime.jit.JITFunction):
            raise RuntimeError(f"{job.kernel} is a {type(fn).__name__}, not a JITFunction: "
                               "unset TRITON_INTERPRET to compile ahead of time")  # fmt: skip
        constexprs = {k: (tl.dtype(v) if k == "COMPUTE" else v) for k, v in job.constexprs}
        index = {name: i for i, name in enumerate(fn.arg_names)}
        given = dict(job.signature)
        signature = {name: given[name] for name in fn.arg_names}
        attrs = {(index[n],): [["tt.divisibility", 16]] for n in job.divisible}
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        # Triton runs ptxas -v itself; with dump_ptxas_log it prints the log, read here.
        # always_compile: a cache hit would skip ptxas and print nothing.
        log = io.StringIO()
        with knobs.nvidia.scope(), knobs.compilation.scope(), redirect_stdout(log):
            knobs.nvidia.dump_ptxas_log = True
            knobs.compilation.always_compile = True
            compiled = triton.compile(
                src,
                target=GPUTarget("cuda", job.arch, 32),
                options={"num_warps": job.num_warps, "num_stages": job.num_stages},
            )
        regs, stores, loads, frame = parse_ptxas(log.getvalue())
        out.update(ptx_counts(compiled.asm["ptx"]), ok=True, regs=regs,
                   smem=int(compiled.metadata.shared), spill_bytes=stores + loads,
                   spill_stores=stores, spill_loads=loads, stack_frame=frame)  # fmt: skip
    except Exception as exc:  # reported (and failed by the test), never fatal here
        out["error"] = f"{type(exc).__name__}: {exc}"[:4000]
    out["seconds"] = round(time.perf_counter() - start, 2)
    return out


def compile_jobs(jobs: list[Job], workers: int) -> list[dict]:
    """Each job's JSON record: its labels and what its compilation measured. Identical
    compilations (the same binary under several shapes) run once."""
    import triton

    unique = list(dict.fromkeys(jobs))
    # Longest first (the mix kernels take several times as long) so the pool ends evenly.
    slow = ("mix_fwd_kernel", "mix_wgrad_fuse_kernel", "fuse_gemm_kernel", "fuse_wgrad_kernel")
    unique.sort(key=lambda j: j.kernel not in slow)
    if workers <= 1:
        results = [compile_job(j) for j in unique]
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            results = list(pool.map(compile_job, unique))
    measured = dict(zip(unique, results, strict=True))
    records = []
    for job in jobs:
        records.append({
            "kernel": job.kernel, "role": ROLES.get(job.kernel, job.kernel), "shape": job.shape,
            "config": job.config, "default": job.default, "arch": job.arch, "dtype": job.dtype,
            "param_dtype": job.param_dtype, "flags": job.flags, "launch": job.launch,
            "wgmma": None, "wgmma_shapes": None, "mma_sync": None, "tma": None, "cp_async": None,
            "wait_group_max": None, "regs": None, "spill_bytes": None, "smem": None,
            **measured[job], "triton": triton.__version__,
        })  # fmt: skip
    return records


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _list(choices: tuple[str, ...] | None = None):
    """argparse type of a comma-separated list (each item one of choices, if given)."""

    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        for item in items:
            if choices is not None and item not in choices:
                raise argparse.ArgumentTypeError(f"{item!r} is not one of {', '.join(choices)}")
        return items

    return parse


def parse_shapes(labels: list[str]) -> dict[str, tuple[int, int, int, int]]:
    """(C, C_out, H, W) of each label: a stage of STAGE_SHAPES (C_out = C, H = W) or CxHxW."""
    from smlp_kernels.bench.cases import STAGE_SHAPES

    out = {}
    for label in labels:
        if label in STAGE_SHAPES:
            c, side = STAGE_SHAPES[label]
            out[label] = (c, c, side, side)
        elif m := re.fullmatch(r"(\d+)x(\d+)x(\d+)", label):
            c, h, w = (int(g) for g in m.groups())
            if min(c, h, w) < 1:
                raise ValueError(f"{label!r}: C, H and W must be positive")
            out[label] = (c, c, h, w)
        else:
            known = ", ".join(STAGE_SHAPES)
            raise ValueError(f"{label!r} is neither a stage label ({known}) nor CxHxW")
    return out


def _flat(lists: list[list[str]] | None, default: list[str]) -> list[str]:
    """The items of a repeated LIST option, in order, without repeats."""
    return list(dict.fromkeys(item for items in lists or [default] for item in items))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Compile the triton backend's kernels for sm_80 / sm_90 without a GPU; "
        "one JSON record per (kernel, shape, config).",
        epilog="LIST options take comma-separated values and may be repeated "
        "(--arch 80,90 or --arch 80 --arch 90).",
    )
    parser.add_argument("--arch", type=_list(tuple(map(str, ARCHS))), action="append",
                        metavar="LIST", help="GPU archs: 80 (A100 limits), 90 (H100 limits); "
                        "default both")  # fmt: skip
    parser.add_argument("--dtype", type=_list(DTYPES), action="append", metavar="LIST",
                        help="x dtypes: fp32, fp16, bf16; default all")  # fmt: skip
    parser.add_argument("--shapes", type=_list(), action="append", metavar="LIST",
                        help="stage labels T1..T4, B1..B4 (batch 128, C_out = C) or CxHxW; "
                        "default T1,T2,T3,T4")  # fmt: skip
    parser.add_argument("--backend", type=_list(BACKENDS), action="append", metavar="LIST",
                        help="triton (version 1), triton_v0 (version 0); default both")  # fmt: skip
    parser.add_argument("--json", required=True, metavar="PATH", help="output file")
    parser.add_argument("--params", choices=("same", "fp32", "both"), default="same",
                        help="parameter dtype: x's (default), float32, or both")  # fmt: skip
    parser.add_argument("--default-only", action="store_true",
                        help="only the configs used without tuning "
                        "(default: every config)")  # fmt: skip
    parser.add_argument("--variants", choices=("heaviest", "all"), default="heaviest",
                        help="per (kernel, shape, config): its heaviest launch (default) or "
                        "every distinct launch (flags, strides)")  # fmt: skip
    parser.add_argument("--ci", action="store_true",
                        help="the test's subset: each distinct (kernel, config) once per arch "
                        "(16-bit on both, fp32 on sm_80); needs every dtype")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="compile processes (default: the CPU count)")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"argument --jobs: must be at least 1, got {args.jobs}")
    archs = [int(a) for a in _flat(args.arch, list(map(str, ARCHS)))]
    dtypes = _flat(args.dtype, list(DTYPES))
    try:
        shapes = parse_shapes(_flat(args.shapes, ["T1", "T2", "T3", "T4"]))
    except ValueError as exc:
        parser.error(f"argument --shapes: {exc}")
    if args.ci and set(dtypes) != set(DTYPES):
        parser.error("argument --ci: needs every dtype (fp32, fp16, bf16)")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("triton_aot: TRITON_INTERPRET is set: the Triton interpreter replaces the JIT "
              "kernels, which cannot be compiled; unset it to compile ahead of time",
              file=sys.stderr)  # fmt: skip
        return 2
    backends = tuple(_flat(args.backend, list(BACKENDS)))
    jobs = record(shapes, archs, dtypes, args.params, all_configs=not args.default_only,
                  backends=backends)  # fmt: skip
    if args.ci:
        jobs = ci_jobs(jobs)
    elif args.variants == "heaviest":
        jobs = heaviest(jobs)
    records = compile_jobs(jobs, args.jobs)
    with open(args.json, "w") as f:
        json.dump(records, f, indent=1)
    failed = sum(not r["ok"] for r in records)
    print(f"{len(records)} records ({failed} failed compiles) in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
