"""Tests of smlp_kernels.models: sMLPNet-T/S/B against the paper's and SPACH's numbers.

Parameter counts and multiply-adds are those of the paper's table (also in the README); the
state_dict layout is SPACH's ``sMLPNet``, generated here from its naming rules; the zoo model
(SparseMLP blocks) and the SPACH-style eager model exchange checkpoints and agree in float64.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from smlp_kernels import SparseMLP, convert_spach
from smlp_kernels.models import DropPath, SMLPNet, smlpnet_base, smlpnet_small, smlpnet_tiny
from smlp_kernels.reference import SpachStyleSMLPBlock


@dataclass(frozen=True)
class Arch:
    """An sMLPNet architecture, SPACH's defaults but for dim and depths: what the hand
    counts below (FLOPs, state_dict layout) are computed from."""

    dim: int
    depths: tuple[int, ...]
    image_size: int = 224
    patch_size: int = 4
    in_chans: int = 3
    alpha: int = 3
    num_classes: int = 1000


# (factory, architecture) of each model in the zoo.
ZOO = {
    "tiny": (smlpnet_tiny, Arch(80, (2, 8, 14, 2))),
    "small": (smlpnet_small, Arch(96, (2, 10, 24, 2))),
    "base": (smlpnet_base, Arch(112, (2, 10, 24, 2))),
}

# SPACH's block is found by class name; this one computes like SPACH's and allows H != W.
SpachNamedBlock = type("sMLPBlock", (SpachStyleSMLPBlock,), {})

# A whole network in float64: a handful of ulps per op, accumulated over ~20 layers.
RTOL = 1e-11


def assert_close(
    actual: Tensor, expected: Tensor, what: str = "", scale: float | None = None
) -> None:
    """Relative to each element, with an absolute floor relative to ``scale`` (by default the
    largest magnitude of ``expected``) for near-zero elements left by cancellation."""
    assert actual.shape == expected.shape, what
    assert actual.dtype == expected.dtype, what
    if scale is None:
        scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(
        actual, expected, rtol=RTOL, atol=RTOL * scale, msg=lambda m: f"{what}: {m}"
    )


def build_on_meta(name: str) -> SMLPNet:
    """The full-size model without allocating or initialising its weights."""
    with torch.device("meta"):
        return ZOO[name][0]()


# --------------------------------------------------------------------------------------------
# Parameter counts and FLOPs
# --------------------------------------------------------------------------------------------

PARAMS = {"tiny": 24_123_584, "small": 48_558_136, "base": 65_880_408}


@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_count(name: str) -> None:
    model = build_on_meta(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


@functools.cache
def measured_flops(name: str) -> dict[str, int]:
    """FlopCounterMode's counts per op for one 224x224 image, eval mode, no_grad, on CPU."""
    torch.manual_seed(0)
    model = ZOO[name][0]().eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(x)
    assert out.shape == (1, 1000)
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    counts["total"] = counter.get_total_flops()
    return counts


@pytest.mark.parametrize(
    ("name", "giga_macs"),
    [
        pytest.param("tiny", 4.99, id="tiny"),
        pytest.param("small", 10.31, id="small", marks=pytest.mark.slow),
        pytest.param("base", 13.99, id="base", marks=pytest.mark.slow),
    ],
)
def test_multiply_adds_at_224(name: str, giga_macs: float) -> None:
    assert round(measured_flops(name)["total"] / 2 / 1e9, 2) == giga_macs


def hand_flops(arch: Arch, batch: int = 1) -> dict[str, int]:
    """FLOPs (a multiply-add = 2) of sMLPNet in eval mode from its architecture, per kind of op.

    Normalisations, activations, residual adds and the global average pool are not counted
    (FlopCounterMode does not count them either). In eval mode each sMLP block's BN -> GELU
    -> mix is one op, ``smlp.mix_bn_gelu_fwd``, and its BN -> GELU prologue is not counted
    either (smlp_kernels.flops: 0 FLOPs per element), so it counts the mix alone.
    """
    conv = mix = linear = 0
    channels = arch.dim
    patch = arch.patch_size
    for i, depth in enumerate(arch.depths):
        channels = arch.dim * 2**i
        side = arch.image_size // patch // 2**i
        pixels = batch * side * side
        if i == 0:  # patch embedding: Conv2d(in_chans, dim, patch_size, stride=patch_size)
            conv += 2 * pixels * channels * arch.in_chans * patch * patch
        else:  # downsampling: Conv2d(C / 2, C, 2, stride=2)
            conv += 2 * pixels * channels * (channels // 2) * 2 * 2
        for _ in range(depth):
            conv += 2 * pixels * channels * 3 * 3  # depthwise 3x3 conv (one input channel each)
            # the sMLP op: row and column mixes, then the (C x 3C) fuse
            mix += 2 * pixels * channels * (side + side) + 2 * pixels * 3 * channels * channels
            linear += 2 * (2 * pixels * channels * arch.alpha * channels)  # C -> 3C -> C
    linear += 2 * batch * channels * arch.num_classes  # the head
    return {"aten.convolution": conv, "smlp.mix_bn_gelu_fwd": mix, "aten.addmm": linear}


def test_tiny_flops_match_hand_count() -> None:
    expected = hand_flops(ZOO["tiny"][1])
    measured = measured_flops("tiny")
    assert {k: v for k, v in measured.items() if k != "total"} == expected
    assert measured["total"] == sum(expected.values())


def test_hand_count_matches_the_readme_formula_per_stage() -> None:
    """The sMLP op's share at stage 1 of sMLPNet-T, from the README's formula (The op)."""
    stage1 = hand_flops(Arch(80, (1, 0, 0, 0), num_classes=0))["smlp.mix_bn_gelu_fwd"]
    b, c, h, w = 1, 80, 56, 56
    assert stage1 == 2 * b * c * h * w * (w + h) + 2 * b * h * w * 3 * c * c


# --------------------------------------------------------------------------------------------
# SPACH's state_dict layout
# --------------------------------------------------------------------------------------------


def spach_state_dict_shapes(arch: Arch) -> dict[str, tuple[int, ...]]:
    """key -> shape of SPACH's ``sMLPNet`` state_dict, in SPACH's registration order."""

    def bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
        return {
            f"{prefix}.weight": (c,),
            f"{prefix}.bias": (c,),
            f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,),
            f"{prefix}.num_batches_tracked": (),
        }

    embed, token, channel = {}, {}, {}
    patch, alpha = arch.patch_size, arch.alpha
    num_patch = arch.image_size // patch
    j = 0
    for i, depth in enumerate(arch.depths):
        c = arch.dim * 2**i
        side = num_patch // 2**i
        if i == 0:
            embed[f"to_patch_embedding.{i}.0.weight"] = (c, arch.in_chans, patch, patch)
        else:
            embed[f"to_patch_embedding.{i}.0.weight"] = (c, c // 2, 2, 2)
        for _ in range(depth):
            t = f"token_mix.{j}"
            token |= bn(f"{t}.0.conv_merge.BN", c)
            token[f"{t}.0.conv_merge.Conv.weight"] = (c, 1, 3, 3)
            token |= bn(f"{t}.1.BN", c)
            token[f"{t}.1.proj_h.weight"] = (side, side, 1, 1)
            token[f"{t}.1.proj_h.bias"] = (side,)
            token[f"{t}.1.proh_w.weight"] = (side, side, 1, 1)
            token[f"{t}.1.proh_w.bias"] = (side,)
            token[f"{t}.1.fuse.weight"] = (c, 3 * c, 1, 1)
            m = f"channel_mix.{j}"
            channel[f"{m}.1.weight"] = (c,)
            channel[f"{m}.1.bias"] = (c,)
            channel[f"{m}.2.net.0.weight"] = (alpha * c, c)
            channel[f"{m}.2.net.0.bias"] = (alpha * c,)
            channel[f"{m}.2.net.3.weight"] = (c, alpha * c)
            channel[f"{m}.2.net.3.bias"] = (c,)
            j += 1
    last = arch.dim * 2 ** (len(arch.depths) - 1)
    head = bn("batch_norm", last)
    head["mlp_head.0.weight"] = (arch.num_classes, last)
    head["mlp_head.0.bias"] = (arch.num_classes,)
    return embed | token | channel | head


def _is_buffer(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


@pytest.mark.parametrize("name", list(ZOO))
def test_state_dict_matches_spach_layout(name: str) -> None:
    expected = spach_state_dict_shapes(ZOO[name][1])
    got = {k: tuple(v.shape) for k, v in build_on_meta(name).state_dict().items()}
    assert set(got) == set(expected)
    assert list(got) == list(expected)  # SPACH's order too
    assert got == expected
    # The layout alone accounts for the published parameter count.
    assert (
        sum(torch.Size(s).numel() for k, s in expected.items() if not _is_buffer(k))
        == (PARAMS[name])
    )


@pytest.mark.parametrize("name", list(ZOO))
def test_blocks_and_widths(name: str) -> None:
    dim, depths = ZOO[name][1].dim, ZOO[name][1].depths
    model = build_on_meta(name)
    assert len(model.token_mix) == len(model.channel_mix) == sum(depths)
    j = 0
    for i, depth in enumerate(depths):
        for _ in range(depth):
            block = model.token_mix[j][1]
            assert isinstance(block, SparseMLP)
            assert (block.channels, block.height, block.width) == (dim * 2**i,) + (56 // 2**i,) * 2
            j += 1
    assert model.mlp_head[0].in_features == 8 * dim


# --------------------------------------------------------------------------------------------
# The zoo model and the SPACH-style model agree
# --------------------------------------------------------------------------------------------


def small_net(**kwargs) -> SMLPNet:
    return SMLPNet(dim=8, depths=(1, 1, 1, 1), image_size=64, num_classes=10, **kwargs).double()


def with_bn_statistics(model: SMLPNet, seed: int) -> SMLPNet:
    """Random non-default BN affine parameters and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=gen))
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, 64, 64, generator=gen, dtype=torch.float64) * 2 + 0.5)
    return model


def forward_backward(model: nn.Module, x: Tensor, grad: Tensor):
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = model(x)
    y.backward(grad)
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None for g in grads.values())
    return y.detach(), x.grad, grads


def assert_same_results(got, want) -> None:
    assert_close(got[0], want[0], "output")
    assert_close(got[1], want[1], "input gradient")
    assert got[2].keys() == want[2].keys()
    # Some gradients are zero up to rounding (a bias followed by a train-mode BN), so their
    # absolute floor comes from the largest gradient of the whole model.
    scale = max(g.abs().max().item() for g in want[2].values())
    for name in want[2]:
        assert_close(got[2][name], want[2][name], f"gradient of {name}", scale=scale)


@pytest.mark.parametrize("direction", ["spach-to-zoo", "zoo-to-spach"])
def test_checkpoints_round_trip(direction: str) -> None:
    torch.manual_seed(1)
    zoo, spach = small_net(), small_net(smlp_block=SpachStyleSMLPBlock)
    assert isinstance(zoo.token_mix[0][1], SparseMLP)
    assert type(spach.token_mix[0][1]) is SpachStyleSMLPBlock
    source, target = (spach, zoo) if direction == "spach-to-zoo" else (zoo, spach)
    with_bn_statistics(source, seed=2)
    target.load_state_dict(source.state_dict(), strict=True)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 64, 64, generator=gen, dtype=torch.float64)
    grad = torch.randn(2, 10, generator=gen, dtype=torch.float64)
    zoo.eval()
    spach.eval()
    with torch.no_grad():
        y = zoo(x)
        assert y.shape == (2, 10)
        assert_close(y, spach(x), "eval output")
    # Eval mode runs each block's BN -> GELU inside the op (bn_gelu_smlp_mix): its gradients
    # too, the BN's weight and bias included, through the eval-form scale and shift.
    assert_same_results(forward_backward(zoo, x, grad), forward_backward(spach, x, grad))
    zoo.train()
    spach.train()
    assert_same_results(forward_backward(zoo, x, grad), forward_backward(spach, x, grad))


def test_convert_spach_on_spach_style_model() -> None:
    torch.manual_seed(4)
    model = with_bn_statistics(small_net(smlp_block=SpachNamedBlock), seed=5).eval()
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        want = model(x)
    assert convert_spach(model, backend="reference") is model
    for block in model.token_mix:
        assert isinstance(block[1], SparseMLP)
        assert block[1].backend == "reference"
        assert not block[1].training
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        assert_close(model(x), want, "output after conversion")


# --------------------------------------------------------------------------------------------
# Stochastic depth and argument checks
# --------------------------------------------------------------------------------------------


def test_drop_path_is_identity_in_eval() -> None:
    x = torch.randn(64, 3, 4, 4)
    dp = DropPath(0.5).eval()
    assert torch.equal(dp(x), x)


def test_drop_path_drops_whole_samples_in_training() -> None:
    torch.manual_seed(6)
    x = torch.rand(4000, 3, 2, 2) + 0.5  # no zeros, so a dropped sample is recognisable
    out = DropPath(0.5).train()(x)
    dropped = (out == 0).flatten(1).all(dim=1)
    kept = (out == 2 * x).flatten(1).all(dim=1)
    assert torch.all(dropped ^ kept), "each sample is either all zero or exactly doubled"
    assert 0.45 < kept.float().mean().item() < 0.55


def test_drop_path_of_one_drops_everything_without_nan() -> None:
    out = DropPath(1.0).train()(torch.randn(8, 3, 2, 2))
    assert torch.equal(out, torch.zeros_like(out))


def test_smlpnet_small_drop_path_rates_grow_linearly() -> None:
    model = build_on_meta("small")
    rates = [m.p if isinstance(m, DropPath) else 0.0 for m in model.drop_path]
    assert len(rates) == 2 + 10 + 24 + 2
    assert isinstance(model.drop_path[0], nn.Identity)
    assert isinstance(model.drop_path[-1], DropPath)
    assert rates[-1] == pytest.approx(0.2)
    assert rates == pytest.approx([0.2 * j / 37 for j in range(38)])


def test_smlpnet_tiny_has_no_drop_path() -> None:
    assert all(isinstance(m, nn.Identity) for m in build_on_meta("tiny").drop_path)


@pytest.mark.parametrize(
    ("image_size", "patch_size"),
    [pytest.param(30, 4, id="S30-P4"), pytest.param(224, 3, id="S224-P3")],
)
def test_image_size_not_divisible_by_patch_size_raises(image_size: int, patch_size: int):
    with pytest.raises(ValueError, match="divisible"):
        SMLPNet(image_size=image_size, patch_size=patch_size, dim=8, depths=(1, 1, 1, 1))


# --------------------------------------------------------------------------------------------
# Size arguments: integral numbers only (numpy and torch integers too), never bool, >= 1
# --------------------------------------------------------------------------------------------

# A network small enough to build in milliseconds; each test overrides one argument.
MICRO = dict(dim=8, depths=(1, 1, 1, 1), image_size=32, num_classes=10)

SIZE_ARGS = ["in_chans", "dim", "alpha", "num_classes", "patch_size", "image_size"]


@pytest.mark.parametrize("name", SIZE_ARGS)
@pytest.mark.parametrize("bad", [True, False, 4.0, np.float32(4), "4", None], ids=repr)
def test_smlpnet_non_integral_size_raises_type_error_naming_it(name: str, bad) -> None:
    with pytest.raises(TypeError, match=rf"^SMLPNet: {name} must be an int"):
        SMLPNet(**{**MICRO, name: bad})


@pytest.mark.parametrize("name", SIZE_ARGS)
@pytest.mark.parametrize("bad", [0, -1, np.int64(-8)], ids=repr)
def test_smlpnet_non_positive_size_raises_value_error_naming_it(name: str, bad) -> None:
    with pytest.raises(ValueError, match=rf"^SMLPNet: {name} must be a positive int"):
        SMLPNet(**{**MICRO, name: bad})


@pytest.mark.parametrize(
    ("depths", "error", "match"),
    [
        pytest.param((1, True, 1, 1), TypeError, r"depths\[1\] must be an int", id="bool"),
        pytest.param((1, 1.0, 1, 1), TypeError, r"depths\[1\] must be an int", id="float"),
        pytest.param((1, 1, -1, 1), ValueError, r"depths\[2\] must be an int >= 0", id="neg"),
        pytest.param((), ValueError, "depths must hold at least one int", id="empty"),
        pytest.param(2, TypeError, "depths must be a sequence of ints", id="int"),
        pytest.param("1111", TypeError, "depths must be a sequence of ints", id="str"),
    ],
)
def test_smlpnet_bad_depths_raise_naming_them(depths, error, match) -> None:
    with pytest.raises(error, match=rf"^SMLPNet: {match}"):
        SMLPNet(**{**MICRO, "depths": depths})


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")], ids=repr)
def test_smlpnet_dp_rate_outside_0_1_raises(bad) -> None:
    with pytest.raises(ValueError, match=r"^SMLPNet: dp_rate must be in \[0, 1\]"):
        SMLPNet(**{**MICRO, "dp_rate": bad})
    with pytest.raises(ValueError, match=r"^DropPath: p must be in \[0, 1\]"):
        DropPath(bad)


def test_smlpnet_bool_dp_rate_raises_type_error() -> None:
    with pytest.raises(TypeError, match=r"^SMLPNet: dp_rate must be a float"):
        SMLPNet(**{**MICRO, "dp_rate": True})


def test_smlpnet_image_too_small_for_its_stages_names_image_size() -> None:
    # 16 / 4 = 4 patches: stage 4 would have a side of 4 // 8 = 0.
    with pytest.raises(ValueError, match=r"^SMLPNet: image_size \(16\) must be at least"):
        SMLPNet(**{**MICRO, "image_size": 16})


def test_smlpnet_accepts_numpy_and_torch_integers() -> None:
    model = SMLPNet(
        in_chans=np.int64(3),
        dim=torch.tensor(8),
        alpha=np.int32(2),
        num_classes=np.uint16(10),
        patch_size=torch.tensor(4, dtype=torch.int16),
        image_size=np.int64(32),
        depths=np.array([1, 0, 1, 1]),  # a stage of depth 0 is allowed
        dp_rate=np.float32(0.25),
    ).eval()
    assert model.depths == [1, 0, 1, 1] and all(type(d) is int for d in model.depths)
    assert model.num_patch == 8 and type(model.num_patch) is int
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    blocks = [m for m in model.modules() if isinstance(m, SparseMLP)]
    assert [(b.channels, b.height) for b in blocks] == [(8, 8), (32, 2), (64, 1)]


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_zoo_factories_check_num_classes(name: str) -> None:
    factory = ZOO[name][0]
    with pytest.raises(TypeError, match="num_classes must be an int"):
        factory(num_classes=True)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        factory(num_classes=0)
    with pytest.raises(TypeError, match="image_size must be an int"):
        factory(image_size=224.0)
    with torch.device("meta"):
        model = factory(num_classes=np.int64(7))
    assert model.mlp_head[0].out_features == 7


# --------------------------------------------------------------------------------------------
# SPACH's factory arguments and checkpoints
# --------------------------------------------------------------------------------------------


def test_factories_take_spachs_arguments() -> None:
    """pretrained=False and timm's keyword arguments (ignored, as SPACH's factories do;
    loudly when one would have changed the model); pretrained=True and a positional
    num_classes fail clearly; a misspelt keyword still raises."""
    kw = {"image_size": 32, "num_classes": 3}
    with torch.device("meta"):  # the full-size models, without allocating them
        model = smlpnet_tiny(False, drop_rate=0.0, drop_path_rate=None, drop_block_rate=None, **kw)
        assert isinstance(model, SMLPNet) and model.depths == [2, 8, 14, 2]
        with pytest.warns(UserWarning, match=r"smlpnet_small: ignores drop_path_rate=0.1"):
            model = smlpnet_small(pretrained=False, drop_path_rate=0.1, **kw)
        assert max(m.p for m in model.drop_path if isinstance(m, DropPath)) == 0.2
        with pytest.raises(ValueError, match=r"pretrained=True is not supported.*downloads"):
            smlpnet_base(pretrained=True)
        with pytest.raises(TypeError, match=r"pretrained must be a bool.*num_classes.*by keyword"):
            smlpnet_tiny(10)
        with pytest.raises(TypeError, match="dimm"):
            smlpnet_tiny(dimm=4, **kw)


def test_load_spach_state_dict_reads_a_main_py_checkpoint(tmp_path) -> None:
    """SPACH's main.py saves the args Namespace next to the weights: torch.load's default
    (weights_only=True) refuses it, load_spach_state_dict allow-lists just that class."""
    import argparse
    import pickle

    kw = {"depths": (1,), "image_size": 8, "num_classes": 3, "dim": 4}
    trained = SMLPNet(**kw)
    optimizer = torch.optim.AdamW(trained.parameters())
    path = tmp_path / "checkpoint.pth"
    torch.save(
        {
            "model": trained.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": 3,
            "args": argparse.Namespace(model="smlpnet_tiny", lr=5e-4, drop_path=0.1),
        },
        path,
    )
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu")
    from smlp_kernels.models import load_spach_state_dict

    model = SMLPNet(**kw)
    model.load_state_dict(load_spach_state_dict(path), strict=True)
    for (name, a), b in zip(model.state_dict().items(), trained.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    torch.save(trained.state_dict(), tmp_path / "bare.pth")  # a bare state_dict loads too
    assert load_spach_state_dict(tmp_path / "bare.pth").keys() == trained.state_dict().keys()
