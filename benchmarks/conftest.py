"""Parametrisation of the pytest benchmarks from the ``smlp-bench`` suites.

Each benchmark test takes ``bench_case`` (a :class:`smlp_kernels.bench.Case`) and
``provider`` (a provider name), generated here: with ``--benchmark`` from the suites of
``--smlp-suite`` (see the root conftest.py) and their providers that can run on this machine;
without it from the tiny ``smoke`` suite, leaving out the ``torch.compile`` providers, whose
compilation takes seconds to minutes.
"""

from __future__ import annotations

import pytest
import torch

from smlp_kernels.bench import RunConfig, Runner, measure_ceilings, suite_cases
from smlp_kernels.bench.cases import suite_providers
from smlp_kernels.bench.runner import derive_rates


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _suites(config: pytest.Config) -> list[str]:
    if not config.getoption("benchmark"):
        return ["smoke"]
    chosen = config.getoption("smlp_suite")
    if chosen:
        return [s.strip() for s in chosen.split(",") if s.strip()]
    return ["gpu"] if _device().type == "cuda" else ["cpu"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bench_case" not in metafunc.fixturenames:
        return
    kind = metafunc.module.KIND
    suites = _suites(metafunc.config)
    real = metafunc.config.getoption("benchmark")
    runner = Runner(
        RunConfig(
            device=_device(),
            op_providers=suite_providers(suites, "op"),
            model_providers=suite_providers(suites, "model"),
        )
    )
    providers = runner.providers_for(kind)
    if not real:
        providers = [p for p in providers if "compile" not in p]
    params = [
        pytest.param(case, p, id=f"{case.id}-{p}")
        for case in suite_cases(suites)
        if case.kind == kind
        for p in providers
    ]
    metafunc.parametrize(("bench_case", "provider"), params)


@pytest.fixture(scope="session")
def bench_runner(request: pytest.FixtureRequest) -> Runner:
    """A harness runner on this machine's device; with --benchmark it knows the measured
    ceilings, so results get their roofline figures."""
    device = _device()
    runner = Runner(RunConfig(device=device))
    if request.config.getoption("benchmark"):
        dtypes = {c.dtype for c in suite_cases(_suites(request.config))}
        runner.ceilings = measure_ceilings(device, dtypes)
    return runner


@pytest.fixture
def run_benchmark(benchmark, bench_runner: Runner):
    """``run_benchmark(case, provider)``: check the provider with the harness, time it with
    pytest-benchmark, and record the figures in ``benchmark.extra_info``."""

    def run(case, provider: str) -> dict:
        row, fn = bench_runner.prepare_one(case, provider)
        if row["status"] == "skipped":
            pytest.skip(row["error"])
        assert fn is not None, row["error"]  # a wrong answer fails the test
        device = bench_runner.device
        if device.type == "cuda":

            def timed():
                fn()
                torch.cuda.synchronize(device)

        else:
            timed = fn
        benchmark.extra_info.update(
            case=case.id,
            provider=provider,
            device=bench_runner.device_name,
            flops=row["flops"],
            bytes=row["bytes"],
            check=row["check_detail"],
        )
        benchmark(timed)
        if benchmark.stats is not None:  # None when benchmarks are disabled (smoke runs)
            row["median_ms"] = benchmark.stats["median"] * 1e3
            derive_rates(row, bench_runner.ceilings)
            for key in ("tflop_per_s", "gb_per_s", "floor_ms", "roofline_pct", "images_per_s"):
                benchmark.extra_info[key] = row[key]
        return row

    return run


@pytest.fixture(autouse=True)
def _one_thread_in_smoke_runs(request: pytest.FixtureRequest):
    """Smoke runs use one CPU thread: their tiny ops time nothing, and on a machine shared
    with other jobs every OpenMP barrier of a 2-thread op can wait for a scheduler slice."""
    if request.config.getoption("benchmark"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
