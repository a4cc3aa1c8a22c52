"""Drop-in modules: :class:`SparseMLP`, a replacement for SPACH's ``sMLPBlock``, and
:func:`convert_spach`, which swaps it into an existing model."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from .ops import _autocast_dtype, bn_gelu_smlp_mix, smlp_mix
from .reference import _prologue_dtype, _SpachLayers
from .registry import get_backend

__all__ = ["SparseMLP", "convert_spach"]


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
            type raises TypeError, a size < 1 ValueError.
        backend: passed to :func:`smlp_kernels.smlp_mix` and
            :func:`smlp_kernels.bn_gelu_smlp_mix` (None: automatic).
        device, dtype: for the parameters, as in ``torch.nn`` modules.
    """

    def __init__(
        self,
        channels: int,
        height: int,
        width: int | None = None,
        *,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(channels, height, width, "SparseMLP", device, dtype)
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
        new = cls(channels, height, width, backend=backend, device="meta")
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


def convert_spach(model: nn.Module, *, backend: str | None = None) -> nn.Module:
    """Replace every SPACH ``sMLPBlock`` inside ``model`` by a :class:`SparseMLP`, in place.

    Blocks are found by class name (``sMLPBlock``) and attributes (``BN``, ``proj_h``,
    ``proh_w``, ``fuse``), so SPACH need not be importable. Each replacement shares the old
    block's parameters and buffers, which keeps weights, device, dtype, train/eval mode and any
    optimizer's references valid. Returns ``model``, or the new module if ``model`` itself is
    such a block.
    """
    if type(model).__name__ == "sMLPBlock" and _looks_like_spach_block(model):
        return SparseMLP.from_spach(model, backend=backend)
    targets = []
    for parent_name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            if type(child).__name__ != "sMLPBlock":
                continue
            if _looks_like_spach_block(child):
                targets.append((parent, child_name, child))
            else:
                where = f"{parent_name}.{child_name}" if parent_name else child_name
                warnings.warn(
                    f"convert_spach: left {where} alone: it is called sMLPBlock but lacks "
                    "SPACH's BN (BatchNorm2d) and 1x1 Conv2d proj_h, proh_w, fuse",
                    stacklevel=2,
                )
    for parent, child_name, child in targets:
        setattr(parent, child_name, SparseMLP.from_spach(child, backend=backend))
    return model
