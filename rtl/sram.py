"""An SRAM: ``lib.memory`` in Amaranth's simulator, a macro model in Verilator builds.

Contract
--------
``Sram(width_bytes=, depth=, macro=, backdoor=False)`` has one synchronous read port
(``ren``, ``raddr``, ``rdata`` valid the next cycle, held while ``ren`` is low) and one
write port with a byte-enable mask (``wen``, ``waddr``, ``wdata``); a read and a write of
the same row in one cycle return the old data. With ``macro=False`` it is an
``amaranth.lib.memory`` (``self.memory``, reachable from Amaranth testbenches); with
``macro=True`` it instantiates ``rtl/verilog/sram_macro.v``, the behavioural model of an
SRAM compiler's macro: large memories then cost Yosys and Verilator nothing to
elaborate, and the synthesis statistics count them as macros (their bits are reported
separately), as a real flow does. ``backdoor=True`` (the simulation DRAM's storage)
gives the macro its file backdoor: loaded from ``+dram_image=`` at time zero and written
to ``+dram_dump=`` at the end of the simulation; ``bank=i`` (an L2 bank) writes its
contents to ``<prefix>.<i>.hex`` at the end, ``+l2_dump=<prefix>`` (see
``sram_macro.v``).

Tested by tests/rtl/test_copier.py (through the L2, as lib.memory) and
tests/rtl/test_tiny_rtl.py (macro models under Verilator).
"""

from __future__ import annotations

from pathlib import Path

from amaranth import ClockSignal, Instance, Module
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

MACRO_SOURCE = Path(__file__).resolve().parent / "verilog" / "sram_macro.v"


class Sram(wiring.Component):
    def __init__(self, *, width_bytes: int, depth: int, macro: bool, backdoor: bool = False,
                 bank: int | None = None):
        if not all(isinstance(v, int) and v >= 1 for v in (width_bytes, depth)):
            raise ValueError(f"an SRAM needs positive width and depth, not {width_bytes}x{depth}")
        if backdoor and bank is not None:
            raise ValueError("an SRAM is the DRAM's storage (backdoor) or an L2 bank, not both")
        self.bank = bank
        self.width_bytes = width_bytes
        self.depth = depth
        self.macro = macro
        self.backdoor = backdoor
        self.addr_bits = max(1, (depth - 1).bit_length())
        super().__init__({
            "ren": In(1), "raddr": In(self.addr_bits), "rdata": Out(8 * width_bytes),
            "wen": In(width_bytes), "waddr": In(self.addr_bits), "wdata": In(8 * width_bytes),
        })
        self.memory = None if macro else memory.Memory(shape=8 * width_bytes, depth=depth,
                                                       init=[])

    @property
    def bits(self) -> int:
        return 8 * self.width_bytes * self.depth

    def elaborate(self, platform):
        m = Module()
        if self.macro:
            m.submodules.macro = Instance(
                "sram_macro",
                p_WIDTH_BYTES=self.width_bytes, p_DEPTH=self.depth, p_ADDR_BITS=self.addr_bits,
                p_BACKDOOR=1 if self.backdoor else 2 if self.bank is not None else 0,
                p_BANK=self.bank or 0,
                i_clk=ClockSignal(), i_ren=self.ren, i_raddr=self.raddr, o_rdata=self.rdata,
                i_wen=self.wen, i_waddr=self.waddr, i_wdata=self.wdata)
            return m
        m.submodules.memory = self.memory
        rd = self.memory.read_port()
        wr = self.memory.write_port(granularity=8)
        m.d.comb += [rd.en.eq(self.ren), rd.addr.eq(self.raddr), self.rdata.eq(rd.data),
                     wr.en.eq(self.wen), wr.addr.eq(self.waddr), wr.data.eq(self.wdata)]
        return m
