"""Shared plumbing for the RTL unit tests in Amaranth's simulator: lines of a byte
array, loading and reading back an ``L2``'s banks, waiting for a ``done`` signal, and
running a testbench with a clock."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator


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


@pytest.fixture
def l2sim():
    return L2Sim
