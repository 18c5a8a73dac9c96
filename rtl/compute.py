"""The compute engine: the matmul unit and the vector unit behind one instruction queue.

Contract
--------
``ComputeEngine(params=...)`` executes the compute instructions of its queue
(``isa.opcodes_of(Engine.COMPUTE)``) in order, behind the same ``EngineShell`` as the DMA
engines (``rtl/engine.py``: queue, begin/end token handshake, faults; the first cycle of
execution is the operand check): ``MATMUL`` goes to the
``MatmulUnit`` (L2 ports ``port0..3``), every other compute instruction to the
``VectorUnit`` (``port4..8``). One instruction is in flight at a time, so an
instruction's reads never overtake the previous one's writes.

Operands the ISA refuses stop the accelerator at the instruction's index with the ISA
simulator's error code, before the instruction runs (``OperandCheck``: bad fields,
overlapping written rows, L2 operands beyond ``l2_bytes``).
``busy``/``stall`` say whether it executes or waits for tokens; ``macs`` counts array
multiply-accumulates as the ISA simulator does: ``macs_step`` is ``m * k * n`` in the
cycle a ``MATMUL`` starts.

Tested by tests/rtl/test_accelerator.py (compute instructions and their faults, whole
accelerator) and tests/rtl/test_tiny_rtl.py.
"""

from __future__ import annotations

from amaranth import Module, Mux
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from arch import isa
from rtl.common import RtlParams, check_params
from rtl.controller import ErrorPort, TokenPort
from rtl.decode import code, field, queued_layout
from rtl.dram import MemPort
from rtl.engine import EngineShell
from rtl.matmul_unit import MatmulUnit
from rtl.operand_check import OperandCheck
from rtl.vector_unit import N_READ, N_WRITE, VectorUnit

N_VECTOR_PORTS = N_READ + N_WRITE
#: The instructions this engine executes, from the ISA declaration.
OPS = tuple(op.mnemonic for op in isa.opcodes_of(isa.Engine.COMPUTE))


class ComputeEngine(wiring.Component):
    N_PORTS = MatmulUnit.N_PORTS + N_VECTOR_PORTS

    def __init__(self, *, params: RtlParams):
        check_params(params)
        self.params = params
        members = {
            "queue": In(stream.Signature(queued_layout())),
            "tokens": Out(TokenPort()),
            "fault": Out(ErrorPort()),
            "idle": Out(1), "busy": Out(1), "stall": Out(1),
            "macs_step": Out(isa.COUNTER_BITS),
        }
        for i in range(self.N_PORTS):
            members[f"port{i}"] = Out(MemPort(params.l2_addr_bits, params.line_bytes))
        super().__init__(members)

    def port(self, i: int):
        return getattr(self, f"port{i}")

    def elaborate(self, platform):
        p = self.params
        m = Module()
        m.submodules.shell = shell = EngineShell()
        m.submodules.matmul = mm = MatmulUnit(params=p)
        m.submodules.vector = vec = VectorUnit(params=p)
        m.submodules.check = check = OperandCheck(params=p)
        for name in ("queue", "tokens", "fault"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(shell, name))
        for i in range(MatmulUnit.N_PORTS):
            wiring.connect(m, wiring.flipped(self.port(i)), mm.port(i))
        for i in range(N_VECTOR_PORTS):
            wiring.connect(m, wiring.flipped(self.port(MatmulUnit.N_PORTS + i)), vec.port(i))

        word = shell.word
        op = word[:isa.OPCODE_BITS]
        is_matmul = op == code("MATMUL")
        known = 0
        for mnemonic in OPS:
            known |= op == code(mnemonic)
        m.d.comb += [self.idle.eq(shell.idle), self.busy.eq(shell.busy),
                     self.stall.eq(shell.stall),
                     mm.word.eq(word), vec.word.eq(word), check.word.eq(word)]

        # The first cycle of execution checks the operands, then starts the unit.
        refused = ~known | (check.code != isa.ErrorCode.NONE)
        m.d.comb += [shell.error.eq(shell.start & refused),
                     shell.error_code.eq(Mux(known, check.code, isa.ErrorCode.INVALID_OPCODE)),
                     shell.done.eq(mm.done | vec.done)]
        with m.If(shell.start & ~refused):
            m.d.comb += [mm.start.eq(is_matmul), vec.start.eq(~is_matmul)]
            with m.If(is_matmul):
                mmf = {name: field(word, "MATMUL", name) for name in ("m", "k", "n")}
                m.d.comb += self.macs_step.eq(mmf["m"] * mmf["k"] * mmf["n"])
        return m
