"""The L2 scratchpad: banked SRAM with one port per engine.

Contract
--------
``L2(params=, n_ports=)`` holds ``hw.l2_bytes`` in ``params.line_banks`` banks of one line
(``params.line_bytes``) each, interleaved by line: line ``a`` lives in bank
``a % line_banks`` at row ``a // line_banks``. Each port (``MemPort``) may issue one
line request per cycle. Requests to different banks proceed in the same cycle; for each
bank the lowest-numbered requesting port wins and the others wait (a bank conflict).
Writes take effect at grant, honouring the byte mask. A read is granted only while the
port's response stream is ready, and its data arrives on the next cycle; clients keep
``rsp.ready`` high while they can take one more line.

Tested by tests/rtl/test_copier.py and tests/rtl/test_accelerator.py (whole L2 read back
and compared).
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from rtl.common import RtlParams, check_params, log2
from rtl.dram import MemPort
from rtl.sram import Sram


class L2(wiring.Component):
    def __init__(self, *, params: RtlParams, n_ports: int):
        check_params(params)
        if n_ports < 1:
            raise ValueError(f"n_ports must be positive, not {n_ports!r}")
        self.params = params
        self.n_ports = n_ports
        super().__init__({f"port{i}": In(MemPort(params.l2_addr_bits, params.line_bytes))
                          for i in range(n_ports)})
        self.banks = [Sram(width_bytes=params.line_bytes, depth=params.bank_depth,
                           macro=params.macros, bank=b) for b in range(params.line_banks)]

    def port(self, i: int):
        return getattr(self, f"port{i}")

    def elaborate(self, platform):
        p = self.params
        m = Module()
        nb = p.line_banks
        bank_bits = log2(nb) if nb > 1 else 0
        ports = [self.port(i) for i in range(self.n_ports)]
        read_data = []
        # For each port: did it get a read grant last cycle, and from which bank?
        rsp_pending = [Signal(name=f"rsp_pending{i}") for i in range(self.n_ports)]
        rsp_bank = [Signal(range(max(nb, 2)), name=f"rsp_bank{i}") for i in range(self.n_ports)]
        granted = [Signal(name=f"granted{i}") for i in range(self.n_ports)]
        for b in range(nb):
            bank = self.banks[b]
            m.submodules[f"bank{b}"] = bank
            read_data.append(bank.rdata)
            # Fixed priority: port i wins bank b when it asks and no lower port does.
            asks = []
            for i, port in enumerate(ports):
                req = port.req
                hits = (req.p.addr[:bank_bits] == b) if bank_bits else 1
                ask = Signal(name=f"ask{b}_{i}")
                m.d.comb += ask.eq(req.valid & hits & (req.p.write | port.rsp.ready))
                asks.append(ask)
            for i, port in enumerate(ports):
                req = port.req
                lower = asks[:i]
                win = asks[i] & ~Cat(*lower).any() if lower else asks[i]
                with m.If(win):
                    m.d.comb += [
                        granted[i].eq(1),
                        bank.raddr.eq(req.p.addr[bank_bits:]),
                        bank.ren.eq(~req.p.write),
                        bank.waddr.eq(req.p.addr[bank_bits:]),
                        bank.wdata.eq(req.p.data),
                    ]
                    with m.If(req.p.write):
                        m.d.comb += bank.wen.eq(req.p.mask)
                    if bank_bits:
                        m.d.sync += rsp_bank[i].eq(b)
        for i, port in enumerate(ports):
            m.d.comb += port.req.ready.eq(granted[i])
            m.d.sync += rsp_pending[i].eq(granted[i] & ~port.req.p.write)
            m.d.comb += port.rsp.valid.eq(rsp_pending[i])
            if nb > 1:
                with m.Switch(rsp_bank[i]):
                    for b in range(nb):
                        with m.Case(b):
                            m.d.comb += port.rsp.payload.eq(read_data[b])
            else:
                m.d.comb += port.rsp.payload.eq(read_data[0])
        return m
