"""How long one instruction keeps its engine busy: the RTL's pipelines, in closed form.

Contract
--------
``occupancy(instr, hw, read_i32)`` returns an ``Occupancy``: the cycles the instruction
keeps its engine busy when it runs alone (from the cycle its tokens allow it to begin to
the cycle it ends, the RTL's ``*_busy`` counter for it), the DRAM lines it reads and
writes, and its multiply-accumulates. Each walk follows one unit of ``rtl/`` step by
step at the granularity where the RTL has a pipeline bubble: a DMA row here (and a table
walk's int32 reads on the aux port, ``_answer_behind``), the matmul unit's tiles, fills
and writeback cycle by cycle (``arch.matmul_timing``), the vector unit's segments cycle
by cycle (``arch.vector_timing``); this module dispatches and memoises them
(``occupancy``) and picks each MATMUL's dataflow (``matmul_mode``). The few constants of
``CALIBRATION`` (``arch.timing``) are the
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
hand-made headers), tests/rtl/test_accelerator.py (chunked prefetches and table walks
against the RTL) and tests/rtl/test_matmul_unit.py (every tile's announcement against
the matmul unit).
"""

from __future__ import annotations

import math
import operator

import numpy as np

from arch.hardware import HardwareConfig
from arch.isa import (
    BLOCK_TABLE_ENTRY_BYTES,
    BY_MNEMONIC,
    COUNTER_BYTES,
    COUNTERS,
    KV_WIDTH_CODES,
    Engine,
    Instruction,
    KvFormat,
    MatmulMode,
    kv_chunk_addrs,
    kv_chunk_fault,
    kv_group_bytes,
    kv_row_addr,
    kv_table_entry_addr,
    make,
)
from arch.kernels import njit
from arch.matmul_timing import MatmulFields, gemm_floor, matmul_key, matmul_occupancy
from arch.timing import (
    CALIBRATION,
    NEVER_BELOW,
    NEVER_INT,
    Calibration,
    Copies,
    Occupancy,
    fields_of,
    in_cycles,
    lines_touched,
    shifted_by,
)
from arch.uarch import CMD_DEPTH, COPIER_FIFO_DEPTH, KV_CHUNK_MAX_COLS
from arch.vector_timing import vector_occupancy


def load_data_delay(hw: HardwareConfig, cal: Calibration = CALIBRATION) -> int:
    """Cycles from a load's begin to the copier's first L2 write (setup, row command,
    read, latency): before then the copier takes no L2 line, so the contention models
    count the L2 lines others take from then on."""
    return cal.dma_setup + cal.cmd_to_read + hw.dram_latency_cycles + cal.read_to_write + 1


class CopiesTable:
    """The ``Copies`` of a program (or of a fast-path step), as the flat arrays the
    compiled engine models read (``queue_after``): ``index[id(copies)]`` is a ``Copies``'
    row. ``arrays``: ``(triples, first offsets, first_cmds, takes offsets, takes, jump
    first_due)``; ``triples[u]`` is ``issue``, ``reads`` and
    ``writes``, nine floats, then its row commands; the others are every ``Copies``'
    tuples laid end to end, ``u``'s from ``offsets[u]`` to ``offsets[u + 1]``
    (``first_due``'s are ``first_cmds``')."""

    def __init__(self, copies):
        self.index: dict[int, int] = {}
        self.copies: list[Copies] = []         # (held, so that the ids stay theirs)
        first, takes, due = [], [], []
        offsets = ([0], [0])
        for c in copies:
            if c is None or id(c) in self.index:
                continue
            self.index[id(c)] = len(self.copies)
            self.copies.append(c)
            first += c.first_cmds
            takes += c.takes
            due += c.first_due
            for o, part in zip(offsets, (first, takes), strict=True):
                o.append(len(part))
        triples = np.array([(*c.issue, *c.reads, *c.writes, c.rows) for c in self.copies],
                           np.float64).reshape(-1, 10)
        self.arrays = (triples, np.array(offsets[0], np.int64), np.array(first, np.float64),
                       np.array(offsets[1], np.int64),
                       np.array(takes, np.float64).reshape(-1, 3),
                       np.array(due, np.float64).reshape(-1, 3))


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
    room). A command held past the latest its row's first write allows (``first_due``)
    moves that write, and the copier's rows after it, by as much: its reads, writes and
    takes from the first command so held on move by the largest such wait, and its last
    command where its queue wait is behind a moved take. Otherwise the waits cost nothing
    but where the last command is one of them (the later commands' queue waits are in
    ``issue`` already, through the write side): the last one is then held by the
    largest wait. (Traced on
    the RTL: a 176-row load of 48-byte rows on edge-16x16 begun behind a 336-row one,
    beside a GEMV, queued its last command 335 cycles after its begin, as if the first
    load's rows were its own; its first commands' waits, up to 50 cycles, moved no read,
    and holding its last command by them made a decode step of seed 2044 1.4% long.)
    The take times are those of the instructions alone in context, before the contention
    waits the engine models add afterwards.

    The queue's state (updated in place): the earlier instructions still in the queue,
    ``seg_u[s]`` (their rows), ``seg_f[s]`` (begin, read and write free, their last take,
    how far and from which of its first commands on its takes were moved), ``seg_m[s]``
    (their commands), for ``s`` from ``state[0]`` to ``state[1]``
    (at least the last ``CMD_DEPTH`` commands; ``state[2]``); the arrays hold a row per
    call. Compiled (numba): ``sweeps.perf`` chains every row-copying instruction of each
    DMA engine through one (``CopierQueue``), ``sweeps.analytic`` its loads and stores
    from its compiled engine model."""
    triples, f_off, f_flat, t_off, t_flat, d_flat = table
    head, tail, count = state[0], state[1], state[2]
    f0 = f_off[u]
    n_first = f_off[u + 1] - f0
    r0, w0 = read_free - begin, write_free - begin
    late = 0.0                 # the largest wait of a first command
    moved = 0.0                # the largest wait past a first command's due
    moved_from = n_first       # the first command held past its due
    newest = seg_f[tail - 1, 3] if tail > head else -np.inf     # the newest command's take
    if newest + 1 > begin + f_flat[f0]:
        room = CMD_DEPTH               # CMD_DEPTH less the commands newer than segment s's
        for s in range(tail - 1, head - 1, -1):
            m = seg_m[s]
            # its take j is command room - (m - j) of ours to wait for
            lo = room - m if room > m else 0
            hi = room if room < n_first else n_first
            if lo < hi and seg_f[s, 3] + 1 - begin - f_flat[f0 + lo] > 0:
                tb = t_off[seg_u[s]]
                sb, sr, sw = seg_f[s, 0], seg_f[s, 1], seg_f[s, 2]
                # its commands from seg_f[s, 5] on were moved by seg_f[s, 4]
                first = triples[seg_u[s], 9] - m        # its command at tb
                for k in range(lo, hi):
                    at = tb + m - room + k                    # when the write side takes it
                    free = _max3(t_flat[at, 0] + sb, t_flat[at, 1] + sr,
                                 t_flat[at, 2] + sw) + 1 - begin
                    if first + m - room + k >= seg_f[s, 5]:
                        free += seg_f[s, 4]
                    wait = free - f_flat[f0 + k]
                    if wait > late:
                        late = wait
                    due = d_flat[f0 + k]
                    past = free - _max3(due[0], due[1] + r0, due[2] + w0)
                    if past > moved:
                        moved = past
                    if past > 0 and k < moved_from:
                        moved_from = k
            room -= m
            if room <= 0:
                break
    last = t_off[u + 1] - 1                                   # its last command's take
    seg_u[tail] = u
    seg_f[tail, 0] = begin
    seg_f[tail, 1] = read_free
    seg_f[tail, 2] = write_free
    seg_f[tail, 3] = _max3(t_flat[last, 0] + begin, t_flat[last, 1] + read_free,
                           t_flat[last, 2] + write_free) + moved
    seg_f[tail, 4] = moved
    seg_f[tail, 5] = moved_from
    seg_m[tail] = t_off[u + 1] - t_off[u]
    count += seg_m[tail]
    tail += 1
    while count - seg_m[head] >= CMD_DEPTH:
        count -= seg_m[head]
        head += 1
    state[0], state[1], state[2] = head, tail, count
    issued = begin + _max3(triples[u, 0], triples[u, 1] + r0, triples[u, 2] + w0)
    reads = begin + moved + _max3(triples[u, 3], triples[u, 4] + r0, triples[u, 5] + w0)
    writes = begin + moved + _max3(triples[u, 6], triples[u, 7] + r0, triples[u, 8] + w0)
    if triples[u, 9] <= n_first:                              # its last command waited
        held = begin + triples[u, 0] + late
        if held > issued:
            issued = held
    elif triples[u, 9] - 1 - CMD_DEPTH >= moved_from:         # behind a moved take
        issued += moved
    return issued, reads, writes


#: ``queue_after``'s state per instruction in the queue (``seg_f``'s columns): begin, read
#: and write free, its last take, how far its takes moved and from which command on.
SEGMENT_FIELDS = 6


class CopierQueue:
    """A DMA engine's copier command queue across its instructions (``queue_after``),
    for the ``Copies`` of ``table``: ``after(copies, begin, read_free, write_free)`` is
    ``(issued, read_free, write_free)``."""

    def __init__(self, table: CopiesTable):
        self.table = table
        self.seg_u = np.zeros(64, np.int64)
        self.seg_f = np.zeros((64, SEGMENT_FIELDS))
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


# -- DMA -----------------------------------------------------------------------------------
def dma_rows(instr: Instruction, hw: HardwareConfig, read_i32) -> tuple[np.ndarray, ...]:
    """A DMA instruction's rows, in order: ``(src, dst, bytes, needs an int32 read)``,
    ``int64 [rows]`` each (addresses in bytes)."""
    f, op = fields_of(instr), instr.mnemonic
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
    row_bytes``, ``dma_rows``)."""
    W = hw.line_bytes
    return math.lcm(hw.kv_block_tokens, W // math.gcd(row_bytes, W))


def _row_period(instr: Instruction, hw: HardwareConfig, read_i32) -> int:
    """Rows after which a DMA instruction's rows (``dma_rows``) repeat: the same bytes,
    source and destination alignments in the line, and int32 reads; 0 where they need
    not (a gather's indices, or a KV walk's block table read from a DRAM image)."""
    W, f, op = hw.line_bytes, fields_of(instr), instr.mnemonic

    def repeat(stride: int) -> int:          # rows after which row * stride repeats mod W
        return W // math.gcd(stride, W)

    if op in ("DMA_LOAD", "DMA_STORE"):
        return math.lcm(repeat(f.dram_stride), repeat(f.l2_stride))
    if op in ("KV_PREFETCH", "KV_APPEND") and read_i32 is None:
        l2_stride = f.col_bytes if op == "KV_PREFETCH" else f.row_bytes
        return math.lcm(_kv_dram_period(hw, f.row_bytes), repeat(l2_stride))
    return 0


def dma_occupancy(instr: Instruction, hw: HardwareConfig, read_i32=None,
                  cal: Calibration = CALIBRATION, period: int | None = None) -> Occupancy:
    """The load/store engine: one row command per cycle (after an int32 read where the row
    needs one), at most ``CMD_DEPTH`` rows ahead of the copier's write side; the copier's
    read side takes the row's source lines back to back at the DRAM bandwidth (reads) or one
    per cycle (L2); its write side takes each row's destination lines once the data is
    there, and where source and destination are not aligned alike a priming step, after the
    data where the source starts later in its line, before it otherwise
    (``_shifter_steps``). Alone, the instruction ends when its last row is written;
    ``copies`` gives the same times as functions of when the copier is free of earlier
    instructions. Rows repeat every ``period`` rows (``_row_period`` by default; 0 steps
    every row): once a period has shifted every time alike, the rest of the periods are
    added at once (a 600-token KV prefetch of one-line rows on edge-16x16 steps 184 rows),
    exactly as stepping them (the times are exact: ``_dma_run``); a table walk only by whole
    cycles (its answers are timed in whole cycles, ``_answer_behind``), which a
    ``KV_PREFETCH`` at a DRAM bandwidth under a line a cycle rarely moves: it is then
    stepped row by row (``python -m benchmarks.sweep_speed``: 28.0 s, 27.9 s before)."""
    line_cycles = hw.dram_cycles_per_line
    load = instr.engine == Engine.LOAD
    if instr.mnemonic == "STORE_COUNTERS":
        n = len(COUNTERS)
        return Occupancy(Engine.STORE, cal.dma_setup + math.ceil(n * line_cycles) + 3,
                         dram_write_bytes=COUNTER_BYTES * n, dram_lines=n)
    times, takes, first_cmds, counts, cycles, _, asks, due = _dma_walk(
        instr, hw, read_i32, cal, period)
    src_total, dst_total, moved, l2_total, int_reads, n_taken = counts.tolist()
    copies = None
    if n_taken:
        t, reads, writes = map(tuple, times.tolist())
        copies = Copies(t, reads, writes, tuple(first_cmds.tolist()),
                        tuple(map(tuple, takes.tolist())), n_taken,
                        tuple(asks.tolist()), tuple(map(tuple, due.tolist())))
    table = int_reads * BLOCK_TABLE_ENTRY_BYTES       # int32 indices and block numbers
    if load:
        prefetch = moved if instr.mnemonic == "KV_PREFETCH" else 0
        return Occupancy(Engine.LOAD, cycles, dram_read_bytes=moved + table,
                         dram_lines=src_total + int_reads, int_reads=int_reads,
                         prefetch_bytes=prefetch, copies=copies, l2_lines=l2_total)
    return Occupancy(Engine.STORE, cycles, dram_read_bytes=table, dram_write_bytes=moved,
                     dram_lines=dst_total + int_reads, int_reads=int_reads, copies=copies,
                     l2_lines=l2_total)


#: ``_dma_run``'s ``free`` where no ports hold its write side: a line a cycle
_NO_FREE = np.zeros(0, np.float64)


def _dma_walk(instr: Instruction, hw: HardwareConfig, read_i32, cal: Calibration,
              period: int | None = None, free=_NO_FREE) -> tuple:
    """``_dma_run`` on the instruction's rows, every ``period`` rows (``_row_period``'s
    by default)."""
    load = instr.engine == Engine.LOAD
    after_read = hw.dram_latency_cycles + cal.read_to_write if load else cal.l2_read_latency
    if period is None:
        period = _row_period(instr, hw, read_i32)
    drain = cal.dma_drain + (cal.load_end if load else 0)
    return _dma_run(*dma_rows(instr, hw, read_i32), period, hw.line_bytes,
                    hw.dram_bytes_per_cycle, load, hw.dram_latency_cycles, cal.dma_setup,
                    cal.cmd_to_read, after_read, cal.int_read, drain, CMD_DEPTH, free)


def paced_walk(instr: Instruction, hw: HardwareConfig, free: np.ndarray,
               read_i32=None, cal: Calibration = CALIBRATION) -> tuple[int, float]:
    """A load's walk alone (``dma_occupancy``'s), its copier's write side taking each line
    once the ports above it have left it one (``free``: the L2 lines they leave,
    cumulative, float64 [cycles + 1] from the walk's start; ``_paced_lines``): ``(cycles,
    the cycle its last row command is queued)`` from its start. A table walk's answers
    come back behind the lines its copier has yet to take (``_answer_behind``), so a write
    side the L2 slows holds its next rows as well as its end (``sweeps.perf._contention``:
    a ``KV_PREFETCH`` beside the matmul unit's ports). Not memoised: ``free`` is the
    program's."""
    times, *_, cycles, _, _, _ = _dma_walk(instr, hw, read_i32, cal, 0,
                                        np.ascontiguousarray(free, np.float64))
    return cycles, float(times[0, 0])


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
def _paced_lines(x, steps, n, free, one):
    """The step (``1 / S`` cycles, ``one`` a cycle) at which a copier's write side, free
    from step ``x``, has made a row's ``steps`` write steps, ``n`` of them its L2 lines,
    a line a cycle at most, each once the ports above it have left it a whole line since
    it asked (``free``: the lines they leave, cumulative at each cycle, linear between; a
    line a cycle past its end). Lines left while it does not ask are lost to it: the
    ports' arbiter grants a cycle's line to whoever asks (``rtl/top.py``). A misaligned
    row's extra step (its shifter's) asks for no line: it is taken first, a cycle
    whatever the ports take. (Traced on edge-4x4, seed 2046's step 11, Verilator's FST: a
    ``KV_PREFETCH`` of 94 tokens of 16-byte columns, every other row misaligned, beside
    attention's ``P · V``, which left the L2 one cycle in three, then one in two. The RTL
    wrote its first five blocks' last lines 218, 320, 428, 536 and 640 cycles from its
    begin and ended at 747. Walked over the RTL's own grants as ``free``, its first 16,
    32, ... 80 tokens end at 219, 320, 428, 536 and 641, all 94 at 748; charged a line
    for the extra step too, at 241, 350, 462, 576, 702 and 812.)"""
    if len(free) == 0 or x < NEVER_BELOW:      # (a ``NEVER`` time stays one)
        return x + steps * one
    x += (steps - n) * one
    last = len(free) - 1
    for _ in range(n):
        i = x // one                                 # the cycle it asks in
        if i >= last:
            x += one
            continue
        # the first cycle from ``i`` by whose end the lines left reach one more
        want = free[i] + 1.0 - 1e-9
        k = i
        while k < last and free[k + 1] < want:
            k += 1
        u = float(last) if k >= last else k + (want - free[k]) / (free[k + 1] - free[k])
        x = max(x + one, int(math.ceil(u * one - 1e-9)))
    return x


@njit
def _paced_back(x, n, free, one):
    """The step at which a write side that had written its last line by step ``x`` had
    written the line ``n`` before it: ``n`` lines back, a line a cycle where ``free``
    (``_paced_lines``') leaves one, at most ``x - n * one``."""
    back = x - n * one
    if n == 0 or len(free) == 0 or x < NEVER_BELOW:
        return back
    last = len(free) - 1
    t = x / one
    if t - n >= last:                       # past ``free``: a line every cycle
        return back
    i = min(int(t), last - 1)
    f = free[i] + (free[i + 1] - free[i]) * (t - i) if t < last else free[last] + t - last
    want = f - n                             # the lines left by then
    if want <= 0:
        return back
    k = max(0, min(int(t - n), last - 1))
    while k > 0 and free[k] >= want:         # the first cycle it reaches ``want``
        k -= 1
    u = k + (want - free[k]) / max(1e-12, free[k + 1] - free[k])
    return min(back, int(math.ceil(u * one - 1e-9)))


@njit
def _answer_behind(ask, lines, ring_lines, ring_read, ring_taken, n_ring, one, line, free):
    """The step (``1 / S`` cycles, as ``_dma_run``'s) at which an int32 read on the aux port
    asked at ``ask`` comes back, at the earliest, behind the copier's lines: the DRAM
    answers in request order on one stream, so it comes after every line the copier asked
    for before it was granted (``AUX_GRANT`` cycles on; a row's lines asked a ``line``'s
    slot apart, a cycle at least, from its first read), and the copier takes those only as
    its landing buffer (``COPIER_FIFO_DEPTH`` lines) has room: the last one enters as the
    write side takes the line ``COPIER_FIFO_DEPTH`` before it, and the int32 is taken the
    cycle after. ``lines``: the copier's source lines so far; ``ring_*``: the last rows'
    source lines, first read and the step its write side took its last source line (one
    that fills two destination lines at the first of them past its own, as traced with
    24-byte rows on 32-byte lines), oldest at ``n_ring % _RING``; ``free``, the lines its
    write side is left (``_paced_back``). The caller adds ``int_read``. ``-1 << 62``
    where no line holds it back. (Read off Amaranth's simulator: a ``KV_PREFETCH`` of 48
    tokens of 16-byte columns from 64-byte rows alone, whose one-line rows the copier
    writes slower than the DRAM delivers them, on edge-4x4: each table read after the
    first came back 3 cycles past its latency, the cycle after the line five before the
    last one ahead of it was written; without it such prefetches over five blocks were 3
    to 19 cycles short on edge-4x4, edge-8x8 and edge-16x16, ``python -m
    benchmarks.rtl_table_walks --only alone``. Beside a GEMV, two-line rows: a table read
    granted between a row's two line reads came back behind the first alone, round 60.)"""
    granted = -(-ask // one) + AUX_GRANT
    ahead = lines
    for back in range(min(n_ring, _RING)):
        e = (n_ring - 1 - back) % _RING
        if -(-ring_read[e] // one) < granted:
            # its lines are asked a line's slot apart (a cycle at least): those asked
            # after the grant are not ahead
            before = -(-(granted * one - ring_read[e]) // max(one, line))
            ahead -= max(0, ring_lines[e] - before)
            break
        ahead -= ring_lines[e]
    k = ahead - 1 - COPIER_FIFO_DEPTH            # the line the write side must take first
    end = lines
    for back in range(min(n_ring, _RING)):
        e = (n_ring - 1 - back) % _RING
        if end - ring_lines[e] <= k:
            if k < end:
                return _paced_back(ring_taken[e], end - 1 - k, free, one)
            break
        end -= ring_lines[e]
    return NEVER_INT


@njit
def _ring_shifted(lines, read, taken, n, before_lines, before, before_n, d):
    """Whether ``_dma_run``'s ring of a table walk's last rows (``lines``, ``read``,
    ``taken``, ``n`` rows so far) is the one as of ``before_*`` shifted by ``d``, row by
    row by age."""
    for back in range(_RING):
        e, b = (n - 1 - back) % _RING, (before_n - 1 - back) % _RING
        if lines[e] != before_lines[b]:
            return False
        for j in range(3):
            if not (shifted_by(before[b, j, 0], read[e, j], d)
                    and shifted_by(before[b, j, 1], taken[e, j], d)):
                return False
    return True


@njit
def _shift_ring(read, taken, d):
    """``_dma_run``'s ring's times moved on by ``d`` (``NEVER`` staying ``NEVER``)."""
    for i in range(_RING):
        for j in range(3):
            if read[i, j] >= NEVER_BELOW:
                read[i, j] += d
            if taken[i, j] >= NEVER_BELOW:
                taken[i, j] += d


@njit
def _push(a, n, x):
    """``x`` into ``a[n]`` where ``a`` has room; the new count."""
    if n < len(a):
        a[n] = x
        return n + 1
    return n


@njit
def _repeat(a, n, first, m, d):
    """``a[first:n]``, a settled period's times, again for each of ``m`` periods jumped,
    each ``d`` later than the one before, where ``a`` has room; the new count."""
    last = n
    for p in range(1, m + 1):
        for k in range(first, last):
            n = _push(a, n, a[k] + p * d)
    return n


@njit
def _shifter_steps(a, b, dst_lines, W, one):
    """A row's write steps from source byte ``a`` to destination byte ``b`` on ``W``-byte
    lines, and the write side's time (``one`` a cycle) they take before its data:
    ``(steps, prime)``. Misaligned, the copier's shifter takes a step that writes nothing
    (``rtl/copier.py``): of the row's first source line, after its data, where that line
    starts later in its line than the destination, a step more; else of the line before
    the row, out of range, which needs no data: a cycle of the write side while the data
    is on its way. (Read off the RTL, a one-row ``DMA_LOAD`` or ``DMA_STORE`` alone on
    edge-8x8 and edge-4x4, source and destination 0, 8 or 20 bytes into their lines,
    rows of 40 to 4,084 bytes: with a step more for every misaligned row, each where
    the source starts earlier was one cycle long, the rest exact; now all exact.)"""
    if (a - b) % W == 0:
        return dst_lines, 0
    if a % W < b % W:
        return dst_lines, one
    return dst_lines + 1, 0


@njit
def _dma_run(src, dst, nbytes, needs, period, W, S, load, lat, setup, cmd_to_read,
             after_read, int_read, drain, depth, free=_NO_FREE):
    """``dma_occupancy``'s walk of the rows ``(src, dst, nbytes, needs)`` (``dma_rows``) on
    ``W``-byte lines at ``S`` DRAM bytes a cycle. Times are max-plus triples (``Copies``:
    alone, + read side free, + write side free) in ``1 / S`` cycles, so that a line's
    ``W / S`` cycles, every sum and a jump of whole periods are exact. Returns, in cycles:
    ``(issue, reads and writes float64 [3, 3] (``Copies``'); takes float64 [<= depth, 3],
    oldest first; the first row commands' times alone float64 [<= depth]; counts int64
    [6]: source and destination lines, bytes moved, L2 lines, int32 reads, row commands;
    cycles; the rows stepped; int32 asks float64 [<= depth]; the first commands' dues
    [<= depth, 3], ``Copies.first_due``)``; the write side paced by ``free``."""
    never = NEVER_INT
    one = S                                     # a cycle
    st = np.full(12, never, np.int64)           # t, read_end, write_end, accepted
    st[0], st[4], st[8] = setup * one, 0, 0
    taken = np.empty((depth, 3), np.int64)      # a ring, ``head`` its oldest
    head = n_window = 0
    first_cmds, asks = np.empty(depth, np.int64), np.empty(depth, np.int64)   # alone
    first_due = np.empty((depth, 3), np.int64)
    n_first = n_asks = 0
    counts = np.zeros(6, np.int64)
    before_st = np.empty(12, np.int64)
    before_taken = np.empty((depth, 3), np.int64)
    before_counts = np.empty(6, np.int64)
    have_before, before_asks = False, 0
    n_rows = len(src)
    settle = depth + period              # rows before the first look for a settled period
    c = np.empty(3, np.int64)
    # a table walk's last rows (a ring, ``_answer_behind``): source lines, first read,
    # the write side's step that took the last source line; and as of ``before_*``
    track = load and needs.any()
    ring_lines, before_lines = np.zeros(_RING, np.int64), np.zeros(_RING, np.int64)
    ring_read, ring_taken = np.full((_RING, 3), never), np.full((_RING, 3), never)
    before_ring = np.empty((_RING, 3, 2), np.int64)
    n_ring = before_n = 0
    r = stepped = 0
    while r < n_rows:
        if period and r >= settle and r % period == 0 and n_first == depth:
            m = (n_rows - r) // period
            if have_before and m:
                # settled where every time is the one a period before shifted by d
                d = st[0] - before_st[0]
                # (a table walk's answers are timed in whole cycles, ``_answer_behind``:
                # they repeat only on a shift of whole cycles)
                same = not track or d % one == 0
                for i in range(12):
                    same = same and shifted_by(before_st[i], st[i], d)
                for i in range(n_window):
                    for j in range(3):
                        same = same and shifted_by(before_taken[i, j],
                                                    taken[(head + i) % depth, j], d)
                same = same and (not track or _ring_shifted(
                    ring_lines, ring_read, ring_taken, n_ring, before_lines, before_ring,
                    before_n, d))
                if same:
                    st += m * d
                    for i in range(n_window):
                        taken[(head + i) % depth] += m * d
                    if track:
                        _shift_ring(ring_read, ring_taken, m * d)
                    counts += m * (counts - before_counts)
                    n_asks = _repeat(asks, n_asks, before_asks, m, d)
                    r += m * period
                    have_before = False
                    continue
            before_st[:] = st
            for i in range(n_window):
                before_taken[i] = taken[(head + i) % depth]
            before_counts[:] = counts
            before_asks = n_asks
            if track:
                before_ring[:, :, 0], before_ring[:, :, 1] = ring_read, ring_taken
                before_lines[:], before_n = ring_lines, n_ring
            have_before = True
        n, r, stepped = nbytes[r], r + 1, stepped + 1
        if needs[r - 1]:
            counts[4] += 1
            n_asks = _push(asks, n_asks, st[0])
            for j in range(3):
                ask = st[j]
                st[j] += (lat + int_read) * one
                if track:
                    # a line of the DRAM's credit, after the rows' before it
                    # (``rtl.dram``: every request takes a line's)
                    st[3 + j] = max(ask, st[3 + j]) + W
                    behind = _answer_behind(ask, counts[0], ring_lines, ring_read[:, j],
                                            ring_taken[:, j], n_ring, one, W, free)
                    st[j] = max(st[j], behind + int_read * one)
        if n == 0:
            st[0:3] += one
            continue
        src_lines, dst_lines = lines_touched(src[r - 1], n, W), lines_touched(dst[r - 1], n, W)
        steps, prime = _shifter_steps(src[r - 1], dst[r - 1], dst_lines, W, one)
        if counts[5] >= depth:                 # the copier's command queue is full
            for j in range(3):
                st[j] = max(st[j], taken[head, j] + one)
        c[:] = st[0:3]                         # the row command
        st[0:3] += one
        first_k = n_first if n_first < depth else -1
        n_first = _push(first_cmds, n_first, c[0])     # (no queue wait of its own yet)
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
            w_free = st[6 + j] + (prime if st[6 + j] >= NEVER_BELOW else 0)
            if load:
                # The DRAM (``rtl.dram``) holds a line and a cycle of bandwidth in credit,
                # so a stream of reads runs a cycle ahead of its lines' bandwidth slots
                # (from ``start``, ``W / S`` cycles each): line k of a stream from full
                # credit is accepted at ceil(k * W / S - 1), at most one a cycle. A line's
                # data is written ``after_read`` later. (Read off Amaranth's simulator:
                # loads alone were 3 to 8 cycles long at 51 bytes a cycle when reads were
                # charged their whole slot.)
                first = max(max(c[j] + cmd_to_read * one, st[3 + j] - one), st[9 + j])
                due = max(first + after_read * one, w_free)        # its first write
                if track:
                    ring_read[n_ring % _RING, j] = first
                st[3 + j] = start + src_lines * W
                st[9 + j] = max(first + src_lines * one, st[3 + j] - W)
                st[6 + j] = max(_paced_lines(max(first + after_read * one, w_free), steps,
                                             dst_lines, free, one), st[9 + j] + after_read * one)
            else:
                due = max(start + after_read * one, w_free)
                st[3 + j] = start + src_lines * one
                st[6 + j] = max(max(start + after_read * one, w_free)
                                + max(steps * one, dst_lines * W), st[3 + j] + after_read * one)
            if first_k >= 0:          # the latest its command could come, its write unmoved
                first_due[first_k, j] = due - (cmd_to_read + after_read) * one
        if load:
            counts[0] += src_lines
            counts[3] += dst_lines
            if track:
                ring_lines[n_ring % _RING] = src_lines
                ring_taken[n_ring % _RING] = st[6:9] - max(0, dst_lines - src_lines) * one
                n_ring += 1
        else:
            counts[1] += dst_lines
            counts[3] += src_lines
        counts[2] += n
    end = max(st[0], st[6])
    window = _in_cycles3(taken[(head + np.arange(n_window)) % depth], one)
    return (_in_cycles3(st[:9].reshape(3, 3), one), window, first_cmds[:n_first] / one,
            counts, -(-end // one) + drain, stepped, asks[:n_asks] / one,
            _in_cycles3(first_due[:n_first], one))


@njit
def _in_cycles3(a, one):
    """Rows of ``_dma_run``'s integer time triples (``int64 [n, 3]``) in cycles (``NEVER``
    kept), float64 [n, 3]."""
    out = np.empty(a.shape, np.float64)
    for i in range(a.shape[0]):
        for j in range(3):
            out[i, j] = in_cycles(a[i, j], one)
    return out


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
    line-wide banks times the line (``matmul_key``); ROPE's ``pos0`` not at all
    (``vector_segments``); an ``INT8`` KV_PREFETCH's or a KV_APPEND's ``first_token``
    modulo the block and the tokens after which its rows' DRAM addresses repeat modulo
    the line (without a DRAM image, token ``t``'s row is at ``pool_addr + t *
    row_bytes``, ``dma_rows``), and the prefetch's ``col_offset`` (added to each row's
    address) modulo the line."""
    op, operands = instr.mnemonic, instr.operands
    if op == "MATMUL":
        return matmul_key(MatmulFields._make(operands), hw)
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
    ``matmul_key``)."""
    key = (_timing_fields(hw), matmul_key(MatmulFields(**fields, mode=0), hw))
    mode = _modes.get(key)
    if mode is None:
        if len(_modes) > 100_000:
            _modes.clear()
        mode = _modes[key] = _matmul_mode(hw, fields)
    return mode


_modes: dict = {}


def _matmul_mode(hw: HardwareConfig, fields: dict) -> MatmulMode:
    gemv = occupancy(make("MATMUL", mode=MatmulMode.GEMV, **fields), hw).cycles
    # (plain ints: an enum member makes numba type the call afresh, a slow dispatch)
    f = MatmulFields(**{k: int(v) for k, v in fields.items()}, mode=int(MatmulMode.GEMM))
    if gemm_floor(f, hw.line_bytes, int(hw.l2_lines_per_cycle), hw.array_rows,
                   hw.array_cols, *hw.matmul_tile(MatmulMode.GEMM)) > gemv:
        return MatmulMode.GEMV
    gemm = occupancy(make("MATMUL", mode=MatmulMode.GEMM, **fields), hw).cycles
    return MatmulMode.GEMV if gemv < gemm else MatmulMode.GEMM


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
    f = fields_of(instr)
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
        header_lines, code_lines = lines_touched(headers, cols, W), lines_touched(codes, used, W)
        writes = 0
        for _ in range(B):
            writes += lines_touched(dst, cols, W) + (1 if dst % W else 0)
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
    return Occupancy(Engine.LOAD, math.ceil(cycles) + cal.dma_drain + cal.load_end,
                     dram_read_bytes=dram_bytes,
                     dram_lines=dram_lines, int_reads=f.n_tokens // B, prefetch_bytes=moved,
                     l2_lines=l2_lines,
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
