"""Scheduling passes: dependency analysis, prefetch hoisting, dependency-token insertion.

Contract
--------
Three passes of the pipeline (``compiler.pipeline``; ``pipeline.schedule`` runs them
with their verifiers) take the natural-order instructions of one program and return
them reordered and with wait/signal masks set:

1. ``dependencies`` finds, for every instruction and every *other* engine, the latest
   earlier instruction of that engine it conflicts with (read-after-write,
   write-after-read or write-after-write on L2 or on writable DRAM), from the addressing
   of ``semantics.accesses`` at 64-byte page granularity (conservative), plus the
   back end's extra ordering edges.
2. With prefetch on, ``hoist`` moves every load-engine instruction up to just after the
   last instruction it depends on, so it is dispatched (and runs) as early as the L2
   ring allows, but at most ``LOOKAHEAD`` loads ahead of the instructions that need
   them, so that in-order dispatch never holds an instruction behind loads it does not
   need. With prefetch off, every load instead waits for the compute
   instruction before it: the serialised baseline with no overlap of loads and compute.
3. ``insert_tokens`` turns each needed cross-engine ordering into one signal on the
   producer and one wait on the consumer, skipping orderings already implied by an
   earlier token on the same queue. Tokens on a queue match first-in first-out, so
   producers and consumers stay in the same order.

The result is deadlock-free for any instruction-queue depth: the stream order is a
topological order of the dependencies and each engine executes in stream order.

Tested by tests/compiler/test_pipeline.py (each scheduling pass on its own).
"""

from __future__ import annotations

import numpy as np

from arch.hardware import HardwareConfig
from arch.isa import ENGINES, Engine, Instruction
from arch.uarch import QUEUE_DEPTH
from compiler.backend import Code
from compiler.image import DramImage
from compiler.semantics import Access, accesses, flat

PAGE = 64
# Loads hoisted above the first instruction that needs an earlier load: as many as the
# load engine's queue holds, plus the one it executes. (QUEUE_DEPTH + DEFERRED counted
# the instructions a DMA engine may hold past their last row command, but a long load
# holds the engine until the copier has taken all but CMD_DEPTH of its rows, so the
# loads beyond the queue blocked the in-order dispatch of the instructions after them:
# tiny's decode ran 1-10% slower at 128 KiB of L2 than at 64 KiB.)
LOOKAHEAD = QUEUE_DEPTH + 1


def program_accesses(instrs: list[Instruction], hw: HardwareConfig, image: DramImage
                     ) -> list[list[Access]]:
    """Every instruction's memory accesses (``semantics.accesses``, flattened), with the
    DRAM-held indices (block table, prompt tokens) read from the image as compiled."""
    return [flat(accesses(instr, hw, image.read_i32)) for instr in instrs]


def page_span(base: int, n_pages: int, lo: int, hi: int) -> slice | None:
    """The pages (of ``PAGE`` bytes from ``base``, ``n_pages`` of them) that bytes
    ``[lo, hi)`` touch, or ``None`` if none (below ``base``, empty, or beyond the end)."""
    lo = max(lo, base)
    if hi <= lo or (lo - base) // PAGE >= n_pages:
        return None
    return slice((lo - base) // PAGE, min((hi - 1 - base) // PAGE + 1, n_pages))


class _Pages:
    """Last writer and last reader (program index) of each page, per engine."""

    def __init__(self, base: int, size: int):
        self.base = base
        n = max(1, (size + PAGE - 1) // PAGE)
        self.write = np.full((len(ENGINES), n), -1, np.int64)
        self.read = np.full((len(ENGINES), n), -1, np.int64)

    def span(self, lo: int, hi: int) -> slice | None:
        return page_span(self.base, self.write.shape[1], lo, hi)


def dependencies(code: Code, hw: HardwareConfig, image: DramImage, prefetch: bool,
                 acc: list[list[Access]] | None = None) -> list[dict[int, int]]:
    """For each instruction: {engine: index of the latest instruction it must follow}.
    ``acc``: each instruction's accesses (``program_accesses``), if already computed."""
    if acc is None:
        acc = program_accesses(code.instrs, hw, image)
    rw_base = image.mmap.rw_base or 0
    spaces = {"l2": _Pages(0, hw.l2_bytes), "dram": _Pages(rw_base, image.mmap.size - rw_base)}
    deps: list[dict[int, int]] = []
    last_compute = -1
    for j, instr in enumerate(code.instrs):
        need: dict[int, int] = {}
        e = int(instr.engine) if instr.engine != Engine.CONTROL else None
        if e is None:
            deps.append(need)
            continue
        for a in acc[j]:
            pages = spaces[a.space]
            span = pages.span(a.addr, a.end)
            if span is None:
                continue
            for other in range(len(ENGINES)):
                if other == e:
                    continue
                latest = int(pages.write[other, span].max())
                if a.write:
                    latest = max(latest, int(pages.read[other, span].max()))
                if latest >= 0:
                    need[other] = max(need.get(other, -1), latest)
        for i in code.after.get(j, []):
            other = int(code.instrs[i].engine)
            if other != e:
                need[other] = max(need.get(other, -1), i)
        if not prefetch and instr.engine == Engine.LOAD and last_compute >= 0:
            need[int(Engine.COMPUTE)] = max(need.get(int(Engine.COMPUTE), -1), last_compute)
        for a in acc[j]:
            pages = spaces[a.space]
            span = pages.span(a.addr, a.end)
            if span is not None:
                (pages.write if a.write else pages.read)[e, span] = j
        if instr.engine == Engine.COMPUTE:
            last_compute = j
        deps.append(need)
    return deps


def hoist(instrs: list[Instruction], deps: list[dict[int, int]]) -> list[int]:
    """Stream order with every load placed right after the last instruction it needs, but
    no more than ``LOOKAHEAD`` loads above the first instruction that needs an earlier
    load: instructions are dispatched in stream order into queues ``QUEUE_DEPTH`` deep,
    so an instruction with more loads above it than the load engine can hold (queued, or
    in flight after their last row command) would wait for loads it does not need."""
    load = int(Engine.LOAD)
    loads = [j for j, instr in enumerate(instrs) if instr.engine == Engine.LOAD]
    # needed_by[n]: the first other instruction that must follow the n-th load
    needed_by, n = [len(instrs)] * len(loads), 0
    rank = {j: k for k, j in enumerate(loads)}
    for j, instr in enumerate(instrs):
        if instr.engine == Engine.LOAD or load not in deps[j]:
            continue
        while n < len(loads) and loads[n] <= deps[j][load]:
            needed_by[n] = j
            n += 1
    anchor: dict[int, int] = {}
    prev_load_anchor = -1
    keys = []
    for j, instr in enumerate(instrs):
        if instr.engine == Engine.CONTROL:      # KV_LIVE drains the engines: no load above it
            prev_load_anchor = max(prev_load_anchor, j)
        if instr.engine == Engine.LOAD:
            a = prev_load_anchor
            for i in deps[j].values():
                a = max(a, anchor.get(i, i))
            k = rank[j] - LOOKAHEAD
            if k >= 0 and needed_by[k] - 1 < j:
                a = max(a, needed_by[k] - 1)
            anchor[j] = prev_load_anchor = a
            keys.append((a, 1, j))
        else:
            keys.append((j, 0, j))
    return [k[2] for k in sorted(keys)]


def insert_tokens(instrs: list[Instruction], deps: list[dict[int, int]], order: list[int]
                  ) -> list[Instruction]:
    """Reorder ``instrs`` by ``order`` and set the wait/signal masks."""
    seq = {}                                    # program index -> sequence number in its engine
    counts = dict.fromkeys(Engine, 0)
    for j in order:
        e = int(instrs[j].engine)
        seq[j] = counts[e]
        counts[e] += 1
    synced = {(a, b): -1 for a in range(len(ENGINES)) for b in range(len(ENGINES))}
    wait = dict.fromkeys(range(len(instrs)), 0)
    signal = dict.fromkeys(range(len(instrs)), 0)
    for j in order:
        e = int(instrs[j].engine)
        if e == int(Engine.CONTROL):
            continue
        for a, i in sorted(deps[j].items()):
            if seq[i] > synced[(a, e)]:
                synced[(a, e)] = seq[i]
                signal[i] |= 1 << e
                wait[j] |= 1 << a
    return [instrs[j].replace(wait=wait[j], signal=signal[j]) for j in order]
