"""The compute engine: the matmul unit and the vector unit behind one instruction queue.

Contract
--------
``ComputeEngine(params)`` executes the compute instructions of its queue in order, with
the same begin/end token handshake as the DMA engines: ``MATMUL`` goes to the
``MatmulUnit`` (L2 ports ``port0..3``), every other compute instruction to the
``VectorUnit`` (``port4..8``). One instruction is in flight at a time, so an
instruction's reads never overtake the previous one's writes.

Operands the ISA refuses stop the accelerator at the instruction's index with the ISA
simulator's error code, before the instruction runs (``OperandCheck``: bad fields,
overlapping written rows, L2 operands beyond ``l2_bytes``).
``busy``/``stall`` say whether it executes or waits for tokens; ``macs`` counts array
multiply-accumulates as the ISA simulator does: ``macs_step`` is ``m * k * n`` in the
cycle a ``MATMUL`` starts.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from arch import isa
from rtl.common import RtlParams
from rtl.controller import ErrorPort, TokenPort
from rtl.decode import INDEX_BITS, code, field, queued_layout, signal_mask, wait_mask
from rtl.dram import MemPort
from rtl.matmul_unit import MatmulUnit
from rtl.operand_check import OperandCheck
from rtl.vector_unit import N_READ, N_WRITE, VectorUnit

N_VECTOR_PORTS = N_READ + N_WRITE


class ComputeEngine(wiring.Component):
    N_PORTS = MatmulUnit.N_PORTS + N_VECTOR_PORTS

    def __init__(self, params: RtlParams):
        self.params = params
        members = {
            "queue": In(stream.Signature(queued_layout())),
            "tokens": Out(TokenPort()),
            "fault": Out(ErrorPort()),
            "idle": Out(1), "busy": Out(1), "stall": Out(1), "macs_step": Out(64),
        }
        for i in range(self.N_PORTS):
            members[f"port{i}"] = Out(MemPort(params.l2_addr_bits, params.line_bytes))
        super().__init__(members)

    def port(self, i: int):
        return getattr(self, f"port{i}")

    def elaborate(self, platform):
        p = self.params
        m = Module()
        m.submodules.matmul = mm = MatmulUnit(p)
        m.submodules.vector = vec = VectorUnit(p)
        for i in range(MatmulUnit.N_PORTS):
            wiring.connect(m, wiring.flipped(self.port(i)), mm.port(i))
        for i in range(N_VECTOR_PORTS):
            wiring.connect(m, wiring.flipped(self.port(MatmulUnit.N_PORTS + i)), vec.port(i))

        word = Signal(isa.INSTR_BITS)
        index = Signal(INDEX_BITS)
        op = word[:isa.OPCODE_BITS]
        is_matmul = op == code("MATMUL")
        m.d.comb += [self.tokens.wait.eq(wait_mask(word)),
                     self.tokens.signal.eq(signal_mask(word)),
                     self.tokens.end_signal.eq(signal_mask(word)),
                     mm.word.eq(word), vec.word.eq(word)]

        def f(mnemonic, name):
            return field(word, mnemonic, name)

        def is_op(mnemonic):
            return op == code(mnemonic)

        m.submodules.check = check = OperandCheck(p)
        m.d.comb += check.word.eq(word)
        known = is_matmul
        for mn in ("REQUANT", "RMSNORM", "SOFTMAX", "SILU_MUL", "RESADD", "ROPE", "ARGMAX"):
            known |= is_op(mn)

        def fault(code_):
            m.d.comb += [self.fault.valid.eq(1), self.fault.code.eq(int(code_)),
                         self.fault.index.eq(index)]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.idle.eq(1), self.queue.ready.eq(1)]
                with m.If(self.queue.valid):
                    m.d.sync += [word.eq(self.queue.payload.word),
                                 index.eq(self.queue.payload.index)]
                    m.d.comb += self.idle.eq(0)
                    m.next = "BEGIN"
            with m.State("BEGIN"):
                m.d.comb += [self.tokens.begin.eq(1), self.stall.eq(~self.tokens.allowed)]
                with m.If(self.tokens.allowed):
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += self.busy.eq(1)
                with m.If(~known):
                    fault(isa.ErrorCode.INVALID_OPCODE)
                    m.next = "HALTED"
                with m.Elif(check.code != isa.ErrorCode.NONE):
                    m.d.comb += [self.fault.valid.eq(1), self.fault.code.eq(check.code),
                                 self.fault.index.eq(index)]
                    m.next = "HALTED"
                with m.Else():
                    m.d.comb += [mm.start.eq(is_matmul), vec.start.eq(~is_matmul)]
                    with m.If(is_matmul):
                        m.d.comb += self.macs_step.eq(
                            f("MATMUL", "m") * f("MATMUL", "k") * f("MATMUL", "n"))
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                with m.If(mm.done | vec.done):
                    m.next = "END"
            with m.State("END"):
                m.d.comb += [self.busy.eq(1), self.tokens.end.eq(1)]
                m.next = "IDLE"
            with m.State("HALTED"):
                pass
        return m
