"""CUDA graphs: the op is captured with ``torch.cuda.graph`` (forward, and forward+backward)
and with ``torch.cuda.make_graphed_callables``, after autotuning has run, and replayed with
new data copied into the static input; the replay equals eager. A shape first seen during
capture is captured with the default tile (the Triton tuner never benchmarks while a graph
is being captured) and tuned by the next ordinary call.

Needs a GPU: skipped on the CPU machine. Not yet run on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from _helpers import HAS_CUDA, backend_devices, make_args, missing_gpu_backends

import smlp_kernels

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_CUDA, reason="CUDA graphs need a CUDA device"),
]

# No GPU backend: skipped, not run with backend=None (which would pick the reference).
GPU_BACKENDS = [
    pytest.param(name, id=name) for name, device in backend_devices() if device == "cuda"
] or [pytest.param(None, id="no-gpu-backend", marks=pytest.mark.skip(reason="no GPU backend"))]
DTYPES = [
    pytest.param(torch.float32, torch.float32, id="fp32"),
    pytest.param(torch.bfloat16, torch.float32, id="bf16-x-fp32-params"),
]
SHAPE = (4, 16, 24, 14, 14)  # B, C, C_out, H, W


def test_gpu_backends_are_available():
    """On a GPU machine the GPU tests here and in the other files run the triton and cuda
    backends; one that is missing (Triton not installed, _C built without CUDA) would
    otherwise drop out of every parametrization silently."""
    assert missing_gpu_backends() == {}


def _warm_up(fn, iters: int = 3) -> None:
    """Run fn on a side stream, as PyTorch's CUDA-graph recipe asks: kernels get compiled
    and autotuned (the tuner benchmarks here), and the allocator settles."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(iters):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()


def _params(x_dtype, p_dtype, requires_grad=False, shape=SHAPE):
    args = make_args(*shape, dtype=p_dtype, device="cuda", requires_grad=requires_grad)
    x = args[0].detach().to(x_dtype)
    return x, args[1:]


def _tol(dtype):
    # Same kernels and configuration in the replay as in eager: forward bits agree; weight
    # gradients may differ in the order of atomic additions.
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}


@pytest.mark.parametrize("x_dtype, p_dtype", DTYPES)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_capture_forward_after_autotuning_and_replay(backend, x_dtype, p_dtype):
    x, params = _params(x_dtype, p_dtype)
    static_x = x.clone()
    _warm_up(lambda: smlp_kernels.smlp_mix(static_x, *params, backend=backend))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = smlp_kernels.smlp_mix(static_x, *params, backend=backend)
    for seed in range(3):
        new_x = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x)
        static_x.copy_(new_x)
        graph.replay()
        torch.cuda.synchronize()
        eager = smlp_kernels.smlp_mix(new_x, *params, backend=backend)
        assert torch.equal(static_y, eager), seed


@pytest.mark.parametrize("x_dtype, p_dtype", DTYPES)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_capture_forward_and_backward(backend, x_dtype, p_dtype):
    """Whole-step capture (forward, backward into .grad), PyTorch's documented pattern."""
    x, params = _params(x_dtype, p_dtype, requires_grad=True)
    static_x = x.clone().requires_grad_()
    static_grad = torch.randn(SHAPE[0], SHAPE[2], SHAPE[3], SHAPE[4], device="cuda").to(x_dtype)
    leaves = [static_x, *[p for p in params if p is not None]]

    def step():
        for t in leaves:
            t.grad = None
        smlp_kernels.smlp_mix(static_x, *params, backend=backend).backward(static_grad)

    _warm_up(step)
    for t in leaves:
        t.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = smlp_kernels.smlp_mix(static_x, *params, backend=backend)
        static_y.backward(static_grad)
    static_grads = [t.grad for t in leaves]
    assert all(g is not None for g in static_grads)

    for seed in range(2):
        new_x = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x)
        with torch.no_grad():
            static_x.copy_(new_x)
        graph.replay()
        torch.cuda.synchronize()
        eager_x = new_x.clone().requires_grad_()
        eager_params = [p.detach().clone().requires_grad_() for p in params]
        eager_y = smlp_kernels.smlp_mix(eager_x, *eager_params, backend=backend)
        eager_y.backward(static_grad)
        assert torch.equal(static_y, eager_y.detach())
        want = [eager_x.grad, *[p.grad for p in eager_params]]
        for g, w in zip(static_grads, want, strict=True):
            torch.testing.assert_close(g, w, **_tol(x_dtype))


class _Mix(torch.nn.Module):
    def __init__(self, backend, params):
        super().__init__()
        self.backend = backend
        self.params = torch.nn.ParameterList([torch.nn.Parameter(p) for p in params])

    def forward(self, x):
        return smlp_kernels.smlp_mix(x, *self.params, backend=self.backend)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_make_graphed_callables(backend):
    x, params = _params(torch.float32, torch.float32)
    module = _Mix(backend, params)
    eager = _Mix(backend, [p.detach().clone() for p in params])
    sample = x.clone().requires_grad_()
    graphed = torch.cuda.make_graphed_callables(module, (sample,))
    for seed in range(2):
        new_x = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).cuda()
        xg, xe = new_x.clone().requires_grad_(), new_x.clone().requires_grad_()
        module.zero_grad(set_to_none=True)
        eager.zero_grad(set_to_none=True)
        yg, ye = graphed(xg), eager(xe)
        g = torch.randn_like(ye)
        yg.backward(g)
        ye.backward(g)
        torch.testing.assert_close(yg, ye, rtol=0, atol=0)
        torch.testing.assert_close(xg.grad, xe.grad, **_tol(torch.float32))
        for pg, pe in zip(module.parameters(), eager.parameters(), strict=True):
            torch.testing.assert_close(pg.grad, pe.grad, **_tol(torch.float32))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_fresh_shape_is_not_tuned_during_capture(backend, monkeypatch):
    """A shape whose tile was never tuned: the kernels are compiled with tuning off (so the
    tuner has no entry), then captured with tuning on. Nothing is benchmarked during the
    capture, the replay is right, and the next ordinary call tunes."""
    shape = (2, 24, 40, 11, 13)
    x, params = _params(torch.float32, torch.float32, shape=shape)
    static_x = x.clone()
    run = lambda: smlp_kernels.smlp_mix(static_x, *params, backend=backend)  # noqa: E731

    if backend in ("triton", "triton_v0"):
        import triton.testing

        from smlp_kernels.triton import _tuning

        # Fresh for certain: an earlier test (the fuzz, say) may have tuned this shape.
        _tuning.clear_cache()
        monkeypatch.setenv(_tuning.AUTOTUNE_ENV, "0")
        _warm_up(run, iters=1)  # compiles the default tiles, caches no choice
        monkeypatch.delenv(_tuning.AUTOTUNE_ENV)
        keys_before = set(_tuning._CACHE)
        benchmarked = []
        real_do_bench = triton.testing.do_bench

        def spy(*a, **kw):
            benchmarked.append(torch.cuda.is_current_stream_capturing())
            return real_do_bench(*a, **kw)

        monkeypatch.setattr(triton.testing, "do_bench", spy)
    else:
        _warm_up(run, iters=1)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = run()
    if backend in ("triton", "triton_v0"):
        assert benchmarked == [] and set(_tuning._CACHE) == keys_before
    new_x = torch.randn_like(x)
    static_x.copy_(new_x)
    graph.replay()
    torch.cuda.synchronize()
    # The eager call may run the tuned tile, the replay ran the default one: equal up to the
    # order of float32 additions, not necessarily in every bit.
    eager = smlp_kernels.smlp_mix(new_x, *params, backend=backend)
    torch.testing.assert_close(static_y, eager, **_tol(torch.float32))
    if backend in ("triton", "triton_v0"):  # the ordinary call above tuned, outside any capture
        assert benchmarked and not any(benchmarked)
        assert len(_tuning._CACHE) > len(keys_before)
