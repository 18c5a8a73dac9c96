"""Float reference of a Llama-family decoder in JAX (rung 0 of the verification ladder).

Contract
--------
Pure functions over a parameter pytree (``Params``: plain dicts and tuples of arrays):

* ``init_params(cfg, seed)`` – deterministic random weights for any config;
* ``forward(params, tokens_T, cfg)`` – causal logits for a whole sequence;
* ``init_cache(cfg, max_len)``, ``prefill(params, cache, tokens_T, cfg)`` and
  ``decode_step(params, cache, token, pos, cfg)`` – generation with an explicit KV cache
  that the functions take and return. Prefill of a prompt followed by decode steps gives
  the same logits as ``forward`` over the same tokens.

Weights are kept in Hugging Face orientation, ``(out_features, in_features)``, so a
projection is ``x @ W.T``; the names mirror ``weights.py``'s mapping to the HF layout.
RoPE follows the HF Llama ``rotate_half`` convention (pairs ``i`` and ``i + head_dim/2``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig

Params = dict


def init_params(cfg: ModelConfig, seed: int = 0, dtype=jnp.float32) -> Params:
    """Deterministic random weights: N(0, 0.02) projections, unit RMSNorm gains."""
    shapes = layer_shapes(cfg)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 4 + cfg.n_layers * len(shapes)))

    def normal(shape, std=0.02):
        return (std * jax.random.normal(next(keys), shape)).astype(dtype)

    layers = []
    for _ in range(cfg.n_layers):
        layer = {}
        for name, shape in shapes.items():
            if name.endswith("_norm"):
                layer[name] = jnp.ones(shape, dtype)
            elif name.startswith("b"):
                layer[name] = normal(shape)
            else:
                # Output projections scaled down, as in GPT-2 style init.
                std = 0.02 / np.sqrt(2 * cfg.n_layers) if name in ("wo", "w_down") else 0.02
                layer[name] = normal(shape, std)
        layers.append(layer)
    params = {"embed": normal((cfg.vocab_size, cfg.d_model)), "layers": tuple(layers),
              "norm": jnp.ones((cfg.d_model,), dtype)}
    if not cfg.tie_embeddings:
        params["lm_head"] = normal((cfg.vocab_size, cfg.d_model))
    return params


def layer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of one decoder layer's parameters, by their pytree names."""
    shapes = {
        "attn_norm": (cfg.d_model,),
        "wq": (cfg.q_dim, cfg.d_model),
        "wk": (cfg.kv_dim, cfg.d_model),
        "wv": (cfg.kv_dim, cfg.d_model),
        "wo": (cfg.d_model, cfg.q_dim),
        "mlp_norm": (cfg.d_model,),
        "w_gate": (cfg.d_ff, cfg.d_model),
        "w_up": (cfg.d_ff, cfg.d_model),
        "w_down": (cfg.d_model, cfg.d_ff),
    }
    if cfg.qkv_bias:
        shapes.update(bq=(cfg.q_dim,), bk=(cfg.kv_dim,), bv=(cfg.kv_dim,))
    return shapes


def lm_head_weight(params: Params) -> jax.Array:
    return params["lm_head"] if "lm_head" in params else params["embed"]


# -- building blocks --------------------------------------------------------------------

def rms_norm(x, weight, eps):
    x32 = x.astype(jnp.float32)
    inv = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return x32 * inv * weight


def rope_cos_sin(positions_T, inv_freq_H2):
    """cos and sin of the RoPE angles, each ``[T, head_dim/2]``, from the inverse
    frequencies ``cfg.rope_inv_freq`` (radians per position)."""
    angles = positions_T[:, None].astype(jnp.float32) * jnp.asarray(inv_freq_H2, jnp.float32)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x_TxNxH, cos_TxH2, sin_TxH2):
    half = x_TxNxH.shape[-1] // 2
    x1, x2 = x_TxNxH[..., :half], x_TxNxH[..., half:]
    c, s = cos_TxH2[:, None, :], sin_TxH2[:, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def _no_site(name, layer, x):
    return x


def attend(q_TxNxH, k_SxKxH, v_SxKxH, q_pos_T, cfg: ModelConfig, site=_no_site, layer=0):
    """Grouped-query attention of T queries over S cached keys; key j is visible to the
    query at position p when j <= p. ``site`` sees the probabilities (``"probs"``)."""
    T, S = q_TxNxH.shape[0], k_SxKxH.shape[0]
    q = q_TxNxH.reshape(T, cfg.n_kv_heads, cfg.group_size, cfg.head_dim)
    scores = jnp.einsum("tkgh,skh->kgts", q, k_SxKxH) / np.sqrt(cfg.head_dim)
    visible_TxS = jnp.arange(S)[None, :] <= q_pos_T[:, None]
    scores = jnp.where(visible_TxS[None, None], scores, -jnp.inf)
    probs = site("probs", layer, jax.nn.softmax(scores, axis=-1))
    out = jnp.einsum("kgts,skh->tkgh", probs, v_SxKxH)
    return out.reshape(T, cfg.q_dim)


def decoder_layer(layer: Params, x_TxD, cache_k, cache_v, start, cfg: ModelConfig,
                  site=_no_site, index: int = 0):
    """One decoder layer on T new tokens at positions ``start..start+T-1``.

    ``cache_k``/``cache_v`` are this layer's ``[S, n_kv_heads, head_dim]`` caches; the new
    keys and values are written at ``start`` and the updated caches returned, with a dict
    of intermediate activations (``taps``) that calibration reads; jit drops it otherwise.
    RMSNorm taps are taken before the gain, which the integer model folds into weights.
    ``site(name, index, x)`` may replace the activation at each site the integer model
    quantises (``residual``, ``attn_in``, ``q``, ``k``, ``v``, ``probs``, ``att``,
    ``mlp_in``, ``up``, ``mid``): the identity by default; ``benchmarks.quant_ablation``
    rounds them as the integer model does, one site at a time.
    """
    taps = {}
    T = x_TxD.shape[0]
    positions = start + jnp.arange(T)
    with jax.named_scope("attention"):
        taps["residual_in"] = x_TxD
        taps["attn_in"] = rms_norm(x_TxD, 1.0, cfg.norm_eps)
        xn = site("attn_in", index, taps["attn_in"]) * layer["attn_norm"]
        q, k, v = xn @ layer["wq"].T, xn @ layer["wk"].T, xn @ layer["wv"].T
        if cfg.qkv_bias:
            q, k, v = q + layer["bq"], k + layer["bk"], v + layer["bv"]
        q = site("q", index, q.reshape(T, cfg.n_heads, cfg.head_dim))
        k = site("k", index, k.reshape(T, cfg.n_kv_heads, cfg.head_dim))
        v = site("v", index, v.reshape(T, cfg.n_kv_heads, cfg.head_dim))
        cos, sin = rope_cos_sin(positions, cfg.rope_inv_freq)
        taps["q_pre"], taps["k_pre"], taps["v"] = q, k, v
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k = site("q", index, q), site("k", index, k)
        taps["q"], taps["k"] = q, k
        cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), (start, 0, 0))
        cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), (start, 0, 0))
        taps["att"] = att = site("att", index, attend(q, cache_k, cache_v, positions, cfg,
                                                      site, index))
        x_TxD = site("residual", index, x_TxD + att @ layer["wo"].T)
    with jax.named_scope("mlp"):
        taps["residual_mid"] = x_TxD
        taps["mlp_in"] = rms_norm(x_TxD, 1.0, cfg.norm_eps)
        xn = site("mlp_in", index, taps["mlp_in"]) * layer["mlp_norm"]
        taps["gate"] = gate = xn @ layer["w_gate"].T
        taps["up"] = up = site("up", index, xn @ layer["w_up"].T)
        taps["mid"] = hidden = site("mid", index, jax.nn.silu(gate) * up)
        x_TxD = site("residual", index, x_TxD + hidden @ layer["w_down"].T)
    return x_TxD, cache_k, cache_v, taps


# -- whole model --------------------------------------------------------------------------

def init_cache(cfg: ModelConfig, max_len: int | None = None, dtype=jnp.float32) -> dict:
    """An empty KV cache: ``k`` and ``v`` of shape ``[n_layers, max_len, n_kv_heads, head_dim]``."""
    max_len = cfg.max_seq_len if max_len is None else max_len
    shape = (cfg.n_layers, max_len, cfg.n_kv_heads, cfg.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def run_with_taps(params: Params, cache: dict, tokens_T, start, cfg: ModelConfig,
                  site=_no_site):
    """``run`` that also returns every layer's taps and the final ones (for calibration);
    ``site`` as in ``decoder_layer`` (the embeddings are ``residual`` of layer 0, the
    final RMSNorm's output ``final_in`` of layer ``n_layers``)."""
    x = site("residual", 0, params["embed"][tokens_T].astype(jnp.float32))
    ks, vs, layer_taps = [], [], []
    for i, layer in enumerate(params["layers"]):
        with jax.named_scope(f"layer{i}"):
            x, k, v, taps = decoder_layer(layer, x, cache["k"][i], cache["v"][i], start, cfg,
                                          site, i)
        ks.append(k)
        vs.append(v)
        layer_taps.append(taps)
    final = {"residual_out": x, "final_in": rms_norm(x, 1.0, cfg.norm_eps)}
    xf = site("final_in", len(params["layers"]), final["final_in"])
    logits = (xf * params["norm"]) @ lm_head_weight(params).T
    final["logits"] = logits
    return logits, {"k": jnp.stack(ks), "v": jnp.stack(vs)}, layer_taps, final


def run(params: Params, cache: dict, tokens_T, start, cfg: ModelConfig):
    """Logits ``[T, vocab]`` for tokens at positions ``start..``, and the updated cache."""
    logits, cache, _, _ = run_with_taps(params, cache, tokens_T, start, cfg)
    return logits, cache


def forward(params: Params, tokens_T, cfg: ModelConfig):
    """Causal logits ``[T, vocab]`` of a whole sequence (no cache kept)."""
    cache = init_cache(cfg, tokens_T.shape[0])
    logits, _ = run(params, cache, tokens_T, 0, cfg)
    return logits


def prefill(params: Params, cache: dict, tokens_T, cfg: ModelConfig):
    """Process a prompt from position 0: logits ``[T, vocab]`` and the filled cache."""
    return run(params, cache, tokens_T, 0, cfg)


def decode_step(params: Params, cache: dict, token, pos, cfg: ModelConfig):
    """One token at position ``pos``: logits ``[vocab]`` and the updated cache."""
    logits, cache = run(params, cache, jnp.reshape(token, (1,)), pos, cfg)
    return logits[0], cache
