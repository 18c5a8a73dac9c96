"""The compiler's passes after the frontend, as an explicit list, with the verifier between.

Contract
--------
A ``ProgramIR`` is one program (the prefill, or one decode step) on its way from the
frontend's graphs to bytes; each pass fills in the next stage and returns it:

============== ==================================== ===================================
pass           ``ProgramIR`` field it produces      verified by
============== ==================================== ===================================
(frontend)     ``graphs`` (``frontend.lower_step``)  ``verify.verify_graphs``
generate       ``code``: natural-order instructions ``verify.verify_code``
               and extra ordering edges
               (``backend.generate``), and each
               one's ``accesses``
dependencies   ``deps``: per instruction, the latest ``verify.verify_deps``: each points
               instruction of each other engine it   back to another engine
               must follow (``schedule.dependencies``)
hoist          ``order``: the stream order (loads   ``verify.verify_order``: a permutation
               hoisted with prefetch on,            that keeps every dependency and the
               ``schedule.hoist``)                  order of the non-load engines
insert_tokens  ``instrs``: the program with wait/   ``verify.verify_schedule``: tokens
               signal masks (``schedule.            matched, none left over, no race
               insert_tokens``)
encode         ``binary``: the program's bytes      one ``INSTR_BYTES`` word per
               (``asm.encode_program``)             instruction
============== ==================================== ===================================

``run_passes(program, context)`` runs ``PASSES`` in order and the verifier after each;
a ``VerifyError`` names the pass that broke an invariant, the program and the
instruction. Each pass is a plain function ``(ProgramIR, PassContext) -> ProgramIR``
with its own unit test (``tests/compiler/test_pipeline.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from arch.hardware import HardwareConfig
from arch.isa import INSTR_BYTES, Instruction
from compiler.asm import encode_program
from compiler.backend import BuildContext, Code, generate
from compiler.image import DramImage
from compiler.ir import Graph
from compiler.schedule import dependencies, hoist, insert_tokens, program_accesses
from compiler.semantics import Access
from compiler.verify import (
    VerifyError,
    verify_code,
    verify_deps,
    verify_graphs,
    verify_order,
    verify_schedule,
)


@dataclass(frozen=True)
class ProgramIR:
    name: str
    kind: str                                   # "prefill" or "decode"
    graphs: list[Graph]
    code: Code | None = None
    accesses: list[list[Access]] | None = None     # of each instruction of ``code``
    deps: list[dict[int, int]] | None = None
    order: list[int] | None = None
    instrs: list[Instruction] | None = None
    binary: bytes | None = None


@dataclass(frozen=True)
class PassContext:
    hw: HardwareConfig
    prefetch: bool
    image: DramImage                     # the DRAM image as compiled (memory map, block
                                         # table, prompt tokens)
    build: BuildContext | None = None    # the model and memory map (the generate pass)


def generate_pass(p: ProgramIR, c: PassContext) -> ProgramIR:
    code = generate(p.graphs, c.build, p.name)
    return replace(p, code=code, accesses=program_accesses(code.instrs, c.hw, c.image))


def dependencies_pass(p: ProgramIR, c: PassContext) -> ProgramIR:
    return replace(p, deps=dependencies(p.code, c.hw, c.image, c.prefetch, p.accesses))


def hoist_pass(p: ProgramIR, c: PassContext) -> ProgramIR:
    order = hoist(p.code.instrs, p.deps) if c.prefetch else list(range(len(p.deps)))
    return replace(p, order=order)


def insert_tokens_pass(p: ProgramIR, c: PassContext) -> ProgramIR:
    return replace(p, instrs=insert_tokens(p.code.instrs, p.deps, p.order))


def encode_pass(p: ProgramIR, c: PassContext) -> ProgramIR:
    return replace(p, binary=encode_program(p.instrs))


def _verify_code(p: ProgramIR, c: PassContext) -> None:
    verify_code(p.name, p.code.instrs, p.code.after, p.accesses, c.hw, c.image)


def _verify_deps(p: ProgramIR, c: PassContext) -> None:
    verify_deps(p.name, p.code.instrs, p.deps)


def _verify_order(p: ProgramIR, c: PassContext) -> None:
    verify_order(p.name, p.code.instrs, p.deps, p.order)


def _verify_schedule(p: ProgramIR, c: PassContext) -> None:
    verify_schedule(p.name, p.code.instrs, p.order, p.instrs, p.accesses, c.hw, c.image)


def _verify_binary(p: ProgramIR, c: PassContext) -> None:
    # One INSTR_BYTES word per instruction (the encoding itself is tested by decoding it
    # back, tests/compiler/test_asm.py, and the runtime fetches the programs from DRAM).
    if len(p.binary) != INSTR_BYTES * len(p.instrs):
        raise VerifyError(f"{p.name}: {len(p.binary)} bytes encode {len(p.instrs)} "
                          f"instructions of {INSTR_BYTES} bytes")


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[ProgramIR, PassContext], ProgramIR]
    verify: Callable[[ProgramIR, PassContext], None]


GENERATE = Pass("generate", generate_pass, _verify_code)
SCHEDULE = (Pass("dependencies", dependencies_pass, _verify_deps),
            Pass("hoist", hoist_pass, _verify_order),
            Pass("insert_tokens", insert_tokens_pass, _verify_schedule))
# Encoding runs only for a build with data (a timing-only build has no image to hold it).
ENCODE = Pass("encode", encode_pass, _verify_binary)
PASSES: tuple[Pass, ...] = (GENERATE, *SCHEDULE, ENCODE)


def run_passes(p: ProgramIR, c: PassContext, passes: tuple[Pass, ...] = PASSES) -> ProgramIR:
    """``passes`` in order, the verifier after each (and on the graphs before the first).

    Raises ``VerifyError`` naming the pass whose output breaks an invariant."""
    verify_graphs(p.name, p.graphs)
    for step in passes:
        p = step.run(p, c)
        try:
            step.verify(p, c)
        except VerifyError as e:
            raise VerifyError(f"after pass {step.name}: {e}") from None
    return p


def schedule(code: Code, hw: HardwareConfig, image: DramImage, prefetch: bool,
             name: str = "program") -> list[Instruction]:
    """The scheduling passes (and their verifiers) on hand-written natural-order ``code``
    (unit tests, benchmarks, random programs): the instructions with their tokens."""
    p = ProgramIR(name, "program", [], code=code,
                  accesses=program_accesses(code.instrs, hw, image))
    return run_passes(p, PassContext(hw, prefetch, image), SCHEDULE).instrs
