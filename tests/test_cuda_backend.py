"""What only the CUDA kernels (csrc/cuda) have, on a GPU: the raw ``_C.cuda_*`` launchers
(tile shapes up to 128x128, transposed parameter views, the weight-gradient split), CUDA
errors, float32 parameters with bfloat16 x, and the current stream. What every backend must
do is in tests/test_backend_contract.py.

Tolerances, the project's rule: the kernel's max error against the float64 truth may be at most
2x PyTorch's own error in the same dtype (the reference computed in that dtype) plus a small
atol. Every raw-launcher output is poisoned with NaN first, so an element the kernels never
write fails the test, and NaN never passes a comparison.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import _helpers
import pytest
import torch

import smlp_kernels
from smlp_kernels import _extension
from smlp_kernels import reference as R
from smlp_kernels.cpp_backends import tensor_arg as targ  # the launchers' tensor description

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16"),
]

# (B, C, C_out, H, W): 7x7 and H != W shapes take 8x8 tiles, 13..56 16x16 tiles; C and C_out
# not multiples of the channel blocks; 1x1; 128x128 (the largest tile staging).
SHAPES = _helpers.cases(
    "B2-C16-Co16-H7-W7 B1-C5-Co9-H13-W13 B2-C20-Co70-H14-W14 B1-C24-Co40-H56-W56"
    " B3-C3-Co5-H1-W1 B2-C4-Co6-H7-W57 B1-C7-Co3-H57-W13 B1-C16-Co33-H128-W128"
)
LAYOUTS = ["contiguous", "channels_last", "sliced"]


@pytest.fixture(scope="module")
def ext():
    module = _extension.load_extension()
    if module is None:
        pytest.fail(f"a GPU machine must have the extension: {_extension.extension_status()[1]}")
    if not module.build_info()["with_cuda"]:
        pytest.fail("a GPU machine must have the extension built with CUDA")
    return module


def stream() -> int:
    return torch.cuda.current_stream().cuda_stream


def layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as x laid out as ``kind``: _helpers.layout's, or "expanded"."""
    if kind == "expanded":  # batch stride 0
        return x[:1].expand_as(x)
    return _helpers.layout(x, kind)


def make_params(b, c, c_out, h, w, dtype, seed=0, device="cuda"):
    """x and the parameters in float64 (the truth) and rounded to ``dtype``."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device)

    exact = [
        rand(b, c, h, w),
        rand(w, w, scale=w**-0.5),
        rand(w),
        rand(h, h, scale=h**-0.5),
        rand(h),
        rand(c_out, 3 * c, scale=(3 * c) ** -0.5),
    ]
    low = [t.to(dtype) for t in exact]
    # The truth is computed from the rounded values: only the kernels' arithmetic is tested.
    return [t.double() for t in low], low


def nan_like(shape, dtype, fmt=torch.contiguous_format):
    return torch.full(shape, float("nan"), dtype=dtype, device="cuda").contiguous(memory_format=fmt)


def max_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got.double() - want.double()).abs().max().item()


def assert_within(got, truth, baseline, name, atol_scale=1e-3):
    """err(got) <= 2 err(baseline) + atol; NaN fails (comparisons with NaN are False)."""
    assert torch.isfinite(got).all(), f"{name}: NaN or inf in the output"
    err, base = max_err(got, truth), max_err(baseline, truth)
    atol = atol_scale * truth.abs().max().item() + 1e-6
    assert err <= 2 * base + atol, f"{name}: error {err:.3e} > 2 * {base:.3e} + {atol:.3e}"


def atol_scale(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 1e-3


# ---------------------------------------------------------------------------------------------
# Raw launchers
# ---------------------------------------------------------------------------------------------


def launch_mix_fwd(ext, x, rw, rb, cw, cb, fuse, out_fmt=torch.contiguous_format):
    b, c, h, w = x.shape
    f_id, f_row, f_col = fuse.split(c, dim=1)
    y = nan_like((b, fuse.shape[0], h, w), x.dtype, out_fmt)
    ext.cuda_mix_fwd(*map(targ, (x, rw, rb, cw, cb, f_id, f_row, f_col, y)), stream())
    torch.cuda.synchronize()
    return y


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, c, c_out, h, w", SHAPES)
def test_raw_mix_fwd(ext, b, c, c_out, h, w, dtype, kind):
    exact, low = make_params(b, c, c_out, h, w, dtype)
    x = layout(low[0], kind)
    fmt = torch.channels_last if kind == "channels_last" else torch.contiguous_format
    y = launch_mix_fwd(ext, x, *low[1:], out_fmt=fmt)
    truth = R.smlp_mix_ref(*exact)
    assert_within(y, truth, R.smlp_mix_ref(*low), "y", atol_scale(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_raw_mix_fwd_without_biases_and_expanded_x(ext, dtype):
    exact, low = make_params(3, 6, 10, 9, 11, dtype)
    x = layout(low[0], "expanded")
    y = launch_mix_fwd(ext, x, low[1], None, low[3], None, low[5])
    truth = R.smlp_mix_ref(x.double(), exact[1], None, exact[3], None, exact[5])
    base = R.smlp_mix_ref(x, low[1], None, low[3], None, low[5])
    assert_within(y, truth, base, "y", atol_scale(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, c, c_out, h, w", SHAPES[:4] + SHAPES[5:7])
def test_raw_input_gradient_is_forward_with_transposed_views(ext, b, c, c_out, h, w, dtype):
    exact, low = make_params(b, c, c_out, h, w, dtype, seed=1)
    g_exact = torch.randn(b, c_out, h, w, dtype=torch.float64, device="cuda")
    g = g_exact.to(dtype)
    f_id, f_row, f_col = low[5].split(c, dim=1)
    dx = nan_like((b, c, h, w), dtype)
    views = (g, low[1].t(), None, low[3].t(), None, f_id.t(), f_row.t(), f_col.t(), dx)
    ext.cuda_mix_fwd(*map(targ, views), stream())
    torch.cuda.synchronize()
    truth = R.smlp_mix_bwd_ref(g.double(), *exact).x
    base = R.smlp_mix_bwd_ref(g, *low).x
    assert_within(dx, truth, base, "dx", atol_scale(dtype))


def launch_mix_wgrad(ext, g, x, rw, rb, cw, cb, fuse, deterministic):
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    f_id, f_row, f_col = fuse.split(c, dim=1)
    outs = [
        nan_like(fuse.shape, torch.float32),
        nan_like((w, w), torch.float32),
        nan_like((w,), torch.float32),
        nan_like((h, h), torch.float32),
        nan_like((h,), torch.float32),
    ]
    args = (g, x, rw, rb, cw, cb, f_id, f_row, f_col, *outs)
    ext.cuda_mix_wgrad(*map(targ, args), deterministic, stream())
    torch.cuda.synchronize()
    return outs


WGRAD_NAMES = ["fuse_weight", "row_weight", "row_bias", "col_weight", "col_bias"]


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "atomic"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, c, c_out, h, w", SHAPES)
def test_raw_mix_wgrad(ext, b, c, c_out, h, w, dtype, deterministic):
    exact, low = make_params(b, c, c_out, h, w, dtype, seed=2)
    g = torch.randn(b, c_out, h, w, dtype=torch.float64, device="cuda").to(dtype)
    kind = LAYOUTS[(b + c + h) % len(LAYOUTS)]
    x, gl = layout(low[0], kind), layout(g, kind)
    outs = launch_mix_wgrad(ext, gl, x, *low[1:], deterministic)
    truth = R.smlp_mix_bwd_ref(g.double(), *exact)
    base = R.smlp_mix_bwd_ref(g, *low)
    for name, got in zip(WGRAD_NAMES, outs, strict=True):
        assert_within(got, getattr(truth, name), getattr(base, name), name, atol_scale(dtype))


@pytest.mark.parametrize("splits", ["1", "3"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_raw_mix_wgrad_blocks_walk_many_items(ext, dtype, splits, monkeypatch):
    """SMLP_CUDA_MAX_SPLITS caps the split count: each block then sums many (image, tile) items.
    The variable is read by a test build only (SMLP_TEST_HOOKS=1)."""
    if not ext.build_info()["test_hooks"]:
        reason = "a release build ignores SMLP_CUDA_MAX_SPLITS (needs SMLP_TEST_HOOKS=1)"
        if os.environ.get("SMLP_REQUIRE_TEST_HOOKS") == "1":
            pytest.fail(f"SMLP_REQUIRE_TEST_HOOKS=1 but {reason}")
        pytest.skip(reason)
    monkeypatch.setenv("SMLP_CUDA_MAX_SPLITS", splits)
    exact, low = make_params(4, 40, 72, 20, 28, dtype, seed=3)
    g = torch.randn(4, 72, 20, 28, dtype=torch.float64, device="cuda").to(dtype)
    truth = R.smlp_mix_bwd_ref(g.double(), *exact)
    base = R.smlp_mix_bwd_ref(g, *low)
    for deterministic in (True, False):
        outs = launch_mix_wgrad(ext, g, *low, deterministic)
        for name, got in zip(WGRAD_NAMES, outs, strict=True):
            assert_within(got, getattr(truth, name), getattr(base, name), name, atol_scale(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_raw_mix_wgrad_deterministic_is_bitwise_reproducible(ext, dtype):
    _, low = make_params(8, 64, 96, 14, 14, dtype, seed=4)
    g = torch.randn(8, 96, 14, 14, device="cuda").to(dtype)
    first = launch_mix_wgrad(ext, g, *low, True)
    for _ in range(3):
        again = launch_mix_wgrad(ext, g, *low, True)
        for name, a, b in zip(WGRAD_NAMES, first, again, strict=True):
            assert torch.equal(a, b), f"{name} differs between deterministic runs"
    x = low[0]
    gx = torch.randn_like(x)
    for axis in (3, 2):
        ref = launch_axis_wgrad(ext, gx, x, axis, True)
        for _ in range(3):
            again = launch_axis_wgrad(ext, gx, x, axis, True)
            assert all(torch.equal(a, b) for a, b in zip(ref, again, strict=True)), axis


def launch_axis_fwd(ext, x, weight, bias, axis, out_fmt=torch.contiguous_format):
    y = nan_like(x.shape, x.dtype, out_fmt)
    ext.cuda_axis_mix_fwd(targ(x), targ(weight), targ(bias), targ(y), axis, stream())
    torch.cuda.synchronize()
    return y


def launch_axis_wgrad(ext, g, x, axis, deterministic):
    n = x.shape[axis]
    dw, db = nan_like((n, n), torch.float32), nan_like((n,), torch.float32)
    ext.cuda_axis_mix_wgrad(targ(g), targ(x), targ(dw), targ(db), axis, deterministic, stream())
    torch.cuda.synchronize()
    return dw, db


@pytest.mark.parametrize("axis", [3, 2], ids=["row", "col"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, c, c_out, h, w", SHAPES)
def test_raw_axis_mix(ext, b, c, c_out, h, w, dtype, axis):
    kind = LAYOUTS[(b + c + h + axis) % len(LAYOUTS)]
    exact, low = make_params(b, c, c_out, h, w, dtype, seed=5)
    n = w if axis == 3 else h
    wt_exact = torch.randn(n, n, dtype=torch.float64, device="cuda") * n**-0.5
    bias_exact = torch.randn(n, dtype=torch.float64, device="cuda")
    wt, bias = wt_exact.to(dtype), bias_exact.to(dtype)
    ref = R.row_mix_ref if axis == 3 else R.col_mix_ref
    bwd = R.row_mix_bwd_ref if axis == 3 else R.col_mix_bwd_ref
    x = layout(low[0], kind)
    fmt = torch.channels_last if kind == "channels_last" else torch.contiguous_format
    # Forward, and the input gradient: the same launcher with weight^T and no bias.
    y = launch_axis_fwd(ext, x, wt, bias, axis, fmt)
    truth_y = ref(exact[0], wt.double(), bias.double())
    assert_within(y, truth_y, ref(low[0], wt, bias), "y", atol_scale(dtype))
    g = torch.randn(b, c, h, w, dtype=torch.float64, device="cuda").to(dtype)
    dx = launch_axis_fwd(ext, layout(g, kind), wt.t(), None, axis)
    truth, base = bwd(g.double(), exact[0], wt.double()), bwd(g, low[0], wt)
    assert_within(dx, truth.x, base.x, "dx", atol_scale(dtype))
    for deterministic in (True, False):
        dw, db = launch_axis_wgrad(ext, layout(g, kind), x, axis, deterministic)
        assert_within(dw, truth.weight, base.weight, "d_weight", atol_scale(dtype))
        assert_within(db, truth.bias, base.bias, "d_bias", atol_scale(dtype))


def test_raw_launchers_reject_float64(ext):
    def zeros(*shape):
        return torch.zeros(*shape, dtype=torch.float64, device="cuda")

    x, w, h, f = zeros(1, 2, 3, 4), zeros(4, 4), zeros(3, 3), zeros(2, 2)
    with pytest.raises(ValueError, match="float64"):
        ext.cuda_mix_fwd(*map(targ, (x, w, None, h, None, f, f, f, x)), stream())


def test_cuda_error_becomes_runtime_error():
    """A kernel that faults (a bogus output address) leaves a sticky CUDA error: the next
    launcher call raises RuntimeError with the CUDA error string. Run in a subprocess: the
    CUDA context is unusable afterwards."""
    script = textwrap.dedent(
        """
        import torch
        from smlp_kernels import _extension
        ext = _extension.require_extension()
        def targ(t):
            if t is None:
                return None
            return (t.data_ptr(), 0, tuple(t.shape), tuple(t.stride()))
        x = torch.randn(1, 4, 7, 7, device="cuda")
        w, h, f = (torch.randn(7, 7, device="cuda"), torch.randn(7, 7, device="cuda"),
                   torch.randn(4, 4, device="cuda"))
        y = torch.empty(1, 4, 7, 7, device="cuda")
        s = torch.cuda.current_stream().cuda_stream
        bogus = (256, 0, (1, 4, 7, 7), (196, 49, 7, 1))
        ext.cuda_mix_fwd(targ(x), targ(w), None, targ(h), None, targ(f), targ(f), targ(f),
                         bogus, s)
        try:
            torch.cuda.synchronize()
        except RuntimeError:
            pass
        try:
            ext.cuda_mix_fwd(targ(x), targ(w), None, targ(h), None, targ(f), targ(f),
                             targ(f), targ(y), s)
            torch.cuda.synchronize()
        except RuntimeError as exc:
            print("RuntimeError:", exc)
        else:
            print("no error")
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=os.environ
    )
    assert "RuntimeError:" in run.stdout, (run.stdout, run.stderr)
    message = run.stdout.split("RuntimeError:", 1)[1]
    assert "cuda_mix_fwd" in message  # the launcher
    assert "(cudaError" in message  # the CUDA error's name after its string


# ---------------------------------------------------------------------------------------------
# The public API with backend="cuda"
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cuda_backend():
    status = smlp_kernels.backends().get("cuda")
    assert status is not None, "no backend named 'cuda' is registered"
    assert status.available, f"the cuda backend is unavailable on a GPU machine: {status.reason}"


API_NAMES = ["x", "row_weight", "row_bias", "col_weight", "col_bias", "fuse_weight"]


def run_api(args, grad, backend):
    args = [t.detach().requires_grad_() for t in args]
    y = smlp_kernels.smlp_mix(*args, backend=backend)
    y.backward(grad)
    return y.detach(), [t.grad for t in args]


def test_float32_parameters_with_bfloat16_input(cuda_backend):
    exact, _ = make_params(2, 12, 20, 14, 14, torch.float32, seed=7)
    params = [t.float() for t in exact[1:]]
    x = exact[0].bfloat16()
    grad = torch.randn(2, 20, 14, 14, device="cuda")
    y, grads = run_api([x, *params], grad.bfloat16(), "cuda")
    assert y.dtype == torch.bfloat16
    assert [g.dtype for g in grads] == [torch.bfloat16] + [torch.float32] * 5
    y_truth, grads_truth = run_api([x.double(), *[p.double() for p in params]], grad, "reference")
    y_base, grads_base = run_api([x, *params], grad.bfloat16(), "reference")
    assert_within(y, y_truth, y_base, "y")
    for name, got, want, base in zip(API_NAMES, grads, grads_truth, grads_base, strict=True):
        assert_within(got, want, base, name)


def test_launches_follow_the_current_stream(cuda_backend):
    exact, low = make_params(2, 16, 16, 28, 28, torch.float16, seed=10)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = smlp_kernels.smlp_mix(*low, backend="cuda")
    torch.cuda.current_stream().wait_stream(side)
    assert_within(y, R.smlp_mix_ref(*exact), R.smlp_mix_ref(*low), "y")
