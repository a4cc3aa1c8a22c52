"""``smlp-bench`` (also ``python -m smlp_kernels.bench``): run a benchmark suite, print the
table, and write JSON, CSV, plots and profiler traces.

With no arguments it runs the ``cpu`` suite on a machine without CUDA and the ``gpu`` suite
with CUDA. Exit status: 0 when every provider that ran gave a checked answer and a time,
1 when any of them failed (the files are written either way), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .._validation import csv_arg, float_arg, int_arg, int_list_arg
from .analysis import add_comparisons, summarize_results
from .cases import (
    DTYPES,
    MODEL_MODES,
    MODEL_SPECS,
    OP_MODES,
    STAGE_SHAPES,
    SUITES,
    Case,
    filter_cases,
    suite_cases,
    suite_providers,
)
from .meta import collect_metadata, cpu_model, device_name, git_commit
from .providers import all_providers, select_providers
from .report import (
    build_report,
    file_stem,
    format_tables,
    merge_reports,
    validate_report,
    write_csv,
    write_json,
)
from .roofline import measure_ceilings
from .runner import CudaContextLost, Progress, RunConfig, Runner
from .timing import TimingConfig

__all__ = ["build_parser", "main"]


# The largest seed torch.Generator.manual_seed takes; a negative one wraps around to
# 2**64 + seed (so -1 and 2**64 - 1 would give the same inputs under two names).
_MAX_SEED = 2**64 - 1


def _names(kind: str, known: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: comma-separated names, each one of ``known``."""

    def parse(text: str) -> list[str]:
        names = csv_arg(text)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {kind} {', '.join(map(repr, unknown))}; known: {', '.join(known)}"
            )
        return names

    return parse


def _known_labels() -> list[str]:
    """Every label a case of any suite can have: stage shapes, models, the smoke shapes."""
    labels = [*STAGE_SHAPES, *MODEL_SPECS]
    for suite in SUITES.values():
        for case in suite.cases:
            if case.label not in labels:
                labels.append(case.label)
    return labels


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smlp-bench",
        description="Benchmark the sMLP token mixing: every provider, FLOPs, bytes, roofline.",
        epilog="Suites: "
        + "; ".join(f"{s.name}: {s.description}" for s in SUITES.values())
        + ". Providers: see --list.",
    )
    sel = p.add_argument_group("what to run")
    sel.add_argument(
        "--suite",
        type=_names("suite", list(SUITES)),
        default=None,
        help="comma-separated suite names (default: gpu with CUDA, cpu without)",
    )
    sel.add_argument(
        "--providers",
        type=csv_arg,
        default=None,
        help="comma-separated providers, instead of the suite's (one that cannot run is "
        "reported as skipped)",
    )
    sel.add_argument(
        "--modes",
        type=_names("mode", [*OP_MODES, *(m for m in MODEL_MODES if m not in OP_MODES)]),
        default=None,
        help="keep these modes: fwd,bwd,fwd+bwd,train",
    )
    sel.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="run every case in this dtype"
    )
    sel.add_argument(
        "--batch",
        type=int_list_arg(1),
        default=None,
        help="keep these batch sizes, each >= 1 (one size that is not in the suite replaces "
        "them all)",
    )
    sel.add_argument(
        "--shapes",
        type=_names("label", _known_labels()),
        default=None,
        help="keep these stage labels (T1..T4, B1..B4) or models",
    )
    sel.add_argument("-k", "--filter", default=None, help="keep case ids matching this glob")
    sel.add_argument(
        "--device", choices=["cpu", "cuda"], default=None, help="default: cuda if seen"
    )
    sel.add_argument(
        "--list", action="store_true", help="list suites, cases and providers; run nothing"
    )

    tim = p.add_argument_group("how to time")
    tim.add_argument(
        "--warmup-ms",
        type=float_arg(0.0, unit="milliseconds"),
        default=None,
        help="warm-up per provider, >= 0 (CUDA 25, CPU 0)",
    )
    tim.add_argument(
        "--rep-ms",
        type=float_arg(0.0, unit="milliseconds"),
        default=None,
        help="timed ms per provider, >= 0 (CUDA 100, CPU 300)",
    )
    tim.add_argument(
        "--min-reps",
        type=int_arg(0, TimingConfig.max_reps),
        default=5,
        help=f"CPU: at least this many timed calls, 0 to {TimingConfig.max_reps} (at least 1 "
        "with --rep-ms 0)",
    )
    tim.add_argument("--cuda-graph", action="store_true", help="CUDA: time CUDA-graph replays")
    tim.add_argument(
        "--threads", type=int_arg(1), default=None, help="torch.set_num_threads (CPU), >= 1"
    )
    tim.add_argument(
        "--ceilings",
        choices=["full", "quick", "none"],
        default="full",
        help="measure the ceilings (copy bandwidth; compute: the FMA peak on CPU, a large "
        "matmul on CUDA) at full size (default), small (quick; not for figures) or not at "
        "all (no roofline)",
    )
    tim.add_argument(
        "--time-budget",
        type=float_arg(0.0, strict=True, unit="seconds"),
        default=None,
        metavar="SECONDS",
        help="start no new provider or timing after this (> 0); the rest is reported as skipped",
    )
    tim.add_argument(
        "--compile-reserve",
        type=float_arg(0.0, unit="seconds"),
        default=0.0,
        metavar="SECONDS",
        help="with --time-budget: start no torch.compile provider's first call (its compile) "
        "with less than this left, or less than its longest compile so far (default 0)",
    )
    tim.add_argument(
        "--seed",
        type=int_arg(0, _MAX_SEED),
        default=0,
        help="seed of the inputs and weights, 0 to 2**64 - 1 (default 0)",
    )

    out = p.add_argument_group("output")
    out.add_argument(
        "--out",
        type=Path,
        default=Path("smlp-bench-results"),
        help="output folder (default: smlp-bench-results)",
    )
    out.add_argument(
        "--from-json",
        nargs="+",
        type=Path,
        metavar="FILE",
        default=None,
        help="run nothing: merge these result files of one device (each case from the last "
        "file that has it) and write the table, JSON, CSV and plots of the whole",
    )
    out.add_argument(
        "--name", default=None, help="file name stem (default: smlp-bench-SUITE-DEVICE)"
    )
    out.add_argument(
        "--resume",
        action="store_true",
        help="keep the results already in OUT/NAME.json (each case and provider that gave a "
        "time or failed), measure only the rest, and rewrite that file after every case, so "
        "a run stopped by a time limit keeps all it finished",
    )
    out.add_argument("--no-files", action="store_true", help="write no JSON or CSV")
    out.add_argument("--plot", action="store_true", help="write the speed-up and roofline plots")
    out.add_argument(
        "--profile",
        action="store_true",
        help="write a torch.profiler Chrome trace per case into OUT/profile-STEM/ (NVTX "
        "ranges on CUDA)",
    )
    out.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _list(device: torch.device) -> str:
    lines = ["suites:"]
    for s in SUITES.values():
        lines.append(f"  {s.name:<8} {len(s.cases):>3} cases  {s.description}")
    lines.append(f"providers (for {device.type}):")
    probe = {"op": None, "model": None}
    runnable = {k: select_providers(k, device) for k in probe}
    for name, p in all_providers().items():
        uses = [k for k in ("op", "model") if name in runnable[k]]
        state = f"default for {' and '.join(uses)} cases" if uses else "not by default"
        lines.append(f"  {name:<28} {state:<32} {p.description}")
    return "\n".join(lines)


def _method_note(device: torch.device, config: TimingConfig) -> str:
    if device.type == "cpu":
        return "time.perf_counter over interleaved calls (one call of each provider per round)"
    if config.cuda_graph:
        return "CUDA-graph replays (do_bench_cudagraph; no L2 flush)"
    from .timing import triton_timing_available

    if not triton_timing_available():
        return "CUDA events per call, L2 flushed before each call (harness loop; no Triton)"
    return "CUDA events per call, L2 flushed before each call (triton.testing.do_bench)"


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # a timeout's SIGTERM: stop, and write what was measured


def _join(values: Sequence[object]) -> str:
    return ", ".join(map(str, values))


def _unique(values) -> list:
    return list(dict.fromkeys(values))  # in first-seen order


def _select_cases(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Case]:
    """The suites' cases narrowed by the options; every value asked for must select something.

    A label, mode or batch size that the suites do not have, or filters that leave nothing,
    are argument errors (exit 2, before anything is measured): dropping them silently would
    make a run look complete while it measured less than was asked.
    """
    suites = args.suite
    where = f"suite {suites[0]}" if len(suites) == 1 else f"suites {_join(suites)}"
    base = suite_cases(suites)
    if args.batch and len(args.batch) > 1:
        # One size not in the suite replaces every case's batch (filter_cases); among
        # several sizes, one the suite lacks would just select nothing.
        have = sorted({c.batch for c in base})
        missing = [b for b in args.batch if b not in have]
        if missing:
            parser.error(
                f"argument --batch: {_join(missing)} {'is' if len(missing) == 1 else 'are'} "
                f"not a batch size of {where} (its sizes: {_join(have)}); a single size that "
                "is not in the suite replaces them all"
            )
    for flag, values, attr in (("--shapes", args.shapes, "label"), ("--modes", args.modes, "mode")):
        if not values:
            continue
        have = _unique(getattr(c, attr) for c in base)
        missing = [v for v in values if v not in have]
        if missing:
            parser.error(
                f"argument {flag}: {_join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                f"in {where} (its {attr}s: {_join(have)})"
            )
    cases = filter_cases(
        base, shapes=args.shapes, batches=args.batch, modes=args.modes, dtype=args.dtype
    )
    if not cases:  # each value is in the suite, but not together with the others
        given = [
            f"{flag} {','.join(map(str, values))}"
            for flag, values in (
                ("--batch", args.batch),
                ("--shapes", args.shapes),
                ("--modes", args.modes),
            )
            if values
        ]
        parser.error(f"no case of {where} has {' and '.join(given)} together")
    if args.filter:
        kept = filter_cases(cases, pattern=args.filter)
        if not kept:
            parser.error(
                f"argument -k/--filter: {args.filter!r} matches none of the {len(cases)} case "
                f"ids selected (such as {cases[0].id})"
            )
        cases = kept
    return cases


def _check_providers(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    cases: Sequence[Case],
    names: dict[str, list[str]],
    device: torch.device,
) -> None:
    """Every provider asked for runs some case, and every case has a provider."""
    kinds = _unique(c.kind for c in cases)
    if args.providers:
        used = {n for k in kinds for n in names[k]}
        idle = [n for n in args.providers if n not in used]
        if idle:
            parser.error(
                f"argument --providers: {_join(idle)} cannot run any of the selected cases "
                f"(they are {' and '.join(kinds)} cases; --list says which provider runs what)"
            )
    for kind in kinds:
        if names[kind]:
            continue
        count = sum(c.kind == kind for c in cases)
        if args.providers:
            parser.error(
                f"argument --providers: none of {_join(args.providers)} runs {kind} cases, and "
                f"{count} of the selected cases are {kind} cases (leave them out with "
                "--shapes, --modes or -k, or add a provider for them)"
            )
        parser.error(
            f"no provider of suite(s) {_join(args.suite)} can run {kind} cases on "
            f"{device.type} ({count} selected; see --list)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.from_json:
        return _merge(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda, but torch sees no CUDA device")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.list:
        print(_list(device))
        return 0
    # Everything below is checked before any ceiling or case is measured.
    if args.min_reps == 0 and args.rep_ms == 0:
        parser.error(
            "argument --min-reps: 0 with --rep-ms 0 leaves no timed call; give --min-reps >= 1 "
            "or --rep-ms > 0"
        )
    args.suite = args.suite or (["gpu"] if device.type == "cuda" else ["cpu"])
    suites = args.suite
    cases = _select_cases(parser, args)
    timing = TimingConfig(
        warmup_ms=args.warmup_ms,
        rep_ms=args.rep_ms,
        min_reps=args.min_reps,
        cuda_graph=args.cuda_graph,
    )
    stem = args.name or file_stem(suites, device_name(device), device.type)
    previous = _load_resume(parser, args, stem, device) if args.resume else None
    done = {
        (r["case_id"], r["provider"]): r
        for r in (previous["results"] if previous else [])
        if r["status"] in _RESUMED_STATUSES
    }
    config = RunConfig(
        device=device,
        timing=timing,
        providers=args.providers,
        op_providers=suite_providers(suites, "op"),
        model_providers=suite_providers(suites, "model"),
        time_budget_s=args.time_budget,
        profile_dir=args.out / f"profile-{stem}" if args.profile else None,
        seed=args.seed,
        done=done,
        compile_reserve_s=args.compile_reserve,
    )
    runner = Runner(config)
    try:
        names = {k: runner.providers_for(k) for k in ("op", "model")}
    except ValueError as exc:  # an unknown provider name
        parser.error(f"argument --providers: {exc}")
    _check_providers(parser, args, cases, names, device)
    if args.plot and not _matplotlib_ok():
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    meta = collect_metadata(device)
    total = sum(len(names[c.kind]) for c in cases)
    if not args.quiet:
        print(
            f"smlp-bench: {len(cases)} cases x providers = {total} measurements on "
            f"{meta['device']['name']}",
            file=sys.stderr,
        )
    interrupted = False
    ceilings = None
    meta.update(
        command=["smlp-bench", *argv],
        suites=suites,
        seed=args.seed,
        timing={
            "warmup_ms": timing.resolved(device.type).warmup_ms,
            "rep_ms": timing.resolved(device.type).rep_ms,
            "min_reps": timing.min_reps,
            "cuda_graph": timing.cuda_graph,
            "method_note": _method_note(device, timing),
            "ceilings": args.ceilings,
            "time_budget_s": args.time_budget,
            "compile_reserve_s": args.compile_reserve,
        },
    )

    def report(rows: list[dict], *, finished: bool) -> dict:
        rows = list(rows)
        if previous is not None:  # earlier rows this run did not touch stay as they were
            have = {(r["case_id"], r["provider"]) for r in rows}
            rows += [r for r in previous["results"] if (r["case_id"], r["provider"]) not in have]
        add_comparisons(rows)
        meta.update(duration_s=time.perf_counter() - start, interrupted=not finished)
        if args.resume:
            earlier = _runs(previous) if previous is not None else []
            meta["runs"] = [*earlier, _this_run(meta, ceilings, rows, done)]
        used = {r["provider"] for r in rows}
        providers = {n: p.description for n, p in all_providers().items() if n in used}
        if previous is not None:
            providers = {**previous["providers"], **providers}
        # A resumed run that measured no ceilings (stopped before, or --ceilings none) keeps
        # the earlier ones: its rows' roofline figures are their own runs' either way.
        table_ceilings = ceilings.as_dict() if ceilings else None
        if table_ceilings is None and previous is not None:
            table_ceilings = previous["ceilings"]
        return build_report(meta, table_ceilings, providers, rows, summarize_results(rows))

    if args.resume:
        # Rewritten after every case (atomically), so a run stopped by a time limit or a
        # kill keeps every case it finished.
        path = args.out / f"{stem}.json"
        config.checkpoint = lambda rows: write_json(report(rows, finished=False), path)
    old_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if args.ceilings != "none":
            ceilings = measure_ceilings(device, {c.dtype for c in cases}, size=args.ceilings)
        runner.ceilings = ceilings
        runner.run(cases, Progress(total, enabled=not args.quiet))
    except KeyboardInterrupt:
        interrupted = True
        print("\nsmlp-bench: interrupted; writing what was measured", file=sys.stderr)
    except CudaContextLost as exc:
        # Every later call in this process would fail the same way: stop, keep what was
        # measured (the failing row included); --resume carries on in a new process.
        interrupted = True
        print(
            f"\nsmlp-bench: stopped: the CUDA context is lost after {exc}; writing what was "
            "measured",
            file=sys.stderr,
        )
    finally:
        signal.signal(signal.SIGTERM, old_handler)
    config.checkpoint = None
    doc = report(runner.results, finished=not interrupted)
    results = doc["results"]
    _emit(doc, args, stem, config.profile_dir)
    print(f"took {meta['duration_s']:.0f} s")
    failed = any(r["status"] == "failed" for r in results)
    return 1 if failed or interrupted else 0


# The rows --resume keeps: a time, or a failure (a wrong answer is a result too). Skipped
# rows (a time budget, an interruption, a provider that could not run) are tried again.
_RESUMED_STATUSES = ("ok", "failed")


def _load_resume(
    parser: argparse.ArgumentParser, args: argparse.Namespace, stem: str, device: torch.device
) -> dict | None:
    """The earlier report that --resume continues (None: there is none yet)."""
    if args.no_files:
        parser.error(
            "argument --resume: it continues OUT/NAME.json, which --no-files does not write"
        )
    path = args.out / f"{stem}.json"
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        parser.error(f"argument --resume: cannot read {path}: {exc}")
    problems = validate_report(doc) if isinstance(doc, dict) else ["not a JSON object"]
    if problems:
        parser.error(f"argument --resume: {path} is not a smlp-bench report: {problems[0]}")
    here = device_name(device)
    if device.type == "cpu" and args.threads is not None:  # applied later; named by it
        here = f"{cpu_model()} ({args.threads} threads)"
    name = doc["meta"]["device"]["name"]
    if name != here:
        parser.error(f"argument --resume: {path} was measured on {name}, not on {here}")
    seed = doc["meta"].get("seed")
    if seed is not None and seed != args.seed:
        parser.error(f"argument --resume: {path} was measured with --seed {seed}, not {args.seed}")
    then, now = doc["meta"].get("git_commit"), git_commit()[0]
    if then and now and then != now:  # results of two versions of the code in one table
        parser.error(
            f"argument --resume: {path} was measured at commit {then[:12]}, this is "
            f"{now[:12]}; move the file away to start over"
        )
    return doc


# What meta.runs records of each run (with its ceilings and the pairs it measured).
_RUN_KEYS = ("date", "git_commit", "hostname", "command", "duration_s")


def _measured(rows: Sequence[dict]) -> list[str]:
    return [f"{r['case_id']} {r['provider']}" for r in rows if r["status"] in _RESUMED_STATUSES]


def _runs(previous: dict) -> list[dict]:
    """The runs behind an earlier report: its own list, or the report itself as one run."""
    meta = previous["meta"]
    if meta.get("runs"):
        return list(meta["runs"])
    return [
        {
            **{k: meta.get(k) for k in _RUN_KEYS},
            "ceilings": previous["ceilings"],
            "measured": _measured(previous["results"]),
        }
    ]


def _this_run(meta: dict, ceilings, rows: Sequence[dict], done) -> dict:
    return {
        **{k: meta.get(k) for k in _RUN_KEYS},
        "ceilings": ceilings.as_dict() if ceilings else None,
        "measured": _measured([r for r in rows if (r["case_id"], r["provider"]) not in done]),
    }


def _matplotlib_ok() -> bool:
    from .plots import require_matplotlib

    try:
        require_matplotlib()  # fail now, not after a long run
    except ImportError as exc:
        print(f"smlp-bench: {exc}", file=sys.stderr)
        return False
    return True


def _emit(doc: dict, args: argparse.Namespace, stem: str, profile_dir: Path | None) -> None:
    """Print the tables; write the JSON, CSV, plots; say what was written."""
    print(format_tables(doc))
    written: list[Path] = []
    if not args.no_files:
        for suffix, writer in ((".json", write_json), (".csv", write_csv)):
            path = args.out / f"{stem}{suffix}"
            writer(doc, path)
            written.append(path)
    if args.plot:
        from .plots import plot_roofline, plot_speedups

        args.out.mkdir(parents=True, exist_ok=True)
        for fn, suffix in ((plot_speedups, "-speedup.png"), (plot_roofline, "-roofline.png")):
            path = fn(doc, args.out / f"{stem}{suffix}")
            if path is not None:
                written.append(path)
    if profile_dir is not None and profile_dir.exists():
        written.append(profile_dir)
    for path in written:
        print(f"wrote {path}")


def _merge(args: argparse.Namespace) -> int:
    if args.plot and not _matplotlib_ok():
        return 2
    try:
        doc = merge_reports([json.loads(p.read_text()) for p in args.from_json])
    except (OSError, ValueError) as exc:
        print(f"smlp-bench: {exc}", file=sys.stderr)
        return 2
    device = doc["meta"]["device"]
    stem = args.name or file_stem(["merged"], device["name"], device["type"])
    _emit(doc, args, stem, None)
    return 1 if any(r["status"] == "failed" for r in doc["results"]) else 0
