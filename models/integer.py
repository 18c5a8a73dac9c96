"""Integer reference of the model: what the accelerator computes (rung 1 of the ladder).

Contract
--------
* ``calibrate(params, cfg, windows)`` runs the float reference on calibration text and
  returns ``Scales``: the static scale of every activation site.
* ``quantize(params, cfg, scales)`` returns a ``QuantModel``: int8 weights (symmetric,
  per output channel, RMSNorm gains folded in), int16 embeddings, int32 biases and every
  requantisation constant as integer ``(mult, shift)`` pairs. After this point nothing
  is floating point.
* ``int_prefill``, ``int_decode_step`` and ``int_forward`` mirror the float reference's
  functions. They return int16 logits (one common scale, ``scales.logits``) and an int8
  KV cache. All arithmetic is in ``models.numerics``; they run under
  ``jax.enable_x64`` because requantisation products are 64 bits wide.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from arch.isa import WeightFormat
from models import numerics as N
from models.config import ModelConfig
from models.reference import Params, init_cache, lm_head_weight, run_with_taps

QuantModel = dict

RESIDUAL_HEADROOM = 2.0   # the int16 residual covers twice the calibrated peak
LOGIT_HEADROOM = 1.25     # the int16 logits cover 1.25x the calibrated peak


@dataclass(frozen=True)
class Scales:
    """Real value of one integer step at each activation site (static, calibrated)."""

    residual: float
    # per layer, each site's scale ("mid" per channel) and "q_ms", the mean squared query
    # per KV channel (float units), from which ``kv_sensitivity`` weighs the keys
    layers: tuple[dict[str, float | list[float]], ...]
    final_in: float
    logits: float

    def to_dict(self) -> dict:
        return {"residual": self.residual, "layers": [dict(x) for x in self.layers],
                "final_in": self.final_in, "logits": self.logits}

    @classmethod
    def from_dict(cls, d: dict) -> Scales:
        return cls(residual=d["residual"], layers=tuple(dict(x) for x in d["layers"]),
                   final_in=d["final_in"], logits=d["logits"])


LAYER_SITES = ("attn_in", "q", "k", "v", "att", "mlp_in", "up", "mid")


def calibrate(params: Params, cfg: ModelConfig, windows_BxT) -> Scales:
    """Static scales from the peak magnitudes the float model reaches on ``windows``."""

    @jax.jit
    def peaks(tokens_T):
        cache = init_cache(cfg, tokens_T.shape[0])
        _, _, layer_taps, final = run_with_taps(params, cache, tokens_T, 0, cfg)
        amax = lambda *xs: jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in xs]))  # noqa: E731
        layers = []
        resid = [final["residual_out"]]
        for t in layer_taps:
            layers.append({
                "attn_in": amax(t["attn_in"]), "q": amax(t["q_pre"], t["q"]),
                "k": amax(t["k_pre"], t["k"]), "v": amax(t["v"]), "att": amax(t["att"]),
                "mlp_in": amax(t["mlp_in"]), "up": amax(t["up"]),
                "mid": jnp.max(jnp.abs(t["mid"]), axis=0),            # per channel
                # mean squared query per KV channel, over the heads that read it
                "q_ms": jnp.mean(jnp.square(t["q"]), axis=0).reshape(
                    cfg.n_kv_heads, -1, cfg.head_dim).sum(axis=1).reshape(-1),
            })
            resid += [t["residual_in"], t["residual_mid"]]
        return {"residual": amax(*resid), "layers": layers,
                "final_in": amax(final["final_in"]), "logits": amax(final["logits"])}

    stats = [jax.tree.map(np.asarray, peaks(jnp.asarray(w))) for w in np.asarray(windows_BxT)]
    peak = jax.tree.map(lambda *xs: np.max(np.stack(xs), axis=0), *stats)
    for i, layer in enumerate(peak["layers"]):
        layer["q_ms"] = np.mean([st["layers"][i]["q_ms"] for st in stats], axis=0)
    qmax8 = 2 ** (N.ACT_BITS - 1) - 1
    qmax16 = 2 ** (N.RESID_BITS - 1) - 1

    def site_scale(site, v):
        if site == "q_ms":  # not a scale: KV compression's key sensitivity (kv_sensitivity)
            return [float(x) for x in v]
        if site == "mid":   # per channel; dead channels floored at 1e-3 of the layer's peak
            v = np.maximum(v, 1e-3 * max(float(v.max()), 1e-8))
            return [float(x) / qmax8 for x in v]
        return max(float(v), 1e-8) / qmax8

    return Scales(
        residual=RESIDUAL_HEADROOM * float(peak["residual"]) / qmax16,
        layers=tuple({site: site_scale(site, v) for site, v in layer.items()}
                     for layer in peak["layers"]),
        final_in=float(peak["final_in"]) / qmax8,
        logits=LOGIT_HEADROOM * float(peak["logits"]) / qmax16,
    )


def quantize_weight(w_NxK: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8: ``(w_q, scale)`` with ``w ~= w_q * scale[:, None]``."""
    w = np.asarray(w_NxK, np.float64)
    amax = np.max(np.abs(w), axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    return np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int8), scale


def quantize_weight_mxint4(w_NxK: np.ndarray, name: str = "weight") -> tuple[dict, np.ndarray]:
    """MXINT4 (``numerics.mx_matmul``): ``({"elems", "shifts", "base"}, scale)`` with
    ``w ~= elems * 2**shifts[:, block] * scale[:, None]`` and ``scale = 2**(base - 127)``.

    ``elems[N, K]`` int8 in ``[-8, 7]``; ``shifts[N, B]`` int8 in ``[0, 7]``; ``base[N]``
    uint8, the channel's floor in E8M0: its largest block exponent less ``MX_SHIFT_MAX``
    (a block's E8M0 exponent is ``base + shift``). Each block's exponent is the one of
    ``e0 - 1, e0, e0 + 1`` (``e0 = ceil(log2(amax / 7))``, the smallest with
    ``amax / 2**e0 <= 7``) whose round-to-nearest elements give the least squared error, so
    the block's RMS error is at most ``2**(e0 - 1) < amax / 7``; blocks more than
    ``MX_SHIFT_MAX`` below the channel's largest exponent are raised to the channel's
    floor (their steps are then ``2**-7`` of the channel's largest block scale).
    ``ValueError`` naming ``name`` when ``K > MX_MAX_K`` or a scale falls outside E8M0's
    range.
    """
    w = np.asarray(w_NxK, np.float64)
    n, k = w.shape
    if k > N.MX_MAX_K:
        raise ValueError(f"{name}: reduction length {k} exceeds {N.MX_MAX_K}, the longest "
                         "an MXINT4 matmul accumulates exactly in int32")
    blocks = N.mx_blocks(k)
    wb = np.pad(w, ((0, 0), (0, blocks * N.MX_BLOCK - k))).reshape(n, blocks, N.MX_BLOCK)
    lo, hi = -(1 << (N.MX_ELEM_BITS - 1)), (1 << (N.MX_ELEM_BITS - 1)) - 1
    amax = np.abs(wb).max(axis=-1)
    nonzero = amax > 0
    e0 = np.ceil(np.log2(np.where(nonzero, amax, 1.0) / hi))

    def sse(e):
        q = np.clip(np.round(wb / np.exp2(e)[..., None]), lo, hi)
        return ((q * np.exp2(e)[..., None] - wb) ** 2).sum(-1)
    cands = np.stack([e0, e0 - 1, e0 + 1])
    e = np.take_along_axis(cands, np.argmin(np.stack([sse(c) for c in cands]), 0)[None], 0)[0]
    top = np.max(np.where(nonzero, e, -np.inf), axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    base = top - N.MX_SHIFT_MAX
    e = np.maximum(np.where(nonzero, e, base), base)
    if np.any(base + N.MX_EXP_BIAS < 0) or np.any(top + N.MX_EXP_BIAS > 254):
        raise ValueError(f"{name}: block scales outside E8M0's range 2**-127 .. 2**127")
    elems = np.clip(np.round(wb / np.exp2(e)[..., None]), lo, hi).reshape(n, -1)[:, :k]
    shifts = (e - base).astype(np.int8)
    mx = {"elems": elems.astype(np.int8), "shifts": shifts,
          "base": (base[:, 0] + N.MX_EXP_BIAS).astype(np.uint8)}
    return mx, np.exp2(base[:, 0])


def mx_dequantize(mx: dict) -> np.ndarray:
    """The real weights ``[N, K]`` of ``quantize_weight_mxint4``'s first result."""
    elems = np.asarray(mx["elems"], np.float64)
    k = elems.shape[1]
    step = np.exp2(np.asarray(mx["shifts"], np.float64)
                   + np.asarray(mx["base"], np.float64)[:, None] - N.MX_EXP_BIAS)
    return elems * np.repeat(step, N.MX_BLOCK, axis=1)[:, :k]


# The projection weights' formats, by the ISA's names (``arch.isa.WeightFormat``).
WEIGHT_FORMATS = tuple(f.name.lower() for f in WeightFormat)


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def projection_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """The decoder layers' projection weights (``PROJECTIONS``, the ones ``quantize``
    stores in the chosen format), by Hugging Face name: ``(out, in)`` shapes."""
    return {name: shape for name, shape in cfg.param_shapes().items()
            if len(shape) == 2 and name.split(".")[-2] in PROJECTIONS}


def check_weight_format(cfg: ModelConfig, weights: str) -> None:
    """``ValueError`` unless ``weights`` is a format (``WEIGHT_FORMATS``) this model's
    projections can take: MXINT4 needs every reduction within ``MX_MAX_K`` (the message
    names the projection). What ``quant_struct``, the fast path and sweep specs check
    before any work; ``quantize`` checks each tensor as it quantises it."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weight format {weights!r} is not one of {', '.join(WEIGHT_FORMATS)}")
    if weights == "mxint4":
        for name, (_, k) in projection_shapes(cfg).items():
            if k > N.MX_MAX_K:
                raise ValueError(f"{cfg.name} {name}: reduction length {k} exceeds "
                                 f"{N.MX_MAX_K}, the longest an MXINT4 matmul accumulates "
                                 "exactly in int32")


def matrix_bytes(n: int, k: int, weights: str = "int8") -> int:
    """Bytes of one ``[n, k]`` weight matrix (``k`` the reduction) in format ``weights``:
    ``n * k`` for int8, ``n * (ceil(k / 2) + ceil(k / 32))`` for MXINT4 (packed elements
    and one exponent byte per block of 32)."""
    return n * ((k + 1) // 2 + N.mx_blocks(k)) if weights == "mxint4" else n * k


def weight_bytes(cfg: ModelConfig, weights: str = "int8") -> int:
    """Bytes of the model's parameters at a byte each (``cfg.n_params``), the decoder
    layers' projection weights (the ones ``quantize`` stores in ``weights``) at
    ``(ceil(k / 2) + ceil(k / 32)) / k`` bytes each for MXINT4 (4.25 bits: packed elements
    and one E8M0 exponent per block of 32). What the sweeps size the DRAM by."""
    check_weight_format(cfg, weights)
    total = cfg.n_params
    for n, k in projection_shapes(cfg).values():
        total -= n * k - matrix_bytes(n, k, weights)
    return total


def _norm_constants(d: int, s_in: float, s_out: float, eps: float) -> dict:
    """RMSNorm constants: output factor ``sqrt(D / 2**sq) / s_out`` and eps in ss units."""
    sq = N.sum_sq_shift(d)
    mult, shift = N.quantize_multiplier(math.sqrt(d / 2.0 ** sq) / s_out)
    eps_int = int(round(eps * d / (s_in * s_in * 2.0 ** sq)))
    return {"mult": mult, "shift": shift, "eps": np.int32(min(eps_int, 2 ** 30))}


def _requant_constants(real, site: str = "") -> dict:
    """``mult``/``shift`` of ``real``; ``ValueError`` naming ``site`` when the factor is
    out of range (weights or calibrated peaks so extreme that the ratio of scales cannot
    be represented)."""
    try:
        mult, shift = N.quantize_multiplier(real)
    except ValueError as e:
        raise ValueError(f"{site}: {e}" if site else str(e)) from None
    return {"mult": mult, "shift": shift}


KV_SENS_ONE = 256    # kv_sensitivity's unit: a channel of average sensitivity


def kv_sensitivity(cfg: ModelConfig, q_ms, wo_DxQ) -> dict[str, np.ndarray]:
    """How much each KV channel's quantisation error matters, ``{"k", "v"}: int32
    [kv_dim]``, normalised to a mean of ``KV_SENS_ONE`` (at least 1 each).

    A key error ``dk`` moves the scores of the queries that read it by ``q · dk``: channel
    ``c``'s weight is the calibrated mean of ``q_c**2`` summed over the heads of its group
    (``q_ms``, post-RoPE). A value error ``dv`` reaches the residual through ``W_o``:
    channel ``c``'s weight is the squared norm of the ``W_o`` columns of the heads that
    read it. ``KVCompression.tolerances`` divides the tolerance by these weights, so an
    error costs about the same wherever it falls.
    """
    group = cfg.n_heads // cfg.n_kv_heads
    cols = np.square(wo_DxQ).sum(axis=0).reshape(cfg.n_kv_heads, group, cfg.head_dim)

    def norm(w):
        w = np.asarray(w, np.float64).reshape(-1)
        w = w / max(float(w.mean()), 1e-30) * KV_SENS_ONE
        return np.clip(np.round(w), 1, 2 ** 31 - 1).astype(np.int32)
    return {"k": norm(q_ms), "v": norm(cols.sum(axis=1))}


def quantize(params: Params, cfg: ModelConfig, scales: Scales,
             weights: str = "int8") -> QuantModel:
    """The integer model: every tensor and constant the accelerator needs.

    ``weights`` is the format of the decoder layers' seven projection weights: ``int8``
    (``quantize_weight``) or ``mxint4`` (``quantize_weight_mxint4``: a dict of elements,
    block shifts and channel base exponents in place of each int8 matrix). The embeddings
    stay int16 and the LM head int8 in both (docs/numerics.md says why). ``ValueError``
    for a format the model cannot take (``check_weight_format``), or naming the tensor
    that cannot be quantised.
    """
    check_weight_format(cfg, weights)
    s_h = scales.residual
    layers = []
    for i, (p, s) in enumerate(zip(params["layers"], scales.layers, strict=True)):
        def qw(name, w, i=i):
            if weights == "mxint4":
                return quantize_weight_mxint4(w, f"layer {i} {name}")
            return quantize_weight(w)
        g1 = np.asarray(p["attn_norm"], np.float64)[None, :]
        g2 = np.asarray(p["mlp_norm"], np.float64)[None, :]
        wq, sq = qw("wq", np.asarray(p["wq"]) * g1)
        wk, sk = qw("wk", np.asarray(p["wk"]) * g1)
        wv, sv = qw("wv", np.asarray(p["wv"]) * g1)
        wo, so = qw("wo", p["wo"])
        wg, sg = qw("w_gate", np.asarray(p["w_gate"]) * g2)
        wu, su = qw("w_up", np.asarray(p["w_up"]) * g2)
        # SwiGLU output: per-channel scales s_mid[c], folded into w_down's columns
        # (SmoothQuant with alpha = 1), so the down projection sees int8 per channel.
        s_mid = np.asarray(s["mid"], np.float64)
        wd, sd = qw("w_down", np.asarray(p["w_down"], np.float64) * s_mid[None, :])
        reals = {
            "q": s["attn_in"] * sq / s["q"], "k": s["attn_in"] * sk / s["k"],
            "v": s["attn_in"] * sv / s["v"],
            "softmax": s["q"] * s["k"] / math.sqrt(cfg.head_dim) * math.log2(math.e)
            * 2 ** N.EXP2_INDEX_BITS,
            "att": s["v"] / (N.PROB_MAX * s["att"]), "o": s["att"] * so / s_h,
            "gate": s["mlp_in"] * sg * 2 ** N.GATE_FRAC_BITS, "up": s["mlp_in"] * su / s["up"],
            "mid": 2.0 ** -N.GATE_FRAC_BITS * s["up"] / s_mid, "down": sd / s_h,
        }
        layer = {
            "wq": wq, "wk": wk, "wv": wv, "wo": wo, "w_gate": wg, "w_up": wu, "w_down": wd,
            "norm1": _norm_constants(cfg.d_model, s_h, s["attn_in"], cfg.norm_eps),
            "norm2": _norm_constants(cfg.d_model, s_h, s["mlp_in"], cfg.norm_eps),
            **{site: _requant_constants(real, f"layer {len(layers)} {site} requantisation")
               for site, real in reals.items()},
        }
        layer["kv_sens"] = kv_sensitivity(cfg, s["q_ms"], np.asarray(p["wo"], np.float64))
        if layer["att"]["shift"] > N.SOFTMAX_OUT_SHIFT_MAX:
            raise ValueError(f"layer {i} att requantisation: shift {int(layer['att']['shift'])}"
                             f" exceeds SOFTMAX's out_shift field (at most "
                             f"{N.SOFTMAX_OUT_SHIFT_MAX}): the attention output's scale is "
                             f"over 2**{N.SOFTMAX_OUT_SHIFT_MAX - N.MULT_BITS} times the values'")
        if cfg.qkv_bias:
            for name, ws in (("q", sq), ("k", sk), ("v", sv)):
                bias = np.asarray(p["b" + name], np.float64) / (s["attn_in"] * ws)
                layer["b" + name] = np.clip(np.round(bias), -(2 ** 31), 2 ** 31 - 1).astype(
                    np.int32)
        layers.append(layer)
    gf = np.asarray(params["norm"], np.float64)[None, :]
    w_lm, s_lm = quantize_weight(np.asarray(lm_head_weight(params)) * gf)
    embed = np.clip(np.round(np.asarray(params["embed"], np.float64) / s_h), -32768, 32767)
    qm = {
        "embed": embed.astype(np.int16),
        "layers": tuple(layers),
        "final_norm": _norm_constants(cfg.d_model, s_h, scales.final_in, cfg.norm_eps),
        "lm_head": w_lm,
        "logits": _requant_constants(scales.final_in * s_lm / scales.logits,
                                     "LM head requantisation"),
        "rope_freq": N.rope_freq_table(cfg.rope_inv_freq),
    }
    return jax.tree.map(np.asarray, qm)


def quant_struct(cfg: ModelConfig, weights: str = "int8") -> QuantModel:
    """The structure of ``quantize``'s result as ``jax.ShapeDtypeStruct`` leaves, for
    compiling a model without materialising its weights (tested equal to ``quantize``);
    ``check_weight_format``'s refusals."""
    check_weight_format(cfg, weights)
    def sds(shape, dtype):
        return jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype))

    def rq(n=None):
        shape = () if n is None else (n,)
        return {"mult": sds(shape, np.int32), "shift": sds(shape, np.int32)}

    def norm():
        return {"mult": sds((), np.int32), "shift": sds((), np.int32), "eps": sds((), np.int32)}

    def w(n, k):
        if weights == "mxint4":
            return {"elems": sds((n, k), np.int8), "shifts": sds((n, N.mx_blocks(k)), np.int8),
                    "base": sds((n,), np.uint8)}
        return sds((n, k), np.int8)

    d, f, qd, kd = cfg.d_model, cfg.d_ff, cfg.q_dim, cfg.kv_dim
    layer = {
        "wq": w(qd, d), "wk": w(kd, d), "wv": w(kd, d), "wo": w(d, qd), "w_gate": w(f, d),
        "w_up": w(f, d), "w_down": w(d, f),
        "norm1": norm(), "q": rq(qd), "k": rq(kd), "v": rq(kd), "softmax": rq(), "att": rq(),
        "o": rq(d), "norm2": norm(), "gate": rq(f), "up": rq(f), "mid": rq(f), "down": rq(d),
        "kv_sens": {"k": sds((kd,), np.int32), "v": sds((kd,), np.int32)},
    }
    if cfg.qkv_bias:
        layer.update(bq=sds((qd,), np.int32), bk=sds((kd,), np.int32), bv=sds((kd,), np.int32))
    return {
        "embed": sds((cfg.vocab_size, d), np.int16),
        "layers": tuple(dict(layer) for _ in range(cfg.n_layers)),
        "final_norm": norm(),
        "lm_head": sds((cfg.vocab_size, d), np.int8),
        "logits": rq(cfg.vocab_size),
        "rope_freq": sds((cfg.head_dim // 2,), np.uint32),
    }


# -- kernels: the units the compiler lowers --------------------------------------------
# Each is a named ``jax.jit`` so that it appears in the traced jaxpr as one ``jit``
# equation whose ``name`` the compiler's lowering registry recognises.

requant = jax.jit(N.requant, static_argnames=("bits", "xp"))
rmsnorm = jax.jit(N.rmsnorm, static_argnames=("xp",))
rope = jax.jit(N.rope, static_argnames=("xp",))
silu_mul = jax.jit(N.silu_mul, static_argnames=("xp",))
residual_add = jax.jit(N.residual_add, static_argnames=("xp",))
argmax = jax.jit(N.argmax, static_argnames=("xp",))
mx_matmul = jax.jit(N.mx_matmul, static_argnames=("xp",))


def matmul(x, w):
    """``x @ w.T`` in int32 for int8 ``w[N, K]`` or MXINT4 ``w`` (``quantize_weight_mxint4``)."""
    if isinstance(w, dict):
        return mx_matmul(x, w["elems"], w["shifts"])
    return N.qmatmul(x, w)


@jax.jit
def embedding(table_VxD, tokens_T):
    """Rows of the int16 embedding table."""
    return jnp.take(table_VxD, tokens_T, axis=0, mode="clip")


@jax.jit
def kv_write(cache_SxKxH, new_TxKxH, start):
    """The cache with ``new`` written at rows ``start..start+T-1``."""
    zero = jnp.zeros((), start.dtype)
    return jax.lax.dynamic_update_slice(cache_SxKxH, new_TxKxH, (start, zero, zero))


@jax.jit
def attention(q_TxNxH, k_SxKxH, v_SxKxH, positions_T, sm_mult, sm_shift, att_mult, att_shift,
              kc_SxKxH=None, vc_SxKxH=None, compressed_T=None):
    """Grouped-query attention in integers: int8 ``[T, n_heads * head_dim]``.

    Scores are exact int32 dot products; key ``s`` is visible to the query at position
    ``p`` when ``s <= p``; max-normalised probabilities from ``numerics.softmax``;
    ``P @ V`` in int32, requantised to int8 by each (query, head) row's factor, which
    carries the row's softmax normalisation (``att_mult * 2**-att_shift`` for a row sum
    of ``2**15``).

    With a compressed cache (``kc``, ``vc``: every full chunk compressed and dequantised,
    ``compress_kv``), query ``t`` reads keys ``s < compressed_T[t]`` from it and the rest
    from ``k``/``v``: one pass computes what decoding token by token computes when each
    chunk is compressed once it is full (``KVCompression``).
    """
    T, n_heads, head_dim = q_TxNxH.shape
    S, n_kv = k_SxKxH.shape[:2]
    q = q_TxNxH.reshape(T, n_kv, n_heads // n_kv, head_dim)
    scores = jnp.einsum("tkgh,skh->kgts", q, k_SxKxH, preferred_element_type=jnp.int32)
    if kc_SxKxH is not None:
        packed = jnp.arange(S, dtype=jnp.int32)[None, :] < compressed_T[:, None]    # [T, S]
        scores = jnp.where(packed, jnp.einsum("tkgh,skh->kgts", q, kc_SxKxH,
                                              preferred_element_type=jnp.int32), scores)
    visible = jnp.arange(S, dtype=jnp.int32)[None, :] <= positions_T[:, None]
    probs, row_mult, row_shift = N.softmax(scores, visible[None, None], sm_mult, sm_shift,
                                           att_mult, att_shift)
    if vc_SxKxH is None:
        out = jnp.einsum("kgts,skh->tkgh", probs, v_SxKxH, preferred_element_type=jnp.int32)
    else:
        zero = jnp.zeros((), probs.dtype)
        out = (jnp.einsum("kgts,skh->tkgh", jnp.where(packed, probs, zero), vc_SxKxH,
                          preferred_element_type=jnp.int32)
               + jnp.einsum("kgts,skh->tkgh", jnp.where(packed, zero, probs), v_SxKxH,
                            preferred_element_type=jnp.int32))
    rows = lambda x: jnp.transpose(x, (2, 0, 1, 3))      # noqa: E731  [k, g, t, 1] -> [t, k, g, 1]
    out = N.requant(out, rows(row_mult), rows(row_shift))
    return out.reshape(T, n_heads * head_dim)


# -- chunk-wise KV compression -----------------------------------------------------------

@dataclass(frozen=True)
class KVCompression:
    """Chunk-wise compression of the KV cache (LLMS, arXiv 2403.11805, section 3.2).

    Token rows ``[j C, (j + 1) C)`` of a layer's K (and, apart, its V) form chunk ``j``
    (``C = chunk_tokens``). Once a chunk is full (after the program that writes its last
    row) it is compressed once: each channel's ``C`` values independently, to the fewest
    bits among ``bits`` whose mean squared error is within ``tolerance`` (int8 steps
    squared, ``numerics.kv_chunk_compress``), with one power-of-two scale (a shift). Every
    later program reads the dequantised values; a chunk still filling is read as written.

    Raises ``ValueError`` naming the field: ``chunk_tokens`` below 1, ``bits`` empty or
    not a subset of ``numerics.KV_CHUNK_BITS``, ``tolerance`` outside ``[0, 16384]``.
    """

    chunk_tokens: int = 16
    bits: tuple[int, ...] = N.KV_CHUNK_BITS
    tolerance: float = 32.0

    def __post_init__(self):
        def integer(x):
            return isinstance(x, numbers.Integral) and not isinstance(x, bool)
        if not integer(self.chunk_tokens) or self.chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be an integer ≥ 1, not {self.chunk_tokens!r}")
        object.__setattr__(self, "chunk_tokens", int(self.chunk_tokens))
        try:
            bits = tuple(sorted({int(b) for b in self.bits if integer(b)}))
            valid = len(bits) == len(tuple(self.bits)) and set(bits) <= set(N.KV_CHUNK_BITS)
        except TypeError:
            valid = False
        if not valid or not bits:
            raise ValueError(f"bits must be a non-empty subset of {N.KV_CHUNK_BITS}, each "
                             f"once, not {self.bits!r}")
        object.__setattr__(self, "bits", bits)
        if (not isinstance(self.tolerance, numbers.Real) or isinstance(self.tolerance, bool)
                or not 0 <= self.tolerance <= 1 << 14):
            raise ValueError(f"tolerance must be a number in [0, 16384] (int8 steps squared), "
                             f"not {self.tolerance!r}")
        object.__setattr__(self, "tolerance", float(self.tolerance))

    @property
    def tolerance_q16(self) -> int:
        return round(self.tolerance * (1 << N.KV_TOL_FRAC_BITS))

    def tolerances(self, sens):
        """Each channel's tolerance, Q.16 int8 steps squared: ``tolerance`` scaled by the
        inverse of the channel's sensitivity (``kv_sensitivity``: ``KV_SENS_ONE`` is one),
        rounded down, as int64 ``[kv_dim]``."""
        sens = jnp.asarray(sens).astype(jnp.int64)
        return self.tolerance_q16 * KV_SENS_ONE // sens


def compress_kv(cache_SxKxH, kv: KVCompression, sens, first_chunk: int = 0,
                end_chunk: int | None = None):
    """The cache with chunks ``first_chunk..end_chunk - 1`` (default: every full chunk)
    compressed and dequantised, each channel at ``kv.tolerances(sens)`` (``sens``: the
    layer's ``kv_sens["k"]`` or ``["v"]``), and their bits ``[chunks, n_kv_heads,
    head_dim]`` (one a channel)."""
    if jnp.asarray(0, jnp.int64).dtype != jnp.int64:
        raise RuntimeError("compress_kv needs 64-bit integers: run it under "
                           "jax.enable_x64(True), as int_forward and int_decode_step do")
    S, K, H = cache_SxKxH.shape
    C = kv.chunk_tokens
    end_chunk = S // C if end_chunk is None else end_chunk
    n = end_chunk - first_chunk
    if n <= 0:
        return cache_SxKxH, jnp.zeros((0, K, H), jnp.int64)
    rows = cache_SxKxH[first_chunk * C:end_chunk * C]
    groups = jnp.transpose(rows.reshape(n, C, K, H), (0, 2, 3, 1))       # [n, K, H, C]
    bits, _, deq = N.kv_chunk_compress(groups, kv.bits, kv.tolerances(sens).reshape(K, H), jnp)
    deq = jnp.transpose(deq, (0, 3, 1, 2)).reshape(n * C, K, H)
    return cache_SxKxH.at[first_chunk * C:end_chunk * C].set(deq), bits


def _compress_new_chunks(qm: QuantModel, cache: dict, kv: KVCompression | None, start: int,
                         end: int) -> dict:
    """After a program that wrote rows ``start..end - 1``: the chunks it filled, compressed."""
    if kv is None:
        return cache
    first, last = start // kv.chunk_tokens, end // kv.chunk_tokens
    with jax.enable_x64(True):
        return {name: tuple(compress_kv(c, kv, ql["kv_sens"][name], first, last)[0]
                            for c, ql in zip(cache[name], qm["layers"], strict=True))
                for name in ("k", "v")}


# -- the integer forward pass ---------------------------------------------------------

def init_int_cache(cfg: ModelConfig, max_len: int | None = None) -> dict:
    """An empty int8 KV cache: ``k`` and ``v`` are tuples of per-layer
    ``[max_len, n_kv_heads, head_dim]`` arrays."""
    max_len = cfg.max_seq_len if max_len is None else max_len
    shape = (max_len, cfg.n_kv_heads, cfg.head_dim)
    empty = tuple(jnp.zeros(shape, jnp.int8) for _ in range(cfg.n_layers))
    return {"k": empty, "v": empty}


def _proj(x, w, rq, bias=None):
    return requant(matmul(x, w), rq["mult"], rq["shift"], bias=bias)


def int_layer(ql: dict, h_TxD, cache_k, cache_v, start, freq, cfg: ModelConfig,
              kv: KVCompression | None = None):
    """One decoder layer in integers; mirrors ``reference.decoder_layer``. With ``kv``, the
    tokens are decoded one by one as far as the cache goes: token ``p`` reads the chunks
    full before it compressed (``attention``)."""
    T = h_TxD.shape[0]
    start = jnp.asarray(start, jnp.int32)
    positions = start + jnp.arange(T, dtype=jnp.int32)
    with jax.named_scope("attention"):
        n1 = ql["norm1"]
        xn = rmsnorm(h_TxD, n1["mult"], n1["shift"], n1["eps"])
        q = _proj(xn, ql["wq"], ql["q"], ql.get("bq")).reshape(T, cfg.n_heads, cfg.head_dim)
        k = _proj(xn, ql["wk"], ql["k"], ql.get("bk")).reshape(T, cfg.n_kv_heads, cfg.head_dim)
        v = _proj(xn, ql["wv"], ql["v"], ql.get("bv")).reshape(T, cfg.n_kv_heads, cfg.head_dim)
        q, k = rope(q, positions, freq), rope(k, positions, freq)
        cache_k = kv_write(cache_k, k, start)
        cache_v = kv_write(cache_v, v, start)
        packed = ()
        if kv is not None:
            packed = (compress_kv(cache_k, kv, ql["kv_sens"]["k"])[0],
                      compress_kv(cache_v, kv, ql["kv_sens"]["v"])[0],
                      positions // kv.chunk_tokens * kv.chunk_tokens)
        att = attention(q, cache_k, cache_v, positions, ql["softmax"]["mult"],
                        ql["softmax"]["shift"], ql["att"]["mult"], ql["att"]["shift"], *packed)
        h_TxD = residual_add(h_TxD, matmul(att, ql["wo"]), ql["o"]["mult"], ql["o"]["shift"])
    with jax.named_scope("mlp"):
        n2 = ql["norm2"]
        xn = rmsnorm(h_TxD, n2["mult"], n2["shift"], n2["eps"])
        up = _proj(xn, ql["w_up"], ql["up"])
        mid = silu_mul(matmul(xn, ql["w_gate"]), up, ql["gate"]["mult"], ql["gate"]["shift"],
                       ql["mid"]["mult"], ql["mid"]["shift"])
        h_TxD = residual_add(h_TxD, matmul(mid, ql["w_down"]), ql["down"]["mult"],
                             ql["down"]["shift"])
    return h_TxD, cache_k, cache_v


def _int_layers(qm: QuantModel, cache: dict, tokens_T, start, cfg: ModelConfig,
                kv: KVCompression | None = None):
    """The residual stream ``[T, d_model]`` (int16) after every layer, and the new cache."""
    h = embedding(qm["embed"], tokens_T)
    ks, vs = [], []
    for i, ql in enumerate(qm["layers"]):
        with jax.named_scope(f"layer{i}"):
            h, k, v = int_layer(ql, h, cache["k"][i], cache["v"][i], start, qm["rope_freq"], cfg,
                                kv)
        ks.append(k)
        vs.append(v)
    return h, {"k": tuple(ks), "v": tuple(vs)}


def _int_head(qm: QuantModel, h):
    """int16 logits ``[rows, vocab]`` of residual rows ``h``: final RMSNorm, LM head."""
    fn = qm["final_norm"]
    xf = rmsnorm(h, fn["mult"], fn["shift"], fn["eps"])
    return requant(N.qmatmul(xf, qm["lm_head"]), qm["logits"]["mult"], qm["logits"]["shift"],
                   bits=N.RESID_BITS)


def int_run(qm: QuantModel, cache: dict, tokens_T, start, cfg: ModelConfig,
            kv: KVCompression | None = None):
    """int16 logits ``[T, vocab]`` for tokens at positions ``start..``, and the new cache
    (with ``kv``: ``int_layer``'s token-by-token reading of compressed chunks)."""
    h, cache = _int_layers(qm, cache, tokens_T, start, cfg, kv)
    return _int_head(qm, h), cache


def int_step(qm: QuantModel, cache: dict, tokens_T, start, cfg: ModelConfig,
             head: bool = True):
    """One greedy step as the accelerator runs it: the int16 logits ``[1, vocab]`` of the
    last new token, the next token (their argmax) and the updated cache. Only the last
    token's logits are computed, as serving engines do (vLLM samples from the last
    position of a prompt): the LM head of the other prompt rows would be work and L2 no
    output uses. With ``head=False`` (a prefill chunk before the last) only the cache is
    returned, as ``(None, None, cache)``."""
    h, cache = _int_layers(qm, cache, tokens_T, start, cfg)
    if not head:
        return None, None, cache
    logits = _int_head(qm, h[-1:])
    return logits, argmax(logits[-1]), cache


@partial(jax.jit, static_argnames="cfg")
def _int_run_jit(qm, cache, tokens_T, start, cfg):
    return int_run(qm, cache, tokens_T, start, cfg)


def int_prefill(qm: QuantModel, cache: dict, tokens_T, cfg: ModelConfig,
                kv: KVCompression | None = None, start: int = 0):
    """Prompt tokens from position ``start`` (0: the whole prompt; later, the rest of a
    prompt whose first ``start`` tokens are cached, a shared prefix): int16 logits ``[T,
    vocab]`` and the filled int8 cache. With ``kv``, the chunks these tokens filled are
    compressed after them (their own attention reads their rows as written, and the
    cached rows as the cache holds them)."""
    with jax.enable_x64(True):
        logits, cache = _int_run_jit(qm, cache, jnp.asarray(tokens_T, jnp.int32),
                                     jnp.int32(start), cfg)
    return logits, _compress_new_chunks(qm, cache, kv, start, start + len(tokens_T))


def int_decode_step(qm: QuantModel, cache: dict, token, pos, cfg: ModelConfig,
                    kv: KVCompression | None = None):
    """One token at ``pos``: int16 logits ``[vocab]`` and the updated cache (with ``kv``,
    its chunk compressed if the token filled it)."""
    with jax.enable_x64(True):
        logits, cache = _int_run_jit(qm, cache, jnp.reshape(jnp.asarray(token, jnp.int32), (1,)),
                                     jnp.int32(pos), cfg)
    return logits[0], _compress_new_chunks(qm, cache, kv, int(pos), int(pos) + 1)


@partial(jax.jit, static_argnames=("cfg", "kv"))
def _int_forward_batch(qm, tokens_BxT, cfg, kv=None):
    def one(tokens_T):
        cache = init_int_cache(cfg, tokens_T.shape[0])
        logits, cache = int_run(qm, cache, tokens_T, jnp.int32(0), cfg, kv)
        if kv is None:
            return logits, jnp.zeros((0,), jnp.int64)
        bits = [compress_kv(c, kv, ql["kv_sens"][name])[1] for name in ("k", "v")
                for c, ql in zip(cache[name], qm["layers"], strict=True)]
        return logits, jnp.stack(bits)          # [2 n_layers, chunks, n_kv_heads, head_dim]

    return jax.vmap(one)(tokens_BxT)


def int_forward(qm: QuantModel, tokens, cfg: ModelConfig, kv: KVCompression | None = None,
                with_kv_bits: bool = False):
    """Causal int16 logits of whole sequences: ``[T, V]`` or, for a batch, ``[B, T, V]``.
    With ``kv``, as decoded token by token with the cache compressed chunk by chunk
    (``int_layer``); ``with_kv_bits`` also returns the bits of each full chunk's channels,
    ``[2 n_layers (K then V), chunks, n_kv_heads, head_dim]`` (a leading batch axis for a
    batch)."""
    tokens = jnp.asarray(tokens, jnp.int32)
    with jax.enable_x64(True):
        logits, bits = _int_forward_batch(qm, tokens.reshape(-1, tokens.shape[-1]), cfg, kv)
    if tokens.ndim == 1:
        logits, bits = logits[0], bits[0]
    return (logits, bits) if with_kv_bits else logits
