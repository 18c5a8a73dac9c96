"""What each instruction touches: the one definition of the ISA's addressing.

Contract
--------
``accesses(instr, hw, read_i32)`` returns the memory an instruction reads and writes as
named ``Access`` blocks (2-D: ``rows`` rows of ``row_bytes`` bytes, ``stride`` apart, in
L2 or DRAM). The ISA simulator executes instructions through these blocks and checks
races on them, and the compiler derives dependency tokens from them, so the two cannot
disagree about addressing. ``read_i32(addr)`` reads an int32 from DRAM; it resolves the
data-dependent addresses of ``DMA_GATHER`` (omitted when ``None``: the gathered table
must then be read-only) and of the block-table walks of ``KV_PREFETCH``/``KV_APPEND``;
``live(block, seq)``, when given, is the ``KV_LIVE`` map the walks check each block
against.

``check(instr, hw, accesses, dram_bytes)`` raises ``AcceleratorError`` with the
``ErrorCode`` the hardware reports for a bad operand or an out-of-range address.

Tested by tests/compiler/test_isasim.py and tests/rtl/test_operand_check.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from arch.hardware import HardwareConfig
from arch.isa import (
    BLOCK_TABLE_ENTRY_BYTES,
    COUNTER_BYTES,
    COUNTERS,
    INT32_BYTES,
    KV_MAP_WORD_BYTES,
    Engine,
    ErrorCode,
    Instruction,
    KvFormat,
    compute_operands,
    kv_chunk_addrs,
    kv_chunk_fault,
    kv_chunk_widths,
    kv_group_bytes,
    kv_map_words,
    kv_row_addr,
    kv_table_entry_addr,
    operand_faults,
)
from arch.uarch import KV_CHUNK_MAX_COLS


class AcceleratorError(RuntimeError):
    """The accelerator stopped in its error state."""

    def __init__(self, code: ErrorCode, index: int | None, message: str):
        self.code = code
        self.index = index
        self.message = message
        where = f"instruction {index}: " if index is not None else ""
        super().__init__(f"{code.name} (error code {int(code)}): {where}{message}")


@dataclass(frozen=True)
class Access:
    space: str          # "l2" or "dram"
    addr: int
    rows: int
    row_bytes: int
    stride: int
    write: bool = False

    @property
    def end(self) -> int:
        """One past the last byte touched."""
        if self.rows == 0 or self.row_bytes == 0:
            return self.addr
        return self.addr + (self.rows - 1) * self.stride + self.row_bytes

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes

    def indices(self) -> np.ndarray | slice:
        """The bytes touched: a slice when contiguous, else an index array."""
        if self.stride == self.row_bytes or self.rows == 1:
            return slice(self.addr, self.end)
        starts = self.addr + np.arange(self.rows, dtype=np.int64) * self.stride
        return (starts[:, None] + np.arange(self.row_bytes, dtype=np.int64)[None, :]).ravel()


Accesses = dict[str, Access | list[Access]]
ReadI32 = Callable[[int], int] | None
ReadBytes = Callable[[int, int], np.ndarray] | None
Live = Callable[[int, int], bool] | None


def _l2(addr, rows, row_bytes, stride, write=False) -> Access:
    return Access("l2", addr, rows, row_bytes, stride, write)


def _dram(addr, rows, row_bytes, stride, write=False) -> Access:
    return Access("dram", addr, rows, row_bytes, stride, write)


@dataclass(frozen=True)
class WalkFault:
    """Where a block-table walk stopped: at ``token``, its table entry beyond DRAM
    (``DRAM_OUT_OF_RANGE``) or outside the pool (``BAD_BLOCK``). Not an access: ``flat``
    leaves it out, ``check`` orders it among the rows' range faults as the RTL meets them."""
    token: int
    code: ErrorCode
    message: str


def _chunked(instr: Instruction) -> bool:
    return instr.mnemonic == "KV_PREFETCH" and instr.kv_format == int(KvFormat.CHUNKED)


def _kv_runs(instr: Instruction, hw: HardwareConfig, read_i32: ReadI32, col_offset: int,
             col_bytes: int, write: bool, read_bytes: ReadBytes = None,
             live: Live = None) -> list:
    """Pool blocks of a block-table walk: one access per run of tokens in one block; the
    walk ends at an entry it cannot read, one outside ``[0, pool_blocks)`` (as an
    unsigned int32) or one ``live(block, seq)`` (the ``KV_LIVE`` map, when given) does not
    allow the instruction's sequence, with a ``WalkFault``. A ``CHUNKED`` prefetch reads
    two accesses a block, its chunk's header bytes and code bytes (``arch.isa.kv_chunk_addrs``; the
    codes as many as the header's widths take); the walk also ends, with a
    ``WalkFault``, at a header or codes beyond DRAM or a header that is not one
    (``BAD_CHUNK``)."""
    if read_i32 is None:
        return []
    chunked = _chunked(instr)
    if chunked and read_bytes is None:
        return []
    bt = hw.kv_block_tokens
    runs, t, end = [], instr.first_token, instr.first_token + instr.n_tokens
    while t < end:
        try:
            block = read_i32(kv_table_entry_addr(instr.table_addr, t, bt))
        except AcceleratorError as e:
            runs.append(WalkFault(t, e.code, f"{instr.mnemonic}: token {t}'s block-table "
                                             f"entry: {e.message}"))
            break
        if block & 0xFFFF_FFFF >= instr.pool_blocks:
            runs.append(WalkFault(t, ErrorCode.BAD_BLOCK,
                                  f"{instr.mnemonic}: token {t}'s block-table entry {block} is "
                                  f"outside the pool of {instr.pool_blocks} blocks"))
            break
        if live is not None and not live(block, instr.seq):
            runs.append(WalkFault(t, ErrorCode.BAD_BLOCK,
                                  f"{instr.mnemonic}: token {t}'s block-table entry {block} "
                                  f"names a block the KV_LIVE map does not give sequence "
                                  f"{instr.seq} (free, or another sequence's)"))
            break
        run = min(end, (t // bt + 1) * bt) - t
        if chunked:
            fault = _chunk_accesses(instr, hw, block, t, read_bytes, runs)
            if fault is not None:
                runs.append(fault)
                break
        else:
            base = kv_row_addr(instr.pool_addr, block, t, bt, instr.row_bytes)
            runs.append(_dram(base + col_offset, run, col_bytes, instr.row_bytes, write))
        t += run
    return runs


def _chunk_accesses(instr: Instruction, hw: HardwareConfig, block: int, t: int,
                    read_bytes, runs: list) -> WalkFault | None:
    """Append block ``block``'s header and code accesses to ``runs`` (a ``CHUNKED``
    prefetch at token ``t``), or return the ``WalkFault`` that stops the walk there."""
    codes, headers = kv_chunk_addrs(instr.pool_addr, instr.pool_blocks, block,
                                    hw.kv_block_tokens, instr.row_bytes, instr.col_offset)
    try:
        header = read_bytes(headers, instr.col_bytes)
    except AcceleratorError as e:
        return WalkFault(t, e.code, f"KV_PREFETCH: token {t}'s chunk header: {e.message}")
    why = kv_chunk_fault(header)
    if why is not None:
        return WalkFault(t, ErrorCode.BAD_CHUNK,
                         f"KV_PREFETCH: block {block} (token {t}) in CHUNKED format: {why}")
    used = int(sum(kv_group_bytes(b, hw.kv_block_tokens)
                   for b in kv_chunk_widths(header)[0].tolist()))
    try:
        read_bytes(codes, used)
    except AcceleratorError as e:
        return WalkFault(t, e.code, f"KV_PREFETCH: token {t}'s chunk codes: {e.message}")
    runs += [_dram(headers, 1, instr.col_bytes, 0), _dram(codes, 1, used, 0)]
    return None


def _first_row_beyond(a: Access, limit: int) -> int | None:
    """The first row of ``a`` that ends past ``limit``, or None."""
    if a.rows == 0 or a.row_bytes == 0:
        return None
    if a.addr + a.row_bytes > limit:
        return 0
    if a.stride == 0:
        return None
    k = (limit - a.row_bytes - a.addr) // a.stride + 1
    return k if k < a.rows else None


def _walk_fault(instr: Instruction, acc: Accesses, hw: HardwareConfig, dram_bytes: int):
    """The first fault of a ``KV_PREFETCH``/``KV_APPEND`` walk in the RTL's order
    (``rtl/dma.py``): row by row, at a row that starts a block its table entry (read, then
    within the pool), then the row's source, then its destination, each against its
    memory's size. ``(code, message)`` or None (also for any other instruction, and for a
    walk not read: no table, as the compiler's dependency tracking asks)."""
    if instr.mnemonic not in ("KV_PREFETCH", "KV_APPEND") or not isinstance(acc, dict):
        return None
    load = instr.mnemonic == "KV_PREFETCH"
    walk = acc["src"] if load else acc["dst"]
    other = acc["dst"] if load else acc["src"]   # the L2 side: one access, row by row
    if not walk:
        return None
    found = []                                   # (row, order within the row, code, message)
    first = instr.first_token
    for a in walk:
        if isinstance(a, WalkFault):
            found.append((a.token - first, 0, a.code, a.message))
    row = 0
    for a in (a for a in walk if isinstance(a, Access) and not _chunked(instr)):
        k = _first_row_beyond(a, dram_bytes)
        if k is not None:
            found.append((row + k, 1 if load else 2, ErrorCode.DRAM_OUT_OF_RANGE,
                          f"{instr.mnemonic} touches DRAM bytes past its size 0x{dram_bytes:x}"))
        row += a.rows
    k = _first_row_beyond(other, hw.l2_bytes)
    if k is not None:
        found.append((k, 2 if load else 1, ErrorCode.L2_OUT_OF_RANGE,
                      f"{instr.mnemonic} touches L2 bytes past its size 0x{hw.l2_bytes:x}"))
    return min(found, key=lambda f: f[:2])[2:] if found else None


def _table(instr: Instruction, hw: HardwareConfig) -> Access:
    bt = hw.kv_block_tokens
    first = kv_table_entry_addr(instr.table_addr, instr.first_token, bt)
    last = kv_table_entry_addr(instr.table_addr, instr.first_token + max(instr.n_tokens, 1) - 1,
                               bt)
    return _dram(first, 1, last + BLOCK_TABLE_ENTRY_BYTES - first, 0)


def accesses(instr: Instruction, hw: HardwareConfig, read_i32: ReadI32 = None,
             read_bytes: ReadBytes = None, live: Live = None) -> Accesses:
    op, f = instr.mnemonic, instr
    if op == "HALT":
        return {}
    if op == "KV_LIVE":
        return {"map": _dram(f.map_addr, 1, kv_map_words(f.map_blocks) * KV_MAP_WORD_BYTES, 0)}
    if op == "DMA_LOAD":
        return {"src": _dram(f.dram_addr, f.rows, f.row_bytes, f.dram_stride),
                "dst": _l2(f.l2_addr, f.rows, f.row_bytes, f.l2_stride, True)}
    if op == "DMA_STORE":
        return {"src": _l2(f.l2_addr, f.rows, f.row_bytes, f.l2_stride),
                "dst": _dram(f.dram_addr, f.rows, f.row_bytes, f.dram_stride, True)}
    if op == "DMA_GATHER":
        rows = []
        if read_i32 is not None:
            rows = [_dram(f.table_addr + read_i32(f.idx_addr + INT32_BYTES * i) * f.row_bytes, 1,
                          f.row_bytes, 0) for i in range(f.count)]
        return {"idx": _dram(f.idx_addr, 1, INT32_BYTES * f.count, 0), "rows": rows,
                "dst": _l2(f.l2_addr, f.count, f.row_bytes, f.l2_stride, True)}
    if op == "KV_PREFETCH":
        return {"table": _table(f, hw),
                "src": _kv_runs(f, hw, read_i32, f.col_offset, f.col_bytes, False, read_bytes,
                                live),
                "dst": _l2(f.l2_addr, f.n_tokens, f.col_bytes, f.col_bytes, True)}
    if op == "KV_APPEND":
        return {"table": _table(f, hw),
                "src": _l2(f.l2_addr, f.n_tokens, f.row_bytes, f.row_bytes),
                "dst": _kv_runs(f, hw, read_i32, 0, f.row_bytes, True, live=live)}
    if op == "STORE_COUNTERS":
        return {"dst": _dram(f.dram_addr, 1, COUNTER_BYTES * len(COUNTERS), 0, True)}
    if instr.engine == Engine.COMPUTE:       # the ISA's one declaration of L2 operands
        return {o.key: _l2(o.addr, o.rows, o.row_bytes, o.stride, o.write)
                for o in compute_operands(op, instr.__getattr__) if o.present}
    raise AcceleratorError(ErrorCode.INVALID_OPCODE, None, f"no semantics for {op}")


def flat(acc: Accesses | list[Access]) -> list[Access]:
    """Every access of an instruction in one list (a list is returned as it is); a walk's
    ``WalkFault`` is not an access and is left out."""
    if isinstance(acc, list):
        return acc
    out = []
    for value in acc.values():
        out.extend(a for a in (value if isinstance(value, list) else [value])
                   if not isinstance(a, WalkFault))
    return out


def check(instr: Instruction, hw: HardwareConfig, acc: Accesses, dram_bytes: int,
          index: int | None = None) -> None:
    """Raise the hardware's error for bad operands and out-of-range addresses."""
    for bad, message in operand_faults(instr.mnemonic, instr.__getattr__):
        if bad:
            raise AcceleratorError(ErrorCode.BAD_OPERAND, index,
                                   message.format(mnemonic=instr.mnemonic, **instr.fields()))
    bt = hw.kv_block_tokens
    if _chunked(instr) and (instr.first_token % bt or instr.n_tokens % bt):
        raise AcceleratorError(ErrorCode.BAD_OPERAND, index,
                               f"KV_PREFETCH CHUNKED reads whole blocks of {bt} tokens, not "
                               f"tokens [{instr.first_token}, "
                               f"{instr.first_token + instr.n_tokens})")
    if _chunked(instr) and instr.n_tokens and not 0 < instr.col_bytes <= KV_CHUNK_MAX_COLS:
        raise AcceleratorError(ErrorCode.BAD_OPERAND, index,
                               f"KV_PREFETCH CHUNKED expands chunks of 1 to "
                               f"KV_CHUNK_MAX_COLS = {KV_CHUNK_MAX_COLS} columns, not "
                               f"{instr.col_bytes}")
    fault = _walk_fault(instr, acc, hw, dram_bytes)
    if fault is not None:
        raise AcceleratorError(fault[0], index, fault[1])
    for a in flat(acc):
        if a.write and a.rows > 1 and a.stride < a.row_bytes:
            raise AcceleratorError(ErrorCode.BAD_OPERAND, index,
                                   f"{instr.mnemonic} writes overlapping rows "
                                   f"(stride {a.stride} < row {a.row_bytes} bytes)")
        limit = hw.l2_bytes if a.space == "l2" else dram_bytes
        if a.end > limit:
            code = ErrorCode.L2_OUT_OF_RANGE if a.space == "l2" else ErrorCode.DRAM_OUT_OF_RANGE
            raise AcceleratorError(code, index,
                                   f"{instr.mnemonic} touches {a.space.upper()} bytes "
                                   f"[0x{a.addr:x}, 0x{a.end:x}) beyond its size 0x{limit:x}")
    if instr.engine == Engine.COMPUTE:
        # A compute unit streams its operands tile by tile or row by row, so a result
        # written over an operand it has not read yet would change it: the ISA allows
        # only exact in place (the same addresses, rows and stride: ROPE's dst = src,
        # RESADD's residual, an accumulating MATMUL's output).
        operands = flat(acc)
        written = [a for a in operands if a.write]
        for i, w in enumerate(written):       # two results (SOFTMAX's) over each other
            for v in written[i + 1:]:
                if w.addr < v.end and v.addr < w.end:
                    raise AcceleratorError(ErrorCode.BAD_OPERAND, index,
                                           f"{instr.mnemonic} writes two results over each "
                                           f"other: [0x{w.addr:x}, 0x{w.end:x}) and "
                                           f"[0x{v.addr:x}, 0x{v.end:x})")
        for w in written:
            for r in (a for a in operands if not a.write):
                same = (w.addr, w.rows, w.row_bytes, w.stride) == (r.addr, r.rows,
                                                                    r.row_bytes, r.stride)
                if not same and w.addr < r.end and r.addr < w.end:
                    raise AcceleratorError(ErrorCode.BAD_OPERAND, index,
                                           f"{instr.mnemonic} writes [0x{w.addr:x}, "
                                           f"0x{w.end:x}) over an operand it reads "
                                           f"[0x{r.addr:x}, 0x{r.end:x})")
