"""Why the store engine's KV appends take twice the model's cycles beside a held load.

A compiled tiny decode step on edge-4x4 (prefetch on) runs in Amaranth's simulator of
the whole accelerator and its DRAM model for its first ``--cycles`` cycles, recording
each cycle the DRAM port's requests and responses and the store engine's block-table
reads (``KV_APPEND`` reads its block's entry through the engine's ``aux`` port). For
each such read it prints the cycles from its request to its data, against
``dram_latency_cycles``; and per window, how many responses the DRAM offered and how
many were taken. The DRAM returns read data in request order through one queue
(``rtl/dram.py``, ``rtl/arbiter.py``); when the load engine's copier, held back by the
compute engine's L2 traffic, takes its lines slower than the DRAM delivers them, that
queue fills with them, and a store's table read waits behind them: the model
(``sweeps.perf``) charges it the DRAM's latency alone::

    python -m benchmarks.dram_queue                       # edge-4x4, KV 7, 3,600 cycles
    python -m benchmarks.dram_queue --hw edge-8x8 --decode-at 100 --cycles 6000

Takes about 15 s per 3,600 cycles (Amaranth's Python simulator).
"""

from __future__ import annotations

import json

from accel.args import ArgumentParser, run_command


def simulate(hw, at: int, cycles: int) -> dict:
    """The step's first ``cycles`` cycles: per cycle ``(DRAM responses offered, taken,
    store table read asked, answered)``, and the DRAM model's queue depth."""
    from accel.runtime import image_with_programs
    from arch.isa import Engine
    from arch.uarch import dram_queue_lines
    from benchmarks.l2_conflicts import pysim
    from compiler.driver import compile_step
    from models.evaluate import build_int_model
    from models.zoo import load_model

    im = build_int_model(load_model("tiny"))
    build = compile_step(im.cfg, im.qm, hw, at, 1, prefetch=True)
    instrs = [i for i in build.programs[0].instrs if i.engine != Engine.CONTROL]
    data, named = image_with_programs(build.image.data, {"the step": instrs})

    def sample(ctx, accel, probed):
        s, rsp = probed["store"], accel.dram.rsp
        return (ctx.get(rsp.valid), ctx.get(rsp.valid & rsp.ready),
                ctx.get(s.aux.req.valid & s.aux.req.ready),
                ctx.get(s.aux.rsp.valid & s.aux.rsp.ready))

    run, = pysim(hw, data, [named[0][1]], sample, ("store",), cycles)
    return {"trace": run["trace"], "dram_queue_depth": dram_queue_lines(hw.dram_latency_cycles)}


def main(argv: list[str] | None = None) -> list[dict]:
    from arch.hardware import HardwareError, load_hardware

    parser = ArgumentParser(prog="python -m benchmarks.dram_queue",
                            description=__doc__.split("\n\n")[0].rstrip(":"))
    parser.add_argument("--hw", default="edge-4x4")
    parser.add_argument("--decode-at", type=int, default=7, help="the step's KV length")
    parser.add_argument("--cycles", type=int, default=3600, help="cycles to simulate")
    parser.add_argument("--window", type=int, default=100, help="cycles per window")
    args = parser.parse_args(argv)
    try:
        hw = load_hardware(args.hw)
    except HardwareError as e:
        parser.error(str(e))
    if not 1 <= args.decode_at < 255:
        parser.error(f"--decode-at {args.decode_at}: tiny decodes at 1 to 254")
    if args.cycles < 1 or args.window < 1:
        parser.error("--cycles and --window must be at least 1")
    sim = simulate(hw, args.decode_at, args.cycles)
    trace = sim["trace"]
    requests = [c for c, x in enumerate(trace) if x[2]]
    answers = [c for c, x in enumerate(trace) if x[3]]
    rows = []
    for req, ans in zip(requests, answers, strict=False):
        rows.append({"benchmark": "dram_queue", "hw": hw.name, "kv_length": args.decode_at,
                     "store_table_read_at": req, "cycles_to_data": ans - req,
                     "dram_latency_cycles": hw.dram_latency_cycles,
                     "dram_queue_depth": sim["dram_queue_depth"]})
    for lo in range(0, len(trace), args.window):
        part = trace[lo:lo + args.window]
        rows.append({"benchmark": "dram_queue", "hw": hw.name, "window": [lo, lo + len(part)],
                     "responses_offered": sum(x[0] for x in part),
                     "responses_taken": sum(x[1] for x in part)})
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.dram_queue")
