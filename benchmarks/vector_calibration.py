"""The vector unit alone against its occupancy model, on random vector instructions.

``arch.vector_timing.vector_occupancy`` steps the unit cycle by cycle (its issuer, three row
readers, the datapath's groups and two row writers over the L2's banks) with no fitted
constant: its latencies are the row copiers', read off traces of the matmul unit. This
benchmark times random instructions of all seven kinds (``rtl.random_programs.
random_vector``: rows of 1 to 200 elements, short ones often, every operand at a random
alignment) on the unit in Amaranth's simulator, from ``start`` to ``done``, and prints
the model's error per instruction and by kind::

    python -m benchmarks.vector_calibration                     # 30 on each of three
    python -m benchmarks.vector_calibration --hw edge-4x4 --count 60 --seed 7
"""

from __future__ import annotations

import json
import statistics

from accel.args import ArgumentParser, run_command
from benchmarks.matmul_calibration import check_args, unit_cycles


def run(hw_name: str, count: int, seed: int, l2_bytes: int = 1 << 16) -> list[dict]:
    import numpy as np

    from arch.hardware import load_hardware
    from arch.occupancy import CALIBRATION, occupancy
    from rtl.common import RtlParams
    from rtl.random_programs import random_vector
    from rtl.vector_unit import N_READ, N_WRITE, VectorUnit

    hw = load_hardware(hw_name).replace(l2_bytes=l2_bytes)
    rng = np.random.default_rng(seed)
    mems, instrs = [], []
    for _ in range(count):
        mems.append(rng.integers(0, 256, l2_bytes, dtype=np.uint8))
        instrs.append(random_vector(rng, l2_bytes))
    rows = []
    params = RtlParams(hw, dram_bytes=4096)
    cycles = unit_cycles(params, VectorUnit(params=params), N_READ + N_WRITE, instrs, mems)
    for instr, rtl in zip(instrs, cycles, strict=True):
        model = occupancy(instr, hw).cycles - CALIBRATION.engine_overhead
        row = {"hw": hw_name, "op": instr.mnemonic, "fields": instr.fields(),
               "rtl_cycles": rtl, "model_cycles": model,
               "error_pct": round(100 * (model - rtl) / rtl, 3)}
        print(json.dumps({"benchmark": "vector_calibration", **row}), flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(prog="python -m benchmarks.vector_calibration",
                            description=__doc__.split("\n\n")[0].rstrip(":"))
    parser.add_argument("--hw", nargs="+", default=["edge-8x8", "edge-4x4", "edge-16x16"])
    parser.add_argument("--count", type=int, default=30, help="instructions per hw")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    check_args(parser, args)
    rows = []
    for i, hw in enumerate(args.hw):
        rows += run(hw, args.count, args.seed + i)
    print(f"{'hw':<12}{'op':<10}{'instructions':>13}{'max |error|':>13}{'mean |error|':>14}")
    for hw in args.hw:
        for op in sorted({r["op"] for r in rows if r["hw"] == hw}):
            errs = [abs(r["error_pct"]) for r in rows if r["hw"] == hw and r["op"] == op]
            print(f"{hw:<12}{op:<10}{len(errs):>13}{max(errs):>12.2f}%"
                  f"{statistics.mean(errs):>13.3f}%")
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.vector_calibration")
