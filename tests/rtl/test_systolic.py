"""The hybrid systolic array against NumPy, both dataflows, several shapes.
Amaranth's simulator."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from arch.isa import MatmulMode
from rtl.systolic import SystolicArray


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


@pytest.mark.parametrize(("rows", "cols"), [(4, 4), (8, 8), (4, 8), (3, 5)])
def test_gemm_weight_stationary(rows, cols):
    rng = np.random.default_rng(rows * 10 + cols)
    w = rng.integers(-128, 128, (rows, cols))
    x = rng.integers(-128, 128, (11, rows))
    array = SystolicArray(rows=rows, cols=cols)

    async def program(ctx, outputs):
        ctx.set(array.mode, MatmulMode.GEMM)
        for r in reversed(range(rows)):                    # preload: last row first
            ctx.set(array.w_shift, 1)
            ctx.set(array.w_row, [int(v) for v in w[r]])
            await ctx.tick()
        ctx.set(array.w_shift, 0)
        for step in range(len(x) + rows + cols + 2):
            if step < len(x):
                ctx.set(array.valid, 1)
                ctx.set(array.x, [int(v) for v in x[step]])
            else:
                ctx.set(array.valid, 0)
            if ctx.get(array.out_valid):
                outputs.append([ctx.get(array.out[c]) for c in range(cols)])
            await ctx.tick()

    out = simulate(array, program)
    np.testing.assert_array_equal(np.array(out), x @ w)


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
        for step in range(steps + rows + 2):
            if step < steps:
                ctx.set(array.valid, 1)
                ctx.set(array.x, [int(v) for v in x[step]])
                ctx.set(array.w_block, [[int(v) for v in row] for row in wb[step]])
            else:
                ctx.set(array.valid, 0)
            if ctx.get(array.out_valid):
                first_output.setdefault("step", step)
                outputs.append([ctx.get(array.out[c]) for c in range(cols)])
            await ctx.tick()

    out = simulate(array, program)
    np.testing.assert_array_equal(np.array(out), np.einsum("tr,trc->tc", x, wb))
    assert first_output["step"] == rows          # a new weight block every cycle, R deep
