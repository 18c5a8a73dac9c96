"""The compute engine's operand check: the ISA simulator's refusals, in hardware.

Contract
--------
``OperandCheck(params)`` looks at a compute instruction word (``word``) and drives
``code``, the ``ErrorCode`` the instruction must stop with (``NONE`` when it may run),
combinationally, as ``compiler.semantics.check`` decides it from
``compiler.semantics.accesses``:

1. ``BAD_OPERAND`` for an empty ``MATMUL`` dimension or vector block, an odd or zero
   ``ROPE`` head size or empty ``ROPE``/``ARGMAX``, a ``SOFTMAX`` whose first row sees
   past its columns;
2. then each L2 operand in the order ``accesses`` lists them: ``BAD_OPERAND`` if it is
   written with rows that overlap (``rows > 1`` and ``stride < row bytes``),
   ``L2_OUT_OF_RANGE`` if it ends beyond ``l2_bytes`` (its end is ``addr + (rows - 1) *
   stride + row bytes``);
3. ``BAD_OPERAND`` if the written operand's byte range meets a read operand's, unless
   they are the same (exactly in place: ROPE's dst = src, RESADD's residual, an
   accumulating MATMUL's output). The units stream operands tile by tile and row by
   row, so a result written over an operand not yet read would change it (found by the
   random programs of ``rtl/random_programs.py``: a MATMUL whose output overlapped its
   activations gave other results on the RTL than on the ISA simulator).

An operand is ``(addr, rows, row bytes, stride, written)``; at most four per
instruction, so four slots are muxed by opcode, each with its own ``(rows - 1) *
stride`` multiplier. ``tests/rtl/test_operand_check.py`` compares the codes with the
ISA simulator's on random instructions, in range and out.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from arch import isa
from arch.isa import ErrorCode, OutBits, WeightLayout
from rtl.common import RtlParams
from rtl.decode import code as opcode_of
from rtl.decode import field

SLOTS = 4
ROWS_BITS = 20          # the widest row count of an operand (MATMUL k, KN weights)
BYTES_BITS = 32         # row bytes: at most 8 x a 20-bit count, or heads x head_dim
STRIDE_BITS = 30


def operands(word) -> dict[str, list[tuple]]:
    """Per compute opcode, its L2 operands ``(addr, rows, row_bytes, stride, written[,
    present])`` as values of the instruction ``word``, in ``semantics.accesses``'s order
    (an accumulating ``MATMUL``'s read of its output has the output's extent: left out;
    ``REQUANT``'s bias is present with ``has_bias``)."""
    def f(mnemonic, name):
        return field(word, mnemonic, name)

    mm = lambda n: f("MATMUL", n)                           # noqa: E731
    nk = mm("w_layout") == int(WeightLayout.NK)
    rq = lambda n: f("REQUANT", n)                          # noqa: E731
    out: dict[str, list[tuple]] = {
        "MATMUL": [(mm("x_addr"), mm("m"), mm("k"), mm("x_stride"), 0),
                   (mm("w_addr"), Mux(nk, mm("n"), mm("k")), Mux(nk, mm("k"), mm("n")),
                    mm("w_stride"), 0),
                   (mm("out_addr"), mm("m"), mm("n") << 2, mm("out_stride"), 1)],
        "REQUANT": [(rq("src_addr"), rq("rows"), rq("cols") << 2, rq("src_stride"), 0),
                    (rq("param_addr"), 1, Mux(rq("per_channel"), rq("cols") << 2, 4), 0, 0),
                    (rq("dst_addr"), rq("rows"),
                     Mux(rq("out_bits") == int(OutBits.INT8), rq("cols"), rq("cols") << 1),
                     rq("dst_stride"), 1),
                    (rq("bias_addr"), 1, rq("cols") << 2, 0, 0, rq("has_bias"))],
    }
    for mn, src_bytes in (("RMSNORM", 1), ("SOFTMAX", 2)):
        out[mn] = [(f(mn, "src_addr"), f(mn, "rows"), f(mn, "cols") << src_bytes,
                    f(mn, "src_stride"), 0),
                   (f(mn, "dst_addr"), f(mn, "rows"), f(mn, "cols"), f(mn, "dst_stride"), 1)]
    width = f("ROPE", "heads") * f("ROPE", "head_dim")
    out["ROPE"] = [(f("ROPE", "src_addr"), f("ROPE", "rows"), width, f("ROPE", "row_stride"), 0),
                   (f("ROPE", "freq_addr"), 1, f("ROPE", "head_dim") << 1, 0, 0),
                   (f("ROPE", "dst_addr"), f("ROPE", "rows"), width, f("ROPE", "row_stride"), 1)]
    s = lambda n: f("SILU_MUL", n)                          # noqa: E731
    out["SILU_MUL"] = [(s("gate_addr"), s("rows"), s("cols") << 2, s("gate_stride"), 0),
                       (s("up_addr"), s("rows"), s("cols"), s("up_stride"), 0),
                       (s("param_addr"), 1, s("cols") << 3, 0, 0),
                       (s("dst_addr"), s("rows"), s("cols"), s("dst_stride"), 1)]
    r = lambda n: f("RESADD", n)                            # noqa: E731
    out["RESADD"] = [(r("h_addr"), r("rows"), r("cols") << 1, r("h_stride"), 0),
                     (r("acc_addr"), r("rows"), r("cols") << 2, r("acc_stride"), 0),
                     (r("param_addr"), 1, r("cols") << 2, 0, 0),
                     (r("h_addr"), r("rows"), r("cols") << 1, r("h_stride"), 1)]
    out["ARGMAX"] = [(f("ARGMAX", "src_addr"), 1, f("ARGMAX", "n") << 1, 0, 0),
                     (f("ARGMAX", "dst_addr"), 1, 4, 0, 1)]
    return out


class OperandCheck(wiring.Component):
    def __init__(self, params: RtlParams):
        self.params = params
        super().__init__({"word": In(isa.INSTR_BITS), "code": Out(ErrorCode)})

    def elaborate(self, platform):
        m = Module()
        word = self.word
        op = word[:isa.OPCODE_BITS]

        def f(mnemonic, name):
            return field(word, mnemonic, name)

        # 1. the fields' own checks
        bad = Signal()
        blocks = ("REQUANT", "RMSNORM", "SOFTMAX", "SILU_MUL", "RESADD")
        with m.Switch(op):
            with m.Case(opcode_of("MATMUL")):
                m.d.comb += bad.eq((f("MATMUL", "m") == 0) | (f("MATMUL", "k") == 0)
                                   | (f("MATMUL", "n") == 0))
            for mn in blocks:
                with m.Case(opcode_of(mn)):
                    m.d.comb += bad.eq((f(mn, "rows") == 0) | (f(mn, "cols") == 0)
                                       | ((f(mn, "q_pos0") >= f(mn, "cols")) if mn == "SOFTMAX"
                                          else 0))
            with m.Case(opcode_of("ROPE")):
                m.d.comb += bad.eq((f("ROPE", "head_dim") == 0) | f("ROPE", "head_dim")[0]
                                   | (f("ROPE", "rows") == 0) | (f("ROPE", "heads") == 0))
            with m.Case(opcode_of("ARGMAX")):
                m.d.comb += bad.eq(f("ARGMAX", "n") == 0)

        # 2. each operand slot: its fields by opcode, its overlap and range checks
        slots = [dict(addr=Signal(isa.L2_ADDR_BITS, name=f"addr{i}"),
                      rows=Signal(ROWS_BITS, name=f"rows{i}"),
                      row_bytes=Signal(BYTES_BITS, name=f"row_bytes{i}"),
                      stride=Signal(STRIDE_BITS, name=f"stride{i}"),
                      written=Signal(name=f"written{i}"), used=Signal(name=f"used{i}"))
                 for i in range(SLOTS)]
        with m.Switch(op):
            for mn, ops in operands(word).items():
                with m.Case(opcode_of(mn)):
                    for slot, (addr, rows, row_bytes, stride, written, *present) in zip(
                            slots, ops, strict=False):
                        m.d.comb += [slot["addr"].eq(addr), slot["rows"].eq(rows),
                                     slot["row_bytes"].eq(row_bytes), slot["stride"].eq(stride),
                                     slot["written"].eq(written),
                                     slot["used"].eq(present[0] if present else 1)]
        faults, ends = [], []
        for i, s in enumerate(slots):
            empty = (s["rows"] == 0) | (s["row_bytes"] == 0)
            end = Signal(ROWS_BITS + STRIDE_BITS + 2, name=f"end{i}")
            m.d.comb += end.eq(s["addr"] + Mux(empty, 0, (s["rows"] - 1) * s["stride"]
                                                + s["row_bytes"]))
            overlap = s["written"] & (s["rows"] > 1) & (s["stride"] < s["row_bytes"])
            beyond = end > self.params.hw.l2_bytes
            faults.append((s["used"] & overlap, s["used"] & beyond))
            ends.append(end)
        # 3. a result written over an operand read, other than exactly in place
        over = 0
        for i in range(SLOTS):
            for j in range(i + 1, SLOTS):
                a, b = slots[i], slots[j]
                same = ((a["addr"] == b["addr"]) & (a["rows"] == b["rows"])
                        & (a["row_bytes"] == b["row_bytes"]) & (a["stride"] == b["stride"]))
                meet = (a["addr"] < ends[j]) & (b["addr"] < ends[i])
                over |= a["used"] & b["used"] & (a["written"] ^ b["written"]) & meet & ~same

        m.d.comb += self.code.eq(ErrorCode.NONE)
        with m.If(bad):
            m.d.comb += self.code.eq(ErrorCode.BAD_OPERAND)
        for overlap, beyond in faults:
            with m.Elif(overlap):
                m.d.comb += self.code.eq(ErrorCode.BAD_OPERAND)
            with m.Elif(beyond):
                m.d.comb += self.code.eq(ErrorCode.L2_OUT_OF_RANGE)
        with m.Elif(over):
            m.d.comb += self.code.eq(ErrorCode.BAD_OPERAND)
        return m
