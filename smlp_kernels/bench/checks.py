"""Inputs of the cases, and the check that every provider's answer is right before it is timed.

The rule (a tolerance with a reason): a provider's output or gradient may differ
from the float64 reference by at most ``2 * e_torch + rel_atol * max|ref|``, where
``e_torch`` is the error of the pure-PyTorch reference computed in the case's own dtype
(PyTorch's own low-precision error on these inputs) and ``rel_atol`` a small per-dtype
allowance (:data:`REL_ATOL`). A provider that fails the check is reported as failed and
never timed, so no table shows a fast wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..reference import smlp_mix_bwd_ref, smlp_mix_ref
from .cases import Case
from .meta import cudnn_tf32_allowed, fp32_matmul_may_use_tf32

__all__ = [
    "GRAD_NAMES",
    "REL_ATOL",
    "CheckResult",
    "OpChecker",
    "OpInputs",
    "check_model_logits",
    "compare",
    "make_op_inputs",
    "model_inputs",
    "rel_atol",
]

GRAD_NAMES = ("x", "row_weight", "row_bias", "col_weight", "col_bias", "fuse_weight")

# Allowance relative to max|ref|, on top of twice PyTorch's own error in the dtype.
REL_ATOL = {"fp64": 1e-9, "fp32": 1e-4, "fp16": 1e-3, "bf16": 4e-3}


def rel_atol(dtype: str, device: torch.device) -> float:
    """REL_ATOL, widened for float32 on CUDA when PyTorch may use TF32 (its defaults let
    cuDNN convolutions, the SPACH-style baseline, use TF32)."""
    tf32 = cudnn_tf32_allowed() or fp32_matmul_may_use_tf32()
    if dtype == "fp32" and device.type == "cuda" and tf32:
        return 5e-3
    return REL_ATOL[dtype]


@dataclass
class OpInputs:
    """The tensors of an op case: the six arguments of smlp_mix and an upstream gradient."""

    args: list[Tensor]  # x (B,C,H,W), row_weight (W,W), row_bias (W,), col_weight (H,H),
    #                     col_bias (H,), fuse_weight (C_out, 3C)
    grad: Tensor  # (B, C_out, H, W)


def make_op_inputs(case: Case, device: torch.device, seed: int = 0) -> OpInputs:
    """Random inputs for an op case, scaled as a trained layer's would be (outputs of order 1)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    b, c, o, h, w = case.batch, case.channels, case.out_channels, case.height, case.width

    def randn(*shape: int, scale: float = 1.0) -> Tensor:
        t = torch.randn(shape, generator=gen, device=device) * scale
        return t.to(case.torch_dtype)

    args = [
        randn(b, c, h, w),
        randn(w, w, scale=w**-0.5),
        randn(w, scale=0.1),
        randn(h, h, scale=h**-0.5),
        randn(h, scale=0.1),
        randn(o, 3 * c, scale=(3 * c) ** -0.5),
    ]
    return OpInputs(args, randn(b, o, h, w))


@dataclass
class CheckResult:
    """The outcome of comparing one provider's answers with the reference."""

    passed: bool
    worst: str  # the name of the tensor with the largest err / tol
    max_err: float  # max |answer - ref| of that tensor
    tol: float  # its tolerance
    detail: str  # a one-line summary


def compare(
    answers: dict[str, Tensor],
    refs: dict[str, Tensor],
    torch_errs: dict[str, float],
    atol_rel: float,
) -> CheckResult:
    """Check every named answer against its float64 reference with the module's rule."""
    worst: tuple[float, str, float, float] | None = None
    for name, ans in answers.items():
        ref = refs[name]
        if ans.shape != ref.shape:
            return CheckResult(
                False, name, float("inf"), 0.0, f"{name}: shape {tuple(ans.shape)} != {ref.shape}"
            )
        err = (ans.double() - ref).abs().max().item() if ref.numel() else 0.0
        scale = max(ref.abs().max().item() if ref.numel() else 0.0, 1e-30)
        tol = 2 * torch_errs[name] + atol_rel * scale
        ratio = err / tol if tol > 0 else (0.0 if err == 0 else float("inf"))
        if err != err:  # NaN
            ratio = float("inf")
        if worst is None or ratio > worst[0]:
            worst = (ratio, name, err, tol)
    assert worst is not None
    ratio, name, err, tol = worst
    passed = ratio <= 1.0
    detail = f"{name}: max err {err:.3g} {'<=' if passed else '>'} tol {tol:.3g}"
    return CheckResult(passed, name, err, tol, detail)


class OpChecker:
    """The float64 reference answers of one op group, and PyTorch's own errors in its dtype."""

    def __init__(self, inputs: OpInputs, dtype: str, device: torch.device, modes: set[str]):
        self.atol_rel = rel_atol(dtype, device)
        args64 = [t.double() for t in inputs.args]
        low = list(inputs.args)
        self.refs: dict[str, Tensor] = {}
        self.errs: dict[str, float] = {}
        with torch.no_grad():
            if "fwd" in modes or "fwd+bwd" in modes:
                self._add("y", smlp_mix_ref(*args64), smlp_mix_ref(*low))
            if "bwd" in modes or "fwd+bwd" in modes:
                ref = smlp_mix_bwd_ref(inputs.grad.double(), *args64)
                lowp = smlp_mix_bwd_ref(inputs.grad, *low)
                for name in GRAD_NAMES:
                    self._add(f"d_{name}", getattr(ref, name), getattr(lowp, name))

    def _add(self, name: str, ref: Tensor, low: Tensor) -> None:
        self.refs[name] = ref
        self.errs[name] = (low.double() - ref).abs().max().item() if ref.numel() else 0.0

    def check(self, answers: dict[str, Tensor]) -> CheckResult:
        return compare(answers, self.refs, self.errs, self.atol_rel)


def check_model_logits(
    logits: Tensor, ref64: Tensor, low: Tensor, dtype: str, device: torch.device
) -> CheckResult:
    """A model's logits for the first images against a float64 reference model's."""
    err = (low.double() - ref64).abs().max().item()
    return compare({"logits": logits}, {"logits": ref64}, {"logits": err}, rel_atol(dtype, device))


def model_inputs(
    case: Case, image_size: int, num_classes: int, device: torch.device, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """(images (B, 3, S, S) in the case's dtype, integer class targets (B,))."""
    gen = torch.Generator(device=device).manual_seed(seed)
    images = torch.randn((case.batch, 3, image_size, image_size), generator=gen, device=device)
    target = torch.randint(0, num_classes, (case.batch,), generator=gen, device=device)
    return images.to(case.torch_dtype), target
