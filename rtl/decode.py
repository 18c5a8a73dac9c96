"""Instruction decoding generated from the ISA declaration (``arch/isa.py``).

Contract
--------
``INSTR_BITS``, the opcode field and each operand field's bit slice come from
``arch.isa``; nothing here restates a width or an opcode. ``field(word, mnemonic,
name)`` slices an operand out of a 256-bit instruction word; ``engine_of(m, opcode)``
returns the engine number of an opcode (``Engine`` values) and whether it is valid;
``Queued`` is what the controller hands an engine: the word and its program index.

Tested by tests/rtl/test_controller.py and tests/rtl/test_accelerator.py (every
instruction decoded from DRAM).
"""

from __future__ import annotations

from amaranth import Module, Signal, Value
from amaranth.lib import data

from arch import isa

INDEX_BITS = 24


def queued_layout() -> data.StructLayout:
    return data.StructLayout({"word": isa.INSTR_BITS, "index": INDEX_BITS})


def opcode(word: Value) -> Value:
    return word[:isa.OPCODE_BITS]


def wait_mask(word: Value) -> Value:
    return word[isa.OPCODE_BITS:isa.OPCODE_BITS + isa.MASK_BITS]


def signal_mask(word: Value) -> Value:
    return word[isa.OPCODE_BITS + isa.MASK_BITS:isa.HEADER_BITS]


def field(word: Value, mnemonic: str, name: str) -> Value:
    for f, offset in isa.BY_MNEMONIC[mnemonic].layout():
        if f.name == name:
            return word[offset:offset + f.bits]
    raise KeyError(f"{mnemonic} has no field {name!r}")


def code(mnemonic: str) -> int:
    return isa.BY_MNEMONIC[mnemonic].code


def engine_of(m: Module, op: Value) -> tuple[Signal, Signal]:
    """(engine number, valid) of an opcode, from the declaration's table."""
    engine = Signal(isa.Engine.as_shape())
    valid = Signal()
    with m.Switch(op):
        for spec in isa.OPCODES:
            with m.Case(spec.code):
                m.d.comb += [engine.eq(int(spec.engine)), valid.eq(1)]
    return engine, valid
