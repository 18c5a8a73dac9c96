"""The compute engine's operand check (rtl/operand_check.py) against the ISA simulator's
(compiler.semantics.check): random compute instructions near the L2's end, with empty,
odd, overlapping and in-place operands, each given the same error code. Amaranth's
simulator."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from arch.hardware import load_hardware
from arch.isa import BY_MNEMONIC, Engine, ErrorCode, OutBits, WeightFormat, WeightLayout, make
from compiler.asm import encode
from compiler.semantics import AcceleratorError, accesses, check
from rtl.common import RtlParams
from rtl.operand_check import OperandCheck, unimplemented

L2_BYTES = 4096
COMPUTE = [op.mnemonic for op in BY_MNEMONIC.values() if op.engine == Engine.COMPUTE]


def random_instruction(rng, mnemonic):
    """Fields that land near the L2's end, often empty, odd or overlapping."""
    fields = {}
    for f in BY_MNEMONIC[mnemonic].fields:
        if f.address == "l2":
            value = int(rng.integers(0, L2_BYTES + 64))
            value = L2_BYTES - int(rng.integers(0, 200)) if rng.random() < 0.4 else value
        elif f.enum is not None:                    # and a value the enum lacks
            value = int(rng.integers(0, f.max + 1))
        elif f.bits == 1:
            value = int(rng.integers(0, 2))
        elif f.name.endswith("stride"):
            value = int(rng.integers(0, 400))
        elif f.name in ("mult", "shift", "eps", "pos0", "q_pos0", "out_mult", "out_shift"):
            value = int(rng.integers(0, 1 << min(f.bits, 8)))
        else:                                       # counts: rows, cols, m, k, n, heads ...
            value = int(rng.choice([0, 1, 2, 3, int(rng.integers(1, 70))]))
        fields[f.name] = value
    if rng.random() < 0.2:          # the operands far apart (SOFTMAX writes two results)
        l2 = [f.name for f in BY_MNEMONIC[mnemonic].fields if f.address == "l2"]
        fields.update({name: i * L2_BYTES // len(l2) for i, name in enumerate(l2)})
    if mnemonic == "ROPE" and rng.random() < 0.7:
        fields["head_dim"] &= ~1
    if mnemonic == "ROPE" and rng.random() < 0.5:
        fields["dst_addr"] = fields["src_addr"]            # exactly in place: allowed
    return make(mnemonic, **fields)


def expected_code(instr, hw) -> ErrorCode:
    """The ISA simulator's code, or ``BAD_OPERAND`` first for what the RTL declares it
    does not implement on ``hw`` (``rtl.operand_check.unimplemented``)."""
    if any(c for c, _ in unimplemented(instr.mnemonic, lambda n: getattr(instr, n),
                                       RtlParams(hw, dram_bytes=4096))):
        return ErrorCode.BAD_OPERAND
    try:
        check(instr, hw, accesses(instr, hw), dram_bytes=1 << 20, index=0)
    except AcceleratorError as e:
        return e.code
    return ErrorCode.NONE


def test_operand_check_gives_the_isa_simulators_error_codes():
    hw = load_hardware("edge-8x8").replace(l2_bytes=L2_BYTES)
    dut = OperandCheck(params=RtlParams(hw, dram_bytes=4096))
    rng = np.random.default_rng(7)
    instrs = [random_instruction(rng, COMPUTE[i % len(COMPUTE)]) for i in range(2100)]
    expected = [expected_code(i, hw) for i in instrs]
    got = []

    async def testbench(ctx):
        for instr in instrs:
            ctx.set(dut.word, int.from_bytes(encode(instr), "little"))
            got.append(ErrorCode(ctx.get(dut.code)))

    sim = Simulator(dut)
    sim.add_testbench(testbench)
    sim.run()
    wrong = [(str(i), e.name, g.name) for i, e, g in zip(instrs, expected, got, strict=True)
             if e != g]
    assert not wrong, wrong[:5]
    seen = {(i.mnemonic, e) for i, e in zip(instrs, expected, strict=True)}
    for mnemonic in COMPUTE:            # every opcode: runs, bad operands, out of range
        for code in (ErrorCode.NONE, ErrorCode.BAD_OPERAND, ErrorCode.L2_OUT_OF_RANGE):
            assert (mnemonic, code) in seen, (mnemonic, code)
    assert {(i.w_layout, i.accumulate) for i in instrs if i.mnemonic == "MATMUL"} == {
        (int(layout), a) for layout in WeightLayout for a in (0, 1)}
    mx = {e for i, e in zip(instrs, expected, strict=True) if i.mnemonic == "MATMUL"
          and i.w_format == WeightFormat.MXINT4}
    assert {ErrorCode.NONE, ErrorCode.BAD_OPERAND} <= mx
    assert {i.out_bits for i in instrs if i.mnemonic == "REQUANT"} == {int(b) for b in OutBits}


@pytest.mark.parametrize("why", ["array_rows = 64", "mxint4 = False"])
def test_mxint4_is_refused_where_the_rtl_cannot_run_it(why):
    """An R-element chunk of the reduction must lie in one MXINT4 block, and the unit must
    have the MXINT4 datapath: on 64 array rows, or built int8-only, the RTL refuses an
    MXINT4 MATMUL that the ISA simulator would run, and runs it with int8 weights."""
    hw = load_hardware("edge-8x8").replace(l2_bytes=L2_BYTES)
    if why == "array_rows = 64":
        params = RtlParams(hw.replace(array_rows=64, dram_bytes_per_cycle=64), dram_bytes=4096)
    else:
        params = RtlParams(hw, dram_bytes=4096, mxint4=False)
    dut = OperandCheck(params=params)
    words = {fmt: make("MATMUL", mode=0, accumulate=0, w_layout=int(WeightLayout.NK),
                       w_format=int(fmt), x_addr=0, w_addr=256, e_addr=1024, out_addr=2048,
                       m=2, k=64, n=8, x_stride=64, w_stride=64, out_stride=32)
             for fmt in WeightFormat}
    assert all(expected_code(i, hw) == ErrorCode.NONE for i in words.values())
    got = {}

    async def testbench(ctx):
        for fmt, instr in words.items():
            ctx.set(dut.word, int.from_bytes(encode(instr), "little"))
            got[fmt] = ErrorCode(ctx.get(dut.code))

    sim = Simulator(dut)
    sim.add_testbench(testbench)
    sim.run()
    assert got == {WeightFormat.INT8: ErrorCode.NONE,
                   WeightFormat.MXINT4: ErrorCode.BAD_OPERAND}
