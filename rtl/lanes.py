"""The vector unit's element datapaths, as Amaranth expressions built from ``models.numerics``.

Contract
--------
Each function takes Amaranth values for one element (one lane) and returns the value the
corresponding ``models.numerics`` operator computes for it, bit for bit: the same
round-half-up shifts, the same saturation, and tables generated at elaboration by the
same ``numerics`` functions (``rsqrt_table``, ``recip_table``, ``exp2_table``,
``sigmoid_table``, ``sin_table``), held in read-only memories (``Tables``: one memory a
table and a combinational read port a lookup). Widths come from the ``numerics``
constants. The vector unit instantiates ``vector_lanes`` copies of these
per cycle; row-level state (sums, maxima) is the unit's, not the lane's.
"""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Const, Module, Mux, Shape, Value, unsigned
from amaranth.lib import memory

from models import numerics as N

TABLES = {"rsqrt": N.rsqrt_table, "recip": N.recip_table, "exp2": N.exp2_table,
          "sigmoid": N.sigmoid_table, "sin": N.sin_table}


class Tables:
    """The ``numerics`` lookup tables of module ``m`` as read-only memories.

    ``lookup(name, index)`` returns the entry of table ``name`` (a key of ``TABLES``; a
    2-D table is read row after row) at ``index``: the first lookup of a table adds its
    memory to ``m`` (``<name>_table``, entries in the narrowest shape that holds them),
    each lookup adds a combinational read port. One memory cell in RTLIL and one
    initialised array in the Verilog, however many lanes read it: an ``Array`` of
    constants made a case an entry a lookup, most of the accelerator's conversion time
    (docs/rtl.md, ``benchmarks.rtl_build``).

    Raises ``ValueError`` for an index wider than the table's address (a silent wrap).
    """

    def __init__(self, m: Module):
        self._m = m
        self._memories: dict[str, memory.Memory] = {}

    def lookup(self, name: str, index: Value) -> Value:
        mem = self._memories.get(name)
        if mem is None:
            values = [int(v) for v in np.ravel(TABLES[name]())]
            shape = Shape.cast(range(min(values), max(values) + 1))
            mem = memory.Memory(shape=shape, depth=len(values), init=values)
            self._m.submodules[f"{name}_table"] = mem
            self._memories[name] = mem
        port = mem.read_port(domain="comb")
        index = Value.cast(index)
        if len(index) > len(port.addr):
            raise ValueError(f"a {len(index)}-bit index into the {mem.depth}-entry {name} table")
        self._m.d.comb += port.addr.eq(index)
        return port.data


def round_shift(x: Value, shift: Value, width: int = 64) -> Value:
    """``(x + 2**(shift-1)) >> shift``, arithmetic, in ``width`` bits (numerics.round_shift,
    which computes in int64 and wraps as this does).

    No intermediate is wider than ``width`` bits: the rounding bias is a right shift of
    ``2**(width-1)``, not a left shift of 1 (Amaranth widens ``1 << shift`` to
    ``width + 2**len(shift) - 1`` bits, which Verilator evaluated as multi-word
    arithmetic in every lane at every cycle).
    """
    x, shift = x.as_signed(), Value.cast(shift).as_unsigned()
    if len(x) > width:
        x = x[:width].as_signed()
    bias = Const(1 << (width - 1), unsigned(width)) >> (width - shift).as_unsigned()
    return (x + bias.as_signed())[:width].as_signed() >> shift


def saturate(x: Value, bits: int) -> Value:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    x = x.as_signed()
    return Mux(x > hi, hi, Mux(x < lo, lo, x))[:bits].as_signed()


def requant(acc: Value, mult: Value, shift: Value, bits: int) -> Value:
    """numerics.requant of one int32 accumulator."""
    return saturate(round_shift(acc.as_signed() * mult.as_unsigned(), shift), bits)


def floor_log2(x: Value) -> Value:
    """Position of the leading one (a priority encoder); 0 for x == 0."""
    result = Const(0, unsigned(6))
    for bit in range(len(x)):
        result = Mux(x[bit], bit, result)
    return result


def mantissa_index(x: Value, exponent: Value, index_bits: int) -> Value:
    """The ``index_bits`` bits below the leading one of ``x`` (at bit ``exponent <= 30``):
    ``x << (30 - exponent)``, computed as ``(x << 33) >> (exponent + 3)`` in 64 bits."""
    normalised = (x.as_unsigned()[:31].shift_left(33) >> (exponent.as_unsigned() + 3))[:31]
    normalised = Mux(exponent > 30, 0, normalised)
    return normalised[30 - index_bits:30]


def rsqrt(ss: Value, *, tables: Tables) -> tuple[Value, Value]:
    """``(T, k)`` with ``rsqrt(ss) ~= T * 2**-(15 + k)`` (numerics.rmsnorm's lookup)."""
    e = floor_log2(ss)
    idx = mantissa_index(ss, e, N.RSQRT_INDEX_BITS)
    t = tables.lookup("rsqrt", Cat(idx, e[0]))
    return t, e >> 1


def rmsnorm_scale(h: Value, t: Value, k: Value, mult: Value, shift: Value) -> Value:
    """One normalised element: ``sat8(round_shift(h * (t * mult), 15 + k + shift))``."""
    gain = t.as_unsigned() * mult.as_unsigned()
    return saturate(round_shift(h.as_signed() * gain, N.RSQRT_FRAC_BITS + k + shift), 8)


def exp2_term(dist: Value, mult: Value, shift: Value, *, tables: Tables) -> Value:
    """numerics.softmax's ``p`` for one key at distance ``dist`` from the row maximum."""
    # zero-extended: the product of a 32-bit distance and a 15-bit multiplier may set
    # its top bit, which round_shift would take as a sign (distances over 2**31 gave
    # probabilities to keys far below the maximum)
    z = round_shift(Cat(dist.as_unsigned() * mult.as_unsigned(), Const(0, 1)), shift)
    cap = 31 << N.EXP2_INDEX_BITS
    z = Mux(z > cap, cap, z)[:12]
    frac = z[:N.EXP2_INDEX_BITS]
    whole = z[N.EXP2_INDEX_BITS:]
    return (tables.lookup("exp2", frac).as_unsigned() >> whole)[:17]


def reciprocal(total: Value, *, tables: Tables) -> tuple[Value, Value]:
    """``(r, e)`` with ``1 / total ~= r * 2**-(15 + e)`` (numerics.softmax's lookup)."""
    e = floor_log2(total)
    return tables.lookup("recip", mantissa_index(total, e, N.RECIP_INDEX_BITS)), e


def probability(p: Value) -> Value:
    """numerics.softmax's max-normalised probability of one key: ``round_shift(p*127, 15)``
    (``p <= 2**15``, so at most 127)."""
    scaled = (p.as_unsigned() << N.PROB_BITS) - p.as_unsigned()       # p * 127
    return ((scaled + (1 << (N.EXP2_FRAC_BITS - 1))) >> N.EXP2_FRAC_BITS)[:8].as_signed()


def softmax_row_word(total: Value, out_mult: Value, out_shift: Value, *,
                     tables: Tables) -> tuple[Value, Value]:
    """numerics.softmax's ``(row_mult, row_shift)`` for a row whose exp2 terms sum to
    ``total``: ``round_shift(out_mult * r, 15)`` and ``out_shift + e - 15``."""
    r, e = reciprocal(total, tables=tables)
    product = r.as_unsigned() * out_mult.as_unsigned()
    row_mult = ((product + (1 << (N.RECIP_FRAC_BITS - 1))) >> N.RECIP_FRAC_BITS)[:16]
    row_shift = (out_shift.as_unsigned() + e.as_unsigned() - N.EXP2_FRAC_BITS)[:6]
    return row_mult, row_shift


def silu_mul(gate_acc: Value, up: Value, gate_mult: Value, gate_shift: Value, mult: Value,
             shift: Value, *, tables: Tables) -> Value:
    """numerics.silu_mul of one element."""
    gate = requant(gate_acc, gate_mult, gate_shift, N.RESID_BITS)
    half = 1 << (N.SIGMOID_INDEX_BITS - 1)
    step = gate.as_signed() >> (N.GATE_FRAC_BITS - N.SIGMOID_STEP_BITS)
    clamped = Mux(step < -half, -half, Mux(step > half - 1, half - 1, step))
    sig = tables.lookup("sigmoid", (clamped + half)[:N.SIGMOID_INDEX_BITS])
    silu = round_shift(gate.as_signed() * sig, N.SIGMOID_FRAC_BITS)
    return requant(silu[:40].as_signed() * up.as_signed(), mult, shift, N.ACT_BITS)


def residual_add(h: Value, acc: Value, mult: Value, shift: Value) -> Value:
    """numerics.residual_add of one element."""
    return saturate(h.as_signed() + requant(acc, mult, shift, N.RESID_BITS), N.RESID_BITS)


def rope_pair(x1: Value, x2: Value, position: Value, freq: Value, *,
              tables: Tables) -> tuple[Value, Value]:
    """numerics.rope of one pair at ``position`` with frequency word ``freq``."""
    drop = N.PHASE_BITS - N.SIN_INDEX_BITS
    phase = (position.as_unsigned() * freq.as_unsigned())[:N.PHASE_BITS]
    idx = ((phase + (1 << (drop - 1)))[:N.PHASE_BITS] >> drop)[:N.SIN_INDEX_BITS]
    n = 1 << N.SIN_INDEX_BITS
    s = tables.lookup("sin", idx)
    c = tables.lookup("sin", (idx + n // 4)[:N.SIN_INDEX_BITS])
    y1 = round_shift(x1.as_signed() * c - x2.as_signed() * s, N.TRIG_FRAC_BITS)
    y2 = round_shift(x2.as_signed() * c + x1.as_signed() * s, N.TRIG_FRAC_BITS)
    return saturate(y1, 8), saturate(y2, 8)
