"""Rung 3: the compiled tiny model on the RTL (Verilator under cocotb) — prefill and four
decode steps, prefetch on and off, bit-exact with the ISA simulator (the whole final DRAM
but the counter blocks) and with the JAX integer reference; and the performance model's
cycle counts on the same programs against the RTL's.

The suite runs edge-8x8 with a 64 KiB L2 (the configuration test_accelerator.py builds,
so one Verilator model serves both): the model's build and the simulation of ~470k
cycles take most of the suite's RTL budget. ``python -m benchmarks.rtl_tiny`` runs the
same check on edge-4x4 and edge-8x8 at their full L2, prefetch on and off."""

import pytest

from compiler.driver import compile_generation
from compiler.hardware import load_hardware
from compiler.runtime import compare, reference_generation, run_build, same_dram
from sweeps.perf import time_build

pytestmark = pytest.mark.slow
PROMPT = "ROMEO:"


HW = load_hardware("edge-8x8").replace(l2_bytes=64 * 1024)


@pytest.fixture(scope="module", params=[True, False], ids=["prefetch-on", "prefetch-off"])
def runs(request, tiny_model, tiny_int):
    """The compiled tiny model run on the ISA simulator and on the RTL."""
    ids = tiny_model.tokenizer.encode(PROMPT)
    build = compile_generation(tiny_int.cfg, tiny_int.qm, HW, ids, 5, prefetch=request.param)
    return ids, build, run_build(build, "isa"), run_build(build, "rtl")


def test_tiny_is_bit_exact_on_the_rtl(runs, tiny_int):
    ids, build, isa, rtl = runs
    verdict = same_dram(build, isa.dram, rtl.dram)
    assert verdict["bit_exact"], verdict
    ref = compare(rtl, reference_generation(tiny_int, ids, 5))
    assert ref["bit_exact"] and ref["tokens_compared"] == 5, ref
    assert list(rtl.counters) == [p.name for p in build.programs]
    for name, counters in rtl.counters.items():
        for same in ("instructions", "array_macs", "prefetch_bytes"):
            assert counters[same] == isa.counters[name][same], (name, same)
        assert counters["cycles"] > 0 and counters["dram_busy_cycles"] <= counters["cycles"]
        assert counters["compute_busy"] > 0 and counters["load_busy"] > 0


def test_performance_model_agrees_with_the_rtl(runs):
    """The perf rung: every program's cycle count within 5% of the RTL's, and the engines'
    busy cycles within 5% where they matter."""
    _, build, _, rtl = runs
    timing = time_build(build)
    for name, counters in rtl.counters.items():
        model = timing.programs[name].counters()
        error = (model["cycles"] - counters["cycles"]) / counters["cycles"]
        assert abs(error) < 0.05, (name, model["cycles"], counters["cycles"])
        for engine in ("load_busy", "compute_busy"):
            assert abs(model[engine] - counters[engine]) <= 0.05 * counters[engine], \
                (name, engine, model[engine], counters[engine])
        assert model["array_macs"] == counters["array_macs"]
        assert model["prefetch_bytes"] == counters["prefetch_bytes"]
