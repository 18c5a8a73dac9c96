"""The hybrid systolic array: int8 x int8 -> int32 processing elements, two dataflows.

Contract
--------
``SystolicArray(rows=R, cols=C)`` is a grid of processing elements; partial sums always
flow down the columns, one row per cycle. Inputs are given unskewed, one vector per
cycle; the array skews and deskews them itself.

* **GEMM** (``mode = MatmulMode.GEMM``, prefill): weight stationary. While ``w_shift`` is
  high, ``w_row`` (C weights) enters the top row and every stored row moves down one
  (R cycles preload a tile; push its last row first). Then each cycle with ``valid``
  presents ``x`` (R activations); they flow right along the rows, each PE adds
  ``x * w`` to the partial sum from above, and ``R + C - 1`` cycles later ``out``
  (C int32) holds ``x @ W_tile`` with ``out_valid`` high.
* **GEMV** (``mode = MatmulMode.GEMV``, decode): weight streaming. Each cycle with
  ``valid`` presents ``x`` (R activations, broadcast along the rows) and ``w_block``
  (R x C weights, element ``[r][c]`` for PE ``(r, c)``): every weight is used once, as it
  arrives, so there is no preload bubble; ``R`` cycles later ``out[c] = sum_r x[r] *
  w_block[r][c]``. Column ``c`` thus takes one output channel's next ``R`` products per
  cycle; the matmul unit accumulates over the reduction.

Every cycle with ``valid`` performs ``R * C`` multiply-accumulates.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from arch.isa import MatmulMode


class SystolicArray(wiring.Component):
    def __init__(self, *, rows: int, cols: int):
        for name, value in (("rows", rows), ("cols", cols)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        self.rows, self.cols = rows, cols
        super().__init__({
            "mode": In(1),
            "w_shift": In(1),
            "w_row": In(data.ArrayLayout(signed(8), cols)),
            "valid": In(1),
            "x": In(data.ArrayLayout(signed(8), rows)),
            "w_block": In(data.ArrayLayout(data.ArrayLayout(signed(8), cols), rows)),
            "out": Out(data.ArrayLayout(signed(32), cols)),
            "out_valid": Out(1),
        })

    def elaborate(self, platform):
        R, C = self.rows, self.cols
        m = Module()
        gemv = self.mode == MatmulMode.GEMV

        # Stationary weights (GEMM), shifted in from the top.
        w = [[Signal(signed(8), name=f"w_{r}_{c}") for c in range(C)] for r in range(R)]
        with m.If(self.w_shift):
            for c in range(C):
                m.d.sync += w[0][c].eq(self.w_row[c])
                for r in range(1, R):
                    m.d.sync += w[r][c].eq(w[r - 1][c])

        # Row skew: row r sees the input vector of r cycles ago.
        def delayed(value, depth, name):
            for i in range(depth):
                reg = Signal.like(value, name=f"{name}_d{i}")
                m.d.sync += reg.eq(value)
                value = reg
            return value

        x_row = [delayed(self.x[r], r, f"x{r}") for r in range(R)]
        wb = [[delayed(self.w_block[r][c], r, f"wb{r}_{c}") for c in range(C)] for r in range(R)]

        # The grid: activations flow right (GEMM) or are broadcast (GEMV); partial sums
        # flow down.
        x_reg = [[Signal(signed(8), name=f"x_{r}_{c}") for c in range(C)] for r in range(R)]
        psum = [[Signal(signed(32), name=f"p_{r}_{c}") for c in range(C)] for r in range(R)]
        for r in range(R):
            for c in range(C):
                x_in = x_row[r] if c == 0 else x_reg[r][c - 1]
                a = Mux(gemv, x_row[r], x_in)
                b = Mux(gemv, wb[r][c], w[r][c])
                above = psum[r - 1][c] if r else 0
                m.d.sync += [x_reg[r][c].eq(x_in), psum[r][c].eq(above + a * b)]

        # Deskew (GEMM: column c finishes c cycles late) and the valid pipeline.
        for c in range(C):
            late = delayed(psum[R - 1][c], C - 1 - c, f"out{c}")
            m.d.comb += self.out[c].eq(Mux(gemv, psum[R - 1][c], late))
        v_gemv = delayed(self.valid, R, "v_gemv")
        v_gemm = delayed(self.valid, R + C - 1, "v_gemm")
        m.d.comb += self.out_valid.eq(Mux(gemv, v_gemv, v_gemm))
        return m
