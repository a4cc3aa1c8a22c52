"""Argument checks: the one place where bad input becomes a clear exception.

Rules of the ops (documented in the README):

* ``x`` is a 4-D floating tensor (float16, bfloat16, float32 or float64) of shape
  (B, C, H, W) with B >= 0 and C, H, W >= 1; any strides.
* Every tensor is a dense (strided) tensor: sparse and nested tensors are rejected.
* Every parameter is on x's device, and its dtype is x's dtype or float32 (float32 master
  weights with a low-precision x, as under mixed precision). The op computes in x's dtype
  and returns x's dtype.
* Shapes: row_weight (W, W), row_bias (W,) or None, col_weight (H, H), col_bias (H,) or None,
  fuse_weight (C_out, 3C) with C_out >= 1; for ``bn_gelu_smlp_mix`` also scale (C,) and
  shift (C,), parameters like the others (never None).
* Values are not checked: NaN and infinities pass through to the outputs.

Sizes given to constructors (channels, height, image_size, ...): any integral number that
``operator.index`` accepts (int, numpy and torch integers), never a bool, and >= 1 (counts
such as a stage depth: >= 0); see :func:`check_size`.

Wrong types and dtypes raise TypeError; wrong ranks, shapes, devices and sizes raise
ValueError. Each message names the argument and what was expected.

The command-line numbers and lists of ``smlp-bench`` and the demo are checked by the argparse
types at the end (:func:`int_arg`, :func:`float_arg`, ...), so a bad one stops the command
with argparse's message and exit status 2 before anything runs.
"""

from __future__ import annotations

import argparse
import math
import operator
from collections.abc import Callable

import torch
from torch import Tensor

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``, for messages."""
    return str(dtype).removeprefix("torch.")


def _check_dense(t: Tensor, name: str, op: str) -> None:
    # Backends read raw memory through strides: sparse and nested tensors have none.
    if t.is_nested or t.layout != torch.strided:
        kind = "a nested tensor" if t.is_nested else f"layout {t.layout}"
        raise TypeError(f"{op}: {name} must be a dense (strided) tensor; got {kind}")


def _check_x(x: object, op: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    _check_dense(x, "x", op)
    if x.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(dtype_name(d) for d in SUPPORTED_DTYPES)
        raise TypeError(f"{op}: x must have a floating dtype ({names}); got {dtype_name(x.dtype)}")
    if x.dim() != 4:
        raise ValueError(
            f"{op}: x must be 4-D with shape (B, C, H, W); got {x.dim()}-D shape {tuple(x.shape)}"
        )
    _, c, h, w = x.shape
    if c < 1 or h < 1 or w < 1:
        raise ValueError(
            f"{op}: x must have C, H, W >= 1 (B may be 0); got shape (B, C, H, W) = "
            f"{tuple(x.shape)}"
        )
    return x


ANY = -1  # a dimension that may take any size >= 1 (C_out of fuse_weight)


def _check_param(
    t: object,
    name: str,
    expected: tuple[int, ...],
    expected_text: str,
    x: Tensor,
    op: str,
    optional: bool = False,
) -> None:
    if t is None:
        if optional:
            return
        raise TypeError(f"{op}: {name} must be a torch.Tensor of shape {expected_text}, got None")
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    _check_dense(t, name, op)
    if t.dtype not in (x.dtype, torch.float32):
        allowed = (
            "float32, like x"
            if x.dtype == torch.float32
            else f"x's dtype ({dtype_name(x.dtype)}) or float32"
        )
        raise TypeError(f"{op}: {name} must have dtype {allowed}; got {dtype_name(t.dtype)}")
    if t.device != x.device:
        raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}; move both to one")
    shape = tuple(t.shape)
    fits = len(shape) == len(expected) and all(
        n >= 1 if e == ANY else n == e for n, e in zip(shape, expected, strict=False)
    )
    if not fits:
        shown = "(" + ", ".join("any >= 1" if e == ANY else str(e) for e in expected) + ")"
        if len(expected) == 1:
            shown = shown[:-1] + ",)"
        raise ValueError(
            f"{op}: {name} must have shape {expected_text} = {shown} for x of shape "
            f"(B, C, H, W) = {tuple(x.shape)}; got {shape}"
        )


def _check_mix_params(
    x: Tensor,
    row_weight: object,
    row_bias: object,
    col_weight: object,
    col_bias: object,
    fuse_weight: object,
    op: str,
) -> None:
    _, c, h, w = x.shape
    _check_param(row_weight, "row_weight", (w, w), "(W, W)", x, op)
    _check_param(row_bias, "row_bias", (w,), "(W,)", x, op, optional=True)
    _check_param(col_weight, "col_weight", (h, h), "(H, H)", x, op)
    _check_param(col_bias, "col_bias", (h,), "(H,)", x, op, optional=True)
    _check_param(fuse_weight, "fuse_weight", (ANY, 3 * c), "(C_out, 3C)", x, op)


def check_smlp_mix_args(
    x: object,
    row_weight: object,
    row_bias: object,
    col_weight: object,
    col_bias: object,
    fuse_weight: object,
) -> None:
    """Raise TypeError/ValueError unless the arguments of ``smlp_mix`` are consistent."""
    op = "smlp_mix"
    x = _check_x(x, op)
    _check_mix_params(x, row_weight, row_bias, col_weight, col_bias, fuse_weight, op)


def check_bn_gelu_smlp_mix_args(
    x: object,
    scale: object,
    shift: object,
    row_weight: object,
    row_bias: object,
    col_weight: object,
    col_bias: object,
    fuse_weight: object,
) -> None:
    """Raise TypeError/ValueError unless the arguments of ``bn_gelu_smlp_mix`` are
    consistent: those of ``smlp_mix``, and scale and shift of shape (C,) (one value per
    channel of x), dense, on x's device, in x's dtype or float32."""
    op = "bn_gelu_smlp_mix"
    x = _check_x(x, op)
    c = x.shape[1]
    _check_param(scale, "scale", (c,), "(C,)", x, op)
    _check_param(shift, "shift", (c,), "(C,)", x, op)
    _check_mix_params(x, row_weight, row_bias, col_weight, col_bias, fuse_weight, op)


def check_axis_mix_args(op: str, x: object, weight: object, bias: object) -> None:
    """Check the arguments of ``row_mix`` (op="row_mix") or ``col_mix`` (op="col_mix")."""
    x = _check_x(x, op)
    n = x.shape[3] if op == "row_mix" else x.shape[2]
    axis = "W" if op == "row_mix" else "H"
    _check_param(weight, "weight", (n, n), f"({axis}, {axis})", x, op)
    _check_param(bias, "bias", (n,), f"({axis},)", x, op, optional=True)


def _is_bool(value: object) -> bool:
    # bool is an int subclass and a bool tensor has __index__, so operator.index would pass
    # True as 1: a flag given where a size belongs is a bug to report, not a size of one.
    if isinstance(value, bool) or type(value).__name__ in ("bool_", "bool"):
        return True
    return isinstance(value, Tensor) and value.dtype == torch.bool


def check_size(value: object, name: str, where: str, *, minimum: int = 1) -> int:
    """``value`` as a plain int, if it is an integral number (``operator.index``: int, numpy
    and torch integers) other than a bool, and >= ``minimum``.

    Raises TypeError (not integral, or a bool) or ValueError (too small), naming ``where``
    (the class or function) and ``name`` (the argument).
    """
    if _is_bool(value):
        raise TypeError(f"{where}: {name} must be an int, got bool {value!r}")
    try:
        size = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{where}: {name} must be an int, got {type(value).__name__} {value!r}"
        ) from None
    if size < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{where}: {name} must be {what}, got {size}")
    return size


def check_sizes(values: object, name: str, where: str, *, minimum: int = 1) -> tuple[int, ...]:
    """A non-empty sequence of sizes (list, tuple, numpy array, 1-D tensor; each checked as by
    :func:`check_size`), as a tuple of ints."""
    # A string is iterable too, but its characters are never sizes.
    items = None if isinstance(values, (str, bytes)) else _as_list(values)
    if items is None:
        raise TypeError(f"{where}: {name} must be a sequence of ints, got {type(values).__name__}")
    if not items:
        raise ValueError(f"{where}: {name} must hold at least one int, got {values!r}")
    return tuple(check_size(v, f"{name}[{i}]", where, minimum=minimum) for i, v in enumerate(items))


def _as_list(values: object) -> list | None:
    try:
        return list(values)  # type: ignore[call-overload]
    except TypeError:  # not iterable (an int, a 0-d tensor or array)
        return None


def check_probability(value: object, name: str, where: str) -> float:
    """``value`` as a float in [0, 1]: a real number (not a bool, not NaN)."""
    if _is_bool(value):
        raise TypeError(f"{where}: {name} must be a float in [0, 1], got bool {value!r}")
    # float() would parse a string: only numbers are taken.
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{where}: {name} must be a float in [0, 1], got str {value!r}")
    try:
        p = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(
            f"{where}: {name} must be a float in [0, 1], got {type(value).__name__}"
        ) from None
    if not 0.0 <= p <= 1.0:  # NaN fails both comparisons
        raise ValueError(f"{where}: {name} must be in [0, 1], got {p}")
    return p


# --------------------------------------------------------------------------------------------
# Command-line numbers (smlp-bench, the demo): argparse ``type=`` functions. They raise
# argparse.ArgumentTypeError, so argparse prints "PROG: error: argument --NAME: expected ..."
# and exits with status 2 before anything runs.
# --------------------------------------------------------------------------------------------


def _int_range_text(minimum: int, maximum: int | None) -> str:
    if maximum is None:
        return f"an integer >= {minimum}"
    return f"an integer from {minimum} to {maximum}"


def int_arg(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [minimum, maximum] (no maximum when None)."""
    allowed = _int_range_text(minimum, maximum)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
        return value

    return parse


def int_list_arg(minimum: int) -> Callable[[str], list[int]]:
    """An argparse type: comma-separated integers >= minimum, at least one, without repeats."""
    allowed = f"comma-separated integers >= {minimum}"

    def parse(text: str) -> list[int]:
        values: list[int] = []
        for item in csv_arg(text):
            try:
                value = int(item)
            except ValueError:
                value = None
            if value is None or value < minimum:
                where = "" if item == text.strip() else f" in {text!r}"
                raise argparse.ArgumentTypeError(f"expected {allowed}, got {item!r}{where}")
            values.append(value)
        return list(dict.fromkeys(values))  # "8,08" is one size

    return parse


def float_arg(minimum: float, *, strict: bool = False, unit: str = "") -> Callable[[str], float]:
    """An argparse type: a finite number >= minimum (> minimum when ``strict``). NaN and
    infinities are refused: every comparison with NaN is false, so it would slip past the
    checks of the code it reaches."""
    allowed = f"a finite number {'>' if strict else '>='} {minimum:g}"
    if unit:
        allowed += f" ({unit})"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
        return value

    return parse


def csv_arg(text: str) -> list[str]:
    """An argparse type: comma-separated names, at least one, blanks dropped, without repeats.

    An empty list is refused: ``--shapes ""`` (say, an unset shell variable) would otherwise
    mean "no filter" and run everything."""
    items = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items
