"""The instruction-level model of a compressed-KV prefetch (``KV_PREFETCH`` in ``CHUNKED``
format) on hand-made chunk headers: what the widths change, and the faults it names.
Against the RTL: tests/rtl/test_accelerator.py. And what the occupancy memo shares."""

import numpy as np
import pytest

from arch.hardware import load_hardware
from arch.isa import KvFormat, kv_chunk_addrs, kv_chunk_header, make
from arch.occupancy import (
    CALIBRATION,
    _occupancy,
    chunked_prefetch_occupancy,
    kv_budget_widths,
    occupancy,
)

POOL, TABLE, COLS, BLOCKS = 256, 0, 32, 2


def _prefetch(hw, bits: int, table=(1, 0), n_tokens=None, header=True):
    """A DRAM image whose two blocks' chunks all have width ``bits``, a CHUNKED prefetch
    of both, and a ``read_i32`` over the image."""
    B = hw.kv_block_tokens
    dram = np.zeros(1 << 16, np.uint8)
    dram[TABLE:TABLE + 4 * len(table)] = np.asarray(table, "<i4").view(np.uint8)
    for block in range(BLOCKS):
        _, headers = kv_chunk_addrs(POOL, BLOCKS, block, B, COLS, 0)
        if header:
            dram[headers:headers + COLS] = kv_chunk_header(np.full(COLS, bits),
                                                           np.zeros(COLS, int))
    instr = make("KV_PREFETCH", pool_addr=POOL, table_addr=TABLE, first_token=0,
                 n_tokens=B * BLOCKS if n_tokens is None else n_tokens, row_bytes=COLS,
                 col_offset=0, col_bytes=COLS, l2_addr=0, pool_blocks=BLOCKS, seq=0,
                 kv_format=KvFormat.CHUNKED)
    return instr, lambda a: int(dram[a:a + 4].view("<i4")[0])


def test_the_code_bytes_come_from_the_headers_and_bound_a_slow_dram():
    fast = load_hardware("edge-4x4")
    slow = fast.replace(dram_bytes_per_cycle=4)
    B = fast.kv_block_tokens
    for hw in (fast, slow):
        occ = {}
        for bits in (2, 8):
            instr, read_i32 = _prefetch(hw, bits)
            occ[bits] = occupancy(instr, hw, read_i32)
        for bits, o in occ.items():       # table entry, header and codes of each block
            assert o.dram_read_bytes == BLOCKS * (4 + COLS + COLS * B * bits // 8)
            assert o.prefetch_bytes == BLOCKS * B * COLS and o.after_copier
        if hw is fast:   # one group a cycle: 32 channels outlast 16 lines of 8-bit codes
            assert occ[2].cycles == occ[8].cycles
        else:            # 8 cycles a line: 8-bit codes (16 lines a block) take longer
            assert occ[8].cycles > occ[2].cycles + BLOCKS * 8 * 8


@pytest.mark.parametrize(("change", "fault"), [
    ({"header": False}, "BAD_CHUNK"),
    ({"table": (1, 5)}, "BAD_BLOCK"),
    ({"table": (-1, 0)}, "BAD_BLOCK"),
    ({"n_tokens": 8}, "BAD_OPERAND"),
])
def test_what_the_device_stops_is_named_not_timed(change, fault):
    hw = load_hardware("edge-4x4")
    instr, read_i32 = _prefetch(hw, 4, **change)
    with pytest.raises(ValueError, match=fault):
        occupancy(instr, hw, read_i32)


def test_a_chunked_prefetch_needs_the_dram():
    hw = load_hardware("edge-4x4")
    instr, _ = _prefetch(hw, 4)
    with pytest.raises(ValueError, match="needs the DRAM image"):
        occupancy(instr, hw)


@pytest.mark.parametrize(("channels", "bits", "widths"), [
    (32, 8, {8: 32}), (32, 2, {2: 32}), (32, 4, {4: 32}), (32, 6, {8: 16, 4: 16}),
    (32, 3, {4: 16, 2: 16}), (128, 5, {8: 32, 4: 96}), (3, 7.0, {8: 2, 4: 1})])
def test_a_kv_budget_splits_the_channels_between_two_widths(channels, bits, widths):
    got = kv_budget_widths(channels, bits)
    assert got.shape == (channels,) and list(got) == sorted(got, reverse=True)
    assert {int(w): int((got == w).sum()) for w in set(got.tolist())} == widths


@pytest.mark.parametrize("bits", [1.9, 8.5, float("nan"), True, "4"])
def test_a_kv_budget_outside_two_to_eight_bits_is_refused(bits):
    with pytest.raises(ValueError, match="a KV budget is 2 to 8 bits"):
        kv_budget_widths(32, bits)


def test_a_budget_times_a_chunked_prefetch_as_headers_of_its_widths_do():
    """With ``kv_bits`` instead of the DRAM, the prefetch is timed as one whose chunk
    headers say the budget's widths (``kv_budget_widths``), its blocks in table order."""
    hw = load_hardware("edge-4x4").replace(dram_bytes_per_cycle=4)
    for bits in (2, 3, 6, 8):
        instr, read_i32 = _prefetch(hw, kv_budget_widths(COLS, bits), table=(0, 1))
        timed = occupancy(instr, hw, read_i32)
        budget = chunked_prefetch_occupancy(instr, hw, None, kv_bits=bits)
        assert (budget.cycles, budget.dram_read_bytes) == (timed.cycles, timed.dram_read_bytes)


def test_a_copier_trailing_the_matmul_units_readers_is_refused_at_each_slip():
    """``Occupancy.paced_cycles`` and ``paced_lines`` of a MATMUL: its cycles, and those
    in which a copier below it in priority, asking for a line a cycle in consecutive
    banks, is not refused (``matmul_timing._refusals``, stepped through the tile readers'
    and the writer's grants). A GEMV over weight rows of 249 bytes reads again the line
    each row begins in, and the copier, trailing the reader a bank behind, wants that
    bank then: about a cycle a row (64 rows; on the RTL a 504-line load beside it lost 45
    cycles, ``python -m benchmarks.rtl_pairs``), where rows of whole lines cost a cycle
    or so a tile (8 tiles; 8 on the RTL). Attention's ``P · V`` (KN weights, a row of
    ``C`` bytes per reduction step) primes each row that does not start on a line, an
    idle step the copier loses too. The vector unit is stepped alike: beside a REQUANT
    on edge-8x8 reading its int32 accumulators at half a line a cycle, such a copier was
    granted 76 to 79 of its 139 cycles in Amaranth's simulator, by the bank it began in
    (tests/rtl/test_vector_unit.py checks random vector instructions so)."""
    hw = load_hardware("edge-8x8")
    W = hw.line_bytes
    gemv = dict(mode=1, accumulate=0, w_format=0, e_addr=0)

    def refused(occ):
        assert occ.paced_cycles == occ.cycles
        return occ.paced_cycles - occ.paced_lines

    def rows_of(k):
        return occupancy(make("MATMUL", **gemv, w_layout=0, m=1, k=k, n=64, x_addr=W,
                              w_addr=1 << 14, out_addr=1 << 13, x_stride=k, w_stride=k,
                              out_stride=256), hw)

    assert refused(rows_of(249)) >= 48 and refused(rows_of(256)) <= 16
    pv = occupancy(make("MATMUL", **gemv, w_layout=1, m=2, k=200, n=W, x_addr=0, w_addr=0,
                        out_addr=1 << 14, x_stride=256, w_stride=W, out_stride=4 * W), hw)
    nk = occupancy(make("MATMUL", **gemv, w_layout=0, m=1, k=128, n=128, x_addr=0,
                        w_addr=1 << 10, out_addr=1 << 15, x_stride=128, w_stride=128,
                        out_stride=512), hw)
    assert refused(pv) > 0.3 * pv.cycles and refused(nk) < 0.05 * nk.cycles
    rq = occupancy(make("REQUANT", out_bits=0, params=1, has_bias=0, rows=4, cols=128,
                        src_addr=0, dst_addr=1 << 12, src_stride=512, dst_stride=128,
                        param_addr=1 << 13, bias_addr=0), hw)
    assert rq.paced_cycles == rq.cycles and 76 <= rq.paced_lines <= 79


def test_the_vector_units_l2_profile_is_its_ports_grants():
    """``Occupancy.l2_profile`` of a vector instruction: the lines its ports are granted,
    cycle by cycle (``vector_timing._vector_run``), which ``sweeps.perf._Usage`` takes
    instead of spreading them evenly. An ``ARGMAX`` over 41 int16 logits asks its three
    lines back to back once its segment is issued (its row reader may ask four ahead)
    and writes its one result line at the end: none in its first ninth, three quarters
    of its lines by a third of its cycles and none more until its last ninths (evenly,
    a third by then). On edge-4x4 a store beside it waits for them (docs/perf.md,
    "Round 59")."""
    hw = load_hardware("edge-4x4")
    argmax = occupancy(make("ARGMAX", src_addr=64, n=41, dst_addr=192), hw)
    assert argmax.l2_lines == 4
    profile = argmax.l2_profile
    assert profile[0] == 0.0 and profile[1] > 0
    assert profile[2] == profile[5] == 0.75 and profile[-1] == 1.0


@pytest.mark.parametrize("name", ["edge-4x4", "edge-8x8", "edge-16x16"])
def test_the_vector_units_grants_are_its_lines(name):
    """Over random vector instructions of the seven kinds (``random_vector``), the grants
    ``_vector_run`` records for ``l2_profile`` are the L2 lines the occupancy counts (no
    writer's priming step, every parameter re-read), at most a line a bank a cycle, all
    before it is done; and the occupancy's profile is theirs over its cycles."""
    from arch.timing import copier_stepped, l2_profile_points
    from arch.vector_timing import _vector_run, vector_run_inputs, vector_segments
    from rtl.random_programs import random_vector

    hw = load_hardware(name)
    rng = np.random.default_rng(59)
    banks = int(hw.l2_lines_per_cycle)
    for _ in range(60):
        instr = random_vector(rng, min(hw.l2_bytes, 1 << 18))
        occ = occupancy(instr, hw)
        done, _, _, grants, _ = _vector_run(*vector_run_inputs(vector_segments(instr), hw),
                                            hw.line_bytes, banks, hw.vector_lanes_per_cycle,
                                            copier_stepped(hw))
        assert grants[:, 2].sum() == occ.l2_lines, instr
        assert grants[:, 2].max() <= banks and grants[:, 1].max() <= done, instr
        assert occ.l2_profile == tuple(l2_profile_points(grants, occ.cycles)), instr


@pytest.mark.parametrize("name", ["edge-4x4", "edge-8x8", "edge-16x16"])
def test_the_memo_shares_a_timing_only_where_the_timing_reads_nothing_that_differs(name):
    """``occupancy`` gives one timing to instructions whose operands differ only in what
    ``_timing_operands`` drops (a MATMUL's addresses and strides by multiples of the
    banks' lines, its x, weight, exponent and output addresses by the same whole lines,
    a vector instruction's addresses by multiples of the banks' lines, ROPE's ``pos0``,
    an INT8 KV_PREFETCH's or a KV_APPEND's
    ``first_token`` by its period, the prefetch's ``col_offset`` by a line): computed
    apart (``_occupancy``, no memo), random such pairs time alike, field by field. Where
    x alone moves by a line (with more than one line-wide bank, the readers' banks then
    collide elsewhere) and the timing differs, the memo does not share it; nor where the
    output alone moves by a line on more than one bank (the writer waits for the
    readers' banks), nor a vector instruction's operand (its ports collide by bank)."""
    hw = load_hardware(name)
    W, P, B = hw.line_bytes, hw.line_bytes * int(hw.l2_lines_per_cycle), hw.kv_block_tokens
    rng = np.random.default_rng(7)

    def r(lo, hi):
        return int(rng.integers(lo, hi + 1))

    pairs, apart = [], []
    for _ in range(12):
        mode, kn = r(0, 1), r(0, 1)
        m, k, n = r(1, 40), r(1, 80), r(1, 40)
        a = dict(mode=mode, accumulate=r(0, 1), w_layout=kn, x_addr=r(0, 4096),
                 w_addr=r(0, 4096), out_addr=r(0, 4096), m=m, k=k, n=n,
                 x_stride=k + r(0, 300), w_stride=(n if kn else k) + r(0, 300),
                 out_stride=4 * n + r(0, 300), w_format=0, e_addr=0)
        b = {f: v + P * r(1, 9) if f.endswith(("_addr", "_stride")) else v
             for f, v in a.items()}
        pairs.append((make("MATMUL", **a), make("MATMUL", **b)))
        # x, the weights, the exponents and the output moved by the same lines
        lines = W * r(1, 40)
        c = {**a, "w_format": r(0, 1) if not kn else 0, "e_addr": r(0, 4096)}
        d = {**c, "x_addr": c["x_addr"] + lines, "w_addr": c["w_addr"] + lines,
             "e_addr": c["e_addr"] + (lines if c["w_format"] else r(0, 4096)),
             "out_addr": c["out_addr"] + lines}
        pairs.append((make("MATMUL", **c), make("MATMUL", **d)))
        # ... and x alone moved by a line: the two readers' banks collide elsewhere
        apart.append((make("MATMUL", **c), make("MATMUL", **{**c, "x_addr": c["x_addr"] + W})))
        rope = dict(src_addr=r(0, 4096), dst_addr=r(0, 4096), rows=r(1, 9), heads=r(1, 6),
                    head_dim=2 * r(1, 40), pos0=r(0, 5000), freq_addr=r(0, 4096),
                    row_stride=r(0, 700))
        pairs.append((make("ROPE", **rope), make("ROPE", **{**rope, "pos0": r(0, 5000)})))
        row_bytes = r(1, 300)
        period = np.lcm(B, W // np.gcd(row_bytes, W))
        cols = r(1, row_bytes)
        kv = dict(pool_addr=r(0, 1 << 20), table_addr=r(0, 1 << 20), first_token=r(0, 999),
                  n_tokens=r(1, 3 * B), row_bytes=row_bytes, col_offset=r(0, row_bytes - cols),
                  col_bytes=cols, l2_addr=r(0, 4096), pool_blocks=1 << 20, seq=0,
                  kv_format=KvFormat.INT8)
        later = {**kv, "first_token": kv["first_token"] + int(period) * r(1, 20)}
        pairs.append((make("KV_PREFETCH", **kv), make("KV_PREFETCH", **later)))
        if kv["col_offset"] + W <= row_bytes - cols:      # a head a line further on
            pairs.append((make("KV_PREFETCH", **kv), make("KV_PREFETCH", **{
                **later, "col_offset": kv["col_offset"] + W})))
        append = {f: v for f, v in kv.items() if f not in ("col_offset", "col_bytes",
                                                            "kv_format")}
        pairs.append((make("KV_APPEND", **append),
                      make("KV_APPEND", **{**append, "first_token": later["first_token"]})))
    # a vector instruction's addresses by multiples of the banks' lines (its ports collide
    # by bank, ``_vector_run``); apart, one operand moved by a line
    for _ in range(12):
        rows, cols = r(1, 4), r(1, 60)
        v = dict(h_addr=r(0, 4096), acc_addr=r(0, 4096), param_addr=r(0, 4096), rows=rows,
                 cols=cols, h_stride=2 * cols + r(0, 40), acc_stride=4 * cols + r(0, 40))
        pairs.append((make("RESADD", **v), make("RESADD", **{
            f: x + P * r(1, 9) if f.endswith("_addr") else x for f, x in v.items()})))
        apart.append((make("RESADD", **v),
                      make("RESADD", **{**v, "acc_addr": v["acc_addr"] + W})))
        sm = dict(src_addr=r(0, 4096), dst_addr=r(0, 4096), rows=rows, cols=cols,
                  q_pos0=cols, src_stride=4 * cols + r(0, 40), dst_stride=cols + r(0, 40),
                  mult=20508, shift=25, scale_addr=r(0, 4096), out_mult=19870, out_shift=21)
        pairs.append((make("SOFTMAX", **sm), make("SOFTMAX", **{
            f: x + P * r(1, 9) if f.endswith("_addr") else x for f, x in sm.items()})))
        apart.append((make("SOFTMAX", **sm),
                      make("SOFTMAX", **{**sm, "dst_addr": sm["dst_addr"] + W})))
    for one, other in pairs:
        assert _occupancy(one, hw, None, CALIBRATION) == _occupancy(other, hw, None,
                                                                    CALIBRATION), one
        assert occupancy(one, hw) is occupancy(other, hw)
    # and where they time apart, the memo tells them apart
    differ = 0
    for one, other in apart:
        if _occupancy(one, hw, None, CALIBRATION) != _occupancy(other, hw, None, CALIBRATION):
            differ += 1
            assert occupancy(one, hw) is not occupancy(other, hw), one
    assert differ or hw.l2_lines_per_cycle == 1, differ
    # With more than one bank, the output's banks in the readers' cycles matter (the
    # writer waits while a tile reader has its bank): moved by a line alone, some time
    # apart, and the memo tells those apart; on one bank the output moved so times alike.
    differ = 0
    for _ in range(80):
        m, k, n = r(1, 4), r(16, 300), r(8, 64)
        c = dict(mode=1, accumulate=0, w_layout=0, x_addr=r(0, 4096), w_addr=r(0, 4096),
                 out_addr=r(0, 4096), m=m, k=k, n=n, x_stride=k, w_stride=k,
                 out_stride=4 * n + 4 * r(0, 40), w_format=0, e_addr=0)
        one, other = make("MATMUL", **c), make("MATMUL", **{**c, "out_addr": c["out_addr"] + W})
        if _occupancy(one, hw, None, CALIBRATION) != _occupancy(other, hw, None, CALIBRATION):
            differ += 1
            assert occupancy(one, hw) is not occupancy(other, hw), one
    assert (differ > 0) == (hw.l2_lines_per_cycle > 1), differ


@pytest.mark.parametrize("name", ["edge-4x4", "edge-8x8", "edge-16x16"])
def test_a_dma_instruction_jumps_its_settled_periods_as_stepping_them_would(name):
    """``dma_occupancy`` adds the periods of rows after one that shifted every time alike
    at once (``_row_period``): on random loads, stores and KV walks of up to 900 rows, at
    the configuration's DRAM bandwidth and at 1, 3 and 16 bytes a cycle (those its L2
    can take), the jump gives exactly what stepping every row (``period=0``) gives:
    every count, every time of ``copies``, the cycles. (``_dma_run`` counts time in exact
    integers, so an exact jump is an equality.) Every kind jumps somewhere, but a
    ``KV_PREFETCH`` only where its period moves whole cycles (its table reads' answers
    are timed in whole cycles, ``_answer_behind``): not at edge-16x16's 51 bytes a
    cycle, its only bandwidth here. 60 instructions a configuration: edge-16x16's one
    bandwidth gives 24 jumps."""
    from arch import occupancy as O

    rng = np.random.default_rng(11)

    def r(lo, hi):
        return int(rng.integers(lo, hi + 1))

    base = load_hardware(name)
    configs = [base]
    for bw in (1, 3, 16):
        try:
            configs.append(base.replace(dram_bytes_per_cycle=bw))
        except ValueError:
            pass                          # a bandwidth whose line this L2 cannot take
    jumped, kinds = 0, set()
    for hw in configs:
        for _ in range(60):
            op = ("DMA_LOAD", "DMA_STORE", "KV_PREFETCH", "KV_APPEND")[r(0, 3)]
            if op.startswith("DMA"):
                rb = r(1, 300)
                instr = make(op, dram_addr=r(0, 1 << 20), l2_addr=r(0, 4096), rows=r(1, 900),
                             row_bytes=rb, l2_stride=rb + r(0, 100), dram_stride=rb + r(0, 500))
            else:
                rb = r(1, 600)
                kv = dict(pool_addr=r(0, 1 << 20), table_addr=0, first_token=r(0, 999),
                          n_tokens=r(1, 900), row_bytes=rb, l2_addr=r(0, 4096),
                          pool_blocks=1 << 20, seq=0)
                if op == "KV_PREFETCH":
                    cols = r(1, rb)
                    kv.update(col_offset=r(0, rb - cols), col_bytes=cols, kv_format=KvFormat.INT8)
                instr = make(op, **kv)
            fast, slow = O.dma_occupancy(instr, hw), O.dma_occupancy(instr, hw, period=0)
            assert fast == slow, instr
            stepped = O._dma_walk(instr, hw, None, O.CALIBRATION)[5]
            jumped += stepped < slow.copies.rows
            if stepped < slow.copies.rows:
                kinds.add(op)
    assert jumped > 20                    # the jump is what was checked
    whole = any(hw.dram_bytes_per_cycle % hw.line_bytes == 0 for hw in configs)
    assert {"DMA_LOAD", "DMA_STORE", "KV_APPEND"} | ({"KV_PREFETCH"} if whole
                                                     else set()) <= kinds, kinds


def test_the_stepped_units_end_on_instructions_the_isa_refuses():
    """The vector unit's and the matmul unit's cycle-by-cycle models (``_vector_run``,
    ``_writeback``) end on empty blocks, which the ISA refuses (``semantics.check``) but
    a program timed unchecked may hold: an empty row is one group, an empty MATMUL its
    engine's START and END. (An empty row once stepped forever: no group was its last.)"""
    hw = load_hardware("edge-8x8")
    vector = [make("RMSNORM", src_addr=0, dst_addr=100, src_stride=10, dst_stride=10, mult=1,
                   shift=1, eps=0, rows=2, cols=0),
              make("ARGMAX", src_addr=0, n=0, dst_addr=100),
              make("SOFTMAX", src_addr=0, dst_addr=300, rows=3, cols=0, q_pos0=0,
                   src_stride=4, dst_stride=1, mult=1, shift=1, scale_addr=600, out_mult=1,
                   out_shift=1)]
    for instr in vector:
        assert CALIBRATION.engine_overhead < occupancy(instr, hw).cycles < 100, instr
    for m, k, n in [(0, 5, 5), (5, 0, 5), (5, 5, 0)]:
        instr = make("MATMUL", mode=1, accumulate=1, w_layout=0, x_addr=0, w_addr=100,
                     out_addr=300, m=m, k=k, n=n, x_stride=5, w_stride=5, out_stride=20,
                     w_format=0, e_addr=0)
        assert occupancy(instr, hw).cycles == CALIBRATION.engine_overhead, instr


def test_a_misaligned_rows_extra_write_step_asks_the_l2_for_no_line():
    """``_paced_lines``: a row's write steps beside ports that leave the L2 one cycle in
    three. A misaligned row's extra step (its shifter's) takes a cycle whatever the ports
    take, and only its lines wait for a cycle left to them: a one-line row with the
    extra step from cycle 0 is written in cycle 2 (charged a line for the extra step
    too, it would wait for cycle 5). A ``KV_PREFETCH`` of 16-byte columns, every other
    row misaligned (two steps, then one: 1.5 cycles a line alone), is then written a
    line every third cycle, as seed 2046's step 11 on edge-4x4 was on the RTL beside
    attention's ``P · V`` (its bursts of 16 lines 45 cycles long, Verilator's FST)."""
    from arch.occupancy import _paced_lines, paced_walk

    every_third = np.concatenate(([0.0], np.cumsum(np.arange(3000) % 3 == 2)))
    assert _paced_lines(0, 2, 1, every_third, 1) == 3
    assert _paced_lines(0, 1, 1, every_third, 1) == 3
    assert _paced_lines(0, 2, 2, every_third, 1) == 6
    assert _paced_lines(0, 2, 1, np.zeros(0), 1) == 2           # alone: every step a cycle
    hw = load_hardware("edge-4x4")
    B = hw.kv_block_tokens
    instr = make("KV_PREFETCH", pool_addr=1 << 16, table_addr=0, first_token=0,
                 n_tokens=B, row_bytes=64, col_offset=16, col_bytes=16, l2_addr=0,
                 pool_blocks=64, seq=0, kv_format=KvFormat.INT8)
    occ = occupancy(instr, hw)
    lines = occ.l2_lines
    assert lines == B and hw.line_bytes == 32
    # its block's lines alone take 1.5 cycles each; written in the free cycles, 3 each
    # (within the 2 cycles a free cycle's phase moves the first and last line)
    walked, _ = paced_walk(instr, hw, every_third)
    assert abs((walked - occ.cycles) - (3 - 1.5) * lines) <= 2, (walked, occ.cycles)


@pytest.mark.parametrize("name", ["edge-4x4", "edge-8x8"])
def test_a_prefetch_walked_through_the_lines_left_is_the_walk_alone_where_all_are_left(name):
    """``paced_walk``: a ``KV_PREFETCH``'s walk whose copier writes a line only where the
    ports above it leave one (``free``, cumulative). Where every cycle leaves a line it
    is the walk alone (``dma_occupancy``'s cycles and last row command); where random
    stretches leave none it ends no sooner, and each stretch taken away moves its end
    and its last row command later or not at all (a table read's answer waits for the
    lines its copier has yet to take, ``_answer_behind``), and its end by no more than
    the cycles taken away. 40 random prefetches a
    configuration, over the table of ``random_rtl_step``'s kind (timing reads no
    entry)."""
    from arch.occupancy import paced_walk

    hw = load_hardware(name)
    rng = np.random.default_rng(60)
    B = hw.kv_block_tokens
    slowed = 0
    for _ in range(40):
        rb = int(rng.integers(16, 300))
        cols = int(rng.integers(1, rb + 1))
        instr = make("KV_PREFETCH", pool_addr=1 << 16, table_addr=0,
                     first_token=int(rng.integers(0, 4)) * B, n_tokens=int(rng.integers(1, 6 * B)),
                     row_bytes=rb, col_offset=int(rng.integers(0, rb - cols + 1)),
                     col_bytes=cols, l2_addr=int(rng.integers(0, 4096)), pool_blocks=64,
                     seq=0, kv_format=KvFormat.INT8)
        occ = occupancy(instr, hw)
        n = 4 * occ.cycles + 64
        every = np.arange(n + 1, dtype=np.float64)
        assert paced_walk(instr, hw, every) == (occ.cycles, occ.copies.issue[0]), instr
        left = np.ones(n)
        last = (occ.cycles, occ.copies.issue[0])
        for _ in range(4):                     # stretches of 5 to 30 cycles leave none
            a = int(rng.integers(0, occ.cycles))
            left[a:a + int(rng.integers(5, 31))] = 0
            walked = paced_walk(instr, hw, np.concatenate(([0.0], np.cumsum(left))))
            assert walked[0] >= last[0] and walked[1] >= last[1], (instr, walked, last)
            assert walked[0] <= occ.cycles + n - left.sum(), (instr, walked)
            slowed += walked[0] > occ.cycles
            last = walked
    assert slowed > 40, slowed


def test_a_misaligned_rows_priming_step_needs_data_only_where_it_reads_the_row():
    """A one-row copy whose source and destination are not aligned alike takes a
    shifter step that writes nothing: where the source starts later in its line than the
    destination, of the row's first source line, a cycle after its data; where earlier,
    of the line before the row, which needs no data, while the data is on its way
    (``_shifter_steps``; tests/rtl/test_accelerator.py checks 72 such copies against the
    RTL). So a store of 1,000 bytes from 8 bytes into its line to 0 takes a cycle more
    than from 0 to 8 or from 8 to 8 (32 destination lines each)."""
    hw = load_hardware("edge-8x8")

    def store(src, dst):
        return occupancy(make("DMA_STORE", l2_addr=(8 << 10) + src, dram_addr=(1 << 17) + dst,
                              rows=1, row_bytes=1000, l2_stride=1000, dram_stride=1000),
                         hw).cycles

    assert store(0, 8) == store(8, 8)
    assert store(8, 0) == store(8, 8) + 1
