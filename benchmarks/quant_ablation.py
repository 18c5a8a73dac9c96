"""Which of the integer model's roundings costs its next-token agreement with float: the
float reference with the integer model's roundings simulated (in float, at its calibrated
scales) at every site, at each site alone, and at every site but one; and, as a measure
of how sensitive a model is to any perturbation, the float model with 1% and 2% relative
noise on every weight::

    python -m benchmarks.quant_ablation                    # tiny and tiny-bpe, 24 windows
    python -m benchmarks.quant_ablation --model tiny-bpe --windows 48

Sites (``models.reference.decoder_layer``'s ``site`` hook): ``weights`` (int8 per output
channel, RMSNorm gains and the SwiGLU output's channel scales folded in, as
``integer.quantize``), ``residual`` (int16), ``attn_in``, ``q``/``k`` (before and after
RoPE), ``v``, ``probs`` (7-bit softmax probabilities, max-normalised), ``att``,
``mlp_in``, ``up``, ``mid`` (per channel), ``final_in``: int8 at the calibrated scale,
saturating. The simulation
leaves out the integer model's table lookups (rsqrt, exp2, sigmoid, sine), so "all
sites" lands near, not on, ``accel eval``'s agreement.
"""

from __future__ import annotations

import json

from accel.args import run_command
from benchmarks.int_vs_float import held_out_windows, parse_models

SITES = ("weights", "residual", "attn_in", "q", "k", "v", "probs", "att", "mlp_in", "up",
         "mid", "final_in")


def _rounding(scales, cfg):
    """``site(name, layer, x)`` rounding ``x`` as the integer model does at that site."""
    import jax.numpy as jnp

    from models import numerics as N

    q8, q16 = 2 ** (N.ACT_BITS - 1) - 1, 2 ** (N.RESID_BITS - 1) - 1

    def grid(x, step, qmax, lo=None):
        return jnp.clip(jnp.round(x / step), -qmax if lo is None else lo, qmax) * step

    def site(enabled, name, layer, x):
        if name not in enabled:
            return x
        if name == "residual":
            return grid(x, scales.residual, q16)
        if name == "final_in":
            return grid(x, scales.final_in, q8)
        if name == "probs":    # max-normalised: 127 steps up to the row's maximum
            peak = jnp.max(x, axis=-1, keepdims=True)
            return grid(x, peak / N.PROB_MAX, N.PROB_MAX, lo=0)
        step = scales.layers[layer][name]
        return grid(x, jnp.asarray(step, jnp.float32), q8)
    return site


def _rounded_weights(params, scales):
    """The parameters with RMSNorm gains folded into the weights after them and every
    weight rounded to int8 per output channel (``integer.quantize_weight``)."""
    import numpy as np

    from models.integer import quantize_weight
    from models.reference import lm_head_weight

    def rounded(w, cols=None):
        w = np.asarray(w, np.float64) * (1.0 if cols is None else cols[None, :])
        q, s = quantize_weight(w)
        return (q * s[:, None]).astype(np.float32)

    layers = []
    for p, s in zip(params["layers"], scales.layers, strict=True):
        g1, g2 = np.asarray(p["attn_norm"], np.float64), np.asarray(p["mlp_norm"], np.float64)
        s_mid = np.asarray(s["mid"], np.float64)
        layer = dict(p, attn_norm=np.ones_like(g1, np.float32),
                     mlp_norm=np.ones_like(g2, np.float32),
                     wq=rounded(p["wq"], g1), wk=rounded(p["wk"], g1), wv=rounded(p["wv"], g1),
                     wo=rounded(p["wo"]), w_gate=rounded(p["w_gate"], g2),
                     w_up=rounded(p["w_up"], g2),
                     w_down=(rounded(p["w_down"], s_mid) / s_mid[None, :]).astype(np.float32))
        layers.append(layer)
    gf = np.asarray(params["norm"], np.float64)
    head = rounded(lm_head_weight(params), gf)
    # an LM head of its own even when tied: the embeddings stay int16 (``residual``)
    return dict(params, layers=tuple(layers), norm=np.ones_like(gf, np.float32),
                lm_head=head)


def run_one(model: str, windows: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from models.evaluate import build_int_model
    from models.reference import init_cache, run_with_taps
    from models.zoo import load_model

    loaded = load_model(model)
    cfg, params = loaded.cfg, loaded.params
    scales = build_int_model(loaded).scales
    site = _rounding(scales, cfg)
    rounded = _rounded_weights(params, scales)
    x = held_out_windows(loaded, windows)
    n, length = x.shape

    def logits(p, enabled):
        p = jax.tree.map(jnp.asarray, p)

        def one(t):
            return run_with_taps(p, init_cache(cfg, length), t, 0, cfg,
                                 lambda name, i, v: site(enabled, name, i, v))[0]
        return np.asarray(jax.jit(jax.vmap(one))(x))

    reference = logits(params, frozenset()).argmax(-1)

    def agreement(enabled):
        p = rounded if "weights" in enabled else params
        return round(float((logits(p, frozenset(enabled)).argmax(-1) == reference).mean()), 4)

    rng = np.random.default_rng(0)
    noisy = {}
    for eps in (0.01, 0.02):
        p = jax.tree.map(lambda a, e=eps: np.asarray(a) * (1 + e * rng.standard_normal(
            np.shape(a))).astype(np.float32), params)
        noisy[f"{eps:.0%}"] = round(float((logits(p, frozenset()).argmax(-1)
                                           == reference).mean()), 4)
    return {"model": model, "windows": n, "tokens": int(reference.size),
            "all_sites": agreement(SITES),
            "site_alone": {s: agreement({s}) for s in SITES},
            "all_but_site": {s: agreement(set(SITES) - {s}) for s in SITES},
            "weight_noise": noisy}


def main(argv: list[str] | None = None) -> list[dict]:
    models, windows = parse_models("python -m benchmarks.quant_ablation",
                                   __doc__.split("\n\n")[0].rstrip(":"), 24, argv)
    rows = []
    for model in models:
        row = run_one(model, windows)
        print(json.dumps({"bench": "quant_ablation", **row}), flush=True)
        rows.append(row)
    for r in rows:
        print(f"{r['model']} ({r['tokens']:,} held-out tokens): every site {r['all_sites']:.2%}; "
              f"weight noise 1% {r['weight_noise']['1%']:.2%}, "
              f"2% {r['weight_noise']['2%']:.2%}")
        print(f"  {'site':<10}{'alone':>9}{'all but':>10}")
        for s in SITES:
            print(f"  {s:<10}{r['site_alone'][s]:>9.2%}{r['all_but_site'][s]:>10.2%}")
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.quant_ablation")
