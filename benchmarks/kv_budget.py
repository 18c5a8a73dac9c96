"""Decode speed and DRAM traffic against the KV cache's format and budget.

One decode step at KV length ``--at`` with the int8 cache and with compressed KV chunks
(``KvFormat.CHUNKED``: every full block read through the KV prefetch engine's
decompressor) whose channels average ``--bits`` bits (``occupancy.kv_budget_widths``)::

    python -m benchmarks.kv_budget                       # sheared-llama-1.3b, edge-16x16
    python -m benchmarks.kv_budget --model tiny --hw edge-8x8 --at 200 --exact
    python -m benchmarks.kv_budget --dram-bytes-per-cycle 40 64

Printed per bandwidth and budget: the fast path's cycles of the step
(``sweeps.analytic.decode_step(kv_bits=...)``), decode tokens/s at the hardware's clock,
the DRAM bytes the step reads and their change against the int8 cache, and those of its
KV prefetches (the past K and V, chunk headers included). With ``--exact``
the same step compiled without weights, every chunk header saying the budget's widths
(``driver.compile_timing_step(kv_bits=...)``), timed by the instruction-level model
(``sweeps.perf.time_program``), with the fast path's error against it. Which tolerance
gives which budget, and at what perplexity, is ``benchmarks.kv_compression``'s table.
"""

from __future__ import annotations

import json

from accel.args import ArgumentParser, run_command

BITS = (8.0, 6.0, 4.0, 3.0, 2.0)


def main(argv: list[str] | None = None) -> list[dict]:
    from arch.hardware import HardwareError, load_hardware
    from compiler.driver import compile_timing_step
    from compiler.ir import CompileError
    from models.zoo import model_config
    from sweeps.analytic import decode_step
    from sweeps.perf import time_program

    parser = ArgumentParser(prog="python -m benchmarks.kv_budget",
                            description=__doc__.split("\n\n")[0].rstrip(":"))
    parser.add_argument("--model", default="sheared-llama-1.3b")
    parser.add_argument("--hw", default="edge-16x16")
    parser.add_argument("--at", type=int, default=1024, help="KV length of the step")
    parser.add_argument("--bits", type=float, nargs="+", default=list(BITS),
                        help="budgets, mean bits per cached element (2 to 8)")
    parser.add_argument("--dram-bytes-per-cycle", type=int, nargs="+", default=None,
                        help="DRAM bandwidths to run (default: the hardware's)")
    parser.add_argument("--exact", action="store_true",
                        help="also time each step with the instruction-level model")
    args = parser.parse_args(argv)
    try:
        cfg, base = model_config(args.model), load_hardware(args.hw)
        hws = [base.replace(dram_bytes_per_cycle=b) for b in args.dram_bytes_per_cycle] \
            if args.dram_bytes_per_cycle else [base]
    except (HardwareError, KeyError, ValueError) as e:
        parser.error(str(e))
    if not 1 <= args.at < cfg.max_seq_len - 1:
        parser.error(f"--at {args.at}: a decode step is at 1 to {cfg.max_seq_len - 2} for "
                     f"{cfg.name}")
    for b in args.bits:
        if not 2 <= b <= 8:
            parser.error(f"--bits {b:g}: a KV budget is 2 to 8 bits per cached element")
    rows = []
    for hw in hws:
        int8_bytes = None
        for bits in [None, *args.bits]:
            try:
                est = decode_step(cfg, hw, args.at, kv_bits=bits)
            except (CompileError, ValueError) as e:
                parser.error(f"{cfg.name} on {hw.name}: {e}")
            int8_bytes = est.dram_read_bytes if bits is None else int8_bytes
            row = {"bench": "kv_budget", "model": cfg.name, "hw": hw.name,
                   "dram_bytes_per_cycle": hw.dram_bytes_per_cycle, "at": args.at,
                   "kv": "int8" if bits is None else f"chunked {bits:g} bits",
                   "cycles": est.cycles,
                   "tokens_per_s": round(hw.clock_hz / est.cycles, 2),
                   "dram_read_bytes": est.dram_read_bytes,
                   "bytes_vs_int8": est.dram_read_bytes - int8_bytes,
                   "kv_read_bytes": est.kv_read_bytes}
            if args.exact:
                build = compile_timing_step(cfg, hw, args.at, kv_bits=bits)
                exact = time_program(build.programs[0].instrs, hw, build.image.read_i32).cycles
                row["cycles_instruction_level"] = exact
                row["fast_path_error_pct"] = round(100 * (est.cycles - exact) / exact, 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.kv_budget")
