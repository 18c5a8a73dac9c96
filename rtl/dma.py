"""The DMA engines: the load engine (DRAM -> L2) and the store engine (L2 -> DRAM).

Contract
--------
``DmaEngine(params, direction)`` executes the instructions of one engine, in order,
from its queue: ``"load"`` runs ``DMA_LOAD``, ``DMA_GATHER`` and ``KV_PREFETCH``;
``"store"`` runs ``DMA_STORE``, ``KV_APPEND`` and ``STORE_COUNTERS``. Every data
instruction is a loop of row copies through a ``RowCopier``; before a row, the engine
reads the int32 it needs from DRAM (a gather index, or a block-table entry when the
token enters a new KV block) through its own ``aux`` port, while the copier still
moves earlier rows: row copies are queued back to back. The addressing is the same as
``compiler.semantics``:
``KV_PREFETCH`` token ``t`` is read from ``pool + table[t // B] * B * row_bytes +
(t % B) * row_bytes + col_offset``, ``B = kv_block_tokens``.

For each instruction the engine asks the controller to begin (dependency tokens),
executes, and ends (signals). An instruction that copies rows ends when the copier has
written its last row, not when the engine has issued it: the engine goes on to the next
instruction as soon as the last row command is queued (up to ``DEFERRED`` instructions
awaiting their end), so consecutive loads overlap and each does not pay the DRAM latency
alone. Ends come in program order; an instruction with no rows, and ``STORE_COUNTERS``,
first wait for the ones before them. A row that would leave the L2 or the simulated DRAM, a
write with overlapping rows, or a misaligned table or counter address stops the
accelerator with the ``ErrorCode`` the ISA defines. ``busy``/``stall`` say whether the
engine is executing (or has instructions awaiting their end) or waiting for tokens
with none in flight; ``prefetch_bytes`` counts KV bytes fetched.
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from arch import isa
from arch.uarch import DEFERRED
from rtl.common import RtlParams, log2
from rtl.controller import ErrorPort, TokenPort
from rtl.copier import RowCopier
from rtl.decode import INDEX_BITS, code, field, queued_layout, signal_mask, wait_mask
from rtl.dram import MemPort

OPS = {"load": ("DMA_LOAD", "DMA_GATHER", "KV_PREFETCH"),
       "store": ("DMA_STORE", "KV_APPEND", "STORE_COUNTERS")}
N_COUNTERS = len(isa.COUNTERS)


class DmaEngine(wiring.Component):
    def __init__(self, params: RtlParams, direction: str):
        if direction not in OPS:
            raise ValueError(f"direction must be 'load' or 'store', not {direction!r}")
        self.params = params
        self.direction = direction
        members = {
            "queue": In(stream.Signature(queued_layout())),
            "tokens": Out(TokenPort()),
            "fault": Out(ErrorPort()),
            "idle": Out(1), "busy": Out(1), "stall": Out(1),
            "prefetch_bytes": Out(64),
            "dram": Out(MemPort(params.dram_addr_bits, params.line_bytes)),
            "aux": Out(MemPort(params.dram_addr_bits, params.line_bytes)),
            "l2": Out(MemPort(params.l2_addr_bits, params.line_bytes)),
        }
        if direction == "store":
            members["counters"] = In(64 * N_COUNTERS)
        super().__init__(members)

    def elaborate(self, platform):
        p, hw = self.params, self.params.hw
        W, ws = p.line_bytes, p.line_shift
        load = self.direction == "load"
        m = Module()
        m.submodules.copier = copier = RowCopier(p, src_l2=not load, dst_l2=load)
        # The copier's sides are this engine's L2 port and DRAM port; the engine's own
        # int32 reads (indices, block-table entries) and counter writes use ``aux``.
        l2_side, dram_side = (copier.dst, copier.src) if load else (copier.src, copier.dst)
        wiring.connect(m, wiring.flipped(self.l2), l2_side)
        wiring.connect(m, wiring.flipped(self.dram), dram_side)

        word = Signal(isa.INSTR_BITS)
        index = Signal(INDEX_BITS)
        op = word[:isa.OPCODE_BITS]

        def f(mnemonic, name):
            return field(word, mnemonic, name)

        def is_op(mnemonic):
            return op == code(mnemonic)

        bt, bt_shift = hw.kv_block_tokens, log2(hw.kv_block_tokens)
        n_rows = Signal(32)
        row = Signal(32)
        value = Signal(32)             # the int32 read for this row (index or block)
        counter_i = Signal(range(N_COUNTERS + 1))

        # Per-instruction constants.
        row_bytes = Signal(21)
        src_base = Signal(40)
        src_step = Signal(40)
        dst_step = Signal(40)
        int_base = Signal(40)
        first = Signal(32)
        # Signal masks of the instructions whose rows are in the copier, oldest first: the
        # copier's ``marked`` pulse (their last row written) ends the oldest.
        m.submodules.deferred = deferred = fifo.SyncFIFO(width=isa.MASK_BITS, depth=DEFERRED)
        inflight = deferred.r_rdy
        ending = Signal()                  # the END state: an instruction ending in order
        m.d.comb += [
            self.tokens.wait.eq(wait_mask(word)),
            self.tokens.signal.eq(signal_mask(word)),
            deferred.r_en.eq(copier.marked),
            self.tokens.end.eq(ending | copier.marked),
            self.tokens.end_signal.eq(Mux(ending, signal_mask(word), deferred.r_data)),
            deferred.w_data.eq(signal_mask(word)),
        ]

        src_run = Signal(40)           # running addresses of 2-D DMA rows
        dst_run = Signal(40)
        have_int = Signal()            # the int32 this row needs has been read
        token = Signal(32)             # token position for KV instructions
        m.d.comb += token.eq(first + row)
        kv_src = Signal(40)
        pool = Signal(32)
        m.d.comb += kv_src.eq(pool + value * bt * row_bytes + (token & (bt - 1)) * row_bytes)

        dram_size = p.dram_bytes
        l2_size = hw.l2_bytes
        src_size, dst_size = (dram_size, l2_size) if load else (l2_size, dram_size)
        src_err = isa.ErrorCode.DRAM_OUT_OF_RANGE if load else isa.ErrorCode.L2_OUT_OF_RANGE
        dst_err = isa.ErrorCode.L2_OUT_OF_RANGE if load else isa.ErrorCode.DRAM_OUT_OF_RANGE

        dram = self.aux
        int_addr = Signal(40)
        counter_word = Signal(64)

        def fault(code_):
            m.d.comb += [self.fault.valid.eq(1), self.fault.code.eq(int(code_)),
                         self.fault.index.eq(index)]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.idle.eq(~inflight), self.busy.eq(inflight),
                             self.queue.ready.eq(1)]
                with m.If(self.queue.valid):
                    m.d.sync += [word.eq(self.queue.payload.word),
                                 index.eq(self.queue.payload.index)]
                    m.d.comb += self.idle.eq(0)
                    m.next = "BEGIN"
            with m.State("BEGIN"):
                m.d.comb += [self.tokens.begin.eq(1), self.busy.eq(inflight),
                             self.stall.eq(~self.tokens.allowed & ~inflight)]
                with m.If(self.tokens.allowed):
                    m.next = "SETUP"
            with m.State("SETUP"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [row.eq(0), counter_i.eq(0), have_int.eq(0)]
                a, b, c = OPS[self.direction]
                with m.If(is_op(a)):            # DMA_LOAD / DMA_STORE
                    if load:
                        src0, dst0 = f(a, "dram_addr"), f(a, "l2_addr")
                        sstep, dstep = f(a, "dram_stride"), f(a, "l2_stride")
                    else:
                        src0, dst0 = f(a, "l2_addr"), f(a, "dram_addr")
                        sstep, dstep = f(a, "l2_stride"), f(a, "dram_stride")
                    m.d.sync += [n_rows.eq(f(a, "rows")), row_bytes.eq(f(a, "row_bytes")),
                                 src_run.eq(src0), dst_run.eq(dst0),
                                 src_step.eq(sstep), dst_step.eq(dstep)]
                    with m.If((f(a, "rows") > 1) & (dstep < f(a, "row_bytes"))):
                        fault(isa.ErrorCode.BAD_OPERAND)      # overlapping destination rows
                        m.next = "HALTED"
                    with m.Else():
                        m.next = "ROW"
                if load:
                    with m.Elif(is_op(b)):      # DMA_GATHER
                        m.d.sync += [n_rows.eq(f(b, "count")), row_bytes.eq(f(b, "row_bytes")),
                                     src_base.eq(f(b, "table_addr")),
                                     dst_run.eq(f(b, "l2_addr")), dst_step.eq(f(b, "l2_stride")),
                                     int_base.eq(f(b, "idx_addr"))]
                        with m.If((f(b, "count") > 1) & (f(b, "l2_stride") < f(b, "row_bytes"))):
                            fault(isa.ErrorCode.BAD_OPERAND)
                            m.next = "HALTED"
                        with m.Else():
                            m.next = "ROW"
                    with m.Elif(is_op(c)):      # KV_PREFETCH
                        m.d.sync += [n_rows.eq(f(c, "n_tokens")), row_bytes.eq(f(c, "row_bytes")),
                                     pool.eq(f(c, "pool_addr") + f(c, "col_offset")),
                                     dst_run.eq(f(c, "l2_addr")), dst_step.eq(f(c, "col_bytes")),
                                     int_base.eq(f(c, "table_addr")), first.eq(f(c, "first_token"))]
                        m.next = "ROW"
                else:
                    with m.Elif(is_op(b)):      # KV_APPEND
                        m.d.sync += [n_rows.eq(f(b, "n_tokens")), row_bytes.eq(f(b, "row_bytes")),
                                     pool.eq(f(b, "pool_addr")), src_run.eq(f(b, "l2_addr")),
                                     src_step.eq(f(b, "row_bytes")),
                                     int_base.eq(f(b, "table_addr")), first.eq(f(b, "first_token"))]
                        m.next = "ROW"
                    with m.Elif(is_op(c)):      # STORE_COUNTERS
                        with m.If(f(c, "dram_addr")[:3] != 0):
                            fault(isa.ErrorCode.BAD_OPERAND)
                            m.next = "HALTED"
                        with m.Elif(f(c, "dram_addr") + 8 * N_COUNTERS > dram_size):
                            fault(isa.ErrorCode.DRAM_OUT_OF_RANGE)
                            m.next = "HALTED"
                        with m.Else():
                            m.d.sync += dst_run.eq(f(c, "dram_addr"))
                            m.next = "COUNTER"
                with m.Else():
                    fault(isa.ErrorCode.INVALID_OPCODE)
                    m.next = "HALTED"

            a, b, c = OPS[self.direction]
            needs_int = (is_op(b) if load else Const(0)) | (
                is_op("KV_PREFETCH" if load else "KV_APPEND")
                & ((row == 0) | ((token & (bt - 1)) == 0)))
            # One row command per cycle: addresses are running sums (2-D DMA) or come from
            # the int32 just read (gather index, block-table entry).
            if load:
                row_src = Mux(is_op("KV_PREFETCH"), kv_src,
                              Mux(is_op("DMA_GATHER"), src_base + value * row_bytes, src_run))
                row_dst = dst_run
                row_n = Mux(is_op("KV_PREFETCH"), dst_step, row_bytes)
            else:
                row_src = src_run
                row_dst = Mux(is_op("KV_APPEND"), kv_src, dst_run)
                row_n = row_bytes
            with m.State("ROW"):
                m.d.comb += self.busy.eq(1)
                advance = Signal()
                with m.If(row == n_rows):
                    # The last row command carried ``mark``: the instruction ends when the
                    # copier has written it. With no rows copied, it ends in order here.
                    with m.If((n_rows == 0) | (row_n == 0)):
                        m.next = "DRAIN"
                    with m.Elif(deferred.w_rdy):
                        m.d.comb += deferred.w_en.eq(1)
                        m.next = "IDLE"
                with m.Elif(needs_int & ~have_int):
                    with m.If(is_op(b) if load else Const(0)):
                        m.d.sync += int_addr.eq(int_base + (row << 2))
                    with m.Else():
                        m.d.sync += int_addr.eq(int_base + ((token >> bt_shift) << 2))
                    m.next = "INT_CHECK"
                with m.Elif(row_n == 0):
                    m.d.comb += advance.eq(1)
                with m.Elif(row_src + row_n > src_size):
                    fault(src_err)
                    m.next = "HALTED"
                with m.Elif(row_dst + row_n > dst_size):
                    fault(dst_err)
                    m.next = "HALTED"
                with m.Else():
                    m.d.comb += [copier.cmd.valid.eq(1), copier.cmd.p.src.eq(row_src),
                                 copier.cmd.p.dst.eq(row_dst), copier.cmd.p.n.eq(row_n),
                                 copier.cmd.p.mark.eq(row + 1 == n_rows)]
                    with m.If(copier.cmd.ready):
                        m.d.comb += advance.eq(1)
                        if load:
                            with m.If(is_op("KV_PREFETCH")):
                                m.d.sync += self.prefetch_bytes.eq(self.prefetch_bytes + row_n)
                with m.If(advance):
                    m.d.sync += [row.eq(row + 1), have_int.eq(0),
                                 src_run.eq(src_run + src_step), dst_run.eq(dst_run + dst_step)]
            with m.State("INT_CHECK"):
                m.d.comb += self.busy.eq(1)
                with m.If(int_addr[:2] != 0):
                    fault(isa.ErrorCode.BAD_OPERAND)
                    m.next = "HALTED"
                with m.Elif(int_addr + 4 > dram_size):
                    fault(isa.ErrorCode.DRAM_OUT_OF_RANGE)
                    m.next = "HALTED"
                with m.Else():
                    m.next = "INT_REQ"
            with m.State("INT_REQ"):
                m.d.comb += [self.busy.eq(1), dram.req.valid.eq(1),
                             dram.req.p.addr.eq(int_addr >> ws), dram.req.p.write.eq(0)]
                with m.If(dram.req.ready):
                    m.next = "INT_RSP"
            with m.State("INT_RSP"):
                m.d.comb += [self.busy.eq(1), dram.rsp.ready.eq(1)]
                with m.If(dram.rsp.valid):
                    m.d.sync += [value.eq(dram.rsp.payload >> (int_addr[:ws] << 3)),
                                 have_int.eq(1)]
                    m.next = "ROW"
            with m.State("DRAIN"):
                m.d.comb += self.busy.eq(1)
                with m.If(copier.idle & ~inflight):
                    m.next = "END"
            if not load:
                with m.State("COUNTER"):
                    m.d.comb += self.busy.eq(1)
                    with m.If(counter_i == N_COUNTERS):
                        m.next = "DRAIN"
                    with m.Else():
                        addr = dst_run + (counter_i << 3)
                        with m.Switch(counter_i):
                            for i in range(N_COUNTERS):
                                with m.Case(i):
                                    m.d.comb += counter_word.eq(self.counters[64 * i:64 * (i + 1)])
                        m.d.comb += [dram.req.valid.eq(1),
                                     dram.req.p.addr.eq(addr >> ws), dram.req.p.write.eq(1),
                                     dram.req.p.data.eq(counter_word << (addr[:ws] << 3)),
                                     dram.req.p.mask.eq(Const(0xFF, W) << addr[:ws])]
                        with m.If(dram.req.ready):
                            m.d.sync += counter_i.eq(counter_i + 1)
            with m.State("END"):
                m.d.comb += [self.busy.eq(1), ending.eq(1)]
                m.next = "IDLE"
            with m.State("HALTED"):
                pass

        return m
