"""``accel``: the toolkit's one command line, with a subcommand per job.

Each subcommand parses its arguments, calls library code in ``models/``, ``compiler/``,
``rtl/`` or ``sweeps/``, and prints a result. Errors the user can fix (a bad config
field, a missing checkpoint, a prompt that does not fit) are printed as one line naming
the problem, with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models.config import ConfigError
from models.weights import CheckpointError

USER_ERRORS = (ConfigError, CheckpointError, ValueError, FileNotFoundError)


def _cmd_train(args) -> int:
    from models.config import preset
    from models.train import TrainConfig, default_corpus, train

    tc = TrainConfig(corpus=Path(args.corpus or default_corpus()), out_dir=Path(args.out),
                     model=preset(args.model), steps=args.steps, batch_size=args.batch_size,
                     seq_len=args.seq_len, lr=args.lr, seed=args.seed)
    result = train(tc, progress=not args.quiet)
    print(f"validation loss {result['val_loss']:.4f} nats/char; checkpoint in {result['out_dir']}")
    return 0


def _load_eval_inputs(model: str):
    from models.evaluate import build_int_model
    from models.zoo import load_model

    loaded = load_model(model)
    return loaded, build_int_model(loaded)


def _cmd_eval(args) -> int:
    from models.evaluate import evaluate

    loaded, im = _load_eval_inputs(args.model)
    result = evaluate(loaded, im, max_windows=args.max_windows, progress=not args.json)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"model {loaded.cfg.name} ({loaded.source}), held-out tokens: {result.tokens}")
    print(f"  float   perplexity  {result.float_ppl:8.4f}")
    print(f"  integer perplexity  {result.int_ppl:8.4f}   ({100 * (result.ppl_ratio - 1):+.2f}%)")
    print(f"  next-token top-1 agreement (integer vs float): {100 * result.top1_agreement:.2f}%")
    return 0


def _cmd_generate(args) -> int:
    from models.evaluate import generate_float, generate_int

    loaded, im = _load_eval_inputs(args.model)
    if loaded.tokenizer is None:
        raise ValueError(f"{args.model}: this model has no tokenizer to read a text prompt")
    ids = loaded.tokenizer.encode(args.prompt)
    if args.numerics in ("float", "both"):
        out = generate_float(loaded, ids, args.max_new_tokens)
        print(f"[float]   {args.prompt}{loaded.tokenizer.decode(out)}")
    if args.numerics in ("int", "both"):
        out = generate_int(im, ids, args.max_new_tokens)
        print(f"[integer] {args.prompt}{loaded.tokenizer.decode(out)}")
    return 0


def _cmd_demo(args) -> int:
    print("== accel demo: the tiny model, float reference versus the accelerator's integers ==")
    _cmd_eval(argparse.Namespace(model="tiny", max_windows=args.max_windows, json=False))
    print()
    _cmd_generate(argparse.Namespace(model="tiny", prompt="ROMEO:\n", max_new_tokens=120,
                                     numerics="both"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="accel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train the character-level tiny model")
    p.add_argument("--model", default="tiny", help="preset giving the shape (default: tiny)")
    p.add_argument("--corpus", help="training text (default: ../shared/data/tinyshakespeare.txt)")
    p.add_argument("--out", default="build/tiny-train", help="checkpoint folder to write")
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="float vs integer perplexity and top-1 agreement")
    p.add_argument("--model", default="tiny", help="'tiny' or a checkpoint folder")
    p.add_argument("--max-windows", type=int, default=None,
                   help="evaluate only the first N windows of the held-out text")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("generate", help="greedy generation, float and/or integer")
    p.add_argument("--model", default="tiny")
    p.add_argument("--prompt", default="ROMEO:")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--numerics", choices=("float", "int", "both"), default="both")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("demo", help="the main job on built-in defaults")
    p.add_argument("--max-windows", type=int, default=None)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"accel {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"accel {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
