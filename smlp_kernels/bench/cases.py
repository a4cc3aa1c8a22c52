"""What gets measured: benchmark cases and the built-in suites.

A :class:`Case` is one op or one model at one shape, dtype and mode. Cases that differ only
in their mode form a *group* (:func:`group_cases`): the harness builds each provider once
per group (one ``torch.compile`` per group, not per mode) and times every mode on it.

Modes:

* op cases (``smlp_mix``): ``fwd`` (forward under ``torch.no_grad``), ``bwd`` (the backward
  alone, all six gradients, from one retained forward graph) and ``fwd+bwd`` (forward, then
  all six gradients);
* model cases: ``fwd`` (inference: eval mode, ``torch.no_grad``) and ``train`` (one training
  step: forward, cross-entropy loss, backward and an SGD step, in train mode).

Suites (``SUITES``; ``smlp-bench --list`` prints them):

* ``cpu``: the short CPU suite, the default on a machine without CUDA: the four sMLPNet-T
  stage shapes, float32, batch 8, fwd, and fwd+bwd on stages 1 and 4;
* ``cpu-stages``: the eight sMLPNet-T and -B stage shapes in float32 and bfloat16 at batch
  8, fwd and fwd+bwd, the ``cpu`` backend against SPACH-style eager and compiled (about 10
  minutes on 2 cores, most of it compiling);
* ``gpu``: the default with CUDA: the eight sMLPNet-T and -B stage shapes in bfloat16 at
  batch 128, fwd and fwd+bwd, then sMLPNet-B inference and training at batch 128;
* ``stages``: the eight stage shapes at batch 1, 32 and 128, fwd, bwd and fwd+bwd;
* ``models``: sMLPNet-T, -S and -B (224x224) inference and training at batch 128;
* ``smoke``: two tiny shapes and a tiny model, for tests of the harness.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, replace

import torch

__all__ = [
    "DTYPES",
    "MODEL_MODES",
    "MODEL_SPECS",
    "OP_MODES",
    "STAGE_SHAPES",
    "SUITES",
    "Case",
    "ModelSpec",
    "Suite",
    "filter_cases",
    "group_cases",
    "model_case",
    "op_case",
    "suite_cases",
    "suite_providers",
]

OP_MODES = ("fwd", "bwd", "fwd+bwd")
MODEL_MODES = ("fwd", "train")

# Short names used in case ids, on the command line and in the JSON.
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp64": torch.float64,
}

# sMLPNet at 224x224 (the paper's table): label -> (C, H = W). C_out = C in the model.
STAGE_SHAPES: dict[str, tuple[int, int]] = {
    "T1": (80, 56),
    "T2": (160, 28),
    "T3": (320, 14),
    "T4": (640, 7),
    "B1": (112, 56),
    "B2": (224, 28),
    "B3": (448, 14),
    "B4": (896, 7),
}


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model of the zoo: ``smlp_kernels.models.SMLPNet(**kwargs)``."""

    dim: int
    depths: tuple[int, ...]
    dp_rate: float
    image_size: int = 224
    num_classes: int = 1000

    def kwargs(self) -> dict:
        """The keyword arguments of ``SMLPNet`` for this model (patch 4, MLP ratio 3)."""
        return dict(
            dim=self.dim,
            depths=self.depths,
            dp_rate=self.dp_rate,
            image_size=self.image_size,
            num_classes=self.num_classes,
            alpha=3,
            patch_size=4,
        )


MODEL_SPECS: dict[str, ModelSpec] = {
    "smlpnet_tiny": ModelSpec(80, (2, 8, 14, 2), 0.0),
    "smlpnet_small": ModelSpec(96, (2, 10, 24, 2), 0.2),
    "smlpnet_base": ModelSpec(112, (2, 10, 24, 2), 0.3),
    # Not a real model: two blocks per stage at 32x32, for smoke tests of the harness.
    "smlpnet_micro": ModelSpec(8, (1, 1, 1, 1), 0.1, image_size=32, num_classes=10),
}


@dataclass(frozen=True)
class Case:
    """One measurement: an op or a model at a shape, dtype and mode.

    For ``kind == "op"``: x is (batch, channels, height, width) and y is
    (batch, out_channels, height, width). For ``kind == "model"``: the input is
    (batch, 3, image_size, image_size) and ``channels`` etc. are 0.
    """

    kind: str  # "op" or "model"
    name: str  # "smlp_mix", or a key of MODEL_SPECS
    batch: int
    dtype: str  # a key of DTYPES
    mode: str  # OP_MODES for ops, MODEL_MODES for models
    channels: int = 0
    out_channels: int = 0
    height: int = 0
    width: int = 0
    label: str = ""  # the stage label ("T1", ...) or the model name

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def shape_id(self) -> str:
        """The shape part of the id, e.g. ``B128-C80-H56-W56`` (``B128`` = batch 128)."""
        if self.kind == "model":
            return f"B{self.batch}"
        out = f"-O{self.out_channels}" if self.out_channels != self.channels else ""
        return f"B{self.batch}-C{self.channels}{out}-H{self.height}-W{self.width}"

    @property
    def id(self) -> str:
        """A readable unique id, e.g. ``smlp_mix-B128-C80-H56-W56-bf16-fwd`` (batch 128)."""
        return "-".join([self.name, self.shape_id, self.dtype, self.mode])

    @property
    def group_id(self) -> str:
        """The id without the mode, shared by the cases of a group."""
        return self.id.removesuffix(f"-{self.mode}")

    @property
    def group_key(self) -> tuple:
        """Everything but the mode: cases sharing it share built providers."""
        return astuple(replace(self, mode=""))

    def with_mode(self, mode: str) -> Case:
        return replace(self, mode=mode)


def op_case(
    label: str, batch: int, dtype: str, mode: str, shape: tuple[int, int, int, int] | None = None
) -> Case:
    """An ``smlp_mix`` case for a stage label, or for an explicit (C, C_out, H, W) shape."""
    if shape is None:
        channels, side = STAGE_SHAPES[label]
        shape = (channels, channels, side, side)
    c, o, h, w = shape
    return Case("op", "smlp_mix", batch, dtype, mode, c, o, h, w, label)


def model_case(name: str, batch: int, dtype: str, mode: str) -> Case:
    if name not in MODEL_SPECS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_SPECS)}")
    return Case("model", name, batch, dtype, mode, label=name)


@dataclass(frozen=True)
class Suite:
    """A named list of cases and the providers a run uses by default (None: all that apply)."""

    name: str
    description: str
    cases: tuple[Case, ...]
    op_providers: tuple[str, ...] | None = None
    model_providers: tuple[str, ...] | None = None


def _stage_cases(
    labels: Iterable[str], batches: Iterable[int], dtype: str, modes: Iterable[str]
) -> list[Case]:
    return [op_case(lb, b, dtype, m) for b in batches for lb in labels for m in modes]


def _model_cases(
    names: Iterable[str], batch: int, dtype: str, modes: Iterable[str] = MODEL_MODES
) -> list[Case]:
    return [model_case(n, batch, dtype, m) for n in names for m in modes]


_T = ("T1", "T2", "T3", "T4")
_TB = (*_T, "B1", "B2", "B3", "B4")
# triton_v0 (the Triton backend's version 0) is timed beside version 1 until GPU
# measurements decide between them.
_GPU_OPS = (
    "triton",
    "triton_v0",
    "cuda",
    "spach-eager",
    "spach-compile",
    "spach-compile-max-autotune",
)
_GPU_MODELS = ("triton", "cuda", "triton-compile", "cuda-compile", "spach-eager", "spach-compile")

SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite(
            "cpu",
            "sMLPNet-T stage shapes, fp32, batch 8: fwd on all four, fwd+bwd on T1 and T4 "
            "(the default without CUDA)",
            # fwd+bwd on the memory-bound and the matrix-bound end only: each compiled
            # training graph costs ~10 s of CPU compile, and the suite must stay under 2 min.
            tuple(
                _stage_cases(_T, [8], "fp32", ["fwd"])
                + _stage_cases(["T1", "T4"], [8], "fp32", ["fwd+bwd"])
            ),
            op_providers=("cpu", "reference", "spach-eager", "spach-compile"),
        ),
        Suite(
            "cpu-stages",
            "sMLPNet-T and -B stage shapes, fp32 and bf16, batch 8, fwd and fwd+bwd: the cpu "
            "backend against SPACH-style eager and compiled",
            tuple(
                _stage_cases(_TB, [8], "fp32", ["fwd", "fwd+bwd"])
                + _stage_cases(_TB, [8], "bf16", ["fwd", "fwd+bwd"])
            ),
            op_providers=("cpu", "spach-eager", "spach-compile"),
        ),
        Suite(
            "gpu",
            "sMLPNet-T and -B stage shapes, bf16, batch 128, fwd and fwd+bwd; sMLPNet-B "
            "inference and training at batch 128 (the default with CUDA)",
            tuple(
                _stage_cases(_TB, [128], "bf16", ["fwd", "fwd+bwd"])
                + _model_cases(["smlpnet_base"], 128, "bf16")
            ),
            op_providers=_GPU_OPS,
            model_providers=_GPU_MODELS,
        ),
        Suite(
            "stages",
            "sMLPNet-T and -B stage shapes, bf16, batch 1, 32 and 128, fwd, bwd and fwd+bwd",
            tuple(_stage_cases(_TB, [1, 32, 128], "bf16", OP_MODES)),
            op_providers=_GPU_OPS,
        ),
        Suite(
            "models",
            "sMLPNet-T, -S and -B at 224x224, bf16, batch 128, inference and training step",
            tuple(_model_cases(["smlpnet_tiny", "smlpnet_small", "smlpnet_base"], 128, "bf16")),
            model_providers=_GPU_MODELS,
        ),
        Suite(
            "smoke",
            "two tiny shapes (one with H != W and C_out != C) and a tiny model, fp32: tests "
            "of the harness",
            tuple(
                [op_case("tiny1", 2, "fp32", m, (6, 5, 7, 9)) for m in OP_MODES]
                + [op_case("tiny2", 2, "fp32", m, (4, 4, 5, 5)) for m in OP_MODES]
                + _model_cases(["smlpnet_micro"], 2, "fp32")
            ),
            op_providers=("cpu", "reference", "spach-eager"),
            model_providers=("cpu", "spach-eager"),
        ),
    )
}


def suite_providers(names: Sequence[str], kind: str) -> list[str] | None:
    """The providers the suites ``names`` name for ``kind`` ("op" or "model") cases, merged
    in order; None when one of them leaves the choice to the defaults."""
    merged: list[str] = []
    for name in names:
        chosen = SUITES[name].op_providers if kind == "op" else SUITES[name].model_providers
        if chosen is None:
            return None
        merged += [n for n in chosen if n not in merged]
    return merged


def suite_cases(names: Sequence[str]) -> list[Case]:
    """The cases of one or more suites, in order, without duplicates."""
    out: list[Case] = []
    for name in names:
        if name not in SUITES:
            raise ValueError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
        out += [c for c in SUITES[name].cases if c not in out]
    return out


def filter_cases(
    cases: Iterable[Case],
    *,
    shapes: Sequence[str] | None = None,
    batches: Sequence[int] | None = None,
    modes: Sequence[str] | None = None,
    dtype: str | None = None,
    pattern: str | None = None,
) -> list[Case]:
    """Narrow a case list, and optionally change its dtype.

    shapes: stage labels ("T1", "B4") or model names to keep; batches: batch sizes to keep
    (a single batch not in the suite replaces every case's batch instead); modes: modes to
    keep; dtype: run every case in this dtype; pattern: an fnmatch pattern on the case id.
    """
    out = list(cases)
    if dtype is not None:
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
        out = [replace(c, dtype=dtype) for c in out]
    if batches:
        kept = [c for c in out if c.batch in batches]
        if not kept and len(batches) == 1:
            kept = [replace(c, batch=batches[0]) for c in out]
        out = kept
    if shapes:
        out = [c for c in out if c.label in shapes]
    if modes:
        out = [c for c in out if c.mode in modes]
    if pattern:
        out = [c for c in out if fnmatch.fnmatch(c.id, pattern)]
    unique: list[Case] = []
    for c in out:
        if c not in unique:
            unique.append(c)
    return unique


def group_cases(cases: Iterable[Case]) -> list[list[Case]]:
    """Cases grouped by everything but the mode, in first-seen order."""
    groups: dict[tuple, list[Case]] = {}
    for c in cases:
        groups.setdefault(c.group_key, []).append(c)
    return list(groups.values())
