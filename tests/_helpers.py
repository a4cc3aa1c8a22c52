"""Shared helpers of the cross-backend tests (compile/export, autocast, FLOPs, memory, fuzz,
CUDA graphs): arguments, layouts, and which backends can run here, on which device.

Backends are discovered with :func:`smlp_kernels.backends`, so the same tests cover
``reference``, ``cpu`` and ``triton`` (on the Triton interpreter) on a CPU machine, and
``triton`` and ``cuda`` on CUDA tensors on a GPU machine.
"""

from __future__ import annotations

import contextlib
import os
import re

import pytest
import torch

import smlp_kernels
from smlp_kernels import registry

HAS_CUDA = torch.cuda.is_available()


def cpu_extension_or_skip():
    """The compiled extension, for a test module of the cpu backend's launchers; at module
    level, skips the module when the cpu backend is unavailable (fails instead under
    SMLP_REQUIRE_EXTENSION=1)."""
    status = smlp_kernels.backends()["cpu"]
    if not status.available:
        if os.environ.get("SMLP_REQUIRE_EXTENSION") == "1":
            pytest.fail(
                f"SMLP_REQUIRE_EXTENSION=1 but the cpu backend is unavailable: {status.reason}"
            )
        pytest.skip(f"cpu backend unavailable: {status.reason}", allow_module_level=True)
    return smlp_kernels._extension.require_extension()


def backend_devices() -> list[tuple[str, str]]:
    """(backend, device) for every backend that can run here: on CUDA when the backend takes
    CUDA tensors and there is a GPU, else on the CPU (the reference runs on the CPU)."""
    out = []
    for name, status in smlp_kernels.backends().items():
        if not status.available:
            continue
        if "cuda" in status.device_types and HAS_CUDA:
            out.append((name, "cuda"))
        elif "cpu" in status.device_types or "*" in status.device_types:
            out.append((name, "cpu"))
    return sorted(out)


# The backends a GPU machine must have: without them the GPU-only tests would be parametrized
# over nothing (or fall back to the reference) and pass without testing the kernels.
GPU_BACKEND_NAMES = ("cuda", "triton", "triton_v0")
# The Triton backends: version 1 and version 0 (both on the interpreter without a GPU).
TRITON_BACKENDS = ("triton", "triton_v0")


def missing_gpu_backends() -> dict[str, str]:
    """{name: why} for each of GPU_BACKEND_NAMES that cannot run on CUDA tensors here."""
    status = smlp_kernels.backends()
    out = {}
    for name in GPU_BACKEND_NAMES:
        s = status.get(name)
        if s is None:
            out[name] = "not registered"
        elif not s.available or "cuda" not in s.device_types:
            out[name] = s.reason
    return out


@contextlib.contextmanager
def no_tf32():
    """float32 convolutions in full precision while comparing two runs of a model (compiled
    or exported against eager). PyTorch lets cuDNN convolutions use TF32 by default; then an
    fp32 rounding difference upstream (inductor's fused BatchNorm, say) can flip an input's
    TF32 rounding, a 1e-3 relative change, and the comparison fails for no fault of ours."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = old


def backend_params() -> list:
    """:func:`backend_devices` as pytest params with ids like ``triton-cpu``."""
    return [pytest.param(name, dev, id=f"{name}-{dev}") for name, dev in backend_devices()]


def is_slow(backend: str, device: str) -> bool:
    """True for the Triton interpreter: keep shapes and example counts small."""
    return backend in TRITON_BACKENDS and device == "cpu"


def unsupported(backend: str, op: str, x: torch.Tensor, out_channels: int) -> str | None:
    """Why ``backend`` cannot run ``op`` on x, or None (the registry's own answer)."""
    return registry.get_backend(backend).unsupported_reason(op, x, out_channels)


def skip_unless_supported(backend: str, op: str, x: torch.Tensor, out_channels: int) -> None:
    why = unsupported(backend, op, x, out_channels)
    if why is not None:
        pytest.skip(f"{backend}: {why}")


_CASE = re.compile(r"B(\d+)-C(\d+)(?:-Co(\d+))?-H(\d+)-W(\d+)")


def cases(spec: str) -> list:
    """pytest params (B, C, C_out, H, W) from whitespace-separated ids such as
    ``B2-C3-Co5-H4-W6`` or ``stage4-B2-C64-H7-W7`` (C_out = C when ``-Co`` is absent); each
    id is kept as the param's id, so a failure names its shape."""
    out = []
    for token in spec.split():
        m = _CASE.search(token)
        if m is None:
            raise ValueError(f"cases: {token!r} names no B..-C..-H..-W.. shape")
        b, c, c_out, h, w = m.groups()
        dims = (int(b), int(c), int(c_out or c), int(h), int(w))
        out.append(pytest.param(*dims, id=token))
    return out


def make_args(
    b: int,
    c: int,
    c_out: int,
    h: int,
    w: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    bias: bool = True,
    seed: int = 0,
    requires_grad: bool = False,
) -> list[torch.Tensor | None]:
    """[x, row_weight, row_bias, col_weight, col_bias, fuse_weight], scaled so that outputs
    are O(1); drawn in float64 on the CPU, then cast and moved."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        t = torch.randn(*shape, generator=g, dtype=torch.float64) * scale
        return t.to(device=device, dtype=dtype).requires_grad_(requires_grad)

    return [
        rand(b, c, h, w),
        rand(w, w, scale=w**-0.5),
        rand(w) if bias else None,
        rand(h, h, scale=h**-0.5),
        rand(h) if bias else None,
        rand(c_out, 3 * c, scale=(3 * c) ** -0.5),
    ]


def detached(args):
    return [None if t is None else t.detach() for t in args]


LAYOUTS = ("contiguous", "channels_last", "sliced")


def layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as x, laid out as ``kind`` (a sliced view: every second channel and
    column of a larger tensor)."""
    if kind == "contiguous":
        return x.contiguous()
    if kind == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "sliced":
        b, c, h, w = x.shape
        big = torch.zeros(b, 2 * c, h, 2 * w + 1, dtype=x.dtype, device=x.device)
        view = big[:, ::2, :, 1::2]
        view.copy_(x)
        return view
    raise ValueError(kind)


def small_smlpnet(backend: str, device: str, *, dim: int = 4, image_size: int = 32, **kw):
    """A two-stage sMLPNet (patch 4: 8x8 then 4x4 maps, C = dim then 2 dim) whose token
    mixers are SparseMLP blocks running ``backend``; seeded, so two calls build equal
    models."""
    from smlp_kernels.models import SMLPNet

    torch.manual_seed(0)
    model = SMLPNet(
        in_chans=3,
        dim=dim,
        depths=(1, 1),
        image_size=image_size,
        patch_size=4,
        num_classes=5,
        backend=backend,
        **kw,
    )
    return model.to(device)


def bench_report_meta(**changes) -> dict:
    """The ``meta`` of a made-up smlp-bench report (for ``bench.report.build_report``), with
    ``changes`` applied."""
    meta = {
        "date": "2026-01-01T00:00:00+00:00",
        "git_commit": None,
        "device": {"type": "cpu", "name": "test"},
        "versions": {"torch": torch.__version__, "smlp_kernels": "test"},
        "suites": ["test"],
        "timing": {"method_note": "test"},
        "duration_s": 0.0,
    }
    return {**meta, **changes}
