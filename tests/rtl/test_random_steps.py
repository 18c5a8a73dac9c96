"""The performance model against the RTL out of sample: random model shapes and steps
(``sweeps.random_steps.random_rtl_step``: head_dim 16-128, MHA/GQA/MQA, odd widths, 1-3
layers, QKV biases, prompts and KV lengths that do and do not divide the array and the KV
block, prefetch on and off, int8 and MXINT4) on the two configurations tests/rtl builds
anyway (edge-8x8 with a 64 KiB L2, and edge-4x4, whose L2 moves one line a cycle). No
latency of ``arch.occupancy`` was read off these programs: they were fitted on single
instructions (``python -m benchmarks.perf_calibration`` and ``--fit``, seed 7); this
seed was chosen before the first run. ``python -m benchmarks.perf_calibration --random N``
runs the whole test set, on the non-square, low- and high-bandwidth configurations too,
and prints the errors against the issue's 1% target.
"""

import numpy as np
import pytest

from accel.ladder import run_random_step
from sweeps.random_steps import random_rtl_step, rtl_hardware

pytestmark = pytest.mark.slow
SEED, STEPS = 18, 2


@pytest.fixture(scope="module")
def results():
    rng = np.random.default_rng(SEED)
    hardware = rtl_hardware()[:2]
    steps = [random_rtl_step(rng, hardware[i % 2]) for i in range(STEPS)]
    return [(step, run_random_step(step)) for step in steps]


def test_random_steps_are_bit_exact_on_the_rtl(results):
    assert {step.hw.name for step, _ in results} == {"edge-8x8", "edge-4x4"}
    for step, result in results:
        assert result["bit_exact"], step.describe()


def test_performance_model_out_of_sample_within_one_percent(results):
    """Every step's cycles within 1% of the RTL's, the issue's target per program (the
    perf rung holds tiny to 5%, tests/rtl/test_tiny_rtl.py). Before the filler's readers
    were stepped over the L2's banks and the writeback freed its half at hand-over, the
    set's worst steps were 1.4% and 2.1% off; before the filler's reads, the copier's
    command queue and the vector unit's priming steps were modelled, edge-4x4 decode
    steps of odd widths were 4-9% off. The whole set is ``python -m
    benchmarks.perf_calibration --random N`` (docs/perf.md, its table: ten draws of 25,
    seeds 2026 to 2035, every step within 1% on nine, one step at −1.17% on 2034)."""
    for step, result in results:
        assert abs(result["error_pct"]["cycles"]) <= 1.0, (step.describe(), result["rtl"],
                                                          result["model"])


def test_a_counters_error_is_of_its_count_or_of_the_cycles():
    """``counter_errors``: a busy counter's error is of the RTL's count; a stall counter's,
    and one the RTL has at 0, of the program's cycles, never a silent 0."""
    from accel.ladder import TIMED_COUNTERS, counter_errors

    rtl = dict.fromkeys(TIMED_COUNTERS, 100) | {"cycles": 10_000, "load_stall": 20,
                                                 "store_busy": 0}
    model = dict(rtl) | {"load_busy": 110, "load_stall": 10, "store_busy": 50}
    errors = counter_errors(model, rtl)
    assert errors["load_busy"] == 10.0 and errors["compute_busy"] == 0.0
    assert errors["load_stall"] == -0.1 and errors["store_busy"] == 0.5
