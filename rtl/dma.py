"""The DMA engines: the load engine (DRAM -> L2) and the store engine (L2 -> DRAM).

Contract
--------
``DmaEngine(params, direction=...)`` executes the instructions of one engine, in order,
from its queue: ``"load"`` runs ``DMA_LOAD``, ``DMA_GATHER`` and ``KV_PREFETCH``;
``"store"`` runs ``DMA_STORE``, ``KV_APPEND`` and ``STORE_COUNTERS``. Every data
instruction is a loop of row copies through a ``RowCopier``; before a row, the engine
reads the int32 it needs from DRAM (a gather index, or a block-table entry when the
token enters a new KV block) through its own ``aux`` port, while the copier still
moves earlier rows: row copies are queued back to back. The addressing is the same as
``compiler.semantics``:
``KV_PREFETCH`` token ``t`` is read from ``pool + table[t // B] * B * row_bytes +
(t % B) * row_bytes + col_offset``, ``B = kv_block_tokens``.

Three components: the ``EngineShell`` (``rtl/engine.py``) takes each instruction from the
queue, asks the controller to begin it (dependency tokens), ends it (signals) and
reports faults; the ``RowSequencer`` executes it, turning it into row commands (and the
int32 reads and counter writes on ``aux``); the ``RowCopier`` moves the rows.

An instruction that copies rows ends when the copier has written its last row, not when
the engine has issued it: the engine goes on to the next instruction as soon as the last
row command is queued (up to ``DEFERRED`` instructions awaiting their end), so
consecutive loads overlap and each does not pay the DRAM latency alone. Ends come in
program order; an instruction with no rows, and ``STORE_COUNTERS``, first wait for the
ones before them. A row that would leave the L2 or the simulated DRAM, a write with
overlapping rows, a misaligned table or counter address, or a block-table entry outside
the KV pool (``pool_blocks``; an evicted entry, -1, included) or one the controller's
``KV_LIVE`` map does not give the instruction's ``seq`` (``live``) stops the accelerator with
the ``ErrorCode`` the ISA defines. A ``KV_PREFETCH`` of compressed chunks (``kv_format =
CHUNKED``) waits for the row copier to finish, then runs block by block through a row
reader, the decompressor (``rtl/kv_chunks.py``) and a row writer on the engine's ports,
and ends when its last row is written (it is not deferred).
``busy``/``stall`` say whether the engine is executing (or has instructions awaiting
their end) or waiting for tokens with none in flight; ``prefetch_bytes`` counts KV bytes
fetched.

Tested by tests/rtl/test_accelerator.py (DMA, gathers, KV prefetch and append, their
faults) and tests/rtl/test_tiny_rtl.py.
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from arch import isa
from arch.uarch import DEFERRED, KV_CHUNK_MAX_COLS
from rtl.common import RtlParams, check_params, log2
from rtl.controller import ErrorPort, LivePort, TokenPort
from rtl.copier import RowCopier, copy_layout
from rtl.decode import code, field, queued_layout
from rtl.dram import MemPort
from rtl.engine import EngineShell
from rtl.kv_chunks import ChunkExpander

#: The instructions each DMA engine executes, from the ISA declaration.
OPS = {"load": tuple(op.mnemonic for op in isa.opcodes_of(isa.Engine.LOAD)),
       "store": tuple(op.mnemonic for op in isa.opcodes_of(isa.Engine.STORE))}
N_COUNTERS = len(isa.COUNTERS)
ADDR = 40                          # running byte addresses (DRAM and L2, with headroom)
WORD = 32                          # an int32 read from DRAM, row counts and token positions


def _check_direction(direction) -> None:
    if direction not in OPS:
        raise ValueError(f"direction must be 'load' or 'store', not {direction!r}")


class DmaEngine(wiring.Component):
    def __init__(self, *, params: RtlParams, direction: str):
        check_params(params)
        _check_direction(direction)
        self.params = params
        self.direction = direction
        members = {
            "queue": In(stream.Signature(queued_layout())),
            "tokens": Out(TokenPort()),
            "fault": Out(ErrorPort()),
            "idle": Out(1), "busy": Out(1), "stall": Out(1),
            "prefetch_bytes": Out(isa.COUNTER_BITS),
            "live": Out(LivePort()),
            "dram": Out(MemPort(params.dram_addr_bits, params.line_bytes)),
            "aux": Out(MemPort(params.dram_addr_bits, params.line_bytes)),
            "l2": Out(MemPort(params.l2_addr_bits, params.line_bytes)),
        }
        if direction == "store":
            members["counters"] = In(isa.COUNTER_BITS * N_COUNTERS)
        super().__init__(members)

    def elaborate(self, platform):
        load = self.direction == "load"
        m = Module()
        m.submodules.shell = shell = EngineShell(deferred=DEFERRED)
        m.submodules.sequencer = seq = RowSequencer(params=self.params, direction=self.direction)
        m.submodules.copier = copier = RowCopier(params=self.params, src_l2=not load, dst_l2=load)
        for name in ("queue", "tokens", "fault"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(shell, name))
        # The copier's sides are this engine's L2 port and DRAM port; the engine's own
        # int32 reads (indices, block-table entries) and counter writes use ``aux``.
        l2_side, dram_side = (copier.dst, copier.src) if load else (copier.src, copier.dst)
        if load:
            # Compressed chunks: a row reader feeds the decompressor, a row writer takes
            # its rows; they use the engine's ports while the row copier is idle.
            m.submodules.chunk_reader = reader = RowCopier(params=self.params, dst_stream=True)
            m.submodules.chunk_writer = writer = RowCopier(params=self.params, src_stream=True,
                                                           dst_l2=True)
            m.submodules.expander = expander = ChunkExpander(params=self.params)
            wiring.connect(m, reader.out, expander.inp)
            wiring.connect(m, expander.out, writer.inp)
            wiring.connect(m, seq.chunk_rd, reader.cmd)
            wiring.connect(m, seq.chunk_wr, writer.cmd)
            m.d.comb += [expander.start.eq(seq.chunk_start), expander.cols.eq(seq.chunk_cols),
                         seq.hdr_done.eq(expander.hdr_done), seq.hdr_fault.eq(expander.hdr_fault),
                         seq.chunk_used.eq(expander.used),
                         seq.chunk_idle.eq(~expander.busy & reader.idle & writer.idle)]
            _share(m, self.dram, dram_side, reader.src, seq.chunked)
            _share(m, self.l2, l2_side, writer.dst, seq.chunked)
        else:
            wiring.connect(m, wiring.flipped(self.l2), l2_side)
            wiring.connect(m, wiring.flipped(self.dram), dram_side)
        wiring.connect(m, wiring.flipped(self.aux), seq.aux)
        wiring.connect(m, wiring.flipped(self.live), seq.live)
        wiring.connect(m, seq.rows, copier.cmd)
        m.d.comb += [
            self.idle.eq(shell.idle), self.busy.eq(shell.busy), self.stall.eq(shell.stall),
            seq.word.eq(shell.word), seq.start.eq(shell.start),
            seq.inflight.eq(shell.inflight), seq.defer_ready.eq(shell.defer_ready),
            seq.copier_idle.eq(copier.idle),
            shell.done.eq(seq.done), shell.defer.eq(seq.defer), shell.marked.eq(copier.marked),
            shell.error.eq(seq.error), shell.error_code.eq(seq.error_code),
            self.prefetch_bytes.eq(seq.prefetch_bytes),
        ]
        if not load:
            m.d.comb += seq.counters.eq(self.counters)
        return m


def _share(m, port, a, b, use_b) -> None:
    """The engine's memory ``port`` serves client ``a``, or ``b`` while ``use_b`` (the
    other then sees no grant and no data: it must be idle)."""
    outer = wiring.flipped(port)
    for client, on in ((a, ~use_b), (b, use_b)):
        m.d.comb += [client.req.ready.eq(outer.req.ready & on),
                     client.rsp.valid.eq(outer.rsp.valid & on),
                     client.rsp.payload.eq(outer.rsp.payload)]
    m.d.comb += [outer.req.valid.eq(Mux(use_b, b.req.valid, a.req.valid)),
                 outer.req.payload.eq(Mux(use_b, b.req.payload, a.req.payload)),
                 outer.rsp.ready.eq(Mux(use_b, b.rsp.ready, a.rsp.ready))]


class RowSequencer(wiring.Component):
    """Executes one DMA instruction as row commands (the body of a DMA engine).

    Members
    -------
    word, start : the instruction, and the first cycle of its execution.
    rows : ``Out(stream)`` of the copier's row commands (``copy_layout``); the last row
        of an instruction carries ``mark``.
    aux : ``Out(MemPort)``: the int32 reads (gather indices, block-table entries) and the
        counter writes (``STORE_COUNTERS``).
    done : the instruction has finished and ends now (no rows copied, or the counters).
    defer, defer_ready : its last row is queued: it ends when the copier has written it.
    inflight, copier_idle : instructions awaiting their end; the copier has no work.
    error, error_code : the instruction stops the accelerator.
    prefetch_bytes : KV bytes fetched (load engine), running across programs.
    counters : the performance counters (store engine).
    """

    def __init__(self, *, params: RtlParams, direction: str):
        check_params(params)
        _check_direction(direction)
        self.params, self.direction = params, direction
        self.load = direction == "load"
        port = MemPort(params.dram_addr_bits, params.line_bytes)
        members = {
            "word": In(isa.INSTR_BITS), "start": In(1),
            "rows": Out(stream.Signature(copy_layout())), "aux": Out(port),
            "live": Out(LivePort()),
            "done": Out(1), "defer": Out(1), "defer_ready": In(1),
            "inflight": In(1), "copier_idle": In(1),
            "error": Out(1), "error_code": Out(isa.ErrorCode),
            "prefetch_bytes": Out(isa.COUNTER_BITS),
        }
        if not self.load:
            members["counters"] = In(isa.COUNTER_BITS * N_COUNTERS)
        else:
            members.update({
                "chunked": Out(1),          # a CHUNKED prefetch holds the engine's ports
                "chunk_rd": Out(stream.Signature(copy_layout())),
                "chunk_wr": Out(stream.Signature(copy_layout())),
                "chunk_start": Out(1), "chunk_cols": Out(range(KV_CHUNK_MAX_COLS + 1)),
                "hdr_done": In(1), "hdr_fault": In(1), "chunk_used": In(32),
                "chunk_idle": In(1)})
        super().__init__(members)

    # -- the instruction's row loop ------------------------------------------------------
    def _f(self, mnemonic, name):
        return field(self.word, mnemonic, name)

    def _is(self, mnemonic):
        return self.word[:isa.OPCODE_BITS] == code(mnemonic)

    def _fault(self, m, code_):
        m.d.comb += [self.error.eq(1), self.error_code.eq(code_)]
        m.next = "SETUP"

    def _setup(self, m, r):
        """The first cycle: the row loop's registers ``r`` from the instruction's fields."""
        f, load = self._f, self.load
        a = "DMA_LOAD" if load else "DMA_STORE"
        with m.If(self._is(a)):
            src, dst = ("dram", "l2") if load else ("l2", "dram")
            m.d.sync += [r["n_rows"].eq(f(a, "rows")), r["row_bytes"].eq(f(a, "row_bytes")),
                         r["src_run"].eq(f(a, f"{src}_addr")), r["dst_run"].eq(f(a, f"{dst}_addr")),
                         r["src_step"].eq(f(a, f"{src}_stride")),
                         r["dst_step"].eq(f(a, f"{dst}_stride"))]
            with m.If((f(a, "rows") > 1) & (f(a, f"{dst}_stride") < f(a, "row_bytes"))):
                self._fault(m, isa.ErrorCode.BAD_OPERAND)      # overlapping destination rows
            with m.Else():
                m.next = "ROW"
        if load:
            b, c = "DMA_GATHER", "KV_PREFETCH"
            with m.Elif(self._is(b)):
                m.d.sync += [r["n_rows"].eq(f(b, "count")), r["row_bytes"].eq(f(b, "row_bytes")),
                             r["src_base"].eq(f(b, "table_addr")),
                             r["dst_run"].eq(f(b, "l2_addr")), r["dst_step"].eq(f(b, "l2_stride")),
                             r["int_base"].eq(f(b, "idx_addr"))]
                with m.If((f(b, "count") > 1) & (f(b, "l2_stride") < f(b, "row_bytes"))):
                    self._fault(m, isa.ErrorCode.BAD_OPERAND)
                with m.Else():
                    m.next = "ROW"
            with m.Elif(self._is(c)):
                m.d.sync += [r["n_rows"].eq(f(c, "n_tokens")), r["row_bytes"].eq(f(c, "row_bytes")),
                             r["pool"].eq(f(c, "pool_addr") + f(c, "col_offset")),
                             r["dst_run"].eq(f(c, "l2_addr")), r["dst_step"].eq(f(c, "col_bytes")),
                             r["int_base"].eq(f(c, "table_addr")),
                             r["first"].eq(f(c, "first_token")),
                             r["pool_blocks"].eq(f(c, "pool_blocks")), r["seq"].eq(f(c, "seq")),
                             r["c_pool"].eq(f(c, "pool_addr")), r["c_col"].eq(f(c, "col_offset")),
                             r["c_cols"].eq(f(c, "col_bytes"))]
                bt = self.params.hw.kv_block_tokens
                with m.If(f(c, "kv_format") == isa.KvFormat.CHUNKED):
                    # whole blocks of at most KV_CHUNK_MAX_COLS columns (compiler.semantics)
                    with m.If((f(c, "first_token")[:log2(bt)] != 0 if bt > 1 else 0)
                              | (f(c, "n_tokens")[:log2(bt)] != 0 if bt > 1 else 0)
                              | (f(c, "col_bytes") > KV_CHUNK_MAX_COLS)
                              | ((f(c, "col_bytes") == 0) & (f(c, "n_tokens") != 0))):
                        self._fault(m, isa.ErrorCode.BAD_OPERAND)
                    with m.Elif(f(c, "n_tokens") == 0):
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "C_WAIT"
                with m.Else():
                    m.next = "ROW"
        else:
            b, c = "KV_APPEND", "STORE_COUNTERS"
            with m.Elif(self._is(b)):
                m.d.sync += [r["n_rows"].eq(f(b, "n_tokens")), r["row_bytes"].eq(f(b, "row_bytes")),
                             r["pool"].eq(f(b, "pool_addr")), r["src_run"].eq(f(b, "l2_addr")),
                             r["src_step"].eq(f(b, "row_bytes")),
                             r["int_base"].eq(f(b, "table_addr")),
                             r["first"].eq(f(b, "first_token")),
                             r["pool_blocks"].eq(f(b, "pool_blocks")), r["seq"].eq(f(b, "seq"))]
                m.next = "ROW"
            with m.Elif(self._is(c)):
                with m.If(f(c, "dram_addr")[:3] != 0):
                    self._fault(m, isa.ErrorCode.BAD_OPERAND)
                with m.Elif(f(c, "dram_addr") + isa.COUNTER_BYTES * N_COUNTERS
                            > self.params.dram_bytes):
                    self._fault(m, isa.ErrorCode.DRAM_OUT_OF_RANGE)
                with m.Else():
                    m.d.sync += r["dst_run"].eq(f(c, "dram_addr"))
                    m.next = "COUNTER"
        with m.Else():
            self._fault(m, isa.ErrorCode.INVALID_OPCODE)

    def _row_state(self, m, r, row_src, row_dst, row_n, needs_int, kv):
        """One row command per cycle, after the int32 it needs (``INT_*``) is read."""
        p, load, row = self.params, self.load, r["row"]
        src_size, dst_size = ((p.dram_bytes, p.hw.l2_bytes) if load
                              else (p.hw.l2_bytes, p.dram_bytes))
        src_err = isa.ErrorCode.DRAM_OUT_OF_RANGE if load else isa.ErrorCode.L2_OUT_OF_RANGE
        dst_err = isa.ErrorCode.L2_OUT_OF_RANGE if load else isa.ErrorCode.DRAM_OUT_OF_RANGE
        gather = self._is("DMA_GATHER") if load else Const(0)
        advance = Signal()
        with m.If(row == r["n_rows"]):
            # The last row command carried ``mark``: the instruction ends when the copier
            # has written it. With no rows copied, it ends in order (``DRAIN``).
            with m.If((r["n_rows"] == 0) | (row_n == 0)):
                m.next = "DRAIN"
            with m.Else():
                m.d.comb += self.defer.eq(1)
                with m.If(self.defer_ready):
                    m.next = "SETUP"
        with m.Elif(needs_int & ~r["have_int"]):
            with m.If(gather):
                m.d.sync += r["int_addr"].eq(r["int_base"] + (row << log2(isa.INT32_BYTES)))
            with m.Else():
                m.d.sync += r["int_addr"].eq(
                    isa.kv_table_entry_addr(r["int_base"], r["token"], p.hw.kv_block_tokens))
            m.next = "INT_CHECK"
        with m.Elif(kv & ((r["value"] >= r["pool_blocks"]) | ~self.live.live)):  # -1 too
            self._fault(m, isa.ErrorCode.BAD_BLOCK)
        with m.Elif(row_n == 0):
            m.d.comb += advance.eq(1)
        with m.Elif(row_src + row_n > src_size):
            self._fault(m, src_err)
        with m.Elif(row_dst + row_n > dst_size):
            self._fault(m, dst_err)
        with m.Else():
            m.d.comb += [self.rows.valid.eq(1), self.rows.p.src.eq(row_src),
                         self.rows.p.dst.eq(row_dst), self.rows.p.n.eq(row_n),
                         self.rows.p.mark.eq(row + 1 == r["n_rows"])]
            with m.If(self.rows.ready):
                m.d.comb += advance.eq(1)
                if load:
                    with m.If(self._is("KV_PREFETCH")):
                        m.d.sync += self.prefetch_bytes.eq(self.prefetch_bytes + row_n)
        with m.If(advance):
            m.d.sync += [row.eq(row + 1), r["have_int"].eq(0),
                         r["src_run"].eq(r["src_run"] + r["src_step"]),
                         r["dst_run"].eq(r["dst_run"] + r["dst_step"])]

    def _int_states(self, m, r):
        """Read the int32 at ``int_addr`` from DRAM (``aux``) into ``value``."""
        ws, aux, int_addr = self.params.line_shift, self.aux, r["int_addr"]
        with m.State("INT_CHECK"):
            with m.If(int_addr[:2] != 0):
                self._fault(m, isa.ErrorCode.BAD_OPERAND)
            with m.Elif(int_addr + isa.INT32_BYTES > self.params.dram_bytes):
                self._fault(m, isa.ErrorCode.DRAM_OUT_OF_RANGE)
            with m.Else():
                m.next = "INT_REQ"
        with m.State("INT_REQ"):
            m.d.comb += [aux.req.valid.eq(1), aux.req.p.addr.eq(int_addr >> ws),
                         aux.req.p.write.eq(0)]
            with m.If(aux.req.ready):
                m.next = "INT_RSP"
        with m.State("INT_RSP"):
            m.d.comb += aux.rsp.ready.eq(1)
            with m.If(aux.rsp.valid):
                m.d.sync += [r["value"].eq(aux.rsp.payload >> (int_addr[:ws] << 3)),
                             r["have_int"].eq(1)]
                m.next = "ROW"
                if self.load:
                    with m.If(self.chunked):
                        m.next = "C_BLOCK"

    def _counter_state(self, m, r):
        """``STORE_COUNTERS``: one 64-bit counter written per cycle from ``dst_run``."""
        ws, aux, i = self.params.line_shift, self.aux, r["counter_i"]
        bits = isa.COUNTER_BITS
        with m.State("COUNTER"):
            with m.If(i == N_COUNTERS):
                m.next = "DRAIN"
            with m.Else():
                addr = r["dst_run"] + (i << log2(isa.COUNTER_BYTES))
                word = Signal(bits)
                with m.Switch(i):
                    for k in range(N_COUNTERS):
                        with m.Case(k):
                            m.d.comb += word.eq(self.counters[bits * k:bits * (k + 1)])
                m.d.comb += [aux.req.valid.eq(1),
                             aux.req.p.addr.eq(addr >> ws), aux.req.p.write.eq(1),
                             aux.req.p.data.eq(word << (addr[:ws] << 3)),
                             aux.req.p.mask.eq(Const(0xFF, self.params.line_bytes) << addr[:ws])]
                with m.If(aux.req.ready):
                    m.d.sync += i.eq(i + 1)

    def elaborate(self, platform):
        hw, load = self.params.hw, self.load
        m = Module()
        r = {name: Signal(width, name=name) for name, width in (
            ("n_rows", WORD), ("row", WORD), ("value", WORD), ("first", WORD), ("pool", WORD),
            ("pool_blocks", WORD), ("seq", 8),
            ("token", WORD), ("row_bytes", copy_layout().members["n"]),
            ("src_base", ADDR), ("src_step", ADDR), ("dst_step", ADDR), ("int_base", ADDR),
            ("src_run", ADDR), ("dst_run", ADDR), ("int_addr", ADDR), ("kv_src", ADDR),
            ("have_int", 1), ("counter_i", range(N_COUNTERS + 1)),
            ("c_pool", ADDR), ("c_col", WORD), ("c_cols", WORD), ("c_hdr", ADDR),
            ("c_codes", ADDR), ("c_dst", ADDR), ("c_r", WORD))}
        bt = hw.kv_block_tokens
        m.d.comb += [
            self.live.block.eq(r["value"]), self.live.seq.eq(r["seq"]),
            r["token"].eq(r["first"] + r["row"]),
            r["kv_src"].eq(isa.kv_row_addr(r["pool"], r["value"], r["token"], bt, r["row_bytes"])),
        ]
        kv = self._is("KV_PREFETCH" if load else "KV_APPEND")
        needs_int = (self._is("DMA_GATHER") if load else Const(0)) | (
            kv & ((r["row"] == 0) | ((r["token"] & (bt - 1)) == 0)))
        # Row addresses are running sums (2-D DMA) or come from the int32 just read
        # (gather index, block-table entry).
        if load:
            row_src = Mux(kv, r["kv_src"], Mux(self._is("DMA_GATHER"),
                                               r["src_base"] + r["value"] * r["row_bytes"],
                                               r["src_run"]))
            row_dst, row_n = r["dst_run"], Mux(kv, r["dst_step"], r["row_bytes"])
        else:
            row_src, row_dst, row_n = r["src_run"], Mux(kv, r["kv_src"], r["dst_run"]), \
                r["row_bytes"]

        with m.FSM():
            with m.State("SETUP"):
                with m.If(self.start):
                    m.d.sync += [r["row"].eq(0), r["counter_i"].eq(0), r["have_int"].eq(0)]
                    self._setup(m, r)
            with m.State("ROW"):
                self._row_state(m, r, row_src, row_dst, row_n, needs_int, kv)
            self._int_states(m, r)
            with m.State("DRAIN"):
                with m.If(self.copier_idle & ~self.inflight):
                    m.d.comb += self.done.eq(1)
                    m.next = "SETUP"
            if not load:
                self._counter_state(m, r)
            else:
                self._chunk_states(m, r)
        return m

    def _chunk_states(self, m, r):
        """``KV_PREFETCH`` in ``CHUNKED`` format, block by block: once the row copier is
        idle the engine's ports go to the chunk reader and writer (``chunked``); for each
        block its table entry (``INT_*``), its header read into the decompressor
        (``rtl/kv_chunks.py``), then its code bytes, then its rows written to L2; the
        faults in ``compiler.semantics``' order (entry, header range, header, codes range,
        then the block's L2 rows)."""
        p, bt = self.params, self.params.hw.kv_block_tokens
        row, cols = r["row"], r["c_cols"]
        with m.State("C_WAIT"):
            with m.If(self.copier_idle & ~self.inflight):
                m.d.sync += self.chunked.eq(1)
                m.next = "C_ENTRY"
        with m.State("C_ENTRY"):
            with m.If(row == r["n_rows"]):
                m.next = "C_END"
            with m.Else():
                m.d.sync += r["int_addr"].eq(
                    isa.kv_table_entry_addr(r["int_base"], r["token"], bt))
                m.next = "INT_CHECK"
        with m.State("C_BLOCK"):
            header = (r["c_pool"] + r["pool_blocks"] * (bt * r["row_bytes"])
                      + r["value"] * r["row_bytes"] + r["c_col"])
            with m.If((r["value"] >= r["pool_blocks"]) | ~self.live.live):   # -1 too
                self._fault(m, isa.ErrorCode.BAD_BLOCK)
            with m.Elif(header + cols > p.dram_bytes):
                self._fault(m, isa.ErrorCode.DRAM_OUT_OF_RANGE)
            with m.Else():
                m.d.sync += [r["c_hdr"].eq(header),
                             r["c_codes"].eq(r["c_pool"] + r["value"] * (bt * r["row_bytes"])
                                             + r["c_col"] * bt)]
                m.next = "C_HDR"
        with m.State("C_HDR"):
            m.d.comb += [self.chunk_start.eq(1), self.chunk_cols.eq(cols),
                         self.chunk_rd.valid.eq(1), self.chunk_rd.p.src.eq(r["c_hdr"]),
                         self.chunk_rd.p.dst.eq(0), self.chunk_rd.p.n.eq(cols)]
            with m.If(self.chunk_rd.ready):
                m.next = "C_CHECK"
        with m.State("C_CHECK"):
            with m.If(self.hdr_done):
                with m.If(self.hdr_fault):
                    self._fault(m, isa.ErrorCode.BAD_CHUNK)
                with m.Elif(r["c_codes"] + self.chunk_used > p.dram_bytes):
                    self._fault(m, isa.ErrorCode.DRAM_OUT_OF_RANGE)
                with m.Elif(r["dst_run"] + bt * cols > p.hw.l2_bytes):
                    self._fault(m, isa.ErrorCode.L2_OUT_OF_RANGE)
                with m.Else():
                    m.next = "C_CODES"
        with m.State("C_CODES"):
            m.d.comb += [self.chunk_rd.valid.eq(1), self.chunk_rd.p.src.eq(r["c_codes"]),
                         self.chunk_rd.p.dst.eq(0), self.chunk_rd.p.n.eq(self.chunk_used)]
            with m.If(self.chunk_rd.ready):
                m.d.sync += [r["c_r"].eq(0), r["c_dst"].eq(r["dst_run"])]
                m.next = "C_ROWS"
        with m.State("C_ROWS"):
            m.d.comb += [self.chunk_wr.valid.eq(1), self.chunk_wr.p.src.eq(0),
                         self.chunk_wr.p.dst.eq(r["c_dst"]), self.chunk_wr.p.n.eq(cols)]
            with m.If(self.chunk_wr.ready):
                m.d.sync += [r["c_r"].eq(r["c_r"] + 1), r["c_dst"].eq(r["c_dst"] + cols),
                             self.prefetch_bytes.eq(self.prefetch_bytes + cols)]
                with m.If(r["c_r"] + 1 == bt):
                    m.next = "C_NEXT"
        with m.State("C_NEXT"):
            with m.If(self.chunk_idle):
                m.d.sync += [row.eq(row + bt), r["dst_run"].eq(r["dst_run"] + bt * cols)]
                m.next = "C_ENTRY"
        with m.State("C_END"):
            with m.If(self.chunk_idle):
                m.d.comb += self.done.eq(1)
                m.d.sync += self.chunked.eq(0)
                m.next = "SETUP"
