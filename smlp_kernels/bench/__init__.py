"""The benchmark harness: ``smlp-bench`` on the command line, this package in Python.

Modules, one concern each:

* :mod:`.cases`: what is measured (:class:`Case`) and the built-in suites (``SUITES``);
* :mod:`.providers`: who is measured: every registry backend, the SPACH-style module eager
  and compiled;
* :mod:`.checks`: inputs, and the check of each provider against the float64 reference;
* :mod:`.timing`: CUDA-event timing with an L2 flush (``triton.testing.do_bench``),
  CUDA-graph replay, interleaved ``perf_counter`` timing on CPU;
* :mod:`.roofline`: FLOPs, the fewest bytes, the measured ceilings and the roofline floor;
* :mod:`.runner`: runs cases and providers into result rows, failures included;
* :mod:`.analysis`: speed-ups, memory ratios, geometric means, floor% warnings;
* :mod:`.report`: the terminal table and the JSON and CSV files; :mod:`.plots`: the figures;
* :mod:`.cli`: the ``smlp-bench`` command.

Example::

    import torch
    from smlp_kernels.bench import RunConfig, Runner, suite_cases

    config = RunConfig(device=torch.device("cpu"), providers=["cpu", "spach-eager"])
    rows = Runner(config).run(suite_cases(["smoke"]))  # one dict per (case, provider)
"""

from .analysis import add_comparisons, geomean, summarize_results
from .cases import SUITES, Case, filter_cases, group_cases, suite_cases
from .providers import Provider, all_providers, default_providers, select_providers
from .roofline import Ceilings, floor_s, measure_ceilings, op_bytes, op_flops
from .runner import RESULT_FIELDS, RunConfig, Runner
from .timing import Timing, TimingConfig

__all__ = [
    "RESULT_FIELDS",
    "SUITES",
    "Case",
    "Ceilings",
    "Provider",
    "RunConfig",
    "Runner",
    "Timing",
    "TimingConfig",
    "add_comparisons",
    "all_providers",
    "default_providers",
    "filter_cases",
    "floor_s",
    "geomean",
    "group_cases",
    "measure_ceilings",
    "op_bytes",
    "op_flops",
    "select_providers",
    "suite_cases",
    "summarize_results",
]
