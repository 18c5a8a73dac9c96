"""A 128-token prefill of a Sheared-LLaMA-1.3B-wide layer on the RTL: bit-exactness, cycles
and PE utilisation, of the whole prefill and of its projection matmuls.

The model is one decoder layer of Sheared-LLaMA-1.3B's width (d_model 2048, 16 heads,
SwiGLU 5504) with deterministic random weights and a 65-token vocabulary (so that the
DRAM image, 51 MB, fits the simulated DRAM), compiled for a 128-token prompt. The prefill
program runs on the ISA simulator and on the RTL (Verilator under cocotb): the final
DRAM is compared whole (outside the counter blocks) and the logits and KV cache against
the JAX integer reference. Then the prefill's projection matmuls (``k >= d_model``: the
Q/K/V/O projections and the MLP; not attention's per-head products) run back to back,
tokens stripped, as a second program on the RTL, whose counters give their PE
utilisation ``array_macs / (cycles x PEs)`` as measured on the RTL. Both figures are
printed beside both performance models': the instruction-level model (``sweeps.perf``,
on the compiled programs) and the fast path (``sweeps.analytic.prefill``, from the
compiler's plan, every chunk timed)::

    python -m benchmarks.rtl_prefill                   # edge-16x16 and edge-8x8
    python -m benchmarks.rtl_prefill --hw edge-16x16 --l2 8388608   # one 128-token chunk

At the presets' L2 sizes the compiler splits the 128-token prompt into chunks whose
activations fit (2 x 64 on edge-16x16's 4 MiB, 8 x 16 on edge-8x8's 1 MiB); ``--l2``
sets another L2 size for every ``--hw`` (8 MiB holds the whole prompt as one chunk).
"""

from __future__ import annotations

import dataclasses
import json

from accel.args import ArgumentParser, run_command


def projection_matmuls(instrs) -> list:
    """The MATMULs whose weights a DMA_LOAD staged (the projections and the MLP, not
    attention's products over K and V), with their tokens stripped."""
    staged, out = {}, []
    for instr in instrs:
        if instr.mnemonic == "DMA_LOAD":
            staged[instr.l2_addr] = instr
        elif instr.mnemonic == "MATMUL" and instr.w_addr in staged:
            out.append(instr.replace(wait=0, signal=0))
    return out


def layer_config(layers: int = 1):
    """``layers`` decoder layers of Sheared-LLaMA-1.3B's width and a 65-token vocabulary:
    a ``ModelConfig``."""
    from models.config import preset

    return dataclasses.replace(preset("sheared-llama-1.3b"), n_layers=layers, vocab_size=65,
                               name=f"sheared-llama-1.3b-width-{layers}l")


def layer_model(layers: int = 1):
    """``layer_config(layers)`` with deterministic random weights (seed 0): a
    ``LoadedModel``."""
    from models.reference import init_params
    from models.zoo import LoadedModel

    cfg = layer_config(layers)
    return LoadedModel(cfg, init_params(cfg, 0), None, "random init (seed 0)")


def hardware(name: str, l2_bytes: int | None):
    """The preset or TOML ``name``, with ``l2_bytes`` if given."""
    from arch.hardware import load_hardware

    hw = load_hardware(name)
    return hw if l2_bytes is None else hw.replace(l2_bytes=l2_bytes)


def run(hw_name: str, tokens: int, layers: int = 1, l2_bytes: int | None = None) -> dict:
    import numpy as np

    from accel.ladder import compare, reference_generation
    from accel.runtime import program_from_dram, read_results, same_dram
    from arch.isa import INSTR_BYTES, make
    from compiler.asm import encode_program
    from compiler.driver import compile_generation
    from compiler.isasim import IsaSimulator
    from models.evaluate import build_int_model
    from rtl.common import rtl_dram_bytes, rtl_params
    from rtl.sim import build_model, run_job
    from sweeps.analytic import prefill as fast_prefill
    from sweeps.analytic import prefill_chunks
    from sweeps.perf import time_program

    loaded = layer_model(layers)
    cfg = loaded.cfg
    im = build_int_model(loaded)
    hw = hardware(hw_name, l2_bytes)
    prompt = [int(t) for t in np.random.default_rng(1).integers(0, cfg.vocab_size, tokens)]
    build = compile_generation(cfg, im.qm, hw, prompt, 1)
    prefill = build.programs[0]
    # One job: the prefill, then its projections alone, back to back (the cycles of a
    # MATMUL do not depend on the values in L2), after the image.
    projections = projection_matmuls(prefill.instrs)
    extra = projections + [make("HALT")]
    base = build.image.data.size
    dram = np.zeros(rtl_dram_bytes(base + len(extra) * INSTR_BYTES), np.uint8)
    dram[:base] = build.image.data
    dram[base:base + len(extra) * INSTR_BYTES] = np.frombuffer(encode_program(extra), np.uint8)
    isa = IsaSimulator(hw, dram.copy())
    isa.run(program_from_dram(build, isa.dram, prefill.name))
    timing = time_program(prefill.instrs, hw, build.image.read_i32)
    chunks = prefill_chunks(cfg, hw, tokens)
    if [t for _, t in chunks] != prefill.chunks:
        raise AssertionError(f"the fast path's chunks {chunks} are not the compiler's "
                             f"{prefill.chunks}")
    fast = fast_prefill(cfg, hw, tokens, samples=max(2, len(chunks))).cycles
    alone_model = time_program(extra, hw)
    model = build_model(rtl_params(hw, image_bytes=dram.size))
    # A program may run for twice the cycles the performance model gives it.
    budget = 2 * max(timing.cycles, alone_model.cycles)
    job = run_job(model, dram, [(prefill.name, build.mmap[f"program:{prefill.name}"].offset),
                                ("projections", base)], {"all": (0, base)}, max_cycles=budget)
    for entry in job.programs:
        if not entry["done"]:
            why = (f"ran past its budget of {budget:,} cycles" if entry["timed_out"]
                   else f"stopped with error code {entry['error_code']}")
            raise SystemExit(f"rtl_prefill: {hw.name}: program {entry['name']} {why}")
    counters = job.programs[0]["counters"]
    alone = job.programs[1]["counters"]
    rtl_dram = job.reads["all"]
    tokens_rtl, logits, kv = read_results(build, rtl_dram)
    from accel.runtime import RunResult

    rtl = RunResult(tokens_rtl, logits, kv, {prefill.name: counters}, rtl_dram,
                    job.wall_seconds)
    macs = sum(i.m * i.k * i.n for i in projections)
    return {
        "hw": hw.name, "l2_bytes": hw.l2_bytes, "model": cfg.name, "tokens": tokens,
        "prefill_chunks": prefill.chunks,
        "rtl_vs_isa": same_dram(build, isa.dram[:base], rtl_dram),
        "rtl_vs_int_bit_exact": compare(rtl, reference_generation(im, prompt, 1))["bit_exact"],
        "prefill_cycles": counters["cycles"], "prefill_macs": counters["array_macs"],
        "prefill_pe_utilisation": round(counters["array_macs"] / (counters["cycles"]
                                                                  * hw.pes), 4),
        "prefill_model_cycles": timing.cycles,
        "prefill_model_error_pct": round(100 * (timing.cycles - counters["cycles"])
                                         / counters["cycles"], 3),
        "prefill_fast_cycles": fast,
        "prefill_fast_error_pct": round(100 * (fast - counters["cycles"]) / counters["cycles"],
                                        3),
        "projection_matmuls": len(projections),
        "projection_modes": {m: sum(1 for i in projections if i.mode == v)
                             for m, v in (("GEMM", 0), ("GEMV", 1))},
        "projection_cycles": alone["cycles"], "projection_macs": alone["array_macs"],
        "projection_pe_utilisation": round(macs / (alone["cycles"] * hw.pes), 4),
        "projection_model_cycles": alone_model.cycles,
        "projection_model_error_pct": round(100 * (alone_model.cycles - alone["cycles"])
                                            / alone["cycles"], 3),
        "sim_seconds": round(job.wall_seconds, 1),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(prog="python -m benchmarks.rtl_prefill",
                            description=__doc__.split("\n\n")[0].rstrip(":"))
    parser.add_argument("--hw", nargs="*", default=["edge-16x16", "edge-8x8"])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--l2", type=int, metavar="BYTES",
                        help="the L2 size of every --hw (default: each preset's)")
    args = parser.parse_args(argv)
    # every configuration checked before the first simulation (each takes minutes)
    from compiler.ir import CompileError
    from sweeps.analytic import prefill_chunks

    for name, value in (("--tokens", args.tokens), ("--layers", args.layers)):
        if value < 1:
            parser.error(f"{name} {value}: must be at least 1")
    cfg = layer_config(args.layers)
    if args.tokens >= cfg.max_seq_len:
        parser.error(f"--tokens {args.tokens}: the model's context is {cfg.max_seq_len}")
    for name in args.hw:
        try:
            hw = hardware(name, args.l2)
        except ValueError as e:
            parser.error(f"--hw {name}" + (f" --l2 {args.l2}" if args.l2 else "") + f": {e}")
        try:
            prefill_chunks(cfg, hw, args.tokens)
        except (CompileError, ValueError) as e:
            parser.error(f"--hw {name}, --tokens {args.tokens}: {e}")
    rows = []
    for hw in args.hw:
        try:
            row = run(hw, args.tokens, args.layers, args.l2)
        except CompileError as e:
            parser.error(f"--hw {hw}" + (f" --l2 {args.l2}" if args.l2 else "") + f": {e}")
        print(json.dumps({"benchmark": "rtl_prefill", **row}), flush=True)
        rows.append(row)
    print(f"{'hw':<11}{'L2 KiB':>7}{'chunks':>8}{'bit-exact':>10}{'prefill cycles':>16}"
          f"{'PE util':>9}{'model err':>10}{'fast err':>10}{'projections':>13}{'PE util':>9}"
          f"{'model err':>10}")
    for r in rows:
        exact = r["rtl_vs_isa"]["bit_exact"] and r["rtl_vs_int_bit_exact"]
        sizes = r["prefill_chunks"]
        chunks = (f"{len(sizes)} x {sizes[0]}" if len(set(sizes)) == 1
                  else " + ".join(map(str, sizes)))
        print(f"{r['hw']:<11}{r['l2_bytes'] // 1024:>7}{chunks:>8}{str(exact):>10}"
              f"{r['prefill_cycles']:>16,}{100 * r['prefill_pe_utilisation']:>8.1f}%"
              f"{r['prefill_model_error_pct']:>9.2f}%{r['prefill_fast_error_pct']:>9.2f}%"
              f"{r['projection_cycles']:>13,}"
              f"{100 * r['projection_pe_utilisation']:>8.1f}%"
              f"{r['projection_model_error_pct']:>9.2f}%")
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.rtl_prefill")
