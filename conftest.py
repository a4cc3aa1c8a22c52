"""Project-wide pytest options. (At the repository root because pytest accepts command-line
options only from the conftest files it loads first.)

``pytest --benchmark`` runs the benchmarks in ``benchmarks/`` for real under pytest-benchmark
and deselects every other test (a bare ``pytest --benchmark`` adds ``benchmarks/`` to the
testpaths); their cases and providers come from the ``smlp-bench`` suites
(``--smlp-suite``, default ``cpu`` without CUDA and ``gpu`` with it). Without
``--benchmark``, the benchmarks are quick smoke tests: the tiny ``smoke`` suite, no
``torch.compile`` providers, each benchmarked function called once (pytest-benchmark's
``--benchmark-disable``), so plain ``pytest`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("smlp-kernels")
    group.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run benchmarks/ for real under pytest-benchmark (and nothing else); without "
        "it the benchmarks run once each as smoke tests",
    )
    group.addoption(
        "--smlp-suite",
        default=None,
        help="with --benchmark: comma-separated smlp-bench suites to take the benchmark "
        "cases from (default: gpu with CUDA, cpu without)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # tryfirst: pytest-benchmark reads its options in its own pytest_configure.
    has_plugin = config.pluginmanager.hasplugin("benchmark")
    if config.getoption("benchmark"):
        if not has_plugin:
            raise pytest.UsageError(
                "--benchmark needs pytest-benchmark: pip install pytest-benchmark"
            )
        config.option.benchmark_disable = False
        # A bare `pytest --benchmark` collects the testpaths: make sure benchmarks/ is one.
        args_source = getattr(pytest.Config, "ArgsSource", None)  # pytest >= 7.2
        if args_source is not None and config.args_source == args_source.TESTPATHS:
            bench_dir = config.rootpath / "benchmarks"
            if all(Path(a).resolve() != bench_dir for a in config.args):
                config.args.append(str(bench_dir))
    elif has_plugin:
        config.option.benchmark_disable = True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("benchmark"):
        return
    keep = [i for i in items if "benchmark" in getattr(i, "fixturenames", ())]
    kept = {id(i) for i in keep}
    dropped = [i for i in items if id(i) not in kept]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
