"""The assembled accelerator, and the simulation top with its DRAM model.

Contract
--------
``Accelerator(params)`` joins the controller, the load and store engines, the L2 and a
round-robin arbiter on the one DRAM port (fetch, each engine's data and auxiliary
ports, and the controller's reads of a ``KV_LIVE`` map). It exposes
``start``/``pc``/``done``/``error``/``error_code``/``error_index`` and the performance
counters of ``arch.isa.COUNTERS`` as ``counter_<name>``. ``dram_read_bytes`` and
``dram_write_bytes`` count bus bytes (whole lines, instruction fetch included), which is
what the DRAM model moves; ``cycles`` counts cycles from ``start`` to ``done``.

The compute engine (``rtl.compute``: the matmul unit around the hybrid systolic array,
and the vector unit) has its own L2 ports; L2 bank conflicts are resolved by port
priority: the compute engine's ports, then the store engine, then the load engine.

``SimTop(params)`` is the accelerator with a ``DramModel`` on its DRAM port: the
Verilator model the cocotb benches load, start and read back. Its reset is generated
inside (held for the first cycles after power-on) rather than being a port, and
``start``/``pc`` are registered: Verilator re-evaluates all logic that depends
combinationally on a top-level input at every clock edge (and every flip-flop's reset
multiplexer depends on the reset).

Tested by tests/rtl/test_accelerator.py and tests/rtl/test_tiny_rtl.py (the whole
accelerator under Verilator).
"""

from __future__ import annotations

from amaranth import Cat, ClockDomain, ClockSignal, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from arch import isa
from arch.uarch import RESET_CYCLES
from rtl.arbiter import PortArbiter
from rtl.common import RtlParams, check_params
from rtl.compute import ComputeEngine
from rtl.controller import Controller
from rtl.decode import INDEX_BITS
from rtl.dma import DmaEngine
from rtl.dram import DramModel, MemPort
from rtl.l2 import L2


class Accelerator(wiring.Component):
    def __init__(self, *, params: RtlParams):
        check_params(params)
        self.params = params
        members = {
            "start": In(1), "pc": In(isa.DRAM_ADDR_BITS),
            "done": Out(1), "running": Out(1), "error": Out(1),
            "error_code": Out(isa.ErrorCode.as_shape()),
            "error_index": Out(INDEX_BITS),
            "dram": Out(MemPort(params.dram_addr_bits, params.line_bytes)),
        }
        for name in isa.COUNTERS:
            members[f"counter_{name}"] = Out(isa.COUNTER_BITS)
        super().__init__(members)

    def elaborate(self, platform):
        p = self.params
        m = Module()
        m.submodules.controller = ctl = Controller(params=p)
        m.submodules.load = load = DmaEngine(params=p, direction="load")
        m.submodules.store = store = DmaEngine(params=p, direction="store")
        m.submodules.compute = compute = ComputeEngine(params=p)
        m.submodules.l2 = l2 = L2(params=p, n_ports=2 + ComputeEngine.N_PORTS)
        m.submodules.dram_arbiter = arb = PortArbiter(addr_bits=p.dram_addr_bits,
                                                      line_bytes=p.line_bytes, n=6)

        m.d.comb += [ctl.start.eq(self.start), ctl.pc.eq(self.pc), self.done.eq(ctl.done),
                     self.running.eq(ctl.running), self.error.eq(ctl.error),
                     self.error_code.eq(ctl.error_code), self.error_index.eq(ctl.error_index)]
        wiring.connect(m, ctl.fetch, arb.client0)
        wiring.connect(m, load.dram, arb.client1)
        wiring.connect(m, store.dram, arb.client2)
        wiring.connect(m, load.aux, arb.client3)
        wiring.connect(m, store.aux, arb.client4)
        wiring.connect(m, ctl.map_rd, arb.client5)
        wiring.connect(m, load.live, ctl.live_load)
        wiring.connect(m, store.live, ctl.live_store)
        wiring.connect(m, arb.mem, wiring.flipped(self.dram))
        # The compute engine's ports win bank conflicts: a DMA engine that waits for a bank
        # only delays its own copy (its data waits in the copier and the DRAM), whereas a
        # matmul or vector unit that waits stretches the instruction the next ones wait
        # for. The store engine comes next: its few rows (new KV rows, logits, the token)
        # are what compute instructions wait for before they overwrite a buffer, while the
        # load engine, mostly prefetching, has DRAM data queued behind every slot it gets.
        # It matters where the L2 moves as few lines per cycle as the DRAM (edge-4x4).
        for i in range(ComputeEngine.N_PORTS):
            wiring.connect(m, compute.port(i), l2.port(i))
        wiring.connect(m, store.l2, l2.port(ComputeEngine.N_PORTS))
        wiring.connect(m, load.l2, l2.port(ComputeEngine.N_PORTS + 1))
        engines = {int(isa.Engine.LOAD): load, int(isa.Engine.COMPUTE): compute,
                   int(isa.Engine.STORE): store}
        for e, engine in engines.items():
            wiring.connect(m, ctl.queue(e), engine.queue)
            wiring.connect(m, engine.tokens, ctl.tokens(e))
            wiring.connect(m, engine.fault, ctl.fault(e))
        m.d.comb += ctl.engine_idle.eq(sum(engine.idle << e for e, engine in engines.items()))

        # -- performance counters -----------------------------------------------------------
        c = {name: getattr(self, f"counter_{name}") for name in isa.COUNTERS}
        running = ctl.running
        derived = ("instructions", "prefetch_bytes")
        with m.If(ctl.start):
            m.d.sync += [counter.eq(0) for name, counter in c.items() if name not in derived]
        with m.Elif(running):
            m.d.sync += [c["cycles"].eq(c["cycles"] + 1),
                         c["array_macs"].eq(c["array_macs"] + compute.macs_step)]
            for name, engine in (("load", load), ("compute", compute), ("store", store)):
                with m.If(engine.busy):
                    m.d.sync += c[f"{name}_busy"].eq(c[f"{name}_busy"] + 1)
                with m.If(engine.stall):
                    m.d.sync += c[f"{name}_stall"].eq(c[f"{name}_stall"] + 1)
            granted = self.dram.req.valid & self.dram.req.ready
            with m.If(granted & self.dram.req.p.write):
                m.d.sync += c["dram_write_bytes"].eq(c["dram_write_bytes"] + p.line_bytes)
            with m.If(granted & ~self.dram.req.p.write):
                m.d.sync += c["dram_read_bytes"].eq(c["dram_read_bytes"] + p.line_bytes)
        # The load engine's byte count runs across programs; count from this start.
        prefetch_base = Signal(isa.COUNTER_BITS)
        with m.If(ctl.start):
            m.d.sync += prefetch_base.eq(load.prefetch_bytes)
        m.d.comb += [c["instructions"].eq(ctl.instructions),
                     c["prefetch_bytes"].eq(load.prefetch_bytes - prefetch_base)]
        # the counter block the store engine writes: counter i at bits [i w, (i + 1) w)
        m.d.comb += store.counters.eq(Cat(*(c[name] for name in isa.COUNTERS)))
        return m


class SimTop(wiring.Component):
    """The accelerator with its simulation DRAM; the top of the Verilator model."""

    def __init__(self, *, params: RtlParams):
        check_params(params)
        self.params = params
        super().__init__(self.ports())
        self.dram = DramModel(params=params)

    @staticmethod
    def ports() -> dict:
        """The top-level ports (the same for every configuration): the only signals the
        cocotb bench touches (the DRAM image goes in and out through files)."""
        members = {
            "clk": In(1), "start": In(1), "pc": In(isa.DRAM_ADDR_BITS),
            "done": Out(1), "running": Out(1), "error": Out(1),
            "error_code": Out(isa.ErrorCode.as_shape()),
            "error_index": Out(INDEX_BITS), "dram_busy_cycles": Out(isa.COUNTER_BITS),
        }
        for name in isa.COUNTERS:
            members[f"counter_{name}"] = Out(isa.COUNTER_BITS)
        return members

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = sync = ClockDomain("sync")
        m.domains.por = ClockDomain("por", reset_less=True)
        m.d.comb += [sync.clk.eq(self.clk), ClockSignal("por").eq(self.clk)]
        por = Signal(range(RESET_CYCLES + 1))     # power-on reset: the first cycles
        with m.If(por != RESET_CYCLES):
            m.d.por += por.eq(por + 1)
        m.d.comb += sync.rst.eq(por != RESET_CYCLES)
        m.submodules.accel = accel = Accelerator(params=self.params)
        m.submodules.dram = self.dram
        wiring.connect(m, accel.dram, self.dram.port)
        # The inputs are registered: no combinational path starts at a port, so Verilator
        # has no input-combinational logic to re-evaluate at every clock edge.
        start, pc = Signal(), Signal(isa.DRAM_ADDR_BITS)
        m.d.sync += [start.eq(self.start), pc.eq(self.pc)]
        m.d.comb += [accel.start.eq(start), accel.pc.eq(pc),
                     self.done.eq(accel.done), self.running.eq(accel.running),
                     self.error.eq(accel.error), self.error_code.eq(accel.error_code),
                     self.error_index.eq(accel.error_index),
                     self.dram_busy_cycles.eq(self.dram.busy_cycles)]
        for name in isa.COUNTERS:
            m.d.comb += getattr(self, f"counter_{name}").eq(getattr(accel, f"counter_{name}"))
        return m
