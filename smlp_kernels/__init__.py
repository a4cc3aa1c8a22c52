"""smlp-kernels: fused kernels for the sparse-MLP (sMLP) token mixing of sMLPNet.

Public API:

* :func:`smlp_mix`, :func:`row_mix`, :func:`col_mix`: the ops, differentiable, with a
  ``backend=`` choice (see :func:`backends`);
* :func:`bn_gelu_smlp_mix`: ``smlp_mix`` of ``gelu(x * scale + shift)``, SPACH's
  BN -> GELU -> mix with BatchNorm in eval form (what :class:`SparseMLP` runs in eval mode);
* :class:`smlp_kernels.nn.SparseMLP` and :class:`LinearSparseMLP`: drop-in modules for
  SPACH's ``sMLPBlock`` and for the ``nn.Linear`` sMLP block of attention-zoo repositories;
  :func:`convert` swaps them into a model (:func:`convert_spach` is an alias);
* :mod:`smlp_kernels.models`: sMLPNet-T/S/B with SPACH's state_dict layout;
* :mod:`smlp_kernels.reference`: the pure-PyTorch reference every backend is tested against.
"""

from ._config import deterministic, is_deterministic, set_deterministic
from ._version import __version__
from .cpp_backends import CpuBackend, CudaBackend
from .nn import Conversion, LinearSparseMLP, SparseMLP, convert, convert_spach
from .ops import bn_gelu_smlp_mix, col_mix, row_mix, smlp_mix
from .reference import ReferenceBackend
from .registry import Backend, BackendStatus, backends, register_backend
from .triton import TritonBackend, TritonV0Backend

# The built-in backends, registered here and nowhere else. None of them imports its
# compiled code or Triton before its first call.
for _backend in (
    ReferenceBackend(),
    CpuBackend(),
    CudaBackend(),
    TritonBackend(),
    TritonV0Backend(),
):
    register_backend(_backend)
del _backend

__all__ = [
    "Backend",
    "BackendStatus",
    "Conversion",
    "LinearSparseMLP",
    "SparseMLP",
    "__version__",
    "backends",
    "bn_gelu_smlp_mix",
    "col_mix",
    "convert",
    "convert_spach",
    "deterministic",
    "is_deterministic",
    "register_backend",
    "row_mix",
    "set_deterministic",
    "smlp_mix",
]
