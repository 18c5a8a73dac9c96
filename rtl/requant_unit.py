"""The vector unit's REQUANT path: int32 rows to int8/int16 rows, ``W / 4`` lanes per cycle.

Contract
--------
``RequantUnit(params)`` executes one ``REQUANT`` at a time (``start`` with the decoded
fields, ``done`` when the last row is written). For each row it streams the int32
accumulators and, for per-channel requantisation, the parameter words through two row
readers in lockstep (both int32, so their beats line up), requantises ``W / 4`` elements
per cycle with ``lanes.requant`` (bias added first when present), packs the results
into ``W``-byte beats and writes the row through a row writer. A single (not
per-channel) parameter word is read once per instruction. Bit-exact with
``models.numerics.requant``; addressing as ``compiler.semantics``.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from rtl import lanes
from rtl.common import RtlParams
from rtl.copier import RowCopier
from rtl.dram import MemPort


class RequantUnit(wiring.Component):
    def __init__(self, params: RtlParams):
        self.params = params
        port = MemPort(params.l2_addr_bits, params.line_bytes)
        super().__init__({
            "start": In(1), "done": Out(1), "busy": Out(1),
            "src_addr": In(32), "dst_addr": In(32), "param_addr": In(32), "bias_addr": In(32),
            "rows": In(16), "cols": In(20), "src_stride": In(20), "dst_stride": In(20),
            "out16": In(1), "per_channel": In(1), "has_bias": In(1),
            "src_port": Out(port), "param_port": Out(port), "bias_port": Out(port),
            "dst_port": Out(port),
        })

    def elaborate(self, platform):
        p = self.params
        W = p.line_bytes
        E = W // 4                                  # int32 elements per beat
        m = Module()
        m.submodules.src = src = RowCopier(p, src_l2=True, dst_stream=True)
        m.submodules.par = par = RowCopier(p, src_l2=True, dst_stream=True)
        m.submodules.bias = bias = RowCopier(p, src_l2=True, dst_stream=True)
        m.submodules.dst = dst = RowCopier(p, dst_l2=True, src_stream=True)
        wiring.connect(m, wiring.flipped(self.src_port), src.src)
        wiring.connect(m, wiring.flipped(self.param_port), par.src)
        wiring.connect(m, wiring.flipped(self.bias_port), bias.src)
        wiring.connect(m, wiring.flipped(self.dst_port), dst.dst)

        # Latched instruction fields.
        f = {name: Signal.like(getattr(self, name), name=f"f_{name}") for name in (
            "src_addr", "dst_addr", "param_addr", "bias_addr", "rows", "cols", "src_stride",
            "dst_stride", "out16", "per_channel", "has_bias")}
        row_cmd = Signal(16)          # rows whose reads have been requested
        row_out = Signal(16)          # rows fully written
        col = Signal(20)              # elements of the current row consumed
        scalar = Signal(32)
        out_bytes = Mux(f["out16"], 2, 1)
        row_bytes_out = f["cols"] * out_bytes

        # Packer: output bytes of the current row accumulate until a beat is full.
        pack = Signal(8 * W)
        fill = Signal(range(W + 1))

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [f[k].eq(getattr(self, k)) for k in f]
                    m.d.sync += [row_cmd.eq(0), row_out.eq(0), col.eq(0), fill.eq(0)]
                    m.next = "SCALAR"
            with m.State("SCALAR"):
                m.d.comb += self.busy.eq(1)
                with m.If(f["per_channel"]):
                    m.next = "RUN"
                with m.Else():
                    m.d.comb += [par.cmd.valid.eq(1), par.cmd.p.src.eq(f["param_addr"]),
                                 par.cmd.p.dst.eq(0), par.cmd.p.n.eq(4)]
                    with m.If(par.cmd.ready):
                        m.next = "SCALAR_WAIT"
            with m.State("SCALAR_WAIT"):
                m.d.comb += [self.busy.eq(1), par.out.ready.eq(1)]
                with m.If(par.out.valid):
                    m.d.sync += scalar.eq(par.out.p.data[:32])
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                # Request the reads and the write of the next row.
                n_in = f["cols"] << 2
                can = (row_cmd < f["rows"]) & src.cmd.ready & par.cmd.ready & bias.cmd.ready \
                    & dst.cmd.ready
                with m.If(can):
                    m.d.comb += [
                        src.cmd.valid.eq(1),
                        src.cmd.p.src.eq(f["src_addr"] + row_cmd * f["src_stride"]),
                        src.cmd.p.dst.eq(0), src.cmd.p.n.eq(n_in),
                        par.cmd.valid.eq(f["per_channel"]), par.cmd.p.src.eq(f["param_addr"]),
                        par.cmd.p.dst.eq(0), par.cmd.p.n.eq(n_in),
                        bias.cmd.valid.eq(f["has_bias"]), bias.cmd.p.src.eq(f["bias_addr"]),
                        bias.cmd.p.dst.eq(0), bias.cmd.p.n.eq(n_in),
                        dst.cmd.valid.eq(1), dst.cmd.p.src.eq(0),
                        dst.cmd.p.dst.eq(f["dst_addr"] + row_cmd * f["dst_stride"]),
                        dst.cmd.p.n.eq(row_bytes_out),
                    ]
                    m.d.sync += row_cmd.eq(row_cmd + 1)

                # Compute one input beat when every needed stream has one and the packer
                # has room for its outputs.
                need_par = f["per_channel"]
                ready_in = src.out.valid & (par.out.valid | ~need_par) & \
                    (bias.out.valid | ~f["has_bias"])
                room = (fill + E * out_bytes) <= W
                fire = ready_in & room & (row_out < f["rows"])
                left = f["cols"] - col
                count = Mux(left < E, left, E)            # valid elements in this beat
                results = []
                for e in range(E):
                    acc = src.out.p.data[32 * e:32 * e + 32].as_signed()
                    word = Mux(need_par, par.out.p.data[32 * e:32 * e + 32], scalar)
                    b = Mux(f["has_bias"], bias.out.p.data[32 * e:32 * e + 32].as_signed(), 0)
                    mult, shift = word[:16], word[16:22]
                    total = (acc + b)[:32].as_signed()
                    r8 = lanes.requant(total, mult, shift, 8)
                    r16 = lanes.requant(total, mult, shift, 16)
                    results.append((r8, r16))
                packed8 = Cat(*[r[0] for r in results])
                packed16 = Cat(*[r[1] for r in results])
                chunk = Mux(f["out16"], packed16, packed8)
                chunk_bytes = count * out_bytes
                end_of_row = col + count >= f["cols"]
                new_fill = fill + chunk_bytes
                merged = pack | (chunk << (fill << 3))
                emit = fire & ((new_fill == W) | end_of_row)
                go = fire & (~emit | dst.inp.ready)
                m.d.comb += [
                    src.out.ready.eq(go), par.out.ready.eq(go & need_par),
                    bias.out.ready.eq(go & f["has_bias"]),
                    dst.inp.valid.eq(emit), dst.inp.payload.eq(merged[:8 * W]),
                ]
                with m.If(go):
                    with m.If(emit):
                        m.d.sync += [pack.eq(0), fill.eq(0)]
                    with m.Else():
                        m.d.sync += [pack.eq(merged[:8 * W]), fill.eq(new_fill)]
                    with m.If(end_of_row):
                        m.d.sync += [col.eq(0), row_out.eq(row_out + 1)]
                    with m.Else():
                        m.d.sync += col.eq(col + count)
                with m.If((row_out == f["rows"]) & dst.idle):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        return m
