"""bn_gelu_smlp_mix, the mix with SPACH's BN -> GELU prologue, outside the backend contract:
argument checks, the op layer's backward against autograd of the unfused PyTorch, a backend
that overrides ``mix_bn_gelu``, the custom ops under opcheck, torch.compile, torch.export,
FlopCounterMode and autocast, and SparseMLP's eval-mode path (which configurations take the
fused op and that they give BN -> GELU -> smlp_mix's result).

Every backend's forward and gradients in every dtype, layouts, NaN and empty batches:
test_backend_contract.py.
"""

from __future__ import annotations

import copy

import _helpers
import pytest
import torch
import torch.nn.functional as F
from _helpers import backend_params, detached, is_slow, layout, skip_unless_supported
from torch import nn
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func
from torch.utils.flop_counter import FlopCounterMode

import smlp_kernels
from smlp_kernels import flops
from smlp_kernels import reference as R
from smlp_kernels import registry as B
from smlp_kernels.nn import SparseMLP

BACKENDS = backend_params()
NAMES = ("x", "scale", "shift", "row_weight", "row_bias", "col_weight", "col_bias", "fuse_weight")


def make_args(b, c, c_out, h, w, *, dtype=torch.float64, device="cpu", bias=True, seed=0):
    """[x, scale, shift, row_weight, row_bias, col_weight, col_bias, fuse_weight]."""
    x, *params = _helpers.make_args(
        b, c, c_out, h, w, dtype=torch.float64, device=device, bias=bias, seed=seed
    )
    g = torch.Generator().manual_seed(seed + 1)
    scale = 1 + 0.5 * torch.randn(c, generator=g, dtype=torch.float64)
    shift = 0.7 * torch.randn(c, generator=g, dtype=torch.float64)
    args = [x, scale.to(device), shift.to(device), *params]
    return [None if t is None else t.to(dtype) for t in args]


def leaves(args):
    return [None if t is None else t.detach().clone().requires_grad_() for t in args]


def grads(ts):
    return [None if t is None else t.grad for t in ts]


def ops_counted(fn) -> dict[str, int]:
    """{op name: FLOPs} of the ops FlopCounterMode counts while ``fn()`` runs (ours all)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


# ---------------------------------------------------------------------------------------------
# Argument checks: scale and shift like the other parameters, errors naming them
# ---------------------------------------------------------------------------------------------

# (id, index into args, replacement, exception, words the message must contain); x is
# (2, 3, 5, 7) float32, so C = 3.
BAD = [
    ("scale-2d", 1, torch.randn(3, 1), ValueError, ["scale", "(C,) = (3,)", "got (3, 1)"]),
    ("scale-length", 1, torch.randn(4), ValueError, ["scale", "(C,) = (3,)", "got (4,)"]),
    ("scale-0d", 1, torch.tensor(1.0), ValueError, ["scale", "(C,) = (3,)", "got ()"]),
    ("scale-per-pixel", 1, torch.randn(3, 5, 7), ValueError, ["scale", "(3,)"]),
    ("shift-length", 2, torch.randn(2), ValueError, ["shift", "(C,) = (3,)", "got (2,)"]),
    ("shift-2d", 2, torch.randn(1, 3), ValueError, ["shift", "(C,) = (3,)", "got (1, 3)"]),
    ("scale-float", 1, 1.0, TypeError, ["scale", "torch.Tensor", "float"]),
    ("shift-list", 2, [0.0, 0.0, 0.0], TypeError, ["shift", "torch.Tensor", "list"]),
    ("scale-none", 1, None, TypeError, ["scale", "(C,)", "None"]),
    ("shift-none", 2, None, TypeError, ["shift", "(C,)", "None"]),
    ("scale-int", 1, torch.ones(3, dtype=torch.int64), TypeError, ["scale", "dtype", "int64"]),
    ("scale-fp16", 1, torch.ones(3).half(), TypeError, ["scale", "float32, like x", "float16"]),
    ("shift-fp64", 2, torch.ones(3).double(), TypeError, ["shift", "float32, like x", "float64"]),
    ("scale-meta", 1, torch.ones(3, device="meta"), ValueError, ["scale", "meta", "x is on cpu"]),
    ("shift-sparse", 2, torch.ones(3).to_sparse(), TypeError, ["shift", "dense", "sparse"]),
    ("row_weight", 3, torch.randn(5, 5), ValueError, ["bn_gelu_smlp_mix: row_weight", "(7, 7)"]),
]


@pytest.mark.parametrize("index, value, exc, words", [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_bad_arguments_raise_errors_naming_them(index, value, exc, words):
    args = make_args(2, 3, 4, 5, 7, dtype=torch.float32)
    args[index] = value
    calls = [lambda: smlp_kernels.bn_gelu_smlp_mix(*args)]
    if isinstance(value, torch.Tensor):  # the op checks too (its schema refuses the others)
        calls.append(lambda: torch.ops.smlp.mix_bn_gelu_fwd(*args, "reference"))
    for call in calls:
        with pytest.raises(exc) as info:
            call()
        for word in words:
            assert word in str(info.value), f"{word!r} not in: {info.value}"


def test_scale_and_shift_dtypes_follow_the_parameter_rule():
    """x's dtype or float32, so float64 only with a float64 x; a 16-bit x takes float32."""
    for x_dtype, ok, refused in [
        (torch.bfloat16, (torch.bfloat16, torch.float32), (torch.float16, torch.float64)),
        (torch.float64, (torch.float64, torch.float32), (torch.bfloat16,)),
    ]:
        args = make_args(1, 2, 2, 3, 4, dtype=x_dtype)
        for dt in ok:
            y = smlp_kernels.bn_gelu_smlp_mix(args[0], args[1].to(dt), args[2].to(dt), *args[3:])
            assert y.dtype == x_dtype
        for dt in refused:
            with pytest.raises(TypeError, match=r"scale must have dtype x's dtype .* or float32"):
                smlp_kernels.bn_gelu_smlp_mix(args[0], args[1].to(dt), *args[2:])


def test_wrong_backend_type_and_name():
    args = make_args(1, 2, 2, 3, 4, dtype=torch.float32)
    with pytest.raises(TypeError, match=r"backend=.*must be a str"):
        smlp_kernels.bn_gelu_smlp_mix(*args, backend=3)
    with pytest.raises(ValueError, match="unknown backend; registered backends"):
        smlp_kernels.bn_gelu_smlp_mix(*args, backend="nope")


# ---------------------------------------------------------------------------------------------
# Values and the op layer's backward, against PyTorch's own unfused computation
# ---------------------------------------------------------------------------------------------


def unfused(x, scale, shift, rw, rb, cw, cb, fw):
    """BN in eval form then GELU, by PyTorch's autograd, then SPACH's conv formulation."""
    u = x * scale[:, None, None] + shift[:, None, None]
    return R.smlp_mix_spach_style(F.gelu(u), rw, rb, cw, cb, fw)


@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_forward_and_gradients_match_pytorch_autograd_unfused(bias, kind):
    """An independent check of the backward composed in the op layer (dx' from the mix's
    input gradient, gelu', the scale and shift sums, the weight gradients of x'), float64."""
    args = make_args(2, 4, 5, 6, 3, bias=bias)
    args[0] = layout(args[0], kind)
    grad = torch.randn(2, 5, 6, 3, dtype=torch.float64)
    ours, theirs = leaves(args), leaves(args)
    y = smlp_kernels.bn_gelu_smlp_mix(*ours)
    y.backward(grad)
    want = unfused(*theirs)
    want.backward(grad)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    for name, a, b in zip(NAMES, grads(ours), grads(theirs), strict=True):
        if b is None:
            assert a is None, name
            continue
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")
    fmt = torch.channels_last if kind == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt) and ours[0].grad.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_same_result_as_bn_gelu_then_smlp_mix(backend, device):
    """bn_gelu_smlp_mix is smlp_mix of reference.bn_gelu (rounded to x's dtype there): the
    very same bits where the backend composes them (fused_prologue False), within the
    contract's tolerance where it fuses."""
    be = B.get_backend(backend)
    for dtype in be.dtypes:
        args = make_args(2, 3, 4, 5, 6, dtype=dtype, device=device)
        x, scale, shift, *params = args
        got = smlp_kernels.bn_gelu_smlp_mix(*args, backend=backend)
        want = smlp_kernels.smlp_mix(R.bn_gelu(x, scale, shift), *params, backend=backend)
        assert got.dtype == want.dtype == dtype
        if not be.fused_prologue:
            assert torch.equal(got, want), dtype
        else:
            truth = R.bn_gelu_smlp_mix_ref(*[t.double() for t in args])
            allowed = 2 * (want.double() - truth).abs().max() + 1e-3 * truth.abs().max()
            assert (got.double() - truth).abs().max() <= allowed, dtype


def test_bn_gelu_reference_rounds_once_in_x_dtype():
    """reference.bn_gelu: float32 arithmetic for a 16-bit x, one rounding at the end; float64
    for float64; nn.GELU's erf form (not the tanh approximation)."""
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64) * 3
    scale, shift = torch.tensor([1.5, -0.5, 0.0]), torch.tensor([0.1, 2.0, -1.0])
    want64 = F.gelu(x * scale.double()[:, None, None] + shift.double()[:, None, None])
    got64 = R.bn_gelu(x, scale.double(), shift.double())
    assert got64.dtype == torch.float64
    torch.testing.assert_close(got64, want64, rtol=1e-15, atol=1e-15)
    xb = x.bfloat16()
    got = R.bn_gelu(xb, scale, shift)
    want = F.gelu(xb.float() * scale[:, None, None] + shift[:, None, None]).bfloat16()
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    tanh = F.gelu(x * scale.double()[:, None, None], approximate="tanh")
    assert not torch.allclose(R.bn_gelu(x, scale.double(), torch.zeros(3).double()), tanh)


# ---------------------------------------------------------------------------------------------
# The backend hook: Backend.mix_bn_gelu and fused_prologue
# ---------------------------------------------------------------------------------------------


class _FusedBackend(R.ReferenceBackend):
    """The reference with mix_bn_gelu overridden, as a backend that fuses the prologue."""

    name = "fused-test"
    device_types = ("cpu",)
    priority = -10  # never chosen automatically
    fused_prologue = True

    def __init__(self):
        self.calls: list[str] = []

    def mix(self, *args):
        self.calls.append("mix")
        return super().mix(*args)

    def mix_bn_gelu(self, x, scale, shift, *params):
        self.calls.append("mix_bn_gelu")
        return R._mix(R.bn_gelu(x, scale, shift), *params)

    def mix_wgrad(self, *args):
        self.calls.append("mix_wgrad")
        return super().mix_wgrad(*args)


@pytest.fixture
def fused_backend(monkeypatch):
    monkeypatch.setattr(B, "_REGISTRY", dict(B._REGISTRY))
    monkeypatch.setattr(B, "_AVAILABILITY", {})
    be = _FusedBackend()
    B.register_backend(be)
    yield be
    monkeypatch.undo()
    B._GENERATION += 1  # graphs compiled against the test's backend must not be reused


def test_the_op_calls_a_backends_mix_bn_gelu(fused_backend):
    """The forward is the backend's mix_bn_gelu alone; the backward its mix (the input
    gradient) and mix_wgrad, as for smlp_mix."""
    args = leaves(make_args(2, 3, 4, 5, 6))
    y = smlp_kernels.bn_gelu_smlp_mix(*args, backend="fused-test")
    assert fused_backend.calls == ["mix_bn_gelu"]
    y.sum().backward()
    assert sorted(fused_backend.calls) == ["mix", "mix_bn_gelu", "mix_wgrad"]
    torch.testing.assert_close(y, R.bn_gelu_smlp_mix_ref(*detached(args)))


def test_backends_declare_fused_prologue_as_a_bool():
    assert B.Backend.fused_prologue is False
    for name in smlp_kernels.backends():
        assert type(B.get_backend(name).fused_prologue) is bool, name


def test_default_mix_bn_gelu_is_bn_gelu_then_mix():
    be = R.ReferenceBackend()
    x, scale, shift, rw, rb, cw, cb, fw = make_args(2, 3, 4, 5, 6)
    blocks = fw.split(3, dim=1)
    got = be.mix_bn_gelu(x, scale, shift, rw, rb, cw, cb, *blocks)
    assert torch.equal(got, be.mix(R.bn_gelu(x, scale, shift), rw, rb, cw, cb, *blocks))


# ---------------------------------------------------------------------------------------------
# PyTorch's tooling: opcheck, torch.compile, torch.export, FlopCounterMode, autocast
# ---------------------------------------------------------------------------------------------

# (x dtype, parameter dtype, x layout, biases)
OPCHECK_CASES = [
    pytest.param(torch.float32, torch.float32, "channels_last", True, id="fp32-channels_last"),
    pytest.param(torch.float32, torch.float32, "sliced", False, id="fp32-sliced-nobias"),
    pytest.param(torch.bfloat16, torch.float32, "contiguous", True, id="bf16-x-fp32-params"),
]


@pytest.mark.parametrize(
    "backend, device, x_dtype, param_dtype, kind, bias",
    [
        pytest.param(*be.values, *case.values, id=f"{be.id}-{case.id}")
        for be in BACKENDS
        for case in OPCHECK_CASES
        if not is_slow(*be.values) or case.id == "bf16-x-fp32-params"  # interpreter: one
    ],
)
def test_opcheck(backend, device, x_dtype, param_dtype, kind, bias):
    args = make_args(2, 3, 4, 5, 6, dtype=param_dtype, device=device, bias=bias)
    args[0] = layout(args[0].to(x_dtype), kind)
    skip_unless_supported(backend, "mix", args[0], 4)
    # Inputs that require grad: opcheck also checks the autograd registration.
    torch.library.opcheck(torch.ops.smlp.mix_bn_gelu_fwd.default, (*leaves(args), backend))
    g = torch.randn(2, 4, 5, 6, device=device).to(x_dtype)
    torch.library.opcheck(torch.ops.smlp.mix_bn_gelu_bwd.default, (g, *args, backend))


class _Recorder:
    """A torch.compile backend: counts dynamo's frames, records the forward and backward
    graphs' ops (AOT autograd), runs them eagerly."""

    def __init__(self) -> None:
        self.frames = 0
        self.fw_ops: set[str] = set()
        self.bw_ops: set[str] = set()

        def record(ops):
            def compiler(gm, example_inputs):
                ops.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
                return make_boxed_func(gm.forward)

            return compiler

        self._aot = aot_autograd(fw_compiler=record(self.fw_ops), bw_compiler=record(self.bw_ops))

    def __call__(self, gm, example_inputs):
        self.frames += 1
        return self._aot(gm, example_inputs)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_compile_fullgraph_forward_and_backward(backend, device):
    torch._dynamo.reset()
    args = make_args(2, 3, 4, 5, 6, dtype=torch.float32, device=device)

    def f(*a):
        return smlp_kernels.bn_gelu_smlp_mix(*a, backend=backend).square().sum()

    eager = leaves(args)
    f(*eager).backward()
    recorder = _Recorder()
    compiled = leaves(args)
    out = torch.compile(f, fullgraph=True, backend=recorder)(*compiled)
    out.backward()
    assert recorder.frames == 1
    assert "smlp.mix_bn_gelu_fwd.default" in recorder.fw_ops, recorder.fw_ops
    assert "smlp.mix_bn_gelu_bwd.default" in recorder.bw_ops, recorder.bw_ops
    torch.testing.assert_close(out, f(*args))
    for name, a, b in zip(NAMES, grads(compiled), grads(eager), strict=True):
        torch.testing.assert_close(a, b, msg=lambda m, n=name: f"{n}: {m}")


class _PrologueMix(nn.Module):
    def __init__(self, backend: str, device: str):
        super().__init__()
        args = make_args(1, 3, 4, 5, 6, dtype=torch.float32, device=device)
        self.params = nn.ParameterList([nn.Parameter(t) for t in args[1:]])
        self.backend = backend

    def forward(self, x):
        p = self.params
        return smlp_kernels.bn_gelu_smlp_mix(
            x, p[0], p[1], p[2], p[3], p[4], p[5], p[6], backend=self.backend
        )


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_export_dynamic_batch_save_and_load(backend, device, tmp_path):
    model = _PrologueMix(backend, device).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    example = torch.randn(2, 3, 5, 6, device=device)
    ep = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
    calls = [n for n in ep.graph.nodes if str(n.target) == "smlp.mix_bn_gelu_fwd.default"]
    assert len(calls) == 1 and calls[0].args[-1] == backend  # the backend is recorded
    torch.export.save(ep, tmp_path / "prologue.pt2")
    loaded = torch.export.load(tmp_path / "prologue.pt2").module()
    with torch.no_grad():
        for b in (1, 3):
            x = torch.randn(b, 3, 5, 6, device=device)
            torch.testing.assert_close(loaded(x), model(x))


def test_flop_counter_forward_and_backward():
    b, c, c_out, h, w = 2, 3, 4, 5, 6
    args = leaves(make_args(b, c, c_out, h, w, dtype=torch.float32))
    out = {}
    counts = ops_counted(lambda: out.setdefault("y", smlp_kernels.bn_gelu_smlp_mix(*args)))
    # The mix's count, written out; the prologue is counted as 0 per element, as
    # FlopCounterMode counts BatchNorm and GELU when they run unfused (smlp_kernels.flops).
    forward = 2 * b * c * h * w * (w + h) + 2 * b * h * w * 3 * c * c_out
    assert counts == {"smlp.mix_bn_gelu_fwd": forward}
    counts = ops_counted(lambda: out["y"].sum().backward())
    backward = 2 * forward + 2 * b * c * h * w * (w + h)
    assert counts == {"smlp.mix_bn_gelu_bwd": backward}
    assert flops.bn_gelu_smlp_mix_flops(b, c, c_out, h, w) == forward
    assert flops.bn_gelu_smlp_mix_bwd_flops(b, c, c_out, h, w) == backward
    assert flops.BN_GELU_FLOPS_PER_ELEMENT == flops.BN_GELU_BWD_FLOPS_PER_ELEMENT == 0


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_forward_saves_only_x_scale_shift_and_the_weights(backend, device):
    """No activation is saved for the backward: u, gelu(u), r and k are recomputed."""
    args = leaves(make_args(2, 3, 4, 5, 6, dtype=torch.float32, device=device))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = smlp_kernels.bn_gelu_smlp_mix(*args, backend=backend)
    assert len(saved) == len(args)
    for t, arg, name in zip(saved, args, NAMES, strict=True):
        assert t.data_ptr() == arg.data_ptr() and t.shape == arg.shape, name
    y.sum().backward()
    assert all(t.grad is not None for t in args)


def test_autocast_like_smlp_mix():
    """Under CPU bfloat16 autocast: x cast before the prologue, float32 scale, shift and
    weights as they are; bfloat16 out, each gradient in its argument's dtype; the same bits
    as the call with x cast by hand."""
    args = make_args(2, 4, 5, 6, 7, dtype=torch.float32)
    ours, manual = leaves(args), leaves(args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = smlp_kernels.bn_gelu_smlp_mix(*ours, backend="reference")
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    y_manual = smlp_kernels.bn_gelu_smlp_mix(manual[0].bfloat16(), *manual[1:], backend="reference")
    y_manual.float().square().sum().backward()
    assert torch.equal(y, y_manual)
    for name, a, b in zip(NAMES, grads(ours), grads(manual), strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b), name


# ---------------------------------------------------------------------------------------------
# SparseMLP: the fused op in eval mode, BN -> GELU -> smlp_mix otherwise
# ---------------------------------------------------------------------------------------------


def _randomized_block(c, h, w, dtype, **bn_kwargs) -> SparseMLP:
    """A SparseMLP with non-default weights and BN statistics (means of a few units, variances
    away from 1, some BN weights negative), seeded."""
    torch.manual_seed(0)
    m = SparseMLP(c, h, w, dtype=dtype)
    if bn_kwargs:
        m.BN = nn.BatchNorm2d(c, dtype=dtype, **bn_kwargs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
        if m.BN.affine:
            m.BN.weight.add_(1)
        if m.BN.track_running_stats:
            m.BN.running_mean.copy_(2 * torch.randn(c, generator=g, dtype=torch.float64))
            m.BN.running_var.copy_(0.2 + 3 * torch.rand(c, generator=g, dtype=torch.float64))
    return m


def unfused_block(m: SparseMLP, x: torch.Tensor) -> torch.Tensor:
    """SparseMLP's computation before this op existed: BN and GELU modules, then smlp_mix."""
    return smlp_kernels.smlp_mix(
        m.activation(m.BN(x)),
        m.proj_h.weight.flatten(1),
        m.proj_h.bias,
        m.proh_w.weight.flatten(1),
        m.proh_w.bias,
        m.fuse.weight.flatten(1),
        backend=m.backend,
    )


def _forward_backward(fn, m: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    """[y, dx, every parameter's gradient]."""
    m.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    y.backward(grad.to(y.dtype))
    return [y.detach(), x.grad, *(p.grad for p in m.parameters())]


@pytest.mark.parametrize(
    "dtype, x_dtype",
    [
        pytest.param(torch.float64, torch.float64, id="fp64"),
        pytest.param(torch.float32, torch.float32, id="fp32"),
        pytest.param(torch.bfloat16, torch.bfloat16, id="bf16"),
        pytest.param(torch.float32, torch.bfloat16, id="bf16-x-fp32-module"),
    ],
)
def test_sparse_mlp_eval_equals_bn_gelu_smlp_mix_unfused(dtype, x_dtype):
    """Eval mode takes the fused op; output and every gradient (BN weight and bias included)
    against the float64 truth: within 2x the unfused module's own error in that dtype plus
    half an ulp of the largest value (1e-12 relative in float64)."""
    c, h, w = 6, 7, 9
    m = _randomized_block(c, h, w, dtype).eval()
    m64 = _randomized_block(c, h, w, torch.float64).eval()
    x = torch.randn(3, c, h, w, dtype=torch.float64) * 1.5 + 0.5
    grad = torch.randn(3, c, h, w, dtype=torch.float64)
    assert "smlp.mix_bn_gelu_fwd" in ops_counted(lambda: m(x.to(x_dtype)))
    assert "smlp.mix_fwd" in ops_counted(lambda: unfused_block(m, x.to(x_dtype)))

    ours = _forward_backward(m, m, x.to(x_dtype), grad)
    base = _forward_backward(lambda t: unfused_block(m, t), m, x.to(x_dtype), grad)
    truth = _forward_backward(m64, m64, x, grad)
    names = ["y", "x", *(n for n, _ in m.named_parameters())]
    atol = 1e-12 if dtype == torch.float64 else torch.finfo(x_dtype).eps / 2
    for name, o, b, t in zip(names, ours, base, truth, strict=True):
        assert o.dtype == b.dtype, name
        err = (o.double() - t).abs().max().item()
        allowed = 2 * (b.double() - t).abs().max().item() + atol * t.abs().max().item()
        assert err <= allowed, f"{name}: error {err:.3g} > allowed {allowed:.3g}"


def test_sparse_mlp_train_mode_is_unchanged():
    """Training: BN with the batch's statistics (and updating the running ones), then GELU,
    then smlp_mix, exactly as the unfused computation."""
    m = _randomized_block(3, 5, 7, torch.float64).train()
    ref = _randomized_block(3, 5, 7, torch.float64).train()
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    grad = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    assert set(ops_counted(lambda: copy.deepcopy(m)(x))) == {"smlp.mix_fwd"}
    ours = _forward_backward(m, m, x, grad)
    want = _forward_backward(lambda t: unfused_block(ref, t), ref, x, grad)
    for i, (a, b) in enumerate(zip(ours, want, strict=True)):
        assert torch.equal(a, b), i
    for name, buf in ref.named_buffers():
        assert torch.equal(m.get_buffer(name), buf), name


def _bn_in_train_mode(m):
    m.BN.train()


def _tanh_gelu(m):
    m.activation = nn.GELU(approximate="tanh")


def _relu(m):
    m.activation = nn.ReLU()


def _sync_bn(m):
    m.BN = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(m.BN))[0].eval()


# (id, change to an eval-mode block, BN kwargs, fused?)
CONFIGS = [
    pytest.param(None, {}, True, id="spach-block"),
    pytest.param(None, {"affine": False}, True, id="bn-not-affine"),
    pytest.param(_sync_bn, {}, True, id="sync-batchnorm"),
    pytest.param(_bn_in_train_mode, {}, False, id="bn-in-train-mode"),
    pytest.param(None, {"track_running_stats": False}, False, id="bn-without-running-stats"),
    pytest.param(_tanh_gelu, {}, False, id="tanh-gelu"),
    pytest.param(_relu, {}, False, id="relu"),
]


@pytest.mark.parametrize("change, bn_kwargs, fused", CONFIGS)
def test_sparse_mlp_eval_fuses_only_what_it_can(change, bn_kwargs, fused):
    m = _randomized_block(4, 5, 6, torch.float64, **bn_kwargs).eval()
    if change is not None:
        change(m)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        want = unfused_block(m, x)
        counted = ops_counted(lambda: m(x))
        got = m(x)
    assert set(counted) == {"smlp.mix_bn_gelu_fwd" if fused else "smlp.mix_fwd"}
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_sparse_mlp_under_autocast_fuses_only_an_input_autocast_leaves_alone():
    """A bfloat16 x under bfloat16 autocast takes the fused op; a float32 x, which the op
    would round before the BN, keeps the unfused path (BN and GELU in float32)."""
    m = _randomized_block(4, 5, 6, torch.float32).eval()
    x = torch.randn(2, 4, 5, 6) * 3 + 4
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert set(ops_counted(lambda: m(x.bfloat16()))) == {"smlp.mix_bn_gelu_fwd"}
        assert set(ops_counted(lambda: m(x))) == {"smlp.mix_fwd"}
        assert torch.equal(m(x), unfused_block(m, x))


def test_compile_fullgraph_sparse_mlp_in_eval_mode():
    """The eval-mode module in one graph: scale and shift computed from the BN's buffers,
    the fused op, and gradients reaching the BN's weight and bias through them."""
    torch._dynamo.reset()
    eager = _randomized_block(3, 5, 7, torch.float64).eval()
    compiled_module = _randomized_block(3, 5, 7, torch.float64).eval()
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    recorder = _Recorder()
    compiled = torch.compile(compiled_module, fullgraph=True, backend=recorder)
    x_c, x_e = x.clone().requires_grad_(), x.clone().requires_grad_()
    compiled(x_c).square().sum().backward()
    eager(x_e).square().sum().backward()
    assert recorder.frames == 1
    assert "smlp.mix_bn_gelu_fwd.default" in recorder.fw_ops, recorder.fw_ops
    assert "smlp.mix_fwd.default" not in recorder.fw_ops
    torch.testing.assert_close(x_c.grad, x_e.grad, rtol=1e-12, atol=1e-12)
    for (name, p_c), p_e in zip(
        compiled_module.named_parameters(), eager.parameters(), strict=True
    ):
        torch.testing.assert_close(p_c.grad, p_e.grad, rtol=1e-12, atol=1e-12, msg=name)
    assert compiled_module.BN.weight.grad.abs().sum() > 0


def test_sparse_mlp_counts_the_same_flops_in_eval_and_train_mode():
    """Unfused, PyTorch counts nothing for BN and GELU; fused, the prologue counts 0."""
    m = _randomized_block(3, 5, 6, torch.float32)
    x = torch.randn(2, 3, 5, 6)
    m.eval()
    fused = ops_counted(lambda: m(x))
    m.train()
    unfused = ops_counted(lambda: m(x))
    assert set(fused) == {"smlp.mix_bn_gelu_fwd"} and set(unfused) == {"smlp.mix_fwd"}
    assert sum(fused.values()) == sum(unfused.values())
