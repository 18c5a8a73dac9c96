"""The matmul unit's occupancy: its tile filler, array and writeback, stepped.

Contract
--------
``matmul_occupancy(instr, hw)`` returns the ``Occupancy`` of a ``MATMUL`` alone, and
``matmul_timeline(instr, hw)`` each tile's announcement cycle: the tile filler's two row
readers cycle by cycle over the L2's banks (``_fills``), the array's blocks
(``gemm_blocks``) and the writeback's row writer and old-output reader cycle by cycle
beside the fills (``_writeback``), as ``rtl/matmul_unit.py`` runs them. Also the MATMUL
fields' reduction for the memo (``matmul_key``, ``matmul_alignment``), whether a copier
beside the unit is stepped (``copier_stepped``, ``_refusals``) and a bound on a GEMM's
cycles (``gemm_floor``). ``arch.occupancy.occupancy`` dispatches here.

Tested by tests/rtl/test_matmul_unit.py (every case's done cycle and every tile's
announcement against the unit), tests/arch/test_occupancy.py and
tests/sweeps/test_perf_model.py; ``python -m benchmarks.matmul_calibration`` runs random
MATMULs on the unit alone against it.
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

from arch.hardware import HardwareConfig
from arch.isa import (
    BY_MNEMONIC,
    MX_BLOCK,
    Engine,
    Instruction,
    MatmulMode,
    WeightFormat,
    WeightLayout,
)
from arch.kernels import njit
from arch.timing import (
    CALIBRATION,
    FILL_DATA_LATENCY,
    FILL_ISSUE_LATENCY,
    MAX_STEPPED_BANKS,
    WB_DATA_LATENCY,
    WB_NEXT_GROUP,
    Calibration,
    Occupancy,
    copier_stepped,
    grant_runs,
    l2_profile_points,
    lines_touched,
    read_only,
    recorded_grants,
)
from arch.uarch import COPIER_FIFO_DEPTH

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
            took = lines_touched(a, n, W)
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
# cycle, the rows it has taken, and the moves, writes and camped groups recorded, and
# the lines granted to the writeback's two ports.
_WB_ROW, _WB_STEP, _WB_DUE, _WB_TAKE, _WB_FREE, _WB_TAKEN, _WB_MOVES, _WB_WRITES, \
    _WB_CAMPED, _WB_GRANTED, _WB_STATE = range(11)
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
                moves, writes, granted):
    """The row writer (``rtl.matmul_unit.Writeback``'s, a ``RowCopier`` from a stream)
    in cycle ``t`` (state ``wb``, ``_WB_*``; ``rows``, ``_writeback``'s, the first
    ``n_rows`` handed over): a row is taken ``WB_DATA_LATENCY`` after its hand-over at
    the earliest, once the row before is written, a cycle earlier where it has a priming
    step and its command was queued ahead (all rows but a group's first, and every row
    when accumulating, whose old output comes later); the priming step reads nothing,
    and each line is written in a cycle in which no port before the writer's
    (``grants``) has its bank. Records its move, its writes (``record``: cycle, bank
    bit, whether its group is camped), each line's cycle in ``granted`` and, at a camped
    group's last row, the group."""
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
    bit = 1 << ((a // W + j - prime) % banks) if banks <= MAX_STEPPED_BANKS else 0
    if grants & bit:                                     # refused: the next cycle
        return
    if j == prime:                                       # out of the landing buffer
        wb[_WB_TAKEN] += 1
    if record:
        k = wb[_WB_WRITES]
        writes[k, 0], writes[k, 1], writes[k, 2] = t, bit, groups[g, _G_CAMPED]
        wb[_WB_WRITES] += 1
    granted[wb[_WB_GRANTED]] = t
    wb[_WB_GRANTED] += 1
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
               moves, writes, granted, limit):
    """The writeback (``rtl.matmul_unit.Writeback``) cycle by cycle from ``hs[_HS_T]``
    until group ``target`` has been handed over (``target = n_groups``: until every
    registered group's rows are written), state ``hs`` (``_HS_*``) and ``wb``. A group
    is taken once its results are in and the one before has been handed over
    (``WB_NEXT_GROUP``), and its rows handed over one a cycle from ``first``, into the
    row writer's landing buffer (``COPIER_FIFO_DEPTH`` rows) while it has room; the half
    is freed (``half_free``) with the last (with ``record``, the old-output reader's
    lines go into ``writes`` too, kind 2). Accumulating, each row waits for its old
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
                    and (banks > MAX_STEPPED_BANKS or not grants >> old_bank[k] & 1):
                old_granted[k] = t
                granted[wb[_WB_GRANTED]] = t
                wb[_WB_GRANTED] += 1
                if record:                     # (kind 2: an old line, not the writer's)
                    j = wb[_WB_WRITES]
                    writes[j, 0], writes[j, 1], writes[j, 2] = t, 1 << old_bank[k], 2
                    wb[_WB_WRITES] += 1
                if banks <= MAX_STEPPED_BANKS:
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
                    camped, moves, writes, granted)
        hs[_HS_T] = t + 1


@njit
def _steps(f, tiles, fills, W, banks, R, gemv, latency, result_latency, old_latency,
           out_bytes, record, taken, offsets):
    """``matmul_timeline``'s walk over the tiles (``matmul_tiles``' rows, their fills
    ``_fills``' rows, ``taken`` and ``offsets`` their grants, empty if not recorded) and
    each group's writeback (``_writeback``), compiled (numba): ``(the writer's last
    step, L2 lines, resumes, the tiles' announcements int64 [tiles], fills int64 [tiles,
    3], camped groups int64 [groups, 3], moves float64 [bursts, 3], writes int64 [lines,
    3])``. Fills, camped groups and moves are ``(from, to, L2 lines)`` (a camped group's
    rows for lines); with ``record``, writes are the writer's ``(cycle, bank bit, 1 if
    its group is camped)`` (``_refusals`` takes kind 0 only: ``_camped_cycles`` counts a
    camped group's) and the old-output reader's lines, ``(cycle, bank bit, 2)``, in
    cycle order, else empty. The writeback is
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
    # (cycle, bank bit, camped or old): a row is at most two lines, and its old output
    # (``4 * array_cols <= line_bytes``, ``HardwareConfig``: a result row is at most a line)
    writes = np.empty((4 * rows_written if record else 0, 3), np.int64)
    granted = np.empty(4 * rows_written, np.int64)     # each a row's two lines, and old
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
                       old_granted, record, camped, moves, writes, granted, limit)
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
               moves, writes, granted, limit)
    return (wb[_WB_FREE], lines, resumes, announced, fill_spans, camped[:wb[_WB_CAMPED]],
            moves[:wb[_WB_MOVES]], writes[:wb[_WB_WRITES]], granted[:wb[_WB_GRANTED]])


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
    (cycles, lines, resumes, paced_cycles, paced_lines, camped, profile, announced,
     moves) = _matmul_run(
        f, hw.line_bytes, int(hw.l2_lines_per_cycle), hw.array_rows, hw.array_cols, MT, KT,
        cal.mm_result_latency, cal.mm_old_output_latency if f.accumulate else 0,
        instr.spec.field("out_addr").elem_bytes, cal.engine_overhead,   # int32 results
        copier_stepped(hw))
    return (Occupancy(Engine.COMPUTE, cycles, macs=f.m * f.k * f.n, l2_lines=lines,
                      paced_cycles=paced_cycles, paced_lines=paced_lines, resumes=resumes,
                      camped_cycles=camped,
                      l2_profile=tuple(profile.tolist()) if len(profile) else None,
                      l2_moves=read_only(moves) if len(moves) else None),
            announced)


@njit
def _matmul_run(f, W, banks, R, C, MT, KT, result_latency, old_latency, out_bytes,
                overhead, stepped):
    """``matmul_timeline`` for the fields ``f`` (``MatmulFields``) on ``W``-byte lines in
    ``banks`` line-wide banks, an ``R x C`` array and tiles of ``MT`` rows by ``KT``
    reduction bytes: ``(cycles, L2 lines, resumes, paced cycles, paced lines, camped
    cycles, the L2 profile float64 [PROFILE_STEPS] or empty for None, the tiles'
    announcements int64 [tiles], its grants ``_grant_moves``)``. With ``stepped``
    (``copier_stepped``), the paced cycles are all the unit's and the paced lines those
    in which a copier beside it is
    not refused (``_refusals``; ``python -m benchmarks.rtl_pairs`` on edge-8x8: a copier
    lost 8 to 51 cycles beside GEMVs of 40- to 256-byte rows on the RTL, the model within
    7); else (one bank, or a copier the DRAM paces, which loses nothing beside the same
    GEMVs on edge-16x16) the tile readers' idle steps, and each burst a resume."""
    gemv = f.mode == _GEMV
    tiles = _tiles(f.m, f.n, f.k, MT, KT, C)
    fills, taken, offsets = _fills(f, tiles, W, banks, banks <= MAX_STEPPED_BANKS)
    end, lines, resumes, announced, spans, camped, moves, writes, granted = _steps(
        f, tiles, fills, W, banks, R, gemv, R if gemv else R + C - 1, result_latency,
        old_latency, out_bytes, stepped, taken, offsets)
    cycles = end + overhead                           # done with the writer's last step
    if stepped:
        # a copier fed a line a cycle, trailing the unit's streams: stepped through them
        resumes, paced_cycles = 0, cycles
        paced_lines = cycles - round(_refusals(taken, offsets, spans[:, 0],
                                               writes[writes[:, 2] == 0], banks))
    else:
        # one bank, whose lines the engines share (``sweeps.perf``), or a copier the DRAM
        # paces, which catches up in the cycles it has to spare: the readers' idle steps
        paced_cycles, paced_lines = fills[:, 3].sum(), fills[:, 4].sum()
    return (cycles, lines, resumes, paced_cycles, paced_lines,
            math.ceil(_camped_cycles(camped, spans, banks)), l2_profile_points(moves, cycles),
            announced, _grant_moves(spans, taken, offsets, granted))


def grant_banks(instr: Instruction, hw: HardwareConfig, cal: Calibration = CALIBRATION
                ) -> np.ndarray:
    """The L2 banks (a bit each) the matmul unit's ports are granted in each cycle from its
    start, ``int64 [cycles]``, read-only: the tile filler's readers' grants (``_fills``),
    the row writer's (``_steps``' writes, each already in a cycle no reader has its bank,
    a camped group's included) and, accumulating, the old-output reader's (not in
    ``_refusals``). (Without the old output's lines, each of the 32 accumulating
    ``MATMUL``s of seed 2048's step 21 on edge-4x4 had 192 of the 256 granting cycles
    the RTL traced; with them, every compute instruction of that step and of seed
    2046's step 11 is granted as traced.)
    Where the L2 has more than ``MAX_STEPPED_BANKS`` line-wide banks, empty (not
    recorded).
    ``sweeps.perf._Banks`` walks the DMA copiers through them (a load's L2 writes, a
    store's L2 reads), with the vector unit's (``vector_timing.vector_grant_banks``).
    Memoised on the instruction and ``hw``'s fields it reads (``recorded_grants``)."""
    banks = int(hw.l2_lines_per_cycle)

    def grants():
        f = _matmul_fields(instr)
        MT, KT = hw.matmul_tile(f.mode)
        return _grant_banks(f, hw.line_bytes, banks, hw.array_rows, hw.array_cols, MT, KT,
                            cal.mm_result_latency,
                            cal.mm_old_output_latency if f.accumulate else 0,
                            instr.spec.field("out_addr").elem_bytes)

    return recorded_grants((instr, hw.line_bytes, banks, hw.array_rows, hw.array_cols, cal),
                           hw, grants)


@njit
def _grant_banks(f, W, banks, R, C, MT, KT, result_latency, old_latency, out_bytes):
    """``grant_banks``' masks, compiled (numba): ``_matmul_run``'s walk with its grants
    recorded."""
    gemv = f.mode == _GEMV
    tiles = _tiles(f.m, f.n, f.k, MT, KT, C)
    fills, taken, offsets = _fills(f, tiles, W, banks, True)
    end, _, _, _, spans, _, _, writes, _ = _steps(
        f, tiles, fills, W, banks, R, gemv, R if gemv else R + C - 1, result_latency,
        old_latency, out_bytes, True, taken, offsets)
    masks = np.zeros(end + 1, np.int64)
    for i in range(len(spans)):
        for k in range(offsets[i], offsets[i + 1]):
            t = spans[i, 0] + k - offsets[i]
            if 0 <= t <= end:
                masks[t] |= taken[k]
    for j in range(len(writes)):             # (each in a cycle no reader has its bank)
        if 0 <= writes[j, 0] <= end:
            masks[writes[j, 0]] |= writes[j, 1]
    return masks


@njit
def _grant_moves(spans, taken, offsets, granted):
    """The runs of cycles in which the unit's ports are granted L2 lines, ``(from, to, L2
    lines)`` rows, float64 [n, 3] (``Occupancy.l2_moves``): each tile's fill's as its
    readers were stepped (``_fills``' ``taken`` and ``offsets``, a bit a bank granted,
    from the fill's begin in ``spans``) and the writeback's ports' (``granted``, a line
    each, ``_writeback``). ``_steps``' ``moves`` spread a fill's lines up to the tile's
    announcement, a few cycles past its reads, and a row's lines from its take: on
    edge-4x4 a GEMV of 128-byte rows takes the L2 21 cycles running (its 20 weight
    lines, then a result line) and leaves it 11, as traced in Amaranth's simulator
    (tests/rtl/test_matmul_unit.py checks the grants cycle by cycle); each run at one
    count a cycle, in order. None (empty) where the fills' grants are not recorded (more
    than ``MAX_STEPPED_BANKS`` banks): ``l2_profile`` then."""
    if len(taken) == 0:
        return np.empty((0, 3), np.float64)
    horizon = 1
    for k in range(len(spans)):
        horizon = max(horizon, spans[k, 0] + offsets[k + 1] - offsets[k] + 1)
    for c in granted:
        horizon = max(horizon, c + 1)
    used = np.zeros(horizon, np.int64)                 # lines granted a cycle
    for k in range(len(spans)):
        for c in range(offsets[k], offsets[k + 1]):
            bits = taken[c]
            while bits:                                # a line a bank granted
                bits &= bits - 1
                used[spans[k, 0] + c - offsets[k]] += 1
    for c in granted:
        used[c] += 1
    cycles = np.flatnonzero(used)
    rows = np.empty((len(cycles), 3), np.float64)     # a cycle each: ``grant_runs``
    for r in range(len(cycles)):
        rows[r] = (cycles[r], cycles[r] + 1, used[cycles[r]])
    return grant_runs(rows)


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
    (on more than ``MAX_STEPPED_BANKS`` banks, whose grants are not recorded, modulo
    the line).
    Int8 weights have no exponents (``e`` is 0). (The strides stay modulo ``P``.) Exact:
    ``tests/arch/test_occupancy.py`` times random MATMULs so moved alike."""
    W, P = hw.line_bytes, hw.l2_stripe_bytes
    lines = x_addr - x_addr % W
    out = (out_addr - lines) % P if hw.l2_lines_per_cycle <= MAX_STEPPED_BANKS \
        else out_addr % W
    return (x_addr - lines) % P, (w_addr - lines) % P, out, (e_addr - lines) % P if mxint4 else 0


def matmul_key(f: MatmulFields, hw: HardwareConfig) -> tuple:
    """``occupancy._timing_operands`` of a ``MATMUL``: its fields, the addresses as
    ``matmul_alignment`` reduces them, the strides modulo the L2's stripe."""
    P = hw.l2_stripe_bytes
    return (f.mode, f.accumulate, f.w_layout, f.m, f.k, f.n, f.w_format,
            f.x_stride % P, f.w_stride % P, f.out_stride % P,
            *matmul_alignment(f.x_addr, f.w_addr, f.out_addr, f.e_addr,
                              f.w_format == WeightFormat.MXINT4, hw))


@njit
def gemm_floor(f, W, banks, R, C, MT, KT):
    """A bound below the cycles of the ``MATMUL`` of fields ``f`` in GEMM mode, on
    ``W``-byte lines in ``banks`` line-wide banks, an ``R x C`` array and GEMM tiles of
    ``MT`` rows by ``KT`` reduction bytes, where ``occupancy._matmul_mode`` need not time it: the
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
