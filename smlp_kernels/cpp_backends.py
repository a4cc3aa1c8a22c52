"""The compiled backends: "cpu" (csrc/cpu, C++ and OpenMP) and "cuda" (csrc/cuda).

Both call the launchers of :mod:`smlp_kernels._C` through one ABI: every tensor crosses the
binding as a ``TensorArg`` tuple ``(data_ptr, dtype_code, sizes, strides)`` (strides in
elements, views passed as they are), optional tensors as None, and the CUDA stream as an
int (0 for the CPU). The launchers write into outputs allocated here:

* ``y`` and ``dx`` in the compute dtype, which is x's dtype (parameters are cast to it);
* weight gradients in float32, or float64 when the compute dtype is float64 (the op layer
  casts them to each parameter's dtype).

The input gradient of every op is its forward launcher applied to the upstream gradient
with transposed weight views and no biases (the README's Design notes). Nothing here imports
``_C`` at import time: availability is checked on first use.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _config, _extension
from .reference import AxisMixGrads, SMLPMixGrads
from .registry import Backend, register_backend

__all__ = ["CpuBackend", "CudaBackend"]

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
MAX_SIDE = 128  # the launchers take 1 <= H, W <= 128


class TensorArg(tuple):
    """(data_ptr, dtype_code, sizes, strides): a tensor as the launchers take it.

    A raw pointer does not keep memory alive, so the TensorArg holds the tensor it points
    into (``owner``): a temporary, such as a parameter cast to x's dtype, lives as long as
    any TensorArg made from it. pybind11 reads it as the plain 4-tuple of the launcher ABI.
    """

    owner: Tensor

    @classmethod
    def of(cls, owner: Tensor, ptr: int, code: int, sizes, strides) -> TensorArg:
        arg = cls((ptr, code, tuple(sizes), tuple(strides)))
        arg.owner = owner
        return arg


def tensor_arg(t: Tensor | None) -> TensorArg | None:
    """``t`` as the launchers take it, or None."""
    if t is None:
        return None
    return TensorArg.of(t, t.data_ptr(), DTYPE_CODES[t.dtype], t.shape, t.stride())


def transposed(arg: TensorArg) -> TensorArg:
    """The TensorArg of the transpose of a 2-D TensorArg (a view: same memory)."""
    ptr, code, (rows, cols), (s0, s1) = arg
    return TensorArg.of(arg.owner, ptr, code, (cols, rows), (s1, s0))


def fuse_blocks(fuse_weight: Tensor, channels: int) -> tuple[TensorArg, TensorArg, TensorArg]:
    """TensorArgs of F_id, F_row, F_col: the (C_out, C) column blocks of fuse_weight.

    Built by pointer arithmetic rather than as tensor views (a view costs microseconds of
    Python per call); each holds fuse_weight.
    """
    ptr, code, (c_out, _), (s0, s1) = tensor_arg(fuse_weight)
    step = channels * s1 * fuse_weight.element_size()
    return tuple(
        TensorArg.of(fuse_weight, ptr + i * step, code, (c_out, channels), (s0, s1))
        for i in range(3)
    )


def _as(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class _CompiledBackend(Backend):
    """The calls shared by the CPU and CUDA backends; subclasses name the launchers."""

    prefix = ""  # launcher name prefix in _C: "cpu" or "cuda"
    dtypes: tuple[torch.dtype, ...] = ()  # compute dtypes the launchers take

    # -- hooks ------------------------------------------------------------------------------

    def _launcher(self, name: str):
        return getattr(_extension.require_extension(), f"{self.prefix}_{name}")

    def _stream(self, x: Tensor) -> int:
        return 0

    def _call(self, x: Tensor, name: str, *args) -> None:
        self._launcher(name)(*args, self._stream(x))

    # -- Backend ----------------------------------------------------------------------------

    def unsupported_reason(self, op: str, x: Tensor, out_channels: int) -> str | None:
        if x.dtype not in self.dtypes:
            names = ", ".join(_dtype_name(d) for d in self.dtypes)
            return f"the {self.name} kernels compute in {names}, not {_dtype_name(x.dtype)}"
        h, w = x.shape[2], x.shape[3]
        if h > MAX_SIDE or w > MAX_SIDE:
            return f"H = {h}, W = {w}: the {self.name} kernels take H, W <= {MAX_SIDE}"
        return None

    @staticmethod
    def _wgrad_dtype(x: Tensor) -> torch.dtype:
        return torch.float64 if x.dtype == torch.float64 else torch.float32

    def mix_fwd(self, x, row_weight, row_bias, col_weight, col_bias, fuse_weight):
        dt = x.dtype
        b, c, h, w = x.shape
        fw = _as(fuse_weight, dt)
        y = torch.empty((b, fw.shape[0], h, w), dtype=dt, device=x.device)
        params = (_as(row_weight, dt), _as(row_bias, dt), _as(col_weight, dt), _as(col_bias, dt))
        self._call(
            x,
            "mix_fwd",
            tensor_arg(x),
            *map(tensor_arg, params),
            *fuse_blocks(fw, c),
            tensor_arg(y),
        )
        return y

    def mix_bwd(self, grad, x, row_weight, row_bias, col_weight, col_bias, fuse_weight):
        dt = x.dtype
        c, h, w = x.shape[1:]
        grad = _as(grad, dt)
        rw, rb, cw, cb = (
            tensor_arg(_as(t, dt)) for t in (row_weight, row_bias, col_weight, col_bias)
        )
        fw = _as(fuse_weight, dt)
        f_id, f_row, f_col = fuse_blocks(fw, c)
        g = tensor_arg(grad)
        dx = torch.empty(x.shape, dtype=dt, device=x.device)
        # dx = the forward applied to g with transposed weights and no biases.
        self._call(
            x,
            "mix_fwd",
            g,
            transposed(rw),
            None,
            transposed(cw),
            None,
            *map(transposed, (f_id, f_row, f_col)),
            tensor_arg(dx),
        )
        gdt = self._wgrad_dtype(x)
        grads = [
            torch.empty(shape, dtype=gdt, device=x.device)
            for shape in (fw.shape, (w, w), (w,), (h, h), (h,))
        ]
        self._call(
            x,
            "mix_wgrad",
            g,
            tensor_arg(x),
            rw,
            rb,
            cw,
            cb,
            f_id,
            f_row,
            f_col,
            *map(tensor_arg, grads),
            _config.is_deterministic(),
        )
        d_fuse, d_rw, d_rb, d_cw, d_cb = grads
        return SMLPMixGrads(
            x=dx, row_weight=d_rw, row_bias=d_rb, col_weight=d_cw, col_bias=d_cb, fuse_weight=d_fuse
        )

    def _axis_fwd(self, x: Tensor, weight: TensorArg, bias: Tensor | None, axis: int) -> Tensor:
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        bias_arg = tensor_arg(_as(bias, x.dtype))
        self._call(x, "axis_mix_fwd", tensor_arg(x), weight, bias_arg, tensor_arg(y), axis)
        return y

    def _axis_bwd(self, grad: Tensor, x: Tensor, weight: Tensor, axis: int) -> AxisMixGrads:
        dt = x.dtype
        grad = _as(grad, dt)
        wt = _as(weight, dt)
        dx = self._axis_fwd(grad, transposed(tensor_arg(wt)), None, axis)
        gdt = self._wgrad_dtype(x)
        n = weight.shape[0]
        d_weight = torch.empty((n, n), dtype=gdt, device=x.device)
        d_bias = torch.empty((n,), dtype=gdt, device=x.device)
        self._call(
            x,
            "axis_mix_wgrad",
            *map(tensor_arg, (grad, x, d_weight, d_bias)),
            axis,
            _config.is_deterministic(),
        )
        return AxisMixGrads(x=dx, weight=d_weight, bias=d_bias)

    def row_mix_fwd(self, x, weight, bias):
        return self._axis_fwd(x, tensor_arg(_as(weight, x.dtype)), bias, 3)

    def row_mix_bwd(self, grad, x, weight):
        return self._axis_bwd(grad, x, weight, 3)

    def col_mix_fwd(self, x, weight, bias):
        return self._axis_fwd(x, tensor_arg(_as(weight, x.dtype)), bias, 2)

    def col_mix_bwd(self, grad, x, weight):
        return self._axis_bwd(grad, x, weight, 2)


class CpuBackend(_CompiledBackend):
    """Fused C++ kernels (csrc/cpu) for CPU tensors: float32 and float64, H, W <= 128.

    OpenMP-parallel over torch's thread count; deterministic (fixed-order sums) always.
    float16 and bfloat16 inputs are left to the reference.
    """

    name = "cpu"
    device_types = ("cpu",)
    priority = 10
    prefix = "cpu"
    dtypes = (torch.float32, torch.float64)

    def availability(self) -> tuple[bool, str]:
        module, reason = _extension.load_extension(), _extension.extension_status()[1]
        if module is None:
            return False, reason
        if not hasattr(module, "cpu_mix_fwd"):
            return False, f"{_extension.EXTENSION_NAME} has no CPU launchers (cpu_mix_fwd)"
        return True, "fused C++/OpenMP kernels (float32, float64)"


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

    def _call(self, x: Tensor, name: str, *args) -> None:
        # The launchers take raw pointers: run them with x's device current.
        with torch.cuda.device(x.device):
            super()._call(x, name, *args)


register_backend(CpuBackend())
register_backend(CudaBackend())
