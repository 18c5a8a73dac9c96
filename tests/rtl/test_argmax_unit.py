"""The ARGMAX unit against models.numerics.argmax: ties keep the first index, negative
rows, lengths that do not fill a beat, misaligned rows. Amaranth's simulator."""

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import wiring

from compiler.hardware import load_hardware
from models import numerics as N
from rtl.argmax_unit import ArgmaxUnit
from rtl.common import RtlParams
from rtl.l2 import L2

PARAMS = RtlParams(load_hardware("edge-8x8").replace(l2_bytes=4096), dram_bytes=4096)


class Bench(wiring.Component):
    def __init__(self):
        self.l2 = L2(PARAMS, 2)
        self.unit = ArgmaxUnit(PARAMS)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.l2, m.submodules.unit = self.l2, self.unit
        wiring.connect(m, self.unit.src_port, self.l2.port0)
        wiring.connect(m, self.unit.dst_port, self.l2.port1)
        return m


@pytest.mark.parametrize(("n", "src", "kind"), [
    (65, 7, "random"), (16, 32, "random"), (1, 3, "random"), (300, 101, "ties"),
    (40, 0, "negative"), (17, 31, "last"),
])
def test_argmax_unit_matches_numerics(l2sim, n, src, kind):
    rng = np.random.default_rng(n + src)
    values = rng.integers(-30000, 30000, n).astype(np.int16)
    if kind == "ties":
        values = rng.integers(-3, 3, n).astype(np.int16)
    elif kind == "negative":
        values = rng.integers(-32768, -100, n).astype(np.int16)
    elif kind == "last":
        values[-1] = 32767
    mem = rng.integers(0, 256, 4096, dtype=np.uint8)
    mem[src:src + 2 * n] = values.view(np.uint8)
    dst = 2003
    bench = Bench()
    result = {}

    async def testbench(ctx):
        l2sim.load(ctx, bench.l2, mem)
        u = bench.unit
        ctx.set(u.src_addr, src)
        ctx.set(u.n, n)
        ctx.set(u.dst_addr, dst)
        ctx.set(u.start, 1)
        await ctx.tick()
        ctx.set(u.start, 0)
        result["done"] = await l2sim.wait(ctx, u.done, 2000)
        result["mem"] = l2sim.dump(ctx, bench.l2, 4096)

    l2sim.run(bench, testbench)
    assert result["done"], "the unit did not finish"
    expected = mem.copy()
    expected[dst:dst + 4] = np.array([N.argmax(values, xp=np)], "<i4").view(np.uint8)
    np.testing.assert_array_equal(result["mem"], expected)
