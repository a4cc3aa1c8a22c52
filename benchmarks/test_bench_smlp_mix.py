"""pytest-benchmark timings of ``smlp_mix``: every provider on the cases of the smlp-bench suites.

    python -m pytest --benchmark benchmarks/     # for real (see the root conftest.py)
    python -m pytest benchmarks/                 # smoke: tiny shapes, one call each

Each test builds one provider with the harness (:mod:`smlp_kernels.bench`), checks its answer
against the float64 reference, then lets pytest-benchmark time it. ``extra_info`` records the
case, device, FLOPs, the fewest bytes, TFLOP/s, GB/s and, from the ceilings measured at the
start of the session, the roofline floor and the percentage of it reached. pytest-benchmark
times with ``time.perf_counter``; on CUDA each call ends with ``torch.cuda.synchronize()``,
so the times include launch overhead and no L2 flush: ``smlp-bench`` is the precise tool.
"""

KIND = "op"  # the case kind benchmarks/conftest.py parametrises this module with


def test_smlp_mix(run_benchmark, bench_case, provider):
    row = run_benchmark(bench_case, provider)
    assert row["check_passed"]
