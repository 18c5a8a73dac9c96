"""Benchmark: random legal programs with random tokens on the RTL against the ISA simulator.

Runs jobs of eight random programs each (every engine; the compiler scheduler's
dependency tokens plus twenty random extra orderings per program,
``tests/rtl/test_accelerator.py: random_tokens``) on the edge-8x8 Verilator model (64 KiB
L2, 1 MiB DRAM) and on the ISA simulator, and counts the programs that did not finish
(deadlock or error), those whose instruction count or MACs differ, and the jobs whose
whole DRAM or whole L2 differ at the end. All three counts must be 0. The suite runs
four jobs. ``python -m benchmarks.fuzz_programs [--jobs N] [--seed S]``
"""

from __future__ import annotations

import json
import time

import numpy as np

from accel.args import ArgumentParser, run_command


def main(argv=None) -> dict:
    from tqdm import tqdm

    from arch.hardware import load_hardware
    from rtl.common import RtlParams
    from rtl.random_programs import DRAM_BYTES, run_random_programs
    from rtl.sim import build_model

    parser = ArgumentParser(prog="python -m benchmarks.fuzz_programs")
    parser.add_argument("--jobs", type=int, default=250, help="jobs of eight programs")
    parser.add_argument("--seed", type=int, default=1000, help="the first job's seed")
    args = parser.parse_args(argv)

    hw = load_hardware("edge-8x8").replace(l2_bytes=64 * 1024)
    model = build_model(RtlParams(hw, DRAM_BYTES))
    programs = instructions = unfinished = counts_differ = memories_differ = 0
    t0 = time.perf_counter()
    for seed in tqdm(range(args.seed, args.seed + args.jobs), desc="jobs", unit="job"):
        result, isa, counted = run_random_programs(model, seed)
        for run, (program, counters) in zip(result.programs, counted, strict=False):
            programs += 1
            instructions += len(program)
            if not run["done"] or run["error"] or run["timed_out"]:
                unfinished += 1
            elif (run["counters"]["instructions"], run["counters"]["array_macs"]) != \
                    (counters["instructions"], counters["array_macs"]):
                counts_differ += 1
        unfinished += len(counted) - len(result.programs)
        dram = np.zeros(DRAM_BYTES, np.uint8)
        dram[:isa.dram.size] = isa.dram
        if not (np.array_equal(result.reads["dram"], dram) and np.array_equal(result.l2, isa.l2)):
            memories_differ += 1
    out = {"benchmark": "fuzz_programs", "jobs": args.jobs, "programs": programs,
           "instructions": instructions, "unfinished": unfinished,
           "counts_differ": counts_differ, "memories_differ": memories_differ,
           "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.fuzz_programs")
