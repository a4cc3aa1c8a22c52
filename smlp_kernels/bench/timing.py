"""How long a call takes: CUDA event timing with an L2 flush, CUDA-graph replay, CPU clocks.

* CUDA (:func:`time_cuda`): ``triton.testing.do_bench`` when Triton is installed (it
  zeroes a 256 MB buffer before every call, so each call starts with a cold L2, and times
  each call with a pair of CUDA events), else the same loop written here. With
  ``cuda_graph=True``: ``triton.testing.do_bench_cudagraph``, which captures many calls in
  one CUDA graph and replays it, so Python and launch overhead drop out (no L2 flush there).
* CPU (:func:`time_cpu`): ``time.perf_counter`` around every call. Several callables are
  timed *interleaved*, one call of each per round, so load from other processes on the
  machine hits all of them alike and their ratios stay fair. :func:`time_calls` is the same
  loop for a fixed number of rounds (the demo and ``benchmarks/cpu_backend_speed.py``); a
  callable that launches GPU work must synchronize itself there.

Every result is a :class:`Timing`: the median, the 20% and 80% quantiles, the mean and the
minimum, in seconds, over ``n`` samples.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import torch

from .._validation import check_size

__all__ = [
    "Timing",
    "TimingConfig",
    "quantile",
    "summarize",
    "time_calls",
    "time_cpu",
    "time_cuda",
    "triton_timing_available",
]


@dataclass(frozen=True)
class TimingConfig:
    """How much to time. ``None`` fields take the device's default (see :meth:`resolved`)."""

    warmup_ms: float | None = None  # warm-up time per callable, after its first call
    rep_ms: float | None = None  # timed time per callable
    min_reps: int = 5  # at least this many timed calls (CUDA: about, via the time asked for)
    max_reps: int = 10_000  # CPU: at most this many timed calls
    cuda_graph: bool = False  # CUDA: time CUDA-graph replays

    def resolved(self, device_type: str) -> TimingConfig:
        """Defaults: CUDA 25 ms warm-up and 100 ms of calls (do_bench's); CPU none and 300 ms."""
        warm, rep = (25.0, 100.0) if device_type == "cuda" else (0.0, 300.0)
        return TimingConfig(
            warmup_ms=warm if self.warmup_ms is None else self.warmup_ms,
            rep_ms=rep if self.rep_ms is None else self.rep_ms,
            min_reps=self.min_reps,
            max_reps=self.max_reps,
            cuda_graph=self.cuda_graph,
        )


@dataclass(frozen=True)
class Timing:
    """Summary of one callable's timed calls, in seconds."""

    median_s: float
    p20_s: float
    p80_s: float
    mean_s: float
    min_s: float
    n: int  # number of samples
    method: str  # "do_bench", "cuda-events", "cuda-graph" or "perf_counter"

    def as_dict(self) -> dict:
        return asdict(self)


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) with linear interpolation (numpy's default)."""
    if not values:
        raise ValueError("quantile of no values")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(times_s: Sequence[float], method: str) -> Timing:
    """A :class:`Timing` from per-call times in seconds."""
    return Timing(
        median_s=quantile(times_s, 0.5),
        p20_s=quantile(times_s, 0.2),
        p80_s=quantile(times_s, 0.8),
        mean_s=statistics.fmean(times_s),
        min_s=min(times_s),
        n=len(times_s),
        method=method,
    )


# --------------------------------------------------------------------------------------------
# CUDA
# --------------------------------------------------------------------------------------------


def time_cuda(fn: Callable[[], object], config: TimingConfig) -> Timing:
    """Time ``fn`` (which launches work on the current CUDA stream) on the GPU.

    ``fn`` must already have run once (compiled, autotuned); the first call here is not
    special. Uses ``config.warmup_ms`` and ``config.rep_ms`` (resolved for CUDA).
    """
    cfg = config.resolved("cuda")
    # do_bench times for rep_ms; a slow call (a whole training step) would get one sample.
    # Ask for enough time to get about min_reps samples instead.
    call_ms = _one_call_ms(fn)
    cfg = replace(
        cfg,
        warmup_ms=max(cfg.warmup_ms, call_ms),
        rep_ms=max(cfg.rep_ms, 1.5 * cfg.min_reps * call_ms),
    )
    triton_testing = _triton_testing()
    if cfg.cuda_graph:
        if triton_testing is None:
            raise RuntimeError("--cuda-graph needs triton.testing.do_bench_cudagraph")
        # do_bench_cudagraph returns 10 samples, each the mean over one replay of a graph
        # holding rep ms worth of unrolled calls; its default of 20 ms keeps that graph
        # small for microsecond calls.
        rep = config.rep_ms if config.rep_ms is not None else 20.0
        times_ms = triton_testing.do_bench_cudagraph(
            fn, rep=max(rep, 1.5 * call_ms), return_mode="all"
        )
        return summarize([t * 1e-3 for t in times_ms], "cuda-graph")
    if triton_testing is not None:
        times_ms = triton_testing.do_bench(
            fn, warmup=max(cfg.warmup_ms, 1.0), rep=max(cfg.rep_ms, 1.0), return_mode="all"
        )
        return summarize([t * 1e-3 for t in times_ms], "do_bench")
    return summarize(_cuda_event_times(fn, cfg), "cuda-events")


@functools.cache
def _triton_testing():
    """``triton.testing``, or None when Triton is missing or its CUDA driver does not start.

    ``do_bench`` needs Triton's active driver (it builds a small C helper on first use); if
    that fails, every provider would fail while timing, so the event loop below is used
    instead (``method == "cuda-events"`` in the results says so).
    """
    try:
        from triton import runtime, testing

        driver = runtime.driver.active
        driver.get_device_interface()
        driver.get_empty_cache_for_benchmark  # noqa: B018 (do_bench flushes L2 with it)
    except Exception:
        return None
    return testing


def triton_timing_available() -> bool:
    """Whether :func:`time_cuda` times with ``triton.testing.do_bench``."""
    return _triton_testing() is not None


def _one_call_ms(fn: Callable[[], object]) -> float:
    """Milliseconds of one call of fn on the GPU, timed with CUDA events."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def _cuda_event_times(fn: Callable[[], object], cfg: TimingConfig) -> list[float]:
    """do_bench's loop without Triton: flush L2, then time each call with CUDA events."""
    # Twice the largest L2 of current GPUs (H100: 50 MB; H200 the same), so a flush evicts
    # everything the previous call left there.
    flush = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device="cuda")

    def one(n: int) -> list[tuple[torch.cuda.Event, torch.cuda.Event]]:
        pairs = []
        for _ in range(n):
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        return pairs

    torch.cuda.synchronize()
    pairs = one(5)
    torch.cuda.synchronize()
    estimate_ms = max(statistics.fmean(s.elapsed_time(e) for s, e in pairs), 1e-3)
    one(max(1, int(cfg.warmup_ms / estimate_ms)))
    pairs = one(max(1, int(cfg.rep_ms / estimate_ms)))
    torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1e-3 for s, e in pairs]


# --------------------------------------------------------------------------------------------
# CPU
# --------------------------------------------------------------------------------------------


def time_cpu(fns: Mapping[str, Callable[[], object]], config: TimingConfig) -> dict[str, Timing]:
    """Time CPU callables interleaved: each round calls every one of them once, in order.

    Rounds continue until every callable has had ``rep_ms`` of calls on average and at least
    ``min_reps`` calls, or ``max_reps`` rounds. Returns a Timing per name.
    """
    cfg = config.resolved("cpu")
    return _time_interleaved(
        fns,
        warmup_rounds=1,
        warmup_s=cfg.warmup_ms * 1e-3,
        min_rounds=cfg.min_reps,
        max_rounds=cfg.max_reps,
        rep_s=cfg.rep_ms * 1e-3,
    )


def time_calls(
    fns: Mapping[str, Callable[[], object]], reps: int, warmup: int = 1
) -> dict[str, Timing]:
    """Time callables interleaved for a fixed count: ``warmup`` untimed rounds, then ``reps``
    timed rounds, each calling every callable once, in order. Returns a Timing per name."""
    reps = check_size(reps, "reps", "time_calls")
    warmup = check_size(warmup, "warmup", "time_calls", minimum=0)
    return _time_interleaved(
        fns, warmup_rounds=warmup, warmup_s=0.0, min_rounds=reps, max_rounds=reps, rep_s=0.0
    )


def _time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    warmup_rounds: int,
    warmup_s: float,
    min_rounds: int,
    max_rounds: int,
    rep_s: float,
) -> dict[str, Timing]:
    """The CPU loop: ``warmup_rounds`` rounds and more until each callable has had about
    ``warmup_s`` of warm-up, then timed rounds until each has had about ``rep_s`` of calls
    and at least ``min_rounds`` rounds ran, but at most ``max_rounds`` rounds."""
    names = list(fns)
    if not names:
        return {}
    times: dict[str, list[float]] = {n: [] for n in names}

    def round_() -> None:
        for name in names:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)

    start = time.perf_counter()
    for _ in range(warmup_rounds):
        round_()
    while time.perf_counter() - start < warmup_s * len(names):
        round_()
    for t in times.values():
        t.clear()
    start = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (
        rounds < min_rounds or time.perf_counter() - start < rep_s * len(names)
    ):
        round_()
        rounds += 1
    return {n: summarize(t, "perf_counter") for n, t in times.items()}
