"""Running the cases: build each provider, check its answer, count FLOPs and memory, time it.

Per group of cases (same op or model, shape and dtype; the modes differ):

1. make the inputs, and the float64 reference answers (:mod:`.checks`);
2. reset ``torch.compile``'s caches (:func:`torch.compiler.reset`), so every group gets
   fresh static graphs instead of hitting the recompile limit after a few shapes;
3. build each provider once (a ``torch.compile`` wrapper compiles at its first call);
4. mode by mode: run each provider once, check its answer, count its FLOPs under
   ``FlopCounterMode`` (eager providers) and measure the peak memory of one call (CUDA);
   then time the providers that passed (CPU: interleaved; CUDA: one after another);
5. with ``profile_dir``, profile a few calls of each into one Chrome trace per case.

Anything a provider raises (a compile error, an unsupported shape, out of memory, a wrong
answer) becomes a row with ``status = "failed"`` and the error; the run goes on. A provider
that cannot run here at all is a row with ``status = "skipped"`` and the reason.
"""

from __future__ import annotations

import contextlib
import gc
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from .. import flops as flop_counts
from .cases import MODEL_SPECS, Case, group_cases
from .checks import (
    GRAD_NAMES,
    OpChecker,
    check_model_logits,
    make_op_inputs,
    model_inputs,
)
from .meta import device_name
from .providers import Provider, all_providers, select_providers
from .roofline import Ceilings, floor_s, op_bytes, op_flops
from .timing import Timing, TimingConfig, time_cpu, time_cuda

__all__ = ["RESULT_FIELDS", "CudaContextLost", "Progress", "RunConfig", "Runner", "derive_rates"]

# CUDA errors after which the process's CUDA context is unusable: every later call in it
# would fail with the same error, so the run stops (the rest is left for a new process).
STICKY_CUDA_ERRORS = (
    "illegal memory access",
    "unspecified launch failure",
    "misaligned address",
    "device-side assert",
    "illegal instruction",
    "an illegal",
)


class CudaContextLost(RuntimeError):
    """A provider hit a CUDA error that leaves the context broken; the run cannot go on."""


def _check_sticky(device: torch.device, error: str) -> None:
    if device.type == "cuda" and any(e in error for e in STICKY_CUDA_ERRORS):
        raise CudaContextLost(error)


# Every result row has exactly these keys, in this order (the CSV columns; JSON "results").
RESULT_FIELDS = (
    "case_id",
    "kind",
    "name",
    "label",
    "batch",
    "channels",
    "out_channels",
    "height",
    "width",
    "dtype",
    "mode",
    "device",
    "provider",
    "status",
    "error",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "mean_ms",
    "min_ms",
    "reps",
    "timing_method",
    "setup_s",
    "flops",
    "flops_counted",
    "flops_counted_expected",
    "flops_check",
    "bytes",
    "tflop_per_s",
    "gb_per_s",
    "floor_ms",
    "roofline_pct",
    "images_per_s",
    "peak_mem_bytes",
    "peak_mem_note",
    "check_passed",
    "check_detail",
    "speedup_vs_spach_eager",
    "speedup_vs_spach_compile",
    "speedup_vs_spach_compile_max_autotune",
    "mem_ratio_vs_spach_eager",
)


@dataclass
class RunConfig:
    """What to run and how."""

    device: torch.device
    timing: TimingConfig = field(default_factory=TimingConfig)
    providers: Sequence[str] | None = None  # the user's list (None: suite's or default)
    op_providers: Sequence[str] | None = None  # the suite's defaults for op cases
    model_providers: Sequence[str] | None = None  # the suite's defaults for model cases
    time_budget_s: float | None = None  # stop starting new work after this many seconds
    profile_dir: Path | None = None  # write a Chrome trace per group here
    profile_calls: int = 3
    seed: int = 0
    model_check_images: int = 2  # images whose logits are checked against float64
    # Rows of an earlier run to keep instead of measuring again, by (case_id, provider).
    done: Mapping[tuple[str, str], dict] | None = None
    # The least time a compiled provider's first call (compile + autotune) is expected to
    # take: with a time budget, a compile is not started when less than this (or the longest
    # compile seen so far of the same provider) is left.
    compile_reserve_s: float = 0.0
    # Called with every row so far after each case (all its providers) is finished.
    checkpoint: Callable[[list[dict]], None] | None = None


class Progress:
    """A one-line progress bar on a terminal; one line per finished group otherwise."""

    def __init__(self, total: int, stream=None, enabled: bool = True) -> None:
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()

    def advance(self, n: int, label: str) -> None:
        self.done += n
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        if self.tty:
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(
                f"\r[{bar}] {self.done}/{self.total} {elapsed:6.0f}s {label[:60]:<60}"
            )
            self.stream.flush()

    def group_done(self, label: str) -> None:
        if self.enabled and not self.tty:
            elapsed = time.perf_counter() - self.start
            self.stream.write(f"[{self.done}/{self.total}] {elapsed:.0f}s {label}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 2000 else text[:2000] + " ..."


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class _Failure:
    """Why a provider got no timing: status "failed" or "skipped", and the error text."""

    status: str
    error: str


@dataclass
class _Ready:
    """A provider's callable for one case, checked and ready to time."""

    run: Callable[[], object]
    prepare: Callable[[], None] = lambda: None  # called before timing (train/eval mode)
    label: str = ""  # the NVTX / record_function range name


class Runner:
    """Runs cases and collects result rows (plain dicts with :data:`RESULT_FIELDS`).

    ``results`` fills as the run goes, so an interrupted run still has what it measured.
    """

    def __init__(self, config: RunConfig, ceilings: Ceilings | None = None) -> None:
        self.config = config
        self.device = config.device
        self.device_name = device_name(self.device)
        self.ceilings = ceilings
        self.results: list[dict] = []
        self._providers = all_providers()
        self._start = time.perf_counter()
        self._done = dict(config.done or {})
        # The longest first call (compile included) of each compiled provider so far.
        self._compile_s: dict[str, float] = {}
        for (_, name), row in self._done.items():
            self._note_compile(name, row)

    # -- public -----------------------------------------------------------------------------

    def providers_for(self, kind: str) -> list[str]:
        suite = self.config.op_providers if kind == "op" else self.config.model_providers
        return select_providers(kind, self.device, self.config.providers, suite)

    def run(self, cases: Iterable[Case], progress: Progress | None = None) -> list[dict]:
        """Run every case with its providers; returns (and keeps) the result rows."""
        groups = group_cases(cases)
        names = {kind: self.providers_for(kind) for kind in ("op", "model")}
        progress = progress or Progress(
            sum(len(g) * len(names[g[0].kind]) for g in groups), enabled=False
        )
        for group in groups:
            providers = [self._providers[n] for n in names[group[0].kind]]
            if all((c.id, p.name) in self._done for c in group for p in providers):
                # Measured by an earlier run (--resume): keep its rows, build nothing.
                self.results += [dict(self._done[c.id, p.name]) for c in group for p in providers]
                progress.advance(len(group) * len(providers), group[0].group_id)
                self._checkpoint()
                continue
            try:
                if group[0].kind == "op":
                    self._run_op_group(group, providers, progress)
                else:
                    self._run_model_group(group, providers, progress)
            except CudaContextLost:
                raise
            except Exception as exc:
                # The group's own setup failed (inputs, the float64 reference: out of memory,
                # say): every provider of it fails with that error; the run goes on.
                self._fail_group(group, providers, f"group setup: {_error_text(exc)}", progress)
                self._checkpoint()
            progress.group_done(group[0].group_id)
            _free(self.device)
        progress.close()
        return self.results

    def prepare_one(
        self, case: Case, provider_name: str
    ) -> tuple[dict, Callable[[], object] | None]:
        """Build, run once and check one provider on one case, without timing it.

        Returns the result row (status ``"skipped"`` with the reason when the provider cannot
        run here, ``"failed"`` when its answer is wrong) and the callable to time, or None.
        Errors propagate. For callers that time it themselves (the pytest benchmarks).
        """
        provider = self._providers[provider_name]
        row = self._row(case, provider_name, "failed")
        reason = provider.why_not(case, self.device)
        if reason is not None:
            row.update(status="skipped", error=reason)
            return row, None
        torch.compiler.reset()
        if case.kind == "op":
            row.update(flops=op_flops(case), bytes=op_bytes(case))
            inputs = make_op_inputs(case, self.device, self.config.seed)
            checker = OpChecker(inputs, case.dtype, self.device, {case.mode})
            ready = self._setup_op(case, provider, provider.op_fn(), inputs, checker, row)
        else:
            spec = MODEL_SPECS[case.name]
            torch.manual_seed(self.config.seed)
            state = _initial_state(case)
            images, target = model_inputs(case, spec.image_size, spec.num_classes, self.device)
            n = min(self.config.model_check_images, case.batch)
            ref = self._model_reference(case, state, images[:n], target[:n])
            row["flops"] = ref["flops_per_image"][case.mode] * case.batch
            call, owner = provider.model(case, state, self.device)
            ready = self._setup_model(case, provider, call, owner, images, target, ref, row)
        if ready is None:
            return row, None
        ready.prepare()
        row["status"] = "ok"
        return row, ready.run

    # -- shared -----------------------------------------------------------------------------

    def _fail_group(
        self, group: list[Case], providers: list[Provider], error: str, progress: Progress
    ) -> None:
        have = {(r["case_id"], r["provider"]) for r in self.results}
        missing = [(c, p) for c in group for p in providers if (c.id, p.name) not in have]
        self.results += [
            dict(self._done[c.id, p.name])
            if (c.id, p.name) in self._done
            else self._row(c, p.name, "failed", error)
            for c, p in missing
        ]
        progress.advance(len(missing), group[0].group_id)

    def _checkpoint(self) -> None:
        if self.config.checkpoint is not None:
            self.config.checkpoint(self.results)

    def _note_compile(self, name: str, row: dict) -> None:
        """Remember how long a compiled provider's first call took (its compile time)."""
        provider = self._providers.get(name)
        if provider is None or provider.compile_mode is None or row.get("setup_s") is None:
            return
        self._compile_s[name] = max(self._compile_s.get(name, 0.0), row["setup_s"])

    def _compile_wont_fit(self, provider: Provider) -> str | None:
        """Why a compiled provider's first call should not start now, or None.

        With a time budget, a compile (minutes for max-autotune) is started only when what
        is left of the budget covers the longest compile of this provider seen so far (in
        this run or the resumed one), and at least ``compile_reserve_s``: one that would be
        cut off by the budget's end would cost its time and measure nothing.
        """
        budget = self.config.time_budget_s
        if budget is None or provider.compile_mode is None:
            return None
        need = max(self.config.compile_reserve_s, self._compile_s.get(provider.name, 0.0))
        left = budget - (time.perf_counter() - self._start)
        if left >= need:
            return None
        return (
            f"time budget exhausted: {max(left, 0.0):.0f} s left, and compiling "
            f"{provider.name} takes ~{need:.0f} s"
        )

    def _over_budget(self) -> bool:
        budget = self.config.time_budget_s
        return budget is not None and time.perf_counter() - self._start > budget

    def _row(self, case: Case, provider: str, status: str, error: str | None = None) -> dict:
        row = dict.fromkeys(RESULT_FIELDS)
        row.update(
            case_id=case.id,
            kind=case.kind,
            name=case.name,
            label=case.label,
            batch=case.batch,
            channels=case.channels if case.kind == "op" else None,
            out_channels=case.out_channels if case.kind == "op" else None,
            height=case.height if case.kind == "op" else None,
            width=case.width if case.kind == "op" else None,
            dtype=case.dtype,
            mode=case.mode,
            device=self.device_name,
            provider=provider,
            status=status,
            error=error,
        )
        return row

    def _peak_memory(self, run: Callable[[], object]) -> tuple[int | None, str]:
        if self.device.type != "cuda":
            return None, "no allocator peak on CPU"
        _sync(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        out = run()
        _sync(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - base
        del out
        return peak, "bytes allocated during one call above what was allocated before it"

    def _time(
        self, ready: dict[str, _Ready], rows: dict[str, dict], progress: Progress, what: str
    ) -> None:
        """Time the ready providers of one case and fill their rows."""
        if not ready:
            return
        if self._over_budget():
            for name in ready:
                rows[name].update(status="skipped", error="time budget exhausted")
            progress.advance(len(ready), what)
            return
        # A failure is kept as its text only: a kept exception's traceback would hold the
        # failing call's tensors (an out-of-memory error's, say) while the others are timed.
        timings: dict[str, Timing | _Failure] = {}
        for r in ready.values():
            r.prepare()
        if self.device.type == "cpu":
            try:
                timings.update(time_cpu({n: r.run for n, r in ready.items()}, self.config.timing))
            except Exception:
                # Find out which one fails: time each on its own.
                for name, r in ready.items():
                    try:
                        timings[name] = time_cpu({name: r.run}, self.config.timing)[name]
                    except Exception as exc:
                        timings[name] = _Failure("failed", f"while timing: {_error_text(exc)}")
        else:
            for name, r in ready.items():
                if self._over_budget():
                    timings[name] = _Failure("skipped", "time budget exhausted")
                    continue
                failure = None
                try:
                    timings[name] = time_cuda(r.run, self.config.timing)
                except Exception as exc:
                    failure = _Failure("failed", f"while timing: {_error_text(exc)}")
                if failure is not None:  # outside the handler: its frames are gone now
                    timings[name] = failure
                    if any(e in failure.error for e in STICKY_CUDA_ERRORS):
                        self._fill_timings(rows, timings)
                        progress.advance(len(ready), what)
                        raise CudaContextLost(failure.error)
                    _free(self.device)
        self._fill_timings(rows, timings)
        progress.advance(len(ready), what)

    def _fill_timings(self, rows: dict[str, dict], timings: dict) -> None:
        for name, t in timings.items():
            row = rows[name]
            if isinstance(t, _Failure):
                row.update(status=t.status, error=t.error)
            else:
                row.update(
                    status="ok",
                    median_ms=t.median_s * 1e3,
                    p20_ms=t.p20_s * 1e3,
                    p80_ms=t.p80_s * 1e3,
                    mean_ms=t.mean_s * 1e3,
                    min_ms=t.min_s * 1e3,
                    reps=t.n,
                    timing_method=t.method,
                )
                derive_rates(row, self.ceilings)

    def _profile(self, case: Case, ready: dict[str, _Ready]) -> None:
        """A Chrome trace of a few calls of every ready provider of one case."""
        if self.config.profile_dir is None or not ready:
            return
        from torch.profiler import ProfilerActivity, profile, record_function

        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self.config.profile_dir.mkdir(parents=True, exist_ok=True)
        with profile(activities=activities) as prof:
            for r in ready.values():
                r.prepare()
                for _ in range(self.config.profile_calls):
                    # NVTX ranges show in Nsight Systems; record_function ranges in the trace.
                    nvtx = (
                        torch.cuda.nvtx.range(r.label)
                        if self.device.type == "cuda"
                        else contextlib.nullcontext()
                    )
                    with record_function(r.label), nvtx:
                        r.run()
                _sync(self.device)
        prof.export_chrome_trace(str(self.config.profile_dir / f"{case.id}.json"))

    def _run_group(
        self,
        group: list[Case],
        providers: list[Provider],
        progress: Progress,
        init_row: Callable[[Case, dict], None],
        build: Callable[[Provider], object],
        setup: Callable[[Case, Provider, object, dict], _Ready | None],
    ) -> None:
        """The loop shared by op and model groups.

        Each provider is built once per group (``build``: one torch.compile wrapper for all
        modes). Then mode by mode: ``setup`` runs and checks every provider, the ready ones
        are timed together and profiled, and their callables are dropped before the next
        mode, so only one mode's graphs (a retained backward, say) are alive at a time.
        """
        rows = {}
        for c in group:
            for p in providers:
                old = self._done.get((c.id, p.name))
                if old is not None:
                    rows[c.mode, p.name] = dict(old)
                else:
                    rows[c.mode, p.name] = self._row(c, p.name, "failed")
                    init_row(c, rows[c.mode, p.name])
        finished: list[str] = []

        def case_done(case: Case) -> None:
            # A case's rows go in as soon as all its providers are done, so a checkpoint (or
            # an interrupted run) keeps every finished case of an unfinished group.
            finished.append(case.mode)  # first: an interrupt here must not add them twice
            self.results += [rows[case.mode, p.name] for p in providers]
            self._checkpoint()

        try:
            self._run_group_rows(group, providers, progress, build, setup, rows, case_done)
        except CudaContextLost:
            raise
        except Exception as exc:  # the group's own machinery failed: its open rows say why
            for row in rows.values():
                if row["status"] == "failed" and row["error"] is None:
                    row["error"] = f"group: {_error_text(exc)}"
        finally:
            # Interrupted or not, the group's rows go in; unfinished ones say why.
            for row in rows.values():
                if row["status"] == "failed" and row["error"] is None:
                    row.update(status="skipped", error="interrupted")
            self.results += [
                rows[c.mode, p.name] for c in group if c.mode not in finished for p in providers
            ]

    def _run_group_rows(self, group, providers, progress, build, setup, rows, case_done) -> None:
        built: dict[str, object] = {}
        torch.compiler.reset()
        for provider in providers:
            todo = [c for c in group if (c.id, provider.name) not in self._done]
            if not todo:
                continue
            reason = provider.why_not(group[0], self.device)
            if reason is None and self._over_budget():
                reason = "time budget exhausted"
            if reason is None:
                try:
                    built[provider.name] = build(provider)
                    continue
                except Exception as exc:
                    status, error = "failed", _error_text(exc)
            else:
                status, error = "skipped", reason
            for case in todo:
                rows[case.mode, provider.name].update(status=status, error=error)
            progress.advance(len(todo), f"{group[0].group_id} {provider.name}")
        for case in group:
            ready: dict[str, _Ready] = {}
            for provider in providers:
                if (case.id, provider.name) in self._done:
                    progress.advance(1, f"{case.id} {provider.name} (resumed)")
                    continue
                if provider.name not in built:
                    continue
                row = rows[case.mode, provider.name]
                r = None
                why_not_now = self._compile_wont_fit(provider)
                if self._over_budget():
                    row.update(status="skipped", error="time budget exhausted")
                elif why_not_now is not None:
                    row.update(status="skipped", error=why_not_now)
                else:
                    failed = False
                    try:
                        r = setup(case, provider, built[provider.name], row)
                    except Exception as exc:
                        row.update(status="failed", error=_error_text(exc))
                        failed = True
                    if failed:  # outside the handler, so the failed call's tensors are freed
                        _check_sticky(self.device, row["error"])
                        _free(self.device)
                    self._note_compile(provider.name, row)
                if r is None:
                    progress.advance(1, f"{case.id} {provider.name}")
                else:
                    ready[provider.name] = r
            self._time(
                ready, {p.name: rows[case.mode, p.name] for p in providers}, progress, case.id
            )
            try:
                self._profile(case, ready)
            except Exception as exc:  # a profiler problem must not cost the measurements
                for name in ready:
                    rows[case.mode, name]["error"] = f"profiling failed: {_error_text(exc)}"
            del ready
            case_done(case)

    # -- op cases ---------------------------------------------------------------------------

    def _run_op_group(self, group: list[Case], providers: list[Provider], progress) -> None:
        inputs = make_op_inputs(group[0], self.device, self.config.seed)
        checker = OpChecker(inputs, group[0].dtype, self.device, {c.mode for c in group})

        def init_row(case: Case, row: dict) -> None:
            row.update(flops=op_flops(case), bytes=op_bytes(case))

        def setup(case: Case, provider: Provider, fn, row: dict) -> _Ready | None:
            return self._setup_op(case, provider, fn, inputs, checker, row)

        self._run_group(group, providers, progress, init_row, lambda p: p.op_fn(), setup)

    def _setup_op(
        self,
        case: Case,
        provider: Provider,
        fn,
        inputs,
        checker: OpChecker,
        row: dict,
    ) -> _Ready | None:
        """Build the mode's callable, run it once, check it, count FLOPs and memory.

        Returns None (and marks the row failed) when the answer is wrong, or (marking it
        skipped) when the provider cannot run in this mode here (:func:`_why_not_mode`).
        """
        reason = _why_not_mode(case, provider, self.device)
        if reason is not None:
            row.update(status="skipped", error=reason)
            return None
        start = time.perf_counter()
        run = _op_callable(fn, inputs, case.mode)
        answers = _op_answers(run(), case.mode)
        _sync(self.device)
        row["setup_s"] = time.perf_counter() - start
        result = checker.check(answers)
        row.update(check_passed=result.passed, check_detail=result.detail)
        del answers
        if not result.passed:
            row.update(status="failed", error=f"wrong answer: {result.detail}")
            return None
        expected = _expected_counted_flops(case, provider)
        row["flops_counted_expected"] = expected
        if provider.compile_mode is not None:
            row["flops_check"] = "not counted: compiled code bypasses the dispatcher"
        else:
            with FlopCounterMode(display=False) as counter:
                run()
            counted = counter.get_total_flops()
            row["flops_counted"] = counted
            row["flops_check"] = "match" if counted == expected else "MISMATCH"
        row["peak_mem_bytes"], row["peak_mem_note"] = self._peak_memory(run)
        label = f"smlp_mix[{provider.name}] {case.id}"
        return _Ready(run, label=label)

    # -- model cases ------------------------------------------------------------------------

    def _run_model_group(self, group: list[Case], providers: list[Provider], progress) -> None:
        case0 = group[0]
        spec = MODEL_SPECS[case0.name]
        # fwd first: its check needs the initial weights, which a training step changes.
        group = sorted(group, key=lambda c: c.mode != "fwd")
        torch.manual_seed(self.config.seed)
        state = _initial_state(case0)
        images, target = model_inputs(case0, spec.image_size, spec.num_classes, self.device)
        n_check = min(self.config.model_check_images, case0.batch)
        ref = self._model_reference(case0, state, images[:n_check], target[:n_check])

        def init_row(case: Case, row: dict) -> None:
            row.update(
                flops=ref["flops_per_image"][case.mode] * case.batch,
                flops_check="whole model counted once, by FlopCounterMode, in float64",
            )

        def build(provider: Provider):
            return provider.model(case0, state, self.device)

        def setup(case: Case, provider: Provider, built, row: dict) -> _Ready | None:
            call, owner = built
            return self._setup_model(case, provider, call, owner, images, target, ref, row)

        self._run_group(group, providers, progress, init_row, build, setup)

    def _model_reference(self, case: Case, state, images, target) -> dict:
        """The float64 reference logits, PyTorch's own in the case's dtype, and the FLOPs per
        image of inference and of a training step (FlopCounterMode on the reference model)."""
        reference = all_providers()["reference"]
        n = images.shape[0]
        model64, _ = reference.model(replace(case, dtype="fp64"), state, self.device)
        low, _ = reference.model(case, state, self.device)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            logits64 = model64.eval()(images.double())
        fwd_flops = counter.get_total_flops()
        with torch.no_grad():
            logits_low = low.eval()(images)
        with FlopCounterMode(display=False) as counter:
            loss = F.cross_entropy(model64.train()(images.double()), target)
            loss.backward()
        train_flops = counter.get_total_flops()
        del model64, low
        return {
            "logits64": logits64,
            "logits_low": logits_low,
            "flops_per_image": {"fwd": fwd_flops // n, "train": train_flops // n},
        }

    def _setup_model(
        self, case: Case, provider: Provider, call, owner, images, target, ref, row
    ) -> _Ready | None:
        start = time.perf_counter()
        if case.mode == "fwd":

            def prepare() -> None:
                owner.eval()

            def run():
                with torch.no_grad():
                    return call(images)

            prepare()
            logits = run()[: ref["logits64"].shape[0]]
            _sync(self.device)
            result = check_model_logits(
                logits, ref["logits64"], ref["logits_low"], case.dtype, self.device
            )
            passed, detail = result.passed, f"first {logits.shape[0]} images' {result.detail}"
        else:
            opt = torch.optim.SGD(owner.parameters(), lr=1e-4, momentum=0.9)

            def prepare() -> None:
                owner.train()

            def run():
                loss = F.cross_entropy(call(images).float(), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return loss

            prepare()
            loss = run().item()
            passed = math.isfinite(loss)
            detail = f"training step: loss {loss:.4g} ({'finite' if passed else 'not finite'})"
        row.update(setup_s=time.perf_counter() - start, check_passed=passed, check_detail=detail)
        if not passed:
            row.update(status="failed", error=f"wrong answer: {detail}")
            return None
        row["peak_mem_bytes"], row["peak_mem_note"] = self._peak_memory(run)
        return _Ready(run, prepare, label=f"{case.name}[{provider.name}] {case.id}")


def derive_rates(row: dict, ceilings: Ceilings | None) -> None:
    """Fill a timed row's rates and roofline figures from its ``median_ms``."""
    seconds = row["median_ms"] * 1e-3
    if row["flops"]:
        row["tflop_per_s"] = row["flops"] / seconds / 1e12
    if row["bytes"]:
        row["gb_per_s"] = row["bytes"] / seconds / 1e9
    if row["kind"] == "model":
        row["images_per_s"] = row["batch"] / seconds
    if ceilings is not None and row["flops"] and row["bytes"]:
        floor = floor_s(row["flops"], row["bytes"], ceilings, row["dtype"])
        if floor is not None:
            row["floor_ms"] = floor * 1e3
            row["roofline_pct"] = 100.0 * floor / seconds


def _initial_state(case: Case) -> dict:
    """The weights every provider of a model case starts from (SparseMLP's initialisation)."""
    from ..models import SMLPNet

    model = SMLPNet(**MODEL_SPECS[case.name].kwargs(), backend="reference")
    return model.state_dict()


# torch.compile modes that replay CUDA graphs (cudagraph trees) on CUDA.
_CUDAGRAPH_COMPILE_MODES = ("max-autotune", "reduce-overhead")


def _why_not_mode(case: Case, provider: Provider, device: torch.device) -> str | None:
    """Why ``provider`` cannot be timed in ``case.mode`` on ``device``, or None.

    The ``bwd`` mode replays backwards through one retained forward graph
    (``retain_graph=True``); cudagraph trees do not support that (they fail while recording,
    and may leave the tree unusable for the group's later modes), so a compile mode that
    replays CUDA graphs is skipped there on CUDA.
    """
    if (
        case.mode == "bwd"
        and device.type == "cuda"
        and provider.compile_mode in _CUDAGRAPH_COMPILE_MODES
    ):
        return (
            f"mode bwd retains one forward graph for every backward; torch.compile mode "
            f"{provider.compile_mode!r} replays CUDA graphs, which cannot do that"
        )
    return None


def _op_callable(fn, inputs, mode: str) -> Callable[[], object]:
    """The callable timed for an op case in ``mode`` (see :mod:`.cases` for the modes)."""
    args = inputs.args
    if mode == "fwd":

        def run_fwd():
            with torch.no_grad():
                return fn(*args)

        return run_fwd
    leaves = [t.detach().requires_grad_() for t in args]
    if mode == "bwd":
        y = fn(*leaves)  # one forward; its graph is kept for every timed backward

        def run_bwd():
            return torch.autograd.grad(y, leaves, inputs.grad, retain_graph=True)

        return run_bwd

    def run_fwd_bwd():
        y = fn(*leaves)
        return y, torch.autograd.grad(y, leaves, inputs.grad)

    return run_fwd_bwd


def _op_answers(out, mode: str) -> dict:
    if mode == "fwd":
        return {"y": out}
    if mode == "bwd":
        return {f"d_{n}": g for n, g in zip(GRAD_NAMES, out, strict=True)}
    y, grads = out
    return {"y": y, **{f"d_{n}": g for n, g in zip(GRAD_NAMES, grads, strict=True)}}


def _expected_counted_flops(case: Case, provider: Provider) -> int:
    """What FlopCounterMode should count for this provider's execution of the case.

    Our ops count the formulas of :mod:`smlp_kernels.flops` (registered with the custom
    ops). The SPACH-style autograd stores r and k instead of recomputing them, so PyTorch
    counts its backward as exactly twice the forward (input and weight gradient of each conv).
    """
    if provider.family == "ours":
        return op_flops(case)
    fwd = flop_counts.smlp_mix_flops(
        case.batch, case.channels, case.out_channels, case.height, case.width
    )
    return {"fwd": fwd, "bwd": 2 * fwd, "fwd+bwd": 3 * fwd}[case.mode]
