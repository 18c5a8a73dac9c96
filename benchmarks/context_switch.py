"""Context-switch latency: bringing back a context whose KV cache was swapped out to flash,
under a DRAM budget for it (LLMS, arXiv 2403.11805; ``sweeps.analytic.context_switch``)::

    python -m benchmarks.context_switch                       # sheared-llama-1.3b, edge-16x16
    python -m benchmarks.context_switch --hw edge-32x32 --contexts 1024 4096

For each context length and DRAM budget (MiB kept resident for the context: its last
tokens), the KV of the other tokens is in the flash tier (the hardware's
``flash_bytes_per_s`` and ``flash_latency_ns``), stored int8 or compressed chunk by
chunk. The compressed bytes per int8 byte are measured here on ``tiny``'s held-out text
at the default tolerance (``models.evaluate.evaluate_kv``, 16 windows); a larger model's
ratio may differ. Printed: tokens evicted, the seconds to reload them, to recompute them
(the fast path's prefill) and LLMS's pipeline of the two, with the tokens it recomputes.
"""

from __future__ import annotations

import json
import math

from accel.args import ArgumentParser, run_command


def measured_ratio(windows: int = 16) -> float:
    """KV bytes per int8 byte of ``tiny`` at the default ``KVCompression``."""
    from models import evaluate as E
    from models.integer import KVCompression
    from models.zoo import load_model

    loaded = load_model("tiny")
    return E.evaluate_kv(loaded, E.build_int_model(loaded), KVCompression(),
                         max_windows=windows).kv_bytes_ratio


def main(argv: list[str] | None = None) -> list[dict]:
    from arch.hardware import HardwareError, load_hardware
    from compiler.ir import CompileError
    from models.zoo import model_config
    from sweeps.analytic import context_switch

    parser = ArgumentParser(prog="python -m benchmarks.context_switch",
                            description=__doc__.split("\n\n")[0].rstrip(":"))
    parser.add_argument("--model", default="sheared-llama-1.3b")
    parser.add_argument("--hw", default="edge-16x16")
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--budgets-mib", type=float, nargs="+", default=[0.0, 64.0, 256.0])
    args = parser.parse_args(argv)
    try:
        cfg, hw = model_config(args.model), load_hardware(args.hw)
    except (ValueError, HardwareError) as e:
        parser.error(str(e))
    for n in args.contexts:
        if not 1 <= n <= cfg.max_seq_len:
            parser.error(f"--contexts {n} is outside [1, {cfg.max_seq_len}] for {args.model}")
    for b in args.budgets_mib:
        if not 0 <= b < math.inf:
            parser.error(f"--budgets-mib {b} must be a number of at least 0")
        if not b * 2**20 < math.inf:
            parser.error(f"--budgets-mib {b:g} is more bytes than a float counts")
    ratio = measured_ratio()
    row_bytes = 2 * cfg.n_layers * cfg.kv_dim
    rows = []
    for fmt, r in (("int8", 1.0), ("compressed", ratio)):
        for n in args.contexts:
            for budget in args.budgets_mib:
                resident = int(budget * 2**20 // (row_bytes * r))
                try:
                    s = context_switch(cfg, hw, n, resident, r)
                except (ValueError, CompileError) as e:
                    parser.error(str(e))
                rows.append({"bench": "context_switch", "model": args.model, "hw": hw.name,
                             "kv_format": fmt, "kv_bytes_ratio": round(r, 4),
                             "context_tokens": n, "budget_mib": budget,
                             "evicted_tokens": s.evicted_tokens,
                             "evicted_bytes": s.evicted_bytes,
                             "reload_s": round(s.reload_s, 5),
                             "recompute_s": round(s.recompute_s, 5),
                             "pipelined_s": round(s.pipelined_s, 5),
                             "recompute_tokens": s.recompute_tokens})
                print(json.dumps(rows[-1]), flush=True)
    print(f"{args.model} on {hw.name}: {row_bytes:,} bytes of int8 K and V a token; flash "
          f"{hw.flash_bytes_per_s / 1e9:g} GB/s, {hw.flash_latency_ns / 1e3:g} µs; "
          f"compressed KV {ratio:.1%} of int8 (tiny, 16 windows)")
    print(f"{'KV':<12}{'context':>8}{'budget MiB':>11}{'evicted':>9}{'reload ms':>11}"
          f"{'recompute ms':>14}{'pipelined ms':>14}{'recomputed':>12}")
    for r in rows:
        print(f"{r['kv_format']:<12}{r['context_tokens']:>8}{r['budget_mib']:>11g}"
              f"{r['evicted_tokens']:>9}{1e3 * r['reload_s']:>11.1f}"
              f"{1e3 * r['recompute_s']:>14.1f}{1e3 * r['pipelined_s']:>14.1f}"
              f"{r['recompute_tokens']:>12}")
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.context_switch")
