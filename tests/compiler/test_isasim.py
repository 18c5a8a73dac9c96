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


# -- compressed KV chunks (KV_PREFETCH kv_format = CHUNKED) ---------------------------------

def test_a_chunk_packs_and_unpacks_to_its_dequantised_rows():
    """``kv_chunk_pack`` then ``kv_chunk_unpack`` gives every channel's ``code << shift``,
    for random widths, shifts and codes; the header carries each channel's width and
    shift and marks the first channel."""
    from arch.isa import kv_chunk_fault, kv_chunk_header, kv_chunk_pack, kv_chunk_unpack

    rng = np.random.default_rng(3)
    for B in (4, 16, 32):
        H = int(rng.integers(1, 40))
        bits = rng.choice([2, 4, 8], H)
        shift = np.array([rng.integers(0, 9 - b) for b in bits])
        codes = np.array([rng.integers(-(1 << (b - 1)), 1 << (b - 1), B) for b in bits])
        header = kv_chunk_header(bits, shift)
        assert kv_chunk_fault(header) is None
        data = kv_chunk_pack(codes, bits)
        assert data.size == sum(B * b // 8 for b in bits)
        rows = kv_chunk_unpack(header, data, B)
        assert rows.dtype == np.int8 and rows.shape == (B, H)
        np.testing.assert_array_equal(rows.astype(np.int64), (codes << shift[:, None]).T)
    with pytest.raises(ValueError, match="widths must be in"):
        kv_chunk_header([3], [0])
    with pytest.raises(ValueError, match="shift must be in"):
        kv_chunk_header([4], [5])


def _chunked_dram(hw, rng, heads=2, head_dim=16, pool_blocks=3):
    """A K pool of ``pool_blocks`` blocks (``heads`` x ``head_dim`` channels) whose blocks
    0 and 2 are stored compressed, a block table ``[2, 0]`` and room for the L2's rows:
    ``(dram, pool_addr, table_addr, expected int8 rows [2 B, kv_dim])``."""
    from arch.isa import kv_chunk_addrs, kv_chunk_header, kv_chunk_pack, kv_header_area_bytes
    from models import numerics as N

    B, kv_dim = hw.kv_block_tokens, heads * head_dim
    pool_addr, table_addr = 4096, 64
    dram = np.zeros(pool_addr + pool_blocks * B * kv_dim
                    + kv_header_area_bytes(pool_blocks, kv_dim) + 4096, np.uint8)
    dram[table_addr:table_addr + 8] = np.array([2, 0], "<i4").view(np.uint8)
    rows = {}
    for block in (0, 2):
        x = rng.integers(-128, 128, (B, kv_dim)).astype(np.int8)
        x[:, :head_dim] //= 16                # a head of small values: fewer bits
        out = np.zeros_like(x)
        for h in range(heads):
            group = x[:, h * head_dim:(h + 1) * head_dim].T                  # [H, B]
            bits, shift, deq = N.kv_chunk_compress(group, (2, 4, 8), 16 << 16)
            codes = deq.astype(np.int64) >> shift[:, None]
            codes_at, header_at = kv_chunk_addrs(pool_addr, pool_blocks, block, B, kv_dim,
                                                 h * head_dim)
            packed = kv_chunk_pack(codes, bits)
            dram[codes_at:codes_at + packed.size] = packed
            dram[header_at:header_at + head_dim] = kv_chunk_header(bits, shift)
            out[:, h * head_dim:(h + 1) * head_dim] = deq.T
        rows[block] = out
    return dram, pool_addr, table_addr, np.concatenate([rows[2], rows[0]])


def _chunked_prefetch(pool_addr, table_addr, first, n, col_offset, col_bytes, kv_dim=32,
                      pool_blocks=3):
    from arch.isa import KvFormat

    return make("KV_PREFETCH", pool_addr=pool_addr, table_addr=table_addr, first_token=first,
                n_tokens=n, row_bytes=kv_dim, col_offset=col_offset, col_bytes=col_bytes,
                l2_addr=256, pool_blocks=pool_blocks, seq=0, kv_format=KvFormat.CHUNKED)


def test_a_chunked_prefetch_expands_each_block_into_int8_rows():
    """Two blocks through the table, each head's chunk read from its header and codes:
    the L2 holds the dequantised rows; DRAM reads count the header and code bytes."""
    hw = load_hardware("edge-8x8")
    B = hw.kv_block_tokens
    dram, pool, table, want = _chunked_dram(hw, np.random.default_rng(4))
    for head in (0, 1):
        sim = IsaSimulator(hw, dram)
        sim.run([_chunked_prefetch(pool, table, 0, 2 * B, 16 * head, 16), make("HALT")])
        got = sim.l2[256:256 + 2 * B * 16].view(np.int8).reshape(2 * B, 16)
        np.testing.assert_array_equal(got, want[:, 16 * head:16 * (head + 1)])
        assert sim.counters.values["prefetch_bytes"] == 2 * B * 16
        assert 8 + 2 * 16 < sim.counters.values["dram_read_bytes"] < 8 + 2 * (16 + 16 * B)
    # the second block alone, from token B
    sim = IsaSimulator(hw, dram)
    sim.run([_chunked_prefetch(pool, table, B, B, 16, 16), make("HALT")])
    np.testing.assert_array_equal(sim.l2[256:256 + B * 16].view(np.int8).reshape(B, 16),
                                  want[B:, 16:])


@pytest.mark.parametrize(("first", "n", "col_offset", "col_bytes", "patch", "code"), [
    (1, 16, 0, 16, None, ErrorCode.BAD_OPERAND),           # not whole blocks
    (0, 8, 0, 16, None, ErrorCode.BAD_OPERAND),
    (0, 32, 0, 32, None, ErrorCode.BAD_CHUNK),             # two chunks read as one
    (0, 32, 8, 16, None, ErrorCode.BAD_CHUNK),             # not a chunk's first channel
    (0, 32, 0, 16, "zero", ErrorCode.BAD_CHUNK),           # block 0 never compressed
    (0, 32, 0, 16, "reserved", ErrorCode.BAD_CHUNK),
])
def test_a_chunked_prefetch_of_what_is_not_a_chunk_stops(first, n, col_offset, col_bytes,
                                                         patch, code):
    from arch.isa import kv_chunk_addrs

    hw = load_hardware("edge-8x8")
    dram, pool, table, _ = _chunked_dram(hw, np.random.default_rng(5))
    _, header_at = kv_chunk_addrs(pool, 3, 0, hw.kv_block_tokens, 32, 0)
    if patch == "zero":
        dram[header_at:header_at + 16] = 0
    elif patch == "reserved":
        dram[header_at + 3] |= 0x20
    with pytest.raises(AcceleratorError) as info:
        IsaSimulator(hw, dram).run([_chunked_prefetch(pool, table, first, n, col_offset,
                                                      col_bytes), make("HALT")])
    assert info.value.code == code and info.value.index == 0


@pytest.mark.parametrize("prefetch", [True, False])
def test_compressed_kv_chunks_are_bit_exact_with_the_integer_reference(small_config, int_model,
                                                                       prefetch):
    """A 21-token prompt and 14 new tokens on edge-8x8 (16-token KV blocks): the host
    compresses block 0 after the prefill and block 1 after the decode step that fills it;
    later steps read both with ``KV_PREFETCH`` in ``CHUNKED`` format. Every token, logit
    row and KV row (the full blocks as the device expands them) equals the integer
    reference with the same compression, which differs from the int8 cache's."""
    from arch.isa import KvFormat
    from models.integer import KVCompression

    cfg = small_config()
    im = int_model(cfg)
    hw = load_hardware("edge-8x8")
    kv = KVCompression(chunk_tokens=hw.kv_block_tokens, tolerance=64.0)
    prompt = list(np.random.default_rng(21).integers(0, cfg.vocab_size, 21))
    build = compile_generation(cfg, im.qm, hw, prompt, 14, prefetch=prefetch, kv=kv)
    chunked = {p.name: sum(1 for i in p.instrs if i.mnemonic == "KV_PREFETCH"
                           and i.kv_format == KvFormat.CHUNKED) for p in build.programs}
    assert chunked["prefill"] == 0 and chunked["decode_000"] > 0
    assert [p.compress for p in build.programs if p.compress] == [[(0, 0, 1)], [(0, 1, 2)]]
    result = run_build(build)
    ref = reference_generation(im, prompt, 14, kv)
    verdict = compare(result, ref)
    assert verdict["bit_exact"], verdict
    plain = reference_generation(im, prompt, 14)
    assert not np.array_equal(ref.kv["k"][:, :32], plain.kv["k"][:, :32])
