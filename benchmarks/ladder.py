"""The whole verification ladder on the project's trained models: rung 1 (integer against
float on the held-out text), rung 2 (the ISA simulator against the integer reference,
prefetch on and off), rung 3 (the RTL under Verilator against the ISA simulator, the
whole final DRAM and L2) and the performance model's cycles against the RTL's.

One JSON line per model, then a table::

    python -m benchmarks.ladder                         # tiny and tiny-bpe on edge-8x8
    python -m benchmarks.ladder --model tiny-bpe --hw edge-4x4 --eval-windows 435

Exit status 1 when any rung fails.
"""

from __future__ import annotations

import json

from accel.args import ArgumentParser, run_command


def run_one(model: str, hw: str, eval_windows: int, max_new_tokens: int) -> dict:
    from accel.ladder import failed_rungs, verify_ladder

    report = verify_ladder(model, hw, None, max_new_tokens, eval_windows, rtl=True)
    rung1 = report["int_vs_float"]
    return {
        "model": report["model"], "hardware": report["hardware"],
        "eval_tokens": rung1["tokens"], "float_ppl": round(rung1["float_ppl"], 4),
        "int_ppl": round(rung1["int_ppl"], 4), "top1_agreement": rung1["top1_agreement"],
        "isa_vs_int_bit_exact": report["isa_vs_int"]["bit_exact"]
        and report["isa_vs_int_prefetch_off"]["bit_exact"],
        "tokens_compared": report["isa_vs_int"]["tokens_compared"],
        "rtl_vs_isa_bit_exact": report["rtl_vs_isa"]["bit_exact"],
        "dram_bytes_compared": report["rtl_vs_isa"]["bytes_compared"],
        "rtl_cycles": report["rtl"]["cycles"], "perf_error_pct": report["perf"]["error_pct"],
        "failed_rungs": failed_rungs(report),
    }


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m benchmarks.ladder",
                            description=__doc__.split("\n\n")[0].rstrip(":"))
    parser.add_argument("--model", action="append", default=None,
                        help="a trained model (repeatable; default: tiny and tiny-bpe)")
    parser.add_argument("--hw", default="edge-8x8")
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args(argv)
    rows = []
    for model in args.model or ["tiny", "tiny-bpe"]:
        rows.append(run_one(model, args.hw, args.eval_windows, args.max_new_tokens))
        print(json.dumps({"bench": "ladder", **rows[-1]}), flush=True)
    print(f"{'model':<10}{'float ppl':>11}{'int ppl':>10}{'top-1':>9}{'ISA':>7}{'RTL':>7}"
          f"{'RTL cycles':>13}{'perf err':>10}")
    for r in rows:
        isa, rtl = (("ok" if r[k] else "FAIL") for k in ("isa_vs_int_bit_exact",
                                                         "rtl_vs_isa_bit_exact"))
        print(f"{r['model']:<10}{r['float_ppl']:>11.3f}{r['int_ppl']:>10.3f}"
              f"{100 * r['top1_agreement']:>8.2f}%{isa:>7}{rtl:>7}{r['rtl_cycles']:>13,}"
              f"{r['perf_error_pct']:>+9.2f}%")
    return 1 if any(r["failed_rungs"] for r in rows) else 0


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.ladder")
