"""Tests of smlp_kernels.nn: SparseMLP as a drop-in for SPACH's sMLPBlock, and convert_spach.

The ground truths are a replica of SPACH's ``sMLPBlock`` written here (square maps only, as in
SPACH) and :class:`smlp_kernels.reference.SpachStyleSMLPBlock` (the same computation for
H != W). Everything is compared in float64 with one shared upstream gradient, every parameter's
gradient included.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from smlp_kernels import SparseMLP, convert_spach
from smlp_kernels.reference import SpachStyleSMLPBlock

# float64 with a different summation order (einsum vs conv) stays within a few ulps per term.
RTOL = 1e-12


class sMLPBlock(nn.Module):  # SPACH's class name: convert_spach looks for it
    """A replica of SPACH's block (microsoft/SPACH ``models/smlp.py``), written from its
    documented behaviour: same constructor signature, attribute order and naming trap."""

    def __init__(self, W: int, H: int, channels: int = 3) -> None:
        super().__init__()
        assert W == H
        self.channels = channels
        self.activation = nn.GELU()
        self.BN = nn.BatchNorm2d(channels)
        self.proj_h = nn.Conv2d(H, H, (1, 1))
        self.proh_w = nn.Conv2d(W, W, (1, 1))
        self.fuse = nn.Conv2d(channels * 3, channels, (1, 1), (1, 1), bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.activation(self.BN(x))
        x_h = self.proj_h(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x_w = self.proh_w(x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)
        return self.fuse(torch.cat([x, x_h, x_w], dim=1))


class HasBN(nn.Module):
    """Not an sMLP block, though it has an attribute named BN: convert_spach must skip it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.BN = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.BN(x))


class LookAlike(SpachStyleSMLPBlock):
    """Every attribute of an sMLP block but another class name: convert_spach must skip it."""


def assert_close(actual: Tensor, expected: Tensor, what: str = "") -> None:
    """float64 comparison: relative to each element, with an absolute floor relative to the
    largest magnitude so that near-zero elements from cancellation do not fail spuriously."""
    assert actual.shape == expected.shape, what
    assert actual.dtype == expected.dtype, what
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(
        actual, expected, rtol=RTOL, atol=RTOL * scale, msg=lambda m: f"{what}: {m}"
    )


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Non-default parameters and BN statistics (a few train-mode forwards on random data)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    was_training = module.training
    module.train()
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for _ in range(3):
            for bn in bns:
                c = bn.num_features
                shift = torch.randn(1, c, 1, 1, generator=gen, dtype=bn.weight.dtype)
                bn(torch.randn(4, c, 3, 3, generator=gen, dtype=bn.weight.dtype) * 2 + shift)
    module.train(was_training)
    return module


def forward_backward(module: nn.Module, x: Tensor, grad: Tensor) -> tuple[Tensor, Tensor, dict]:
    """Output, input gradient and every parameter's gradient (by name) for upstream ``grad``."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    y.backward(grad)
    grads = {name: p.grad for name, p in module.named_parameters()}
    assert all(g is not None for g in grads.values()), grads.keys()
    return y.detach(), x.grad, grads


def assert_same_results(got, want) -> None:
    y, dx, grads = got
    y_ref, dx_ref, grads_ref = want
    assert_close(y, y_ref, "output")
    assert_close(dx, dx_ref, "input gradient")
    assert grads.keys() == grads_ref.keys()
    for name in grads_ref:
        assert_close(grads[name], grads_ref[name], f"gradient of {name}")


# --------------------------------------------------------------------------------------------
# The state_dict and SPACH checkpoints
# --------------------------------------------------------------------------------------------

SQUARE_CASES = [
    pytest.param(8, 5, id="C8-H5-W5"),
    pytest.param(1, 3, id="C1-H3-W3"),
    pytest.param(3, 7, id="C3-H7-W7"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize(("channels", "side"), SQUARE_CASES)
def test_state_dict_matches_spach(channels: int, side: int, dtype: torch.dtype) -> None:
    spach = sMLPBlock(side, side, channels).to(dtype)
    ours = SparseMLP(channels, side, dtype=dtype)
    want = spach.state_dict()
    got = ours.state_dict()
    assert list(got) == list(want)  # the same keys in the same order
    assert list(got) == [
        "BN.weight",
        "BN.bias",
        "BN.running_mean",
        "BN.running_var",
        "BN.num_batches_tracked",
        "proj_h.weight",
        "proj_h.bias",
        "proh_w.weight",
        "proh_w.bias",
        "fuse.weight",
    ]
    for key in want:
        assert got[key].shape == want[key].shape, key
        assert got[key].dtype == want[key].dtype, key


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize(("channels", "side"), SQUARE_CASES)
def test_spach_checkpoint_loads_and_matches(channels: int, side: int, mode: str, tmp_path) -> None:
    torch.manual_seed(0)
    spach = randomize_(sMLPBlock(side, side, channels).double(), seed=1)
    assert spach.BN.num_batches_tracked.item() == 3
    path = tmp_path / "spach_smlp_block.pt"
    torch.save(spach.state_dict(), path)

    ours = SparseMLP(channels, side, dtype=torch.float64)
    ours.load_state_dict(torch.load(path), strict=True)
    for key, value in spach.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key

    spach.train(mode == "train")
    ours.train(mode == "train")
    x = torch.randn(3, channels, side, side, dtype=torch.float64)
    grad = torch.randn(3, channels, side, side, dtype=torch.float64)
    assert_same_results(forward_backward(ours, x, grad), forward_backward(spach, x, grad))
    # In train mode both also updated their running statistics identically.
    for key, value in spach.state_dict().items():
        assert_close(ours.state_dict()[key].double(), value.double(), key)


# --------------------------------------------------------------------------------------------
# H != W, against the SPACH-style formulation
# --------------------------------------------------------------------------------------------

RECT_CASES = [
    pytest.param(3, 5, 7, id="C3-H5-W7"),
    pytest.param(1, 1, 4, id="C1-H1-W4"),
    pytest.param(6, 13, 2, id="C6-H13-W2"),
]


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize(("channels", "height", "width"), RECT_CASES)
def test_rectangular_matches_spach_style(channels: int, height: int, width: int, mode: str):
    spach_style = randomize_(SpachStyleSMLPBlock(channels, height, width).double(), seed=2)
    ours = SparseMLP(channels=channels, height=height, width=width, dtype=torch.float64)
    ours.load_state_dict(spach_style.state_dict(), strict=True)
    assert ours.proj_h.weight.shape == (width, width, 1, 1)
    assert ours.proh_w.weight.shape == (height, height, 1, 1)
    spach_style.train(mode == "train")
    ours.train(mode == "train")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, channels, height, width, generator=gen, dtype=torch.float64)
    grad = torch.randn(2, channels, height, width, generator=gen, dtype=torch.float64)
    assert_same_results(forward_backward(ours, x, grad), forward_backward(spach_style, x, grad))


def test_row_and_column_mix_axes() -> None:
    """proj_h acts along W and proh_w along H: with a zero column mix and identity-free fuse,
    a row mix that reverses W must reverse the output along W."""
    c, h, w = 2, 3, 5
    m = SparseMLP(c, h, w, dtype=torch.float64).eval()
    with torch.no_grad():
        m.BN.reset_parameters()
        m.BN.reset_running_stats()
        m.activation = nn.Identity()
        m.proj_h.weight.copy_(torch.eye(w, dtype=torch.float64).flip(0).reshape(w, w, 1, 1))
        m.proj_h.bias.zero_()
        m.proh_w.weight.zero_()
        m.proh_w.bias.zero_()
        fuse = torch.zeros(c, 3 * c, dtype=torch.float64)
        fuse[:, c : 2 * c] = torch.eye(c, dtype=torch.float64)  # keep only the row mix
        m.fuse.weight.copy_(fuse.reshape(c, 3 * c, 1, 1))
    x = torch.randn(2, c, h, w, dtype=torch.float64)
    bn_scale = 1 / (1 + m.BN.eps) ** 0.5
    with torch.no_grad():
        assert_close(m(x), x.flip(3) * bn_scale, "row mix reversing W")


# --------------------------------------------------------------------------------------------
# Awkward layouts
# --------------------------------------------------------------------------------------------


def _pair(channels: int, height: int, width: int, mode: str) -> tuple[nn.Module, nn.Module]:
    spach_style = randomize_(SpachStyleSMLPBlock(channels, height, width).double(), seed=4)
    ours = SparseMLP(channels=channels, height=height, width=width, dtype=torch.float64)
    ours.load_state_dict(spach_style.state_dict(), strict=True)
    spach_style.train(mode == "train")
    ours.train(mode == "train")
    return ours, spach_style


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_channels_last_input(mode: str) -> None:
    ours, spach_style = _pair(3, 5, 7, mode)
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64).to(memory_format=torch.channels_last)
    grad = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    got = forward_backward(ours, x, grad)
    assert_same_results(got, forward_backward(spach_style, x, grad))
    assert got[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "slicing",
    [
        pytest.param(lambda big: big[:, ::2], id="every-other-channel"),
        pytest.param(lambda big: big[..., 1:-1], id="inner-columns"),
        pytest.param(lambda big: big[1:, :, 2:].transpose(2, 3), id="rows-transposed"),
    ],
)
def test_non_contiguous_input(slicing) -> None:
    big = torch.randn(3, 8, 9, 9, dtype=torch.float64)
    x = slicing(big)
    assert not x.is_contiguous()
    c, h, w = x.shape[1:]
    ours, spach_style = _pair(c, h, w, "train")
    grad = torch.randn(x.shape, dtype=torch.float64)
    assert_same_results(forward_backward(ours, x, grad), forward_backward(spach_style, x, grad))


# --------------------------------------------------------------------------------------------
# Errors and edge cases
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "param"),
    [
        pytest.param((2, 4, 5, 6), "row_weight", id="wrong-W"),
        pytest.param((2, 4, 6, 7), "col_weight", id="wrong-H"),
    ],
)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_wrong_spatial_size_names_the_weight(shape, param: str, mode: str) -> None:
    m = SparseMLP(4, 5, 7).train(mode == "train")
    with pytest.raises(ValueError, match=param):
        m(torch.randn(shape))


# SparseMLP and the reference block take their sizes through one checker.
SIZED_BLOCKS = [
    pytest.param(SparseMLP, id="SparseMLP"),
    pytest.param(SpachStyleSMLPBlock, id="SpachStyleSMLPBlock"),
]


@pytest.mark.parametrize("cls", SIZED_BLOCKS)
@pytest.mark.parametrize(
    ("args", "name"),
    [
        pytest.param((0, 4), "channels", id="C0"),
        pytest.param((4, 0), "height", id="H0"),
        pytest.param((4, 4, 0), "width", id="W0"),
        pytest.param((-1, 4), "channels", id="C-1"),
        pytest.param((4, -3, 5), "height", id="H-3"),
    ],
)
def test_non_positive_sizes_raise_value_error_naming_the_argument(cls, args, name) -> None:
    with pytest.raises(ValueError, match=rf"^{cls.__name__}: {name} must be a positive int"):
        cls(*args)


@pytest.mark.parametrize("cls", SIZED_BLOCKS)
@pytest.mark.parametrize(
    ("args", "name"),
    [
        # bool is an int subclass: True used to pass as a size of 1.
        pytest.param((4, True, 6), "height", id="H-True"),
        pytest.param((False, 5), "channels", id="C-False"),
        pytest.param((4, 5, np.bool_(True)), "width", id="W-numpy-bool"),
        pytest.param((4, torch.tensor(True)), "height", id="H-bool-tensor"),
        pytest.param((4, 5.0), "height", id="H-float"),
        pytest.param((4, 5, np.float64(6)), "width", id="W-numpy-float"),
        pytest.param((4, torch.tensor(5.0)), "height", id="H-float-tensor"),
        pytest.param(("4", 5), "channels", id="C-str"),
        pytest.param((4, None), "height", id="H-None"),
    ],
)
def test_non_integral_sizes_raise_type_error_naming_the_argument(cls, args, name) -> None:
    with pytest.raises(TypeError, match=rf"^{cls.__name__}: {name} must be an int"):
        cls(*args)


@pytest.mark.parametrize("cls", SIZED_BLOCKS)
@pytest.mark.parametrize(
    "args",
    [
        pytest.param((np.int64(4), np.int64(5), np.int64(6)), id="numpy-int64"),
        pytest.param((np.int32(4), np.uint8(5), np.int16(6)), id="numpy-mixed"),
        pytest.param((torch.tensor(4), torch.tensor(5), torch.tensor(6)), id="torch-int"),
        pytest.param((4, 5, torch.tensor(6, dtype=torch.int8)), id="torch-int8"),
    ],
)
def test_integral_sizes_of_numpy_and_torch_are_accepted(cls, args) -> None:
    m = cls(*args)
    assert tuple(m.fuse.weight.shape) == (4, 12, 1, 1)
    assert tuple(m.proh_w.weight.shape[:2]) == (5, 5)
    assert tuple(m.proj_h.weight.shape[:2]) == (6, 6)
    # Stored as plain ints, so repr, state and comparisons never see numpy/torch scalars.
    assert type(m.channels) is int
    if cls is SparseMLP:
        assert (m.channels, m.height, m.width) == (4, 5, 6)
        assert all(type(v) is int for v in (m.height, m.width))
        assert "channels=4, height=5, width=6" in repr(m)
        x = torch.randn(2, 4, 5, 6)
        assert m(x).shape == (2, 4, 5, 6)


def test_empty_batch_in_eval_mode() -> None:
    m = randomize_(SparseMLP(3, 5, 7, dtype=torch.float64), seed=5).eval()
    x = torch.randn(0, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    y = m(x)
    assert y.shape == (0, 3, 5, 7)
    assert y.dtype == torch.float64
    y.sum().backward()
    assert x.grad.shape == x.shape
    for name, p in m.named_parameters():
        assert p.grad is not None and not p.grad.any(), name


def test_unknown_backend_argument_raises() -> None:
    with pytest.raises(ValueError, match="registered backends") as info:
        SparseMLP(2, 3, 4, backend="nope")
    assert "reference" in str(info.value)
    assert "nope" in str(info.value)


def test_unknown_backend_env_var_raises(monkeypatch) -> None:
    monkeypatch.setenv("SMLP_BACKEND", "nope")
    x = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="registered backends"):
        SparseMLP(2, 3, 4)(x)
    # An explicit backend= wins over the environment variable.
    assert SparseMLP(2, 3, 4, backend="reference")(x).shape == x.shape


def test_explicit_reference_backend_matches_default() -> None:
    torch.manual_seed(6)
    auto = randomize_(SparseMLP(2, 3, 4, dtype=torch.float64), seed=6).eval()
    ref = SparseMLP(2, 3, 4, backend="reference", dtype=torch.float64).eval()
    ref.load_state_dict(auto.state_dict())
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    grad = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    assert_same_results(forward_backward(ref, x, grad), forward_backward(auto, x, grad))


def test_torch_compile_fullgraph_matches_eager() -> None:
    eager = randomize_(SparseMLP(3, 5, 7, dtype=torch.float64), seed=7).train()
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, fullgraph=True, backend="aot_eager")
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64)
    grad = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64)

    want = forward_backward(eager, x, grad)
    x_c = x.clone().requires_grad_(True)
    y_c = compiled(x_c)
    y_c.backward(grad)
    got = (
        y_c.detach(),
        x_c.grad,
        {name: p.grad for name, p in compiled_module.named_parameters()},
    )
    assert_same_results(got, want)
    # The running statistics were updated inside the compiled graph too.
    assert_close(compiled_module.BN.running_mean, eager.BN.running_mean, "running_mean")
    assert_close(compiled_module.BN.running_var, eager.BN.running_var, "running_var")


# --------------------------------------------------------------------------------------------
# from_spach and convert_spach
# --------------------------------------------------------------------------------------------


def test_from_spach_shares_submodules() -> None:
    block = randomize_(sMLPBlock(5, 5, 4).double(), seed=9).eval()
    new = SparseMLP.from_spach(block, backend="reference")
    assert isinstance(new, SparseMLP)
    assert (new.channels, new.height, new.width, new.backend) == (4, 5, 5, "reference")
    for name in ("activation", "BN", "proj_h", "proh_w", "fuse"):
        assert getattr(new, name) is getattr(block, name), name
    assert not new.training
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        assert_close(new(x), block(x), "output")


def test_from_spach_rectangular_block() -> None:
    block = randomize_(SpachStyleSMLPBlock(3, 5, 7).double(), seed=13).train()
    new = SparseMLP.from_spach(block)
    assert (new.channels, new.height, new.width) == (3, 5, 7)
    assert new.training
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64)
    grad = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64)
    assert_same_results(forward_backward(new, x, grad), forward_backward(block, x, grad))


def test_from_spach_rejects_other_modules() -> None:
    with pytest.raises(TypeError, match="sMLPBlock"):
        SparseMLP.from_spach(HasBN(4))


class Host(nn.Module):
    """sMLPBlocks at several depths (in a Sequential, nested Sequential, ModuleList and as a
    named attribute) among modules that convert_spach must leave alone."""

    def __init__(self, c: int = 4, s: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(c, c, 3, padding=1)
        self.seq = nn.Sequential(sMLPBlock(s, s, c), HasBN(c), nn.Sequential(sMLPBlock(s, s, c)))
        self.blocks = nn.ModuleList([sMLPBlock(s, s, c), LookAlike(c, s), sMLPBlock(s, s, c)])
        self.named = sMLPBlock(s, s, c)
        self.other = HasBN(c)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = x + self.seq(x)
        for block in self.blocks:
            x = x + block(x)
        x = x + self.named(x)
        return self.other(x)


BLOCK_PATHS = ("seq.0", "seq.2.0", "blocks.0", "blocks.2", "named")
KEPT_PATHS = ("stem", "seq", "seq.1", "seq.2", "blocks", "blocks.1", "other")


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_convert_spach_replaces_only_blocks(mode: str) -> None:
    torch.manual_seed(10)
    model = randomize_(Host().double(), seed=10)
    model.train(mode == "train")
    before = dict(model.named_modules())
    params_before = list(model.named_parameters())
    buffers_before = list(model.named_buffers())
    training_before = {name: m.training for name, m in before.items()}
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        y_before = model(x)

    out = convert_spach(model)
    assert out is model
    after = dict(model.named_modules())
    for path in BLOCK_PATHS:
        assert isinstance(after[path], SparseMLP), path
        assert after[path].backend is None
        for sub in ("BN", "proj_h", "proh_w", "fuse"):
            assert after[path].get_submodule(sub) is before[path].get_submodule(sub), path
    for path in KEPT_PATHS:
        assert after[path] is before[path], path
    assert type(after["blocks.1"]) is LookAlike
    assert not any(type(m).__name__ == "sMLPBlock" for m in model.modules())

    # The very same parameter and buffer objects, in the same order, under the same names.
    params_after = list(model.named_parameters())
    assert [n for n, _ in params_after] == [n for n, _ in params_before]
    assert all(a is b for (_, a), (_, b) in zip(params_after, params_before, strict=True))
    buffers_after = list(model.named_buffers())
    assert [n for n, _ in buffers_after] == [n for n, _ in buffers_before]
    assert all(a is b for (_, a), (_, b) in zip(buffers_after, buffers_before, strict=True))

    assert all(p.dtype == torch.float64 for p in model.parameters())
    for name, m in model.named_modules():
        assert m.training == training_before.get(name, mode == "train"), name
    with torch.no_grad():
        assert_close(model(x), y_before, "output after conversion")


def test_convert_spach_keeps_optimizer_working() -> None:
    torch.manual_seed(11)
    model = randomize_(Host().double(), seed=11).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(4, 4, 5, 5, dtype=torch.float64)
    target = torch.randn(4, 4, 5, 5, dtype=torch.float64)

    convert_spach(model)
    assert isinstance(model.named, SparseMLP)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss_before = nn.functional.mse_loss(model(x), target)
    optimizer.zero_grad()
    loss_before.backward()
    optimizer.step()
    # Every weight of the converted blocks moved (the stem's bias has no gradient: the
    # train-mode BNs downstream cancel a per-channel shift).
    prefixes = tuple(f"{path}." for path in BLOCK_PATHS)
    block_params = [name for name in weights if name.startswith(prefixes)]
    assert len(block_params) == 7 * len(BLOCK_PATHS)
    for name in block_params:
        p = model.get_parameter(name)
        assert not torch.equal(p.detach(), weights[name]), f"{name} was not updated"
    loss_after = nn.functional.mse_loss(model(x), target)
    assert loss_after.item() < loss_before.item()


def test_convert_spach_root_block() -> None:
    block = randomize_(sMLPBlock(5, 5, 4).double(), seed=12).eval()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        want = block(x)
    new = convert_spach(block, backend="reference")
    assert isinstance(new, SparseMLP)
    assert new.backend == "reference"
    assert not new.training
    assert new.BN is block.BN and new.fuse is block.fuse
    with torch.no_grad():
        assert_close(new(x), want, "output")


def test_convert_spach_without_blocks_changes_nothing() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 1), HasBN(4), LookAlike(4, 5), nn.ReLU())
    children = list(model.children())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert convert_spach(model) is model
    assert list(model.children()) == children
    assert all(a is b for a, b in zip(model.children(), children, strict=True))
    assert model.state_dict().keys() == state.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_convert_spach_backend_propagates() -> None:
    model = Host()
    convert_spach(model, backend="reference")
    converted = [m for m in model.modules() if isinstance(m, SparseMLP)]
    assert len(converted) == len(BLOCK_PATHS)
    assert all(m.backend == "reference" for m in converted)


def test_convert_spach_accepts_sync_batchnorm() -> None:
    """After nn.SyncBatchNorm.convert_sync_batchnorm (DDP training), blocks still convert."""
    model = nn.Sequential(randomize_(sMLPBlock(5, 5, 4).double(), seed=13)).eval()
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(model[0].BN, nn.SyncBatchNorm)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        want = model(x)  # SyncBatchNorm in eval mode runs without a process group
    convert_spach(model)
    assert isinstance(model[0], SparseMLP) and isinstance(model[0].BN, nn.SyncBatchNorm)
    with torch.no_grad():
        assert_close(model(x), want, "output")


def test_convert_spach_warns_about_a_misshapen_block() -> None:
    """A module called sMLPBlock that is not SPACH's block is left alone, loudly."""

    class sMLPBlock(nn.Module):  # same name, no proj_h/proh_w/fuse
        def __init__(self) -> None:
            super().__init__()
            self.BN = nn.BatchNorm2d(2)

    model = nn.Sequential(nn.Identity(), sMLPBlock())
    with pytest.warns(UserWarning, match=r"left 1 alone: it is called sMLPBlock"):
        convert_spach(model)
    assert type(model[1]).__name__ == "sMLPBlock"


def test_spachs_size_order_is_caught() -> None:
    """SPACH's sMLPBlock(W, H, channels) order given to SparseMLP(channels, height, width)."""
    with pytest.raises(ValueError, match=r"SparseMLP\(14, 14, 32\).*SparseMLP\(32, 14, 14\)"):
        SparseMLP(14, 14, 32)
    m = SparseMLP(channels=14, height=14, width=32)  # meant: keywords build it
    assert (m.channels, m.height, m.width) == (14, 14, 32)
    m = SparseMLP(32, height=14)
    assert (m.channels, m.height, m.width) == (32, 14, 14)
    with pytest.raises(TypeError, match="height both by position and by keyword"):
        SparseMLP(4, 5, height=5)
    with pytest.raises(TypeError, match="missing the size height"):
        SparseMLP(4)
