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
(``port0..2``) in lockstep, ``LANES = min(vector_lanes, W / 8)`` elements per cycle, and
writes up to two results through row writers (``port3``, ``port4``):

=========  ================================================  ==============================
 op         segments per row                                  operands -> result
=========  ================================================  ==============================
REQUANT    (one scalar read first unless per-channel) 1      acc, param, bias -> int8/16
RMSNORM    2: sum of squares; scale                          h -> int8
SOFTMAX    3: visible maximum; exp2 sum; normalise           scores -> int8
SILU_MUL   1                                                 gate, up, param pairs -> int8
RESADD     1                                                 h, acc, param -> h (in place)
ROPE       one per head                                      x1, x2, freq -> y1, y2
ARGMAX     1 (one row)                                       logits -> int32 index
=========  ================================================  ==============================

An *issuer* walks the segments, giving the readers and writers their row commands and
queueing a descriptor for each segment; the *datapath* takes descriptors in order and
consumes the operand beats, so the reads of later rows run ahead of the arithmetic.
Row state between passes (sum of squares, maximum, exp2 sum, best index) lives in the
datapath. Each segment's reads and writes are of the same row, read before written, so
in-place operands (``RESADD``, ``ROPE`` with ``dst == src``) are safe.
"""

from __future__ import annotations

import enum

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, fifo, wiring
from amaranth.lib.wiring import In, Out

from arch import isa
from rtl import lanes
from rtl.common import RtlParams
from rtl.copier import RowCopier
from rtl.decode import code, field
from rtl.dram import MemPort

N_READ, N_WRITE = 3, 2


class Kind(enum.IntEnum):
    """What the datapath does with one segment."""
    SCALAR = 0        # REQUANT: read the one parameter word
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


# Element bytes of each operand stream, per kind (the one table both sides use).
ELEMENT_BYTES: dict[Kind, dict[int, int]] = {
    Kind.SCALAR: {1: 4},
    Kind.REQUANT: {0: 4, 1: 4, 2: 4},
    Kind.RMS_SUM: {0: 2}, Kind.RMS_OUT: {0: 2},
    Kind.SM_MAX: {0: 4}, Kind.SM_SUM: {0: 4}, Kind.SM_OUT: {0: 4},
    Kind.SILU: {0: 4, 1: 1, 2: 8},
    Kind.RESADD: {0: 2, 1: 4, 2: 4},
    Kind.ROPE: {0: 1, 1: 1, 2: 4},
    Kind.ARGMAX: {0: 2},
}


def lanes_per_cycle(params: RtlParams) -> int:
    """Elements per cycle: the configured lanes, at most one beat of the widest operand."""
    return max(1, min(params.hw.vector_lanes, params.line_bytes // 8))


def segment_layout() -> data.StructLayout:
    return data.StructLayout({"kind": 4, "n": 20, "row": 16})


class VectorUnit(wiring.Component):
    def __init__(self, params: RtlParams):
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
        W = p.line_bytes
        L = lanes_per_cycle(p)
        m = Module()
        readers = [RowCopier(p, src_l2=True, dst_stream=True) for _ in range(N_READ)]
        writers = [RowCopier(p, dst_l2=True, src_stream=True) for _ in range(N_WRITE)]
        for i, r in enumerate(readers):
            m.submodules[f"reader{i}"] = r
            wiring.connect(m, wiring.flipped(self.port(i)), r.src)
        for i, w in enumerate(writers):
            m.submodules[f"writer{i}"] = w
            wiring.connect(m, wiring.flipped(self.port(N_READ + i)), w.dst)
        m.submodules.segments = seg_q = fifo.SyncFIFOBuffered(
            width=segment_layout().size, depth=8)

        word = Signal(isa.INSTR_BITS)
        op = word[:isa.OPCODE_BITS]

        def is_op(mnemonic):
            return op == code(mnemonic)

        def f(mnemonic, name):
            return field(word, mnemonic, name)

        # ---------------------------------------------------------------- issuer ------------
        row = Signal(16)
        part = Signal(8)
        pre = Signal()                 # REQUANT's scalar read still to issue
        issuing = Signal()
        def common(name, width, ops):
            """A field that several ops hold at different places, for the current op."""
            value = Signal(width, name=f"op_{name}")
            with m.Switch(op):
                for mn in ops:
                    with m.Case(code(mn)):
                        m.d.comb += value.eq(f(mn, name))
            return value

        rows = common("rows", 16, ("REQUANT", "RMSNORM", "SOFTMAX", "SILU_MUL", "RESADD",
                                   "ROPE"))
        cols = common("cols", 20, ("REQUANT", "RMSNORM", "SOFTMAX", "SILU_MUL", "RESADD"))
        parts = Signal(8)
        m.d.comb += parts.eq(Mux(is_op("RMSNORM"), 2, Mux(is_op("SOFTMAX"), 3,
                             Mux(is_op("ROPE"), f("ROPE", "heads"), 1))))
        with m.If(is_op("ARGMAX")):
            m.d.comb += rows.eq(1)

        kind = Signal(4)
        n = Signal(20)
        rd = [{"on": Signal(name=f"r{i}_on"), "addr": Signal(32, name=f"r{i}_addr"),
               "bytes": Signal(21, name=f"r{i}_bytes")} for i in range(N_READ)]
        wr = [{"on": Signal(name=f"w{i}_on"), "addr": Signal(32, name=f"w{i}_addr"),
               "bytes": Signal(21, name=f"w{i}_bytes")} for i in range(N_WRITE)]

        def read(i, addr, nbytes, on=1):
            return [rd[i]["on"].eq(on), rd[i]["addr"].eq(addr), rd[i]["bytes"].eq(nbytes)]

        def write(i, addr, nbytes):
            return [wr[i]["on"].eq(1), wr[i]["addr"].eq(addr), wr[i]["bytes"].eq(nbytes)]

        with m.If(is_op("REQUANT")):
            out16 = f("REQUANT", "out_bits") == isa.OutBits.INT16
            with m.If(pre):
                m.d.comb += [kind.eq(Kind.SCALAR), n.eq(1),
                             *read(1, f("REQUANT", "param_addr"), 4)]
            with m.Else():
                m.d.comb += [
                    kind.eq(Kind.REQUANT), n.eq(cols),
                    *read(0, f("REQUANT", "src_addr") + row * f("REQUANT", "src_stride"),
                          cols << 2),
                    *read(1, f("REQUANT", "param_addr"), cols << 2,
                          f("REQUANT", "per_channel")),
                    *read(2, f("REQUANT", "bias_addr"), cols << 2, f("REQUANT", "has_bias")),
                    *write(0, f("REQUANT", "dst_addr") + row * f("REQUANT", "dst_stride"),
                           Mux(out16, cols << 1, cols)),
                ]
        with m.Elif(is_op("RMSNORM")):
            m.d.comb += [
                kind.eq(Mux(part == 0, Kind.RMS_SUM, Kind.RMS_OUT)), n.eq(cols),
                *read(0, f("RMSNORM", "src_addr") + row * f("RMSNORM", "src_stride"), cols << 1)]
            with m.If(part == 1):
                m.d.comb += write(0, f("RMSNORM", "dst_addr") + row * f("RMSNORM", "dst_stride"),
                                  cols)
        with m.Elif(is_op("SOFTMAX")):
            m.d.comb += [
                kind.eq(Kind.SM_MAX + part), n.eq(cols),
                *read(0, f("SOFTMAX", "src_addr") + row * f("SOFTMAX", "src_stride"), cols << 2)]
            with m.If(part == 2):
                m.d.comb += write(0, f("SOFTMAX", "dst_addr") + row * f("SOFTMAX", "dst_stride"),
                                  cols)
        with m.Elif(is_op("SILU_MUL")):
            m.d.comb += [
                kind.eq(Kind.SILU), n.eq(cols),
                *read(0, f("SILU_MUL", "gate_addr") + row * f("SILU_MUL", "gate_stride"),
                      cols << 2),
                *read(1, f("SILU_MUL", "up_addr") + row * f("SILU_MUL", "up_stride"), cols),
                *read(2, f("SILU_MUL", "param_addr"), cols << 3),
                *write(0, f("SILU_MUL", "dst_addr") + row * f("SILU_MUL", "dst_stride"), cols)]
        with m.Elif(is_op("RESADD")):
            h_row = f("RESADD", "h_addr") + row * f("RESADD", "h_stride")
            m.d.comb += [
                kind.eq(Kind.RESADD), n.eq(cols),
                *read(0, h_row, cols << 1),
                *read(1, f("RESADD", "acc_addr") + row * f("RESADD", "acc_stride"), cols << 2),
                *read(2, f("RESADD", "param_addr"), cols << 2),
                *write(0, h_row, cols << 1)]
        with m.Elif(is_op("ROPE")):
            hd = f("ROPE", "head_dim")
            half = hd >> 1
            off = row * f("ROPE", "row_stride") + part * hd
            src, dst = f("ROPE", "src_addr") + off, f("ROPE", "dst_addr") + off
            m.d.comb += [kind.eq(Kind.ROPE), n.eq(half),
                         *read(0, src, half), *read(1, src + half, half),
                         *read(2, f("ROPE", "freq_addr"), hd << 1),
                         *write(0, dst, half), *write(1, dst + half, half)]
        with m.Elif(is_op("ARGMAX")):
            m.d.comb += [kind.eq(Kind.ARGMAX), n.eq(f("ARGMAX", "n")),
                         *read(0, f("ARGMAX", "src_addr"), f("ARGMAX", "n") << 1),
                         *write(0, f("ARGMAX", "dst_addr"), 4)]

        ready = seg_q.w_rdy
        for i in range(N_READ):
            ready &= readers[i].cmd.ready | ~rd[i]["on"]
        for i in range(N_WRITE):
            ready &= writers[i].cmd.ready | ~wr[i]["on"]
        issue = issuing & ready
        seg_w = data.View(segment_layout(), seg_q.w_data)
        m.d.comb += [seg_q.w_en.eq(issue), seg_w.kind.eq(kind), seg_w.n.eq(n), seg_w.row.eq(row)]
        for i in range(N_READ):
            m.d.comb += [readers[i].cmd.valid.eq(issue & rd[i]["on"]),
                         readers[i].cmd.p.src.eq(rd[i]["addr"]), readers[i].cmd.p.dst.eq(0),
                         readers[i].cmd.p.n.eq(rd[i]["bytes"])]
        for i in range(N_WRITE):
            m.d.comb += [writers[i].cmd.valid.eq(issue & wr[i]["on"]),
                         writers[i].cmd.p.src.eq(0), writers[i].cmd.p.dst.eq(wr[i]["addr"]),
                         writers[i].cmd.p.n.eq(wr[i]["bytes"])]
        with m.If(issue):
            with m.If(pre):
                m.d.sync += pre.eq(0)
            with m.Elif(part + 1 < parts):
                m.d.sync += part.eq(part + 1)
            with m.Else():
                m.d.sync += [part.eq(0), row.eq(row + 1)]
                with m.If(row + 1 == rows):
                    m.d.sync += issuing.eq(0)

        # ---------------------------------------------------------------- datapath ----------
        seg = data.View(segment_layout(), seg_q.r_data)
        have_seg = seg_q.r_rdy
        col = Signal(20)
        left = seg.n - col
        count = Mux(left < L, left, L)               # valid elements this cycle
        last_group = left <= L
        lane_ok = [Signal(name=f"lane_ok{i}") for i in range(L)]
        for i in range(L):
            m.d.comb += lane_ok[i].eq(i < count)

        # Operand streams: which are consumed by this segment, and their lanes.
        per_channel = f("REQUANT", "per_channel")
        has_bias = f("REQUANT", "has_bias")
        uses = []
        for s in range(N_READ):
            u = Signal(name=f"uses{s}")
            fixed = [k for k, e in ELEMENT_BYTES.items() if s in e and k != Kind.REQUANT]
            optional = {0: 1, 1: per_channel, 2: has_bias}[s]
            m.d.comb += u.eq(Cat(*[seg.kind == k for k in fixed]).any()
                             | ((seg.kind == Kind.REQUANT) & optional))
            uses.append(u)
        gidx = [Signal(range(max(2, W)), name=f"gidx{s}") for s in range(N_READ)]
        groups_m1 = [Signal(range(max(2, W)), name=f"groups_m1_{s}") for s in range(N_READ)]
        for s in range(N_READ):
            with m.Switch(seg.kind):
                for k, e in ELEMENT_BYTES.items():
                    if s in e:
                        with m.Case(k):
                            m.d.comb += groups_m1[s].eq(W // (L * e[s]) - 1)

        groups = {}

        def lane(s, e, i):
            """Lane ``i`` of stream ``s`` read as ``e``-byte elements (raw bits)."""
            if (s, e) not in groups:        # one selection of the beat per stream and width
                g = Signal(8 * e * L, name=f"group{s}_{e}")
                m.d.comb += g.eq(readers[s].out.p.data.word_select(gidx[s], 8 * e * L))
                groups[(s, e)] = g
            return groups[(s, e)].word_select(i, 8 * e)

        # Packers for the two results.
        pack = [Signal(8 * W, name=f"pack{d}") for d in range(N_WRITE)]
        fill = Signal(range(W + 1))
        chunk = [Signal(8 * W, name=f"chunk{d}") for d in range(N_WRITE)]
        chunk_bytes = Signal(range(W + 1))
        out_on = [Signal(name=f"out_on{d}") for d in range(N_WRITE)]

        # Row state.
        scalar = Signal(32)
        ss = Signal(32)
        mx = Signal(signed(32))
        total = Signal(32)
        best = Signal(signed(16))
        best_idx = Signal(32)
        first = col == 0
        row_g = seg.row

        # -- REQUANT
        out16 = f("REQUANT", "out_bits") == isa.OutBits.INT16
        rq8, rq16 = [], []
        for i in range(L):
            acc = lane(0, 4, i).as_signed()
            wordp = Mux(per_channel, lane(1, 4, i), scalar)
            b = Mux(has_bias, lane(2, 4, i).as_signed(), 0)
            total_i = Signal(signed(32), name=f"rq_total{i}")
            m.d.comb += total_i.eq(acc + b)
            rq8.append(lanes.requant(total_i, wordp[:16], wordp[16:22], 8))
            rq16.append(lanes.requant(total_i, wordp[:16], wordp[16:22], 16))

        # -- RMSNORM
        sss = Signal(6)                        # numerics.sum_sq_shift(cols)
        cols_m1 = Signal(20)
        m.d.comb += cols_m1.eq(cols - 1)
        m.d.comb += sss.eq(Mux(cols <= 1, 0, lanes.floor_log2(cols_m1) + 1))
        sq_sum = Signal(32)
        m.d.comb += sq_sum.eq(sum(
            Mux(lane_ok[i], ((lane(0, 2, i).as_signed() * lane(0, 2, i).as_signed())
                             >> sss)[:32], 0) for i in range(L)))
        ss_eff = Signal(signed(32))
        ss_eps = Signal(signed(32))
        m.d.comb += ss_eps.eq(ss + f("RMSNORM", "eps"))
        m.d.comb += ss_eff.eq(Mux(ss_eps < 1, 1, ss_eps))
        rs_t, rs_k = Signal(16), Signal(6)
        t_, k_ = lanes.rsqrt(ss_eff)
        m.d.comb += [rs_t.eq(t_), rs_k.eq(k_)]
        rms = [lanes.rmsnorm_scale(lane(0, 2, i).as_signed(), rs_t, rs_k,
                                   f("RMSNORM", "mult"), f("RMSNORM", "shift"))
               for i in range(L)]

        # -- SOFTMAX
        limit = f("SOFTMAX", "q_pos0") + row_g
        visible = [Signal(name=f"visible{i}") for i in range(L)]
        for i in range(L):
            m.d.comb += visible[i].eq(lane_ok[i] & ((col + i) <= limit))
        chain = Signal(signed(32), name="max_chain0")
        m.d.comb += chain.eq(Mux(first, -(1 << 31), mx))
        for i in range(L):
            v = lane(0, 4, i).as_signed()
            nxt = Signal(signed(32), name=f"max_chain{i + 1}")
            m.d.comb += nxt.eq(Mux(visible[i] & (v > chain), v, chain))
            chain = nxt
        group_max = chain
        terms = []
        for i in range(L):
            dist = Signal(32, name=f"dist{i}")
            m.d.comb += dist.eq(mx - lane(0, 4, i).as_signed())
            term = Signal(17, name=f"term{i}")
            m.d.comb += term.eq(Mux(visible[i], lanes.exp2_term(
                dist, f("SOFTMAX", "mult"), f("SOFTMAX", "shift")), 0))
            terms.append(term)
        rc_r, rc_e = Signal(16), Signal(6)
        r_, e_ = lanes.reciprocal(total)
        m.d.comb += [rc_r.eq(r_), rc_e.eq(e_)]
        probs = [Mux(visible[i], lanes.probability(terms[i], rc_r, rc_e), 0) for i in range(L)]

        # -- SILU_MUL, RESADD, ROPE
        silu = []
        for i in range(L):
            pw = lane(2, 8, i)
            silu.append(lanes.silu_mul(lane(0, 4, i).as_signed(), lane(1, 1, i).as_signed(),
                                       pw[:16], pw[16:22], pw[32:48], pw[48:54]))
        resadd = []
        for i in range(L):
            pw = lane(2, 4, i)
            resadd.append(lanes.residual_add(lane(0, 2, i).as_signed(), lane(1, 4, i).as_signed(),
                                             pw[:16], pw[16:22]))
        position = Signal(32)
        m.d.comb += position.eq(f("ROPE", "pos0") + row_g)
        rope = [lanes.rope_pair(lane(0, 1, i).as_signed(), lane(1, 1, i).as_signed(), position,
                                lane(2, 4, i)) for i in range(L)]

        # -- ARGMAX: first maximum, a priority chain (each stage its own signal).
        a_v = Signal(signed(17), name="arg_v0")
        a_i = Signal(32, name="arg_i0")
        m.d.comb += [a_v.eq(Mux(first, -(1 << 16), best)), a_i.eq(best_idx)]
        for i in range(L):
            v = lane(0, 2, i).as_signed()
            take = lane_ok[i] & (v > a_v)
            nv = Signal(signed(17), name=f"arg_v{i + 1}")
            ni = Signal(32, name=f"arg_i{i + 1}")
            m.d.comb += [nv.eq(Mux(take, v, a_v)), ni.eq(Mux(take, col + i, a_i))]
            a_v, a_i = nv, ni

        # Results of this group.
        with m.Switch(seg.kind):
            with m.Case(Kind.REQUANT):
                m.d.comb += [out_on[0].eq(1),
                             chunk[0].eq(Mux(out16, Cat(*rq16), Cat(*rq8))),
                             chunk_bytes.eq(Mux(out16, count << 1, count))]
            with m.Case(Kind.RMS_OUT):
                m.d.comb += [out_on[0].eq(1), chunk[0].eq(Cat(*rms)), chunk_bytes.eq(count)]
            with m.Case(Kind.SM_OUT):
                m.d.comb += [out_on[0].eq(1), chunk[0].eq(Cat(*probs)), chunk_bytes.eq(count)]
            with m.Case(Kind.SILU):
                m.d.comb += [out_on[0].eq(1), chunk[0].eq(Cat(*silu)), chunk_bytes.eq(count)]
            with m.Case(Kind.RESADD):
                m.d.comb += [out_on[0].eq(1), chunk[0].eq(Cat(*resadd)),
                             chunk_bytes.eq(count << 1)]
            with m.Case(Kind.ROPE):
                m.d.comb += [out_on[0].eq(1), out_on[1].eq(1),
                             chunk[0].eq(Cat(*[y[0] for y in rope])),
                             chunk[1].eq(Cat(*[y[1] for y in rope])), chunk_bytes.eq(count)]
            with m.Case(Kind.ARGMAX):
                m.d.comb += [out_on[0].eq(last_group), chunk[0].eq(Mux(last_group, a_i, 0)),
                             chunk_bytes.eq(Mux(last_group, 4, 0))]

        # Fire a group when every operand has a beat and every result has room.
        have = have_seg
        for s in range(N_READ):
            have &= readers[s].out.valid | ~uses[s]
        new_fill = fill + chunk_bytes
        emit = (new_fill == W) | (last_group & (new_fill != 0))
        room = Const(1)
        for d in range(N_WRITE):
            room &= writers[d].inp.ready | ~out_on[d] | ~emit
        fire = have & room
        for s in range(N_READ):
            pop = fire & uses[s] & (last_group | (gidx[s] == groups_m1[s]))
            m.d.comb += readers[s].out.ready.eq(pop)
            with m.If(fire & uses[s]):
                m.d.sync += gidx[s].eq(Mux(pop, 0, gidx[s] + 1))
        for d in range(N_WRITE):
            merged = (pack[d] | (chunk[d] << (fill << 3)))[:8 * W]
            m.d.comb += [writers[d].inp.valid.eq(fire & out_on[d] & emit),
                         writers[d].inp.payload.eq(merged)]
            with m.If(fire):
                m.d.sync += pack[d].eq(Mux(emit, 0, merged))
        with m.If(fire):
            m.d.sync += [fill.eq(Mux(emit, 0, new_fill)), col.eq(Mux(last_group, 0, col + L))]
            with m.Switch(seg.kind):
                with m.Case(Kind.SCALAR):
                    m.d.sync += scalar.eq(lane(1, 4, 0))
                with m.Case(Kind.RMS_SUM):
                    m.d.sync += ss.eq(Mux(first, sq_sum, ss + sq_sum))
                with m.Case(Kind.SM_MAX):
                    m.d.sync += mx.eq(group_max)
                with m.Case(Kind.SM_SUM):
                    group_sum = sum(terms)
                    m.d.sync += total.eq(Mux(first, group_sum, total + group_sum))
                with m.Case(Kind.ARGMAX):
                    m.d.sync += [best.eq(a_v), best_idx.eq(a_i)]
        m.d.comb += seg_q.r_en.eq(fire & last_group)

        # ---------------------------------------------------------------- control -----------
        # Segments issued and not yet finished (the queue's level lags its input).
        pending = Signal(8)
        done_seg = seg_q.r_en
        m.d.sync += pending.eq(pending + issue - done_seg)
        idle = ~issuing & (pending == 0)
        for w in writers:
            idle &= w.idle
        running = Signal()
        with m.If(self.start):
            m.d.sync += [word.eq(self.word), running.eq(1), issuing.eq(1), row.eq(0),
                         part.eq(0), col.eq(0), fill.eq(0),
                         pre.eq((self.word[:isa.OPCODE_BITS] == code("REQUANT"))
                                & ~field(self.word, "REQUANT", "per_channel"))]
            m.d.sync += [g.eq(0) for g in gidx] + [pk.eq(0) for pk in pack]
        with m.Elif(running & idle):
            m.d.sync += running.eq(0)
        m.d.comb += [self.busy.eq(running), self.done.eq(running & idle & ~self.start)]
        return m
