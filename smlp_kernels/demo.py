"""``python -m smlp_kernels.demo``: run the op and the drop-in module, and say what happened.

It checks each available backend (but those that run only when named, such as the Triton
interpreter) against the float64 reference on the four sMLPNet-T stage
shapes (at a small batch), swaps SparseMLP into a SPACH-style model with
:func:`smlp_kernels.convert_spach` and compares outputs and gradients, and times a forward
pass of each backend against the SPACH-style eager block on this machine.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from . import SparseMLP, backends, convert_spach, smlp_mix
from ._validation import int_arg
from .bench.timing import time_calls
from .reference import SpachStyleSMLPBlock, smlp_mix_ref
from .registry import get_backend

# sMLPNet-T stages at 224x224: (channels, height = width).
TINY_STAGES = ((80, 56), (160, 28), (320, 14), (640, 7))


def _median_ms(fn, repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls of fn after one warm-up call."""
    return 1e3 * time_calls({"fn": fn}, repeats, warmup=1)["fn"].median_s


class _SpachStyleNet(nn.Module):
    """Two SPACH-named ``sMLPBlock``s in a row, standing in for a user's SPACH model."""

    def __init__(self, channels: int, side: int) -> None:
        super().__init__()
        block_type = type("sMLPBlock", (SpachStyleSMLPBlock,), {})
        self.blocks = nn.Sequential(block_type(channels, side), block_type(channels, side))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m smlp_kernels.demo", description=__doc__.splitlines()[0]
    )
    # Both >= 1: batch 0 leaves no element to compare (the error ratio is 0/0), and 0
    # repeats leaves no time to take the median of.
    parser.add_argument("--batch", type=int_arg(1), default=2, help="batch size, >= 1 (default 2)")
    parser.add_argument(
        "--repeats", type=int_arg(1), default=5, help="timed repeats, >= 1 (default 5)"
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dev_name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    # Backends that run only when named (the Triton interpreter, a testing aid: minutes
    # per check) are left out.
    usable = [n for n, s in backends().items() if s.available and get_backend(n).auto_select]
    print(f"device: {dev_name}; backends available: {', '.join(usable)}")
    ok = True

    print(f"\n1. smlp_mix against the float64 reference, fp32, batch {args.batch}:")
    for c, side in TINY_STAGES:
        x = torch.randn(args.batch, c, side, side, device=device)
        params = [
            torch.randn(side, side, device=device) / side**0.5,
            torch.randn(side, device=device),
            torch.randn(side, side, device=device) / side**0.5,
            torch.randn(side, device=device),
            torch.randn(c, 3 * c, device=device) / (3 * c) ** 0.5,
        ]
        want = smlp_mix_ref(x.double(), *[p.double() for p in params])
        for name in usable:
            got = smlp_mix(x, *params, backend=name)
            err = ((got.double() - want).abs().max() / want.abs().max()).item()
            good = err < 1e-5
            ok &= good
            print(
                f"   C={c:<4} H=W={side:<3} {name:<10} max rel. error {err:.1e}  "
                f"{'ok' if good else 'TOO LARGE'}"
            )

    c, side = 32, 14
    # float64, so that TF32 convolutions on a GPU do not blur the comparison.
    print(f"\n2. convert_spach on a SPACH-style model (2 sMLPBlocks, C={c}, H=W={side}, fp64):")
    spach = _SpachStyleNet(c, side).to(device, torch.float64).train()
    ours = convert_spach(_SpachStyleNet(c, side).to(device, torch.float64).train())
    ours.load_state_dict(spach.state_dict(), strict=True)
    kinds = sorted({type(m).__name__ for m in ours.blocks})
    print(f"   blocks now: {', '.join(kinds)}; state_dict loaded with strict=True")
    x = torch.randn(args.batch, c, side, side, device=device, dtype=torch.float64)
    x.requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y_spach, y_ours = spach(x), ours(x2)
    grad = torch.randn_like(y_spach)
    y_spach.backward(grad)
    y_ours.backward(grad)
    out_err = (y_ours - y_spach).abs().max().item()
    grad_err = max(
        (a.grad - b.grad).abs().max().item()
        for a, b in zip(spach.parameters(), ours.parameters(), strict=True)
    )
    x_err = (x2.grad - x.grad).abs().max().item()
    good = max(out_err, grad_err, x_err) < 1e-9
    ok &= good
    print(
        f"   train-mode forward+backward vs SPACH-style: output {out_err:.1e}, input grad "
        f"{x_err:.1e}, parameter grads {grad_err:.1e}  {'ok' if good else 'TOO LARGE'}"
    )

    c, side = TINY_STAGES[1]
    print(
        f"\n3. forward time, SparseMLP vs SPACH-style eager, fp32, B={args.batch}, C={c}, "
        f"H=W={side}, on {dev_name} (median of {args.repeats}):"
    )
    block = SpachStyleSMLPBlock(c, side).to(device).eval()
    x = torch.randn(args.batch, c, side, side, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.no_grad():
        base = _median_ms(lambda: (block(x), sync()), args.repeats)
        print(f"   SPACH-style eager  {base:8.3f} ms")
        for name in usable:
            mod = SparseMLP(c, side, backend=name).to(device).eval()
            mod.load_state_dict(block.state_dict())
            t = _median_ms(lambda mod=mod: (mod(x), sync()), args.repeats)
            print(f"   SparseMLP {name:<9}{t:8.3f} ms  ({base / t:.2f}x)")
    print("\nall checks passed" if ok else "\nSOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
