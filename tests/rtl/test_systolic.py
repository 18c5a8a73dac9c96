"""The hybrid systolic array against NumPy, both dataflows, several shapes.
Amaranth's simulator."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from arch.isa import MatmulMode
from rtl.systolic import SystolicArray, latency


def simulate(array, program):
    """Run ``program(ctx, outputs)`` and return the collected outputs."""
    outputs = []

    async def testbench(ctx):
        await program(ctx, outputs)

    sim = Simulator(array)
    sim.add_clock(1e-9)
    sim.add_testbench(testbench)
    sim.run()
    return outputs


def idle_load(rows, cols):
    return {"valid": 0, "row": 0, "set": 0, "w": [0] * cols}


@pytest.mark.parametrize(("rows", "cols", "block_rows"), [
    (4, 4, 6), (8, 8, 8), (4, 8, 3), (3, 5, 7), (8, 4, 1)])
def test_gemm_double_buffered_weights(rows, cols, block_rows):
    """Blocks of ``block_rows`` x rows stream back to back, each through its own weights,
    the next block's weights loaded row by row while the previous block streams: a block
    takes ``max(block_rows, rows)`` cycles and every result is ``x @ W`` of its block."""
    rng = np.random.default_rng(rows * 10 + cols + block_rows)
    blocks = 5
    w = rng.integers(-128, 128, (blocks, rows, cols))
    x = rng.integers(-128, 128, (blocks, block_rows, rows))
    period = max(block_rows, rows)
    array = SystolicArray(rows=rows, cols=cols, tag_bits=8)

    async def program(ctx, outputs):
        ctx.set(array.mode, MatmulMode.GEMM)
        # cycle t: block b streams row t - (b + 1) * period; block b + 1 loads row
        # t - (b + 1) * period (block 0 loads in the first period)
        total = (blocks + 1) * period + rows + cols + 2
        for t in range(total):
            b, i = divmod(t - period, period)
            streaming = 0 <= b < blocks and i < block_rows
            lb, r = divmod(t, period)
            loading = lb < blocks and r < rows
            ctx.set(array.load, {"valid": int(loading), "row": r if loading else 0,
                                 "set": lb % 2, "w": [int(v) for v in w[lb][r]]
                                 if loading else [0] * cols})
            ctx.set(array.feed, {"valid": int(streaming), "sel": b % 2 if streaming else 0,
                                 "x": [int(v) for v in x[b][i]] if streaming else [0] * rows,
                                 "w_block": [[0] * cols] * rows,
                                 "tag": (b * 16 + i) if streaming else 0})
            if ctx.get(array.result.valid):
                outputs.append((ctx.get(array.result.tag),
                                [ctx.get(array.result.out[c]) for c in range(cols)]))
            await ctx.tick()

    out = simulate(array, program)
    assert [tag for tag, _ in out] == [b * 16 + i for b in range(blocks)
                                      for i in range(block_rows)]
    expected = np.concatenate([x[b] @ w[b] for b in range(blocks)])
    np.testing.assert_array_equal(np.array([v for _, v in out]), expected)


@pytest.mark.parametrize(("rows", "cols"), [(4, 4), (8, 8), (2, 6)])
def test_gemv_weight_streaming_has_no_preload(rows, cols):
    rng = np.random.default_rng(rows + cols)
    steps = 9
    x = rng.integers(-128, 128, (steps, rows))
    wb = rng.integers(-128, 128, (steps, rows, cols))
    array = SystolicArray(rows=rows, cols=cols)
    first_output = {}

    async def program(ctx, outputs):
        ctx.set(array.mode, MatmulMode.GEMV)
        ctx.set(array.load, idle_load(rows, cols))
        for step in range(steps + rows + 2):
            if step < steps:
                ctx.set(array.feed, {"valid": 1, "sel": 0, "x": [int(v) for v in x[step]],
                                     "w_block": [[int(v) for v in row] for row in wb[step]],
                                     "tag": 0})
            else:
                ctx.set(array.feed.valid, 0)
            if ctx.get(array.result.valid):
                first_output.setdefault("step", step)
                outputs.append([ctx.get(array.result.out[c]) for c in range(cols)])
            await ctx.tick()

    out = simulate(array, program)
    np.testing.assert_array_equal(np.array(out), np.einsum("tr,trc->tc", x, wb))
    # a new weight block every cycle, R deep
    assert first_output["step"] == rows == latency(MatmulMode.GEMV, rows, cols)


@pytest.mark.parametrize(("rows", "cols", "gap"), [(4, 4, 0), (8, 8, 3), (16, 16, 12)])
def test_a_gemv_leaves_no_result_for_a_gemm_after_it(rows, cols, gap):
    """GEMV vectors go through a pipeline ``R`` deep, GEMM's ``R + C - 1``: when the mode
    switches to GEMM ``gap`` cycles after a GEMV's last results (fewer than ``C - 1``
    after its last vector plus ``R``), no GEMV vector may come out again as a GEMM
    result. (edge-16x16 did: a GEMV of 2 rows followed by a GEMM added its vectors'
    tags into the GEMM's accumulator rows.)"""
    rng = np.random.default_rng(rows + gap)
    array = SystolicArray(rows=rows, cols=cols, tag_bits=8)
    x = rng.integers(-128, 128, (3, rows))
    wb = rng.integers(-128, 128, (3, rows, cols))

    async def program(ctx, outputs):
        ctx.set(array.load, idle_load(rows, cols))
        ctx.set(array.mode, MatmulMode.GEMV)
        for step in range(3 + rows + gap):
            streaming = step < 3
            ctx.set(array.feed, {"valid": int(streaming), "sel": 0,
                                 "x": [int(v) for v in x[step]] if streaming else [0] * rows,
                                 "w_block": [[int(v) for v in r] for r in wb[step]]
                                 if streaming else [[0] * cols] * rows, "tag": 1})
            if ctx.get(array.result.valid):
                outputs.append(("gemv", ctx.get(array.result.tag)))
            await ctx.tick()
        ctx.set(array.mode, MatmulMode.GEMM)
        for _ in range(rows + cols + 2):
            if ctx.get(array.result.valid):
                outputs.append(("gemm", ctx.get(array.result.tag)))
            await ctx.tick()

    assert simulate(array, program) == [("gemv", 1)] * 3
