"""The op layer: public API against the reference, autograd, validation and backend choice.
(The custom ops under PyTorch's tooling: test_compile_export.py, test_flops.py,
test_memory.py, test_autocast.py.)"""

from __future__ import annotations

import functools

import _helpers
import pytest
import torch
from _helpers import detached, layout

import smlp_kernels
from smlp_kernels import reference as R
from smlp_kernels import registry as B
from smlp_kernels.reference import AxisMixGrads

# (B, C, C_out, H, W)
SHAPES = _helpers.cases("B2-C3-Co3-H5-W7 B1-C1-Co1-H1-W1 B3-C4-Co6-H13-W2 B1-C2-Co1-H7-W57")


# float64 by default: the op layer's tests compare with the reference exactly.
make_args = functools.partial(_helpers.make_args, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# Values and gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("b, c, c_out, h, w", SHAPES)
def test_smlp_mix_matches_reference(b, c, c_out, h, w, kind):
    args = make_args(b, c, c_out, h, w)
    x = layout(args[0], kind)
    y = smlp_kernels.smlp_mix(x, *args[1:])
    torch.testing.assert_close(y, R.smlp_mix_ref(*args), rtol=1e-12, atol=1e-12)
    if kind == "channels_last" and c > 1 and h * w > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
    else:
        assert y.is_contiguous()


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("b, c, c_out, h, w", SHAPES[:3])
def test_smlp_mix_gradcheck(b, c, c_out, h, w, bias):
    args = make_args(b, c, c_out, h, w, bias=bias, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: smlp_kernels.smlp_mix(*a), args)


@pytest.mark.parametrize("op", ["row_mix", "col_mix"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_axis_mix_gradcheck(op, bias):
    fn = getattr(smlp_kernels, op)
    n = 7 if op == "row_mix" else 5
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(n, n, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, dtype=torch.float64, requires_grad=True) if bias else None
    assert torch.autograd.gradcheck(lambda *a: fn(*a), (x, weight, b))


@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "sliced"])
def test_smlp_mix_gradients_match_explicit_backward(kind):
    args = make_args(2, 4, 5, 6, 3, requires_grad=True)
    x = layout(args[0].detach(), kind).requires_grad_()
    y = smlp_kernels.smlp_mix(x, *args[1:])
    grad = torch.randn_like(y)
    y.backward(grad)
    want = R.smlp_mix_bwd_ref(grad, x.detach(), *detached(args[1:]))
    got = [x.grad] + [t.grad for t in args[1:]]
    for name, g in zip(R.SMLPMixGrads._fields, got, strict=True):
        torch.testing.assert_close(g, getattr(want, name), rtol=1e-12, atol=1e-12)
    assert x.grad.is_contiguous(
        memory_format=torch.channels_last if kind == "channels_last" else torch.contiguous_format
    )


@pytest.mark.parametrize("op", ["row_mix", "col_mix"])
def test_axis_mix_matches_reference(op):
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    n = 7 if op == "row_mix" else 5
    weight, bias = torch.randn(n, n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    ref = R.row_mix_ref if op == "row_mix" else R.col_mix_ref
    got = getattr(smlp_kernels, op)(layout(x, "sliced"), weight, bias)
    torch.testing.assert_close(got, ref(x, weight, bias), rtol=1e-12, atol=1e-12)


def test_float32_parameters_with_bfloat16_input():
    """Mixed precision: fp32 master weights, bf16 activations. Output bf16, gradients fp32."""
    args = make_args(2, 4, 3, 6, 5, dtype=torch.float32, requires_grad=True)
    x = args[0].detach().bfloat16().requires_grad_()
    y = smlp_kernels.smlp_mix(x, *args[1:])
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16
    assert all(t.grad.dtype == torch.float32 for t in args[1:])
    want = R.smlp_mix_ref(x.detach().double(), *[t.detach().double() for t in args[1:]])
    # bf16 rounding of the weights and of r, k: a few bf16 ulps of the output's scale.
    assert (y.double() - want).abs().max() <= 8 * 2**-8 * want.abs().max()


def test_zero_strides_expanded_x_and_sum_backward():
    """Backends get any strides, 0 included: an expanded x, and the gradient of y.sum()."""
    args = make_args(1, 3, 4, 5, 6, requires_grad=True)
    x = args[0].expand(4, 3, 5, 6)
    assert x.stride(0) == 0
    y = smlp_kernels.smlp_mix(x, *args[1:])
    torch.testing.assert_close(y, R.smlp_mix_ref(x.detach(), *detached(args[1:])))
    y.sum().backward()  # the upstream gradient is an expanded scalar: all strides 0
    want = R.smlp_mix_bwd_ref(torch.ones_like(y), x.detach(), *detached(args[1:]))
    torch.testing.assert_close(args[0].grad, want.x.sum(0, keepdim=True))
    torch.testing.assert_close(args[5].grad, want.fuse_weight)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_error_within_twice_pytorch(dtype):
    """The project's tolerance rule: error vs the fp64 truth at most 2x PyTorch's own
    low-precision error (here SPACH's conv formulation in the same dtype) plus a small atol."""
    args = make_args(2, 8, 6, 7, 9, requires_grad=True)
    truth = R.smlp_mix_ref(*detached(args))
    low = [t.detach().to(dtype).requires_grad_() for t in args]
    y = smlp_kernels.smlp_mix(*low)
    baseline = R.smlp_mix_spach_style(*detached(low))
    assert y.dtype == dtype
    err = (y.double() - truth).abs().max()
    base_err = (baseline.double() - truth).abs().max()
    assert err <= 2 * base_err + 1e-3, (err, base_err)
    grad = torch.randn_like(truth)
    y.backward(grad.to(dtype))
    want = R.smlp_mix_bwd_ref(grad, *detached(args))
    pt = [t.detach().to(dtype).requires_grad_() for t in args]
    R.smlp_mix_spach_style(*pt).backward(grad.to(dtype))
    for name, ours, theirs in zip(R.SMLPMixGrads._fields, low, pt, strict=True):
        true = getattr(want, name)
        ours_err = (ours.grad.double() - true).abs().max()
        base = (theirs.grad.double() - true).abs().max()
        assert ours_err <= 2 * base + 1e-3 * true.abs().max(), (name, ours_err, base)


@pytest.mark.parametrize("op", ["row_mix", "col_mix"])
def test_axis_mix_gradients_come_back_in_each_parameter_dtype(op):
    n = 6 if op == "row_mix" else 5
    x = torch.randn(2, 3, 5, 6).bfloat16().requires_grad_()
    weight = torch.randn(n, n, dtype=torch.bfloat16, requires_grad=True)
    bias = torch.randn(n, requires_grad=True)  # float32 bias, bfloat16 weight
    y = getattr(smlp_kernels, op)(x, weight, bias)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert (x.grad.dtype, weight.grad.dtype, bias.grad.dtype) == (
        torch.bfloat16,
        torch.bfloat16,
        torch.float32,
    )
    summed = (0, 1, 2) if op == "row_mix" else (0, 1, 3)
    torch.testing.assert_close(bias.grad, torch.ones_like(y, dtype=torch.float32).sum(summed))


def test_empty_batch():
    args = make_args(0, 3, 4, 5, 6, requires_grad=True)
    y = smlp_kernels.smlp_mix(*args)
    assert y.shape == (0, 4, 5, 6)
    y.sum().backward()
    assert args[0].grad.shape == (0, 3, 5, 6)
    for t in args[1:]:
        assert t.grad is not None and t.grad.shape == t.shape and not t.grad.any()
    assert smlp_kernels.row_mix(torch.empty(0, 2, 3, 4), torch.randn(4, 4)).shape == (0, 2, 3, 4)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def _replace(args, index, value):
    args = list(args)
    args[index] = value
    return args


BAD = [
    # (id, index into args, replacement, exception, words the message must contain)
    ("x-3d", 0, torch.randn(3, 5, 7), ValueError, ["x", "4-D"]),
    ("x-int", 0, torch.ones(2, 3, 5, 7, dtype=torch.int64), TypeError, ["x", "floating"]),
    ("x-list", 0, [[1.0]], TypeError, ["x", "Tensor"]),
    ("row_weight-shape", 1, torch.randn(5, 5), ValueError, ["row_weight", "(W, W)", "(7, 7)"]),
    ("row_weight-4d", 1, torch.randn(7, 7, 1, 1), ValueError, ["row_weight", "(7, 7)"]),
    ("row_bias-shape", 2, torch.randn(5), ValueError, ["row_bias", "(W,)", "(7,)"]),
    ("col_weight-shape", 3, torch.randn(7, 7), ValueError, ["col_weight", "(H, H)", "(5, 5)"]),
    ("col_bias-shape", 4, torch.randn(7), ValueError, ["col_bias", "(H,)", "(5,)"]),
    ("fuse-shape", 5, torch.randn(4, 3), ValueError, ["fuse_weight", "(C_out, 3C)", "9"]),
    ("fuse-cout0", 5, torch.randn(0, 9), ValueError, ["fuse_weight", "(C_out, 3C)"]),
    ("fuse-none", 5, None, TypeError, ["fuse_weight"]),
    ("row_weight-int", 1, torch.ones(7, 7, dtype=torch.int32), TypeError, ["row_weight", "dtype"]),
    ("col_weight-fp16", 3, torch.randn(5, 5).half(), TypeError, ["col_weight", "float32"]),
    ("row_weight-meta", 1, torch.randn(7, 7, device="meta"), ValueError, ["row_weight", "meta"]),
    ("x-sparse", 0, torch.randn(2, 3, 5, 7).to_sparse(), TypeError, ["x", "dense", "sparse"]),
    ("row_weight-sparse", 1, torch.randn(7, 7).to_sparse(), TypeError, ["row_weight", "dense"]),
    ("fuse-csr", 5, torch.randn(4, 9).to_sparse_csr(), TypeError, ["fuse_weight", "dense"]),
    (
        "bias-complex",
        2,
        torch.randn(7, dtype=torch.complex64),
        TypeError,
        ["row_bias", "float32, like x", "complex64"],
    ),
]


@pytest.mark.parametrize("index, value, exc, words", [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_bad_input_raises_clear_error(index, value, exc, words):
    args = _replace(make_args(2, 3, 4, 5, 7, dtype=torch.float32), index, value)
    with pytest.raises(exc) as info:
        smlp_kernels.smlp_mix(*args)
    for word in words:
        assert word in str(info.value), f"{word!r} not in: {info.value}"


def test_nested_x_is_rejected():
    x = torch.nested.nested_tensor([torch.randn(3, 5, 7)] * 2, layout=torch.jagged)
    with pytest.raises(TypeError, match="x must be a dense"):
        smlp_kernels.smlp_mix(x, *make_args(2, 3, 4, 5, 7, dtype=torch.float32)[1:])


def test_bad_sizes():
    x, weight = torch.randn(1, 0, 2, 2), torch.randn(2, 2)  # C = 0
    with pytest.raises(ValueError, match="C, H, W >= 1"):
        smlp_kernels.smlp_mix(x, weight, None, weight, None, torch.randn(1, 0))
    with pytest.raises(ValueError, match=r"weight.*\(W, W\)"):
        smlp_kernels.row_mix(torch.randn(1, 2, 3, 4), torch.randn(3, 3))
    with pytest.raises(ValueError, match=r"weight.*\(H, H\)"):
        smlp_kernels.col_mix(torch.randn(1, 2, 3, 4), torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"bias.*\(H,\)"):
        smlp_kernels.col_mix(torch.randn(1, 2, 3, 4), torch.randn(3, 3), torch.randn(4))


def test_custom_op_validates_when_called_directly():
    args = make_args(1, 2, 2, 3, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match="row_weight"):
        torch.ops.smlp.mix_fwd(args[0], torch.randn(3, 3), *args[2:], "reference")


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------


class _CountingBackend(R.ReferenceBackend):
    """The reference under another name, counting calls; optionally unavailable or limited."""

    def __init__(self, name, priority=10, available=True, max_width=None):
        self.name, self.priority = name, priority
        self.device_types = ("cpu",)
        self._available, self.max_side = available, max_width
        self.calls = 0

    def availability(self):
        return (True, "test double") if self._available else (False, "missing its compiler")

    def mix(self, *args):
        self.calls += 1
        return super().mix(*args)


@pytest.fixture
def registry(monkeypatch):
    """Lets a test register backends; the registry is restored afterwards."""
    monkeypatch.setattr(B, "_REGISTRY", dict(B._REGISTRY))
    monkeypatch.setattr(B, "_AVAILABILITY", {})
    monkeypatch.delenv(B.ENV_VAR, raising=False)
    yield B
    monkeypatch.undo()
    B._GENERATION += 1  # graphs compiled against the test's backends must not be reused


def test_compiled_call_sees_a_backend_registered_after_it(registry):
    """Availability is a constant in traced code, guarded on the registry's generation: a
    backend re-registered as unavailable makes the compiled call trace again and raise, as
    the eager call does."""
    registry.register_backend(_CountingBackend("flaky"))
    args = make_args(1, 2, 2, 3, 4, dtype=torch.float32)

    def forced(*a):
        return smlp_kernels.smlp_mix(*a, backend="flaky")

    compiled = torch.compile(forced, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(*args), R.smlp_mix_ref(*args))
    registry.register_backend(_CountingBackend("flaky", available=False))
    with pytest.raises(RuntimeError, match="'flaky' is unavailable here"):
        forced(*args)
    with pytest.raises(Exception, match="'flaky' is unavailable here"):
        compiled(*args)


def test_backends_reports_reference():
    status = smlp_kernels.backends()["reference"]
    assert status.available and status.reason
    assert status.device_types == ("*",)


def test_automatic_choice_prefers_priority_then_falls_back(registry):
    # Only the reference and the test doubles: the package's own CPU backend would compete.
    for name in [n for n in registry._REGISTRY if n != "reference"]:
        del registry._REGISTRY[name]
    fast = _CountingBackend("fast", priority=10, max_width=6)
    registry.register_backend(fast)
    registry.register_backend(_CountingBackend("broken", priority=20, available=False))
    x = torch.randn(1, 2, 3, 4)
    assert registry.resolve_backend(None, "mix", x, 2) == "fast"
    smlp_kernels.smlp_mix(*make_args(1, 2, 2, 3, 4, dtype=torch.float32))
    assert fast.calls == 1
    # Too wide for "fast": the reference takes it.
    assert registry.resolve_backend(None, "mix", torch.randn(1, 2, 3, 9), 2) == "reference"
    # Only CPU for "fast": a meta tensor goes to the reference.
    assert registry.resolve_backend(None, "mix", x.to("meta"), 2) == "reference"
    status = smlp_kernels.backends()
    # Highest priority first (the real backends registered by the package may sit between).
    assert [n for n in status if n in ("broken", "fast", "reference")] == [
        "broken",
        "fast",
        "reference",
    ]
    assert status["broken"].reason == "missing its compiler" and not status["broken"].available


def test_forced_backend_errors(registry):
    registry.register_backend(_CountingBackend("broken", available=False))
    registry.register_backend(_CountingBackend("narrow", max_width=2))
    args = make_args(1, 2, 2, 3, 4, dtype=torch.float32)
    with pytest.raises(
        ValueError, match=r"'nope': unknown backend; registered backends: .*reference"
    ):
        smlp_kernels.smlp_mix(*args, backend="nope")
    with pytest.raises(RuntimeError, match="unavailable here: missing its compiler"):
        smlp_kernels.smlp_mix(*args, backend="broken")
    with pytest.raises(
        ValueError,
        match="cannot run mix on this input: H = 3, W = 4: the narrow kernels take H, W <= 2",
    ):
        smlp_kernels.smlp_mix(*args, backend="narrow")
    with pytest.raises(ValueError, match="runs on cpu tensors, but x is on meta"):
        smlp_kernels.smlp_mix(*[t.to("meta") for t in args], backend="narrow")


def test_a_backend_must_declare_its_dtypes_and_devices(registry):
    """Without them every call would be refused with an empty list in the message."""

    class Undeclared(R.ReferenceBackend):
        name = "undeclared"
        dtypes = ()

    with pytest.raises(ValueError, match="'undeclared' declares no dtypes"):
        registry.register_backend(Undeclared())
    Undeclared.dtypes, Undeclared.device_types = (torch.float32,), ()
    with pytest.raises(ValueError, match="'undeclared' declares no device_types"):
        registry.register_backend(Undeclared())
    assert "undeclared" not in smlp_kernels.backends()


def test_pytorch_deterministic_flag_turns_deterministic_mode_on():
    old = torch.are_deterministic_algorithms_enabled()
    try:
        assert not smlp_kernels.is_deterministic()
        torch.use_deterministic_algorithms(True)
        assert smlp_kernels.is_deterministic()
    finally:
        torch.use_deterministic_algorithms(old)
    assert not smlp_kernels.is_deterministic()


@pytest.mark.parametrize("bad", [3, b"cpu", ["cpu"], True])
def test_backend_of_the_wrong_type_raises_type_error(bad):
    """A backend that is not a str (or None) is a wrong type: TypeError naming it, from every
    public function and the module, before anything runs."""
    args = make_args(1, 2, 2, 3, 4, dtype=torch.float32)
    x, rw, rb, cw, cb, _ = args
    calls = [
        lambda: smlp_kernels.smlp_mix(*args, backend=bad),
        lambda: smlp_kernels.row_mix(x, rw, rb, backend=bad),
        lambda: smlp_kernels.col_mix(x, cw, cb, backend=bad),
        lambda: smlp_kernels.SparseMLP(2, 3, 4, backend=bad),
    ]
    for call in calls:
        with pytest.raises(TypeError, match=r"backend=.*must be a str naming a registered"):
            call()


def test_environment_variable_forces_backend(registry, monkeypatch):
    counting = _CountingBackend("counting", priority=-5)  # never chosen automatically
    registry.register_backend(counting)
    args = make_args(1, 2, 2, 3, 4, dtype=torch.float32)
    smlp_kernels.smlp_mix(*args)
    assert counting.calls == 0
    monkeypatch.setenv("SMLP_BACKEND", "counting")
    smlp_kernels.smlp_mix(*args)
    assert counting.calls == 1
    smlp_kernels.smlp_mix(*args, backend="reference")  # the argument beats the variable
    assert counting.calls == 1
    monkeypatch.setenv("SMLP_BACKEND", "nope")
    with pytest.raises(ValueError, match="SMLP_BACKEND"):
        smlp_kernels.smlp_mix(*args)


# ---------------------------------------------------------------------------------------------
# torch.library (opcheck, torch.compile, torch.export), FLOP counting, saved tensors and
# autocast are tested for every backend in test_compile_export.py, test_flops.py,
# test_memory.py and test_autocast.py.
# ---------------------------------------------------------------------------------------------


def test_axis_mix_grads_named_fields():
    g = smlp_kernels.reference.row_mix_bwd_ref(
        torch.randn(1, 1, 2, 3), torch.randn(1, 1, 2, 3), torch.randn(3, 3)
    )
    assert isinstance(g, AxisMixGrads) and g.bias.shape == (3,)
