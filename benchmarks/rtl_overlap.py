"""Which overlap between engines the performance model misses, on the RTL: one compiled
tiny decode step, split into programs that run the load engine's instructions alone
(all of them, the weight loads, the KV prefetches), each beside the compute engine's
MATMULs, the loads beside every compute instruction (all with their dependency tokens
stripped, so the engines run as far apart as the dispatcher lets them), and the step
itself. Each program's cycles and load-engine busy cycles on the RTL against
``sweeps.perf``; a gap that appears only with a given partner is what the model's
sharing misses::

    python -m benchmarks.rtl_overlap --hw edge-8x8 --l2 131072 --decode-at 200

The programs run as one Verilator job, after the build's DRAM image (weights, tables,
the KV cache as compiled); their results are not compared (the stripped programs race),
only their timing.
"""

from __future__ import annotations

import json

from accel.args import ArgumentParser, run_command


def run(hw_name: str, l2_bytes: int | None, at: int, prefetch: bool) -> list[dict]:
    from accel.runtime import image_with_programs
    from arch.hardware import load_hardware
    from arch.isa import Engine, make
    from compiler.driver import compile_step
    from models.evaluate import build_int_model
    from models.zoo import load_model
    from rtl.common import rtl_params
    from rtl.sim import build_model, run_job
    from sweeps.perf import time_program

    hw = load_hardware(hw_name)
    if l2_bytes:
        hw = hw.replace(l2_bytes=l2_bytes)
    im = build_int_model(load_model("tiny"))
    build = compile_step(im.cfg, im.qm, hw, at, 1, prefetch=prefetch)
    instrs = [i for i in build.programs[0].instrs if i.engine != Engine.CONTROL]
    free = [i.replace(wait=0, signal=0) for i in instrs]
    load = [i for i in free if i.engine == Engine.LOAD]
    weights = {"DMA_LOAD", "DMA_GATHER"}
    programs = {
        "loads alone": load,
        "weight loads alone": [i for i in load if i.mnemonic in weights],
        "weight loads + MATMULs": [i for i in free if i.mnemonic in weights | {"MATMUL"}],
        "KV prefetch alone": [i for i in load if i.mnemonic == "KV_PREFETCH"],
        "KV prefetch + MATMULs": [i for i in free if i.mnemonic in ("KV_PREFETCH", "MATMUL")],
        "loads + MATMULs": [i for i in free if i.engine == Engine.LOAD
                            or i.mnemonic == "MATMUL"],
        "loads + compute": [i for i in free if i.engine != Engine.STORE],
        "the step": instrs,
    }
    data, entries = image_with_programs(build.image.data, programs)
    job = run_job(build_model(rtl_params(hw, image_bytes=data.size)), data, entries, {})
    rows = []
    for (name, prog), entry in zip(programs.items(), job.programs, strict=True):
        if entry["timed_out"] or entry["error"]:
            raise RuntimeError(f"{name} did not complete on the RTL: {entry}")
        rtl = entry["counters"]
        model = time_program(prog + [make("HALT")], hw, build.image.read_i32)
        rows.append({"benchmark": "rtl_overlap", "hw": hw.name, "l2_bytes": hw.l2_bytes,
                     "kv_length": at, "prefetch": prefetch, "program": name,
                     "instructions": len(prog), "rtl_cycles": rtl["cycles"],
                     "model_cycles": model.cycles,
                     "cycles_error_pct": round(100 * (model.cycles - rtl["cycles"])
                                               / rtl["cycles"], 2),
                     "rtl_load_busy": rtl["load_busy"], "model_load_busy": model.busy["load"],
                     "load_busy_error_pct": round(100 * (model.busy["load"] - rtl["load_busy"])
                                                  / rtl["load_busy"], 2)})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(prog="python -m benchmarks.rtl_overlap",
                            description=__doc__.split("\n\n")[0].rstrip(":"))
    parser.add_argument("--hw", default="edge-8x8")
    parser.add_argument("--l2", type=int, default=None, help="override l2_bytes")
    parser.add_argument("--decode-at", type=int, default=200, help="the step's KV length")
    parser.add_argument("--prefetch", choices=("on", "off"), default="on")
    args = parser.parse_args(argv)
    rows = run(args.hw, args.l2, args.decode_at, args.prefetch == "on")
    for row in rows:
        print(json.dumps(row), flush=True)
    print(f"{'program':<24}{'n':>5}{'RTL':>10}{'model':>10}{'error':>9}"
          f"{'RTL load busy':>15}{'model':>10}{'error':>9}")
    for r in rows:
        print(f"{r['program']:<24}{r['instructions']:>5}{r['rtl_cycles']:>10,}"
              f"{r['model_cycles']:>10,}{r['cycles_error_pct']:>+8.2f}%"
              f"{r['rtl_load_busy']:>15,}{r['model_load_busy']:>10,}"
              f"{r['load_busy_error_pct']:>+8.2f}%")
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.rtl_overlap")
