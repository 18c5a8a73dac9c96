"""Why the load engine loses L2 cycles beside the compute engine, cycle by cycle.

A compiled tiny decode step's weight loads run beside its MATMULs (dependency tokens
stripped, as ``benchmarks.rtl_overlap`` runs them) in Amaranth's simulator of the whole
accelerator and its DRAM model, which records every L2 port's request each cycle. For
each cycle in which the load engine's copier asked for a bank and was refused, it finds
the higher-priority port that took that bank, and whether that port had idled the cycle
before while the copier was granted: the copier caught up with a stream that idles a
cycle between lines and now wants the bank of its next line (what
``sweeps.perf._trapped`` models). It also prints what uniformly random banks would give
(each higher-priority grant taking the copier's bank with chance ``1 / banks``)::

    python -m benchmarks.l2_conflicts                      # edge-8x8, 64 KiB, KV 100
    python -m benchmarks.l2_conflicts --l2-banks 32        # four times the line banks

Takes a few minutes (Amaranth's Python simulator, about 200 cycles a second).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import sys
import time

import numpy as np

from accel.args import ArgumentParser, run_command

#: Python frames the simulator may nest while compiling the design (see ``pysim``).
PYSIM_RECURSION_LIMIT = 20_000


def _programs(hw, at: int):
    from arch.isa import Engine
    from compiler.driver import compile_step
    from models.evaluate import build_int_model
    from models.zoo import load_model

    im = build_int_model(load_model("tiny"))
    build = compile_step(im.cfg, im.qm, hw, at, 1, prefetch=True)
    free = [i.replace(wait=0, signal=0) for i in build.programs[0].instrs
            if i.engine != Engine.CONTROL]
    weights = ("DMA_LOAD", "DMA_GATHER")
    return build, {"weight loads alone": [i for i in free if i.mnemonic in weights],
                   "weight loads + MATMULs": [i for i in free
                                              if i.mnemonic in (*weights, "MATMUL")]}


def pysim(hw, data, entries: list[int], sample, probe: tuple[str, ...] = (),
          cycles: int | None = None) -> list[dict]:
    """Run the programs at ``entries`` of the DRAM image ``data`` one after another in
    Amaranth's simulator of the whole accelerator and its DRAM model; each cycle of each
    until it is done (or for at most ``cycles``), ``sample(ctx, accel, probed)`` is
    recorded, ``probed`` being the accelerator's submodules named in ``probe``. Returns
    per program its cycles and load busy counters and its ``trace`` of samples."""
    from amaranth import Module
    from amaranth.lib import wiring
    from amaranth.sim import Simulator

    from rtl.common import rtl_params
    from rtl.dram import DramModel
    from rtl.top import Accelerator

    params = dataclasses.replace(rtl_params(hw, image_bytes=data.size), macros=False)
    probed = {}

    class Probed(Accelerator):
        def elaborate(self, platform):
            m = super().elaborate(platform)
            probed.update((name, getattr(m.submodules, name)) for name in probe)
            return m

    top = Module()
    top.submodules.accel = accel = Probed(params=params)
    top.submodules.dram = dram = DramModel(params=params)
    wiring.connect(top, accel.dram, dram.port)
    W = params.line_bytes
    padded = np.zeros(-(-data.size // W) * W, np.uint8)
    padded[:data.size] = data
    results = []

    async def bench(ctx):
        for i, word in enumerate(padded.reshape(-1, W)):
            if word.any():
                ctx.set(dram.storage.memory.data[i], int.from_bytes(word.tobytes(), "little"))
        for entry in entries:
            ctx.set(accel.pc, entry)
            ctx.set(accel.start, 1)
            await ctx.tick()
            ctx.set(accel.start, 0)
            trace = []
            while not ctx.get(accel.done) and (cycles is None or len(trace) < cycles):
                trace.append(sample(ctx, accel, probed))
                await ctx.tick()
            results.append({"cycles": ctx.get(accel.counter_cycles),
                            "load_busy": ctx.get(accel.counter_load_busy), "trace": trace})

    # Amaranth's Python simulator compiles each expression by recursion, a frame or more
    # per operand (a known pysim limitation, amaranth-lang/amaranth#359): edge-32x32's
    # sums over a 128-byte line nested past Python's default limit of 1,000 frames until
    # they became balanced trees (``rtl.common.tree_sum``); the limit stays raised for
    # any other deep expression
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, PYSIM_RECURSION_LIMIT))
    try:
        sim = Simulator(top)
        sim.add_clock(1e-9)
        sim.add_testbench(bench)
        sim.run()
    finally:
        sys.setrecursionlimit(limit)
    return results


def simulate(hw, at: int) -> list[dict]:
    """Each program's cycles, load busy and per-cycle L2 requests on Amaranth's
    simulator: ``trace[t][port] = (valid, granted, line address)``."""
    from accel.runtime import image_with_programs

    build, programs = _programs(hw, at)
    data, named = image_with_programs(build.image.data, programs)

    def sample(ctx, accel, probed):
        l2 = probed["l2"]
        return [(ctx.get(p.req.valid), ctx.get(p.req.valid & p.req.ready), ctx.get(p.req.p.addr))
                for p in (l2.port(i) for i in range(l2.n_ports))]

    runs = pysim(hw, data, [offset for _, offset in named], sample, ("l2",))
    return [{"program": name, **run} for name, run in zip(programs, runs, strict=True)]


def refusals(trace: list, banks: int) -> dict:
    """The load engine's refused cycles (its port is the last, lowest in priority), by
    what took the bank."""
    load = len(trace[0]) - 1
    by_port: collections.Counter = collections.Counter()
    caught_up = uniform = 0
    for t, row in enumerate(trace):
        valid, granted, addr = row[load]
        if valid:
            uniform += sum(g for _, g, _ in row[:load]) / banks
        if not valid or granted:
            continue
        taker = next((i for i, (_, g, a) in enumerate(row[:load])
                      if g and a % banks == addr % banks), None)
        by_port[taker] += 1
        if taker is not None and t and not trace[t - 1][taker][1] and trace[t - 1][load][1]:
            caught_up += 1
    refused = sum(by_port.values())
    return {"refused": refused, "by_port": {str(k): v for k, v in sorted(by_port.items(),
                                                                          key=str)},
            "behind_a_stream_that_idled": caught_up,
            "uniform_banks_expectation": round(uniform)}


def main(argv: list[str] | None = None) -> list[dict]:
    from arch.hardware import load_hardware

    parser = ArgumentParser(prog="python -m benchmarks.l2_conflicts",
                            description=__doc__.split("\n\n")[0].rstrip(":"))
    parser.add_argument("--hw", default="edge-8x8")
    parser.add_argument("--l2", type=int, default=65536, help="l2_bytes")
    parser.add_argument("--l2-banks", type=int, default=None, help="override l2_banks")
    parser.add_argument("--decode-at", type=int, default=100, help="the step's KV length")
    args = parser.parse_args(argv)
    if args.decode_at < 1:
        parser.error(f"--decode-at {args.decode_at}: the step's KV length must be positive")
    try:
        hw = load_hardware(args.hw).replace(l2_bytes=args.l2)
    except ValueError as e:                    # HardwareError names the field
        parser.error(f"--hw {args.hw} --l2 {args.l2}: {e}")
    if args.l2_banks is not None:
        try:
            hw = hw.replace(l2_banks=args.l2_banks)
        except ValueError as e:
            parser.error(f"--l2-banks {args.l2_banks}: {e}")
    from compiler.ir import CompileError

    t0 = time.perf_counter()
    try:
        runs = simulate(hw, args.decode_at)
    except CompileError as e:             # checked before the simulation starts
        parser.error(f"--decode-at {args.decode_at} on {hw.name} (l2_bytes {hw.l2_bytes}): {e}")
    rows = []
    for run in runs:
        row = {"benchmark": "l2_conflicts", "hw": hw.name, "l2_bytes": hw.l2_bytes,
               "line_banks": int(hw.l2_lines_per_cycle), "kv_length": args.decode_at,
               "program": run["program"], "cycles": run["cycles"],
               "load_busy": run["load_busy"],
               **refusals(run["trace"], int(hw.l2_lines_per_cycle))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"({time.perf_counter() - t0:.0f} s)")
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.l2_conflicts")
