"""The KV prefetch engine's decompressor: a compressed KV chunk in, its int8 rows out.

Contract
--------
``ChunkExpander(params=)`` expands one chunk of ``arch.isa``'s ``CHUNKED`` KV format (one
KV block of one head: a header byte a channel, then each channel's group of ``B`` codes
at 2, 4 or 8 bits, back to back; ``B = kv_block_tokens``) into the ``B`` int8 token rows
an int8 ``KV_PREFETCH`` would have written, ``code << shift`` each
(``arch.isa.kv_chunk_unpack``). The load engine (``rtl/dma.py``) drives it:

* ``start`` with ``cols`` (1 to ``KV_CHUNK_MAX_COLS`` channels) begins a chunk; its
  header bytes then arrive on ``inp`` as a row reader's beats (``copier.beat_layout``,
  realigned to byte 0, the last beat flagged), then its code bytes the same way;
* after the header's last beat, ``hdr_done`` is high with ``hdr_fault`` (a byte that is
  not a chunk header: ``kv_chunk_fault``) and ``used``, the code bytes its widths take,
  which the engine reads next;
* each cycle one group is taken from a byte buffer the beats fill (up to ``W + B``
  bytes; a group is ``ceil(B * bits / 8)`` of them) and its ``B`` values become one
  column of a ``B`` x ``KV_CHUNK_MAX_COLS`` transpose buffer (one memory a token row,
  written a line of ``W`` columns at a time from a staged line);
* then ``out`` gives the rows, row after row, each from byte 0 in ``ceil(cols / W)``
  lines, as a row writer takes them; ``busy`` falls after the last.

One group a cycle: a chunk of ``cols`` channels takes ``cols`` cycles to expand and ``B *
ceil(cols / W)`` to write out, one after the other (the buffer is not doubled).

Tested by tests/rtl/test_accelerator.py (chunked prefetches against the ISA simulator,
whole DRAM and L2, and their faults) and tests/rtl/test_tiny_rtl.py.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from arch import isa
from arch.uarch import KV_CHUNK_MAX_COLS
from rtl.common import RtlParams, check_params, log2, tree_sum
from rtl.copier import beat_layout

HEADER_FIELD_BITS = 5      # a channel's width code (2 bits) and shift (3 bits)


def group_bytes(params: RtlParams) -> dict[int, int]:
    """Bytes of one group at each header width code (``isa.KV_WIDTH_CODES``)."""
    B = params.hw.kv_block_tokens
    return {code: isa.kv_group_bytes(bits, B) for bits, code in isa.KV_WIDTH_CODES.items()}


class ChunkExpander(wiring.Component):
    def __init__(self, *, params: RtlParams):
        check_params(params)
        if KV_CHUNK_MAX_COLS % params.line_bytes:
            raise ValueError(f"KV_CHUNK_MAX_COLS = {KV_CHUNK_MAX_COLS} is not a whole number "
                             f"of {params.line_bytes}-byte lines")
        self.params = params
        super().__init__({
            "start": In(1), "cols": In(range(KV_CHUNK_MAX_COLS + 1)),
            "inp": In(stream.Signature(beat_layout(params.line_bytes))),
            "hdr_done": Out(1), "hdr_fault": Out(1), "used": Out(32),
            "out": Out(stream.Signature(8 * params.line_bytes)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        p = self.params
        W, B = p.line_bytes, p.hw.kv_block_tokens
        words = KV_CHUNK_MAX_COLS // W
        sizes = group_bytes(p)
        cap = W + max(sizes.values())
        m = Module()
        cols, c = Signal.like(self.cols), Signal(range(KV_CHUNK_MAX_COLS + 1))
        beat_k = Signal(range(words + 1))                  # header beat / output beat
        row = Signal(range(B + 1))
        # each channel's width code and shift, a line of channels a word, written as the
        # header's beats arrive and read a channel at a time while expanding
        m.submodules.header = header = memory.Memory(shape=HEADER_FIELD_BITS * W, depth=words,
                                                     init=[])
        hdr_w, hdr_r = header.write_port(), header.read_port(domain="comb")
        buf, have = Signal(8 * cap), Signal(range(cap + 1))
        n_beats = (cols + W - 1) >> log2(W)

        # the transpose buffer: memory r holds token row r, a line of channels a word,
        # written a whole line at a time from a line of staged columns (byte-lane writes
        # into B memories made Verilator's C++ take minutes to compile)
        rows = []
        for r in range(B):
            m.submodules[f"row{r}"] = mem = memory.Memory(shape=8 * W, depth=words, init=[])
            rows.append((mem.write_port(), mem.read_port(domain="comb")))

        beat = self.inp.payload
        m.d.comb += self.busy.eq(1)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.busy.eq(0)
                with m.If(self.start):
                    m.d.sync += [cols.eq(self.cols), beat_k.eq(0), self.hdr_done.eq(0),
                                 self.hdr_fault.eq(0), self.used.eq(0), c.eq(0),
                                 have.eq(0), buf.eq(0)]
                    m.next = "HDR"
            with m.State("HDR"):
                self._header_beat(m, beat, beat_k, cols, hdr_w, sizes)
                with m.If(self.inp.valid & beat.last):
                    m.d.sync += self.hdr_done.eq(1)
                    m.next = "CODES"
            with m.State("CODES"):
                self._codes(m, buf, have, c, cols, hdr_r, sizes, cap, rows)
                with m.If((c == cols) & (have == 0)):
                    m.d.sync += [row.eq(0), beat_k.eq(0)]
                    m.next = "OUT"
            with m.State("OUT"):
                data = Signal(8 * W)
                with m.Switch(row):
                    for r, (_, rp) in enumerate(rows):
                        with m.Case(r):
                            m.d.comb += data.eq(rp.data)
                for _, rp in rows:
                    m.d.comb += rp.addr.eq(beat_k)
                m.d.comb += [self.out.valid.eq(1), self.out.payload.eq(data)]
                with m.If(self.out.ready):
                    last_beat = beat_k + 1 == n_beats
                    m.d.sync += beat_k.eq(Mux(last_beat, 0, beat_k + 1))
                    with m.If(last_beat):
                        m.d.sync += row.eq(row + 1)
                        with m.If(row + 1 == B):
                            m.next = "IDLE"
        return m

    def _header_beat(self, m, beat, beat_k, cols, hdr_w, sizes):
        """One beat of header bytes: channels ``[k W, (k + 1) W)``, each checked as
        ``kv_chunk_fault`` checks it, its group's bytes added to ``used``, its width code
        and shift written to word ``k`` of the header memory."""
        W = self.params.line_bytes
        m.d.comb += self.inp.ready.eq(1)
        bad, used, fields = [], [], []
        for b in range(W):
            byte = beat.data[8 * b:8 * b + 8]
            ch = Cat(Const(b, range(W)), beat_k)            # k * W + b
            code = byte[:2]
            wrong = isa.kv_header_byte_wrong(byte, ch == 0, Mux)
            live = ch < cols
            bad.append(live & wrong)
            fields.append(Cat(code, byte[isa.KV_HEADER_SHIFT_LSB:isa.KV_HEADER_SHIFT_LSB + 3]))
            used.append(Mux(live, Mux(code == 1, sizes[1], Mux(code == 2, sizes[2], sizes[3])),
                            0))
        m.d.comb += [hdr_w.addr.eq(beat_k), hdr_w.data.eq(Cat(*fields)),
                     hdr_w.en.eq(self.inp.valid)]
        with m.If(self.inp.valid):
            m.d.sync += [self.hdr_fault.eq(self.hdr_fault | Cat(*bad).any()),
                         self.used.eq(self.used + tree_sum(used)), beat_k.eq(beat_k + 1)]

    def _codes(self, m, buf, have, c, cols, hdr_r, sizes, cap, rows):
        """Fill the byte buffer from the beats and take one group a cycle, writing its
        values as column ``c`` of the transpose buffer."""
        W, B = self.params.line_bytes, self.params.hw.kv_block_tokens
        code_c, shift_c = Signal(2), Signal(3)
        lane = c[:log2(W)] if W > 1 else Const(0)
        m.d.comb += [hdr_r.addr.eq(c >> log2(W)),
                     Cat(code_c, shift_c).eq(hdr_r.data.word_select(lane, HEADER_FIELD_BITS))]
        g = Signal(range(cap + 1))
        m.d.comb += g.eq(Mux(code_c == 1, sizes[1], Mux(code_c == 2, sizes[2], sizes[3])))
        pop = Signal()
        m.d.comb += pop.eq((c < cols) & (have >= g))
        kept = Signal(range(cap + 1))
        m.d.comb += kept.eq(have - Mux(pop, g, 0))
        beat = self.inp.payload
        n_in = tree_sum([beat.mask[b] for b in range(W)])
        push = Signal()
        m.d.comb += [push.eq(self.inp.valid & (kept + W <= cap)), self.inp.ready.eq(push)]
        masked = Cat(*(Mux(beat.mask[b], beat.data[8 * b:8 * b + 8], 0) for b in range(W)))
        shifted = Signal.like(buf)
        with m.Switch(Mux(pop, g, 0)):
            for amount in sorted({0, *sizes.values()}):
                with m.Case(amount):
                    m.d.comb += shifted.eq(buf >> (8 * amount))
        incoming = Signal.like(buf)
        m.d.comb += incoming.eq(Mux(push, masked, 0) << (kept << 3))
        m.d.sync += [buf.eq(shifted | incoming), have.eq(kept + Mux(push, n_in, 0))]
        # the group's values: code r of the group at bits [r * bits, (r + 1) * bits)
        values = []
        for r in range(B):
            v = Signal(8, name=f"value{r}")
            with m.Switch(code_c):
                for code, bits in ((1, 2), (2, 4), (3, 8)):
                    with m.Case(code):
                        field = buf[bits * r:bits * (r + 1)].as_signed()
                        m.d.comb += v.eq((field << shift_c)[:8])
            values.append(v)
        # column c joins the staged line of its row; a full line (or the chunk's last
        # column) goes to the row's memory, word c / W
        flush = pop & ((lane == W - 1) | (c + 1 == cols))
        for r, ((wp, _), v) in enumerate(zip(rows, values, strict=True)):
            staged = Signal(8 * W, name=f"staged{r}")
            merged = Cat(*(Mux(lane == b, v, staged[8 * b:8 * b + 8]) for b in range(W)))
            m.d.comb += [wp.addr.eq(c >> log2(W)), wp.data.eq(merged), wp.en.eq(flush)]
            with m.If(pop):
                m.d.sync += staged.eq(merged)
        with m.If(pop):
            m.d.sync += c.eq(c + 1)
