"""The ISA declaration drives encoding and text: both round-trip exactly, and malformed
input is refused with a message naming the problem."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arch import isa
from compiler.asm import (
    IsaError,
    ProgramFileError,
    assemble,
    decode,
    disassemble,
    encode,
    format_instruction,
    make,
    parse_line,
    read_program,
    write_program,
)


@st.composite
def instructions(draw):
    spec = draw(st.sampled_from(isa.OPCODES))
    fields = {f.name: draw(st.integers(0, f.max)) for f in spec.fields}
    if spec.engine == isa.Engine.CONTROL:
        wait = signal = 0
    else:
        others = [m for m in range(8) if not m & (1 << int(spec.engine))]
        wait, signal = draw(st.sampled_from(others)), draw(st.sampled_from(others))
    return make(spec.mnemonic, wait=wait, signal=signal, **fields)


@settings(max_examples=300)
@given(instructions())
def test_binary_round_trip(instr):
    raw = encode(instr)
    assert len(raw) == isa.INSTR_BYTES
    assert decode(raw) == instr


@settings(max_examples=300)
@given(instructions())
def test_text_round_trip(instr):
    text = format_instruction(instr)
    assert parse_line(text) == instr
    assert format_instruction(parse_line(text)) == text


@settings(max_examples=20)
@given(st.lists(instructions(), min_size=1, max_size=30))
def test_program_file_round_trip(tmp_path_factory, instrs):
    path = tmp_path_factory.mktemp("prog") / "p.bin"
    write_program(path, instrs)
    assert read_program(path) == instrs
    assert assemble(disassemble(instrs, numbered=True)) == instrs


def test_fields_are_checked_against_their_widths():
    with pytest.raises(IsaError, match="field rows = 70000 does not fit 16 bits"):
        make("DMA_LOAD", dram_addr=0, l2_addr=0, rows=70000, row_bytes=1, dram_stride=0,
             l2_stride=0)
    with pytest.raises(IsaError, match="missing field 'eps'"):
        make("RMSNORM", src_addr=0, dst_addr=0, rows=1, cols=1, src_stride=0, dst_stride=0,
             mult=1, shift=1)
    with pytest.raises(IsaError, match="names its own engine"):
        make("ARGMAX", src_addr=0, n=1, dst_addr=0, wait=[isa.Engine.COMPUTE])


def test_unknown_opcode_and_padding_are_refused():
    with pytest.raises(IsaError, match="unknown opcode 0x3f"):
        decode(bytes([0x3F]) + bytes(31))
    raw = bytearray(encode(make("HALT")))
    raw[31] = 0x80
    with pytest.raises(IsaError, match="non-zero bits"):
        decode(bytes(raw))


def test_assembly_errors_name_the_line():
    with pytest.raises(IsaError, match="line 2: unknown instruction 'FROB'"):
        assemble("HALT\nFROB x=1\n")
    with pytest.raises(IsaError, match="line 1: mode must be one of GEMM, GEMV"):
        assemble("MATMUL mode=SIDEWAYS")


def test_truncated_and_corrupted_files(tmp_path):
    path = tmp_path / "p.bin"
    instrs = [make("ARGMAX", src_addr=16, n=65, dst_addr=0), make("HALT")]
    write_program(path, instrs)
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with pytest.raises(ProgramFileError, match="truncated"):
        read_program(path)
    corrupted = bytearray(data)
    corrupted[30] ^= 0x04
    path.write_bytes(bytes(corrupted))
    with pytest.raises(ProgramFileError, match="corrupted"):
        read_program(path)
    path.write_bytes(b"ELF\x7f" + data[4:])
    with pytest.raises(ProgramFileError, match="not a program file"):
        read_program(path)
    path.write_bytes(data[:7])
    with pytest.raises(ProgramFileError, match="shorter than the 20-byte header"):
        read_program(path)


def test_isa_reference_is_generated_from_the_declaration():
    from pathlib import Path

    from compiler.isadoc import render

    doc = Path(__file__).resolve().parents[2] / "docs" / "isa.md"
    assert doc.read_text() == render(), "docs/isa.md is stale: python -m compiler.isadoc"
