"""Accuracy against KV memory for chunk-wise KV compression (``integer.KVCompression``): the
integer model with its cache compressed, each held-out window decoded as token by token,
against the same model with its int8 cache (``models.evaluate.evaluate_kv``)::

    python -m benchmarks.kv_compression                    # tiny and tiny-bpe, all windows
    python -m benchmarks.kv_compression --model tiny --windows 32

Budgets: every chunk at int8, at int4 and at int2 (one width), then the tolerance-aware
choice among int2, int4 and int8 at tolerances 8 to 128 (int8 steps squared for a channel
of average sensitivity), and at the default tolerance without the channels' sensitivity
weights (every channel the same tolerance), to show what the weights buy. Printed for
each: the share of channel groups at each width, bits a value (codes only), the KV
bytes (codes and a header byte a group) against int8, the KV bytes the last decode step
of a window reads (its own chunk still int8), perplexity with the int8 and the
compressed cache, and their top-1 agreement.
"""

from __future__ import annotations

import json

from accel.args import ArgumentParser, run_command

TOLERANCES = (8.0, 16.0, 32.0, 64.0, 128.0)


def budgets():
    from models.integer import KVCompression

    rows = [("int8", KVCompression(bits=(8,)), True), ("int4", KVCompression(bits=(4,)), True),
            ("int2", KVCompression(bits=(2,)), True)]
    rows += [(f"tolerance {t:g}", KVCompression(tolerance=t), True) for t in TOLERANCES]
    default = KVCompression()
    rows.append((f"tolerance {default.tolerance:g}, unweighted", default, False))
    return rows


def unweighted(qm):
    """``qm`` with every KV channel of average sensitivity."""
    import numpy as np

    from models.integer import KV_SENS_ONE

    layers = tuple({**ql, "kv_sens": {k: np.full_like(v, KV_SENS_ONE)
                                      for k, v in ql["kv_sens"].items()}}
                   for ql in qm["layers"])
    return {**qm, "layers": layers}


def run_one(model: str, windows: int | None) -> list[dict]:
    from dataclasses import replace

    from models import evaluate as E
    from models.zoo import load_model

    loaded = load_model(model)
    im = E.build_int_model(loaded)
    cfg = loaded.cfg
    rows = []
    for name, kv, weighted in budgets():
        r = E.evaluate_kv(loaded, im if weighted else replace(im, qm=unweighted(im.qm)), kv,
                          max_windows=windows)
        plain = 2 * cfg.n_layers * cfg.max_seq_len * cfg.kv_dim      # int8, no headers
        rows.append({"model": model, "budget": name, **r.to_dict(),
                     "kv_bytes_per_decode_step": r.decode_step_bytes(cfg, cfg.max_seq_len - 1),
                     "int8_kv_bytes_per_decode_step": plain})
        print(json.dumps({"bench": "kv_compression", **rows[-1]}), flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(prog="python -m benchmarks.kv_compression",
                            description=__doc__.split("\n\n")[0].rstrip(":"))
    parser.add_argument("--model", action="append", default=None,
                        help="a trained model (repeatable; default: tiny and tiny-bpe)")
    parser.add_argument("--windows", type=int, default=None,
                        help="held-out windows (default: all)")
    args = parser.parse_args(argv)
    if args.windows is not None and args.windows < 1:
        parser.error(f"--windows must be at least 1, not {args.windows}")
    from models.zoo import has_tokenizer
    for m in args.model or []:
        try:
            ok = has_tokenizer(m)
        except ValueError as e:
            parser.error(str(e))
        if not ok:
            parser.error(f"--model {m}: held-out evaluation needs a trained model with a "
                         f"tokenizer (tiny, tiny-bpe or a checkpoint folder)")
    rows = [r for m in args.model or ["tiny", "tiny-bpe"] for r in run_one(m, args.windows)]
    for m in dict.fromkeys(r["model"] for r in rows):
        plain = next(r for r in rows if r["model"] == m)["int8_kv_bytes_per_decode_step"]
        print(f"{m}: the last decode step of a window reads {plain:,} bytes of plain int8 KV")
    print(f"{'model':<10}{'budget':<30}{'int2/4/8 share':>18}{'bits':>6}{'bytes':>7}"
          f"{'step bytes':>11}{'ppl int8 KV':>13}{'ppl':>9}{'top-1':>8}")
    for r in rows:
        share = "/".join(f"{r['bits_share'].get(str(b), 0.0):.0%}" for b in (2, 4, 8))
        print(f"{r['model']:<10}{r['budget']:<30}{share:>18}{r['mean_bits']:>6.2f}"
              f"{r['kv_bytes_ratio']:>7.1%}{r['kv_bytes_per_decode_step']:>11,}"
              f"{r['int_ppl']:>13.3f}{r['kv_ppl']:>9.3f}{r['top1_agreement_vs_int8_kv']:>8.2%}")
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.kv_compression")
