"""The compiled backends: "cpu" (csrc/cpu, C++ and OpenMP) and "cuda" (csrc/cuda).

Both call the launchers of :mod:`smlp_kernels._C` through one ABI: every tensor crosses the
binding as a tuple ``(data_ptr, dtype_code, sizes, strides)`` (strides in
elements, views passed as they are), optional tensors as None, and the CUDA stream as an
int (0 for the CPU). The launchers write into outputs allocated here:

* ``y`` and ``dx`` in the compute dtype, which is x's dtype (parameters are cast to it);
* weight gradients in float32, or float64 when the compute dtype is float64 (the op layer
  casts them to each parameter's dtype).

The CPU's mix_wgrad also writes dx when given one (``mix_grads``): its kernel computes
``F^T g`` for the spatial weight gradients anyway, and dx needs nothing more but the
transposed spatial mixes.

Nothing here imports ``_C`` at import time: availability is checked on first use.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _extension
from .registry import Backend

__all__ = ["CpuBackend", "CudaBackend"]

# The one Python copy of csrc/tensor.h's DType enum.
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def tensor_arg(t: Tensor | None) -> tuple | None:
    """``t`` as the launchers take it, ``(data_ptr, dtype_code, sizes, strides)``, or None.

    A raw pointer keeps nothing alive: callers hold every tensor they pass (casts included)
    in a local until the launcher returns.
    """
    if t is None:
        return None
    return (t.data_ptr(), DTYPE_CODES[t.dtype], tuple(t.shape), tuple(t.stride()))


def _cast(dtype: torch.dtype, *tensors: Tensor | None) -> list[Tensor | None]:
    """The tensors in ``dtype`` (None stays None); the caller holds the casts while the
    launcher runs."""
    return [t if t is None or t.dtype == dtype else t.to(dtype) for t in tensors]


class _CompiledBackend(Backend):
    """The calls shared by the CPU and CUDA backends; subclasses name the launchers."""

    prefix = ""  # launcher name prefix in _C: "cpu" or "cuda"

    def _call(self, x: Tensor, name: str, *args, **kwargs) -> None:
        launcher = getattr(_extension.require_extension(), f"{self.prefix}_{name}")
        launcher(*args, self._stream(x), **kwargs)

    def _stream(self, x: Tensor) -> int:
        return 0

    # -- Backend ----------------------------------------------------------------------------

    max_side = 128  # the launchers take 1 <= H, W <= 128

    @staticmethod
    def _wgrad_dtype(x: Tensor) -> torch.dtype:
        return torch.float64 if x.dtype == torch.float64 else torch.float32

    def mix(self, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col):
        return self._mix_fwd(x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col)

    def _mix_fwd(self, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col,
                 scale=None, shift=None):  # fmt: skip
        """The mix_fwd launch; with scale and shift (the cpu launcher's fused prologue) in
        float32 (float64 for a float64 x)."""
        # The launchers take every tensor in the compute dtype (x's); the casts are kept in
        # locals, alive until the launch returns.
        dt = x.dtype
        params = _cast(dt, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col)
        prologue = _cast(self._wgrad_dtype(x), scale, shift)
        b, _, h, w = x.shape
        y = torch.empty((b, f_id.shape[0], h, w), dtype=dt, device=x.device)
        kwargs = {} if scale is None else {"scale": tensor_arg(prologue[0]),
                                           "shift": tensor_arg(prologue[1])}  # fmt: skip
        self._call(x, "mix_fwd", *map(tensor_arg, (x, *params, y)), **kwargs)
        return y

    def mix_wgrad(self, g, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col,
                  deterministic, dx=None):  # fmt: skip
        """Backend.mix_wgrad; with ``dx`` (x's shape and dtype, CPU only) the launcher also
        writes the input gradient there."""
        dt = x.dtype
        params = _cast(dt, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col)
        c, h, w = x.shape[1:]
        gdt = self._wgrad_dtype(x)
        grads = [
            torch.empty(shape, dtype=gdt, device=x.device)
            for shape in ((f_id.shape[0], 3 * c), (w, w), (w,), (h, h), (h,))
        ]
        args = map(tensor_arg, (g, x, *params, *grads, dx))
        self._call(x, "mix_wgrad", *args, deterministic)
        return tuple(grads)

    def axis_mix(self, x, weight, bias, axis):
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        weight, bias = _cast(x.dtype, weight, bias)
        self._call(x, "axis_mix_fwd", *map(tensor_arg, (x, weight, bias, y)), axis)
        return y

    def axis_wgrad(self, g, x, axis, deterministic):
        n = x.shape[axis]
        gdt = self._wgrad_dtype(x)
        d_weight = torch.empty((n, n), dtype=gdt, device=x.device)
        d_bias = torch.empty((n,), dtype=gdt, device=x.device)
        args = map(tensor_arg, (g, x, d_weight, d_bias))
        self._call(x, "axis_mix_wgrad", *args, axis, deterministic)
        return d_weight, d_bias


class CpuBackend(_CompiledBackend):
    """Fused C++ kernels (csrc/cpu) for CPU tensors: float32, float64, bfloat16 and float16,
    H, W <= 128.

    OpenMP-parallel over torch's thread count; deterministic (fixed-order sums) always.
    16-bit tensors are computed on in float32 (bfloat16 products with vdpbf16ps where the
    CPU has AVX512-BF16) and rounded once. The instruction set is picked at run time
    (``smlp_kernels._C.cpu_isa()``; SMLP_CPU_ISA forces a level). The BatchNorm -> GELU
    prologue is fused into the forward (``mix_bn_gelu``).
    """

    name = "cpu"
    device_types = ("cpu",)
    priority = 10
    prefix = "cpu"
    dtypes = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    fused_prologue = True

    def mix_bn_gelu(self, x, scale, shift, row_weight, row_bias, col_weight, col_bias,
                    f_id, f_row, f_col):  # fmt: skip
        """Backend.mix_bn_gelu, fused: the launcher computes x' = gelu(x * scale + shift)
        (float32, float64 for a float64 x, rounded to x's dtype) once and packs it for the
        GEMM as it packs x."""
        return self._mix_fwd(x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col,
                             scale, shift)  # fmt: skip

    def mix_grads(self, g, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col,
                  deterministic):  # fmt: skip
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        wgrads = self.mix_wgrad(g, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row,
                                f_col, deterministic, dx=dx)  # fmt: skip
        return (dx, *wgrads)

    def availability(self) -> tuple[bool, str]:
        module, reason = _extension.load_extension(), _extension.extension_status()[1]
        if module is None:
            return False, reason
        if not hasattr(module, "cpu_mix_fwd"):
            return False, f"{_extension.EXTENSION_NAME} has no CPU launchers (cpu_mix_fwd)"
        try:
            isa = module.cpu_isa()["selected"]
        except ValueError as e:  # a bad SMLP_CPU_ISA: every launch will say so
            isa = str(e)
        return True, f"fused C++/OpenMP kernels (float32, float64, bfloat16, float16; {isa})"


class CudaBackend(_CompiledBackend):
    """Fused CUDA kernels (csrc/cuda) for CUDA tensors, H, W <= 128.

    Launched on the current stream of x's device.
    """

    name = "cuda"
    device_types = ("cuda",)
    priority = 20
    prefix = "cuda"
    dtypes = (torch.float16, torch.bfloat16, torch.float32)

    def availability(self) -> tuple[bool, str]:
        module, reason = _extension.load_extension(), _extension.extension_status()[1]
        if module is None:
            return False, reason
        if not module.build_info()["with_cuda"]:
            return False, f"{_extension.EXTENSION_NAME} was built without CUDA"
        if not hasattr(module, "cuda_mix_fwd"):
            return False, f"{_extension.EXTENSION_NAME} has no CUDA launchers (cuda_mix_fwd)"
        if not torch.cuda.is_available():
            return False, "torch sees no CUDA device"
        return True, "fused CUDA kernels (float16, bfloat16, float32)"

    def _stream(self, x: Tensor) -> int:
        return torch.cuda.current_stream(x.device).cuda_stream
