"""Rung 2: compiled programs on the ISA simulator are bit-exact with the JAX integer
reference (every token, every logit row, the KV cache), and wrong tokens fail loudly."""

import numpy as np
import pytest

from accel.ladder import compare, reference_generation
from accel.runtime import run_build
from arch.hardware import load_hardware
from arch.isa import ErrorCode, make
from compiler.driver import compile_generation
from compiler.ir import CompileError
from compiler.isasim import DeadlockError, IsaSimulator, RaceError
from compiler.semantics import AcceleratorError


@pytest.mark.parametrize(("overrides", "hw", "prompt_len", "prefetch"), [
    ({}, "edge-8x8", 7, True),                                           # GQA, hd 16
    ({}, "edge-8x8", 7, False),
    ({}, "edge-8x8", 32, True),        # four array heights, one GEMM tile of rows
    ({"n_kv_heads": 4, "head_dim": 32, "d_model": 128}, "edge-4x4", 19, True),   # MHA, hd 32
    ({"n_heads": 2, "n_kv_heads": 1, "head_dim": 64, "d_model": 128, "qkv_bias": True,
      "tie_embeddings": True}, "edge-8x8", 17, True),                    # MQA, hd 64, bias
    ({"n_heads": 8, "n_kv_heads": 2, "head_dim": 16, "d_model": 128, "d_ff": 200}, "edge-4x4",
     33, False),                                                         # G=4 > 4x4 rows? no: =4
])
def test_bit_exact_with_integer_reference(small_config, int_model, overrides, hw, prompt_len,
                                          prefetch):
    cfg = small_config(**overrides)
    im = int_model(cfg)
    prompt = list(np.random.default_rng(prompt_len).integers(0, cfg.vocab_size, prompt_len))
    build = compile_generation(cfg, im.qm, load_hardware(hw), prompt, 5, prefetch=prefetch)
    result = run_build(build)
    verdict = compare(result, reference_generation(im, prompt, 5))
    assert verdict["bit_exact"], verdict
    assert verdict["tokens_compared"] == 5 and verdict["logit_rows_compared"] == 5
    counters = result.counters["decode_000"]
    assert counters["dram_read_bytes"] > 0 and counters["array_macs"] > 0


def test_long_context_uses_kv_chunks_and_small_l2(small_config, int_model):
    """A small L2 forces chunked prefill and chunked past-KV prefetch; still bit-exact."""
    cfg = small_config(max_seq_len=160, n_heads=2, n_kv_heads=1, head_dim=64, d_model=128)
    im = int_model(cfg)
    hw = load_hardware("edge-4x4").replace(l2_bytes=16 * 1024, l2_banks=4, l2_port_bytes=8)
    prompt = list(np.random.default_rng(1).integers(0, cfg.vocab_size, 150))
    build = compile_generation(cfg, im.qm, hw, prompt, 3)
    assert len(build.programs[0].chunks) > 1                        # prefill was chunked
    assert build.programs[1].opcode_counts()["KV_PREFETCH"] > 2 * cfg.n_layers * cfg.n_kv_heads
    verdict = compare(run_build(build), reference_generation(im, prompt, 3))
    assert verdict["bit_exact"], verdict


@pytest.mark.parametrize(("overrides", "hw", "l2_bytes", "prefetch"), [
    ({"d_model": 96, "d_ff": 2300, "n_kv_heads": 1, "n_layers": 1, "qkv_bias": True},
     "edge-4x4", 32 * 1024, True),
])
def test_mxint4_weights_are_bit_exact_with_k_split_at_block_boundaries(
        small_config, int_model, overrides, hw, l2_bytes, prefetch):
    """MXINT4 projection weights (partial last blocks: 2300 is not a multiple of 32), a
    QKV bias: bit-exact; the small L2 splits the down projection's reduction into tiles,
    each a whole number of blocks but the last. (Prefetch off and edge-8x8 with MXINT4:
    ``test_mxint4_halves_the_weight_bytes_a_decode_step_reads``.)"""
    cfg = small_config(**overrides)
    im = int_model(cfg, weights="mxint4")
    hw = load_hardware(hw).replace(l2_bytes=l2_bytes, l2_banks=4, l2_port_bytes=8)
    prompt = list(np.random.default_rng(5).integers(0, cfg.vocab_size, 9))
    build = compile_generation(cfg, im.qm, hw, prompt, 2, prefetch=prefetch)
    mx = [i for p in build.programs for i in p.instrs if i.mnemonic == "MATMUL" and i.w_format]
    assert len(mx) >= 7 * cfg.n_layers
    # every tile of a split reduction begins on a block (its x offset from the first
    # tile's), and every tile but a reduction's last is whole blocks
    reductions = {}                   # out_addr: the tiles of the reduction writing it
    groups = []
    for i in mx:
        if not i.accumulate:
            reductions[i.out_addr] = []
            groups.append(reductions[i.out_addr])
        reductions[i.out_addr].append(i)
    split = [t for t in groups if len(t) > 1]
    assert split
    for t in split:
        assert all((i.x_addr - t[0].x_addr) % 32 == 0 for i in t)
        assert all(i.k % 32 == 0 for i in t[:-1])
    verdict = compare(run_build(build), reference_generation(im, prompt, 2))
    assert verdict["bit_exact"], verdict


def test_mxint4_halves_the_weight_bytes_a_decode_step_reads(small_config, int_model):
    """Same model, int8 against MXINT4 projection weights, prefetch off, both bit-exact: a
    decode step reads ~17/32 of the projection weights' bytes (4.25 bits per weight)."""
    cfg = small_config(d_model=128, d_ff=384)
    hw = load_hardware("edge-8x8")
    read = {}
    for weights in ("int8", "mxint4"):
        im = int_model(cfg, weights=weights)
        build = compile_generation(cfg, im.qm, hw, [1, 2, 3], 2, prefetch=False)
        result = run_build(build)
        assert compare(result, reference_generation(im, [1, 2, 3], 2))["bit_exact"]
        read[weights] = result.counters["decode_000"]["dram_read_bytes"]
    d, f, qd, kd = cfg.d_model, cfg.d_ff, cfg.q_dim, cfg.kv_dim
    projection = cfg.n_layers * (d * (qd + 2 * kd) + qd * d + 3 * d * f)
    assert read["int8"] - read["mxint4"] == pytest.approx(projection * 15 / 32, rel=0.02)


def _tiny_build(small_config, int_model, prefetch=True):
    cfg = small_config()
    im = int_model(cfg)
    return compile_generation(cfg, im.qm, load_hardware("edge-8x8"), [1, 2, 3], 2,
                              prefetch=prefetch)


def _run_program(build, instrs):
    sim = IsaSimulator(build.hw, build.image.data)
    return sim.run(instrs)


def test_missing_wait_is_a_race(small_config, int_model):
    build = _tiny_build(small_config, int_model)
    instrs = list(build.programs[0].instrs)
    victim = next(i for i, x in enumerate(instrs) if x.mnemonic == "MATMUL" and x.wait)
    instrs[victim] = instrs[victim].replace(wait=0)
    # Its producer's token is now never consumed by it: either a race is seen, or a later
    # wait consumes the wrong token and the run deadlocks or races. Never silent.
    with pytest.raises((RaceError, DeadlockError)):
        _run_program(build, instrs)


def test_missing_signal_deadlocks(small_config, int_model):
    build = _tiny_build(small_config, int_model)
    instrs = list(build.programs[0].instrs)
    victim = next(i for i, x in enumerate(instrs) if x.mnemonic == "DMA_LOAD" and x.signal)
    instrs[victim] = instrs[victim].replace(signal=0)
    with pytest.raises(DeadlockError, match="waits for a token from load"):
        _run_program(build, instrs)


def test_serialised_baseline_waits_on_compute(small_config, int_model):
    build = _tiny_build(small_config, int_model, prefetch=False)
    loads = [x for x in build.programs[1].instrs if x.mnemonic == "DMA_LOAD"]
    assert sum(1 for x in loads if x.wait & 0b010) >= len(loads) - 2


def test_out_of_range_address_stops_with_its_error_code(small_config, int_model):
    build = _tiny_build(small_config, int_model)
    bad = make("DMA_LOAD", dram_addr=0, l2_addr=build.hw.l2_bytes - 16, rows=1, row_bytes=64,
               dram_stride=64, l2_stride=64)
    with pytest.raises(AcceleratorError, match="L2_OUT_OF_RANGE") as info:
        _run_program(build, [bad, make("HALT")])
    assert info.value.code == ErrorCode.L2_OUT_OF_RANGE and info.value.index == 0
    bad = make("DMA_STORE", l2_addr=0, dram_addr=len(build.image.data), rows=1, row_bytes=4,
               l2_stride=4, dram_stride=4)
    with pytest.raises(AcceleratorError, match="DRAM_OUT_OF_RANGE"):
        _run_program(build, [bad, make("HALT")])


@pytest.mark.parametrize("entry", ["evicted", "beyond the pool"])
def test_a_block_table_entry_outside_the_pool_stops_with_bad_block(small_config, int_model,
                                                                   entry):
    """The runtime marks an evicted block -1 (``accel.kv_blocks.EVICTED``); the pool has
    ``pool_blocks`` blocks. A walk that meets either stops at that KV instruction (the
    RTL's cases are in tests/rtl/test_accelerator.py)."""
    from accel.kv_blocks import EVICTED

    build = _tiny_build(small_config, int_model)
    region = build.mmap["block_table"]
    n_blocks = region.size // 4
    dram = build.image.data.copy()
    dram[region.offset:region.offset + 4] = np.array(
        [EVICTED if entry == "evicted" else n_blocks], "<i4").view(np.uint8)
    program = build.programs[0].instrs
    with pytest.raises(AcceleratorError, match="BAD_BLOCK") as info:
        IsaSimulator(build.hw, dram).run(program)
    assert info.value.code == ErrorCode.BAD_BLOCK
    assert program[info.value.index].mnemonic in ("KV_APPEND", "KV_PREFETCH")
    assert program[info.value.index].pool_blocks == n_blocks
    IsaSimulator(build.hw, build.image.data).run(program)      # the table as compiled runs


def test_l2_too_small_and_prompt_too_long_are_refused(small_config, int_model):
    cfg = small_config()
    im = int_model(cfg)
    tiny_l2 = load_hardware("edge-4x4").replace(l2_bytes=4096, l2_banks=4, l2_port_bytes=8)
    with pytest.raises(CompileError, match="L2 too small for the smallest legal tiling"):
        compile_generation(cfg, im.qm, tiny_l2, [1, 2, 3], 2)
    with pytest.raises(CompileError, match="longer than the model's context of 48"):
        compile_generation(cfg, im.qm, load_hardware("edge-8x8"), [1] * 40, 10)


def test_tiny_bpe_is_bit_exact(tiny_bpe):
    """Rung 2 on the second trained model: a BPE prompt, multi-query attention, a tied
    head over 2,048 tokens."""
    loaded, im = tiny_bpe
    prompt = loaded.tokenizer.encode("ROMEO: What say you")
    build = compile_generation(im.cfg, im.qm, load_hardware("edge-4x4"), prompt, 4)
    verdict = compare(run_build(build), reference_generation(im, prompt, 4))
    assert verdict["bit_exact"] and verdict["tokens_compared"] == 4, verdict


@pytest.mark.parametrize(("fields", "message"), [
    (dict(w_layout=1, k=64), "MXINT4 weights must be in the NK layout"),
    (dict(w_layout=0, k=8224), "reduction k = 8224 exceeds MX_MAX_K = 8192"),
])
def test_mxint4_matmuls_the_isa_refuses(fields, message):
    """The ISA's refusals of an MXINT4 MATMUL (``BAD_OPERAND``): KN weights, and a
    reduction past ``MX_MAX_K``, whose int32 sum would not be exact."""
    from compiler.semantics import accesses, check

    hw = load_hardware("edge-8x8")
    instr = make("MATMUL", mode=1, accumulate=0, x_addr=0, w_addr=16384, out_addr=32768, m=1,
                 n=4, x_stride=fields["k"], w_stride=4, out_stride=16, w_format=1,
                 e_addr=49152, **fields)
    with pytest.raises(AcceleratorError, match=message) as err:
        check(instr, hw, accesses(instr, hw), dram_bytes=1 << 20, index=0)
    assert err.value.code == ErrorCode.BAD_OPERAND
