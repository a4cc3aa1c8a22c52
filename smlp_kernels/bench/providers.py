"""Who gets timed: the providers of a case.

* ``<backend>`` for every backend in the registry (:func:`smlp_kernels.backends`), so a new
  backend shows up here without a change: the public op ``smlp_mix(..., backend=name)``
  for op cases, :class:`smlp_kernels.models.SMLPNet` with ``backend=name`` for model cases.
  ``reference`` is the pure-PyTorch einsum reference.
* ``<backend>-compile`` (model cases only): ``torch.compile`` of that model, default mode.
  (For an op case it would time the same kernels as ``<backend>``.)
* ``spach-eager``: the SPACH-style computation (permute + 1x1 conv + cat + 1x1 conv):
  :func:`smlp_kernels.reference.smlp_mix_spach_style` for op cases, the model built with
  :class:`smlp_kernels.reference.SpachStyleSMLPBlock` for model cases.
* ``spach-compile`` and ``spach-compile-max-autotune``: ``torch.compile`` of that, in the
  default and ``"max-autotune"`` modes. On CUDA, ``"max-autotune"`` also replays CUDA graphs
  (cudagraph trees), which copy each call's non-parameter inputs (x, and the incoming
  gradient of a backward) into the graph's buffers: in an op case that is an extra read and
  write of x that the kernels themselves do not need. ``spach-compile-max-autotune-no-
  cudagraphs`` (asked for by name only) times the same autotuned kernels without it.

A backend runs in the harness only where it could be picked automatically: available here,
``auto_select`` on (so never the Triton interpreter, whose timings mean nothing) and
running on the case's device; asked for by name where it cannot run, it is reported as
skipped with the reason.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..models import SMLPNet
from ..ops import smlp_mix
from ..reference import SpachStyleSMLPBlock, smlp_mix_spach_style
from ..registry import backends, get_backend
from .cases import MODEL_SPECS, STAGE_SHAPES, Case

__all__ = [
    "BASELINES",
    "OpFn",
    "Provider",
    "all_providers",
    "default_providers",
    "select_providers",
]

# (x, row_weight, row_bias, col_weight, col_bias, fuse_weight) -> y
OpFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]

# The providers every speed-up is reported against, weakest first.
BASELINES = ("spach-eager", "spach-compile", "spach-compile-max-autotune")


@dataclass(frozen=True)
class Provider:
    """One implementation under test."""

    name: str
    family: str  # "ours" (a registry backend) or "spach" (the SPACH-style computation)
    backend: str | None  # the registry backend, for family "ours"
    compile_mode: str | None  # None (eager), "default" or "max-autotune"
    kinds: tuple[str, ...]  # the case kinds it applies to: "op", "model"
    description: str

    def why_not(self, case: Case, device: torch.device) -> str | None:
        """Why this provider cannot run ``case`` on ``device``, or None if it can."""
        if case.kind not in self.kinds:
            return f"{self.name} does not apply to {case.kind} cases"
        if self.backend is None:
            return None
        status = backends().get(self.backend)
        if status is None:
            return f"backend {self.backend!r} is not registered"
        if not status.available:
            return f"backend {self.backend!r} is unavailable: {status.reason}"
        backend = get_backend(self.backend)
        if not backend.auto_select:
            return (
                f"backend {self.backend!r} runs only when forced ({status.reason}); "
                "its timings would not mean anything"
            )
        if "*" not in backend.device_types and device.type not in backend.device_types:
            return f"backend {self.backend!r} runs on {', '.join(backend.device_types)}"
        for c, o, h, w in _block_shapes(case):
            x = torch.empty((case.batch, c, h, w), dtype=case.torch_dtype, device="meta")
            reason = backend.unsupported_reason("mix", x, o)
            if reason is not None:
                return f"backend {self.backend!r}: {reason}"
        return None

    def op_fn(self) -> OpFn:
        """The forward computation of an op case, compiled if this provider compiles."""
        if self.family == "ours":
            fn: OpFn = functools.partial(smlp_mix, backend=self.backend)
        else:
            fn = smlp_mix_spach_style
        return self._compiled(fn, fullgraph=True)

    def model(
        self, case: Case, state: dict[str, Tensor], device: torch.device
    ) -> tuple[nn.Module, nn.Module]:
        """(the module to call, the eager module that owns the parameters) for a model case.

        The model has ``state``'s weights (shared by every provider of a case), on ``device``
        in the case's dtype.
        """
        kwargs = MODEL_SPECS[case.name].kwargs()
        if self.family == "spach":
            model = SMLPNet(**kwargs, smlp_block=SpachStyleSMLPBlock)
        else:
            model = SMLPNet(**kwargs, backend=self.backend)
        model.load_state_dict(state)
        model = model.to(device=device, dtype=case.torch_dtype)
        # Whole models have Python control flow around the blocks: allow graph breaks.
        return self._compiled(model, fullgraph=False), model

    def _compiled(self, fn, *, fullgraph: bool):
        if self.compile_mode is None:
            return fn
        mode = None if self.compile_mode == "default" else self.compile_mode
        # dynamic=False: one static graph per shape, as a fixed-shape training run gets.
        return torch.compile(fn, mode=mode, dynamic=False, fullgraph=fullgraph)


def _block_shapes(case: Case) -> list[tuple[int, int, int, int]]:
    """The (C, C_out, H, W) of every smlp_mix call a case makes."""
    if case.kind == "op":
        return [(case.channels, case.out_channels, case.height, case.width)]
    spec = MODEL_SPECS[case.name]
    side = spec.image_size // 4
    return [(spec.dim * 2**i, spec.dim * 2**i, side >> i, side >> i) for i in range(4)]


def all_providers() -> dict[str, Provider]:
    """Every provider, by name: the registry's backends (now) and the SPACH-style ones."""
    out: dict[str, Provider] = {}
    for name in backends():
        out[name] = Provider(name, "ours", name, None, ("op", "model"), f"backend {name}")
    for name in backends():
        out[f"{name}-compile"] = Provider(
            f"{name}-compile",
            "ours",
            name,
            "default",
            ("model",),
            f"torch.compile of the model with backend {name}",
        )
    spach = "SPACH-style permute + 1x1 conv + cat + 1x1 conv"
    out["spach-eager"] = Provider("spach-eager", "spach", None, None, ("op", "model"), spach)
    out["spach-compile"] = Provider(
        "spach-compile", "spach", None, "default", ("op", "model"), f"torch.compile({spach})"
    )
    out["spach-compile-max-autotune"] = Provider(
        "spach-compile-max-autotune",
        "spach",
        None,
        "max-autotune",
        ("op", "model"),
        f"torch.compile({spach}, mode='max-autotune'); on CUDA that replays CUDA graphs, "
        "which copy every input that is not a parameter (x; in a backward the incoming "
        "gradient) into the graph's own buffers on each call",
    )
    # Not run by default: the same kernels without CUDA graphs (and their input copies), to
    # see how much of an op-level speed-up over max-autotune those copies make.
    out["spach-compile-max-autotune-no-cudagraphs"] = Provider(
        "spach-compile-max-autotune-no-cudagraphs",
        "spach",
        None,
        "max-autotune-no-cudagraphs",
        ("op", "model"),
        f"torch.compile({spach}, mode='max-autotune-no-cudagraphs')",
    )
    return out


def _probe_case(kind: str, device: torch.device) -> Case:
    channels, side = STAGE_SHAPES["T1"]
    dtype = "bf16" if device.type == "cuda" else "fp32"
    if kind == "model":
        return Case("model", "smlpnet_tiny", 1, dtype, "fwd", label="smlpnet_tiny")
    return Case("op", "smlp_mix", 1, dtype, "fwd", channels, channels, side, side, "T1")


def default_providers(kind: str, device: torch.device) -> list[str]:
    """The providers a run uses for ``kind`` cases when neither suite nor user names them.

    Op cases: every backend that runs here, then spach-eager and spach-compile (and
    spach-compile-max-autotune on CUDA). Model cases: every backend that runs here but the
    reference, each also compiled, then spach-eager and spach-compile.
    """
    probe = _probe_case(kind, device)
    providers = all_providers()
    ours = [
        p.name
        for p in providers.values()
        if p.family == "ours" and p.compile_mode is None and p.why_not(probe, device) is None
    ]
    if kind == "op":
        spach = list(BASELINES if device.type == "cuda" else BASELINES[:2])
        return ours + spach
    fast = [n for n in ours if n != "reference"] or ours
    return fast + [f"{n}-compile" for n in fast] + list(BASELINES[:2])


def select_providers(
    kind: str,
    device: torch.device,
    requested: Sequence[str] | None = None,
    suite_default: Sequence[str] | None = None,
) -> list[str]:
    """The provider names to run for ``kind`` cases.

    ``requested`` (the user's list) is taken as given, so a provider that cannot run is
    reported as skipped with its reason; unknown names raise ValueError. Otherwise the
    suite's list, keeping only the providers that can run here, or :func:`default_providers`.
    """
    providers = all_providers()
    if requested:
        unknown = [n for n in requested if n not in providers]
        if unknown:
            raise ValueError(
                f"unknown provider(s) {', '.join(unknown)}; known: {', '.join(providers)}"
            )
        return [n for n in requested if kind in providers[n].kinds]
    if suite_default is not None:
        probe = _probe_case(kind, device)
        return [
            n
            for n in suite_default
            if n in providers and providers[n].why_not(probe, device) is None
        ]
    return default_providers(kind, device)
