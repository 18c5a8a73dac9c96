"""Instructions as values: encoding, decoding, assembly text and program files.

Contract
--------
* ``Instruction`` is an immutable decoded instruction; ``make(mnemonic, **fields)``
  builds one and checks every field against its declared width (``IsaError`` names it).
* ``encode``/``decode`` convert to and from the 32-byte binary word; ``decode`` refuses
  unknown opcodes, masks that name the instruction's own engine and non-zero padding.
* ``format_instruction``/``parse_line`` convert to and from one line of assembly text;
  ``disassemble``/``assemble`` do whole listings. Text and binary round-trip exactly.
* ``write_program``/``read_program`` store a program as a file: a 20-byte header (magic
  ``ACCLPROG``, version, instruction count, CRC-32 of the body) and the instruction
  words. A truncated or corrupted file raises ``ProgramFileError`` saying which.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from arch.isa import (
    BY_CODE,
    BY_MNEMONIC,
    ENGINES,
    HEADER_BITS,
    INSTR_BYTES,
    MASK_BITS,
    OPCODE_BITS,
    Engine,
    Instruction,
    IsaError,
    make,
)


class ProgramFileError(ValueError):
    """A program file that is truncated, corrupted or not a program."""


MAGIC = b"ACCLPROG"
VERSION = 1
_HEADER = struct.Struct("<8sHHII")


# -- binary ----------------------------------------------------------------------------

def encode(instr: Instruction) -> bytes:
    spec = instr.spec
    word = spec.code | (instr.wait << OPCODE_BITS) | (instr.signal << (OPCODE_BITS + MASK_BITS))
    for (_, offset), value in zip(spec.layout(), instr.operands, strict=True):
        word |= value << offset
    return word.to_bytes(INSTR_BYTES, "little")


def decode(raw: bytes, index: int | None = None) -> Instruction:
    where = f"instruction {index}: " if index is not None else ""
    if len(raw) != INSTR_BYTES:
        raise IsaError(f"{where}expected {INSTR_BYTES} bytes, got {len(raw)}")
    word = int.from_bytes(raw, "little")
    code = word & ((1 << OPCODE_BITS) - 1)
    spec = BY_CODE.get(code)
    if spec is None:
        raise IsaError(f"{where}unknown opcode 0x{code:02x}")
    wait = (word >> OPCODE_BITS) & ((1 << MASK_BITS) - 1)
    signal = (word >> (OPCODE_BITS + MASK_BITS)) & ((1 << MASK_BITS) - 1)
    operands = tuple((word >> offset) & f.max for f, offset in spec.layout())
    used = HEADER_BITS + sum(f.bits for f in spec.fields)
    if word >> used:
        raise IsaError(f"{where}{spec.mnemonic} has non-zero bits above bit {used}")
    try:
        return make(spec.mnemonic, wait=wait, signal=signal, **dict(zip(spec.field_names,
                                                                       operands, strict=True)))
    except IsaError as e:
        raise IsaError(f"{where}{e}") from None


def encode_program(instrs: list[Instruction]) -> bytes:
    return b"".join(encode(i) for i in instrs)


def decode_program(body: bytes) -> list[Instruction]:
    if len(body) % INSTR_BYTES:
        raise IsaError(f"program body of {len(body)} bytes is not a whole number of "
                       f"{INSTR_BYTES}-byte instructions")
    return [decode(body[i:i + INSTR_BYTES], i // INSTR_BYTES)
            for i in range(0, len(body), INSTR_BYTES)]


def write_program(path: str | Path, instrs: list[Instruction]) -> None:
    body = encode_program(instrs)
    header = _HEADER.pack(MAGIC, VERSION, 0, len(instrs), zlib.crc32(body))
    Path(path).write_bytes(header + body)


def read_program(path: str | Path) -> list[Instruction]:
    path = Path(path)
    data = path.read_bytes()
    if len(data) < _HEADER.size:
        raise ProgramFileError(f"{path}: truncated ({len(data)} bytes, shorter than the "
                               f"{_HEADER.size}-byte header)")
    magic, version, _, count, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ProgramFileError(f"{path}: not a program file (bad magic {magic!r})")
    if version != VERSION:
        raise ProgramFileError(f"{path}: program format version {version}, expected {VERSION}")
    body = data[_HEADER.size:]
    if len(body) != count * INSTR_BYTES:
        raise ProgramFileError(f"{path}: truncated or padded: header says {count} instructions "
                               f"({count * INSTR_BYTES} bytes), file holds {len(body)} bytes")
    if zlib.crc32(body) != crc:
        raise ProgramFileError(f"{path}: corrupted (CRC-32 mismatch)")
    try:
        return decode_program(body)
    except IsaError as e:
        raise ProgramFileError(f"{path}: {e}") from None


# -- text -------------------------------------------------------------------------------

def _engine_list(mask: int) -> str:
    return "+".join(e.name.lower() for e in ENGINES if mask & (1 << int(e)))


def format_instruction(instr: Instruction) -> str:
    parts = [instr.mnemonic]
    for f, value in zip(instr.spec.fields, instr.operands, strict=True):
        if f.enum is not None:     # a value the enum lacks (ParamMode 3) as its number
            text = f.enum(value).name if value in set(f.enum) else str(value)
        elif f.address is not None:
            text = f"0x{value:x}"
        else:
            text = str(value)
        parts.append(f"{f.name}={text}")
    if instr.wait:
        parts.append(f"wait={_engine_list(instr.wait)}")
    if instr.signal:
        parts.append(f"signal={_engine_list(instr.signal)}")
    return " ".join(parts)


def _parse_mask(text: str, where: str) -> int:
    mask = 0
    for name in text.split("+"):
        try:
            mask |= 1 << int(Engine[name.upper()])
        except KeyError:
            raise IsaError(f"{where}unknown engine {name!r} in dependency mask") from None
    return mask


def parse_line(line: str, lineno: int | None = None) -> Instruction | None:
    """One instruction from a line of assembly; ``None`` for blank and comment lines."""
    where = f"line {lineno}: " if lineno is not None else ""
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    mnemonic, *args = text.split()
    spec = BY_MNEMONIC.get(mnemonic.upper())
    if spec is None:
        raise IsaError(f"{where}unknown instruction {mnemonic!r}")
    enums = {f.name: f.enum for f in spec.fields if f.enum is not None}
    fields, wait, signal = {}, 0, 0
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise IsaError(f"{where}expected name=value, got {arg!r}")
        if key == "wait":
            wait = _parse_mask(value, where)
        elif key == "signal":
            signal = _parse_mask(value, where)
        elif key in enums:
            try:
                fields[key] = int(value) if value.isdigit() else int(enums[key][value.upper()])
            except KeyError:
                raise IsaError(f"{where}{key} must be one of "
                               f"{', '.join(m.name for m in enums[key])} (or a number), "
                               f"not {value!r}") from None
        else:
            try:
                fields[key] = int(value, 0)
            except ValueError:
                raise IsaError(f"{where}{key}: {value!r} is not a number") from None
    try:
        return make(spec.mnemonic, wait=wait, signal=signal, **fields)
    except IsaError as e:
        raise IsaError(f"{where}{e}") from None


def assemble(text: str) -> list[Instruction]:
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        instr = parse_line(line, lineno)
        if instr is not None:
            out.append(instr)
    return out


def disassemble(instrs: list[Instruction], numbered: bool = False) -> str:
    lines = []
    for i, instr in enumerate(instrs):
        text = format_instruction(instr)
        lines.append(f"{text}  # {i}" if numbered else text)
    return "\n".join(lines) + "\n"

