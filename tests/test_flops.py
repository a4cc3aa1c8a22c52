"""FLOP formulas of the custom ops: ``FlopCounterMode`` reports the README's counts for
every op and backward op, whichever backend runs (the formula belongs to the op, and the
backend's own work inside it is not counted twice), and the whole-model counts of
sMLPNet-T/S/B at 224x224 (4.99G, 10.31G, 13.99G multiply-adds), forward and backward.
"""

from __future__ import annotations

import pytest
import torch
from _helpers import backend_params, make_args, skip_unless_supported
from torch.utils.flop_counter import FlopCounterMode

import smlp_kernels
from smlp_kernels import flops
from smlp_kernels.models import smlpnet_base, smlpnet_small, smlpnet_tiny

BACKENDS = backend_params()


def _by_op(counter: FlopCounterMode) -> dict[str, int]:
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_smlp_mix_forward_and_backward(backend, device):
    b, c, c_out, h, w = 2, 3, 4, 5, 6
    args = make_args(b, c, c_out, h, w, device=device, requires_grad=True)
    skip_unless_supported(backend, "mix", args[0], c_out)
    with FlopCounterMode(display=False) as counter:
        y = smlp_kernels.smlp_mix(*args, backend=backend)
    # The README's count, written out: the row and column mixes, then the (C_out x 3C) fuse.
    forward = 2 * b * c * h * w * (w + h) + 2 * b * h * w * 3 * c * c_out
    assert _by_op(counter) == {"smlp.mix_fwd": forward}
    with FlopCounterMode(display=False) as counter:
        y.backward(torch.ones_like(y))
    # Input and weight gradients (2x forward) plus recomputing r and k.
    backward = 2 * forward + 2 * b * c * h * w * (w + h)
    assert _by_op(counter) == {"smlp.mix_bwd": backward}
    assert flops.smlp_mix_flops(b, c, c_out, h, w) == forward
    assert flops.smlp_mix_bwd_flops(b, c, c_out, h, w) == backward


@pytest.mark.parametrize("op", ["row_mix", "col_mix"])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_axis_mix_forward_and_backward(backend, device, op):
    b, c, h, w = 2, 3, 5, 6
    mixed = w if op == "row_mix" else h
    x = torch.randn(b, c, h, w, device=device, requires_grad=True)
    skip_unless_supported(backend, op, x, c)
    weight = torch.randn(mixed, mixed, device=device, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        y = getattr(smlp_kernels, op)(x, weight, backend=backend)
    forward = 2 * b * c * h * w * mixed
    assert _by_op(counter) == {f"smlp.{op}_fwd": forward}
    with FlopCounterMode(display=False) as counter:
        y.sum().backward()
    assert _by_op(counter) == {f"smlp.{op}_bwd": 2 * forward}


ZOO = {
    "tiny": (smlpnet_tiny, 80, (2, 8, 14, 2), 4.99),
    "small": (smlpnet_small, 96, (2, 10, 24, 2), 10.31),
    "base": (smlpnet_base, 112, (2, 10, 24, 2), 13.99),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_whole_model_forward_and_backward_at_224(name):
    """Counted on the meta device (shapes only, no arithmetic), so all three sizes are cheap:
    the paper's multiply-adds for the forward, and the sMLP ops' own share of the forward and
    backward equal to the formula summed over the blocks."""
    build, dim, depths, giga_macs = ZOO[name]
    with torch.device("meta"):
        model = build().train()
    x = torch.empty(1, 3, 224, 224, device="meta")
    with FlopCounterMode(display=False) as counter:
        y = model(x)
    assert round(counter.get_total_flops() / 2 / 1e9, 2) == giga_macs
    forward = _by_op(counter)
    with FlopCounterMode(display=False) as counter:
        y.sum().backward()
    backward = _by_op(counter)
    want_fwd = want_bwd = 0
    for i, depth in enumerate(depths):
        c, side = dim * 2**i, 224 // 4 // 2**i
        want_fwd += depth * flops.smlp_mix_flops(1, c, c, side, side)
        want_bwd += depth * flops.smlp_mix_bwd_flops(1, c, c, side, side)
    assert forward["smlp.mix_fwd"] == want_fwd
    assert backward["smlp.mix_bwd"] == want_bwd
    assert "smlp.mix_fwd" not in backward  # the backward recomputes r, k inside mix_bwd
