"""CPU timings of the reference backend against the SPACH-style eager block (pytest-benchmark).

    python -m pytest benchmarks/test_reference_cpu.py

Shapes: the four sMLPNet-T stages at batch 8, fp32, forward, no grad. These are CPU
timings of pure-PyTorch code: a baseline for the C++ CPU backend, never GPU performance.
The full harness (FLOPs, bytes, roofline, every provider) is a later issue.
"""

from __future__ import annotations

import pytest
import torch

from smlp_kernels import flops
from smlp_kernels.nn import SparseMLP
from smlp_kernels.reference import SpachStyleSMLPBlock

BATCH = 8
STAGES = [
    pytest.param(c, s, id=f"B{BATCH}-C{c}-H{s}-W{s}-fp32")
    for c, s in ((80, 56), (160, 28), (320, 14), (640, 7))
]


@pytest.mark.parametrize("provider", ["spach-eager", "reference"])
@pytest.mark.parametrize("channels, side", STAGES)
def test_forward(benchmark, provider, channels, side):
    torch.manual_seed(0)
    spach = SpachStyleSMLPBlock(channels, side).eval()
    if provider == "spach-eager":
        module = spach
    else:
        module = SparseMLP(channels, side, backend="reference").eval()
        module.load_state_dict(spach.state_dict())
    x = torch.randn(BATCH, channels, side, side)
    with torch.no_grad():
        y = benchmark(module, x)
        torch.testing.assert_close(y, spach(x), rtol=1e-4, atol=1e-4)
    work = flops.smlp_mix_flops(BATCH, channels, channels, side, side)
    benchmark.extra_info["flops"] = work
    benchmark.extra_info["gflop_per_s"] = work / benchmark.stats["median"] / 1e9
