"""The benchmark harness itself (:mod:`smlp_kernels.bench`, ``smlp-bench``, ``pytest --benchmark``).

FLOP and byte formulas against hand counts, the FLOP cross-check, the JSON schema, the CSV
file, the terminal table, the plots, failures recorded as rows, the time budget, the CLI
through its real entry points, and the ``--benchmark`` pytest option. Everything runs on the
CPU with tiny shapes; nothing here is a performance figure.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import subprocess
import sys
import types
import weakref
from pathlib import Path

import pytest
import torch
from _helpers import bench_report_meta

from smlp_kernels.bench import (
    RESULT_FIELDS,
    Ceilings,
    RunConfig,
    Runner,
    add_comparisons,
    filter_cases,
    floor_s,
    geomean,
    op_bytes,
    op_flops,
    select_providers,
    suite_cases,
    summarize_results,
)
from smlp_kernels.bench import providers as providers_mod
from smlp_kernels.bench import runner as runner_mod
from smlp_kernels.bench.cases import STAGE_SHAPES, SUITES, op_case
from smlp_kernels.bench.cli import main
from smlp_kernels.bench.plots import plot_roofline, plot_speedups
from smlp_kernels.bench.report import (
    CSV_EXTRA_FIELDS,
    build_report,
    format_tables,
    merge_reports,
    validate_report,
    write_csv,
    write_json,
)
from smlp_kernels.bench.timing import TimingConfig, quantile, time_calls, time_cpu

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One CPU thread for these plumbing tests: on a machine shared with other jobs, every
    OpenMP barrier of a 2-thread op on tiny tensors can wait for a scheduler slice."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CPU = torch.device("cpu")
FAST = TimingConfig(rep_ms=5, min_reps=2)  # tests check plumbing, not speed


# --------------------------------------------------------------------------------------------
# FLOPs, bytes and the floor, against counts done by hand
# --------------------------------------------------------------------------------------------


def test_flops_of_t1_at_batch_128_match_the_hand_count():
    # B=128, C=C_out=80, H=W=56: 2*B*C*H*W*(W+H) = 2*128*80*3136*112 = 7_193_231_360 for the
    # two mixes; 2*B*H*W*3C*C_out = 2*128*3136*240*80 = 15_414_067_200 for the fuse.
    fwd = op_case("T1", 128, "bf16", "fwd")
    assert op_flops(fwd) == 22_607_298_560  # 22.6 GFLOP
    # Backward: twice the forward plus recomputing r and k (7_193_231_360 again).
    assert op_flops(fwd.with_mode("bwd")) == 2 * 22_607_298_560 + 7_193_231_360
    assert op_flops(fwd.with_mode("fwd+bwd")) == 3 * 22_607_298_560 + 7_193_231_360


def test_flops_of_a_tiny_case_with_h_ne_w_and_c_out_ne_c():
    # B=1, C=2, C_out=3, H=2, W=3: row mix 6 pixels * 2 channels * 3 taps = 36 MACs, column
    # mix 6 * 2 * 2 = 24 MACs, fuse 6 pixels * 3 outputs * 6 inputs = 108 MACs: 168 MACs.
    case = op_case("x", 1, "fp32", "fwd", (2, 3, 2, 3))
    assert op_flops(case) == 2 * 168
    assert op_flops(case.with_mode("bwd")) == 2 * 2 * 168 + 2 * 60


def test_fewest_bytes_of_t1_at_batch_128_in_bf16():
    # x and y: 128*80*56*56 = 32_112_640 elements each; parameters 56*56*2 + 56*2 + 80*240 =
    # 25_584 elements; 2 bytes each.
    case = op_case("T1", 128, "bf16", "fwd")
    assert op_bytes(case) == 2 * (2 * 32_112_640 + 25_584)  # about 128 MB
    # Backward: read g and x, write dx; read the parameters, write their gradients.
    assert op_bytes(case.with_mode("bwd")) == 2 * (3 * 32_112_640 + 2 * 25_584)
    fwd_bwd = op_bytes(case.with_mode("fwd+bwd"))
    assert fwd_bwd == op_bytes(case) + op_bytes(case.with_mode("bwd"))
    assert op_bytes(op_case("T1", 128, "fp32", "fwd")) == 2 * op_bytes(case)


def test_roofline_floor_of_t1_on_an_h100():
    # T1, batch 128, bf16 on an H100 (3.0 TB/s, 790 TFLOP/s): about 43 us,
    # set by the bytes.
    ceilings = Ceilings("cuda", 3.0e12, {"bf16": 790e12})
    case = op_case("T1", 128, "bf16", "fwd")
    floor = floor_s(op_flops(case), op_bytes(case), ceilings, "bf16")
    assert floor == pytest.approx(128_501_728 / 3.0e12)
    assert 42e-6 < floor < 44e-6
    # Matrix-bound when the matmul rate is low: FLOPs / rate wins.
    slow = Ceilings("cuda", 3.0e12, {"bf16": 100e12})
    assert floor_s(op_flops(case), op_bytes(case), slow, "bf16") == pytest.approx(
        22_607_298_560 / 100e12
    )
    assert floor_s(1, 1, ceilings, "fp32") is None  # no rate measured for that dtype


# --------------------------------------------------------------------------------------------
# Cases, suites and providers
# --------------------------------------------------------------------------------------------


def test_stage_shapes_are_those_of_smlpnet_t_and_b():
    assert [STAGE_SHAPES[f"T{i}"] for i in range(1, 5)] == [
        (80, 56),
        (160, 28),
        (320, 14),
        (640, 7),
    ]
    assert [STAGE_SHAPES[f"B{i}"] for i in range(1, 5)] == [
        (112, 56),
        (224, 28),
        (448, 14),
        (896, 7),
    ]


def test_suites_hold_the_cases_the_performance_issues_need():
    gpu = suite_cases(["gpu"])
    ops = [c for c in gpu if c.kind == "op"]
    assert {(c.label, c.mode) for c in ops} == {
        (label, mode) for label in STAGE_SHAPES for mode in ("fwd", "fwd+bwd")
    }
    assert all(c.batch == 128 and c.dtype == "bf16" and c.out_channels == c.channels for c in ops)
    assert {(c.name, c.mode) for c in gpu if c.kind == "model"} == {
        ("smlpnet_base", "fwd"),
        ("smlpnet_base", "train"),
    }
    assert {"triton", "triton_v0", "cuda", "spach-compile-max-autotune"} <= set(
        SUITES["gpu"].op_providers
    )
    stages = suite_cases(["stages"])
    assert len(stages) == 8 * 3 * 3 and {c.batch for c in stages} == {1, 32, 128}
    assert {c.name for c in suite_cases(["models"])} == {
        "smlpnet_tiny",
        "smlpnet_small",
        "smlpnet_base",
    }
    cpu = suite_cases(["cpu"])
    assert {(c.label, c.mode) for c in cpu} == {(f"T{i}", "fwd") for i in range(1, 5)} | {
        ("T1", "fwd+bwd"),
        ("T4", "fwd+bwd"),
    }
    assert all(c.batch == 8 and c.dtype == "fp32" for c in cpu)


def test_case_ids_are_readable_and_unique():
    case = op_case("T1", 128, "bf16", "fwd+bwd")
    assert case.id == "smlp_mix-B128-C80-H56-W56-bf16-fwd+bwd"
    assert case.group_id == "smlp_mix-B128-C80-H56-W56-bf16"
    cases = suite_cases(list(SUITES))
    assert len({c.id for c in cases}) == len(cases)


def test_filter_cases():
    cases = suite_cases(["stages"])
    kept = filter_cases(cases, shapes=["B4"], batches=[128], modes=["fwd"])
    assert [c.id for c in kept] == ["smlp_mix-B128-C896-H7-W7-bf16-fwd"]
    assert {c.batch for c in filter_cases(suite_cases(["gpu"]), batches=[64])} == {64}
    assert {c.dtype for c in filter_cases(cases, dtype="fp32")} == {"fp32"}
    assert len(filter_cases(cases, pattern="*-C160-*-bwd")) == 3  # batches 1, 32, 128
    with pytest.raises(ValueError, match="unknown suite"):
        suite_cases(["nope"])


def test_triton_interpreter_is_never_benchmarked():
    # tests/conftest.py runs Triton on its interpreter on a machine without CUDA.
    if torch.cuda.is_available():
        pytest.skip("Triton runs on the GPU here")
    assert "triton" not in select_providers("op", CPU)
    assert {"cpu", "reference", "spach-eager", "spach-compile"} <= set(select_providers("op", CPU))
    runner = Runner(RunConfig(device=CPU, providers=["triton"], timing=FAST))
    rows = runner.run([op_case("tiny", 1, "fp32", "fwd", (2, 2, 3, 3))])
    assert [r["status"] for r in rows] == ["skipped"]
    assert "only when forced" in rows[0]["error"] or "unavailable" in rows[0]["error"]


def test_unknown_provider_is_an_error():
    with pytest.raises(ValueError, match="unknown provider"):
        select_providers("op", CPU, ["nope"])


# --------------------------------------------------------------------------------------------
# A run of the smoke suite, shared by the tests below
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_doc() -> dict:
    cases = suite_cases(["smoke"])
    runner = Runner(
        RunConfig(
            device=CPU,
            timing=FAST,
            op_providers=SUITES["smoke"].op_providers,
            model_providers=SUITES["smoke"].model_providers,
        ),
        ceilings=Ceilings("cpu", 1e10, {"fp32": 1e11}),
    )
    results = runner.run(cases)
    add_comparisons(results)
    meta = bench_report_meta(
        git_dirty=None,
        device={"type": "cpu", "name": runner.device_name},
        suites=["smoke"],
        duration_s=1.0,
    )
    ceilings = runner.ceilings.as_dict()
    return build_report(meta, ceilings, {}, results, summarize_results(results))


def test_smoke_run_checks_times_and_counts_every_provider(smoke_doc):
    rows = smoke_doc["results"]
    assert {r["provider"] for r in rows} == {"cpu", "reference", "spach-eager"}
    assert len(rows) == 2 * 3 * 3 + 2 * 2  # op: 2 shapes x 3 modes x 3 providers; model: 2 x 2
    for r in rows:
        assert r["status"] == "ok", r
        assert r["check_passed"] is True and r["median_ms"] > 0 and r["reps"] >= 2
        assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["flops"] > 0
    for r in (r for r in rows if r["kind"] == "op"):
        # FlopCounterMode agrees with the formulas (SPACH-style: backward = 2 x forward).
        assert r["flops_check"] == "match", r
        assert r["bytes"] > 0 and r["roofline_pct"] > 0 and r["floor_ms"] > 0
        assert r["tflop_per_s"] == pytest.approx(r["flops"] / r["median_ms"] / 1e9)
    spach = {
        r["mode"]: r["flops_counted"]
        for r in rows
        if r["provider"] == "spach-eager" and r["label"] == "tiny1"
    }
    assert spach["bwd"] == 2 * spach["fwd"] and spach["fwd+bwd"] == 3 * spach["fwd"]
    for r in (r for r in rows if r["kind"] == "model"):
        assert r["images_per_s"] == pytest.approx(r["batch"] / (r["median_ms"] * 1e-3))
        assert r["peak_mem_bytes"] is None and "CPU" in r["peak_mem_note"]
    eager = [r for r in rows if r["provider"] == "spach-eager"]
    assert all(r["speedup_vs_spach_eager"] == pytest.approx(1.0) for r in eager)


def test_json_schema(smoke_doc, tmp_path):
    assert validate_report(smoke_doc) == []
    path = tmp_path / "r.json"
    write_json(smoke_doc, path)
    loaded = json.loads(path.read_text())
    assert validate_report(loaded) == []
    assert loaded["schema_version"] == 1 and loaded["tool"] == "smlp-bench"
    assert all(list(r) == list(RESULT_FIELDS) for r in loaded["results"])
    # The validator catches what it should.
    bad = json.loads(path.read_text())
    bad["results"][0]["median_ms"] = "fast"
    del bad["results"][1]["provider"]
    bad["results"][2]["status"] = "failed"
    bad["results"][2]["error"] = None
    problems = validate_report(bad)
    assert any("median_ms has type str" in p for p in problems)
    assert any("results[1] keys" in p for p in problems)
    assert any("results[2] is failed without an error" in p for p in problems)
    assert validate_report({"schema_version": 1}) != []


def test_json_has_no_nan():
    doc = build_report({"x": float("nan")}, None, {}, [], [])
    assert doc["meta"]["x"] is None


def test_csv_file(smoke_doc, tmp_path):
    path = tmp_path / "r.csv"
    doc = dict(smoke_doc, meta=dict(smoke_doc["meta"], git_commit="abc123"))
    write_csv(doc, path)
    with path.open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == [*RESULT_FIELDS, *CSV_EXTRA_FIELDS]
    assert len(rows) == len(smoke_doc["results"])
    assert {r["git_commit"] for r in rows} == {"abc123"}
    assert float(rows[0]["median_ms"]) == pytest.approx(smoke_doc["results"][0]["median_ms"])


def test_terminal_table(smoke_doc):
    text = format_tables(smoke_doc)
    lines = text.splitlines()
    for provider in ("cpu", "reference", "spach-eager"):
        assert any(provider in line and "B2-C6-O5-H7-W9" in line for line in lines)
    assert "smlpnet_micro" in text and "images/s" in text
    assert "22 results: 0 failed, 0 skipped" in text
    summary = text[text.index("geometric means") :].splitlines()
    assert any(line.startswith("op    fp32") and " cpu " in line for line in summary)


def test_plots_are_written(smoke_doc, tmp_path):
    speed = plot_speedups(smoke_doc, tmp_path / "s.png")
    roof = plot_roofline(smoke_doc, tmp_path / "r.png")
    for path in (speed, roof):
        assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = dict(smoke_doc, results=[])
    assert plot_speedups(empty, tmp_path / "x.png") is None
    assert plot_roofline(empty, tmp_path / "y.png") is None


def test_merging_runs_keeps_each_case_from_one_run(smoke_doc, tmp_path, capsys):
    later = json.loads(json.dumps(smoke_doc))
    later["results"] = [r for r in later["results"] if r["label"] == "tiny1"]
    for r in later["results"]:
        r["median_ms"] *= 2  # a different run: every provider of the case comes from it
    later["meta"]["git_commit"] = "f" * 40
    merged = merge_reports([smoke_doc, later])
    assert validate_report(merged) == []
    assert len(merged["results"]) == len(smoke_doc["results"])
    tiny1 = [r for r in merged["results"] if r["label"] == "tiny1"]
    assert [r["median_ms"] for r in tiny1] == [r["median_ms"] for r in later["results"]]
    assert [m["git_commit"] for m in merged["meta"]["merged_from"]] == [None, "f" * 40]
    other = json.loads(json.dumps(smoke_doc))
    other["meta"]["device"]["name"] = "NVIDIA H100 80GB HBM3"
    with pytest.raises(ValueError, match="different devices"):
        merge_reports([smoke_doc, other])
    # The same through the command line.
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    write_json(smoke_doc, paths[0])
    write_json(later, paths[1])
    code = main(["--from-json", *map(str, paths), "--out", str(tmp_path), "--name", "m"])
    assert code == 0
    assert validate_report(json.loads((tmp_path / "m.json").read_text())) == []
    assert "22 results" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# Failures become rows; comparisons; timing
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _FakeProvider(providers_mod.Provider):
    behaviour: str = "raise"

    def op_fn(self):
        def fn(x, row_weight, row_bias, col_weight, col_bias, fuse_weight):
            if self.behaviour == "raise":
                raise RuntimeError("kernel exploded")
            y = providers_mod.smlp_mix(
                x, row_weight, row_bias, col_weight, col_bias, fuse_weight, backend="reference"
            )
            return y * 1.01  # fast and wrong

        return fn


def test_failing_and_wrong_providers_are_recorded_not_raised(monkeypatch):
    real = providers_mod.all_providers()
    fake = {
        "exploding": _FakeProvider("exploding", "ours", None, None, ("op",), "raises", "raise"),
        "wrong": _FakeProvider("wrong", "ours", None, None, ("op",), "off by 1%", "wrong"),
    }
    monkeypatch.setattr(providers_mod, "all_providers", lambda: {**real, **fake})
    monkeypatch.setattr(runner_mod, "all_providers", lambda: {**real, **fake})
    runner = Runner(
        RunConfig(device=CPU, providers=["exploding", "wrong", "reference"], timing=FAST)
    )
    rows = runner.run([op_case("tiny", 2, "fp32", m, (3, 3, 4, 5)) for m in ("fwd", "fwd+bwd")])
    by = {(r["provider"], r["mode"]): r for r in rows}
    for mode in ("fwd", "fwd+bwd"):
        assert by["exploding", mode]["status"] == "failed"
        assert "RuntimeError: kernel exploded" in by["exploding", mode]["error"]
        assert by["wrong", mode]["status"] == "failed"
        assert by["wrong", mode]["error"].startswith("wrong answer: ")
        assert "max err" in by["wrong", mode]["error"]
        assert by["wrong", mode]["median_ms"] is None  # never timed
        assert by["reference", mode]["status"] == "ok"
    text = format_tables(build_report(bench_report_meta(), None, {}, rows, summarize_results(rows)))
    assert "FAILED" in text and "kernel exploded" in text


def test_a_failing_group_setup_fails_its_rows_and_the_run_goes_on(monkeypatch):
    def broken_inputs(case, device, seed=0):
        if case.channels == 3:
            raise torch.cuda.OutOfMemoryError("pretend the float64 reference does not fit")
        return make_op_inputs(case, device, seed)

    make_op_inputs = runner_mod.make_op_inputs
    monkeypatch.setattr(runner_mod, "make_op_inputs", broken_inputs)
    runner = Runner(RunConfig(device=CPU, providers=["reference", "spach-eager"], timing=FAST))
    rows = runner.run(
        [op_case("a", 1, "fp32", "fwd", (3, 3, 4, 4)), op_case("b", 1, "fp32", "fwd", (2, 2, 4, 4))]
    )
    assert [(r["label"], r["status"]) for r in rows] == [
        ("a", "failed"),
        ("a", "failed"),
        ("b", "ok"),
        ("b", "ok"),
    ]
    assert rows[0]["error"].startswith("group setup: OutOfMemoryError: pretend")


def test_time_budget_skips_the_rest():
    runner = Runner(RunConfig(device=CPU, providers=["reference"], time_budget_s=0.0))
    rows = runner.run([op_case("tiny", 1, "fp32", "fwd", (2, 2, 3, 3))])
    assert rows[0]["status"] == "skipped" and rows[0]["error"] == "time budget exhausted"


def test_speedups_memory_ratios_and_geometric_means():
    def row(case: str, provider: str, ms: float, mem: int | None) -> dict:
        r = dict.fromkeys(RESULT_FIELDS)
        r.update(
            case_id=case, kind="op", dtype="bf16", batch=128, mode="fwd", provider=provider,
            status="ok", median_ms=ms, peak_mem_bytes=mem,
        )  # fmt: skip
        return r

    rows = [
        row("a", "spach-eager", 8.0, 400),
        row("a", "spach-compile-max-autotune", 4.0, 300),
        row("a", "ours", 2.0, 100),
        row("b", "spach-eager", 9.0, 1000),
        row("b", "spach-compile-max-autotune", 3.0, 900),
        row("b", "ours", 1.0, 300),
    ]
    add_comparisons(rows)
    ours = [r for r in rows if r["provider"] == "ours"]
    assert [r["speedup_vs_spach_compile_max_autotune"] for r in ours] == [2.0, 3.0]
    assert [r["speedup_vs_spach_eager"] for r in ours] == [4.0, 9.0]
    assert [r["mem_ratio_vs_spach_eager"] for r in ours] == [0.25, 0.3]
    assert ours[0]["speedup_vs_spach_compile"] is None  # that baseline did not run
    summary = {s["provider"]: s for s in summarize_results(rows)}["ours"]
    assert summary["geomean_speedup_vs_spach_compile_max_autotune"] == pytest.approx(math.sqrt(6))
    assert summary["min_speedup_vs_spach_compile_max_autotune"] == 2.0
    assert summary["max_mem_ratio_vs_spach_eager"] == 0.3
    assert geomean([]) is None


def test_quantiles_and_interleaved_cpu_timing():
    assert quantile([4.0, 1.0, 3.0, 2.0, 5.0], 0.5) == 3.0
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.2) == pytest.approx(1.8)  # numpy's linear
    calls: list[str] = []
    timings = time_cpu(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        TimingConfig(rep_ms=0, min_reps=4),
    )
    assert timings["a"].n == timings["b"].n == 4 and timings["a"].method == "perf_counter"
    assert calls[:6] == ["a", "b"] * 3  # one call of each per round


def test_fixed_count_timing():
    """time_calls (the demo's and cpu_backend_speed.py's timing): exactly ``warmup`` untimed
    and ``reps`` timed rounds, interleaved; bad counts are refused by name."""
    calls: list[str] = []
    timings = time_calls({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, 2)
    assert calls == ["a", "b"] * 5
    assert timings["a"].n == timings["b"].n == 3 and timings["b"].method == "perf_counter"
    calls.clear()
    assert time_calls({"a": lambda: calls.append("a")}, 1, warmup=0)["a"].n == 1
    assert calls == ["a"]
    with pytest.raises(ValueError, match="time_calls: reps must be a positive int, got 0"):
        time_calls({"a": lambda: None}, 0)
    with pytest.raises(ValueError, match="time_calls: warmup must be an int >= 0, got -1"):
        time_calls({"a": lambda: None}, 1, warmup=-1)
    with pytest.raises(TypeError, match="time_calls: reps must be an int, got bool"):
        time_calls({"a": lambda: None}, True)


# --------------------------------------------------------------------------------------------
# The command line, through its real entry points
# --------------------------------------------------------------------------------------------


def _env() -> dict:
    # One thread, for the reason of _one_thread above. Not a pytest-xdist worker's variables:
    # a pytest started with them takes itself for a worker (pytest-benchmark then writes no
    # report).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    return {**env, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}


def test_cli_smoke_run_writes_every_output(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable, "-m", "smlp_kernels.bench", "--device", "cpu", "--suite", "smoke",
            "--ceilings", "quick", "--rep-ms", "5", "--min-reps", "2", "--out", str(out),
            "--name", "run",
            "--plot", "--profile", "--quiet", "--threads", "1",
        ],
        capture_output=True, text=True, timeout=300, env=_env(), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "22 results: 0 failed, 0 skipped" in proc.stdout
    doc = json.loads((out / "run.json").read_text())
    assert validate_report(doc) == []
    assert doc["meta"]["command"][:5] == ["smlp-bench", "--device", "cpu", "--suite", "smoke"]
    assert doc["meta"]["suites"] == ["smoke"] and doc["ceilings"]["copy_bytes_per_s"] > 0
    # torch's matmul rate is kept, labelled, beside the compute ceiling (the FMA peak on CPU
    # with the extension, torch's matmul as a labelled lower bound without).
    ceilings = doc["ceilings"]
    assert ceilings["matmul_flop_per_s"]["fp32"] > 0 and ceilings["compute_flop_per_s"]["fp32"] > 0
    assert ceilings["compute_source"]["fp32"] in ("fma_peak_fp32", "torch_matmul_lower_bound")
    assert "torch matmul" in proc.stdout and isinstance(doc["warnings"], list)
    assert doc["meta"]["git_commit"] is None or len(doc["meta"]["git_commit"]) == 40
    assert (out / "run.csv").read_text().startswith("case_id,")
    assert "torch_matmul_flop_per_s" in (out / "run.csv").read_text().splitlines()[0]
    assert (out / "run-speedup.png").stat().st_size > 0
    assert (out / "run-roofline.png").stat().st_size > 0
    traces = {t.name for t in (out / "profile-run").glob("*.json")}
    assert len(traces) == 8  # one per case: 2 shapes x 3 modes, 2 model modes
    assert "smlpnet_micro-B2-fp32-train.json" in traces
    trace = out / "profile-run" / "smlp_mix-B2-C4-H5-W5-fp32-fwd+bwd.json"
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("name", "").startswith("smlp_mix[cpu]") for e in events)


def test_cli_list(capsys):
    assert main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert "spach-compile-max-autotune" in listing and "smoke" in listing


# Bad arguments: (argv, the argument the message must name, words it must hold: the bad value
# and what is allowed). Each must stop with exit status 2 before anything is measured.
BAD_ARGUMENTS = [
    (["--batch", "-1"], "--batch", ["'-1'", ">= 1"]),
    (["--batch", "0"], "--batch", ["'0'", ">= 1"]),
    (["--batch", "8,0"], "--batch", ["'0'", ">= 1"]),
    (["--batch", "eight"], "--batch", ["'eight'", ">= 1"]),
    (["--batch", ","], "--batch", ["comma-separated"]),
    (["--threads", "0"], "--threads", ["'0'", ">= 1"]),
    (["--threads", "-2"], "--threads", ["'-2'", ">= 1"]),
    (["--min-reps", "0", "--rep-ms", "0"], "--min-reps", ["--rep-ms 0", ">= 1"]),
    (["--min-reps", "-1"], "--min-reps", ["'-1'", "0 to 10000"]),
    (["--min-reps", "10001"], "--min-reps", ["'10001'", "0 to 10000"]),
    (["--rep-ms", "-5"], "--rep-ms", ["'-5'", ">= 0"]),
    (["--rep-ms", "nan"], "--rep-ms", ["'nan'", "finite"]),
    (["--warmup-ms", "-1"], "--warmup-ms", ["'-1'", ">= 0"]),
    (["--warmup-ms", "inf"], "--warmup-ms", ["'inf'", "finite"]),
    (["--time-budget", "-3"], "--time-budget", ["'-3'", "> 0"]),
    (["--time-budget", "0"], "--time-budget", ["'0'", "> 0"]),
    (["--time-budget", "nan"], "--time-budget", ["'nan'", "finite"]),
    (["--seed", "-1"], "--seed", ["'-1'", "0 to 18446744073709551615"]),
    (["--seed", str(2**64)], "--seed", ["0 to 18446744073709551615"]),
    (["--suite", "nope"], "--suite", ["'nope'", "cpu", "smoke"]),
    (["--suite", ""], "--suite", ["comma-separated"]),
    (["--shapes", "X9"], "--shapes", ["'X9'", "T1", "B4", "smlpnet_base", "tiny1"]),
    (["--shapes", ""], "--shapes", ["comma-separated"]),
    (["--suite", "cpu", "--shapes", "B1"], "--shapes", ["B1", "suite cpu", "T1, T2, T3, T4"]),
    (["--suite", "cpu", "--shapes", "T1,smlpnet_base"], "--shapes", ["smlpnet_base", "cpu"]),
    (["--suite", "cpu", "--modes", "bwd"], "--modes", ["bwd", "suite cpu", "fwd, fwd+bwd"]),
    (["--suite", "cpu", "--modes", "nope"], "--modes", ["'nope'", "fwd, bwd, fwd+bwd, train"]),
    (["--suite", "stages", "--batch", "1,7"], "--batch", ["7", "stages", "1, 32, 128"]),
    (["--suite", "cpu", "--dtype", "fp8"], "--dtype", ["'fp8'", "bf16", "fp32"]),
    (["--suite", "cpu", "-k", "*nothing*"], "-k/--filter", ["'*nothing*'", "smlp_mix-B8-"]),
    (["--suite", "smoke", "--shapes", "smlpnet_micro", "--modes", "bwd"], None, ["together"]),
    (["--suite", "smoke", "--providers", "nope"], "--providers", ["nope", "reference"]),
    (
        ["--suite", "smoke", "-k", "smlp_mix*", "--providers", "cpu-compile"],
        "--providers",
        ["cpu-compile", "op cases"],
    ),
    (["--suite", "smoke", "--providers", "cpu-compile"], "--providers", ["cpu-compile", "op"]),
]


@pytest.mark.parametrize(
    ("argv", "argument", "words"),
    [pytest.param(*case, id=" ".join(case[0]) or "empty") for case in BAD_ARGUMENTS],
)
def test_cli_bad_arguments_exit_2_before_anything_is_measured(
    argv, argument, words, tmp_path, monkeypatch, capsys
):
    from smlp_kernels.bench import cli

    def must_not_run(*args, **kwargs):
        raise AssertionError("measured something despite a bad argument")

    monkeypatch.setattr(cli, "measure_ceilings", must_not_run)
    monkeypatch.setattr(cli.Runner, "run", must_not_run)
    threads = torch.get_num_threads()
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["--device", "cpu", *argv, "--out", str(out), "--quiet"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    # argparse's own format: the usage, then one line naming the argument.
    prefix = "smlp-bench: error: " + (f"argument {argument}: " if argument else "")
    assert last.startswith(prefix), err
    for word in words:
        assert word in last, (word, last)
    assert not out.exists()  # no file written, no profile folder made
    assert torch.get_num_threads() == threads  # --threads is applied only once all is checked


def test_cli_bad_argument_through_the_real_entry_point(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "smlp_kernels.bench", "--batch", "0", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == (
        "smlp-bench: error: argument --batch: expected comma-separated integers >= 1, got '0'"
    )
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["--suite", "stages", "--batch", "7"], {7}, id="one-new-size-replaces"),
        pytest.param(["--suite", "stages", "--batch", "32,1,32"], {1, 32}, id="sizes-kept"),
    ],
)
def test_cli_batch_selection(argv, expected, monkeypatch):
    # The checks above must not refuse what filter_cases documents: one size that is not in
    # the suite replaces them all.
    from smlp_kernels.bench import cli

    args = cli.build_parser().parse_args(argv)
    cases = cli._select_cases(cli.build_parser(), args)
    assert cases and {c.batch for c in cases} == expected
    assert {c.label for c in cases} == set(STAGE_SHAPES)


def test_cli_numbers_in_range_are_accepted():
    from smlp_kernels.bench import cli

    args = cli.build_parser().parse_args(
        ["--rep-ms", "0", "--min-reps", "1", "--warmup-ms", "0", "--time-budget", "0.5",
         "--seed", str(2**64 - 1), "--threads", "1", "--batch", "1"]
    )  # fmt: skip
    assert (args.rep_ms, args.min_reps, args.warmup_ms, args.time_budget) == (0.0, 1, 0.0, 0.5)
    assert (args.seed, args.threads, args.batch) == (2**64 - 1, 1, [1])


def test_cli_reports_a_provider_that_cannot_run_as_skipped(tmp_path, capsys):
    # The cuda backend cannot run on CPU tensors (here: no CUDA device; on a GPU machine:
    # not the tensors' device): asked for by name, it is skipped with the reason; reference
    # runs. A skip is not a failure.
    code = main(
        ["--device", "cpu", "--suite", "smoke", "--modes", "fwd", "-k", "smlp_mix*",
         "--dtype", "fp16", "--providers", "cuda,reference", "--ceilings", "none", "--rep-ms", "1",
         "--min-reps", "1", "--no-files", "--quiet", "--out", str(tmp_path)]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0, text
    skipped = [line for line in text.splitlines() if "SKIPPED" in line]
    assert skipped and all(" cuda " in line for line in skipped)
    assert "2 skipped" in text and "0 failed" in text


def test_cli_exit_status_is_1_when_a_provider_fails_and_files_are_still_written(
    tmp_path, monkeypatch, capsys
):
    real = providers_mod.all_providers()
    fake = {"exploding": _FakeProvider("exploding", "ours", None, None, ("op",), "x", "raise")}
    monkeypatch.setattr(providers_mod, "all_providers", lambda: {**real, **fake})
    monkeypatch.setattr(runner_mod, "all_providers", lambda: {**real, **fake})
    code = main(
        ["--device", "cpu", "--suite", "smoke", "--modes", "fwd", "-k", "smlp_mix*", "--providers",
         "exploding,reference", "--ceilings", "none", "--rep-ms", "1", "--min-reps", "1",
         "--quiet", "--out", str(tmp_path), "--name", "f"]
    )  # fmt: skip
    assert code == 1
    doc = json.loads((tmp_path / "f.json").read_text())
    assert [r["status"] for r in doc["results"]] == ["failed", "ok"] * 2  # two shapes
    assert "4 results: 2 failed" in capsys.readouterr().out


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "smlp-bench"
    if not script.exists():
        pytest.skip("smlp-bench is not installed next to this Python")
    proc = subprocess.run(
        [str(script), "--list"], capture_output=True, text=True, timeout=120, env=_env()
    )
    assert proc.returncode == 0 and "suites:" in proc.stdout


# --------------------------------------------------------------------------------------------
# pytest --benchmark
# --------------------------------------------------------------------------------------------


def _pytest(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        capture_output=True, text=True, timeout=300, env=_env(), cwd=cwd,
    )  # fmt: skip


def test_pytest_benchmark_option_runs_benchmarks_for_real(tmp_path):
    report = tmp_path / "bench.json"
    proc = _pytest(
        "--benchmark", "--smlp-suite", "smoke", "benchmarks/test_bench_smlp_mix.py",
        "tests/test_info.py", "-k", "fwd-reference or test_info", f"--benchmark-json={report}",
        "--benchmark-max-time=0.02", "--benchmark-min-rounds=2", "--benchmark-warmup=off",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout and "deselected" in proc.stdout  # test_info deselected
    bench = json.loads(report.read_text())["benchmarks"]
    assert [b["name"] for b in bench] == [
        "test_smlp_mix[smlp_mix-B2-C6-O5-H7-W9-fp32-fwd-reference]",
        "test_smlp_mix[smlp_mix-B2-C4-H5-W5-fp32-fwd-reference]",
    ]
    extra = bench[0]["extra_info"]
    assert extra["flops"] == op_flops(op_case("tiny", 2, "fp32", "fwd", (6, 5, 7, 9)))
    assert extra["bytes"] > 0 and extra["tflop_per_s"] > 0 and extra["gb_per_s"] > 0
    assert 0 < extra["roofline_pct"] and extra["floor_ms"] > 0
    assert bench[0]["stats"]["rounds"] >= 2


def test_plain_pytest_keeps_benchmarks_as_smoke_tests(tmp_path):
    report = tmp_path / "bench.json"
    proc = _pytest("benchmarks/test_bench_smlp_mix.py", "-k", "fwd-", f"--benchmark-json={report}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The smoke suite's providers that run here (cpu, reference, spach-eager on a CPU
    # machine), on its two tiny shapes.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    providers = select_providers("op", device, None, SUITES["smoke"].op_providers)
    assert f"{2 * len(providers)} passed" in proc.stdout
    assert not report.exists() or json.loads(report.read_text())["benchmarks"] == []


# --------------------------------------------------------------------------------------------
# GPU-only paths, exercised on the CPU with fakes
# --------------------------------------------------------------------------------------------


def test_fp32_settings_survive_mixed_tf32_apis(monkeypatch):
    """Once the newer ``fp32_precision`` API and the legacy one are mixed, torch's legacy
    getter raises (torch >= 2.9); the checks and the metadata must not."""
    from smlp_kernels.bench import meta as meta_mod
    from smlp_kernels.bench.checks import rel_atol

    def mixed() -> str:
        raise RuntimeError("you have used mix of the legacy and new APIs")

    monkeypatch.setattr(torch, "get_float32_matmul_precision", mixed)
    assert meta_mod.fp32_matmul_setting().startswith("fp32_precision: cuda.matmul=")
    assert rel_atol("bf16", CPU) == 4e-3
    assert rel_atol("fp32", torch.device("cuda")) in (1e-4, 5e-3)
    settings = meta_mod.collect_metadata(CPU)["settings"]
    assert settings["float32_matmul_precision"].startswith("fp32_precision")


def test_cuda_timing_falls_back_when_the_triton_driver_does_not_start(monkeypatch):
    """do_bench needs Triton's active driver; when it cannot start, time_cuda uses its own
    event loop instead of failing every provider."""
    triton_runtime = pytest.importorskip("triton.runtime")
    from smlp_kernels.bench import timing as timing_mod

    class Driver:
        def __init__(self, works: bool) -> None:
            self.works = works

        @property
        def active(self):
            if not self.works:
                raise RuntimeError("0 active drivers")
            return types.SimpleNamespace(
                get_device_interface=lambda: None, get_empty_cache_for_benchmark=None
            )

    timing_mod._triton_testing.cache_clear()
    try:
        monkeypatch.setattr(triton_runtime, "driver", Driver(False))
        assert timing_mod._triton_testing() is None
        assert not timing_mod.triton_timing_available()
        timing_mod._triton_testing.cache_clear()
        monkeypatch.setattr(triton_runtime, "driver", Driver(True))
        assert timing_mod._triton_testing() is not None
    finally:
        timing_mod._triton_testing.cache_clear()


def test_a_provider_failing_while_cuda_timing_frees_its_tensors_first(monkeypatch):
    """An out-of-memory error while timing becomes a failed row, and the failing call's
    tensors are released before the next provider is timed (no kept traceback)."""
    from smlp_kernels.bench.timing import Timing

    held: list[weakref.ref] = []
    seen_alive: list[bool] = []

    def oom():
        big = torch.empty(1000)
        held.append(weakref.ref(big))
        raise torch.cuda.OutOfMemoryError("pretend")

    def fine():
        return None

    def fake_time_cuda(fn, config):
        seen_alive.extend(r() is not None for r in held)
        fn()
        return Timing(1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 5, "fake")

    monkeypatch.setattr(runner_mod, "time_cuda", fake_time_cuda)
    runner = Runner(RunConfig(device=CPU))
    runner.device = torch.device("cuda")  # only the timing branch; nothing touches a GPU
    monkeypatch.setattr(runner_mod, "_free", lambda device: None)
    rows = {n: {**dict.fromkeys(RESULT_FIELDS), "status": "failed", "kind": "op"} for n in "ab"}
    ready = {"a": runner_mod._Ready(oom), "b": runner_mod._Ready(fine)}
    runner._time(ready, rows, runner_mod.Progress(2, enabled=False), "case")
    assert rows["a"]["status"] == "failed"
    assert rows["a"]["error"] == "while timing: OutOfMemoryError: pretend"
    assert rows["b"]["status"] == "ok" and rows["b"]["median_ms"] == 1.0
    assert seen_alive == [False]  # a's tensor was gone when b was timed


def test_bwd_mode_skips_compile_modes_that_replay_cuda_graphs():
    """cudagraph trees cannot replay backwards through one retained forward graph."""
    cuda = torch.device("cuda")
    providers = providers_mod.all_providers()
    case = op_case("tiny", 1, "bf16", "bwd", (2, 2, 3, 3))
    why = runner_mod._why_not_mode
    assert "CUDA graphs" in why(case, providers["spach-compile-max-autotune"], cuda)
    assert why(case, providers["spach-compile-max-autotune"], CPU) is None
    assert why(case, providers["spach-compile"], cuda) is None
    assert why(case, providers["spach-compile-max-autotune-no-cudagraphs"], cuda) is None
    assert why(case.with_mode("fwd+bwd"), providers["spach-compile-max-autotune"], cuda) is None
    runner = Runner(RunConfig(device=CPU))
    runner.device = cuda
    row = runner._row(case, "spach-compile-max-autotune", "failed")
    ready = runner._setup_op(case, providers["spach-compile-max-autotune"], None, None, None, row)
    assert ready is None and row["status"] == "skipped"


def test_max_autotune_without_cuda_graphs_runs_only_when_asked_for():
    name = "spach-compile-max-autotune-no-cudagraphs"
    assert providers_mod.all_providers()[name].compile_mode == "max-autotune-no-cudagraphs"
    for suite in SUITES.values():
        assert name not in (suite.op_providers or ())
    assert name not in providers_mod.default_providers("op", CPU)


# --------------------------------------------------------------------------------------------
# Resuming a run case by case, and the compile budget
# --------------------------------------------------------------------------------------------


def test_resumed_rows_are_kept_not_measured_and_every_case_is_checkpointed(monkeypatch):
    real = providers_mod.all_providers()
    # A provider that raises if it runs: its done rows must be kept without calling it.
    fake = {"done": _FakeProvider("done", "ours", None, None, ("op",), "raises", "raise")}
    monkeypatch.setattr(providers_mod, "all_providers", lambda: {**real, **fake})
    monkeypatch.setattr(runner_mod, "all_providers", lambda: {**real, **fake})
    cases = [op_case("tiny", 2, "fp32", m, (3, 3, 4, 5)) for m in ("fwd", "fwd+bwd")]
    cases.append(op_case("tiny2", 1, "fp32", "fwd", (2, 2, 3, 3)))
    old = {}
    for case in cases:
        row = dict.fromkeys(RESULT_FIELDS)
        row.update(case_id=case.id, kind="op", provider="done", status="ok", median_ms=1.5)
        old[case.id, "done"] = row
    # The earlier run also timed the reference on the first case only.
    ref = dict.fromkeys(RESULT_FIELDS)
    ref.update(case_id=cases[0].id, kind="op", provider="reference", status="ok", median_ms=7.0)
    old[cases[0].id, "reference"] = ref
    checkpoints = []
    runner = Runner(
        RunConfig(
            device=CPU,
            providers=["done", "reference"],
            timing=FAST,
            done=old,
            checkpoint=lambda rows: checkpoints.append(
                [(r["case_id"], r["provider"]) for r in rows]
            ),
        )
    )
    rows = runner.run(cases)
    by = {(r["case_id"], r["provider"]): r for r in rows}
    assert len(rows) == 6
    for case in cases:
        assert by[case.id, "done"]["status"] == "ok" and by[case.id, "done"]["median_ms"] == 1.5
    assert by[cases[0].id, "reference"]["median_ms"] == 7.0  # kept, not measured again
    for case in cases[1:]:
        assert by[case.id, "reference"]["status"] == "ok"
        assert by[case.id, "reference"]["median_ms"] != 7.0  # measured now
    # One checkpoint per case, each holding every finished case so far.
    assert [len(c) for c in checkpoints] == [2, 4, 6]
    assert checkpoints[0] == [(cases[0].id, "done"), (cases[0].id, "reference")]


def test_a_compile_that_would_outlast_the_time_budget_is_not_started(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or fn)
    case = op_case("tiny", 1, "fp32", "fwd", (2, 2, 3, 3))
    config = RunConfig(
        device=CPU,
        providers=["spach-compile", "spach-eager"],
        timing=FAST,
        time_budget_s=600.0,
        compile_reserve_s=3600.0,
    )
    rows = {r["provider"]: r for r in Runner(config).run([case])}
    assert rows["spach-eager"]["status"] == "ok"
    assert rows["spach-compile"]["status"] == "skipped"
    err = rows["spach-compile"]["error"]
    assert err.startswith("time budget exhausted: ") and "takes ~3600 s" in err, err
    # Without a time budget the reserve does not apply; with room, the compile runs.
    for budget, reserve in ((None, 3600.0), (600.0, 0.0)):
        config = dataclasses.replace(config, time_budget_s=budget, compile_reserve_s=reserve)
        rows = {r["provider"]: r for r in Runner(config).run([case])}
        assert rows["spach-compile"]["status"] == "ok", rows["spach-compile"]["error"]
    # The longest compile seen so far (here a resumed row's) counts like the reserve.
    seen = dict.fromkeys(RESULT_FIELDS)
    seen.update(case_id="other", provider="spach-compile", status="ok", setup_s=5000.0)
    config = dataclasses.replace(config, done={("other", "spach-compile"): seen})
    rows = {r["provider"]: r for r in Runner(config).run([case])}
    assert rows["spach-compile"]["status"] == "skipped"
    assert "takes ~5000 s" in rows["spach-compile"]["error"]


def _resume_run(out: Path, *extra: str) -> int:
    return main(
        ["--device", "cpu", "--suite", "smoke", "-k", "smlp_mix-*-H5-W5-*", "--ceilings", "none",
         "--rep-ms", "2", "--min-reps", "1", "--out", str(out), "--name", "r", "--resume",
         "--quiet", *extra]
    )  # fmt: skip


def test_cli_resume_measures_only_what_is_missing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert _resume_run(out, "--providers", "reference") == 0
    first = json.loads((out / "r.json").read_text())
    assert validate_report(first) == [] and len(first["meta"]["runs"]) == 1
    assert {r["provider"] for r in first["results"]} == {"reference"}
    ref_times = {r["case_id"]: r["median_ms"] for r in first["results"]}
    assert len(ref_times) == 3  # fwd, bwd, fwd+bwd of the 5x5 case
    # A second run adds a provider; the reference rows are carried, not measured again.
    assert _resume_run(out, "--providers", "reference,spach-eager") == 0
    second = json.loads((out / "r.json").read_text())
    assert validate_report(second) == []
    rows = {(r["case_id"], r["provider"]): r for r in second["results"]}
    assert len(rows) == 6
    assert all(rows[c, "reference"]["median_ms"] == t for c, t in ref_times.items())
    runs = second["meta"]["runs"]
    assert [len(r["measured"]) for r in runs] == [3, 3]
    assert all(m.endswith(" spach-eager") for m in runs[1]["measured"])
    # Speed-ups are computed over the carried and the new rows alike.
    assert all(rows[c, "reference"]["speedup_vs_spach_eager"] > 0 for c in ref_times)
    assert "rows come from 2 runs" in capsys.readouterr().out
    # A third run with nothing missing measures nothing.
    monkeypatch.setattr(runner_mod.Runner, "_setup_op", lambda *a: pytest.fail("measured"))
    assert _resume_run(out, "--providers", "reference,spach-eager") == 0
    assert len(json.loads((out / "r.json").read_text())["meta"]["runs"]) == 3


def test_cli_resume_refuses_a_file_it_cannot_continue(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    doc = build_report(bench_report_meta(seed=0), None, {}, [], [])
    cases = {
        "another device": {**doc, "meta": {**doc["meta"], "device": {"type": "cuda", "name": "X"}}},
        "another seed": {**doc, "meta": {**doc["meta"], "device": {"type": "cpu", "name": ""}}},
        "not a report": {"results": []},
    }
    from smlp_kernels.bench.meta import device_name

    cases["another seed"]["meta"]["device"]["name"] = device_name(CPU)
    cases["another commit"] = json.loads(json.dumps(cases["another seed"]))
    cases["another commit"]["meta"].update(seed=3, git_commit="0" * 40)
    words = {"another device": "was measured on X", "another seed": "--seed 0, not 3",
             "not a report": "is not a smlp-bench report",
             "another commit": "at commit 000000000000, this is"}  # fmt: skip
    from smlp_kernels.bench.meta import git_commit

    if git_commit()[0] is None:  # not a git checkout: no commit to compare
        del cases["another commit"]
    for what, bad in cases.items():
        (out / "r.json").write_text(json.dumps(bad))
        with pytest.raises(SystemExit) as info:
            _resume_run(out, "--seed", "3")
        assert info.value.code == 2, what
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("smlp-bench: error: argument --resume: "), last
        assert words[what] in last, (what, last)
    with pytest.raises(SystemExit) as info:
        _resume_run(out, "--no-files")
    assert info.value.code == 2
    assert "--no-files" in capsys.readouterr().err


def test_a_lost_cuda_context_stops_the_run_and_the_files_are_written(tmp_path, monkeypatch):
    """After an illegal memory access every later call in the process fails the same way:
    the run stops (exit 1, meta.interrupted) with what it measured, for --resume to carry
    on in a new process."""
    why = "CUDA error: an illegal memory access was encountered"
    with pytest.raises(runner_mod.CudaContextLost):
        runner_mod._check_sticky(torch.device("cuda"), f"RuntimeError: {why}")
    runner_mod._check_sticky(CPU, why)  # not on the CPU
    runner_mod._check_sticky(torch.device("cuda"), "CUDA error: out of memory")  # not sticky

    def lost(self, cases, progress=None):
        raise runner_mod.CudaContextLost(why)

    monkeypatch.setattr(runner_mod.Runner, "run", lost)
    out = tmp_path / "out"
    code = main(["--device", "cpu", "--suite", "smoke", "--ceilings", "none", "--out",
                 str(out), "--name", "r", "--quiet"])  # fmt: skip
    assert code == 1
    doc = json.loads((out / "r.json").read_text())
    assert doc["meta"]["interrupted"] is True
