"""Drop-in modules: :class:`SparseMLP`, a replacement for SPACH's ``sMLPBlock``,
:class:`LinearSparseMLP`, one for the ``nn.Linear`` sMLP block of attention-zoo
repositories, and :func:`convert`, which swaps them into an existing model."""

from __future__ import annotations

import copy
import warnings
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ._validation import check_size
from .ops import _autocast_dtype, bn_gelu_smlp_mix, smlp_mix
from .reference import _prologue_dtype, _SpachLayers, smlp_mix_ref
from .registry import get_backend

__all__ = ["Conversion", "LinearSparseMLP", "SparseMLP", "convert", "convert_spach"]


_MISSING: Any = object()  # a size not passed by keyword


def _sizes(sizes: tuple, channels, height, width) -> tuple:
    """(channels, height, width) from SparseMLP's positional sizes and keywords."""
    if len(sizes) > 3:
        raise TypeError(
            f"SparseMLP: takes at most 3 sizes (channels, height, width); got {len(sizes)}"
        )
    given = dict(zip(("channels", "height", "width"), sizes, strict=False))
    keywords = {"channels": channels, "height": height, "width": width}
    for name, value in keywords.items():
        if name in given and value is not (_MISSING if name != "width" else None):
            raise TypeError(f"SparseMLP: got {name} both by position and by keyword")
        if name not in given:
            given[name] = value
    for name in ("channels", "height"):
        if given[name] is _MISSING:
            raise TypeError(f"SparseMLP: missing the size {name} (channels, height, width)")
    return given["channels"], given["height"], given["width"]


class SparseMLP(_SpachLayers):
    """BN -> GELU -> :func:`smlp_kernels.smlp_mix`: SPACH's ``sMLPBlock``, fused.

    In eval mode (the module's and its BN's), with a BatchNorm2d (or SyncBatchNorm) that
    tracks running statistics and an exact GELU (``nn.GELU()``, SPACH's), the forward is one
    op, :func:`smlp_kernels.bn_gelu_smlp_mix`: the BN becomes a per-channel
    ``scale = weight / sqrt(running_var + eps)``, ``shift = bias - running_mean * scale``
    (float32; float64 for a float64 input), applied with the GELU inside the op (inside the
    kernel on backends with ``fused_prologue``). Otherwise (training, where BN needs the
    batch's statistics; another norm or activation; or, under ``torch.autocast``, an input
    that autocast would cast, since the op would round it before the BN) BN and GELU run as
    PyTorch modules before :func:`smlp_kernels.smlp_mix`. Both give BN -> GELU ->
    ``smlp_mix``'s result.

    Its submodules, state_dict keys and shapes are those of SPACH's block, so a SPACH
    checkpoint loads with ``strict=True``:

    * ``BN``: BatchNorm2d(C);
    * ``proj_h``: Conv2d(W, W, 1), weight (W, W, 1, 1). Despite the name it mixes along **W**
      (SPACH applies it to ``x.permute(0, 3, 1, 2)``);
    * ``proh_w`` (sic): Conv2d(H, H, 1), weight (H, H, 1, 1); mixes along **H**;
    * ``fuse``: Conv2d(3C, C, 1, bias=False), weight (C, 3C, 1, 1), over ``[x, row, col]``.

    Unlike SPACH's block, H and W may differ. Input and output: (B, C, H, W).

    Args:
        channels: C.
        height: H, the number of rows.
        width: W, the number of columns; defaults to ``height``.
            Sizes are integral numbers >= 1 (int, numpy or torch integers; not bool): another
            type raises TypeError, a size < 1 ValueError. They may be given by position, in
            this order, or by keyword. SPACH's block takes ``sMLPBlock(W, H, channels)``:
            three positional sizes with channels equal to height and another width (such as
            ``SparseMLP(14, 14, 32)``, SPACH's order for 32 channels on a 14x14 map) raise
            ValueError; a shape like that must be spelled with keywords.
        backend: passed to :func:`smlp_kernels.smlp_mix` and
            :func:`smlp_kernels.bn_gelu_smlp_mix` (None: automatic).
        device, dtype: for the parameters, as in ``torch.nn`` modules.
    """

    def __init__(
        self,
        *sizes: int,
        channels: int = _MISSING,
        height: int = _MISSING,
        width: int | None = None,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        channels, height, width = _sizes(sizes, channels, height, width)
        super().__init__(channels, height, width, "SparseMLP", device, dtype)
        if len(sizes) == 3 and self.channels == self.height != self.width:
            c, h, w = self.channels, self.height, self.width
            raise ValueError(
                f"SparseMLP({c}, {h}, {w}): the sizes are (channels, height, width), but this "
                "looks like SPACH's sMLPBlock(W, H, channels) order (channels equal to height, "
                f"another width). For {w} channels on a {h}x{c} map write "
                f"SparseMLP({w}, {h}, {c}); if you mean channels={c}, height={h}, width={w}, "
                "pass them by keyword"
            )
        if backend is not None:
            get_backend(backend)  # an unknown name fails here, not at the first forward
        self.backend = backend

    @classmethod
    def from_spach(cls, block: nn.Module, *, backend: str | None = None) -> SparseMLP:
        """A SparseMLP that shares ``block``'s submodules (so its parameters, buffers, device,
        dtype, BN settings and activation), with the same train/eval mode.

        ``block`` is SPACH's ``sMLPBlock`` or anything with the same attributes.
        """
        if not _looks_like_spach_block(block):
            raise TypeError(
                "SparseMLP.from_spach: expected a module with BN (BatchNorm2d), proj_h, proh_w "
                f"and fuse (1x1 Conv2d) like SPACH's sMLPBlock; got {type(block).__name__}"
            )
        width = block.proj_h.weight.shape[0]
        height = block.proh_w.weight.shape[0]
        channels = block.BN.num_features
        if tuple(block.fuse.weight.shape) != (channels, 3 * channels, 1, 1):
            raise ValueError(
                f"SparseMLP.from_spach: fuse.weight must have shape (C, 3C, 1, 1) = "
                f"({channels}, {3 * channels}, 1, 1); got {tuple(block.fuse.weight.shape)}"
            )
        # Built on the meta device (no allocation), then given the block's own submodules.
        new = cls(channels=channels, height=height, width=width, backend=backend, device="meta")
        if isinstance(getattr(block, "activation", None), nn.Module):
            new.activation = block.activation
        new.BN = block.BN
        new.proj_h = block.proj_h
        new.proh_w = block.proh_w
        new.fuse = block.fuse
        new.train(block.training)
        return new

    def _eval_prologue(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """(scale, shift) of the BN in eval form when the forward can fuse BN -> GELU into
        the op, else None."""
        bn, act = self.BN, self.activation
        if (
            self.training
            or not isinstance(x, Tensor)
            or not isinstance(bn, (nn.BatchNorm2d, nn.SyncBatchNorm))
            or bn.training  # a BN in train mode uses (and updates) the batch's statistics
            or not bn.track_running_stats
            or bn.running_mean is None
            or bn.running_var is None
            or type(act) is not nn.GELU  # a subclass may compute something else
            or act.approximate != "none"
            # Under autocast the op casts x before the prologue, where the unfused BN and
            # GELU compute in x's own dtype and round only their output; so x in another
            # dtype than autocast's (a float32 x under bfloat16 autocast) stays unfused.
            or _autocast_dtype(x) not in (None, x.dtype)
        ):
            return None
        # F.batch_norm's eval form, in float32 (float64 for float64 x) whatever the BN's dtype.
        dt = _prologue_dtype(x.dtype)
        scale = torch.rsqrt(bn.running_var.to(dt) + bn.eps)
        if bn.weight is not None:
            scale = bn.weight.to(dt) * scale
        shift = -bn.running_mean.to(dt) * scale
        if bn.bias is not None:
            shift = bn.bias.to(dt) + shift
        return scale, shift

    def forward(self, x: Tensor) -> Tensor:
        # torch.jit.script compiles only the branch it takes (is_scripting() is True there),
        # so it refuses the module with NotSupportedError at the ops' keyword-only
        # arguments, as it always did, not with an error about the checks below.
        prologue = None
        if not torch.jit.is_scripting():
            prologue = self._eval_prologue(x)
        if prologue is not None:
            return bn_gelu_smlp_mix(
                x,
                *prologue,
                self.proj_h.weight.flatten(1),
                self.proj_h.bias,
                self.proh_w.weight.flatten(1),
                self.proh_w.bias,
                self.fuse.weight.flatten(1),
                backend=self.backend,
            )
        x = self.activation(self.BN(x))
        return smlp_mix(
            x,
            self.proj_h.weight.flatten(1),
            self.proj_h.bias,
            self.proh_w.weight.flatten(1),
            self.proh_w.bias,
            self.fuse.weight.flatten(1),
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, height={self.height}, width={self.width}, "
            f"backend={self.backend!r}"
        )


def _is_pointwise_conv(m: object, bias: bool) -> bool:
    return (
        isinstance(m, nn.Conv2d)
        and m.kernel_size == (1, 1)
        and m.stride == (1, 1)
        and m.padding in ((0, 0), "valid")
        and m.dilation == (1, 1)
        and m.groups == 1
        and (m.bias is not None) == bias
    )


def _looks_like_spach_block(m: nn.Module) -> bool:
    return (
        isinstance(getattr(m, "BN", None), (nn.BatchNorm2d, nn.SyncBatchNorm))
        and _is_pointwise_conv(getattr(m, "proj_h", None), bias=True)
        and _is_pointwise_conv(getattr(m, "proh_w", None), bias=True)
        and _is_pointwise_conv(getattr(m, "fuse", None), bias=False)
    )


class LinearSparseMLP(nn.Module):
    """:func:`smlp_kernels.smlp_mix` for the sMLP block of attention-zoo repositories, built
    from three ``nn.Linear`` layers and no BN::

        x_h = proj_h(x.permute(0, 1, 3, 2)).permute(0, 1, 3, 2)   # nn.Linear(H, H): mixes H
        x_w = proj_w(x)                                           # nn.Linear(W, W): mixes W
        y = fuse(torch.cat([x_h, x_w, x], 1).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    with ``fuse = nn.Linear(3C, C_out)``, with or without a bias. Same submodules and
    state_dict keys (``proj_h``, ``proj_w``, ``fuse``), so such a block's checkpoint loads
    with ``strict=True``. The fuse weight's column blocks, ordered ``[H mix | W mix | x]``
    here, are reordered to the op's ``[x | row (W) mix | column (H) mix]`` at each call (a
    (C_out, 3C) copy, through which gradients flow to ``fuse.weight``); the fuse bias, which
    the op does not take, is added to the op's output, exactly, with its gradient.

    Args:
        channels, height, width: C, H and W (keyword-only, as integral numbers >= 1);
            ``out_channels``: C_out (default C).
        fuse_bias: whether ``fuse`` has a bias.
        backend, device, dtype: as in :class:`SparseMLP`.
    """

    def __init__(
        self,
        *,
        channels: int,
        height: int,
        width: int,
        out_channels: int | None = None,
        fuse_bias: bool = True,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        where = "LinearSparseMLP"
        channels = check_size(channels, "channels", where)
        height = check_size(height, "height", where)
        width = check_size(width, "width", where)
        out_channels = channels if out_channels is None else check_size(
            out_channels, "out_channels", where
        )  # fmt: skip
        if backend is not None:
            get_backend(backend)
        kw = {"device": device, "dtype": dtype}
        self.channels, self.height, self.width = channels, height, width
        self.backend = backend
        self.proj_h = nn.Linear(height, height, **kw)
        self.proj_w = nn.Linear(width, width, **kw)
        self.fuse = nn.Linear(3 * channels, out_channels, bias=fuse_bias, **kw)

    @classmethod
    def from_block(cls, block: nn.Module, *, backend: str | None = None) -> LinearSparseMLP:
        """A LinearSparseMLP that shares ``block``'s ``proj_h``, ``proj_w`` and ``fuse``
        (parameters, device, dtype), with the same train/eval mode."""
        shapes = _linear_block_shapes(block)
        if shapes is None:
            raise TypeError(
                "LinearSparseMLP.from_block: expected a module with proj_h = nn.Linear(H, H), "
                "proj_w = nn.Linear(W, W) and fuse = nn.Linear(3C, C_out); "
                f"got {type(block).__name__}"
            )
        c, c_out, h, w = shapes
        new = cls(channels=c, height=h, width=w, out_channels=c_out, backend=backend,
                  fuse_bias=block.fuse.bias is not None, device="meta")  # fmt: skip
        new.proj_h, new.proj_w, new.fuse = block.proj_h, block.proj_w, block.fuse
        new.train(block.training)
        return new

    def fuse_weight(self) -> Tensor:
        """The op's (C_out, 3C) fuse weight, ``[x | row mix | column mix]``, from ``fuse``'s
        ``[H mix | W mix | x]``."""
        col, row, ident = self.fuse.weight.split(self.channels, dim=1)
        return torch.cat([ident, row, col], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        y = smlp_mix(
            x,
            self.proj_w.weight,
            self.proj_w.bias,
            self.proj_h.weight,
            self.proj_h.bias,
            self.fuse_weight(),
            backend=self.backend,
        )
        bias = self.fuse.bias
        return y if bias is None else y + bias.to(y.dtype)[:, None, None]

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, height={self.height}, width={self.width}, "
            f"out_channels={self.fuse.out_features}, fuse_bias={self.fuse.bias is not None}, "
            f"backend={self.backend!r}"
        )


def _is_square_linear(m: object) -> bool:
    return isinstance(m, nn.Linear) and m.in_features == m.out_features


def _linear_block_shapes(m: nn.Module) -> tuple[int, int, int, int] | None:
    """(C, C_out, H, W) when m has the zoo block's layers and nothing else, else None."""
    proj_h, proj_w, fuse = (getattr(m, k, None) for k in ("proj_h", "proj_w", "fuse"))
    if not (_is_square_linear(proj_h) and _is_square_linear(proj_w)):
        return None
    if not isinstance(fuse, nn.Linear) or fuse.in_features % 3 != 0:
        return None
    # No other parameters or buffers: anything else (a norm, a scale) would be left out.
    own = {id(t) for mod in (proj_h, proj_w, fuse) for t in (*mod.parameters(), *mod.buffers())}
    if any(id(t) not in own for t in (*m.parameters(), *m.buffers())):
        return None
    return fuse.in_features // 3, fuse.out_features, proj_h.in_features, proj_w.in_features


class Conversion(NamedTuple):
    """One entry of :func:`convert`'s ``report``: a block found in the model, and what
    became of it."""

    name: str  # its qualified name in the model ("" for the model itself)
    kind: str  # "spach" (SPACH's sMLPBlock) or "linear" (the attention-zoo variant)
    converted: bool
    reason: str  # what replaced it, or why it was left alone


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def _has_hooks(m: nn.Module) -> bool:
    return any(getattr(m, d, None) for d in _HOOK_DICTS)


def _carry_hooks(old: nn.Module, new: nn.Module) -> None:
    """Give ``new`` the very hook dictionaries of ``old``: the hooks run on the new block, and
    the handles that registered them still remove them."""
    for d in _HOOK_DICTS:
        if hasattr(old, d):
            setattr(new, d, getattr(old, d))
    new._is_full_backward_hook = getattr(old, "_is_full_backward_hook", None)


def _probe_matches(block: nn.Module, shapes) -> str | None:
    """Run the zoo block's own forward, on a float64 copy of it, and the replacement's
    formula on a small random input (no grad, hooks not called): None when they agree, else
    why not."""
    c, _, h, w = shapes
    device = block.fuse.weight.device
    if device.type == "meta":
        return None  # nothing to compute with: the structure alone decides
    try:
        probe_block = copy.deepcopy(block).to(torch.float64)
    except Exception as e:  # a module that cannot be copied cannot be checked
        return f"it cannot be copied to check its forward: {type(e).__name__}: {e}"
    g = torch.Generator(device="cpu").manual_seed(0)
    probe = torch.randn(2, c, h, w, generator=g, dtype=torch.float64).to(device)
    with torch.no_grad():
        try:
            got = type(probe_block).forward(probe_block, probe)
        except Exception as e:  # any failure means "not this function"
            return f"its forward fails on a (2, {c}, {h}, {w}) input: {type(e).__name__}: {e}"
        proj_h, proj_w, fuse = probe_block.proj_h, probe_block.proj_w, probe_block.fuse
        col, row, ident = fuse.weight.split(c, dim=1)
        want = smlp_mix_ref(
            probe,
            proj_w.weight,
            proj_w.bias,
            proj_h.weight,
            proj_h.bias,
            torch.cat([ident, row, col], dim=1),
        )
        if fuse.bias is not None:
            want = want + fuse.bias[:, None, None]
    if not isinstance(got, Tensor) or got.shape != want.shape:
        return "its forward does not return a (B, C_out, H, W) tensor"
    err = (got.double() - want).abs().max().item()
    if not err <= 1e-9 * max(want.abs().max().item(), 1.0):
        return (
            "its forward computes something else than x_h = proj_h along H, x_w = proj_w "
            f"along W, fuse(cat([x_h, x_w, x])) (max difference {err:.3g} on a random input)"
        )
    return None


def convert(
    model: nn.Module,
    *,
    backend: str | None = None,
    report: list | None = None,
) -> nn.Module:
    """Replace, in place, every block of ``model`` that computes the sMLP token mixing by a
    module that calls this package's op, with the same parameters (shared, not copied), so
    outputs, gradients, devices, dtypes, train/eval mode and optimizer state carry over.

    Recognised blocks:

    * SPACH's ``sMLPBlock`` (class name ``sMLPBlock``; ``BN``, 1x1 Conv2d ``proj_h``,
      ``proh_w``, ``fuse``) becomes a :class:`SparseMLP`;
    * the attention-zoo block (any class name) with ``proj_h = nn.Linear(H, H)`` (applied
      along H), ``proj_w = nn.Linear(W, W)`` (along W), ``fuse = nn.Linear(3C, C_out)`` with
      or without a bias over ``cat([x_h, x_w, x])``, and no other parameters, becomes a
      :class:`LinearSparseMLP`. Before it is replaced, its own forward is run once, on a
      float64 copy and a small random input (no grad, hooks not called), and must agree
      with that formula.

    Forward hooks, forward pre-hooks and backward hooks registered on a block move to its
    replacement (their handles keep working). A block whose *submodules* have hooks is left
    alone, with a warning: the fused op would never call them. So is a module called
    ``sMLPBlock`` that matches neither layout.

    Args:
        model: any module; if it is itself such a block, the replacement is returned.
        backend: passed to every replacement.
        report: if a list, one :class:`Conversion` per block found is appended to it.

    Returns:
        ``model`` (converted in place), or the replacement if ``model`` is a block.
    """
    found = []  # (name, parent or None, attribute, block, kind), in the model's order
    for name, module in model.named_modules():
        kind = _block_kind(module)
        if kind is None:
            continue
        if not name:  # the model itself is a block
            found = [("", None, "", model, kind)]
            break
        parent_name, _, attr = name.rpartition(".")
        found.append((name, model.get_submodule(parent_name), attr, module, kind))
    result = model
    for name, parent, attr, block, kind in found:
        new, reason = _replacement(block, kind, backend)
        where = name or type(block).__name__
        if new is None:
            warnings.warn(f"convert: left {where} alone: {reason}", stacklevel=2)
        elif parent is None:
            result = new
        else:
            setattr(parent, attr, new)
        if report is not None:
            report.append(Conversion(name, kind, new is not None, reason))
    return result


def _block_kind(m: nn.Module) -> str | None:
    if isinstance(m, (SparseMLP, LinearSparseMLP)):
        return None
    if type(m).__name__ == "sMLPBlock" and _looks_like_spach_block(m):
        return "spach"
    if _linear_block_shapes(m) is not None:
        return "linear"
    if type(m).__name__ == "sMLPBlock":
        return "unknown"
    return None


def _replacement(block: nn.Module, kind: str, backend) -> tuple[nn.Module | None, str]:
    if kind == "unknown":
        return None, (
            "it is called sMLPBlock but has neither SPACH's layout (BN, 1x1 Conv2d proj_h, "
            "proh_w, fuse) nor the nn.Linear one (proj_h, proj_w, fuse)"
        )
    for sub_name, sub in block.named_modules():
        if sub_name and _has_hooks(sub):
            return None, (
                f"its submodule {sub_name} has hooks, which the fused op would never call "
                "(remove them, or register them on the block itself)"
            )
    if kind == "spach":
        new = SparseMLP.from_spach(block, backend=backend)
    else:
        new = LinearSparseMLP.from_block(block, backend=backend)
        why = _probe_matches(block, _linear_block_shapes(block))
        if why is not None:
            return None, why
    _carry_hooks(block, new)
    return new, f"replaced by {type(new).__name__}"


convert_spach = convert  # the name of earlier releases, which converted SPACH's blocks only
