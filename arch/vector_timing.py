"""The vector unit's occupancy, stepped cycle by cycle.

Contract
--------
``vector_occupancy(instr, hw)`` returns the ``Occupancy`` of a compute instruction other
than ``MATMUL`` alone: its segments (``vector_segments``: each one's element count and
port-indexed row reads and writes) go through the issuer, three row readers, the
datapath of ``vector_lanes`` elements a cycle and two row writers with bank priority by
port, as ``rtl/vector_unit.py`` runs them (``_vector_run``). ``arch.occupancy.occupancy``
dispatches here.

Tested by tests/rtl/test_vector_unit.py (every case and random instructions end in the
unit's cycle) and tests/arch/test_occupancy.py; ``python -m benchmarks.vector_calibration``
runs random vector instructions on the unit alone against it.
"""

from __future__ import annotations

import numpy as np

from arch.hardware import HardwareConfig
from arch.isa import (
    OUT_BYTES,
    Engine,
    Instruction,
    OutBits,
    ParamMode,
)
from arch.kernels import njit
from arch.timing import (
    CALIBRATION,
    FILL_DATA_LATENCY,
    FILL_ISSUE_LATENCY,
    WB_DATA_LATENCY,
    Calibration,
    Occupancy,
    copier_stepped,
    fields_of,
    grant_runs,
    l2_profile_points,
    lines_touched,
    read_only,
    recorded_grants,
)
from arch.uarch import COPIER_FIFO_DEPTH, SEGMENT_DEPTH

# -- vector unit ---------------------------------------------------------------------------


def vector_segments(instr: Instruction) -> list[tuple[int, tuple, tuple]]:
    """Each segment the vector unit's issuer issues (``rtl.vector_unit.SegmentIssuer``: a
    pass over a row, one head of one token for ROPE, or the parameter word REQUANT reads
    first, one element): ``(elements, reads, writes)``, each read ``(row reader, L2
    address, bytes)`` and each write ``(row writer, L2 address, bytes, at the last group
    only)`` (element sizes as the ISA declares them)."""
    f, op = fields_of(instr), instr.mnemonic

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
def _vector_reads(t, asked, popped, n_lines_r, issued, cmd_seg, line_cmd, line_bank, tk,
                  granted):
    """``_vector_run``'s row readers' read sides in cycle ``t``, in port order: each asks
    its next line ``FILL_ISSUE_LATENCY`` after its segment's issue, while fewer than
    ``COPIER_FIFO_DEPTH - 1`` of its lines are in, and is granted it unless a reader
    before it has the bank. Records the grants (``granted``, ``asked``, the banks in
    ``tk``) and returns how many there were."""
    nt = 0
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
    return nt


@njit
def _grown(rows, n):
    """``rows`` with room for row ``n``: doubled (its first ``n`` rows kept) if full."""
    if n < len(rows):
        return rows
    grown = np.empty((2 * len(rows), rows.shape[1]), rows.dtype)
    grown[:n] = rows[:n]
    return grown


@njit
def _bits(banks, n):
    """The first ``n`` of ``banks``, a bit each."""
    mask = 0
    for i in range(n):
        mask |= 1 << banks[i]
    return mask


@njit
def _copier_step(mask, cs, refused, merged, banks):
    """One cycle of a copier below the vector unit in priority that asks for a line every
    cycle in consecutive banks, from each of the ``banks`` banks it may be at (``cs``,
    walked together until they meet, then as one: ``merged``): refused where the unit's
    ports ask its bank this cycle (``mask``, a bit each; ``rtl/l2.py``: the lowest port
    asking a bank wins it), else on to the next bank. Counts ``refused`` per start and
    returns whether the walks have met."""
    for p in range(1 if merged else banks):
        if mask >> cs[p] & 1:
            refused[p] += 1
        else:
            cs[p] = (cs[p] + 1) % banks
    if not merged:
        for p in range(1, banks):
            if cs[p] != cs[0]:
                return False
        refused[0] = refused.sum() / banks
    return True


@njit
def _vector_run(seg_n, reads, writes, W, banks, L, stepped=False, record=False):
    """The vector unit (``rtl/vector_unit.py``) cycle by cycle: ``(cycles from start
    to done, each segment's last group's cycle int64 [segments], the cycles a copier
    beside it is refused its bank, its ports' L2 grants float64 [cycles granting any,
    3] as ``(from, to, lines)`` for ``l2_profile_points``, and with ``record`` the
    banks granted in each of those cycles, a bit each, int64, else empty)`` for the
    segments'
    elements ``seg_n``, their reads ``int64 [segments, 3, 2]`` (per row reader: L2
    address, bytes; 0 bytes: not used) and writes ``int64 [segments, 2, 3]`` (per row
    writer: address, bytes, whether only at the last group), on ``W``-byte lines in
    ``banks`` line-wide banks (addresses modulo ``W * banks``) and ``L`` lanes a cycle.

    The issuer issues a segment a cycle from cycle 1, with its row commands, while fewer
    than ``SEGMENT_DEPTH`` are queued. Each row reader (``rtl.copier.RowCopier``, as the
    tile filler's, ``matmul_timing._fill_cycles``) asks the L2 for its commands' lines in order from
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
    write. With ``stepped``, a copier below the unit in priority asking a line every
    cycle in consecutive banks is walked through each cycle's banks (``_copier_step``,
    averaged over the bank it begins in); else its refusals are 0."""
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
    cs = np.arange(banks)                  # a stepped copier's bank, from each start
    refused = np.zeros(banks)
    merged = not stepped
    # every cycle moves a line, fires a group or issues a segment but for latencies and
    # waits of a few cycles each: far more than that is a model that stopped moving
    limit = 64 * (n_lines_r.sum() + S + seg_n.sum() + 2 * S + 16)
    moves = np.empty((n_lines_r.sum() + 2 * S + 16, 3), np.float64)   # grows as needed
    masks = np.empty((len(moves), 1), np.int64)      # the banks granted, a bit each
    n_moves = 0
    t = 1
    while True:
        # the issuer
        if n_issued < S and n_issued - (sd if sd < S else S) < SEGMENT_DEPTH:
            issued[n_issued] = t
            n_issued += 1
        # the readers' read sides, in port order: the banks granted this cycle
        nt = _vector_reads(t, asked, popped, n_lines_r, issued, cmd_seg, line_cmd,
                           line_bank, tk, granted)
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
        mask = _bits(tk, nt) if stepped or record else 0
        if nt:                                 # the lines granted: for ``l2_profile``
            moves, masks = _grown(moves, n_moves), _grown(masks, n_moves)
            moves[n_moves] = (t - 1, t, nt)
            masks[n_moves, 0] = mask
            n_moves += 1
        if stepped:
            merged = _copier_step(mask, cs, refused, merged, banks)
        t += 1
        if sd >= S and w_cmd[0] >= n_cmd_w[0] and w_cmd[1] >= n_cmd_w[1]:
            break
        if t > limit:
            raise RuntimeError("_vector_run: no progress (a bug in the model)")
    return (max(last_write, ended[S - 1] if S else 0) + 1, ended,
            (refused[0] if merged else refused.sum() / banks) if stepped else 0.0,
            moves[:n_moves], masks[:n_moves if record else 0, 0])


def vector_run_inputs(segs: list, hw: HardwareConfig) -> tuple[np.ndarray, ...]:
    """``vector_segments``' segments as ``_vector_run`` takes them: ``(seg_n int64
    [segments], reads int64 [segments, 3, 2], writes int64 [segments, 2, 3])``, the
    addresses modulo the L2's line-wide banks times the line."""
    P, S = hw.l2_stripe_bytes, len(segs)
    seg_n = np.zeros(S, np.int64)
    reads = np.zeros((S, 3, 2), np.int64)
    writes = np.zeros((S, 2, 3), np.int64)
    for s, (n, rd, wr) in enumerate(segs):
        seg_n[s] = n
        for k, a, b in rd:
            reads[s, k] = (a % P, b)
        for d, a, b, last in wr:
            writes[s, d] = (a % P, b, last)
    return seg_n, reads, writes


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
    where a copier beside the unit is stepped (``copier_stepped``), all its cycles and
    those in which such a copier is not refused its bank (``_copier_step``;
    tests/rtl/test_vector_unit.py checks random instructions against the unit's L2 with
    such a port added); else the segments' whose fastest stream idles a cycle between
    lines, each segment from the cycle after the one before ended. ``l2_profile``: the
    lines its ports are granted, cycle by cycle (an ``ARGMAX`` reads its first lines
    back to back, then a line as its datapath frees room; a store beside it on edge-4x4
    waits for them: ``python -m benchmarks.rtl_stores``, docs/perf.md "Round 59")."""
    segs = vector_segments(instr)
    W = hw.line_bytes
    seg_n, reads, writes = vector_run_inputs(segs, hw)
    stepped = copier_stepped(hw)
    done, ended, refused, moves, _ = _vector_run(seg_n, reads, writes, W,
                                              int(hw.l2_lines_per_cycle),
                                              hw.vector_lanes_per_cycle, stepped)
    lanes = hw.vector_lanes_per_cycle
    total = paced_cycles = paced_lines = 0
    for s, (n, rd, wr) in enumerate(segs):
        streams = ([lines_touched(a, b, W) for _, a, b in rd]
                   + [lines_touched(a, b, W) for _, a, b, _ in wr])
        total += sum(streams)
        if stepped:
            continue
        seg = int(ended[s] - ended[s - 1]) if s else -(-n // lanes)
        # its fastest stream that idles a cycle between lines (``Occupancy.paced_cycles``)
        paced = max((k for k in streams if k < seg <= 2 * k), default=0)
        if paced:
            paced_cycles += seg
            paced_lines += paced
    cycles = int(done) + cal.engine_overhead
    if stepped:          # all its cycles, and those a copier beside it is not refused
        paced_cycles, paced_lines = cycles, cycles - round(refused)
    profile = l2_profile_points(moves, cycles)
    return Occupancy(Engine.COMPUTE, cycles, l2_lines=total,
                     paced_cycles=paced_cycles, paced_lines=paced_lines,
                     l2_profile=tuple(profile.tolist()) if len(profile) else None,
                     l2_moves=read_only(grant_runs(moves)) if len(profile) else None)


def vector_grant_banks(instr: Instruction, hw: HardwareConfig) -> np.ndarray:
    """The L2 banks (a bit each) the vector unit's five ports are granted in each cycle
    from its start, ``int64 [cycles]``, read-only (``_vector_run``'s grants; traced on
    the RTL, a ``REQUANT`` and an ``RMSNORM`` on edge-16x16, cycle by cycle, exact).
    Where the L2 has more than ``MAX_STEPPED_BANKS`` line-wide banks, empty (not
    recorded), as ``arch.matmul_timing.grant_banks``, with which ``sweeps.perf._Banks``
    walks a DMA copier. (On edge-4x4's one bank every vector instruction of seed 2046's
    step 11 and 2048's step 21 is granted as the RTL's FST trace shows.) Memoised on the
    instruction and ``hw``'s fields it reads (``recorded_grants``)."""
    banks = int(hw.l2_lines_per_cycle)

    def grants():
        done, _, _, moves, masks = _vector_run(
            *vector_run_inputs(vector_segments(instr), hw), hw.line_bytes, banks,
            hw.vector_lanes_per_cycle, False, True)
        out = np.zeros(int(done) + 1, np.int64)
        out[moves[:, 1].astype(np.int64)] = masks    # a grant's cycle is its move's end
        return out

    return recorded_grants((instr, hw.line_bytes, banks, hw.vector_lanes_per_cycle), hw,
                           grants)
