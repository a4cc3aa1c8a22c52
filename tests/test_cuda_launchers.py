"""Argument checks of the raw CUDA launchers (_C.cuda_*), which run before any CUDA call: on
any machine with a CUDA build, GPU or not. Pointers here are fake; valid arguments reach the
CUDA runtime, which on a machine without a GPU fails with its own error string.

Skips without the extension, unless SMLP_REQUIRE_EXTENSION=1 (CI).
"""

from __future__ import annotations

import os
import re

import pytest
import torch

from smlp_kernels import _extension

REQUIRE_EXTENSION = os.environ.get("SMLP_REQUIRE_EXTENSION") == "1"
F32, F64, F16, BF16 = 0, 1, 2, 3
PTR = 256  # never dereferenced: every case here fails before a launch


@pytest.fixture(scope="module")
def ext():
    module = _extension.load_extension()
    if module is None:
        reason = _extension.extension_status()[1]
        if REQUIRE_EXTENSION:
            pytest.fail(f"SMLP_REQUIRE_EXTENSION=1 but the extension is unavailable: {reason}")
        pytest.skip(f"extension unavailable: {reason}")
    return module


@pytest.fixture(scope="module")
def cuda_ext(ext):
    if not ext.build_info()["with_cuda"]:
        pytest.skip("the extension was built without CUDA")
    return ext


def contiguous(*shape: int) -> tuple[int, ...]:
    strides, s = [], 1
    for n in reversed(shape):
        strides.append(s)
        s *= n
    return tuple(reversed(strides))


def arg(shape, dtype=BF16, strides=None, ptr=PTR):
    return (ptr, dtype, tuple(shape), tuple(strides or contiguous(*shape)))


def mix_fwd_args(b=2, c=4, c_out=6, h=5, w=7, dtype=BF16):
    return {
        "x": arg((b, c, h, w), dtype),
        "row_weight": arg((w, w), dtype),
        "row_bias": arg((w,), dtype),
        "col_weight": arg((h, h), dtype),
        "col_bias": None,
        "f_id": arg((c_out, c), dtype),
        "f_row": arg((c_out, c), dtype, strides=(1, c_out)),  # a transposed view is fine
        "f_col": arg((c_out, c), dtype),
        "y": arg((b, c_out, h, w), dtype),
    }


def mix_wgrad_args(b=2, c=4, c_out=6, h=5, w=7, dtype=F16):
    a = mix_fwd_args(b, c, c_out, h, w, dtype)
    del a["y"]
    return {
        "g": arg((b, c_out, h, w), dtype),
        **a,
        "d_fuse": arg((c_out, 3 * c), F32),
        "d_row_weight": arg((w, w), F32),
        "d_row_bias": arg((w,), F32),
        "d_col_weight": arg((h, h), F32),
        "d_col_bias": arg((h,), F32),
    }


FWD_CASES = [
    pytest.param({"x": arg((2, 4, 5, 7), F64)}, "x: float64 is not supported", id="float64"),
    pytest.param({"x": arg((2, 4, 5, 7), 9)}, "x: unknown dtype code 9", id="dtype-code"),
    pytest.param({"x": arg((2, 4, 5))}, "x: expected 4 dimensions", id="rank"),
    pytest.param({"row_weight": arg((7, 6))}, "row_weight: expected shape (W, W)", id="rw"),
    pytest.param({"col_bias": arg((5,), F16)}, "col_bias: dtype float16, expected", id="dtype"),
    pytest.param({"f_id": arg((6,))}, "f_id: expected shape (C_out, C)", id="f_id-rank"),
    pytest.param({"f_col": arg((5, 4))}, "f_col: expected shape (C_out, C) = (6, 4)", id="f_col"),
    pytest.param({"y": arg((2, 6, 5, 7), strides=(0, 35, 7, 1))}, "y: an output", id="y-alias"),
    pytest.param({"y": arg((2, 6, 5, 7), ptr=0)}, "y: null data pointer", id="null"),
    pytest.param(
        {"row_weight": arg((7, 7), strides=(-7, 1))}, "row_weight: strides must be >= 0", id="neg"
    ),
]


@pytest.mark.parametrize("change, message", FWD_CASES)
def test_mix_fwd_rejects(cuda_ext, change, message):
    args = {**mix_fwd_args(), **change}
    with pytest.raises(ValueError, match=r"^cuda_mix_fwd: ") as raised:
        cuda_ext.cuda_mix_fwd(**args)
    assert message in str(raised.value)


@pytest.mark.parametrize("h, w, what", [(5, 129, "W = 129"), (200, 7, "H = 200")])
def test_sizes_above_128_are_rejected(cuda_ext, h, w, what):
    pattern = re.escape(f"x: {what} is out of range 1..128")
    with pytest.raises(ValueError, match=pattern):
        cuda_ext.cuda_mix_fwd(**mix_fwd_args(h=h, w=w))
    with pytest.raises(ValueError, match=pattern):
        cuda_ext.cuda_mix_wgrad(**mix_wgrad_args(h=h, w=w))


WGRAD_CASES = [
    pytest.param({"d_fuse": arg((6, 12), F16)}, "d_fuse: dtype float16, expected float32", id="f"),
    pytest.param({"d_row_bias": arg((5,), F32)}, "d_row_bias: expected shape (W,)", id="rb"),
    pytest.param({"g": arg((2, 4, 5, 7), F16)}, "g: expected shape (B, C_out, H, W)", id="g"),
    pytest.param({"x": arg((2, 4, 5, 7), BF16)}, "row_weight: dtype float16", id="mixed"),
]


@pytest.mark.parametrize("change, message", WGRAD_CASES)
def test_mix_wgrad_rejects(cuda_ext, change, message):
    args = {**mix_wgrad_args(), **change}
    with pytest.raises(ValueError, match=r"^cuda_mix_wgrad: ") as raised:
        cuda_ext.cuda_mix_wgrad(**args, deterministic=True)
    assert message in str(raised.value)


def test_axis_launchers_reject(cuda_ext):
    x = arg((2, 3, 5, 7))
    with pytest.raises(ValueError, match=r"axis: must be 3 .* or 2"):
        cuda_ext.cuda_axis_mix_fwd(x, arg((7, 7)), None, x, 1)
    with pytest.raises(ValueError, match=r"weight: expected shape \(H, H\) = \(5, 5\)"):
        cuda_ext.cuda_axis_mix_fwd(x, arg((7, 7)), None, x, 2)
    with pytest.raises(ValueError, match=r"d_weight: expected shape \(W, W\)"):
        cuda_ext.cuda_axis_mix_wgrad(x, x, arg((5, 5), F32), arg((7,), F32), 3)
    with pytest.raises(ValueError, match="d_bias: dtype bfloat16, expected float32"):
        cuda_ext.cuda_axis_mix_wgrad(x, x, arg((5, 5), F32), arg((5,)), 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")
def test_valid_arguments_reach_the_cuda_runtime(cuda_ext):
    """Past the checks, the launcher's first CUDA call fails without a GPU: RuntimeError
    naming the launcher and carrying the runtime's own error string."""
    runtime_error = cuda_ext.cuda_runtime_info()["error"]
    assert runtime_error
    calls = [
        ("cuda_mix_fwd", lambda: cuda_ext.cuda_mix_fwd(**mix_fwd_args())),
        ("cuda_mix_wgrad", lambda: cuda_ext.cuda_mix_wgrad(**mix_wgrad_args())),
        (
            "cuda_axis_mix_fwd",
            lambda: cuda_ext.cuda_axis_mix_fwd(
                arg((1, 2, 3, 4)), arg((4, 4)), None, arg((1, 2, 3, 4)), 3
            ),
        ),
    ]
    for name, call in calls:
        with pytest.raises(RuntimeError) as raised:
            call()
        assert str(raised.value).startswith(f"{name}: ")
        assert runtime_error in str(raised.value)


def test_without_cuda_the_launchers_raise(ext):
    if ext.build_info()["with_cuda"]:
        pytest.skip("the extension was built with CUDA")
    with pytest.raises(RuntimeError, match="built without CUDA"):
        ext.cuda_mix_fwd(**mix_fwd_args())
