"""Benchmark: DMA bandwidth of the RTL and its Verilator build time.

Runs, on the edge-8x8 model (64 KiB L2 variant, 1 MiB simulated DRAM), a contiguous
48 KiB DMA_LOAD and a strided one (512 rows of 64 bytes) and prints the cycles against
the bandwidth bound, the DRAM model's busy cycles, the wall time of the whole job
(start-up and DRAM loading included) and the model's build time. ``python -m benchmarks.rtl_dma``
"""

from __future__ import annotations

import json

import numpy as np

from accel.args import ArgumentParser, run_command


def main(argv=None) -> list[dict]:
    ArgumentParser(prog="python -m benchmarks.rtl_dma",
                   description=__doc__.split("\n\n")[0]).parse_args(argv)
    from arch.hardware import load_hardware
    from arch.isa import INSTR_BYTES, make
    from compiler.asm import encode_program
    from compiler.image import DramImage, MemoryMap
    from rtl.common import RtlParams
    from rtl.sim import build_model, run_job

    hw = load_hardware("edge-8x8").replace(l2_bytes=64 * 1024)
    model = build_model(RtlParams(hw, 1 << 20))
    mmap = MemoryMap()
    mmap.add("src", 65536)
    mmap.add("program", 4 * INSTR_BYTES)
    image = DramImage(mmap)
    cases = {
        "contiguous_48KiB": make("DMA_LOAD", dram_addr=0, l2_addr=0, rows=1, row_bytes=49152,
                                 dram_stride=0, l2_stride=0),
        "strided_512x64B": make("DMA_LOAD", dram_addr=0, l2_addr=0, rows=512, row_bytes=64,
                                dram_stride=128, l2_stride=64),
    }
    results = []
    for name, instr in cases.items():
        image.write("program", np.frombuffer(encode_program([instr, make("HALT")]), np.uint8))
        run = run_job(model, image.data, [("p", mmap["program"].offset)], {},
                      max_cycles=1_000_000)
        p = run.programs[0]
        cycles = p["counters"]["cycles"]
        bound = instr.rows * instr.row_bytes / hw.dram_bytes_per_cycle + hw.dram_latency_cycles
        result = {"benchmark": "rtl_dma", "case": name, "cycles": cycles,
                  "bandwidth_bound_cycles": round(bound), "efficiency": round(bound / cycles, 3),
                  "dram_busy_cycles": p["dram_busy_cycles"],
                  "job_wall_seconds": round(run.wall_seconds, 2),
                  "build_seconds": round(model.build_seconds, 1)}
        print(json.dumps(result))
        results.append(result)
    return results


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.rtl_dma")
