"""How long one instruction keeps its engine busy: the RTL's pipelines, in closed form.

Contract
--------
``occupancy(instr, hw, read_i32)`` returns an ``Occupancy``: the cycles the instruction
keeps its engine busy when it runs alone (from the cycle its tokens allow it to begin to
the cycle it ends, the RTL's ``*_busy`` counter for it), the DRAM lines it reads and
writes, and its multiply-accumulates. Each function below follows one unit of ``rtl/``
step by step at the granularity where the RTL has a pipeline bubble: a DMA row, a matmul
tile, a vector segment; the matmul unit's tile filler, whose two row readers share the
L2's banks, cycle by cycle (``_fills``). The few constants of ``CALIBRATION`` are the
latencies between those steps; they were read off single-instruction runs of the Verilator
model (``python -m benchmarks.perf_calibration`` compares every instruction of a decode
step run alone on the RTL with this module, by class) and are shared by every hardware
configuration: everything that scales with the hardware (``W``, ``R``, ``C``,
lanes, DRAM bandwidth and latency) enters through the formulas.

``read_i32`` resolves data-dependent addresses (gather indices, block tables) exactly as
``compiler.semantics`` does; without it, blocks are assumed consecutive. A
``KV_PREFETCH`` in ``CHUNKED`` format (``chunked_prefetch_occupancy``) also reads its
chunks' header bytes through it, and cannot be timed without it.

Tested by tests/sweeps/test_perf_model.py (the occupancy model against the RTL's units and
the GEMM block recurrence), tests/arch/test_occupancy.py (the chunked prefetch on
hand-made headers), tests/rtl/test_accelerator.py (chunked prefetches against the RTL) and
tests/rtl/test_matmul_unit.py (every tile's announcement against the matmul unit).
"""

from __future__ import annotations

import math
import operator
from collections import namedtuple
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from arch.hardware import HardwareConfig
from arch.isa import (
    BLOCK_TABLE_ENTRY_BYTES,
    BY_MNEMONIC,
    COUNTER_BYTES,
    COUNTERS,
    KV_WIDTH_CODES,
    MX_BLOCK,
    OUT_BYTES,
    Engine,
    Instruction,
    KvFormat,
    MatmulMode,
    OutBits,
    ParamMode,
    WeightFormat,
    WeightLayout,
    kv_chunk_addrs,
    kv_chunk_fault,
    kv_group_bytes,
    kv_row_addr,
    kv_table_entry_addr,
    make,
)
from arch.kernels import njit
from arch.uarch import CMD_DEPTH, COPIER_FIFO_DEPTH, KV_CHUNK_MAX_COLS, SEGMENT_DEPTH


@dataclass(frozen=True)
class Calibration:
    """Latencies (cycles) between the pipeline steps of the RTL, fitted to the RTL."""

    dma_setup: int = 1            # SETUP before the first row command
    int_read: int = 3             # an int32 read on the aux port, beyond the DRAM latency
                                  # (read off table walks alone, every row command in the
                                  # RTL's cycle; 5 before, 2 cycles long a read)
    cmd_to_read: int = 3          # row command -> its first DRAM/L2 read
    read_to_write: int = 1        # a line's DRAM read accepted -> the write side, beyond
                                  # the DRAM latency and the step that writes it
    l2_read_latency: int = 3      # L2 row reader: request -> beat
    dma_drain: int = 2            # last write -> END, alone
    dma_end: int = 1              # last write -> END, with earlier rows in the copier
    mm_result_latency: int = 6    # a group's last row streamed -> its writeback begins
    mm_old_output_latency: int = 5  # a writeback that accumulates: its first old row read
    engine_overhead: int = 2      # the engine shell's START and END around the unit's run
    chunk_start: int = 1          # a CHUNKED KV_PREFETCH: beyond its blocks (fitted)
    chunk_block: int = 11         # a CHUNKED KV_PREFETCH: a block, beyond its parts (fitted
                                  # as 3 when read_to_write was 4: two reads a block; 9
                                  # when int_read was 5, which it adds to)


CALIBRATION = Calibration()

#: The tile filler (``rtl.matmul_unit.TileFiller``): its begin -> its readers' first L2
#: request (the row command through the copier's queue), and an L2 grant -> the write-side
#: step that takes the line (the L2's read, the copier's buffered FIFO). The RTL's
#: structure, read off a trace of the unit in Amaranth's simulator.
FILL_ISSUE_LATENCY = 3
FILL_DATA_LATENCY = 3
#: The matmul unit's writeback: a row handed to the row writer -> the writer's first step
#: on it (through the copier's buffered FIFO), from the same trace.
WB_DATA_LATENCY = 2
#: A group's last row handed over -> the next group's first row handed over, at the
#: earliest (the writeback takes the group, then reads the accumulator a cycle ahead).
WB_NEXT_GROUP = 3


NEVER = float("-inf")


@dataclass(frozen=True)
class Copies:
    """When a row-copying DMA instruction is done with each part of its engine, relative
    to its begin, as functions of when the copier's read and write sides become free of
    the instructions before it (``r0``, ``w0``, also relative): each time is
    ``max(c, r0 + r, w0 + w)``, a triple ``(c, r, w)``, since every step of the copier
    is a max of sums (``queue_after`` evaluates them).

    ``issue``: the engine's last row command is queued (it moves on to the next
    instruction); ``reads``/``writes``: the copier's read and write sides are done with
    this instruction's rows; the instruction ends ``Calibration.dma_end`` after
    ``writes``."""

    issue: tuple[float, float, float]
    reads: tuple[float, float, float]
    writes: tuple[float, float, float]
    # The copier's command queue (``CMD_DEPTH``) is shared with the instructions before:
    # ``first_cmds`` are when the first ``CMD_DEPTH`` row commands would be queued alone
    # (relative to begin), ``takes`` when the write side takes each of the last
    # ``CMD_DEPTH`` (triples), so that ``queue_after`` can hold this instruction's
    # commands until the earlier ones leave the queue.
    first_cmds: tuple[float, ...] = ()
    takes: tuple[tuple[float, float, float], ...] = ()
    cmd_jumps: tuple[int, ...] = ()    # k where first_cmds[k + 1] > first_cmds[k] + 1
    rows: int = 0                      # row commands in all


def load_data_delay(hw: HardwareConfig, cal: Calibration = CALIBRATION) -> int:
    """Cycles from a load's begin to the copier's first L2 write (setup, row command,
    read, latency): before then the copier takes no L2 line, so the contention models
    count the L2 lines others take from then on."""
    return cal.dma_setup + cal.cmd_to_read + hw.dram_latency_cycles + cal.read_to_write + 1


class CopiesTable:
    """The ``Copies`` of a program (or of a fast-path step), as the flat arrays the
    compiled engine models read (``queue_after``): ``index[id(copies)]`` is a ``Copies``'
    row. ``arrays``: ``(triples, first offsets, first_cmds, takes offsets, takes, jump
    offsets, cmd_jumps)``; ``triples[u]`` is ``issue``, ``reads`` and ``writes``, nine
    floats; the others are every ``Copies``' tuples laid end to end, ``u``'s from
    ``offsets[u]`` to ``offsets[u + 1]``."""

    def __init__(self, copies):
        self.index: dict[int, int] = {}
        self.copies: list[Copies] = []         # (held, so that the ids stay theirs)
        first, takes, jumps = [], [], []
        offsets = ([0], [0], [0])
        for c in copies:
            if c is None or id(c) in self.index:
                continue
            self.index[id(c)] = len(self.copies)
            self.copies.append(c)
            first += c.first_cmds
            takes += c.takes
            jumps += c.cmd_jumps
            for o, part in zip(offsets, (first, takes, jumps), strict=True):
                o.append(len(part))
        triples = np.array([(*c.issue, *c.reads, *c.writes) for c in self.copies],
                           np.float64).reshape(-1, 9)
        self.arrays = (triples, np.array(offsets[0], np.int64), np.array(first, np.float64),
                       np.array(offsets[1], np.int64),
                       np.array(takes, np.float64).reshape(-1, 3),
                       np.array(offsets[2], np.int64), np.array(jumps, np.int64))


@njit
def _max3(c, r, w):
    """``max(c, r, w)``, written out as ``Copies`` takes it."""
    return c if c >= r and c >= w else r if r >= w else w


@njit
def queue_after(table, seg_u, seg_f, seg_m, state, u, begin, read_free, write_free):
    """A row-copying DMA instruction (row ``u`` of ``table``, ``CopiesTable.arrays``)
    begun at ``begin`` with its copier's read and write sides free at ``read_free`` and
    ``write_free`` (absolute): ``(issued, read_free, write_free)``, when its engine's last
    row command is queued and when the copier's sides are free again. ``Copies`` gives
    each as ``max(c, r0 + r, w0 + w)`` (relative to ``begin``); the copier's command
    queue (``CMD_DEPTH`` row commands) adds a wait: its first commands wait for the
    earlier instructions' last ones to be taken by the write side (``rtl.copier``: the
    engine queues a row command only while both of the copier's command queues have
    room), which shifts its last one alone (the later commands' queue waits are in
    ``issue`` already, through the write side). The take times are those of the
    instructions alone in context, before the contention waits the engine models add
    afterwards; they are evaluated only where they can bind, which is exact: a take
    comes at least a cycle after the one before, and a command one cycle after the one
    before unless it read an int32 first, so the wait is largest just before a command
    that jumps (``cmd_jumps``), or at the last.

    The queue's state (updated in place): the earlier instructions still in the queue,
    ``seg_u[s]`` (their rows), ``seg_f[s]`` (begin, read and write free, their last
    take), ``seg_m[s]`` (their commands), for ``s`` from ``state[0]`` to ``state[1]``
    (at least the last ``CMD_DEPTH`` commands; ``state[2]``); the arrays hold a row per
    call. Compiled (numba): ``sweeps.perf`` chains every row-copying instruction of each
    DMA engine through one (``CopierQueue``), ``sweeps.analytic`` its loads and stores
    from its compiled engine model."""
    triples, f_off, f_flat, t_off, t_flat, j_off, j_flat = table
    head, tail, count = state[0], state[1], state[2]
    f0 = f_off[u]
    n_first = f_off[u + 1] - f0
    late = 0.0
    newest = seg_f[tail - 1, 3] if tail > head else -np.inf     # the newest command's take
    if newest + 1 > begin + f_flat[f0]:
        room = CMD_DEPTH               # CMD_DEPTH less the commands newer than segment s's
        jb, je = j_off[u], j_off[u + 1]
        for s in range(tail - 1, head - 1, -1):
            m = seg_m[s]
            # its take j is command room - (m - j) of ours to wait for
            lo = room - m if room > m else 0
            hi = room if room < n_first else n_first
            if lo < hi and seg_f[s, 3] + 1 - begin - f_flat[f0 + lo] > late:
                tb = t_off[seg_u[s]]
                sb, sr, sw = seg_f[s, 0], seg_f[s, 1], seg_f[s, 2]
                a = jb                 # the commands just before a jump in [lo, hi - 1),
                while a < je and j_flat[a] < lo:              # then hi - 1
                    a += 1
                while True:
                    if a < je and j_flat[a] < hi - 1:
                        k = j_flat[a]
                        a += 1
                    else:
                        k = hi - 1
                    at = tb + m - room + k                    # when the write side takes it
                    v = _max3(t_flat[at, 0] + sb, t_flat[at, 1] + sr,
                              t_flat[at, 2] + sw) + 1 - begin - f_flat[f0 + k]
                    if v > late:
                        late = v
                    if k == hi - 1:
                        break
            room -= m
            if room <= 0:
                break
    last = t_off[u + 1] - 1                                   # its last command's take
    seg_u[tail] = u
    seg_f[tail, 0] = begin
    seg_f[tail, 1] = read_free
    seg_f[tail, 2] = write_free
    seg_f[tail, 3] = _max3(t_flat[last, 0] + begin, t_flat[last, 1] + read_free,
                           t_flat[last, 2] + write_free)
    seg_m[tail] = t_off[u + 1] - t_off[u]
    count += seg_m[tail]
    tail += 1
    while count - seg_m[head] >= CMD_DEPTH:
        count -= seg_m[head]
        head += 1
    state[0], state[1], state[2] = head, tail, count
    r0, w0 = read_free - begin, write_free - begin
    issued = begin + _max3(triples[u, 0], triples[u, 1] + r0, triples[u, 2] + w0)
    reads = begin + _max3(triples[u, 3], triples[u, 4] + r0, triples[u, 5] + w0)
    writes = begin + _max3(triples[u, 6], triples[u, 7] + r0, triples[u, 8] + w0)
    shifted = begin + triples[u, 0] + late
    return (shifted if shifted > issued else issued), reads, writes


class CopierQueue:
    """A DMA engine's copier command queue across its instructions (``queue_after``),
    for the ``Copies`` of ``table``: ``after(copies, begin, read_free, write_free)`` is
    ``(issued, read_free, write_free)``."""

    def __init__(self, table: CopiesTable):
        self.table = table
        self.seg_u = np.zeros(64, np.int64)
        self.seg_f = np.zeros((64, 4))
        self.seg_m = np.zeros(64, np.int64)
        self.state = np.zeros(3, np.int64)

    def after(self, copies: Copies, begin: float, read_free: float, write_free: float
              ) -> tuple[float, float, float]:
        head, tail, _ = self.state
        if tail == len(self.seg_u):                 # full: move the live rows down
            grow = 2 if tail - head > len(self.seg_u) // 2 else 1
            for name in ("seg_u", "seg_f", "seg_m"):
                old = getattr(self, name)
                new = np.zeros((grow * len(old), *old.shape[1:]), old.dtype)
                new[:tail - head] = old[head:tail]
                setattr(self, name, new)
            self.state[0], self.state[1] = 0, tail - head
        return queue_after(self.table.arrays, self.seg_u, self.seg_f, self.seg_m, self.state,
                           self.table.index[id(copies)], float(begin), float(read_free),
                           float(write_free))


@dataclass(frozen=True)
class Occupancy:
    engine: Engine
    cycles: int                   # busy cycles, begin to end, alone
    dram_read_bytes: int = 0
    dram_write_bytes: int = 0
    dram_lines: int = 0           # DRAM lines moved (reads and writes)
    macs: int = 0
    prefetch_bytes: int = 0
    copies: Copies | None = None  # a DMA instruction that copies rows (it ends deferred)
    l2_lines: int = 0             # L2 lines read and written
    after_copier: bool = False    # starts once the engine's copier has written its rows
    # Cycles in which one of its L2 streams moves between half a line and a line a cycle,
    # idling a cycle between lines (a row reader priming short or unaligned rows; for the
    # vector unit, its fastest operand or result stream in a segment), and the lines it
    # moves in them: the load engine's copier, below it in priority, can be held to that
    # pace (``sweeps.perf._trapped``). For a MATMUL where a copier is stepped beside the
    # unit (``copier_stepped``): all its cycles, and those in which such a copier is not
    # refused its bank (``_refusals``).
    paced_cycles: int = 0
    paced_lines: int = 0
    # Bursts its L2 streams begin after an idle cycle besides a paced reader's (the matmul
    # unit's tile readers at each tile, its writeback at each group; none where a copier
    # is stepped, which the walk counts): each takes a bank the copier may be about to
    # write (``sweeps.perf._trapped``).
    resumes: int = 0
    # Cycles in which its streams keep one L2 bank busy every cycle: a writeback group
    # whose rows all fall in one bank (a result stride a multiple of the banks' lines).
    # A copier below it in priority that reaches that bank waits there until the group
    # is written (``sweeps.perf._stolen_lines``).
    camped_cycles: int = 0
    # Where its L2 lines fall in its run: the share of them moved by each ninth of its
    # cycles, cumulative, from 0 to 1 (None: evenly). The matmul unit's tile readers move
    # theirs as each tile fills, its writer at each group's end (``sweeps.perf._Usage``).
    l2_profile: tuple | None = None


def _fields(instr: Instruction) -> SimpleNamespace:
    """The instruction's fields as attributes, looked up once (the loops below read them
    per row and per tile)."""
    return SimpleNamespace(**instr.fields())


@njit
def _lines(addr: int, n: int, w: int) -> int:
    """The ``w``-byte lines that ``n`` bytes from ``addr`` touch."""
    return (addr + n - 1) // w - addr // w + 1 if n else 0


# -- DMA -----------------------------------------------------------------------------------
def _dma_rows(instr: Instruction, hw: HardwareConfig, read_i32) -> tuple[np.ndarray, ...]:
    """A DMA instruction's rows, in order: ``(src, dst, bytes, needs an int32 read)``,
    ``int64 [rows]`` each (addresses in bytes)."""
    f, op = _fields(instr), instr.mnemonic
    if op in ("DMA_LOAD", "DMA_STORE"):
        r = np.arange(f.rows, dtype=np.int64)
        dram, l2 = f.dram_addr + r * f.dram_stride, f.l2_addr + r * f.l2_stride
        src, dst = (dram, l2) if op == "DMA_LOAD" else (l2, dram)
        return src, dst, np.full(f.rows, f.row_bytes, np.int64), np.zeros(f.rows, np.int64)
    if op == "DMA_GATHER":
        r = np.arange(f.count, dtype=np.int64)
        index = (np.array([read_i32(f.idx_addr + 4 * i) for i in range(f.count)], np.int64)
                 if read_i32 else r)
        return (f.table_addr + index * f.row_bytes, f.l2_addr + r * f.l2_stride,
                np.full(f.count, f.row_bytes, np.int64), np.ones(f.count, np.int64))
    if op in ("KV_PREFETCH", "KV_APPEND"):
        bt = hw.kv_block_tokens
        r = np.arange(f.n_tokens, dtype=np.int64)
        t = f.first_token + r
        block = (np.array([read_i32(kv_table_entry_addr(f.table_addr, int(u), bt)) for u in t],
                          np.int64) if read_i32 else t // bt)
        pool = kv_row_addr(f.pool_addr, block, t, bt, f.row_bytes)
        needs = ((r == 0) | (t % bt == 0)).astype(np.int64)
        if op == "KV_PREFETCH":
            return (pool + f.col_offset, f.l2_addr + r * f.col_bytes,
                    np.full(f.n_tokens, f.col_bytes, np.int64), needs)
        return f.l2_addr + r * f.row_bytes, pool, np.full(f.n_tokens, f.row_bytes, np.int64), needs
    raise ValueError(op)


def _kv_dram_period(hw: HardwareConfig, row_bytes: int) -> int:
    """Tokens after which a KV walk's DRAM rows repeat their block position and their
    alignment in the line, without a DRAM image (token ``t``'s row at ``pool_addr + t *
    row_bytes``, ``_dma_rows``)."""
    W = hw.line_bytes
    return math.lcm(hw.kv_block_tokens, W // math.gcd(row_bytes, W))


def _row_period(instr: Instruction, hw: HardwareConfig, read_i32) -> int:
    """Rows after which a DMA instruction's rows (``_dma_rows``) repeat: the same bytes,
    source and destination alignments in the line, and int32 reads; 0 where they need
    not (a gather's indices, or a KV walk's block table read from a DRAM image)."""
    W, f, op = hw.line_bytes, _fields(instr), instr.mnemonic

    def repeat(stride: int) -> int:          # rows after which row * stride repeats mod W
        return W // math.gcd(stride, W)

    if op in ("DMA_LOAD", "DMA_STORE"):
        return math.lcm(repeat(f.dram_stride), repeat(f.l2_stride))
    if op in ("KV_PREFETCH", "KV_APPEND") and read_i32 is None:
        l2_stride = f.col_bytes if op == "KV_PREFETCH" else f.row_bytes
        return math.lcm(_kv_dram_period(hw, f.row_bytes), repeat(l2_stride))
    return 0


#: ``_dma_run``'s stand-in for ``NEVER`` (its times are integers); a time below
#: ``_NEVER_BELOW`` is one (sums of a walk's cycles leave it far below).
_NEVER_INT, _NEVER_BELOW = -(1 << 62), -(1 << 61)


def dma_occupancy(instr: Instruction, hw: HardwareConfig, read_i32=None,
                  cal: Calibration = CALIBRATION, period: int | None = None) -> Occupancy:
    """The load/store engine: one row command per cycle (after an int32 read where the row
    needs one), at most ``CMD_DEPTH`` rows ahead of the copier's write side; the copier's
    read side takes the row's source lines back to back at the DRAM bandwidth (reads) or
    one per cycle (L2); its write side takes each row's destination lines, plus one
    priming step when source and destination are not aligned alike, once the data is
    there. Alone, the instruction ends when its last row is written; ``copies`` gives the
    same times as functions of when the copier is free of earlier instructions. Rows
    repeat every ``period`` rows (``_row_period`` by default; 0 steps every row): once a
    period has shifted every time alike, the rest of the periods are added at once (a
    600-token KV prefetch steps about 150 rows), exactly as stepping them (the times
    are exact: ``_dma_run``)."""
    line_cycles = hw.dram_cycles_per_line
    load = instr.engine == Engine.LOAD
    if instr.mnemonic == "STORE_COUNTERS":
        n = len(COUNTERS)
        return Occupancy(Engine.STORE, cal.dma_setup + math.ceil(n * line_cycles) + 3,
                         dram_write_bytes=COUNTER_BYTES * n, dram_lines=n)
    times, takes, first_cmds, jumps, counts, cycles, _ = _dma_walk(instr, hw, read_i32, cal,
                                                                    period)
    src_total, dst_total, moved, l2_total, int_reads, n_taken = counts.tolist()
    copies = None
    if n_taken:
        t, reads, writes = map(tuple, times.tolist())
        copies = Copies(t, reads, writes, tuple(first_cmds.tolist()),
                        tuple(map(tuple, takes.tolist())), tuple(jumps.tolist()), n_taken)
    table = int_reads * BLOCK_TABLE_ENTRY_BYTES       # int32 indices and block numbers
    if load:
        prefetch = moved if instr.mnemonic == "KV_PREFETCH" else 0
        return Occupancy(Engine.LOAD, cycles, dram_read_bytes=moved + table,
                         dram_lines=src_total + int_reads, prefetch_bytes=prefetch,
                         copies=copies, l2_lines=l2_total)
    return Occupancy(Engine.STORE, cycles, dram_read_bytes=table, dram_write_bytes=moved,
                     dram_lines=dst_total + int_reads, copies=copies, l2_lines=l2_total)


def _dma_walk(instr: Instruction, hw: HardwareConfig, read_i32, cal: Calibration,
              period: int | None = None) -> tuple:
    """``_dma_run`` on the instruction's rows, every ``period`` rows (``_row_period``'s
    by default)."""
    load = instr.engine == Engine.LOAD
    after_read = hw.dram_latency_cycles + cal.read_to_write if load else cal.l2_read_latency
    if period is None:
        period = _row_period(instr, hw, read_i32)
    return _dma_run(*_dma_rows(instr, hw, read_i32), period, hw.line_bytes,
                    hw.dram_bytes_per_cycle, load, hw.dram_latency_cycles, cal.dma_setup,
                    cal.cmd_to_read, after_read, cal.int_read, cal.dma_drain, CMD_DEPTH)


#: Rows whose source lines and write steps ``_dma_run`` keeps for a table read's answer
#: (``_answer_behind``): more than ``COPIER_FIFO_DEPTH`` plus the rows a read can overtake.
_RING = 32
#: An int32 read on the aux port is granted this many cycles after the engine's step that
#: asks for it (the step's ``st`` less the DRAM latency and ``int_read``): read off a
#: ``KV_PREFETCH`` of 48 tokens alone in Amaranth's simulator on edge-4x4, the table read
#: of each block after the first two cycles after the model's ask, both rows before it
#: read a cycle apart.
AUX_GRANT = 2


@njit
def _answer_behind(ask, lines, ring_lines, ring_read, ring_taken, n_ring, one):
    """The step (``1 / S`` cycles, as ``_dma_run``'s) at which an int32 read on the aux
    port asked at ``ask`` comes back, at the earliest, behind the copier's lines: the DRAM
    answers in request order on one stream, so it comes after every line the copier had
    read before it was granted (``AUX_GRANT`` cycles on), and the copier takes those only
    as its landing buffer (``COPIER_FIFO_DEPTH`` lines) has room: the last one enters as
    the write side takes the line ``COPIER_FIFO_DEPTH`` before it, and the int32 is
    taken the cycle after. ``lines``: the copier's source lines so far; ``ring_*``: the
    last rows' source lines, first read and the step its write side took its last source
    line, oldest at ``n_ring % _RING``. The caller adds ``int_read``. ``-1 << 62`` where no
    line holds it back. (Read off Amaranth's simulator: a ``KV_PREFETCH`` of 48 tokens of
    16-byte columns from 64-byte rows alone, whose one-line rows the copier writes slower
    than the DRAM delivers them, on edge-4x4: each table read after the first came back 3
    cycles past its latency, the cycle after the line five before the last one ahead of it
    was written; 7 to 15 cycles short over five blocks on edge-4x4 and edge-8x8 without
    it.)"""
    granted = -(-ask // one) + AUX_GRANT
    ahead = lines
    for back in range(min(n_ring, _RING)):
        e = (n_ring - 1 - back) % _RING
        if -(-ring_read[e] // one) < granted:
            break
        ahead -= ring_lines[e]
    k = ahead - 1 - COPIER_FIFO_DEPTH            # the line the write side must take first
    end = lines
    for back in range(min(n_ring, _RING)):
        e = (n_ring - 1 - back) % _RING
        if end - ring_lines[e] <= k:
            if k < end:
                return ring_taken[e] - (end - 1 - k) * one
            break
        end -= ring_lines[e]
    return _NEVER_INT


@njit
def _dma_run(src, dst, nbytes, needs, period, W, S, load, lat, setup, cmd_to_read,
             after_read, int_read, drain, depth):
    """``dma_occupancy``'s walk of the rows ``(src, dst, nbytes, needs)`` (``_dma_rows``)
    on ``W``-byte lines at ``S`` DRAM bytes a cycle. Times are max-plus triples (see
    ``Copies``: alone, + read side free, + write side free), counted in ``1 / S`` cycles,
    so that a line's ``W / S`` cycles and every sum are exact integers (a jump of whole
    periods then gives exactly what stepping them does). Returns, in cycles: ``(issue,
    reads and writes float64 [3, 3] (``Copies``'); takes float64 [<= depth, 3], oldest
    first; the first row commands' times alone float64 [<= depth]; their ``cmd_jumps``
    int64; counts int64 [6]: source lines, destination lines, bytes moved, L2 lines,
    int32 reads, row commands; cycles; the rows stepped)``."""
    never = _NEVER_INT
    one = S                                     # a cycle
    st = np.full(12, never, np.int64)           # t, read_end, write_end, accepted
    st[0], st[4], st[8] = setup * one, 0, 0
    taken = np.empty((depth, 3), np.int64)      # a ring, ``head`` its oldest
    head = n_window = 0
    first_cmds = np.empty(depth, np.int64)
    n_first = 0
    counts = np.zeros(6, np.int64)
    before_st = np.empty(12, np.int64)
    before_taken = np.empty((depth, 3), np.int64)
    before_counts = np.empty(6, np.int64)
    have_before = False
    n_rows = len(src)
    settle = depth + period              # rows before the first look for a settled period
    c = np.empty(3, np.int64)
    # a table walk's last rows (a ring, ``_answer_behind``): source lines, first read,
    # the write side's step that took the last source line; and as of ``before_*``
    track = load and needs.any()
    ring_lines = np.zeros(_RING, np.int64)
    ring_read = np.full((_RING, 3), never, np.int64)
    ring_taken = np.full((_RING, 3), never, np.int64)
    before_ring = np.empty((_RING, 3, 2), np.int64)
    before_lines = np.empty(_RING, np.int64)
    n_ring = before_n = 0
    r = stepped = 0
    while r < n_rows:
        if period and r >= settle and r % period == 0 and n_first == depth:
            m = (n_rows - r) // period
            if have_before and m:
                # settled where every time is the one a period before shifted by d
                d = st[0] - before_st[0]
                same = True
                for i in range(12):
                    same = same and _shifted_by(before_st[i], st[i], d)
                for i in range(n_window):
                    for j in range(3):
                        same = same and _shifted_by(before_taken[i, j],
                                                    taken[(head + i) % depth, j], d)
                for back in range(_RING if track else 0):    # row by row, by age
                    e, b = (n_ring - 1 - back) % _RING, (before_n - 1 - back) % _RING
                    same = same and ring_lines[e] == before_lines[b]
                    for j in range(3):
                        same = same and _shifted_by(before_ring[b, j, 0], ring_read[e, j], d) \
                            and _shifted_by(before_ring[b, j, 1], ring_taken[e, j], d)
                if same:
                    st += m * d
                    for i in range(n_window):
                        taken[(head + i) % depth] += m * d
                    for i in range(_RING if track else 0):
                        for j in range(3):
                            if ring_read[i, j] >= _NEVER_BELOW:
                                ring_read[i, j] += m * d
                            if ring_taken[i, j] >= _NEVER_BELOW:
                                ring_taken[i, j] += m * d
                    counts += m * (counts - before_counts)
                    r += m * period
                    have_before = False
                    continue
            before_st[:] = st
            for i in range(n_window):
                before_taken[i] = taken[(head + i) % depth]
            before_counts[:] = counts
            if track:
                before_ring[:, :, 0] = ring_read
                before_ring[:, :, 1] = ring_taken
                before_lines[:] = ring_lines
                before_n = n_ring
            have_before = True
        n, r, stepped = nbytes[r], r + 1, stepped + 1
        if needs[r - 1]:
            counts[4] += 1
            for j in range(3):
                ask = st[j]
                st[j] += (lat + int_read) * one
                if track:
                    # a line of the DRAM's credit, after the rows' before it
                    # (``rtl.dram``: every request takes a line's)
                    st[3 + j] = max(ask, st[3 + j]) + W
                    behind = _answer_behind(ask, counts[0], ring_lines, ring_read[:, j],
                                            ring_taken[:, j], n_ring, one)
                    st[j] = max(st[j], behind + int_read * one)
        if n == 0:
            st[0:3] += one
            continue
        a, b = src[r - 1], dst[r - 1]
        src_lines, dst_lines = _lines(a, n, W), _lines(b, n, W)
        steps = dst_lines + (1 if (a - b) % W else 0)
        if counts[5] >= depth:                 # the copier's command queue is full
            for j in range(3):
                st[j] = max(st[j], taken[head, j] + one)
        c[:] = st[0:3]                         # the row command
        st[0:3] += one
        if n_first < depth:
            first_cmds[n_first] = c[0]          # (no queue wait of its own yet)
            n_first += 1
        slot = (head + n_window) % depth
        for j in range(3):
            taken[slot, j] = max(c[j] + 2 * one, st[6 + j])
        if n_window < depth:
            n_window += 1
        else:
            head = (head + 1) % depth
        counts[5] += 1
        for j in range(3):
            start = max(c[j] + cmd_to_read * one, st[3 + j])
            if load:
                # The DRAM (``rtl.dram``) holds a line and a cycle of bandwidth in credit,
                # so a stream of reads runs a cycle ahead of its lines' bandwidth slots
                # (from ``start``, ``W / S`` cycles each): line k of a stream from full
                # credit is accepted at ceil(k * W / S - 1), at most one a cycle. A line's
                # data is written ``after_read`` later. (Read off Amaranth's simulator:
                # loads alone were 3 to 8 cycles long at 51 bytes a cycle when reads were
                # charged their whole slot.)
                first = max(max(c[j] + cmd_to_read * one, st[3 + j] - one), st[9 + j])
                ring_read[n_ring % _RING, j] = first
                st[3 + j] = start + src_lines * W
                st[9 + j] = max(first + src_lines * one, st[3 + j] - W)
                st[6 + j] = max(max(first + after_read * one, st[6 + j]) + steps * one,
                                st[9 + j] + after_read * one)
            else:
                st[3 + j] = start + src_lines * one
                st[6 + j] = max(max(start + after_read * one, st[6 + j])
                                + max(steps * one, dst_lines * W), st[3 + j] + after_read * one)
        if load:
            counts[0] += src_lines
            counts[3] += dst_lines
            if track:
                # a source line that fills more than one destination line is taken at
                # the first of them past its own (the trace above: rows of 24 bytes)
                ring_lines[n_ring % _RING] = src_lines
                ring_taken[n_ring % _RING] = st[6:9] - max(0, dst_lines - src_lines) * one
                n_ring += 1
        else:
            counts[1] += dst_lines
            counts[3] += src_lines
        counts[2] += n
    end = max(st[0], st[6])
    window = np.empty((n_window, 3), np.float64)
    for i in range(n_window):
        for j in range(3):
            window[i, j] = _cycles(taken[(head + i) % depth, j], one)
    times = np.empty((3, 3), np.float64)
    for i in range(9):
        times[i // 3, i % 3] = _cycles(st[i], one)
    jumps = np.flatnonzero(first_cmds[1:n_first] > first_cmds[:max(0, n_first - 1)] + one)
    return (times, window, first_cmds[:n_first] / one, jumps, counts, -(-end // one) + drain,
            stepped)


@njit
def _cycles(time, one):
    """An integer time of ``_dma_run`` in cycles of ``one`` (``NEVER`` kept)."""
    return -np.inf if time < _NEVER_BELOW else time / one


@njit
def _shifted_by(before, after, d):
    """Whether the time ``after`` is ``before`` shifted by ``d`` (``NEVER`` staying
    ``NEVER``)."""
    if before < _NEVER_BELOW or after < _NEVER_BELOW:
        return before < _NEVER_BELOW and after < _NEVER_BELOW
    return after - before == d


# -- matmul --------------------------------------------------------------------------------
_KN, _MXINT4, _GEMV = int(WeightLayout.KN), int(WeightFormat.MXINT4), int(MatmulMode.GEMV)
#: A ``MATMUL``'s fields by name, as its kernels read them (``_matmul_fields``).
MatmulFields = namedtuple("MatmulFields", [f.name for f in BY_MNEMONIC["MATMUL"].fields])


def _matmul_fields(instr: Instruction) -> MatmulFields:
    return MatmulFields._make(instr.operands)          # plain ints (``isa.make``)


@njit
def _reader_lines(segments, W, banks):
    """One tile reader's row commands (``segments``, a row each: ``(base, stride, rows,
    bytes)``, addresses modulo ``W * banks``) as the L2 bank of each line it reads, in
    order, and whether each step of its write side takes a line (1) or not (0)
    (``rtl.copier``: a row that starts on a line takes one step a line; one that does not
    takes a priming step and a step a destination line, the last of which reads nothing
    when the row ends early in its line)."""
    n_lines = n_steps = 0
    for base, stride, rows, n in segments:
        for r in range(rows):
            a = base + r * stride
            took = _lines(a, n, W)
            n_lines += took
            n_steps += took if a % W == 0 else -(-n // W) + 1
    lines = np.empty(n_lines, np.int64)
    steps = np.zeros(n_steps, np.int64)
    i = j = 0
    for base, stride, rows, n in segments:
        for r in range(rows):
            a = base + r * stride
            first, last = a // W, (a + n - 1) // W
            for line in range(first, last + 1):
                lines[i] = line % banks
                i += 1
            steps[j:j + last - first + 1] = 1
            j += last - first + 1 if a % W == 0 else -(-n // W) + 1
    return lines, steps


@njit
def _fill_cycles(x_lines, x_steps, w_lines, w_steps, taken):
    """Cycles from the tile filler's begin until its tile is announced, for the x and
    weight row readers' lines' banks and write-side steps (``_reader_lines``' arrays;
    ``rtl.matmul_unit.TileFiller``, two ``rtl.copier.RowCopier``), cycle by cycle. Each
    asks the L2 for its next line while fewer than ``COPIER_FIFO_DEPTH - 1`` of its lines
    are granted and not yet taken; the x reader's port comes first, so the weight reader
    waits whenever both ask the same bank (``rtl.l2``'s fixed priority). A write-side
    step that takes a line runs ``FILL_DATA_LATENCY`` cycles after the line was granted,
    at the earliest; the first line is asked for ``FILL_ISSUE_LATENCY`` cycles after
    begin (the row command through the copier's queue), and the tile is announced the
    cycle after the last step. Both latencies are the RTL's structure (read off a trace
    of the unit in Amaranth's simulator), not fitted. ``taken`` (``int64``, zeros) is
    set to each cycle's banks granted, a bit each, for ``_refusals``, as far as it
    reaches (empty: not recorded)."""
    # Written out for the two readers (x: ``x_*``, weights: ``w_*``): lines issued (``*_i``;
    # each one's grant cycle in ``*_granted``), write-side steps taken (``*_j``) and lines
    # popped by them (``*_p``).
    n_xl, n_wl, n_xs, n_ws = len(x_lines), len(w_lines), len(x_steps), len(w_steps)
    x_granted = np.empty(n_xl, np.int64)
    w_granted = np.empty(n_wl, np.int64)
    x_i = w_i = x_j = w_j = x_p = w_p = 0
    room, latency = COPIER_FIFO_DEPTH - 1, FILL_DATA_LATENCY
    last = t = FILL_ISSUE_LATENCY
    while x_j < n_xs or w_j < n_ws:
        # the read sides, the x reader's port first: the weight reader waits for its bank
        bank = -1
        if x_i < n_xl and x_i - x_p < room:
            x_granted[x_i] = t
            bank = x_lines[x_i]
            x_i += 1
        if w_i < n_wl and w_i - w_p < room and w_lines[w_i] != bank:
            w_granted[w_i] = t
            if t < len(taken):
                taken[t] |= 1 << w_lines[w_i]
            w_i += 1
        if bank >= 0 and t < len(taken):
            taken[t] |= 1 << bank
        # the write sides: a step that takes a line once it is in
        if x_j < n_xs and (not x_steps[x_j] or (x_p < x_i and x_granted[x_p] <= t - latency)):
            x_p += x_steps[x_j]
            x_j += 1
            last = t
        if w_j < n_ws and (not w_steps[w_j] or (w_p < w_i and w_granted[w_p] <= t - latency)):
            w_p += w_steps[w_j]
            w_j += 1
            last = t
        t += 1
    return last + 1


@njit
def _tiles(m, n, k, MT, KT, C):
    """``matmul_tiles`` for a ``MATMUL`` of ``m x k`` by ``k x n`` on tiles of ``MT`` rows
    and ``KT`` reduction bytes and an array of ``C`` columns: ``int64 [tiles, 6]``."""
    rows = np.empty((m, 2), np.int64)          # (m0, mt) of each tile of rows
    count = m0 = 0
    while m0 < m:
        left = m - m0
        mt = left if left <= MT else (left + 1) // 2 if left < 2 * MT else MT
        rows[count, 0], rows[count, 1] = m0, mt
        count += 1
        m0 += mt
    tiles = np.empty((count * -(-n // C) * -(-k // KT), 6), np.int64)
    i = 0
    for r in range(count):
        for n0 in range(0, n, C):
            for kt in range(0, k, KT):
                tiles[i, 0], tiles[i, 1], tiles[i, 2] = rows[r, 0], rows[r, 1], n0
                tiles[i, 3], tiles[i, 4], tiles[i, 5] = min(C, n - n0), kt, min(KT, k - kt)
                i += 1
    return tiles


def matmul_tiles(f, hw: HardwareConfig) -> np.ndarray:
    """The tiles of a ``MATMUL`` (fields ``f``) in the matmul unit's order (``kt`` fastest,
    then ``n``, then ``m``): ``int64 [tiles, 6]``, a row ``(m0, mt, n0, nc, kt, kl)`` each.
    Rows go in tiles of ``matmul_tile``'s rows, except that rows between one and two
    tiles' worth are split evenly between the last two tiles
    (``rtl.matmul_unit._tile_rows``)."""
    MT, KT = hw.matmul_tile(f.mode)
    return _tiles(f.m, f.n, f.k, MT, KT, hw.array_cols)


@njit
def gemm_blocks(load, stream, stream_rows, avail, push, mt, R, blocks, extrapolate=True):
    """``(load, stream)``: the cycles at which the GEMM feeder began loading and began
    streaming the last of a tile's ``blocks`` weight blocks, from the previous block's
    ``load``, ``stream`` and rows ``stream_rows``, the cycle ``avail`` the tile's first
    block may stream and the cycle ``push`` its buffers were filled. A block's ``R``
    weight rows load ``R`` cycles after the previous load began, once the previous block
    has begun to stream and the tile is in; its ``mt`` rows stream once its load has
    begun and the previous block's rows have gone (``rtl.matmul_unit``'s feeder).

    This is a max-plus recurrence: ``push`` and ``avail`` bind only the first block (it
    loads after ``push``), so from then on how far a block advances depends only on the
    gap between ``stream`` and ``load``. Once ``load`` and ``stream`` advance alike twice
    the gap has repeated, and so does every later advance; with ``extrapolate`` the rest
    are then added at once rather than stepped (``tests/sweeps/test_perf_model.py``
    checks both agree). Equal advances are not enough: with ``mt < R`` loads advance by
    ``R`` and streams by ``mt`` until the stream waits for the load. Compiled (numba);
    ``NEVER`` (no block yet) is any time before the first."""
    step_load = step_stream = -1
    for b in range(blocks):
        before_load, before_stream = load, stream
        load = max(load + R, stream + 1, push + 1)
        stream = max(load + 1, stream + stream_rows, avail)
        stream_rows, avail = mt, load      # ``avail`` binds the first block only
        d_load, d_stream = load - before_load, stream - before_stream
        if extrapolate and d_load == step_load and d_stream == step_stream \
                and d_load == d_stream:
            return load + (blocks - 1 - b) * d_load, stream + (blocks - 1 - b) * d_stream
        step_load, step_stream = d_load, d_stream
    return load, stream


@njit
def _fills(f, tiles, W, banks, record):
    """Each tile's fill (``tiles``: ``matmul_tiles``' rows; ``f``: ``MatmulFields``):
    ``(int64 [tiles, 5], taken, offsets)``; with ``record``, ``taken`` holds each fill's
    cycles' bank grants (``_fill_cycles``), fill ``i``'s from ``offsets[i]`` to
    ``offsets[i + 1]``, for ``_refusals`` (else empty). A row of the first is ``(cycles
    from the filler's begin until the tile is announced, L2 lines read, readers that read
    any, paced steps, paced lines)`` each:
    the steps and lines of the reader with the most steps if it idles a cycle between
    lines (half a line to a line a step), else 0. The x reader reads the tile's ``mt``
    rows of ``kl`` bytes from ``x_addr + m0 * x_stride + kt``; the weight reader its
    ``nc`` weight rows, of which the x reader also takes ``(nc - mt) // 2`` NK rows.
    MXINT4 weights are ``(kl + 1) // 2`` packed bytes a row from byte ``kt // 2`` (``kt``
    is a multiple of the tile's reduction, so of the block), and the weight reader also
    reads each row's block exponents. Addresses are read modulo ``W * banks``, over
    which they repeat their banks and alignment. Compiled (numba), like the readers it
    steps (``_reader_lines``, ``_fill_cycles``)."""
    P = W * banks
    kn = f.w_layout == _KN
    mx = f.w_format == _MXINT4
    e_row = -(-f.k // MX_BLOCK)                 # bytes of block exponents per weight row
    out = np.zeros((len(tiles), 5), np.int64)
    taken = np.zeros(1024 if record else 0, np.int64)
    offsets = np.zeros(len(tiles) + 1, np.int64)
    used = 0
    x_segs = np.zeros((2, 4), np.int64)
    w_segs = np.zeros((2, 4), np.int64)
    for i in range(len(tiles)):
        m0, mt, n0, nc, kt, kl = tiles[i]
        x_segs[0] = ((f.x_addr + m0 * f.x_stride + kt) % P, f.x_stride % P, mt, kl)
        n_x = n_w = 1
        if kn:
            w_segs[0] = ((f.w_addr + kt * f.w_stride + n0) % P, f.w_stride % P, kl, nc)
        else:
            x_w = max(0, (nc - mt) // 2)
            w_base = f.w_addr + n0 * f.w_stride + (kt // 2 if mx else kt)
            w_bytes = (kl + 1) // 2 if mx else kl
            w_segs[0] = (w_base % P, f.w_stride % P, nc - x_w, w_bytes)
            if x_w:
                x_segs[1] = ((w_base + (nc - x_w) * f.w_stride) % P, f.w_stride % P, x_w,
                             w_bytes)
                n_x = 2
            if mx:
                w_segs[1] = ((f.e_addr + n0 * e_row + kt // MX_BLOCK) % P, e_row % P, nc,
                             -(-kl // MX_BLOCK))
                n_w = 2
        x_lines, x_steps = _reader_lines(x_segs[:n_x], W, banks)
        w_lines, w_steps = _reader_lines(w_segs[:n_w], W, banks)
        room = FILL_ISSUE_LATENCY + (FILL_DATA_LATENCY + COPIER_FIFO_DEPTH) * (
            len(x_steps) + len(w_steps) + 1) if record else 0
        if used + room > len(taken):
            grown = np.zeros(max(2 * len(taken), used + room), np.int64)
            grown[:used] = taken[:used]
            taken = grown
        out[i, 0] = _fill_cycles(x_lines, x_steps, w_lines, w_steps, taken[used:used + room])
        if record:
            used += out[i, 0]
        offsets[i + 1] = used
        out[i, 1] = len(x_lines) + len(w_lines)
        out[i, 2] = (len(x_lines) > 0) + (len(w_lines) > 0)
        steps, reads = len(x_steps), len(x_lines)
        if len(w_steps) > steps or (len(w_steps) == steps and len(w_lines) > reads):
            steps, reads = len(w_steps), len(w_lines)
        if reads < steps <= 2 * reads:
            out[i, 3], out[i, 4] = steps, reads
    return out, taken[:used], offsets


@njit
def _refusals(taken, offsets, begins, writes, banks):
    """The cycles a copier below the matmul unit in priority is refused its L2 bank if it
    asks for a line every cycle in consecutive banks (a DMA copier writing a line a
    cycle): ``taken`` and ``offsets``, ``_fills``' banks granted (a bit each) each cycle
    of each tile's fill, the fills beginning at ``begins``; ``writes``, the writer's
    ``(cycle, bank bit)`` in order (``_steps``: each already after the cycles a reader
    had its bank; a write that met one here would wait a cycle). The old-output reader's
    grants are not in the walk. A cycle it is not refused it
    moves on a bank. Averaged over the ``banks`` banks it may begin in (walked together
    until they meet, then as one). The readers' idle steps, the lines an unaligned row
    reads again and the writer's lines each cost a copier that trails them a cycle, a
    burst after a pause one time in ``banks`` (``sweeps.perf._trapped``)."""
    n_fills, n_writes = len(begins), len(writes)
    cs = np.arange(banks)            # the copier's bank, from each bank it may begin in
    refused = np.zeros(banks)
    merged = False                   # all alike: from there on they stay alike
    t = -1
    k = j = i = 0                    # the next fill cycle, its fill, the next write
    wt = writes[0, 0] if n_writes else 0     # the next write's cycle
    n = offsets[n_fills] if n_fills else 0
    while k < n or j < n_writes:
        while i < n_fills - 1 and k >= offsets[i + 1]:
            i += 1
        a = begins[i] + k - offsets[i] if k < n else 1 << 62
        at = min(a, wt if j < n_writes else 1 << 62)
        mask = 0
        if at == a:
            mask = taken[k]
            k += 1
        if j < n_writes and wt == at:
            if mask & writes[j, 1]:              # a reader has its bank: next cycle
                wt += 1
            else:
                mask |= writes[j, 1]
                j += 1
                if j < n_writes:
                    wt = max(writes[j, 0], at + 1)
        step = at - t - 1 if t >= 0 else 0       # the free cycles since the last
        for p in range(1 if merged else banks):
            c = (cs[p] + step) % banks
            if mask >> c & 1:
                refused[p] += 1
            else:
                c = (c + 1) % banks
            cs[p] = c
        if not merged:
            merged = True
            for p in range(1, banks):
                if cs[p] != cs[0]:
                    merged = False
            if merged:                           # one walk for all from here
                refused[0] = refused.sum() / banks
        t = at
    return refused[0] if merged else refused.sum() / banks


#: Before any cycle: the GEMM feeder's last load and stream before its first block.
_NO_CYCLE = -(1 << 40)


# ``_steps``' row writer, carried from cycle to cycle in an int64 array: the next row to
# write, its steps done (a priming step first where the row does not start on a line),
# the cycle its next step may run (-1: not begun), its take, the writer's next free
# cycle, the rows it has taken, and the moves, writes and camped groups recorded.
_WB_ROW, _WB_STEP, _WB_DUE, _WB_TAKE, _WB_FREE, _WB_TAKEN, _WB_MOVES, _WB_WRITES, \
    _WB_CAMPED, _WB_STATE = range(10)
# ``_writeback``'s hand-over, likewise: the next cycle, the group being handed over (or
# next), its next row, whether that row's priming step is done, the cycles of the last
# beat and priming step, the old-output lines asked for and taken and in the group, the
# group's first hand-over (-1: not begun), the last row handed over, the rows handed
# over, and the fill last looked in (``_fill_grants``).
_HS_T, _HS_GROUP, _HS_R, _HS_PRIMED, _HS_BEAT, _HS_PRIME, _HS_ASKED, _HS_POPPED, \
    _HS_OLD, _HS_FIRST, _HS_HANDED, _HS_ROWS, _HS_HINT, _HS_STATE = range(14)


@njit
def _fill_grants(t, begins, taken, offsets, hs):
    """The banks (a bit each) the tile filler's readers are granted in cycle ``t``:
    ``begins``, each fill's begin (``-1``: not known yet, so none), ``taken`` and
    ``offsets``, their grants (``_fills``; ``taken`` empty: none recorded, so none). The
    search starts at the fill last looked in (``hs[_HS_HINT]``, updated): fills are in
    time order, and the cycles asked for only grow."""
    n = len(begins)
    if not len(taken) or not n:
        return 0
    i = hs[_HS_HINT]
    while i + 1 < n and 0 <= begins[i + 1] <= t:
        i += 1
    hs[_HS_HINT] = i
    b = begins[i]
    if b < 0 or t < b or t - b >= offsets[i + 1] - offsets[i]:
        return 0
    return taken[offsets[i] + t - b]


@njit
def _write_step(wb, t, grants, rows, n_rows, W, banks, accumulate, groups, record, camped,
                moves, writes):
    """The row writer (``rtl.matmul_unit.Writeback``'s, a ``RowCopier`` from a stream)
    in cycle ``t`` (state ``wb``, ``_WB_*``; ``rows``, ``_writeback``'s, the first
    ``n_rows`` handed over): a row is taken ``WB_DATA_LATENCY`` after its hand-over at
    the earliest, once the row before is written, a cycle earlier where it has a priming
    step and its command was queued ahead (all rows but a group's first, and every row
    when accumulating, whose old output comes later); the priming step reads nothing,
    and each line is written in a cycle in which no port before the writer's
    (``grants``) has its bank. Records its move, its writes (``record``; not a camped
    group's) and, at a camped group's last row, the group."""
    w = wb[_WB_ROW]
    if w >= n_rows:
        return
    a, n, r, g, enter = rows[w, 0], rows[w, 1], rows[w, 2], rows[w, 3], rows[w, 4]
    prime = 1 if a % W else 0
    n_lines = (a + n - 1) // W - a // W + 1
    if wb[_WB_DUE] < 0:                                  # the row's take
        take = max(enter + WB_DATA_LATENCY - (prime if r or accumulate else 0),
                   wb[_WB_FREE])
        wb[_WB_DUE] = wb[_WB_TAKE] = take
        if r == 0:
            groups[g, _G_TAKE] = take
    if t < wb[_WB_DUE]:
        return
    j = wb[_WB_STEP]
    if j < prime:                                        # the priming step: no line
        wb[_WB_STEP], wb[_WB_DUE] = 1, t + 1
        return
    # (more banks than an int64's bits: grants are not recorded, no port waits)
    bit = 1 << ((a // W + j - prime) % banks) if banks <= _MAX_STEPPED_BANKS else 0
    if grants & bit:                                     # refused: the next cycle
        return
    if j == prime:                                       # out of the landing buffer
        wb[_WB_TAKEN] += 1
    if record and not groups[g, _G_CAMPED]:
        writes[wb[_WB_WRITES], 0], writes[wb[_WB_WRITES], 1] = t, bit
        wb[_WB_WRITES] += 1
    wb[_WB_STEP], wb[_WB_DUE] = j + 1, t + 1
    if j + 1 < prime + n_lines:
        return
    moves[wb[_WB_MOVES]] = (wb[_WB_TAKE], t + 1, n_lines * (2 if accumulate else 1))
    wb[_WB_MOVES] += 1
    if groups[g, _G_CAMPED] and r == groups[g, _G_ROWS] - 1:
        camped[wb[_WB_CAMPED]] = (groups[g, _G_TAKE], t + 1, groups[g, _G_ROWS])
        wb[_WB_CAMPED] += 1
    wb[_WB_FREE] = t + 1
    wb[_WB_ROW], wb[_WB_STEP], wb[_WB_DUE] = w + 1, 0, -1


# ``_steps``' groups, a row each: their first row (in ``rows``), rows, the cycle their
# results are in (plus ``latency + result_latency``), whether camped, the writer's take
# of their first row.
_G_ROW0, _G_ROWS, _G_READY, _G_CAMPED, _G_TAKE = range(5)


@njit
def _writeback(hs, wb, target, n_groups, rows, groups, half_free, W, banks, accumulate,
               old_latency, begins, taken, offsets, old_bank, old_granted, record, camped,
               moves, writes, limit):
    """The writeback (``rtl.matmul_unit.Writeback``) cycle by cycle from ``hs[_HS_T]``
    until group ``target`` has been handed over (``target = n_groups``: until every
    registered group's rows are written), state ``hs`` (``_HS_*``) and ``wb``. A group
    is taken once its results are in and the one before has been handed over
    (``WB_NEXT_GROUP``), and its rows handed over one a cycle from ``first``, into the
    row writer's landing buffer (``COPIER_FIFO_DEPTH`` rows) while it has room; the half
    is freed (``half_free``) with the last. Accumulating, each row waits for its old
    output from the old-output reader (a row reader: its lines asked for from
    ``FILL_DATA_LATENCY`` before ``first`` while fewer than ``COPIER_FIFO_DEPTH - 1`` are
    in it, each taken ``FILL_DATA_LATENCY`` after its grant, by a priming step first
    where the row does not start on a line). The filler's ports come before the
    reader's, the reader's before the writer's (``_write_step``): a port waits while one
    before it has its bank. Only cycles up to the target's last hand-over are stepped:
    the fills after it (their begins not known yet) begin later. Steps at most ``limit``
    cycles a call (more is a model that stopped moving: ``RuntimeError``)."""
    steps = 0
    while True:
        steps += 1
        if steps > limit:
            raise RuntimeError("_writeback: no progress (a bug in the model)")
        g = hs[_HS_GROUP]
        if g < n_groups and hs[_HS_FIRST] < 0:
            first = max(groups[g, _G_READY], hs[_HS_HANDED] + WB_NEXT_GROUP) + old_latency
            hs[_HS_FIRST], hs[_HS_R], hs[_HS_PRIMED] = first, 0, 0
            hs[_HS_BEAT] = hs[_HS_PRIME] = -1
            hs[_HS_ASKED] = hs[_HS_POPPED] = hs[_HS_OLD] = 0
            if accumulate:
                for k in range(groups[g, _G_ROWS]):
                    a, n = rows[groups[g, _G_ROW0] + k, 0], rows[groups[g, _G_ROW0] + k, 1]
                    for ln in range(a // W, (a + n - 1) // W + 1):
                        old_bank[hs[_HS_OLD]] = ln % banks
                        hs[_HS_OLD] += 1
        n_rows = hs[_HS_ROWS]
        if g > target or (g >= n_groups and wb[_WB_ROW] >= n_rows):
            return
        t = hs[_HS_T]
        # skip cycles in which nothing can happen
        begin = hs[_HS_FIRST] - (FILL_DATA_LATENCY if accumulate else 0) \
            if g < n_groups else 1 << 62
        if wb[_WB_ROW] < n_rows:
            begin = min(begin, wb[_WB_DUE] if wb[_WB_DUE] >= 0 else wb[_WB_FREE])
        t = max(t, begin)
        grants = _fill_grants(t, begins, taken, offsets, hs)
        if g < n_groups and t >= hs[_HS_FIRST] - (FILL_DATA_LATENCY if accumulate else 0):
            k = hs[_HS_ASKED]
            if accumulate and k < hs[_HS_OLD] and k - hs[_HS_POPPED] < COPIER_FIFO_DEPTH - 1 \
                    and (banks > _MAX_STEPPED_BANKS or not grants >> old_bank[k] & 1):
                old_granted[k] = t
                if banks <= _MAX_STEPPED_BANKS:
                    grants |= 1 << old_bank[k]
                hs[_HS_ASKED] = k + 1
            r = hs[_HS_R]
            i = groups[g, _G_ROW0] + r
            a, n = rows[i, 0], rows[i, 1]
            prime = a % W != 0
            pops = 1 + ((a + n - 1) // W > a // W) if accumulate else 0
            p, primed = hs[_HS_POPPED], hs[_HS_PRIMED]
            if prime and accumulate and not primed:
                # the old row's priming step: its first line, after the row before's beat
                if p < hs[_HS_ASKED] and old_granted[p] + FILL_DATA_LATENCY <= t \
                        and t > hs[_HS_BEAT]:
                    hs[_HS_PRIMED], hs[_HS_PRIME], hs[_HS_POPPED] = 1, t, p + 1
            elif t >= hs[_HS_FIRST] + r and t > hs[_HS_BEAT] and t > hs[_HS_PRIME] \
                    and n_rows - wb[_WB_TAKEN] < COPIER_FIFO_DEPTH \
                    and (pops == primed or (p < hs[_HS_ASKED]
                                            and old_granted[p] + FILL_DATA_LATENCY <= t)):
                hs[_HS_POPPED] = p + pops - primed
                rows[i, 4] = t
                hs[_HS_ROWS] = n_rows = n_rows + 1
                hs[_HS_BEAT], hs[_HS_PRIMED], hs[_HS_R] = t, 0, r + 1
                if r + 1 == groups[g, _G_ROWS]:          # the group is handed over
                    hs[_HS_HANDED] = half_free[g % 2] = t
                    hs[_HS_GROUP], hs[_HS_FIRST] = g + 1, -1
        _write_step(wb, t, grants, rows, n_rows, W, banks, accumulate, groups, record,
                    camped, moves, writes)
        hs[_HS_T] = t + 1


@njit
def _steps(f, tiles, fills, W, banks, R, gemv, latency, result_latency, old_latency,
           out_bytes, record, taken, offsets):
    """``matmul_timeline``'s walk over the tiles (``matmul_tiles``' rows, their fills
    ``_fills``' rows, ``taken`` and ``offsets`` their grants, empty if not recorded) and
    each group's writeback (``_writeback``), compiled (numba): ``(the writer's last
    step, L2 lines, resumes, the tiles' announcements int64 [tiles], fills int64 [tiles,
    3], camped groups int64 [groups, 3], moves float64 [bursts, 3], writes int64 [lines,
    2])``. Fills, camped groups and moves are ``(from, to, L2 lines)`` (a camped group's
    rows for lines); with ``record``, writes are the writer's ``(cycle, bank bit)`` but
    a camped group's (``_camped_cycles`` counts those), else empty. The writeback is
    stepped as far as the feeder needs it (a group's first block waits for its
    accumulator half): by then every fill it runs beside has begun."""
    T = len(tiles)
    n_groups = rows_written = 0
    for i in range(T):
        if tiles[i, 4] + tiles[i, 5] == f.k:
            n_groups += 1
            rows_written += tiles[i, 1]
    push = np.zeros(2, np.int64)           # per buffer set: when its tile was announced
    release = np.full(2, -1, np.int64)     # per buffer set: when the feeder released it
    half_free = np.zeros(2, np.int64)      # per accumulator half: when it was read out
    filler = 1                             # the filler's next free cycle
    stream = load = _NO_CYCLE              # the feeder's last stream and load decisions
    stream_rows = 0                        # rows of the last streamed block
    lines = resumes = s = group = n_rows = 0
    announced = np.empty(T, np.int64)
    fill_spans = np.empty((T, 3), np.int64)
    begins = np.full(T, -1, np.int64)
    # the writeback's rows, in the order they are handed over: (address, bytes, row of
    # its group, group, hand-over cycle)
    rows = np.zeros((rows_written, 5), np.int64)
    groups = np.zeros((n_groups, 5), np.int64)            # ``_G_*``
    hs = np.zeros(_HS_STATE, np.int64)
    hs[_HS_FIRST] = hs[_HS_HANDED] = -1
    wb = np.zeros(_WB_STATE, np.int64)
    wb[_WB_DUE] = -1
    max_old = 2 * tiles[:, 1].max() if T else 0
    old_bank = np.empty(max_old, np.int64)
    old_granted = np.empty(max_old, np.int64)
    camped = np.empty((n_groups, 3), np.int64)
    moves = np.empty((T + rows_written, 3), np.float64)
    # (cycle, bank bit): a row is at most two lines (``4 * array_cols <= line_bytes``,
    # ``HardwareConfig``: a result row is at most a line)
    writes = np.empty((2 * rows_written if record else 0, 2), np.int64)
    # the writeback's cycles a call: its rows' steps and old lines, and every fill it
    # may wait through, with room (``_writeback``)
    limit = 64 * (rows_written + 16) + 2 * fills[:, 0].sum()
    for i in range(T):
        m0, mt, n0, nc, kt, kl = tiles[i]
        lines += fills[i, 1]
        resumes += fills[i, 2]
        begin = max(filler, release[s] + 1)
        begins[i] = begin
        push[s] = begin + fills[i, 0]
        announced[i] = push[s]
        fill_spans[i] = (begin, push[s], fills[i, 1])
        moves[wb[_WB_MOVES]] = (begin, push[s], fills[i, 1])
        wb[_WB_MOVES] += 1
        filler = push[s] + 1
        if i + 1 < T:                      # the next fill's begin is known already
            begins[i + 1] = max(filler, release[s ^ 1] + 1)
        avail = push[s] + 1
        if kt == 0 and group >= 2:         # a group's first block waits for its half
            _writeback(hs, wb, group - 2, group, rows, groups, half_free, W, banks,
                       f.accumulate, old_latency, begins, taken, offsets, old_bank,
                       old_granted, record, camped, moves, writes, limit)
            avail = max(avail, half_free[group % 2] + 1)
        blocks = -(-kl // R)
        if gemv:                           # back to back: mt cycles a block
            stream = max(stream + stream_rows, avail) + (blocks - 1) * mt
        else:
            load, stream = gemm_blocks(load, stream, stream_rows, avail, push[s], mt, R,
                                       blocks)
        stream_rows = mt
        last_row = stream + mt
        release[s] = last_row if gemv or last_row > load + R else load + R + 1
        s ^= 1
        if kt + kl < f.k:
            continue
        # the group's results are in: its rows, written back by ``_writeback``
        row_bytes = out_bytes * nc
        group_bank = -1                    # -1: no row yet; -2: rows in more than one bank
        for r in range(mt):
            a = f.out_addr + (m0 + r) * f.out_stride + out_bytes * n0
            rows[n_rows + r, 0], rows[n_rows + r, 1] = a, row_bytes
            rows[n_rows + r, 2], rows[n_rows + r, 3] = r, group
            line, end_line = a // W, (a + row_bytes - 1) // W
            lines += (end_line - line + 1) * (2 if f.accumulate else 1)
            if group_bank != -2:
                group_bank = line % banks if end_line == line and (
                    group_bank == -1 or group_bank == line % banks) else -2
        groups[group, _G_ROW0], groups[group, _G_ROWS] = n_rows, mt
        groups[group, _G_READY] = last_row + latency + result_latency
        groups[group, _G_CAMPED] = banks > 1 and mt > 1 and group_bank != -2
        n_rows += mt
        group += 1
        resumes += 1
    _writeback(hs, wb, n_groups, n_groups, rows, groups, half_free, W, banks, f.accumulate,
               old_latency, begins, taken, offsets, old_bank, old_granted, record, camped,
               moves, writes, limit)
    return (wb[_WB_FREE], lines, resumes, announced, fill_spans, camped[:wb[_WB_CAMPED]],
            moves[:wb[_WB_MOVES]], writes[:wb[_WB_WRITES]])


@njit
def _camped_cycles(camped_groups, fills, banks):
    """Cycles a copier below the matmul unit in priority waits at the camped groups'
    bank (``Occupancy.camped_cycles``; ``_steps``' camped groups and fills). A camped
    group's bank is busy while the writer writes it, and while the tile readers, filling
    a later tile meanwhile, walk through it (a line of theirs in ``banks`` in it): the
    writer gets that bank the other cycles. A copier walking the banks a line a cycle
    comes to it (banks - 1) / 2 cycles in, on average."""
    camped = 0.0
    fill_ends = fills[:, 1]                        # in order, as their begins
    for t0, t1, rows in camped_groups:
        span = max(1.0, t1 - t0)
        read = 0.0
        for j in range(np.searchsorted(fill_ends, t0, side="right"), len(fills)):
            b0, b1, n = fills[j]
            if b0 >= t1:
                break
            read += n * max(0.0, min(t1, b1) - max(t0, b0)) / max(1.0, b1 - b0)
        free = 1 - min(1.0, read / span) / banks
        camped += max(0.0, max(span, rows / free) - (banks - 1) / 2)
    return camped


def matmul_occupancy(instr: Instruction, hw: HardwareConfig,
                     cal: Calibration = CALIBRATION) -> Occupancy:
    """The matmul unit (``rtl/matmul_unit.py``) cycle by cycle at the granularity of its
    tiles and blocks. The filler fills a tile with the x and weight row readers, stepped
    cycle by cycle over the L2's banks (``_fills``; the x reader also taking
    ``(nc - mt) // 2`` NK weight rows), into the buffer set the feeder released; the
    feeder walks each tile's ``ceil(kl / R)`` blocks: GEMV
    streams a block's ``mt`` rows back to back; GEMM loads a block's ``R`` weight rows
    into the array's idle weight set (beginning once the previous block has begun to
    stream, ``R`` cycles apart) and streams its rows once its load has begun, so a block
    takes ``max(mt, R)``. A group's results reach the accumulator ``R`` (GEMV) or
    ``R + C - 1`` (GEMM) cycles after its last row; its rows are then handed, one a
    cycle (with their old output when it accumulates), to the row writer's landing
    buffer, which writes each a step a destination line, while the next group
    accumulates in the other half, whose own first block waits for the group before
    last to have been handed over. The writeback is stepped cycle by cycle
    (``_writeback``): its two ports come after the filler's, so its old-output reader
    and its writer wait in any cycle a tile reader has their bank, and the writer after
    the old-output reader too (tests/rtl/test_matmul_unit.py: every case ends in the
    unit's cycle; before, the writeback was not held by the fills, and an edge-16x16
    GEMV of 40 rows whose writebacks run beside the next tiles' fills was 14% short, an
    accumulating KN GEMM on edge-4x4 5 cycles).

    MXINT4 weights (``w_format``) are timed as the unit runs them (packed in the tile
    buffers, unpacked by the feeder, shifted at the accumulator): the weight reader moves
    the packed bytes (half the int8 bytes) and then each row's block exponents, and the
    array's cycles are those of int8. No constant was read off an MXINT4 run (all are
    int8's); the agreement with the RTL on MXINT4 programs is out of sample
    (tests/rtl/test_tiny_rtl.py, ``benchmarks.rtl_tiny --weights mxint4``)."""
    return matmul_timeline(instr, hw, cal)[0]


def matmul_timeline(instr: Instruction, hw: HardwareConfig, cal: Calibration = CALIBRATION
                    ) -> tuple[Occupancy, np.ndarray]:
    """``matmul_occupancy`` and the cycle (from the unit's start) at which each tile is
    announced, ``int64 [tiles]`` in ``matmul_tiles``' order
    (``rtl.matmul_unit.TileFiller.tiles``). Compiled (numba, ``_matmul_run``): a decode
    step at a new KV length times some hundreds of small MATMULs afresh."""
    f = _matmul_fields(instr)
    MT, KT = hw.matmul_tile(f.mode)
    cycles, lines, resumes, paced_cycles, paced_lines, camped, profile, announced = _matmul_run(
        f, hw.line_bytes, int(hw.l2_lines_per_cycle), hw.array_rows, hw.array_cols, MT, KT,
        cal.mm_result_latency, cal.mm_old_output_latency if f.accumulate else 0,
        instr.spec.field("out_addr").elem_bytes, cal.engine_overhead,   # int32 results
        copier_stepped(hw))
    return (Occupancy(Engine.COMPUTE, cycles, macs=f.m * f.k * f.n, l2_lines=lines,
                      paced_cycles=paced_cycles, paced_lines=paced_lines, resumes=resumes,
                      camped_cycles=camped,
                      l2_profile=tuple(profile.tolist()) if len(profile) else None),
            announced)


@njit
def _matmul_run(f, W, banks, R, C, MT, KT, result_latency, old_latency, out_bytes,
                overhead, stepped):
    """``matmul_timeline`` for the fields ``f`` (``MatmulFields``) on ``W``-byte lines in
    ``banks`` line-wide banks, an ``R x C`` array and tiles of ``MT`` rows by ``KT``
    reduction bytes: ``(cycles, L2 lines, resumes, paced cycles, paced lines, camped
    cycles, the L2 profile float64 [PROFILE_STEPS] or empty for None, the tiles'
    announcements int64 [tiles])``. With ``stepped`` (``copier_stepped``), the paced
    cycles are all the unit's and the paced lines those in which a copier beside it is
    not refused (``_refusals``; ``python -m benchmarks.rtl_pairs`` on edge-8x8: a copier
    lost 8 to 51 cycles beside GEMVs of 40- to 256-byte rows on the RTL, the model within
    7); else (one bank, or a copier the DRAM paces, which loses nothing beside the same
    GEMVs on edge-16x16) the tile readers' idle steps, and each burst a resume."""
    gemv = f.mode == _GEMV
    tiles = _tiles(f.m, f.n, f.k, MT, KT, C)
    fills, taken, offsets = _fills(f, tiles, W, banks, banks <= _MAX_STEPPED_BANKS)
    end, lines, resumes, announced, spans, camped, moves, writes = _steps(
        f, tiles, fills, W, banks, R, gemv, R if gemv else R + C - 1, result_latency,
        old_latency, out_bytes, stepped, taken, offsets)
    cycles = end + overhead                           # done with the writer's last step
    if stepped:
        # a copier fed a line a cycle, trailing the unit's streams: stepped through them
        resumes, paced_cycles = 0, cycles
        paced_lines = cycles - round(_refusals(taken, offsets, spans[:, 0], writes, banks))
    else:
        # one bank, whose lines the engines share (``sweeps.perf``), or a copier the DRAM
        # paces, which catches up in the cycles it has to spare: the readers' idle steps
        paced_cycles, paced_lines = fills[:, 3].sum(), fills[:, 4].sum()
    return (cycles, lines, resumes, paced_cycles, paced_lines,
            math.ceil(_camped_cycles(camped, spans, banks)), _profile(moves, cycles),
            announced)


PROFILE_STEPS = 9      # the points of ``Occupancy.l2_profile`` past its start


@njit
def _profile(moves, cycles):
    """``Occupancy.l2_profile`` of streams that move ``(from, to, lines)`` each (rows of
    ``moves``), evenly over their interval, in an instruction of ``cycles``: float64
    [PROFILE_STEPS], or empty for None (no lines moved)."""
    total = moves[:, 2].sum()
    if not total or cycles <= 0:
        return np.empty(0, np.float64)
    points = np.empty(PROFILE_STEPS, np.float64)
    for j in range(PROFILE_STEPS):
        t = cycles * (j + 1) / PROFILE_STEPS
        done = 0.0
        for b0, b1, n in moves:
            done += min(1.0, max(0.0, (t - b0) / max(1.0, b1 - b0))) * n
        points[j] = min(1.0, done / total)
    points[-1] = 1.0
    return points


# -- vector unit ---------------------------------------------------------------------------


def vector_segments(instr: Instruction) -> list[tuple[int, tuple, tuple]]:
    """Each segment the vector unit's issuer issues (``rtl.vector_unit.SegmentIssuer``: a
    pass over a row, one head of one token for ROPE, or the parameter word REQUANT reads
    first, one element): ``(elements, reads, writes)``, each read ``(row reader, L2
    address, bytes)`` and each write ``(row writer, L2 address, bytes, at the last group
    only)`` (element sizes as the ISA declares them)."""
    f, op = _fields(instr), instr.mnemonic

    def eb(name: str) -> int:
        return instr.spec.field(name).elem_bytes

    if op == "REQUANT":
        c, word, mode = f.cols, eb("param_addr"), ParamMode(f.params)
        shared = ((1, f.param_addr, word * c),) * (mode == ParamMode.CHANNEL) \
            + ((2, f.bias_addr, eb("bias_addr") * c),) * f.has_bias
        out = OUT_BYTES[OutBits(f.out_bits)] * c
        segments = [(1, ((1, f.param_addr, word),), ())] * (mode == ParamMode.TENSOR)
        for r in range(f.rows):
            if mode == ParamMode.ROW:                    # the row's word first
                segments.append((1, ((1, f.param_addr + r * word, word),), ()))
            segments.append((c, ((0, f.src_addr + r * f.src_stride, eb("src_addr") * c),
                                 *shared), ((0, f.dst_addr + r * f.dst_stride, out, 0),)))
        return segments
    if op in ("RMSNORM", "SOFTMAX"):
        passes = 2 if op == "RMSNORM" else 3
        src, dst = eb("src_addr") * f.cols, eb("dst_addr") * f.cols
        segments = []
        for r in range(f.rows):
            read = ((0, f.src_addr + r * f.src_stride, src),)
            writes = ((0, f.dst_addr + r * f.dst_stride, dst, 0),)
            if op == "SOFTMAX":                 # and the row's P @ V word
                writes += ((1, f.scale_addr + r * eb("scale_addr"), eb("scale_addr"), 1),)
            segments += [(f.cols, read, ())] * (passes - 1)
            segments.append((f.cols, read, writes))
        return segments
    if op == "SILU_MUL":
        c = f.cols
        return [(c, ((0, f.gate_addr + r * f.gate_stride, eb("gate_addr") * c),
                     (1, f.up_addr + r * f.up_stride, eb("up_addr") * c),
                     (2, f.param_addr, 2 * eb("param_addr") * c)),
                 ((0, f.dst_addr + r * f.dst_stride, eb("dst_addr") * c, 0),))
                for r in range(f.rows)]
    if op == "RESADD":
        c = f.cols
        return [(c, ((0, f.h_addr + r * f.h_stride, eb("h_addr") * c),
                     (1, f.acc_addr + r * f.acc_stride, eb("acc_addr") * c),
                     (2, f.param_addr, eb("param_addr") * c)),
                 ((0, f.h_addr + r * f.h_stride, eb("h_addr") * c, 0),)) for r in range(f.rows)]
    if op == "ROPE":          # each half of a head, its frequencies, each half rotated
        h = f.head_dim // 2
        i_half, o_half = eb("src_addr") * h, eb("dst_addr") * h
        segments = []
        for r in range(f.rows):
            for head in range(f.heads):
                src = f.src_addr + r * f.row_stride + head * 2 * i_half
                dst = f.dst_addr + r * f.row_stride + head * 2 * o_half
                segments.append((h, ((0, src, i_half), (1, src + i_half, i_half),
                                     (2, f.freq_addr, eb("freq_addr") * h)),
                                 ((0, dst, o_half, 0), (1, dst + o_half, o_half, 0))))
        return segments
    if op == "ARGMAX":
        return [(f.n, ((0, f.src_addr, eb("src_addr") * f.n),),
                 ((0, f.dst_addr, eb("dst_addr"), 1),))]
    raise ValueError(op)


@njit
def _granted(banks, n, bank):
    """Whether ``bank`` is among the first ``n`` of ``banks``."""
    for i in range(n):
        if banks[i] == bank:
            return True
    return False


@njit
def _vector_commands(seg_n, reads, writes, W, banks):
    """``_vector_run``'s row commands, per row reader (3) and writer (2): the readers'
    command counts, line counts, each command's segment and first line (and one past the
    last), each line's bank and command; the writers' command counts and each command's
    segment."""
    S = len(seg_n)
    n_cmd_r = np.zeros(3, np.int64)
    n_lines_r = np.zeros(3, np.int64)
    for s in range(S):
        for k in range(3):
            if reads[s, k, 1]:
                a, n = reads[s, k, 0], reads[s, k, 1]
                n_cmd_r[k] += 1
                n_lines_r[k] += (a + n - 1) // W - a // W + 1
    max_cmd = max(1, n_cmd_r.max())
    cmd_seg = np.full((3, max_cmd), -1, np.int64)
    line_bank = np.zeros((3, max(1, n_lines_r.max())), np.int64)
    line_cmd = np.zeros((3, max(1, n_lines_r.max())), np.int64)
    cmd_first_line = np.zeros((3, max_cmd + 1), np.int64)
    for k in range(3):
        c = i = 0
        for s in range(S):
            if reads[s, k, 1]:
                a, n = reads[s, k, 0], reads[s, k, 1]
                cmd_seg[k, c] = s
                cmd_first_line[k, c] = i
                for ln in range(a // W, (a + n - 1) // W + 1):
                    line_bank[k, i], line_cmd[k, i] = ln % banks, c
                    i += 1
                c += 1
        cmd_first_line[k, c] = i
    n_cmd_w = np.zeros(2, np.int64)
    for s in range(S):
        for d in range(2):
            if writes[s, d, 1]:
                n_cmd_w[d] += 1
    cmd_seg_w = np.full((2, max(1, n_cmd_w.max())), -1, np.int64)
    for d in range(2):
        c = 0
        for s in range(S):
            if writes[s, d, 1]:
                cmd_seg_w[d, c] = s
                c += 1
    return n_cmd_r, n_lines_r, cmd_seg, line_bank, line_cmd, cmd_first_line, n_cmd_w, \
        cmd_seg_w


@njit
def _vector_write(d, t, tk, nt, writes, cmd_seg_w, n_cmd_w, w_cmd, w_step, issued,
                  pushed_at, n_pushed, n_popped_w, W, banks):
    """Row writer ``d`` of ``_vector_run`` in cycle ``t``: its priming step (its command
    queued ahead, no data), or the write of its next destination line, once the result
    line it takes was emitted ``WB_DATA_LATENCY`` before and no port before it has the
    bank (``tk``, the first ``nt`` banks granted this cycle; the bank is added at
    ``tk[nt]``). Whether it wrote a line."""
    c = w_cmd[d]
    if c >= n_cmd_w[d]:
        return False
    s = cmd_seg_w[d, c]
    a, nb = writes[s, d, 0], writes[s, d, 1]
    prime = 1 if a % W else 0
    n_dst = (a + nb - 1) // W - a // W + 1
    if w_step[d] < prime:                        # queued ahead: no data
        if issued[s] < t:
            w_step[d] = 1
        return False
    j = w_step[d] - prime                        # its destination line
    # lines emitted: one at the last group, or one at each line's worth of the first
    # writer's bytes (the datapath's fill; ROPE's two halves are alike)
    n_src = 1 if writes[s, d, 2] else -(-writes[s, 0, 1] // W)
    if j < n_src and (n_popped_w[d] >= n_pushed[d] or pushed_at[
            d, n_popped_w[d] % (COPIER_FIFO_DEPTH + 1)] + WB_DATA_LATENCY > t):
        return False
    bank = (a // W + j) % banks
    if _granted(tk, nt, bank):
        return False
    tk[nt] = bank
    if j < n_src:
        n_popped_w[d] += 1
    w_step[d] += 1
    if w_step[d] == prime + n_dst:
        w_cmd[d] += 1
        w_step[d] = 0
    return True


@njit
def _operands_ready(sd, t, reads, r_cmd, r_step, n_cmd_r, cmd_seg, cmd_first_line, asked,
                    granted, priming, W):
    """Whether every row reader segment ``sd`` uses has a beat for ``_vector_run``'s
    datapath in cycle ``t``: at this segment's command, past its priming step (not taking
    it this cycle: ``priming``, a bit per reader), and the line the beat takes (if any)
    granted ``FILL_DATA_LATENCY`` before."""
    for k in range(3):
        if not reads[sd, k, 1]:
            continue
        c = r_cmd[k]
        if c >= n_cmd_r[k] or cmd_seg[k, c] != sd or priming >> k & 1:
            return False
        prime = 1 if reads[sd, k, 0] % W else 0
        if r_step[k] < prime:
            return False
        line = cmd_first_line[k, c] + r_step[k]
        if line < cmd_first_line[k, c + 1]:      # the beat takes a line
            if line >= asked[k] or granted[k, line] + FILL_DATA_LATENCY > t:
                return False
    return True


@njit
def _vector_run(seg_n, reads, writes, W, banks, L):
    """The vector unit (``rtl/vector_unit.py``) cycle by cycle: ``(cycles from start
    to done, each segment's last group's cycle int64 [segments])`` for the segments'
    elements ``seg_n``, their reads ``int64 [segments, 3, 2]`` (per row reader: L2
    address, bytes; 0 bytes: not used) and writes ``int64 [segments, 2, 3]`` (per row
    writer: address, bytes, whether only at the last group), on ``W``-byte lines in
    ``banks`` line-wide banks (addresses modulo ``W * banks``) and ``L`` lanes a cycle.

    The issuer issues a segment a cycle from cycle 1, with its row commands, while fewer
    than ``SEGMENT_DEPTH`` are queued. Each row reader (``rtl.copier.RowCopier``, as the
    tile filler's, ``_fill_cycles``) asks the L2 for its commands' lines in order from
    ``FILL_ISSUE_LATENCY`` after the issue, while fewer than ``COPIER_FIFO_DEPTH - 1`` of
    its lines are in, and its write side takes a line ``FILL_DATA_LATENCY`` after its
    grant at the earliest: a priming step where the row does not start on a line, then a
    beat a destination line. The datapath fires a group of ``L`` elements a cycle, the
    segments in order, when every operand it uses has a beat and each result it emits
    has room in its writer's landing buffer (``COPIER_FIFO_DEPTH`` lines); an operand's
    beat goes at the last of its groups, a result line is emitted at each line's worth
    of the first writer's bytes and at the segment's last group. Each row writer takes a
    result line ``WB_DATA_LATENCY`` after it was emitted at the earliest, after a
    priming step where the row does not start on a line (its command is queued ahead),
    and writes a line a step. The ports ask the L2 in the order readers 0-2, writers
    0-1; a port waits while one before it has its bank. Done the cycle after the last
    write."""
    S = len(seg_n)
    INF = 1 << 62
    n_cmd_r, n_lines_r, cmd_seg, line_bank, line_cmd, cmd_first_line, n_cmd_w, \
        cmd_seg_w = _vector_commands(seg_n, reads, writes, W, banks)
    granted = np.zeros((3, max(1, n_lines_r.max())), np.int64)
    issued = np.full(S, INF, np.int64)
    ended = np.full(S, INF, np.int64)
    n_issued = 0
    # readers: lines asked, popped; read side's command; write side's command and step
    asked = np.zeros(3, np.int64)
    popped = np.zeros(3, np.int64)
    r_cmd = np.zeros(3, np.int64)          # write side: command
    r_step = np.zeros(3, np.int64)         # write side: steps done in it
    # writers: lines pushed (ring of their cycles), steps
    pushed_at = np.zeros((2, COPIER_FIFO_DEPTH + 1), np.int64)
    n_pushed = np.zeros(2, np.int64)
    n_popped_w = np.zeros(2, np.int64)
    w_cmd = np.zeros(2, np.int64)
    w_step = np.zeros(2, np.int64)
    sd = g = 0                             # the datapath's segment and group
    last_write = 0
    tk = np.zeros(5, np.int64)             # the banks granted in a cycle (five ports)
    # every cycle moves a line, fires a group or issues a segment but for latencies and
    # waits of a few cycles each: far more than that is a model that stopped moving
    limit = 64 * (n_lines_r.sum() + S + seg_n.sum() + 2 * S + 16)
    t = 1
    while True:
        # the issuer
        if n_issued < S and n_issued - (sd if sd < S else S) < SEGMENT_DEPTH:
            issued[n_issued] = t
            n_issued += 1
        nt = 0                                 # the banks granted this cycle
        # the readers' read sides, in port order
        for k in range(3):
            i = asked[k]
            if i >= n_lines_r[k] or i - popped[k] >= COPIER_FIFO_DEPTH - 1:
                continue
            if issued[cmd_seg[k, line_cmd[k, i]]] + FILL_ISSUE_LATENCY > t:
                continue
            if not _granted(tk, nt, line_bank[k, i]):
                tk[nt] = line_bank[k, i]
                nt += 1
                granted[k, i] = t
                asked[k] = i + 1
        # the readers' priming steps (no beat for the datapath this cycle)
        priming = 0
        for k in range(3):
            c = r_cmd[k]
            if c >= n_cmd_r[k] or r_step[k] != 0:
                continue
            s = cmd_seg[k, c]
            if reads[s, k, 0] % W == 0:
                continue
            i = cmd_first_line[k, c]
            if i < asked[k] and granted[k, i] + FILL_DATA_LATENCY <= t:
                r_step[k] = 1
                popped[k] += 1
                priming |= 1 << k
        # the datapath
        if sd < S and issued[sd] < t:
            n = seg_n[sd]
            groups = max(1, -(-n // L))        # (an empty row, which the ISA refuses: one)
            last = g == groups - 1
            fire = _operands_ready(sd, t, reads, r_cmd, r_step, n_cmd_r, cmd_seg,
                                   cmd_first_line, asked, granted, priming, W)
            # results: a line at each line's worth of the first writer's bytes, and at
            # the last group
            emit = last
            if writes[sd, 0, 1] and not writes[sd, 0, 2]:
                e0 = writes[sd, 0, 1] // max(1, n)
                if (min((g + 1) * L, n) * e0) % W == 0:
                    emit = True
            if fire and emit:
                for d in range(2):
                    if writes[sd, d, 1] and (last or not writes[sd, d, 2]) \
                            and n_pushed[d] - n_popped_w[d] >= COPIER_FIFO_DEPTH:
                        fire = False
            if fire:
                for k in range(3):
                    if not reads[sd, k, 1]:
                        continue
                    e = max(1, reads[sd, k, 1] // max(1, n))
                    per_beat = max(1, W // (L * e))
                    if last or g % per_beat == per_beat - 1:
                        c = r_cmd[k]
                        line = cmd_first_line[k, c] + r_step[k]
                        if line < cmd_first_line[k, c + 1]:
                            popped[k] += 1
                        r_step[k] += 1
                        if last:                         # the command's last beat
                            r_cmd[k] += 1
                            r_step[k] = 0
                if emit:
                    for d in range(2):
                        if writes[sd, d, 1] and (last or not writes[sd, d, 2]):
                            pushed_at[d, n_pushed[d] % (COPIER_FIFO_DEPTH + 1)] = t
                            n_pushed[d] += 1
                g += 1
                if last:
                    ended[sd] = t
                    sd += 1
                    g = 0
        # the writers, in port order
        for d in range(2):
            if _vector_write(d, t, tk, nt, writes, cmd_seg_w, n_cmd_w, w_cmd, w_step,
                             issued, pushed_at, n_pushed, n_popped_w, W, banks):
                nt += 1
                last_write = t
        t += 1
        if sd >= S and w_cmd[0] >= n_cmd_w[0] and w_cmd[1] >= n_cmd_w[1]:
            break
        if t > limit:
            raise RuntimeError("_vector_run: no progress (a bug in the model)")
    return max(last_write, ended[S - 1] if S else 0) + 1, ended


def vector_occupancy(instr: Instruction, hw: HardwareConfig,
                     cal: Calibration = CALIBRATION) -> Occupancy:
    """The vector unit stepped cycle by cycle (``_vector_run``) over the segments its
    issuer issues (``vector_segments``), with the addresses modulo the L2's line-wide
    banks times the line (its ports' banks are what the stepping reads). No constant is
    fitted: the latencies are the row copiers' (``FILL_ISSUE_LATENCY``,
    ``FILL_DATA_LATENCY``, ``WB_DATA_LATENCY``), the depths the RTL's. (Before, a segment
    was taken to last its beats, at least the L2's time for its lines, plus a priming
    cycle, at least a fitted 3, with 11 fitted cycles an instruction and SILU_MUL's beats
    a fitted 1.25 cycles: random vector instructions run alone on the unit, 30 on each
    of edge-8x8, edge-4x4 and edge-16x16, were 5.2%, 7.6% and 6.8% off on average, at
    most 36%; now each ends in the unit's cycle.) ``paced_cycles`` and ``paced_lines``:
    the segments' whose fastest stream idles a cycle between lines, each segment from the
    cycle after the one before ended."""
    segs = vector_segments(instr)
    P, W = hw.l2_stripe_bytes, hw.line_bytes
    S = len(segs)
    seg_n = np.zeros(S, np.int64)
    reads = np.zeros((S, 3, 2), np.int64)
    writes = np.zeros((S, 2, 3), np.int64)
    for s, (n, rd, wr) in enumerate(segs):
        seg_n[s] = n
        for k, a, b in rd:
            reads[s, k] = (a % P, b)
        for d, a, b, last in wr:
            writes[s, d] = (a % P, b, last)
    done, ended = _vector_run(seg_n, reads, writes, W, int(hw.l2_lines_per_cycle),
                              hw.vector_lanes_per_cycle)
    lanes = hw.vector_lanes_per_cycle
    total = paced_cycles = paced_lines = 0
    for s, (n, rd, wr) in enumerate(segs):
        streams = [_lines(a, b, W) for _, a, b in rd] + [_lines(a, b, W) for _, a, b, _ in wr]
        total += sum(streams)
        seg = int(ended[s] - ended[s - 1]) if s else -(-n // lanes)
        # its fastest stream that idles a cycle between lines (``Occupancy.paced_cycles``)
        paced = max((k for k in streams if k < seg <= 2 * k), default=0)
        if paced:
            paced_cycles += seg
            paced_lines += paced
    return Occupancy(Engine.COMPUTE, int(done) + cal.engine_overhead, l2_lines=total,
                     paced_cycles=paced_cycles, paced_lines=paced_lines)


_TABLE_WALKS = ("DMA_GATHER", "KV_PREFETCH", "KV_APPEND")
_cache: dict = {}
#: The fields of ``HardwareConfig`` an instruction's occupancy reads (directly or through
#: its properties): design points differing in the others (the L2's size, prefetch, DRAM
#: capacity, clock) share the memo.
TIMING_FIELDS = ("array_rows", "array_cols", "vector_lanes", "l2_banks", "l2_port_bytes",
                 "dram_bytes_per_cycle", "dram_latency_cycles", "kv_block_tokens")


_timing_fields = operator.attrgetter(*TIMING_FIELDS)   # hw -> their values, a tuple


def occupancy(instr: Instruction, hw: HardwareConfig, read_i32=None,
              cal: Calibration = CALIBRATION) -> Occupancy:
    """Memoised on what the timing depends on: ``hw``'s ``TIMING_FIELDS`` and the fields
    as ``_timing_operands`` reduces them, except for table walks whose rows come from
    DRAM."""
    if read_i32 is not None and instr.mnemonic in _TABLE_WALKS:
        return _occupancy(instr, hw, read_i32, cal)
    # (the default calibration as None: a dataclass hashes its fields at every lookup)
    key = (instr.mnemonic, _timing_fields(hw), None if cal is CALIBRATION else cal,
           _timing_operands(instr, hw))
    hit = _cache.get(key)
    if hit is None:
        if len(_cache) > 100_000:
            _cache.clear()
        hit = _cache[key] = _occupancy(instr, hw, None, cal)
    return hit


def _timing_operands(instr: Instruction, hw: HardwareConfig) -> tuple:
    """``instr``'s operands reduced to what its occupancy reads: a DMA instruction's
    addresses modulo the line (its lines depend only on its alignment), a vector
    instruction's modulo the line times the L2's line-wide banks (``vector_occupancy``
    steps its ports over the banks); for a ``MATMUL``, its
    addresses as ``matmul_alignment`` reduces them and its row strides modulo the L2's
    line-wide banks times the line (``_matmul_key``); ROPE's ``pos0`` not at all
    (``vector_segments``); an ``INT8`` KV_PREFETCH's or a KV_APPEND's ``first_token``
    modulo the block and the tokens after which its rows' DRAM addresses repeat modulo
    the line (without a DRAM image, token ``t``'s row is at ``pool_addr + t *
    row_bytes``, ``_dma_rows``), and the prefetch's ``col_offset`` (added to each row's
    address) modulo the line."""
    op, operands = instr.mnemonic, instr.operands
    if op == "MATMUL":
        return _matmul_key(MatmulFields._make(operands), hw)
    # the vector unit's ports collide by bank (``_vector_run``): its addresses modulo
    # the banks' lines, a DMA instruction's modulo the line
    W = hw.line_bytes if instr.engine != Engine.COMPUTE else hw.l2_stripe_bytes
    key = list(operands)
    for i in _ADDRESSES[op]:
        key[i] %= W
    if op == "ROPE":
        key[_ROPE_POS0] = 0
    elif op == "KV_APPEND" or (op == "KV_PREFETCH" and operands[_KV_FORMAT] == _KV_INT8):
        first, row_bytes = _KV_FIELDS[op]
        key[first] %= _kv_dram_period(hw, operands[row_bytes])
        if op == "KV_PREFETCH":          # a row's first byte: pool + t * row + col_offset
            key[_KV_COL_OFFSET] %= W
    return tuple(key)


#: ``_timing_operands``' field positions: each instruction's addresses, and the fields it
#: reads by name.
_ADDRESSES = {name: tuple(i for i, f in enumerate(spec.fields) if f.address)
              for name, spec in BY_MNEMONIC.items()}
_ROPE_POS0 = BY_MNEMONIC["ROPE"].field_index["pos0"]
_KV_FORMAT = BY_MNEMONIC["KV_PREFETCH"].field_index["kv_format"]
_KV_COL_OFFSET = BY_MNEMONIC["KV_PREFETCH"].field_index["col_offset"]
_KV_INT8 = int(KvFormat.INT8)
_KV_FIELDS = {op: (BY_MNEMONIC[op].field_index["first_token"],
                   BY_MNEMONIC[op].field_index["row_bytes"])
              for op in ("KV_APPEND", "KV_PREFETCH")}


def matmul_mode(hw: HardwareConfig, **fields) -> MatmulMode:
    """The dataflow in which this hardware runs a ``MATMUL`` (every field but ``mode``)
    in fewer cycles, by ``occupancy``; GEMM on a tie (it reads each weight out of the tile
    buffers once per block, GEMV once per row). The GEMM is not timed where a bound on
    its cycles already exceeds the GEMV's (its weight loads, or its tile filler's fills:
    ``_matmul_mode``). The compiler emits every ``MATMUL`` in the mode this returns, and
    the fast path times it so. Memoised as ``occupancy`` is (on the timing fields and
    ``_matmul_key``)."""
    key = (_timing_fields(hw), _matmul_key(MatmulFields(**fields, mode=0), hw))
    mode = _modes.get(key)
    if mode is None:
        if len(_modes) > 100_000:
            _modes.clear()
        mode = _modes[key] = _matmul_mode(hw, fields)
    return mode


_modes: dict = {}


def matmul_alignment(x_addr: int, w_addr: int, out_addr: int, e_addr: int, mxint4: bool,
                     hw: HardwareConfig) -> tuple[int, int, int, int]:
    """A ``MATMUL``'s L2 addresses ``(x, w, out, e)`` reduced to what its timing reads
    (``matmul_timeline``): the tile filler's two readers collide where they ask one bank
    at once (``_fill_cycles``), so x's, the weights' and (MXINT4) the block exponents'
    addresses matter only modulo the L2's line times its line-wide banks (``P``), and
    only relative to one another by whole lines: all three move by the lines that bring
    x's to the first bank. The writeback's rows matter by their banks in the readers'
    cycles (the writer waits while a reader has its bank, ``_writeback``; and where a
    copier is stepped beside the unit, ``_refusals``): the output address moved with x
    (on more than ``_MAX_STEPPED_BANKS`` banks, whose grants are not recorded, modulo
    the line).
    Int8 weights have no exponents (``e`` is 0). (The strides stay modulo ``P``.) Exact:
    ``tests/arch/test_occupancy.py`` times random MATMULs so moved alike."""
    W, P = hw.line_bytes, hw.l2_stripe_bytes
    lines = x_addr - x_addr % W
    out = (out_addr - lines) % P if hw.l2_lines_per_cycle <= _MAX_STEPPED_BANKS \
        else out_addr % W
    return (x_addr - lines) % P, (w_addr - lines) % P, out, (e_addr - lines) % P if mxint4 else 0


def copier_stepped(hw: HardwareConfig) -> bool:
    """Whether a DMA copier beside the matmul unit is stepped through its L2 grants
    (``_matmul_run``): more than one line-wide bank (at most ``_MAX_STEPPED_BANKS``), and
    a DRAM that feeds a line a cycle or more."""
    return 1 < hw.l2_lines_per_cycle <= _MAX_STEPPED_BANKS and hw.dram_cycles_per_line <= 1


#: The most line-wide banks a stepped copier walks: a cycle's grants are the bits of one
#: int64 (``_fill_cycles``, ``_refusals``, ``_writeback``). More (a valid but unusual L2)
#: keep the rule of the readers' idle steps, and the writeback is not held by the
#: fills.
_MAX_STEPPED_BANKS = 63


def _matmul_key(f: MatmulFields, hw: HardwareConfig) -> tuple:
    """``_timing_operands`` of a ``MATMUL``: its fields, the addresses as
    ``matmul_alignment`` reduces them, the strides modulo the L2's stripe."""
    P = hw.l2_stripe_bytes
    return (f.mode, f.accumulate, f.w_layout, f.m, f.k, f.n, f.w_format,
            f.x_stride % P, f.w_stride % P, f.out_stride % P,
            *matmul_alignment(f.x_addr, f.w_addr, f.out_addr, f.e_addr,
                              f.w_format == WeightFormat.MXINT4, hw))


def _matmul_mode(hw: HardwareConfig, fields: dict) -> MatmulMode:
    gemv = occupancy(make("MATMUL", mode=MatmulMode.GEMV, **fields), hw).cycles
    # (plain ints: an enum member makes numba type the call afresh, a slow dispatch)
    f = MatmulFields(**{k: int(v) for k, v in fields.items()}, mode=int(MatmulMode.GEMM))
    if _gemm_floor(f, hw.line_bytes, int(hw.l2_lines_per_cycle), hw.array_rows,
                   hw.array_cols, *hw.matmul_tile(MatmulMode.GEMM)) > gemv:
        return MatmulMode.GEMV
    gemm = occupancy(make("MATMUL", mode=MatmulMode.GEMM, **fields), hw).cycles
    return MatmulMode.GEMV if gemv < gemm else MatmulMode.GEMM


@njit
def _gemm_floor(f, W, banks, R, C, MT, KT):
    """A bound below the cycles of the ``MATMUL`` of fields ``f`` in GEMM mode, on
    ``W``-byte lines in ``banks`` line-wide banks, an ``R x C`` array and GEMM tiles of
    ``MT`` rows by ``KT`` reduction bytes, where ``_matmul_mode`` need not time it: the
    GEMM loads each block's ``R`` weight rows at least ``R`` cycles after the block
    before's (``gemm_blocks``), so it takes more than (blocks - 1) * R cycles; and where
    it has fewer rows than the array (a decode step's, where it mostly loses), its tile
    filler alone, filling one tile at a time and each a cycle after the one before
    (``matmul_timeline``: a tile is announced after its fill, the unit done after the
    last). 0 where neither applies."""
    tiles = _tiles(f.m, f.n, f.k, MT, KT, C)
    blocks = 0
    for i in range(len(tiles)):
        blocks += -(-tiles[i, 5] // R)
    floor = (blocks - 1) * R
    if f.m < R:
        fills = _fills(f, tiles, W, banks, False)[0]
        floor = max(floor, fills[:, 0].sum() + len(tiles))
    return floor


def kv_budget_widths(channels: int, bits: float) -> np.ndarray:
    """Code widths ``int64 [channels]`` of one chunk whose channels average ``bits`` bits
    (a KV budget, 2 to 8 bits per cached element): the channels split between the two
    widths of ``KV_WIDTH_CODES`` either side of it, as many at the wider as the mean
    needs (rounded to a whole channel), the wider first. The host picks each channel's
    width from its data (``numerics.kv_chunk_compress``); the performance model times a
    budget with this stand-in, in the fast path (``sweeps.analytic``) and in a timing
    build's chunk headers (``driver.compile_timing_step``), so that the two time the same
    bytes. Raises ``ValueError`` for no channels or a budget outside [2, 8]."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"a chunk has at least one channel, not {channels!r}")
    if (isinstance(bits, bool) or not isinstance(bits, int | float) or not math.isfinite(bits)
            or not min(KV_WIDTH_CODES) <= bits <= max(KV_WIDTH_CODES)):
        raise ValueError(f"a KV budget is {min(KV_WIDTH_CODES)} to {max(KV_WIDTH_CODES)} bits "
                         f"per cached element, not {bits!r}")
    widths = sorted(KV_WIDTH_CODES)
    lo = max(w for w in widths if w <= bits)
    hi = min((w for w in widths if w > bits), default=lo)
    wide = round(channels * (bits - lo) / (hi - lo)) if hi > lo else channels
    return np.array([hi] * wide + [lo] * (channels - wide), np.int64)


def chunked_prefetch_occupancy(instr: Instruction, hw: HardwareConfig, read_i32,
                               cal: Calibration = CALIBRATION,
                               kv_bits: float | None = None) -> Occupancy:
    """A ``KV_PREFETCH`` in ``CHUNKED`` format, as the load engine runs it
    (``rtl/dma.py``, ``rtl/kv_chunks.py``): once the engine's row copier is idle, block
    after block with nothing overlapped between blocks: the table entry (an int32 read),
    the chunk's header bytes (``col_bytes`` of them, one read), then its code bytes (one
    read of the bytes the header's widths take) expanded one group (channel) a cycle as
    they arrive, then the ``B`` int8 rows written to L2 from byte 0 of a stream, a line a
    cycle (a priming step where a row's L2 address is not on a line). The code bytes
    depend on the data: ``read_i32`` reads the headers from the DRAM image (``ValueError``
    without it; and for what the device stops, ``ValueError`` naming the fault:
    ``BAD_OPERAND``, ``BAD_BLOCK``, ``BAD_CHUNK``). ``Calibration.chunk_start`` and
    ``chunk_block`` are the cycles the structure does not name, fitted to the RTL
    (``benchmarks.kv_chunk_timing``). Not deferred: the instruction ends when its last
    row is written. With ``kv_bits`` instead of a DRAM image (the fast path, which has
    none), every chunk's widths are ``kv_budget_widths(col_bytes, kv_bits)`` and the
    ``k``-th block read is pool block ``first_token / B + k``."""
    if read_i32 is None and kv_bits is None:
        raise ValueError("a KV_PREFETCH in CHUNKED format is timed from the widths in its "
                         "chunks' headers: it needs the DRAM image (read_i32) or a KV "
                         "budget (kv_bits)")
    f = _fields(instr)
    W, B, lat = hw.line_bytes, hw.kv_block_tokens, hw.dram_latency_cycles
    line_cycles = max(1.0, hw.dram_cycles_per_line)
    cols = f.col_bytes
    if f.n_tokens % B or f.first_token % B or not 0 < cols <= KV_CHUNK_MAX_COLS:
        raise ValueError(f"BAD_OPERAND: a CHUNKED KV_PREFETCH reads whole {B}-token blocks "
                         f"of 1 to {KV_CHUNK_MAX_COLS} columns (first_token {f.first_token}, "
                         f"n_tokens {f.n_tokens}, col_bytes {cols})")
    read = cal.cmd_to_read + lat + cal.read_to_write          # a row read's first beat
    cycles = cal.dma_setup + cal.chunk_start
    dram_bytes = dram_lines = l2_lines = moved = 0
    dst = f.l2_addr
    group = {code: kv_group_bytes(bits, B) for bits, code in KV_WIDTH_CODES.items()}
    budget = (None if kv_bits is None else
              sum(kv_group_bytes(int(b), B) for b in kv_budget_widths(cols, kv_bits)))
    for k in range(f.n_tokens // B):
        block = (f.first_token // B + k if budget is not None else
                 read_i32(kv_table_entry_addr(f.table_addr, f.first_token + k * B, B)))
        if budget is None and not 0 <= block < f.pool_blocks:
            raise ValueError(f"BAD_BLOCK: block-table entry {block} of token "
                             f"{f.first_token + k * B} is outside the pool of "
                             f"{f.pool_blocks} blocks")
        codes, headers = kv_chunk_addrs(f.pool_addr, f.pool_blocks, block, B, f.row_bytes,
                                        f.col_offset)
        used = budget if budget is not None else _code_bytes(read_i32, headers, cols, block,
                                                             group)
        header_lines, code_lines = _lines(headers, cols, W), _lines(codes, used, W)
        writes = 0
        for _ in range(B):
            writes += _lines(dst, cols, W) + (1 if dst % W else 0)
            dst += cols
        # a read's first line arrives ``read`` after its command, each later one a line's
        # DRAM time after the one before; the groups expand one a cycle as they arrive
        # (the groups of the last line expand after it arrives)
        last = used if code_lines == 1 else used + codes % W - (code_lines - 1) * W
        codes_in = (code_lines - 1) * line_cycles + math.ceil(last * cols / used)
        expand = codes_in if codes_in > cols else cols
        cycles += (lat + cal.int_read + cal.chunk_block + read + (header_lines - 1) * line_cycles
                   + read + expand + writes)
        dram_bytes += BLOCK_TABLE_ENTRY_BYTES + cols + used
        dram_lines += 1 + header_lines + code_lines
        l2_lines += writes
        moved += B * cols
    return Occupancy(Engine.LOAD, math.ceil(cycles) + cal.dma_drain, dram_read_bytes=dram_bytes,
                     dram_lines=dram_lines, prefetch_bytes=moved, l2_lines=l2_lines,
                     after_copier=True)


def _code_bytes(read_i32, headers: int, cols: int, block: int, group: dict) -> int:
    """The code bytes of the chunk whose ``cols`` header bytes are at ``headers`` in DRAM
    (``group``: a group's bytes by width code); ``ValueError`` naming ``BAD_CHUNK`` for
    bytes that are not a chunk's header."""
    header = np.array([(read_i32(a & ~3) >> (8 * (a & 3))) & 0xFF
                       for a in range(headers, headers + cols)], np.uint8)
    fault = kv_chunk_fault(header)
    if fault:
        raise ValueError(f"BAD_CHUNK: block {block}: {fault}")
    return sum(group[int(code)] for code in header & 3)


def _occupancy(instr: Instruction, hw: HardwareConfig, read_i32, cal: Calibration) -> Occupancy:
    if instr.mnemonic == "HALT":
        return Occupancy(Engine.CONTROL, 0)
    if instr.mnemonic == "KV_PREFETCH" and instr.kv_format == KvFormat.CHUNKED:
        return chunked_prefetch_occupancy(instr, hw, read_i32, cal)
    if instr.mnemonic == "MATMUL":
        return matmul_occupancy(instr, hw, cal)
    if instr.engine == Engine.COMPUTE:
        return vector_occupancy(instr, hw, cal)
    return dma_occupancy(instr, hw, read_i32, cal)
