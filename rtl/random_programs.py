"""Random legal programs for the accelerator: the random-program tests
(tests/rtl/test_accelerator.py) and the fuzzing benchmark (benchmarks/fuzz_programs.py).

Contract
--------
``random_dma_program(rng, hw, ...)`` builds a DRAM image and random programs over it: DMA
loads, stores, gathers, KV prefetches and appends, and (``compute=True``) random
``MATMUL``/vector instructions on L2 bytes, with the compiler scheduler's dependency
tokens plus ``extra_tokens`` random orderings (``random_tokens``). Such programs are
legal: race-free and deadlock-free, so the RTL and the ISA simulator must agree on them.
``run_random_programs(model, seed)`` runs a job of them on a Verilator model and on the
ISA simulator. ``held_prefetch_programs``, ``prefetch_beside_programs``,
``filled_l2_programs``, ``store_programs`` and ``chained_prefetch_programs`` are the
fixed contention cases the performance model is checked on
(tests/rtl/test_l2_contention.py, ``benchmarks.rtl_table_walks``,
``benchmarks.rtl_stores``).
``random_vector`` draws vector instructions for the vector unit's timing
(tests/rtl/test_vector_unit.py, ``benchmarks.vector_calibration``).
(Not part of the hardware: excluded from the Verilator model's key.)

Tested by tests/rtl/test_accelerator.py (random legal programs on the RTL against the ISA
simulator).
"""

from __future__ import annotations

import numpy as np

from arch.isa import INSTR_BYTES, Engine, KvFormat, make
from compiler.asm import encode_program
from compiler.backend import Code
from compiler.image import DramImage, MemoryMap, block_table
from compiler.isasim import IsaSimulator
from compiler.pipeline import schedule
from compiler.schedule import dependencies, hoist, insert_tokens, program_accesses
from compiler.semantics import AcceleratorError, accesses, check
from compiler.verify import verify_schedule
from models.numerics import mx_blocks
from rtl.sim import run_job

DRAM_BYTES = 1 << 20


def random_compute(rng, hw):
    """A random legal compute instruction on L2 bytes (operands need no parameter
    words): drawn again until the ISA accepts it (``semantics.check``: no result written
    over an operand it reads, other than exactly in place)."""
    while True:
        instr = _random_compute(rng, hw)
        try:
            check(instr, hw, accesses(instr, hw), dram_bytes=1 << 32)
        except AcceleratorError:
            continue
        return instr


def _random_compute(rng, hw):
    l2 = hw.l2_bytes

    def place(rows, row_bytes, stride=None):
        stride = stride or row_bytes + int(rng.integers(0, 24))
        return int(rng.integers(0, l2 - rows * stride)), stride

    kind = rng.integers(0, 5)
    if kind == 0:
        gemv = bool(rng.integers(0, 2))
        m = int(rng.integers(1, 6 * hw.array_rows))
        k, n, kn = int(rng.integers(1, 300)), int(rng.integers(1, 40)), int(rng.integers(0, 2))
        mx = not kn and bool(rng.integers(0, 2))        # MXINT4 weights: NK, packed
        x_addr, x_stride = place(m, k)
        w_addr, w_stride = place(k, n) if kn else place(n, (k + 1) // 2 if mx else k)
        blocks = mx_blocks(k)
        e_addr, _ = place(n, blocks, blocks) if mx else (0, 0)
        out_addr, out_stride = place(m, 4 * n)
        return make("MATMUL", mode=int(gemv), accumulate=int(rng.integers(0, 2)), w_layout=kn,
                    w_format=int(mx), e_addr=e_addr,
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
                    dst_stride=dst_stride, mult=24000, shift=30,
                    scale_addr=place(rows, 4, 4)[0], out_mult=int(rng.integers(2 ** 14, 2 ** 15)),
                    out_shift=int(rng.integers(1, 32)))
    if kind == 3:
        heads, head_dim = int(rng.integers(1, 4)), 2 * int(rng.integers(1, 20))
        src, stride = place(rows, heads * head_dim)
        return make("ROPE", src_addr=src, dst_addr=src, rows=rows, heads=heads,
                    head_dim=head_dim, pos0=int(rng.integers(0, 1000)),
                    freq_addr=place(1, 2 * head_dim)[0], row_stride=stride)
    return make("ARGMAX", src_addr=place(1, 2 * cols)[0], n=cols, dst_addr=place(1, 4)[0])


def random_vector(rng, l2_bytes: int):
    """A random vector instruction of any of the seven (the vector unit's timing test and
    ``benchmarks.vector_calibration``): rows of 1 to 200 elements (short ones often,
    where a segment is a beat or two; ARGMAX over 1 to 400), 1 to 6 rows, every operand
    at a random address and stride within ``l2_bytes`` (at least 16 KiB: ``ValueError``
    below). The L2's bytes are the caller's: parameter words are whatever lies there, so
    only the timing is meant (not the ISA's checks)."""
    if l2_bytes < 1 << 14:
        raise ValueError(f"random_vector needs an L2 of at least 16 KiB, not {l2_bytes}")

    def r(lo, hi):
        return int(rng.integers(lo, hi + 1))

    def a():
        return r(0, l2_bytes - 7 * 6 * 260)

    op = ("REQUANT", "RMSNORM", "SOFTMAX", "SILU_MUL", "RESADD", "ROPE", "ARGMAX")[r(0, 6)]
    rows, cols = r(1, 6), r(1, 200) if rng.random() < 0.6 else r(1, 12)
    if op == "REQUANT":
        return make(op, src_addr=a(), param_addr=a(), bias_addr=a(), dst_addr=a(), rows=rows,
                    cols=cols, src_stride=4 * cols + r(0, 40), dst_stride=2 * cols + r(0, 40),
                    out_bits=r(0, 1), params=r(0, 2), has_bias=r(0, 1))
    if op == "RMSNORM":
        return make(op, src_addr=a(), dst_addr=a(), rows=rows, cols=cols,
                    src_stride=2 * cols + r(0, 40), dst_stride=cols + r(0, 40), mult=20000,
                    shift=20, eps=5)
    if op == "SOFTMAX":
        return make(op, src_addr=a(), dst_addr=a(), rows=rows, cols=cols, q_pos0=r(0, cols),
                    src_stride=4 * cols + r(0, 40), dst_stride=cols + r(0, 40), mult=20508,
                    shift=25, scale_addr=a(), out_mult=19870, out_shift=21)
    if op == "SILU_MUL":
        return make(op, gate_addr=a(), up_addr=a(), param_addr=a(), dst_addr=a(), rows=rows,
                    cols=cols, gate_stride=4 * cols + r(0, 40), up_stride=cols + r(0, 40),
                    dst_stride=cols + r(0, 40))
    if op == "RESADD":
        return make(op, h_addr=a(), acc_addr=a(), param_addr=a(), rows=rows, cols=cols,
                    h_stride=2 * cols + r(0, 40), acc_stride=4 * cols + r(0, 40))
    if op == "ROPE":
        head_dim, heads = 2 * r(1, 40), r(1, 4)
        return make(op, src_addr=a(), dst_addr=a(), rows=rows, heads=heads, head_dim=head_dim,
                    pos0=r(0, 5000), freq_addr=a(), row_stride=heads * head_dim + r(0, 20))
    return make(op, src_addr=a(), n=r(1, 400), dst_addr=a())


def random_tokens(code, hw, image, rng, extra):
    """The scheduler's stream order and tokens plus ``extra`` random orderings: each
    makes an instruction also wait for a random instruction of another engine earlier in
    the stream. Any ordering along the stream keeps the program deadlock-free, and more
    ordering keeps it race-free, so the RTL and the ISA simulator must still agree."""
    acc = program_accesses(code.instrs, hw, image)
    deps = dependencies(code, hw, image, prefetch=True, acc=acc)
    order = hoist(code.instrs, deps)
    position = {j: k for k, j in enumerate(order)}
    engines = [int(i.engine) for i in code.instrs]
    for _ in range(extra):
        j = int(rng.integers(len(order)))
        if code.instrs[j].engine == Engine.CONTROL:
            continue
        before = [i for i in range(len(order)) if position[i] < position[j]
                  and engines[i] not in (engines[j], int(Engine.CONTROL))]
        if before:
            i = int(rng.choice(before))
            deps[j][engines[i]] = max(deps[j].get(engines[i], -1), i)
    program = insert_tokens(code.instrs, deps, order)
    verify_schedule("random", code.instrs, order, program, acc, hw, image)
    return program


def random_dma_program(rng, hw, n_instr=24, compute=False, n_programs=1, extra_tokens=0):
    """A DRAM image and random programs over it (DMA, and compute instructions when
    ``compute``), with dependency tokens from the compiler's scheduler and
    ``extra_tokens`` random ones (``random_tokens``). One program: ``(image, program)``
    in region ``program``; several: ``(image, [programs])`` in ``program0``, ..."""
    mmap = MemoryMap()
    mmap.add("src", 64 * 1024)
    mmap.add("table", 4 * 64)
    mmap.start_writable()
    mmap.add("block_table", 4 * 16)
    mmap.add("pool", 16 * hw.kv_block_tokens * 64)
    mmap.add("dst", 64 * 1024)
    names = ["program"] if n_programs == 1 else [f"program{k}" for k in range(n_programs)]
    for name in names:
        mmap.add(name, INSTR_BYTES * (4 * n_instr + 2))
    image = DramImage(mmap)
    image.write("src", rng.integers(0, 256, 64 * 1024, dtype=np.uint8))
    image.write("table", rng.integers(0, 300, 64).astype("<i4"))
    image.write("block_table", block_table(16, seed=3), keep=True)
    image.write("pool", rng.integers(0, 256, mmap["pool"].size, dtype=np.uint8))
    programs = [_random_program(rng, hw, image, n_instr, compute, extra_tokens)
                for _ in names]
    for name, program in zip(names, programs, strict=True):
        image.write(name, np.frombuffer(encode_program(program), np.uint8))
    return image, programs[0] if n_programs == 1 else programs


def _random_program(rng, hw, image, n_instr, compute, extra_tokens):
    mmap = image.mmap
    src, dst, pool = mmap["src"].offset, mmap["dst"].offset, mmap["pool"]
    pool_blocks = 16                      # the block table's entries are a permutation of 16
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
                               l2_addr=int(rng.integers(0, l2 - n * 16)),
                               pool_blocks=pool_blocks, seq=0, kv_format=KvFormat.INT8))
        else:
            first, n = int(rng.integers(0, 100)), int(rng.integers(1, 30))
            instrs.append(make("KV_APPEND", l2_addr=int(rng.integers(0, l2 - n * 64)),
                               pool_addr=pool.offset, table_addr=mmap["block_table"].offset,
                               first_token=first, n_tokens=n, row_bytes=64,
                               pool_blocks=pool_blocks, seq=0))
    instrs.append(make("HALT"))
    if extra_tokens:
        return random_tokens(Code(instrs), hw, image, rng, extra_tokens)
    return schedule(Code(instrs), hw, image, prefetch=True)


def run_random_programs(model, seed, n_programs=8, n_instr=30, extra_tokens=20):
    """Random legal programs (every engine; the scheduler's tokens plus ``extra_tokens``
    random orderings each) run one after another in one job on the RTL and on the ISA
    simulator: ``(job result, ISA simulator, [(program, ISA counters)])``."""
    hw = model.params.hw
    image, programs = random_dma_program(np.random.default_rng(seed), hw, n_instr,
                                         compute=True, n_programs=n_programs,
                                         extra_tokens=extra_tokens)
    if n_programs == 1:
        programs = [programs]
    isa = IsaSimulator(hw, image.data)
    counted = []
    for program in programs:
        isa.counters = type(isa.counters)()
        counted.append((program, dict(isa.run(program).values)))
    names = ["program"] if n_programs == 1 else [f"program{k}" for k in range(n_programs)]
    entries = [(f"p{k}", image.mmap[name].offset) for k, name in enumerate(names)]
    result = run_job(model, image.data, entries, {"dram": (0, DRAM_BYTES)},
                     max_cycles=2_000_000)
    return result, isa, counted


def compressed_kv_program(rng, hw, kv_heads: int = 3, pool_blocks: int = 5):
    """A DRAM image and a load-engine program over a KV pool whose blocks are stored
    compressed (``arch.isa``'s ``CHUNKED`` format, widths from random tolerances): for each
    head, a ``CHUNKED`` ``KV_PREFETCH`` of some blocks through a random block table, between
    an int8 prefetch and a ``DMA_LOAD`` (the engine switching formats both ways). The head
    size is random (not a whole number of lines, up to ``KV_CHUNK_MAX_COLS``) and the pool
    starts at a random byte. ``(image bytes, program)``; the program is in the image at
    offset 0."""
    from arch.isa import (
        kv_chunk_addrs,
        kv_chunk_header,
        kv_chunk_pack,
        kv_header_area_bytes,
    )
    from arch.uarch import KV_CHUNK_MAX_COLS
    from models import numerics as N

    B = hw.kv_block_tokens
    head_dim = int(rng.choice([8, 12, 24, 40, 72, KV_CHUNK_MAX_COLS]))
    kv_dim = kv_heads * head_dim
    table_at, pool = 4096, 8192 + int(rng.integers(0, 64))
    dram = np.zeros(pool + pool_blocks * B * kv_dim + kv_header_area_bytes(pool_blocks, kv_dim)
                    + 4096, np.uint8)
    table = rng.permutation(pool_blocks).astype("<i4")
    dram[table_at:table_at + 4 * pool_blocks] = table.view(np.uint8)
    for block in range(pool_blocks):
        rows = rng.integers(-128, 128, (B, kv_dim)).astype(np.int8)
        rows //= np.int8(1 << int(rng.integers(0, 5)))                 # smaller ranges too
        for h in range(kv_heads):
            group = rows[:, h * head_dim:(h + 1) * head_dim].T
            bits, shift, deq = N.kv_chunk_compress(group, (2, 4, 8),
                                                   int(rng.integers(0, 64)) << 16)
            data = kv_chunk_pack(deq.astype(np.int64) >> shift[:, None], bits)
            codes, headers = kv_chunk_addrs(pool, pool_blocks, block, B, kv_dim, h * head_dim)
            dram[codes:codes + data.size] = data
            dram[headers:headers + head_dim] = kv_chunk_header(bits, shift)
    program, l2 = [], 0
    for h in range(kv_heads):
        first = int(rng.integers(0, pool_blocks))
        n = int(rng.integers(1, pool_blocks - first + 1))
        if h == 1:      # an int8 prefetch first (as of a block still filling)
            program.append(make("KV_PREFETCH", pool_addr=pool, table_addr=table_at,
                                first_token=B * first + 1, n_tokens=B - 1, row_bytes=kv_dim,
                                col_offset=h * head_dim, col_bytes=head_dim, l2_addr=l2,
                                pool_blocks=pool_blocks, seq=0, kv_format=KvFormat.INT8))
            l2 += (B - 1) * head_dim + 5
        program.append(make("KV_PREFETCH", pool_addr=pool, table_addr=table_at,
                            first_token=B * first, n_tokens=B * n, row_bytes=kv_dim,
                            col_offset=h * head_dim, col_bytes=head_dim, l2_addr=l2,
                            pool_blocks=pool_blocks, seq=0, kv_format=KvFormat.CHUNKED))
        l2 += B * n * head_dim + int(rng.integers(0, 40))
        program.append(make("DMA_LOAD", dram_addr=int(rng.integers(0, 4000)), l2_addr=l2,
                            rows=2, row_bytes=37, dram_stride=41, l2_stride=40))
        l2 += 80
    program.append(make("HALT"))
    code = encode_program(program)
    dram[:len(code)] = np.frombuffer(code, np.uint8)
    assert len(code) < table_at and l2 < hw.l2_bytes
    return dram, program


def chunked_prefetch_programs(rng, hw, n_programs: int, kv_heads: int = 2,
                              pool_blocks: int = 6):
    """``n_programs`` programs, each one ``CHUNKED`` ``KV_PREFETCH`` then ``HALT``, each
    over a KV pool of its own whose blocks are compressed with widths from a random
    tolerance (``numerics.kv_chunk_compress``): a random head size (up to
    ``KV_CHUNK_MAX_COLS``), head, first block, number of blocks, pool and L2 alignment.
    For timing the decompressor alone. ``(image bytes, [(name, offset, program)])``."""
    from arch.isa import kv_chunk_addrs, kv_chunk_header, kv_chunk_pack, kv_header_area_bytes
    from arch.uarch import KV_CHUNK_MAX_COLS
    from models import numerics as N

    B = hw.kv_block_tokens
    parts, programs, at = [], [], 0
    for k in range(n_programs):
        head_dim = int(rng.choice([8, 12, 24, 40, 64, 72, 96, KV_CHUNK_MAX_COLS]))
        kv_dim = kv_heads * head_dim
        table_at = at + 64
        pool = table_at + 64 + int(rng.integers(0, 64))
        end = pool + pool_blocks * B * kv_dim + kv_header_area_bytes(pool_blocks, kv_dim)
        dram = np.zeros(end - at, np.uint8)
        table = rng.permutation(pool_blocks).astype("<i4")
        dram[table_at - at:table_at - at + 4 * pool_blocks] = table.view(np.uint8)
        tolerance = int(rng.integers(0, 64)) << 16
        for block in range(pool_blocks):
            rows = rng.integers(-128, 128, (B, kv_dim)).astype(np.int8)
            rows //= np.int8(1 << int(rng.integers(0, 5)))                 # smaller ranges too
            for h in range(kv_heads):
                group = rows[:, h * head_dim:(h + 1) * head_dim].T
                bits, shift, deq = N.kv_chunk_compress(group, (2, 4, 8), tolerance)
                data = kv_chunk_pack(deq.astype(np.int64) >> shift[:, None], bits)
                codes, headers = kv_chunk_addrs(pool, pool_blocks, block, B, kv_dim,
                                                h * head_dim)
                dram[codes - at:codes - at + data.size] = data
                dram[headers - at:headers - at + head_dim] = kv_chunk_header(bits, shift)
        first = int(rng.integers(0, pool_blocks))
        program = [make("KV_PREFETCH", pool_addr=pool, table_addr=table_at, first_token=B * first,
                        n_tokens=B * int(rng.integers(1, pool_blocks - first + 1)),
                        row_bytes=kv_dim, col_offset=int(rng.integers(0, kv_heads)) * head_dim,
                        col_bytes=head_dim, l2_addr=int(rng.integers(0, 64)),
                        pool_blocks=pool_blocks, seq=0, kv_format=KvFormat.CHUNKED), make("HALT")]
        code = encode_program(program)
        dram[:len(code)] = np.frombuffer(code, np.uint8)
        parts.append(dram)
        programs.append((f"p{k}", at, program))
        at = -(-end // 4096) * 4096
        parts.append(np.zeros(at - end, np.uint8))
    return np.concatenate(parts), programs


def _held_load(hw) -> tuple:
    """A 256-line weight load (128 rows of 64 bytes, DRAM at 128 KiB, L2 at 32 KiB) and a
    GEMV of 64 by 256 that holds its copier in the L2: ``(load, gemv)``
    (``held_prefetch_programs``, ``held_append_programs``)."""
    load = make("DMA_LOAD", dram_addr=1 << 17, l2_addr=32 << 10, rows=128, row_bytes=64,
                dram_stride=64, l2_stride=64)
    gemv = make("MATMUL", mode=1, accumulate=0, w_layout=0, w_format=0, e_addr=0, m=1,
                k=64, n=256, x_addr=hw.line_bytes, w_addr=16 << 10, out_addr=8 << 10,
                x_stride=64, w_stride=64, out_stride=1024)
    return load, gemv


def held_prefetch_programs(hw, tokens_cols=((8, 32), (16, 32), (32, 32), (64, 128))) -> dict:
    """A 256-line weight load then a ``KV_PREFETCH`` of ``tokens`` tokens of ``cols``
    bytes (rows of 128, the table at 32 KiB, the pool at 64 KiB), alone and beside a
    GEMV that holds the load's copier: ``{name: instructions}``, names ``"alone T"`` and
    ``"beside T"`` (``benchmarks.rtl_table_walks``, tests/rtl/test_l2_contention.py)."""
    load, gemv = _held_load(hw)
    programs = {}
    for tokens, cols in tokens_cols:
        prefetch = make("KV_PREFETCH", pool_addr=1 << 16, table_addr=1 << 15, first_token=0,
                        n_tokens=tokens, row_bytes=128, col_offset=0, col_bytes=cols,
                        l2_addr=48 << 10, pool_blocks=16, seq=0, kv_format=0)
        programs[f"alone {tokens}"] = [load, prefetch]
        programs[f"beside {tokens}"] = [gemv, load, prefetch]
    return programs


def held_append_programs(hw, blocks=(1, 3)) -> dict:
    """A ``KV_APPEND`` of ``blocks`` KV blocks (``kv_block_tokens`` tokens of 32 bytes
    each, the table at 32 KiB, the pool at 64 KiB) alone, beside a 256-line weight load
    begun with it, beside a GEMV that takes most of the L2's lines on edge-4x4, and
    beside both, the GEMV holding the load's copier, so that the DRAM's queue fills with
    the load's lines and the append's later table reads come back after them: ``{name:
    instructions}``, names ``"alone B"``, ``"load B"``, ``"gemv B"`` and ``"beside B"``
    (tests/rtl/test_l2_contention.py)."""
    load, gemv = _held_load(hw)
    programs = {}
    for n in blocks:
        append = make("KV_APPEND", l2_addr=48 << 10, pool_addr=1 << 16, table_addr=1 << 15,
                      first_token=0, n_tokens=n * hw.kv_block_tokens, row_bytes=32,
                      pool_blocks=16, seq=0)
        programs[f"alone {n}"] = [append]
        programs[f"load {n}"] = [load, append]
        programs[f"gemv {n}"] = [gemv, append]
        programs[f"beside {n}"] = [gemv, load, append]
    return programs


def chained_prefetch_programs(hw) -> dict:
    """One and two ``KV_PREFETCH``es of 7 KV blocks (``kv_block_tokens`` tokens each,
    the first 64 bytes of each 128-byte row, the table at 32 KiB, the pool at 64 KiB),
    the second over the next 7 blocks, alone and beside a GEMV of 128 by 256 that starts
    with them and outlasts them: ``{name: instructions}``, names ``"alone 1"``, ``"alone
    2"``, ``"beside 1"``, ``"beside 2"`` (``benchmarks.rtl_table_walks --only
    chained``). On edge-4x4 the GEMV takes the L2's one line 21 cycles running and
    leaves it 11, and each block's rows come in a burst."""
    B = hw.kv_block_tokens

    def prefetch(first_block: int, l2_addr: int):
        return make("KV_PREFETCH", pool_addr=1 << 16, table_addr=1 << 15,
                    first_token=B * first_block, n_tokens=7 * B, row_bytes=128,
                    col_offset=0, col_bytes=64, l2_addr=l2_addr, pool_blocks=16, seq=0,
                    kv_format=0)

    gemv = make("MATMUL", mode=1, accumulate=0, w_layout=0, w_format=0, e_addr=0, m=1,
                k=128, n=256, x_addr=hw.line_bytes, w_addr=16 << 10, out_addr=8 << 10,
                x_stride=128, w_stride=128, out_stride=1024)
    one, two = [prefetch(0, 48 << 10)], [prefetch(0, 48 << 10), prefetch(7, 56 << 10)]
    return {"alone 1": one, "alone 2": two, "beside 1": [gemv, *one],
            "beside 2": [gemv, *two]}


def prefetch_beside_programs(hw, other_shapes: bool = False) -> dict:
    """A ``KV_PREFETCH`` over 5 KV blocks (two tokens short) alone and beside a compute
    instruction that starts with it: 32 of each 128-byte row beside attention's ``P · V``
    (KN weights, 78 tokens by 32), and 16 of each 64-byte row beside a GEMV of 80 by 128
    (the table at 32 KiB, the pool at 64 KiB, the rows to 48 KiB): ``{name:
    instructions}`` (``benchmarks.rtl_table_walks --only beside``,
    tests/rtl/test_l2_contention.py). ``other_shapes``: also 64 of each 128-byte row and
    32 of each 64-byte row from byte 32, alone and beside the ``P · V``."""
    def prefetch(col_bytes: int, row_bytes: int, col_offset: int = 0):
        return make("KV_PREFETCH", pool_addr=1 << 16, table_addr=1 << 15, first_token=0,
                    n_tokens=5 * hw.kv_block_tokens - 2, row_bytes=row_bytes,
                    col_offset=col_offset, col_bytes=col_bytes, l2_addr=48 << 10,
                    pool_blocks=16, seq=0, kv_format=0)

    gemv = dict(mode=1, accumulate=0, w_format=0, e_addr=0, m=1, x_addr=0, w_addr=16 << 10,
                out_addr=8 << 10)
    pv = make("MATMUL", **gemv, w_layout=1, k=78, n=32, x_stride=79, w_stride=32,
              out_stride=128)
    nk = make("MATMUL", **gemv, w_layout=0, k=80, n=128, x_stride=80, w_stride=80,
              out_stride=512)
    wide, narrow = prefetch(32, 128), prefetch(16, 64)
    programs = {"KV_PREFETCH 5 blocks of 32 of 128 bytes": [wide],
                "the same beside P · V": [pv, wide],
                "KV_PREFETCH 5 blocks of 16 of 64 bytes": [narrow],
                "the same beside a GEMV": [nk, narrow]}
    if other_shapes:
        for name, walk in (("64 of 128 bytes", prefetch(64, 128)),
                           ("32 of 64 bytes from 32", prefetch(32, 64, 32))):
            programs[f"KV_PREFETCH 5 blocks of {name}"] = [walk]
            programs[f"{name} beside P · V"] = [pv, walk]
    return programs


def filled_l2_programs() -> dict:
    """A 28-line load alone and beside a REQUANT of 18 int32 rows of 217 with per-column
    words, which takes 0.98 of edge-4x4's line a cycle: ``{"alone": ..., "beside":
    ...}`` (``benchmarks.rtl_table_walks``, tests/rtl/test_l2_contention.py)."""
    load = make("DMA_LOAD", dram_addr=1 << 17, l2_addr=48 << 10, rows=1, row_bytes=868,
                dram_stride=868, l2_stride=868)
    requant = make("REQUANT", out_bits=0, params=1, has_bias=0, src_addr=0,
                   dst_addr=32 << 10, param_addr=40 << 10, bias_addr=0, rows=18, cols=217,
                   src_stride=868, dst_stride=217)
    return {"alone": [load], "beside": [requant, load]}


def store_programs(hw) -> dict:
    """Stores beside the engines that slow them, alone and beside: ``{name:
    instructions}`` for ``hw`` (``benchmarks.rtl_stores``, tests/rtl/test_l2_contention.py;
    their operands are those of random steps' programs, ``python -m
    benchmarks.perf_calibration --random 25 --seed 2038``, moved into a 256 KiB image):
    the logits ``DMA_STORE`` alone and beside the ``ARGMAX`` that reads the same rows
    (and the ``REQUANT`` before it, on a 4-bank L2: ``"argmax"``, ``"requant"``), and a
    one-token ``KV_APPEND`` alone and beside a 512-line load (``"append"``, the load
    alone ``"load"``, ``"append + load"``);
    at a DRAM under a line a cycle, ``KV_APPEND`` of one token of one and of eight lines
    alone (``"append 1"``, ``"append 8"``), two of eight beside a ``KV_PREFETCH`` of seven
    blocks whose table reads run ahead of its data (``"appends + prefetch"``, the
    prefetch alone ``"prefetch"``), and a 7-line ``DMA_STORE`` with the counters after it
    (``"store + counters"``)."""
    W = hw.line_bytes
    if hw.dram_cycles_per_line > 1:
        def append(n, l2_addr=2048):
            return make("KV_APPEND", l2_addr=l2_addr, pool_addr=1 << 16, table_addr=1 << 15,
                        first_token=100, n_tokens=1, row_bytes=n * W, pool_blocks=7, seq=0)

        prefetch = make("KV_PREFETCH", l2_addr=16 << 10, pool_addr=1 << 16,
                        table_addr=1 << 15, first_token=0, n_tokens=100, col_offset=0,
                        col_bytes=4 * W, row_bytes=8 * W, pool_blocks=7, seq=0,
                        kv_format=KvFormat.INT8)
        store = make("DMA_STORE", l2_addr=0, dram_addr=1 << 17, rows=1, row_bytes=7 * W,
                     l2_stride=7 * W, dram_stride=7 * W)
        return {"append 1": [append(1)], "append 8": [append(8)], "prefetch": [prefetch],
                "appends + prefetch": [append(8), append(8, 4096), prefetch],
                "store + counters": [store, make("STORE_COUNTERS", dram_addr=1 << 15)]}
    vocab = 488 if hw.l2_lines_per_cycle == 1 else 2185
    logits = 4 << 10                               # int16 logits; int32 from 16 KiB
    store = make("DMA_STORE", l2_addr=logits, dram_addr=1 << 16, rows=1, row_bytes=2 * vocab,
                 l2_stride=2 * vocab, dram_stride=2 * vocab)
    argmax = make("ARGMAX", src_addr=logits, n=vocab, dst_addr=W)
    programs = {"store": [store], "argmax": [argmax, store]}
    if hw.l2_lines_per_cycle > 1:
        requant = make("REQUANT", out_bits=1, params=1, has_bias=0, src_addr=16 << 10,
                       dst_addr=logits, param_addr=48 << 10, bias_addr=0,
                       rows=1, cols=vocab, src_stride=4 * vocab, dst_stride=2 * vocab)
        programs["requant"] = [requant, argmax, store]
        append = make("KV_APPEND", l2_addr=W, pool_addr=1 << 16, table_addr=1 << 15,
                      first_token=51, n_tokens=1, row_bytes=4 * W, pool_blocks=4, seq=0)
        load = make("DMA_LOAD", dram_addr=1 << 17, l2_addr=32 << 10, rows=32, row_bytes=512,
                    dram_stride=512, l2_stride=512)
        programs.update({"append": [append], "load": [load], "append + load": [load, append]})
    return programs
