"""The backend registry: which implementations of the ops exist, which can run, and which runs.

A backend implements four primitives (:class:`Backend`: the fused mix, its weight
gradients, an axis mix and its weight gradients), and may override an optional fifth (the
mix with SPACH's BN -> GELU prologue applied to its input), for tensors the op layer has
already validated. The op layer (:mod:`smlp_kernels.ops`) owns everything else: argument checks,
empty batches, output dtype and memory format, the device guard, and every backward, which
it composes from the primitives. So a new backend plugs in with :func:`register_backend` and
nothing in the public API changes. The built-in backends are registered in one place, the
package's ``__init__``.

Choosing a backend for a call: an explicit ``backend=`` argument wins, then the environment
variable ``SMLP_BACKEND``; either one is *forced* and fails loudly if that backend cannot run
the call. Otherwise the available backend with the highest ``priority`` that supports the
tensor's device type and shape runs it; ``reference`` supports everything and comes last.
A backend with ``auto_select = False`` (the Triton interpreter, a testing aid) runs only when
forced.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from ._validation import dtype_name

__all__ = [
    "Backend",
    "BackendStatus",
    "backends",
    "get_backend",
    "register_backend",
    "resolve_backend",
]

ENV_VAR = "SMLP_BACKEND"


@dataclass(frozen=True)
class BackendStatus:
    """What :func:`backends` reports for one backend."""

    name: str
    available: bool
    reason: str  # why it is unavailable; a short description when it is available
    device_types: tuple[str, ...]  # tensor device types it runs on, e.g. ("cuda",)
    priority: int  # higher wins in automatic selection


class Backend(ABC):
    """One implementation of the ops: four primitives, and plain data saying where they run.

    The op layer composes every op from the primitives: ``smlp_mix`` is :meth:`mix`, its
    backward is :meth:`mix` again with transposed weights and no biases (the input gradient)
    plus :meth:`mix_wgrad`; ``row_mix`` and ``col_mix`` are :meth:`axis_mix` and
    :meth:`axis_wgrad` the same way. So a backend never writes a backward.

    An optional fifth primitive, :meth:`mix_bn_gelu`, is the forward of
    ``bn_gelu_smlp_mix``: :meth:`mix` of ``gelu(x * scale[c] + shift[c])``, SPACH's
    BN -> GELU prologue with BatchNorm as a per-channel affine map. Its default is the
    unfused composition (:func:`smlp_kernels.reference.bn_gelu`, then :meth:`mix`); a
    backend that applies the prologue inside its kernel overrides it and sets
    :attr:`fused_prologue`. Its backward is composed by the op layer (the prologue's
    gradients from the input gradient of :meth:`mix`, the weight gradients from
    :meth:`mix_wgrad` of the recomputed prologue), so it needs no backward primitive either.

    Every primitive receives arguments that passed :mod:`smlp_kernels._validation` and a
    non-empty batch: dense tensors with **any strides, zero strides included** (an expanded
    x, the upstream gradient of ``y.sum()``, transposed weight views); a backend that needs
    dense memory makes its own copy. ``g`` has x's dtype; parameters (``scale`` and
    ``shift`` included) are in x's dtype or float32. On CUDA, x's device is the current
    device when a primitive runs (the op layer sets it), and work goes on that device's
    current stream. Outputs may have any strides; ``y`` and ``dx`` are in x's dtype, weight
    gradients in x's dtype or wider (float32 for 16-bit x); the op layer casts each result
    to its dtype and memory format.
    """

    name: str = ""
    device_types: tuple[str, ...] = ()  # tensor device types it runs on; "*" for any
    dtypes: tuple[torch.dtype, ...] = ()  # the dtypes of x it computes in
    max_side: int | None = None  # the largest H and W it takes; None for any
    priority: int = 0  # higher wins in automatic selection
    auto_select: bool = True  # False: runs only when asked for by name (backend= or env)
    # True: mix_bn_gelu applies the prologue inside the kernel and never materialises
    # gelu(BN(x)); False: the default mix_bn_gelu, which computes it first, then mix.
    fused_prologue: bool = False

    def availability(self) -> tuple[bool, str]:
        """(available, reason). Called once per process and cached by the registry."""
        return True, "available"

    def unsupported_reason(self, op: str, x: Tensor, out_channels: int) -> str | None:
        """Why this backend cannot run ``op`` ("mix", "row_mix", "col_mix") on x, or None.
        ``bn_gelu_smlp_mix`` asks for "mix": :meth:`mix_bn_gelu` has the limits of :meth:`mix`.

        Answered from :attr:`dtypes` and :attr:`max_side`; a subclass with other limits
        extends it.
        """
        if x.dtype not in self.dtypes:
            names = ", ".join(dtype_name(d) for d in self.dtypes)
            return f"the {self.name} kernels compute in {names}, not {dtype_name(x.dtype)}"
        h, w = x.shape[-2:]
        if self.max_side is not None and (h > self.max_side or w > self.max_side):
            return f"H = {h}, W = {w}: the {self.name} kernels take H, W <= {self.max_side}"
        return None

    # Tensor arguments as documented in each docstring (optional ones: Tensor or None).
    @abstractmethod
    def mix(self, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col) -> Tensor:
        """``y = F_id x + F_row R(x) + F_col K(x)``, R and K the row and column mixes with
        their biases. x (B, C, H, W); row_weight (W, W); col_weight (H, H); biases (W,),
        (H,) or None; f_id, f_row, f_col (C_out, C): the column blocks of fuse_weight, or
        their transposes. Returns (B, C_out, H, W)."""

    @abstractmethod
    def mix_wgrad(self, g, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col,
                  deterministic: bool) -> tuple[Tensor, ...]:  # fmt: skip
        """The weight gradients of :meth:`mix` given ``g = dL/dy`` (B, C_out, H, W):
        ``(d_fuse (C_out, 3C), d_row_weight, d_row_bias, d_col_weight, d_col_bias)``, bias
        gradients whether or not the biases are None. ``deterministic``: bitwise the same
        from run to run."""

    def mix_grads(self, g, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col,
                  deterministic: bool) -> tuple[Tensor, ...]:  # fmt: skip
        """Every gradient of :meth:`mix` given ``g``: ``(dx, *mix_wgrad(...))``, dx in x's
        dtype.

        This default composes the primitives: dx is :meth:`mix` on g with the transposed
        weights and no biases, then :meth:`mix_wgrad`. A backend whose weight-gradient kernel
        computes ``F^T g`` anyway (the cpu backend) overrides it to get dx from there.
        """
        dx = self.mix(g, row_weight.t(), None, col_weight.t(), None, f_id.t(), f_row.t(),
                      f_col.t())  # fmt: skip
        wgrads = self.mix_wgrad(g, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row,
                                f_col, deterministic)  # fmt: skip
        return (dx, *wgrads)

    def mix_bn_gelu(self, x, scale, shift, row_weight, row_bias, col_weight, col_bias,
                    f_id, f_row, f_col) -> Tensor:  # fmt: skip
        """:meth:`mix` of ``x' = gelu(x[b,c,h,w] * scale[c] + shift[c])`` (exact, erf GELU).

        scale, shift: (C,), in x's dtype or float32; the other arguments as in :meth:`mix`.
        The prologue computes in float32 (float64 for a float64 x) and x' is rounded to x's
        dtype before the mix, as :func:`smlp_kernels.reference.bn_gelu` does: a fused kernel
        rounds there too, so that it gives the unfused result. Returns (B, C_out, H, W).

        This default is the unfused composition; a backend with :attr:`fused_prologue`
        overrides it.
        """
        from .reference import bn_gelu  # the reference imports this module

        x_act = bn_gelu(x, scale, shift)
        return self.mix(x_act, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col)

    @abstractmethod
    def axis_mix(self, x: Tensor, weight: Tensor, bias: Tensor | None, axis: int) -> Tensor:
        """The row mix (axis 3: ``out[b,c,h,w] = sum_v weight[w,v] x[b,c,h,v] + bias[w]``)
        or the column mix (axis 2: ``out[b,c,h,w] = sum_u weight[h,u] x[b,c,u,w] + bias[h]``)."""

    @abstractmethod
    def axis_wgrad(
        self, g: Tensor, x: Tensor, axis: int, deterministic: bool
    ) -> tuple[Tensor, Tensor]:
        """``(d_weight, d_bias)`` of :meth:`axis_mix` given ``g`` (B, C, H, W)."""


_REGISTRY: dict[str, Backend] = {}
_AVAILABILITY: dict[str, tuple[bool, str]] = {}
# Bumped by every registration: traced code reads it, so a compiled graph that baked in an
# availability answer is guarded on it and traced again after a backend is (re)registered.
_GENERATION = 0


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend under ``backend.name``."""
    global _GENERATION
    if not backend.name:
        raise ValueError("register_backend: the backend needs a non-empty name")
    for attr in ("device_types", "dtypes"):
        if not getattr(backend, attr):
            raise ValueError(
                f"register_backend: backend {backend.name!r} declares no {attr}: set it to what "
                f"the kernels take (e.g. dtypes = (torch.float32,), device_types = ('cuda',))"
            )
    _REGISTRY[backend.name] = backend
    _AVAILABILITY.pop(backend.name, None)
    _GENERATION += 1


def _availability(name: str) -> tuple[bool, str]:
    if name not in _AVAILABILITY:
        try:
            _AVAILABILITY[name] = _REGISTRY[name].availability()
        except Exception as exc:  # a broken optional dependency must not break the package
            _AVAILABILITY[name] = (False, f"availability check failed: {exc!r}")
    return _AVAILABILITY[name]


# The first availability check of a process may run while torch.compile or torch.export is
# tracing the caller (a model compiled before anything else ran). The checks import modules
# (the extension, triton) through importlib, which dynamo refuses to trace. Marked as a
# constant, they run as plain Python at trace time and their answer is baked into the graph.
# A backend's availability is cached for the process; only a new registration changes it,
# and the generation argument makes dynamo guard on that.
@torch.compiler.assume_constant_result
def _is_available(name: str, generation: int) -> bool:
    return _availability(name)[0]


@torch.compiler.assume_constant_result
def _unavailable_reason(name: str, generation: int) -> str:
    return _availability(name)[1]


def get_backend(name: str, *, source: str = "backend=") -> Backend:
    """The registered backend called ``name``; ValueError listing the known names otherwise.

    ``source`` says in the message where the name came from. TypeError if ``name`` is not
    a string.
    """
    if not isinstance(name, str):
        raise TypeError(
            f"{source}{name!r}: the backend must be a str naming a registered backend or None, "
            f"got {type(name).__name__}"
        )
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(
            f"{source}{name!r}: unknown backend; registered backends: {known}"
        ) from None


def backends() -> dict[str, BackendStatus]:
    """Every registered backend's status: whether it can run here and, if not, why."""
    out = {}
    for name, b in sorted(_REGISTRY.items(), key=lambda kv: -kv[1].priority):
        available, reason = _availability(name)
        out[name] = BackendStatus(name, available, reason, b.device_types, b.priority)
    return out


def _runs_on(backend: Backend, device_type: str) -> bool:
    return "*" in backend.device_types or device_type in backend.device_types


def resolve_backend(requested: str | None, op: str, x: Tensor, out_channels: int) -> str:
    """The name of the backend that runs ``op`` on ``x``.

    ``requested`` (or, when it is None, the ``SMLP_BACKEND`` environment variable) forces a
    backend: ValueError if it is unknown or cannot run this device or shape, RuntimeError if it
    is unavailable here, TypeError if it is not a string. With neither, the best available
    backend that can run the call.
    """
    forced = requested if requested is not None else (os.environ.get(ENV_VAR) or None)
    device_type = x.device.type
    if forced is not None:
        source = "backend=" if requested is not None else f"the environment variable {ENV_VAR}="
        b = get_backend(forced, source=source)
        if not _is_available(forced, _GENERATION):
            reason = _unavailable_reason(forced, _GENERATION)
            raise RuntimeError(f"{source}{forced!r} is unavailable here: {reason}")
        if not _runs_on(b, device_type):
            raise ValueError(
                f"{source}{forced!r} runs on {', '.join(b.device_types)} tensors, "
                f"but x is on {x.device}"
            )
        why_not = b.unsupported_reason(op, x, out_channels)
        if why_not is not None:
            raise ValueError(f"{source}{forced!r} cannot run {op} on this input: {why_not}")
        return forced
    for name, b in sorted(_REGISTRY.items(), key=lambda kv: -kv[1].priority):
        if (
            b.auto_select
            and _is_available(name, _GENERATION)
            and _runs_on(b, device_type)
            and b.unsupported_reason(op, x, out_channels) is None
        ):
            return name
    raise RuntimeError(f"no registered backend can run {op} on {x.device}")
