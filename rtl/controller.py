"""The controller: instruction fetch, decode, dispatch, dependency tokens and the error state.

Contract
--------
On a ``start`` pulse the controller fetches 32-byte instructions from DRAM at byte
address ``pc`` onwards, keeping up to ``FETCH_AHEAD`` reads in flight so that fetch
hides the DRAM latency. Each instruction is decoded with the table generated from the
ISA declaration and pushed, with its program index, into the queue of its engine
(``QUEUE_DEPTH`` deep); fetch stalls while that queue is full. ``HALT`` stops fetching;
``done`` rises once every queue is empty and every engine idle.

``KV_LIVE`` waits until every queue is empty and every engine idle, then reads its map
of the KV blocks' owners through its own DRAM port (``map_rd``, one 32-byte word a
request) into the map memory, and is accepted once the last word is in; from then until
the next ``start`` each DMA engine looks its block-table entries up in it with its
instruction's ``seq`` (``live_load``, ``live_store``: a block neither that sequence's nor
shared, or at or beyond ``map_blocks``, is refused; before a ``KV_LIVE`` every block is
allowed). Its operand faults (``isa.operand_faults``) and a map
beyond DRAM stop the accelerator with the instruction's index.

An unknown opcode, or a dependency mask that names the instruction's own engine, stops
the accelerator in its error state (``error``, ``error_code`` from ``ErrorCode``,
``error_index``); so does the first error an engine reports.

Dependency tokens: one counter of ``token_counter_bits`` per ordered engine pair. An
engine asks to ``begin`` its head instruction with its wait and signal masks; the
controller allows it when every waited counter is non-zero and every signalled counter,
plus the signals of that engine's instructions that have begun but not ended, is below
its maximum, and decrements the waited counters. ``end`` (with ``end_signal``, the mask
of the instruction ending, which on the DMA engines may be an earlier one than the
instruction at the head) increments the signalled counters.
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from arch import isa
from arch.uarch import DEFERRED, FETCH_AHEAD, KV_MAP_BLOCKS, QUEUE_DEPTH
from rtl.common import RtlParams, check_params, log2
from rtl.decode import (
    INDEX_BITS,
    code,
    engine_of,
    field,
    opcode,
    queued_layout,
    signal_mask,
    wait_mask,
)
from rtl.dram import MemPort

N_ENGINES = len(isa.ENGINES)


class TokenPort(wiring.Signature):
    """An engine's side of the token handshake."""

    def __init__(self):
        super().__init__({
            "begin": Out(1), "wait": Out(isa.MASK_BITS), "signal": Out(isa.MASK_BITS),
            "allowed": In(1),
            "end": Out(1), "end_signal": Out(isa.MASK_BITS),
        })


class ErrorPort(wiring.Signature):
    def __init__(self):
        super().__init__({"valid": Out(1), "code": Out(isa.ErrorCode.as_shape()),
                          "index": Out(INDEX_BITS)})


class LivePort(wiring.Signature):
    """A DMA engine's look-up in the block-owner map: the block-table entry it holds and
    the sequence its instruction names, and whether that sequence may touch that block
    (``KV_LIVE``; ``arch.isa.kv_map_allows``)."""

    def __init__(self):
        super().__init__({"block": Out(32), "seq": Out(8), "live": In(1)})


class Controller(wiring.Component):
    def __init__(self, *, params: RtlParams):
        check_params(params)
        self.params = params
        members = {
            "start": In(1), "pc": In(isa.DRAM_ADDR_BITS),
            "done": Out(1), "error": Out(1), "error_code": Out(isa.ErrorCode.as_shape()),
            "error_index": Out(INDEX_BITS),
            "running": Out(1),
            "fetch": Out(MemPort(params.dram_addr_bits, params.line_bytes)),
            "map_rd": Out(MemPort(params.dram_addr_bits, params.line_bytes)),
            "live_load": In(LivePort()), "live_store": In(LivePort()),
            "instructions": Out(isa.COUNTER_BITS),
            "engine_idle": In(N_ENGINES),
        }
        for e in range(N_ENGINES):
            members[f"queue{e}"] = Out(stream.Signature(queued_layout()))
            members[f"tokens{e}"] = In(TokenPort())
            members[f"fault{e}"] = In(ErrorPort())
        super().__init__(members)

    def queue(self, e):
        return getattr(self, f"queue{e}")

    def tokens(self, e):
        return getattr(self, f"tokens{e}")

    def fault(self, e):
        return getattr(self, f"fault{e}")

    def _raise_error(self, m, code, index):
        """Enter the error state (the first error wins)."""
        with m.If(~self.error):
            m.d.sync += [self.error.eq(1), self.error_code.eq(code), self.error_index.eq(index)]

    def elaborate(self, platform):
        m = Module()
        running = Signal()
        halted = Signal()
        issuing = Signal()
        m.d.comb += self.running.eq(running)
        for e in range(N_ENGINES):
            with m.If(self.fault(e).valid & running):
                self._raise_error(m, self.fault(e).code, self.fault(e).index)
        with m.If(self.start):
            m.d.sync += [running.eq(1), halted.eq(0), issuing.eq(1),
                         self.done.eq(0), self.error.eq(0), self.error_code.eq(0),
                         self.error_index.eq(0), self.instructions.eq(0)]
        pending, fetched = self._fetch(m, running, issuing)
        queues = self._dispatch(m, fetched, running, halted, issuing)

        # -- completion ------------------------------------------------------------------------
        drained = Signal()
        m.d.comb += drained.eq((self.engine_idle == (1 << N_ENGINES) - 1) & ~pending.r_rdy
                               & ~fetched.r_rdy & ~Cat(*[q.r_rdy for q in queues]).any())
        with m.If(running & (halted | self.error) & drained & ~self.start):
            m.d.sync += [running.eq(0), self.done.eq(halted & ~self.error)]
        with m.If(self.error):
            m.d.sync += issuing.eq(0)
        self._tokens(m)
        return m

    def _fetch(self, m, running, issuing):
        """Instruction fetch: ``(pending reads, fetched instructions)`` queues."""
        ws = self.params.line_shift
        # A read is issued only when the instruction buffer is sure to have room for its
        # data, so fetch never refuses a DRAM response: responses return in order on the
        # shared DRAM port, and a refused one would block every engine's reads behind it.
        ip = Signal(INDEX_BITS)                # next instruction to request
        m.submodules.pending = pending = fifo.SyncFIFOBuffered(
            width=INDEX_BITS + ws, depth=FETCH_AHEAD)
        m.submodules.fetched = fetched = fifo.SyncFIFOBuffered(
            width=INDEX_BITS + isa.INSTR_BITS, depth=FETCH_AHEAD)
        byte_addr = self.pc + (ip << log2(isa.INSTR_BYTES))
        req = self.fetch.req
        room = (pending.level + fetched.level) < FETCH_AHEAD
        m.d.comb += [
            req.p.addr.eq(byte_addr >> ws), req.p.write.eq(0),
            req.valid.eq(running & issuing & room & ~self.error),
            pending.w_en.eq(req.valid & req.ready),
            pending.w_data.eq(Cat(ip, byte_addr[:ws])),
        ]
        with m.If(req.valid & req.ready):
            m.d.sync += ip.eq(ip + 1)
        with m.If(self.start):
            m.d.sync += ip.eq(0)

        rsp = self.fetch.rsp
        line_offset = pending.r_data[INDEX_BITS:]
        m.d.comb += [
            rsp.ready.eq(1),
            pending.r_en.eq(rsp.valid),
            fetched.w_en.eq(rsp.valid),
            fetched.w_data.eq(Cat(pending.r_data[:INDEX_BITS],
                                  (rsp.payload >> (line_offset << 3))[:isa.INSTR_BITS])),
        ]
        return pending, fetched

    def _dispatch(self, m, fetched, running, halted, issuing):
        """Decode each fetched instruction and push it into its engine's queue."""
        index = fetched.r_data[:INDEX_BITS]
        word = Signal(isa.INSTR_BITS)
        m.d.comb += word.eq(fetched.r_data[INDEX_BITS:])
        op = opcode(word)
        engine, valid = engine_of(m, op)
        own = Signal(isa.MASK_BITS)
        m.d.comb += own.eq(1 << engine)
        bad_mask = (engine != int(isa.Engine.CONTROL)) & (
            ((wait_mask(word) | signal_mask(word)) & own) != 0)
        layout = queued_layout()
        queues = []
        for e in range(N_ENGINES):
            q = fifo.SyncFIFOBuffered(width=layout.size, depth=QUEUE_DEPTH)
            m.submodules[f"queue{e}"] = q
            out = self.queue(e)
            m.d.comb += [out.valid.eq(q.r_rdy), out.payload.eq(q.r_data), q.r_en.eq(out.ready)]
            queues.append(q)
        target_ready = Signal()
        with m.Switch(engine):
            for e in range(N_ENGINES):
                with m.Case(e):
                    m.d.comb += target_ready.eq(queues[e].w_rdy)
        arrived = fetched.r_rdy
        dropping = halted | self.error | ~running
        accept = Signal()
        # (a queue's level, not its r_rdy: the buffered FIFO shows an instruction pushed
        # this cycle at its output only two cycles later)
        idle = (self.engine_idle == (1 << N_ENGINES) - 1) & Cat(*[q.level == 0
                                                                  for q in queues]).all()
        mapped = self._live_map(m, word, index, arrived & ~dropping & (op == code("KV_LIVE")),
                                idle)
        with m.If(arrived & dropping):
            m.d.comb += accept.eq(1)
        with m.Elif(arrived & ~valid):
            m.d.comb += accept.eq(1)
            self._raise_error(m, int(isa.ErrorCode.INVALID_OPCODE), index)
        with m.Elif(arrived & bad_mask):
            m.d.comb += accept.eq(1)
            self._raise_error(m, int(isa.ErrorCode.SELF_DEPENDENCY), index)
        with m.Elif(arrived & (op == code("KV_LIVE"))):
            with m.If(mapped):
                m.d.comb += accept.eq(1)
                m.d.sync += self.instructions.eq(self.instructions + 1)
        with m.Elif(arrived & (engine == int(isa.Engine.CONTROL))):
            m.d.comb += accept.eq(1)
            m.d.sync += [halted.eq(1), issuing.eq(0),
                         self.instructions.eq(self.instructions + 1)]
        with m.Elif(arrived & target_ready):
            m.d.comb += accept.eq(1)
            m.d.sync += self.instructions.eq(self.instructions + 1)
        for e in range(N_ENGINES):
            m.d.comb += [
                queues[e].w_en.eq(arrived & ~dropping & valid & ~bad_mask & (engine == e)
                                  & target_ready),
                queues[e].w_data.eq(Cat(word, index)),
            ]
        m.d.comb += fetched.r_en.eq(accept)
        return queues

    def _live_map(self, m, word, index, kv_live, idle):
        """``KV_LIVE``: once ``idle``, check it, read its map words into the map memory;
        the live look-ups of the DMA engines. Returns the cycle the map is complete."""
        p, ws = self.params, self.params.line_shift
        wbytes, wblocks = isa.KV_MAP_WORD_BYTES, isa.KV_MAP_WORD_BLOCKS
        depth = KV_MAP_BLOCKS // wblocks
        m.submodules.live_map = mem = Memory(shape=8 * wbytes, depth=depth, init=[])
        wr = mem.write_port()
        width = isa.BY_MNEMONIC["KV_LIVE"].field("map_blocks").bits
        valid, blocks = Signal(), Signal(width)          # a map read since start; its size
        with m.If(self.start):
            m.d.sync += valid.eq(0)
        for port in (self.live_load, self.live_store):
            rd = mem.read_port(domain="comb")
            b = port.block
            owner = rd.data.word_select(b[:log2(wblocks)], 8)
            m.d.comb += [rd.addr.eq(b[log2(wblocks):]),
                         port.live.eq(~valid | ((b < blocks) & ((owner == port.seq + 1)
                                                                | (owner == isa.KV_SHARED))))]
        map_addr, map_blocks = field(word, "KV_LIVE", "map_addr"), field(word, "KV_LIVE",
                                                                          "map_blocks")
        words = Signal(range(isa.kv_map_words((1 << width) - 1) + 1))
        m.d.comb += words.eq((map_blocks + wblocks - 1) >> log2(wblocks))
        asked, got = Signal(range(depth + 1)), Signal(range(depth + 1))
        done = Signal()
        faults = isa.operand_faults("KV_LIVE", lambda name: field(word, "KV_LIVE", name))
        req, rsp = self.map_rd.req, self.map_rd.rsp
        with m.FSM(name="live"):
            with m.State("IDLE"):
                with m.If(kv_live & idle):
                    with m.If(Cat(*[bad for bad, _ in faults]).any()):
                        self._raise_error(m, int(isa.ErrorCode.BAD_OPERAND), index)
                    with m.Elif(map_addr + words * wbytes > p.dram_bytes):
                        self._raise_error(m, int(isa.ErrorCode.DRAM_OUT_OF_RANGE), index)
                    with m.Else():
                        m.d.sync += [asked.eq(0), got.eq(0)]
                        m.next = "READ"
            with m.State("READ"):
                at = map_addr + (asked << log2(wbytes))
                m.d.comb += [req.valid.eq((asked < words) & ~self.error),
                             req.p.addr.eq(at >> ws), req.p.write.eq(0)]
                with m.If(req.valid & req.ready):
                    m.d.sync += asked.eq(asked + 1)
                back = map_addr + (got << log2(wbytes))
                m.d.comb += [rsp.ready.eq(1), wr.addr.eq(got), wr.en.eq(rsp.valid),
                             wr.data.eq((rsp.payload >> (back[:ws] << 3))[:8 * wbytes])]
                with m.If(rsp.valid):
                    m.d.sync += got.eq(got + 1)
                with m.If(got == words):
                    m.d.comb += done.eq(1)
                    m.d.sync += [valid.eq(1), blocks.eq(map_blocks)]
                    m.next = "IDLE"
                with m.If(self.error):
                    m.next = "IDLE"
        return done

    def _tokens(self, m):
        """The dependency-token counters, one per ordered engine pair."""
        # ``pending``: signals of instructions that have begun and not yet ended (several
        # on a DMA engine, whose instructions end when their rows are written), counted
        # against the limit so that no counter can overflow.
        p = self.params
        limit = (1 << p.hw.token_counter_bits) - 1
        pairs = [(a, b) for a in range(N_ENGINES) for b in range(N_ENGINES) if a != b]
        count = {(a, b): Signal(p.hw.token_counter_bits, name=f"tokens_{a}_{b}")
                 for a, b in pairs}
        pending = {(a, b): Signal(range(DEFERRED + 2), name=f"pending_{a}_{b}")
                   for a, b in pairs}
        allowed = []
        for b in range(N_ENGINES):
            port = self.tokens(b)
            ok = [~port.wait[a] | (count[(a, b)] != 0) for a in range(N_ENGINES) if a != b]
            ok += [~port.signal[c] | (count[(b, c)] + pending[(b, c)] < limit)
                   for c in range(N_ENGINES) if c != b]
            allow = Signal(name=f"allow{b}")
            m.d.comb += [allow.eq(Cat(*ok).all() & ~self.error), port.allowed.eq(allow)]
            allowed.append(allow)
        for a, b in pairs:
            inc = self.tokens(a).end & self.tokens(a).end_signal[b]
            dec = self.tokens(b).begin & allowed[b] & self.tokens(b).wait[a]
            reserve = self.tokens(a).begin & allowed[a] & self.tokens(a).signal[b]
            m.d.sync += [count[(a, b)].eq(count[(a, b)] + inc - dec),
                         pending[(a, b)].eq(pending[(a, b)] + reserve - inc)]
            with m.If(self.start):
                m.d.sync += [count[(a, b)].eq(0), pending[(a, b)].eq(0)]
