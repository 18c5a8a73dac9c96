"""Each instruction of a compiled tiny decode step run alone on the RTL, against
``arch.occupancy``: the per-instruction agreement that ``timing.CALIBRATION`` was
fitted on, by instruction class.

Every instruction of the program (dependency tokens stripped) becomes a program of its
own, the instruction then ``HALT``, placed after the build's DRAM image; one Verilator
job runs them all in order, and each program's busy counter for the instruction's engine
is compared with the occupancy the performance model gives it::

    python -m benchmarks.perf_calibration                    # edge-8x8 and edge-4x4
    python -m benchmarks.perf_calibration --hw edge-4x4 --prefetch off [--l2 BYTES]

The same per instruction on random models (the fitting set: ``sweeps.random_steps``
draws, seed 7 by default, on each of ``rtl_hardware()``), by class with the worst
instructions::

    python -m benchmarks.perf_calibration --fit N [--seed S]

And the test set, kept apart from what was fitted (seed 2026 by default): ``N`` random
steps, whole programs, on each configuration of ``sweeps.random_steps.rtl_hardware()`` in
turn (one Verilator build each), bit-exact against the ISA simulator and both
performance models against the RTL's counters, one row a step, then the mean and
largest absolute errors::

    python -m benchmarks.perf_calibration --random N [--seed S] [--hw-index I ...]
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np

from accel.args import ArgumentParser, run_command
from accel.runtime import image_with_programs


def instruction_class(instr) -> str:
    """``MATMUL GEMV``, ``MATMUL GEMM KN``, ..., or the mnemonic."""
    if instr.mnemonic != "MATMUL":
        return instr.mnemonic
    f = instr.fields()
    return f"MATMUL {'GEMV' if f['mode'] else 'GEMM'}{' KN' if f['w_layout'] else ''}"


def each_instruction_alone(build, program) -> list[tuple]:
    """Every instruction of ``program`` (dependency tokens stripped) run alone
    on the RTL after ``build``'s DRAM image: ``(instr, RTL busy, model busy)`` each, the
    busy counter of the instruction's engine against ``occupancy``."""
    from arch.isa import Engine
    from arch.occupancy import occupancy
    from rtl.common import rtl_params
    from rtl.sim import build_model, run_job

    instrs = [i.replace(wait=0, signal=0) for i in program.instrs
              if i.engine != Engine.CONTROL and i.mnemonic != "STORE_COUNTERS"]
    data, programs = image_with_programs(build.image.data,
                                         {f"i{n}": [instr] for n, instr in enumerate(instrs)})
    model = build_model(rtl_params(build.hw, image_bytes=data.size))
    job = run_job(model, data, programs, {})
    rows = []
    for instr, entry in zip(instrs, job.programs, strict=True):
        if entry["timed_out"] or entry["error"]:
            raise RuntimeError(f"{instr.mnemonic} did not complete alone on the RTL: {entry}")
        rows.append((instr, entry["counters"][f"{instr.engine.name.lower()}_busy"],
                     occupancy(instr, build.hw, build.image.read_i32).cycles))
    return rows


def by_class(rows: list[tuple]) -> dict:
    """``each_instruction_alone``'s rows summed by ``instruction_class``."""
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])   # rtl, model, count
    for instr, rtl, model in rows:
        row = sums[instruction_class(instr)]
        row[0] += rtl
        row[1] += model
        row[2] += 1
    return {k: {"instructions": n, "rtl_busy": r, "model_busy": m,
                "error_pct": round(100 * (m - r) / r, 2)}
            for k, (r, m, n) in sorted(sums.items())}


def run_one(tiny, im, hw, prefetch: bool) -> dict:
    from compiler.driver import compile_generation

    build = compile_generation(im.cfg, im.qm, hw, tiny.tokenizer.encode("ROMEO:"), 2,
                               prefetch=prefetch)
    decode = next(p for p in build.programs if p.kind == "decode")
    rows = each_instruction_alone(build, decode)
    return {"hw": hw.name, "prefetch": prefetch, "instructions": len(rows),
            "classes": by_class(rows)}


def _print_classes(classes: dict) -> None:
    print(f"{'class':<16}{'n':>5}{'RTL busy':>11}{'model':>11}{'error':>9}")
    for name, c in classes.items():
        print(f"{name:<16}{c['instructions']:>5}{c['rtl_busy']:>11,}"
              f"{c['model_busy']:>11,}{c['error_pct']:>8.2f}%")


def fit(n: int, seed: int, hw_indices: list[int]) -> list[dict]:
    """The fitting set: each instruction of ``n`` random steps per configuration alone."""
    from compiler.driver import compile_step
    from models.evaluate import build_int_model
    from models.reference import init_params
    from models.zoo import LoadedModel
    from sweeps.random_steps import random_rtl_step, rtl_hardware

    rng = np.random.default_rng(seed)
    results = []
    for i in hw_indices:
        hw, rows = rtl_hardware()[i], []
        for _ in range(n):
            step = random_rtl_step(rng, hw)
            im = build_int_model(LoadedModel(step.cfg, init_params(step.cfg, 0), None, ""),
                                 weights=step.weights)
            build = compile_step(im.cfg, im.qm, hw, step.start, step.tokens, step.prefetch)
            rows += each_instruction_alone(build, build.programs[0])
        worst = sorted(rows, key=lambda r: -abs(r[2] - r[1]) / r[1])[:10]
        result = {"hw": hw.name, "l2_bytes": hw.l2_bytes, "steps": n,
                  "instructions": len(rows), "classes": by_class(rows),
                  "worst": [{"instr": str(instr.fields()), "class": instruction_class(instr),
                             "rtl_busy": r, "model_busy": m} for instr, r, m in worst]}
        print(json.dumps({"benchmark": "perf_calibration", "section": "fit", **result}),
              flush=True)
        print(f"{hw.name}, {hw.l2_bytes // 1024} KiB, {n} random steps (seed {seed}):")
        _print_classes(result["classes"])
        results.append(result)
    return results


def test_set(n: int, seed: int, hw_indices: list[int]) -> list[dict]:
    """The test set: ``n`` random steps, each on the next configuration of
    ``hw_indices`` in turn, whole programs against the RTL."""
    from accel.ladder import TIMED_COUNTERS, run_random_step
    from sweeps.random_steps import random_rtl_step, rtl_hardware

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        hw = rtl_hardware()[hw_indices[i % len(hw_indices)]]
        step = random_rtl_step(rng, hw)
        result = run_random_step(step)
        row = {"step": step.describe(), "hw": hw.name, **result}
        print(json.dumps({"benchmark": "perf_calibration", "section": "random", **row}),
              flush=True)
        rows.append(row)
    errors = np.array([r["error_pct"]["cycles"] for r in rows])
    fast = np.array([r["error_pct"]["fast"] for r in rows])
    print(f"{'#':>3} {'RTL cycles':>11}{'model':>9}{'fast':>9}"
          + "".join(f"{k.replace('_cycles', ''):>14}" for k in TIMED_COUNTERS[1:]) + "  step")
    for i, r in enumerate(rows):
        e = r["error_pct"]
        print(f"{i:>3} {r['rtl']['cycles']:>11,}{e['cycles']:>8.2f}%{e['fast']:>8.2f}%"
              + "".join(f"{e[k]:>13.2f}%" for k in TIMED_COUNTERS[1:]) + f"  {r['step']}")
    summary = {"steps": n, "seed": seed, "all_bit_exact": all(r["bit_exact"] for r in rows),
               "mean_abs_error_pct": round(float(np.abs(errors).mean()), 3),
               "max_abs_error_pct": round(float(np.abs(errors).max()), 3),
               "within_1pct": int((np.abs(errors) <= 1).sum()),
               "fast_mean_abs_error_pct": round(float(np.abs(fast).mean()), 3),
               "fast_max_abs_error_pct": round(float(np.abs(fast).max()), 3),
               "counters": {k: {"max_abs_error_pct": round(float(np.abs(e).max()), 3),
                                "within_1pct": int((np.abs(e) <= 1).sum())}
                            for k in TIMED_COUNTERS[1:]
                            for e in [np.array([r["error_pct"][k] for r in rows])]}}
    print(json.dumps({"benchmark": "perf_calibration", "section": "random_summary",
                      **summary}), flush=True)
    print(f"{len(rows)} steps, all bit-exact: {summary['all_bit_exact']}; mean absolute error "
          f"{summary['mean_abs_error_pct']}% (fast path {summary['fast_mean_abs_error_pct']}%),"
          f" worst {summary['max_abs_error_pct']}% ({summary['fast_max_abs_error_pct']}%), "
          f"{summary['within_1pct']} within 1%")
    print("the other counters (stalls, and a count the RTL has at 0, over the cycles), "
          "worst and within 1%: " + ", ".join(
              f"{k} {c['max_abs_error_pct']}% {c['within_1pct']}"
              for k, c in summary["counters"].items()))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    from benchmarks.rtl_tiny import each_run
    from sweeps.random_steps import rtl_hardware

    every = list(range(len(rtl_hardware())))
    parser = ArgumentParser(
        prog="python -m benchmarks.perf_calibration", allow_abbrev=False,
        description=__doc__.split("\n\n")[0].rstrip(":")
        + " Without --random or --fit: tiny's decode "
                    "step, each instruction alone (options --hw, --prefetch, --l2, "
                    "--dram-bytes-per-cycle, --weights of benchmarks.rtl_tiny).")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--random", type=int, metavar="N",
                       help="the test set: N random steps, whole programs (seed 2026)")
    group.add_argument("--fit", type=int, metavar="N",
                       help="the fitting set: every instruction of N random steps per "
                            "configuration, alone (seed 7)")
    parser.add_argument("--seed", type=int, help="with --random or --fit: the draw's seed")
    parser.add_argument("--hw-index", type=int, nargs="+", metavar="I",
                        help=f"with --random or --fit: configurations of "
                             f"sweeps.random_steps.rtl_hardware(), {every}")
    args, rest = parser.parse_known_args(argv)
    if args.random is None and args.fit is None:
        if args.seed is not None or args.hw_index is not None:
            parser.error("--seed and --hw-index go with --random or --fit")
    else:
        if rest:
            parser.error(f"unrecognised arguments: {' '.join(rest)}")
        for name, value in (("--random", args.random), ("--fit", args.fit)):
            if value is not None and value < 1:
                parser.error(f"{name} takes a number of steps of at least 1, not {value}")
        if args.seed is not None and args.seed < 0:
            parser.error(f"--seed must be at least 0, not {args.seed}")
        indices = args.hw_index or every
        if any(i not in every for i in indices) or len(set(indices)) < len(indices):
            parser.error(f"--hw-index takes distinct values of {every} "
                         f"(sweeps.random_steps.rtl_hardware())")
        if args.fit is not None:
            return fit(args.fit, 7 if args.seed is None else args.seed, indices)
        return test_set(args.random, 2026 if args.seed is None else args.seed, indices)
    rows = each_run("perf_calibration", __doc__.split("\n\n")[0].rstrip(":"), run_one, rest,
                    prefetch=("on",))
    for row in rows:
        print(f"{row['hw']}, prefetch {'on' if row['prefetch'] else 'off'}:")
        _print_classes(row["classes"])
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.perf_calibration")
