"""How much calibration text the static scales need: the integer model calibrated on
``W`` windows of ``L`` tokens of the training split (``models.evaluate.
calibration_windows``), for each of the sizes compared when the default was chosen, with
its perplexity and top-1 agreement with float on the whole held-out text (``accel
eval``)::

    python -m benchmarks.calibration_size                  # tiny and tiny-bpe
    python -m benchmarks.calibration_size --model tiny-bpe

Static scales are the peaks the float model reaches on the calibration text; activations
beyond them on other text saturate, so more text means fewer saturated activations and
coarser steps. The default (``CALIBRATION_WINDOWS`` x ``CALIBRATION_LEN``) is marked.
"""

from __future__ import annotations

import json

from accel.args import ArgumentParser, run_command

SIZES = ((16, 128), (64, 128), (64, 256), (256, 256))


def run_one(model: str) -> list[dict]:
    from models import evaluate as E
    from models.zoo import load_model

    loaded = load_model(model)
    rows = []
    for windows, length in SIZES:
        r = E.evaluate(loaded, E.build_int_model(loaded, windows=windows, length=length))
        rows.append({"model": model, "windows": windows,
                     "length": min(length, loaded.cfg.max_seq_len),
                     "default": (windows, length) == (E.CALIBRATION_WINDOWS,
                                                     E.CALIBRATION_LEN),
                     "held_out_tokens": r.tokens, "float_ppl": round(r.float_ppl, 3),
                     "int_ppl": round(r.int_ppl, 3),
                     "top1_agreement": round(r.top1_agreement, 4)})
        print(json.dumps({"bench": "calibration_size", **rows[-1]}), flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(prog="python -m benchmarks.calibration_size",
                            description=__doc__.split("\n\n")[0].rstrip(":"))
    parser.add_argument("--model", action="append", default=None,
                        help="a trained model (repeatable; default: tiny and tiny-bpe)")
    args = parser.parse_args(argv)
    rows = [r for model in args.model or ["tiny", "tiny-bpe"] for r in run_one(model)]
    print(f"{'model':<10}{'calibration':>14}{'int ppl':>10}{'top-1':>9}")
    for r in rows:
        size = f"{r['windows']} x {r['length']}"
        print(f"{r['model']:<10}{size:>14}{r['int_ppl']:>10.3f}{r['top1_agreement']:>9.2%}"
              + ("  (default)" if r["default"] else ""))
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.calibration_size")
