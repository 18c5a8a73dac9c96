"""MXINT4 weights against int8: accuracy on the held-out text, decode speed of a 1B-class
model, area efficiency on the hybrid array paper's two workloads, and what the MXINT4
datapath costs the matmul unit in synthesis::

    python -m benchmarks.mxint4                       # everything (~15 min: two Yosys runs)
    python -m benchmarks.mxint4 --only accuracy --windows 64
    python -m benchmarks.mxint4 --only synthesis --hw edge-8x8

1. ``accuracy``: for every trained model (tiny, tiny-bpe), float, int8 and MXINT4
   perplexity on the held-out windows, and the MXINT4 model's next-token top-1 agreement
   with float and with int8 (``models.evaluate.evaluate`` with a baseline).
2. ``speed``: one decode step of Sheared-LLaMA-1.3B at KV length 512 on edge-16x16 (1 MiB
   L2, prefetch on), compiled without weights and timed by the instruction-level model
   (``sweeps.perf``) and the fast path (``sweeps.analytic``): DRAM bytes per token,
   cycles, tokens/s, the fraction of the DRAM's bandwidth used (bytes / (bytes per cycle x
   cycles)), the load and compute engines' busy fractions and the MATMULs' cycles (each
   timed alone), and the speedup of MXINT4. (On the RTL: ``python -m
   benchmarks.rtl_layer_decode``, a 1.3B-wide layer, and ``python -m benchmarks.rtl_tiny
   --weights mxint4``.)
3. ``area``: the sweep's evaluation (``sweeps.runner.evaluate_group``: fast path and cost
   model, 16 nm) of LISO (1024 in, 128 out) and SILO (128 in, 1024 out) at the same
   point: tokens/s, the die's area and its parts, and tokens/s/mm² over the whole die and
   over its logic alone, beside the paper's 247 / 117 (arXiv 2507.09010, abstract).
4. ``synthesis``: Yosys statistics (``rtl.stats``, gate equivalents and flip-flop bits) of
   the accelerator built with the matmul unit's MXINT4 datapath and without it
   (``RtlParams.mxint4``): the matmul unit, its parts, the array and the whole
   accelerator. The PEs are the same in both (an MXINT4 element is sign-extended into the
   int8 multiplier); the datapath adds the nibble selection in the feeder, the block
   shifts' registers, their ``3 C`` bits in each row's tag through the array, and the
   accumulator's shifters.
"""

from __future__ import annotations

import json

from accel.args import ArgumentParser, positive_int, run_command

SPEED_MODEL, SPEED_HW, SPEED_L2, SPEED_AT = "sheared-llama-1.3b", "edge-16x16", 1 << 20, 512
PAPER_TOKENS_PER_S_PER_MM2 = {"liso": 247, "silo": 117}


def accuracy(models: list[str], windows: int) -> list[dict]:
    from models.evaluate import build_int_model, evaluate
    from models.zoo import load_model

    rows = []
    for model in models:
        loaded = load_model(model)
        int8 = build_int_model(loaded)
        mx = build_int_model(loaded, weights="mxint4")
        r = evaluate(loaded, mx, max_windows=windows, baseline=int8)
        rows.append({"bench": "mxint4", "part": "accuracy", "model": model,
                     "tokens": r.tokens, "float_ppl": round(r.float_ppl, 4),
                     "int8_ppl": round(r.baseline_ppl, 4), "mxint4_ppl": round(r.int_ppl, 4),
                     "int8_ppl_ratio": round(r.baseline_ppl / r.float_ppl, 5),
                     "mxint4_ppl_ratio": round(r.ppl_ratio, 5),
                     "mxint4_top1_vs_float": round(r.top1_agreement, 4),
                     "mxint4_top1_vs_int8": round(r.top1_agreement_vs_baseline, 4)})
    return rows


def speed() -> list[dict]:
    from arch.hardware import load_hardware
    from arch.occupancy import occupancy
    from compiler.driver import compile_timing_step
    from models.zoo import model_config
    from sweeps import analytic
    from sweeps.perf import time_build

    cfg = model_config(SPEED_MODEL)
    hw = load_hardware(SPEED_HW).replace(l2_bytes=SPEED_L2, prefetch=True)
    rows = []
    for weights in ("int8", "mxint4"):
        build = compile_timing_step(cfg, hw, SPEED_AT, weights=weights)
        step = next(iter(time_build(build).programs.values()))
        fast = analytic.decode_step(cfg, hw, SPEED_AT, weights=weights)
        moved = step.dram_read_bytes + step.dram_write_bytes
        rows.append({"bench": "mxint4", "part": "speed", "model": cfg.name, "hw": hw.name,
                     "l2_bytes": hw.l2_bytes, "kv_length": SPEED_AT, "weights": weights,
                     "dram_read_bytes": step.dram_read_bytes, "cycles": step.cycles,
                     "tokens_per_s": round(hw.clock_hz / step.cycles, 2),
                     "dram_bandwidth_used": round(moved / (hw.dram_bytes_per_cycle
                                                           * step.cycles), 4),
                     "load_busy": round(step.busy["load"] / step.cycles, 4),
                     "compute_busy": round(step.busy["compute"] / step.cycles, 4),
                     "matmul_cycles": sum(occupancy(i, hw).cycles for i in
                                          build.programs[0].instrs if i.mnemonic == "MATMUL"),
                     "fast_path_cycles": fast.cycles,
                     "fast_path_error_pct": round(100 * (fast.cycles / step.cycles - 1), 2)})
    from models.integer import projection_shapes

    projections = sum(n * k for n, k in projection_shapes(cfg).values())
    rows[0]["projection_weight_share"] = round(projections / rows[0]["dram_read_bytes"], 4)
    rows[0]["lm_head_share"] = round(cfg.vocab_size * cfg.d_model / rows[0]["dram_read_bytes"], 4)
    rows[1]["speedup"] = round(rows[0]["cycles"] / rows[1]["cycles"], 3)
    rows[1]["bytes_ratio"] = round(rows[1]["dram_read_bytes"] / rows[0]["dram_read_bytes"], 3)
    return rows


def area() -> list[dict]:
    from sweeps.runner import evaluate_group
    from sweeps.spec import DEFAULT_WORKLOADS, DEFAULTS

    rows = []
    for workload in ("liso", "silo"):
        for weights in ("int8", "mxint4"):
            point = {**DEFAULTS, "hw": SPEED_HW, "model": SPEED_MODEL, "l2_bytes": SPEED_L2,
                     "workload": workload, "weights": weights, "prefetch": True}
            r = evaluate_group([point], DEFAULT_WORKLOADS)[0]
            rows.append({"bench": "mxint4", "part": "area", "workload": workload,
                         "weights": weights, "tokens_per_s": round(r["tokens_per_s"], 2),
                         "area_mm2": round(r["area_mm2"], 2),
                         "logic_mm2": round(r["logic_mm2"] + r["logic_memory_mm2"], 3),
                         "l2_mm2": round(r["l2_mm2"], 3), "phy_mm2": round(r["phy_mm2"], 3),
                         "tokens_per_s_per_mm2": round(r["tokens_per_s_per_mm2"], 3),
                         "tokens_per_s_per_logic_mm2": round(
                             r["tokens_per_s"] / (r["logic_mm2"] + r["logic_memory_mm2"]), 2),
                         "paper_tokens_per_s_per_mm2": PAPER_TOKENS_PER_S_PER_MM2[workload]})
    return rows


def synthesis(hw_name: str) -> list[dict]:
    from arch.hardware import load_hardware
    from rtl.common import DEFAULT_DRAM_BYTES, RtlParams
    from rtl.stats import synth_stats

    hw = load_hardware(hw_name)
    rows = []
    for mx in (False, True):
        stats = synth_stats(RtlParams(hw, DEFAULT_DRAM_BYTES, macros=True, mxint4=mx))
        parts = {path.removeprefix("compute."): v for path, v in stats["modules"].items()
                 if path == "compute.matmul" or path.startswith("compute.matmul.")}
        rows.append({"bench": "mxint4", "part": "synthesis", "hw": hw.name,
                     "matmul_unit": "int8 + mxint4" if mx else "int8 only",
                     "gate_equivalents": {k: v["gate_equivalents"] for k, v in parts.items()},
                     "flip_flop_bits": {k: v["flip_flop_bits"] for k, v in parts.items()},
                     "accelerator_gate_equivalents": stats["total"]["gate_equivalents"]})
    base, mx = (r["gate_equivalents"]["matmul"] for r in rows)
    rows[1]["matmul_unit_increase"] = round(mx / base - 1, 4)
    rows[1]["accelerator_increase"] = round(rows[1]["accelerator_gate_equivalents"]
                                            / rows[0]["accelerator_gate_equivalents"] - 1, 4)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(prog="python -m benchmarks.mxint4",
                            description=__doc__.split("\n\n")[0].rstrip(":"))
    parser.add_argument("--only", choices=("accuracy", "speed", "area", "synthesis"),
                        default=None)
    parser.add_argument("--hw", default=SPEED_HW,
                        help=f"hardware of the synthesis part (default {SPEED_HW})")
    parser.add_argument("--model", action="append", default=None,
                        help="a trained model for the accuracy part (repeatable; default: "
                             "tiny and tiny-bpe)")
    parser.add_argument("--windows", type=positive_int, default=None,
                        help="held-out windows for the accuracy part (default: all)")
    args = parser.parse_args(argv)
    from pathlib import Path

    from arch.hardware import load_hardware
    from models.config import preset

    load_hardware(args.hw)                   # refused before any part runs, not at its turn
    for name in args.model or ():
        if not Path(name).is_dir():          # (a checkpoint folder is read by its part)
            preset(name)
    rows = []
    parts = {"accuracy": lambda: accuracy(args.model or ["tiny", "tiny-bpe"], args.windows),
             "speed": speed, "area": area, "synthesis": lambda: synthesis(args.hw)}
    for name, part in parts.items():
        if args.only in (None, name):
            for row in part():
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.mxint4")
