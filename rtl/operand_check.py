"""The compute engine's operand check: the ISA simulator's refusals, in hardware.

Contract
--------
``OperandCheck(params)`` looks at a compute instruction word (``word``) and drives
``code``, the ``ErrorCode`` the instruction must stop with (``NONE`` when it may run),
combinationally, as ``compiler.semantics.check`` decides it, from the same declarations
in ``arch/isa.py``:

1. ``BAD_OPERAND`` if a field is refused (``isa.operand_faults``: an empty ``MATMUL``
   dimension or vector block, an odd or zero ``ROPE`` head size or empty
   ``ROPE``/``ARGMAX``, a ``SOFTMAX`` whose first row sees past its columns), or if it
   asks for what this RTL does not implement (``unimplemented``: a ``MATMUL`` with
   MXINT4 weights on an array taller than ``MX_BLOCK`` rows or in an RTL built without
   the MXINT4 datapath);
2. then each L2 operand in the order ``isa.compute_operands`` declares them:
   ``BAD_OPERAND`` if it is written with rows that overlap (``rows > 1`` and
   ``stride < row bytes``), ``L2_OUT_OF_RANGE`` if it ends beyond ``l2_bytes`` (its end
   is ``addr + (rows - 1) * stride + row bytes``);
3. ``BAD_OPERAND`` if a written operand's byte range meets a read operand's, unless
   they are the same (exactly in place: ROPE's dst = src, RESADD's residual, an
   accumulating MATMUL's output), or another written operand's (SOFTMAX's probabilities
   and row words). The units stream operands tile by tile and row by
   row, so a result written over an operand not yet read would change it (found by the
   random programs of ``rtl/random_programs.py``: a MATMUL whose output overlapped its
   activations gave other results on the RTL than on the ISA simulator).

An operand is an ``isa.L2Operand`` over the word's fields; at most four per
instruction (less the implied ones), so four slots are muxed by opcode, each with its
own ``(rows - 1) * stride`` multiplier. ``tests/rtl/test_operand_check.py`` compares the
codes with the ISA simulator's on random instructions, in range and out.
"""

from __future__ import annotations

import operator
from functools import reduce

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from arch import isa
from arch.isa import ErrorCode
from rtl.common import RtlParams, check_params, weights_refusal
from rtl.decode import code as opcode_of
from rtl.decode import field

SLOTS = 4               # the most operands a compute instruction has
COMPUTE = tuple(op.mnemonic for op in isa.opcodes_of(isa.Engine.COMPUTE))
ROWS_BITS = 20          # the widest row count of an operand (MATMUL k, KN weights)
BYTES_BITS = 32         # row bytes: at most 8 x a 20-bit count, or heads x head_dim
STRIDE_BITS = 30


def unimplemented(mnemonic: str, f, params: RtlParams) -> list[tuple[object, str]]:
    """What the ISA declares and the RTL of ``params`` refuses (``BAD_OPERAND``), as
    ``isa.operand_faults``: ``(condition, message)`` over ``f(name)``. MXINT4 weights
    need the MXINT4 datapath and ``array_rows <= MX_BLOCK`` (the matmul unit shifts each
    ``R``-element chunk of the reduction by one block's exponent; every preset has at
    most 32 rows): ``rtl.common.weights_refusal``."""
    refusal = weights_refusal(params, "mxint4")
    if mnemonic == "MATMUL" and refusal:
        return [(f("w_format") == int(isa.WeightFormat.MXINT4), f"MATMUL: {refusal}")]
    return []


def operands(word) -> dict[str, list[isa.L2Operand]]:
    """Per compute opcode, its L2 operands as values of the instruction ``word``: the ISA's
    declaration (``isa.compute_operands``) less the operands implied by another (an
    accumulating ``MATMUL``'s read of its output has the output's extent)."""
    return {mn: [o for o in isa.compute_operands(mn, lambda n, mn=mn: field(word, mn, n), Mux)
                 if not o.implied]
            for mn in COMPUTE}


class OperandCheck(wiring.Component):
    def __init__(self, *, params: RtlParams):
        check_params(params)
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
        with m.Switch(op):
            for mn in COMPUTE:
                faults = [*isa.operand_faults(mn, lambda n, mn=mn: f(mn, n)),
                          *unimplemented(mn, lambda n, mn=mn: f(mn, n), self.params)]
                if faults:
                    with m.Case(opcode_of(mn)):
                        m.d.comb += bad.eq(reduce(operator.or_, (c for c, _ in faults)))

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
                    for slot, o in zip(slots, ops, strict=False):
                        m.d.comb += [slot["addr"].eq(o.addr), slot["rows"].eq(o.rows),
                                     slot["row_bytes"].eq(o.row_bytes), slot["stride"].eq(o.stride),
                                     slot["written"].eq(o.write), slot["used"].eq(o.present)]
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
                over |= a["used"] & b["used"] & a["written"] & b["written"] & meet

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
