"""torch.autocast: the public ops run in the autocast dtype while float32 parameters stay
float32, as nn.Linear does (output in the autocast dtype, every gradient in its tensor's own
dtype); float64 is left alone; the custom ops called directly compute in the dtypes they are
given. CPU bfloat16 autocast runs here; CUDA float16/bfloat16 autocast needs a GPU.
"""

from __future__ import annotations

import pytest
import torch
from _helpers import (
    HAS_CUDA,
    backend_devices,
    make_args,
    small_smlpnet,
    unsupported,
)

import smlp_kernels
from smlp_kernels import reference as R
from smlp_kernels import registry

SHAPE = (2, 4, 5, 6, 7)  # B, C, C_out, H, W: H != W, C_out != C


def _autocast_cases(device_type: str, dtypes):
    """(backend, device, autocast dtype) for every backend here that computes in that dtype
    on that device type."""
    out = []
    for backend, device in backend_devices():
        if device != device_type:
            continue
        for dtype in dtypes:
            x = torch.empty(1, 1, 1, 1, dtype=dtype, device=device)
            if unsupported(backend, "mix", x, 1) is None:
                name = str(dtype).removeprefix("torch.")
                out.append(pytest.param(backend, device, dtype, id=f"{backend}-{name}"))
    return out


CPU_CASES = _autocast_cases("cpu", [torch.bfloat16])
CUDA_CASES = _autocast_cases("cuda", [torch.float16, torch.bfloat16]) or [
    pytest.param(None, "cuda", None, marks=pytest.mark.skip(reason="needs a CUDA device"))
]


def _leaves(args):
    return [None if t is None else t.detach().clone().requires_grad_() for t in args]


def _grads(leaves):
    return [None if t is None else t.grad for t in leaves]


def _check_like_linear(backend, device, dtype):
    """One forward and backward under autocast against the same op given an x already cast
    (outside autocast): the same bits, the autocast dtype out, float32 gradients back."""
    args = make_args(*SHAPE, device=device)
    grad = torch.randn(SHAPE[0], SHAPE[2], SHAPE[3], SHAPE[4], device=device)

    ours = _leaves(args)
    with torch.autocast(device, dtype=dtype):
        y = smlp_kernels.smlp_mix(*ours, backend=backend)
    assert y.dtype == dtype
    y.float().backward(grad)
    assert all(t.dtype == torch.float32 for t in ours)  # nothing was cast in place
    assert all(t.grad.dtype == torch.float32 for t in ours), [t.grad.dtype for t in ours]

    # The same computation spelled out: x cast by hand, float32 parameters as they are.
    manual = _leaves(args)
    y_manual = smlp_kernels.smlp_mix(manual[0].to(dtype), *manual[1:], backend=backend)
    y_manual.float().backward(grad)
    assert torch.equal(y, y_manual)
    for name, got, want in zip(R.SMLPMixGrads._fields, _grads(ours), _grads(manual), strict=True):
        assert torch.equal(got, want), name

    # nn.Linear, the model to follow, does the same with dtypes.
    linear = torch.nn.Linear(3, 2, device=device)
    xl = torch.randn(4, 3, device=device, requires_grad=True)
    with torch.autocast(device, dtype=dtype):
        out = linear(xl)
    out.float().sum().backward()
    assert (out.dtype, xl.grad.dtype, linear.weight.grad.dtype) == (
        y.dtype,
        ours[0].grad.dtype,
        ours[1].grad.dtype,
    )

    # Accuracy against the float64 truth on the same (rounded) x: within 2x PyTorch's own
    # error in that dtype (the reference computed in it) plus a small atol.
    x_low = args[0].to(dtype)
    truth = R.smlp_mix_ref(x_low.double(), *[None if t is None else t.double() for t in args[1:]])
    pytorch = R.smlp_mix_ref(x_low, *args[1:])
    err = (y.double() - truth).abs().max()
    base = (pytorch.double() - truth).abs().max()
    assert err <= 2 * base + 1e-3 * truth.abs().max(), (err, base)


@pytest.mark.parametrize("backend, device, dtype", CPU_CASES)
def test_cpu_autocast_runs_in_autocast_dtype_with_fp32_parameters(backend, device, dtype):
    _check_like_linear(backend, device, dtype)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("backend, device, dtype", CUDA_CASES)
def test_cuda_autocast_runs_in_autocast_dtype_with_fp32_parameters(backend, device, dtype):
    # Deterministic mode: on a GPU the weight gradients are otherwise summed with atomics,
    # whose order (and so the last bits) varies between the two runs compared bit for bit.
    with smlp_kernels.deterministic():
        _check_like_linear(backend, device, dtype)


def test_autocast_saves_fp32_parameters_not_copies():
    """The parameters reach the autograd graph as they are (float32, no per-call copy); x is
    saved in the autocast dtype (the cast is the one new tensor)."""
    args = make_args(*SHAPE, requires_grad=True)
    saved = []
    with (
        torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16),
    ):
        smlp_kernels.smlp_mix(*args, backend="reference")
    params = [s for s in saved if s.dtype == torch.float32]
    assert sorted(p.data_ptr() for p in params) == sorted(a.data_ptr() for a in args[1:])
    [x_saved] = [s for s in saved if s.dtype == torch.bfloat16]
    assert x_saved.shape == args[0].shape


@pytest.mark.parametrize("op", ["row_mix", "col_mix"])
def test_cpu_autocast_row_and_col_mix(op):
    n = SHAPE[4] if op == "row_mix" else SHAPE[3]
    x = torch.randn(2, 3, SHAPE[3], SHAPE[4], requires_grad=True)
    weight = torch.randn(n, n, requires_grad=True)
    bias = torch.randn(n, requires_grad=True)
    fn = getattr(smlp_kernels, op)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fn(x, weight, bias)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert (x.grad.dtype, weight.grad.dtype, bias.grad.dtype) == (torch.float32,) * 3
    assert torch.equal(y, fn(x.detach().bfloat16(), weight.detach(), bias.detach()))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_float64_is_left_alone(backend):
    if not smlp_kernels.backends()[backend].available:
        pytest.skip(f"{backend} is unavailable here")
    args = make_args(*SHAPE, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = smlp_kernels.smlp_mix(*args, backend=backend)
    assert y.dtype == torch.float64
    assert torch.equal(y, smlp_kernels.smlp_mix(*args, backend=backend))


def test_float16_is_cast_like_pytorch_does():
    """PyTorch's autocast casts every float16/bfloat16/float32 tensor (not float64) to its
    dtype: a float16 x and float16 parameters run in bfloat16 under bfloat16 autocast, and
    their gradients come back in float16."""
    args = _leaves(make_args(*SHAPE, dtype=torch.float16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = smlp_kernels.smlp_mix(*args)
        assert torch.mm(args[1], args[1]).dtype == torch.bfloat16  # PyTorch's own rule
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert all(t.grad.dtype == torch.float16 for t in args)
    want = smlp_kernels.smlp_mix(*[t.detach().bfloat16() for t in args])
    assert torch.equal(y, want)


def test_low_precision_x_in_autocast_dtype_is_not_copied():
    x = torch.randn(2, 3, 4, 5).bfloat16()
    seen = []
    with (
        torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t) or t, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16),
    ):
        smlp_kernels.row_mix(x, torch.randn(5, 5, requires_grad=True))
    assert any(s is x for s in seen)


def test_automatic_choice_and_forced_backend_under_cpu_autocast():
    """Under bfloat16 autocast the automatic choice is the C++ cpu backend where it is built
    (it computes in bfloat16 too), and forcing it gives the automatic choice's result."""
    args = make_args(*SHAPE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chosen = registry.resolve_backend(None, "mix", args[0].bfloat16(), SHAPE[2])
        assert unsupported(chosen, "mix", args[0].bfloat16(), SHAPE[2]) is None
        if smlp_kernels.backends()["cpu"].available:
            assert chosen == "cpu"
            forced = smlp_kernels.smlp_mix(*args, backend="cpu")
            assert forced.dtype == torch.bfloat16
            assert torch.equal(forced, smlp_kernels.smlp_mix(*args))


def test_custom_op_called_directly_ignores_autocast():
    """torch.ops.smlp.* have no autocast policy: a float32 x is computed in float32, and the
    reference's einsums inside the op are not recast to bfloat16 by the caller's autocast."""
    args = make_args(*SHAPE)
    want = torch.ops.smlp.mix_fwd(*args, "reference")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = torch.ops.smlp.mix_fwd(*args, "reference")
        g = torch.ones_like(got)
        grads = torch.ops.smlp.mix_bwd(g, *args, "reference")
    assert got.dtype == torch.float32
    assert torch.equal(got, want)
    for name, a, b in zip(
        R.SMLPMixGrads._fields, grads, torch.ops.smlp.mix_bwd(g, *args, "reference"), strict=True
    ):
        assert a.dtype == torch.float32 and torch.equal(a, b), name


def test_backward_inside_autocast_matches_backward_outside():
    args = make_args(*SHAPE)
    inside, outside = _leaves(args), _leaves(args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        smlp_kernels.smlp_mix(*inside).float().square().sum().backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = smlp_kernels.smlp_mix(*outside)
    y.float().square().sum().backward()
    for name, a, b in zip(R.SMLPMixGrads._fields, _grads(inside), _grads(outside), strict=True):
        assert torch.equal(a, b), name


def test_sparse_mlp_model_trains_under_cpu_autocast():
    """A model of SparseMLP blocks: bfloat16 activations in the sMLP op, float32 parameters
    and gradients, one optimizer step changes every parameter."""
    model = small_smlpnet("reference", "cpu").train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dtypes = []
    hook = model.token_mix[0][1].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(torch.randn(2, 3, 32, 32)).float().square().mean()
    loss.backward()
    opt.step()
    hook.remove()
    assert dtypes == [torch.bfloat16]
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name
        assert not torch.equal(p.detach(), before[name]), name


def test_compile_fullgraph_follows_autocast_state():
    """Under torch.compile the autocast queries become guarded constants: one compiled
    function gives the float32 result outside autocast and the bfloat16 one inside, both
    equal to eager, with no graph break."""
    torch._dynamo.reset()
    args = make_args(*SHAPE)

    def f(x, *params):
        return smlp_kernels.smlp_mix(x, *params, backend="reference")

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    y32 = compiled(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = compiled(*args)
        want16 = f(*args)
    assert y32.dtype == torch.float32 and y16.dtype == torch.bfloat16
    torch.testing.assert_close(y32, f(*args))
    assert torch.equal(y16, want16)

    def g(x, *params):  # the autocast region inside the compiled function
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return smlp_kernels.smlp_mix(x, *params, backend="reference")

    leaves = _leaves(args)
    out = torch.compile(g, fullgraph=True, backend="aot_eager")(*leaves)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(t.grad.dtype == torch.float32 for t in leaves)
    assert torch.equal(out, want16)
