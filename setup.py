"""Builds the compiled extension smlp_kernels._C with CMake; metadata is in pyproject.toml.

Build switches, read from the environment:

    SMLP_BUILD_CUDA      unset or "auto": CUDA kernels when nvcc is found;
                         "1": CUDA required (the build fails without nvcc); "0": CPU only
    SMLP_CUDA_ARCHS      architectures to build cubins for, default "80;90a"
                         (separated by ";", "," or spaces)
    SMLP_SKIP_EXTENSION  "1": build no extension at all; the package falls back to PyTorch
    SMLP_BUILD_JOBS      parallel compile jobs, default os.cpu_count()
    SMLP_PTXAS_VERBOSE   "1": ptxas prints registers and spills for every kernel
    SMLP_CPU_NATIVE      "1" (default): the CPU kernels' scheduling tuned for the build
                         machine's CPU (-mtune=native); "0": generic tuning, for a wheel or an
                         image that runs on other machines. Either way every instruction set
                         level is built and the best one the CPU has runs (SMLP_CPU_ISA)
    SMLP_TEST_HOOKS      "1": a test build, with the test-only hooks (the cuda_probe function,
                         the SMLP_CUDA_MAX_SPLITS variable) that the tests needing them use;
                         "0" (default): a release build without them

Typical installs:

    pip install --no-build-isolation --no-deps -e .     # editable, with the local toolchain
    SMLP_BUILD_CUDA=0 pip install .                      # CPU-only extension
    SMLP_SKIP_EXTENSION=1 pip install .                  # pure Python

A failing CMake configure or build fails the install: nothing is silently dropped.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
DEFAULT_CUDA_ARCHS = "80;90a"


def _env_flag(name: str) -> bool:
    """True for "1", False for unset, "" or "0"; anything else is a mistake worth stopping."""
    value = os.environ.get(name, "").strip()
    if value in ("", "0"):
        return False
    if value == "1":
        return True
    raise ValueError(f"{name} must be 0 or 1, got {value!r}")


def _cuda_mode() -> str:
    value = os.environ.get("SMLP_BUILD_CUDA", "").strip().lower()
    modes = {"": "AUTO", "auto": "AUTO", "1": "ON", "0": "OFF"}
    if value not in modes:
        raise ValueError(f"SMLP_BUILD_CUDA must be unset, auto, 0 or 1, got {value!r}")
    return modes[value]


def _cuda_archs() -> str:
    raw = os.environ.get("SMLP_CUDA_ARCHS", "").strip() or DEFAULT_CUDA_ARCHS
    archs = [a for a in re.split(r"[;,\s]+", raw) if a]
    for arch in archs:
        if not re.fullmatch(r"[0-9]+[af]?", arch):
            raise ValueError(f"SMLP_CUDA_ARCHS entry {arch!r} is not like 80, 90a or 100f")
    return ";".join(archs)


def _cpu_native() -> bool:
    """SMLP_CPU_NATIVE: unset means on, since most builds are for the machine they run on."""
    if os.environ.get("SMLP_CPU_NATIVE", "").strip() == "":
        return True
    return _env_flag("SMLP_CPU_NATIVE")


def _build_jobs() -> int:
    value = os.environ.get("SMLP_BUILD_JOBS", "").strip()
    if not value:
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"SMLP_BUILD_JOBS must be a positive integer, got {value!r}")
    return int(value)


def _tool(module_name: str, bin_dir_attr: str, exe: str) -> str | None:
    """The tool from the pip package of this interpreter if installed, else from PATH.

    With --no-build-isolation in a venv that is not activated, PATH may lack the venv's
    bin directory or hold an older system copy.
    """
    try:
        module = importlib.import_module(module_name)
        candidate = Path(getattr(module, bin_dir_attr)) / exe
        if candidate.is_file():
            return str(candidate)
    except (ImportError, AttributeError):
        pass
    return shutil.which(exe)


def _nvcc() -> str | None:
    """nvcc for CMake when it would not find one itself (CUDACXX unset, nvcc not on PATH)."""
    if os.environ.get("CUDACXX") or shutil.which("nvcc"):
        return None
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return None


class CMakeExtension(Extension):
    """An extension whose build is delegated to the CMakeLists.txt in ``source_dir``."""

    def __init__(self, name: str, source_dir: Path) -> None:
        # The CMake inputs are listed as depends so that an sdist carries them.
        depends = [
            str(p.relative_to(source_dir))
            for p in [source_dir / "CMakeLists.txt", *sorted((source_dir / "csrc").rglob("*"))]
            if p.is_file()
        ]
        super().__init__(name, sources=[], depends=depends)
        self.source_dir = source_dir


class CMakeBuild(build_ext):
    """Configures and builds with CMake + Ninja, then leaves the module where setuptools
    expects it: in the build tree for ``pip install .``, in the source tree for
    ``pip install -e .``."""

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            super().build_extension(ext)
            return

        cmake = _tool("cmake", "CMAKE_BIN_DIR", "cmake")
        if cmake is None:
            raise RuntimeError(
                "CMake is needed to build smlp_kernels._C: pip install cmake ninja "
                "(or set SMLP_SKIP_EXTENSION=1 for the pure PyTorch package)"
            )
        ninja = _tool("ninja", "BIN_DIR", "ninja")
        if ninja is None:
            raise RuntimeError(
                "Ninja is needed to build smlp_kernels._C: pip install ninja "
                "(or set SMLP_SKIP_EXTENSION=1 for the pure PyTorch package)"
            )
        import pybind11

        ext_path = Path(self.get_ext_fullpath(ext.name)).resolve()
        ext_path.parent.mkdir(parents=True, exist_ok=True)
        py_tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
        build_dir = ext.source_dir / "build" / f"cmake-{py_tag}"
        build_dir.mkdir(parents=True, exist_ok=True)

        configure = [
            cmake,
            "-S",
            str(ext.source_dir),
            "-B",
            str(build_dir),
            "-G",
            "Ninja",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={ext_path.parent}",
            f"-DSMLP_BUILD_CUDA={_cuda_mode()}",
            f"-DSMLP_CUDA_ARCHS={_cuda_archs()}",
            f"-DSMLP_PTXAS_VERBOSE={'ON' if _env_flag('SMLP_PTXAS_VERBOSE') else 'OFF'}",
            f"-DSMLP_CPU_NATIVE={'ON' if _cpu_native() else 'OFF'}",
            f"-DSMLP_TEST_HOOKS={'ON' if _env_flag('SMLP_TEST_HOOKS') else 'OFF'}",
            f"-DCMAKE_MAKE_PROGRAM={ninja}",
        ]
        nvcc = _nvcc()
        if nvcc is not None and _cuda_mode() != "OFF":
            configure.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")

        build = [cmake, "--build", str(build_dir), "--parallel", str(_build_jobs())]

        for command in (configure, build):
            print(shlex.join(command), flush=True)
            subprocess.run(command, cwd=ext.source_dir, check=True)

        if not ext_path.is_file():
            raise RuntimeError(
                f"CMake finished but {ext_path} is missing; the module suffix CMake chose "
                "does not match this interpreter's EXT_SUFFIX"
            )


ext_modules = [] if _env_flag("SMLP_SKIP_EXTENSION") else [CMakeExtension("smlp_kernels._C", ROOT)]

setup(ext_modules=ext_modules, cmdclass={"build_ext": CMakeBuild})
