"""The graph tooling as the very first thing a process does.

A user's script often compiles or exports a model before anything else touches the
package. Then the registry's first availability check (which imports the extension or
triton) runs while dynamo traces the model, and jit.trace sees the op's first call. The rest
of the suite cannot catch these: by the time a test runs, earlier tests have made those
calls. So each case here runs in a fresh Python process that imports smlp_kernels and does
nothing before the call under test; afterwards the same process checks the result against
the eager module.

The saved TorchScript file is reloaded in a second fresh process, which imports
smlp_kernels (that registers the ``smlp::`` ops the file calls) and nothing else.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import smlp_kernels

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
TIMEOUT_S = 900  # a hang guard: an inductor compile on 2 cores takes well under a minute


def _backend_params() -> list:
    """None (the automatic choice) and every backend that runs on DEVICE without asking
    for the Triton interpreter (which this file's fresh processes leave off)."""
    out = [pytest.param(None, id="auto")]
    for name, status in smlp_kernels.backends().items():
        if not status.available:
            continue
        if name in ("triton", "triton_v0") and not HAS_CUDA:
            continue  # their interpreter mode: covered by TRITON_CASE below
        if "*" in status.device_types or DEVICE in status.device_types:
            out.append(pytest.param(name, id=name))
    return out


BACKENDS = _backend_params()

_PRELUDE = """
import sys
import torch
from smlp_kernels.nn import SparseMLP

backend = sys.argv[1] if sys.argv[1] != "auto" else None
torch.manual_seed(0)
model = SparseMLP(4, 5, 6, backend=backend).to("{device}")
x = torch.randn(2, 4, 5, 6, device="{device}")
"""

# After the call under test: the same process compares with eager (the backend was resolved
# inside the traced code, so this is the first eager call).
_CHECK = """
with torch.no_grad():
    expected = model(x)
    got = got.detach()
assert got.shape == expected.shape, (got.shape, expected.shape)
torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
print("OK", tuple(got.shape))
"""

SCRIPTS = {
    "compile-aot_eager": """
got = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
""",
    "compile-inductor": """
got = torch.compile(model, fullgraph=True)(x)
""",
    "compile-backward": """
xg = x.clone().requires_grad_()
out = torch.compile(model, fullgraph=True, backend="aot_eager")(xg)
out.square().sum().backward()
compiled_grads = [xg.grad] + [p.grad for p in model.parameters()]
model.zero_grad()
xe = x.clone().requires_grad_()
model(xe).square().sum().backward()
for a, b in zip(compiled_grads, [xe.grad] + [p.grad for p in model.parameters()]):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
got = out
""",
    "export-strict": """
ep = torch.export.export(model, (x,), strict=True)
got = ep.module()(x)
""",
    "export-nonstrict": """
ep = torch.export.export(model, (x,), strict=False)
got = ep.module()(x)
""",
}


def _env(interpret: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SMLP_BACKEND", "TRITON_INTERPRET")}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    # The package as the test session imports it (an editable install or a source tree).
    root = str(Path(importlib.util.find_spec("smlp_kernels").origin).parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def _run(code: str, args: list[str], cwd: Path, env: dict[str, str]) -> str:
    script = cwd / "script.py"
    script.write_text(textwrap.dedent(code))
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
        f"--- stderr\n{proc.stderr[-8000:]}"
    )
    return proc.stdout


# Every script on the automatic choice, whose first call checks every registered backend's
# availability (the extension, triton); the two commonest paths on each backend by name too.
# Each case is a fresh interpreter (a few seconds): the list stays short.
FIRST_CALL_CASES = [pytest.param(case, None, id=f"{case}-auto") for case in sorted(SCRIPTS)] + [
    pytest.param(case, be.values[0], id=f"{case}-{be.id}")
    for be in BACKENDS
    if be.values[0] is not None
    for case in ("compile-aot_eager", "export-strict")
]


@pytest.mark.slow
@pytest.mark.parametrize("case, backend", FIRST_CALL_CASES)
def test_first_call_in_a_fresh_process(case, backend, tmp_path):
    code = _PRELUDE.format(device=DEVICE) + SCRIPTS[case] + _CHECK
    out = _run(code, [backend or "auto"], tmp_path, _env())
    assert "OK (2, 4, 5, 6)" in out


@pytest.mark.slow
@pytest.mark.skipif(
    HAS_CUDA or importlib.util.find_spec("triton") is None,
    reason="the Triton interpreter case is for CPU machines with triton installed",
)
@pytest.mark.parametrize("case", ["compile-aot_eager", "export-strict"])
def test_first_call_on_the_triton_interpreter(case, tmp_path):
    code = _PRELUDE.format(device="cpu") + SCRIPTS[case] + _CHECK
    out = _run(code, ["triton"], tmp_path, _env(interpret=True))
    assert "OK (2, 4, 5, 6)" in out


@pytest.mark.slow
@pytest.mark.parametrize("backend", [None], ids=["auto"])
def test_jit_trace_saves_and_reloads_in_a_fresh_process(backend, tmp_path):
    save = (
        _PRELUDE.format(device=DEVICE)
        + """
model.eval()
traced = torch.jit.trace(model, (x,))
# The trace records the registered op (in eval mode BN -> GELU -> mix), not a Python call.
assert "smlp::mix_bn_gelu_fwd" in str(traced.graph), traced.graph
torch.jit.save(traced, "traced.pt")
with torch.no_grad():
    torch.save({"x": x.cpu(), "y": model(x).cpu()}, "io.pt")
print("SAVED")
"""
    )
    assert "SAVED" in _run(save, [backend or "auto"], tmp_path, _env())
    load = f"""
import torch
import smlp_kernels  # registers the smlp:: ops the file calls

loaded = torch.jit.load("traced.pt", map_location="{DEVICE}")
io = torch.load("io.pt")
with torch.no_grad():
    y = loaded(io["x"].to("{DEVICE}")).cpu()
torch.testing.assert_close(y, io["y"], rtol=0, atol=0)
print("RELOADED")
"""
    assert "RELOADED" in _run(load, [], tmp_path, _env())


def test_jit_trace_output_saves_in_process(tmp_path):
    """The same as above in this process, fast: the saved file must hold the op."""
    model = smlp_kernels.SparseMLP(4, 5, 6, backend="reference").eval()
    x = torch.randn(2, 4, 5, 6)
    traced = torch.jit.trace(model, (x,))
    path = tmp_path / "traced.pt"
    torch.jit.save(traced, str(path))
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert "smlp::mix_bn_gelu_fwd" in str(loaded.graph)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_jit_script_is_refused_with_a_clear_error():
    """TorchScript compilation of the module is not supported; it must say so, not crash."""
    model = smlp_kernels.SparseMLP(4, 5, 6)
    with pytest.raises(torch.jit.frontend.NotSupportedError):
        torch.jit.script(model)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.values[0] is not None])
def test_jit_trace_records_every_op(backend):
    """row_mix and col_mix trace to their registered ops too (in this process: fast)."""
    x = torch.randn(2, 3, 4, 5, device=DEVICE)
    rw, cw = torch.randn(5, 5, device=DEVICE), torch.randn(4, 4, device=DEVICE)

    def fn(x):
        return smlp_kernels.row_mix(x, rw, backend=backend) + smlp_kernels.col_mix(
            x, cw, backend=backend
        )

    traced = torch.jit.trace(fn, (x,))
    graph = str(traced.graph)
    assert "smlp::row_mix_fwd" in graph and "smlp::col_mix_fwd" in graph, graph
    torch.testing.assert_close(traced(x), fn(x), rtol=0, atol=0)
