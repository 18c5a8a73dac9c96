"""The integer operators: against float maths within their stated error bounds, and
NumPy and JAX executions of the same operator bit-identical."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import numerics as N
from models.config import rope_inv_freq

RNG = np.random.default_rng(0)


def both(fn, *args):
    """Run an operator on NumPy and on JAX (x64) inputs; assert identical; return NumPy's."""
    out_np = fn(*[np.asarray(a) for a in args])
    with jax.enable_x64(True):
        out_jax = fn(*[jnp.asarray(a) if isinstance(a, np.ndarray) else a for a in args])
    np.testing.assert_array_equal(out_np, np.asarray(out_jax))
    assert out_np.dtype == np.asarray(out_jax).dtype
    return out_np


@given(st.floats(min_value=1e-6, max_value=1e3))
def test_quantize_multiplier_precision(real):
    mult, shift = N.quantize_multiplier(real)
    assert 2 ** 14 <= mult < 2 ** 15
    assert abs(mult / 2.0 ** shift - real) <= real * 2 ** -15


def test_quantize_multiplier_rejects_bad_factors():
    for bad in (0.0, -1.0, float("nan"), 1e9):
        with pytest.raises(ValueError, match="requantisation factor"):
            N.quantize_multiplier(bad)


def test_round_half_up_and_saturation():
    acc = np.array([3, 5, -3, -5, 1000, -1000], np.int32)        # x / 2
    out = both(lambda a: N.requant(a, np.int32(2 ** 14), np.int32(15)), acc)
    np.testing.assert_array_equal(out, [2, 3, -1, -2, 127, -128])


@given(st.integers(min_value=1, max_value=2 ** 31 - 1))
def test_floor_log2(x):
    assert int(N.floor_log2(np.array([x], np.int32))[0]) == x.bit_length() - 1


def test_tables_are_monotonic_with_exact_anchors():
    assert N.exp2_table()[0] == 2 ** 15 and np.all(np.diff(N.exp2_table()) < 0)
    assert np.all(np.diff(N.recip_table()) <= 0) and N.recip_table().max() <= 2 ** 15
    assert np.all(np.diff(N.sigmoid_table()) >= 0) and N.sigmoid_table().max() < 2 ** 15
    assert np.all(np.diff(N.rsqrt_table(), axis=1) <= 0)
    sin = N.sin_table()
    assert sin[0] == 0 and sin[256] == 2 ** 14 and sin[768] == -(2 ** 14)


def test_requant_matches_real_scaling():
    acc = RNG.integers(-2 ** 20, 2 ** 20, size=(64, 32)).astype(np.int32)
    real = RNG.uniform(1e-5, 1e-4, size=32)
    mult, shift = N.quantize_multiplier(real)
    out = both(lambda a, m, s: N.requant(a, m, s), acc, mult, shift)
    expected = np.clip(np.round(acc * real), -128, 127)
    assert np.max(np.abs(out - expected)) <= 1


def test_rmsnorm_within_bound():
    d = 96
    h = (RNG.standard_normal((40, d)) * RNG.uniform(50, 8000, (40, 1))).astype(np.int16)
    s_out = 4.0 / 127
    mult, shift = N.quantize_multiplier(math.sqrt(d / 2 ** N.sum_sq_shift(d)) / s_out)
    out = both(lambda x: N.rmsnorm(x, mult, shift, np.int32(0)), h)
    hf = h.astype(np.float64)
    exact = hf / np.sqrt((hf ** 2).mean(-1, keepdims=True)) / s_out
    # Table (2**-10 relative) and per-square truncation; at most one LSB off.
    assert np.max(np.abs(out - np.clip(exact, -128, 127))) <= 1.0


def test_softmax_within_bound_and_masked():
    scores = RNG.integers(-4000, 4000, size=(6, 50)).astype(np.int32)
    visible = np.tril(np.ones((6, 50), bool), k=20)
    scale = 2e-3                                    # real value of one score unit
    mult, shift = N.quantize_multiplier(scale * math.log2(math.e) * 2 ** N.EXP2_INDEX_BITS)
    out_mult, out_shift = N.quantize_multiplier(1 / N.PROB_MAX)   # P @ V in probability units
    probs, row_mult, row_shift = (
        both(lambda s, v, i=i: N.softmax(s, v, mult, shift, out_mult, out_shift)[i], scores,
             visible) for i in range(3))
    assert probs.dtype == np.int8 and np.all(probs[~visible] == 0)
    assert np.all(probs.max(-1) == N.PROB_MAX)       # max-normalised
    assert row_mult.shape == row_shift.shape == (6, 1)
    x = np.where(visible, scores * scale, -np.inf)
    ref = np.exp(x - x.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    # each probability after its row's requantisation: the 7-bit rounding (half a step of
    # the row's factor), the distance rounded to 2**-6 in log2 (2**(1/128) - 1 = 0.54%
    # relative, in the key's term and in the row sum) and the tables (reciprocal 2**-9)
    factor = row_mult / 2.0 ** row_shift
    assert np.all(np.abs(probs * factor - ref) <= 0.5 * factor + 2 ** -6 * ref)
    assert np.all(row_mult <= 2 ** 15) and np.all((row_shift >= out_shift)
                                                 & (row_shift <= out_shift + 16))


def test_rope_within_bound():
    head_dim, theta = 32, 10000.0
    x = RNG.integers(-90, 90, size=(9, 3, head_dim)).astype(np.int8)
    positions = np.array([0, 1, 2, 7, 100, 255, 1000, 4095, 70000], np.int32)
    freq = N.rope_freq_table(rope_inv_freq(head_dim, theta))
    out = both(lambda a, p: N.rope(a, p, freq), x, positions)
    half = head_dim // 2
    inv = theta ** (-np.arange(half) * 2.0 / head_dim)
    ang = positions[:, None, None] * inv
    a, b = x[..., :half].astype(np.float64), x[..., half:].astype(np.float64)
    ref = np.concatenate([a * np.cos(ang) - b * np.sin(ang), b * np.cos(ang) + a * np.sin(ang)], -1)
    # Sine table step 2**-10 turns (0.0031 rad half step) on |x| <= 128*sqrt(2): <= 1.2 LSB.
    assert np.max(np.abs(out - np.clip(ref, -128, 127))) <= 1.5


def test_silu_mul_within_bound():
    gate_acc = RNG.integers(-300000, 300000, size=(8, 48)).astype(np.int32)
    up = RNG.integers(-127, 127, size=(8, 48)).astype(np.int8)
    s_gate, s_up, s_out = 2e-5, 0.05, 0.2                 # gate values within +-6
    gm, gs = N.quantize_multiplier(s_gate * 2 ** N.GATE_FRAC_BITS)
    mm, ms = N.quantize_multiplier(2.0 ** -N.GATE_FRAC_BITS * s_up / s_out)
    out = both(lambda g, u: N.silu_mul(g, u, gm, gs, mm, ms), gate_acc, up)
    g = gate_acc * s_gate
    ref = g / (1 + np.exp(-g)) * up * s_up / s_out
    # Sigmoid sampled at 1/16 steps: |d sigmoid| <= 1/128, times |g| <= 6 and |up| -> 2 LSB.
    assert np.max(np.abs(out - np.clip(ref, -128, 127))) <= 2.5


def test_residual_add_saturates():
    h = np.array([32000, -32000, 5], np.int16)
    acc = np.array([10 ** 6, -(10 ** 6), 100], np.int32)
    mult, shift = N.quantize_multiplier(0.01)
    out = both(lambda a, b: N.residual_add(a, b, mult, shift), h, acc)
    np.testing.assert_array_equal(out, [32767, -32768, 6])


def test_qmatmul_exact():
    x = RNG.integers(-128, 128, size=(5, 300)).astype(np.int8)
    w = RNG.integers(-128, 128, size=(7, 300)).astype(np.int8)
    out = both(N.qmatmul, x, w)
    np.testing.assert_array_equal(out, x.astype(np.int64) @ w.astype(np.int64).T)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 2 ** 31 - 1), st.integers(1, 2 ** 31 - 1))
def test_mantissa_tables_are_accurate(a, b):
    """rsqrt and reciprocal from the tables: relative error <= 2**-9."""
    x = np.array([a, b], np.int32)
    e = N.floor_log2(x)
    rs = N.rsqrt_table()[e & 1, N._mantissa_index(x, e, N.RSQRT_INDEX_BITS, np)]
    approx = rs * 2.0 ** (-15 - (e >> 1))
    assert np.all(np.abs(approx * np.sqrt(x.astype(np.float64)) - 1) <= 2 ** -9)
    rc = N.recip_table()[N._mantissa_index(x, e, N.RECIP_INDEX_BITS, np)]
    assert np.all(np.abs(rc * 2.0 ** (-15 - e) * x - 1) <= 2 ** -8)


@pytest.mark.parametrize("k", [32, 45, 300])
def test_mx_matmul_is_the_exact_product_with_the_dequantised_weights(k):
    """``acc * 2**(base - 127)`` is ``x @ w.T`` for ``w = elems * 2**(shift + base - 127)``,
    and shifting each K tile's partial sum (what the array does) gives the same int32."""
    x = RNG.integers(-128, 128, size=(5, k)).astype(np.int8)
    elems = RNG.integers(-8, 8, size=(7, k)).astype(np.int8)
    shifts = RNG.integers(0, N.MX_SHIFT_MAX + 1, size=(7, N.mx_blocks(k))).astype(np.int8)
    out = both(N.mx_matmul, x, elems, shifts)
    w = elems.astype(np.int64) << np.repeat(shifts.astype(np.int64), N.MX_BLOCK, axis=1)[:, :k]
    np.testing.assert_array_equal(out, x.astype(np.int64) @ w.T)
    tiles = sum((x[:, k0:k0 + 8].astype(np.int64) @ elems[:, k0:k0 + 8].astype(np.int64).T)
                << shifts[:, k0 // N.MX_BLOCK].astype(np.int64) for k0 in range(0, k, 8))
    np.testing.assert_array_equal(out, tiles)


def test_mx_matmul_worst_case_fits_int32_and_longer_reductions_are_refused():
    """The largest magnitude (every x = -128, every element -8, every shift 7) over
    ``MX_MAX_K``: 2**30, no wrap; one block more is refused."""
    k = N.MX_MAX_K
    x = np.full((1, k), -128, np.int8)
    elems = np.full((2, k), -8, np.int8)
    shifts = np.full((2, N.mx_blocks(k)), N.MX_SHIFT_MAX, np.int8)
    np.testing.assert_array_equal(both(N.mx_matmul, x, elems, shifts), [[2 ** 30, 2 ** 30]])
    k += N.MX_BLOCK
    with pytest.raises(ValueError, match="exceeds MX_MAX_K"):
        N.mx_matmul(np.zeros((1, k), np.int8), np.zeros((1, k), np.int8),
                    np.zeros((1, N.mx_blocks(k)), np.int8))


def _kv_reference(x, candidates, tol_q16):
    """``kv_chunk_compress`` of one group, element by element in Python integers."""
    def rshift(v, s):
        return v if s == 0 else (v + (1 << (s - 1))) >> s

    def shift_of(b):
        top = (1 << (b - 1)) - 1
        for s in range(0, 8 - b + 1):
            if rshift(max(x), s) <= top and rshift(min(x), s) >= -top - 1:
                return s
        return 8 - b

    def deq(b, s):
        top = (1 << (b - 1)) - 1
        return [min(max(rshift(v, s), -top - 1), top) << s for v in x]
    for b in sorted(candidates):
        s = shift_of(b)
        d = deq(b, s)
        noise = sum((v - w) ** 2 for v, w in zip(x, d, strict=True))
        if b == max(candidates) or noise * 2**16 <= tol_q16 * len(x):
            return b, s, d


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(-128, 127), min_size=1, max_size=24),
       st.sampled_from([(2, 4, 8), (4, 8), (2, 4), (2,), (4,), (8,)]),
       st.integers(0, 1 << 24))
def test_kv_chunk_compress_picks_the_fewest_bits_the_group_tolerates(x, candidates, tol_q16):
    bits, shift, deq = N.kv_chunk_compress(np.array([x], np.int8), candidates, tol_q16)
    want_bits, want_shift, want = _kv_reference(x, candidates, tol_q16)
    assert (int(bits[0]), int(shift[0])) == (want_bits, want_shift)
    assert deq.dtype == np.int8 and deq[0].tolist() == want
    # the same on JAX, and int8 is lossless
    with jax.enable_x64(True):
        jb, js, jd = N.kv_chunk_compress(jnp.asarray([x], jnp.int8), candidates, tol_q16)
    assert (int(jb[0]), int(js[0]), np.asarray(jd)[0].tolist()) == (want_bits, want_shift, want)
    if want_bits == 8:
        assert want == x and want_shift == 0


def test_kv_chunk_shift_is_the_smallest_that_fits_and_the_bytes_count_the_header():
    # 100 at 4 bits: 100 >> 3 rounds to 13 > 7, >> 4 rounds to 6; -128 needs the full shift
    assert N.kv_chunk_shift(np.array(100), np.array(0), 4) == 4
    assert N.kv_chunk_shift(np.array(7), np.array(-8), 4) == 0
    assert N.kv_chunk_shift(np.array(1), np.array(-128), 2) == 6
    codes = N.kv_chunk_quantize(np.array([-128, 127]), 6, 2)
    assert codes.tolist() == [-2, 1]
    assert N.kv_chunk_dequantize(codes, 6).tolist() == [-128, 64]
    assert [N.kv_chunk_bytes(b, 16) for b in N.KV_CHUNK_BITS] == [5, 9, 17]
