"""The vector unit: every non-matmul compute instruction as streaming passes over rows.

Contract
--------
``VectorUnit(params)`` executes one instruction word at a time (``start`` with ``word``;
``done`` one cycle after its last byte is written): ``REQUANT``, ``RMSNORM``, ``ROPE``,
``SOFTMAX``, ``SILU_MUL``, ``RESADD`` and ``ARGMAX``, bit-exact with the
``models.numerics`` operators through the lane datapaths of ``rtl.lanes``. Addressing is
``compiler.semantics``.

An instruction is a sequence of *segments*: one pass over one row (or, for ``ROPE``, one
head of one token). Each segment streams up to three operands through row readers
(``port0..2``) in lockstep, ``HardwareConfig.vector_lanes_per_cycle`` elements per cycle
(``min(vector_lanes, W / 8)``), and writes up to two results through row writers
(``port3``, ``port4``):

=========  ================================================  ==============================
 op         segments per row                                  operands -> result
=========  ================================================  ==============================
REQUANT    (a scalar read first: once per block for          acc, param, bias -> int8/16
           TENSOR, before each row for ROW) 1
RMSNORM    2: sum of squares; scale                          h -> int8
SOFTMAX    3: visible maximum; exp2 sum; probabilities       scores -> int8, row word
SILU_MUL   1                                                 gate, up, param pairs -> int8
RESADD     1                                                 h, acc, param -> h (in place)
ROPE       one per head                                      x1, x2, freq -> y1, y2
ARGMAX     1 (one row)                                       logits -> int32 index
=========  ================================================  ==============================

Components joined by streams: the ``SegmentIssuer`` walks the segments, giving the
readers and writers their row commands and queueing a descriptor for each segment (a
stream into the segment queue); the ``VectorDatapath`` takes descriptors in order and
consumes the operand beats (the readers' streams), so the reads of later rows run ahead
of the arithmetic, and streams its packed results into the writers. Operand element
sizes come from the ISA declaration (``Field.elem_bytes``, ``OUT_BYTES``) and the
parameter words are ``arch.isa.PARAM_WORD``.
Row state between passes (sum of squares, maximum, exp2 sum, best index) lives in the
datapath. Each segment's reads and writes are of the same row, read before written, so
in-place operands (``RESADD``, ``ROPE`` with ``dst == src``) are safe.
"""

from __future__ import annotations

import enum

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from arch import isa
from arch.uarch import SEGMENT_DEPTH
from rtl import lanes
from rtl.common import RtlParams, check_params, log2, tree_sum
from rtl.copier import RowCopier, beat_layout, copy_layout
from rtl.decode import code, field
from rtl.dram import MemPort

N_READ, N_WRITE = 3, 2


class Kind(enum.IntEnum):
    """What the datapath does with one segment."""
    SCALAR = 0        # REQUANT: read the block's (TENSOR) or the row's (ROW) parameter word
    REQUANT = 1
    RMS_SUM = 2
    RMS_OUT = 3
    SM_MAX = 4
    SM_SUM = 5
    SM_OUT = 6
    SILU = 7
    RESADD = 8
    ROPE = 9
    ARGMAX = 10


def elem_bytes(mnemonic: str, name: str) -> int:
    """Bytes per element of an L2 operand, from the ISA declaration."""
    return isa.BY_MNEMONIC[mnemonic].field(name).elem_bytes


def _streams(mnemonic: str, *names: str) -> dict[int, int]:
    return {s: elem_bytes(mnemonic, name) for s, name in enumerate(names) if name}


# Element bytes of each operand stream, per kind (the one table both sides use).
ELEMENT_BYTES: dict[Kind, dict[int, int]] = {
    Kind.SCALAR: _streams("REQUANT", None, "param_addr"),
    Kind.REQUANT: _streams("REQUANT", "src_addr", "param_addr", "bias_addr"),
    Kind.RMS_SUM: _streams("RMSNORM", "src_addr"), Kind.RMS_OUT: _streams("RMSNORM", "src_addr"),
    Kind.SM_MAX: _streams("SOFTMAX", "src_addr"), Kind.SM_SUM: _streams("SOFTMAX", "src_addr"),
    Kind.SM_OUT: _streams("SOFTMAX", "src_addr"),
    # SILU_MUL reads two parameter words per column: the gate's, then the output's.
    Kind.SILU: {**_streams("SILU_MUL", "gate_addr", "up_addr"),
                2: 2 * elem_bytes("SILU_MUL", "param_addr")},
    Kind.RESADD: _streams("RESADD", "h_addr", "acc_addr", "param_addr"),
    Kind.ROPE: _streams("ROPE", "src_addr", "src_addr", "freq_addr"),
    Kind.ARGMAX: _streams("ARGMAX", "src_addr"),
}


def segment_layout() -> data.StructLayout:
    return data.StructLayout({"kind": 4, "n": isa.COLS.bits, "row": isa.ROWS.bits})


def scale(count, nbytes: int):
    """``count`` elements of ``nbytes`` bytes, in bytes (a shift: sizes are powers of 2)."""
    return count << log2(nbytes)


def param_word(value) -> data.View:
    """A requantisation parameter word (``isa.PARAM_WORD``) in the low bits of ``value``."""
    return isa.PARAM_WORD(value[:isa.PARAM_WORD.size])


class SegmentIssuer(wiring.Component):
    """Walks an instruction's segments: row commands to the readers and writers, and one
    descriptor per segment, all issued together in one cycle.

    Members
    -------
    start, start_word : a new instruction (the word given with ``start``).
    word : the instruction, held from the cycle after ``start``.
    segments : ``Out(stream)`` of ``segment_layout``.
    read0..2, write0..1 : ``Out(stream)`` of ``copy_layout``: the row readers' and
        writers' commands.
    issuing : segments are left to issue.
    """

    def __init__(self):
        cmd = stream.Signature(copy_layout())
        members = {"start": In(1), "start_word": In(isa.INSTR_BITS), "word": In(isa.INSTR_BITS),
                   "segments": Out(stream.Signature(segment_layout())), "issuing": Out(1)}
        members.update({f"read{i}": Out(cmd) for i in range(N_READ)})
        members.update({f"write{i}": Out(cmd) for i in range(N_WRITE)})
        super().__init__(members)

    def _common(self, m, name, ops):
        """A field that several ops hold at different places, for the current op."""
        width = max(isa.BY_MNEMONIC[mn].field(name).bits for mn in ops)
        value = Signal(width, name=f"op_{name}")
        with m.Switch(self.word[:isa.OPCODE_BITS]):
            for mn in ops:
                with m.Case(code(mn)):
                    m.d.comb += value.eq(field(self.word, mn, name))
        return value

    def _commands(self, m, row, part, pre, cols, rd, wr):
        """This segment's kind, length and row commands, for the current op."""
        op = self.word[:isa.OPCODE_BITS]

        def f(mnemonic, name):
            return field(self.word, mnemonic, name)

        def read(i, addr, nbytes, on=1):
            return [rd[i]["on"].eq(on), rd[i]["addr"].eq(addr), rd[i]["bytes"].eq(nbytes)]

        def write(i, addr, nbytes):
            return [wr[i]["on"].eq(1), wr[i]["addr"].eq(addr), wr[i]["bytes"].eq(nbytes)]

        def at_row(mnemonic, addr, stride):
            return f(mnemonic, addr) + row * f(mnemonic, stride)

        kind, n = Signal(4), Signal(isa.COLS.bits)
        e = elem_bytes
        with m.If(op == code("REQUANT")):
            out16 = f("REQUANT", "out_bits") == isa.OutBits.INT16
            by_row = f("REQUANT", "params") == isa.ParamMode.ROW
            word = e("REQUANT", "param_addr")
            with m.If(pre):
                m.d.comb += [kind.eq(Kind.SCALAR), n.eq(1),
                             *read(1, f("REQUANT", "param_addr") + Mux(by_row, row * word, 0),
                                   word)]
            with m.Else():
                m.d.comb += [
                    kind.eq(Kind.REQUANT), n.eq(cols),
                    *read(0, at_row("REQUANT", "src_addr", "src_stride"),
                          scale(cols, e("REQUANT", "src_addr"))),
                    *read(1, f("REQUANT", "param_addr"), scale(cols, e("REQUANT", "param_addr")),
                          f("REQUANT", "params") == isa.ParamMode.CHANNEL),
                    *read(2, f("REQUANT", "bias_addr"), scale(cols, e("REQUANT", "bias_addr")),
                          f("REQUANT", "has_bias")),
                    *write(0, at_row("REQUANT", "dst_addr", "dst_stride"),
                           Mux(out16, scale(cols, isa.OUT_BYTES[isa.OutBits.INT16]),
                               scale(cols, isa.OUT_BYTES[isa.OutBits.INT8]))),
                ]
        with m.Elif(op == code("RMSNORM")):
            m.d.comb += [kind.eq(Mux(part == 0, Kind.RMS_SUM, Kind.RMS_OUT)), n.eq(cols),
                         *read(0, at_row("RMSNORM", "src_addr", "src_stride"),
                               scale(cols, e("RMSNORM", "src_addr")))]
            with m.If(part == 1):
                m.d.comb += write(0, at_row("RMSNORM", "dst_addr", "dst_stride"),
                                  scale(cols, e("RMSNORM", "dst_addr")))
        with m.Elif(op == code("SOFTMAX")):
            m.d.comb += [kind.eq(Kind.SM_MAX + part), n.eq(cols),
                         *read(0, at_row("SOFTMAX", "src_addr", "src_stride"),
                               scale(cols, e("SOFTMAX", "src_addr")))]
            with m.If(part == 2):
                word = e("SOFTMAX", "scale_addr")
                m.d.comb += [*write(0, at_row("SOFTMAX", "dst_addr", "dst_stride"),
                                    scale(cols, e("SOFTMAX", "dst_addr"))),
                             *write(1, f("SOFTMAX", "scale_addr") + row * word, word)]
        with m.Elif(op == code("SILU_MUL")):
            m.d.comb += [
                kind.eq(Kind.SILU), n.eq(cols),
                *read(0, at_row("SILU_MUL", "gate_addr", "gate_stride"),
                      scale(cols, e("SILU_MUL", "gate_addr"))),
                *read(1, at_row("SILU_MUL", "up_addr", "up_stride"),
                      scale(cols, e("SILU_MUL", "up_addr"))),
                *read(2, f("SILU_MUL", "param_addr"), scale(cols, ELEMENT_BYTES[Kind.SILU][2])),
                *write(0, at_row("SILU_MUL", "dst_addr", "dst_stride"),
                       scale(cols, e("SILU_MUL", "dst_addr")))]
        with m.Elif(op == code("RESADD")):
            h_row = at_row("RESADD", "h_addr", "h_stride")
            m.d.comb += [
                kind.eq(Kind.RESADD), n.eq(cols),
                *read(0, h_row, scale(cols, e("RESADD", "h_addr"))),
                *read(1, at_row("RESADD", "acc_addr", "acc_stride"),
                      scale(cols, e("RESADD", "acc_addr"))),
                *read(2, f("RESADD", "param_addr"), scale(cols, e("RESADD", "param_addr"))),
                *write(0, h_row, scale(cols, e("RESADD", "h_addr")))]
        with m.Elif(op == code("ROPE")):
            hd = f("ROPE", "head_dim")
            half = hd >> 1
            off = row * f("ROPE", "row_stride") + part * hd
            src, dst = f("ROPE", "src_addr") + off, f("ROPE", "dst_addr") + off
            m.d.comb += [kind.eq(Kind.ROPE), n.eq(half),
                         *read(0, src, half), *read(1, src + half, half),
                         # head_dim / 2 frequency words
                         *read(2, f("ROPE", "freq_addr"), scale(hd, e("ROPE", "freq_addr") // 2)),
                         *write(0, dst, half), *write(1, dst + half, half)]
        with m.Elif(op == code("ARGMAX")):
            m.d.comb += [kind.eq(Kind.ARGMAX), n.eq(f("ARGMAX", "n")),
                         *read(0, f("ARGMAX", "src_addr"),
                               scale(f("ARGMAX", "n"), e("ARGMAX", "src_addr"))),
                         *write(0, f("ARGMAX", "dst_addr"), e("ARGMAX", "dst_addr"))]
        return kind, n

    def elaborate(self, platform):
        m = Module()
        op = self.word[:isa.OPCODE_BITS]
        row, part = Signal(isa.ROWS.bits), Signal(8)
        pre = Signal()                 # REQUANT's scalar read still to issue
        vector_ops = ("REQUANT", "RMSNORM", "SOFTMAX", "SILU_MUL", "RESADD")
        rows = self._common(m, "rows", vector_ops + ("ROPE",))
        cols = self._common(m, "cols", vector_ops)
        parts = Signal(8)
        m.d.comb += parts.eq(Mux(op == code("RMSNORM"), 2, Mux(op == code("SOFTMAX"), 3,
                             Mux(op == code("ROPE"), field(self.word, "ROPE", "heads"), 1))))
        with m.If(op == code("ARGMAX")):
            m.d.comb += rows.eq(1)
        addr_bits, len_bits = copy_layout().members["src"], copy_layout().members["n"]
        rd = [{"on": Signal(name=f"r{i}_on"), "addr": Signal(addr_bits, name=f"r{i}_addr"),
               "bytes": Signal(len_bits, name=f"r{i}_bytes")} for i in range(N_READ)]
        wr = [{"on": Signal(name=f"w{i}_on"), "addr": Signal(addr_bits, name=f"w{i}_addr"),
               "bytes": Signal(len_bits, name=f"w{i}_bytes")} for i in range(N_WRITE)]
        kind, n = self._commands(m, row, part, pre, cols, rd, wr)

        reads = [getattr(self, f"read{i}") for i in range(N_READ)]
        writes = [getattr(self, f"write{i}") for i in range(N_WRITE)]
        ready = self.segments.ready
        for cmd, c in zip(reads + writes, rd + wr, strict=True):
            ready &= cmd.ready | ~c["on"]
        issue = self.issuing & ready
        m.d.comb += [self.segments.valid.eq(issue), self.segments.p.kind.eq(kind),
                     self.segments.p.n.eq(n), self.segments.p.row.eq(row)]
        for cmd, c, is_read in zip(reads + writes, rd + wr, [1] * N_READ + [0] * N_WRITE,
                                   strict=True):
            m.d.comb += [cmd.valid.eq(issue & c["on"]), cmd.p.n.eq(c["bytes"]),
                         cmd.p.src.eq(c["addr"] if is_read else 0),
                         cmd.p.dst.eq(0 if is_read else c["addr"])]
        with m.If(issue):
            with m.If(pre):
                m.d.sync += pre.eq(0)
            with m.Elif(part + 1 < parts):
                m.d.sync += part.eq(part + 1)
            with m.Else():
                m.d.sync += [part.eq(0), row.eq(row + 1),
                             pre.eq((op == code("REQUANT"))
                                    & (field(self.word, "REQUANT", "params") == isa.ParamMode.ROW))]
                with m.If(row + 1 == rows):
                    m.d.sync += self.issuing.eq(0)
        with m.If(self.start):
            m.d.sync += [self.issuing.eq(1), row.eq(0), part.eq(0),
                         pre.eq((self.start_word[:isa.OPCODE_BITS] == code("REQUANT"))
                                & (field(self.start_word, "REQUANT", "params")
                                   != isa.ParamMode.CHANNEL))]
        return m


class VectorDatapath(wiring.Component):
    """Consumes the segments in order: the operand beats of each, ``L`` lanes per cycle,
    through the lane arithmetic (``rtl.lanes``) into packed result lines.

    Members
    -------
    start, word : a new instruction (clears the packers), and the instruction held.
    segments : ``In(stream)`` of ``segment_layout``, taken at each segment's last group.
    operand0..2 : ``In(stream)`` of ``beat_layout``: the row readers' beats.
    result0..1 : ``Out(stream)`` of ``W``-byte lines: the row writers' input.
    """

    def __init__(self, *, params: RtlParams):
        check_params(params)
        self.params = params
        self.W, self.L = params.line_bytes, params.hw.vector_lanes_per_cycle
        members = {"start": In(1), "word": In(isa.INSTR_BITS),
                   "segments": In(stream.Signature(segment_layout()))}
        members.update({f"operand{s}": In(stream.Signature(beat_layout(self.W)))
                        for s in range(N_READ)})
        members.update({f"result{d}": Out(stream.Signature(8 * self.W)) for d in range(N_WRITE)})
        super().__init__(members)

    def _f(self, mnemonic, name):
        return field(self.word, mnemonic, name)

    def _lanes(self, m, seg):
        """Which operand streams this segment consumes, the group of each beat in use,
        and ``lane(s, e, i)``: lane ``i`` of stream ``s`` as ``e``-byte elements."""
        W, L = self.W, self.L
        per_channel = self._f("REQUANT", "params") == isa.ParamMode.CHANNEL
        has_bias = self._f("REQUANT", "has_bias")
        uses, gidx, groups_m1 = [], [], []
        for s in range(N_READ):
            u = Signal(name=f"uses{s}")
            fixed = [k for k, e in ELEMENT_BYTES.items() if s in e and k != Kind.REQUANT]
            optional = {0: 1, 1: per_channel, 2: has_bias}[s]
            m.d.comb += u.eq(Cat(*[seg.kind == k for k in fixed]).any()
                             | ((seg.kind == Kind.REQUANT) & optional))
            uses.append(u)
            gidx.append(Signal(range(max(2, W)), name=f"gidx{s}"))
            groups_m1.append(Signal(range(max(2, W)), name=f"groups_m1_{s}"))
            with m.Switch(seg.kind):
                for k, e in ELEMENT_BYTES.items():
                    if s in e:
                        with m.Case(k):
                            m.d.comb += groups_m1[s].eq(W // (L * e[s]) - 1)
        groups = {}

        def lane(s, e, i):
            if (s, e) not in groups:        # one selection of the beat per stream and width
                g = Signal(8 * e * L, name=f"group{s}_{e}")
                beat = getattr(self, f"operand{s}").p.data
                m.d.comb += g.eq(beat.word_select(gidx[s], 8 * e * L))
                groups[(s, e)] = g
            return groups[(s, e)].word_select(i, 8 * e)

        return uses, gidx, groups_m1, lane

    def _requant(self, m, lane, scalar):
        """REQUANT's int8 and int16 results (``OUT_BYTES``), per lane."""
        per_channel = self._f("REQUANT", "params") == isa.ParamMode.CHANNEL
        has_bias = self._f("REQUANT", "has_bias")
        e = ELEMENT_BYTES[Kind.REQUANT]
        out = {bits: [] for bits in isa.OutBits}
        for i in range(self.L):
            acc = lane(0, e[0], i).as_signed()
            pw = param_word(Mux(per_channel, lane(1, e[1], i), scalar))
            b = Mux(has_bias, lane(2, e[2], i).as_signed(), 0)
            total_i = Signal(signed(32), name=f"rq_total{i}")
            m.d.comb += total_i.eq(acc + b)
            for bits in isa.OutBits:
                out[bits].append(lanes.requant(total_i, pw.mult, pw.shift,
                                               8 * isa.OUT_BYTES[bits]))
        return out

    def _rmsnorm(self, m, tables, lane, lane_ok, ss):
        """RMSNORM's sum of squares of this group, and its scaled results."""
        e = ELEMENT_BYTES[Kind.RMS_SUM][0]
        cols = self._f("RMSNORM", "cols")
        sss = Signal(6)                        # numerics.sum_sq_shift(cols)
        cols_m1 = Signal(isa.COLS.bits)
        m.d.comb += [cols_m1.eq(cols - 1),
                     sss.eq(Mux(cols <= 1, 0, lanes.floor_log2(cols_m1) + 1))]
        sq_sum = Signal(32)
        m.d.comb += sq_sum.eq(tree_sum(
            [Mux(lane_ok[i], ((lane(0, e, i).as_signed() * lane(0, e, i).as_signed())
                              >> sss)[:32], 0) for i in range(self.L)], width=32))
        ss_eff, ss_eps = Signal(signed(32)), Signal(signed(32))
        m.d.comb += [ss_eps.eq(ss + self._f("RMSNORM", "eps")),
                     ss_eff.eq(Mux(ss_eps < 1, 1, ss_eps))]
        rs_t, rs_k = Signal(16), Signal(6)
        t_, k_ = lanes.rsqrt(ss_eff, tables=tables)
        m.d.comb += [rs_t.eq(t_), rs_k.eq(k_)]
        out = [lanes.rmsnorm_scale(lane(0, e, i).as_signed(), rs_t, rs_k,
                                   self._f("RMSNORM", "mult"), self._f("RMSNORM", "shift"))
               for i in range(self.L)]
        return sq_sum, out

    def _softmax(self, m, tables, lane, lane_ok, seg, col, first, mx, total):
        """SOFTMAX: the group's visible maximum, its exp2 terms, the probabilities and the
        row's parameter word (from the exp2 sum of the pass before)."""
        e = ELEMENT_BYTES[Kind.SM_MAX][0]
        limit = self._f("SOFTMAX", "q_pos0") + seg.row
        visible = [Signal(name=f"visible{i}") for i in range(self.L)]
        for i in range(self.L):
            m.d.comb += visible[i].eq(lane_ok[i] & ((col + i) <= limit))
        chain = Signal(signed(32), name="max_chain0")
        m.d.comb += chain.eq(Mux(first, -(1 << 31), mx))
        for i in range(self.L):
            v = lane(0, e, i).as_signed()
            nxt = Signal(signed(32), name=f"max_chain{i + 1}")
            m.d.comb += nxt.eq(Mux(visible[i] & (v > chain), v, chain))
            chain = nxt
        terms = []
        for i in range(self.L):
            dist = Signal(32, name=f"dist{i}")
            m.d.comb += dist.eq(mx - lane(0, e, i).as_signed())
            term = Signal(17, name=f"term{i}")
            m.d.comb += term.eq(Mux(visible[i], lanes.exp2_term(
                dist, self._f("SOFTMAX", "mult"), self._f("SOFTMAX", "shift"),
                tables=tables), 0))
            terms.append(term)
        probs = [Mux(visible[i], lanes.probability(terms[i]), 0) for i in range(self.L)]
        row_word = isa.PARAM_WORD(Signal(isa.PARAM_WORD.size, name="sm_row_word"))
        rm, rs = lanes.softmax_row_word(total, self._f("SOFTMAX", "out_mult"),
                                        self._f("SOFTMAX", "out_shift"), tables=tables)
        m.d.comb += [row_word.mult.eq(rm), row_word.shift.eq(rs)]
        return chain, terms, probs, row_word

    def _elementwise(self, m, tables, lane, seg):
        """SILU_MUL, RESADD and ROPE results, per lane."""
        es, er, eo = ELEMENT_BYTES[Kind.SILU], ELEMENT_BYTES[Kind.RESADD], ELEMENT_BYTES[Kind.ROPE]
        pw_bits = 8 * isa.PARAM_WORD_BYTES
        silu, resadd = [], []
        for i in range(self.L):
            pws = lane(2, es[2], i)
            gate, out = param_word(pws[:pw_bits]), param_word(pws[pw_bits:])
            silu.append(lanes.silu_mul(lane(0, es[0], i).as_signed(),
                                       lane(1, es[1], i).as_signed(),
                                       gate.mult, gate.shift, out.mult, out.shift,
                                       tables=tables))
            pw = param_word(lane(2, er[2], i))
            resadd.append(lanes.residual_add(lane(0, er[0], i).as_signed(),
                                             lane(1, er[1], i).as_signed(), pw.mult, pw.shift))
        position = Signal(32)
        m.d.comb += position.eq(self._f("ROPE", "pos0") + seg.row)
        rope = [lanes.rope_pair(lane(0, eo[0], i).as_signed(), lane(1, eo[1], i).as_signed(),
                                position, lane(2, eo[2], i), tables=tables)
                for i in range(self.L)]
        return silu, resadd, rope

    def _argmax(self, m, lane, lane_ok, col, first, best, best_idx):
        """ARGMAX: the first maximum so far, a priority chain (each stage its own signal)."""
        e = ELEMENT_BYTES[Kind.ARGMAX][0]
        a_v = Signal(signed(17), name="arg_v0")
        a_i = Signal(32, name="arg_i0")
        m.d.comb += [a_v.eq(Mux(first, -(1 << 16), best)), a_i.eq(best_idx)]
        for i in range(self.L):
            v = lane(0, e, i).as_signed()
            take = lane_ok[i] & (v > a_v)
            nv = Signal(signed(17), name=f"arg_v{i + 1}")
            ni = Signal(32, name=f"arg_i{i + 1}")
            m.d.comb += [nv.eq(Mux(take, v, a_v)), ni.eq(Mux(take, col + i, a_i))]
            a_v, a_i = nv, ni
        return a_v, a_i

    def elaborate(self, platform):
        W, L = self.W, self.L
        m = Module()
        seg = self.segments.p
        col = Signal(isa.COLS.bits)
        left = seg.n - col
        count = Mux(left < L, left, L)               # valid elements this cycle
        last_group = left <= L
        lane_ok = [Signal(name=f"lane_ok{i}") for i in range(L)]
        for i in range(L):
            m.d.comb += lane_ok[i].eq(i < count)
        uses, gidx, groups_m1, lane = self._lanes(m, seg)

        # Row state between the passes over a row.
        scalar, ss, total = Signal(32), Signal(32), Signal(32)
        mx, best, best_idx = Signal(signed(32)), Signal(signed(16)), Signal(32)
        first = col == 0
        rq = self._requant(m, lane, scalar)
        tables = lanes.Tables(m)
        sq_sum, rms = self._rmsnorm(m, tables, lane, lane_ok, ss)
        group_max, terms, probs, row_word = self._softmax(m, tables, lane, lane_ok, seg, col,
                                                          first, mx, total)
        silu, resadd, rope = self._elementwise(m, tables, lane, seg)
        a_v, a_i = self._argmax(m, lane, lane_ok, col, first, best, best_idx)

        # Results of this group, packed into lines for the writers.
        chunk = [Signal(8 * W, name=f"chunk{d}") for d in range(N_WRITE)]
        chunk_bytes = Signal(range(W + 1))
        out_on = [Signal(name=f"out_on{d}") for d in range(N_WRITE)]
        out16 = self._f("REQUANT", "out_bits") == isa.OutBits.INT16
        int8 = {Kind.RMS_OUT: rms, Kind.SM_OUT: probs, Kind.SILU: silu}
        with m.Switch(seg.kind):
            with m.Case(Kind.REQUANT):
                m.d.comb += [out_on[0].eq(1),
                             chunk[0].eq(Mux(out16, Cat(*rq[isa.OutBits.INT16]),
                                             Cat(*rq[isa.OutBits.INT8]))),
                             chunk_bytes.eq(Mux(out16,
                                                scale(count, isa.OUT_BYTES[isa.OutBits.INT16]),
                                                scale(count, isa.OUT_BYTES[isa.OutBits.INT8])))]
            for kind, values in int8.items():
                with m.Case(kind):
                    m.d.comb += [out_on[0].eq(1), chunk[0].eq(Cat(*values)),
                                 chunk_bytes.eq(count)]
                    if kind == Kind.SM_OUT:   # and the row's word, after its last group
                        m.d.comb += [out_on[1].eq(last_group),
                                     chunk[1].eq(Mux(last_group, row_word.as_value(), 0))]
            with m.Case(Kind.RESADD):
                m.d.comb += [out_on[0].eq(1), chunk[0].eq(Cat(*resadd)),
                             chunk_bytes.eq(scale(count, elem_bytes("RESADD", "h_addr")))]
            with m.Case(Kind.ROPE):
                m.d.comb += [out_on[0].eq(1), out_on[1].eq(1),
                             chunk[0].eq(Cat(*[y[0] for y in rope])),
                             chunk[1].eq(Cat(*[y[1] for y in rope])), chunk_bytes.eq(count)]
            with m.Case(Kind.ARGMAX):
                m.d.comb += [out_on[0].eq(last_group), chunk[0].eq(Mux(last_group, a_i, 0)),
                             chunk_bytes.eq(Mux(last_group, elem_bytes("ARGMAX", "dst_addr"), 0))]

        # Fire a group when every operand has a beat and every result has room.
        operands = [getattr(self, f"operand{s}") for s in range(N_READ)]
        results = [getattr(self, f"result{d}") for d in range(N_WRITE)]
        pack = [Signal(8 * W, name=f"pack{d}") for d in range(N_WRITE)]
        fill = Signal(range(W + 1))
        have = self.segments.valid
        for s in range(N_READ):
            have &= operands[s].valid | ~uses[s]
        new_fill = fill + chunk_bytes
        emit = (new_fill == W) | (last_group & (new_fill != 0))
        room = Const(1)
        for d in range(N_WRITE):
            room &= results[d].ready | ~out_on[d] | ~emit
        fire = have & room
        for s in range(N_READ):
            pop = fire & uses[s] & (last_group | (gidx[s] == groups_m1[s]))
            m.d.comb += operands[s].ready.eq(pop)
            with m.If(fire & uses[s]):
                m.d.sync += gidx[s].eq(Mux(pop, 0, gidx[s] + 1))
        for d in range(N_WRITE):
            merged = (pack[d] | (chunk[d] << (fill << 3)))[:8 * W]
            if d == 1:      # SOFTMAX's row word is a line of its own (``fill`` is the probs')
                merged = Mux(seg.kind == Kind.SM_OUT, chunk[1], merged)
            m.d.comb += [results[d].valid.eq(fire & out_on[d] & emit),
                         results[d].payload.eq(merged)]
            with m.If(fire):
                m.d.sync += pack[d].eq(Mux(emit, 0, merged))
        with m.If(fire):
            m.d.sync += [fill.eq(Mux(emit, 0, new_fill)), col.eq(Mux(last_group, 0, col + L))]
            with m.Switch(seg.kind):
                with m.Case(Kind.SCALAR):
                    m.d.sync += scalar.eq(lane(1, ELEMENT_BYTES[Kind.SCALAR][1], 0))
                with m.Case(Kind.RMS_SUM):
                    m.d.sync += ss.eq(Mux(first, sq_sum, ss + sq_sum))
                with m.Case(Kind.SM_MAX):
                    m.d.sync += mx.eq(group_max)
                with m.Case(Kind.SM_SUM):
                    group_sum = tree_sum(terms, width=32)        # total keeps 32 bits
                    m.d.sync += total.eq(Mux(first, group_sum, total + group_sum))
                with m.Case(Kind.ARGMAX):
                    m.d.sync += [best.eq(a_v), best_idx.eq(a_i)]
        m.d.comb += self.segments.ready.eq(fire & last_group)
        with m.If(self.start):
            m.d.sync += [col.eq(0), fill.eq(0)]
            m.d.sync += [g.eq(0) for g in gidx] + [pk.eq(0) for pk in pack]
        return m


class VectorUnit(wiring.Component):
    def __init__(self, *, params: RtlParams):
        check_params(params)
        self.params = params
        port = MemPort(params.l2_addr_bits, params.line_bytes)
        members = {"start": In(1), "word": In(isa.INSTR_BITS), "done": Out(1),
                   "busy": Out(1)}
        for i in range(N_READ + N_WRITE):
            members[f"port{i}"] = Out(port)
        super().__init__(members)

    def port(self, i: int):
        return getattr(self, f"port{i}")

    def elaborate(self, platform):
        p = self.params
        m = Module()
        m.submodules.issuer = issuer = SegmentIssuer()
        m.submodules.segments = seg_q = fifo.SyncFIFOBuffered(
            width=segment_layout().size, depth=SEGMENT_DEPTH)
        m.submodules.datapath = dp = VectorDatapath(params=p)
        word = Signal(isa.INSTR_BITS)
        m.d.comb += [issuer.start.eq(self.start), issuer.start_word.eq(self.word),
                     issuer.word.eq(word), dp.start.eq(self.start), dp.word.eq(word)]
        writers = []
        for i in range(N_READ):
            m.submodules[f"reader{i}"] = r = RowCopier(params=p, src_l2=True, dst_stream=True)
            wiring.connect(m, wiring.flipped(self.port(i)), r.src)
            wiring.connect(m, getattr(issuer, f"read{i}"), r.cmd)
            wiring.connect(m, r.out, getattr(dp, f"operand{i}"))
        for i in range(N_WRITE):
            m.submodules[f"writer{i}"] = w = RowCopier(params=p, dst_l2=True, src_stream=True)
            wiring.connect(m, wiring.flipped(self.port(N_READ + i)), w.dst)
            wiring.connect(m, getattr(issuer, f"write{i}"), w.cmd)
            wiring.connect(m, getattr(dp, f"result{i}"), w.inp)
            writers.append(w)
        # The segment queue between the issuer and the datapath.
        m.d.comb += [seg_q.w_en.eq(issuer.segments.valid), seg_q.w_data.eq(issuer.segments.payload),
                     issuer.segments.ready.eq(seg_q.w_rdy),
                     dp.segments.valid.eq(seg_q.r_rdy), dp.segments.payload.eq(seg_q.r_data),
                     seg_q.r_en.eq(dp.segments.ready)]

        # Segments issued and not yet finished (the queue's level lags its input).
        pending = Signal(8)
        issued = issuer.segments.valid & issuer.segments.ready
        m.d.sync += pending.eq(pending + issued - seg_q.r_en)
        idle = ~issuer.issuing & (pending == 0)
        for w in writers:
            idle &= w.idle
        running = Signal()
        with m.If(self.start):
            m.d.sync += [word.eq(self.word), running.eq(1)]
        with m.Elif(running & idle):
            m.d.sync += running.eq(0)
        m.d.comb += [self.busy.eq(running), self.done.eq(running & idle & ~self.start)]
        return m
