"""A short GPU program for compute-sanitizer: every GPU backend's forward and backward, on
small shapes that reach each kernel's edge cases, checked against the float64 reference.

    compute-sanitizer --tool memcheck python scripts/gpu_sanitize.py
    compute-sanitizer --tool racecheck python scripts/gpu_sanitize.py --quick

The sanitizer reports bad accesses and races itself (and exits non-zero with
``--error-exitcode``); this program also exits 1 when an answer is wrong or NaN, so a run
that the sanitizer passes still has to compute the right thing. Autotuning is off (the
sanitizer makes every launch slow, and a timing loop adds nothing to check).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("SMLP_TRITON_AUTOTUNE", "0")

import torch

import smlp_kernels
from smlp_kernels import reference as R

# (B, C, C_out, H, W): a 7x7 plane, H != W, channel counts off the block sizes, a 1x1 plane.
SHAPES = [(2, 16, 16, 7, 7), (1, 5, 9, 13, 6), (2, 24, 8, 28, 28), (1, 3, 2, 1, 1)]
QUICK = SHAPES[:2]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _args(b, c, co, h, w, dtype, device, gen):
    """[x, row_weight, row_bias, col_weight, col_bias, fuse_weight] and a gradient for y, in
    dtype on device; drawn in float64 and rounded, so the truth is exact for them."""

    def rnd(*shape, scale=1.0):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
        return t.to(dtype).to(device)

    args = [rnd(b, c, h, w), rnd(w, w, scale=w**-0.5), rnd(w), rnd(h, h, scale=h**-0.5),
            rnd(h), rnd(co, 3 * c, scale=(3 * c) ** -0.5)]  # fmt: skip
    return args, rnd(b, co, h, w)


def check(backend: str, shape, dtype_name: str, device: str, gen) -> str | None:
    """None when the forward and every gradient pass the test suite's rule; else why not.

    The rule (as in tests/test_cuda_backend.py): the error against the float64
    truth is at most 2x PyTorch's own error in the same dtype (the reference evaluated in
    that dtype) plus 1e-5 (fp32) or 1e-3 (16-bit) of max|truth|; NaN and inf fail."""
    dtype = DTYPES[dtype_name]
    args, grad = _args(*shape, dtype, device, gen)
    truth = [R.smlp_mix_ref(*(a.double() for a in args)),
             *R.smlp_mix_bwd_ref(grad.double(), *(a.double() for a in args))]  # fmt: skip
    base = [R.smlp_mix_ref(*args), *R.smlp_mix_bwd_ref(grad, *args)]

    leaves = [a.clone().requires_grad_() for a in args]
    y = smlp_kernels.smlp_mix(*leaves, backend=backend)
    y.backward(grad)
    if device == "cuda":
        torch.cuda.synchronize()
    got = [y, *(t.grad for t in leaves)]
    names = ["y", "dx", "d_row_weight", "d_row_bias", "d_col_weight", "d_col_bias",
             "d_fuse_weight"]  # fmt: skip
    atol_scale = 1e-5 if dtype == torch.float32 else 1e-3
    for name, g, t, b in zip(names, got, truth, base, strict=True):
        if g is None:
            return f"{name} is None"
        if not torch.isfinite(g).all():
            return f"{name} has NaN or inf"
        err = (g.double() - t).abs().max().item()
        base_err = (b.double() - t).abs().max().item()
        atol = atol_scale * t.abs().max().item() + 1e-6
        if not err <= 2 * base_err + atol:
            return f"{name}: error {err:.3e} > 2 * {base_err:.3e} + {atol:.3e}"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two shapes only (racecheck)")
    parser.add_argument("--backends", default="cuda,triton,triton_v0")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--device", default="cuda", help="cpu: check the program itself")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_sanitize.py: needs a CUDA device (or --device cpu)", file=sys.stderr)
        return 2
    gen = torch.Generator().manual_seed(0)
    failures = 0
    for backend in args.backends.split(","):
        status = smlp_kernels.backends().get(backend)
        if (
            status is None
            or not status.available
            or not ({args.device, "*"} & set(status.device_types))
        ):
            print(f"FAIL {backend}: cannot run on {args.device} here ({status and status.reason})")
            failures += 1
            continue
        for shape in QUICK if args.quick else SHAPES:
            for dtype_name in args.dtypes.split(","):
                try:
                    why = check(backend, shape, dtype_name, args.device, gen)
                except Exception as exc:  # one case's failure must not hide the others
                    why = f"raised {type(exc).__name__}: {exc}"
                print(f"{'FAIL' if why else 'ok  '} {backend} {dtype_name} {shape} {why or ''}",
                      flush=True)  # fmt: skip
                failures += why is not None
    print(f"gpu_sanitize.py: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
