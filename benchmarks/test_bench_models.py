"""pytest-benchmark timings of whole sMLPNet models: inference and one training step.

Cases come from the smlp-bench suites (see conftest.py). The default CPU suite has no model
cases, so ``pytest --benchmark`` on CPU runs none (``--smlp-suite models`` adds them); the
GPU default has sMLPNet-B. ``extra_info`` adds images/s and the model's FlopCounterMode
FLOPs to the fields of test_bench_smlp_mix.py.
"""

KIND = "model"  # the case kind benchmarks/conftest.py parametrises this module with


def test_model(run_benchmark, bench_case, provider):
    row = run_benchmark(bench_case, provider)
    assert row["check_passed"]
