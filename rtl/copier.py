"""The row copier: moves a run of bytes between two line-based memories at any alignment.

Contract
--------
``RowCopier(params=, src_l2=, dst_l2=)`` accepts commands ``(src, dst, n)`` (byte
addresses in its source and destination spaces, ``n >= 1`` bytes; up to ``CMD_DEPTH``
queued) and copies the bytes one line per cycle when neither side stalls, the reads of
later commands running ahead of the writes of earlier ones; ``idle`` means all are
done, and a command given with ``mark`` pulses ``marked`` the cycle after its last line
was written. It reads the source lines
covering the run in order, realigns them through a two-line window (``dst line j`` is
bytes ``k..k+W`` of ``{line j+q+1, line j+q}`` where ``src - dst = q*W + k``), and writes
the destination lines with byte masks so that bytes outside the run are untouched.
Source lines outside the run are not read (the window uses zeros). ``src_l2`` says
whether the source is the L2 (whose read data must be taken on the cycle after the
grant, so reads are only issued when the buffer will have room) or the DRAM (a stream
with back-pressure whose response queue is the landing buffer: reads are issued as fast
as the DRAM accepts them, covering its latency).

With ``dst_stream=True`` the destination is a stream (``out``) rather than a memory:
each destination line arrives as a beat with its data, byte mask, line index and a
``last`` flag. Giving ``dst = 0`` makes a *row reader*: the row arrives realigned to
byte 0, ``W`` bytes per beat, the mask marking the row's bytes in the last beat. With
``src_stream=True`` the source is a stream (``inp``) of the run's lines from byte 0
(commands give ``src = 0``): a *row writer*.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from arch.uarch import CMD_DEPTH, COPIER_FIFO_DEPTH
from rtl.common import RtlParams, check_params
from rtl.dram import MemPort

ADDR_BITS = 32


def copy_layout() -> data.StructLayout:
    return data.StructLayout({"src": ADDR_BITS, "dst": ADDR_BITS, "n": 21, "mark": 1})


def beat_layout(line_bytes: int) -> data.StructLayout:
    """A destination line delivered as a stream: data, byte mask, line index, last."""
    return data.StructLayout({"data": 8 * line_bytes, "mask": line_bytes,
                              "line": signed(ADDR_BITS + 2), "last": 1})


class RowCopier(wiring.Component):
    def __init__(self, *, params: RtlParams, src_l2: bool = False, dst_l2: bool = False,
                 dst_stream: bool = False, src_stream: bool = False):
        check_params(params)
        self.params = params
        self.src_l2 = src_l2
        self.dst_stream = dst_stream
        self.src_stream = src_stream
        src_bits = params.l2_addr_bits if src_l2 else params.dram_addr_bits
        dst_bits = params.l2_addr_bits if dst_l2 else params.dram_addr_bits
        members = {
            "cmd": In(stream.Signature(copy_layout())),
            "idle": Out(1),
            "marked": Out(1),
        }
        if src_stream:
            members["inp"] = In(stream.Signature(8 * params.line_bytes))
        else:
            members["src"] = Out(MemPort(src_bits, params.line_bytes))
        if dst_stream:
            members["out"] = Out(stream.Signature(beat_layout(params.line_bytes)))
        else:
            members["dst"] = Out(MemPort(dst_bits, params.line_bytes))
        super().__init__(members)

    def elaborate(self, platform):
        p = self.params
        W, ws = p.line_bytes, p.line_shift
        m = Module()
        m.submodules.buf = buf = fifo.SyncFIFOBuffered(width=p.line_bits, depth=COPIER_FIFO_DEPTH)
        # The read side and the write side each keep their own queue of commands, so the
        # reads of the next row start while the previous row is still being written.
        cmd_bits = copy_layout().size
        m.submodules.issue_q = issue_q = fifo.SyncFIFOBuffered(width=cmd_bits, depth=CMD_DEPTH)
        m.submodules.take_q = take_q = fifo.SyncFIFOBuffered(width=cmd_bits, depth=CMD_DEPTH)
        m.d.comb += [
            self.cmd.ready.eq(issue_q.w_rdy & take_q.w_rdy),
            issue_q.w_en.eq(self.cmd.valid & self.cmd.ready),
            take_q.w_en.eq(self.cmd.valid & self.cmd.ready),
            issue_q.w_data.eq(self.cmd.payload), take_q.w_data.eq(self.cmd.payload),
        ]
        wide = signed(ADDR_BITS + 2)

        def decode(raw):
            c = data.View(copy_layout(), raw)
            src_w = Cat(c.src, Const(0, 2)).as_signed()
            dst_w = Cat(c.dst, Const(0, 2)).as_signed()
            diff = src_w - dst_w
            return {"d0": dst_w >> ws, "d1": (dst_w + c.n - 1) >> ws,
                    "s_first": src_w >> ws, "s_last": (src_w + c.n - 1) >> ws,
                    "q": diff >> ws, "k": diff[:ws], "dst_lo": c.dst[:ws],
                    "dst_hi": (dst_w + c.n - 1)[:ws]}

        if self.src_stream:
            # The source is a stream of the run's lines from byte 0 (commands use src = 0).
            m.d.comb += [issue_q.r_en.eq(issue_q.r_rdy), buf.w_en.eq(self.inp.valid & buf.w_rdy),
                         self.inp.ready.eq(buf.w_rdy), buf.w_data.eq(self.inp.payload)]
            i_active = Const(0)
        else:
            # -- read side: exactly the source lines of each command, back to back -------------
            i_active = Signal()
            x_issue, i_last = Signal(wide), Signal(wide)
            src_req = self.src.req
            if self.src_l2:
                # The L2 does not hold read data: only ask when the buffer will have room.
                inflight = Signal()
                space = (buf.level + inflight) < (COPIER_FIFO_DEPTH - 1)
            else:
                space = 1      # the DRAM holds read data until it is taken
            m.d.comb += [src_req.p.addr.eq(x_issue), src_req.p.write.eq(0),
                         src_req.valid.eq(i_active & space)]
            fire = src_req.valid & src_req.ready
            i_done = fire & (x_issue == i_last)
            with m.If(issue_q.r_rdy & (~i_active | i_done)):
                c = decode(issue_q.r_data)
                m.d.comb += issue_q.r_en.eq(1)
                m.d.sync += [i_active.eq(1), x_issue.eq(c["s_first"]), i_last.eq(c["s_last"])]
            with m.Elif(fire):
                m.d.sync += x_issue.eq(x_issue + 1)
                with m.If(i_done):
                    m.d.sync += i_active.eq(0)
            rsp = self.src.rsp
            if self.src_l2:
                m.d.comb += [rsp.ready.eq(1), buf.w_en.eq(rsp.valid)]
                m.d.sync += inflight.eq(fire)
            else:
                m.d.comb += [rsp.ready.eq(buf.w_rdy), buf.w_en.eq(rsp.valid & buf.w_rdy)]
            m.d.comb += buf.w_data.eq(rsp.payload)

        # -- write side: realign and write destination lines ------------------------------
        # Destination line j comes from source lines j+q and j+q+1 (bytes k..k+W of the
        # pair); when k == 0 it is line j+q alone, so no priming step is needed.
        t_active = Signal()
        d0, d1 = Signal(wide), Signal(wide)
        s_first, s_last = Signal(wide), Signal(wide)
        q = Signal(wide)
        k = Signal(range(W))
        dst_lo, dst_hi = Signal(range(W)), Signal(range(W))
        x_take = Signal(wide)
        prev = Signal(p.line_bits)
        aligned = k == 0
        in_range_take = (x_take >= s_first) & (x_take <= s_last)
        have = ~in_range_take | buf.r_rdy
        line = Mux(in_range_take, buf.r_data, 0)
        j = Signal(wide)                                    # destination line produced
        m.d.comb += j.eq(Mux(aligned, x_take - q, x_take - q - 1))
        first_take = ~aligned & (x_take == d0 + q)
        shifted = Signal(2 * p.line_bits)
        m.d.comb += shifted.eq(Cat(prev, line) >> (k * 8))
        lo, hi = Signal(range(W)), Signal(range(W))     # signals: each is read W times
        m.d.comb += [lo.eq(Mux(j == d0, dst_lo, 0)), hi.eq(Mux(j == d1, dst_hi, W - 1))]
        mask = Signal(W)
        for b in range(W):
            m.d.comb += mask[b].eq((b >= lo) & (b <= hi))
        out_data = Mux(aligned, line, shifted[:p.line_bits])
        if self.dst_stream:
            out = self.out
            m.d.comb += [out.p.data.eq(out_data), out.p.mask.eq(mask), out.p.line.eq(j),
                         out.p.last.eq(j == d1), out.valid.eq(t_active & have & ~first_take)]
            accepted = out.ready
        else:
            dst_req = self.dst.req
            m.d.comb += [
                dst_req.p.addr.eq(j), dst_req.p.write.eq(1), dst_req.p.data.eq(out_data),
                dst_req.p.mask.eq(mask), dst_req.valid.eq(t_active & have & ~first_take),
                self.dst.rsp.ready.eq(1),
            ]
            accepted = dst_req.ready
        step = t_active & have & (first_take | accepted)
        t_done = step & ~first_take & (j == d1)
        m.d.comb += buf.r_en.eq(step & in_range_take)
        with m.If(take_q.r_rdy & (~t_active | t_done)):
            c = decode(take_q.r_data)
            m.d.comb += take_q.r_en.eq(1)
            m.d.sync += [t_active.eq(1), d0.eq(c["d0"]), d1.eq(c["d1"]),
                         s_first.eq(c["s_first"]), s_last.eq(c["s_last"]), q.eq(c["q"]),
                         k.eq(c["k"]), dst_lo.eq(c["dst_lo"]), dst_hi.eq(c["dst_hi"]),
                         x_take.eq(c["d0"] + c["q"]), prev.eq(0)]
        with m.Elif(step):
            m.d.sync += [prev.eq(line), x_take.eq(x_take + 1)]
            with m.If(t_done):
                m.d.sync += t_active.eq(0)

        m.d.comb += self.idle.eq(~i_active & ~t_active & ~issue_q.r_rdy & ~take_q.r_rdy)
        # A command given with ``mark`` set pulses ``marked`` the cycle after its last
        # destination line was accepted: the DMA engines end an instruction there.
        t_mark = Signal()
        with m.If(take_q.r_rdy & (~t_active | t_done)):
            m.d.sync += t_mark.eq(data.View(copy_layout(), take_q.r_data).mark)
        m.d.sync += self.marked.eq(t_done & t_mark)
        return m
