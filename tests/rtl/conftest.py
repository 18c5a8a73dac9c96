"""Shared plumbing for the RTL unit tests in Amaranth's simulator: lines of a byte
array, loading and reading back an ``L2``'s banks, waiting for a ``done`` signal,
running a testbench with a clock, and running one compute instruction on a unit wired to
an L2 next to the ISA simulator."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from compiler.asm import encode
from compiler.isasim import IsaSimulator
from rtl.l2 import L2


class UnitBench(wiring.Component):
    """A compute unit (``port(i)``, ``word``, ``start``, ``done``) on its own L2, with
    ``extra_ports`` more L2 ports below the unit's in priority for the testbench."""

    def __init__(self, params, unit, n_ports, extra_ports=0):
        self.l2 = L2(params=params, n_ports=n_ports + extra_ports)
        self.unit = unit
        self.n_ports = n_ports
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.l2, m.submodules.unit = self.l2, self.unit
        for i in range(self.n_ports):
            wiring.connect(m, self.unit.port(i), self.l2.port(i))
        return m


class L2Sim:
    @staticmethod
    def lines(buf: np.ndarray, line_bytes: int) -> list[int]:
        """The little-endian lines of a byte array."""
        return [int.from_bytes(buf[i:i + line_bytes].tobytes(), "little")
                for i in range(0, buf.size, line_bytes)]

    @staticmethod
    def load(ctx, l2, mem: np.ndarray) -> None:
        """Write ``mem`` into the L2's banks from byte 0 (line ``i`` in bank ``i % n``)."""
        nb, W = l2.params.line_banks, l2.params.line_bytes
        for i, value in enumerate(L2Sim.lines(mem, W)):
            ctx.set(l2.banks[i % nb].memory.data[i // nb], value)

    @staticmethod
    def dump(ctx, l2, nbytes: int) -> np.ndarray:
        """The first ``nbytes`` of the L2, read back from its banks."""
        nb, W = l2.params.line_banks, l2.params.line_bytes
        raw = bytearray()
        for i in range(nbytes // W):
            raw += int(ctx.get(l2.banks[i % nb].memory.data[i // nb])).to_bytes(W, "little")
        return np.frombuffer(bytes(raw), np.uint8)

    @staticmethod
    async def wait(ctx, signal, limit: int) -> bool:
        """Tick until ``signal`` is high; False if it is not within ``limit`` cycles."""
        for _ in range(limit):
            if ctx.get(signal):
                return True
            await ctx.tick()
        return False

    @staticmethod
    def run(dut, testbench) -> None:
        """Simulate ``dut`` with a clock until ``testbench`` returns."""
        sim = Simulator(dut)
        sim.add_clock(1e-9)
        sim.add_testbench(testbench)
        sim.run()

    @staticmethod
    def _drive(params, unit, n_ports, cases, limit, watch=None, dump=False):
        """Each ``(mem, instr)`` of ``cases`` run one after another on one simulation of
        ``unit`` (the L2 reloaded with each ``mem``): ``(cycles from start to done,
        the L2 after it if dump)`` per case. ``watch(ctx, case, cycle)``, if given, is
        called on every cycle from ``start`` (cycle 1) until ``done``."""
        bench = UnitBench(params, unit, n_ports)
        out = []

        async def testbench(ctx):
            for case, (mem, instr) in enumerate(cases):
                L2Sim.load(ctx, bench.l2, mem)
                ctx.set(bench.unit.word, int.from_bytes(encode(instr), "little"))
                ctx.set(bench.unit.start, 1)
                await ctx.tick()
                ctx.set(bench.unit.start, 0)
                n = 1
                while not ctx.get(bench.unit.done):
                    assert n < limit, f"{instr}: no done within {limit} cycles"
                    if watch is not None:
                        watch(ctx, case, n)
                    await ctx.tick()
                    n += 1
                await ctx.tick()
                out.append((n, L2Sim.dump(ctx, bench.l2, mem.size) if dump else None))

        L2Sim.run(bench, testbench)
        return out

    @staticmethod
    def run_cycles(params, unit, n_ports, cases, limit=50_000, watch=None):
        """The cycles from ``start`` to ``done`` of each ``(mem, instr)`` of ``cases``, run
        one after another on one simulation of ``unit`` (the L2 reloaded with each
        ``mem``), without the ISA simulator: for timing alone (``watch`` as
        ``run_instructions``')."""
        return [n for n, _ in L2Sim._drive(params, unit, n_ports, cases, limit, watch)]

    @staticmethod
    def run_instructions(params, unit, n_ports, cases, limit=50_000, watch=None):
        """``[(RTL L2 after instr, ISA simulator L2 after instr)]`` for each ``(mem,
        instr)`` of ``cases``, run one after another on one simulation of ``unit`` (the
        L2 reloaded with each ``mem``): building Amaranth's simulator of a unit costs
        more than running it (7.5 s for the vector unit, 1.5 s for the matmul unit).
        ``watch(ctx, case, cycle)``, if given, is called on every cycle from ``start``
        (cycle 1) until ``done``."""
        expected = []
        for mem, instr in cases:
            sim = IsaSimulator(params.hw, bytes(64))
            sim.l2[:] = mem
            sim.execute(instr)
            expected.append(sim.l2)
        rtl = [l2 for _, l2 in L2Sim._drive(params, unit, n_ports, cases, limit, watch,
                                            dump=True)]
        return list(zip(rtl, expected, strict=True))


@pytest.fixture(scope="session")
def l2sim():
    return L2Sim


@pytest.fixture(scope="session")
def unit_bench():
    return UnitBench
