"""The matmul unit against the ISA simulator: GEMM and GEMV, NK and KN weights, int8 and
MXINT4 weights (random exponent bytes, so also their unused high bits), accumulate,
shapes that do not divide the array or the tile, row counts on both sides of a tile and
of the array, one instruction after another on one simulation of the unit per hardware
description. Amaranth's simulator. (The PE utilisation of both dataflows is measured on
the Verilator model, tests/rtl/test_accelerator.py.)"""

import numpy as np
import pytest

from arch.hardware import load_hardware
from arch.isa import MatmulMode, WeightFormat, WeightLayout, make
from models.numerics import mx_blocks
from rtl.common import RtlParams
from rtl.matmul_unit import MatmulUnit, tag_layout

L2_BYTES = 16384
PARAMS = {name: RtlParams(load_hardware(name).replace(l2_bytes=L2_BYTES), dram_bytes=4096)
          for name in ("edge-8x8", "edge-4x4")}


def matmul(mode, layout, m, k, n, accumulate, weights="int8", out_stride=None, x_addr=7,
           l2_bytes=L2_BYTES):
    """Operands one after another at odd addresses and strides; MXINT4 rows are the packed
    ``(k + 1) // 2`` bytes, the exponents ``ceil(k / 32)`` bytes a row, packed. With an
    ``out_stride``, the output from a 64-byte boundary: rows of one line each
    ``line_bytes * banks`` apart all fall in one bank (the writer *camps* on it)."""
    mx = weights == "mxint4"
    x_stride = k + 5
    w_rows, w_cols = (n, k) if layout == "NK" else (k, n)
    w_addr = x_addr + m * x_stride + 13
    w_stride = ((w_cols + 1) // 2 if mx else w_cols) + 3
    e_addr = w_addr + w_rows * w_stride + 5
    out_addr = e_addr + (n * mx_blocks(k) if mx else 0) + 9
    if out_stride is None:
        out_stride = 4 * n + 12
    else:
        out_addr = -(-out_addr // 64) * 64
    assert out_addr + m * out_stride < l2_bytes
    return make("MATMUL", mode=int(MatmulMode[mode]), accumulate=accumulate,
                w_layout=int(WeightLayout[layout]), x_addr=x_addr, w_addr=w_addr,
                w_format=int(WeightFormat[weights.upper()]), e_addr=e_addr if mx else 0,
                out_addr=out_addr, m=m, k=k, n=n, x_stride=x_stride, w_stride=w_stride,
                out_stride=out_stride)


CASES = [
    ("edge-8x8", "GEMV", "NK", 1, 64, 16, 0),
    ("edge-8x8", "GEMV", "NK", 3, 300, 13, 1),        # k over a tile, n not a multiple of C
    ("edge-8x8", "GEMV", "KN", 2, 37, 11, 0),
    ("edge-8x8", "GEMV", "NK", 19, 40, 9, 1),         # GEMV over several array heights
    ("edge-8x8", "GEMM", "NK", 11, 45, 10, 1),        # m over the array height
    ("edge-8x8", "GEMM", "NK", 1, 70, 8, 0),          # one row: the preload sets the pace
    ("edge-8x8", "GEMM", "NK", 45, 130, 9, 1),        # 45 rows: tiles of 23 and 22 rows
    ("edge-8x8", "GEMM", "KN", 9, 20, 8, 0),
    ("edge-4x4", "GEMV", "NK", 4, 70, 9, 0),
    ("edge-4x4", "GEMM", "KN", 6, 33, 5, 1),
    ("edge-4x4", "GEMM", "NK", 37, 90, 6, 0),         # 37 rows: tiles of 16, 11 and 10
    ("edge-4x4", "GEMV", "NK", 1, 128, 32, 0),        # the L2 21 cycles running, then 11
]
CASES = [(*case, "int8", None) for case in CASES] + [
    ("edge-8x8", "GEMV", "NK", 3, 300, 13, 1, "mxint4", None),   # k over a tile and odd
    ("edge-8x8", "GEMV", "NK", 1, 45, 16, 0, "mxint4", None),    # nc > mt: x reader takes rows
    ("edge-8x8", "GEMM", "NK", 45, 130, 9, 1, "mxint4", None),   # blocks across lines
    ("edge-8x8", "GEMM", "NK", 1, 33, 8, 0, "mxint4", None),
    ("edge-4x4", "GEMV", "NK", 4, 301, 9, 0, "mxint4", None),    # 301: tiles of 256 and 45
    ("edge-4x4", "GEMM", "NK", 37, 90, 6, 1, "mxint4", None),
    # result rows of a line each, 128 bytes apart: every row of a group in one bank
    ("edge-8x8", "GEMV", "NK", 32, 16, 8, 0, "int8", 128),
    ("edge-8x8", "GEMM", "NK", 20, 24, 8, 1, "int8", 128),
]


@pytest.fixture(scope="module")
def runs(l2sim):
    """``runs(hw)``: ``{case: (L2 before, RTL L2 after, ISA simulator L2 after, {cycle:
    L2 lines granted to the unit's ports}, {cycle: the banks, a bit each, granted to its
    ports})}`` of every case of ``hw``, one after another on one
    simulation of the unit."""
    done = {}

    def get(hw):
        if hw not in done:
            cases = [case for case in CASES if case[0] == hw]
            inputs = []
            for case in cases:
                _, mode, layout, m, k, n, *_ = case
                rng = np.random.default_rng(m * 1000 + k * 10 + n)
                inputs.append((rng.integers(0, 256, L2_BYTES, dtype=np.uint8),
                               matmul(*case[1:])))
            params = PARAMS[hw]
            unit = MatmulUnit(params=params)
            grants, banks = [{} for _ in cases], [{} for _ in cases]
            line_banks = params.line_banks

            def watch(ctx, case, cycle):
                won = [ctx.get(unit.port(i).req.valid & unit.port(i).req.ready)
                       for i in range(MatmulUnit.N_PORTS)]
                if any(won):
                    grants[case][cycle] = sum(won)
                mask = 0
                for i in range(MatmulUnit.N_PORTS):
                    if won[i]:
                        mask |= 1 << ctx.get(unit.port(i).req.payload.addr) % line_banks
                if mask:
                    banks[case][cycle] = mask

            results = l2sim.run_instructions(params, unit, MatmulUnit.N_PORTS, inputs,
                                             watch=watch)
            done[hw] = {case: (mem, *result, granted, bits) for case, (mem, _), result,
                        granted, bits in zip(cases, inputs, results, grants, banks,
                                             strict=True)}
        return done[hw]

    return get


@pytest.mark.parametrize(("hw", "mode", "layout", "m", "k", "n", "accumulate", "weights",
                          "out_stride"), CASES)
def test_matmul_matches_isa_simulator(runs, hw, mode, layout, m, k, n, accumulate, weights,
                                      out_stride):
    mem, rtl, expected, *_ = runs(hw)[(hw, mode, layout, m, k, n, accumulate, weights,
                                       out_stride)]
    diff = np.flatnonzero(rtl != expected)
    assert diff.size == 0, f"{diff.size} bytes differ, first at {diff[:8]}"
    assert not np.array_equal(expected, mem)


def test_an_int8_only_unit_runs_int8_weights(l2sim):
    """``RtlParams.mxint4 = False`` leaves the MXINT4 datapath out (no shifts in the tag):
    int8 MATMULs in both modes still match the ISA simulator, whole L2 compared."""
    params = RtlParams(load_hardware("edge-4x4").replace(l2_bytes=L2_BYTES), dram_bytes=4096,
                       mxint4=False)
    unit = MatmulUnit(params=params)
    assert "shift" not in tag_layout(unit.geometry).members
    rng = np.random.default_rng(3)
    inputs = [(rng.integers(0, 256, L2_BYTES, dtype=np.uint8), matmul(*case, 0))
              for case in (("GEMV", "NK", 3, 70, 9), ("GEMM", "NK", 21, 90, 6))]
    results = l2sim.run_instructions(params, unit, MatmulUnit.N_PORTS, inputs)
    for (mem, _), (rtl, expected) in zip(inputs, results, strict=True):
        assert np.array_equal(rtl, expected) and not np.array_equal(expected, mem)


@pytest.mark.parametrize(("hw", "cases"), [
    ("edge-4x4", [("GEMV", "KN", 4, 64, 8, 0), ("GEMV", "KN", 2, 100, 12, 1),
                  ("GEMV", "KN", 4, 40, 10, 0), ("GEMM", "KN", 9, 64, 8, 0),
                  ("GEMM", "KN", 6, 33, 5, 1), ("GEMV", "NK", 4, 70, 9, 0)]),
    ("edge-16x16", [("GEMV", "NK", 1, 48, 48, 0), ("GEMV", "NK", 2, 32, 40, 0),
                    ("GEMV", "KN", 3, 80, 20, 1), ("GEMM", "NK", 20, 70, 18, 0),
                    ("GEMV", "NK", 40, 32, 48, 0), ("GEMV", "NK", 40, 32, 48, 1),
                    ("GEMM", "KN", 40, 24, 40, 1)])])
def test_tiles_are_announced_and_the_unit_ends_when_the_model_says(l2sim, hw, cases):
    """The tile filler's two row readers share the L2's banks, the x reader's port first
    (``arch.matmul_timing._fill_cycles`` steps both cycle by cycle). On edge-4x4 (one line-wide
    bank) a tile's weight reader waits for the x rows, which matters where KN weight rows
    need a priming step each and so set the fill (the model was 4-9% short on such
    MATMULs); on edge-16x16 (four banks) the two readers collide only where they ask one
    bank at once (the model was a cycle a tile long where they did not). The writeback's
    two ports come after the filler's, and its row writer after its old-output reader
    (``arch.matmul_timing._writeback``): a group's writeback waits while the next tile fills
    where they ask one bank (before it was stepped, the accumulating KN GEMM on
    edge-4x4 ended 5 cycles after the model's 252, and on edge-16x16 the GEMVs of 40
    rows, whose writebacks run beside the next tiles' fills, were 14% and 16% short, the
    accumulating KN GEMM 5%). Every
    tile of every case is announced in the cycle the model gives, the unit ends (``done``)
    in the model's cycle, and it ends with the ISA simulator's L2."""
    from arch.matmul_timing import matmul_timeline
    from arch.timing import CALIBRATION

    params = PARAMS[hw] if hw in PARAMS else RtlParams(
        load_hardware(hw).replace(l2_bytes=L2_BYTES), dram_bytes=4096)
    rng = np.random.default_rng(5)
    inputs = [(rng.integers(0, 256, L2_BYTES, dtype=np.uint8), matmul(*case)) for case in cases]
    seen = [[] for _ in cases]
    last = [0] * len(cases)
    unit = MatmulUnit(params=params)
    tile = unit.filler.tiles

    def watch(ctx, case, cycle):
        last[case] = cycle
        if ctx.get(tile.valid) and ctx.get(tile.ready):
            seen[case].append(cycle)

    results = l2sim.run_instructions(params, unit, MatmulUnit.N_PORTS, inputs, watch=watch)
    for (mem, instr), (rtl, expected), tiles, end in zip(inputs, results, seen, last,
                                                         strict=True):
        assert np.array_equal(rtl, expected) and not np.array_equal(expected, mem)
        occ, announced = matmul_timeline(instr, params.hw)
        assert tiles == announced.tolist(), instr.fields()
        # ``done`` comes the cycle after the last one watched; the engine's START and
        # END are outside the unit
        assert end + 1 == occ.cycles - CALIBRATION.engine_overhead, instr.fields()


@pytest.mark.parametrize("hw", ["edge-8x8", "edge-4x4"])
def test_the_units_l2_grants_are_its_moves_cycle_by_cycle(runs, hw):
    """``Occupancy.l2_moves`` (``arch.matmul_timing._grant_moves``) are the lines the
    unit's four ports are granted, cycle by cycle, over the whole run of every case
    above: each tile's fill as its readers are stepped, the writeback's old reads and
    writes as its ports are. A ``KV_PREFETCH`` beside the unit takes the lines they
    leave (``sweeps.perf._lines_left``). Before, a fill's lines were spread up to its
    tile's announcement and a row's from its take (4 to 136 cycles differed a case,
    printed by this test's first version)."""
    from arch.matmul_timing import matmul_occupancy

    for case, (*_, rtl, _) in runs(hw).items():
        occ = matmul_occupancy(matmul(*case[1:]), PARAMS[hw].hw)
        model = {}
        for a, b, n in occ.l2_moves:
            for c in range(int(a), int(b)):
                model[c] = model.get(c, 0) + n / (b - a)
        assert sum(rtl.values()) == occ.l2_lines and model == rtl, case


@pytest.mark.parametrize("name", ["edge-8x8", "edge-4x4"])
def test_the_units_granted_banks_are_its_grant_banks_cycle_by_cycle(runs, name):
    """``arch.matmul_timing.grant_banks`` are the L2 banks the unit's four ports (tile
    readers, old-output reader, row writer) are granted, cycle by cycle, over the whole
    run of every case above, on edge-8x8's four line-wide banks and on edge-4x4's one,
    the writer camped on one bank included: the DMA copiers' L2 lines are walked through
    them (``sweeps.perf._bank_wait``, ``_store_bank_wait``). (Without a camped group's
    writes, a ``KV_APPEND`` beside a GEMV writing 32 such rows, traced on the RTL in seed
    2041's step 5 of ``benchmarks.perf_calibration --random``, was walked through none
    of the 128 cycles the writer held its bank; without the old output's lines, the
    accumulating cases here fail.)"""
    from arch.matmul_timing import grant_banks

    hw = PARAMS[name].hw
    accumulating = 0
    for case, (*_, rtl) in runs(name).items():
        masks = grant_banks(matmul(*case[1:]), hw)
        model = {c: int(b) for c, b in enumerate(masks) if b}
        assert len(model) > 0 and model == rtl, case
        accumulating += case[6]
    assert accumulating >= 2
