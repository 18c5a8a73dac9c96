"""The float reference against an independent NumPy forward pass, and its properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.reference import decode_step, forward, init_cache, init_params, prefill


def numpy_forward(params, tokens, cfg):
    """A from-scratch float64 NumPy Llama forward pass, one head at a time."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    T = len(tokens)
    x = p["embed"][tokens]

    def norm(v, g):
        return v / np.sqrt((v ** 2).mean(-1, keepdims=True) + cfg.norm_eps) * g

    half = cfg.head_dim // 2
    freqs = cfg.rope_theta ** (-np.arange(half) * 2.0 / cfg.head_dim)
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
