"""The float reference against an independent NumPy forward pass, and its properties."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.config import RopeScaling, rope_inv_freq
from models.reference import decode_step, forward, init_cache, init_params, prefill


def _meta_apply_scaling(freqs, factor, low_freq_factor, high_freq_factor, old_context_len):
    """Llama 3.1's frequency scaling as Meta's reference code writes it (one frequency at a
    time, meta-llama/llama-models ``apply_scaling``): independent of ``rope_inv_freq``."""
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            out.append(freq)
        elif wavelen > low_freq_wavelen:
            out.append(freq / factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (
                high_freq_factor - low_freq_factor)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return out


@pytest.mark.parametrize(("head_dim", "theta"), [(64, 500000.0), (128, 500000.0), (16, 1e4)])
def test_rope_inv_freq_against_independent_computations(head_dim, theta):
    plain = [theta ** (-2 * i / head_dim) for i in range(head_dim // 2)]
    np.testing.assert_allclose(rope_inv_freq(head_dim, theta), plain, rtol=1e-12)
    np.testing.assert_allclose(rope_inv_freq(head_dim, theta, RopeScaling("linear", 4.0)),
                               [f / 4 for f in plain], rtol=1e-12)
    llama3 = RopeScaling("llama3", 32.0, 1.0, 4.0, 8192)
    scaled = rope_inv_freq(head_dim, theta, llama3)
    expected = _meta_apply_scaling(plain, 32.0, 1.0, 4.0, 8192)
    np.testing.assert_allclose(scaled, expected, rtol=1e-12)
    # All three regimes occur at head_dim 64 and 128 with Llama 3's theta.
    if theta == 500000.0:
        ratio = np.asarray(plain) / scaled
        assert ratio[0] == 1 and math.isclose(ratio[-1], 32)
        assert np.any((ratio > 1.01) & (ratio < 31.9))


def numpy_forward(params, tokens, cfg):
    """A from-scratch float64 NumPy Llama forward pass, one head at a time."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    T = len(tokens)
    x = p["embed"][tokens]

    def norm(v, g):
        return v / np.sqrt((v ** 2).mean(-1, keepdims=True) + cfg.norm_eps) * g

    half = cfg.head_dim // 2
    freqs = [cfg.rope_theta ** (-2 * i / cfg.head_dim) for i in range(half)]
    scaling = cfg.rope_scaling
    if scaling is not None and scaling.rope_type == "linear":
        freqs = [f / scaling.factor for f in freqs]
    elif scaling is not None:
        freqs = _meta_apply_scaling(freqs, scaling.factor, scaling.low_freq_factor,
                                    scaling.high_freq_factor,
                                    scaling.original_max_position_embeddings)
    freqs = np.asarray(freqs)
    ang = np.arange(T)[:, None] * freqs[None, :]

    def rot(v):  # v [T, head_dim]
        a, b = v[:, :half], v[:, half:]
        return np.concatenate([a * np.cos(ang) - b * np.sin(ang),
                               b * np.cos(ang) + a * np.sin(ang)], axis=1)

    for layer in p["layers"]:
        h = norm(x, layer["attn_norm"])
        q, k, v = h @ layer["wq"].T, h @ layer["wk"].T, h @ layer["wv"].T
        if cfg.qkv_bias:
            q, k, v = q + layer["bq"], k + layer["bk"], v + layer["bv"]
        heads = []
        for head in range(cfg.n_heads):
            kvh = head // cfg.group_size
            qh = rot(q[:, head * cfg.head_dim:(head + 1) * cfg.head_dim])
            kh = rot(k[:, kvh * cfg.head_dim:(kvh + 1) * cfg.head_dim])
            vh = v[:, kvh * cfg.head_dim:(kvh + 1) * cfg.head_dim]
            s = qh @ kh.T / np.sqrt(cfg.head_dim)
            s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
            w = np.exp(s - s.max(-1, keepdims=True))
            heads.append((w / w.sum(-1, keepdims=True)) @ vh)
        x = x + np.concatenate(heads, axis=1) @ layer["wo"].T
        h = norm(x, layer["mlp_norm"])
        g = h @ layer["w_gate"].T
        x = x + (g / (1 + np.exp(-g)) * (h @ layer["w_up"].T)) @ layer["w_down"].T
    head_w = p["lm_head"] if "lm_head" in p else p["embed"]
    return norm(x, p["norm"]) @ head_w.T


@pytest.mark.parametrize("overrides", [
    {},                                                   # GQA
    {"n_kv_heads": 4},                                    # multi-head attention
    {"n_kv_heads": 1, "tie_embeddings": True},            # multi-query, tied embeddings
    {"qkv_bias": True, "rope_theta": 1e6},                # Qwen2-style
    {"n_heads": 3, "n_kv_heads": 1, "head_dim": 32},      # explicit head_dim: q_dim 96 != 64
    {"rope_scaling": RopeScaling("linear", 4.0)},
    # Llama 3.1's scaling with a short original context, so that all three regimes
    # (kept, divided, interpolated) occur among head_dim 16's eight frequencies
    {"rope_scaling": RopeScaling("llama3", 8.0, 1.0, 4.0, 64), "rope_theta": 500.0},
])
def test_matches_independent_numpy(small_config, overrides):
    cfg = small_config(**overrides)
    params = init_params(cfg, seed=3)
    # Larger weights than the init so that attention is far from uniform.
    params = jax.tree.map(lambda a: a * 4 if a.ndim == 2 else a, params)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, 19)
    ours = np.asarray(forward(params, jnp.asarray(tokens), cfg))
    ref = numpy_forward(params, tokens, cfg)
    np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=2e-4)
    if cfg.rope_scaling is not None:    # the comparison can see the scaling
        unscaled = numpy_forward(params, tokens, cfg.replace(rope_scaling=None))
        assert np.max(np.abs(unscaled - ref)) > 50 * 2e-4


def test_prefill_then_decode_equals_forward(small_config):
    cfg = small_config()
    params = init_params(cfg, seed=1)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, 20))
    full = forward(params, tokens, cfg)
    cache = init_cache(cfg)
    logits, cache = prefill(params, cache, tokens[:7], cfg)
    np.testing.assert_allclose(logits, full[:7], rtol=1e-5, atol=1e-5)
    for pos in range(7, 20):
        step, cache = decode_step(params, cache, tokens[pos], pos, cfg)
        np.testing.assert_allclose(step, full[pos], rtol=1e-5, atol=1e-5)


def test_causal(small_config):
    cfg = small_config()
    params = init_params(cfg, seed=2)
    a = jnp.asarray(np.random.default_rng(2).integers(0, cfg.vocab_size, 16))
    b = a.at[10:].set((a[10:] + 1) % cfg.vocab_size)
    la, lb = forward(params, a, cfg), forward(params, b, cfg)
    np.testing.assert_array_equal(la[:10], lb[:10])
    assert not np.allclose(la[10:], lb[10:])


def test_init_is_deterministic(small_config):
    cfg = small_config()
    a, b = init_params(cfg, seed=5), init_params(cfg, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                    strict=True))
    c = init_params(cfg, seed=6)
    assert not np.array_equal(a["embed"], c["embed"])


def test_the_site_hook_sees_every_quantised_activation(small_config):
    """``run_with_taps``'s ``site`` hook is called at each site the integer model rounds,
    in every layer, with the activation's shape (q and k before and after RoPE, the
    residual after the embedding and after each addition); as the identity it leaves the
    logits as they are, and what it returns is what the model goes on with."""
    from models.reference import run_with_taps

    cfg = small_config(n_layers=2)
    params = init_params(cfg, seed=3)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, 9))
    seen = []

    def record(name, layer, x):
        seen.append((name, layer, tuple(x.shape)))
        return x

    logits = run_with_taps(params, init_cache(cfg, 9), tokens, 0, cfg, record)[0]
    np.testing.assert_array_equal(logits, forward(params, tokens, cfg))
    T, H = 9, cfg.head_dim
    per_layer = [("attn_in", (T, cfg.d_model)), ("q", (T, cfg.n_heads, H)),
                 ("k", (T, cfg.n_kv_heads, H)), ("v", (T, cfg.n_kv_heads, H)),
                 ("q", (T, cfg.n_heads, H)), ("k", (T, cfg.n_kv_heads, H)),
                 ("probs", (cfg.n_kv_heads, cfg.n_heads // cfg.n_kv_heads, T, T)),
                 ("att", (T, cfg.q_dim)), ("residual", (T, cfg.d_model)),
                 ("mlp_in", (T, cfg.d_model)), ("up", (T, cfg.d_ff)), ("mid", (T, cfg.d_ff)),
                 ("residual", (T, cfg.d_model))]
    assert seen == ([("residual", 0, (T, cfg.d_model))]
                    + [(n, i, s) for i in range(2) for n, s in per_layer]
                    + [("final_in", 2, (T, cfg.d_model))])
    zeroed = run_with_taps(params, init_cache(cfg, 9), tokens, 0, cfg,
                           lambda n, i, x: x * 0 if n == "mid" else x)[0]
    assert not np.allclose(zeroed, logits)
