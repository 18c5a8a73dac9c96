"""Decode of a Sheared-LLaMA-1.3B-wide layer on the RTL, int8 against MXINT4 weights:
bit-exactness, cycles per step, the fraction of the DRAM's bandwidth used, and the
instruction-level performance model beside each.

The model is one decoder layer of Sheared-LLaMA-1.3B's width (d_model 2048, 16 heads,
SwiGLU 5504) with deterministic random weights (seed 0) and a 65-token vocabulary, so
that its DRAM image fits the simulated DRAM (51 MB with int8 projection weights, 30 MB
with MXINT4). For each weight format it is compiled for a 6-token random prompt and 3 new
tokens (the prefill and two decode steps), run on the ISA simulator and on the RTL
(Verilator under cocotb; one model build per DRAM size), and checked: the final DRAM
and L2 whole against the ISA simulator's, the tokens, logits and KV cache against the
JAX integer reference. Decode's DRAM use is bytes moved over ``dram_bytes_per_cycle x
cycles`` (not ``dram_busy_cycles``, which counts accepted lines)::

    python -m benchmarks.rtl_layer_decode                     # edge-16x16, both formats
    python -m benchmarks.rtl_layer_decode --hw edge-8x8 --weights mxint4
    python -m benchmarks.rtl_layer_decode --decode-at 128 512 # longer attention

``--decode-at`` runs single decode steps at those KV lengths instead (``compile_step``:
the cache as compiled, so the RTL is compared with the ISA simulator only, the whole
DRAM and L2), each timed by both performance models: the instruction-level model
(``sweeps.perf``) and the fast path (``sweeps.analytic.decode_step``).
"""

from __future__ import annotations

import json

from accel.args import ArgumentParser, run_command

PROMPT_TOKENS, NEW_TOKENS = 6, 3


def run(hw_name: str, weights: str) -> dict:
    import numpy as np

    from accel.ladder import compare, reference_generation
    from accel.runtime import run_build, same_dram
    from arch.hardware import load_hardware
    from benchmarks.rtl_prefill import layer_model
    from compiler.driver import compile_generation
    from models.evaluate import build_int_model
    from sweeps.perf import time_build

    loaded = layer_model(1)
    cfg = loaded.cfg
    im = build_int_model(loaded, weights=weights)
    hw = load_hardware(hw_name)
    prompt = [int(t) for t in np.random.default_rng(1).integers(0, cfg.vocab_size,
                                                                PROMPT_TOKENS)]
    build = compile_generation(cfg, im.qm, hw, prompt, NEW_TOKENS)
    isa, rtl = run_build(build, "isa"), run_build(build, "rtl")
    timing = time_build(build)
    decode = [name for name in rtl.counters if name.startswith("decode")]
    rtl_cycles = sum(rtl.counters[n]["cycles"] for n in decode)
    model_cycles = sum(timing.programs[n].cycles for n in decode)
    moved = sum(rtl.counters[n]["dram_read_bytes"] + rtl.counters[n]["dram_write_bytes"]
                for n in decode)
    return {
        "hw": hw.name, "l2_bytes": hw.l2_bytes, "model": cfg.name, "weights": weights,
        "image_bytes": int(build.image.data.size),
        "rtl_vs_isa": same_dram(build, isa.dram, rtl.dram, isa.l2, rtl.l2),
        "rtl_vs_int": compare(rtl, reference_generation(im, prompt, NEW_TOKENS)),
        "prefill_cycles": rtl.counters["prefill"]["cycles"],
        "prefill_model_cycles": timing.programs["prefill"].cycles,
        "decode_cycles_mean": rtl_cycles / len(decode),
        "decode_model_cycles_mean": model_cycles / len(decode),
        "decode_model_error_pct": round(100 * (model_cycles - rtl_cycles) / rtl_cycles, 3),
        "decode_dram_bytes_mean": moved / len(decode),
        "decode_dram_utilisation": round(moved / (hw.dram_bytes_per_cycle * rtl_cycles), 4),
        "decode_compute_busy": round(sum(rtl.counters[n]["compute_busy"] for n in decode)
                                     / rtl_cycles, 4),
        "decode_load_busy": round(sum(rtl.counters[n]["load_busy"] for n in decode)
                                  / rtl_cycles, 4),
        "layer_steps_per_s": round(hw.clock_hz * len(decode) / rtl_cycles, 1),
        "sim_seconds": round(rtl.wall_seconds, 1),
    }


def run_at(hw_name: str, weights: str, kv_length: int) -> dict:
    """One decode step at ``kv_length`` on the RTL, against the ISA simulator and both
    performance models."""
    from arch.hardware import load_hardware
    from benchmarks.rtl_prefill import layer_model
    from benchmarks.rtl_tiny import step_on_rtl
    from models.evaluate import build_int_model
    from sweeps.analytic import decode_step

    loaded = layer_model(1)
    im = build_int_model(loaded, weights=weights)
    hw = load_hardware(hw_name)
    exact, counters, model_counters = step_on_rtl(im, hw, kv_length)
    cycles, model = counters["cycles"], model_counters["cycles"]
    fast = decode_step(loaded.cfg, hw, kv_length, weights=weights).cycles
    moved = counters["dram_read_bytes"] + counters["dram_write_bytes"]
    return {"hw": hw.name, "l2_bytes": hw.l2_bytes, "weights": weights,
            "kv_length": kv_length, "rtl_vs_isa_bit_exact": exact,
            "rtl_cycles": cycles, "model_cycles": model, "fast_cycles": fast,
            "model_error_pct": round(100 * (model - cycles) / cycles, 3),
            "fast_error_pct": round(100 * (fast - cycles) / cycles, 3),
            "dram_bytes": moved,
            "dram_utilisation": round(moved / (hw.dram_bytes_per_cycle * cycles), 4),
            "compute_busy": round(counters["compute_busy"] / cycles, 4)}


def main_at(hws: list[str], formats: list[str], lengths: list[int]) -> list[dict]:
    rows = []
    for hw in hws:
        for weights in formats:
            for at in lengths:
                row = run_at(hw, weights, at)
                print(json.dumps({"benchmark": "rtl_layer_decode", **row}), flush=True)
                rows.append(row)
    print(f"{'hw':<11}{'weights':<8}{'KV':>6}{'bit-exact':>10}{'RTL cycles':>12}{'model':>9}"
          f"{'fast path':>10}{'DRAM use':>10}{'compute busy':>14}")
    for r in rows:
        print(f"{r['hw']:<11}{r['weights']:<8}{r['kv_length']:>6}"
              f"{str(r['rtl_vs_isa_bit_exact']):>10}{r['rtl_cycles']:>12,}"
              f"{r['model_error_pct']:>+8.2f}%{r['fast_error_pct']:>+9.2f}%"
              f"{100 * r['dram_utilisation']:>9.1f}%{100 * r['compute_busy']:>13.1f}%")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(prog="python -m benchmarks.rtl_layer_decode",
                            description=__doc__.split("\n\n")[0].rstrip(":"))
    parser.add_argument("--hw", nargs="*", default=["edge-16x16"])
    parser.add_argument("--weights", nargs="*", default=["int8", "mxint4"],
                        choices=("int8", "mxint4"))
    parser.add_argument("--decode-at", nargs="+", type=int, default=None, metavar="KV",
                        help="single decode steps at these KV lengths instead")
    args = parser.parse_args(argv)
    if args.decode_at:
        bad = [n for n in args.decode_at if not 1 <= n < 4096]
        if bad:
            parser.error(f"--decode-at {bad[0]}: a KV length must be in [1, 4096), the "
                         "layer model's context")
        return main_at(args.hw, args.weights, args.decode_at)
    rows = []
    for hw in args.hw:
        for weights in args.weights:
            row = run(hw, weights)
            print(json.dumps({"benchmark": "rtl_layer_decode", **row}), flush=True)
            rows.append(row)
    print(f"{'hw':<11}{'weights':<8}{'bit-exact':>10}{'decode cycles':>15}{'model':>11}"
          f"{'error':>8}{'DRAM bytes':>13}{'DRAM use':>10}{'compute busy':>14}")
    for r in rows:
        exact = r["rtl_vs_isa"]["bit_exact"] and r["rtl_vs_int"]["bit_exact"]
        print(f"{r['hw']:<11}{r['weights']:<8}{str(exact):>10}{r['decode_cycles_mean']:>15,.0f}"
              f"{r['decode_model_cycles_mean']:>11,.0f}{r['decode_model_error_pct']:>+7.2f}%"
              f"{r['decode_dram_bytes_mean']:>13,.0f}"
              f"{100 * r['decode_dram_utilisation']:>9.1f}%"
              f"{100 * r['decode_compute_busy']:>13.1f}%")
    by = {(r["hw"], r["weights"]): r for r in rows}
    for hw in args.hw:
        if (hw, "int8") in by and (hw, "mxint4") in by:
            a, b = by[(hw, "int8")], by[(hw, "mxint4")]
            print(f"{hw}: MXINT4 decode {a['decode_cycles_mean'] / b['decode_cycles_mean']:.2f}x "
                  f"int8's speed, {b['decode_dram_bytes_mean'] / a['decode_dram_bytes_mean']:.3f}x "
                  "its DRAM bytes")
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.rtl_layer_decode")
