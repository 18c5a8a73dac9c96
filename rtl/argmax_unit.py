"""The vector unit's ARGMAX path: the index of the first maximum of an int16 row.

Contract
--------
``ArgmaxUnit(params)`` executes one ``ARGMAX`` (``start`` with ``src_addr``, ``n`` and
``dst_addr``; ``done`` when the index is written). It streams the row through a row
reader, ``W / 2`` elements per cycle: each beat's first maximum comes from a priority
chain, and the running maximum is replaced only by a strictly greater one, so ties keep
the first index, as ``models.numerics.argmax`` does. The int32 index is written through
a row writer.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from rtl.common import RtlParams
from rtl.copier import RowCopier
from rtl.dram import MemPort


class ArgmaxUnit(wiring.Component):
    def __init__(self, params: RtlParams):
        self.params = params
        port = MemPort(params.l2_addr_bits, params.line_bytes)
        super().__init__({
            "start": In(1), "done": Out(1), "busy": Out(1),
            "src_addr": In(32), "n": In(20), "dst_addr": In(32),
            "src_port": Out(port), "dst_port": Out(port),
        })

    def elaborate(self, platform):
        p = self.params
        E = p.line_bytes // 2                       # int16 elements per beat
        m = Module()
        m.submodules.reader = reader = RowCopier(p, src_l2=True, dst_stream=True)
        m.submodules.writer = writer = RowCopier(p, dst_l2=True, src_stream=True)
        wiring.connect(m, wiring.flipped(self.src_port), reader.src)
        wiring.connect(m, wiring.flipped(self.dst_port), writer.dst)

        src, n, dst = Signal(32), Signal(20), Signal(32)
        col = Signal(20)
        best = Signal(signed(16))
        best_idx = Signal(32)

        # First maximum of one beat: a priority chain over its valid elements.
        left = n - col
        beat = reader.out.p.data
        # Each stage is its own signal: the chain stays linear in size.
        chain_v = Signal(signed(16), name="chain_v0")
        chain_i = Signal(range(E), name="chain_i0")
        m.d.comb += [chain_v.eq(beat[:16].as_signed()), chain_i.eq(0)]
        for e in range(1, E):
            v = beat[16 * e:16 * e + 16].as_signed()
            take = (e < left) & (v > chain_v)
            next_v = Signal(signed(16), name=f"chain_v{e}")
            next_i = Signal(range(E), name=f"chain_i{e}")
            m.d.comb += [next_v.eq(Mux(take, v, chain_v)), next_i.eq(Mux(take, e, chain_i))]
            chain_v, chain_i = next_v, next_i

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [src.eq(self.src_addr), n.eq(self.n), dst.eq(self.dst_addr),
                                 col.eq(0)]
                    m.next = "READ"
            with m.State("READ"):
                m.d.comb += [self.busy.eq(1), reader.cmd.valid.eq(1),
                             reader.cmd.p.src.eq(src), reader.cmd.p.dst.eq(0),
                             reader.cmd.p.n.eq(n << 1)]
                with m.If(reader.cmd.ready):
                    m.next = "SCAN"
            with m.State("SCAN"):
                m.d.comb += [self.busy.eq(1), reader.out.ready.eq(1)]
                with m.If(reader.out.valid):
                    with m.If((col == 0) | (chain_v > best)):
                        m.d.sync += [best.eq(chain_v), best_idx.eq(col + chain_i)]
                    m.d.sync += col.eq(col + E)
                    with m.If(reader.out.p.last):
                        m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += [self.busy.eq(1), writer.cmd.valid.eq(1), writer.cmd.p.src.eq(0),
                             writer.cmd.p.dst.eq(dst), writer.cmd.p.n.eq(4)]
                with m.If(writer.cmd.ready):
                    m.next = "DATA"
            with m.State("DATA"):
                m.d.comb += [self.busy.eq(1), writer.inp.valid.eq(1),
                             writer.inp.payload.eq(best_idx)]
                with m.If(writer.inp.ready):
                    m.next = "FLUSH"
            with m.State("FLUSH"):
                m.d.comb += self.busy.eq(1)
                with m.If(writer.idle):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        return m
