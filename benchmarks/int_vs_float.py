"""Where the integer model's next-token choice departs from float's, on the held-out text:
top-1 agreement, the mean |integer - float| logit, the float margin between the two
tokens where they disagree, and how often float's own top-2 margin is small. Separates
the integer path's error from the model's entropy (a flatter next-token distribution
turns the same error into more flips)::

    python -m benchmarks.int_vs_float                  # tiny and tiny-bpe, 48 windows
    python -m benchmarks.int_vs_float --model tiny-bpe --windows 170
"""

from __future__ import annotations

import json

from accel.args import ArgumentParser, run_command


def held_out_windows(loaded, windows: int):
    """The first ``windows`` windows of the held-out text as ``accel eval`` reads them
    (``models.evaluate.held_out_windows``): int32 ``[n, max_seq_len]``."""
    import jax.numpy as jnp

    from models.evaluate import held_out_windows as windows_of

    return jnp.asarray(windows_of(loaded, max_windows=windows)[0])


def parse_models(prog: str, description: str, windows: int, argv: list[str] | None):
    """``--model`` (repeatable; default tiny and tiny-bpe) and ``--windows``."""
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--model", action="append", default=None,
                        help="a trained model (repeatable; default: tiny and tiny-bpe)")
    parser.add_argument("--windows", type=int, default=windows)
    args = parser.parse_args(argv)
    return args.model or ["tiny", "tiny-bpe"], args.windows


def run_one(model: str, windows: int) -> dict:
    import numpy as np

    from models.evaluate import _float_logits, build_int_model
    from models.integer import int_forward
    from models.zoo import load_model

    loaded = load_model(model)
    im = build_int_model(loaded)
    x = held_out_windows(loaded, windows)
    n = x.shape[0]
    fl = np.asarray(_float_logits(loaded.params, x, loaded.cfg), np.float64)
    il = np.asarray(int_forward(im.qm, x, im.cfg), np.float64) * im.scales.logits
    f_top, i_top = fl.argmax(-1), il.argmax(-1)
    disagree = f_top != i_top
    top2 = np.sort(fl, axis=-1)[..., -2:]
    margin = top2[..., 1] - top2[..., 0]
    lost = (np.take_along_axis(fl, f_top[..., None], -1)
            - np.take_along_axis(fl, i_top[..., None], -1))[..., 0]
    return {"model": model, "windows": n, "tokens": int(f_top.size),
            "top1_agreement": round(float(1 - disagree.mean()), 4),
            "mean_abs_logit_error": round(float(np.abs(il - fl).mean()), 4),
            "float_logit_std": round(float(fl.std()), 3),
            "disagreement_float_margin_median": round(float(np.median(lost[disagree])), 4),
            "float_top2_margin_below_0.1": round(float((margin < 0.1).mean()), 4)}


def main(argv: list[str] | None = None) -> None:
    models, windows = parse_models("python -m benchmarks.int_vs_float",
                                   __doc__.split("\n\n")[0].rstrip(":"), 48, argv)
    for model in models:
        print(json.dumps({"bench": "int_vs_float", **run_one(model, windows)}), flush=True)


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.int_vs_float")
