"""The row copier moves runs of bytes at every alignment, DRAM -> L2 and L2 -> DRAM,
leaving the bytes around the run untouched. Amaranth's simulator."""

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import wiring

from arch.hardware import load_hardware
from rtl.common import RtlParams
from rtl.copier import RowCopier
from rtl.dram import DramModel
from rtl.l2 import L2


class Bench(wiring.Component):
    def __init__(self, params, to_l2):
        self.dram = DramModel(params=params)
        self.l2 = L2(params=params, n_ports=1)
        self.copier = RowCopier(params=params, src_l2=not to_l2, dst_l2=to_l2)
        self.to_l2 = to_l2
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dram, m.submodules.l2, m.submodules.copier = self.dram, self.l2, self.copier
        src, dst = (self.dram.port, self.l2.port0) if self.to_l2 else (self.l2.port0,
                                                                       self.dram.port)
        wiring.connect(m, self.copier.src, src)
        wiring.connect(m, self.copier.dst, dst)
        return m


@pytest.mark.parametrize("to_l2", [True, False])
def test_copies_at_every_alignment(l2sim, to_l2):
    hw = load_hardware("edge-8x8").replace(l2_bytes=4096, dram_latency_cycles=5)
    params = RtlParams(hw, dram_bytes=4096)
    W = params.line_bytes
    bench = Bench(params, to_l2)
    rng = np.random.default_rng(0)
    src_mem = rng.integers(0, 256, 4096, dtype=np.uint8)
    dst_mem = rng.integers(0, 256, 4096, dtype=np.uint8)
    cases = [(0, 0, 1), (3, 70, 29), (70, 3, 100), (64, 64, 64), (5, 37, 200), (100, 0, 31),
             (0, 31, 2), (33, 1, 500)]
    expected = dst_mem.copy()
    for src, dst, n in cases:
        expected[dst:dst + n] = src_mem[src:src + n]

    dram = bench.dram.storage.memory

    async def testbench(ctx):
        l2_mem, dram_mem = (dst_mem, src_mem) if to_l2 else (src_mem, dst_mem)
        l2sim.load(ctx, bench.l2, l2_mem)
        for i, value in enumerate(l2sim.lines(dram_mem, W)):
            ctx.set(dram.data[i], value)
        cmd = bench.copier.cmd
        for src, dst, n in cases:                  # back to back: the copier pipelines them
            ctx.set(cmd.valid, 1)
            ctx.set(cmd.payload, {"src": src, "dst": dst, "n": n})
            await ctx.tick().until(cmd.ready)
        ctx.set(cmd.valid, 0)
        await ctx.tick()
        await ctx.tick().until(bench.copier.idle)
        if to_l2:
            result["dst"] = l2sim.dump(ctx, bench.l2, dst_mem.size)
        else:
            raw = b"".join(int(ctx.get(dram.data[i])).to_bytes(W, "little")
                           for i in range(dst_mem.size // W))
            result["dst"] = np.frombuffer(raw, np.uint8)

    result = {}
    l2sim.run(bench, testbench)
    np.testing.assert_array_equal(result["dst"], expected)


def test_row_reader_streams_rows_realigned(l2sim):
    """dst_stream: L2 rows at any alignment arrive as beats starting at byte 0."""
    from amaranth.lib import wiring as w

    hw = load_hardware("edge-8x8").replace(l2_bytes=4096)
    params = RtlParams(hw, dram_bytes=4096)
    W = params.line_bytes

    class ReaderBench(w.Component):
        def __init__(self):
            self.l2 = L2(params=params, n_ports=1)
            self.reader = RowCopier(params=params, src_l2=True, dst_stream=True)
            super().__init__({})

        def elaborate(self, platform):
            m = Module()
            m.submodules.l2, m.submodules.reader = self.l2, self.reader
            w.connect(m, self.reader.src, self.l2.port0)
            return m

    bench = ReaderBench()
    rng = np.random.default_rng(5)
    mem = rng.integers(0, 256, 4096, dtype=np.uint8)
    rows = [(7, 3), (100, 64), (33, 95), (0, 1), (250, 200)]
    got = []

    async def testbench(ctx):
        l2sim.load(ctx, bench.l2, mem)
        out = bench.reader.out
        ctx.set(out.ready, 1)
        issued, beats = 0, []
        for _ in range(400):
            if issued < len(rows):
                src, n = rows[issued]
                ctx.set(bench.reader.cmd.valid, 1)
                ctx.set(bench.reader.cmd.payload, {"src": src, "dst": 0, "n": n})
            else:
                ctx.set(bench.reader.cmd.valid, 0)
            _, _, ready, valid, payload = await ctx.tick().sample(
                bench.reader.cmd.ready, out.valid, out.payload)
            if issued < len(rows) and ready:
                issued += 1
            if valid:
                raw = int(payload.data).to_bytes(W, "little")
                beats.append(bytes(b for i, b in enumerate(raw) if payload.mask >> i & 1))
                if payload.last:
                    got.append(b"".join(beats))
                    beats = []

    l2sim.run(bench, testbench)
    assert got == [mem[src:src + n].tobytes() for src, n in rows]


def test_row_writer_writes_streamed_rows_at_any_alignment(l2sim):
    """src_stream: rows streamed from byte 0 land in L2 at any alignment, neighbours kept."""
    from amaranth.lib import wiring as w

    hw = load_hardware("edge-8x8").replace(l2_bytes=4096)
    params = RtlParams(hw, dram_bytes=4096)
    W = params.line_bytes

    class WriterBench(w.Component):
        def __init__(self):
            self.l2 = L2(params=params, n_ports=1)
            self.writer = RowCopier(params=params, dst_l2=True, src_stream=True)
            super().__init__({})

        def elaborate(self, platform):
            m = Module()
            m.submodules.l2, m.submodules.writer = self.l2, self.writer
            w.connect(m, self.writer.dst, self.l2.port0)
            return m

    bench = WriterBench()
    rng = np.random.default_rng(6)
    mem = rng.integers(0, 256, 4096, dtype=np.uint8)
    rows = [(9, 3), (130, 64), (301, 95), (640, 1), (777, 200)]
    payloads = [rng.integers(0, 256, n, dtype=np.uint8) for _, n in rows]
    expected = mem.copy()
    for (dst, n), data_ in zip(rows, payloads, strict=True):
        expected[dst:dst + n] = data_
    result = {}

    async def testbench(ctx):
        l2sim.load(ctx, bench.l2, mem)
        for (dst, n), data_ in zip(rows, payloads, strict=True):
            ctx.set(bench.writer.cmd.valid, 1)
            ctx.set(bench.writer.cmd.payload, {"src": 0, "dst": dst, "n": n})
            await ctx.tick().until(bench.writer.cmd.ready)
            ctx.set(bench.writer.cmd.valid, 0)
            padded = np.concatenate([data_, np.zeros((-n) % W, np.uint8)])
            for beat in l2sim.lines(padded, W):
                ctx.set(bench.writer.inp.valid, 1)
                ctx.set(bench.writer.inp.payload, beat)
                await ctx.tick().until(bench.writer.inp.ready)
            ctx.set(bench.writer.inp.valid, 0)
        await ctx.tick().until(bench.writer.idle)
        result["mem"] = l2sim.dump(ctx, bench.l2, mem.size)

    l2sim.run(bench, testbench)
    np.testing.assert_array_equal(result["mem"], expected)
