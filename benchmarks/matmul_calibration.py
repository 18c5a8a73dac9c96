"""The matmul unit alone against its occupancy model, on MATMULs it was not fitted to.

``arch.matmul_timing.matmul_occupancy``'s latencies (``Calibration.mm_*``) were read off the
unit's events (tile announced, first row fed, result, writeback, done) for a fitting set
of six instructions on edge-8x8: GEMV ``1 x 64 x 8`` (with and without ``accumulate``),
``1 x 64 x 16``, ``1 x 512 x 8``, GEMM ``1 x 64 x 8`` and ``32 x 64 x 8``. This benchmark
times a test set of random instructions (both dataflows, both weight layouts, row counts
around the array height and the tile, random reductions, widths, alignments and strides,
``accumulate`` on and off) on the unit in Amaranth's simulator, from ``start`` to
``done``, and prints the model's error per instruction and by configuration and mode::

    python -m benchmarks.matmul_calibration                   # 24 on edge-8x8, 16 on edge-4x4
    python -m benchmarks.matmul_calibration --hw edge-4x4 --count 40 --seed 7
"""

from __future__ import annotations

import json
import statistics

from accel.args import ArgumentParser, run_command


def random_matmul(rng, hw, l2_bytes: int):
    """A MATMUL of random shape that fits ``l2_bytes``, and its mode and layout names."""
    from arch.isa import MatmulMode, WeightLayout, make

    R = hw.array_rows
    while True:
        mode = str(rng.choice(["GEMM", "GEMV"]))
        layout = str(rng.choice(["NK", "KN"]))
        if rng.random() < 0.6:
            m = int(rng.choice([1, 2, R - 1, R, R + 1, 2 * R + 3, 4 * R, 4 * R + 5, 9 * R]))
        else:
            m = int(rng.integers(1, 6 * R))
        k, n = int(rng.integers(1, 700)), int(rng.integers(1, 3 * hw.array_cols + 2))
        x_addr = int(rng.integers(0, 64))
        x_stride = k + int(rng.integers(0, 40))
        w_rows, w_cols = (n, k) if layout == "NK" else (k, n)
        w_addr = x_addr + m * x_stride + int(rng.integers(0, 64))
        w_stride = w_cols + int(rng.integers(0, 40))
        out_addr = w_addr + w_rows * w_stride + int(rng.integers(0, 64))
        out_stride = 4 * n + int(rng.integers(0, 40))
        if out_addr + m * out_stride < l2_bytes:
            instr = make("MATMUL", mode=int(MatmulMode[mode]), accumulate=int(rng.integers(0, 2)),
                         w_layout=int(WeightLayout[layout]), x_addr=x_addr, w_addr=w_addr,
                         w_format=0, e_addr=0,
                         out_addr=out_addr, m=m, k=k, n=n, x_stride=x_stride,
                         w_stride=w_stride, out_stride=out_stride)
            return instr, mode, layout


#: The most cycles an instruction may take on its unit here (the largest of these sets
#: take some thousands).
LIMIT = 200_000


def unit_cycles(params, unit, n_ports: int, instrs, mems) -> list[int]:
    """Cycles from ``start`` to ``done`` of each instruction on ``unit`` (a compute unit:
    ``port(i)``, ``word``, ``start``, ``done``) over its own L2 loaded with its memory,
    one after another on one simulation in Amaranth's simulator (``SystemExit`` past
    ``LIMIT``). Shared with ``benchmarks.vector_calibration``."""
    from amaranth import Module
    from amaranth.lib import wiring
    from amaranth.sim import Simulator

    from compiler.asm import encode
    from rtl.l2 import L2

    l2 = L2(params=params, n_ports=n_ports)
    top = Module()
    top.submodules.unit, top.submodules.l2 = unit, l2
    for i in range(n_ports):
        wiring.connect(top, unit.port(i), l2.port(i))
    W, nb = params.line_bytes, params.line_banks
    cycles = []

    async def testbench(ctx):
        for instr, mem in zip(instrs, mems, strict=True):
            for i in range(0, mem.size, W):
                line = int.from_bytes(mem[i:i + W].tobytes(), "little")
                ctx.set(l2.banks[(i // W) % nb].memory.data[(i // W) // nb], line)
            ctx.set(unit.word, int.from_bytes(encode(instr), "little"))
            ctx.set(unit.start, 1)
            await ctx.tick()
            ctx.set(unit.start, 0)
            n = 1
            while not ctx.get(unit.done):
                if n > LIMIT:
                    raise SystemExit(f"{instr.mnemonic} {instr.fields()}: no done within "
                                     f"{LIMIT:,} cycles")
                await ctx.tick()
                n += 1
            cycles.append(n)
            await ctx.tick()

    sim = Simulator(top)
    sim.add_clock(1e-9)
    sim.add_testbench(testbench)
    sim.run()
    return cycles


def run(hw_name: str, count: int, seed: int, l2_bytes: int = 1 << 16) -> list[dict]:
    import numpy as np

    from arch.hardware import load_hardware
    from arch.matmul_timing import matmul_occupancy
    from arch.timing import CALIBRATION
    from rtl.common import RtlParams
    from rtl.matmul_unit import MatmulUnit

    hw = load_hardware(hw_name).replace(l2_bytes=l2_bytes)
    params = RtlParams(hw, dram_bytes=4096)
    rng = np.random.default_rng(seed)
    drawn, mems = [], []
    for _ in range(count):
        drawn.append(random_matmul(rng, hw, l2_bytes))
        mems.append(rng.integers(0, 256, l2_bytes, dtype=np.uint8))
    cycles = unit_cycles(params, MatmulUnit(params=params), MatmulUnit.N_PORTS,
                         [instr for instr, _, _ in drawn], mems)
    rows = []
    for (instr, mode, layout), rtl in zip(drawn, cycles, strict=True):
        model = matmul_occupancy(instr, hw).cycles - CALIBRATION.engine_overhead
        f = instr.fields()
        row = {"hw": hw_name, "mode": mode, "layout": layout, "m": f["m"], "k": f["k"],
               "n": f["n"], "accumulate": f["accumulate"], "rtl_cycles": rtl,
               "model_cycles": model, "error_pct": round(100 * (model - rtl) / rtl, 3)}
        print(json.dumps({"benchmark": "matmul_calibration", **row}), flush=True)
        rows.append(row)
    return rows


def check_args(parser, args) -> None:
    """Refuse a count or seed out of range and an unknown hardware description, by name,
    before anything runs (``parser.error``: one line, exit status 2)."""
    from arch.hardware import load_hardware

    if args.count is not None and args.count < 1:
        parser.error(f"--count must be at least 1, not {args.count}")
    if args.seed < 0:
        parser.error(f"--seed must be at least 0, not {args.seed}")
    for name in args.hw:
        load_hardware(name)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(prog="python -m benchmarks.matmul_calibration",
                            description=__doc__.split("\n\n")[0].rstrip(":"))
    parser.add_argument("--hw", nargs="+", default=["edge-8x8", "edge-4x4"])
    parser.add_argument("--count", type=int, default=None,
                        help="instructions per hw (default: 24 on the first, 16 on the others)")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    check_args(parser, args)
    rows = []
    for i, hw in enumerate(args.hw):
        count = args.count or (24 if i == 0 else 16)
        rows += run(hw, count, args.seed + i)
    print(f"{'hw':<10}{'mode':<6}{'instructions':>13}{'max |error|':>13}{'mean |error|':>14}")
    for hw in args.hw:
        for mode in ("GEMM", "GEMV"):
            errs = [abs(r["error_pct"]) for r in rows if r["hw"] == hw and r["mode"] == mode]
            if errs:
                print(f"{hw:<10}{mode:<6}{len(errs):>13}{max(errs):>12.2f}%"
                      f"{statistics.mean(errs):>13.3f}%")
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.matmul_calibration")
