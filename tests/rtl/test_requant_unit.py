"""The REQUANT unit against models.numerics: per-channel and scalar parameters, bias,
int8 and int16 results, rows at arbitrary alignment. Amaranth's simulator."""

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import wiring

from compiler.hardware import load_hardware
from compiler.isa import pack_param
from models import numerics as N
from rtl.common import RtlParams
from rtl.l2 import L2
from rtl.requant_unit import RequantUnit

PARAMS = RtlParams(load_hardware("edge-8x8").replace(l2_bytes=8192), dram_bytes=4096)


class Bench(wiring.Component):
    def __init__(self):
        self.l2 = L2(PARAMS, 4)
        self.unit = RequantUnit(PARAMS)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.l2, m.submodules.unit = self.l2, self.unit
        for i, name in enumerate(("src_port", "param_port", "bias_port", "dst_port")):
            wiring.connect(m, getattr(self.unit, name), self.l2.port(i))
        return m


@pytest.mark.parametrize(("rows", "cols", "out16", "per_channel", "has_bias"), [
    (3, 21, 0, 1, 0), (2, 37, 1, 1, 1), (4, 8, 0, 0, 0), (1, 65, 1, 0, 1), (5, 3, 0, 1, 1),
])
def test_requant_unit_matches_numerics(l2sim, rows, cols, out16, per_channel, has_bias):
    rng = np.random.default_rng(rows * 100 + cols)
    mem = rng.integers(0, 256, 8192, dtype=np.uint8)
    src_addr, src_stride = 13, 4 * cols + 20
    dst_addr, dst_stride = 3001, cols * (2 if out16 else 1) + 7
    param_addr, bias_addr = 5003, 6101
    acc = rng.integers(-2 ** 22, 2 ** 22, (rows, cols)).astype(np.int32)
    n_words = cols if per_channel else 1
    mult, shift = N.quantize_multiplier(rng.uniform(1e-5, 1e-3, n_words))
    bias = rng.integers(-5000, 5000, cols).astype(np.int32)
    for r in range(rows):
        mem[src_addr + r * src_stride:src_addr + r * src_stride + 4 * cols] = acc[r].view(np.uint8)
    words = np.array([pack_param(m_, s_) for m_, s_ in zip(mult, shift, strict=True)], "<i4")
    mem[param_addr:param_addr + 4 * n_words] = words.view(np.uint8)
    mem[bias_addr:bias_addr + 4 * cols] = bias.view(np.uint8)
    expected = mem.copy()
    out = N.requant(acc, mult, shift, 16 if out16 else 8, bias=bias if has_bias else None, xp=np)
    width = 2 if out16 else 1
    for r in range(rows):
        expected[dst_addr + r * dst_stride:dst_addr + r * dst_stride + width * cols] = \
            out[r].view(np.uint8)

    bench = Bench()
    result = {}

    async def testbench(ctx):
        l2sim.load(ctx, bench.l2, mem)
        u = bench.unit
        for name, value in dict(src_addr=src_addr, dst_addr=dst_addr, param_addr=param_addr,
                                bias_addr=bias_addr, rows=rows, cols=cols,
                                src_stride=src_stride, dst_stride=dst_stride, out16=out16,
                                per_channel=per_channel, has_bias=has_bias).items():
            ctx.set(getattr(u, name), value)
        ctx.set(u.start, 1)
        await ctx.tick()
        ctx.set(u.start, 0)
        result["done"] = await l2sim.wait(ctx, u.done, 5000)
        result["mem"] = l2sim.dump(ctx, bench.l2, 8192)

    l2sim.run(bench, testbench)
    assert result["done"], "the unit did not finish"
    np.testing.assert_array_equal(result["mem"], expected)
