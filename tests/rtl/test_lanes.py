"""The vector unit's element datapaths are bit-exact with models.numerics on random
inputs, edge cases included. Amaranth's simulator (combinational)."""

import numpy as np
from amaranth import Module, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from models import numerics as N
from models.config import rope_inv_freq
from rtl import lanes

RNG = np.random.default_rng(0)


class Harness(wiring.Component):
    """Inputs a..f, outputs y1, y2 of one lane function."""

    def __init__(self, build, shapes):
        self.build = build
        members = {name: In(shape) for name, shape in shapes.items()}
        members.update(y1=Out(signed(64)), y2=Out(signed(64)))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        out = self.build(self, lanes.Tables(m))
        outs = out if isinstance(out, tuple) else (out,)
        m.d.comb += self.y1.eq(outs[0])
        if len(outs) > 1:
            m.d.comb += self.y2.eq(outs[1])
        return m


def run(harness, cases):
    results = []

    async def testbench(ctx):
        for case in cases:
            for name, value in case.items():
                ctx.set(getattr(harness, name), int(value))
            await ctx.delay(1e-9)
            results.append((ctx.get(harness.y1), ctx.get(harness.y2)))

    sim = Simulator(harness)
    sim.add_testbench(testbench)
    sim.run()
    return results


def test_requant():
    acc = np.concatenate([RNG.integers(-2 ** 31, 2 ** 31, 200), [2 ** 31 - 1, -2 ** 31, 0, 1]])
    mult, shift = N.quantize_multiplier(RNG.uniform(1e-6, 1e-2, acc.size))
    h = Harness(lambda s, _: lanes.requant(s.a, s.b, s.c, 8),
                {"a": signed(32), "b": unsigned(15), "c": unsigned(6)})
    cases = [dict(a=a, b=m, c=s) for a, m, s in zip(acc, mult, shift, strict=True)]
    got = [y for y, _ in run(h, cases)]
    np.testing.assert_array_equal(got, N.requant(acc.astype(np.int32), mult, shift, 8, xp=np))


def test_rmsnorm_element():
    ss = np.concatenate([RNG.integers(1, 2 ** 31 - 1, 150), [1, 2, 3, 2 ** 30, 2 ** 31 - 1]])
    h = RNG.integers(-2 ** 15, 2 ** 15, ss.size)
    mult, shift = N.quantize_multiplier(RNG.uniform(0.5, 60, ss.size))

    def build(s, tables):
        t, k = lanes.rsqrt(s.a, tables=tables)
        return lanes.rmsnorm_scale(s.b, t, k, s.c, s.d)

    harness = Harness(build, {"a": unsigned(31), "b": signed(16), "c": unsigned(15),
                              "d": unsigned(6)})
    got = [y for y, _ in run(harness, [dict(a=a, b=b, c=c, d=d)
                                       for a, b, c, d in zip(ss, h, mult, shift, strict=True)])]
    # Reference: numerics.rmsnorm's per-element arithmetic, with ss given.
    e = N.floor_log2(ss.astype(np.int32))
    t = N.rsqrt_table()[e & 1, N._mantissa_index(ss.astype(np.int32), e, N.RSQRT_INDEX_BITS, np)]
    gain = t.astype(np.int64) * mult
    ref = N.saturate(N.round_shift(h * gain, N.RSQRT_FRAC_BITS + (e >> 1) + shift, np), 8)
    np.testing.assert_array_equal(got, ref)


def test_softmax_elements():
    scores = RNG.integers(-3000, 3000, (5, 40)).astype(np.int32)
    visible = np.ones_like(scores, bool)
    mult, shift = N.quantize_multiplier(2e-3 * np.log2(np.e) * 64)
    out_mult, out_shift = 17000 + 3001 * np.arange(5), 1 + 7 * np.arange(5)
    probs, row_mult, row_shift = N.softmax(scores, visible, mult, shift, out_mult[:, None],
                                           out_shift[:, None], xp=np)
    dist = scores.max(-1, keepdims=True) - scores
    ph = Harness(lambda s, t: lanes.exp2_term(s.a, s.b, s.c, tables=t),
                 {"a": unsigned(24), "b": unsigned(15), "c": unsigned(6)})
    p = np.array([y for y, _ in run(ph, [dict(a=d, b=mult, c=shift) for d in dist.ravel()])]
                 ).reshape(dist.shape)
    qh = Harness(lambda s, _: lanes.probability(s.a), {"a": unsigned(17)})
    got = np.array([y for y, _ in run(qh, [dict(a=x) for x in p.ravel()])]).reshape(probs.shape)
    np.testing.assert_array_equal(got, probs)
    wh = Harness(lambda s, t: lanes.softmax_row_word(s.a, s.b, s.c, tables=t),
                 {"a": unsigned(32), "b": unsigned(15), "c": unsigned(5)})
    words = run(wh, [dict(a=t, b=m, c=k) for t, m, k in zip(p.sum(-1), out_mult, out_shift,
                                                               strict=True)])
    np.testing.assert_array_equal(np.array(words), np.concatenate([row_mult, row_shift], 1))


def test_silu_mul_and_residual_add():
    gate = RNG.integers(-400000, 400000, 200)
    up = RNG.integers(-128, 128, 200)
    gm, gs = N.quantize_multiplier(RNG.uniform(1e-6, 5e-5, 200) * 256)
    mm, ms = N.quantize_multiplier(RNG.uniform(1e-4, 1e-2, 200))
    h = Harness(lambda s, t: lanes.silu_mul(s.a, s.b, s.c, s.d, s.e, s.f, tables=t),
                {"a": signed(32), "b": signed(8), "c": unsigned(15), "d": unsigned(6),
                 "e": unsigned(15), "f": unsigned(6)})
    cases = [dict(a=a, b=b, c=c, d=d, e=e, f=f)
             for a, b, c, d, e, f in zip(gate, up, gm, gs, mm, ms, strict=True)]
    got = [y for y, _ in run(h, cases)]
    ref = N.silu_mul(gate.astype(np.int32), up.astype(np.int8), gm, gs, mm, ms, xp=np)
    np.testing.assert_array_equal(got, ref)

    res = RNG.integers(-2 ** 15, 2 ** 15, 200)
    acc = RNG.integers(-2 ** 24, 2 ** 24, 200)
    h = Harness(lambda s, _: lanes.residual_add(s.a, s.b, s.c, s.d),
                {"a": signed(16), "b": signed(32), "c": unsigned(15), "d": unsigned(6)})
    got = [y for y, _ in run(h, [dict(a=a, b=b, c=c, d=d)
                                 for a, b, c, d in zip(res, acc, mm, ms, strict=True)])]
    np.testing.assert_array_equal(got, N.residual_add(res.astype(np.int16), acc.astype(np.int32),
                                                      mm, ms, xp=np))


def test_rope_pairs():
    head_dim = 64
    freq = N.rope_freq_table(rope_inv_freq(head_dim, 500000.0))
    x = RNG.integers(-128, 128, (6, 1, head_dim)).astype(np.int8)
    positions = np.array([0, 1, 17, 255, 4095, 131071], np.int32)
    ref = N.rope(x, positions, freq, xp=np)
    h = Harness(lambda s, t: lanes.rope_pair(s.a, s.b, s.c, s.d, tables=t),
                {"a": signed(8), "b": signed(8), "c": unsigned(20), "d": unsigned(32)})
    half = head_dim // 2
    cases = [dict(a=x[t, 0, i], b=x[t, 0, i + half], c=positions[t], d=freq[i])
             for t in range(6) for i in range(half)]
    got = np.array(run(h, cases)).reshape(6, half, 2)
    np.testing.assert_array_equal(got[..., 0], ref[:, 0, :half])
    np.testing.assert_array_equal(got[..., 1], ref[:, 0, half:])


def test_tree_sum_adds_as_sum_does_in_log_width():
    """``rtl.common.tree_sum``: the value of Python's ``sum`` (and modulo ``2 ** width``
    with ``width``), in ``ceil(log2 n)`` bits more than its terms where ``sum``'s chain
    ends ``n - 1`` bits wider (synthesis counts every adder of it at its width)."""
    from amaranth import Const, Signal

    from rtl.common import tree_sum

    assert len(tree_sum([Signal(1) for _ in range(128)])) == 8
    assert len(sum(Signal(1) for _ in range(128))) >= 128
    assert len(tree_sum([Signal(32) for _ in range(5)], width=32)) <= 33
    cases = [(RNG.integers(0, 2, 128).tolist(), 1, None),
             (RNG.integers(0, 2 ** 17, 7).tolist(), 17, None),
             (RNG.integers(0, 2 ** 32, 16).tolist(), 32, 32)]
    m = Module()
    outs = []
    for values, bits, width in cases:
        out = Signal(64)
        m.d.comb += out.eq(tree_sum([Const(v, bits) for v in values], width=width))
        outs.append(out)
    seen = []

    async def testbench(ctx):
        seen.extend(ctx.get(o) for o in outs)

    sim = Simulator(m)
    sim.add_testbench(testbench)
    sim.run()
    assert seen == [sum(v) if w is None else sum(v) % 2 ** w for v, _, w in cases]
