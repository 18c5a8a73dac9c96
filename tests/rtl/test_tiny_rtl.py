"""Rung 3: the compiled tiny model on the RTL (Verilator under cocotb) — prefill and four
decode steps, bit-exact with the ISA simulator (the whole final DRAM but the counter
blocks) and with the JAX integer reference, on edge-4x4 and edge-8x8, prefetch on and
off. Each Verilator model is built once per configuration and reused."""

import pytest

from compiler.driver import compile_generation
from compiler.hardware import load_hardware
from compiler.runtime import compare, reference_generation, run_build, same_dram

pytestmark = pytest.mark.slow
PROMPT = "ROMEO:"


@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetch", "no-prefetch"])
@pytest.mark.parametrize("hw", ["edge-8x8", "edge-4x4"])
def test_tiny_is_bit_exact_on_the_rtl(tiny_model, tiny_int, hw, prefetch):
    ids = tiny_model.tokenizer.encode(PROMPT)
    build = compile_generation(tiny_int.cfg, tiny_int.qm, load_hardware(hw), ids, 5,
                               prefetch=prefetch)
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
