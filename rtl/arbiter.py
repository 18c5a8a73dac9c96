"""A round-robin arbiter that shares one memory port among several clients.

Contract
--------
``PortArbiter(addr_bits=, line_bytes=, n=)`` connects ``n`` client ports (``In(MemPort)``)
to one memory port (``Out(MemPort)``). Each cycle the next client after the last
winner that has a request is granted; the ids of granted reads are queued so that read
data returns to the client that asked, in order. ``max_reads`` bounds the reads in
flight (the queue depth).

Tested by tests/rtl/test_copier.py and tests/rtl/test_accelerator.py (the L2 and DRAM
ports it shares between engines, in every whole-accelerator run).
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from rtl.dram import MemPort


class PortArbiter(wiring.Component):
    def __init__(self, *, addr_bits: int, line_bytes: int, n: int, max_reads: int = 256):
        for name, value in (("addr_bits", addr_bits), ("line_bytes", line_bytes), ("n", n),
                            ("max_reads", max_reads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, not {value!r}")
        self.n = n
        self.max_reads = max_reads
        members = {f"client{i}": In(MemPort(addr_bits, line_bytes)) for i in range(n)}
        members["mem"] = Out(MemPort(addr_bits, line_bytes))
        super().__init__(members)

    def client(self, i: int):
        return getattr(self, f"client{i}")

    def elaborate(self, platform):
        m = Module()
        clients = [self.client(i) for i in range(self.n)]
        m.submodules.ids = ids = fifo.SyncFIFOBuffered(width=max(1, (self.n - 1).bit_length()),
                                                       depth=self.max_reads)
        last = Signal(range(self.n))
        choice = Signal(range(self.n))
        any_req = Signal()
        # Round robin: scan clients starting after the last winner.
        for step in reversed(range(self.n)):
            for i in range(self.n):
                with m.If(last == (i - 1 - step) % self.n):
                    with m.If(clients[i].req.valid):
                        m.d.comb += [choice.eq(i), any_req.eq(1)]
        mem = self.mem
        with m.Switch(choice):
            for i, c in enumerate(clients):
                with m.Case(i):
                    m.d.comb += [mem.req.payload.eq(c.req.payload)]
        writing = mem.req.p.write
        m.d.comb += mem.req.valid.eq(any_req & (writing | ids.w_rdy))
        for i, c in enumerate(clients):
            m.d.comb += c.req.ready.eq((choice == i) & any_req & mem.req.ready
                                       & (writing | ids.w_rdy))
        granted = mem.req.valid & mem.req.ready
        m.d.comb += [ids.w_en.eq(granted & ~writing), ids.w_data.eq(choice)]
        with m.If(granted):
            m.d.sync += last.eq(choice)
        # Read data back to its client.
        for i, c in enumerate(clients):
            m.d.comb += [c.rsp.payload.eq(mem.rsp.payload),
                         c.rsp.valid.eq(mem.rsp.valid & ids.r_rdy & (ids.r_data == i))]
            with m.If(ids.r_rdy & (ids.r_data == i)):
                m.d.comb += mem.rsp.ready.eq(c.rsp.ready)
        m.d.comb += ids.r_en.eq(mem.rsp.valid & mem.rsp.ready & ids.r_rdy)
        return m
