"""The performance model: times a compiled program on a hardware description.

Contract
--------
``time_program(instrs, hw, read_i32)`` returns a ``ProgramTiming``: total cycles, each
engine's busy and stall cycles, DRAM bytes read, written and prefetched, MACs, the
cycles the DRAM was busy, and every instruction's begin and end cycle, for the program
run as the RTL runs it. ``time_build(build)`` times every program of a compiled build
and adds time to first token (the prefill program), time per output token (the mean
decode program) and tokens/s at ``hw.clock_hz``.

The model has three levels (``docs/perf.md``):

1. how long each instruction keeps its engine busy, alone: ``arch.occupancy``;
2. how the engines overlap, here, following ``rtl/controller.py``: instructions are
   fetched in program order with at most ``FETCH_AHEAD`` reads in flight, each arriving
   ``dram_latency_cycles`` after its request; the decoder dispatches one per cycle into
   its engine's queue of ``QUEUE_DEPTH`` and stalls while that queue is full; an engine
   pops its next instruction when the previous one has ended, waits until the tokens
   it names have been signalled (a signal is visible the cycle after the signalling
   instruction ends), runs for its occupancy and ends. A DMA engine pops its next
   instruction as soon as the previous one's last row command is queued, and the
   instruction ends when its copier has written it, after the ones before it
   (``timing.Copies``; at most ``DEFERRED`` in flight); busy cycles are those in which
   an engine has an instruction begun and not ended. ``HALT`` completes when every
   engine has drained; ``KV_LIVE`` waits for every earlier instruction to end, then its
   map's words come one request a cycle after ``MAP_READ_START``, a DRAM latency each;
3. what the engines share: each DMA instruction's copier waits for the L2 lines the
   higher-priority ports take, for the pace of a compute stream it is held behind
   (``_trapped``) and for the DRAM lines instruction fetch and the other DMA clients
   take over its interval, a store's first line going at once on the DRAM's credit
   (``_contention``, ``_store_dram_wait``); on an L2 of several line-wide banks, a
   load's L2 writes and a store's L2 reads are walked cycle by cycle through the banks
   the matmul and vector units are granted (``_Banks``); a store's block-table read,
   and the first table or index read of a ``KV_PREFETCH`` or ``DMA_GATHER``, waits for
   the lines a held load has queued in the DRAM ahead of it (``_queued``); and the
   program runs again until the waits settle. No program takes fewer cycles than the DRAM needs
   for its lines.

The model is checked against the RTL's cycle counters on the same programs
(``tests/rtl/test_tiny_rtl.py``, ``tests/rtl/test_accelerator.py``); ``accel verify``
reports the error.

Tested by tests/sweeps/test_perf_model.py, tests/rtl/test_tiny_rtl.py and
tests/rtl/test_accelerator.py (against the RTL's cycles).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from arch.hardware import HardwareConfig
from arch.isa import (
    ENGINES,
    KV_MAP_WORD_BYTES,
    Engine,
    Instruction,
    kv_map_words,
)
from arch.kernels import njit
from arch.matmul_timing import grant_banks
from arch.occupancy import (
    CALIBRATION,
    Calibration,
    CopierQueue,
    CopiesTable,
    Occupancy,
    dma_rows,
    load_data_delay,
    occupancy,
    paced_walk,
)
from arch.timing import MAX_STEPPED_BANKS, fields_of
from arch.uarch import (
    CMD_DEPTH,
    COPIER_FIFO_DEPTH,
    DEFERRED,
    DISPATCH_LATENCY,
    DONE_LATENCY,
    FETCH_AHEAD,
    FETCH_START,
    MAP_READ_START,
    QUEUE_DEPTH,
    dram_queue_lines,
)
from arch.vector_timing import vector_grant_banks

# Passes of the engines until the L2 waits settle (``_settled``). Each pass reads a
# load's wait off the last pass's timeline, where the compute engine runs the loads'
# delay behind: on edge-4x4, whose one-line L2 a decode step fills every cycle, the
# program's cycles swing between passes by up to 9% and settle within a few cycles after
# 10 to 16 (a tiny decode step at KV 7: 68,720 at the third pass, 63,182 after 16,
# 63,236 on the RTL; 63,047 before a load's L2 wait was taken at its fixed point,
# ``_l2_span``, and the aux port's reads were 2 cycles shorter).
CONTENTION_PASSES = 16


class PerfError(ValueError):
    """A program the performance model cannot time (it names the instruction)."""


@dataclass
class ProgramTiming:
    cycles: int
    busy: dict[str, int]
    stall: dict[str, int]
    dram_read_bytes: int
    dram_write_bytes: int
    prefetch_bytes: int
    macs: int
    # Cycles in which the DRAM accepted a request, as the RTL's counter counts them: one
    # per line moved, instruction fetch included. At most ``dram_bytes_per_cycle /
    # line_bytes`` of all cycles when the DRAM is slower than a line per cycle, so
    # ``dram_busy_cycles / cycles`` is not the DRAM's utilisation; that is
    # ``dram_utilisation`` (the bytes of those lines over the bandwidth's cycles).
    dram_busy_cycles: int
    line_bytes: int = 0
    dram_bytes_per_cycle: int = 0
    begin: list[int] = field(default_factory=list, repr=False)
    end: list[int] = field(default_factory=list, repr=False)

    @property
    def dram_utilisation(self) -> float:
        """Fraction of the DRAM's bandwidth used: lines moved (instruction fetch included)
        times ``line_bytes``, over ``dram_bytes_per_cycle * cycles``; at most 1."""
        return (self.dram_busy_cycles * self.line_bytes
                / (self.dram_bytes_per_cycle * self.cycles)) if self.cycles else 0.0

    def counters(self) -> dict[str, int]:
        """The quantities the RTL's counters report, under the same names."""
        out = {"cycles": self.cycles}
        for e in ("load", "compute", "store"):
            out[f"{e}_busy"] = self.busy[e]
            out[f"{e}_stall"] = self.stall[e]
        out.update(dram_read_bytes=self.dram_read_bytes, dram_write_bytes=self.dram_write_bytes,
                   prefetch_bytes=self.prefetch_bytes, array_macs=self.macs,
                   dram_busy_cycles=self.dram_busy_cycles)
        return out


def time_program(instrs: list[Instruction], hw: HardwareConfig, read_i32=None,
                 cal: Calibration = CALIBRATION) -> ProgramTiming:
    occs = [occupancy(instr, hw, read_i32, cal) if instr.engine != Engine.CONTROL else None
            for instr in instrs]
    delay = [(0, 0, 0, NO_WALK)] * len(instrs)
    before = None                                    # the waits of the pass before
    banks: dict = {}                                 # (``_Banks``' cache, pass to pass)
    for n in range(CONTENTION_PASSES):
        timing, write_start, fetch, reads = _time(instrs, occs, hw, cal, delay)
        again = _contention(instrs, occs, hw, timing, write_start, fetch, delay, reads, cal,
                            read_i32, banks)
        if again == delay or (n and _settled(again, delay)):   # the first pass's waits apply
            break
        if n >= 2 and _settled(again, before):                 # alternating: as settled
            break
        before, delay = delay, again
    return timing


def _settled(again: list, last: list) -> bool:
    """The contention passes stop once no wait moved by more than a cycle (a load's
    start moving by a cycle can move the overlap that sets its wait by one, back and
    forth), or once every wait is back within a cycle of the pass before last: a
    copier's walk through the units' banks (``_Banks``) can meet them a bank apart as
    its start moves by a cycle, and its wait then alternates between two values (0 and
    3 cycles on a Sheared-LLaMA-1.3B-wide MXINT4 decode step on edge-16x16, whose
    cycles stayed the same from the tenth pass to the sixteenth)."""
    return all(a == b or (all(abs(x - y) <= 1 for x, y in zip(a, b, strict=True))
                          if isinstance(a, tuple) else abs(a - b) <= 1)
               for a, b in zip(again, last, strict=True))


class _Usage:
    """The L2 lines one engine's instructions use up to a cycle: each instruction takes its
    lines evenly over its interval, or as its ``Occupancy.l2_profile`` says (the matmul
    unit's: its tile readers as each tile fills, its writer at each group's end; the
    vector unit's: its ports' grants), scaled to the interval. The intervals come in
    program order, and an engine's begin and end in order, so ``lines(t)`` is a prefix
    sum and a walk back over the few intervals still open at ``t``. (Measured: in a tiny
    decode step on edge-4x4, an accumulating ``P · V`` takes 6 of its 56 lines in its
    first 23 cycles of 115; spread evenly, 11.)"""

    def __init__(self, intervals: list[tuple[float, float, float]], shapes=None):
        self.starts = [b for b, _, _ in intervals]
        self.ends = [e for _, e, _ in intervals]
        self.rates = [r for _, _, r in intervals]
        # each one's ``Occupancy.l2_profile`` and ``(l2_moves, cycles alone)``, or None
        self.profiles = [p for p, _ in shapes] if shapes else [None] * len(intervals)
        self.moves = [m for _, m in shapes] if shapes else [None] * len(intervals)
        self.cum = [0.0]
        for b, e, r in intervals:
            self.cum.append(self.cum[-1] + r * (e - b))

    def lines(self, t: float, upto: int | None = None) -> float:
        """The lines up to ``t``; of the first ``upto`` intervals only, where given."""
        k = bisect.bisect_right(self.starts, t)
        if upto is not None:
            k = min(k, upto)
        total = self.cum[k]
        j = k - 1
        while j >= 0 and self.ends[j] > t:         # started, not ended: only part of it
            b, e, profile = self.starts[j], self.ends[j], self.profiles[j]
            n = self.rates[j] * (e - b)
            if profile is None:
                total -= n - self.rates[j] * (t - b)
            else:
                x = (t - b) / (e - b) * len(profile)
                i = int(x)
                lo = profile[i - 1] if i else 0.0
                total -= n * (1 - (lo + (profile[i] - lo) * (x - i)))
            j -= 1
        return total

    def taken(self, t0: float, n: int) -> np.ndarray:
        """The lines taken in each of the ``n`` cycles from ``t0``, float64 [n]: as
        ``lines``, but where an instruction has its ``Occupancy.l2_moves`` (``(moves,
        cycles alone)``), move by move, scaled to its interval."""
        grid = t0 + np.arange(n + 1, dtype=np.float64)
        cum = np.zeros(n + 1)
        j = bisect.bisect_left(self.starts, t0 + n) - 1
        while j >= 0 and self.ends[j] > t0:        # (the ends come in order too)
            b, e = self.starts[j], self.ends[j]
            lines = self.rates[j] * (e - b)
            moves, profile = self.moves[j], self.profiles[j]
            if moves is not None:               # runs in order, one after another
                m, alone = moves
                scale = (e - b) / max(1, alone)
                share = m[:, 2] * (lines / max(1e-9, m[:, 2].sum()))
                before = np.concatenate(([0.0], np.cumsum(share)))
                cum += np.interp(grid, b + scale * m[:, :2].ravel(),
                                 np.column_stack((before[:-1], before[1:])).ravel())
            elif profile is not None:
                points = b + (e - b) * np.arange(len(profile) + 1) / len(profile)
                cum += lines * np.interp(grid, points, (0.0, *profile))
            else:
                cum += lines * np.clip((grid - b) / max(1e-9, e - b), 0, 1)
            j -= 1
        return np.diff(cum)


def _spread(usages: dict, engines, lo: float) -> tuple[np.ndarray, ...]:
    """The L2 lines the ``engines``' instructions take from ``lo`` on, as intervals of
    an even rate (``_l2_span``'s ``starts``, ``ends``, ``rates``): each instruction's
    interval, or, where it has an ``l2_profile``, its ninths at their own rates."""
    rows = []
    for e in engines:
        u = usages[e]
        j = bisect.bisect_right(u.starts, lo) - 1
        while j >= 0 and u.ends[j] > lo:       # an engine's ends come in order too
            j -= 1
        for k in range(j + 1, len(u.starts)):
            if u.ends[k] <= lo:
                continue
            b, end, rate, profile = u.starts[k], u.ends[k], u.rates[k], u.profiles[k]
            if profile is None:
                rows.append((b, end, rate))
                continue
            part, n, before = (end - b) / len(profile), rate * (end - b), 0.0
            for i, share in enumerate(profile):
                rows.append((b + i * part, b + (i + 1) * part, n * (share - before) / part))
                before = share
    table = np.array(rows, np.float64).reshape(-1, 3)
    return tuple(np.ascontiguousarray(table[:, k]) for k in range(3))


@njit
def _usage_lines(starts, ends, rates, cum, t: float, begun: int = -1) -> float:
    """``_Usage.lines(t)`` of an engine whose instructions take their lines evenly (no
    ``l2_profile``) over arrays: ``starts``, ``ends`` and ``rates`` of its intervals,
    ``cum`` the prefix sums of their lines (``_Usage.cum``); the same arithmetic in the
    same order, so the same value (``tests/sweeps/test_perf_model.py``). Compiled for the
    fast path (``sweeps.analytic._l2_waits``), which asks it twice a load and passes
    ``begun``, the intervals begun by ``t`` (``np.searchsorted(starts, t,
    side="right")``), where it has them (``sweeps.analytic._begun``)."""
    k = begun if begun >= 0 else np.searchsorted(starts, t, side="right")
    total = cum[k]
    j = k - 1
    while j >= 0 and ends[j] > t:
        n = rates[j] * (ends[j] - starts[j])
        total -= n - rates[j] * (t - starts[j])
        j -= 1
    return total


class _Streams:
    """The compute engine's paced L2 streams and bursts (``Occupancy.paced_cycles``,
    ``resumes``), one instruction after another: their begins, ends and the lines a cycle
    they take from a trailing copier (``_stolen_lines``), as arrays (``_trapped_cycles``
    reads them)."""

    def __init__(self, intervals: list[tuple[float, float, float]]):
        rows = np.array(intervals, np.float64).reshape(-1, 3)
        self.begins, self.ends, self.stolen = (np.ascontiguousarray(rows[:, k])
                                               for k in range(3))


@njit
def _stolen_lines(paced_cycles: int, paced_lines: int, resumes: int, cycles: float,
                  banks: float, camped_cycles: int = 0) -> float:
    """The L2 lines a cycle that a compute instruction's streams take from a DMA copier
    that trails them (``_trapped``), over its ``cycles``: a paced reader's every resume
    (``Occupancy.paced_cycles``, ``paced_lines``), one in ``banks`` of its other bursts'
    starts (``Occupancy.resumes``: the copier's next bank is then any), and every cycle
    it keeps one bank busy (``Occupancy.camped_cycles``: the copier, walking the banks,
    comes to it and waits there). (The last measured on the suite's int8 prefill on
    edge-8x8 at 64 KiB, every L2 port and address traced in Amaranth's simulator: a
    224-line weight load the DRAM paces at a line a cycle was refused 16 cycles running
    at each writeback group of the FFN GEMV beside it, whose rows, 48 lines apart, all
    fall in one of the four banks; about 30 cycles a load that the model did not charge.)"""
    span = max(1.0, cycles)
    stolen = (min(1.0, paced_cycles / span) * (1 - paced_lines / paced_cycles)
              if paced_cycles else 0.0)
    return min(1.0, stolen + resumes / (banks * span) + camped_cycles / span)


def _trapped(streams: _Streams, lo: float, alone: float, rate: float) -> float:
    """Cycles a DMA copier that alone moves ``rate`` lines a cycle for ``alone`` cycles
    from ``lo`` loses behind the paced compute streams it overlaps. Such a reader idles
    one cycle between lines; the copier, lower in priority, catches it up and then wants,
    each time the reader resumes, the bank the reader's next line is in, since both walk
    consecutive lines through the banks in the same order (whatever their number): it
    loses that cycle; and where a burst begins after a pause (a tile's fill, a writeback
    group), the copier's next bank is the burst's first one time in ``banks``. Each
    interval so leaves the copier ``1 - stolen`` lines a cycle (``_stolen_lines``); a
    copier that needs fewer loses nothing (one held to the DRAM's pace catches up from
    the DRAM's queue when the reader runs a line a cycle). The copier's work is walked
    through the streams' intervals (so its own delay lengthens its overlap with them).
    (Measured on a tiny decode step on edge-8x8 with Amaranth's simulator,
    ``benchmarks.l2_conflicts``: most of the load engine's refused L2 cycles are this,
    behind attention's ``P · V``, whose KN weight rows of ``C`` bytes its reader primes
    one by one, and as many with four times the banks. Beside the MXINT4 GEMVs of a
    Sheared-LLaMA-1.3B-wide decode step on edge-16x16, whose weight loads the DRAM paces
    at 0.80 lines a cycle, 1,513 refusals cost the loads 15 cycles in 17,500: the GEMVs'
    weight readers leave 0.84. On the suite's edge-8x8 at 64 KiB, a 512-line weight load
    written a line a cycle beside a GEMV was refused 14 times, against 48 bursts on 4
    banks.)"""
    return _trapped_cycles(streams.begins, streams.ends, streams.stolen, float(lo),
                           float(alone), float(rate))


@njit
def _trapped_cycles(begins, ends, stolen, lo, alone, rate, begun=-1, unpaced=None,
                    gapped=None, twice=False):
    """``_trapped`` over the streams' arrays (``_Streams``), compiled (numba); ``begun``:
    the streams begun by ``lo`` (``np.searchsorted(begins, lo, side="right")``), where
    the caller has them (``sweeps.analytic._trapped_waits``, ``_begun``). With
    ``unpaced`` and ``gapped`` (``sweeps.analytic._caught_up``'s) and a copier that
    writes each of its lines ``twice`` or more, a stream whose paced reader idles a cycle
    between lines (``gapped``) takes only its ``unpaced`` lines: trailing that reader,
    the copier is still on the bank the reader left when the reader resumes on the next."""
    alone = max(0.0, alone)
    t, left = lo, alone
    if begun < 0:
        begun = np.searchsorted(begins, lo, side="right")
    for k in range(max(0, begun - 1), len(begins)):
        b, e = begins[k], ends[k]
        if b - t >= left:                          # done before the stream begins
            break
        taken = stolen[k]
        if unpaced is not None and twice and gapped[k]:
            taken = unpaced[k]
        speed = (1 - taken) / rate                 # the copier's work per cycle
        if e <= t or speed >= 1:
            continue
        if b > t:                                  # free running up to the stream
            left -= b - t
            t = b
        if (e - t) * speed >= left:
            return t + left / speed - lo - alone
        left -= (e - t) * speed
        t = e
    return t + left - lo - alone


@njit
def _l2_span(starts, ends, rates, lo: float, lines: float, per_cycle: float,
             span: float) -> float:
    """The cycles a copier's interval from ``lo`` needs for its ``lines`` L2 lines and
    those the ports above it take in it, ``need(x) = (lines + theirs in [lo, lo + x]) /
    per_cycle``, the ports' lines each taken evenly over an interval (``starts``,
    ``ends``, ``rates`` in lines a cycle; any order). One step from the last pass's
    ``span``, as the passes converge; where that step grows the interval, the least
    fixed point past it, ``need(x) = x``: ``need`` is piecewise linear between the
    intervals' ends, so it is walked from end to end and solved on the segment where it
    meets ``x`` (exact, whatever the rates: beside ports that take more than the L2's
    lines a cycle it can meet ``x`` and leave it again). Stepped pass by pass instead, a
    load beside a compute that takes 0.98 of edge-4x4's one line a cycle (a REQUANT
    whose int32 rows and per-column words each take half a line a beat) grew by 2% a
    pass and stopped at 472 cycles of the RTL's 1,181 (``CONTENTION_PASSES``;
    tests/rtl/test_l2_contention.py)."""
    def need(x):
        t = lo + x
        used = 0.0
        for k in range(len(starts)):
            a, b = max(starts[k], lo), min(ends[k], t)
            if b > a:
                used += rates[k] * (b - a)
        return (lines + used) / per_cycle

    want = need(span)
    if want <= span + 1:
        return want
    a, fa = want, need(want)
    if fa <= a:
        return a
    # the intervals' ends from lo + a on, in order, and the rate each changes need by
    n = len(starts)
    times, deltas = np.empty(2 * n), np.empty(2 * n)
    slope = 0.0                          # d need / dx just past a
    for k in range(n):
        times[2 * k], deltas[2 * k] = starts[k] - lo, rates[k] / per_cycle
        times[2 * k + 1], deltas[2 * k + 1] = ends[k] - lo, -rates[k] / per_cycle
        if starts[k] - lo <= a < ends[k] - lo:
            slope += rates[k] / per_cycle
    order = np.argsort(times)
    times, deltas = times[order], deltas[order]
    e = np.searchsorted(times, a, side="right")
    while True:
        if slope < 1:                    # where need, linear up to the next end, meets x
            x = a + (fa - a) / (1 - slope)
            if e == 2 * n or x <= times[e]:
                return x
        b = times[e]
        fa, a = fa + slope * (b - a), b
        while e < 2 * n and times[e] == b:
            slope += deltas[e]
            e += 1


def _burst_wait(lines: float, rate: float, left: float) -> float:
    """The cycles a ``KV_PREFETCH``'s copier loses writing its ``lines`` L2 lines in
    bursts at ``rate`` lines a cycle, where the ports above it leave ``left`` lines a
    cycle on average over its interval. Its blocks come one after another: each block's
    table read goes out behind the block before's lines in the DRAM's queue, and the
    block's rows are read a DRAM latency after it is back, so the copier is idle for
    most of its interval and writes a block's lines in a burst. The lines the ports
    above leave in the idle stretches are no use to it (the interval-wide rule,
    ``_l2_span``, counts them); in a burst it gets ``left`` a cycle. Measured on
    edge-4x4 (``python -m benchmarks.rtl_table_walks --only queued``): a prefetch of 2
    and 4 KV blocks after a load held by a GEMV was 41 and 63 cycles short without it,
    5 and 13 over with it (where it reaches, ``_prefetch_wait`` walks the prefetch
    through the lines left instead: 2 over each). 0 where ``left`` is none (the
    interval-wide rule's case) or at least ``rate``. The caller takes ``left`` over the
    interval the wait gives the copier, at its fixed point (the wait shrinks as the
    interval reaches past the ports' lines), so that it does not swing from pass to
    pass."""
    if left <= 0 or left >= rate:
        return 0.0
    return lines / left - lines / rate


def _burst_rate(hw: HardwareConfig) -> float:
    """Lines a cycle a ``KV_PREFETCH``'s copier writes in a burst: a line a cycle, at most
    what the L2 and the DRAM move."""
    return min(1.0, hw.l2_lines_per_cycle, 1 / hw.dram_cycles_per_line)


#: ``_contention``'s ``walk`` of a DMA instruction not walked through the L2's lines
#: (``_prefetch_wait``): its last row command is held as its copier is (``_time``)
NO_WALK = -1.0


def _lines_left(ports: list, t0: float, n: int, per_cycle: float,
                most: float | None = None) -> np.ndarray:
    """The L2 lines the ``ports`` (their ``_Usage``) leave a copier below them,
    cumulative at each of the ``n + 1`` cycles from ``t0``: float64 [n + 1], each cycle's
    between none and ``per_cycle`` (or ``most``, the lines the copier takes a cycle)."""
    taken = sum((u.taken(t0, n) for u in ports), np.zeros(n))
    left = np.clip(per_cycle - taken, 0.0, per_cycle if most is None else most)
    return np.concatenate(([0.0], np.cumsum(left)))


def _prefetch_burst_wait(ports: list, lo: float, lines: int, alone: float,
                         hw: HardwareConfig) -> int:
    """A ``KV_PREFETCH``'s ``_burst_wait`` over the interval its own wait gives it, from
    ``lo``: the least span past its interval ``alone`` where the burst wait, with the
    lines of the ``ports`` above it (their ``_Usage``) over the span, no longer reaches
    (bisected; the wait shrinks as the span grows)."""
    per_cycle, rate = hw.l2_lines_per_cycle, _burst_rate(hw)

    def past(span: float) -> bool:
        taken = sum(u.lines(lo + span) - u.lines(lo) for u in ports)
        return alone + _burst_wait(lines, rate, per_cycle - taken / span) <= span

    a, b = alone, 2 * alone
    if past(a):                            # no wait (bisected, it would end half a cycle on)
        b = a
    while not past(b) and b - alone < 1 << 24:
        a, b = b, 2 * b
    while b - a > 0.5:
        mid = (a + b) / 2
        a, b = (a, mid) if past(mid) else (mid, b)
    return math.ceil(b - alone)


def _prefetch_wait(instr: Instruction, occ: Occupancy, ports: list, lo: float,
                   alone: float, t0: float, hw: HardwareConfig, read_i32,
                   cal: Calibration) -> tuple[int, float]:
    """A ``KV_PREFETCH``'s L2 wait as it writes in bursts beside the ``ports`` above it
    (their ``_Usage``), its copier's interval from ``lo`` lasting ``alone`` cycles, and
    the cycles its last row command waits: ``(l2 wait, walk)``, ``walk`` ``NO_WALK``
    where it is not walked. The burst wait
    (``_prefetch_burst_wait``); where it reaches and the DRAM feeds a line a cycle or
    more, the instruction walked from ``t0`` (its begin and its queued wait), or later,
    so that its first write comes no sooner than ``lo``, where the copier's write side is
    done with the instructions before it (``alone`` before its end alone), with its
    copier's write side taking a line only in a cycle the ports leave one
    (``_lines_left``, ``arch.occupancy.paced_walk``): each block's table read comes back
    behind the lines its copier has yet to take, so that walk sets its end and its last
    row command, and the engine's next instruction. (On edge-4x4 beside a GEMV that takes
    the L2 21 cycles running and leaves it 11, one prefetch of 7 blocks: 331 cycles over
    the RTL's load busy at the burst wait, 1 walked; ``python -m benchmarks.rtl_table_walks
    --only chained``, docs/perf.md "Round 60". Seed 2046's step 11 on edge-4x4, traced:
    walked from ``t0``, a prefetch behind two loads, beside a GEMV that leaves the L2 7
    cycles in 23, met the GEMV's grants 64 cycles before its copier could write, and
    lasted 1,223 cycles to the RTL's 1,238; walked from its write side, 1,238.)"""
    burst = _prefetch_burst_wait(ports, lo, occ.l2_lines, alone, hw)
    if burst <= 0 or _burst_rate(hw) != 1:
        return burst, NO_WALK
    t0 = max(t0, lo - (occ.cycles - alone))   # its first write no sooner than ``lo``
    free = _lines_left(ports, t0, int(2 * (occ.cycles + burst)) + 64, hw.l2_lines_per_cycle)
    cycles, issue = paced_walk(instr, hw, free, read_i32, cal)
    return max(0, cycles - occ.cycles), max(0.0, issue - occ.copies.issue[0])


#: The share of ``_trapped``'s loss a ``KV_PREFETCH``'s burst is charged
#: (``_bursts_trapped``): fitted, read off two traced decode steps on the 4 x 8 array
#: (seed 2040's step 7, seed 2037's step 17), their prefetches beside attention's
#: ``P · V``, where the table reads came back 10, 1, 8, 0 and 1 cycles late in one
#: prefetch and 8, 0, 5 and 4 in another, against a ``_trapped`` loss of 9 and 8 a burst.
BURST_HELD_SHARE = 0.5


def _bursts_trapped(streams: _Streams, lo: float, alone: float, occ: Occupancy,
                    hw: HardwareConfig) -> int:
    """Cycles a ``KV_PREFETCH`` whose copier alone writes its lines from ``lo`` for
    ``alone`` cycles loses behind the paced compute streams in its bursts: it writes each
    KV block's lines back to back, a line a cycle, a table read apart (``_burst_wait``),
    and the next block's table read comes back behind them in the DRAM's queue, so what a
    burst loses holds every block after it. A burst begins wherever the stream's reader
    is in the banks, and the copier is held (as a load is, ``_trapped``) only in some:
    each burst is charged ``BURST_HELD_SHARE`` of its ``_trapped`` loss, the bursts taken
    evenly over the interval, one a block-table read. (Charged none, the prefetches of
    ``python -m benchmarks.rtl_table_walks --only beside`` were 16 and 8 cycles short;
    charged the whole loss, round 52 found 2 to 4 times the RTL's on other shapes. Still
    over: 64 of each 128-byte row beside ``P · V``, docs/perf.md "Round 54".)"""
    blocks = occ.int_reads
    if blocks < 1 or alone <= 0:
        return 0
    rate = _burst_rate(hw)
    burst = occ.l2_lines / blocks / rate            # cycles a block's lines take alone
    step = max(0.0, alone - burst) / max(1, blocks - 1)
    lost = 0.0
    for k in range(blocks):
        lost += BURST_HELD_SHARE * _trapped(streams, lo + k * step + lost, burst, rate)
    return math.ceil(round(lost, 6))     # (``_trapped``'s float residue is no cycle)


class _Banks:
    """The cycles each DMA instruction of a program pass loses to the matmul and vector
    units' L2 bank grants (``wait``), where they are walked (``walked``: more than one
    line-wide bank, at most ``MAX_STEPPED_BANKS``; recorded on one bank too, not walked
    there): a load's L2 writes
    (``_bank_wait``), a store's L2 reads (``_store_bank_wait``); else 0. Holds the
    compute instructions' intervals this pass (``units_at``, in order) and their grants
    (``units``: a ``MATMUL``'s ``grant_banks``, a vector instruction's
    ``vector_grant_banks``), and each load's lines' banks (``_row_banks``) or store's
    reads (``_store_reads``), the last three kept in ``cache`` from pass to pass. (Where
    the DRAM feeds a line a cycle, ``arch.timing.copier_stepped``, a load was before
    stepped through the units' grants as a copier asking a line every cycle in
    consecutive banks: seed 2046's step 22 on the 4 x 8 array, the LM head's loads of 80-byte
    rows beside its GEMVs, was 2.24% long; walked with their rows' banks, 0.13% short.
    Walked on edge-4x4's one bank too (tried in round 63; its grants are recorded and
    exact), seed 2047's step 1 went from −0.05% to +1.53%: a load's walk met the grants
    of the ``MATMUL`` that waits for it, placed by the pass before, and its wait swung
    between 10 and 51 cycles from pass to pass.)"""

    def __init__(self, instrs, occs, hw: HardwareConfig, timing: ProgramTiming, read_i32,
                 cache: dict | None, cal: Calibration = CALIBRATION):
        self.instrs, self.hw, self.read_i32, self.cal = instrs, hw, read_i32, cal
        self.cache = {} if cache is None else cache
        self.walked = 1 < hw.l2_lines_per_cycle <= MAX_STEPPED_BANKS
        if self.walked and "units" not in self.cache:
            self.cache["units"] = {
                j: grant_banks(instr, hw) if instr.mnemonic == "MATMUL"
                else vector_grant_banks(instr, hw) for j, instr in enumerate(instrs)
                if instr.engine == Engine.COMPUTE and occs[j] is not None and occs[j].l2_lines}
        self.units = self.cache.get("units", {})
        self.units_at = [(timing.begin[j], timing.begin[j] + occs[j].cycles, masks)
                        for j, masks in self.units.items()]
        self.ends = [m[1] for m in self.units_at]   # in order: the compute engine's are

    def wait(self, i: int, lo: float, alone: float) -> float:
        if not self.walked:
            return 0.0
        store = self.instrs[i].engine == Engine.STORE
        hw, cal = self.hw, self.cal
        first = bisect.bisect_right(self.ends, lo)
        banks = int(hw.l2_lines_per_cycle)
        if i not in self.cache:                    # its L2 lines' banks, in order
            src, dst, nbytes, needs = dma_rows(self.instrs[i], hw, self.read_i32)
            self.cache[i] = (_store_reads(
                src, dst, nbytes, needs, hw.line_bytes, banks, hw.dram_bytes_per_cycle,
                hw.dram_latency_cycles + cal.int_read, cal.cmd_to_read) if store
                else (_row_banks(dst, nbytes, hw.line_bytes, banks), len(dst)))
        if store:
            return _store_bank_wait(self.cache[i], banks, lo, alone, self.units_at, first,
                                    cal.l2_read_latency)
        seq, rows = self.cache[i]
        return _bank_wait(seq, hw, lo, alone, self.units_at, first, rows,
                          hw.dram_latency_cycles + cal.cmd_to_read + cal.read_to_write)


def _grant_union(lo: float, length: int, units_at: list, first: int) -> np.ndarray | None:
    """The banks the compute instructions beside (``units_at``: ``(begin, end, their
    grants)``, ``_Banks``', in order; ``first``, the first that ends after ``lo``) are
    granted in each of ``length`` cycles from ``lo``, int64 [length]; None where none
    is."""
    if first >= len(units_at) or units_at[first][0] - lo >= length:
        return None
    union = np.zeros(length, np.int64)
    hit = False
    for begin, _, masks in itertools.islice(units_at, first, None):
        a = math.ceil(begin - lo)
        if a >= length:
            break
        src = masks[max(0, -a):]
        n = min(len(src), length - max(0, a))
        if n > 0:
            union[max(0, a):max(0, a) + n] |= src[:n]
            hit = True
    return union if hit else None


def _bank_wait(seq: np.ndarray, hw: HardwareConfig, lo: float, alone: float,
               units_at: list, first: int = 0, rows: int = 0, round_trip: int = 0) -> float:
    """The cycles a load's copier, which alone writes its rows' L2 lines (their banks in
    order, ``seq``: ``_row_banks``) evenly over ``alone`` cycles from ``lo``, loses to
    the bank grants of the compute units beside it (``_grant_union``), walked cycle by
    cycle (``_bank_walk``): the DRAM hands it a line's worth at its pace, which waits in
    the DRAM's response queue and its landing buffer (``slack`` lines:
    ``dram_queue_lines`` less the lines in flight over the latency, and
    ``COPIER_FIFO_DEPTH``) while the copier is refused its bank; once they are full the
    DRAM is held too. Its reads run at most ``CMD_DEPTH`` of its ``rows`` ahead of the
    row its write side takes (``rtl/copier.py``'s command queues), so the slack is at
    most their lines less those a ``round_trip`` (latency, command to read, read to
    write) holds in flight at its pace (traced on the RTL, seed 2041's step 24 of
    ``benchmarks.perf_calibration --random``, edge-16x16: a 320-row load of 48-byte rows
    was refused 97 times beside an attention GEMV's weight reader and a few vector
    instructions and lost about 48 cycles; with the queue's slack the walk charged it 0
    and the step was 1.16% short, with this 34, and 0.63% short). A line two rows share
    is written twice (rows of 48 bytes on 64-byte lines write banks 0, 0, 1, 1, ...).
    The grants are walked over ``3 alone`` cycles from ``lo`` at first, longer where
    the walk runs past them (``_phase_walk``).
    (Traced on the RTL, edge-16x16 at 51 bytes a cycle, a decode step of seed 2044: 32
    rows of 416 bytes, 0.92 L2 lines a cycle, were refused 104 of 328 cycles beside a
    GEMV whose two weight readers each hold a bank two cycles for rows of 48 bytes, and
    lost about 64 cycles that neither the lines left in all, ``_l2_span``, nor the
    readers' idle steps, ``_trapped``, charged; the walk charges it 71, ending 2 cycles
    after the RTL's, and a copier at the DRAM's 0.80 lines a cycle about 2 beside the same
    GEMV.)"""
    if alone <= 0 or not len(seq):
        return 0.0
    banks = int(hw.l2_lines_per_cycle)
    rate = min(1.0, len(seq) / alone)
    slack = float(dram_queue_lines(hw.dram_latency_cycles) + COPIER_FIFO_DEPTH
                  - math.ceil(hw.dram_latency_cycles / hw.dram_cycles_per_line))
    if rows:     # its reads at most CMD_DEPTH rows ahead of its writes, less a round trip's
        slack = max(1.0, min(slack, CMD_DEPTH * len(seq) / rows + COPIER_FIFO_DEPTH
                             - rate * round_trip))
    walked = _phase_walk(lambda masks: _bank_walk(masks, seq, rate, slack), lo,
                         math.ceil(3 * alone) + 1, units_at, first, banks)
    if walked is None:
        return 0.0
    return max(0.0, walked - _bank_walk(np.zeros(0, np.int64), seq, rate, slack))


def _phase_walk(walk, lo: float, length: int, units_at: list, first: int,
                banks: int) -> float | None:
    """``walk(masks)`` through the units' grants from ``lo`` (``_grant_union``), averaged
    over the copier's phase against them, its start 0 to ``banks - 1`` cycles later (the
    passes move it by a cycle or two, which a single walk would meet a bank apart, its
    wait then alternating pass after pass); None where no unit is granted a bank in the
    first ``length`` cycles. The grants are taken over ``length`` cycles, doubled until
    every walk ends within them or no unit runs past them (a load of 512 lines beside a
    ``ROPE`` on the 4 x 8 array took four times its time alone, on the RTL and in the walk)."""
    while True:
        union = _grant_union(lo, length, units_at, first)
        if union is None:
            return None
        ends = [walk(union[d:]) for d in range(banks)]
        if max(ends) + banks < length or units_at[-1][1] <= lo + length:
            return sum(ends) / banks
        length *= 2


def _store_bank_wait(reads: np.ndarray, banks: int, lo: float, alone: float,
                     units_at: list, first: int, after_read: int) -> float:
    """The cycles a store's copier loses to the matmul and vector units' bank grants
    beside it (``_grant_union``), its L2 reads from ``lo`` (its read side ``alone``
    cycles long) as it makes them alone (``_store_reads``), walked cycle by cycle
    (``_store_walk``), averaged over its phase against the grants as a load's
    (``_phase_walk``), over its last read's cycle alone plus twice ``alone`` at first (a
    window, not a measurement; it grows where a walk runs past it). Its read side runs
    ahead of its DRAM writes by its buffer's room, so a refusal costs only where the
    buffer runs dry: a ``KV_APPEND`` waits a block-table read at each block, and the
    grants that fall there cost nothing. (Traced on the RTL, edge-16x16, seed 2045's step 19 of
    ``benchmarks.perf_calibration --random``: a 64-token ``KV_APPEND`` of 16-byte rows
    was refused 123 of its L2 asks beside a GEMM whose writer holds one bank through
    each group, and ended 16 cycles later than alone; its reads walked evenly charged 110,
    the idle steps of the unit's readers, ``_trapped``, 117.)"""
    if alone <= 0 or not len(reads):
        return 0.0
    room = COPIER_FIFO_DEPTH - 1
    walked = _phase_walk(lambda masks: _store_walk(masks, reads, room, after_read), lo,
                         math.ceil(reads[-1, 0] + 2 * alone) + 1, units_at, first, banks)
    if walked is None:
        return 0.0
    return max(0.0, walked - _store_walk(np.zeros(0, np.int64), reads, room, after_read))


@njit
def _store_reads(src, dst, nbytes, needs, W, banks, S, table_wait, cmd_to_read):
    """A store's L2 reads alone (``dma_rows``' rows on ``W``-byte lines of ``banks``
    banks, ``S`` DRAM bytes a cycle), float64 [reads, 3]: each read's earliest cycle from
    the first's (its row command's, one a cycle, each row that needs a block-table entry
    held ``table_wait`` cycles for it, and ``cmd_to_read`` on), its bank, and the DRAM
    write cycles its row's lines take, shared among its reads (the write side's steps, a
    priming step where source and destination are misaligned, or the DRAM's ``W / S``
    a line, whichever is longer: ``arch.occupancy._dma_run``'s)."""
    n = 0
    for r in range(len(src)):
        if nbytes[r]:
            n += (src[r] + nbytes[r] - 1) // W - src[r] // W + 1
    out = np.empty((n, 3), np.float64)
    t = 0.0
    k = 0
    for r in range(len(src)):
        if needs[r]:
            t += table_wait
        if not nbytes[r]:
            t += 1
            continue
        a, b, m = src[r], dst[r], nbytes[r]
        src_lines = (a + m - 1) // W - a // W + 1
        dst_lines = (b + m - 1) // W - b // W + 1
        steps = dst_lines + (1 if (a - b) % W else 0)
        cost = max(float(steps), dst_lines * W / S) / src_lines
        for j in range(src_lines):
            out[k, 0], out[k, 1], out[k, 2] = t + cmd_to_read, (a // W + j) % banks, cost
            k += 1
        t += 1
    if n:
        out[:, 0] -= out[0, 0]
    return out


@njit
def _store_walk(masks, reads, room, after_read):
    """The cycle a store's copier writes its last DRAM line, its L2 reads (``reads``:
    ``_store_reads``) each from its earliest cycle, after the read before, once its
    buffer has room (``room`` reads ahead of the writes), in a cycle whose bank bit in
    ``masks`` (from cycle 0; none past its end) is not set; each read's line written
    ``after_read`` later, after the line before (``_store_bank_wait``)."""
    n = len(reads)
    begun = np.empty(n, np.float64)           # when each read's line leaves the buffer
    read_free, write_free = 0.0, 0.0
    for k in range(n):
        t = max(reads[k, 0], read_free)
        if k >= room:
            t = max(t, begun[k - room])
        c = int(math.ceil(t))
        bank = int(reads[k, 1])
        while c < len(masks) and masks[c] >> bank & 1:
            c += 1
        t = max(t, float(c))
        read_free = t + 1
        begun[k] = max(t + after_read, write_free)
        write_free = begun[k] + reads[k, 2]
    return write_free


@njit
def _row_banks(dst, nbytes, W, banks):
    """The bank of each L2 line the rows ``(dst, nbytes)`` write, in order, int64."""
    n = 0
    for r in range(len(dst)):
        if nbytes[r]:
            n += (dst[r] + nbytes[r] - 1) // W - dst[r] // W + 1
    seq = np.empty(n, np.int64)
    k = 0
    for r in range(len(dst)):
        if nbytes[r]:
            for line in range(dst[r] // W, (dst[r] + nbytes[r] - 1) // W + 1):
                seq[k] = line % banks
                k += 1
    return seq


@njit
def _bank_walk(masks, seq, rate, slack):
    """Cycles a copier takes to write lines to the banks ``seq`` in order, fed ``rate``
    lines a cycle and holding at most ``slack`` of them, each in a cycle whose bank bit
    in ``masks`` (from cycle 0; none past its end) is not set (``_bank_wait``)."""
    n = len(seq)
    t, credit, fed, written = 0, 0.0, 0.0, 0
    while written < n:
        if fed < n:
            step = min(rate, n - fed)
            room = slack - credit
            step = min(step, room) if room > 0 else 0.0
            credit += step
            fed += step
        if credit >= 1 or (fed >= n and credit > 0):
            if t >= len(masks) or not masks[t] >> seq[written] & 1:
                credit = max(0.0, credit - 1)
                written += 1
        t += 1
    return t


def _held(delay: tuple) -> float:
    """The cycles a DMA instruction's copier ends later for its L2 and DRAM waits
    (``_contention``'s ``(l2, dram, queued, walk)``): the longer, or the DRAM's alone where
    there is no L2 wait, a store's credit (below 0) included (``_store_dram_wait``)."""
    l2, dram = delay[0], delay[1]
    return max(l2, dram) if l2 > 0 else dram


def _table_reads(occ: Occupancy, begin: float, queued: float, end: float) -> list[float]:
    """The cycles a load's ``occ.int_reads`` int32 reads (block-table entries, gather
    indices) are asked for on the load engine's aux port, a DRAM client of their own in
    the round-robin, for the instruction beginning at ``begin``, its first read held
    ``queued`` (``_queued``, ``_request_wait``), and reading until ``end``: the first
    ``CMD_DEPTH`` when the walk alone asks for them (``Copies.int_asks``), those after the
    first ``queued`` later, the rest evenly after them. (A ``KV_PREFETCH``'s table
    reads run ahead of its copier's data, a block's a DRAM latency after the one before:
    on edge-8x8 at 2 bytes a cycle, one of 16-token blocks had its first five table
    reads out in its first 600 cycles of 6,700, four of them beside two ``KV_APPEND``s,
    which reads spread over the whole interval charged less than one; Amaranth's
    simulator.)"""
    n = occ.int_reads
    if not n:
        return []
    asks = [begin + a + (queued if k else 0) for k, a in enumerate(occ.copies.int_asks)]
    last, rest = asks[-1], n - len(asks)
    return asks + [last + (end - last) * (k + 1) / rest for k in range(rest)]


def _fetch_accepts(fetch: list[int], line_cycles: float) -> list[float]:
    """The cycles the DRAM accepts the instruction fetch's reads requested at ``fetch``
    (``_time``'s request cycles, which count from the fetcher's step: ``FETCH_START``
    after the accept its dispatch times are read from), a cycle earlier still within a
    back-to-back stream at two or more cycles a line: its first, from the DRAM's full
    credit of a line and a cycle's bytes, leaves the next a cycle short of a line's
    bandwidth (under two cycles a line the request cycles, whole, alternate).
    (Traced on the RTL at 2 bytes a cycle, edge-8x8: a one-instruction program's reads
    accepted 15 and then 16 cycles apart, the last 11 cycles before the ``KV_APPEND``
    began; the request cycles, 8.)"""
    out = []
    for k, t in enumerate(fetch):
        stream = line_cycles >= 2 and k and t - fetch[k - 1] <= line_cycles
        out.append(t - FETCH_START - (1 if stream else 0))
    return out


def _request_wait(i: int, t: float, line_cycles: float, requests: list) -> float:
    """The cycles instruction ``i``'s first int32 read, asked at ``t``, waits for the
    DRAM to accept it behind the single reads asked before it (``requests``: sorted
    ``(cycle, instruction, rank)``: the loads' int32 reads, rank 0, the stores' first
    table reads, 1, and the instruction fetch's, 2, instruction -1). The DRAM takes a
    request with a line of credit (``rtl/dram.py``), a line's bandwidth after the last;
    asked at the same cycle, the load engine's aux port goes before the store engine's
    and both before a fetch read (the round-robin's order from a last grant to the
    copiers or the fetch, ``rtl/top.py``). (Seed 2038's step 13 at 2 bytes a cycle,
    edge-8x8, in Amaranth's simulator: a ``KV_APPEND`` and a ``KV_PREFETCH`` begun
    together behind a fetch read, the prefetch's table read granted 13 cycles after its
    ask, the append's 29; both were charged 0 before, the appends then 41 cycles short
    of the RTL's 713.)"""
    if line_cycles <= 1:
        return 0.0
    window = requests[bisect.bisect_left(requests, (t - 2 * line_cycles,)):
                      bisect.bisect_right(requests, (t, math.inf, math.inf))]
    rank = next((r for _, j, r in window if j == i), 0)     # its own ask is at ``t``
    free = -math.inf                    # when the DRAM has a line of credit again
    for c, j, r in window:
        if j != i and not (c == t and r >= rank) and c > t - 2 * line_cycles:
            free = max(c, free) + line_cycles
    return max(0.0, free - t)


def _counters_wait(i: int, instrs, occs, timing: ProgramTiming, write_start: list[float],
                   reads: dict, others: tuple, stores, aux: list, line_cycles: float,
                   cal: Calibration) -> float:
    """``_contention``'s DRAM wait for ``STORE_COUNTERS`` (instruction ``i``), whose
    writes on the store engine's aux port, from its first, share the DRAM with the
    copier's still writing an earlier store's rows (a 4-line ``DMA_STORE`` then
    ``STORE_COUNTERS``: 25 cycles busy on the RTL, 20 in the model without):
    ``_store_dram_wait``'s, or under a line a cycle behind such rows ``_copier_behind``'s
    (at a line a cycle or more the engines' own steps, not the DRAM, space the lines).
    Only copies without table reads count as ahead: a ``KV_APPEND``'s next block waits
    for one, the DRAM idle meanwhile."""
    occ = occs[i]
    lo, hi = timing.begin[i] + cal.dma_setup, timing.end[i]
    wait = _store_dram_wait(i, occ.dram_lines, lo, hi, occ.dram_lines * line_cycles,
                            line_cycles, others, stores, aux, (lo, hi, 0))
    ahead = [j for j in range(i) if instrs[j].engine == Engine.STORE and occs[j] is not None
             and occs[j].copies is not None and occs[j].dram_lines
             and not occs[j].int_reads and timing.end[j] > lo]
    if ahead and line_cycles > 1:
        wait = _copier_behind(
            [max(write_start[j], reads[j][0] + cal.l2_read_latency) for j in ahead],
            occ.dram_lines + sum(occs[j].dram_lines for j in ahead), hi, others,
            line_cycles, timing.begin[i] + occ.cycles)
    return max(0.0, wait)


def _copier_behind(firsts: list[float], lines: int, hi: float, others: tuple,
                   line_cycles: float, alone_end: float) -> float:
    """The cycles ``STORE_COUNTERS`` ends past ``alone_end`` (its begin and cycles alone)
    behind the store copier's rows still to write when it begins: their first lines went
    out at ``firsts``, and from the first of them the DRAM has lines queued until the
    counters' last, so it takes ``lines`` (theirs and the counters') and the other
    clients' in that span (``others``, to ``hi``) back to back, the first on the DRAM's
    credit: the last is accepted ``(lines - 1) * line_cycles`` after the first, and the
    engine ends 3 cycles after it. Round-robin over lines spread over each store's
    interval (``_store_dram_wait``) charges the counters the copier's lines it wrote
    before they began at the DRAM's full bandwidth. (The logits store, the token's and
    the counters that end a decode step at 2 bytes a cycle on edge-8x8, seed 2041's step
    23 on the RTL: 20 lines, each accepted 16 cycles after the one before, the engine
    busy 314 cycles, its end 3 after the last; the round-robin rule, 337. Only stores
    without table reads: a ``KV_APPEND``'s next block waits for one.)"""
    first = min(firsts)
    taken = sum(u.lines(hi) - u.lines(first) for u in others)
    return first + (lines + taken - 1) * line_cycles + 3 - alone_end


def _store_dram_wait(i: int, own: float, lo: float, hi: float, alone: float,
                     line_cycles: float, others: tuple, stores, aux: list,
                     itself: tuple) -> float:
    """The cycles store ``i``'s copier waits for the DRAM writing its ``own`` lines from
    ``lo`` to ``hi``, ``alone`` of them its own (its interval less its last waits); below
    0 where the DRAM's credit lets its first line go at once. The DRAM (``rtl/dram.py``)
    earns ``dram_bytes_per_cycle`` a cycle up to a line and a cycle's worth, and takes a
    line's worth a request: a write stream from full credit has its first line
    accepted at once and each next a line's bandwidth later, ``(n - 1) * line_cycles +
    1`` cycles for ``n`` lines, where ``dma_occupancy`` charges each line its whole slot
    (which a stream behind other requests pays). The credit is full by the share ``c``
    of a line that no other request took in the ``line_cycles`` before ``lo``: the other
    clients (``others``: ``_Usage`` of the loads' DRAM lines, of their int32 reads on the
    load engine's aux port, ``_table_reads``, and of the fetch reads; the ``stores``' DRAM
    lines, this store's own interval ``itself = (begin, end, lines)`` taken out) and the
    store engine's aux reads (``aux``). Round-robin lets each other client take at most
    one line per line of this store's in ``[lo, hi]`` (``taken``); a stream of lines (the
    loads', the other stores') one between each two of them, and one before the first
    only where its last grant was not the stream's: another client's request just
    before, or this engine's copier still writing the store before. (Amaranth's
    simulator, seed 2041's step 18 at 2 bytes a cycle: a one-line ``KV_APPEND`` whose
    request followed the prefetch's data line was granted the next slot; the one before
    it, asked just after the prefetch's table read was granted, went after the next
    append's table read and a data line.) So the writes
    need ``(own + taken - c) * line_cycles + c`` cycles. (Read off the RTL at 2 bytes a
    cycle, edge-8x8:
    a ``KV_APPEND`` of one token alone of 1 and of 8 lines was 114 and 226 cycles busy;
    charging the first line its slot and the fetch reads over the whole interval from
    its table read, 135 and 247; ``python -m benchmarks.rtl_stores``.) The step from no
    credit to a whole one is sharp (``_held``: a store with an L2 wait takes the longer
    wait, its credit lost), and ``dram_usage``'s store intervals still spread a store's
    table reads with its writes over its whole interval, so the other stores' table
    reads count here twice, on the aux port and there (a few lines in a program). (A
    one-token ``KV_APPEND`` beside a load's stream on edge-8x8 was 4 cycles longer on the
    RTL than alone; over its interval from the table read's answer, this charges 0.)"""
    if own <= 0:
        return 0.0

    def lines(a: float, b: float) -> list[float]:     # each other client's in [a, b]
        s, e, n = itself
        out = [u.lines(b) - u.lines(a) for u in others]
        out.append(stores.lines(b) - stores.lines(a)
                   - n / max(1, e - s) * max(0.0, min(e, b) - max(s, a)))
        out.append(sum(m * max(0.0, min(d, b) - max(c, a)) / (d - c)
                       for k, c, d, m in aux if k != i))
        return out

    # The streams (the loads' and the other stores' lines) take a line between each two
    # of this store's, and one before its first only where the round-robin's last grant
    # was not theirs: another client's request just before, or the copier still writing
    # the store before, their lines alternating.
    before = lines(lo - line_cycles, lo)
    first = int(before[1] + before[2] + before[4] >= 0.5
                or lines(lo - 2 * line_cycles, lo)[3] >= 0.5)
    caps = [own if k in (1, 2, 4) else max(0.0, own - 1 + first) for k in range(5)]
    taken = sum(min(c, x) for c, x in zip(caps, lines(lo, hi), strict=True))
    credit = (1 - min(1.0, max(0.0, sum(before))) if line_cycles > 1 else 0.0)
    return max(-(line_cycles - 1) * credit,
               (own + taken - credit) * line_cycles + credit - alone)


def _contention(instrs, occs, hw: HardwareConfig, timing: ProgramTiming,
                write_start: list[float], fetch: list[int], delay: list[tuple], reads: _ReadSides,
                cal: Calibration = CALIBRATION, read_i32=None,
                bank_cache: dict | None = None) -> list[tuple]:
    """The cycles each DMA instruction's copier waits for the L2 and for the DRAM, its first
    table read behind the DRAM's queue, and its last row command behind its own table reads
    (``(l2, dram, queued, walk)``), given the last pass's timing (``reads``: each copier's
    read side, ``_time``'s): each wait makes the copier's interval (from ``write_start`` to
    its end) as long as that memory needs for the instruction's lines and for those it must
    let others take; the queued wait (``_queued``) holds the whole instruction back: a
    store's block-table reads, and a ``KV_PREFETCH``'s or ``DMA_GATHER``'s first, on the
    load engine's own aux port, behind its copier's lines (a prefetch after a load held by a
    GEMV on edge-4x4: 83 cycles short without it, tests/rtl/test_l2_contention.py), and
    behind the single reads asked before it (``_request_wait``).

    L2: bank conflicts go by port priority (``rtl/top.py``): the compute engine's ports,
    then the store engine's, then the load engine's. Over its interval a DMA instruction
    gets only the lines the higher-priority instructions overlapping it leave, each
    taking its lines evenly over its run (a compute instruction from begin to end, a DMA
    instruction over its copier's interval; a store's over its L2 reads, its copier's
    read side): at least ``(its lines + theirs) / l2_lines_per_cycle`` cycles (at its
    fixed point, ``_l2_span``; a ``KV_PREFETCH``, which writes in bursts between its
    table reads, ``_prefetch_wait``); no faster than the paced compute streams it overlaps
    let it (``_trapped``; bursts, ``_bursts_trapped``), nor than the matmul and vector
    units' banks let it (``_Banks``, walked where the L2 has several line-wide banks,
    and then not behind those units' streams, but for a ``KV_PREFETCH``'s bursts and a
    table read's drain, ``_queued``; ``benchmarks.rtl_stores``).

    DRAM: one port shared round-robin (``rtl/arbiter.py``) by instruction fetch (one line
    per instruction, at its request cycle) and the two DMA engines; a line takes
    ``line_bytes / dram_bytes_per_cycle`` cycles. Round-robin lets each other client take
    at most one line per line of this instruction's, so its interval lasts at least
    ``(n + sum over the other clients of min(their lines in it, n)) * line cycles`` for
    its ``n`` DRAM lines; a load's interval there is its copier's read side (``reads``),
    its DRAM lines a latency before its L2 writes; a store's, its writes
    (``_store_dram_wait``: from its first L2 read's data, its table reads apart, the
    DRAM's credit counted; a load's int32 reads a client of their own, ``_table_reads``;
    ``STORE_COUNTERS`` behind a copy's rows, ``_copier_behind``)."""
    loads = sorted((reads[j][0], reads[j][2], write_start[j], timing.end[j],
                    occs[j].dram_lines) for j in reads if instrs[j].engine == Engine.LOAD)
    per_cycle, line_cycles = hw.l2_lines_per_cycle, hw.dram_cycles_per_line
    n = len(timing.begin)
    # per engine: L2 (start, end, lines per cycle), each one's instruction, (its
    # l2_profile, its l2_moves); DRAM (start, end, lines per cycle)
    l2, owners, shapes, dram = ({e: [] for e in ENGINES} for _ in range(4))
    banks = _Banks(instrs, occs, hw, timing, read_i32, bank_cache, cal)
    paced = []                             # the compute engine's paced streams
    # The store engine's aux port (``rtl/dma.py``): later block-table reads and counter
    # writes go out while the copier writes earlier rows, a DRAM client of their own.
    aux = []                               # (instruction, start, end, lines)
    table_reads = []                       # the load engine's aux port: its int32 reads
    for i in range(n):
        e, occ = instrs[i].engine, occs[i]
        if occ is None:
            continue
        if e == Engine.STORE and occ.copies is None and occ.dram_lines:
            aux.append((i, timing.begin[i], timing.begin[i] + occ.cycles, occ.dram_lines))
        elif e == Engine.STORE and occ.dram_read_bytes:
            aux.append((i, timing.begin[i], max(write_start[i], timing.begin[i] + 1),
                        occ.int_reads))
        lo = timing.begin[i] if occ.copies is None else write_start[i]
        hi = timing.end[i]
        if occ.l2_lines:
            l2[e].append((lo, hi, occ.l2_lines / max(1, hi - lo)))
            owners[e].append(i)
            shapes[e].append((occ.l2_profile, None if occ.l2_moves is None else (
                occ.l2_moves, occ.cycles)) if hi > lo else (None, None))
        if occ.paced_cycles or occ.resumes:
            paced.append((lo, hi, _stolen_lines(occ.paced_cycles, occ.paced_lines,
                                                occ.resumes, hi - lo, per_cycle,
                                                occ.camped_cycles)))
        if occ.copies is not None and occ.dram_lines:
            own = occ.dram_lines
            if e == Engine.LOAD:           # a load's DRAM reads: its copier's read side
                lo, hi = reads[i][:2]      # (its int32 reads: a client of their own)
                own -= occ.int_reads
                table_reads.extend((i, t) for t in _table_reads(
                    occ, timing.begin[i], delay[i][2], hi))
            dram[e].append((lo, hi, own / max(1, hi - lo)))
    l2_usage = {e: _Usage(v, shapes[e]) for e, v in l2.items()}
    streams = _Streams(paced)
    dram_usage = {e: _Usage(dram[e]) for e in (Engine.LOAD, Engine.STORE)}
    fetch_usage = _Usage([(t, t + line_cycles, 1 / line_cycles) for t in fetch])
    # the single reads asked at a known cycle (``_request_wait``); a store's DRAM clients
    requests = sorted([(t, -1, 2) for t in _fetch_accepts(fetch, line_cycles)]
                      + [(t, j, 0) for j, t in table_reads] + [
                          (b + cal.dma_setup, j, 1) for j, b, _, _ in aux if occs[j].copies])
    others = (dram_usage[Engine.LOAD], _Usage(sorted(
        (t, t + line_cycles, 1 / line_cycles) for _, t in table_reads)), fetch_usage)
    above = {Engine.STORE: (Engine.COMPUTE,), Engine.LOAD: (Engine.COMPUTE, Engine.STORE)}
    out = list(delay)
    for i in range(n):
        occ = occs[i]
        if occ is not None and occ.copies is None and occ.dram_lines and occ.engine == Engine.STORE:
            wait = _counters_wait(i, instrs, occs, timing, write_start, reads, others,
                                  dram_usage[Engine.STORE], aux, line_cycles, cal)
            out[i] = (0, wait, 0, NO_WALK)
        if occ is None or occ.copies is None:
            continue
        e = instrs[i].engine
        held = _held(delay[i])
        lo, hi = write_start[i], timing.end[i]
        free_running = hi - lo - held
        l2_wait, dram_wait, walk = 0, 0, NO_WALK
        if occ.l2_lines:
            if e == Engine.STORE:          # a store's L2 reads: its copier's read side
                lo, free_running = reads[i][0], reads[i][1] - reads[i][0]
                hi = reads[i][1] + delay[i][0]
            used = sum(l2_usage[a].lines(hi) - l2_usage[a].lines(lo) for a in above[e])
            span = (occ.l2_lines + used) / per_cycle
            if span > hi - lo + 1:         # growing: at its fixed point (``_l2_span``)
                span = _l2_span(*_spread(l2_usage, above[e], lo), lo, occ.l2_lines,
                                per_cycle, hi - lo)
            l2_wait = max(0, math.ceil(span - free_running))
            if e == Engine.STORE and occ.int_reads > 1:
                l2_wait = max(l2_wait, _last_block_l2_wait(
                    instrs[i], occ, timing.begin[i] + delay[i][2], reads[i][1], l2_usage,
                    above[e], hw))
            if instrs[i].mnemonic == "KV_PREFETCH" and free_running > 0:
                burst, walk = _prefetch_wait(
                    instrs[i], occ, [l2_usage[a] for a in above[e]], lo, free_running,
                    timing.begin[i] + delay[i][2], hw, read_i32, cal)
                l2_wait = max(l2_wait, burst, _bursts_trapped(streams, lo, free_running, occ, hw))
            # behind paced streams (both copiers walk the banks in the same order), or
            # where the units' grants are walked (``banks.walked``), through them instead
            l2_wait = max(l2_wait, 0 if banks.walked else math.ceil(_trapped(
                streams, lo, free_running, occ.l2_lines / max(1, free_running))),
                math.ceil(banks.wait(i, lo, free_running)))
        if occ.dram_lines and e == Engine.LOAD:
            lo, hi = reads[i][:2]          # a load's DRAM reads: its copier's read side
            free_running = hi - lo - delay[i][1]
            # a table walk's first int32 read goes out before its first row's
            own = occ.dram_lines - int(instrs[i].mnemonic in ("KV_PREFETCH", "DMA_GATHER"))
            taken = sum(min(u.lines(hi) - u.lines(lo), own)
                        for u in (dram_usage[Engine.STORE], fetch_usage))
            dram_wait = max(0.0, (own + taken) * line_cycles - free_running)
        elif occ.dram_lines:
            # a store's DRAM writes: from its first line's L2 read, the read's latency
            # on (its table reads go out before, on the aux port: ``aux``)
            lo = max(write_start[i], reads[i][0] + cal.l2_read_latency)
            hi = timing.end[i]
            own = occ.dram_lines - occ.int_reads
            dram_wait = _store_dram_wait(
                i, own, lo, hi, hi - lo - held, line_cycles, others,
                dram_usage[Engine.STORE], aux, (write_start[i], timing.end[i], occ.dram_lines))
        queued = _table_waits(i, instrs[i], occ, timing.begin[i], loads, hw, l2_usage, owners,
                              fetch, streams, requests, cal)
        out[i] = (l2_wait, dram_wait, queued, walk)
    return out


def _queued(loads: list[tuple], t: float, hw: HardwareConfig, others,
            fetch: list[int], streams: _Streams, ahead: float = 0.0) -> int:
    """Cycles beyond the DRAM's latency that a read issued at ``t`` by another client
    than the load engine's copier waits for its data. The DRAM returns read data in
    request order through one queue of ``dram_queue_lines`` (``rtl/dram.py``), and the
    copier reads as far ahead as the DRAM accepts: where it writes its lines into the L2
    slower than the DRAM delivers them, the queue fills with them, and the read's data
    comes out after them. ``loads``: ``(read begin, read end at the DRAM's pace,
    write begin, write end, DRAM lines)`` of each load (``_time``), each side moving its
    lines evenly over its interval, give the lines queued at ``t``, at most the queue's
    room less the read itself and the instruction fetch reads (``fetch``, their request
    cycles) still in it; the copier then takes them as fast as the L2 lines the
    higher-priority ports leave (``others``: each ``(_Usage, upto)``, its first ``upto``
    intervals, None for all; a store's table read counts no reads of its own or of the
    stores after it, which come after it) let it, at most a line a cycle, and loses
    besides the cycles the compute engine's paced ``streams`` refuse it
    (``_trapped``: the banks it wants while a reader walks them), while the fetch reads
    leave beside them, and after the ``ahead`` L2 lines a store's copier reads first (a
    ``KV_APPEND``'s block before, ``_later_table_waits``). (Table reads traced in
    Amaranth's simulator, cycles past the latency, RTL / model without that loss / with it: seed
    2042's step 15 on edge-8x8 (64 KiB), two ``KV_APPEND``s beside attention's matmuls, 35 / 26
    / 37 and 48 / 25 / 53, the copier refused 14 of 135 cycles where the compute ports took a
    quarter of the L2's lines; seed 2037's step 7 on the 4 x 8 array, a ``KV_PREFETCH`` beside a
    GEMV and two appends, 39 / 25 / 54, 37 / 17 / 27 and 39 / 26 / 38; seed 2041's step 12, also
    4 x 8, two appends, 27 / 25 / 38 and 39 / 25 / 52: 95 cycles off in all, now 57.)
    (Measured: ``benchmarks.dram_queue``, a store's table read on edge-4x4 taking 153 and
    206 cycles to its data against 80 of latency; in a trace of tiny's first decode step
    the queue held 121 load lines and 5 fetch reads ahead of it. A load's own table read
    waits alike: ``python -m benchmarks.rtl_table_walks --only queued``.)"""
    backlog = 0.0
    for rs, re, ws, we, n in loads:
        if rs > t:
            break
        if t >= we or not n:
            continue
        fetched = n * min(1.0, (t - rs) / max(1.0, re - rs))
        taken = n * min(1.0, max(0.0, t - ws) / max(1.0, we - ws))
        backlog += max(0.0, fetched - taken)
    room = dram_queue_lines(hw.dram_latency_cycles) - 1
    if min(backlog, room) < 1:
        return 0

    def left(cycles: float) -> float:    # the L2 lines the copier can take in ``cycles``
        used = sum(u.lines(t + cycles, k) - u.lines(t, k) for u, k in others)
        return min(cycles, hw.l2_lines_per_cycle * cycles - used)

    def drain(lines: float) -> float:    # cycles to take ``lines`` queued lines: bisected
        lo, hi = lines, 2 * lines
        while left(hi) < lines and hi < 1e7:
            lo, hi = hi, 2 * hi
        while hi - lo > 0.01:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if left(mid) < lines else (lo, mid)
        return hi + _trapped(streams, t, hi, lines / hi) if hi > 0 else hi

    # A fetch read accepted within the queue's drain time before ``t`` is still in it.
    cycles = drain(min(backlog, room) + ahead)
    for _ in range(4):
        fetches = bisect.bisect_right(fetch, t) - bisect.bisect_right(fetch, t - cycles)
        again = drain(max(0.0, min(backlog, room - fetches)) + ahead)
        if abs(again - cycles) < 0.5:
            break
        cycles = again
    return max(0, round(again - hw.dram_latency_cycles))


def _table_waits(i: int, instr: Instruction, occ: Occupancy, begin: float, loads: list,
                 hw: HardwareConfig, l2_usage: dict, owners: dict, fetch: list[int],
                 streams: _Streams, requests: list, cal: Calibration) -> float:
    """``_contention``'s queued wait for DMA instruction ``i`` beginning at ``begin``: a
    store's block-table reads, and a ``KV_PREFETCH``'s or ``DMA_GATHER``'s first (its
    later ones wait in its walk, ``occupancy``), behind the load's lines queued in the
    DRAM (``_queued``, the L2 lines of the compute engine's ports and of the stores
    before it above the load's copier) and the single reads asked before it
    (``_request_wait``); a ``KV_APPEND``'s later reads each at its own ask
    (``_later_table_waits``), on an L2 of one line-wide bank. 0 for the rest."""
    store = instr.engine == Engine.STORE
    if not (store and occ.dram_read_bytes or instr.mnemonic in ("KV_PREFETCH", "DMA_GATHER")):
        return 0
    before = bisect.bisect_left(owners[Engine.STORE], i) if store else None
    above = [(l2_usage[Engine.COMPUTE], None), (l2_usage[Engine.STORE], before)]
    queued = _queued(loads, begin, hw, above, fetch, streams) + _request_wait(
        i, begin + cal.dma_setup, hw.dram_cycles_per_line, requests)
    if store and hw.l2_lines_per_cycle == 1:
        queued += _later_table_waits(instr, occ, begin + queued, loads, hw, above, fetch,
                                     streams)
    return queued


def _table_asks(occ: Occupancy) -> list[float]:
    """When a copy's ``occ.int_reads`` int32 reads are asked alone, relative to its
    begin: ``Copies.int_asks`` (the first ``CMD_DEPTH`` rows'), the rest at the spacing of
    the last two (a ``KV_APPEND``'s blocks past them alike: each read is asked once the
    block before is queued). (A load's reads past them, ``_table_reads``, are spread to
    its end instead: a ``KV_PREFETCH``'s run ahead of its copier's data.)"""
    asks = list(occ.copies.int_asks) if occ.copies is not None else []
    if len(asks) >= 2:
        step = asks[-1] - asks[-2]
        asks += [asks[-1] + step * (k + 1) for k in range(occ.int_reads - len(asks))]
    return asks


def _append_blocks(instr: Instruction, occ: Occupancy, hw: HardwareConfig) -> list[int]:
    """A ``KV_APPEND``'s rows in each KV block it writes, in order (the first from its
    first token, the last to its end), one block a table read: ``[]`` for any other
    instruction, or one of a single block (no later table read)."""
    f, bt = fields_of(instr), hw.kv_block_tokens
    if instr.mnemonic != "KV_APPEND" or occ.int_reads < 2 or occ.copies is None:
        return []
    first = min(f.n_tokens, bt - f.first_token % bt)
    full, last = divmod(f.n_tokens - first, bt)
    return [first] + [bt] * full + ([last] if last else [])


def _last_block_l2_wait(instr: Instruction, occ: Occupancy, go: float, read_end: float,
                        l2_usage: dict, engines, hw: HardwareConfig) -> float:
    """The cycles a ``KV_APPEND`` of several KV blocks ends late for the L2 lines the
    ports above it (``engines``) take while it reads its last block: the blocks before
    wait for their table reads, a DRAM latency each, which hides what the ports cost
    their copies, but the last block's rows end the instruction. ``go``: its begin moved
    by all its table reads' waits (``_table_waits``), so that its last read is asked at
    ``go`` plus that read's ask alone (``_table_asks``) and its last block's first row
    command the first read's latency to its row later; ``read_end``: its copier's read
    side's end (``_time``'s); the last block's lines its share of ``occ.l2_lines`` by
    rows (``_append_blocks``), read at most a line a cycle in the lines the ports leave,
    cycle by cycle (``_Usage.taken``). Spreading the instruction's lines over its whole
    interval charges none of it. (Traced on the RTL, seed 2049's step 21 on edge-4x4, the
    first layer's two 44-token appends beside a ``MATMUL``: each block's 16 lines read in
    52 cycles, 18 alone, the last block's 12 in 38; the pair 624 cycles on the RTL, 598
    in the model, now 621. Seed 2043's step 6: a ``MATMUL`` that takes its lines early
    left an append's last block the L2 every cycle; by the ports' ninths, ``_spread``,
    it was charged 10 cycles the RTL did not take.)"""
    blocks, asks, c = _append_blocks(instr, occ, hw), _table_asks(occ), occ.copies
    first = bisect.bisect_left(c.first_cmds, asks[0]) if blocks else len(c.first_cmds)
    if first >= len(c.first_cmds):
        return 0.0
    lo = go + asks[-1] + c.first_cmds[first] - asks[0]
    lines, ports, n = occ.l2_lines * blocks[-1] / c.rows, [l2_usage[a] for a in engines], 64
    while True:                 # the copier's read side takes at most a line a cycle
        left = _lines_left(ports, lo, n, hw.l2_lines_per_cycle, 1.0)
        if left[-1] >= lines or n >= 1 << 20:
            break
        n *= 2
    span = int(np.searchsorted(left, lines - 1e-9))
    return max(0, span - math.ceil(read_end - lo))


def _later_table_waits(instr: Instruction, occ: Occupancy, t0: float, loads: list[tuple],
                       hw: HardwareConfig, others, fetch: list[int], streams: _Streams
                       ) -> float:
    """The cycles a ``KV_APPEND``'s block-table reads after its first (one a KV block,
    ``_append_blocks``) add to its end behind the load engine's queued lines
    (``_queued``, each at its ask): ``t0`` its begin moved by its first read's wait, each
    later read asked at ``t0`` plus its ask alone (``_table_asks``) plus the waits of the
    reads before it (the sequencer asks for a block's entry once the block before is
    queued, and queues that block's row commands once its entry is in). A read's wait
    moves its block's rows, and those after, but by the slack its block's first row
    command had alone (``Copies.first_due`` less ``first_cmds``: the rows before it
    still in the copier; past the first ``CMD_DEPTH`` rows, the last one's): the end
    moves by the largest of the waits so far less that slack, a max-plus sum. Its own
    block before, whose rows it reads from the L2 as the read goes out, takes the lines
    the load's copier would drain the queue with: ``_queued``'s ``ahead``. (Traced on
    the RTL, seed 2049's step 21 on edge-4x4, a 44-token append of three blocks behind a
    ``DMA_LOAD`` held by a ``MATMUL``: its second and third table reads were answered
    294 and 310 cycles after their asks, against 84 alone; it ran about 800 cycles on
    the RTL, 301 in the model charged only its first read's wait, now 817.
    tests/rtl/test_l2_contention.py: without ``ahead`` each read's wait about 24 short,
    with it about 20 long.) Only on an L2 of one bank (``_table_waits``): on edge-16x16
    (seed 2042's step 9, a three-block append beside a load and a ``SOFTMAX``) the RTL
    answered each later read at its latency, the load's copier keeping pace with its
    DRAM reads, where ``_queued``'s even spread of the unit's lines over the banks had
    it 90 and 76 cycles behind (store busy +1.1% to +26%)."""
    blocks, asks, c = _append_blocks(instr, occ, hw), _table_asks(occ), occ.copies
    slacks = [max(0.0, max(due) - max(cmd, 0.0))
              for cmd, due in zip(c.first_cmds, c.first_due, strict=True)]
    waited = moved = 0.0
    for k, a in enumerate(asks[1:len(blocks)]):
        row = bisect.bisect_left(c.first_cmds, a)
        slack = slacks[min(row, len(slacks) - 1)] if slacks else 0.0
        waited += _queued(loads, t0 + a + waited, hw, others, fetch, streams,
                          occ.l2_lines * blocks[k] / c.rows)
        moved = max(moved, waited - slack)
    return moved


def _fetched_ahead(i: int, fetch_t: float, fetch_step: float, accept: list[int]) -> list[int]:
    """The request cycles of the fetch reads that run ahead past ``HALT`` (instruction
    ``i``, fetched at ``fetch_t``) until it is dispatched (``accept[i]``), at most
    ``FETCH_AHEAD`` in flight: the accelerator is done when they have returned, and they
    are DRAM clients as the others."""
    ahead = []
    for k in range(i + 1, i + FETCH_AHEAD):
        fetch_t = max(fetch_t + fetch_step, accept[k - FETCH_AHEAD] + 1 if k >= FETCH_AHEAD
                      else 0)
        if math.ceil(fetch_t) > accept[i]:
            break
        ahead.append(math.ceil(fetch_t))
    return ahead


#: Each DMA instruction's copier read side (``_time``): ``(first line, last line, last
#: line at the DRAM's pace)`` in cycles, a load's DRAM reads (held by its writes,
#: ``_queue_bound``), a store's L2 reads.
_ReadSides = dict[int, tuple[float, float, float]]


def _queue_bound(occ: Occupancy, read_end: float, write_start: float, write_end: float,
                 hw: HardwareConfig) -> float:
    """The cycle a load's copier reads its last DRAM line, at the DRAM's pace
    ``read_end``, held by its writes (from ``write_start`` to ``write_end``, its lines
    evenly); a store's ``read_end``. The DRAM accepts a read only with room for its data
    in its queue (``dram_queue_lines``, shared by every client), so the last is read no
    sooner than the copier takes the line the queue's room before it. ``_queued``
    fills the queue at the DRAM's pace. (Traced on edge-4x4 in Amaranth's simulator,
    seed 2037's step 6 of ``benchmarks.perf_calibration --random``: a 512-line weight
    load beside a GEMV filled the DRAM's queue in its first 150 cycles and kept it full,
    its reads then at its copier's pace, for the rest of the 650 cycles traced.)"""
    lines, queue_lines = occ.dram_lines - occ.int_reads, dram_queue_lines(
        hw.dram_latency_cycles)
    if occ.engine != Engine.LOAD or lines <= queue_lines:
        return read_end
    return max(read_end, write_start + (lines - queue_lines) / lines * (
        write_end - write_start))


def _time(instrs: list[Instruction], occs: list, hw: HardwareConfig, cal: Calibration,
          delay: list[tuple[int, float, float, float]]
          ) -> tuple[ProgramTiming, list[float], list[int], _ReadSides]:
    """One pass of the engines over the program, with ``delay[i]`` the cycles DMA
    instruction ``i``'s copier waits for the L2 and for the DRAM, it waits to begin and
    its last row command waits (``_contention``; a store's DRAM wait below 0 is the
    DRAM's credit, ``_held``); also each DMA instruction's copier start and read side
    (``_ReadSides``), and the fetch request cycles (and the reads fetched past ``HALT``)."""
    lat = hw.dram_latency_cycles
    fetch_step = hw.dram_cycles_per_line       # one fetch read per line of bandwidth
    fetch_t = 0.0
    n = len(instrs)
    request = [0] * n            # fetch request cycle
    accept = [0] * n             # dispatched into its queue
    begin, end = [0] * n, [0] * n
    write_start = [0.0] * n
    reads: _ReadSides = {}
    engine_free = dict.fromkeys(ENGINES, 0)    # cycle the engine's IDLE state can pop
    popped: dict[Engine, deque] = {e: deque() for e in ENGINES}   # pop cycles, last QUEUE_DEPTH
    signals = {(a, b): deque() for a in ENGINES for b in ENGINES if a != b}
    busy = dict.fromkeys(ENGINES, 0)
    stall = dict.fromkeys(ENGINES, 0)
    covered = dict.fromkeys(ENGINES, 0)        # busy until (instructions may overlap)
    # The DMA engines' copiers: when their read and write sides are free, and the ends
    # of the instructions still in them (an engine queues at most DEFERRED).
    read_free, write_free = (dict.fromkeys(ENGINES, float("-inf")) for _ in range(2))
    deferred: dict[Engine, deque] = {e: deque() for e in ENGINES}
    table = CopiesTable(o.copies for o in occs if o is not None)
    queues = {e: CopierQueue(table) for e in ENGINES}     # their copiers' command queues
    data_delay = load_data_delay(hw, cal)
    totals = {"read": 0, "write": 0, "prefetch": 0, "macs": 0, "lines": 0}
    last_end = 0
    halted = False
    for i, instr in enumerate(instrs):
        fetch_t = FETCH_START if i == 0 else fetch_t + fetch_step
        if i >= FETCH_AHEAD:
            fetch_t = max(fetch_t, accept[i - FETCH_AHEAD] + 1)
        request[i] = math.ceil(fetch_t)
        arrive = request[i] + lat + DISPATCH_LATENCY
        accept[i] = max(arrive, accept[i - 1] + 1 if i else 0)
        e = instr.engine
        if instr.mnemonic == "HALT":
            halted = True
            break
        if e == Engine.CONTROL:
            # KV_LIVE: once every earlier instruction has ended and the queues are empty,
            # a word of its map a request on the controller's own DRAM port; accepted the
            # cycle after the last word is in
            words = kv_map_words(instr.map_blocks)
            idle = max(accept[i], last_end + 1)
            accept[i] = idle + MAP_READ_START + math.ceil((words - 1) * fetch_step) + lat
            totals["read"] += words * KV_MAP_WORD_BYTES
            totals["lines"] += words
            continue
        q = popped[e]
        if len(q) == QUEUE_DEPTH:                # wait for a slot in the engine's queue
            accept[i] = max(accept[i], q.popleft() + 1)
        pop = max(accept[i] + 1, engine_free[e])
        q.append(pop)
        ready = pop + 1
        for a in ENGINES:
            if instr.wait >> int(a) & 1:
                pending = signals[(a, e)]
                if not pending:
                    raise PerfError(
                        f"instruction {i} ({instr.mnemonic}) waits for a token from the "
                        f"{a.name.lower()} engine that no earlier instruction signals; the "
                        f"performance model needs signals before their waits in program "
                        f"order")
                ready = max(ready, pending.popleft() + 1)
        occ = occs[i]
        begin[i] = ready
        flight = deferred[e]
        copies = occ.copies
        if copies is None:
            start = ready
            if occ.after_copier and flight:         # waits for the copier's last rows
                start = max(start, flight[-1] + 1)
            end[i] = start + occ.cycles + math.ceil(delay[i][1])   # the last busy cycle
            if flight:                              # ends in order, after the deferred ones
                end[i] = max(end[i], flight[-1] + 2)
                flight.clear()
            engine_free[e] = end[i] + 1
        else:
            # The engine moves on once its last row command is queued; the instruction
            # ends when the copier has written its rows, after the earlier ones.
            # (the copier can write no line of a load before its first data is in)
            _, dram_wait, queued, walk = delay[i]    # the L2 wait: in ``_held``
            go = ready + queued
            # The copier moves nothing before the first row command, which waits for
            # the int32 read (index, block-table entry) where the row needs one.
            int_read = copies.first_cmds[0] - cal.dma_setup
            write_start[i] = max(go + int_read + (data_delay if e == Engine.LOAD else 0),
                                 write_free[e])
            read_begin = max(go + int_read + cal.cmd_to_read, read_free[e])
            issued, read_free[e], write_free[e] = queues[e].after(copies, go, read_free[e],
                                                                  write_free[e])
            # The waits: a load's DRAM wait holds its reads (the next load's start
            # after them), and either wait its last write.
            if e == Engine.LOAD:                    # (and a walked one's reads, its walk)
                read_free[e] += dram_wait + max(0.0, walk)
            write_free[e] += _held(delay[i])
            paced, read_free[e] = read_free[e], _queue_bound(occ, read_free[e],
                                                             write_start[i], write_free[e], hw)
            reads[i] = (read_begin, read_free[e], paced)
            end[i] = math.ceil(write_free[e]) + cal.dma_end + (cal.load_end if e == Engine.LOAD
                                                                else 0)
            # its last command waits for the row CMD_DEPTH before it, held with the rest (or walked)
            late = max(0, copies.rows - CMD_DEPTH) / copies.rows * max(0, _held(delay[i]))
            # the sequencer defers it the cycle after its last command, and the shell takes
            # the next the cycle after (two 1-row stores back to back: their writes 5 cycles
            # apart on the RTL, 4 in the model with one)
            free = math.ceil(issued + (late if walk == NO_WALK else walk)) + 2
            while flight and flight[0] < free - 1:
                flight.popleft()
            if len(flight) == DEFERRED:             # no room to defer: wait for the oldest
                free = max(free, flight.popleft() + 2)
            engine_free[e] = free
            flight.append(end[i])
        stall[e] += max(0, ready - max(pop + 1, covered[e]))
        busy[e] += max(0, end[i] - max(ready, covered[e]))
        covered[e] = max(covered[e], end[i])
        for b in ENGINES:
            if instr.signal >> int(b) & 1:
                signals[(e, b)].append(end[i])     # a wait on it ends the cycle after
        last_end = max(last_end, end[i])
        totals["read"] += occ.dram_read_bytes
        totals["write"] += occ.dram_write_bytes
        totals["prefetch"] += occ.prefetch_bytes
        totals["macs"] += occ.macs
        totals["lines"] += occ.dram_lines
    if not halted:
        raise PerfError("the program ends without HALT")
    ahead = _fetched_ahead(i, fetch_t, fetch_step, accept)
    fetched, last_fetch = i + 1 + len(ahead), ahead[-1] if ahead else request[i]
    cycles = max(last_end, accept[i] + 1 + lat, last_fetch + lat + 1) + DONE_LATENCY
    # The DRAM serves one line per line's worth of bandwidth: never faster than that.
    # (The waits above share it by interval; where fetch reads fall outside the DMA
    # intervals they are charged to, at a few bytes per cycle, that bound is the tighter.)
    lines = totals["lines"] + fetched
    cycles = max(cycles, math.ceil(lines * hw.dram_cycles_per_line))
    return ProgramTiming(
        cycles=cycles,
        busy={e.name.lower(): busy[e] for e in ENGINES},
        stall={e.name.lower(): stall[e] for e in ENGINES},
        dram_read_bytes=totals["read"], dram_write_bytes=totals["write"],
        prefetch_bytes=totals["prefetch"], macs=totals["macs"],
        dram_busy_cycles=lines, line_bytes=hw.line_bytes,
        dram_bytes_per_cycle=hw.dram_bytes_per_cycle,
        begin=begin[:i], end=end[:i]), write_start, request[:i + 1] + ahead, reads


@dataclass
class BuildTiming:
    programs: dict[str, ProgramTiming]
    clock_hz: int
    ttft_s: float                 # the prefill program
    tpot_s: float                 # mean decode program
    tokens_per_s: float           # decode tokens per second

    def summary(self) -> dict:
        return {"ttft_s": self.ttft_s, "tpot_s": self.tpot_s,
                "tokens_per_s": self.tokens_per_s,
                "programs": {name: t.counters() for name, t in self.programs.items()}}


def time_build(build, cal: Calibration = CALIBRATION) -> BuildTiming:
    """Time every program of a compiled build (``compiler.driver.Build``) on its image.
    ``PerfError`` for a build with compressed KV: its ``CHUNKED`` prefetches are timed
    from chunk headers the host writes between programs, which the image does not hold
    (``accel.runtime.run_build(build, "isa").model_cycles`` times each program on the
    DRAM before it)."""
    if build.kv is not None:
        raise PerfError("a build with compressed KV chunks is timed program by program on "
                        "the DRAM the host leaves before each (run_build(build, 'isa')."
                        "model_cycles), not from its first image")
    read_i32 = build.image.read_i32 if build.image.data is not None else None
    timings = {p.name: time_program(p.instrs, build.hw, read_i32, cal) for p in build.programs}
    hz = build.hw.clock_hz
    prefill = [timings[p.name].cycles for p in build.programs if p.kind == "prefill"]
    decode = [timings[p.name].cycles for p in build.programs if p.kind == "decode"]
    ttft = sum(prefill) / hz
    tpot = sum(decode) / len(decode) / hz if decode else 0.0
    return BuildTiming(timings, hz, ttft, tpot, 1.0 / tpot if tpot else 0.0)
