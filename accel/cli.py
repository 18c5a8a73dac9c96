"""``accel``: the toolkit's one command line, with a subcommand per job.

Each subcommand parses its arguments, calls library code in ``models/``, ``compiler/``,
``rtl/``, ``sweeps/``, the host runtime (``accel.runtime``) or the verification ladder
(``accel.ladder``), and prints a result; nothing else lives here. Errors the user can
fix (a bad config field, a missing checkpoint, a prompt that does not fit) are printed as
one line naming the problem, with exit status 2, never as a traceback.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from accel.args import (
    ArgumentParser,
    error_message,
    exit_interrupted,
    keep_interrupts,
    out_folder,
    path,
    positive_int,
    scheduler_address,
    user_errors,
)
from models.zoo import DEFAULT_PROMPT, UNTOKENIZED_PROMPT

USER_ERRORS = user_errors()
DEFAULT_NEW_TOKENS = 8          # `accel compile` with weights
#: The presets `accel train` trains (the project's own models, ``models.train``) and the
#: tokenizer each is trained with; the 1B-class presets are read from checkpoints
TRAINABLE = {"tiny": "char", "tiny-bpe": "bpe"}


def _cmd_train(args) -> int:
    import jax

    from models.config import preset
    from models.train import TrainConfig, default_corpus, train

    cfg = preset(args.model)
    tokenizer = TRAINABLE[args.model]
    if args.tokenizer not in (None, tokenizer):
        raise ValueError(f"--tokenizer {args.tokenizer}: --model {args.model} is trained with "
                         f"the {tokenizer} tokenizer (its vocabulary is the tokenizer's)")
    if args.seq_len > cfg.max_seq_len:
        raise ValueError(f"--seq-len {args.seq_len} is longer than {cfg.name}'s context of "
                         f"{cfg.max_seq_len} tokens")
    # a lower bound on a step's memory: the weights' training state (float32 weights,
    # gradients, AdamW's two moments), the windows (int64), the logits and their gradient
    # (float32); past this machine's memory it would swap, not fail (the trainable models
    # are small: the batch is what outgrows it)
    least = 16 * cfg.n_params + args.batch_size * args.seq_len * (8 + 2 * 4 * cfg.vocab_size)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if least > memory:
        raise ValueError(f"--batch-size {args.batch_size} of {args.seq_len}-token windows "
                         f"needs at least {least / 2**30:,.0f} GiB (its logits and their "
                         f"gradient, and the weights' training state), more than this "
                         f"machine's {memory / 2**30:,.0f} GiB")
    tc = TrainConfig(corpus=Path(args.corpus or default_corpus()),
                     out_dir=Path(args.out or f"build/{args.model}-train"),
                     model=cfg, steps=args.steps, batch_size=args.batch_size,
                     seq_len=args.seq_len, lr=args.lr, seed=args.seed,
                     tokenizer=tokenizer)
    if (tc.out_dir / "train_log.json").is_file():
        print(f"{tc.out_dir}: holds a checkpoint, which this run replaces when it first "
              f"saves", file=sys.stderr)
    try:
        result = train(tc, progress=not args.quiet)
    except (jax.errors.JaxRuntimeError, MemoryError) as e:     # JAX's buffers, NumPy's
        if not isinstance(e, MemoryError) and "out of memory" not in str(e).lower() \
                and "RESOURCE_EXHAUSTED" not in str(e):
            raise
        raise ValueError(f"--batch-size {args.batch_size} of {args.seq_len}-token windows "
                         f"does not fit this machine's memory "
                         f"({(str(e) or type(e).__name__).splitlines()[0][:120]}); give a "
                         f"smaller batch") from None
    unit = "char" if tokenizer == "char" else "token"
    print(f"validation loss {result['val_loss']:.4f} nats/{unit} (the best, at step "
          f"{result['best_step']}; the checkpoint holds those weights) in {result['out_dir']}")
    return 0


def _add_weights(p) -> None:
    from arch.isa import WeightFormat

    p.add_argument("--weights", choices=[f.name.lower() for f in WeightFormat], default="int8",
                   help="format of the decoder layers' projection weights: int8, or MXINT4 "
                        "(4-bit elements, a power-of-two scale per 32; docs/numerics.md)")


def _load_eval_inputs(model: str, args=None, weights: str = "int8",
                      need_tokenizer: bool = False, integer: bool = True):
    """The model and its integer model (projection weights in ``weights``; None without
    ``integer``: nothing is calibrated); with ``args``, also the prompt's token ids, read
    before the integer model is calibrated so that a bad prompt is refused at once.
    ``need_tokenizer``: refuse a model without one before loading its weights (a
    preset's are random and large)."""
    from models.evaluate import build_int_model
    from models.integer import check_weight_format
    from models.zoo import TRAINED as TRAINED_MODELS
    from models.zoo import has_tokenizer, load_model, model_config

    cfg = model_config(model)
    check_weight_format(cfg, weights)     # before loading the weights
    if need_tokenizer and not has_tokenizer(model):
        raise ValueError(f"{cfg.name}: evaluation needs a tokenizer and text (a checkpoint "
                         f"folder with tokenizer.json)")
    if args is not None and not isinstance(_prompt_arg(args), list) and not has_tokenizer(model):
        _no_tokenizer(model if Path(model).is_dir() else cfg.name)   # before the weights
    random = model not in TRAINED_MODELS and not Path(model).is_dir()     # load_model's rule
    _phase(cfg, f"loading {cfg.n_params / 1e6:,.0f}M parameters"
           + (" (random: a preset without a checkpoint)" if random else ""))
    loaded = load_model(model)
    ids = None if args is None else _prompt_ids(args, loaded)
    im = None
    if integer:
        _phase(cfg, "calibrating the integer model's scales (compiling the float model first)")
        im = build_int_model(loaded, weights=weights)
    return (loaded, im) if args is None else (loaded, im, ids)


#: Models from this many parameters up say what they are doing before each long phase (a
#: 0.5B preset's calibration is silent for over a minute otherwise); the project's own
#: small models take seconds.
PHASE_PARAMS = 100_000_000


def _phase(cfg, what: str) -> None:
    """One line on stderr, ``MODEL: WHAT ...``, where ``cfg`` is large enough
    (``PHASE_PARAMS``) for the phase to take a while."""
    if cfg.n_params >= PHASE_PARAMS:
        print(f"{cfg.name}: {what} ...", file=sys.stderr, flush=True)


def _kv_compression(args, default_chunk: int = 16):
    """The ``--kv-*`` options as a ``KVCompression`` (None without ``--kv-tolerance``),
    chunks of ``default_chunk`` tokens unless ``--kv-chunk-tokens``; ``ValueError``
    naming the option."""
    from models.integer import KVCompression

    if args.kv_tolerance is None:
        for flag, value in (("--kv-chunk-tokens", args.kv_chunk_tokens),
                            ("--kv-bits", args.kv_bits)):
            if value is not None:
                raise ValueError(f"{flag} needs --kv-tolerance (the compressed KV cache)")
        return None
    try:
        bits = tuple(int(b) for b in ("2,4,8" if args.kv_bits is None
                                      else args.kv_bits).split(","))
    except ValueError:
        raise ValueError(f"--kv-bits {args.kv_bits!r}: widths separated by commas, "
                         f"e.g. 2,4,8") from None
    flags = {"chunk_tokens": "--kv-chunk-tokens", "bits": "--kv-bits",
             "tolerance": "--kv-tolerance"}
    try:
        chunk = default_chunk if args.kv_chunk_tokens is None else args.kv_chunk_tokens
        return KVCompression(chunk_tokens=chunk, bits=bits,
                             tolerance=args.kv_tolerance)
    except ValueError as e:
        field = str(e).split(" ", 1)[0]
        raise ValueError(f"{flags.get(field, field)}: {e}") from None


def _add_kv(p, what: str, chunk_default: str) -> None:
    """The ``--kv-*`` options (``_kv_compression``)."""
    p.add_argument("--kv-tolerance", type=float, default=None, metavar="T",
                   help=f"{what} (int8 steps squared; 32 is the default budget, "
                        f"docs/numerics.md)")
    p.add_argument("--kv-chunk-tokens", type=int, default=None, metavar="N",
                   help=f"tokens a compressed chunk (default {chunk_default})")
    p.add_argument("--kv-bits", default=None, metavar="B,B",
                   help="the widths a chunk may take (default 2,4,8)")


def _cmd_eval(args) -> int:
    from models.evaluate import build_int_model, evaluate, evaluate_kv

    kv = _kv_compression(args)
    loaded, im = _load_eval_inputs(args.model, weights=args.weights, need_tokenizer=True)
    if kv is not None and kv.chunk_tokens >= loaded.cfg.max_seq_len:
        raise ValueError(f"--kv-chunk-tokens {kv.chunk_tokens} is not shorter than "
                         f"{loaded.cfg.name}'s context of {loaded.cfg.max_seq_len} tokens: "
                         f"no query would read a compressed chunk")
    baseline = build_int_model(loaded) if args.weights != "int8" else None
    result = evaluate(loaded, im, max_windows=args.max_windows, progress=not args.json,
                      baseline=baseline)
    kv_result = evaluate_kv(loaded, im, kv, max_windows=args.max_windows) if kv else None
    if args.json:
        out = result.to_dict()
        if kv_result is not None:
            out["kv_compression"] = kv_result.to_dict()
        print(json.dumps(out, indent=2))
        return 0
    w = args.weights
    print(f"model {loaded.cfg.name} ({loaded.source}), held-out tokens: {result.tokens}")
    print(f"  float   perplexity  {result.float_ppl:8.4f}")
    if baseline is not None:
        print(f"  int8    perplexity  {result.baseline_ppl:8.4f}   "
              f"({100 * (result.baseline_ppl / result.float_ppl - 1):+.2f}%)")
    print(f"  {'integer' if w == 'int8' else w:<7} perplexity  {result.int_ppl:8.4f}   "
          f"({100 * (result.ppl_ratio - 1):+.2f}%)")
    print(f"  next-token top-1 agreement ({w} vs float): {100 * result.top1_agreement:.2f}%")
    if baseline is not None:
        print(f"  next-token top-1 agreement ({w} vs int8):  "
              f"{100 * result.top1_agreement_vs_baseline:.2f}%")
    if kv_result is not None:
        r = kv_result
        share = ", ".join(f"int{b} {100 * f:.1f}%" for b, f in r.bits_share.items())
        print(f"  compressed KV cache ({kv.chunk_tokens}-token chunks, tolerance "
              f"{kv.tolerance:g}): {share}; {r.mean_bits:.2f} bits a value, "
              f"{100 * r.kv_bytes_ratio:.1f}% of int8's bytes")
        print(f"  {'integer' if w == 'int8' else w:<7} perplexity, compressed KV  "
              f"{r.kv_ppl:8.4f}   ({100 * (r.kv_ppl / r.int_ppl - 1):+.2f}% over its int8 KV)")
        print(f"  next-token top-1 agreement (compressed vs int8 KV): "
              f"{100 * r.top1_agreement_vs_int8_kv:.2f}%")
    return 0


def _cmd_generate(args) -> int:
    from models.evaluate import generate_float, generate_int

    if args.numerics == "float" and args.weights != "int8":
        raise ValueError(f"--weights {args.weights} is the integer model's; --numerics float "
                         "generates with the float weights (give --numerics int or both)")
    kv = _kv_compression(args)
    if kv is not None and args.numerics == "float":
        raise ValueError("--kv-tolerance compresses the integer model's KV cache; --numerics "
                         "float generates with the float model's (give --numerics int or "
                         "both)")
    loaded, im, ids = _load_eval_inputs(args.model, args, weights=args.weights,
                                        integer=args.numerics != "float")
    if kv is not None and (args.max_new_tokens < 2
                           or kv.chunk_tokens > len(ids) + args.max_new_tokens - 2):
        # a chunk is compressed once its last row is written; decode steps read it after
        raise ValueError(f"--kv-chunk-tokens {kv.chunk_tokens}: a {len(ids)}-token prompt and "
                         f"{args.max_new_tokens} new tokens never read a full chunk back "
                         f"(the decode steps read rows up to {len(ids) + args.max_new_tokens - 2}"
                         f"): nothing would be compressed")
    tok = loaded.tokenizer
    shown = tok.decode(ids) if tok else f"{ids} -> "
    _phase(loaded.cfg, f"generating {args.max_new_tokens} tokens")
    if args.numerics in ("float", "both"):
        out = generate_float(loaded, ids, args.max_new_tokens)
        print(f"[float]   {shown}{tok.decode(out) if tok else out}")
    if args.numerics in ("int", "both"):
        out = generate_int(im, ids, args.max_new_tokens, kv)
        label = "[integer]" if args.weights == "int8" else f"[{args.weights}]"
        if kv is not None:
            label = f"{label[:-1]}, KV tolerance {kv.tolerance:g}]"
        print(f"{label:<9} {shown}{tok.decode(out) if tok else out}")
    return 0


def parse_token_ids(text: str) -> list[int]:
    """``--prompt-ids``: token ids separated by commas or spaces."""
    ids = []
    if not text.strip():
        raise ValueError("--prompt-ids is empty: give at least one token id")
    for item in re.split(r"\s*,\s*|\s+", text.strip()):
        if not item:
            raise ValueError(f"--prompt-ids: {text!r} has an empty id (two commas in a row, "
                             f"or one at an end)")
        if not re.fullmatch(r"[0-9]+", item):     # (int() also reads 1_0 and other digits)
            raise ValueError(f"--prompt-ids: {item!r} is not a token id (give integers "
                             f"separated by commas)")
        ids.append(int(item))
    return ids


def _prompt_arg(args) -> str | list[int] | None:
    """``--prompt`` (text) or ``--prompt-ids`` (token ids), at most one of them."""
    if args.prompt_ids is None:
        return args.prompt
    if args.prompt is not None:
        raise ValueError("give the prompt as text (--prompt) or as token ids "
                         "(--prompt-ids), not both")
    return parse_token_ids(args.prompt_ids)


def _no_tokenizer(who: str):
    raise ValueError(f"{who}: no tokenizer.json to read a text prompt; give "
                     f"the prompt as token ids (--prompt-ids 1,2,3)")


def _prompt_ids(args, loaded) -> list[int]:
    """The prompt as token ids: ``--prompt-ids``, or the text prompt (``DEFAULT_PROMPT``
    when absent) through the model's tokenizer; checked against its vocabulary."""
    from models.zoo import check_prompt_ids

    prompt = _prompt_arg(args)
    if isinstance(prompt, list):
        return check_prompt_ids(prompt, loaded.cfg)
    if loaded.tokenizer is None:
        _no_tokenizer(loaded.source if Path(loaded.source).is_dir() else loaded.cfg.name)
    text = DEFAULT_PROMPT if prompt is None else prompt
    return check_prompt_ids(loaded.tokenizer.encode(text), loaded.cfg)


def _cmd_compile(args) -> int:
    import time

    from arch.hardware import load_hardware
    from compiler.buildfolder import check_build_folder
    from compiler.driver import compile_generation, compile_timing_step
    from models.zoo import model_config

    if args.no_weights and (args.prompt is not None or args.prompt_ids is not None
                            or args.max_new_tokens is not None):
        raise ValueError("--prompt, --prompt-ids and --max-new-tokens need weights: "
                         "--no-weights compiles one decode step (its position: --decode-at)")
    if not args.no_weights and args.decode_at is not None:
        raise ValueError("--decode-at needs --no-weights (with weights, the prompt and "
                         "--max-new-tokens give the steps)")
    hw = load_hardware(args.hw)
    check_build_folder(args.out)            # refused before the compile, not after it
    prefetch = {"on": True, "off": False, None: None}[args.prefetch]
    t0 = time.perf_counter()
    if args.no_weights:
        build = compile_timing_step(model_config(args.model), hw, args.decode_at,
                                    prefetch=prefetch, weights=args.weights)
    else:
        loaded, im, ids = _load_eval_inputs(args.model, args, weights=args.weights)
        max_new = DEFAULT_NEW_TOKENS if args.max_new_tokens is None else args.max_new_tokens
        build = compile_generation(im.cfg, im.qm, hw, ids, max_new, prefetch=prefetch)
    seconds = time.perf_counter() - t0
    extra = ({"tokenizer.json": Path(loaded.source) / "tokenizer.json"}
             if not args.no_weights and loaded.tokenizer is not None else {})
    out = build.save(args.out, extra)
    print(f"compiled {build.cfg.name} for {hw.name} (prefetch {'on' if build.prefetch else 'off'}, "
          f"{build.weights} weights) in {seconds:.1f} s -> {out}")
    for p in build.manifest()["programs"]:
        last = p["start"] + p["n_tokens"] - 1
        print(f"  {p['name']:<12} {p['kind']:<8} tokens {p['start']}..{last}"
              f"  {p['instructions']:>7} instructions  {p['dram_read_bytes']:>12,} B read  "
              f"{p['dram_write_bytes']:>9,} B written")
    return 0


def _print_counters(counters: dict[str, dict[str, int]]) -> None:
    names = [c for c in next(iter(counters.values())) if any(v[c] for v in counters.values())]
    print(f"  {'program':<12}" + "".join(f"{c:>18}" for c in names))
    for prog, values in counters.items():
        print(f"  {prog:<12}" + "".join(f"{values[c]:>18,}" for c in names))


def _cmd_run(args) -> int:
    from accel.runtime import run_build
    from compiler.buildfolder import load_build
    from models.tokenizer import load_tokenizer

    build = load_build(args.build)
    if args.waves and args.sim != "rtl":
        raise ValueError("--waves needs --sim rtl")
    if args.sim == "perf":
        return _print_perf(build)
    result = run_build(build, sim=args.sim, waves=args.waves)
    tok_file = Path(args.build) / "tokenizer.json"
    if tok_file.exists():
        tok = load_tokenizer(tok_file)
        print(f"{tok.decode(build.prompt)}[{tok.decode(result.tokens)}]")
    print(f"generated tokens: {result.tokens}")
    print(f"counters ({args.sim} simulator):")
    _print_counters(result.counters)
    if args.sim == "rtl":
        cycles = sum(c["cycles"] for c in result.counters.values())
        print(f"simulated {cycles:,} cycles in {result.wall_seconds:.1f} s "
              f"({cycles / max(result.wall_seconds, 1e-9):,.0f} cycles/s)")
        if args.waves:
            print(f"FST trace under {Path('build/rtl').resolve()}/*-waves/job-*/")
    return 0


def _print_perf(build) -> int:
    from sweeps.perf import time_build

    timing = time_build(build)
    print(f"performance model: {build.cfg.name} on {build.hw.name} "
          f"(prefetch {'on' if build.prefetch else 'off'}, {build.hw.clock_hz / 1e9:g} GHz, "
          f"{build.weights} weights)")
    _print_counters({name: t.counters() for name, t in timing.programs.items()})
    if not any(p.kind == "prefill" for p in build.programs):     # a lone decode step
        print(f"one decode step: {timing.tpot_s * 1e6:,.1f} us, "
              f"{1 / timing.tpot_s:,.0f} tokens/s")
        return 0
    print(f"time to first token {timing.ttft_s * 1e6:,.1f} us, time per output token "
          f"{timing.tpot_s * 1e6:,.1f} us, {timing.tokens_per_s:,.0f} tokens/s")
    return 0


def _cmd_verify(args) -> int:
    from accel.ladder import failed_rungs, rung1_bar, verify_ladder

    kv = None
    if (args.kv_tolerance, args.kv_chunk_tokens, args.kv_bits) != (None, None, None):
        from arch.hardware import load_hardware

        # the device compresses whole KV blocks: chunks of kv_block_tokens by default
        kv = _kv_compression(args, load_hardware(args.hw).kv_block_tokens)
    report = verify_ladder(args.model, args.hw, _prompt_arg(args), args.max_new_tokens,
                           args.eval_windows, rtl=args.rtl, weights=args.weights,
                           batch=args.batch, kv=kv)
    failed = failed_rungs(report)
    report["failed_rungs"] = failed
    if args.json:
        print(json.dumps(report, indent=2))
        return 1 if failed else 0
    print(f"verification ladder: {report['model']} on {report['hardware']}")
    if "batch" in report:
        b = report["batch"]
        print(f"  {b['sequences']} sequences in one paged KV pool: prompts of "
              f"{b['prompt_tokens']} tokens, {b['new_tokens']} new tokens, "
              f"{b['cached_tokens']} prompt tokens read from shared blocks; "
              f"{len(b['programs'])} programs, at most {b['peak_blocks']} of "
              f"{b['pool_blocks']} blocks in use")
    if "kv_compression" in report:
        k = report["kv_compression"]
        print(f"  compressed KV chunks of {k['chunk_tokens']} tokens at widths {k['bits']}, "
              f"tolerance {k['tolerance']:g}: {k['blocks_compressed']} KV blocks compressed "
              f"by the host, {k['chunked_prefetches']} KV_PREFETCH in CHUNKED format")
    print(f"  {'rung':<38}{'result':<14}detail")
    if "int_vs_float" in report:
        r = report["int_vs_float"]
        min_top1, max_ppl = rung1_bar(report["weights"])
        top1_bar = f"bar {100 * min_top1:.0f}%" if min_top1 is not None else "not judged"
        print(f"  {'1 integer vs float':<38}"
              f"{'FAIL' if 'int_vs_float' in failed else 'pass':<14}"
              f"top-1 agreement {100 * r['top1_agreement']:.2f}% ({top1_bar}), perplexity "
              f"{100 * (r['ppl_ratio'] - 1):+.2f}% (bar {100 * (max_ppl - 1):+.0f}%) "
              f"over {r['tokens']} tokens, {report['weights']} weights")
    else:
        print(f"  {'1 integer vs float':<38}{'not run':<14}no tokenizer: no held-out "
              f"text to judge the weights on")
    for key, label in (("isa_vs_int", "2 ISA sim vs integer (prefetch on)"),
                       ("isa_vs_int_prefetch_off", "2 ISA sim vs integer (prefetch off)")):
        r = report[key]
        print(f"  {label:<38}{'bit-exact' if r['bit_exact'] else 'MISMATCH':<14}"
              f"{r['tokens_compared']} tokens, {r['logit_rows_compared']} logit rows, "
              f"KV cache {'equal' if r['kv_equal'] else 'differs'}")
    if "rtl_vs_isa" in report:
        r, c = report["rtl_vs_isa"], report["rtl"]
        print(f"  {'3 RTL vs ISA sim (prefetch on)':<38}"
              f"{'bit-exact' if r['bit_exact'] else 'MISMATCH':<14}"
              f"{r['bytes_compared']:,} DRAM bytes, {r['l2_bytes_compared']:,} L2 bytes, "
              f"{c['cycles']:,} cycles")
        r = report["perf"]
        print(f"  {'perf model vs RTL cycles (info)':<38}"
              f"{r['error_pct']:+.2f}%{'':<8}{r['cycles']:,} cycles; worst program "
              f"{r['max_abs_error_pct']:.2f}%")
    print("all rungs pass" if not failed else f"FAILED: {', '.join(failed)} (exit status 1)")
    return 1 if failed else 0


def _rtl_params(hw_spec: str):
    from arch.hardware import load_hardware
    from rtl.common import rtl_params

    return rtl_params(load_hardware(hw_spec))


#: The files ``accel rtl verilog`` writes (``rtl.sim.write_verilog``): a folder holding
#: only these is one it wrote, and is written again.
VERILOG_FILES = ("sim_top.v", "sram_macro.v")


def _cmd_rtl(args) -> int:
    if args.action == "verilog":
        from rtl.sim import write_verilog

        out = Path(args.out)
        others = sorted(p.name for p in out.iterdir()
                        if p.name not in VERILOG_FILES) if out.is_dir() else []
        if others:                 # (it wrote beside them, over any of the same name)
            raise ValueError(f"{out}: holds files other than the Verilog this writes "
                             f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); "
                             f"give a new or empty folder")
        files = write_verilog(_rtl_params(args.hw), out)
        print("wrote " + ", ".join(str(f) for f in files))
        return 0
    from rtl.stats import format_table, synth_stats

    stats = synth_stats(_rtl_params(args.hw))
    print(json.dumps(stats, indent=2) if args.json else format_table(stats, args.modules))
    return 0


def _cmd_sweep(args) -> int:
    from sweeps.runner import run_sweep
    from sweeps.spec import load_spec

    spec = load_spec(args.spec)
    summary = run_sweep(spec, args.out, scheduler=args.scheduler, workers=args.workers,
                        fresh=args.fresh, on_start=lambda points: print(
                            f"sweep {args.spec}: {points} design points -> {args.out}/"))
    print(f"{summary['ran']} points run, {summary['skipped']} already finished")
    return _dispatch(["report", "--", args.out])   # (a folder named -x is not an option)


def _cmd_report(args) -> int:
    from sweeps.report import optimum_line, write_report

    findings = write_report(args.out)
    for o in findings["optima"]:
        print(f"  {optimum_line(o)}")
    if findings["infeasible"]:
        n = len(findings["infeasible"])
        print(f"  {n} infeasible point{'s' if n > 1 else ''} (listed in the report)")
    if findings["missing"]:
        print(f"  {findings['missing']} of the spec's points not run yet (an interrupted "
              f"sweep: `accel sweep` again resumes it)")
    if findings["foreign"]:
        print(f"  {findings['foreign']} rows of results.jsonl left out (not points of the "
              f"spec last run)")
    print(f"report: {Path(args.out).resolve() / 'report.html'} (and report.md)")
    return 0


def demo_steps(max_windows: int | None = None) -> list[tuple[str | None, list[str]]]:
    """``accel demo``'s subcommands, each as its command line (a title or ``None``)."""
    windows = [] if max_windows is None else ["--max-windows", str(max_windows)]
    spec = Path(__file__).resolve().parents[1] / "sweeps" / "demo.toml"
    return [
        ("the tiny model, float reference versus the accelerator's integers",
         ["eval", "--model", "tiny", *windows]),
        (None, ["generate", "--model", "tiny", "--prompt", "ROMEO:\n",
                "--max-new-tokens", "120"]),
        ("compile tiny for edge-8x8 and run it on the ISA simulator",
         ["compile", "--model", "tiny", "--hw", "edge-8x8", "--out", "build/tiny"]),
        (None, ["run", "build/tiny", "--sim", "isa"]),
        ("the verification ladder: integer, ISA simulator, RTL, performance model",
         ["verify", "--model", "tiny", "--hw", "edge-8x8", "--rtl"]),
        ("a reduced L2 sweep (sweeps/demo.toml) and its report",
         ["sweep", str(spec), "-o", "build/sweep-demo", "--fresh"]),
    ]


def _cmd_demo(args) -> int:
    status = 0
    for title, argv in demo_steps(args.max_windows):
        print(f"\n== {title} ==" if title else "")
        status |= _dispatch(argv)
    return status


def _dispatch(argv: list[str]) -> int:
    """Run one subcommand as the command line would parse it (its defaults included)."""
    args = build_parser().parse_args(argv)
    return args.func(args)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="accel", description="The edge LLM accelerator toolkit's command line: models, "
        "compiler, simulators, RTL, verification ladder and design-space sweeps.")
    # a command is checked for after the options (``main``): an unknown option before it is
    # named as such, not reported as a missing command
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("train", help="train one of the project's models (tiny, tiny-bpe)")
    p.add_argument("--model", default="tiny", choices=tuple(TRAINABLE),
                   help="the preset giving the shape (default: tiny)")
    p.add_argument("--tokenizer", choices=("char", "bpe"), default=None,
                   help="a character table, or a byte-level BPE trained on the training "
                        "split to the preset's vocab_size: the model's own (tiny: char, "
                        "tiny-bpe: bpe), the default")
    p.add_argument("--corpus", type=path,
                   help="training text (default: ../shared/data/tinyshakespeare.txt)")
    p.add_argument("--out", default=None, type=out_folder,
                   help="checkpoint folder to write (default: build/<model>-train)")
    p.add_argument("--steps", type=positive_int, default=2500)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--seq-len", type=positive_int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="float vs integer perplexity and top-1 agreement")
    p.add_argument("--model", default="tiny", help="'tiny' or a checkpoint folder")
    p.add_argument("--max-windows", type=positive_int, default=None,
                   help="evaluate only the first N windows of the held-out text")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    _add_kv(p, "also evaluate the KV cache compressed chunk by chunk at tolerance T",
            "16")
    _add_weights(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("generate", help="greedy generation, float and/or integer")
    p.add_argument("--model", default="tiny", help="'tiny', a checkpoint folder or a preset")
    p.add_argument("--prompt", default=None, help=f"default: {DEFAULT_PROMPT!r}")
    p.add_argument("--prompt-ids", default=None, metavar="IDS",
                   help="the prompt as token ids, e.g. 1,2,3 (for a model without a tokenizer)")
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--numerics", choices=("float", "int", "both"), default="both")
    _add_weights(p)
    _add_kv(p, "the integer model's KV cache compressed chunk by chunk at tolerance T", "16")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("compile", help="compile a model for a hardware description")
    p.add_argument("--model", default="tiny", help="'tiny', a checkpoint folder or a preset")
    p.add_argument("--hw", default="edge-8x8", help="TOML file or preset name in configs/")
    p.add_argument("--prompt", default=None, help=f"default: {DEFAULT_PROMPT!r}")
    p.add_argument("--prompt-ids", default=None, metavar="IDS",
                   help="the prompt as token ids, e.g. 1,2,3 (for a model without a tokenizer)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help=f"default: {DEFAULT_NEW_TOKENS}")
    p.add_argument("--prefetch", choices=("on", "off"), default=None,
                   help="override the hardware description's prefetch setting")
    p.add_argument("--no-weights", action="store_true",
                   help="compile one decode step without weights (timing only): of a preset "
                        "or of a folder's config.json")
    p.add_argument("--decode-at", type=int, default=None,
                   help="with --no-weights: the decode step's position (default: half the context)")
    p.add_argument("-o", "--out", default="build/tiny", type=out_folder,
                   help="build folder to write")
    _add_weights(p)
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("run", help="run a compiled build on a simulator")
    p.add_argument("build", help="build folder written by `accel compile`")
    p.add_argument("--sim", choices=("isa", "rtl", "perf"), default="isa",
                   help="the ISA simulator, the RTL under Verilator (built once per config), "
                        "or the performance model")
    p.add_argument("--waves", action="store_true", help="with --sim rtl: write an FST trace")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("verify", help="run the verification ladder and print a table")
    p.add_argument("--model", default="tiny", help="'tiny', a checkpoint folder or a preset")
    p.add_argument("--hw", default="edge-8x8")
    p.add_argument("--prompt", default=None,
                   help=f"default: {DEFAULT_PROMPT!r}, or {UNTOKENIZED_PROMPT} as token ids "
                        f"for a model without a tokenizer")
    p.add_argument("--prompt-ids", default=None, metavar="IDS",
                   help="the prompt as token ids, e.g. 1,2,3 (for a model without a tokenizer)")
    p.add_argument("--max-new-tokens", type=positive_int, default=8)
    p.add_argument("--eval-windows", type=positive_int, default=64,
                   help="held-out windows for the integer-vs-float rung")
    p.add_argument("--rtl", action="store_true",
                   help="add rung 3: the RTL under Verilator against the ISA simulator")
    p.add_argument("--batch", type=int, default=1, metavar="B",
                   help="rungs 2 and 3 for B sequences made from the prompt (two sharing a "
                        "prefix) decoded together in one paged KV pool (1, the default: "
                        "the single-sequence ladder)")
    p.add_argument("--json", action="store_true")
    _add_kv(p, "rungs 2 and 3 with the KV cache compressed chunk by chunk at tolerance T: "
               "the host compresses each full KV block, KV_PREFETCH decompresses it",
            "the hardware's kv_block_tokens")
    _add_weights(p)
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("sweep", help="run a design-space sweep (resumable) and its report")
    p.add_argument("spec", help="sweep specification (TOML), e.g. sweeps/l2_size.toml")
    p.add_argument("-o", "--out", required=True, type=out_folder,
                   help="folder for results and the report")
    p.add_argument("--scheduler", default=None, type=scheduler_address,
                   help="a Dask scheduler address (tcp://HOST:PORT); default: local cores")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="local worker processes")
    p.add_argument("--fresh", action="store_true",
                   help="discard the folder's results (needed when they come from another "
                        "spec, workload, hardware file or toolkit version)")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("report", help="figures, report.md and report.html of a sweep folder")
    p.add_argument("out", type=path, help="a folder written by `accel sweep`")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("rtl", help="Verilog of the accelerator, or its synthesis statistics")
    p.add_argument("action", choices=("verilog", "stats"))
    p.add_argument("--hw", default="edge-8x8", help="TOML file or preset name in configs/")
    p.add_argument("-o", "--out", default="build/rtl/verilog", type=out_folder,
                   help="folder for `verilog`")
    p.add_argument("--json", action="store_true", help="`stats` as JSON")
    p.add_argument("--modules", action="store_true",
                   help="`stats`: every submodule by path too (compute.matmul.array, ...)")
    p.set_defaults(func=_cmd_rtl)

    p = sub.add_parser("demo", help="the main job on built-in defaults")
    p.add_argument("--max-windows", type=positive_int, default=None)
    p.set_defaults(func=_cmd_demo)
    parser.commands = tuple(sub.choices)
    return parser


def main(argv: list[str] | None = None) -> int:
    from accel.runtime import RunTimeoutError
    from compiler.buildfolder import RunIntegrityError
    from compiler.semantics import AcceleratorError

    keep_interrupts()
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.error(f"a command is needed: one of {', '.join(parser.commands)} (accel --help)")
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"accel {args.command}: error: {error_message(e)}", file=sys.stderr)
        return 2
    except (AcceleratorError, RunIntegrityError) as e:   # a program the device refused
        print(f"accel {args.command}: the accelerator stopped: {e}", file=sys.stderr)
        return 2
    except RunTimeoutError as e:                         # an RTL run past its cycle limit
        print(f"accel {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        exit_interrupted(f"accel {args.command}")
        raise                                   # (only where it returns: the tests)


if __name__ == "__main__":
    sys.exit(main())
