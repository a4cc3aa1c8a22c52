"""Process-wide switches shared by every backend.

Deterministic weight gradients: the Triton and CUDA backends reduce the weight gradients
over B*H*W. By default they may add partial sums with atomics, which is faster but can
change the last bits from run to run. In deterministic mode every partial sum goes to its
own slot and the slots are added in a fixed order, so the same inputs on the same device
give bitwise-identical gradients every run.

Deterministic mode is on when either :func:`set_deterministic` turned it on or PyTorch's
own ``torch.use_deterministic_algorithms(True)`` is in force.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["deterministic", "is_deterministic", "set_deterministic"]

_DETERMINISTIC = False


def set_deterministic(enabled: bool) -> None:
    """Turn deterministic weight gradients on or off for this process."""
    global _DETERMINISTIC
    if not isinstance(enabled, bool):
        raise TypeError(f"set_deterministic: enabled must be a bool, got {type(enabled).__name__}")
    _DETERMINISTIC = enabled


def is_deterministic() -> bool:
    """True when backends must give bitwise-reproducible gradients."""
    return _DETERMINISTIC or torch.are_deterministic_algorithms_enabled()


@contextlib.contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """Context manager form of :func:`set_deterministic`; restores the old setting."""
    global _DETERMINISTIC
    old = _DETERMINISTIC
    set_deterministic(enabled)
    try:
        yield
    finally:
        _DETERMINISTIC = old
