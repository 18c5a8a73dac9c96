"""Decode throughput against batch size (B sequences' decode step, weights read once).

One decode step of B sequences, the weights read once for all of them
(``compiler.driver.compile_batch_timing_step``)::

    python -m benchmarks.batch_decode                  # sheared-llama-1.3b on edge-16x16
    python -m benchmarks.batch_decode --batches 1 4 --at 128 --rtl

Part 1, the performance model: for each batch size, the decode step of B sequences each
at KV length ``--at`` (default 256, or half a shorter model's context), compiled without
weights and timed by the instruction-level model (``sweeps.perf.time_build``, the one
calibrated against the RTL); printed: cycles, tokens/s (B tokens a step at the
hardware's clock), DRAM bytes read per token, the DRAM bought
(``sweeps.cost.dram_capacity_gbytes`` of the weights and the B sequences' KV cache at
the model's context), tokens/s per dollar (``sweeps.cost`` at ``--node``), the fast
path's estimate of the same step (``sweeps.analytic.decode_step(batch=B)``) with its
error, and the cycles of one ``[B, d_model] x [d_model, array_cols]`` weight tile in
GEMV and in GEMM. A batch whose weights and KV do not fit the hardware's DRAM is printed
as such.

Part 2, ``--rtl``: ``tiny`` on edge-8x8 (64 KiB of L2, the configuration the tests
build), four sequences (``accel.ladder.batch_prompts`` of the prompt "ROMEO:\nWhat say
you", two sharing a prefix block; their prompt lengths are printed) generating 5 tokens
each, decoded together and one at a time: the decode steps' cycles on the RTL, bit-exact
with the ISA simulator (whole DRAM and L2, ``accel.runtime.same_run``), and the tokens/s
they give.
"""

from __future__ import annotations

import json

from accel.args import ArgumentParser, run_command


def _tile_cycles(hw, m: int, k: int) -> tuple[int, int]:
    """Cycles of one ``[m, k] x [k, array_cols]`` weight tile in GEMV and in GEMM
    (``arch.occupancy``): why a batch stops paying beyond a few rows."""
    from arch.isa import MatmulMode, make
    from arch.occupancy import occupancy

    fields = dict(accumulate=0, w_layout=0, x_addr=0, w_addr=0, out_addr=0, w_format=0,
                  e_addr=0, m=m, k=k, n=hw.array_cols, x_stride=k, w_stride=k,
                  out_stride=4 * hw.array_cols)
    return tuple(occupancy(make("MATMUL", mode=mode, **fields), hw).cycles
                 for mode in (MatmulMode.GEMV, MatmulMode.GEMM))


def _perf(args) -> list[dict]:
    from arch.hardware import load_hardware
    from compiler.driver import compile_batch_timing_step
    from compiler.ir import CompileError
    from models.integer import weight_bytes
    from models.zoo import model_config
    from sweeps.analytic import decode_step
    from sweeps.cost import cost, dram_capacity_gbytes
    from sweeps.perf import time_build

    cfg, hw = model_config(args.model), load_hardware(args.hw)
    print(f"{cfg.name} on {hw.name}: one decode step of B sequences, each at KV length "
          f"{args.at} (instruction-level model; fast path beside it)")
    print(f"{'B':>3} {'cycles':>12} {'tokens/s':>10} {'vs B=' + str(args.batches[0]):>9} "
          f"{'DRAM B/token':>13} "
          f"{'DRAM GB':>8} {'tokens/s/$':>11} {'fast path':>12} {'error':>8} "
          f"{'GEMV/GEMM tile':>15}")
    rows = []
    for batch in args.batches:
        try:
            build = compile_batch_timing_step(cfg, hw, batch, args.at)
        except CompileError as e:
            print(f"{batch:>3} does not fit: {e}")
            rows.append({"batch": batch, "feasible": False, "reason": str(e)})
            continue
        t = time_build(build).programs["decode_000"]
        fast = decode_step(cfg, hw, args.at, batch=batch).cycles
        tokens_per_s = batch * hw.clock_hz / t.cycles
        first = next((r["tokens_per_s"] for r in rows if r["feasible"]), tokens_per_s)
        dram = dram_capacity_gbytes(weight_bytes(cfg, "int8")
                                    + batch * 2 * cfg.n_layers * cfg.kv_dim * cfg.max_seq_len)
        dollars = cost(hw, args.node, dram).total_dollars
        row = {"batch": batch, "feasible": True, "cycles": t.cycles,
               "tokens_per_s": tokens_per_s,
               "speedup": tokens_per_s / first,          # against the first batch printed
               "dram_read_bytes_per_token": t.counters()["dram_read_bytes"] / batch,
               "dram_gbytes": dram, "cost_dollars": dollars,
               "tokens_per_s_per_dollar": tokens_per_s / dollars, "fast_cycles": fast,
               "fast_error_pct": 100.0 * (fast - t.cycles) / t.cycles}
        rows.append(row)
        row["tile_cycles"] = _tile_cycles(hw, batch, cfg.d_model)
        print(f"{batch:>3} {t.cycles:>12,} {tokens_per_s:>10.1f} {row['speedup']:>8.2f}x "
              f"{row['dram_read_bytes_per_token']:>13,.0f} {dram:>8g} "
              f"{row['tokens_per_s_per_dollar']:>11.3f} {fast:>12,} "
              f"{row['fast_error_pct']:>+7.2f}% {'/'.join(map(str, row['tile_cycles'])):>15}")
    return rows


def _rtl() -> dict:
    from accel.kv_blocks import plan_batch
    from accel.ladder import batch_prompts
    from accel.runtime import run_build, same_run
    from arch.hardware import load_hardware
    from compiler.driver import compile_batch
    from models.evaluate import build_int_model
    from models.zoo import load_model

    loaded = load_model("tiny")
    im = build_int_model(loaded)
    hw = load_hardware("edge-8x8").replace(l2_bytes=64 * 1024)
    ids = loaded.tokenizer.encode("ROMEO:\nWhat say you")
    prompts = batch_prompts(ids, 4, hw.kv_block_tokens, im.cfg.vocab_size)
    new = [5] * 4
    out = {}
    for label, max_batch in (("together", 4), ("one at a time", 1)):
        plan = plan_batch(prompts, new, max_batch=max_batch, pool_blocks=16,
                          block_tokens=hw.kv_block_tokens)
        build = compile_batch(im.cfg, im.qm, hw, plan.sequences, plan.schedule, 16)
        isa, rtl = run_build(build, "isa"), run_build(build, "rtl")
        exact = same_run(build, isa, rtl)["bit_exact"]
        decode = [p.name for p in build.programs if p.kind == "decode"]
        cycles = sum(rtl.counters[n]["cycles"] for n in decode)
        tokens = sum(n - 1 for n in new)
        out[label] = {"bit_exact": exact, "prompt_tokens": [len(p) for p in prompts],
                      "decode_programs": len(decode),
                      "decode_cycles": cycles,
                      "tokens_per_s": tokens * hw.clock_hz / cycles}
        print(f"tiny on edge-8x8 (64 KiB L2), RTL, 4 sequences of "
              f"{[len(p) for p in prompts]} prompt tokens {label}: {len(decode)} "
              f"decode programs, {cycles:,} cycles for {tokens} tokens, "
              f"{out[label]['tokens_per_s']:,.0f} tokens/s, "
              f"{'bit-exact' if exact else 'MISMATCH'} with the ISA simulator")
    return out


def main(argv: list[str] | None = None) -> dict:
    from arch.hardware import HardwareError, load_hardware
    from models.zoo import model_config
    from sweeps.cost import NODES

    parser = ArgumentParser(prog="python -m benchmarks.batch_decode",
                            description=__doc__.split("\n\n")[0].rstrip(":"))
    parser.add_argument("--model", default="sheared-llama-1.3b")
    parser.add_argument("--hw", default="edge-16x16")
    parser.add_argument("--at", type=int, default=None,
                        help="each sequence's KV length (default 256, or half the context)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16])
    parser.add_argument("--node", default="16nm", choices=sorted(NODES))
    parser.add_argument("--rtl", action="store_true", help="part 2: tiny on the RTL")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = model_config(args.model)
        load_hardware(args.hw)
    except (ValueError, HardwareError) as e:
        parser.error(str(e))
    from compiler.driver import MAX_BATCH

    bad = [b for b in args.batches if not 1 <= b <= MAX_BATCH]
    if bad:
        parser.error(f"--batches {bad[0]}: a batch has 1 to {MAX_BATCH} sequences")
    if args.at is None:
        args.at = min(256, cfg.max_seq_len // 2)
    if not 1 <= args.at <= cfg.max_seq_len - 2:
        parser.error(f"--at {args.at} is outside [1, {cfg.max_seq_len - 2}] for {args.model} "
                     f"(a decode step after a prompt, with room for the next token)")
    result = {"perf": _perf(args)}
    if args.rtl:
        result["rtl"] = _rtl()
    if args.json:
        print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.batch_decode")
