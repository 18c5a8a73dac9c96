"""Memory ports, and the simulation-only DRAM model with configured bandwidth and latency.

Contract
--------
``MemPort(addr_bits, line_bytes)`` is the signature every memory client uses (DRAM and
L2 alike): a request stream (``addr`` of a line, ``write``, ``data``, byte ``mask``) and
a response stream carrying the data of read requests, in request order.

``DramModel(params)`` serves one such port from ``params.dram_words`` lines of storage.
Each cycle it earns ``dram_bytes_per_cycle`` bytes of credit (capped at one line plus
one cycle's worth); a request is accepted only with a full line of credit, so the
sustained bandwidth is exactly the configured one. Read data is released
``dram_latency_cycles`` after acceptance. ``busy_cycles`` counts cycles in which a
request was accepted. The storage (``storage``, an ``Sram``) is loaded and read back by
the testbench, not through a port: through ``lib.memory`` in Amaranth's simulator, and
through the SRAM macro's file backdoor in Verilator builds.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from arch import isa
from arch.uarch import dram_queue_lines
from rtl.common import RtlParams, check_params
from rtl.sram import Sram


def req_layout(addr_bits: int, line_bytes: int) -> data.StructLayout:
    return data.StructLayout({"addr": addr_bits, "write": 1, "data": 8 * line_bytes,
                              "mask": line_bytes})


class MemPort(wiring.Signature):
    """A memory client's port: requests out, read data in."""

    def __init__(self, addr_bits: int, line_bytes: int):
        super().__init__({
            "req": Out(stream.Signature(req_layout(addr_bits, line_bytes))),
            "rsp": In(stream.Signature(8 * line_bytes)),
        })


class DramModel(wiring.Component):
    """Simulation-only DRAM: bandwidth by credits, latency by timestamps.

    Members
    -------
    port : ``In(MemPort)`` — the accelerator's DRAM port.
    busy_cycles : ``Out(64)`` — cycles in which a request was accepted.
    """

    def __init__(self, *, params: RtlParams):
        check_params(params)
        self.params = params
        hw = params.hw
        self.latency = hw.dram_latency_cycles
        self.depth = dram_queue_lines(self.latency)
        super().__init__({
            "port": In(MemPort(params.dram_addr_bits, params.line_bytes)),
            "busy_cycles": Out(isa.COUNTER_BITS),
        })
        self.storage = Sram(width_bytes=params.line_bytes, depth=params.dram_words,
                            macro=params.macros, backdoor=True)

    def elaborate(self, platform):
        p, hw = self.params, self.params.hw
        m = Module()
        m.submodules.storage = storage = self.storage
        m.submodules.queue = queue = fifo.SyncFIFOBuffered(width=p.line_bits + 32,
                                                           depth=self.depth)
        now = Signal(32)
        m.d.sync += now.eq(now + 1)

        cap = p.line_bytes + hw.dram_bytes_per_cycle
        credit = Signal(range(cap + 1), init=cap)
        in_flight = Signal(range(self.depth + 2))
        req = self.port.req
        room = (queue.level + in_flight) < self.depth
        accept = Signal()
        m.d.comb += [
            accept.eq(req.valid & (credit >= p.line_bytes) & (req.p.write | room)),
            req.ready.eq(accept),
            storage.raddr.eq(req.p.addr),
            storage.ren.eq(accept & ~req.p.write),
            storage.waddr.eq(req.p.addr),
            storage.wdata.eq(req.p.data),
            storage.wen.eq(Mux(accept & req.p.write, req.p.mask, 0)),
        ]
        earned = credit + hw.dram_bytes_per_cycle - Mux(accept, p.line_bytes, 0)
        m.d.sync += credit.eq(Mux(earned > cap, cap, earned))
        with m.If(accept):
            m.d.sync += self.busy_cycles.eq(self.busy_cycles + 1)

        # The memory's read data arrives one cycle after acceptance; queue it with the
        # time it may leave.
        pending = Signal()
        due = Signal(32)
        m.d.sync += [pending.eq(accept & ~req.p.write), due.eq(now + self.latency)]
        m.d.comb += [queue.w_en.eq(pending), queue.w_data.eq(storage.rdata | (due << p.line_bits))]
        m.d.sync += in_flight.eq(in_flight + (accept & ~req.p.write) - pending)

        head_due = queue.r_data[p.line_bits:]
        ready_now = (now - head_due)[31] == 0            # now >= due (modulo 2**32)
        rsp = self.port.rsp
        m.d.comb += [
            rsp.valid.eq(queue.r_rdy & ready_now),
            rsp.payload.eq(queue.r_data[:p.line_bits]),
            queue.r_en.eq(rsp.valid & rsp.ready),
        ]
        return m
