"""The backend contract, tested the same way for every backend that can run here.

Every backend (``reference``, ``cpu``, ``triton`` on its interpreter on a CPU machine;
``triton`` and ``cuda`` on CUDA tensors on a GPU machine) implements the four primitives of
:class:`smlp_kernels.registry.Backend` (and may override the fifth, ``mix_bn_gelu``, the mix
with the BN -> GELU prologue) and declares its dtypes and largest side as data. The op layer
composes the backward from those primitives, so each test here goes through the public ops
(``smlp_mix``, ``row_mix``, ``col_mix``, ``bn_gelu_smlp_mix``) with ``backend=`` set, except
the poison test, which calls the primitives directly. What every backend must do:

* the forward and every gradient (x, both weights, both biases, the fuse weight) in every
  dtype it declares, with and without biases, against the float64 reference;
* any layout: channels_last (kept in the output), sliced and transposed views, zero strides
  in x and in the upstream gradient, strided parameters;
* write every element of every output (outputs are poisoned with NaN before the call);
* propagate NaN from x to exactly the outputs the reference makes NaN;
* bitwise-reproducible gradients under ``smlp_kernels.deterministic()`` (float32);
* an empty batch: empty outputs, zero parameter gradients (the op layer answers it without
  calling the backend, so this checks that no backend-specific path is taken);
* refuse what it cannot do (a dtype it does not declare, a side beyond ``max_side``) with a
  ValueError naming the dtype or the size, and run the largest side it declares;
* the same for ``bn_gelu_smlp_mix`` (the tests at the end): forward and the gradients of x,
  scale, shift and every weight in every dtype, 16-bit x with float32 scale, shift and
  weights, channels_last and sliced x, NaN from x or scale, an empty batch, gradcheck.

Tolerance: the backend's error against the float64 reference is at most twice PyTorch's own
error in the same dtype (the reference run in that dtype), plus an allowance (``atol``)
times the output's largest value. What only one backend has
(its raw launchers, tiling boundaries, threads, streams, tuning) is tested in its own file.
"""

from __future__ import annotations

import contextlib

import _helpers
import pytest
import torch

import smlp_kernels
from smlp_kernels import reference as R
from smlp_kernels import registry
from smlp_kernels._validation import SUPPORTED_DTYPES, dtype_name

BACKENDS = _helpers.backend_params()

# Allowance on top of 2x PyTorch's own error, as a fraction of the largest true value: in
# 16-bit half a unit of roundoff (eps / 2), the cost of rounding a result once more than
# PyTorch does (on a tiny case PyTorch's own error can be near zero by luck); in float32 and
# float64 sums taken in another order; on a GPU, float32 weight gradients are sums over
# every pixel split across blocks, hence the wider float32 allowance there.
_ATOL = {torch.float64: 1e-12, torch.float32: 1e-6}


def atol(dtype: torch.dtype, device: str) -> float:
    if dtype in (torch.float16, torch.bfloat16):
        return torch.finfo(dtype).eps / 2
    return 1e-5 if (dtype == torch.float32 and device == "cuda") else _ATOL[dtype]


MIX_NAMES = ("y", "x", "row_weight", "row_bias", "col_weight", "col_bias", "fuse_weight")
AXIS_NAMES = ("y", "x", "weight", "bias")


def backend_dtype_params() -> list:
    """(backend, device, dtype) for every dtype each backend here declares."""
    out = []
    for name, device in _helpers.backend_devices():
        for dtype in registry.get_backend(name).dtypes:
            dt = dtype_name(dtype)
            out.append(pytest.param(name, device, dtype, id=f"{name}-{device}-{dt}"))
    return out


def randn(*shape, seed: int = 1, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device)


def run(op, args, grad, backend: str, dtype: torch.dtype | None = None):
    """[y, grad of each tensor argument (None where the argument is None)], with the
    arguments cast to ``dtype`` (when given) and made leaves."""
    leaves = [
        None if t is None else (t if dtype is None else t.to(dtype)).detach().requires_grad_()
        for t in args
    ]
    y = op(*leaves, backend=backend)
    y.backward(grad.to(y.dtype) if grad.dtype != y.dtype else grad)
    return [y.detach(), *(None if t is None else t.grad for t in leaves)]


def max_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got.double() - want.double()).abs().max().item() if got.numel() else 0.0


def assert_within(ours, base, truth, names, dtype, floor=None) -> None:
    """ours (the backend in ``dtype``) against truth (float64): at most 2x base's error (the
    reference in ``dtype``) plus atol(dtype) of the largest true value. NaN never passes.

    floor (16-bit only): the exact result of the inputs rounded to ``dtype``, rounded once
    to ``dtype``, the least error any kernel that takes and returns ``dtype`` can have. On a
    case of a few elements PyTorch's own rounding can cancel the inputs' rounding by luck
    (seen: a 1x1 float16 gradient exact to the last bit, where the correctly rounded result
    of the rounded inputs is one unit off), so the base error is at least the floor's."""
    floor = floor if floor is not None else [None] * len(ours)
    for o, b, t, f, name in zip(ours, base, truth, floor, names, strict=True):
        if t is None:
            assert o is None, f"{name}: an absent argument has no gradient"
            continue
        assert o.shape == t.shape, name
        assert not torch.isnan(o).any(), f"{name}: NaN"
        scale = t.abs().max().item() if t.numel() else 0.0
        base_err = max_err(b, t) if f is None else max(max_err(b, t), max_err(f, t))
        allowed = 2 * base_err + atol(dtype, o.device.type) * max(scale, 1e-30)
        err = max_err(o, t)
        assert err <= allowed, f"{name}: error {err:.3g} > allowed {allowed:.3g}"


def check_mix(backend, args, grad, dtype, names=MIX_NAMES, op=smlp_kernels.smlp_mix):
    """The backend through ``op`` in ``dtype`` against the float64 reference; returns its
    outputs [y, grads...]."""
    ours = run(op, args, grad, backend, dtype)
    assert ours[0].dtype == dtype
    for t, g, name in zip(args, ours[1:], names[1:], strict=True):
        assert g is None or g.dtype == dtype, f"{name}: gradient in {g.dtype}, not {dtype}"
        assert t is None or g is not None, f"{name}: no gradient"
    truth = run(op, [None if t is None else t.double() for t in args], grad, "reference")
    base = run(op, args, grad, "reference", dtype)
    floor = None
    if dtype in (torch.float16, torch.bfloat16):
        rounded = [None if t is None else t.to(dtype).double() for t in args]
        exact = run(op, rounded, grad.to(dtype).double(), "reference")
        floor = [None if e is None else e.to(dtype) for e in exact]
    assert_within(ours, base, truth, names, dtype, floor)
    return ours


# (B, C, C_out, H, W): odd sizes, H != W, single pixels, one channel; kept small for the
# Triton interpreter.
MIX_CASES = _helpers.cases("B2-C3-Co5-H4-W6 B1-C1-Co1-H1-W1 B2-C7-Co13-H13-W7 B1-C4-Co3-H1-W9")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("b, c, c_out, h, w", MIX_CASES)
@pytest.mark.parametrize("backend, device, dtype", backend_dtype_params())
def test_mix_forward_and_every_gradient(backend, device, dtype, b, c, c_out, h, w, bias):
    args = _helpers.make_args(b, c, c_out, h, w, dtype=torch.float64, device=device, bias=bias)
    check_mix(backend, args, randn(b, c_out, h, w, device=device), dtype)


AXIS_CASES = [
    pytest.param(2, 3, 13, 7, id="B2-C3-H13-W7"),
    pytest.param(1, 2, 128, 7, id="B1-C2-H128-W7"),
    pytest.param(2, 9, 13, 57, id="B2-C9-H13-W57"),
]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("op", ["row_mix", "col_mix"])
@pytest.mark.parametrize("b, c, h, w", AXIS_CASES)
@pytest.mark.parametrize("backend, device, dtype", backend_dtype_params())
def test_axis_mix_forward_and_every_gradient(backend, device, dtype, b, c, h, w, op, bias):
    n = w if op == "row_mix" else h
    args = [
        randn(b, c, h, w, seed=2, device=device),
        randn(n, n, seed=3, device=device) * n**-0.5,
        randn(n, seed=4, device=device) if bias else None,
    ]
    grad = randn(b, c, h, w, seed=5, device=device)
    check_mix(backend, args, grad, dtype, AXIS_NAMES, getattr(smlp_kernels, op))


def _first_dtype(backend: str) -> torch.dtype:
    """float32 where the backend takes it (every backend does today), else its first dtype."""
    dtypes = registry.get_backend(backend).dtypes
    return torch.float32 if torch.float32 in dtypes else dtypes[0]


def _layouts(device: str, dtype: torch.dtype):
    """(id, args, grad) with x, the parameters or the upstream gradient in awkward layouts,
    built in ``dtype`` (a cast would make views contiguous)."""
    b, c, c_out, h, w = 3, 5, 6, 9, 7
    base = _helpers.make_args(b, c, c_out, h, w, dtype=dtype, device=device)
    x, rw, rb, cw, cb, fw = base
    grad = randn(b, c_out, h, w, device=device).to(dtype)
    cl = torch.channels_last
    x_cl, grad_cl = x.contiguous(memory_format=cl), grad.contiguous(memory_format=cl)
    yield "channels_last", [x_cl, *base[1:]], grad_cl
    yield "sliced", [_helpers.layout(x, "sliced"), *base[1:]], grad
    yield "transposed", [x.transpose(2, 3).contiguous().transpose(2, 3), *base[1:]], grad
    yield "expanded-x", [x[:1, :, :1, :].expand(b, c, h, w), *base[1:]], grad
    ones = torch.ones(1, 1, 1, 1, dtype=dtype, device=device)
    yield "zero-stride-grad", base, ones.expand(b, c_out, h, w)
    strided = [
        x,
        rw.t().contiguous().t(),
        torch.stack([rb, rb], 1)[:, 1],
        cw.t().contiguous().t(),
        torch.stack([cb, cb], 1)[:, 0],
        fw.t().contiguous().t(),  # column-major fuse weight: transposed F blocks
    ]
    yield "strided-params", strided, grad


LAYOUT_KINDS = [k for k, _, _ in _layouts("cpu", torch.float32)]


def backend_wide_dtype_params() -> list:
    """(backend, device, dtype) for float32 and float64, where each backend declares them."""
    return [p for p in backend_dtype_params() if p.values[2] in (torch.float32, torch.float64)]


@pytest.mark.parametrize("kind", LAYOUT_KINDS)
@pytest.mark.parametrize("backend, device, dtype", backend_wide_dtype_params())
def test_layouts(backend, device, dtype, kind):
    args, grad = next((a, g) for k, a, g in _layouts(device, dtype) if k == kind)
    assert not all(t.is_contiguous() for t in [*args, grad]), kind
    ours = check_mix(backend, args, grad, dtype)
    if kind == "channels_last":
        assert ours[0].is_contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def _poisoned_allocations():
    """torch.empty / empty_like / empty_strided return NaN-filled floating tensors."""
    originals = {name: getattr(torch, name) for name in ("empty", "empty_like", "empty_strided")}

    def wrap(fn):
        def poisoned(*a, **kw):
            t = fn(*a, **kw)
            if t.is_floating_point():
                t.fill_(float("nan"))
            return t

        return poisoned

    try:
        for name, fn in originals.items():
            setattr(torch, name, wrap(fn))
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch, name, fn)


def _call_primitives(
    be, g, x, scale, shift, rw, rb, cw, cb, blocks
) -> dict[str, list[torch.Tensor]]:
    """Every primitive once (the input gradient as the forward with transposed weights)."""
    c = x.shape[1]
    return {
        "mix": [be.mix(x, rw, rb, cw, cb, *blocks)],
        "mix_bn_gelu": [be.mix_bn_gelu(x, scale, shift, rw, rb, cw, cb, *blocks)],
        "input_grad": [be.mix(g, rw.t(), None, cw.t(), None, *(f.t() for f in blocks))],
        "mix_wgrad": list(be.mix_wgrad(g, x, rw, rb, cw, cb, *blocks, False)),
        "axis_mix": [be.axis_mix(x, cw, cb, 2)],
        "axis_wgrad": list(be.axis_wgrad(g[:, :c], x, 3, False)),
    }


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_primitives_write_every_output_element(backend, device):
    """The primitives (mix_bn_gelu included), with every allocation NaN-poisoned: an element
    a kernel forgets stays NaN. Each result is also checked against the reference."""
    be = registry.get_backend(backend)
    dtype = _first_dtype(backend)
    args64 = prologue_args(2, 5, 7, 13, 7, device=device)
    x, scale, shift, rw, rb, cw, cb, fw = (t.to(dtype) for t in args64)
    blocks = fw.split(5, dim=1)
    g = randn(2, 7, 13, 7, device=device).to(dtype)
    with _poisoned_allocations():
        assert torch.empty(2, device=device).isnan().all()
        outs = _call_primitives(be, g, x, scale, shift, rw, rb, cw, cb, blocks)
    up = [t.double() for t in (g, x, scale, shift, rw, rb, cw, cb)]
    want = _call_primitives(R.ReferenceBackend(), *up, [f.double() for f in blocks])
    tol = 1e-10 if dtype == torch.float64 else 1e-4  # a check of values, not of rounding
    for prim, got in outs.items():
        for i, (o, w) in enumerate(zip(got, want[prim], strict=True)):
            assert not torch.isnan(o).any(), f"{prim}[{i}]: elements left unwritten"
            assert o.shape == w.shape, f"{prim}[{i}]"
            scale = max(w.abs().max().item(), 1.0)
            assert max_err(o, w) <= tol * scale, f"{prim}[{i}]"


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_nan_in_x_reaches_exactly_the_outputs_the_reference_makes_nan(backend, device):
    dtype = _first_dtype(backend)
    args = _helpers.make_args(2, 3, 4, 6, 5, dtype=torch.float64, device=device)
    args[0][1, 2, 3, 1] = float("nan")
    grad = randn(2, 4, 6, 5, device=device)
    ours = run(smlp_kernels.smlp_mix, args, grad, backend, dtype)
    ref = run(smlp_kernels.smlp_mix, args, grad, "reference", dtype)
    for o, r, name in zip(ours, ref, MIX_NAMES, strict=True):
        # dx and the bias gradients do not depend on x; y and the weight gradients do.
        independent = name in ("x", "row_bias", "col_bias")
        assert r.isnan().any() != independent, f"{name}: the test is broken"
        assert torch.equal(o.isnan(), r.isnan()), name
    # Image 0 never sees the NaN; in image 1 its row 3 and column 1 do.
    assert not ours[0][0].isnan().any()
    assert ours[0][1, :, 3, :].isnan().all() and ours[0][1, :, :, 1].isnan().all()


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_deterministic_mode_is_bitwise_reproducible(backend, device):
    """Under smlp_kernels.deterministic() two backward passes give identical bits; and the
    deterministic weight gradients agree with the default (possibly atomic) ones."""
    dtype = _first_dtype(backend)
    args = _helpers.make_args(3, 8, 12, 13, 7, dtype=torch.float64, device=device)
    grad = randn(3, 12, 13, 7, device=device)
    axis_args = [args[0], args[1], args[2]]
    axis_grad = randn(3, 8, 13, 7, seed=6, device=device)

    def both():
        return [
            *run(smlp_kernels.smlp_mix, args, grad, backend, dtype),
            *run(smlp_kernels.row_mix, axis_args, axis_grad, backend, dtype),
        ]

    with smlp_kernels.deterministic():
        assert smlp_kernels.is_deterministic()
        first, second = both(), both()
    default = both()
    for i, (a, b, c) in enumerate(zip(first, second, default, strict=True)):
        assert torch.equal(a, b), f"output {i} differs between deterministic runs"
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5, msg=f"output {i}")


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_empty_batch(backend, device):
    dtype = _first_dtype(backend)
    args = _helpers.make_args(1, 3, 4, 5, 6, dtype=dtype, device=device)
    args[0] = args[0][:0]
    grad = torch.ones(0, 4, 5, 6, dtype=dtype, device=device)
    y, dx, *grads = run(smlp_kernels.smlp_mix, args, grad, backend)
    assert y.shape == (0, 4, 5, 6) and dx.shape == args[0].shape
    for g, name in zip(grads, MIX_NAMES[2:], strict=True):
        assert g.shape == args[MIX_NAMES.index(name) - 1].shape, name
        assert torch.count_nonzero(g) == 0, name
    z, dzx, dw, db = run(smlp_kernels.col_mix, [args[0], args[3], args[4]], args[0], backend)
    assert z.shape == dzx.shape == args[0].shape and torch.count_nonzero(dw) == 0
    assert torch.count_nonzero(db) == 0


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_refuses_dtypes_it_does_not_declare(backend, device):
    be = registry.get_backend(backend)
    refused = [d for d in SUPPORTED_DTYPES if d not in be.dtypes]
    if not refused:
        pytest.skip(f"{backend} declares every floating dtype")
    for dtype in refused:
        args = _helpers.make_args(1, 2, 2, 3, 3, dtype=dtype, device=device)
        name = dtype_name(dtype)
        with pytest.raises(ValueError, match=rf"'{backend}' cannot run mix.*not {name}"):
            smlp_kernels.smlp_mix(*args, backend=backend)
        with pytest.raises(ValueError, match=rf"'{backend}' cannot run row_mix.*not {name}"):
            smlp_kernels.row_mix(args[0], args[1], backend=backend)
        ones = torch.ones(2, dtype=dtype, device=device)
        with pytest.raises(ValueError, match=rf"'{backend}' cannot run mix.*not {name}"):
            smlp_kernels.bn_gelu_smlp_mix(args[0], ones, ones, *args[1:], backend=backend)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_largest_side_runs_and_one_more_is_refused(backend, device):
    n = registry.get_backend(backend).max_side
    if n is None:
        pytest.skip(f"{backend} has no largest side")
    dtype = _first_dtype(backend)
    for h, w in ((n, 3), (3, n)):
        args = _helpers.make_args(1, 2, 3, h, w, dtype=torch.float64, device=device)
        check_mix(backend, args, randn(1, 3, h, w, device=device), dtype)
    # The prologue at the largest side, once (H = n: columns of n tokens).
    args = prologue_args(1, 2, 3, n, 3, device=device)
    check_mix(backend, args, randn(1, 3, n, 3, device=device), dtype, *_PROLOGUE_OP)
    for h, w, word in ((n + 1, 3, "H"), (3, n + 1, "W")):
        args = _helpers.make_args(1, 2, 2, h, w, dtype=dtype, device=device)
        with pytest.raises(ValueError, match=rf"'{backend}' cannot run mix.*{word} = {n + 1}"):
            smlp_kernels.smlp_mix(*args, backend=backend)
        ones = torch.ones(2, dtype=dtype, device=device)
        with pytest.raises(ValueError, match=rf"'{backend}' cannot run mix.*{word} = {n + 1}"):
            smlp_kernels.bn_gelu_smlp_mix(args[0], ones, ones, *args[1:], backend=backend)
    x = torch.zeros(1, 1, 3, n + 1, dtype=dtype, device=device)
    weight = torch.zeros(n + 1, n + 1, dtype=dtype, device=device)
    with pytest.raises(ValueError, match=rf"'{backend}' cannot run row_mix.*W = {n + 1}"):
        smlp_kernels.row_mix(x, weight, backend=backend)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_gradcheck_in_float64(backend, device):
    if torch.float64 not in registry.get_backend(backend).dtypes or device != "cpu":
        pytest.skip(f"{backend} does not compute in float64 here")
    args = [
        t.requires_grad_()
        for t in _helpers.make_args(2, 2, 3, 3, 4, dtype=torch.float64, device=device)
    ]
    assert torch.autograd.gradcheck(
        lambda *a: smlp_kernels.smlp_mix(*a, backend=backend), args, eps=1e-6, atol=1e-8
    )
    for op, n in (("row_mix", 4), ("col_mix", 3)):
        axis = [randn(2, 2, 3, 4, seed=2), randn(n, n, seed=3), randn(n, seed=4)]
        fn = getattr(smlp_kernels, op)
        axis = [t.requires_grad_() for t in axis]
        assert torch.autograd.gradcheck(lambda *a, fn=fn: fn(*a, backend=backend), axis)


# --------------------------------------------------------------------------------------------
# bn_gelu_smlp_mix: the mix of gelu(x * scale + shift) (Backend.mix_bn_gelu; its backward is
# the op layer's, from the backend's mix and mix_wgrad)
# --------------------------------------------------------------------------------------------

PROLOGUE_NAMES = ("y", "x", "scale", "shift", *MIX_NAMES[2:])
_PROLOGUE_OP = (PROLOGUE_NAMES, smlp_kernels.bn_gelu_smlp_mix)


def prologue_args(b, c, c_out, h, w, *, device, bias=True, dtype=torch.float64) -> list:
    """[x, scale, shift, row_weight, row_bias, col_weight, col_bias, fuse_weight]: scale
    around 1 (some near 0 or negative, as trained BNs have), shift O(1), so that
    u = x * scale + shift covers GELU's curved part around 0 and its tails."""
    x, *params = _helpers.make_args(b, c, c_out, h, w, dtype=torch.float64, device=device,
                                    bias=bias)  # fmt: skip
    scale = 1 + 0.5 * randn(c, seed=11, device=device)
    shift = 0.7 * randn(c, seed=12, device=device)
    args = [x, scale, shift, *params]
    return [None if t is None else t.to(dtype) for t in args]


# MIX_CASES with biases, and one of them without.
PROLOGUE_CASES = [pytest.param(*p.values, True, id=p.id) for p in MIX_CASES] + [
    pytest.param(*p.values, False, id=f"{p.id}-nobias") for p in MIX_CASES if p.values[1] == 7
]


@pytest.mark.parametrize("b, c, c_out, h, w, bias", PROLOGUE_CASES)
@pytest.mark.parametrize("backend, device, dtype", backend_dtype_params())
def test_prologue_forward_and_every_gradient(backend, device, dtype, b, c, c_out, h, w, bias):
    args = prologue_args(b, c, c_out, h, w, device=device, bias=bias)
    check_mix(backend, args, randn(b, c_out, h, w, device=device), dtype, *_PROLOGUE_OP)


def backend_low_precision_params() -> list:
    """(backend, device, dtype) for float16 and bfloat16, where each backend declares them."""
    return [p for p in backend_dtype_params() if p.values[2] in (torch.float16, torch.bfloat16)]


@pytest.mark.parametrize("backend, device, dtype", backend_low_precision_params())
def test_prologue_low_precision_x_with_float32_scale_shift_and_weights(backend, device, dtype):
    """What SparseMLP passes in eval mode under mixed precision: a 16-bit x, float32 scale and
    shift (and float32 master weights). Output and dx in x's dtype, the rest in float32."""
    args64 = prologue_args(2, 6, 5, 7, 9, device=device)
    args = [args64[0].to(dtype), *(t.float() for t in args64[1:])]
    grad = randn(2, 5, 7, 9, device=device)
    ours = run(smlp_kernels.bn_gelu_smlp_mix, args, grad, backend)
    assert ours[0].dtype == ours[1].dtype == dtype
    assert all(g.dtype == torch.float32 for g in ours[2:])
    base = run(smlp_kernels.bn_gelu_smlp_mix, args, grad, "reference")
    truth = run(smlp_kernels.bn_gelu_smlp_mix, args64, grad, "reference")
    assert_within(ours, base, truth, PROLOGUE_NAMES, dtype)


@pytest.mark.parametrize("kind", ["channels_last", "sliced"])
@pytest.mark.parametrize("backend, device, dtype", backend_wide_dtype_params())
def test_prologue_layouts(backend, device, dtype, kind):
    """channels_last x (kept in the output), or a sliced x with strided scale and shift (built
    in ``dtype``: a cast would make the views contiguous)."""
    x, scale, shift, *params = prologue_args(3, 5, 6, 9, 7, device=device, dtype=dtype)
    if kind == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    else:
        x = _helpers.layout(x, "sliced")
        pair = torch.stack([scale, shift], 1)  # (C, 2): each column a strided view
        scale, shift = pair[:, 0], pair[:, 1]
    args = [x, scale, shift, *params]
    assert not all(t.is_contiguous() for t in args[:3]), kind
    grad = randn(3, 6, 9, 7, device=device).to(dtype)
    ours = check_mix(backend, args, grad, dtype, *_PROLOGUE_OP)
    if kind == "channels_last":
        assert ours[0].is_contiguous(memory_format=torch.channels_last)
        assert ours[1].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("where", ["x", "scale"])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_prologue_nan_reaches_exactly_the_outputs_the_reference_makes_nan(backend, device, where):
    """NaN in x reaches y through the prologue as in smlp_mix, dx at that element only, and
    the scale and shift gradients of its channel only; NaN in scale[c] makes all of y NaN."""
    dtype = _first_dtype(backend)
    args = prologue_args(2, 3, 4, 6, 5, device=device)
    if where == "x":
        args[0][1, 2, 3, 1] = float("nan")
    else:
        args[1][0] = float("nan")
    grad = randn(2, 4, 6, 5, device=device)
    ours = run(smlp_kernels.bn_gelu_smlp_mix, args, grad, backend, dtype)
    ref = run(smlp_kernels.bn_gelu_smlp_mix, args, grad, "reference", dtype)
    for o, r, name in zip(ours, ref, PROLOGUE_NAMES, strict=True):
        independent = name in ("row_bias", "col_bias")  # their gradients never see x'
        assert r.isnan().any() != independent, f"{name}: the test is broken"
        assert torch.equal(o.isnan(), r.isnan()), name
    y, dx, d_scale, d_shift = ours[:4]
    if where == "x":
        assert not y[0].isnan().any()
        assert y[1, :, 3, :].isnan().all() and y[1, :, :, 1].isnan().all()
        assert dx.isnan().sum() == 1 and dx[1, 2, 3, 1].isnan()
        for d in (d_scale, d_shift):
            assert d.isnan().tolist() == [False, False, True]
    else:
        assert y.isnan().all()
        assert dx[:, 0].isnan().all() and not dx[:, 1:].isnan().any()
        assert d_scale.isnan().tolist() == d_shift.isnan().tolist() == [True, False, False]


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_prologue_empty_batch(backend, device):
    dtype = _first_dtype(backend)
    args = prologue_args(1, 3, 4, 5, 6, device=device, dtype=dtype)
    args[0] = args[0][:0]
    grad = torch.ones(0, 4, 5, 6, dtype=dtype, device=device)
    y, dx, *grads = run(smlp_kernels.bn_gelu_smlp_mix, args, grad, backend)
    assert y.shape == (0, 4, 5, 6) and dx.shape == args[0].shape
    for g, t, name in zip(grads, args[1:], PROLOGUE_NAMES[2:], strict=True):
        assert g.shape == t.shape and g.dtype == t.dtype, name
        assert torch.count_nonzero(g) == 0, name


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_prologue_gradcheck_in_float64(backend, device):
    if torch.float64 not in registry.get_backend(backend).dtypes or device != "cpu":
        pytest.skip(f"{backend} does not compute in float64 here")
    args = [t.requires_grad_() for t in prologue_args(2, 2, 3, 3, 4, device=device)]
    assert torch.autograd.gradcheck(
        lambda *a: smlp_kernels.bn_gelu_smlp_mix(*a, backend=backend), args, eps=1e-6, atol=1e-8
    )
