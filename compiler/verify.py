"""The verifier run between the compiler's passes (``compiler.pipeline``).

Contract
--------
Each function checks the invariants of one stage of a program and raises
``VerifyError`` (a ``CompileError``) naming the program, the instruction index and the
broken invariant, so that a bug in a pass fails at compile time, not when a simulator
runs the program:

* ``verify_graphs``: the IR of the frontend (``ir.verify``: shapes and dtypes between
  producers and consumers, views inside their buffers).
* ``verify_code``: the back end's natural-order instructions. Every instruction passes
  the hardware's operand checks (``semantics.check``: legal operands, L2 and DRAM in
  range, no result written over an operand it still reads) against the DRAM laid out so
  far, so nothing reaches the programs placed after it; no instruction writes the
  read-only part of DRAM (below ``MemoryMap.rw_base``: the weights and constants); extra
  ordering edges point backwards; the program ends with ``HALT`` and ``STORE_COUNTERS``
  writes this program's counter block.
* ``verify_deps`` and ``verify_order``: the scheduling passes' intermediate results
  (dependencies point back to another engine; the stream order is a permutation that
  keeps them and moves only loads).
* ``verify_schedule``: the scheduled program. It is a permutation of the back end's
  instructions (only the wait/signal masks differ), ``HALT`` last; every wait is
  matched by a signal earlier in the stream (the k-th wait of engine B on engine A
  consumes A's k-th signal to B), so in-order dispatch cannot deadlock; every token is
  consumed before ``HALT`` (a token left over would leak into the next program); and the
  **static race check**: every two instructions of different engines whose accesses
  conflict (one writes what the other reads or writes) are ordered by a chain of tokens.

The race check runs the tokens' vector clocks in stream order (the ISA simulator does
the same while it executes, ``compiler.isasim``): an instruction's clock is the maximum
of its engine's previous clock and the clocks its waits consume, and a signal carries
its sender's clock. Conflicts are found at the scheduler's 64-byte page granularity
(``schedule.PAGE``), a superset of byte conflicts, so a program that passes has no race
at any byte. DRAM addresses that depend on the data the device writes at run time (the
gather's row indices) are taken from the image as compiled (the embedding table they
select is read-only), as the scheduler does.

Tested by tests/compiler/test_pipeline.py (every invariant broken on purpose, and the
static race check against the ISA simulator's).
"""

from __future__ import annotations

import numpy as np

from arch.hardware import HardwareConfig
from arch.isa import ENGINES, Engine, Instruction
from compiler.asm import format_instruction
from compiler.image import DramImage
from compiler.ir import CompileError, Graph, verify
from compiler.schedule import PAGE, page_span
from compiler.semantics import AcceleratorError, Access, check


class VerifyError(CompileError):
    """A pass produced a program that breaks an invariant of its stage."""


def _where(program: str, index: int, instr: Instruction) -> str:
    return f"{program}: instruction {index} ({format_instruction(instr)})"


def verify_graphs(program: str, graphs: list[Graph]) -> None:
    """The frontend's IR: shapes, dtypes and views (``ir.verify``)."""
    for g in graphs:
        verify(g)


def verify_code(program: str, instrs: list[Instruction], after: dict[int, list[int]],
                acc: list[list[Access]], hw: HardwareConfig, image: DramImage) -> None:
    """The back end's instructions, before scheduling, with each one's accesses
    (``schedule.program_accesses``; see the module docstring)."""
    mmap = image.mmap
    rw_base = mmap.rw_base or 0
    if not instrs or instrs[-1].mnemonic != "HALT":
        raise VerifyError(f"{program}: the program does not end with HALT")
    for index, instr in enumerate(instrs):
        try:
            check(instr, hw, acc[index], mmap.size, index)
        except AcceleratorError as e:
            raise VerifyError(f"{_where(program, index, instr)}: {e}") from None
        for a in acc[index]:
            if a.space == "dram" and a.write and a.addr < rw_base:
                raise VerifyError(f"{_where(program, index, instr)} writes read-only DRAM "
                                  f"[0x{a.addr:x}, 0x{min(a.end, rw_base):x})")
        if instr.mnemonic == "HALT" and index != len(instrs) - 1:
            raise VerifyError(f"{_where(program, index, instr)}: HALT before the end")
        if instr.mnemonic == "STORE_COUNTERS":
            region = mmap[f"counters:{program}"]
            if instr.dram_addr != region.offset:
                raise VerifyError(f"{_where(program, index, instr)} writes counters outside "
                                  f"the program's block at 0x{region.offset:x}")
    for index, earlier in after.items():
        if any(not 0 <= i < index for i in earlier):
            raise VerifyError(f"{program}: instruction {index} is ordered after a later "
                              f"one ({sorted(earlier)})")


def verify_deps(program: str, instrs: list[Instruction], deps: list[dict[int, int]]) -> None:
    """The dependency pass's output: one set per instruction, each pointing back to an
    earlier instruction of another engine."""
    if len(deps) != len(instrs):
        raise VerifyError(f"{program}: {len(deps)} dependency sets for {len(instrs)} "
                          f"instructions")
    for j, need in enumerate(deps):
        for engine, i in need.items():
            if not (0 <= i < j and int(instrs[i].engine) == engine != int(instrs[j].engine)):
                raise VerifyError(f"{program}: instruction {j} depends on instruction {i}, "
                                  f"which is not an earlier instruction of another engine")


def verify_order(program: str, instrs: list[Instruction], deps: list[dict[int, int]],
                 order: list[int]) -> None:
    """The hoisting pass's stream order: a permutation that keeps every dependency and the
    order of the compute and store engines (only loads move)."""
    if sorted(order) != list(range(len(instrs))):
        raise VerifyError(f"{program}: the stream order is not a permutation of the program")
    position = {j: k for k, j in enumerate(order)}
    for j, need in enumerate(deps):
        for i in need.values():
            if position[i] > position[j]:
                raise VerifyError(f"{program}: instruction {j} is placed before instruction "
                                  f"{i}, which it depends on")
    others = [j for j in order if instrs[j].engine != Engine.LOAD]
    if others != sorted(others):
        raise VerifyError(f"{program}: the stream order moves an instruction of the compute "
                          f"or store engine (only loads are hoisted)")


class _Pages:
    """Per page, the vector-clock stamp (the engine's own clock component) of the last
    write (``stamps[0]``) and the last read (``stamps[1]``) by each engine."""

    def __init__(self, base: int, size: int):
        self.base = base
        self.stamps = np.zeros((2, len(ENGINES), max(1, -(-size // PAGE))), np.int64)

    def span(self, lo: int, hi: int) -> slice | None:
        return page_span(self.base, self.stamps.shape[2], lo, hi)


def verify_schedule(program: str, code: list[Instruction], order: list[int],
                    scheduled: list[Instruction], acc: list[list[Access]],
                    hw: HardwareConfig, image: DramImage) -> None:
    """The scheduled program against the back end's ``code``: ``scheduled[k]`` is
    ``code[order[k]]`` with its tokens; ``acc[i]``: the accesses of ``code[i]``
    (``schedule.program_accesses``). See the module docstring for what is checked."""
    if sorted(order) != list(range(len(code))) or len(scheduled) != len(code) or any(
            (s.mnemonic, s.operands) != (code[i].mnemonic, code[i].operands)
            for s, i in zip(scheduled, order, strict=True)):
        raise VerifyError(f"{program}: scheduling changed the instructions, not only their "
                          f"order and tokens")
    if scheduled[-1].mnemonic != "HALT":
        raise VerifyError(f"{program}: the scheduled program does not end with HALT")
    rw_base = image.mmap.rw_base or 0
    pages = {"l2": _Pages(0, hw.l2_bytes), "dram": _Pages(rw_base, image.mmap.size - rw_base)}
    n = len(ENGINES)
    clock = {e: np.zeros(n, np.int64) for e in range(n)}
    queues: dict[tuple[int, int], list] = {(a, b): [] for a in range(n) for b in range(n)}
    owner: dict[tuple[int, int], int] = {}       # (engine, its clock) -> instruction index
    for index, instr in enumerate(scheduled):
        if instr.engine == Engine.CONTROL:
            continue
        e = int(instr.engine)
        for a in range(n):
            if instr.wait >> a & 1:
                if not queues[(a, e)]:
                    raise VerifyError(f"{_where(program, index, instr)} waits for a token "
                                      f"from the {Engine(a).name.lower()} engine that no "
                                      f"earlier instruction signals")
                clock[e] = np.maximum(clock[e], queues[(a, e)].pop(0))
        clock[e][e] += 1
        owner[(e, int(clock[e][e]))] = index
        _check_races(program, index, instr, scheduled, clock[e], pages, acc[order[index]],
                     owner)
        for b in range(n):
            if instr.signal >> b & 1:
                queues[(e, b)].append(clock[e].copy())
    left = {k: len(v) for k, v in queues.items() if v}
    if left:
        (a, b), count = next(iter(left.items()))
        raise VerifyError(f"{program}: {count} token(s) from the {Engine(a).name.lower()} "
                          f"engine to the {Engine(b).name.lower()} engine are never consumed")


def _check_races(program, index, instr, scheduled, clock, pages, acc, owner) -> None:
    e = int(instr.engine)
    for a in acc:
        p = pages[a.space]
        span = p.span(a.addr, a.end)
        if span is None:
            continue
        # The latest write and read stamp of each engine on these pages against what this
        # instruction knows of that engine (its own stamps are never ahead of its clock);
        # a read conflicts with writes only.
        ahead = p.stamps[:, :, span].max(axis=2) > clock
        if not a.write:
            ahead[1] = False
        if ahead.any():
            kind, other = (int(x[0]) for x in np.nonzero(ahead))
            j = owner[(other, int(p.stamps[kind, other, span].max()))]
            raise VerifyError(
                f"{_where(program, index, instr)} "
                f"{'writes' if a.write else 'reads'} {a.space.upper()} "
                f"[0x{a.addr:x}, 0x{a.end:x}) that instruction {j} "
                f"({format_instruction(scheduled[j])}) {('writes', 'reads')[kind]}, with no "
                f"chain of dependency tokens ordering them (a race)")
    for a in acc:
        p = pages[a.space]
        span = p.span(a.addr, a.end)
        if span is not None:
            p.stamps[0 if a.write else 1, e, span] = clock[e]
