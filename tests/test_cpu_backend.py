"""What only the fused C++ CPU backend ("cpu", csrc/cpu) has; what every backend must do is
in tests/test_backend_contract.py.

* the kernels' blocking: several image groups, channel blocks, wide C, in float64 (within
  1e-10 of the reference) and float32 (at most twice the float32 reference's own error
  against float64, plus 1e-6 of the output's scale);
* the automatic choice, threads (deterministic and thread-count independent; small
  launches on one thread);
* the raw launchers: outputs are poisoned with NaN before the call so an element left
  unwritten shows; bad arguments raise ValueError naming the argument.

Without a built extension the file skips (or fails under SMLP_REQUIRE_EXTENSION=1).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import _helpers
import pytest
import torch

import smlp_kernels
from smlp_kernels import reference as R
from smlp_kernels.cpp_backends import tensor_arg

_C = _helpers.cpu_extension_or_skip()

F32_ABS = 1e-6  # float32: the absolute allowance, as a fraction of the output's largest value


# (B, C, C_out, H, W). The kernels group small images (P < 384 pixels) into one GEMM,
# split output channels into blocks of <= 32 and input channels (weight gradients) into
# blocks of 8 (16 from C = 160, 32 from C = 256): the cases cross those boundaries, each
# with a last, partial block.
CASES = _helpers.cases(
    "B2-C3-Co5-H4-W6 B1-C1-Co1-H1-W1 B2-C7-Co13-H13-W7 B1-C3-Co4-H57-W13"
    " B9-C5-Co3-H7-W7-two-groups B2-C43-Co37-H14-W14-channel-blocks"
    " B1-C170-Co5-H3-W4-C16-blocks B1-C260-Co6-H3-W2-wide-C"
)


make_args = functools.partial(_helpers.make_args, dtype=torch.float64)


def randn(*shape, seed=1, dtype=torch.float64):
    """Seeded normal samples: every test sees the same data on every run."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _forward_backward(args, grad, backend, dtype):
    """Output and the gradients of every tensor argument (None for absent biases)."""
    leaves = [None if t is None else t.detach().to(dtype).requires_grad_() for t in args]
    y = smlp_kernels.smlp_mix(*leaves, backend=backend)
    y.backward(grad.to(dtype))
    return [y.detach(), *(None if t is None else t.grad for t in leaves)]


NAMES = ["y", "x", "row_weight", "row_bias", "col_weight", "col_bias", "fuse_weight"]


def _assert_f64(ours, ref, names):
    for o, r, name in zip(ours, ref, names, strict=True):
        if r is None:
            assert o is None, name
            continue
        assert o.dtype == torch.float64, name
        scale = max(1.0, r.abs().max().item())
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-12 * scale, msg=name)


def _assert_f32(ours, ref32, ref64, names):
    for o, r32, r64, name in zip(ours, ref32, ref64, names, strict=True):
        if r64 is None:
            assert o is None, name
            continue
        assert o.dtype == torch.float32, name
        ours_err = (o.double() - r64).abs().max().item()
        ref_err = (r32.double() - r64).abs().max().item()
        allowed = 2 * ref_err + F32_ABS * r64.abs().max().item()
        assert ours_err <= allowed, f"{name}: error {ours_err:.3g} > {allowed:.3g}"


# ---------------------------------------------------------------------------------------------
# Blocking and the automatic choice, through the public API
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("b, c, c_out, h, w", CASES[3:])
def test_blocking_boundaries(b, c, c_out, h, w, dtype, bias):
    """Forward and all six gradients across the kernels' image groups and channel blocks."""
    args = make_args(b, c, c_out, h, w, bias=bias)
    grad = randn(b, c_out, h, w)
    ours = _forward_backward(args, grad, "cpu", dtype)
    ref64 = _forward_backward(args, grad, "reference", torch.float64)
    if dtype == torch.float64:
        _assert_f64(ours, ref64, NAMES)
    else:
        _assert_f32(ours, _forward_backward(args, grad, "reference", dtype), ref64, NAMES)


def test_automatic_choice_is_cpu_for_every_floating_dtype():
    from smlp_kernels.registry import resolve_backend

    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        x = torch.zeros(1, 2, 3, 4, dtype=dtype)
        assert resolve_backend(None, "mix", x, 2) == "cpu", dtype
    assert resolve_backend(None, "row_mix", torch.zeros(1, 1, 2, 129), 1) == "reference"
    with pytest.raises(ValueError, match="H, W <= 128"):
        smlp_kernels.col_mix(torch.zeros(1, 1, 129, 2), torch.zeros(129, 129), backend="cpu")
    y = smlp_kernels.smlp_mix(*make_args(1, 1, 1, 2, 2, dtype=torch.float16), backend="cpu")
    assert y.dtype == torch.float16


# ---------------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs 2 threads to compare with 1")
def test_deterministic_and_thread_count_independent():
    # Big enough that every launch of the forward and backward runs on 2 threads (launches of
    # little work run on fewer: test_small_launches_run_on_one_thread).
    args = make_args(6, 40, 24, 14, 14, dtype=torch.float32)
    grad = randn(6, 24, 14, 14, dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        with smlp_kernels.deterministic(True):
            first = _forward_backward(args, grad, "cpu", torch.float32)
            assert _C.cpu_last_launch_threads() >= 2
            again = _forward_backward(args, grad, "cpu", torch.float32)
        loose = _forward_backward(args, grad, "cpu", torch.float32)
        torch.set_num_threads(1)
        one_thread = _forward_backward(args, grad, "cpu", torch.float32)
    finally:
        torch.set_num_threads(threads)
    for other in (again, loose, one_thread):
        for a, b, name in zip(first, other, NAMES, strict=True):
            if a is not None:
                assert torch.equal(a, b), name


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs 2 threads to see a choice")
def test_small_launches_run_on_one_thread():
    """A launch of little work runs on the calling thread alone (a parallel region costs more
    than the work, and on a loaded machine far more); a big one on the team."""
    tiny = make_args(2, 2, 2, 3, 4, dtype=torch.float32)
    big = make_args(8, 64, 64, 14, 14, dtype=torch.float32)  # ~44 MFLOP forward
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the big launches could use ~10 threads: cap what they get
    try:
        _check_launch_threads(tiny, big)
    finally:
        torch.set_num_threads(threads)


def _check_launch_threads(tiny, big) -> None:
    for args, expect in ((tiny, 1), (big, 2)):
        x, rw, rb, cw, cb, fw = args
        g = torch.ones(x.shape[0], fw.shape[0], *x.shape[2:])
        calls = {
            "mix_fwd": (torch.ops.smlp.mix_fwd, (x, rw, rb, cw, cb, fw)),
            # its last launch is the weight gradients (the input gradient runs before)
            "mix_bwd": (torch.ops.smlp.mix_bwd, (g, x, rw, rb, cw, cb, fw)),
            "row_mix_fwd": (torch.ops.smlp.row_mix_fwd, (x, rw, rb)),
            "col_mix_bwd": (torch.ops.smlp.col_mix_bwd, (x, x, cw, cb)),
        }
        if expect == 2:
            # the axis mixes of this shape are a few MFLOP: one thread is right for them
            calls = {k: v for k, v in calls.items() if k.startswith("mix")}
        for name, (op, op_args) in calls.items():
            op(*op_args, "cpu")
            assert _C.cpu_last_launch_threads() == expect, (name, tuple(x.shape))


def _cpu_ticks(pid: int) -> int:
    """User + system clock ticks a process has run (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_tiny_call_on_a_loaded_machine_costs_what_the_reference_costs():
    """With every core busy in other processes, a tiny call of the cpu backend costs about
    what the reference's costs (before launches were sized, it waited for a descheduled
    thread at its barriers: 47 ms against 0.3 ms)."""
    import subprocess
    import sys
    import time

    x, rw, rb, cw, cb, fw = make_args(2, 2, 2, 3, 4, dtype=torch.float32)

    def median_s(backend: str) -> float:
        times = []
        for _ in range(100):
            start = time.perf_counter()
            smlp_kernels.smlp_mix(x, rw, rb, cw, cb, fw, backend=backend)
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    # One spinning process per CPU this process may run on.
    n_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n_cpus or 1)
    ]
    try:
        deadline = time.monotonic() + 30
        while not all(_cpu_ticks(p.pid) >= 5 for p in load):  # each has spun ~50 ms
            assert all(p.poll() is None for p in load), "a load process exited"
            assert time.monotonic() < deadline, "the load processes never got to run"
            time.sleep(0.05)
        median_s("cpu"), median_s("reference")  # warm-up
        cpu, ref = median_s("cpu"), median_s("reference")
        assert all(p.poll() is None for p in load), "a load process exited"
    finally:
        for p in load:
            p.kill()
            p.wait()
    # The reference is a few einsums (~0.2 ms); 3x it and a millisecond of slack keep
    # scheduler noise out while a barrier wait (tens of milliseconds) still fails.
    assert cpu <= max(3 * ref, 1e-3), f"cpu {cpu * 1e3:.3f} ms, reference {ref * 1e3:.3f} ms"


# ---------------------------------------------------------------------------------------------
# The raw launchers
# ---------------------------------------------------------------------------------------------


def _poisoned(*shape, dtype=torch.float64):
    return torch.full(shape, float("nan"), dtype=dtype)


def _check_against_reference(out, ref_fn, inputs, name):
    """out (a launcher's output) against ref_fn(*inputs): tight in float64; in float32 within
    the float32 error model (against ref_fn in float64 and in float32)."""
    up = [None if t is None else t.double() for t in inputs]
    ref64 = ref_fn(*up)
    if out.dtype == torch.float64:
        _assert_f64([out], [ref64], [name])
    else:
        _assert_f32([out], [ref_fn(*inputs)], [ref64], [name])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("b, c, c_out, h, w", CASES[:6])
def test_raw_launchers_write_every_element(b, c, c_out, h, w, dtype):
    x, rw, rb, cw, cb, fw = make_args(b, c, c_out, h, w, dtype=dtype)
    f_id, f_row, f_col = fw.split(c, dim=1)
    params = (x, rw, rb, cw, cb, fw)

    # y as a strided view into a NaN tensor: every element of the view written, no other.
    canvas = _poisoned(b, c_out + 1, h, w + 2, dtype=dtype)
    y = canvas[:, 1:, :, 1 : w + 1]
    _C.cpu_mix_fwd(*map(tensor_arg, (x, rw, rb, cw, cb, f_id, f_row, f_col, y)), 0)
    _check_against_reference(y, R.smlp_mix_ref, params, "y")
    outside = torch.ones_like(canvas, dtype=torch.bool)
    outside[:, 1:, :, 1 : w + 1] = False
    assert canvas[outside].isnan().all()
    # A channels_last y: W is not the fastest axis of the output.
    y_cl = _poisoned(b, c_out, h, w, dtype=dtype).contiguous(memory_format=torch.channels_last)
    _C.cpu_mix_fwd(*map(tensor_arg, (x, rw, rb, cw, cb, f_id, f_row, f_col, y_cl)), 0)
    _check_against_reference(y_cl, R.smlp_mix_ref, params, "channels_last y")

    g = randn(b, c_out, h, w, seed=5, dtype=dtype)
    outs = [_poisoned(*s, dtype=dtype) for s in [(c_out, 3 * c), (w, w), (w,), (h, h), (h,)]]
    dx = _poisoned(b, c, h, w, dtype=dtype)
    _C.cpu_mix_wgrad(
        *map(tensor_arg, (g, x, rw, rb, cw, cb, f_id, f_row, f_col, *outs, dx)), False, 0
    )
    _check_against_reference(dx, lambda *a: R.smlp_mix_bwd_ref(*a).x, (g, *params), "dx")
    for out, field in zip(
        outs, ["fuse_weight", "row_weight", "row_bias", "col_weight", "col_bias"], strict=True
    ):
        _check_against_reference(
            out, lambda *a, f=field: getattr(R.smlp_mix_bwd_ref(*a), f), (g, *params), field
        )

    for axis, weight, bias, ref_fn, ref_bwd in (
        (3, rw, rb, R.row_mix_ref, R.row_mix_bwd_ref),
        (2, cw, cb, R.col_mix_ref, R.col_mix_bwd_ref),
    ):
        y = _poisoned(b, c, h, w, dtype=dtype)
        _C.cpu_axis_mix_fwd(*map(tensor_arg, (x, weight, bias, y)), axis, 0)
        _check_against_reference(y, ref_fn, (x, weight, bias), f"axis {axis}: y")
        gx = randn(b, c, h, w, seed=6, dtype=dtype)
        n = weight.shape[0]
        d_weight, d_bias = _poisoned(n, n, dtype=dtype), _poisoned(n, dtype=dtype)
        _C.cpu_axis_mix_wgrad(*map(tensor_arg, (gx, x, d_weight, d_bias)), axis, True, 0)
        for out, field in ((d_weight, "weight"), (d_bias, "bias")):
            _check_against_reference(
                out, lambda *a, f=field, fn=ref_bwd: getattr(fn(*a), f), (gx, x, weight), field
            )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_fuse_weight_gradient_into_a_transposed_view(dtype):
    """The weight-gradient kernel stores d_fuse from its GEMM's last pass, through 8 x 8
    transposes where d_fuse's rows are dense; a transposed, offset view of a NaN canvas
    takes the element-by-element path: every element of the view written, no other. Two
    image groups and full 8-channel panels (B9, C40), a partial output tile (C_out 37)."""
    b, c, c_out, h, w = 9, 40, 37, 7, 7
    x, rw, rb, cw, cb, fw = make_args(b, c, c_out, h, w, dtype=dtype)
    f_id, f_row, f_col = fw.split(c, dim=1)
    g = randn(b, c_out, h, w, seed=7, dtype=dtype)
    canvas = _poisoned(3 * c + 5, c_out + 3, dtype=dtype)
    d_fuse = canvas[2 : 2 + 3 * c, 1 : 1 + c_out].t()  # (C_out, 3C), strides (1, C_out + 3)
    outs = [d_fuse] + [_poisoned(*s, dtype=dtype) for s in [(w, w), (w,), (h, h), (h,)]]
    dx = _poisoned(b, c, h, w, dtype=dtype)
    _C.cpu_mix_wgrad(
        *map(tensor_arg, (g, x, rw, rb, cw, cb, f_id, f_row, f_col, *outs, dx)), False, 0
    )
    _check_against_reference(
        d_fuse,
        lambda *a: R.smlp_mix_bwd_ref(*a).fuse_weight,
        (g, x, rw, rb, cw, cb, fw),
        "fuse_weight",
    )
    outside = torch.ones_like(canvas, dtype=torch.bool)
    outside[2 : 2 + 3 * c, 1 : 1 + c_out] = False
    assert canvas[outside].isnan().all()


def _mix_fwd_args(dtype=torch.float32):
    """(tensors, their launcher tuples): the caller holds the tensors while the tuples' raw
    pointers are in use."""
    x, rw, rb, cw, cb, fw = make_args(2, 3, 4, 5, 6, dtype=dtype)
    tensors = (x, rw, rb, cw, cb, *fw.split(3, dim=1), torch.empty(2, 4, 5, 6, dtype=dtype))
    return tensors, [tensor_arg(t) for t in tensors]


def _with(args, index, value):
    return [value if i == index else a for i, a in enumerate(args)]


def test_raw_launchers_reject_bad_arguments():
    # Every tensor a launcher gets a pointer into is held by a local until the call returns,
    # so a check that failed to reject would read live memory, not freed memory.
    _alive, args = _mix_fwd_args()
    x = args[0]
    bad = [
        (_with(args, 0, (x[0], 7, x[2], x[3])), r"cpu_mix_fwd: x: unknown dtype code 7"),
        (
            _with(args, 0, (x[0], 2, x[2], x[3])),
            r"row_weight: dtype float32, expected float16 \(x, g and every parameter share",
        ),
        (_with(args, 1, (args[1][0], 0, (6, 5), (5, 1))), r"row_weight: expected shape \(W, W\)"),
        (_with(args, 2, (args[2][0], 0, (5,), (1,))), r"row_bias: expected shape \(W,\) = \(6,\)"),
        (_with(args, 3, (args[3][0], 1, (5, 5), (5, 1))), r"col_weight: dtype float64, expected"),
        (_with(args, 6, (args[6][0], 0, (4, 2), (9, 1))), r"f_row: expected shape \(C_out, C\)"),
        (_with(args, 8, (args[8][0], 0, (2, 4, 5, 7), (140, 35, 7, 1))), r"y: expected shape"),
        (_with(args, 8, (args[8][0], 0, (2, 4, 5, 6), (0, 30, 6, 1))), r"y: an output must not"),
        (_with(args, 0, (x[0], 0, (2, 3, 5), (15, 5, 1))), r"x: expected 4 dimensions"),
        (_with(args, 0, (x[0], 0, x[2], (90, 30, -6, 1))), r"x: strides must be >= 0"),
        (_with(args, 0, (0, 0, x[2], x[3])), r"x: null data pointer"),
    ]
    for call_args, message in bad:
        with pytest.raises(ValueError, match=message):
            _C.cpu_mix_fwd(*call_args, 0)

    big = torch.zeros(1, 1, 129, 2)
    axis_fwd = (big, torch.zeros(129, 129), None, torch.empty_like(big))
    with pytest.raises(ValueError, match=r"cpu_axis_mix_fwd: x: H = 129 is out of range 1\.\.128"):
        _C.cpu_axis_mix_fwd(*map(tensor_arg, axis_fwd), 2, 0)
    x4 = torch.zeros(1, 1, 3, 4)
    axis_wgrad = (x4, x4, torch.zeros(4, 4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"cpu_axis_mix_wgrad: axis: must be 3"):
        _C.cpu_axis_mix_wgrad(*map(tensor_arg, axis_wgrad), 1, False, 0)
    axis_wgrad64 = (x4, x4, torch.zeros(4, 4, dtype=torch.float64), torch.zeros(4))
    with pytest.raises(ValueError, match=r"cpu_axis_mix_wgrad: d_weight: dtype float64"):
        _C.cpu_axis_mix_wgrad(*map(tensor_arg, axis_wgrad64), 3, False, 0)
    wgrad_tensors = [
        torch.zeros(1, 2, 3, 4),
        torch.zeros(1, 1, 3, 4),
        torch.zeros(4, 4),
        None,
        torch.zeros(3, 3),
        None,
        *torch.zeros(2, 3).split(1, dim=1),
        torch.zeros(2, 3),
        torch.zeros(4, 4),
        torch.zeros(4),
        torch.zeros(3, 3),
        torch.zeros(3),
        torch.zeros(2, 4),  # a d_fuse of the wrong shape, swapped in below
    ]
    wgrad = [tensor_arg(t) for t in wgrad_tensors[:-1]]
    wgrad[9] = tensor_arg(wgrad_tensors[-1])
    with pytest.raises(ValueError, match=r"cpu_mix_wgrad: d_fuse: expected shape \(C_out, 3C\)"):
        _C.cpu_mix_wgrad(*wgrad, None, False, 0)


# ---------------------------------------------------------------------------------------------
# The fused BatchNorm -> GELU prologue
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, tol",
    [(torch.float32, 4e-7), (torch.float64, 1e-15), (torch.bfloat16, None), (torch.float16, None)],
    ids=["fp32", "fp64", "bf16", "fp16"],
)
def test_prologue_gelu_values(dtype, tol):
    """The launcher's x' = gelu(x * scale + shift), seen through a mix that passes it through
    (F_id = I, no spatial or other terms), against PyTorch's exact GELU in float64 on a dense
    grid of [-12, 12] with per-channel scale and shift: float32 within 4e-7 of max(1, |gelu|)
    (PyTorch's own float32 GELU: 8.8e-7 here), float64 to rounding; 16-bit x' is the float32
    GELU rounded once, so within one unit of the dtype of the exact value."""
    c, h, w = 3, 16, 64
    u = torch.linspace(-12, 12, c * h * w, dtype=torch.float64).reshape(1, c, h, w)
    x = u.to(dtype)
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    scale = torch.tensor([1.0, 0.5, -2.0], dtype=pdt)
    shift = torch.tensor([0.0, 0.25, -0.5], dtype=pdt)
    eye, zero = torch.eye(c, dtype=dtype), torch.zeros(c, c, dtype=dtype)
    rw, cw = torch.zeros(w, w, dtype=dtype), torch.zeros(h, h, dtype=dtype)
    y = _poisoned(1, c, h, w, dtype=dtype)
    args = (x, rw, None, cw, None, eye, zero, zero, y)
    _C.cpu_mix_fwd(*map(tensor_arg, args), 0, scale=tensor_arg(scale), shift=tensor_arg(shift))
    v = x.to(pdt) * scale[:, None, None] + shift[:, None, None]
    want = torch.nn.functional.gelu(v.double())
    if tol is not None:
        err = ((y.double() - want).abs() / want.abs().clamp(min=1)).max().item()
        assert err <= tol, err
    else:
        # The float32 value (within 4e-7 of max(1, |gelu|), as above) rounded once: within
        # one unit of the dtype of the exact value plus that. Not PyTorch's float32 GELU
        # rounded: it loses tiny negative values to cancellation (gelu(-5.9) is -8.6e-9;
        # PyTorch's float32 gives -0.0), ours keeps them.
        fi = torch.finfo(dtype)
        unit = fi.eps * (want.abs() + fi.smallest_normal) + 4e-7 * want.abs().clamp(min=1)
        assert ((y.double() - want).abs() <= unit).all()


def test_prologue_arguments_are_checked():
    _alive, args = _mix_fwd_args()
    x = _alive[0]
    c = x.shape[1]
    scale, shift = torch.ones(c), torch.zeros(c)
    scale64 = torch.ones(c, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"cpu_mix_fwd: shift: the prologue needs both"):
        _C.cpu_mix_fwd(*args, 0, scale=tensor_arg(scale))
    with pytest.raises(ValueError, match=r"cpu_mix_fwd: scale: dtype float64, expected float32"):
        _C.cpu_mix_fwd(*args, 0, scale=tensor_arg(scale64), shift=tensor_arg(shift))
    with pytest.raises(ValueError, match=r"cpu_mix_fwd: shift: expected shape \(C,\)"):
        _C.cpu_mix_fwd(*args, 0, scale=tensor_arg(scale), shift=tensor_arg(torch.zeros(c + 1)))
    from smlp_kernels.registry import get_backend

    assert get_backend("cpu").fused_prologue
