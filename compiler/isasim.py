"""The ISA simulator (rung 2): executes programs with the accelerator's exact semantics.

Contract
--------
``IsaSimulator(hw, dram)`` holds an L2 of ``hw.l2_bytes`` and the given DRAM image
(bytes). ``run(program)`` dispatches the instructions to the load, compute and store
engines in program order, as the hardware's fetch unit does, and executes each engine in
order, honouring the dependency tokens: an instruction starts only when the counters
named by its wait mask are non-zero, and a signal to a full counter blocks.

Programs whose tokens are wrong fail loudly:

* a program that cannot make progress raises ``DeadlockError`` naming each engine's
  blocked instruction;
* a race — two engines touching the same bytes, at least one writing, without a chain
  of tokens ordering them — raises ``RaceError`` naming both instructions. Races are
  found with vector clocks carried by the tokens, so the verdict does not depend on the
  order in which this simulator happens to interleave the engines.

Arithmetic is ``models.numerics`` on NumPy arrays; addressing is ``semantics.accesses``.
Counters: instructions, DRAM bytes read and written, bytes prefetched and array MACs;
cycle counters stay zero (the ISA simulator is untimed).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from arch.hardware import HardwareConfig
from arch.isa import (
    COUNTERS,
    ENGINES,
    OPCODES,
    PARAM_WORD,
    Engine,
    ErrorCode,
    Instruction,
    KvFormat,
    OutBits,
    ParamMode,
    WeightFormat,
    WeightLayout,
    kv_chunk_unpack,
    kv_map_allows,
)
from compiler.asm import format_instruction
from compiler.semantics import AcceleratorError, Access, accesses, check, flat
from models import numerics as N


class DeadlockError(RuntimeError):
    """No engine can make progress."""


class RaceError(RuntimeError):
    """Two engines touch the same memory without a token ordering them."""


@dataclass
class Counters:
    values: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))

    def add(self, name: str, n: int) -> None:
        self.values[name] += int(n)

    def as_array(self) -> np.ndarray:
        return np.array([self.values[c] for c in COUNTERS], dtype=np.int64)


def unpack_params(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Requantisation parameter words (``arch.isa.PARAM_WORD``) -> ``(mult, shift)``."""
    words = words.astype(np.int64)
    out = []
    for name in ("mult", "shift"):
        f = PARAM_WORD[name]
        out.append(((words >> f.offset) & ((1 << f.width) - 1)).astype(np.int32))
    return out[0], out[1]


def pack_params(mult: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``(mult, shift)`` -> uint32 requantisation parameter words (``unpack_params``'s
    inverse; the values fit their fields by ``numerics.softmax``'s bounds)."""
    word = np.zeros(np.shape(mult), np.int64)
    for name, value in (("mult", mult), ("shift", shift)):
        f = PARAM_WORD[name]
        word |= (np.asarray(value, np.int64) & ((1 << f.width) - 1)) << f.offset
    return word.astype(np.uint32)


class _Clocks:
    """Per-byte vector-clock stamps of the last write and read by each engine."""

    def __init__(self, size: int):
        self.write = np.zeros((len(ENGINES), size), np.int32)
        self.read = np.zeros((len(ENGINES), size), np.int32)


class IsaSimulator:
    def __init__(self, hw: HardwareConfig, dram: bytes | bytearray | np.ndarray,
                 check_races: bool = True):
        self.hw = hw
        self.dram = np.frombuffer(bytearray(dram), dtype=np.uint8).copy()
        self.l2 = np.zeros(hw.l2_bytes, np.uint8)
        self.check_races = check_races
        self.counters = Counters()
        self._space = {"l2": self.l2, "dram": self.dram}
        self.live_map: tuple[np.ndarray, int] | None = None     # the last KV_LIVE's map

    # -- memory ----------------------------------------------------------------------
    def read_i32(self, addr: int) -> int:
        if addr < 0 or addr + 4 > len(self.dram):
            raise AcceleratorError(ErrorCode.DRAM_OUT_OF_RANGE, None,
                                   f"int32 read at 0x{addr:x} beyond DRAM size "
                                   f"0x{len(self.dram):x}")
        return int(self.dram[addr:addr + 4].view("<i4")[0])

    def read_bytes(self, addr: int, n: int) -> np.ndarray:
        if addr < 0 or addr + n > len(self.dram):
            raise AcceleratorError(ErrorCode.DRAM_OUT_OF_RANGE, None,
                                   f"{n} bytes at 0x{addr:x} beyond DRAM size "
                                   f"0x{len(self.dram):x}")
        return self.dram[addr:addr + n].copy()

    def read(self, a: Access, dtype) -> np.ndarray:
        buf = self._space[a.space]
        if a.stride == a.row_bytes or a.rows == 1:
            raw = buf[a.addr:a.addr + a.rows * a.row_bytes].reshape(a.rows, a.row_bytes)
        else:
            raw = np.lib.stride_tricks.as_strided(buf[a.addr:], shape=(a.rows, a.row_bytes),
                                                  strides=(a.stride, 1))
        return np.ascontiguousarray(raw).view(dtype)

    def write(self, a: Access, values: np.ndarray) -> None:
        raw = np.ascontiguousarray(values).view(np.uint8).reshape(a.rows, a.row_bytes)
        buf = self._space[a.space]
        if a.stride == a.row_bytes or a.rows == 1:
            buf[a.addr:a.addr + a.rows * a.row_bytes] = raw.ravel()
        else:
            for r in range(a.rows):
                base = a.addr + r * a.stride
                buf[base:base + a.row_bytes] = raw[r]

    # -- running -----------------------------------------------------------------------
    def run(self, program: list[Instruction]) -> Counters:
        """Run ``program`` to its ``HALT``: a ``KV_LIVE`` splits it, every instruction
        before it having ended (the engines drained) before it reads its map and any
        after it begins. Raises ``AcceleratorError`` (the stop the hardware makes),
        ``DeadlockError`` or ``RaceError``."""
        segments: list[tuple[dict, Instruction, int]] = []
        queues: dict[Engine, list[tuple[int, Instruction]]] = {e: [] for e in ENGINES}
        halted = False
        for index, instr in enumerate(program):
            if instr.engine == Engine.CONTROL:
                segments.append((queues, instr, index))
                queues = {e: [] for e in ENGINES}
                if instr.mnemonic == "HALT":
                    halted = True
                    break
                continue
            queues[instr.engine].append((index, instr))
        if not halted:
            raise AcceleratorError(ErrorCode.BAD_OPERAND, len(program),
                                   "the program ends without HALT")
        if self.check_races:
            # A program starts after the previous one drained: everything before it is
            # ordered, so race tracking starts afresh.
            self._clocks = {"l2": _Clocks(self.hw.l2_bytes), "dram": _Clocks(len(self.dram))}
        self.live_map = None                        # until a KV_LIVE: every block live
        tokens = {(a, b): deque() for a in ENGINES for b in ENGINES if a != b}
        clocks = {e: np.zeros(len(ENGINES), np.int64) for e in ENGINES}
        owner = {}                                  # (engine, clock) -> program index
        for queues, control, index in segments:
            self._run_engines(queues, tokens, clocks, owner, program)
            self.counters.add("instructions", 1)
            if control.mnemonic == "KV_LIVE":
                self._kv_live(index, control)
                joined = np.maximum.reduce([clocks[e] for e in ENGINES])
                for e in ENGINES:                   # the drain orders everything before it
                    clocks[e] = joined.copy()
        return self.counters

    def _kv_live(self, index: int, f: Instruction) -> None:
        """Read ``KV_LIVE``'s map (the engines have drained)."""
        acc = accesses(f, self.hw)
        check(f, self.hw, acc, len(self.dram), index)
        self.live_map = (self.read(acc["map"], np.uint8).ravel(), f.map_blocks)
        self.counters.add("dram_read_bytes", acc["map"].nbytes)

    def live(self, block: int, seq: int) -> bool:
        """Whether sequence ``seq``'s KV walks may name ``block``: every block until a
        ``KV_LIVE``, then those its map gives ``seq`` or shares (``kv_map_allows``)."""
        return self.live_map is None or kv_map_allows(*self.live_map, block, seq)

    def _run_engines(self, queues, tokens, clocks, owner, program) -> None:
        """Run the engines over ``queues`` (one segment of the program) until each has
        executed all of its instructions."""
        limit = (1 << self.hw.token_counter_bits) - 1
        pc = dict.fromkeys(ENGINES, 0)
        while any(pc[e] < len(queues[e]) for e in ENGINES):
            progressed = False
            for e in ENGINES:
                while pc[e] < len(queues[e]):
                    index, instr = queues[e][pc[e]]
                    waits = [a for a in ENGINES if instr.wait >> int(a) & 1]
                    signals = [b for b in ENGINES if instr.signal >> int(b) & 1]
                    if any(not tokens[(a, e)] for a in waits):
                        break
                    if any(len(tokens[(e, b)]) >= limit for b in signals):
                        break
                    for a in waits:
                        clocks[e] = np.maximum(clocks[e], tokens[(a, e)].popleft())
                    clocks[e][int(e)] += 1
                    owner[(int(e), int(clocks[e][int(e)]))] = index
                    self._execute(index, instr, clocks[e], owner, program)
                    for b in signals:
                        tokens[(e, b)].append(clocks[e].copy())
                    pc[e] += 1
                    progressed = True
            if not progressed:
                raise DeadlockError(self._describe_deadlock(queues, pc, tokens))
        self.counters.add("instructions", sum(len(q) for q in queues.values()))

    def _describe_deadlock(self, queues, pc, tokens) -> str:
        lines = ["deadlock: no engine can make progress"]
        for e in ENGINES:
            if pc[e] < len(queues[e]):
                index, instr = queues[e][pc[e]]
                empty = [a.name.lower() for a in ENGINES
                         if instr.wait >> int(a) & 1 and not tokens[(a, e)]]
                lines.append(f"  {e.name.lower()} engine at instruction {index} "
                             f"({format_instruction(instr)}) waits for a token from "
                             f"{', '.join(empty) or 'a full counter to drain'}")
        return "\n".join(lines)

    def _check_races(self, index, engine: Engine, acc: list[Access], clock, owner, program):
        e = int(engine)
        for a in acc:
            stamps = self._clocks[a.space]
            idx = a.indices()
            for other in range(len(ENGINES)):
                if other == e:
                    continue
                tables = [("write", stamps.write)] + ([("read", stamps.read)] if a.write else [])
                for kind, table in tables:
                    seen = table[other][idx]
                    latest = int(seen.max()) if seen.size else 0
                    if latest > clock[other]:
                        j = owner[(other, latest)]
                        raise RaceError(
                            f"race on {a.space.upper()} [0x{a.addr:x}, 0x{a.end:x}): instruction "
                            f"{index} ({program[index].mnemonic}, {engine.name.lower()} engine) "
                            f"{'writes' if a.write else 'reads'} bytes that instruction {j} "
                            f"({program[j].mnemonic}, {Engine(other).name.lower()} engine) "
                            f"{kind}s, with no dependency token ordering them")
        for a in acc:
            stamps = self._clocks[a.space]
            (stamps.write if a.write else stamps.read)[e][a.indices()] = clock[e]

    def execute(self, instr: Instruction) -> None:
        """Execute one instruction on the current L2 and DRAM, without tokens (unit tests
        of single instructions against the RTL)."""
        if instr.mnemonic == "KV_LIVE":
            self._kv_live(None, instr)
            return
        acc = accesses(instr, self.hw, self.read_i32, self.read_bytes, self.live)
        check(instr, self.hw, acc, len(self.dram))
        EXECUTE[instr.mnemonic](self, instr, acc)

    def _execute(self, index: int, instr: Instruction, clock, owner, program) -> None:
        acc = accesses(instr, self.hw, self.read_i32, self.read_bytes, self.live)
        check(instr, self.hw, acc, len(self.dram), index)
        if self.check_races:
            self._check_races(index, instr.engine, flat(acc), clock, owner, program)
        EXECUTE[instr.mnemonic](self, instr, acc)

    # -- engines -----------------------------------------------------------------------
    def _op_dma_load(self, f, acc):
        self.write(acc["dst"], self.read(acc["src"], np.uint8))
        self.counters.add("dram_read_bytes", acc["src"].nbytes)

    def _op_dma_store(self, f, acc):
        self.write(acc["dst"], self.read(acc["src"], np.uint8))
        self.counters.add("dram_write_bytes", acc["dst"].nbytes)

    def _op_dma_gather(self, f, acc):
        rows = [self.read(a, np.uint8) for a in acc["rows"]]
        self.write(acc["dst"], np.concatenate(rows) if rows else np.zeros((0, f.row_bytes)))
        self.counters.add("dram_read_bytes", acc["idx"].nbytes + sum(a.nbytes for a in acc["rows"]))

    def _op_kv_prefetch(self, f, acc):
        if f.kv_format == int(KvFormat.CHUNKED):    # each block: its header, its codes
            src = acc["src"]
            data = np.concatenate([kv_chunk_unpack(self.read(h, np.uint8).ravel(),
                                                   self.read(c, np.uint8).ravel(),
                                                   self.hw.kv_block_tokens)
                                   for h, c in zip(src[::2], src[1::2], strict=True)]
                                  ).view(np.uint8)
            self.write(acc["dst"], data)
            self.counters.add("dram_read_bytes", acc["table"].nbytes
                              + sum(a.nbytes for a in src))
            self.counters.add("prefetch_bytes", data.size)
            return
        data = np.concatenate([self.read(a, np.uint8) for a in acc["src"]])
        self.write(acc["dst"], data)
        moved = acc["table"].nbytes + data.size
        self.counters.add("dram_read_bytes", moved)
        self.counters.add("prefetch_bytes", data.size)

    def _op_kv_append(self, f, acc):
        data = self.read(acc["src"], np.uint8)
        row = 0
        for a in acc["dst"]:
            self.write(a, data[row:row + a.rows])
            row += a.rows
        self.counters.add("dram_read_bytes", acc["table"].nbytes)
        self.counters.add("dram_write_bytes", data.size)

    def _op_store_counters(self, f, acc):
        self.write(acc["dst"], self.counters.as_array()[None, :])
        self.counters.add("dram_write_bytes", acc["dst"].nbytes)

    def _op_matmul(self, f, acc):
        x = self.read(acc["x"], np.int8)
        if f.w_format == WeightFormat.MXINT4:
            elems = N.mx_unpack(self.read(acc["w"], np.uint8), f.k)
            shifts = self.read(acc["e"], np.uint8) & N.MX_SHIFT_MAX   # the low 3 bits (ISA)
            out = N.mx_matmul(x, elems, shifts, xp=np)
        else:
            w = self.read(acc["w"], np.int8)
            out = N.qmatmul(x, w.T if f.w_layout == WeightLayout.KN else w, xp=np)
        if f.accumulate:
            out = out + self.read(acc["acc"], np.int32)        # int32 wrap-around, as in RTL
        self.write(acc["out"], out.astype(np.int32))
        self.counters.add("array_macs", f.m * f.k * f.n)

    def _params(self, a: Access):
        return unpack_params(self.read(a, np.int32)[0])

    def _op_requant(self, f, acc):
        if f.params == ParamMode.ROW:                     # one word per row: [rows, 1]
            mult, shift = unpack_params(self.read(acc["param"], np.int32))
        else:
            mult, shift = self._params(acc["param"])
        bias = self.read(acc["bias"], np.int32)[0] if f.has_bias else None
        bits = N.ACT_BITS if f.out_bits == OutBits.INT8 else N.RESID_BITS
        out = N.requant(self.read(acc["src"], np.int32), mult, shift, bits, bias=bias, xp=np)
        self.write(acc["dst"], out)

    def _op_rmsnorm(self, f, acc):
        out = N.rmsnorm(self.read(acc["src"], np.int16), np.int32(f.mult), np.int32(f.shift),
                        np.int32(f.eps), xp=np)
        self.write(acc["dst"], out)

    def _op_rope(self, f, acc):
        x = self.read(acc["src"], np.int8).reshape(f.rows, f.heads, f.head_dim)
        freq = self.read(acc["freq"], np.uint32)[0]
        positions = f.pos0 + np.arange(f.rows, dtype=np.int32)
        out = N.rope(x, positions, freq, xp=np)
        self.write(acc["dst"], out.reshape(f.rows, f.heads * f.head_dim))

    def _op_softmax(self, f, acc):
        scores = self.read(acc["src"], np.int32)
        visible = np.arange(f.cols)[None, :] <= f.q_pos0 + np.arange(f.rows)[:, None]
        probs, row_mult, row_shift = N.softmax(scores, visible, np.int32(f.mult),
                                               np.int32(f.shift), np.int32(f.out_mult),
                                               np.int32(f.out_shift), xp=np)
        self.write(acc["dst"], probs)
        self.write(acc["scale"], pack_params(row_mult, row_shift))

    def _op_silu_mul(self, f, acc):
        mult, shift = self._params(acc["param"])          # interleaved: gate, output
        out = N.silu_mul(self.read(acc["gate"], np.int32), self.read(acc["up"], np.int8),
                         mult[0::2], shift[0::2], mult[1::2], shift[1::2], xp=np)
        self.write(acc["dst"], out)

    def _op_resadd(self, f, acc):
        mult, shift = self._params(acc["param"])
        out = N.residual_add(self.read(acc["h"], np.int16), self.read(acc["acc"], np.int32),
                             mult, shift, xp=np)
        self.write(acc["h_out"], out)

    def _op_argmax(self, f, acc):
        index = N.argmax(self.read(acc["src"], np.int16)[0], xp=np)
        self.write(acc["dst"], np.array([[index]], np.int32))


# Each instruction's execution, one per mnemonic the ISA declares (HALT has none).
EXECUTE = {op.mnemonic: getattr(IsaSimulator, "_op_" + op.mnemonic.lower())
           for op in OPCODES if op.engine != Engine.CONTROL}
