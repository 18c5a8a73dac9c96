"""Benchmark: the performance model of a compressed-KV prefetch against the RTL, fitted on
one set of programs and tested on others.

A ``KV_PREFETCH`` in ``CHUNKED`` format (``arch.isa``) is timed by
``arch.occupancy.chunked_prefetch_occupancy`` from the structure of the load engine's
decompressor (``rtl/dma.py``, ``rtl/kv_chunks.py``) and two constants,
``Calibration.chunk_start`` and ``chunk_block``. Programs of one random ``CHUNKED``
prefetch each (``rtl.random_programs.chunked_prefetch_programs``: head sizes 8 to 128,
1 to 6 blocks, widths from random tolerances, unaligned pools and L2 rows) run on the
RTL in one job per configuration.

* The fitting set (seed 7, edge-8x8 with a 64 KiB L2): the RTL's program cycles less the
  model's with both constants zero, fitted by least squares to ``start + block x
  blocks``; printed beside the constants the model uses.
* The test set (seed 2026, or ``--seed``): edge-8x8, edge-4x4 (another DRAM latency), edge-4x4 at 4
  bytes per cycle (the codes' reads, not the expansion, bound a block) and edge-4x4 at
  64 bytes per cycle with 8-token blocks (64-byte lines): every program's error of the
  whole-program model (``sweeps.perf.time_program``) against the RTL's cycles, then the
  mean and largest absolute error per configuration.

::

    python -m benchmarks.kv_chunk_timing [--programs N] [--seed S]
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from accel.args import ArgumentParser, run_command


def configurations() -> dict:
    from arch.hardware import load_hardware

    e4, e8 = load_hardware("edge-4x4"), load_hardware("edge-8x8")
    return {"edge-8x8 (64 KiB L2)": e8.replace(l2_bytes=64 * 1024),
            "edge-4x4": e4,
            "edge-4x4, 4 B/cycle": e4.replace(dram_bytes_per_cycle=4),
            "edge-4x4, 64 B/cycle, 8-token blocks": e4.replace(
                dram_bytes_per_cycle=64, l2_port_bytes=16, kv_block_tokens=8)}


def measure(hw, seed: int, n: int, cal) -> list[dict]:
    """Each program's RTL cycles and the model's, with calibration ``cal``."""
    from rtl.common import RtlParams
    from rtl.random_programs import DRAM_BYTES, chunked_prefetch_programs
    from rtl.sim import build_model, run_job
    from sweeps.perf import time_program

    dram, programs = chunked_prefetch_programs(np.random.default_rng(seed), hw, n)

    def read_i32(addr):
        return int(dram[addr:addr + 4].view("<i4")[0])

    result = run_job(build_model(RtlParams(hw, DRAM_BYTES)), dram,
                     [(name, at) for name, at, _ in programs], {}, max_cycles=2_000_000)
    rows = []
    for (name, _, program), run in zip(programs, result.programs, strict=True):
        if not run["done"] or run["error"]:
            raise RuntimeError(f"program {name} did not finish on the RTL: {run}")
        f = program[0].fields()
        rows.append({"program": name, "head_dim": f["col_bytes"],
                     "blocks": f["n_tokens"] // hw.kv_block_tokens,
                     "rtl_cycles": run["counters"]["cycles"],
                     "model_cycles": time_program(program, hw, read_i32, cal).cycles})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    from arch.occupancy import CALIBRATION

    parser = ArgumentParser(prog="python -m benchmarks.kv_chunk_timing")
    parser.add_argument("--programs", type=int, default=24,
                        help="programs per configuration (default 24)")
    parser.add_argument("--seed", type=int, default=2026,
                        help="the test set's draw (default 2026; the fitting set's is 7)")
    args = parser.parse_args(argv)
    if args.seed == 7:
        parser.error("--seed 7 is the fitting set's draw: the test set must be another")
    if args.programs < 2:
        parser.error(f"--programs takes at least 2 (a fit of two constants), not "
                     f"{args.programs}")
    configs = configurations()
    fit_name = next(iter(configs))
    zero = dataclasses.replace(CALIBRATION, chunk_start=0, chunk_block=0)
    fitting = measure(configs[fit_name], 7, args.programs, zero)
    a = np.array([[1.0, r["blocks"]] for r in fitting])
    b = np.array([r["rtl_cycles"] - r["model_cycles"] for r in fitting], float)
    if np.linalg.matrix_rank(a) < 2:
        raise SystemExit(f"the fitting set's {len(fitting)} programs all read the same number "
                         f"of blocks: no fit of two constants (give more --programs)")
    start, block = np.linalg.lstsq(a, b, rcond=None)[0]
    out = [{"bench": "kv_chunk_timing", "set": "fitting", "hw": fit_name,
            "programs": len(fitting), "fitted_chunk_start": round(float(start), 2),
            "fitted_chunk_block": round(float(block), 2),
            "calibration": {"chunk_start": CALIBRATION.chunk_start,
                            "chunk_block": CALIBRATION.chunk_block}}]
    print(json.dumps(out[0]), flush=True)
    print(f"{'configuration':38s} {'head':>4s} {'blocks':>6s} {'RTL':>7s} {'model':>7s} "
          f"{'error':>7s}")
    for name, hw in configs.items():
        rows = measure(hw, args.seed, args.programs, CALIBRATION)
        errors = []
        for r in rows:
            error = (r["model_cycles"] - r["rtl_cycles"]) / r["rtl_cycles"]
            errors.append(error)
            print(f"{name:38s} {r['head_dim']:4d} {r['blocks']:6d} {r['rtl_cycles']:7,d} "
                  f"{r['model_cycles']:7,d} {100 * error:+6.2f}%")
        summary = {"bench": "kv_chunk_timing", "set": "test", "hw": name,
                   "programs": len(rows),
                   "mean_abs_error_pct": round(100 * float(np.mean(np.abs(errors))), 3),
                   "max_abs_error_pct": round(100 * float(np.max(np.abs(errors))), 3)}
        print(json.dumps(summary), flush=True)
        out.append(summary)
    return out


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.kv_chunk_timing")
