"""The assembled accelerator under cocotb + Verilator, bit-exact against the ISA simulator.

The Verilator model is built once per hardware configuration (``rtl.sim.build_model``
caches it) and reused by every test here. The bench loads DRAM, starts each program and
awaits completion; it does not step the accelerator from Python.
"""

import itertools

import numpy as np
import pytest

from arch.hardware import load_hardware
from arch.isa import (
    INSTR_BYTES,
    KV_FREE,
    KV_SHARED,
    Engine,
    ErrorCode,
    KvFormat,
    MatmulMode,
    kv_map_pack,
    make,
)
from arch.uarch import KV_MAP_BLOCKS
from compiler.backend import Code
from compiler.image import DramImage, MemoryMap
from compiler.isasim import IsaSimulator
from compiler.pipeline import schedule
from models.numerics import mx_blocks
from rtl.common import RtlParams
from rtl.random_programs import (
    DRAM_BYTES,
    chunked_prefetch_programs,
    compressed_kv_program,
    random_dma_program,
    run_random_programs,
)
from rtl.sim import build_model, run_job

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def model():
    hw = load_hardware("edge-8x8").replace(l2_bytes=64 * 1024)
    return build_model(RtlParams(hw, DRAM_BYTES))


def assert_same_memories(result, isa):
    """The whole simulated DRAM (beyond the image it must stay zero) and the whole L2
    of the RTL after a job, against the ISA simulator's."""
    dram = np.zeros(DRAM_BYTES, np.uint8)
    dram[:isa.dram.size] = isa.dram
    for name, rtl, ref in (("DRAM", result.reads["dram"], dram), ("L2", result.l2, isa.l2)):
        assert rtl.size == ref.size, (name, rtl.size, ref.size)
        differ = np.flatnonzero(rtl != ref)
        assert differ.size == 0, f"{name}: {differ.size} bytes differ, first at {differ[:8]}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_dma_programs_match_the_isa_simulator(model, seed):
    hw = model.params.hw
    image, program = random_dma_program(np.random.default_rng(seed), hw)
    isa = IsaSimulator(hw, image.data)
    isa.run(program)
    result = run_job(model, image.data, [("p", image.mmap["program"].offset)],
                     {"dram": (0, DRAM_BYTES)})
    run = result.programs[0]
    assert run["done"] and not run["error"], run
    assert_same_memories(result, isa)
    assert not np.array_equal(isa.l2, np.zeros_like(isa.l2))
    assert run["counters"]["cycles"] > 0
    assert run["counters"]["instructions"] == len(program)


@pytest.mark.parametrize("seed", [11, 12])
def test_random_programs_with_compute_match_the_isa_simulator(model, seed):
    """Every engine at once, tokens from the scheduler: no deadlock, the same DRAM and
    L2 at the end."""
    hw = model.params.hw
    image, program = random_dma_program(np.random.default_rng(seed), hw, 40, compute=True)
    assert sum(i.engine == Engine.COMPUTE for i in program) >= 10
    assert any(i.mnemonic == "MATMUL" and i.w_format for i in program)     # MXINT4 too
    isa = IsaSimulator(hw, image.data)
    counters = isa.run(program)
    result = run_job(model, image.data, [("p", image.mmap["program"].offset)],
                     {"dram": (0, DRAM_BYTES)}, max_cycles=2_000_000)
    run = result.programs[0]
    assert run["done"] and not run["error"], run
    assert_same_memories(result, isa)
    assert run["counters"]["array_macs"] == counters.values["array_macs"]
    assert run["counters"]["compute_busy"] > 0


@pytest.mark.parametrize("seed", [30, 31, 32, 33])
def test_random_legal_programs_with_random_tokens_never_deadlock(model, seed):
    """Eight random programs a job, four jobs (``benchmarks/fuzz_programs.py`` runs
    thousands): each finishes (no deadlock) with the ISA simulator's instruction count
    and MACs, and the whole DRAM and L2 are the same at the end."""
    result, isa, counted = run_random_programs(model, seed)
    assert len(result.programs) == len(counted)
    for run, (program, counters) in zip(result.programs, counted, strict=True):
        assert run["done"] and not run["error"] and not run["timed_out"], run
        assert run["counters"]["instructions"] == counters["instructions"] == len(program)
        assert run["counters"]["array_macs"] == counters["array_macs"]
    assert sum(len(p) for p, _ in counted) > 200
    assert_same_memories(result, isa)


def random_matmul(rng, hw, gemv: bool):
    """A MATMUL of random shape (edges that do not divide the array) on L2 bytes, its
    weights int8 (NK or KN) or MXINT4 (NK; the exponents after the weights)."""
    l2 = hw.l2_bytes // 4
    m = int(rng.integers(1, 5 * hw.array_rows))
    k, n, kn = int(rng.integers(1, 300)), int(rng.integers(1, 50)), int(rng.integers(0, 2))
    mx = not kn and bool(rng.integers(0, 2))
    w_rows, w_bytes = (k, n) if kn else (n, (k + 1) // 2 if mx else k)
    e_bytes = n * mx_blocks(k) if mx else 0
    w_addr = l2 + int(rng.integers(0, l2 - w_rows * w_bytes - e_bytes))
    return make("MATMUL", mode=int(gemv), accumulate=int(rng.integers(0, 2)), w_layout=kn,
                w_format=int(mx), e_addr=w_addr + w_rows * w_bytes if mx else 0,
                x_addr=int(rng.integers(0, l2 - m * k)), x_stride=k,
                w_addr=w_addr, w_stride=w_bytes,
                out_addr=2 * l2 + int(rng.integers(0, l2 - 4 * m * n)), out_stride=4 * n,
                m=m, k=k, n=n)


@pytest.mark.parametrize("seed", [20, 21])
def test_performance_model_times_random_matmul_programs(model, seed):
    """Random GEMM and GEMV programs (int8 and MXINT4 weights), with weight loads between
    them and tokens from the scheduler: the performance model's cycles within 5% of the
    RTL's."""
    from compiler.asm import encode_program
    from sweeps.perf import time_program

    hw = model.params.hw
    rng = np.random.default_rng(seed)
    mmap = MemoryMap()
    mmap.add("src", 64 * 1024)
    image = DramImage(mmap)
    image.write("src", rng.integers(0, 256, 64 * 1024, dtype=np.uint8))
    programs, entries, raw = [], [], bytearray()
    base = image.mmap["src"].end
    for p in range(6):
        instrs = []
        for _ in range(4):
            rows, row_bytes = int(rng.integers(1, 64)), int(rng.integers(16, 600))
            instrs.append(make("DMA_LOAD", dram_addr=int(rng.integers(0, 30000)),
                               l2_addr=hw.l2_bytes // 4 + int(rng.integers(0, 1000)),
                               rows=rows, row_bytes=row_bytes, dram_stride=row_bytes,
                               l2_stride=row_bytes))
            instrs.append(random_matmul(rng, hw, gemv=p % 2 == 0))
        program = schedule(Code(instrs + [make("HALT")]), hw, image, prefetch=True)
        programs.append(program)
        entries.append((f"p{p}", base + len(raw)))
        raw += encode_program(program)
    assert {i.w_format for p in programs for i in p if i.mnemonic == "MATMUL"} == {0, 1}
    dram = np.zeros(DRAM_BYTES, np.uint8)
    dram[:image.data.size] = image.data
    dram[base:base + len(raw)] = np.frombuffer(bytes(raw), np.uint8)
    result = run_job(model, dram, entries, {}, max_cycles=5_000_000)
    for program, run in zip(programs, result.programs, strict=True):
        assert run["done"], run
        rtl, perf = run["counters"]["cycles"], time_program(program, hw).cycles
        assert abs(perf - rtl) <= 0.05 * rtl, (run["name"], perf, rtl)


def test_invalid_instruction_stops_in_the_error_state(model):
    hw = model.params.hw
    mmap = MemoryMap()
    mmap.add("program", 4 * INSTR_BYTES)
    image = DramImage(mmap)
    good = make("DMA_LOAD", dram_addr=0, l2_addr=0, rows=1, row_bytes=4, dram_stride=4,
                l2_stride=4)
    from compiler.asm import encode

    raw = encode(good) + bytes([0x3F]) + bytes(31) + encode(make("HALT"))
    image.write("program", np.frombuffer(raw, np.uint8))
    result = run_job(model, image.data, [("p", 0)], {}, max_cycles=100_000)
    run = result.programs[0]
    assert run["error"] and not run["done"]
    assert run["error_code"] == int(ErrorCode.INVALID_OPCODE) and run["error_index"] == 1
    del hw


TABLE = 128          # a block table after the three-instruction program


@pytest.mark.parametrize(("bad", "code"), [
    (dict(mnemonic="DMA_LOAD", dram_addr=0, l2_addr=64 * 1024 - 8, rows=1, row_bytes=64,
          dram_stride=64, l2_stride=64), ErrorCode.L2_OUT_OF_RANGE),
    (dict(mnemonic="DMA_STORE", l2_addr=0, dram_addr=DRAM_BYTES - 8, rows=1, row_bytes=64,
          l2_stride=64, dram_stride=64), ErrorCode.DRAM_OUT_OF_RANGE),
    (dict(mnemonic="DMA_LOAD", dram_addr=0, l2_addr=0, rows=4, row_bytes=64, dram_stride=64,
          l2_stride=32), ErrorCode.BAD_OPERAND),
    # compute operands: an output past the L2's end, overlapping written rows
    (dict(mnemonic="MATMUL", mode=0, accumulate=0, w_layout=0, x_addr=0, w_addr=1024,
          w_format=0, e_addr=0,
          out_addr=64 * 1024 - 200, m=4, k=16, n=16, x_stride=16, w_stride=16,
          out_stride=64), ErrorCode.L2_OUT_OF_RANGE),
    (dict(mnemonic="REQUANT", out_bits=0, params=0, has_bias=0, src_addr=0,
          dst_addr=4096, param_addr=2048, bias_addr=0, rows=3, cols=32, src_stride=128,
          dst_stride=16), ErrorCode.BAD_OPERAND),
    # a REQUANT parameter mode that is not one; SOFTMAX's row words over its probabilities
    (dict(mnemonic="REQUANT", out_bits=0, params=3, has_bias=0, src_addr=0, dst_addr=4096,
          param_addr=2048, bias_addr=0, rows=1, cols=32, src_stride=128, dst_stride=32),
     ErrorCode.BAD_OPERAND),
    (dict(mnemonic="SOFTMAX", src_addr=0, dst_addr=4096, rows=2, cols=16, q_pos0=14,
          src_stride=64, dst_stride=16, mult=20000, shift=20, scale_addr=4100, out_mult=20000,
          out_shift=10), ErrorCode.BAD_OPERAND),
    # misaligned int32 reads and counter blocks (arch.isa.operand_faults)
    (dict(mnemonic="STORE_COUNTERS", dram_addr=4), ErrorCode.BAD_OPERAND),
    (dict(mnemonic="DMA_GATHER", idx_addr=2, table_addr=0, count=1, row_bytes=16, l2_addr=0,
          l2_stride=16), ErrorCode.BAD_OPERAND),
    (dict(mnemonic="KV_PREFETCH", pool_addr=0, table_addr=6, first_token=0, n_tokens=1,
          row_bytes=16, col_offset=0, col_bytes=16, l2_addr=0, pool_blocks=4, seq=0, kv_format=0),
     ErrorCode.BAD_OPERAND),
    # block-table entries outside the pool: 2 of a 2-block pool, and an evicted one (-1),
    # met at the walk's second block (TABLE below holds [1, 2] and [0, -1])
    (dict(mnemonic="KV_PREFETCH", pool_addr=4096, table_addr=TABLE, first_token=0,
          n_tokens=20, row_bytes=16, col_offset=0, col_bytes=16, l2_addr=0, pool_blocks=2, seq=0,
          kv_format=0),
     ErrorCode.BAD_BLOCK),
    (dict(mnemonic="KV_APPEND", l2_addr=0, pool_addr=4096, table_addr=TABLE + 8,
          first_token=3, n_tokens=16, row_bytes=16, pool_blocks=2, seq=0), ErrorCode.BAD_BLOCK),
    (dict(mnemonic="KV_APPEND", l2_addr=0, pool_addr=4096, table_addr=TABLE + 8,
          first_token=0, n_tokens=16, row_bytes=16, pool_blocks=0, seq=0), ErrorCode.BAD_BLOCK),
    # two faults: the row met first decides (the L2 overflows at row 1, the bad entry is at
    # row 16; the bad entry is at row 0, the L2 source overflows at row 10)
    (dict(mnemonic="KV_PREFETCH", pool_addr=4096, table_addr=TABLE, first_token=0,
          n_tokens=20, row_bytes=16, col_offset=0, col_bytes=16, l2_addr=64 * 1024 - 16,
          pool_blocks=2, seq=0, kv_format=0), ErrorCode.L2_OUT_OF_RANGE),
    (dict(mnemonic="KV_APPEND", l2_addr=64 * 1024 - 160, pool_addr=4096, table_addr=TABLE + 8,
          first_token=16, n_tokens=12, row_bytes=16, pool_blocks=2, seq=0), ErrorCode.BAD_BLOCK),
    # compressed chunks: a block never compressed (its header bytes zero), part of a
    # block, more columns than the decompressor holds, and an entry outside the pool
    (dict(mnemonic="KV_PREFETCH", pool_addr=4096, table_addr=TABLE, first_token=0,
          n_tokens=16, row_bytes=16, col_offset=0, col_bytes=16, l2_addr=0, pool_blocks=2, seq=0,
          kv_format=KvFormat.CHUNKED), ErrorCode.BAD_CHUNK),
    (dict(mnemonic="KV_PREFETCH", pool_addr=4096, table_addr=TABLE, first_token=8,
          n_tokens=16, row_bytes=16, col_offset=0, col_bytes=16, l2_addr=0, pool_blocks=2, seq=0,
          kv_format=KvFormat.CHUNKED), ErrorCode.BAD_OPERAND),
    (dict(mnemonic="KV_PREFETCH", pool_addr=4096, table_addr=TABLE, first_token=0,
          n_tokens=16, row_bytes=256, col_offset=0, col_bytes=200, l2_addr=0, pool_blocks=2, seq=0,
          kv_format=KvFormat.CHUNKED), ErrorCode.BAD_OPERAND),
    (dict(mnemonic="KV_PREFETCH", pool_addr=4096, table_addr=TABLE + 8, first_token=16,
          n_tokens=16, row_bytes=16, col_offset=0, col_bytes=16, l2_addr=0, pool_blocks=2, seq=0,
          kv_format=KvFormat.CHUNKED), ErrorCode.BAD_BLOCK),
])
def test_engine_faults_match_the_isa_simulator(model, bad, code):
    """The RTL stops with the same error code and instruction index as the ISA simulator."""
    from compiler.asm import encode_program
    from compiler.semantics import AcceleratorError

    hw = model.params.hw.replace(dram_bytes=1 << 20)
    fields = dict(bad)
    instr = make(fields.pop("mnemonic"), **fields)
    good = make("DMA_LOAD", dram_addr=0, l2_addr=0, rows=1, row_bytes=16, dram_stride=16,
                l2_stride=16)
    program = [good, instr, make("HALT")]
    mmap = MemoryMap()
    mmap.add("program", len(program) * INSTR_BYTES)
    assert mmap.add("table", 16).offset == TABLE
    image = DramImage(mmap)
    image.write("program", np.frombuffer(encode_program(program), np.uint8))
    image.write("table", np.array([1, 2, 0, -1], "<i4"))
    dram = np.concatenate([image.data, np.zeros(DRAM_BYTES - image.data.size, np.uint8)])
    with pytest.raises(AcceleratorError) as info:
        IsaSimulator(hw, dram, check_races=False).run(program)
    assert info.value.code == code and info.value.index == 1
    run = run_job(model, image.data, [("p", 0)], {}, max_cycles=100_000).programs[0]
    assert run["error"] and run["error_code"] == int(code) and run["error_index"] == 1


LIVE_TABLE, MAP = 256, 320    # _live_map_image's block table and map, after the program
OWNERS = [KV_FREE, 1, 2, KV_SHARED]     # block 0 free, 1 sequence 0's, 2 sequence 1's, 3 shared


def _live_map_image(program, owners):
    """An image with ``program`` (at most 8 instructions) at 0, the block table
    ``[1, 2, 0, 3]`` at ``LIVE_TABLE`` and the block-owner map of ``owners`` (a code a
    block) at ``MAP``."""
    from compiler.asm import encode_program

    mmap = MemoryMap()
    mmap.add("program", 8 * INSTR_BYTES)
    assert mmap.add("table", 16).offset == LIVE_TABLE
    assert mmap.add("map", 2048).offset == MAP
    image = DramImage(mmap)
    image.write("program", np.frombuffer(encode_program(program), np.uint8))
    image.write("table", np.array([1, 2, 0, 3], "<i4"))
    image.write("map", kv_map_pack(owners))
    return image


def _walk(mnemonic, first, n, seq, **fields):
    """A ``KV_PREFETCH`` or ``KV_APPEND`` through ``LIVE_TABLE`` (16-byte rows)."""
    common = dict(pool_addr=4096, table_addr=LIVE_TABLE, first_token=first, n_tokens=n,
                  row_bytes=16, pool_blocks=4, seq=seq)
    if mnemonic == "KV_PREFETCH":
        common.update(col_offset=0, col_bytes=16, l2_addr=0, kv_format=0)
    else:
        common.update(l2_addr=0)
    return dict(mnemonic=mnemonic, **{**common, **fields})


@pytest.mark.parametrize("live_map, bad, code, index", [
    # sequence 0's walk reaching sequence 1's block (2), a free block (0); sequence 1's
    # reaching sequence 0's (1); the compressed walk as the int8 one
    (dict(map_addr=MAP, map_blocks=4), _walk("KV_PREFETCH", 0, 20, 0), ErrorCode.BAD_BLOCK, 2),
    (dict(map_addr=MAP, map_blocks=4), _walk("KV_APPEND", 32, 16, 0), ErrorCode.BAD_BLOCK, 2),
    (dict(map_addr=MAP, map_blocks=4), _walk("KV_APPEND", 0, 4, 1), ErrorCode.BAD_BLOCK, 2),
    (dict(map_addr=MAP, map_blocks=4),
     _walk("KV_PREFETCH", 16, 16, 0, kv_format=KvFormat.CHUNKED), ErrorCode.BAD_BLOCK, 2),
    # block 1 is sequence 0's but beyond a map of one block
    (dict(map_addr=MAP, map_blocks=1), _walk("KV_APPEND", 0, 4, 0), ErrorCode.BAD_BLOCK, 2),
    # KV_LIVE's own refusals: a misaligned map, more blocks than the controller holds, a
    # map past the DRAM's end
    (dict(map_addr=MAP + 4, map_blocks=4), None, ErrorCode.BAD_OPERAND, 1),
    (dict(map_addr=MAP, map_blocks=KV_MAP_BLOCKS + 1), None, ErrorCode.BAD_OPERAND, 1),
    (dict(map_addr=DRAM_BYTES - 32, map_blocks=33), None, ErrorCode.DRAM_OUT_OF_RANGE, 1),
])
def test_blocks_a_sequence_does_not_hold_stop_as_on_the_isa_simulator(model, live_map, bad,
                                                                      code, index):
    """After a ``KV_LIVE`` whose map has block 0 free, 1 sequence 0's, 2 sequence 1's and 3
    shared, a walk naming a block its sequence does not hold (free, another's, or beyond
    the map) stops with BAD_BLOCK, and a ``KV_LIVE`` the controller cannot honour with its
    own error, on the RTL as on the ISA simulator: code and index."""
    from compiler.semantics import AcceleratorError

    hw = model.params.hw.replace(dram_bytes=1 << 20)
    good = make("DMA_LOAD", dram_addr=0, l2_addr=0, rows=1, row_bytes=16, dram_stride=16,
                l2_stride=16)
    program = [good, make("KV_LIVE", **live_map)]
    if bad is not None:
        fields = dict(bad)
        program.append(make(fields.pop("mnemonic"), **fields))
    program.append(make("HALT"))
    image = _live_map_image(program, OWNERS)
    dram = np.concatenate([image.data, np.zeros(DRAM_BYTES - image.data.size, np.uint8)])
    with pytest.raises(AcceleratorError) as info:
        IsaSimulator(hw, dram, check_races=False).run(program)
    assert info.value.code == code and info.value.index == index
    run = run_job(model, image.data, [("p", 0)], {}, max_cycles=100_000).programs[0]
    assert run["error"] and run["error_code"] == int(code) and run["error_index"] == index


def test_kv_live_drains_the_engines_and_its_walks_run_on_their_blocks(model):
    """A load, ``KV_LIVE`` (a map of 2,048 blocks: 64 words), a load, sequence 0's prefetch
    and append through its own block and sequence 1's prefetch of the shared block: the
    RTL ends with the ISA simulator's whole DRAM and L2, and its cycles are the
    performance model's within 1% (``MAP_READ_START`` was read off a one-word map alone;
    this program also waits for the first load to end)."""
    from sweeps.perf import time_program

    hw = model.params.hw
    program = [
        make("DMA_LOAD", dram_addr=0, l2_addr=8192, rows=64, row_bytes=256, dram_stride=256,
             l2_stride=256),
        make("KV_LIVE", map_addr=MAP, map_blocks=2048),
        make("DMA_LOAD", dram_addr=16384, l2_addr=8192, rows=64, row_bytes=256,
             dram_stride=256, l2_stride=256),
        make(**_walk("KV_PREFETCH", 0, 16, 0, signal=1 << int(Engine.STORE))),
        make(**_walk("KV_PREFETCH", 48, 16, 1, l2_addr=1024)),
        make(**_walk("KV_APPEND", 2, 3, 0, l2_addr=4096, wait=1 << int(Engine.LOAD))),
        make("HALT")]
    owners = np.zeros(2048, np.uint8)
    owners[:4], owners[2047] = OWNERS, 1
    image = _live_map_image(program, owners)
    rng = np.random.default_rng(3)
    image.data = np.concatenate([image.data, rng.integers(0, 256, 64 * 1024, np.uint8)])
    isa = IsaSimulator(hw, image.data)
    isa.run(program)
    result = run_job(model, image.data, [("p", 0)], {"dram": (0, DRAM_BYTES)})
    run = result.programs[0]
    assert run["done"] and not run["error"], run
    assert_same_memories(result, isa)
    cycles = time_program(program, hw, isa.read_i32).cycles
    assert abs(cycles - run["counters"]["cycles"]) / run["counters"]["cycles"] < 0.01, \
        (cycles, run["counters"]["cycles"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunked_prefetches_match_the_isa_simulator(model, seed):
    """Compressed KV chunks (``KV_PREFETCH`` in ``CHUNKED`` format) of random head sizes
    and widths through a random block table, between int8 prefetches and loads
    (``random_programs.compressed_kv_program``): the decompressor writes the ISA
    simulator's rows, the whole DRAM and L2 equal at the end."""
    hw = model.params.hw
    dram, program = compressed_kv_program(np.random.default_rng(seed), hw)
    isa = IsaSimulator(hw, dram)
    counters = isa.run(program)
    result = run_job(model, dram, [("p", 0)], {"dram": (0, DRAM_BYTES)})
    run = result.programs[0]
    assert run["done"] and not run["error"], run
    assert_same_memories(result, isa)
    assert run["counters"]["prefetch_bytes"] == counters.values["prefetch_bytes"] > 0


def test_the_performance_model_times_chunked_prefetches_out_of_sample(model):
    """Random single ``CHUNKED`` prefetches (``chunked_prefetch_programs``, seed 2026: not
    the fitting set of ``Calibration.chunk_start``/``chunk_block``, seed 7, which
    ``benchmarks.kv_chunk_timing`` fits): each program's modelled cycles, from the
    widths in its chunks' headers, within 1% of the RTL's."""
    from sweeps.perf import time_program

    hw = model.params.hw
    dram, programs = chunked_prefetch_programs(np.random.default_rng(2026), hw, 8)
    result = run_job(model, dram, [(name, at) for name, at, _ in programs], {})
    errors = []
    for (name, _, program), run in zip(programs, result.programs, strict=True):
        assert run["done"] and not run["error"], (name, run)
        cycles = time_program(program, hw,
                              lambda a: int(dram[a:a + 4].view("<i4")[0])).cycles
        errors.append((cycles - run["counters"]["cycles"]) / run["counters"]["cycles"])
    assert max(abs(e) for e in errors) < 0.01, errors


@pytest.mark.parametrize("mode", ["GEMM", "GEMV"])
def test_both_dataflows_keep_the_array_busy(model, mode):
    """One MATMUL of 64 x 256 x 64 on edge-8x8 (operands in L2): the compute engine is busy
    for it alone, and over 90% of those cycles every PE multiplies, in both dataflows
    (GEMM: each weight block streams every row of a tile while the next block preloads;
    GEMV: a fresh weight block per row from the tile buffers)."""
    from compiler.asm import encode_program

    hw = model.params.hw
    m, k, n = 64, 256, 64
    program = [make("MATMUL", mode=int(MatmulMode[mode]), accumulate=0, w_layout=0,
                    w_format=0, e_addr=0,
                    x_addr=0, w_addr=m * k, out_addr=m * k + n * k, m=m, k=k, n=n,
                    x_stride=k, w_stride=k, out_stride=4 * n), make("HALT")]
    mmap = MemoryMap()
    mmap.add("program", len(program) * INSTR_BYTES)
    image = DramImage(mmap)
    image.write("program", np.frombuffer(encode_program(program), np.uint8))
    run = run_job(model, image.data, [("p", 0)], {}, max_cycles=1_000_000).programs[0]
    assert run["done"], run
    counters = run["counters"]
    assert counters["array_macs"] == m * k * n
    assert m * k * n / (counters["compute_busy"] * hw.pes) >= 0.90, counters["compute_busy"]



def test_python_simulation_of_a_128_byte_line(tmp_path):
    """``python -m benchmarks.dram_queue --hw FILE`` in Amaranth's Python simulator on the
    widest line the presets have (128 bytes, edge-32x32's) with 64 vector lanes, on a
    4x4 array: the whole accelerator elaborates and runs. Its sums over a line's bytes
    once nested past Python's default recursion limit on edge-32x32, a
    ``RecursionError``; they are balanced trees since (``rtl.common.tree_sum``), and the
    benchmark raises the limit while it simulates. (edge-32x32's own array, 32 L2 banks
    and 64 lanes took three times as long here; this test is for the line.)"""
    import json
    import subprocess
    import sys
    from pathlib import Path

    hw = load_hardware("edge-4x4").replace(name="edge-4x4-line-128", dram_bytes_per_cycle=100,
                                           l2_port_bytes=32, vector_lanes=64)
    assert hw.line_bytes == load_hardware("edge-32x32").line_bytes == 128
    (tmp_path / "hw.toml").write_text(hw.to_toml())
    out = subprocess.run([sys.executable, "-m", "benchmarks.dram_queue", "--hw",
                          str(tmp_path / "hw.toml"), "--cycles", "4", "--window", "2"],
                         capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["window"] for r in rows if "window" in r] == [[0, 2], [2, 4]]
    assert {r["hw"] for r in rows} == {"edge-4x4-line-128"}


def test_table_walks_alone_take_the_rtls_cycles(model):
    """A ``KV_PREFETCH`` over four KV blocks, a ``KV_APPEND`` over three and a five-row
    ``DMA_GATHER``, each alone: the model's cycles within 3 of the RTL's. Each block-table
    entry or index is an int32 read on the engine's aux port, ``Calibration.int_read``
    (3) cycles beyond the DRAM's latency; at 5, its value before, they were 8, 7 and 9
    cycles long. And prefetches over five blocks of 8, 16 and 24 of each 64-byte row's
    bytes (at offsets 0 and 40), whose one-line rows the copier writes slower than the
    DRAM delivers them, so that each table read's int32 comes back behind the lines of
    the block before (``arch.occupancy._answer_behind``): exact (the rule was read off
    edge-4x4; without it up to 19 cycles short here, and a cycle long with the L2 wait
    ``sweeps.perf`` charged an unheld prefetch before)."""
    from accel.runtime import image_with_programs
    from sweeps.perf import time_program

    hw = model.params.hw
    B = hw.kv_block_tokens
    walks = {
        "prefetch": make("KV_PREFETCH", pool_addr=1 << 16, table_addr=1 << 15, first_token=0,
                         n_tokens=3 * B + 5, row_bytes=128, col_offset=0, col_bytes=32,
                         l2_addr=16 << 10, pool_blocks=16, seq=0, kv_format=0),
        "append": make("KV_APPEND", l2_addr=16 << 10, pool_addr=1 << 16, table_addr=1 << 15,
                       first_token=5, n_tokens=2 * B + 3, row_bytes=64, pool_blocks=16, seq=0),
        "gather": make("DMA_GATHER", idx_addr=1 << 15, table_addr=1 << 16, count=5,
                       row_bytes=100, l2_addr=16 << 10, l2_stride=100)}
    narrow = {f"prefetch {cols} of 64 at {offset}": make(
        "KV_PREFETCH", pool_addr=1 << 16, table_addr=1 << 15, first_token=0,
        n_tokens=4 * B + 16, row_bytes=64, col_offset=offset, col_bytes=cols,
        l2_addr=48 << 10, pool_blocks=16, seq=0, kv_format=0)
        for cols, offset in ((8, 0), (16, 0), (24, 0), (24, 40))}
    walks.update(narrow)
    image = np.zeros(1 << 18, np.uint8)
    image[1 << 15:(1 << 15) + 64] = np.arange(16, dtype="<i4").view(np.uint8)  # table 0..15
    data, entries = image_with_programs(image, {k: [w] for k, w in walks.items()})
    result = run_job(model, data, entries, {})
    for (name, walk), run in zip(walks.items(), result.programs, strict=True):
        assert run["done"] and not run["error"], (name, run)
        cycles = time_program([walk, make("HALT")], hw,
                              lambda a: int(data[a:a + 4].view("<i4")[0])).cycles
        bound = 0 if name in narrow else 3
        assert abs(cycles - run["counters"]["cycles"]) <= bound, (name, cycles, run["counters"])


def test_a_misaligned_rows_shifter_step_waits_for_data_only_where_it_reads_the_row(model):
    """One-row ``DMA_LOAD``s and ``DMA_STORE``s alone, source and destination 0, 8 or 20
    bytes into their lines, rows of 40, 64, 1,000 and 4,084 bytes: the model's busy
    cycles are the RTL's on every one of the 72. Misaligned, the copier's shifter takes
    a step that writes nothing; where the source starts earlier in its line than the
    destination, it takes the line before the row, which needs no data, while the data
    is on its way (``arch.occupancy._shifter_steps``; charged a step after the data
    like the rest, 12 of each engine's 36 were a cycle long)."""
    from accel.runtime import image_with_programs
    from sweeps.perf import time_program

    hw = model.params.hw
    programs = {}
    for nbytes in (40, 64, 1000, 4084):
        for s, d in itertools.product((0, 8, 20), repeat=2):
            programs[f"load {nbytes} {s} {d}"] = make(
                "DMA_LOAD", dram_addr=(1 << 17) + s, l2_addr=(8 << 10) + d, rows=1,
                row_bytes=nbytes, dram_stride=nbytes, l2_stride=nbytes)
            programs[f"store {nbytes} {s} {d}"] = make(
                "DMA_STORE", l2_addr=(8 << 10) + s, dram_addr=(1 << 17) + d, rows=1,
                row_bytes=nbytes, l2_stride=nbytes, dram_stride=nbytes)
    data, entries = image_with_programs(np.zeros(1 << 18, np.uint8),
                                        {k: [p] for k, p in programs.items()})
    result = run_job(model, data, entries, {})
    for (name, instr), run in zip(programs.items(), result.programs, strict=True):
        assert run["done"] and not run["error"], (name, run)
        engine = name.split()[0]
        busy = time_program([instr, make("HALT")], hw).busy[engine]
        assert busy == run["counters"][f"{engine}_busy"], (name, busy, run["counters"])
