"""The DRAM model: data round-trips, bandwidth is the configured bytes per cycle, read
data takes the configured latency. Amaranth's simulator."""

from amaranth.sim import Simulator

from arch.hardware import load_hardware
from rtl.common import RtlParams
from rtl.dram import DramModel


def make(bytes_per_cycle=8, latency=10):
    hw = load_hardware("edge-4x4").replace(dram_bytes_per_cycle=bytes_per_cycle,
                                           dram_latency_cycles=latency)
    return DramModel(params=RtlParams(hw, dram_bytes=4096))


def test_bandwidth_latency_and_data():
    dut = make()
    W = dut.params.line_bytes
    lines = [(i * 0x0123456789ABCDEF) % (1 << (8 * W)) for i in range(8)]
    log = {}

    async def testbench(ctx):
        req = dut.port.req
        # writes: one line per request; bandwidth 8 B/cycle -> one line per W/8 cycles
        ctx.set(dut.port.rsp.ready, 1)
        start = None
        for i, value in enumerate(lines):
            ctx.set(req.valid, 1)
            ctx.set(req.payload, {"addr": i, "write": 1, "data": value, "mask": (1 << W) - 1})
            while True:
                await ctx.tick()
                if start is None:
                    start = ctx.get(dut.busy_cycles)
                if ctx.get(dut.busy_cycles) > i:
                    break
        ctx.set(req.valid, 0)
        # reads: issue all, collect responses with their arrival cycle
        t, issued, got = 0, 0, []
        while len(got) < len(lines):
            if issued < len(lines):
                ctx.set(req.valid, 1)
                ctx.set(req.payload, {"addr": issued, "write": 0, "data": 0, "mask": 0})
            else:
                ctx.set(req.valid, 0)
            _, _, req_ready, rsp_valid, rsp_data = await ctx.tick().sample(
                req.ready, dut.port.rsp.valid, dut.port.rsp.payload)
            if issued < len(lines) and req_ready:
                issued += 1
                log.setdefault("first_issue", t)
            if rsp_valid:
                got.append(rsp_data)
                log.setdefault("first_data", t)
            t += 1
            assert t < 500
        log["data"] = got
        log["cycles"] = t

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(testbench)
    sim.run()
    assert log["data"] == lines
    assert log["first_data"] - log["first_issue"] >= 10          # latency
    # 8 reads of one line each at 8 bytes/cycle: the latency, then a line every W/8 cycles
    W = dut.params.line_bytes
    assert log["cycles"] - log["first_issue"] >= 10 + 7 * W // 8
