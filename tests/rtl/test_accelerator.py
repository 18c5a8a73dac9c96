"""The assembled accelerator under cocotb + Verilator, bit-exact against the ISA simulator.

The Verilator model is built once per hardware configuration (``rtl.sim.build_model``
caches it) and reused by every test here. The bench loads DRAM, starts each program and
awaits completion; it does not step the accelerator from Python.
"""

import numpy as np
import pytest

from arch.hardware import load_hardware
from arch.isa import INSTR_BYTES, Engine, ErrorCode, MatmulMode, make
from compiler.backend import Code
from compiler.image import DramImage, MemoryMap, block_table
from compiler.isasim import IsaSimulator
from compiler.schedule import schedule
from rtl.common import RtlParams
from rtl.sim import build_model, run_job

pytestmark = pytest.mark.slow

DRAM_BYTES = 1 << 20


@pytest.fixture(scope="module")
def model():
    hw = load_hardware("edge-8x8").replace(l2_bytes=64 * 1024)
    return build_model(RtlParams(hw, DRAM_BYTES))


def random_compute(rng, hw):
    """A random compute instruction on L2 bytes (operands need no parameter words)."""
    l2 = hw.l2_bytes

    def place(rows, row_bytes, stride=None):
        stride = stride or row_bytes + int(rng.integers(0, 24))
        return int(rng.integers(0, l2 - rows * stride)), stride

    kind = rng.integers(0, 5)
    if kind == 0:
        gemv = bool(rng.integers(0, 2))
        m = int(rng.integers(1, 6 * hw.array_rows))
        k, n, kn = int(rng.integers(1, 300)), int(rng.integers(1, 40)), int(rng.integers(0, 2))
        x_addr, x_stride = place(m, k)
        w_addr, w_stride = place(k, n) if kn else place(n, k)
        out_addr, out_stride = place(m, 4 * n)
        return make("MATMUL", mode=int(gemv), accumulate=int(rng.integers(0, 2)), w_layout=kn,
                    x_addr=x_addr, w_addr=w_addr, out_addr=out_addr, m=m, k=k, n=n,
                    x_stride=x_stride, w_stride=w_stride, out_stride=out_stride)
    rows, cols = int(rng.integers(1, 5)), int(rng.integers(1, 90))
    if kind == 1:
        src, src_stride = place(rows, 2 * cols)
        dst, dst_stride = place(rows, cols)
        return make("RMSNORM", src_addr=src, dst_addr=dst, rows=rows, cols=cols,
                    src_stride=src_stride, dst_stride=dst_stride, mult=20000, shift=20, eps=5)
    if kind == 2:
        cols = max(cols, rows)
        src, src_stride = place(rows, 4 * cols)
        dst, dst_stride = place(rows, cols)
        return make("SOFTMAX", src_addr=src, dst_addr=dst, rows=rows, cols=cols,
                    q_pos0=int(rng.integers(0, cols - rows + 1)), src_stride=src_stride,
                    dst_stride=dst_stride, mult=24000, shift=30)
    if kind == 3:
        heads, head_dim = int(rng.integers(1, 4)), 2 * int(rng.integers(1, 20))
        src, stride = place(rows, heads * head_dim)
        return make("ROPE", src_addr=src, dst_addr=src, rows=rows, heads=heads,
                    head_dim=head_dim, pos0=int(rng.integers(0, 1000)),
                    freq_addr=place(1, 2 * head_dim)[0], row_stride=stride)
    return make("ARGMAX", src_addr=place(1, 2 * cols)[0], n=cols, dst_addr=place(1, 4)[0])


def random_dma_program(rng, hw, n_instr=24, compute=False):
    """A DRAM image and a random program over it (DMA, and compute instructions when
    ``compute``), with dependency tokens from the compiler's scheduler."""
    mmap = MemoryMap()
    mmap.add("src", 64 * 1024)
    mmap.add("table", 4 * 64)
    mmap.start_writable()
    mmap.add("block_table", 4 * 16)
    mmap.add("pool", 16 * hw.kv_block_tokens * 64)
    mmap.add("dst", 64 * 1024)
    mmap.add("program", INSTR_BYTES * (4 * n_instr + 2))
    image = DramImage(mmap)
    image.write("src", rng.integers(0, 256, 64 * 1024, dtype=np.uint8))
    image.write("table", rng.integers(0, 300, 64).astype("<i4"))
    image.write("block_table", block_table(16, seed=3), keep=True)
    image.write("pool", rng.integers(0, 256, mmap["pool"].size, dtype=np.uint8))
    src, dst, pool = mmap["src"].offset, mmap["dst"].offset, mmap["pool"]
    instrs = []
    l2 = hw.l2_bytes
    for _ in range(n_instr):
        kind = rng.integers(0, 10 if compute else 5)
        if kind >= 5:
            instrs.append(random_compute(rng, hw))
            continue
        rows, row_bytes = int(rng.integers(1, 9)), int(rng.integers(1, 300))
        l2_stride = row_bytes + int(rng.integers(0, 40))
        l2_addr = int(rng.integers(0, l2 - rows * l2_stride))
        if kind == 0:
            instrs.append(make("DMA_LOAD", dram_addr=src + int(rng.integers(0, 30000)),
                               l2_addr=l2_addr, rows=rows, row_bytes=row_bytes,
                               dram_stride=row_bytes + int(rng.integers(0, 100)),
                               l2_stride=l2_stride))
        elif kind == 1:
            instrs.append(make("DMA_STORE", l2_addr=l2_addr,
                               dram_addr=dst + int(rng.integers(0, 30000)), rows=rows,
                               row_bytes=row_bytes, l2_stride=l2_stride,
                               dram_stride=row_bytes + int(rng.integers(0, 100))))
        elif kind == 2:
            instrs.append(make("DMA_GATHER", idx_addr=mmap["table"].offset + 4 * int(
                rng.integers(0, 56)), table_addr=src, count=rows, row_bytes=row_bytes,
                l2_addr=l2_addr, l2_stride=l2_stride))
        elif kind == 3:
            first, n = int(rng.integers(0, 100)), int(rng.integers(1, 60))
            col = int(rng.integers(0, 4)) * 16
            instrs.append(make("KV_PREFETCH", pool_addr=pool.offset,
                               table_addr=mmap["block_table"].offset, first_token=first,
                               n_tokens=n, row_bytes=64, col_offset=col, col_bytes=16,
                               l2_addr=int(rng.integers(0, l2 - n * 16))))
        else:
            first, n = int(rng.integers(0, 100)), int(rng.integers(1, 30))
            instrs.append(make("KV_APPEND", l2_addr=int(rng.integers(0, l2 - n * 64)),
                               pool_addr=pool.offset, table_addr=mmap["block_table"].offset,
                               first_token=first, n_tokens=n, row_bytes=64))
    instrs.append(make("HALT"))
    program = schedule(Code(instrs), hw, image, prefetch=True)
    from compiler.asm import encode_program

    image.write("program", np.frombuffer(encode_program(program), np.uint8))
    return image, program


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_dma_programs_match_the_isa_simulator(model, seed):
    hw = model.params.hw
    image, program = random_dma_program(np.random.default_rng(seed), hw)
    isa = IsaSimulator(hw, image.data)
    isa.run(program)
    mmap = image.mmap
    writable = (mmap.rw_base, mmap["program"].offset - mmap.rw_base)
    result = run_job(model, image.data, [("p", mmap["program"].offset)],
                     {"writable": writable})
    run = result.programs[0]
    assert run["done"] and not run["error"], run
    np.testing.assert_array_equal(result.reads["writable"],
                                  isa.dram[writable[0]:writable[0] + writable[1]])
    assert run["counters"]["cycles"] > 0
    assert run["counters"]["instructions"] == len(program)


@pytest.mark.parametrize("seed", [10, 11])
def test_random_programs_with_compute_match_the_isa_simulator(model, seed):
    """Every engine at once, tokens from the scheduler: no deadlock, same final DRAM."""
    hw = model.params.hw
    image, program = random_dma_program(np.random.default_rng(seed), hw, 40, compute=True)
    assert sum(i.engine == Engine.COMPUTE for i in program) >= 10
    isa = IsaSimulator(hw, image.data)
    counters = isa.run(program)
    mmap = image.mmap
    writable = (mmap.rw_base, mmap["program"].offset - mmap.rw_base)
    result = run_job(model, image.data, [("p", mmap["program"].offset)],
                     {"writable": writable}, max_cycles=2_000_000)
    run = result.programs[0]
    assert run["done"] and not run["error"], run
    np.testing.assert_array_equal(result.reads["writable"],
                                  isa.dram[writable[0]:writable[0] + writable[1]])
    assert run["counters"]["array_macs"] == counters.values["array_macs"]
    assert run["counters"]["compute_busy"] > 0


def random_matmul(rng, hw, gemv: bool):
    """A MATMUL of random shape (edges that do not divide the array) on L2 bytes."""
    l2 = hw.l2_bytes // 4
    m = int(rng.integers(1, 5 * hw.array_rows))
    k, n, kn = int(rng.integers(1, 300)), int(rng.integers(1, 50)), int(rng.integers(0, 2))
    w_rows, w_bytes = (k, n) if kn else (n, k)
    return make("MATMUL", mode=int(gemv), accumulate=int(rng.integers(0, 2)), w_layout=kn,
                x_addr=int(rng.integers(0, l2 - m * k)), x_stride=k,
                w_addr=l2 + int(rng.integers(0, l2 - w_rows * w_bytes)), w_stride=w_bytes,
                out_addr=2 * l2 + int(rng.integers(0, l2 - 4 * m * n)), out_stride=4 * n,
                m=m, k=k, n=n)


@pytest.mark.parametrize("seed", [20, 21])
def test_performance_model_times_random_matmul_programs(model, seed):
    """Random GEMM and GEMV programs, with weight loads between them and tokens from the
    scheduler: the performance model's cycles within 5% of the RTL's."""
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


@pytest.mark.parametrize(("bad", "code"), [
    (dict(mnemonic="DMA_LOAD", dram_addr=0, l2_addr=64 * 1024 - 8, rows=1, row_bytes=64,
          dram_stride=64, l2_stride=64), ErrorCode.L2_OUT_OF_RANGE),
    (dict(mnemonic="DMA_STORE", l2_addr=0, dram_addr=DRAM_BYTES - 8, rows=1, row_bytes=64,
          l2_stride=64, dram_stride=64), ErrorCode.DRAM_OUT_OF_RANGE),
    (dict(mnemonic="DMA_LOAD", dram_addr=0, l2_addr=0, rows=4, row_bytes=64, dram_stride=64,
          l2_stride=32), ErrorCode.BAD_OPERAND),
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
    image = DramImage(mmap)
    image.write("program", np.frombuffer(encode_program(program), np.uint8))
    dram = np.concatenate([image.data, np.zeros(DRAM_BYTES - image.data.size, np.uint8)])
    with pytest.raises(AcceleratorError) as info:
        IsaSimulator(hw, dram, check_races=False).run(program)
    assert info.value.code == code and info.value.index == 1
    run = run_job(model, image.data, [("p", 0)], {}, max_cycles=100_000).programs[0]
    assert run["error"] and run["error_code"] == int(code) and run["error_index"] == 1


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
