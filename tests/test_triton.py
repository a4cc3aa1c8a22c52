"""What only the Triton backends have: version 1 (``triton``, the pre-pass and GEMMs of
``smlp_kernels.triton.gemm``) at the sMLPNet stage shapes, across batch chunks and with the
BN -> GELU prologue; both versions' tiles across shapes and channel counts and every tuning
configuration; version 0's (``triton_v0``) fuse-weight blocks read through one pointer;
64-bit offsets, the tuner under graph capture, float32 parameters with 16-bit x. What every
backend must do (layouts, every gradient, determinism, NaN, empty batch, bad input) is in
tests/test_backend_contract.py, which runs both versions.

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

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("triton") is None, reason="triton is not installed"
    ),
    # Every test here runs on the GPU when there is one (on the interpreter without).
    *([pytest.mark.gpu] if ON_GPU else []),
]
FP32_RTOL = 2e-5  # relative to the largest reference value: fp32 accumulation over <= 3C terms


VERSIONS = ["triton", "triton_v0"]


def backend(name: str = "triton"):
    """A Triton backend object (version 1, or "triton_v0"), for calls of its primitives."""
    return smlp_kernels.registry.get_backend(name)


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


def check_fp32_mix(args, grad_layout=None, version="triton"):
    """smlp_mix with backend=version in float32 (args cast from float64, or as given when
    already float32) against the float64 reference: y and all six gradients. Returns y."""
    ref = [None if t is None else t.double() for t in args]
    truth = R.smlp_mix_ref(*ref)
    grad = seeded_randn(truth.shape)
    want = R.smlp_mix_bwd_ref(grad, *ref)
    grad = grad.float() if grad_layout is None else grad_layout(grad.float())
    y, grads = run_fwd_bwd(cast(args, torch.float32), version, grad)
    assert y.dtype == torch.float32 and y.shape == truth.shape
    assert max_rel_err(y, truth) < FP32_RTOL
    for name, arg, got in zip(SMLPMixGrads._fields, args, grads, strict=True):
        if arg is None:  # an absent bias has no gradient
            assert got is None, name
            continue
        assert max_rel_err(got, getattr(want, name)) < FP32_RTOL, name
    return y


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("b,c,c_out,h,w", CASES)
def test_tiles_across_shapes(b, c, c_out, h, w, version):
    """float32 forward and all six gradients where the kernels' pixel boxes, pixel tiles
    and channel tiles split unevenly (the contract suite's shapes are smaller than one
    tile)."""
    check_fp32_mix(make_args(b, c, c_out, h, w), version=version)


BIASES = {"no-bias": (False, False), "row-bias-only": (True, False), "col-bias-only": (False, True)}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("biases", list(BIASES))
def test_bias_variants_and_several_channel_tiles(biases, version):
    """C_out = 70 and C = 80: more than one output-channel tile forward and backward."""
    has_rb, has_cb = BIASES[biases]
    args = make_args(1, 80, 70, 13, 19)
    if not has_rb:
        args[2] = None
    if not has_cb:
        args[4] = None
    check_fp32_mix(args, version=version)


KERNELS = {
    "triton": {"concat_kernel", "fuse_gemm_kernel", "pixel_major_kernel", "fuse_wgrad_kernel",
               "line_wgrad_kernel", "axis_wgrad_kernel", "axis_mix_kernel"},
    "triton_v0": {"mix_fwd_kernel", "mix_wgrad_fuse_kernel", "axis_wgrad_kernel",
                  "axis_mix_kernel"},
}  # fmt: skip


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("index", [0, 1, 2, 3], ids=lambda i: f"config{i}")
def test_every_tuning_config_is_correct(index, version, monkeypatch):
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
    check_fp32_mix(args, version=version)
    grad = seeded_randn((2, 70, 13, 19))
    x = cast(args, torch.float32)[0].requires_grad_()
    wt = cast(args, torch.float32)[3].requires_grad_()
    z = smlp_kernels.col_mix(x, wt, None, backend=version)
    z.backward(grad[:, :20].float())
    assert max_rel_err(z, R.col_mix_ref(args[0], args[3], None)) < FP32_RTOL
    want_axis = R.col_mix_bwd_ref(grad[:, :20], args[0], args[3])
    assert max_rel_err(x.grad, want_axis.x) < FP32_RTOL
    assert max_rel_err(wt.grad, want_axis.weight) < FP32_RTOL
    assert {name for name, _ in used} == KERNELS[version]


LOW_CASES = _helpers.cases("B2-C16-H28-W28 B2-C64-Co48-H7-W7 B2-C12-Co20-H13-W7")

LOW_DTYPES = [
    pytest.param(torch.float16, id="fp16"),
    pytest.param(
        torch.bfloat16,
        id="bf16-upcast" if not ON_GPU else "bf16",
    ),
]


def check_low_precision(args, dtype, params_fp32=False, version="triton"):
    """smlp_mix in a 16-bit dtype: y and all six gradients within 2x PyTorch's own error in
    that dtype (the reference run in it) plus an atol of 1e-3 of the largest value."""
    truth = R.smlp_mix_ref(*args)
    grad = seeded_randn(truth.shape)
    want = R.smlp_mix_bwd_ref(grad, *args)
    low = cast(args, dtype, params_fp32)
    y, grads = run_fwd_bwd(low, version, grad)
    assert y.dtype == dtype
    # PyTorch's own error in this dtype: the reference run with dtype tensors.
    y_pt, grads_pt = run_fwd_bwd(low, "reference", grad)
    atol = 1e-3
    assert max_rel_err(y, truth) <= 2 * max_rel_err(y_pt, truth) + atol
    for name, got, base in zip(SMLPMixGrads._fields, grads, grads_pt, strict=True):
        true = getattr(want, name)
        assert got.dtype == base.dtype, name
        assert max_rel_err(got, true) <= 2 * max_rel_err(base, true) + atol, name


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("params_fp32", [False, True], ids=["params-same", "params-fp32"])
@pytest.mark.parametrize("b,c,c_out,h,w", LOW_CASES)
def test_low_precision_within_twice_pytorch(b, c, c_out, h, w, dtype, params_fp32, version):
    check_low_precision(make_args(b, c, c_out, h, w), dtype, params_fp32, version)


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
    want = R.smlp_mix_ref(*args[:5], torch.cat(blocks, dim=1).double())
    for version in VERSIONS:  # version 1 always concatenates F (a parameter-sized copy)
        y = backend(version).mix(x, rw, rb, cw, cb, *blocks)
        assert max_rel_err(y, want) < FP32_RTOL, version


@pytest.mark.parametrize("version", VERSIONS)
def test_offsets_beyond_2_31_elements(version):
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
    y = smlp_kernels.smlp_mix(x, rw, None, cw, None, fw, backend=version)
    want = R.smlp_mix_ref(x.double(), rw.double(), None, cw.double(), None, fw.double())
    assert max_rel_err(y, want) < 5e-3
    z = smlp_kernels.row_mix(x, rw, None, backend=version)
    assert max_rel_err(z, R.row_mix_ref(x.double(), rw.double(), None)) < 5e-3
    del store, x


def test_automatic_choice():
    """backend=None picks version 1 (triton) for CUDA tensors, never version 0, which runs
    only when named; under the interpreter neither runs unless named, so CPU tensors never
    reach them automatically."""
    from smlp_kernels.registry import resolve_backend

    x = torch.randn(1, 2, 3, 3, device=DEVICE)
    chosen = resolve_backend(None, "mix", x, 2)
    if ON_GPU:
        assert chosen == "triton"
    else:
        assert chosen not in VERSIONS
        assert all(smlp_kernels.backends()[v].available for v in VERSIONS)
    assert (
        smlp_kernels.backends()["triton"].priority > smlp_kernels.backends()["triton_v0"].priority
    )


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


# --------------------------------------------------------------------------------------------
# Version 1: the sMLPNet stage shapes, batch chunks, the BN -> GELU prologue
# --------------------------------------------------------------------------------------------

# The 8 stage shapes of sMLPNet-T and -B (C_out = C), at batch 1.
STAGES = _helpers.cases(
    "T1-B1-C80-H56-W56 T2-B1-C160-H28-W28 T3-B1-C320-H14-W14 T4-B1-C640-H7-W7"
    " B1-B1-C112-H56-W56 B2-B1-C224-H28-W28 B3-B1-C448-H14-W14 B4-B1-C896-H7-W7"
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("b,c,c_out,h,w", STAGES)
def test_v1_stage_shapes(b, c, c_out, h, w, dtype):
    """Version 1 at the real channel counts and sides of every sMLPNet-T and -B stage:
    forward and all six gradients against float64 (float32: tight; float16: 2x PyTorch's
    own error), and the forward with the fused BN -> GELU prologue (whose gradients are the
    mix's, composed by the op layer)."""
    args = make_args(b, c, c_out, h, w)
    if dtype == torch.float32:
        check_fp32_mix(args)
    else:
        check_low_precision(args, dtype)
    check_prologue(args, dtype)  # and the fused BN -> GELU prologue's forward


def _chunks(monkeypatch, images_per_chunk: int, per_image_bytes: int) -> None:
    from smlp_kernels.triton import gemm

    monkeypatch.setattr(gemm, "SCRATCH_BYTES", images_per_chunk * per_image_bytes)
    monkeypatch.delenv(gemm.SCRATCH_ENV, raising=False)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomics", "deterministic"])
def test_v1_batch_chunks(monkeypatch, deterministic):
    """A batch of 5 in chunks of 2, 2 and 1 for the weight gradients (scratch for two images
    of A, G and Z), of 4 and 1 for the forward and input gradient: every chunk's pixels go
    to the right images, and the weight gradients add up over the chunks (the later
    chunks add to the first one's slots); deterministic mode is bitwise reproducible."""
    from smlp_kernels.triton import gemm

    b, c, c_out, h, w = 5, 12, 20, 13, 7
    # The largest scratch per image (mix_wgrad's, float32): A, G and Z.
    _chunks(monkeypatch, 2, h * w * ((3 * c + c_out) * 4 + 2 * c * 4))
    assert gemm._chunk(b, h * w * ((3 * c + c_out) * 4 + 2 * c * 4)) == 2
    assert gemm._chunk(b, h * w * 3 * c * 4) == 4  # the forward's (A only): chunks of 4 and 1
    args = make_args(b, c, c_out, h, w)
    with smlp_kernels.deterministic(deterministic):
        check_fp32_mix(args)
        if deterministic:
            grad = seeded_randn((b, c_out, h, w)).float()
            runs = [run_fwd_bwd(cast(args, torch.float32), "triton", grad) for _ in range(2)]
            for got, again in zip(runs[0][1], runs[1][1], strict=True):
                assert torch.equal(got, again)


def bn_gelu_ref(x, scale, shift):
    """gelu(x * scale + shift) per channel, exact erf GELU, in float64."""
    u = x.double() * scale.double()[:, None, None] + shift.double()[:, None, None]
    return torch.nn.functional.gelu(u)


@pytest.mark.parametrize("chunked", [False, True], ids=["one-chunk", "three-chunks"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("b,c,c_out,h,w", _helpers.cases("B5-C12-Co20-H13-W7 B3-C40-Co24-H7-W57"))
def test_v1_fused_prologue(b, c, c_out, h, w, dtype, chunked, monkeypatch):
    """mix_bn_gelu = smlp_mix(gelu(x * scale + shift)) with the prologue applied as the
    pre-pass loads x: against float64, float32 tightly and float16 within 2x PyTorch's own
    error (BN -> GELU -> smlp_mix in float16). Shifts are non-zero, so gelu(0 * scale +
    shift) != 0 and the padding of the tiles must stay zero for this to pass."""
    if chunked:
        _chunks(monkeypatch, 2, h * w * 3 * c * 4)
    be, x, scale, shift, rw, rb, cw, cb, blocks = check_prologue(
        make_args(b, c, c_out, h, w), dtype
    )
    # NaN in x comes out in the pixels it reaches (its row and column), nowhere else.
    x_nan = x.clone()
    x_nan[0, 0, 1, 2] = float("nan")
    y_nan = be.mix_bn_gelu(x_nan, scale.float(), shift.float(), rw, rb, cw, cb, *blocks)
    hit = torch.zeros(h, w, dtype=torch.bool, device=DEVICE)
    hit[1, :] = True
    hit[:, 2] = True
    assert torch.isnan(y_nan[0][:, hit]).all()
    assert not torch.isnan(y_nan[0][:, ~hit]).any() and not torch.isnan(y_nan[1:]).any()


def check_prologue(args, dtype):
    """Version 1's mix_bn_gelu against float64, float32 tightly and 16-bit within 2x
    PyTorch's own error (BN -> GELU -> smlp_mix in that dtype), with per-channel scales in
    [0.5, 1.5) and non-zero shifts. Returns what it ran on, for further checks."""
    c = args[0].shape[1]
    gen = torch.Generator().manual_seed(5)
    scale = (torch.rand(c, generator=gen, dtype=torch.float64) + 0.5).to(DEVICE)
    shift = torch.randn(c, generator=gen, dtype=torch.float64).to(DEVICE)
    truth = R.smlp_mix_ref(bn_gelu_ref(args[0], scale, shift), *args[1:])
    x, rw, rb, cw, cb, fw = cast(args, dtype)
    blocks = fw.split(c, dim=1)
    be = backend("triton")
    assert be.fused_prologue
    y = be.mix_bn_gelu(x, scale.float(), shift.float(), rw, rb, cw, cb, *blocks)
    assert y.dtype == dtype and y.shape == truth.shape
    if dtype == torch.float32:
        assert max_rel_err(y, truth) < FP32_RTOL
    else:
        unfused = torch.nn.functional.gelu(x.float() * scale.float()[:, None, None]
                                           + shift.float()[:, None, None]).to(dtype)  # fmt: skip
        y_pt = R.smlp_mix_ref(unfused, rw, rb, cw, cb, fw)
        assert max_rel_err(y, truth) <= 2 * max_rel_err(y_pt, truth) + 1e-3
    return be, x, scale, shift, rw, rb, cw, cb, blocks


def test_v1_scratch_budget_from_the_environment(monkeypatch):
    """SMLP_TRITON_SCRATCH_MIB sets the scratch per batch chunk; anything but a positive
    whole number is refused with the variable's name."""
    from smlp_kernels.triton import gemm

    monkeypatch.delenv(gemm.SCRATCH_ENV, raising=False)
    assert gemm.scratch_bytes() == gemm.SCRATCH_BYTES
    monkeypatch.setenv(gemm.SCRATCH_ENV, "3")
    assert gemm.scratch_bytes() == 3 << 20
    assert gemm._chunk(128, 1 << 20) == 3
    for bad in ("0", "-2", "1.5", "lots"):
        monkeypatch.setenv(gemm.SCRATCH_ENV, bad)
        with pytest.raises(ValueError, match=gemm.SCRATCH_ENV):
            gemm.scratch_bytes()
    args = cast(make_args(2, 3, 4, 5, 6), torch.float32)
    with pytest.raises(ValueError, match=gemm.SCRATCH_ENV):
        smlp_kernels.smlp_mix(*args, backend="triton")
