"""Rung 3: the compiled tiny model on the RTL (Verilator under cocotb) — prefill and four
decode steps, bit-exact with the ISA simulator (the whole final DRAM but the counter
blocks) and with the JAX integer reference.

The suite runs edge-8x8 with a 64 KiB L2 (the configuration test_accelerator.py builds,
so one Verilator model serves both): the model's build and the simulation of ~470k
cycles take most of the suite's RTL budget. ``python -m benchmarks.rtl_tiny`` runs the
same check on edge-4x4 and edge-8x8 at their full L2, prefetch on and off."""

import pytest

from compiler.driver import compile_generation
from compiler.hardware import load_hardware
from compiler.runtime import compare, reference_generation, run_build, same_dram

pytestmark = pytest.mark.slow
PROMPT = "ROMEO:"


def test_tiny_is_bit_exact_on_the_rtl(tiny_model, tiny_int):
    ids = tiny_model.tokenizer.encode(PROMPT)
    hw = load_hardware("edge-8x8").replace(l2_bytes=64 * 1024)
    build = compile_generation(tiny_int.cfg, tiny_int.qm, hw, ids, 5, prefetch=True)
    isa = run_build(build, "isa")
    rtl = run_build(build, "rtl")
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
