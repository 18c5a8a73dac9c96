"""The controller's dependency tokens, in Amaranth's simulator: a DMA engine may have
several instructions begun and not yet ended (their ENDs are deferred until their rows
are written), so the signals they will send count against the counter's limit at begin."""

from amaranth.sim import Simulator

from arch.hardware import load_hardware
from arch.isa import Engine
from rtl.common import RtlParams
from rtl.controller import Controller

LOAD, COMPUTE = int(Engine.LOAD), int(Engine.COMPUTE)


def test_deferred_signals_are_reserved_at_begin():
    hw = load_hardware("edge-4x4").replace(token_counter_bits=2)       # at most 3 tokens
    dut = Controller(params=RtlParams(hw, 1 << 20))
    load, compute = dut.tokens(LOAD), dut.tokens(COMPUTE)
    trace = {}

    async def bench(ctx):
        async def begin(port, wait=0, signal=0):
            ctx.set(port.wait, wait)
            ctx.set(port.signal, signal)
            ctx.set(port.begin, 1)
            allowed = ctx.get(port.allowed)
            await ctx.tick()
            ctx.set(port.begin, 0)
            return bool(allowed)

        async def end(port, signal):
            ctx.set(port.end_signal, signal)
            ctx.set(port.end, 1)
            await ctx.tick()
            ctx.set(port.end, 0)

        to_compute = 1 << COMPUTE
        # Three loads that signal compute begin; none has ended yet.
        trace["first three"] = [await begin(load, signal=to_compute) for _ in range(3)]
        trace["fourth"] = await begin(load, signal=to_compute)        # would overflow
        await end(load, to_compute)                                   # one token, two pending
        trace["after one end"] = await begin(load, signal=to_compute)
        trace["compute takes it"] = await begin(compute, wait=1 << LOAD)
        trace["then the fourth"] = await begin(load, signal=to_compute)
        trace["compute without a token"] = await begin(compute, wait=1 << LOAD)
        for _ in range(3):
            await end(load, to_compute)
        trace["compute after three ends"] = [await begin(compute, wait=1 << LOAD)
                                             for _ in range(4)]

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()
    assert trace == {
        "first three": [True, True, True],
        "fourth": False,
        "after one end": False,
        "compute takes it": True,
        "then the fourth": True,
        "compute without a token": False,
        "compute after three ends": [True, True, True, False],
    }
