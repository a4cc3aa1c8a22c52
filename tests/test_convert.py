"""smlp_kernels.convert: the attention-zoo sMLP block (nn.Linear layers, fuse bias, identity
last), SPACH's block, hooks, the report, and what is left alone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import smlp_kernels
from smlp_kernels import Conversion, LinearSparseMLP, SparseMLP, convert
from smlp_kernels.reference import SpachStyleSMLPBlock

C, H, W = 3, 4, 5


class ZooBlock(nn.Module):
    """The sMLP block of attention-zoo repositories, as people copy it."""

    def __init__(self, h: int = 224, w: int = 224, c: int = 3, bias: bool = True) -> None:
        super().__init__()
        self.proj_h = nn.Linear(h, h)
        self.proj_w = nn.Linear(w, w)
        self.fuse = nn.Linear(3 * c, c, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x_h = self.proj_h(x.permute(0, 1, 3, 2)).permute(0, 1, 3, 2)
        x_w = self.proj_w(x)
        x_id = x
        x_fuse = torch.cat([x_h, x_w, x_id], dim=1)
        return self.fuse(x_fuse.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class WrongOrder(ZooBlock):
    """The same layers, but the identity first: not the function convert replaces."""

    def forward(self, x: Tensor) -> Tensor:
        x_h = self.proj_h(x.permute(0, 1, 3, 2)).permute(0, 1, 3, 2)
        cat = torch.cat([x, x_h, self.proj_w(x)], dim=1)
        return self.fuse(cat.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class sMLPBlock(SpachStyleSMLPBlock):  # SPACH's class name: convert recognises it by name
    pass


class Host(nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(C, C, 1)
        self.zoo = nn.Sequential(ZooBlock(H, W, C, bias=bias), nn.GELU())
        self.spach = sMLPBlock(C, H, W)
        self.odd = WrongOrder(H, W, C)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = x + self.zoo(x)
        x = x + self.spach(x)
        return x + self.odd(x)


def _outputs_and_grads(model: nn.Module, x: Tensor, g: Tensor) -> list[Tensor]:
    x = x.clone().requires_grad_()
    model.zero_grad()
    model(x).backward(g)
    return [x.grad, *(p.grad for p in model.parameters())]


@pytest.mark.parametrize("bias", [True, False], ids=["fuse_bias", "no_fuse_bias"])
def test_convert_zoo_and_spach_blocks_in_place(bias: bool) -> None:
    torch.manual_seed(0)
    model = Host(bias).double().train()
    original = copy.deepcopy(model)
    params = dict(model.named_parameters())
    x = torch.randn(2, C, H, W, dtype=torch.float64)
    g = torch.randn(2, C, H, W, dtype=torch.float64)

    report: list[Conversion] = []
    with pytest.warns(UserWarning, match=r"convert: left odd alone: its forward computes"):
        out = convert(model, report=report)
    assert out is model
    assert isinstance(model.zoo[0], LinearSparseMLP) and isinstance(model.spach, SparseMLP)
    assert type(model.odd) is WrongOrder
    assert [(r.name, r.kind, r.converted) for r in report] == [
        ("zoo.0", "linear", True),
        ("spach", "spach", True),
        ("odd", "linear", False),
    ]
    # The same parameter objects under the same names: nothing copied.
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters())
    assert (model.zoo[0].fuse.bias is not None) == bias

    want = _outputs_and_grads(original, x, g)
    got = _outputs_and_grads(model, x, g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_convert_root_zoo_block_keeps_its_state_dict_keys() -> None:
    block = ZooBlock(H, W, C).double().eval()
    new = smlp_kernels.convert_spach(block, backend="reference")  # the alias converts it too
    assert isinstance(new, LinearSparseMLP) and new.backend == "reference" and not new.training
    assert new.state_dict().keys() == block.state_dict().keys()
    x = torch.randn(2, C, H, W, dtype=torch.float64)
    torch.testing.assert_close(new(x), block(x), rtol=1e-12, atol=1e-12)


def test_hooks_on_a_block_carry_over_and_on_its_submodules_refuse_it() -> None:
    model = nn.Sequential(ZooBlock(H, W, C), sMLPBlock(C, H, W), ZooBlock(H, W, C)).double()
    calls: list[str] = []
    handles = [
        model[0].register_forward_pre_hook(lambda m, a: calls.append("pre0")),
        model[0].register_forward_hook(lambda m, a, y: calls.append("post0")),
        model[1].register_forward_hook(lambda m, a, y: calls.append("post1")),
    ]
    model[2].fuse.register_forward_hook(lambda m, a, y: calls.append("fuse2"))
    report: list[Conversion] = []
    with pytest.warns(UserWarning, match=r"left 2 alone: its submodule fuse has hooks"):
        convert(model, report=report)
    assert [r.converted for r in report] == [True, True, False]
    assert isinstance(model[0], LinearSparseMLP) and isinstance(model[1], SparseMLP)
    assert type(model[2]) is ZooBlock
    model(torch.randn(1, C, H, W, dtype=torch.float64))
    assert calls == ["pre0", "post0", "post1", "fuse2"]
    for h in handles:  # the handles still remove the hooks from the new blocks
        h.remove()
    calls.clear()
    model(torch.randn(1, C, H, W, dtype=torch.float64))
    assert calls == ["fuse2"]


def test_a_linear_block_with_other_parameters_is_not_recognised() -> None:
    block = ZooBlock(H, W, C)
    block.scale = nn.Parameter(torch.ones(()))  # something the replacement would leave out
    model = nn.Sequential(block)
    report: list[Conversion] = []
    assert convert(model, report=report) is model
    assert model[0] is block and report == []


def test_transforms_through_a_converted_block() -> None:
    """The replacement is differentiable under torch.func (fuse bias included)."""
    block = ZooBlock(H, W, C).double()
    new = convert(copy.deepcopy(block), backend="cpu")
    params = dict(block.named_parameters())
    x = torch.randn(2, C, H, W, dtype=torch.float64)

    def loss(m):
        return lambda p, x: (torch.func.functional_call(m, p, (x,)) ** 2).sum()

    got = torch.func.vmap(torch.func.grad(loss(new)), in_dims=(None, 0))(params, x[:, None])
    want = torch.func.vmap(torch.func.grad(loss(block)), in_dims=(None, 0))(params, x[:, None])
    for name in params:
        torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-12, msg=name)


def test_the_forward_check_runs_in_float64_whatever_the_blocks_dtype() -> None:
    """A float16 block is checked on a float64 copy: the wrong cat order is still caught."""
    model = nn.Sequential(ZooBlock(H, W, C).half(), WrongOrder(H, W, C).half())
    report: list[Conversion] = []
    with pytest.warns(UserWarning, match=r"left 1 alone: its forward computes"):
        convert(model, report=report)
    assert [r.converted for r in report] == [True, False]
    assert model[0].fuse.weight.dtype == torch.float16  # the block itself is untouched


def test_a_block_that_cannot_be_copied_for_the_check_is_left_alone() -> None:
    import threading

    block = ZooBlock(H, W, C)
    block.lock = threading.Lock()  # deepcopy refuses it
    model = nn.Sequential(block)
    with pytest.warns(UserWarning, match=r"left 0 alone: it cannot be copied"):
        convert(model)
    assert model[0] is block
