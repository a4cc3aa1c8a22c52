"""The reference against independent formulations, and its explicit backward against autograd."""

from __future__ import annotations

import pytest
import torch

from smlp_kernels import reference as R

# (C, C_out, H, W)
CASES = [
    pytest.param(3, 3, 5, 7, id="C3-Co3-H5-W7"),
    pytest.param(1, 1, 1, 1, id="C1-Co1-H1-W1"),
    pytest.param(4, 2, 13, 6, id="C4-Co2-H13-W6"),
    pytest.param(2, 5, 7, 57, id="C2-Co5-H7-W57"),
    pytest.param(8, 8, 14, 14, id="C8-Co8-H14-W14"),
]


def make_args(b, c, c_out, h, w, dtype=torch.float64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    return (
        rand(b, c, h, w),
        rand(w, w),
        rand(w) if bias else None,
        rand(h, h),
        rand(h) if bias else None,
        rand(c_out, 3 * c),
    )


def smlp_mix_loops(x, row_weight, row_bias, col_weight, col_bias, fuse_weight):
    """The op (README, The op) as explicit sums over the mixed index, one output at a time."""
    h_, w_ = x.shape[2:]
    r = torch.zeros_like(x)
    k = torch.zeros_like(x)
    for h in range(h_):
        for w in range(w_):
            r[:, :, h, w] = sum(row_weight[w, v] * x[:, :, h, v] for v in range(w_)) + row_bias[w]
            k[:, :, h, w] = sum(col_weight[h, u] * x[:, :, u, w] for u in range(h_)) + col_bias[h]
    cat = torch.cat([x, r, k], dim=1)  # SPACH's order: identity, row mix, column mix
    return torch.einsum("oc,bchw->bohw", fuse_weight, cat)


@pytest.mark.parametrize("c, c_out, h, w", CASES)
def test_matches_spach_style_fp64(c, c_out, h, w):
    args = make_args(2, c, c_out, h, w)
    torch.testing.assert_close(
        R.smlp_mix_ref(*args), R.smlp_mix_spach_style(*args), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("c, c_out, h, w", CASES[:3])
def test_matches_explicit_sums_fp64(c, c_out, h, w):
    args = make_args(2, c, c_out, h, w)
    torch.testing.assert_close(R.smlp_mix_ref(*args), smlp_mix_loops(*args), rtol=1e-12, atol=1e-12)


def test_row_mix_mixes_along_w_and_col_mix_along_h():
    """SPACH's trap: proj_h (our row_weight) mixes the W axis, proh_w (col_weight) the H axis."""
    h, w = 3, 5
    x = torch.zeros(1, 1, h, w, dtype=torch.float64)
    x[0, 0, 1, 2] = 1.0  # one token at row 1, column 2
    row = R.row_mix_ref(x, torch.ones(w, w, dtype=torch.float64))
    col = R.col_mix_ref(x, torch.ones(h, h, dtype=torch.float64))
    # Row mix spreads the token over its row only, column mix over its column only.
    assert row[0, 0].nonzero().tolist() == [[1, j] for j in range(w)]
    assert col[0, 0].nonzero().tolist() == [[i, 2] for i in range(h)]


def test_bias_layout():
    x = torch.zeros(1, 2, 3, 4, dtype=torch.float64)
    row_bias = torch.arange(4.0, dtype=torch.float64)
    col_bias = torch.arange(3.0, dtype=torch.float64)
    r = R.row_mix_ref(x, torch.eye(4, dtype=torch.float64), row_bias)
    k = R.col_mix_ref(x, torch.eye(3, dtype=torch.float64), col_bias)
    assert torch.equal(r[0, 1], row_bias.expand(3, 4))  # bias indexed by w
    assert torch.equal(k[0, 1], col_bias[:, None].expand(3, 4))  # bias indexed by h


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("c, c_out, h, w", CASES)
def test_explicit_backward_matches_autograd(c, c_out, h, w, bias):
    args = [
        t.requires_grad_() if t is not None else None
        for t in make_args(2, c, c_out, h, w, bias=bias)
    ]
    y = R.smlp_mix_ref(*args)
    grad = torch.randn_like(y)
    y.backward(grad)
    got = R.smlp_mix_bwd_ref(grad, *[t.detach() if t is not None else None for t in args])
    for name, tensor in zip(R.SMLPMixGrads._fields, args, strict=True):
        if tensor is None:
            continue
        torch.testing.assert_close(
            getattr(got, name),
            tensor.grad,
            rtol=1e-10,
            atol=1e-10,
            msg=lambda m, name=name: f"{name}: {m}",
        )
    if not bias:
        # The bias gradients are returned anyway: sums of the mixes' upstream gradients.
        f_row, f_col = args[5].detach().split(c, dim=1)[1:]
        gr = torch.einsum("oc,bohw->bchw", f_row, grad)
        gk = torch.einsum("oc,bohw->bchw", f_col, grad)
        torch.testing.assert_close(got.row_bias, gr.sum((0, 1, 2)))
        torch.testing.assert_close(got.col_bias, gk.sum((0, 1, 3)))


@pytest.mark.parametrize("op", ["row", "col"])
def test_axis_mix_backward_matches_autograd(op):
    fwd, bwd = (
        (R.row_mix_ref, R.row_mix_bwd_ref) if op == "row" else (R.col_mix_ref, R.col_mix_bwd_ref)
    )
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    n = 7 if op == "row" else 5
    weight = torch.randn(n, n, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(n, dtype=torch.float64, requires_grad=True)
    y = fwd(x, weight, bias)
    grad = torch.randn_like(y)
    y.backward(grad)
    got = bwd(grad, x.detach(), weight.detach())
    torch.testing.assert_close(got.x, x.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.weight, weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.bias, bias.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"]
)
def test_low_precision_computes_in_x_dtype(dtype):
    args = make_args(2, 4, 3, 6, 5)
    x = args[0].to(dtype)
    # float32 parameters with a low-precision x: cast to x's dtype, output in x's dtype.
    params = [t.float() for t in args[1:]]
    y = R.smlp_mix_ref(x, *params)
    assert y.dtype == dtype
    want = R.smlp_mix_ref(x.double(), *[p.double() for p in params])
    # Generous only in proportion to the dtype's precision: 8 ulps of the output's scale.
    eps = torch.finfo(dtype).eps
    assert (y.double() - want).abs().max() <= 8 * eps * want.abs().max()


def test_spach_style_block_is_spach_layout():
    block = R.SpachStyleSMLPBlock(4, 3, 5)
    shapes = {k: tuple(v.shape) for k, v in block.state_dict().items()}
    assert shapes["proj_h.weight"] == (5, 5, 1, 1)
    assert shapes["proh_w.weight"] == (3, 3, 1, 1)
    assert shapes["fuse.weight"] == (4, 12, 1, 1)
    assert "fuse.bias" not in shapes
