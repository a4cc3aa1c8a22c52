"""The public ops under every PyTorch transform, on every backend that runs here.

torch.func.grad, vjp, jacrev, jacfwd, jvp, hessian, vmap (over x, over a parameter, over
both, and around grad), and double backward: each compared with the same transform of the
pure-PyTorch formula in float64 (:mod:`smlp_kernels.reference`, which PyTorch differentiates
and batches natively). Backends that compute in float64 run in float64; the others in
float32, held to twice the reference's own float32 error plus a small allowance, as in the
backend contract. On the Triton interpreter the shapes are the smallest of the file.

The kernel-call counts the README states for each transform are checked on the reference
backend (the op layer is the same for every backend).
"""

from __future__ import annotations

import _helpers
import pytest
import torch
from torch import func

import smlp_kernels
from smlp_kernels import reference as R
from smlp_kernels import registry

BACKENDS = _helpers.backend_params()
N = 2  # members of every vmap
_ATOL = {torch.float64: 1e-12, torch.float32: 1e-6}


def _dtype(backend: str) -> torch.dtype:
    dtypes = registry.get_backend(backend).dtypes
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _randn(*shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _mix_args(b=2, c=3, h=4, w=5):
    # x, row_weight, row_bias, col_weight, col_bias, fuse_weight (C_out = C + 1)
    return [
        _randn(b, c, h, w, seed=1),
        _randn(w, w, seed=2) * w**-0.5,
        _randn(w, seed=3),
        _randn(h, h, seed=4) * h**-0.5,
        _randn(h, seed=5),
        _randn(c + 1, 3 * c, seed=6) * (3 * c) ** -0.5,
    ]


def _prologue_args(b=2, c=3, h=4, w=5):
    x, *params = _mix_args(b, c, h, w)
    return [x, 1 + 0.2 * _randn(c, seed=7), 0.1 * _randn(c, seed=8), *params]


def _axis_args(op, b=2, c=3, h=4, w=5):
    n = w if op == "row_mix" else h
    return [_randn(b, c, h, w, seed=1), _randn(n, n, seed=2) * n**-0.5, _randn(n, seed=3)]


# The op under test, as (ours(backend), the pure-PyTorch formula, argument maker).
OPS = {
    "smlp_mix": (smlp_kernels.smlp_mix, R.smlp_mix_ref, _mix_args),
    "bn_gelu_smlp_mix": (smlp_kernels.bn_gelu_smlp_mix, R.bn_gelu_smlp_mix_ref, _prologue_args),
    "row_mix": (smlp_kernels.row_mix, R.row_mix_ref, lambda **k: _axis_args("row_mix", **k)),
    "col_mix": (smlp_kernels.col_mix, R.col_mix_ref, lambda **k: _axis_args("col_mix", **k)),
}


def _members(t: torch.Tensor, seed: int) -> torch.Tensor:
    """N members around t: t, and t plus noise."""
    return torch.stack([t, t + 0.3 * _randn(*t.shape, seed=seed).to(t)])


def _cotangent(f, args, seed=11):
    with torch.no_grad():
        return _randn(*f(*args).shape, seed=seed).to(args[0])


# Each transform: (f, args) -> a pytree of tensors. f takes the op's tensor arguments.
def _grad_all(f, a):
    g = _cotangent(f, a)
    return func.grad(lambda *p: (f(*p) * g).sum(), argnums=tuple(range(len(a))))(*a)


def _vjp(f, a):
    y, pullback = func.vjp(f, *a)
    return y, pullback(_cotangent(f, a))


def _jacrev(f, a):  # with respect to x and the last weight
    last = len(a) - 1
    return func.jacrev(lambda x, p: f(x, *a[1:last], p), argnums=(0, 1))(a[0], a[last])


def _jacfwd(f, a):  # with respect to x and the first weight after x (and scale, shift)
    return func.jacfwd(lambda x, p: f(x, p, *a[2:]), argnums=(0, 1))(a[0], a[1])


def _jvp(f, a):
    tangents = tuple(_randn(*t.shape, seed=20 + i).to(t) for i, t in enumerate(a))
    return func.jvp(f, tuple(a), tangents)


def _hvp(f, a):  # forward over reverse: jvp of grad
    g = _cotangent(f, a)

    def loss_grad(*p):
        return func.grad(lambda *q: ((f(*q) * g) ** 2).sum(), argnums=tuple(range(len(p))))(*p)

    tangents = tuple(_randn(*t.shape, seed=30 + i).to(t) for i, t in enumerate(a))
    return func.jvp(loss_grad, tuple(a), tangents)[1]


def _grad_of_grad(f, a):  # reverse over reverse, through every argument
    g = _cotangent(f, a)
    v = [_randn(*t.shape, seed=40 + i).to(t) for i, t in enumerate(a)]
    argnums = tuple(range(len(a)))

    def inner(*p):
        grads = func.grad(lambda *q: ((f(*q) * g) ** 2).sum(), argnums=argnums)(*p)
        return sum((gr * vi).sum() for gr, vi in zip(grads, v, strict=True))

    return func.grad(inner, argnums=argnums)(*a)


def _vmap_x(f, a):
    return func.vmap(lambda x: f(x, *a[1:]))(_members(a[0], 50))


def _vmap_last(f, a):  # an ensemble over the last weight (fuse_weight, or the bias), shared x
    return func.vmap(lambda p: f(*a[:-1], p))(_members(a[-1], 51))


def _vmap_x_and_first(f, a):  # x and the first weight (scale, row_weight, weight)
    return func.vmap(lambda x, p: f(x, p, *a[2:]))(_members(a[0], 52), _members(a[1], 53))


def _per_sample_grads(f, a):  # vmap(grad) over the samples of x, weights shared
    g = _cotangent(f, a)

    def loss(x, gi, *p):
        return (f(x[None], *p) * gi[None]).sum()

    argnums = tuple(range(2, len(a) + 1))
    return func.vmap(func.grad(loss, argnums=argnums), in_dims=(0, 0, *[None] * (len(a) - 1)))(
        a[0], g, *a[1:]
    )


def _ensemble_grads(f, a):  # vmap(grad) over members of the last weight
    g = _cotangent(f, a)
    argnums = tuple(range(len(a)))

    def member(p):
        return func.grad(lambda *q: (f(*q[:-1], p + q[-1]) * g).sum(), argnums=argnums)(
            *a[:-1], torch.zeros_like(p)
        )

    return func.vmap(member)(_members(a[-1], 54))


TRANSFORMS = {
    "grad": _grad_all,
    "vjp": _vjp,
    "jacrev": _jacrev,
    "jacfwd": _jacfwd,
    "jvp": _jvp,
    "hvp": _hvp,
    "grad_of_grad": _grad_of_grad,
    "vmap_x": _vmap_x,
    "vmap_weight": _vmap_last,
    "vmap_both": _vmap_x_and_first,
    "per_sample_grads": _per_sample_grads,
    "ensemble_grads": _ensemble_grads,
}


def _leaves(tree) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


def _check(transform: str, op: str, backend: str, device: str) -> None:
    ours_op, ref_op, make = OPS[op]
    slow = _helpers.is_slow(backend, device)
    shape = {"b": 1, "c": 2, "h": 2, "w": 3} if slow else {}
    args64 = [t.to(device) for t in make(**shape)]
    dtype = _dtype(backend)
    args = [t.to(dtype) for t in args64]
    fn = TRANSFORMS[transform]
    ours = _leaves(fn(lambda *p: ours_op(*p, backend=backend), args))
    truth = _leaves(fn(ref_op, args64))
    base = _leaves(fn(ref_op, args))  # PyTorch's own error in this dtype
    assert len(ours) == len(truth) == len(base) > 0
    for i, (o, b, t) in enumerate(zip(ours, base, truth, strict=True)):
        where = f"{op} {transform} output {i}"
        assert o.shape == t.shape, where
        assert o.dtype == b.dtype, where
        assert not torch.isnan(o).any(), f"{where}: NaN"
        err = (o.double() - t).abs().max().item()
        scale = max(t.abs().max().item(), 1e-30)
        allowed = 2 * (b.double() - t).abs().max().item() + _ATOL[dtype] * scale
        if dtype == torch.float32 and device == "cuda":
            allowed += 1e-5 * scale
        assert err <= allowed, f"{where}: error {err:.3g} > allowed {allowed:.3g}"


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_transform_matches_the_reference(backend, device, transform, op):
    if _helpers.is_slow(backend, device) and transform in ("hvp", "grad_of_grad", "jacrev"):
        if op != "smlp_mix":
            pytest.skip("Triton interpreter: second order and jacrev on smlp_mix only (time)")
    _check(transform, op, backend, device)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_gradcheck_and_gradgradcheck_in_float64(backend, device):
    """Double backward (autograd's create_graph) and forward-mode AD, numerically."""
    if _dtype(backend) != torch.float64 or device != "cpu":
        pytest.skip(f"{backend} does not compute in float64 here")
    for op in OPS:
        ours_op, _, make = OPS[op]
        args = [t.requires_grad_() for t in make(b=1, c=2, h=3, w=2)]

        def f(*a, op=ours_op):
            return op(*a, backend=backend)

        assert torch.autograd.gradcheck(f, args, check_forward_ad=True), op
        assert torch.autograd.gradgradcheck(f, args), op


# --------------------------------------------------------------------------------------------
# What each transform costs: kernel calls (the README's table), on the reference backend
# --------------------------------------------------------------------------------------------


class _Counter:
    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, tuple]] = []
        be = registry.get_backend("reference")
        for name in ("mix", "mix_wgrad", "axis_mix", "axis_wgrad"):
            real = getattr(be, name)

            def counted(*a, _real=real, _name=name):
                self.calls.append((_name, tuple(a[0].shape)))
                return _real(*a)

            monkeypatch.setattr(be, name, counted)

    def names(self) -> list[str]:
        return sorted(n for n, _ in self.calls)


def test_kernel_calls_per_transform(monkeypatch):
    x, rw, rb, cw, cb, fw = _mix_args()
    b, c, h, w = x.shape

    def f(*a):
        return smlp_kernels.smlp_mix(*a, backend="reference")

    counter = _Counter(monkeypatch)
    # vmap over x: the members fold into the batch, one forward call.
    func.vmap(lambda xx: f(xx, rw, rb, cw, cb, fw))(_members(x, 1))
    assert counter.calls == [("mix", (N * b, c, h, w))]
    # vmap over fuse_weight with x shared: the members stack along C_out, one call.
    counter.calls.clear()
    y = func.vmap(lambda p: f(x, rw, rb, cw, cb, p))(_members(fw, 2))
    assert counter.calls == [("mix", (b, c, h, w))] and y.shape == (N, b, c + 1, h, w)
    # The same for the prologue op (whose reference forward is BN -> GELU, then the mix).
    counter.calls.clear()
    scale, shift = torch.ones(c, dtype=x.dtype), torch.zeros(c, dtype=x.dtype)
    y = func.vmap(
        lambda p: smlp_kernels.bn_gelu_smlp_mix(
            x, scale, shift, rw, rb, cw, cb, p, backend="reference"
        )
    )(_members(fw, 2))
    assert counter.calls == [("mix", (b, c, h, w))] and y.shape == (N, b, c + 1, h, w)
    # grad: one forward, then the backward's mix (dx) and mix_wgrad.
    counter.calls.clear()
    func.grad(lambda *p: f(*p).sum(), argnums=tuple(range(6)))(x, rw, rb, cw, cb, fw)
    assert counter.names() == ["mix", "mix", "mix_wgrad"]
    # jvp in x alone: the forward and one more forward of the tangent.
    counter.calls.clear()
    func.jvp(lambda xx: f(xx, rw, rb, cw, cb, fw), (x,), (torch.ones_like(x),))
    assert counter.names() == ["mix", "mix"]
    # jvp in every argument: the forward and three more.
    counter.calls.clear()
    args = (x, rw, rb, cw, cb, fw)
    func.jvp(f, args, tuple(map(torch.ones_like, args)))
    assert counter.names() == ["mix"] * 4
    # per-sample gradients: dx folds into the batch (one call); per-sample weight
    # gradients are batched einsums, no kernel call and no loop.
    counter.calls.clear()
    func.vmap(func.grad(lambda xx: f(xx[None], rw, rb, cw, cb, fw).sum()))(x)
    assert counter.calls == [("mix", (b, c, h, w)), ("mix", (b, c + 1, h, w))]


def test_double_backward_through_autograd():
    """torch.autograd.grad(create_graph=True) twice: the gradient of a gradient norm."""
    args = [t.requires_grad_() for t in _mix_args()]
    ref = [t.detach().clone().requires_grad_() for t in args]
    out = []
    for op, a in (
        (lambda *p: smlp_kernels.smlp_mix(*p, backend="cpu"), args),
        (R.smlp_mix_ref, ref),
    ):
        grads = torch.autograd.grad((op(*a) ** 2).sum(), a, create_graph=True)
        out.append(torch.autograd.grad(sum((g**2).sum() for g in grads), a))
    for got, want in zip(*out, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("which", ["mix_bwd", "mix_bn_gelu_bwd", "row_mix_bwd"])
def test_custom_ops_vmap_directly(which):
    """The vmap rules of the backward ops, called on torch.ops.smlp.* directly: with a batched
    gradient and shared weights (dx folded into the batch), with a batched weight, and with
    both (the batched reference formula); each against the members computed one by one."""
    if which == "row_mix_bwd":
        args, w_index = _axis_args("row_mix"), 1  # the weight
        y_shape = args[0].shape
    else:
        args = _mix_args() if which == "mix_bwd" else _prologue_args()
        w_index = 5 if which == "mix_bwd" else 1  # fuse_weight; scale
        b, c, h, w = args[0].shape
        y_shape = (b, c + 1, h, w)
    op = getattr(torch.ops.smlp, which)
    grads = _randn(N, *y_shape, seed=9)
    weights = _members(args[w_index], 10)

    def call(g, weight):
        a = list(args)
        a[w_index] = weight
        return op(g, *a, "cpu")

    for in_dims in ((0, None), (None, 0), (0, 0)):
        g_arg = grads if in_dims[0] == 0 else grads[1]
        w_arg = weights if in_dims[1] == 0 else weights[1]
        got = func.vmap(call, in_dims=in_dims)(g_arg, w_arg)
        members = [
            call(g_arg[i] if in_dims[0] == 0 else g_arg, w_arg[i] if in_dims[1] == 0 else w_arg)
            for i in range(N)
        ]
        for k, got_k in enumerate(got):
            want_k = torch.stack([m[k] for m in members])
            torch.testing.assert_close(got_k, want_k, rtol=1e-10, atol=1e-12, msg=f"{in_dims} {k}")


@pytest.mark.parametrize("op", ["mix", "row_mix", "col_mix"])
def test_custom_ops_double_backward_directly(op):
    """torch.ops.smlp.*_fwd called directly: their backward ops are differentiable too."""
    if op == "mix":
        args = _mix_args(b=1, c=2, h=3, w=2)
    else:
        args = _axis_args(op, b=1, c=2, h=3, w=2)
    fwd = getattr(torch.ops.smlp, f"{op}_fwd")
    args = [t.requires_grad_() for t in args]
    assert torch.autograd.gradgradcheck(lambda *a: fwd(*a, "cpu"), args)
