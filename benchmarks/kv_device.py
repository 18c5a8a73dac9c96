"""Compressed KV chunks on the device: the DRAM bytes and cycles of decode steps that read
their past KV compressed (``KV_PREFETCH`` in ``CHUNKED`` format), against the int8 cache::

    python -m benchmarks.kv_device                 # ISA simulator: bytes, bit-exactness
    python -m benchmarks.kv_device --rtl           # and the RTL's cycles and bit-exactness
    python -m benchmarks.kv_device --rtl --prefetch off   # compiled without prefetch

``tiny`` on edge-8x8 (16-token KV blocks) with the first 192 tokens of the held-out text
as the prompt (12 full blocks, compressed by the host after the prefill) and 4 new
tokens; for the int8 cache and each tolerance, each decode step's DRAM bytes read and the
KV bytes among them (the decode step's bytes less those of the same step without its
past KV, which the int8 build reads as rows), checked bit for bit against the integer
reference compressed alike (and, with ``--rtl``, the RTL's whole DRAM and L2 against the
ISA simulator's, its decode steps' cycles, the instruction-level model's, and the model's
largest error on any program: a compressed build's programs are timed on the DRAM the
host left before each, ``RunResult.model_cycles``).
"""

from __future__ import annotations

import json

from accel.args import ArgumentParser, run_command

TOLERANCES = (8.0, 32.0, 128.0)
PROMPT_TOKENS, NEW_TOKENS = 192, 4


def run_one(loaded, im, hw, ids, kv, rtl: bool, prefetch: bool = True) -> dict:
    from accel.ladder import compare, perf_vs_rtl, reference_generation
    from accel.runtime import run_build, same_dram
    from compiler.driver import compile_generation

    build = compile_generation(im.cfg, im.qm, hw, ids, NEW_TOKENS, kv=kv, prefetch=prefetch)
    isa = run_build(build, "isa")
    verdict = compare(isa, reference_generation(im, ids, NEW_TOKENS, kv))
    decode = [n for n in isa.counters if n.startswith("decode_")]
    row = {"bench": "kv_device", "budget": "int8" if kv is None else f"tolerance {kv.tolerance:g}",
           "bit_exact_vs_int": verdict["bit_exact"],
           "decode_dram_read_bytes": round(sum(isa.counters[n]["dram_read_bytes"]
                                               for n in decode) / len(decode))}
    if rtl:
        result = run_build(build, "rtl")
        row["rtl_vs_isa_bit_exact"] = same_dram(build, isa.dram, result.dram, isa.l2,
                                                result.l2)["bit_exact"]
        row["decode_cycles_rtl"] = round(sum(result.counters[n]["cycles"]
                                             for n in decode) / len(decode))
        perf = perf_vs_rtl(build, result.counters, isa.model_cycles)
        row["decode_cycles_model"] = round(sum(perf["programs"][n]["perf"] for n in decode)
                                           / len(decode))
        row["model_max_abs_error_pct"] = round(perf["max_abs_error_pct"], 2)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(prog="python -m benchmarks.kv_device",
                            description=__doc__.split("\n\n")[0].rstrip(":"))
    parser.add_argument("--rtl", action="store_true", help="also run each build on the RTL")
    parser.add_argument("--prefetch", choices=("on", "off"), default="on",
                        help="compile with the KV prefetch overlapped with compute (default) "
                             "or serialised")
    args = parser.parse_args(argv)
    from arch.hardware import load_hardware
    from models.evaluate import build_int_model, held_out_windows
    from models.integer import KVCompression
    from models.zoo import load_model

    loaded = load_model("tiny")
    im = build_int_model(loaded)
    hw = load_hardware("edge-8x8")
    inputs, _ = held_out_windows(loaded, max_windows=1)
    ids = [int(t) for t in inputs[0][:PROMPT_TOKENS]]
    rows = []
    for kv in [None, *(KVCompression(chunk_tokens=hw.kv_block_tokens, tolerance=t)
                       for t in TOLERANCES)]:
        rows.append(run_one(loaded, im, hw, ids, kv, args.rtl, args.prefetch == "on"))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["decode_dram_read_bytes"]
    # a step's past KV as int8 rows, on average over the steps (positions 192, 193, ...)
    kv_int8 = round(2 * im.cfg.n_layers * im.cfg.kv_dim * (PROMPT_TOKENS + (NEW_TOKENS - 2) / 2))
    print(f"tiny on {hw.name}, a {PROMPT_TOKENS}-token prompt, decode steps at "
          f"{PROMPT_TOKENS}..{PROMPT_TOKENS + NEW_TOKENS - 2}: the int8 steps read "
          f"{base:,} DRAM bytes, {kv_int8:,} of them past KV rows (on average)")
    print(f"{'budget':<16}{'DRAM bytes/step':>16}{'past KV bytes':>15}{'vs int8':>9}"
          f"{'bit-exact':>11}" + (f"{'RTL cycles/step':>17}{'RTL = ISA':>11}"
                                  f"{'model cycles/step':>19}{'worst error':>13}"
                                  if args.rtl else ""))
    for r in rows:
        past = kv_int8 - (base - r["decode_dram_read_bytes"])
        line = (f"{r['budget']:<16}{r['decode_dram_read_bytes']:>16,}{past:>15,}"
                f"{past / kv_int8:>9.1%}{str(r['bit_exact_vs_int']):>11}")
        if args.rtl:
            line += (f"{r['decode_cycles_rtl']:>17,}{str(r['rtl_vs_isa_bit_exact']):>11}"
                     f"{r['decode_cycles_model']:>19,}{r['model_max_abs_error_pct']:>12.2f}%")
        print(line)
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.kv_device")
