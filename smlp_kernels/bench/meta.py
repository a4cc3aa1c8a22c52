"""Where and with what a run happened: device name, versions, git commit, date."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path

import torch

from .. import __version__

__all__ = [
    "collect_metadata",
    "cudnn_tf32_allowed",
    "device_name",
    "fp32_matmul_may_use_tf32",
    "fp32_matmul_setting",
    "git_commit",
]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_name(device: torch.device) -> str:
    """A human name: the GPU's (``NVIDIA H100 80GB HBM3``) or the CPU model and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def fp32_matmul_setting() -> str:
    """How float32 matmuls run, for the record: ``torch.get_float32_matmul_precision()``
    ("highest", "high", "medium"), or the per-backend setting of the newer API.

    Once anything in the process has set ``torch.backends.cuda.matmul.fp32_precision`` (or
    another backend's) along with the legacy setting, the legacy getter raises RuntimeError
    (torch >= 2.9); then this returns e.g. ``"fp32_precision: cuda.matmul=tf32"``.
    """
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError:
        matmul = getattr(getattr(torch.backends, "cuda", None), "matmul", None)
        value = getattr(matmul, "fp32_precision", None)
        return f"fp32_precision: cuda.matmul={value}"


def fp32_matmul_may_use_tf32() -> bool:
    """Whether float32 matmuls may use TF32 (or bfloat16 passes) under the current settings."""
    setting = fp32_matmul_setting()
    if setting.startswith("fp32_precision"):
        return not setting.endswith("=ieee")
    return setting != "highest"


def cudnn_tf32_allowed() -> bool:
    """Whether cuDNN convolutions (the SPACH-style baseline) may use TF32 for float32."""
    try:
        return bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:  # the newer API was mixed with the legacy one
        conv = getattr(torch.backends.cudnn, "conv", None)
        return getattr(conv, "fp32_precision", "tf32") != "ieee"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# Names the commit of a copy of the source that is not a git checkout (a working tree copied
# to a machine without its .git folder): "HASH", or "HASH dirty" for uncommitted changes.
GIT_COMMIT_ENV = "SMLP_GIT_COMMIT"


def _commit_from_env() -> tuple[str | None, bool | None]:
    words = os.environ.get(GIT_COMMIT_ENV, "").split()
    if not words or not re.fullmatch(r"[0-9a-f]{40}", words[0]):
        return None, None
    return words[0], (words[1:] == ["dirty"])


def git_commit(path: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit hash, whether the work tree has uncommitted changes) of the source checkout;
    where it is not a git checkout (or git is missing), what SMLP_GIT_COMMIT says, else
    (None, None)."""
    cwd = path or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return _commit_from_env()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return commit.stdout.strip(), dirty
    except (OSError, subprocess.SubprocessError):
        return _commit_from_env()


def collect_metadata(device: torch.device) -> dict:
    """Everything a result file records about the machine and the software."""
    commit, dirty = git_commit()
    dev: dict = {"type": device.type, "name": device_name(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        dev.update(
            capability=f"{props.major}.{props.minor}",
            memory_bytes=props.total_memory,
            multiprocessors=props.multi_processor_count,
        )
    else:
        dev.update(cpu_model=cpu_model(), threads=torch.get_num_threads())
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "git_dirty": dirty,
        "hostname": socket.gethostname(),
        "command": [os.path.basename(sys.argv[0]), *sys.argv[1:]],
        "device": dev,
        "versions": {
            "smlp_kernels": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": _version("triton"),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()
            if torch.backends.cudnn.is_available()
            else None,
            "platform": platform.platform(),
        },
        "settings": {
            "float32_matmul_precision": fp32_matmul_setting(),
            "cudnn_allow_tf32": cudnn_tf32_allowed(),
            "threads": torch.get_num_threads(),
        },
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
