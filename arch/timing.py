"""What every unit's timing shares: the ``Occupancy`` an instruction's walk returns, the
``Calibration`` latencies, and the helpers the walks' compiled steps share.

Contract
--------
``Occupancy`` (what ``arch.occupancy.occupancy`` returns for an instruction),
``Calibration``/``CALIBRATION`` (the latencies between the RTL's pipeline steps, read off
single-instruction runs of the Verilator model, ``python -m benchmarks.perf_calibration``),
``NEVER``, ``l2_profile_points`` (an ``Occupancy.l2_profile``), and what the walks' compiled
steps share: ``fields_of``, ``lines_touched``, integer time (``NEVER_INT``,
``NEVER_BELOW``, ``in_cycles``, ``shifted_by``). The units' walks are in
``arch.occupancy`` (DMA), ``arch.matmul_timing`` and ``arch.vector_timing``.

Tested by tests/arch/test_occupancy.py and tests/sweeps/test_perf_model.py (through
the walks that use it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from arch.hardware import HardwareConfig
from arch.isa import (
    Engine,
    Instruction,
)
from arch.kernels import njit


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
    load_end: int = 1             # a load's END beyond those, its last write into the L2
                                  # (0 before: every load's busy interval in a traced
                                  # decode step, seed 2039's third, was a cycle short, and
                                  # the compute waiting on it began a cycle early; its
                                  # answers' times, ``_answer_behind``, are the take's)
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
    is a max of sums (``occupancy.queue_after`` evaluates them).

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
    # ``CMD_DEPTH`` (triples), so that ``occupancy.queue_after`` can hold this instruction's
    # commands until the earlier ones leave the queue.
    first_cmds: tuple[float, ...] = ()
    takes: tuple[tuple[float, float, float], ...] = ()
    rows: int = 0                      # row commands in all
    # when the engine asks for its first ``CMD_DEPTH`` int32 reads (block-table entries,
    # gather indices) on its aux port, alone, relative to begin (``sweeps.perf._table_reads``)
    int_asks: tuple[float, ...] = ()
    # the latest each of the first ``CMD_DEPTH`` row commands could be queued without
    # moving its row's first write (triples, as ``takes``): a command the queue holds past
    # it moves the copier's rows from it on (``occupancy.queue_after``)
    first_due: tuple[tuple[float, float, float], ...] = ()


@dataclass(frozen=True)
class Occupancy:
    engine: Engine
    cycles: int                   # busy cycles, begin to end, alone
    dram_read_bytes: int = 0
    dram_write_bytes: int = 0
    dram_lines: int = 0           # DRAM lines moved (reads and writes)
    int_reads: int = 0            # of them, int32 reads on the engine's aux port (block-
                                  # table entries, gather indices), a line each
    macs: int = 0
    prefetch_bytes: int = 0
    copies: Copies | None = None  # a DMA instruction that copies rows (it ends deferred)
    l2_lines: int = 0             # L2 lines read and written
    after_copier: bool = False    # starts once the engine's copier has written its rows
    # Cycles in which one of its L2 streams moves between half a line and a line a cycle,
    # idling a cycle between lines (a row reader priming short or unaligned rows; for the
    # vector unit, its fastest operand or result stream in a segment), and the lines it
    # moves in them: the load engine's copier, below it in priority, can be held to that
    # pace (``sweeps.perf._trapped``). For a compute instruction where a copier is stepped
    # beside the unit (``copier_stepped``): all its cycles, and those in which such a
    # copier is not refused its bank (``matmul_timing._refusals``,
    # ``vector_timing._copier_step``).
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
    # theirs as each tile fills, its writer at each group's end; the vector unit's ports
    # as they are granted (``sweeps.perf._Usage``).
    l2_profile: tuple | None = None
    # The same lines as its ports are granted them, runs of cycles at one count a cycle,
    # ``(from, to, L2 lines)`` from its start, in order, float64 [n, 3], read-only (the
    # matmul unit's, ``matmul_timing._grant_moves``; the vector unit's): where a copier
    # below it takes the lines its ports leave cycle by cycle (``sweeps.perf._lines_left``).
    # Not compared (``l2_profile`` has the same lines, at a ninth's grain).
    l2_moves: np.ndarray | None = field(default=None, compare=False, repr=False)


def fields_of(instr: Instruction) -> SimpleNamespace:
    """The instruction's fields as attributes, looked up once (the loops below read them
    per row and per tile)."""
    return SimpleNamespace(**instr.fields())


@njit
def lines_touched(addr: int, n: int, w: int) -> int:
    """The ``w``-byte lines that ``n`` bytes from ``addr`` touch."""
    return (addr + n - 1) // w - addr // w + 1 if n else 0


#: ``_dma_run``'s stand-in for ``NEVER`` (its times are integers); a time below
#: ``NEVER_BELOW`` is one (sums of a walk's cycles leave it far below).
NEVER_INT, NEVER_BELOW = -(1 << 62), -(1 << 61)


@njit
def in_cycles(time, one):
    """An integer time of ``_dma_run`` in cycles of ``one`` (``NEVER`` kept)."""
    return -np.inf if time < NEVER_BELOW else time / one


@njit
def shifted_by(before, after, d):
    """Whether the time ``after`` is ``before`` shifted by ``d`` (``NEVER`` staying
    ``NEVER``)."""
    if before < NEVER_BELOW or after < NEVER_BELOW:
        return before < NEVER_BELOW and after < NEVER_BELOW
    return after - before == d


#: The most line-wide banks a stepped copier walks: a cycle's grants are the bits of one
#: int64 (``matmul_timing._fill_cycles``, ``_refusals``, ``_writeback``;
#: ``vector_timing._vector_run``). More (a valid but unusual L2) keep the rule of the
#: readers' idle steps, and the matmul writeback is not held by the fills.
MAX_STEPPED_BANKS = 63


def copier_stepped(hw: HardwareConfig) -> bool:
    """Whether a DMA copier beside the compute engine is stepped through its L2 grants
    (``matmul_timing._matmul_run``, ``vector_timing._vector_run``): more than one
    line-wide bank (at most ``MAX_STEPPED_BANKS``), and a DRAM that feeds a line a cycle
    or more."""
    return 1 < hw.l2_lines_per_cycle <= MAX_STEPPED_BANKS and hw.dram_cycles_per_line <= 1


PROFILE_STEPS = 9      # the points of ``Occupancy.l2_profile`` past its start


def read_only(a: np.ndarray) -> np.ndarray:
    """``a``, marked read-only (an ``Occupancy``'s arrays are shared through the memo)."""
    a.setflags(write=False)
    return a


def recorded_grants(key: tuple, hw, grants) -> np.ndarray:
    """A compute unit's L2 bank grants a cycle (``matmul_timing.grant_banks``,
    ``vector_timing.vector_grant_banks``: ``grants()``, int64 [cycles], a bit a bank),
    read-only, memoised on ``key`` (the instruction and the fields of ``hw`` they read);
    empty (not recorded) where the L2 has more than ``MAX_STEPPED_BANKS`` line-wide
    banks (a cycle's grants are one int64's bits)."""
    hit = _grants.get(key)
    if hit is None:
        recorded = 1 <= hw.l2_lines_per_cycle <= MAX_STEPPED_BANKS
        if len(_grants) >= 4096:           # (a bound on its memory, not a measured size)
            _grants.clear()
        hit = _grants[key] = read_only(grants() if recorded else np.zeros(0, np.int64))
    return hit


_grants: dict = {}


@njit
def grant_runs(grants):
    """Rows ``(from, to, L2 lines)`` in time order (float64 [n, 3]; grants, a cycle each)
    with the rows that follow on without a gap at the same lines a cycle merged, their
    lines summed: an ``Occupancy.l2_moves``, a fresh array."""
    out = np.empty((len(grants), 3), np.float64)
    n = 0
    for r in range(len(grants)):
        if n and grants[r, 0] == out[n - 1, 1] and grants[r, 2] * (
                out[n - 1, 1] - out[n - 1, 0]) == out[n - 1, 2] * (grants[r, 1] - grants[r, 0]):
            out[n - 1, 1] = grants[r, 1]
            out[n - 1, 2] += grants[r, 2]
        else:
            out[n] = grants[r]
            n += 1
    return out[:n].copy()


@njit
def l2_profile_points(moves, cycles):
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
