"""Session-wide test setup.

Hypothesis (the property-based tests in test_fuzz.py) has two profiles: "dev" (random
examples, the default) and "ci" (derandomized: the same examples on every run, so a CI
failure reproduces). "ci" is used when the environment variable CI is set (as CI services
do) or HYPOTHESIS_PROFILE=ci; HYPOTHESIS_PROFILE picks either by name.

Every test that runs on a GPU carries the ``gpu`` marker (``pytest -m gpu`` runs just those,
on a GPU machine where a lease is short): the tests parametrized with ``device="cuda"`` get
it here, the GPU-only files and the files that follow the GPU when there is one set it
themselves.

The Triton kernels run on the GPU when there is one. On a machine without a GPU (ours and
CI's) they run on the Triton interpreter, which must be switched on before the kernels are
defined: TRITON_INTERPRET=1 is set here, before any test imports them. The interpreter
mode only affects the ``triton`` backend, which then takes CPU tensors and runs only when
asked for by name, so every other test is unchanged.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    from hypothesis import settings
except ImportError:  # hypothesis is a test extra; test_fuzz.py skips without it
    pass
else:
    settings.register_profile("dev", deadline=None, print_blob=True)
    settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=True)
    _ci = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if _ci else "dev"))


def runs_on_cuda(item) -> bool:
    """Whether a collected test is parametrized to run on a CUDA device."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    device = params.get("device")
    return device == "cuda" or (isinstance(device, torch.device) and device.type == "cuda")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if runs_on_cuda(item):
            item.add_marker(pytest.mark.gpu)
