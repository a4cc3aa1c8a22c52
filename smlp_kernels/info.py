"""``python -m smlp_kernels.info``: versions, devices, and each backend's status and why."""

from __future__ import annotations

import importlib.metadata
import platform
import sys

import torch

from . import __version__
from ._extension import extension_status, load_extension
from .registry import backends


def _version_of(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def collect() -> dict:
    """Everything the report shows, as plain data (also handy in bug reports)."""
    devices = [
        f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())
    ]
    ext_ok, ext_reason = extension_status()
    ext = load_extension()
    return {
        "smlp_kernels": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda or "none (CPU build)",
        "triton": _version_of("triton"),
        "cpu_threads": torch.get_num_threads(),
        "cuda_devices": devices,
        "extension": {
            "available": ext_ok,
            "reason": ext_reason,
            "build": ext.build_info() if ext is not None else None,
            # What the extension's own CUDA runtime sees (cudart is linked into it).
            "cuda_runtime": ext.cuda_runtime_info() if ext is not None else None,
        },
        "backends": {
            name: {"available": s.available, "reason": s.reason, "devices": s.device_types}
            for name, s in backends().items()
        },
    }


def main() -> None:
    info = collect()
    print(f"smlp_kernels {info['smlp_kernels']}")
    for key in ("python", "platform", "torch", "torch_cuda", "triton", "cpu_threads"):
        print(f"  {key:<12} {info[key]}")
    print(f"  {'cuda devices':<12} {', '.join(info['cuda_devices']) or 'none'}")
    ext = info["extension"]
    print(f"extension smlp_kernels._C: {'built' if ext['available'] else 'unavailable'}")
    print(f"  {ext['reason']}")
    if ext["build"] is not None:
        for key, value in ext["build"].items():
            print(f"  {key:<12} {value}")
    if ext["cuda_runtime"] is not None and ext["build"]["with_cuda"]:
        rt = ext["cuda_runtime"]
        seen = f"{rt['device_count']} device(s)" + (f" ({rt['error']})" if rt["error"] else "")
        print(f"  {'cuda runtime':<12} {seen}")
    print("backends (automatic choice: the first available one that runs the device):")
    for name, status in info["backends"].items():
        state = "available  " if status["available"] else "unavailable"
        devices = ", ".join("any" if d == "*" else d for d in status["devices"])
        print(f"  {name:<10} {state} devices: {devices:<8} {status['reason']}")


if __name__ == "__main__":
    main()
