"""Benchmark: compile one decode step of a 1B-class model without weights.

Target (issue 3): a decode step of Sheared-LLaMA-1.3B on edge-16x16 compiles in under
30 s on one core. Prints the wall time, the instruction count and the DRAM bytes.
``python -m benchmarks.compile_speed [--model NAME] [--hw NAME] [--at POS]``
"""

from __future__ import annotations

import json
import os
import time

from accel.args import ArgumentParser, run_command


def main(argv=None) -> dict:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})      # one core, as the target says
    from arch.hardware import load_hardware
    from compiler.driver import compile_step
    from models.config import preset
    from models.integer import quant_struct

    parser = ArgumentParser(prog="python -m benchmarks.compile_speed",
                            description=__doc__.split("\n\n")[0].rstrip(":"))
    parser.add_argument("--model", default="sheared-llama-1.3b")
    parser.add_argument("--hw", default="edge-16x16")
    parser.add_argument("--at", type=int, default=511, help="decode position (KV length)")
    args = parser.parse_args(argv)
    cfg, hw = preset(args.model), load_hardware(args.hw)
    t0 = time.perf_counter()
    build = compile_step(cfg, quant_struct(cfg), hw, args.at, 1)
    seconds = time.perf_counter() - t0
    program = build.programs[0]
    result = {"benchmark": "compile_speed", "model": cfg.name, "hardware": hw.name,
              "position": args.at, "seconds": round(seconds, 2),
              "instructions": len(program.instrs), **build.program_bytes(program),
              "target_seconds": 30, "meets_target": seconds < 30}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.compile_speed")
