"""The hybrid systolic array: int8 x int8 -> int32 processing elements, two dataflows.

Contract
--------
``SystolicArray(rows=R, cols=C, tag_bits=T)`` is a grid of processing elements; partial
sums always flow down the columns, one row per cycle. Inputs are given unskewed, one
vector per cycle; the array skews and deskews them itself. Each input vector carries a
``tag`` of ``T`` bits that comes out with its result (``out_tag``), so that the unit
behind the array knows where a result belongs without counting.

* **GEMM** (``mode = MatmulMode.GEMM``): weight stationary with double-buffered
  weights. Every PE holds two weights, one per *set*. A cycle with ``load.valid`` writes
  ``load.w`` (``C`` weights) into row ``load.row`` of set ``load.set``; the row reaches
  column ``c`` ``c`` cycles later, in step with the activations, so one set can be
  loaded while the other computes. Each cycle with ``valid`` presents ``x`` (``R``
  activations) with ``sel`` (the set it multiplies); they flow right along the rows,
  each PE adds ``x * w[sel]`` to the partial sum from above, and ``R + C - 1`` cycles
  later ``out`` (``C`` int32) holds ``x @ W_set`` with ``out_valid`` high.

  Loading set ``s`` is safe for the vectors presented from the cycle its first row is
  loaded on: a row loaded at cycle ``P`` may replace weights that a vector presented at
  cycle ``P - 1`` or later still uses, and must be loaded before the first vector that
  uses it. The matmul unit's feeder therefore loads the next block's ``R`` rows in the
  first ``R`` cycles of the current block's stream (``rtl/matmul_unit.py``): a block of
  ``mt`` rows takes ``max(mt, R)`` cycles and the preload costs nothing once ``mt >= R``.
* **GEMV** (``mode = MatmulMode.GEMV``): weight streaming. Each cycle with
  ``valid`` presents ``x`` (``R`` activations, broadcast along the rows) and ``w_block``
  (``R x C`` weights, element ``[r][c]`` for PE ``(r, c)``): every weight is used once,
  as it arrives, so there is no preload; ``R`` cycles later ``out[c] = sum_r x[r] *
  w_block[r][c]``.

Every cycle with ``valid`` performs ``R * C`` multiply-accumulates.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from arch.isa import MatmulMode


def latency(mode: MatmulMode, rows: int, cols: int) -> int:
    """Cycles from a vector's ``valid`` to its ``out_valid``."""
    return rows if mode == MatmulMode.GEMV else rows + cols - 1


class SystolicArray(wiring.Component):
    """Parameters
    ----------
    rows, cols : the PE grid, ``R x C``.
    tag_bits : width of the tag carried from ``tag`` to ``out_tag``.
    """

    def __init__(self, *, rows: int, cols: int, tag_bits: int = 1):
        for name, value in (("rows", rows), ("cols", cols), ("tag_bits", tag_bits)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        self.rows, self.cols, self.tag_bits = rows, cols, tag_bits
        super().__init__({
            "mode": In(1),
            "load": In(self.load_layout(rows, cols)),
            "feed": In(self.feed_layout(rows, cols, tag_bits)),
            "result": Out(self.result_layout(cols, tag_bits)),
        })

    @staticmethod
    def load_layout(rows: int, cols: int) -> data.StructLayout:
        """One row of weights for one of the two weight sets (GEMM)."""
        return data.StructLayout({"valid": 1, "row": range(rows), "set": 1,
                                  "w": data.ArrayLayout(signed(8), cols)})

    @staticmethod
    def feed_layout(rows: int, cols: int, tag_bits: int) -> data.StructLayout:
        """One input vector: activations, the weight set (GEMM) or block (GEMV), a tag."""
        return data.StructLayout({
            "valid": 1, "sel": 1, "x": data.ArrayLayout(signed(8), rows),
            "w_block": data.ArrayLayout(data.ArrayLayout(signed(8), cols), rows),
            "tag": tag_bits})

    @staticmethod
    def result_layout(cols: int, tag_bits: int) -> data.StructLayout:
        """One output vector and the tag of the input it comes from."""
        return data.StructLayout({"valid": 1, "out": data.ArrayLayout(signed(32), cols),
                                  "tag": tag_bits})

    def elaborate(self, platform):
        R, C = self.rows, self.cols
        m = Module()
        gemv = self.mode == MatmulMode.GEMV

        def delayed(value, depth, name):
            for i in range(depth):
                reg = Signal.like(value, name=f"{name}_d{i}")
                m.d.sync += reg.eq(value)
                value = reg
            return value

        # The weight load bus: column c sees it c cycles late, with the activations.
        w = [[[Signal(signed(8), name=f"w{s}_{r}_{c}") for c in range(C)] for r in range(R)]
             for s in range(2)]
        for c in range(C):
            valid = delayed(self.load.valid, c, f"load_valid{c}")
            row = delayed(self.load.row, c, f"load_row{c}")
            set_ = delayed(self.load.set, c, f"load_set{c}")
            value = delayed(self.load.w[c], c, f"load_w{c}")
            for r in range(R):
                for s in range(2):
                    with m.If(valid & (row == r) & (set_ == s)):
                        m.d.sync += w[s][r][c].eq(value)

        # Row skew: row r sees the input vector of r cycles ago.
        x_row = [delayed(self.feed.x[r], r, f"x{r}") for r in range(R)]
        sel_row = [delayed(self.feed.sel, r, f"sel{r}") for r in range(R)]
        wb = [[delayed(self.feed.w_block[r][c], r, f"wb{r}_{c}") for c in range(C)]
              for r in range(R)]

        # The grid: activations (and their weight set) flow right in GEMM and are
        # broadcast in GEMV; partial sums flow down.
        x_reg = [[Signal(signed(8), name=f"x_{r}_{c}") for c in range(C)] for r in range(R)]
        sel_reg = [[Signal(name=f"sel_{r}_{c}") for c in range(C)] for r in range(R)]
        psum = [[Signal(signed(32), name=f"p_{r}_{c}") for c in range(C)] for r in range(R)]
        for r in range(R):
            for c in range(C):
                x_in = x_row[r] if c == 0 else x_reg[r][c - 1]
                sel_in = sel_row[r] if c == 0 else sel_reg[r][c - 1]
                a = Mux(gemv, x_row[r], x_in)
                b = Mux(gemv, wb[r][c], Mux(sel_in, w[1][r][c], w[0][r][c]))
                above = psum[r - 1][c] if r else 0
                m.d.sync += [x_reg[r][c].eq(x_in), sel_reg[r][c].eq(sel_in),
                             psum[r][c].eq(above + a * b)]

        # Deskew (GEMM: column c finishes c cycles late), the valid and tag pipelines.
        # Each dataflow's valid pipeline takes only its own vectors: a GEMV's vectors
        # are still in the longer GEMM pipeline for C - 1 cycles after their results,
        # and would come out again as results if the mode switched to GEMM by then.
        for c in range(C):
            late = delayed(psum[R - 1][c], C - 1 - c, f"out{c}")
            m.d.comb += self.result.out[c].eq(Mux(gemv, psum[R - 1][c], late))
        valid = self.feed.valid
        short_valid = delayed(valid & gemv, latency(MatmulMode.GEMV, R, C), "valid_gemv")
        long_valid = delayed(valid & ~gemv, latency(MatmulMode.GEMM, R, C), "valid_gemm")
        short_tag = delayed(self.feed.tag, latency(MatmulMode.GEMV, R, C), "tag_gemv")
        long_tag = delayed(self.feed.tag, latency(MatmulMode.GEMM, R, C), "tag_gemm")
        m.d.comb += [self.result.valid.eq(Mux(gemv, short_valid, long_valid)),
                     self.result.tag.eq(Mux(gemv, short_tag, long_tag))]
        return m
