"""The row copier: moves a run of bytes between two line-based memories at any alignment.

Contract
--------
``RowCopier(params, src_l2, dst_l2)`` accepts a command ``(src, dst, n)`` (byte
addresses in its source and destination spaces, ``n >= 1`` bytes) while ``idle`` and
copies the bytes one line per cycle when neither side stalls: it reads the source lines
covering the run in order, realigns them through a two-line window (``dst line j`` is
bytes ``k..k+W`` of ``{line j+q+1, line j+q}`` where ``src - dst = q*W + k``), and writes
the destination lines with byte masks so that bytes outside the run are untouched.
Source lines outside the run are not read (the window uses zeros). ``src_l2`` says
whether the source is the L2 (whose read data must be taken on the cycle after the
grant) or the DRAM (a stream with back-pressure).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from rtl.common import RtlParams
from rtl.dram import MemPort

ADDR_BITS = 32
FIFO_DEPTH = 4


def copy_layout() -> data.StructLayout:
    return data.StructLayout({"src": ADDR_BITS, "dst": ADDR_BITS, "n": 21})


class RowCopier(wiring.Component):
    def __init__(self, params: RtlParams, src_l2: bool, dst_l2: bool):
        self.params = params
        self.src_l2 = src_l2
        src_bits = params.l2_addr_bits if src_l2 else params.dram_addr_bits
        dst_bits = params.l2_addr_bits if dst_l2 else params.dram_addr_bits
        super().__init__({
            "cmd": In(stream.Signature(copy_layout())),
            "idle": Out(1),
            "src": Out(MemPort(src_bits, params.line_bytes)),
            "dst": Out(MemPort(dst_bits, params.line_bytes)),
        })

    def elaborate(self, platform):
        p = self.params
        W, ws = p.line_bytes, p.line_shift
        m = Module()
        m.submodules.buf = buf = fifo.SyncFIFOBuffered(width=p.line_bits, depth=FIFO_DEPTH)

        wide = signed(ADDR_BITS + 2)
        d0, d1 = Signal(wide), Signal(wide)               # destination lines
        s_first, s_last = Signal(wide), Signal(wide)      # source lines that hold the run
        q = Signal(wide)
        k = Signal(range(W))
        dst_lo, dst_hi = Signal(range(W)), Signal(range(W))
        x_issue, x_take = Signal(wide), Signal(wide)      # next source line to read / to use
        prev = Signal(p.line_bits)
        active = Signal()
        issuing = Signal()

        cmd = self.cmd.p
        m.d.comb += [self.idle.eq(~active), self.cmd.ready.eq(~active)]
        # src/dst are unsigned byte addresses; widen before signed arithmetic.
        src_w = Cat(cmd.src, Const(0, 2)).as_signed()
        dst_w = Cat(cmd.dst, Const(0, 2)).as_signed()
        with m.If(self.cmd.valid & ~active):
            last_src = src_w + cmd.n - 1
            last_dst = dst_w + cmd.n - 1
            diff = src_w - dst_w
            m.d.sync += [
                active.eq(1), issuing.eq(1),
                d0.eq(dst_w >> ws), d1.eq(last_dst >> ws),
                s_first.eq(src_w >> ws), s_last.eq(last_src >> ws),
                q.eq(diff >> ws), k.eq(diff[:ws]),
                dst_lo.eq(cmd.dst[:ws]), dst_hi.eq(last_dst[:ws]),
                x_issue.eq((dst_w >> ws) + (diff >> ws)),
                x_take.eq((dst_w >> ws) + (diff >> ws)),
                prev.eq(0),
            ]

        # -- issue source reads ------------------------------------------------------------
        in_range_issue = (x_issue >= s_first) & (x_issue <= s_last)
        x_end = d1 + q + 1
        inflight = Signal(range(FIFO_DEPTH + 1))
        space = (buf.level + inflight) < (FIFO_DEPTH - 1)
        src_req = self.src.req
        m.d.comb += [
            src_req.p.addr.eq(x_issue),
            src_req.p.write.eq(0),
            src_req.valid.eq(active & issuing & in_range_issue & space),
        ]
        with m.If(active & issuing):
            with m.If(~in_range_issue | src_req.ready):
                m.d.sync += x_issue.eq(x_issue + 1)
                with m.If(x_issue == x_end):
                    m.d.sync += issuing.eq(0)
        granted = src_req.valid & src_req.ready
        rsp = self.src.rsp
        if self.src_l2:
            # L2 data arrives the cycle after the grant and must be taken then.
            m.d.comb += [rsp.ready.eq(1), buf.w_en.eq(rsp.valid)]
            m.d.sync += inflight.eq(granted)
        else:
            m.d.comb += [rsp.ready.eq(buf.w_rdy), buf.w_en.eq(rsp.valid & buf.w_rdy)]
            m.d.sync += inflight.eq(inflight + granted - (rsp.valid & rsp.ready))
        m.d.comb += buf.w_data.eq(rsp.payload)

        # -- realign and write destination lines -----------------------------------------------
        in_range_take = (x_take >= s_first) & (x_take <= s_last)
        have = ~in_range_take | buf.r_rdy
        line = Mux(in_range_take, buf.r_data, 0)
        j = x_take - q - 1                                  # destination line produced
        first_take = x_take == d0 + q
        window = Cat(prev, line)
        shifted = Signal(2 * p.line_bits)
        m.d.comb += shifted.eq(window >> (k * 8))
        lo = Mux(j == d0, dst_lo, 0)
        hi = Mux(j == d1, dst_hi, W - 1)
        mask = Signal(W)
        for b in range(W):
            m.d.comb += mask[b].eq((b >= lo) & (b <= hi))
        dst_req = self.dst.req
        m.d.comb += [
            dst_req.p.addr.eq(j),
            dst_req.p.write.eq(1),
            dst_req.p.data.eq(shifted[:p.line_bits]),
            dst_req.p.mask.eq(mask),
            dst_req.valid.eq(active & have & ~first_take),
            self.dst.rsp.ready.eq(1),
        ]
        step = active & have & (first_take | dst_req.ready)
        m.d.comb += buf.r_en.eq(step & in_range_take)
        with m.If(step):
            m.d.sync += [prev.eq(line), x_take.eq(x_take + 1)]
            with m.If(~first_take & (j == d1)):
                m.d.sync += active.eq(0)
        return m
