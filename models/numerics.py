"""The accelerator's integer numerics: every table, constant and integer operator.

This module is the single source of truth for what the accelerator computes. The JAX
integer reference (``models/integer.py``) is built from these operators, the ISA
simulator executes them, and the RTL generator reads the same tables and widths, so
the three agree by construction. The scheme is documented in ``docs/numerics.md``.

Contract
--------
* Table functions (``rsqrt_table``, ``recip_table``, ``exp2_table``, ``sigmoid_table``,
  ``sin_table``, ``rope_freq_table``) return NumPy integer arrays; each table has exactly
  one generating function here.
* ``quantize_multiplier(real)`` turns a positive real factor into ``(mult, shift)`` with
  ``mult`` in ``[2**14, 2**15)`` so that ``real ~= mult * 2**-shift``.
* Operators take integer arrays, either NumPy or JAX (``xp`` follows the inputs), and use
  integer arithmetic only; wide intermediates are int64 (JAX callers run them under
  ``jax.enable_x64``). Rounding is *round half up* (add half an LSB, then arithmetic
  shift right); every narrowing saturates.
"""

from __future__ import annotations

import math

import numpy as np

from arch import isa

# -- widths and table sizes (read by the ISA simulator and the RTL generator) ---------
ACT_BITS = 8               # activations and weights: int8
RESID_BITS = 16            # residual stream and embeddings: int16
ACC_BITS = 32              # array accumulators: int32
MULT_BITS = 15             # requantisation multiplier mantissa: [2**14, 2**15)
RSQRT_INDEX_BITS = 8       # rsqrt table: 2 x 256 entries (exponent parity x mantissa)
RSQRT_FRAC_BITS = 15       # rsqrt table entries are Q0.15
RECIP_INDEX_BITS = 8       # reciprocal table: 256 entries
RECIP_FRAC_BITS = 15       # reciprocal table entries are Q0.15 (in (2**14, 2**15])
EXP2_INDEX_BITS = 6        # softmax exponent: 2**(-j/64), 64 entries
EXP2_FRAC_BITS = 15        # exp2 table entries are Q0.15, exp2[0] = 2**15
PROB_BITS = 7              # softmax probabilities: int8 in [0, 127], the row maximum 127
PROB_MAX = (1 << PROB_BITS) - 1
SOFTMAX_OUT_SHIFT_MAX = isa.BY_MNEMONIC["SOFTMAX"].field("out_shift").max
GATE_FRAC_BITS = 8         # SwiGLU gate requantised to int16 Q7.8
SIGMOID_INDEX_BITS = 8     # sigmoid table: 256 entries over [-8, 8), step 1/16
SIGMOID_STEP_BITS = 4      # table step 2**-4
SIGMOID_FRAC_BITS = 15     # sigmoid entries are Q0.15
SIN_INDEX_BITS = 10        # sine table: 1024 entries over one turn
TRIG_FRAC_BITS = 14        # sine / cosine entries are Q1.14
PHASE_BITS = 32            # RoPE phase: unsigned turns * 2**32, wraps modulo one turn
MX_BLOCK = isa.MX_BLOCK    # MXINT4 weights: elements per block along the reduction (OCP MX)
MX_ELEM_BITS = 4           # MXINT4 elements: two's complement int4 in [-8, 7]
MX_EXP_BITS = 8            # one E8M0 exponent per block (OCP MX): scale 2**(E - 127)
MX_EXP_BIAS = 127          # E8M0 bias; 255 is NaN and never stored
MX_SHIFT_MAX = (1 << isa.MX_SHIFT_BITS) - 1   # block exponent less the channel's base: [0, 7]
MX_MAX_K = isa.MX_MAX_K    # reduction length an MXINT4 matmul is exact for in int32
KV_CHUNK_BITS = (2, 4, 8)  # compressed KV chunks: two's complement codes of 2, 4 or 8 bits
KV_TOL_FRAC_BITS = 16      # the compression tolerance is Q.16 int8 steps² (kv_chunk_compress)


# -- tables ---------------------------------------------------------------------------

def rsqrt_table() -> np.ndarray:
    """``[2, 2**RSQRT_INDEX_BITS]`` int32: ``2**15 / sqrt(2**p * (1 + (i + 1/2) / 256))``.

    Row ``p`` is the parity of the exponent of the normalised input, column ``i`` the
    mantissa bits after the leading one (sampled at the interval midpoint).
    """
    n = 1 << RSQRT_INDEX_BITS
    mant = 1.0 + (np.arange(n) + 0.5) / n
    rows = [np.round((1 << RSQRT_FRAC_BITS) / np.sqrt(mant * 2.0 ** p)) for p in (0, 1)]
    return np.stack(rows).astype(np.int32)


def recip_table() -> np.ndarray:
    """``[2**RECIP_INDEX_BITS]`` int32: ``2**15 / (1 + (i + 1/2) / 256)``."""
    n = 1 << RECIP_INDEX_BITS
    mant = 1.0 + (np.arange(n) + 0.5) / n
    return np.round((1 << RECIP_FRAC_BITS) / mant).astype(np.int32)


def exp2_table() -> np.ndarray:
    """``[2**EXP2_INDEX_BITS]`` int32: ``2**15 * 2**(-j / 64)``; entry 0 is exactly 2**15."""
    n = 1 << EXP2_INDEX_BITS
    return np.round((1 << EXP2_FRAC_BITS) * 2.0 ** (-np.arange(n) / n)).astype(np.int32)


def sigmoid_table() -> np.ndarray:
    """``[2**SIGMOID_INDEX_BITS]`` int32: ``2**15 * sigmoid(x)`` at the midpoints of
    ``[-8, 8)`` in steps of 1/16 (entry ``j`` covers ``[(j-128)/16, (j-127)/16)``)."""
    n = 1 << SIGMOID_INDEX_BITS
    x = (np.arange(n) - n // 2 + 0.5) / (1 << SIGMOID_STEP_BITS)
    return np.round((1 << SIGMOID_FRAC_BITS) / (1.0 + np.exp(-x))).astype(np.int32)


def sin_table() -> np.ndarray:
    """``[2**SIN_INDEX_BITS]`` int32: ``2**14 * sin(2 pi j / 1024)``, Q1.14."""
    n = 1 << SIN_INDEX_BITS
    return np.round((1 << TRIG_FRAC_BITS) * np.sin(2 * np.pi * np.arange(n) / n)).astype(
        np.int32)


def rope_freq_table(inv_freq: np.ndarray) -> np.ndarray:
    """``[head_dim/2]`` uint32: RoPE frequency of each pair in turns per position * 2**32,
    from the inverse frequencies in radians per position (``models.config.rope_inv_freq``,
    scaling included)."""
    inv_freq = np.asarray(inv_freq, dtype=np.float64)
    if inv_freq.ndim != 1 or not inv_freq.size or not np.all(inv_freq > 0):
        raise ValueError("inv_freq must be a non-empty vector of positive frequencies")
    return np.round(inv_freq / (2 * np.pi) * 2.0 ** PHASE_BITS).astype(np.uint32)


def all_tables() -> dict[str, np.ndarray]:
    """The model-independent tables, by name (what the vector unit holds in ROM)."""
    return {"rsqrt": rsqrt_table(), "recip": recip_table(), "exp2": exp2_table(),
            "sigmoid": sigmoid_table(), "sin": sin_table()}


# -- constants ------------------------------------------------------------------------

def quantize_multiplier(real: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mult, shift)`` int32 with ``mult`` in ``[2**14, 2**15)`` and ``real ~= mult/2**shift``.

    The relative error is at most ``2**-15``. Raises ``ValueError`` for a factor that
    is not positive or needs a shift outside ``[1, 62]``.
    """
    real = np.asarray(real, dtype=np.float64)
    if not np.all(np.isfinite(real)) or np.any(real <= 0):
        raise ValueError(f"requantisation factor must be positive and finite, got {real}")
    exponent = np.floor(np.log2(real)).astype(np.int64)
    shift = (MULT_BITS - 1) - exponent
    mult = np.round(real * np.exp2(shift.astype(np.float64))).astype(np.int64)
    overflow = mult >= (1 << MULT_BITS)
    mult = np.where(overflow, mult >> 1, mult)
    shift = np.where(overflow, shift - 1, shift)
    if np.any(shift < 1) or np.any(shift > 62):
        raise ValueError(f"requantisation factor {real} is out of range for a shift in [1, 62]")
    return mult.astype(np.int32), shift.astype(np.int32)


def sum_sq_shift(d: int) -> int:
    """Right shift applied to each square in RMSNorm so that a sum of ``d`` squares of
    int16 values fits in int32: ``ceil(log2(d))``."""
    return max(0, math.ceil(math.log2(d)))


# -- integer operators ------------------------------------------------------------------

def _xp(*arrays):
    for a in arrays:
        if type(a).__module__.startswith("jax") or hasattr(a, "aval"):
            import jax.numpy as jnp

            return jnp
    return np


def _wide(x, xp):
    return xp.asarray(x).astype(xp.int64)


def saturate(x, bits: int, xp=None):
    """Clamp to the signed ``bits``-bit range."""
    xp = xp or _xp(x)
    return xp.clip(x, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def round_shift(x, shift, xp=None):
    """``x / 2**shift`` rounded half up (``shift >= 1``), in int64."""
    xp = xp or _xp(x, shift)
    x, shift = _wide(x, xp), _wide(shift, xp)
    return (x + (xp.int64(1) << (shift - 1))) >> shift


def floor_log2(x, xp=None):
    """Position of the leading one of positive int32 values (a priority encoder)."""
    xp = xp or _xp(x)
    x = xp.asarray(x).astype(xp.int32)
    result = xp.zeros_like(x)
    for bit in (16, 8, 4, 2, 1):
        upper = x >> bit
        has = upper > 0
        result = result + xp.where(has, bit, 0).astype(xp.int32)
        x = xp.where(has, upper, x)
    return result


def _mantissa_index(x, exponent, index_bits: int, xp):
    """The ``index_bits`` bits after the leading one of positive int32 ``x``."""
    normalised = x.astype(xp.int32) << (30 - exponent)        # leading one at bit 30
    return (normalised >> (30 - index_bits)) & ((1 << index_bits) - 1)


def requant(acc, mult, shift, bits: int = ACT_BITS, bias=None, xp=None):
    """``saturate(round_shift((acc + bias) * mult, shift), bits)``: int32 accumulators to
    ``bits``. ``mult``/``shift``/``bias`` broadcast against ``acc`` (per output channel on
    the last axis); the bias add wraps in int32, as the accumulator does.
    """
    xp = xp or _xp(acc, mult, shift)
    if bias is not None:
        acc = xp.asarray(acc).astype(xp.int32) + xp.asarray(bias).astype(xp.int32)
    y = round_shift(_wide(acc, xp) * _wide(mult, xp), shift, xp)
    dtype = xp.int8 if bits <= 8 else xp.int16 if bits <= 16 else xp.int32
    return saturate(y, bits, xp).astype(dtype)


def qmatmul(x, w, xp=None):
    """``x @ w.T`` for int8 ``x[..., K]`` and int8 ``w[N, K]``, accumulated in int32."""
    xp = xp or _xp(x, w)
    if xp is np:
        return np.matmul(x.astype(np.int32), w.astype(np.int32).T)
    import jax

    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (1,)), ((), ())),
                               preferred_element_type=xp.int32)


def mx_blocks(k: int) -> int:
    """Blocks of ``MX_BLOCK`` along a reduction of length ``k`` (the last may be partial)."""
    return -(-k // MX_BLOCK)


def mx_pack(elems_NxK) -> np.ndarray:
    """MXINT4 elements as stored (DRAM, L2): ``uint8[N, ceil(K / 2)]``, element ``k`` of a
    row in byte ``k // 2``, even ``k`` in the low nibble, two's complement; an odd row's
    last high nibble is zero."""
    e = np.asarray(elems_NxK).astype(np.int16) & 0xF
    if e.shape[1] % 2:
        e = np.pad(e, ((0, 0), (0, 1)))
    return (e[:, 0::2] | (e[:, 1::2] << 4)).astype(np.uint8)


def mx_unpack(packed_NxB, k: int) -> np.ndarray:
    """The inverse of ``mx_pack``: ``int8[N, k]`` in ``[-8, 7]``."""
    p = np.asarray(packed_NxB, np.uint8).astype(np.int16)
    e = np.stack([p & 0xF, p >> 4], axis=-1).reshape(p.shape[0], -1)[:, :k]
    return np.where(e >= 8, e - 16, e).astype(np.int8)


def mx_matmul(x, elems, shifts, xp=None):
    """``x @ w.T`` for int8 ``x[..., K]`` and MXINT4 weights, accumulated in int32.

    ``elems[N, K]`` are int4 values (held in int8, in ``[-8, 7]``); ``shifts[N, B]``
    (``B = mx_blocks(K)``) are each block's E8M0 exponent minus its output channel's base
    exponent, in ``[0, MX_SHIFT_MAX]``. Block ``b`` covers ``k`` in ``[32 b, 32 b + 32)``::

        acc[..., n] = sum_b (sum_{k in b} x[..., k] * elems[n, k]) << shifts[n, b]

    so ``acc * 2**(base[n] - 127)`` is ``x @ w.T`` with the dequantised weights, exactly.
    Exact in int32 for ``K <= MX_MAX_K``: a block's sum is at most ``32 * 128 * 8 = 2**15``
    in magnitude, shifted at most ``2**22``, and 256 blocks stay within ``2**30``. Shifting
    partial sums over any split of a block gives the same result, which is what lets the
    array apply the shift per K tile at its accumulator (docs/numerics.md).
    """
    xp = xp or _xp(x, elems, shifts)
    k = x.shape[-1]
    if elems.shape[-1] != k or shifts.shape[-1] != mx_blocks(k):
        raise ValueError(f"mx_matmul: x has K = {k}, elems {tuple(elems.shape)}, "
                         f"shifts {tuple(shifts.shape)}")
    if k > MX_MAX_K:
        raise ValueError(f"mx_matmul: K = {k} exceeds MX_MAX_K = {MX_MAX_K}")
    blocks, pad = mx_blocks(k), -k % MX_BLOCK
    lead = x.shape[:-1]
    if xp is np:
        xb = np.pad(x.astype(np.int32), [(0, 0)] * len(lead) + [(0, pad)])
        wb = np.pad(elems.astype(np.int32), ((0, 0), (0, pad)))
        part = np.einsum("...bk,nbk->...nb", xb.reshape(*lead, blocks, MX_BLOCK),
                         wb.reshape(-1, blocks, MX_BLOCK))
        return np.sum(part << shifts.astype(np.int32), axis=-1, dtype=np.int32)
    import jax

    xb = xp.pad(x, [(0, 0)] * len(lead) + [(0, pad)]).reshape(*lead, blocks, MX_BLOCK)
    wb = xp.pad(elems, ((0, 0), (0, pad))).reshape(-1, blocks, MX_BLOCK)
    part = jax.lax.dot_general(xb, wb, (((xb.ndim - 1,), (2,)), ((xb.ndim - 2,), (1,))),
                               preferred_element_type=xp.int32)     # [B, ..., N]
    part = xp.moveaxis(part, 0, -1)                                  # [..., N, B]
    return xp.sum(part << shifts.astype(xp.int32), axis=-1, dtype=xp.int32)


# -- chunk-wise KV-cache compression (LLMS, arXiv 2403.11805) ----------------------------

def kv_chunk_shift(xmax, xmin, bits: int, xp=None):
    """The shift of a ``bits``-bit chunk whose int8 values span ``[xmin, xmax]``: the
    smallest ``s`` in ``[0, 8 - bits]`` with ``round_shift(xmax, s) <= 2**(bits-1) - 1``
    and ``round_shift(xmin, s) >= -2**(bits-1)`` (``s = 0``: the values themselves), else
    ``8 - bits`` (then the quantiser saturates). int8 chunks always get 0 (lossless)."""
    xp = xp or _xp(xmax, xmin)
    top = (1 << (bits - 1)) - 1
    shift = xp.full(xp.shape(xmax), ACT_BITS - bits, xp.int64)
    for s in range(ACT_BITS - bits - 1, -1, -1):          # descending: the smallest wins
        fits = (_shifted(xmax, s, xp) <= top) & (_shifted(xmin, s, xp) >= -top - 1)
        shift = xp.where(fits, s, shift)
    return shift


def _shifted(x, s, xp):
    """``round_shift(x, s)`` for ``s >= 0`` (``s = 0``: ``x``): ``round_shift(2x, s + 1)``."""
    return round_shift(_wide(x, xp) * 2, _wide(s, xp) + 1, xp)


def kv_chunk_quantize(x, shift, bits: int, xp=None):
    """The ``bits``-bit codes of int8 ``x`` at ``shift`` (broadcast): ``round_shift(x,
    shift)`` saturated to ``bits`` bits, in int64."""
    xp = xp or _xp(x, shift)
    return saturate(_shifted(x, shift, xp), bits, xp)


def kv_chunk_dequantize(codes, shift, xp=None):
    """What the KV prefetch engine writes into L2: ``codes << shift`` as int8 (in range by
    ``kv_chunk_shift``'s bound ``shift <= 8 - bits``)."""
    xp = xp or _xp(codes, shift)
    return (_wide(codes, xp) << _wide(shift, xp)).astype(xp.int8)


def kv_chunk_compress(x_GxN, candidates: tuple[int, ...], tolerance_q16: int, xp=None):
    """Compress groups of ``N`` int8 values, ``x[..., N]`` (one channel of one chunk of K
    or V, ``integer.compress_kv``), each to the fewest bits among ``candidates`` (a subset
    of ``KV_CHUNK_BITS``) that the group *tolerates*: whose mean squared quantisation
    error, in int8 steps squared, is at most its tolerance,

        sum (x - dequantize(quantize(x)))**2 * 2**16  <=  tolerance_q16 * N

    (exact in int64; ``tolerance_q16`` is Q.16, one or one per group, broadcast over the
    leading axes), else the most bits among ``candidates``. The error is absolute, not
    relative to the group's own power: a score ``q · k`` changes by ``q · (k' - k)``
    whatever the size of ``k``, so a group of small values tolerates coarse steps, which
    a relative measure would refuse it (docs/numerics.md). Returns ``(bits[...],
    shift[...], dequantised int8 x[..., N])``; the shift is ``kv_chunk_shift`` of the
    group's range at its width.
    """
    xp = xp or _xp(x_GxN)
    x = _wide(x_GxN, xp)
    xmax, xmin = x.max(axis=-1), x.min(axis=-1)
    cand = sorted(candidates)
    bits = xp.full(xp.shape(xmax), cand[-1], xp.int64)
    shift = kv_chunk_shift(xmax, xmin, cand[-1], xp)
    deq = _wide(kv_chunk_dequantize(kv_chunk_quantize(x, shift[..., None], cand[-1], xp),
                                    shift[..., None], xp), xp)
    for b in reversed(cand[:-1]):                         # descending: the fewest wins
        s = kv_chunk_shift(xmax, xmin, b, xp)
        d = _wide(kv_chunk_dequantize(kv_chunk_quantize(x, s[..., None], b, xp),
                                      s[..., None], xp), xp)
        noise = ((x - d) ** 2).sum(axis=-1)
        ok = noise * (1 << KV_TOL_FRAC_BITS) <= _wide(tolerance_q16, xp) * x.shape[-1]
        bits, shift = xp.where(ok, b, bits), xp.where(ok, s, shift)
        deq = xp.where(ok[..., None], d, deq)
    return bits, shift, deq.astype(xp.int8)


def kv_chunk_bytes(bits, chunk_tokens: int):
    """DRAM bytes of one compressed group (a channel of a chunk): its ``chunk_tokens``
    codes packed at ``bits`` each, and one byte for its bits and shift."""
    return -(-chunk_tokens * bits // 8) + 1


def rmsnorm(h, mult, shift, eps_int, xp=None):
    """Integer RMSNorm of int16 rows ``h[..., D]`` (gain folded into the next weights).

    ``ss = sum((h*h) >> sum_sq_shift(D)) + eps_int``; ``rsqrt(ss)`` from ``rsqrt_table``
    after normalising ``ss = 2**(2k+p) * 1.m``; then
    ``y = sat8(round_shift(h * (T[p, m] * mult), 15 + k + shift))``, where ``mult/2**shift``
    is the constant ``sqrt(D / 2**sum_sq_shift(D)) / s_out``.
    """
    xp = xp or _xp(h)
    d = h.shape[-1]
    h32 = h.astype(xp.int32)
    ss = xp.sum((h32 * h32) >> sum_sq_shift(d), axis=-1, keepdims=True, dtype=xp.int32)
    ss = xp.maximum(ss + xp.int32(eps_int), 1)
    e = floor_log2(ss, xp)
    idx = _mantissa_index(ss, e, RSQRT_INDEX_BITS, xp)
    table = xp.asarray(rsqrt_table())
    t = table[e & 1, idx]
    gain = _wide(t, xp) * _wide(mult, xp)                      # per row, < 2**30
    y = round_shift(_wide(h32, xp) * gain, RSQRT_FRAC_BITS + (e >> 1) + shift, xp)
    return saturate(y, ACT_BITS, xp).astype(xp.int8)


def rope(x, positions, freq, xp=None):
    """Integer RoPE (HF ``rotate_half`` pairing) of int8 ``x[T, N, H]`` at ``positions[T]``.

    ``phase = positions * freq`` wraps modulo 2**32 (one turn); the sine table is indexed
    by the phase rounded to 10 bits, cosine a quarter turn ahead; the rotated pair is
    ``round_shift(x1*c - x2*s, 14)``, ``round_shift(x2*c + x1*s, 14)``, saturated to int8.
    """
    xp = xp or _xp(x, positions)
    half = x.shape[-1] // 2
    phase = xp.asarray(positions).astype(xp.uint32)[:, None] * xp.asarray(freq, xp.uint32)
    drop = PHASE_BITS - SIN_INDEX_BITS
    idx = ((phase + xp.uint32(1 << (drop - 1))) >> drop).astype(xp.int32)
    n = 1 << SIN_INDEX_BITS
    table = xp.asarray(sin_table())
    s = table[idx & (n - 1)][:, None, :]
    c = table[(idx + n // 4) & (n - 1)][:, None, :]
    x1, x2 = x[..., :half].astype(xp.int32), x[..., half:].astype(xp.int32)
    y1 = round_shift(x1 * c - x2 * s, TRIG_FRAC_BITS, xp)
    y2 = round_shift(x2 * c + x1 * s, TRIG_FRAC_BITS, xp)
    return saturate(xp.concatenate([y1, y2], axis=-1), ACT_BITS, xp).astype(xp.int8)


def softmax(scores, visible, mult, shift, out_mult, out_shift, xp=None):
    """Integer softmax of int32 ``scores[..., S]`` over the ``visible`` keys, normalised
    after ``P @ V`` (deferred normalisation): ``(probs, row_mult, row_shift)``.

    ``z = round_shift((max - s) * mult, shift)`` is the distance from the row maximum in
    units of ``2**-6`` in the log2 domain (``mult/2**shift = scale * log2(e) * 64``);
    ``p = exp2_table[z & 63] >> (z >> 6)`` (0 when masked or shifted out). The
    probabilities are max-normalised, ``round_shift(p * 127, 15)``: int8 with the row
    maximum at ``PROB_MAX`` = 127, so a flat row keeps 7 bits of resolution where
    probabilities normalised by the sum would keep a few levels. The row sum ``total``
    (at least ``2**15``: the maximum is visible) is inverted with ``recip_table``,
    ``1/total ~= r * 2**-(15 + e)``, ``e = floor_log2(total)``, and folded into the
    requantisation of the row's ``P @ V`` accumulators: ``row_mult = round_shift(out_mult
    * r, 15)`` (at most ``2**15``), ``row_shift = out_shift + e - 15`` (in ``[out_shift,
    out_shift + 16]``), both ``[..., 1]`` int32, where ``out_mult * 2**-out_shift`` is the
    requantisation of ``P @ V`` for probabilities scaled ``2**15 / 127`` per unit of
    ``p / total``. ``REQUANT`` with ``params = ROW`` applies them (``requant`` with these
    per-row factors).
    """
    xp = xp or _xp(scores)
    s = scores.astype(xp.int32)
    masked = xp.where(visible, s, xp.iinfo(xp.int32).min)
    row_max = xp.max(masked, axis=-1, keepdims=True)
    # exact: int32 scores can be 2**32 - 1 apart (int32 arithmetic wrapped there, where
    # the RTL's 32-bit unsigned distance does not)
    dist = xp.where(visible, _wide(row_max, xp) - _wide(s, xp), 0)
    z = round_shift(_wide(dist, xp) * _wide(mult, xp), shift, xp)
    z = xp.minimum(z, (31 << EXP2_INDEX_BITS)).astype(xp.int32)   # beyond 2**-31: zero
    frac = z & ((1 << EXP2_INDEX_BITS) - 1)
    whole = z >> EXP2_INDEX_BITS
    p = xp.asarray(exp2_table())[frac] >> whole
    p = xp.where(visible, p, 0).astype(xp.int32)
    probs = round_shift(_wide(p, xp) * PROB_MAX, EXP2_FRAC_BITS, xp).astype(xp.int8)
    total = xp.sum(p, axis=-1, keepdims=True, dtype=xp.int32)      # >= 2**15
    e = floor_log2(total, xp)
    r = xp.asarray(recip_table())[_mantissa_index(total, e, RECIP_INDEX_BITS, xp)]
    row_mult = round_shift(_wide(r, xp) * _wide(out_mult, xp), RECIP_FRAC_BITS, xp)
    row_shift = e.astype(xp.int32) + xp.asarray(out_shift, xp.int32) - EXP2_FRAC_BITS
    return probs, row_mult.astype(xp.int32), row_shift.astype(xp.int32)


def silu_mul(gate_acc, up, gate_mult, gate_shift, mult, shift, xp=None):
    """SwiGLU ``silu(gate) * up`` requantised to int8.

    The gate accumulators are requantised to int16 Q7.8 (``gate_mult/gate_shift`` per
    channel); ``sigmoid`` comes from ``sigmoid_table`` indexed by the gate in steps of
    1/16, clamped to ``[-8, 8)``; ``silu = round_shift(gate * sig, 15)`` (Q7.8); the
    result is ``requant(silu * up, mult, shift)`` with int8 ``up`` and ``mult/shift`` per
    channel (the per-channel output scales are folded into the down projection).
    """
    xp = xp or _xp(gate_acc, up)
    gate = requant(gate_acc, gate_mult, gate_shift, RESID_BITS, xp=xp).astype(xp.int32)
    half = 1 << (SIGMOID_INDEX_BITS - 1)
    idx = xp.clip(gate >> (GATE_FRAC_BITS - SIGMOID_STEP_BITS), -half, half - 1) + half
    sig = xp.asarray(sigmoid_table())[idx]
    silu = round_shift(gate * sig, SIGMOID_FRAC_BITS, xp)
    return requant(silu * _wide(up, xp), mult, shift, ACT_BITS, xp=xp)


def residual_add(h, acc, mult, shift, xp=None):
    """``sat16(h + requant16(acc))``: a projection's int32 output into the int16 residual."""
    xp = xp or _xp(h, acc)
    r = requant(acc, mult, shift, RESID_BITS, xp=xp).astype(xp.int32)
    return saturate(h.astype(xp.int32) + r, RESID_BITS, xp).astype(xp.int16)


def argmax(logits, xp=None):
    """Index of the largest entry (the first one on ties)."""
    xp = xp or _xp(logits)
    return xp.argmax(logits, axis=-1).astype(xp.int32)
