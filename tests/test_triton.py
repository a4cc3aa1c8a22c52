"""What only the triton backend has: its tiles across shapes and channel counts, every tuning
configuration, fuse-weight blocks read through one pointer, 64-bit offsets, the tuner under
graph capture, float32 parameters with 16-bit x. What every backend must do (layouts, every
gradient, determinism, NaN, empty batch, bad input) is in tests/test_backend_contract.py.

Runs on the GPU when there is one, and otherwise on the Triton interpreter (CPU tensors;
tests/conftest.py sets TRITON_INTERPRET=1). On the interpreter bfloat16 takes the
float32-upcast path (the interpreter gets bfloat16 products wrong: it multiplies their bit
patterns), so bfloat16 proper is tested only on a GPU.

Tolerances: float32 against the float64 reference with a tight relative bound;
float16 and bfloat16 at most 2x PyTorch's own error in the same dtype (the reference
computed in that dtype, against float64) plus a small atol scaled to the output.
"""

from __future__ import annotations

import functools
import importlib.util

import _helpers
import pytest
import torch

import smlp_kernels
from smlp_kernels import reference as R
from smlp_kernels.reference import SMLPMixGrads

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
FP32_RTOL = 2e-5  # relative to the largest reference value: fp32 accumulation over <= 3C terms


def backend():
    """The triton backend object, for calls of its primitives."""
    from smlp_kernels.triton import TritonBackend

    return TritonBackend()


# float64 x and parameters on DEVICE (cast per test).
make_args = functools.partial(_helpers.make_args, dtype=torch.float64, device=DEVICE)


def cast(args, dtype, params_fp32=False):
    out = []
    for i, t in enumerate(args):
        if t is None:
            out.append(None)
        else:
            out.append(t.to(torch.float32 if (params_fp32 and i > 0) else dtype))
    return out


def seeded_randn(shape, seed: int = 1) -> torch.Tensor:
    """An upstream gradient drawn from a fixed seed: a failure reproduces. (Unseeded, one
    draw in about a hundred made the B3-C1-Co1-H1-W1 fp16 col_bias gradient, a sum of three
    products that nearly cancel, miss the 2x-PyTorch bound by luck of PyTorch's rounding.)"""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(DEVICE)


def max_rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    assert not torch.isnan(got).any(), "NaN in the output"
    scale = want.abs().max().clamp_min(1e-30)
    return ((got.double() - want.double()).abs().max() / scale).item()


# (B, C, C_out, H, W): scaled-down sMLPNet stages, H != W, sizes 1, 7, 13, 57, B = 1.
CASES = _helpers.cases(
    "stage1-B1-C8-H56-W56 stage2-B2-C16-H28-W28 stage3-B2-C32-H14-W14 stage4-B2-C64-H7-W7"
    " B2-C12-Co20-H13-W7 B1-C5-Co3-H7-W13 B3-C1-Co1-H1-W1 B2-C4-Co6-H1-W13 B2-C4-Co2-H13-W1"
    " B1-C3-Co4-H57-W7 B1-C3-Co4-H7-W57"
)


def run_fwd_bwd(args, backend, grad):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in args]
    y = smlp_kernels.smlp_mix(*leaves, backend=backend)
    y.backward(grad.to(y.dtype))
    return y.detach(), [None if t is None else t.grad for t in leaves]


def check_fp32_mix(args, grad_layout=None):
    """smlp_mix with backend="triton" in float32 (args cast from float64, or as given when
    already float32) against the float64 reference: y and all six gradients. Returns y."""
    ref = [None if t is None else t.double() for t in args]
    truth = R.smlp_mix_ref(*ref)
    grad = seeded_randn(truth.shape)
    want = R.smlp_mix_bwd_ref(grad, *ref)
    grad = grad.float() if grad_layout is None else grad_layout(grad.float())
    y, grads = run_fwd_bwd(cast(args, torch.float32), "triton", grad)
    assert y.dtype == torch.float32 and y.shape == truth.shape
    assert max_rel_err(y, truth) < FP32_RTOL
    for name, arg, got in zip(SMLPMixGrads._fields, args, grads, strict=True):
        if arg is None:  # an absent bias has no gradient
            assert got is None, name
            continue
        assert max_rel_err(got, getattr(want, name)) < FP32_RTOL, name
    return y


@pytest.mark.parametrize("b,c,c_out,h,w", CASES)
def test_tiles_across_shapes(b, c, c_out, h, w):
    """float32 forward and all six gradients where the kernels' pixel boxes and channel tiles
    split unevenly (the contract suite's shapes are smaller than one tile)."""
    check_fp32_mix(make_args(b, c, c_out, h, w))


BIASES = {"no-bias": (False, False), "row-bias-only": (True, False), "col-bias-only": (False, True)}


@pytest.mark.parametrize("biases", list(BIASES))
def test_bias_variants_and_several_channel_tiles(biases):
    """C_out = 70 and C = 80: more than one output-channel tile forward and backward."""
    has_rb, has_cb = BIASES[biases]
    args = make_args(1, 80, 70, 13, 19)
    if not has_rb:
        args[2] = None
    if not has_cb:
        args[4] = None
    check_fp32_mix(args)


@pytest.mark.parametrize("index", [0, 1, 2, 3], ids=lambda i: f"config{i}")
def test_every_tuning_config_is_correct(index, monkeypatch):
    """Force config `index` (modulo each list's length) of every kernel; the tuner would
    otherwise only ever run the default here and the fastest one on a GPU."""
    from smlp_kernels.triton import _tuning

    used = []

    def forced(key, configs, device, run, tune=True):
        cfg = configs[index % len(configs)]
        used.append((key[0], cfg))
        return cfg

    monkeypatch.setattr(_tuning, "pick", forced)
    args = make_args(2, 20, 70, 13, 19)
    check_fp32_mix(args)
    grad = seeded_randn((2, 70, 13, 19))
    x = cast(args, torch.float32)[0].requires_grad_()
    wt = cast(args, torch.float32)[3].requires_grad_()
    z = smlp_kernels.col_mix(x, wt, None, backend="triton")
    z.backward(grad[:, :20].float())
    assert max_rel_err(z, R.col_mix_ref(args[0], args[3], None)) < FP32_RTOL
    want_axis = R.col_mix_bwd_ref(grad[:, :20], args[0], args[3])
    assert max_rel_err(x.grad, want_axis.x) < FP32_RTOL
    assert max_rel_err(wt.grad, want_axis.weight) < FP32_RTOL
    kernels = {name for name, _ in used}
    assert kernels == {
        "mix_fwd_kernel",
        "mix_wgrad_fuse_kernel",
        "axis_wgrad_kernel",
        "axis_mix_kernel",
    }


LOW_CASES = _helpers.cases("B2-C16-H28-W28 B2-C64-Co48-H7-W7 B2-C12-Co20-H13-W7")

LOW_DTYPES = [
    pytest.param(torch.float16, id="fp16"),
    pytest.param(
        torch.bfloat16,
        id="bf16-upcast" if not ON_GPU else "bf16",
    ),
]


@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("params_fp32", [False, True], ids=["params-same", "params-fp32"])
@pytest.mark.parametrize("b,c,c_out,h,w", LOW_CASES)
def test_low_precision_within_twice_pytorch(b, c, c_out, h, w, dtype, params_fp32):
    args = make_args(b, c, c_out, h, w)
    truth = R.smlp_mix_ref(*args)
    grad = seeded_randn(truth.shape)
    want = R.smlp_mix_bwd_ref(grad, *args)
    low = cast(args, dtype, params_fp32)
    y, grads = run_fwd_bwd(low, "triton", grad)
    assert y.dtype == dtype
    # PyTorch's own error in this dtype: the reference run with dtype tensors.
    y_pt, grads_pt = run_fwd_bwd(low, "reference", grad)
    atol = 1e-3
    assert max_rel_err(y, truth) <= 2 * max_rel_err(y_pt, truth) + atol
    for name, got, base in zip(SMLPMixGrads._fields, grads, grads_pt, strict=True):
        true = getattr(want, name)
        assert got.dtype == base.dtype, name
        assert max_rel_err(got, true) <= 2 * max_rel_err(base, true) + atol, name


@pytest.mark.parametrize("kind", ["views", "transposed-views", "separate", "uneven", "expanded"])
def test_mix_takes_fuse_blocks_with_any_strides(kind):
    """F_id, F_row, F_col as any three tensors. Equally spaced views of one storage (the op
    layer's column blocks of fuse_weight, or their transposes) are read through one pointer
    and a block offset, anything else after a concatenation; all give the reference."""
    from smlp_kernels.triton import mix

    c, c_out = 6, 5
    args = make_args(2, c, c_out, 9, 11)
    x, rw, rb, cw, cb, fw = cast(args, torch.float32)
    if kind == "transposed-views":  # the input gradient's blocks: (C, C_out) transposes
        fw = fw.t().contiguous().t()
    blocks = list(fw.split(c, dim=1))
    if kind == "separate":
        blocks = [blocks[0].contiguous(), blocks[1].t().contiguous().t(), blocks[2].clone()]
    elif kind == "uneven":  # one storage, but F_col before F_row
        store = torch.cat([blocks[0], blocks[2], blocks[1]], dim=1)
        blocks = [store[:, :c], store[:, 2 * c :], store[:, c : 2 * c]]
    elif kind == "expanded":
        blocks[0] = blocks[0][:, :1].expand(-1, c)
    f, f_blk = mix._fuse_blocks(*blocks)
    if kind in ("views", "transposed-views"):
        assert f.data_ptr() == blocks[0].data_ptr() and f_blk == c * fw.stride(1)
    else:
        assert f.is_contiguous() and f.shape == (c_out, 3 * c) and f_blk == c
    y = backend().mix(x, rw, rb, cw, cb, *blocks)
    want = R.smlp_mix_ref(*args[:5], torch.cat(blocks, dim=1).double())
    assert max_rel_err(y, want) < FP32_RTOL


def test_offsets_beyond_2_31_elements():
    """x lies in a float16 buffer of 2^32 + 35 elements (8 GiB, mostly never touched, so
    on the CPU only the touched pages are real): batch 1 starts at element 2^31 and channel c
    at c * 2^30, so 32-bit offsets would wrap."""
    c, h, w = 3, 5, 7
    if ON_GPU and torch.cuda.get_device_properties(0).total_memory < 12 * 2**30:
        pytest.skip("needs 8 GiB of free device memory")
    store = torch.empty(2**31 + 2 * 2**30 + h * w, dtype=torch.float16, device=DEVICE)
    x = store.as_strided((2, c, h, w), (2**31, 2**30, w, 1))
    gen = torch.Generator().manual_seed(3)
    x.copy_(torch.randn(2, c, h, w, generator=gen).half())
    rw = torch.randn(w, w, generator=gen).to(DEVICE) / w**0.5
    cw = torch.randn(h, h, generator=gen).to(DEVICE) / h**0.5
    fw = torch.randn(4, 3 * c, generator=gen).to(DEVICE) / (3 * c) ** 0.5
    y = smlp_kernels.smlp_mix(x, rw, None, cw, None, fw, backend="triton")
    want = R.smlp_mix_ref(x.double(), rw.double(), None, cw.double(), None, fw.double())
    assert max_rel_err(y, want) < 5e-3
    z = smlp_kernels.row_mix(x, rw, None, backend="triton")
    assert max_rel_err(z, R.row_mix_ref(x.double(), rw.double(), None)) < 5e-3
    del store, x


def test_automatic_choice():
    """backend=None picks triton for CUDA tensors; under the interpreter it only runs when
    named, so CPU tensors never reach it automatically."""
    from smlp_kernels.registry import resolve_backend

    x = torch.randn(1, 2, 3, 3, device=DEVICE)
    chosen = resolve_backend(None, "mix", x, 2)
    if ON_GPU:
        assert chosen == "triton"
    else:
        assert chosen != "triton"
        assert smlp_kernels.backends()["triton"].available


def test_tuner_never_benchmarks_under_graph_capture(monkeypatch):
    from smlp_kernels.triton import _tuning

    calls = []
    from smlp_kernels.triton import mix

    configs = mix.configs(80, 80, 56, 56)
    assert len(configs) > 1
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    cfg = _tuning.pick(("test-key",), configs, torch.device("cuda", 0), calls.append)
    assert cfg == configs[0] and calls == []
    assert ("test-key", "cuda:0") not in _tuning._CACHE
    monkeypatch.setenv(_tuning.AUTOTUNE_ENV, "0")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert _tuning.pick(("test-key",), configs, torch.device("cuda", 0), calls.append) == configs[0]
    assert calls == []
