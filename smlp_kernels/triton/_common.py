"""What every kernel family of the triton backend shares: the JIT helpers the kernels
call (``mm``, ``pairs``, ``unravel``, ``mix_rows``), the dtype and precision rules, and the
launchers' small helpers.

Conventions shared by all kernels:

* every tensor comes with its own strides (any layout: contiguous, channels_last,
  transposed views, expanded tensors), and every offset is computed in int64;
* COMPUTE is the dtype of the matrix-unit operands (x's dtype, or float32 when the
  interpreter must upcast bfloat16); accumulators are always float32;
* PREC is tl.dot's input_precision for float32 operands ("ieee", or "tf32" when PyTorch's
  own TF32 switch is on); 16-bit operands ignore it;
* padded rows and columns are loaded as zero, so they add nothing to any sum.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def mm(a, b, acc, COMPUTE: tl.constexpr, PREC: tl.constexpr):
    """acc + a @ b with float32 accumulation."""
    if COMPUTE == tl.float32:
        return tl.dot(a, b, acc, input_precision=PREC)
    else:
        return tl.dot(a, b, acc)


@triton.jit
def pairs(a0, b0, A, B, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """The flattened tile of index pairs (a, b), a = a0 + [0, BLOCK_A) and b = b0 +
    [0, BLOCK_B), b fastest: (a, b, a < A and b < B), each BLOCK_A * BLOCK_B long. A box of
    pixels (h, w), or the (channel, row) rows of a mix along W, and the like."""
    offs = tl.arange(0, BLOCK_A * BLOCK_B)
    a = a0 + offs // BLOCK_B
    b = b0 + offs % BLOCK_B
    return a, b, (a < A) & (b < B)


@triton.jit
def unravel(i, n_mid, n_inner):
    """Index i of a row-major (n_outer, n_mid, n_inner) grid as (outer, mid, inner)."""
    j = i // n_inner
    return j // n_mid, j % n_mid, i % n_inner


@triton.jit
def mix_rows(acc, x_rows, rows_ok, sxl, w_ptr, sw0, sw1, cols, cols_ok, L,
             BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """acc + the mix along the last axis of some rows of x: acc[r, j] + sum_{k < L}
    x_rows[r][k * sxl] W[cols[j], k], with W[l, k] = w_ptr[l * sw0 + k * sw1]; x_rows are
    the rows' pointers. BLOCK_K columns of x and rows of W^T per product."""
    for k0 in range(0, L, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < L
        xk = tl.load(
            x_rows[:, None] + k.to(tl.int64)[None, :] * sxl,
            mask=rows_ok[:, None] & k_ok[None, :],
            other=0.0,
        ).to(COMPUTE)
        wt = tl.load(
            w_ptr + cols.to(tl.int64)[None, :] * sw0 + k.to(tl.int64)[:, None] * sw1,
            mask=k_ok[:, None] & cols_ok[None, :],
            other=0.0,
        ).to(COMPUTE)
        acc = mm(xk, wt, acc, COMPUTE, PREC)
    return acc


# True when the kernels were defined under the Triton interpreter (TRITON_INTERPRET=1).
INTERPRETED = type(mm).__name__ == "InterpretedFunction"

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def compute_dtype(dtype: torch.dtype):
    """The dtype of the matrix-unit operands. Under the interpreter bfloat16 is computed in
    float32: the interpreter multiplies bfloat16 bit patterns as integers."""
    if INTERPRETED and dtype == torch.bfloat16:
        return tl.float32
    return _TL_DTYPES[dtype]


def precision() -> str:
    """tl.dot input precision for float32 operands: IEEE unless PyTorch allows TF32.

    Reads PyTorch's newer per-backend setting (``torch.backends.cuda.matmul.fp32_precision``,
    torch >= 2.9) first: once it has been set, the legacy getter raises.
    """
    matmul = getattr(torch.backends.cuda, "matmul", None)
    for setting in (
        getattr(matmul, "fp32_precision", None),
        getattr(torch.backends, "fp32_precision", None),
    ):
        if setting == "tf32":
            return "tf32"
        if setting == "ieee":
            return "ieee"
    try:
        return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    except RuntimeError:
        return "ieee"


def empty_like_layout(x: Tensor, channels: int) -> Tensor:
    """An uninitialised (B, channels, H, W) output in x's dtype, channels_last when x is
    (the op layer's output layout, so no copy follows)."""
    fmt = torch.contiguous_format
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        fmt = torch.channels_last
    b, _, h, w = x.shape
    return torch.empty((b, channels, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: few splits keep it fast


def splits(n_work: int, programs_per_split: int, device: torch.device) -> int:
    """How many partial sums a reduction over n_work items is split into: about four
    programs per SM in all, never more splits than items."""
    target = max(1, (4 * num_sms(device)) // max(1, programs_per_split))
    return max(1, min(n_work, target))


def reduction_buffer(shape: tuple[int, ...], n_splits: int, deterministic: bool,
                     device: torch.device) -> Tensor:  # fmt: skip
    """A float32 buffer for a weight-gradient reduction: one slot per split in
    deterministic mode (summed by finish_sum), else one zeroed by the launch (atomics)."""
    lead = (n_splits,) if deterministic else ()
    return torch.empty((*lead, *shape), dtype=torch.float32, device=device)


def finish_sum(buf: Tensor, deterministic: bool) -> Tensor:
    """The reduction's result: the buffer itself (atomics) or the sum of its partials, added
    in a fixed order (PyTorch's reductions are run-to-run deterministic)."""
    return buf.sum(0) if deterministic else buf


def strides4(t: Tensor, axis: int = 3) -> tuple[int, int, int, int]:
    """t's strides, the last two swapped when the mix runs along H (axis 2): the kernels
    mixing along one axis see it as the last one."""
    s = t.stride()
    return (s[0], s[1], s[2], s[3]) if axis == 3 else (s[0], s[1], s[3], s[2])


def strides2(t: Tensor) -> tuple[int, int]:
    return t.stride(0), t.stride(1)


def bias_args(bias: Tensor | None, like: Tensor) -> tuple[Tensor, int]:
    """(pointer, stride) of an optional bias; a placeholder when absent (HAS_* is False)."""
    if bias is None:
        return like, 0  # never read: HAS_* is False
    return bias, bias.stride(0)
