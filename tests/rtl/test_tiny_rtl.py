"""Rung 3: the compiled tiny model on the RTL (Verilator under cocotb) — prefill and four
decode steps, prefetch on and off, bit-exact with the ISA simulator (the whole final DRAM
but the counter blocks) and with the JAX integer reference; and the performance model's
cycle counts on the same programs against the RTL's.

Two configurations: edge-8x8 with a 64 KiB L2 (the one test_accelerator.py builds, so
one Verilator model serves both), and edge-4x4 at its 256 KiB, whose L2 moves only one
line per cycle, as many as the DRAM, so the engines contend for it; and on edge-8x8 with
prefetch, tiny with MXINT4 projection weights (GEMV and GEMM on packed int4 elements).
The prompts are longer than the array is tall (18 tokens on edge-8x8, 6 on edge-4x4),
so the prefill's matmuls have more rows than the array and some run as GEMM. ``python -m
benchmarks.rtl_tiny`` runs the same check with a 6-token prompt and prints the figures
(``--weights mxint4`` for MXINT4)."""

import pytest

from accel.ladder import compare, reference_generation
from accel.runtime import run_build, same_dram
from arch.hardware import load_hardware
from arch.isa import MatmulMode, WeightFormat
from compiler.driver import compile_generation, lm_head_chunk_sizes
from sweeps.perf import time_build

pytestmark = pytest.mark.slow
PROMPT = {"edge-8x8": "ROMEO:\nWhat say you", "edge-4x4": "ROMEO:"}


HARDWARE = {"edge-8x8": load_hardware("edge-8x8").replace(l2_bytes=64 * 1024),
            "edge-4x4": load_hardware("edge-4x4")}


@pytest.fixture(scope="module", params=[*((hw, prefetch, "int8") for hw in HARDWARE
                                          for prefetch in (True, False)),
                                        ("edge-8x8", True, "mxint4")],
                ids=lambda p: f"{p[0]}-prefetch-{'on' if p[1] else 'off'}-{p[2]}")
def runs(request, tiny_model, tiny_int, tiny_mx):
    """The compiled tiny model run on the ISA simulator and on the RTL, and its integer
    model."""
    hw_name, prefetch, weights = request.param
    im = tiny_mx if weights == "mxint4" else tiny_int
    ids = tiny_model.tokenizer.encode(PROMPT[hw_name])
    build = compile_generation(im.cfg, im.qm, HARDWARE[hw_name], ids, 5, prefetch=prefetch)
    assert build.weights == weights
    if weights == "mxint4":                 # both dataflows on MXINT4 weights
        assert {MatmulMode(i.mode) for p in build.programs for i in p.instrs
                if i.mnemonic == "MATMUL" and i.w_format == WeightFormat.MXINT4} == set(MatmulMode)
    return ids, build, run_build(build, "isa"), run_build(build, "rtl"), im


def test_tiny_is_bit_exact_on_the_rtl(runs):
    ids, build, isa, rtl, im = runs
    verdict = same_dram(build, isa.dram, rtl.dram, isa.l2, rtl.l2)
    assert verdict["bit_exact"] and verdict["l2_bytes_compared"] == build.hw.l2_bytes, verdict
    ref = compare(rtl, reference_generation(im, ids, 5))
    assert ref["bit_exact"] and ref["tokens_compared"] == 5, ref
    assert list(rtl.counters) == [p.name for p in build.programs]
    for name, counters in rtl.counters.items():
        for same in ("instructions", "array_macs", "prefetch_bytes"):
            assert counters[same] == isa.counters[name][same], (name, same)
        assert counters["cycles"] > 0 and counters["dram_busy_cycles"] <= counters["cycles"]
        assert counters["compute_busy"] > 0 and counters["load_busy"] > 0


BUSY = ("load_busy", "compute_busy", "store_busy", "dram_busy_cycles")


def test_performance_model_agrees_with_the_rtl(runs):
    """The perf rung: every program's cycle count, and the engines' and the DRAM's busy
    cycles, within 5% of the RTL's."""
    _, build, _, rtl, _ = runs
    timing = time_build(build)
    for name, counters in rtl.counters.items():
        model = timing.programs[name].counters()
        error = (model["cycles"] - counters["cycles"]) / counters["cycles"]
        assert abs(error) < 0.05, (name, model["cycles"], counters["cycles"])
        for engine in BUSY:
            assert abs(model[engine] - counters[engine]) <= 0.05 * counters[engine], \
                (name, engine, model[engine], counters[engine])
        assert model["array_macs"] == counters["array_macs"]
        assert model["prefetch_bytes"] == counters["prefetch_bytes"]


def test_a_chunked_lm_head_is_bit_exact_on_the_rtl(wide_vocab):
    """An LM head over 11,000 columns on a 64 KiB L2, in column chunks whose maxima are
    reduced through DRAM gathers (``backend.chunk_lm_head``): the RTL ends with the ISA
    simulator's whole DRAM and L2, and the integer reference's tokens and logits (the
    first step a tie between two chunks)."""
    im, prompt, hw, (first, second) = wide_vocab
    build = compile_generation(im.cfg, im.qm, hw, prompt, 3)
    V = im.cfg.vocab_size
    chunks = build.manifest()["programs"][1]["opcodes"]["ARGMAX"] - 1   # and one over them
    assert chunks >= 2 and 6 * V > hw.l2_bytes
    (cols,) = [c for c in lm_head_chunk_sizes(V) if -(-V // c) == chunks]
    assert first // cols != second // cols                  # the tie spans two chunks
    isa, rtl = run_build(build, "isa"), run_build(build, "rtl")
    verdict = same_dram(build, isa.dram, rtl.dram, isa.l2, rtl.l2)
    assert verdict["bit_exact"] and verdict["l2_bytes_compared"] == hw.l2_bytes, verdict
    ref = compare(rtl, reference_generation(im, prompt, 3))
    assert ref["bit_exact"] and ref["logit_rows_compared"] == 3 and rtl.tokens[0] == first


def test_batched_decode_with_compressed_kv_is_bit_exact_on_the_rtl(tiny_int):
    """Issue 20's case: four sequences of different prompt lengths in one paged KV pool of
    6 blocks, at most three at once, the second reading the first's 16-token prefix block
    (``accel.ladder.batch_prompts``, ``kv_blocks.plan_batch``); the fourth joins when the
    second leaves and writes into the blocks it freed; the KV cache compressed chunk by
    chunk (``KVCompression``): the host compresses each full block between programs and
    the load engine's decompressor (``rtl/kv_chunks.py``) expands it for every later
    program, the shared block in the second's prefill. The RTL, run in jobs that each
    continue the last one's DRAM and L2 (split where blocks are reused and where the host
    compresses), has the ISA simulator's whole DRAM and L2 at the end and where the freed
    blocks are reused (``runtime.same_run``); each sequence's tokens, logits and K/V rows
    (read when it finished) equal its run alone through the integer reference compressed
    alike; the performance model is within 5% of the cycles of every program, each timed
    on the DRAM the host left before it (the chunks' headers give their code bytes)."""
    from accel.kv_blocks import plan_batch
    from accel.ladder import batch_prompts
    from accel.runtime import same_run, segments
    from arch.isa import KvFormat
    from compiler.driver import compile_batch
    from models.integer import KVCompression

    im, hw = tiny_int, HARDWARE["edge-8x8"]
    prompts = batch_prompts([5, 17, 33], 4, hw.kv_block_tokens, im.cfg.vocab_size)
    new = [4, 2, 3, 2]
    plan = plan_batch(prompts, new, max_batch=3, pool_blocks=6,
                      block_tokens=hw.kv_block_tokens)
    assert [sp.cached for sp in plan.sequences][:2] == [0, 16]
    assert set(plan.sequences[3].table) & set(plan.sequences[1].table[1:])   # reused
    kv = KVCompression(chunk_tokens=hw.kv_block_tokens)
    build = compile_batch(im.cfg, im.qm, hw, plan.sequences, plan.schedule, 6, kv=kv)
    assert max(len(p.sequences) for p in build.programs) == 3 and len(segments(build)) > 1
    chunked = {p.name for p in build.programs for i in p.instrs
               if i.mnemonic == "KV_PREFETCH" and i.kv_format == KvFormat.CHUNKED}
    assert "prefill_s1" in chunked and "decode_000" in chunked
    isa, rtl = run_build(build, "isa"), run_build(build, "rtl")
    verdict = same_run(build, isa, rtl)
    assert verdict["bit_exact"] and verdict["checkpoints_compared"] >= 1, verdict
    assert verdict["l2_bytes_compared"] == hw.l2_bytes
    for b, seq in enumerate(rtl.sequences):
        ref = compare(seq, reference_generation(im, prompts[b], new[b], kv,
                                                plan.sequences[b].cached))
        assert ref["bit_exact"] and ref["tokens_compared"] == new[b], (b, ref)
    # the ISA run timed every program on the DRAM as it stood before it (the headers the
    # host wrote give the chunks' code bytes), compressed prefetches included
    assert set(isa.model_cycles) == set(rtl.counters)
    errors = {name: (isa.model_cycles[name] - c["cycles"]) / c["cycles"]
              for name, c in rtl.counters.items()}
    assert all(abs(e) < 0.05 for e in errors.values()), errors


def test_a_bad_entry_in_a_later_sequences_table_stops_the_rtl_as_the_isa_simulator(
        batch_with_a_bad_table):
    """Sequence 2's table entry evicted (-1) after compiling a batch of three (the
    ``batch_with_a_bad_table`` fixture): the RTL stops with the ISA simulator's error
    code, BAD_BLOCK, at the same instruction."""
    from compiler.semantics import AcceleratorError

    build = batch_with_a_bad_table
    stops = []
    for sim in ("isa", "rtl"):
        with pytest.raises(AcceleratorError) as raised:
            run_build(build, sim)
        stops.append((raised.value.code, raised.value.index))
    assert stops[0] == stops[1] and stops[0][0].name == "BAD_BLOCK", stops


@pytest.mark.parametrize("fixture", ["batch_naming_a_freed_block",
                                     "batch_naming_another_sequences_block"])
def test_a_table_naming_a_block_its_sequence_does_not_hold_stops_the_rtl_as_the_isa(
        request, fixture):
    """A block freed, or held by another running sequence, named in a sequence's table
    (the fixtures): the RTL's controller holds each program's ``KV_LIVE`` owner map, and
    the store engine stops with the ISA simulator's BAD_BLOCK at the same instruction of
    the same program."""
    from compiler.semantics import AcceleratorError

    build, program = request.getfixturevalue(fixture)
    stops = []
    for sim in ("isa", "rtl"):
        with pytest.raises(AcceleratorError, match=f"in program {program}") as raised:
            run_build(build, sim, check_races=False) if sim == "isa" else run_build(build, sim)
        stops.append((raised.value.code, raised.value.index))
    assert stops[0] == stops[1] and stops[0][0].name == "BAD_BLOCK", stops


def test_the_load_engine_is_held_to_the_pace_of_attentions_p_v(tiny_int):
    """The L2 priority effect the performance model follows (``sweeps.perf._trapped``):
    a tiny decode step's weight loads run beside its MATMULs (dependency tokens stripped,
    so that they overlap as far as the dispatcher lets them) on edge-8x8's 64 KiB. Beside
    attention's ``P · V``, whose weight reader primes its rows of ``C`` bytes one by one
    and so idles a cycle between lines, the load engine's copier is held to that pace:
    on the RTL its busy cycles grow by more than a tenth over the loads alone, and the
    model, which gave the copier the L2's spare lines until this rule, follows both
    within 3%."""
    from accel.runtime import image_with_programs
    from arch.isa import Engine, make
    from compiler.driver import compile_step
    from rtl.common import rtl_params
    from rtl.sim import build_model, run_job
    from sweeps.perf import time_program

    hw = HARDWARE["edge-8x8"]
    build = compile_step(tiny_int.cfg, tiny_int.qm, hw, 100, 1, prefetch=True)
    free = [i.replace(wait=0, signal=0) for i in build.programs[0].instrs
            if i.engine != Engine.CONTROL]
    loads = [i for i in free if i.mnemonic in ("DMA_LOAD", "DMA_GATHER")]
    both = [i for i in free if i.mnemonic in ("DMA_LOAD", "DMA_GATHER", "MATMUL")]
    data, entries = image_with_programs(build.image.data, {"loads": loads, "both": both})
    job = run_job(build_model(rtl_params(hw, image_bytes=data.size)), data, entries, {})
    assert not any(e["timed_out"] or e["error"] for e in job.programs), job.programs
    rtl = {name: entry["counters"]["load_busy"] for (name, _), entry
           in zip(entries, job.programs, strict=True)}
    model = {name: time_program(p + [make("HALT")], hw, build.image.read_i32).busy["load"]
             for name, p in (("loads", loads), ("both", both))}
    assert rtl["both"] > 1.1 * rtl["loads"], rtl
    for name in rtl:
        assert abs(model[name] - rtl[name]) <= 0.03 * rtl[name], (name, model, rtl)
