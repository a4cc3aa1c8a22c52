"""Session-wide test setup.

The Triton kernels run on the GPU when there is one. On a machine without a GPU (ours and
CI's) they run on the Triton interpreter, which must be switched on before the kernels are
defined: TRITON_INTERPRET=1 is set here, before any test imports them. The interpreter
mode only affects the ``triton`` backend, which then takes CPU tensors and runs only when
asked for by name, so every other test is unchanged.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
