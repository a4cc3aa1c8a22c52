"""Lazy access to the compiled extension ``smlp_kernels._C``.

Nothing imports ``_C`` when the package is imported: the first call to
:func:`load_extension` tries once and remembers either the module or why it is
unavailable, so a machine without the extension (``SMLP_SKIP_EXTENSION=1``, a failed
or missing build) still imports the package and falls back to PyTorch.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from types import ModuleType

from smlp_kernels._version import __version__

EXTENSION_NAME = "smlp_kernels._C"


def _not_built_reason() -> str:
    return (
        f"{EXTENSION_NAME} is not built: the package was installed with "
        "SMLP_SKIP_EXTENSION=1, or is used from a source tree that was never built "
        "(pip install --no-build-isolation -e . builds it)"
    )


@functools.cache
def _load() -> tuple[ModuleType | None, str]:
    try:
        module = importlib.import_module(EXTENSION_NAME)
    except ImportError as exc:
        if exc.name == EXTENSION_NAME:
            package_dir = Path(__file__).resolve().parent
            builds = sorted(path.name for path in package_dir.glob("_C.*"))
            if not builds:
                return None, _not_built_reason()
            return None, (
                f"{EXTENSION_NAME} has no build for this interpreter (found "
                f"{', '.join(builds)}); rebuild it"
            )
        # A module file exists but does not load (missing symbol, wrong Python ABI...).
        return None, f"{EXTENSION_NAME} failed to import: {exc}"
    built_from = module.version()
    if built_from != __version__:
        return None, (
            f"{EXTENSION_NAME} is stale: built from smlp_kernels {built_from}, "
            f"the package is {__version__}; rebuild it"
        )
    return module, f"loaded from {module.__file__}"


def load_extension() -> ModuleType | None:
    """Return the compiled extension module, or None when it is unavailable.

    The import is attempted once; later calls return the cached outcome. Use
    :func:`extension_status` for the reason when this returns None.
    """
    return _load()[0]


def extension_status() -> tuple[bool, str]:
    """Return ``(available, reason)``: why the extension is unavailable, or where it was
    loaded from when it is available."""
    module, reason = _load()
    return module is not None, reason


def require_extension() -> ModuleType:
    """Return the compiled extension module, or raise RuntimeError saying why it is missing."""
    module, reason = _load()
    if module is None:
        raise RuntimeError(reason)
    return module
