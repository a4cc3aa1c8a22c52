"""The custom ops under PyTorch's graph tooling, for every backend that runs here:
``torch.library.opcheck`` on the six ops of smlp_mix, row_mix and col_mix (the two of
bn_gelu_smlp_mix: test_prologue.py), ``torch.compile(fullgraph=True)`` of a model built
from SparseMLP blocks (forward and backward, zero graph breaks), and ``torch.export`` of that
model with a dynamic batch, saved and reloaded.

On a CPU machine the backends are reference, cpu and triton (Triton interpreter, tiny
shapes); on a GPU machine triton and cuda run on CUDA tensors.
"""

from __future__ import annotations

import pytest
import torch
from _helpers import (
    LAYOUTS,
    backend_params,
    detached,
    is_slow,
    layout,
    make_args,
    no_tf32,
    skip_unless_supported,
    small_smlpnet,
)
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func

import smlp_kernels

BACKENDS = backend_params()

# ---------------------------------------------------------------------------------------------
# opcheck: schema, fake (meta) implementation, autograd registration, AOT dispatch
# ---------------------------------------------------------------------------------------------

# (x dtype, parameter dtype, x layout, biases): every layout in float32, then no biases, then
# mixed precision as autocast produces it (a bfloat16 x with float32 parameters).
OPCHECK_CASES = [
    pytest.param(torch.float32, torch.float32, "contiguous", True, id="fp32-contiguous"),
    pytest.param(torch.float32, torch.float32, "channels_last", True, id="fp32-channels_last"),
    pytest.param(torch.float32, torch.float32, "sliced", True, id="fp32-sliced"),
    pytest.param(torch.float32, torch.float32, "contiguous", False, id="fp32-nobias"),
    pytest.param(torch.bfloat16, torch.float32, "contiguous", True, id="bf16-x-fp32-params"),
]


def _with_backends(cases, slow_ids):
    """Every case for every backend; on the Triton interpreter only the cases in slow_ids
    (it runs each op about ten times per opcheck, a second or more each)."""
    out = []
    for be in BACKENDS:
        for case in cases:
            if is_slow(*be.values) and case.id not in slow_ids:
                continue
            out.append(pytest.param(*be.values, *case.values, id=f"{be.id}-{case.id}"))
    return out


@pytest.mark.parametrize(
    "backend, device, x_dtype, param_dtype, kind, bias",
    _with_backends(OPCHECK_CASES, {"fp32-sliced", "bf16-x-fp32-params"}),
)
def test_opcheck_mix(backend, device, x_dtype, param_dtype, kind, bias):
    args = make_args(2, 3, 4, 5, 6, dtype=param_dtype, device=device, bias=bias)
    args[0] = layout(args[0].to(x_dtype), kind)
    skip_unless_supported(backend, "mix", args[0], 4)
    # Inputs that require grad: opcheck also checks the autograd registration.
    leaves = [None if t is None else t.detach().requires_grad_() for t in args]
    torch.library.opcheck(torch.ops.smlp.mix_fwd.default, (*leaves, backend))
    g = torch.randn(2, 4, 5, 6, device=device).to(x_dtype)
    torch.library.opcheck(torch.ops.smlp.mix_bwd.default, (g, *detached(args), backend))


AXIS_CASES = [
    pytest.param(op, kind, id=f"{op}-{kind}") for op in ("row_mix", "col_mix") for kind in LAYOUTS
]


@pytest.mark.parametrize(
    "backend, device, op, kind",
    _with_backends(AXIS_CASES, {"row_mix-sliced", "col_mix-channels_last"}),
)
def test_opcheck_axis_mix(backend, device, op, kind):
    n = 6 if op == "row_mix" else 5
    x = layout(torch.randn(2, 3, 5, 6, device=device), kind)
    skip_unless_supported(backend, op, x, 3)
    weight = torch.randn(n, n, device=device)
    bias = torch.randn(n, device=device)
    fwd = getattr(torch.ops.smlp, f"{op}_fwd").default
    bwd = getattr(torch.ops.smlp, f"{op}_bwd").default
    leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]
    torch.library.opcheck(fwd, (*leaves, backend))
    torch.library.opcheck(fwd, (x, weight, None, backend))
    g = torch.randn(2, 3, 5, 6, device=device)
    torch.library.opcheck(bwd, (g, x, weight, bias, backend))
    torch.library.opcheck(bwd, (g, x, weight, None, backend))


# ---------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True): a model built from SparseMLP blocks, forward and backward
# ---------------------------------------------------------------------------------------------


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in model.named_parameters()}


class _GraphRecorder:
    """A torch.compile backend that counts dynamo's frames and records the ops of the forward
    and backward graphs AOT autograd builds, then hands the graphs to ``compiler``."""

    def __init__(self, compiler: str = "eager") -> None:
        self.frames = 0
        self.fw_ops: set[str] = set()
        self.bw_ops: set[str] = set()
        inner = torch._dynamo.lookup_backend(compiler)
        if compiler == "eager":
            self._aot = aot_autograd(fw_compiler=self._fw, bw_compiler=self._bw)
        else:  # inductor: record dynamo's graph only, inductor runs its own AOT autograd
            self._aot = inner
        self.compiler = compiler

    def _record(self, ops: set[str], gm: torch.fx.GraphModule, example_inputs):
        ops.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return make_boxed_func(gm.forward)

    def _fw(self, gm, example_inputs):
        return self._record(self.fw_ops, gm, example_inputs)

    def _bw(self, gm, example_inputs):
        return self._record(self.bw_ops, gm, example_inputs)

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.frames += 1
        return self._aot(gm, example_inputs)


def _compile_and_compare(backend: str, device: str, compiler: str) -> None:
    torch._dynamo.reset()
    eager = small_smlpnet(backend, device).train()
    compiled_module = small_smlpnet(backend, device).train()
    x = torch.randn(2, 3, 32, 32, device=device)

    with no_tf32():
        x_e = x.clone().requires_grad_()
        y_e = eager(x_e)
        y_e.square().mean().backward()

        recorder = _GraphRecorder(compiler)
        compiled = torch.compile(compiled_module, fullgraph=True, backend=recorder)
        x_c = x.clone().requires_grad_()
        y_c = compiled(x_c)
        y_c.square().mean().backward()

    # fullgraph=True raises on any graph break; one frame means one graph for the model.
    assert recorder.frames == 1
    if compiler == "eager":  # the op is in the traced forward, its backward op in the backward
        assert "smlp.mix_fwd.default" in recorder.fw_ops, recorder.fw_ops
        assert "smlp.mix_bwd.default" in recorder.bw_ops, recorder.bw_ops
    # Inductor fuses and reorders the float32 reductions around the op (BatchNorm, LayerNorm
    # and their backward): 1e-4 relative; the eager compiler runs the same kernels.
    tol = {"rtol": 1e-4, "atol": 1e-5} if compiler == "inductor" else {}
    torch.testing.assert_close(y_c, y_e, **tol)
    torch.testing.assert_close(x_c.grad, x_e.grad, **tol)
    grads_c, grads_e = _grads(compiled_module), _grads(eager)
    assert grads_c.keys() == grads_e.keys()
    for name in grads_e:
        assert grads_e[name] is not None, name
        torch.testing.assert_close(
            grads_c[name], grads_e[name], **tol, msg=lambda m, n=name: f"{n}: {m}"
        )
    # The BN running statistics were updated inside the compiled graph as in eager.
    for (name, b_c), (_, b_e) in zip(
        compiled_module.named_buffers(), eager.named_buffers(), strict=True
    ):
        torch.testing.assert_close(b_c, b_e, **tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_compile_fullgraph_model_forward_backward(backend, device):
    _compile_and_compare(backend, device, "eager")


GPU_BACKENDS = [p for p in BACKENDS if p.values[1] == "cuda"] or [
    pytest.param(
        None, None, id="no-gpu", marks=pytest.mark.skip(reason="needs a CUDA device (GPU backends)")
    )
]


@pytest.mark.slow
@pytest.mark.parametrize("backend, device", GPU_BACKENDS)
def test_compile_fullgraph_model_inductor(backend, device):
    """Inductor generates code around the custom op (BN, GELU, the MLPs) and leaves the op
    itself opaque. GPU backends only: on the CPU, compiling the model's C++ takes half a
    minute on 2 cores; test_compile_fullgraph_all_three_ops_inductor covers inductor there."""
    _compile_and_compare(backend, device, "inductor")


class _AxisOps(torch.nn.Module):
    """smlp_mix, then row_mix and col_mix, all differentiable (the model uses only the first)."""

    def __init__(self, backend: str, device: str, c=3, h=5, w=6):
        super().__init__()
        args = make_args(1, c, c, h, w, device=device)
        self.params = torch.nn.ParameterList([torch.nn.Parameter(t) for t in args[1:]])
        self.backend = backend

    def forward(self, x):
        p, be = self.params, self.backend
        # Indexed, not `*p`: torch 2.11's dynamo (the GPU machines' torch) cannot trace
        # f(x, *parameter_list, kw=...) (NotImplementedError in LIST_EXTEND); 2.13's can.
        y = smlp_kernels.smlp_mix(x, p[0], p[1], p[2], p[3], p[4], backend=be)
        y = smlp_kernels.row_mix(y, p[0], p[1], backend=be)
        return smlp_kernels.col_mix(y, p[2], backend=be)


@pytest.mark.parametrize(
    "backend, device, compiler",
    [pytest.param(*p.values, "eager", id=p.id) for p in BACKENDS]
    + [pytest.param("reference", "cpu", "inductor", id="reference-cpu-inductor")],
)
def test_compile_fullgraph_all_three_ops(backend, device, compiler):
    torch._dynamo.reset()
    model = _AxisOps(backend, device)
    x = torch.randn(2, 3, 5, 6, device=device, requires_grad=True)
    y_eager = model(x)
    y_eager.square().sum().backward()
    want = [x.grad.clone()] + [p.grad.clone() for p in model.parameters()]
    x.grad = None
    model.zero_grad()
    recorder = _GraphRecorder(compiler)
    y = torch.compile(model, fullgraph=True, backend=recorder)(x)
    y.square().sum().backward()
    assert recorder.frames == 1
    for op in ("mix", "row_mix", "col_mix") if compiler == "eager" else ():
        assert f"smlp.{op}_fwd.default" in recorder.fw_ops, recorder.fw_ops
        assert f"smlp.{op}_bwd.default" in recorder.bw_ops, recorder.bw_ops
    torch.testing.assert_close(y, y_eager)
    for got, w in zip([x.grad] + [p.grad for p in model.parameters()], want, strict=True):
        torch.testing.assert_close(got, w)


# ---------------------------------------------------------------------------------------------
# torch.export: dynamic batch, saved and reloaded
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_export_model_dynamic_batch_save_and_load(backend, device, tmp_path):
    model = small_smlpnet(backend, device).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    example = torch.randn(2, 3, 32, 32, device=device)
    ep = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
    targets = [str(n.target) for n in ep.graph.nodes]
    # In eval mode each SparseMLP block is one op, BN -> GELU included.
    calls = [n for n in ep.graph.nodes if str(n.target) == "smlp.mix_bn_gelu_fwd.default"]
    assert len(calls) == 2, targets  # one SparseMLP block per stage
    assert "smlp.mix_fwd.default" not in targets
    # The backend is an argument of the op: the exported graph records which one runs.
    assert all(n.args[-1] == backend for n in calls)
    path = tmp_path / "smlpnet.pt2"
    torch.export.save(ep, path)
    loaded = torch.export.load(path).module()
    with torch.no_grad(), no_tf32():
        for b in (1, 3):
            x = torch.randn(b, 3, 32, 32, device=device)
            torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_export_axis_ops(backend, device, tmp_path):
    model = _AxisOps(backend, device).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(
        model, (torch.randn(2, 3, 5, 6, device=device),), dynamic_shapes={"x": {0: batch}}
    )
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {"smlp.mix_fwd.default", "smlp.row_mix_fwd.default", "smlp.col_mix_fwd.default"} <= (
        targets
    )
    torch.export.save(ep, tmp_path / "ops.pt2")
    loaded = torch.export.load(tmp_path / "ops.pt2").module()
    with torch.no_grad():
        x = torch.randn(4, 3, 5, 6, device=device)
        torch.testing.assert_close(loaded(x), model(x))
