"""sMLPNet (Tang et al., AAAI 2022) with the module tree and state_dict of SPACH's ``sMLPNet``.

The token mixers' sMLP blocks are :class:`smlp_kernels.nn.SparseMLP`, so checkpoints trained
with SPACH (``models/smlp.py`` and ``models/registry.py`` in microsoft/SPACH) load with
``strict=True``. Key layout, for block ``i`` of all stages counted together::

    to_patch_embedding.{stage}.0.weight           patch embedding / downsampling conv
    token_mix.{i}.0.conv_merge.{BN,Conv}.*        BN -> GELU -> 3x3 depthwise conv
    token_mix.{i}.1.{BN,proj_h,proh_w,fuse}.*     the sMLP block
    channel_mix.{i}.1.*                           LayerNorm over channels
    channel_mix.{i}.2.net.{0,3}.*                 the MLP (ratio ``alpha``)
    batch_norm.*, mlp_head.0.*                    final BN and classifier

| model          | dim | depths        | drop path | params     |
|----------------|-----|---------------|-----------|------------|
| smlpnet_tiny   | 80  | 2, 8, 14, 2   | 0.0       | 24,123,584 |
| smlpnet_small  | 96  | 2, 10, 24, 2  | 0.2       | 48,558,136 |
| smlpnet_base   | 112 | 2, 10, 24, 2  | 0.3       | 65,880,408 |
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ._validation import check_probability, check_size, check_sizes
from .nn import SparseMLP

__all__ = [
    "TIMM_IGNORED_KWARGS",
    "SMLPNet",
    "load_spach_state_dict",
    "smlpnet_base",
    "smlpnet_small",
    "smlpnet_tiny",
]

# Builds the sMLP block of a stage: (channels, height, width) -> module (B, C, H, W) -> same.
BlockFactory = Callable[[int, int, int], nn.Module]


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a whole sample's branch with probability ``p`` and
    scale the kept ones by 1 / (1 - p)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = check_probability(p, "p", "DropPath")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep if keep > 0.0 else x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Permute(nn.Module):
    """``x.permute(*dims)``; no parameters (SPACH uses einops' Rearrange here)."""

    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(*self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class FeedForward(nn.Module):
    """Linear -> GELU -> Dropout -> Linear -> Dropout over the last axis (keys ``net.0``,
    ``net.3``)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        dim = check_size(dim, "dim", "FeedForward")
        hidden_dim = check_size(hidden_dim, "hidden_dim", "FeedForward")
        dropout = check_probability(dropout, "dropout", "FeedForward")
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BNActConv(nn.Module):
    """BN -> activation -> conv with "same" padding (keys ``BN.*``, ``Conv.weight``)."""

    def __init__(
        self,
        channels: int,
        activation: nn.Module,
        kernel_size: int,
        groups: int = 1,
    ) -> None:
        super().__init__()
        channels = check_size(channels, "channels", "BNActConv")
        kernel_size = check_size(kernel_size, "kernel_size", "BNActConv")
        groups = check_size(groups, "groups", "BNActConv")
        self.BN = nn.BatchNorm2d(channels)
        self.Activation = activation
        self.Conv = nn.Conv2d(
            channels,
            channels,
            kernel_size,
            padding=(kernel_size - 1) // 2,
            groups=groups,
            bias=False,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.Conv(self.Activation(self.BN(x)))


class DWConvBlock(nn.Module):
    """The 3x3 depthwise conv that precedes each sMLP block (key ``conv_merge``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        channels = check_size(channels, "channels", "DWConvBlock")
        self.conv_merge = BNActConv(channels, nn.GELU(), 3, groups=channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_merge(x)


class SMLPNet(nn.Module):
    """sMLPNet. Input (B, in_chans, image_size, image_size), output (B, num_classes).

    Four stages at resolutions image_size / patch_size / 2**i with dim * 2**i channels; each
    block is ``x + token_mix(x)`` then ``x + channel_mix(x)``, both through stochastic depth.

    Args:
        in_chans, dim, alpha (MLP ratio), num_classes, patch_size, image_size, depths, dp_rate
            (maximum stochastic-depth rate): as in SPACH's ``sMLPNet``. Sizes are integral
            numbers >= 1 (int, numpy or torch integers; not bool), ``depths`` a non-empty
            sequence of them (a stage may have depth 0), ``dp_rate`` in [0, 1]; a wrong type
            raises TypeError, a wrong value ValueError, naming the argument.
        backend: passed to every :class:`SparseMLP`.
        smlp_block: builds the sMLP blocks instead of SparseMLP, e.g.
            :class:`smlp_kernels.reference.SpachStyleSMLPBlock` for the eager SPACH model.
    """

    def __init__(
        self,
        in_chans: int = 3,
        dim: int = 80,
        alpha: int = 3,
        num_classes: int = 1000,
        patch_size: int = 4,
        image_size: int = 224,
        depths: Sequence[int] = (2, 8, 14, 2),
        dp_rate: float = 0.0,
        *,
        backend: str | None = None,
        smlp_block: BlockFactory | None = None,
    ) -> None:
        super().__init__()
        in_chans = check_size(in_chans, "in_chans", "SMLPNet")
        dim = check_size(dim, "dim", "SMLPNet")
        alpha = check_size(alpha, "alpha", "SMLPNet")
        num_classes = check_size(num_classes, "num_classes", "SMLPNet")
        patch_size = check_size(patch_size, "patch_size", "SMLPNet")
        image_size = check_size(image_size, "image_size", "SMLPNet")
        # A stage of depth 0 is only its downsampling conv: a valid (ablation) network.
        depths = check_sizes(depths, "depths", "SMLPNet", minimum=0)
        dp_rate = check_probability(dp_rate, "dp_rate", "SMLPNet")
        if image_size % patch_size != 0:
            raise ValueError(
                f"SMLPNet: image_size ({image_size}) must be divisible by patch_size ({patch_size})"
            )
        # Each stage after the first halves the side: the last one needs a side of >= 1.
        stages = len(depths)
        if image_size // patch_size < 2 ** (stages - 1):
            raise ValueError(
                f"SMLPNet: image_size ({image_size}) must be at least patch_size * "
                f"2**(len(depths) - 1) = {patch_size * 2 ** (stages - 1)}, so that each of the "
                f"{stages} stages keeps a side of at least 1"
            )
        if smlp_block is None:

            def smlp_block(c: int, h: int, w: int) -> nn.Module:
                return SparseMLP(c, h, w, backend=backend)

        self.num_patch = image_size // patch_size
        self.depths = list(depths)
        self.to_patch_embedding = nn.ModuleList()
        self.token_mix = nn.ModuleList()
        self.channel_mix = nn.ModuleList()
        self.drop_path = nn.ModuleList()

        num_blocks = sum(self.depths)
        block_idx = 0
        for i, depth in enumerate(self.depths):
            ratio = 2**i
            channels = dim * ratio
            side = self.num_patch // ratio
            if i == 0:
                embed = nn.Conv2d(in_chans, dim, patch_size, patch_size, bias=False)
            else:
                embed = nn.Conv2d(channels // 2, channels, 2, 2, bias=False)
            self.to_patch_embedding.append(nn.Sequential(embed))
            for _ in range(depth):
                # Stochastic depth grows linearly from 0 to dp_rate over all blocks.
                rate = dp_rate * block_idx / max(num_blocks - 1, 1)
                self.drop_path.append(DropPath(rate) if rate > 0.0 else nn.Identity())
                block_idx += 1
                self.channel_mix.append(
                    nn.Sequential(
                        Permute(0, 2, 3, 1),
                        nn.LayerNorm(channels),
                        FeedForward(channels, channels * alpha),
                        Permute(0, 3, 1, 2),
                    )
                )
                self.token_mix.append(
                    nn.Sequential(DWConvBlock(channels), smlp_block(channels, side, side))
                )
        self.batch_norm = nn.BatchNorm2d(dim * 2 ** (len(self.depths) - 1))
        self.mlp_head = nn.Sequential(nn.Linear(dim * 2 ** (len(self.depths) - 1), num_classes))

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, S, S) -> the final feature map (B, 8 * dim, S / 32, S / 32)."""
        block = 0
        for i, depth in enumerate(self.depths):
            x = self.to_patch_embedding[i](x)
            for _ in range(depth):
                drop = self.drop_path[block]
                x = x + drop(self.token_mix[block](x))
                x = x + drop(self.channel_mix[block](x))
                block += 1
        return self.batch_norm(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp_head(self.forward_features(x).mean(dim=(2, 3)))


# Keyword arguments that timm's create_model and SPACH's training script pass to a model
# factory, which SPACH's factories accept and ignore (its sMLPNet takes **kwargs): accepted
# and ignored here too, with a warning when a value would have changed the model.
TIMM_IGNORED_KWARGS = (
    "drop_rate",
    "drop_path_rate",
    "drop_block_rate",
    "global_pool",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "cache_dir",
)


def _make(
    name: str, dim: int, depths: tuple[int, ...], dp_rate: float, pretrained: object, kwargs
) -> SMLPNet:
    if not isinstance(pretrained, bool):
        raise TypeError(
            f"{name}: pretrained must be a bool (SPACH's first argument); got "
            f"{type(pretrained).__name__} {pretrained!r}. Pass num_classes and the other "
            "arguments by keyword"
        )
    if pretrained:
        raise ValueError(
            f"{name}: pretrained=True is not supported: this package downloads nothing. "
            "Download SPACH's released checkpoint yourself, then load it with "
            f"model = {name}(); model.load_state_dict("
            "smlp_kernels.models.load_spach_state_dict(path))"
        )
    for key in TIMM_IGNORED_KWARGS:
        value = kwargs.pop(key, None)
        if key.startswith("drop") and value not in (None, 0, 0.0):
            warnings.warn(
                f"{name}: ignores {key}={value!r}, as SPACH's factory does (its stochastic "
                f"depth is dp_rate={dp_rate}; pass dp_rate= to change it)",
                stacklevel=3,
            )
    kwargs.setdefault("dp_rate", dp_rate)
    return SMLPNet(dim=dim, alpha=3, patch_size=4, depths=depths, **kwargs)


_FACTORY_DOC = """

    Arguments as SPACH's factory: ``pretrained`` must be False (True raises ValueError:
    nothing is downloaded; see :func:`load_spach_state_dict`); the keyword arguments go to
    :class:`SMLPNet` (``num_classes=``, ``backend=``, ...), except timm's
    :data:`TIMM_IGNORED_KWARGS` (``drop_rate``, ``drop_path_rate``, ...), which SPACH's
    factories ignore too (a warning says so when one would have changed the model)."""


def smlpnet_tiny(pretrained: bool = False, **kwargs) -> SMLPNet:
    return _make("smlpnet_tiny", 80, (2, 8, 14, 2), 0.0, pretrained, kwargs)


def smlpnet_small(pretrained: bool = False, **kwargs) -> SMLPNet:
    return _make("smlpnet_small", 96, (2, 10, 24, 2), 0.2, pretrained, kwargs)


def smlpnet_base(pretrained: bool = False, **kwargs) -> SMLPNet:
    return _make("smlpnet_base", 112, (2, 10, 24, 2), 0.3, pretrained, kwargs)


smlpnet_tiny.__doc__ = "sMLPNet-T: 24.1M parameters, 5.0G multiply-adds at 224x224." + _FACTORY_DOC
smlpnet_small.__doc__ = (
    "sMLPNet-S: 48.6M parameters, 10.3G multiply-adds at 224x224." + _FACTORY_DOC
)
smlpnet_base.__doc__ = "sMLPNet-B: 65.9M parameters, 14.0G multiply-adds at 224x224." + _FACTORY_DOC


def load_spach_state_dict(path, *, map_location="cpu") -> dict:
    """The model's state_dict from a checkpoint saved by SPACH's ``main.py`` (or a bare
    state_dict), for ``model.load_state_dict(..., strict=True)``.

    SPACH's ``main.py`` saves ``{"model": ..., "optimizer": ..., "lr_scheduler": ...,
    "epoch": ..., "args": argparse.Namespace(...)}``. Since PyTorch 2.6 ``torch.load``
    defaults to ``weights_only=True``, which refuses the ``argparse.Namespace`` (an
    ``UnpicklingError``); this loads with ``weights_only=True`` and only
    ``argparse.Namespace`` allow-listed, so no other code in the file can run.
    """
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        return checkpoint["model"]
    return checkpoint
