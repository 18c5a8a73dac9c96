"""The compiled tiny model on the RTL: bit-exactness, cycles per step, DRAM utilisation,
simulation speed (of the whole job, and of the decode steps alone), Verilator build time,
and the performance model's error per program.

For each hardware description and prefetch setting this compiles ``tiny`` (prompt
"ROMEO:", 5 new tokens: the prefill and 4 decode steps), runs it on the ISA simulator
and on the RTL (Verilator under cocotb), checks the final DRAM bit for bit (outside the
counter blocks) and the tokens against the JAX integer reference, times the same
programs with the performance model (``sweeps.perf``), and prints one JSON line per run
plus a table::

    python -m benchmarks.rtl_tiny                       # edge-4x4 and edge-8x8, on and off
    python -m benchmarks.rtl_tiny --hw edge-8x8 --prefetch on --l2 65536
    python -m benchmarks.rtl_tiny --hw edge-4x4 --dram-bytes-per-cycle 4   # a slow DRAM
    python -m benchmarks.rtl_tiny --hw edge-8x8 --l2 131072 --decode-at 100 200
    python -m benchmarks.rtl_tiny --weights mxint4     # MXINT4 projection weights

``--decode-at`` runs single decode steps at those KV lengths instead (``compile_step``:
the cache as compiled, so the RTL is compared with the ISA simulator only, the whole
DRAM and L2), for the model's error on longer attention than a generation reaches.
"""

from __future__ import annotations

import json
import time

from accel.args import ArgumentParser, run_command


def run_one(tiny_model, im, hw, prefetch: bool) -> dict:
    from accel.ladder import compare, reference_generation
    from accel.runtime import run_build, same_dram
    from compiler.driver import compile_generation
    from rtl.common import rtl_params
    from rtl.sim import build_model

    ids = tiny_model.tokenizer.encode("ROMEO:")
    from sweeps.perf import time_build

    build = compile_generation(im.cfg, im.qm, hw, ids, 5, prefetch=prefetch)
    t0 = time.perf_counter()
    model = build_model(rtl_params(hw, image_bytes=build.image.data.size))
    build_seconds = time.perf_counter() - t0
    isa = run_build(build, "isa")
    rtl = run_build(build, "rtl")
    decode = [c for name, c in rtl.counters.items() if name.startswith("decode")]
    cycles = sum(c["cycles"] for c in rtl.counters.values())
    perf = time_build(build)
    errors = {name: round(100 * (perf.programs[name].cycles - c["cycles"]) / c["cycles"], 2)
              for name, c in rtl.counters.items()}
    # Each busy counter's error over the programs, as [lowest, highest] per cent.
    busy = {}
    for key in ("load_busy", "compute_busy", "store_busy", "dram_busy_cycles"):
        e = [100 * (perf.programs[name].counters()[key] - c[key]) / c[key]
             for name, c in rtl.counters.items() if c[key]]
        busy[key] = [round(min(e), 1), round(max(e), 1)]
    return {
        "hw": hw.name, "l2_bytes": hw.l2_bytes, "prefetch": prefetch,
        "dram_bytes_per_cycle": hw.dram_bytes_per_cycle,
        "rtl_vs_isa_bit_exact": same_dram(build, isa.dram, rtl.dram, isa.l2,
                                          rtl.l2)["bit_exact"],
        "rtl_vs_int_bit_exact": compare(rtl, reference_generation(im, ids, 5))["bit_exact"],
        "prefill_cycles": rtl.counters["prefill"]["cycles"],
        "decode_cycles_mean": sum(c["cycles"] for c in decode) / len(decode),
        # bus bytes (whole lines, instruction fetch included) over the bandwidth's cycles;
        # not dram_busy_cycles / cycles, which tops out at bytes per cycle / line bytes
        "decode_dram_utilisation": sum(c["dram_read_bytes"] + c["dram_write_bytes"]
                                       for c in decode)
        / (hw.dram_bytes_per_cycle * sum(c["cycles"] for c in decode)),
        "decode_compute_busy": sum(c["compute_busy"] for c in decode)
        / sum(c["cycles"] for c in decode),
        "cycles": cycles, "sim_seconds": rtl.wall_seconds,
        # the whole job: cocotb's start-up and the DRAM image in and out included
        "cycles_per_second": cycles / rtl.wall_seconds,
        # the decode steps alone, as the bench timed them (cocotb in the loop)
        "decode_cycles_per_second": sum(c["cycles"] for c in decode)
        / sum(s for name, s in rtl.program_seconds.items() if name.startswith("decode")),
        "verilator_build_seconds": model.build_seconds,
        "build_cached": build_seconds < 0.5 * model.build_seconds,
        "perf_cycles": {name: t.cycles for name, t in perf.programs.items()},
        "rtl_cycles": {name: c["cycles"] for name, c in rtl.counters.items()},
        "perf_error_pct": errors,
        "perf_max_abs_error_pct": max(abs(e) for e in errors.values()),
        "busy_error_pct": busy,
    }


def step_on_rtl(im, hw, at: int, prefetch: bool | None = None) -> tuple[bool, dict, dict]:
    """One decode step of ``im`` at KV length ``at`` (``compile_step``: the cache as
    compiled) on the ISA simulator and the RTL: ``(bit-exact over the whole DRAM and L2,
    the RTL's counters, the instruction-level model's)``."""
    from accel.runtime import run_build, same_dram
    from compiler.driver import compile_step
    from sweeps.perf import time_build

    build = compile_step(im.cfg, im.qm, hw, at, 1, prefetch=prefetch)
    isa, rtl = run_build(build, "isa"), run_build(build, "rtl")
    (name, counters), = rtl.counters.items()
    exact = same_dram(build, isa.dram, rtl.dram, isa.l2, rtl.l2)["bit_exact"]
    return exact, counters, time_build(build).programs[name].counters()


def run_steps(tiny_model, im, hw, prefetch: bool, positions: list[int]) -> dict:
    """One decode step at each KV length in ``positions``: RTL against ISA simulator
    (whole DRAM and L2) and the performance model's errors."""
    out = {"hw": hw.name, "l2_bytes": hw.l2_bytes, "prefetch": prefetch,
           "dram_bytes_per_cycle": hw.dram_bytes_per_cycle, "steps": []}
    for at in positions:
        exact, counters, model = step_on_rtl(im, hw, at, prefetch)
        out["steps"].append({
            "kv_length": at, "rtl_vs_isa_bit_exact": exact,
            "rtl_cycles": counters["cycles"], "perf_cycles": model["cycles"],
            **{f"{k}_error_pct": round(100 * (model[k] - counters[k]) / counters[k], 2)
               for k in ("cycles", "load_busy", "compute_busy", "store_busy")
               if counters[k]}})
    return out


def each_run(name: str, description: str, run, argv: list[str] | None,
             prefetch: tuple[str, ...] = ("on", "off"), more=None) -> list[dict]:
    """``run(tiny, int_model, hw, prefetch)`` for every ``--hw`` (with the overrides) and
    ``--prefetch`` of the command line, each row printed as a JSON line as it finishes.
    ``more(parser)`` adds the caller's own options, which it has parsed already (so that
    ``--help`` lists them)."""
    parser = ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    if more is not None:
        more(parser)
    parser.add_argument("--hw", nargs="*", default=["edge-8x8", "edge-4x4"])
    parser.add_argument("--prefetch", nargs="*", default=list(prefetch), choices=("on", "off"))
    parser.add_argument("--l2", type=int, default=None, help="override l2_bytes")
    parser.add_argument("--dram-bytes-per-cycle", type=int, default=None,
                        help="override dram_bytes_per_cycle")
    parser.add_argument("--weights", default="int8", choices=("int8", "mxint4"),
                        help="the projection weights' format")
    args = parser.parse_args(argv)
    from arch.hardware import load_hardware
    from models.evaluate import build_int_model
    from models.zoo import load_model

    overrides = {k: v for k, v in (("l2_bytes", args.l2),
                                   ("dram_bytes_per_cycle", args.dram_bytes_per_cycle))
                 if v is not None}
    hardware = [load_hardware(name).replace(**overrides) for name in args.hw]
    tiny = load_model("tiny")
    im = build_int_model(tiny, weights=args.weights)
    rows = []
    for hw in hardware:
        for on in args.prefetch:
            row = {"weights": args.weights, **run(tiny, im, hw, on == "on")}
            print(json.dumps({"benchmark": name, **row}), flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    def decode_at(parser):
        parser.add_argument("--decode-at", type=int, nargs="+", default=None, metavar="KV",
                            help="single decode steps at these KV lengths instead")

    parser = ArgumentParser(prog="python -m benchmarks.rtl_tiny", add_help=False)
    decode_at(parser)
    args, rest = parser.parse_known_args(argv)
    if args.decode_at:
        rows = each_run("rtl_tiny", __doc__.split("\n\n")[0].rstrip(":"),
                        lambda t, im, hw, on: run_steps(t, im, hw, on, args.decode_at), rest,
                        more=decode_at)
        print(f"{'hw':<10}{'L2':>9} {'prefetch':<10}{'KV':>5}{'bit-exact':>11}{'RTL':>10}"
              f"{'model':>10}{'error':>9}{'load busy':>11}")
        for r in rows:
            for st in r["steps"]:
                on = "on" if r["prefetch"] else "off"
                print(f"{r['hw']:<10}{r['l2_bytes'] >> 10:>7}Ki {on:<10}"
                      f"{st['kv_length']:>5}{str(st['rtl_vs_isa_bit_exact']):>11}"
                      f"{st['rtl_cycles']:>10,}{st['perf_cycles']:>10,}"
                      f"{st['cycles_error_pct']:>+8.2f}%{st['load_busy_error_pct']:>+10.1f}%")
        return rows
    rows = each_run("rtl_tiny", __doc__.split("\n\n")[0].rstrip(":"), run_one, argv,
                    more=decode_at)
    print(f"{'hw':<10}{'L2':>9} {'weights':<8}{'prefetch':<10}{'bit-exact':<11}{'prefill':>10}"
          f"{'decode/step':>13}"
          f"{'DRAM use':>11}{'compute busy':>14}{'cycles/s':>10}{'decode/s':>10}{'build s':>9}"
          f"{'perf err (worst)':>18}")
    for r in rows:
        exact = r["rtl_vs_isa_bit_exact"] and r["rtl_vs_int_bit_exact"]
        print(f"{r['hw']:<10}{r['l2_bytes'] >> 10:>7}Ki {r['weights']:<8}"
              f"{'on' if r['prefetch'] else 'off':<10}{str(exact):<11}"
              f"{r['prefill_cycles']:>10,}{r['decode_cycles_mean']:>13,.0f}"
              f"{100 * r['decode_dram_utilisation']:>10.1f}%"
              f"{100 * r['decode_compute_busy']:>13.1f}%"
              f"{r['cycles_per_second']:>10,.0f}{r['decode_cycles_per_second']:>10,.0f}"
              f"{r['verilator_build_seconds']:>9.0f}"
              f"{r['perf_max_abs_error_pct']:>17.2f}%")
    print("busy counters, performance model against RTL, lowest to highest over the programs:")
    for r in rows:
        print(f"{r['hw']:<10}{'on' if r['prefetch'] else 'off':<5}" + "".join(
            f"  {k}: {lo:+.1f}% to {hi:+.1f}%" for k, (lo, hi) in r["busy_error_pct"].items()))
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.rtl_tiny")
