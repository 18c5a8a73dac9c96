"""Batched decode (``compiler.batching``, ``driver.compile_batch``): many sequences in one
paged KV pool, bit-exact per sequence against running each alone through the integer
reference; the weights read once per step; the host's schedule and tables checked."""

import dataclasses

import numpy as np
import pytest

from accel.kv_blocks import plan_batch
from accel.ladder import compare, reference_generation
from accel.runtime import BatchRunResult, run_build
from arch.hardware import load_hardware
from arch.isa import ErrorCode
from compiler.batching import batch_graphs
from compiler.driver import (
    BatchStep,
    SequencePlan,
    check_batch,
    compile_batch,
    compile_batch_timing_step,
)
from compiler.frontend import lower_step
from compiler.ir import CompileError, Embed, MatMul
from compiler.semantics import accesses, flat
from models.integer import quant_struct

HW = load_hardware("edge-8x8")


def _prompts(vocab: int, seed: int = 1) -> list[list[int]]:
    """Four prompts of different lengths, the first and third sharing 20 tokens (one
    whole 16-token block)."""
    rng = np.random.default_rng(seed)
    prefix = [int(t) for t in rng.integers(0, vocab, 20)]
    return [prefix + [int(t) for t in rng.integers(0, vocab, 5)],
            [int(t) for t in rng.integers(0, vocab, 9)],
            prefix + [int(t) for t in rng.integers(0, vocab, 11)],
            [int(t) for t in rng.integers(0, vocab, 3)]]


def test_continuous_batching_with_compressed_kv_is_bit_exact_per_sequence(tiny_int):
    """Four sequences, at most three at once (the fourth joins when the second leaves),
    the third reading the first's prefix block, the KV cache compressed chunk by chunk
    (``KVCompression``: the host compresses each full block, ``KV_PREFETCH`` in
    ``CHUNKED`` format expands it): every sequence's tokens, logit rows and K/V rows
    (gathered through its own table from the shared pool, full blocks as the device
    expands them) equal its run alone through the integer reference with the same
    compression, the shared block compressed once, before the third's prefill reads it.
    (Without compression and prefetch off: ``accel verify --batch``'s rung,
    tests/accel/test_cli.py; on the RTL, tests/rtl/test_tiny_rtl.py.)"""
    from arch.isa import KvFormat
    from models.integer import KVCompression

    im = tiny_int
    prompts, new = _prompts(im.cfg.vocab_size), [6, 4, 5, 7]
    plan = plan_batch(prompts, new, max_batch=3, pool_blocks=12,
                      block_tokens=HW.kv_block_tokens)
    assert [sp.cached for sp in plan.sequences] == [0, 0, 16, 0]
    assert plan.sequences[0].table[0] == plan.sequences[2].table[0]
    decodes = [s.seqs for s in plan.schedule if s.kind == "decode"]
    assert max(len(s) for s in decodes) == 3 and (0, 2, 3) in decodes
    kv = KVCompression(chunk_tokens=HW.kv_block_tokens)
    refs = [reference_generation(im, p, n, kv, sp.cached)
            for p, n, sp in zip(prompts, new, plan.sequences, strict=True)]
    build = compile_batch(im.cfg, im.qm, HW, plan.sequences, plan.schedule, plan.pool_blocks,
                          kv=kv)
    # the shared block once (by the first), the third's second block after its decode
    # step at position 31; the third's prefill reads the shared block compressed
    compressed = [(p.name, c) for p in build.programs for c in p.compress]
    assert [c for _, c in compressed] == [(0, 0, 1), (2, 1, 2)], compressed
    assert any(i.mnemonic == "KV_PREFETCH" and i.kv_format == KvFormat.CHUNKED
               for i in next(p for p in build.programs if p.name == "prefill_s2").instrs)
    result = run_build(build, "isa")
    assert isinstance(result, BatchRunResult)
    for b, (ours, ref) in enumerate(zip(result.sequences, refs, strict=True)):
        verdict = compare(ours, ref)
        assert verdict["bit_exact"] and verdict["tokens_compared"] == new[b], (b, verdict)
    batched = [p for p in build.programs if len(p.sequences) == 3]
    assert batched and all(p.kind == "decode" for p in batched)


def _constant_bytes(build) -> int:
    """DRAM bytes a build's program reads from the constants, but the embedding rows."""
    mmap = build.mmap
    table = next(r for n, r in mmap.regions.items() if n == "param:embed")
    total = 0
    for instr in build.programs[0].instrs:
        for a in flat(accesses(instr, build.hw, build.image.read_i32)):
            if a.space == "dram" and not a.write and a.addr < mmap.rw_base and \
                    not table.offset <= a.addr < table.end:
                total += a.nbytes
    return total


def test_a_batched_step_reads_the_weights_once(tiny_model):
    """A decode step of 4 sequences reads exactly the constants one sequence's step
    reads (the embedding rows aside): the projections are [4, K] matmuls."""
    cfg = tiny_model.cfg
    one, four = (compile_batch_timing_step(cfg, HW, b, 40) for b in (1, 4))
    assert _constant_bytes(one) == _constant_bytes(four) > cfg.n_layers * cfg.d_model ** 2
    assert four.programs[0].sequences == [0, 1, 2, 3]
    assert four.programs[0].positions == [40] * 4


def test_batch_graphs_merges_rows_and_keeps_sequences_apart(tiny_model):
    cfg, qm = tiny_model.cfg, quant_struct(tiny_model.cfg)
    graphs = [lower_step(cfg, qm, pos, 1, seq=b) for b, pos in enumerate((5, 9, 17))]
    merged = batch_graphs(graphs, "d")
    mms = [op for op in merged.ops if isinstance(op, MatMul)]
    single = [op for op in graphs[0].ops if isinstance(op, MatMul)]
    assert len(mms) == len(single) and all(op.x.shape[0] == 3 for op in mms)
    embeds = [op for op in merged.ops if isinstance(op, Embed)]
    assert [(e.seq, e.start) for e in embeds] == [(0, 5), (1, 9), (2, 17)]
    assert len({e.out.buffer.uid for e in embeds}) == 1
    assert [e.out.offset for e in embeds] == [0, 256, 512]      # row b of a [3, 128] int16
    assert merged.positions == (5, 9, 17)
    with pytest.raises(CompileError, match="only decode steps"):
        batch_graphs([lower_step(cfg, qm, 0, 4)], "p")
    other = dataclasses.replace(cfg, d_ff=2 * cfg.d_ff)
    with pytest.raises(CompileError, match="constants differ|buffer"):
        batch_graphs([graphs[0], lower_step(other, quant_struct(other), 5, 1, seq=1)], "x")


def _seq(prompt, new, table, cached=0):
    return SequencePlan(tuple(prompt), new, tuple(table), cached)


@pytest.mark.parametrize(("sequences", "schedule", "message"), [
    ([_seq([1] * 20, 3, [0])], [("prefill", (0,))], "rows need 2"),
    ([_seq([1] * 5, 2, [9])], [("prefill", (0,)), ("decode", (0,))], "outside the pool"),
    ([_seq([1] * 5, 2, [0])], [("decode", (0,)), ("prefill", (0,))], "before its prefill"),
    ([_seq([1] * 5, 3, [0])], [("prefill", (0,)), ("decode", (0,))], "runs 6 of its 7"),
    ([_seq([1] * 5, 2, [0])], [("prefill", (0,)), ("prefill", (0,))], "prefilled twice"),
    ([_seq([1] * 5, 2, [0])], [("prefill", (0, 0))], "not a prefill of one"),
    # a shared prefix no earlier prefill wrote
    ([_seq([1] * 18, 1, [0, 1], 16)], [("prefill", (0,))],
     "row 0 from block 0, which no program has written"),
    # two sequences writing the same block while both live
    ([_seq([1] * 5, 3, [0]), _seq([2] * 5, 2, [0])],
     [("prefill", (0,)), ("prefill", (1,)), ("decode", (0, 1)), ("decode", (0,))],
     "sequence 0 reads K/V row 0 from block 0, which holds another row: sequence 1"),
    # a shared prefix whose block was overwritten before the sharer's prefill
    ([_seq([1] * 17, 1, [0, 1]), _seq([3] * 5, 1, [0]), _seq([1] * 18, 1, [0, 2], 16)],
     [("prefill", (0,)), ("prefill", (1,)), ("prefill", (2,))],
     "row 0 from block 0, which holds another row: sequence 1 wrote it in program 1"),
    ([_seq([1, 70], 1, [0])], [("prefill", (0,))], "outside the vocabulary"),
    # one block for two of a sequence's logical blocks
    ([_seq([1] * 3, 15, [2, 2])], [("prefill", (0,))] + [("decode", (0,))] * 14,
     "names block 2 for two"),
    # within one decode step: one sequence appends its row 16 over the row 0 the other
    # reads, whichever of the two comes first in the batch
    ([_seq([1, 2, 3], 2, [0]), _seq([5] * 16, 2, [1, 0])],
     [("prefill", (0,)), ("prefill", (1,)), ("decode", (0, 1))],
     "sequence 0 reads K/V row 0 from block 0, which holds another row: sequence 1"),
    ([_seq([5] * 16, 2, [1, 0]), _seq([1, 2, 3], 2, [0])],
     [("prefill", (0,)), ("prefill", (1,)), ("decode", (0, 1))],
     "sequence 1 reads K/V row 0 from block 0, which holds another row: sequence 0"),
])
def test_check_batch_refuses_what_the_device_cannot_run(sequences, schedule, message):
    steps = [BatchStep(kind, seqs) for kind, seqs in schedule]
    with pytest.raises(CompileError, match=message):
        check_batch(tuple(sequences), tuple(steps), 4, 16, 65, 256)


def test_a_bad_entry_in_a_later_sequences_table_stops_with_bad_block(batch_with_a_bad_table):
    """The host's table of sequence 2 corrupted after compiling (an evicted entry, -1):
    the ISA simulator stops with BAD_BLOCK in the first program whose walk reads it (the
    RTL's twin: tests/rtl/test_tiny_rtl.py)."""
    from compiler.semantics import AcceleratorError

    build = batch_with_a_bad_table
    with pytest.raises(AcceleratorError) as raised:
        run_build(build, "isa")
    assert raised.value.code == ErrorCode.BAD_BLOCK and raised.value.index is not None


@pytest.mark.parametrize("fixture", ["batch_naming_a_freed_block",
                                     "batch_naming_another_sequences_block"])
def test_a_table_naming_a_block_its_sequence_does_not_hold_stops_with_bad_block(request,
                                                                              fixture):
    """A table entry naming a block freed by a finished sequence, or one another running
    sequence holds (the fixtures): inside the pool, so only the program's ``KV_LIVE``
    owner map can tell. The programs before it run; the ISA simulator stops with
    BAD_BLOCK at the first KV walk of the program that names it (a KV append there)
    (the RTL's twin: tests/rtl/test_tiny_rtl.py)."""
    from accel.runtime import program_from_dram, simulated_dram
    from compiler.isasim import IsaSimulator
    from compiler.semantics import AcceleratorError

    build, program = request.getfixturevalue(fixture)
    assert all(p.instrs[0].mnemonic == "KV_LIVE" for p in build.programs)
    sim = IsaSimulator(build.hw, simulated_dram(build), check_races=False)
    for p in build.programs:
        instrs = program_from_dram(build, sim.dram, p.name)
        if p.name != program:
            sim.run(instrs)
            continue
        with pytest.raises(AcceleratorError, match="does not give sequence") as raised:
            sim.run(instrs)
        assert raised.value.code == ErrorCode.BAD_BLOCK
        assert instrs[raised.value.index].mnemonic == "KV_APPEND"
        break
    with pytest.raises(AcceleratorError, match=f"in program {program}") as again:
        run_build(build, "isa", check_races=False)
    assert (again.value.code, again.value.index) == (ErrorCode.BAD_BLOCK, raised.value.index)


def test_a_batched_build_is_not_saved(tiny_int, tmp_path):
    im = tiny_int
    plan = plan_batch([[1, 2, 3], [4, 5]], [2, 2], max_batch=2, pool_blocks=2,
                      block_tokens=HW.kv_block_tokens)
    build = compile_batch(im.cfg, im.qm, HW, plan.sequences, plan.schedule, 2)
    with pytest.raises(CompileError, match="cannot be saved"):
        build.save(tmp_path / "b")
