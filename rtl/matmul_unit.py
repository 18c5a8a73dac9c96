"""The matmul unit: ``MATMUL`` from L2 through tile buffers into the hybrid systolic array.

Contract
--------
``MatmulUnit(params)`` executes one ``MATMUL`` word at a time (``start`` with ``word``;
``done`` once the last result row is written), bit-exact with the ISA simulator
(``out[i][j] (+)= sum_k x[i][k] * w(j, k)``, int8 x int8 -> int32, wrapping), in both
modes, both weight layouts and any ``m``, ``k``, ``n`` (edges that do not divide the
array are padded: the x bytes beyond ``k`` are zeroed, the columns beyond ``n`` are
computed and not written). With MXINT4 weights (``w_format``, NK) it computes
``numerics.mx_matmul``: the packed int4 elements are unpacked as the feeder presents
them (the array multiplies them as int8), and each block's results are shifted at the
accumulator by the block's exponent byte (its low ``MX_SHIFT_BITS``). The array's rows
must not exceed ``MX_BLOCK`` (so each ``R``-element chunk lies in one block;
``rtl.operand_check.unimplemented`` refuses MXINT4 on taller arrays). With
``RtlParams.mxint4 = False`` the MXINT4 datapath is left out (an int8-only unit, whose
area ``benchmarks.mxint4 --only synthesis`` compares; the operand check then refuses MXINT4).

The product is computed in *tiles* of ``mt`` rows of x, ``C`` output channels and ``KT``
bytes of the reduction, ``kt`` fastest, then ``n``, then ``m``; the tiles of one
``(m, n)`` pair form a *group*, whose ``mt x C`` int32 results are accumulated in one
half of the accumulator memory. The tile shape depends on the mode
(``HardwareConfig.matmul_tile``): GEMV takes ``R`` rows by ``8 W`` bytes, GEMM ``4 R`` rows
by ``2 W`` bytes, so that both fill the same x buffer. Where the rows left are between
one and two tiles' worth, they are split evenly between the last two tiles, so that no
tile is much shorter than the array is tall.

Six components, joined by streams and memory ports (``TileBuffers``: the x buffer and the
``C`` weight buffers, two sets of each, written by the filler and read by the feeder):

1. ``TileFiller`` reads each tile's x rows (row reader ``port0``) into the x buffer and
   its weights (row reader ``port1``) into ``C`` weight buffers, one per array column
   (``NK`` rows land whole; ``KN`` rows of ``C`` bytes are scattered, byte ``c`` to column
   ``c``), into whichever of two buffer sets the feeder has released, and announces each
   filled tile on its ``tiles`` stream. With fewer x rows than ``NK`` weight rows the x
   reader also takes the last ``(nc - mt) // 2`` weight rows. MXINT4 rows are the packed
   bytes (half of int8's), and the weight reader then reads each column's block
   exponents (one beat a row) into the buffers' shift registers.
2. ``Feeder`` walks the tiles' ``R``-byte reduction chunks, the *blocks*. **GEMV**: each
   cycle presents one x row of the block with a fresh ``R x C`` weight block, so a
   block of ``mt`` rows takes ``mt`` cycles. **GEMM**: the block's ``R x C`` weights are
   loaded into one of the array's two weight sets one row per cycle, while the previous
   block streams its ``mt`` rows through the other set; a block takes ``max(mt, R)``
   cycles. Each row carries a tag (accumulator half, row, first, last of group, and
   the block shift of each column).
3. ``SystolicArray`` (``rtl/systolic.py``).
4. ``Accumulator``: each result row, shifted by its tag's shifts, is added into (or, for a
   group's first chunk, written to) its row of the accumulator memory, ``2 x 4R`` rows
   of ``C`` int32.
5. ``Writeback``: once a group's last result is in, its rows are written to ``out``
   (row writer ``port3``), each first added to the old output (row reader ``port2``)
   when ``accumulate`` is set, while the next group accumulates in the other half.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from arch import isa
from rtl.common import RtlParams, check_params, log2
from rtl.copier import RowCopier
from rtl.decode import field
from rtl.dram import MemPort
from rtl.systolic import SystolicArray

#: The MATMUL fields the unit's components use.
OP_FIELDS = ("mode", "accumulate", "w_layout", "w_format", "x_addr", "w_addr", "e_addr",
             "out_addr", "m", "k", "n", "x_stride", "w_stride", "out_stride")


def op_layout() -> data.StructLayout:
    """The ``MATMUL`` operands, widths from the ISA declaration."""
    return data.StructLayout({name: _BITS[name] for name in OP_FIELDS})


_BITS = {f.name: f.bits for f in isa.BY_MNEMONIC["MATMUL"].fields}


class Geometry:
    """Tile sizes of the unit, from the hardware description.

    Members
    -------
    W, R, C : line bytes, array rows and columns.
    kb_gemv, kb_gemm : lines of the reduction per x row in a tile.
    mt_gemv, mt_gemm : rows per tile.
    set_lines : x buffer lines per buffer set (the same in both modes).
    acc_rows : accumulator rows per half.
    mx : the unit has the MXINT4 datapath (``RtlParams.mxint4``).
    nb : MXINT4 blocks (``MX_BLOCK`` elements of the reduction) in the longest tile.
    """

    def __init__(self, *, params: RtlParams):
        check_params(params)
        hw = params.hw
        self.W, self.R, self.C = params.line_bytes, hw.array_rows, hw.array_cols
        self.mt_gemv, kt_gemv = hw.matmul_tile(isa.MatmulMode.GEMV)
        self.mt_gemm, kt_gemm = hw.matmul_tile(isa.MatmulMode.GEMM)
        self.kb_gemv, self.kb_gemm = kt_gemv // self.W, kt_gemm // self.W
        self.set_lines = self.mt_gemv * self.kb_gemv
        assert self.set_lines == self.mt_gemm * self.kb_gemm
        self.acc_rows = max(self.mt_gemv, self.mt_gemm)
        self.mx = params.mxint4
        self.nb = max(1, kt_gemv // isa.MX_BLOCK)


def tile_layout(g: Geometry) -> data.StructLayout:
    """A filled tile, as the filler announces it to the feeder."""
    return data.StructLayout({
        "set": 1, "m0": _BITS["m"], "n0": _BITS["n"], "mt": range(g.acc_rows + 1),
        "nc": range(g.C + 1),
        "kl": range(g.kb_gemv * g.W + 1), "first_kt": 1, "last_kt": 1, "last_group": 1,
        "last": 1})


def group_layout(g: Geometry) -> data.StructLayout:
    """A group of tiles with one ``(m0, n0)``: where its results go."""
    return data.StructLayout({"half": 1, "m0": _BITS["m"], "n0": _BITS["n"],
                              "mt": range(g.acc_rows + 1), "nc": range(g.C + 1), "last": 1})


def tag_layout(g: Geometry) -> data.StructLayout:
    """What travels through the array with each x row: where its result goes, and (MXINT4)
    each column's block shift, by which the accumulator multiplies the result by 2^shift."""
    shift = {"shift": data.ArrayLayout(isa.MX_SHIFT_BITS, g.C)} if g.mx else {}
    return data.StructLayout({"half": 1, "row": range(g.acc_rows), "first": 1, "last": 1,
                              **shift})


def exps_layout(g: Geometry) -> data.ArrayLayout:
    """One weight row's block shifts in a tile (MXINT4): the low ``MX_SHIFT_BITS`` of each
    exponent byte, block ``j`` of the tile at index ``j``."""
    return data.ArrayLayout(isa.MX_SHIFT_BITS, g.nb)


def _sext4(nibble):
    """A 4-bit two's-complement MXINT4 element as the array's signed int8."""
    return Cat(nibble, nibble[3].replicate(4)).as_signed()


def _is_mx(g: Geometry, op):
    """The instruction's weights are MXINT4: a signal, or ``False`` for an int8-only unit."""
    return op.w_format == isa.WeightFormat.MXINT4 if g.mx else False


def _if_mx(mx, a, b):
    """``Mux(mx, a, b)``, or ``b`` in an int8-only unit (``mx`` is ``False``)."""
    return b if mx is False else Mux(mx, a, b)


def _tile_rows(left, tile_rows: int):
    """Rows of the next tile with ``left`` rows to go: a whole tile, all that is left,
    or half of it when it is between one and two tiles (so the last two are even)."""
    return Mux(left <= tile_rows, left, Mux(left < 2 * tile_rows, (left + 1) >> 1, tile_rows))


class TileBuffers(wiring.Component):
    """The x buffer, the ``C`` weight buffers (``W``-byte lines, two sets each) and the
    block shifts of MXINT4 weights (registers, two sets of ``C x nb``).

    Members
    -------
    x_write, x_read : the x buffer's ports (``2 * set_lines`` lines).
    w_write, w_read : each weight buffer's ports (``2 * kb_gemv`` lines), byte-enabled.
    e_write : one column's shifts of one set (``exps_layout``) when ``en`` (if ``g.mx``).
    e_read : every column's shift of one block of one set, combinationally (if ``g.mx``).

    MXINT4 weights stay packed in the weight buffers (two elements a byte: a tile's row
    takes half the bytes of int8); the feeder unpacks them.
    """

    def __init__(self, *, geometry: Geometry):
        self.g = geometry
        super().__init__(self.ports(geometry))

    @staticmethod
    def ports(g: Geometry) -> dict:
        """The members, as the buffers see them (``In`` of each to use it)."""
        x_bits = (2 * g.set_lines - 1).bit_length()
        w_bits = (2 * g.kb_gemv - 1).bit_length()
        w_write = memory.WritePort.Signature(addr_width=w_bits, shape=8 * g.W, granularity=8)
        w_read = memory.ReadPort.Signature(addr_width=w_bits, shape=8 * g.W)
        mx = {
            "e_write": Out(wiring.Signature({"en": In(1), "set": In(1), "col": In(range(g.C)),
                                             "shifts": In(exps_layout(g))})),
            "e_read": Out(wiring.Signature({
                "set": In(1), "block": In(range(g.nb)),
                "shifts": Out(data.ArrayLayout(isa.MX_SHIFT_BITS, g.C))})),
        }
        return {
            "x_write": Out(memory.WritePort.Signature(addr_width=x_bits, shape=8 * g.W)),
            "x_read": Out(memory.ReadPort.Signature(addr_width=x_bits, shape=8 * g.W)),
            "w_write": Out(wiring.Signature({f"c{c}": Out(w_write) for c in range(g.C)})),
            "w_read": Out(wiring.Signature({f"c{c}": Out(w_read) for c in range(g.C)})),
            **(mx if g.mx else {}),
        }

    def elaborate(self, platform):
        g, m = self.g, Module()
        m.submodules.x = x = memory.Memory(shape=8 * g.W, depth=2 * g.set_lines, init=[])
        wiring.connect(m, wiring.flipped(self.x_write), x.write_port())
        wiring.connect(m, wiring.flipped(self.x_read), x.read_port())
        for c in range(g.C):
            m.submodules[f"w{c}"] = w = memory.Memory(shape=8 * g.W, depth=2 * g.kb_gemv,
                                                       init=[])
            wiring.connect(m, wiring.flipped(getattr(self.w_write, f"c{c}")),
                           w.write_port(granularity=8))
            wiring.connect(m, wiring.flipped(getattr(self.w_read, f"c{c}")), w.read_port())
        if not g.mx:
            return m
        exps = [[Signal(exps_layout(g), name=f"e{s}_{c}") for c in range(g.C)] for s in range(2)]
        ew, er = self.e_write, self.e_read
        for s in range(2):
            for c in range(g.C):
                with m.If(ew.en & (ew.set == s) & (ew.col == c)):
                    m.d.sync += exps[s][c].eq(ew.shifts)
        for c in range(g.C):
            row = Mux(er.set, exps[1][c].as_value(), exps[0][c].as_value())
            m.d.comb += er.shifts[c].eq(exps_layout(g)(row)[er.block])
        return m


class TileFiller(wiring.Component):
    """Fills the tile buffers, tile by tile, and announces each filled tile.

    Members
    -------
    op, start : the instruction's operands, and the cycle they are first valid.
    x_port, w_port : ``Out(MemPort)`` of the x and weight row readers (L2).
    x_write, w_write, e_write : the tile buffers' write ports.
    tiles : ``Out(stream)`` of ``tile_layout``, one per filled tile, in order.
    release : ``In(2)``: the feeder is done with a buffer set.
    idle : every tile of the instruction has been filled.
    """

    def __init__(self, *, params: RtlParams, geometry: Geometry):
        check_params(params)
        self.params, g = params, geometry
        self.g = g
        t = TileBuffers.ports(g)
        port = MemPort(params.l2_addr_bits, params.line_bytes)
        super().__init__({
            "op": In(op_layout()), "start": In(1),
            "x_port": Out(port), "w_port": Out(port),
            "x_write": In(t["x_write"].signature), "w_write": In(t["w_write"].signature),
            **({"e_write": In(t["e_write"].signature)} if g.mx else {}),
            "tiles": Out(stream.Signature(tile_layout(g))),
            "release": In(2), "idle": Out(1),
        })

    def elaborate(self, platform):
        p, g, op = self.params, self.g, self.op
        W, C = g.W, g.C
        m = Module()
        m.submodules.x_reader = xr = RowCopier(params=p, src_l2=True, dst_stream=True)
        m.submodules.w_reader = wr = RowCopier(params=p, src_l2=True, dst_stream=True)
        wiring.connect(m, wiring.flipped(self.x_port), xr.src)
        wiring.connect(m, wiring.flipped(self.w_port), wr.src)

        gemv = op.mode == isa.MatmulMode.GEMV
        kn = op.w_layout == isa.WeightLayout.KN
        mx = _is_mx(g, op)                 # MXINT4 weights are NK only (isa.operand_faults)
        tile_rows = Mux(gemv, g.mt_gemv, g.mt_gemm)
        tile_k = Mux(gemv, g.kb_gemv * W, g.kb_gemm * W)

        # The tile walker: kt fastest, then n0, then m0.
        m0, n0, kt = Signal(_BITS["m"]), Signal(_BITS["n"]), Signal(_BITS["k"])
        mt, nc = Signal(range(g.acc_rows + 1)), Signal(range(C + 1))
        kl = Signal(range(g.kb_gemv * W + 1))
        last_kt, last_n = kt + tile_k >= op.k, n0 + C >= op.n
        last_m = m0 + mt >= op.m
        m.d.comb += [mt.eq(_tile_rows(op.m - m0, tile_rows)),
                     nc.eq(Mux(last_n, op.n - n0, C)),
                     kl.eq(Mux(last_kt, op.k - kt, tile_k))]
        # MXINT4: a tile's kl elements of a weight row are (kl + 1) // 2 packed bytes from
        # byte kt // 2 (tile_k is a multiple of MX_BLOCK), and the row's block exponents
        # are (kl + 31) // 32 bytes from e_addr + row * ceil(k / 32) + kt // 32.
        w_bytes = _if_mx(mx, (kl + 1) >> 1, kl)
        w_koff = _if_mx(mx, kt >> 1, kt)
        blk = log2(isa.MX_BLOCK)
        e_row = (op.k + isa.MX_BLOCK - 1) >> blk

        fset = Signal()
        filling = Signal()
        full = Signal(2)
        x_cmd, x_row = Signal(range(g.acc_rows + g.C + 1)), Signal(range(g.acc_rows + g.C + 1))
        w_cmd, w_row = Signal(range(g.kb_gemv * W + 1)), Signal(range(g.kb_gemv * W + 1))
        x_beat, w_beat = Signal(range(g.kb_gemv + 1)), Signal(range(g.kb_gemv + 1))
        w_rows = Mux(kn, kl, nc)
        # NK weight rows are as long as x rows: when the tile has fewer x rows than weight
        # rows, the x reader takes the last ``x_w`` weight rows after its x rows, so that
        # the two readers share the tile.
        x_w = Signal(range(C + 1))
        m.d.comb += x_w.eq(Mux(~kn & (nc > mt), (nc - mt) >> 1, 0))
        split = w_rows - x_w              # weight rows [0, split) on w_reader, the rest on x
        x_rows = mt + x_w
        # MXINT4: after its weight rows the weight reader reads the nc exponent rows
        w_reads = split + _if_mx(mx, nc, 0)
        issue_ok = filling & ~full.bit_select(fset, 1)

        def nk_row(r):
            return op.w_addr + (n0 + r) * op.w_stride + w_koff

        e_cmd = w_cmd >= split
        m.d.comb += [
            xr.cmd.valid.eq(issue_ok & (x_cmd < x_rows)),
            xr.cmd.p.src.eq(Mux(x_cmd < mt, op.x_addr + (m0 + x_cmd) * op.x_stride + kt,
                                nk_row(split + x_cmd - mt))),
            xr.cmd.p.dst.eq(0), xr.cmd.p.n.eq(Mux(x_cmd < mt, kl, w_bytes)),
            wr.cmd.valid.eq(issue_ok & (w_cmd < w_reads)),
            wr.cmd.p.src.eq(Mux(kn, op.w_addr + (kt + w_cmd) * op.w_stride + n0,
                                Mux(e_cmd, op.e_addr + (n0 + w_cmd - split) * e_row + (kt >> blk),
                                    nk_row(w_cmd)))),
            wr.cmd.p.dst.eq(0),
            wr.cmd.p.n.eq(Mux(kn, nc, Mux(e_cmd, (kl + isa.MX_BLOCK - 1) >> blk, w_bytes))),
        ]
        with m.If(xr.cmd.valid & xr.cmd.ready):
            m.d.sync += x_cmd.eq(x_cmd + 1)
        with m.If(wr.cmd.valid & wr.cmd.ready):
            m.d.sync += w_cmd.eq(w_cmd + 1)

        def expand(mask):
            return Cat(*[Mux(mask[b], Const(0xFF, 8), Const(0, 8)) for b in range(W)])

        # x rows: beats land whole, bytes beyond the row zeroed (they pad the reduction).
        x_is_w = x_row >= mt              # the x reader is past its x rows: weight rows
        x_line = Mux(gemv, x_row << log2(g.kb_gemv), x_row << log2(g.kb_gemm))
        m.d.comb += [xr.out.ready.eq(1),
                     self.x_write.addr.eq(fset * g.set_lines + x_line + x_beat),
                     self.x_write.data.eq(xr.out.p.data & expand(xr.out.p.mask)),
                     self.x_write.en.eq(xr.out.valid & ~x_is_w)]
        with m.If(xr.out.valid):
            m.d.sync += [x_row.eq(Mux(xr.out.p.last, x_row + 1, x_row)),
                         x_beat.eq(Mux(xr.out.p.last, 0, x_beat + 1))]
        # Weight rows: NK rows land whole in their column's buffer; KN rows scatter.
        m.d.comb += wr.out.ready.eq(1)
        kk_line, kk_byte = w_row >> log2(W), w_row[:log2(W)]
        for c in range(C):
            port = getattr(self.w_write, f"c{c}")
            with m.If(kn):
                m.d.comb += [port.addr.eq(fset * g.kb_gemv + kk_line),
                             port.data.eq(wr.out.p.data.word_select(c, 8).replicate(W)),
                             port.en.eq(Mux(wr.out.valid, Const(1, W) << kk_byte, 0))]
            with m.Elif(c >= split):      # NK rows from the x reader
                m.d.comb += [port.addr.eq(fset * g.kb_gemv + x_beat),
                             port.data.eq(xr.out.p.data),
                             port.en.eq(Mux(xr.out.valid & x_is_w & (x_row - mt + split == c),
                                            (1 << W) - 1, 0))]
            with m.Else():
                m.d.comb += [port.addr.eq(fset * g.kb_gemv + w_beat),
                             port.data.eq(wr.out.p.data),
                             port.en.eq(Mux(wr.out.valid & (w_row == c), (1 << W) - 1, 0))]
        with m.If(wr.out.valid):
            m.d.sync += [w_row.eq(Mux(wr.out.p.last, w_row + 1, w_row)),
                         w_beat.eq(Mux(wr.out.p.last, 0, w_beat + 1))]
        if g.mx:   # MXINT4 exponent rows (at most nb <= W / 4 bytes: one beat): their shifts
            m.d.comb += [self.e_write.en.eq(wr.out.valid & (w_row >= split) & mx),
                         self.e_write.set.eq(fset), self.e_write.col.eq(w_row - split)]
            for j in range(g.nb):
                m.d.comb += self.e_write.shifts[j].eq(wr.out.p.data.word_select(j, 8))

        # A filled tile is announced; the walker moves on once the feeder has it.
        filled = filling & (x_row == x_rows) & (w_row == w_reads) & (x_cmd == x_rows) & \
            (w_cmd == w_reads)
        last = last_kt & last_n & last_m
        m.d.comb += [self.tiles.valid.eq(filled),
                     self.tiles.p.set.eq(fset), self.tiles.p.m0.eq(m0),
                     self.tiles.p.n0.eq(n0), self.tiles.p.mt.eq(mt), self.tiles.p.nc.eq(nc),
                     self.tiles.p.kl.eq(kl), self.tiles.p.first_kt.eq(kt == 0),
                     self.tiles.p.last_kt.eq(last_kt), self.tiles.p.last_group.eq(last_n & last_m),
                     self.tiles.p.last.eq(last)]
        pushed = self.tiles.valid & self.tiles.ready
        with m.If(pushed):
            m.d.sync += [x_cmd.eq(0), w_cmd.eq(0), x_row.eq(0), w_row.eq(0), x_beat.eq(0),
                         w_beat.eq(0), fset.eq(~fset),
                         kt.eq(Mux(last_kt, 0, kt + tile_k)),
                         n0.eq(Mux(last_kt, Mux(last_n, 0, n0 + C), n0)),
                         m0.eq(Mux(last_kt & last_n, m0 + mt, m0))]
            with m.If(last):
                m.d.sync += filling.eq(0)
        m.d.sync += full.eq((full | Mux(pushed, Const(1, 2) << fset, 0)) & ~self.release)
        with m.If(self.start):
            m.d.sync += [filling.eq(1), fset.eq(0), full.eq(0), m0.eq(0), n0.eq(0), kt.eq(0)]
        m.d.comb += self.idle.eq(~filling)
        return m


class Feeder(wiring.Component):
    """Walks the filled tiles' blocks (``R``-byte chunks of the reduction) into the array.

    Members
    -------
    op, start : the instruction's operands, and the cycle they are first valid.
    tiles : ``In(stream)`` of filled tiles (kept in two slots, one per buffer set).
    release : ``Out(2)``: a buffer set is no longer read.
    x_read, w_read, e_read : the tile buffers' read ports.
    load, feed : the array's weight-load and data inputs (``rtl/systolic.py``).
    groups : ``Out(stream)`` of ``group_layout``, one as each group's first row streams.
    half_done : ``In(2)``: the writeback has emptied an accumulator half.
    idle : every block of the instruction has been streamed.

    GEMM keeps two blocks in flight: the *loader* writes block ``j + 1``'s weights into
    the array's other weight set while the *streamer* presents block ``j``'s rows. The
    loader starts a block only once the streamer has started the one before (the set
    it overwrites is then free, ``rtl/systolic.py``), and the streamer starts a block only
    once its load has begun (row ``r`` of the weights is loaded before the first x row
    reaches array row ``r``).
    """

    def __init__(self, *, geometry: Geometry):
        g = self.g = geometry
        t = TileBuffers.ports(g)
        super().__init__({
            "op": In(op_layout()), "start": In(1),
            "tiles": In(stream.Signature(tile_layout(g))), "release": Out(2),
            "x_read": In(t["x_read"].signature), "w_read": In(t["w_read"].signature),
            **({"e_read": In(t["e_read"].signature)} if g.mx else {}),
            "load": Out(SystolicArray.load_layout(g.R, g.C)),
            "feed": Out(SystolicArray.feed_layout(g.R, g.C, tag_layout(g).size)),
            "groups": Out(stream.Signature(group_layout(g))), "half_done": In(2),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        g, op = self.g, self.op
        W, R, C = g.W, g.R, g.C
        m = Module()
        gemv = op.mode == isa.MatmulMode.GEMV
        gemm = ~gemv
        mx = _is_mx(g, op)
        running = Signal()

        # The two filled tiles, by buffer set.
        slot = [Signal(tile_layout(g), name=f"slot{s}") for s in range(2)]
        slot_valid = Signal(2)
        taken = Signal(2)
        m.d.comb += self.tiles.ready.eq(~slot_valid.bit_select(self.tiles.p.set, 1))
        with m.If(self.tiles.valid & self.tiles.ready):
            m.d.comb += taken.eq(Const(1, 2) << self.tiles.p.set)
            with m.Switch(self.tiles.p.set):
                for s in range(2):
                    with m.Case(s):
                        m.d.sync += slot[s].eq(self.tiles.p)

        def chunks(tile):
            return (tile.kl + R - 1) >> log2(R)

        def cursor(name):
            """A walk over the blocks: the tile slot and chunk of the next block."""
            c = {"slot": Signal(name=f"{name}_slot"),
                 "chunk": Signal(range(g.kb_gemv * W // R + 1), name=f"{name}_chunk"),
                 "done": Signal(name=f"{name}_done")}
            tile = Signal(tile_layout(g), name=f"{name}_tile")
            m.d.comb += tile.eq(Mux(c["slot"], slot[1].as_value(), slot[0].as_value()))
            c["tile"] = tile
            c["ready"] = running & ~c["done"] & slot_valid.bit_select(c["slot"], 1)
            c["last_chunk"] = c["chunk"] + 1 == chunks(tile)
            c["advance"] = [c["chunk"].eq(Mux(c["last_chunk"], 0, c["chunk"] + 1)),
                            c["slot"].eq(Mux(c["last_chunk"], ~c["slot"], c["slot"])),
                            c["done"].eq(c["last_chunk"] & tile.last)]
            c["reset"] = [c["slot"].eq(0), c["chunk"].eq(0), c["done"].eq(0)]
            return c

        def line_of(chunk):
            return (chunk * R) >> log2(W)

        def w_line_of(chunk):             # MXINT4: 2 W elements a line
            return _if_mx(mx, (chunk * R) >> (log2(W) + 1), line_of(chunk))

        ahead = Signal()        # GEMM: a block's load has begun, its stream has not

        # -- loader (GEMM) --------------------------------------------------------------
        lc = cursor("load")
        l_busy, l_row = Signal(), Signal(range(R))
        l_slot, l_line, l_elem, l_wset, l_next_wset = (
            Signal(), Signal(range(g.kb_gemv)), Signal(range(2 * W)), Signal(), Signal())
        load_start = gemm & lc["ready"] & ~ahead & (~l_busy | (l_row == R - 1))
        with m.If(load_start):
            m.d.sync += [l_busy.eq(1), l_row.eq(0), l_slot.eq(lc["slot"]),
                         l_line.eq(w_line_of(lc["chunk"])),
                         l_elem.eq(_if_mx(mx, (lc["chunk"] * R)[:log2(W) + 1],
                                          (lc["chunk"] * R)[:log2(W)])),
                         l_wset.eq(l_next_wset), l_next_wset.eq(~l_next_wset), *lc["advance"]]
        with m.Elif(l_busy):
            m.d.sync += [l_row.eq(l_row + 1), l_busy.eq(l_row != R - 1)]

        # -- streamer -------------------------------------------------------------------
        sc = cursor("stream")
        nxt = sc["tile"]
        s_busy, s_row = Signal(), Signal(range(g.acc_rows))
        cur = Signal(tile_layout(g))
        s_slot, s_chunk, s_wset, s_next_wset = (
            Signal(), Signal.like(sc["chunk"]), Signal(), Signal())
        s_half, s_next_half = Signal(), Signal()
        s_first, s_group_last, s_tile_last = Signal(), Signal(), Signal()
        half_busy = Signal(2)
        last_row = s_row + 1 == cur.mt
        group_first = nxt.first_kt & (sc["chunk"] == 0)
        half_ok = ~half_busy.bit_select(s_next_half, 1) & self.groups.ready
        stream_start = (sc["ready"] & (gemv | ahead) & (~s_busy | last_row)
                        & (~group_first | half_ok))
        m.d.comb += [self.groups.valid.eq(stream_start & group_first),
                     self.groups.p.half.eq(s_next_half), self.groups.p.m0.eq(nxt.m0),
                     self.groups.p.n0.eq(nxt.n0), self.groups.p.mt.eq(nxt.mt),
                     self.groups.p.nc.eq(nxt.nc), self.groups.p.last.eq(nxt.last_group)]
        with m.If(stream_start):
            m.d.sync += [s_busy.eq(1), s_row.eq(0), cur.eq(nxt), s_slot.eq(sc["slot"]),
                         s_chunk.eq(sc["chunk"]), s_wset.eq(s_next_wset),
                         s_next_wset.eq(~s_next_wset), s_first.eq(group_first),
                         s_group_last.eq(nxt.last_kt & sc["last_chunk"]),
                         s_tile_last.eq(sc["last_chunk"]), *sc["advance"]]
            with m.If(group_first):
                m.d.sync += [s_half.eq(s_next_half), s_next_half.eq(~s_next_half)]
        with m.Elif(s_busy):
            m.d.sync += [s_row.eq(s_row + 1), s_busy.eq(~last_row)]
        m.d.sync += ahead.eq(ahead ^ load_start ^ (stream_start & gemm))
        group_began = Mux(stream_start & group_first, Const(1, 2) << s_next_half, 0)
        m.d.sync += half_busy.eq((half_busy | group_began) & ~self.half_done)

        # A buffer set is released once the streamer has read its last block and the
        # loader no longer reads it.
        pending = Signal(2)
        done_tile = Mux(s_busy & last_row & s_tile_last, Const(1, 2) << s_slot, 0)
        loading = Mux(l_busy, Const(1, 2) << l_slot, 0)
        release = (pending | done_tile) & ~loading
        m.d.comb += self.release.eq(release)
        m.d.sync += [pending.eq((pending | done_tile) & ~release),
                     slot_valid.eq((slot_valid | taken) & ~release)]

        # -- buffer reads now, the array's inputs on the next cycle ---------------------
        x_line = Mux(gemv, s_row << log2(g.kb_gemv), s_row << log2(g.kb_gemm))
        m.d.comb += self.x_read.addr.eq(s_slot * g.set_lines + x_line + line_of(s_chunk))
        w_addr = Mux(gemv, s_slot * g.kb_gemv + w_line_of(s_chunk), l_slot * g.kb_gemv + l_line)
        for c in range(C):
            m.d.comb += getattr(self.w_read, f"c{c}").addr.eq(w_addr)
        if g.mx:   # MXINT4: the block shifts of the streamed chunk (tiles begin on a block)
            m.d.comb += [self.e_read.set.eq(s_slot),
                         self.e_read.block.eq((s_chunk * R) >> log2(isa.MX_BLOCK))]

        sub = W // R                       # R-byte words (int8 x and weights) in a line
        x_word, w_word = Signal(range(sub)), Signal(range(2 * sub))
        load_elem = Signal(range(2 * W))
        tag = Signal(tag_layout(g))
        m.d.sync += [self.feed.valid.eq(s_busy), self.feed.sel.eq(s_wset),
                     x_word.eq(s_chunk[:log2(sub)] if sub > 1 else 0),
                     w_word.eq(s_chunk[:log2(2 * sub)]),
                     tag.half.eq(s_half), tag.row.eq(s_row), tag.first.eq(s_first),
                     tag.last.eq(s_group_last & last_row),
                     self.load.valid.eq(l_busy), self.load.row.eq(l_row),
                     self.load.set.eq(l_wset), load_elem.eq(l_elem + l_row)]
        if g.mx:
            m.d.sync += tag.shift.eq(Mux(mx, self.e_read.shifts.as_value(), 0))
        m.d.comb += self.feed.tag.eq(tag)
        self._operands(m, mx, x_word, w_word, load_elem)

        with m.If(self.start):
            m.d.sync += [running.eq(1), ahead.eq(0), l_busy.eq(0), s_busy.eq(0),
                         l_next_wset.eq(0), s_next_wset.eq(0), s_next_half.eq(0),
                         half_busy.eq(0), pending.eq(0), slot_valid.eq(0),
                         *lc["reset"], *sc["reset"]]
        with m.Elif(running & sc["done"] & ~s_busy):
            m.d.sync += running.eq(0)
        m.d.comb += self.idle.eq(~running)
        return m


    def _operands(self, m, mx, x_word, w_word, load_elem) -> None:
        """The array's operands from the buffers' read data: the x row's ``R`` bytes
        (word ``x_word`` of its line), and each column's weights, an int8 byte or an
        MXINT4 nibble (element ``e`` of a line in byte ``e // 2``, the low nibble first)
        sign-extended (the PEs multiply int8 x int8 either way): GEMV's ``R`` of word
        ``x_word`` (``w_word`` for MXINT4), GEMM's load of element ``load_elem``."""
        W, R = self.g.W, self.g.R
        x_chunk = self.x_read.data.word_select(x_word, 8 * R)
        for r in range(R):
            m.d.comb += self.feed.x[r].eq(x_chunk.word_select(r, 8))
        for c in range(self.g.C):
            data_c = getattr(self.w_read, f"c{c}").data
            m.d.comb += self.load.w[c].eq(_if_mx(mx, _sext4(data_c.word_select(load_elem, 4)),
                                                 data_c.word_select(load_elem[:log2(W)], 8)))
            w_int8 = data_c.word_select(x_word, 8 * R)
            w_mx = data_c.word_select(w_word, 4 * R)
            for r in range(R):
                m.d.comb += self.feed.w_block[r][c].eq(
                    _if_mx(mx, _sext4(w_mx.word_select(r, 4)), w_int8.word_select(r, 8)))


def _acc_read_signature(g: Geometry) -> wiring.Signature:
    return memory.ReadPort.Signature(addr_width=log2(2 * g.acc_rows), shape=32 * g.C)


class Accumulator(wiring.Component):
    """Adds each result row of the array into its accumulator row.

    Members
    -------
    result : the array's output (``rtl/systolic.py``), tagged ``tag_layout``.
    read : ``Out(ReadPort)``: the writeback's read port into the accumulator memory.
    group_done : ``Out(1)``: pulses once a group's last result is in.

    The memory holds two halves of ``acc_rows`` rows of ``C`` int32; a result is read,
    added and written back one cycle later (the read port sees that write, so a row may
    be updated on consecutive cycles). Column ``c``'s result is first shifted left by its
    tag's ``shift[c]`` (MXINT4: the block's exponent less the channel's base; 0 for int8),
    wrapping in int32 as ``numerics.mx_matmul`` does: the partial sum of any part of a
    block, shifted, adds up to the block's sum shifted.
    """

    def __init__(self, *, geometry: Geometry):
        g = self.g = geometry
        super().__init__({
            "result": In(SystolicArray.result_layout(g.C, tag_layout(g).size)),
            "read": Out(_acc_read_signature(g)),
            "group_done": Out(1),
        })

    def elaborate(self, platform):
        g, m = self.g, Module()
        m.submodules.memory = mem = memory.Memory(shape=32 * g.C, depth=2 * g.acc_rows,
                                                  init=[])
        wp = mem.write_port()
        rp = mem.read_port(transparent_for=(wp,))
        wiring.connect(m, wiring.flipped(self.read), mem.read_port())
        tag = tag_layout(g)(self.result.tag)
        m.d.comb += rp.addr.eq(Cat(tag.row, tag.half))
        valid, out = Signal(), Signal(data.ArrayLayout(signed(32), g.C))
        d_tag = Signal(tag_layout(g))
        m.d.sync += [valid.eq(self.result.valid), d_tag.eq(tag),
                     self.group_done.eq(valid & d_tag.last)]
        for c in range(g.C):
            m.d.sync += out[c].eq(self.result.out[c] << tag.shift[c] if g.mx
                                  else self.result.out[c])
        old = rp.data
        m.d.comb += [wp.addr.eq(Cat(d_tag.row, d_tag.half)), wp.en.eq(valid),
                     wp.data.eq(Cat(*[Mux(d_tag.first, out[c], old.word_select(c, 32) + out[c])[:32]
                                      for c in range(g.C)]))]
        return m


class Writeback(wiring.Component):
    """Writes each finished group's rows to ``out``, adding the old output when the
    instruction accumulates.

    Members
    -------
    op, start : the instruction's operands, and the cycle they are first valid.
    groups : ``In(stream)`` of ``group_layout``, in the order their results finish.
    group_done : ``In(1)``: a group's results are all in the accumulator.
    acc : the accumulator memory's read port.
    acc_port, out_port : ``Out(MemPort)`` of the old-output row reader and the row writer.
    half_done : ``Out(2)``: an accumulator half has been read out.
    finished : the instruction's last group has been handed to the row writer.
    idle : the row writer has nothing left to write.
    """

    def __init__(self, *, params: RtlParams, geometry: Geometry):
        check_params(params)
        self.params, g = params, geometry
        self.g = g
        port = MemPort(params.l2_addr_bits, params.line_bytes)
        super().__init__({
            "op": In(op_layout()), "start": In(1),
            "groups": In(stream.Signature(group_layout(g))), "group_done": In(1),
            "acc": In(_acc_read_signature(g)),
            "acc_port": Out(port), "out_port": Out(port),
            "half_done": Out(2), "finished": Out(1), "idle": Out(1),
        })

    def elaborate(self, platform):
        p, g, op = self.params, self.g, self.op
        m = Module()
        m.submodules.acc_reader = ar = RowCopier(params=p, src_l2=True, dst_stream=True)
        m.submodules.out_writer = ow = RowCopier(params=p, dst_l2=True, src_stream=True)
        wiring.connect(m, wiring.flipped(self.acc_port), ar.src)
        wiring.connect(m, wiring.flipped(self.out_port), ow.dst)

        ready = Signal(2)                 # groups whose results are in, not yet taken
        active = Signal()
        grp = Signal(group_layout(g))
        take_group = ~active & self.groups.valid & (ready != 0)
        m.d.comb += self.groups.ready.eq(take_group)
        m.d.sync += ready.eq(ready + self.group_done - take_group)
        cmd_i, rd_i, sent = Signal(range(g.acc_rows + 1)), Signal(range(g.acc_rows + 1)), \
            Signal(range(g.acc_rows + 1))
        with m.If(take_group):
            m.d.sync += [active.eq(1), grp.eq(self.groups.p), cmd_i.eq(0), rd_i.eq(0),
                         sent.eq(0)]

        # Row commands: the writer's, and the old output's reader's when accumulating.
        accumulate = op.accumulate
        row_addr = op.out_addr + (grp.m0 + cmd_i) * op.out_stride + (grp.n0 << 2)
        nbytes = grp.nc << 2
        cmd_go = active & (cmd_i < grp.mt)
        m.d.comb += [ow.cmd.valid.eq(cmd_go & (ar.cmd.ready | ~accumulate)),
                     ow.cmd.p.src.eq(0), ow.cmd.p.dst.eq(row_addr), ow.cmd.p.n.eq(nbytes),
                     ar.cmd.valid.eq(cmd_go & accumulate & ow.cmd.ready),
                     ar.cmd.p.src.eq(row_addr), ar.cmd.p.dst.eq(0), ar.cmd.p.n.eq(nbytes)]
        with m.If(ow.cmd.valid & ow.cmd.ready):
            m.d.sync += cmd_i.eq(cmd_i + 1)

        # Row data: the accumulator row (read a cycle ahead), plus the old output.
        have = Signal()                   # self.acc.data holds row sent
        have_old = ar.out.valid | ~accumulate
        take = have & have_old & ow.inp.ready
        W = p.line_bytes
        result = Cat(*[((self.acc.data.word_select(j, 32) if j < g.C else Const(0, 32))
                        + Mux(accumulate, ar.out.p.data.word_select(j, 32), 0))[:32]
                       for j in range(W // 4)])
        m.d.comb += [ow.inp.valid.eq(have & have_old), ow.inp.payload.eq(result),
                     ar.out.ready.eq(have & accumulate & ow.inp.ready),
                     self.acc.addr.eq(Cat(rd_i[:log2(g.acc_rows)], grp.half)),
                     self.acc.en.eq(~have | take)]
        with m.If(active & (~have | take)):
            m.d.sync += have.eq(rd_i < grp.mt)
            with m.If(rd_i < grp.mt):
                m.d.sync += rd_i.eq(rd_i + 1)
        with m.If(take):
            m.d.sync += sent.eq(sent + 1)
            with m.If(sent + 1 == grp.mt):
                m.d.sync += active.eq(0)
                m.d.comb += self.half_done.eq(Const(1, 2) << grp.half)
                with m.If(grp.last):
                    m.d.sync += self.finished.eq(1)
        with m.If(self.start):
            m.d.sync += [self.finished.eq(0), ready.eq(0), active.eq(0), have.eq(0)]
        m.d.comb += self.idle.eq(ow.idle)
        return m


class MatmulUnit(wiring.Component):
    """Members
    -------
    buffers, filler, feeder, array, accumulator, writeback : the components (attributes,
        so that testbenches can watch their ports).
    start, word : a ``MATMUL`` instruction word to execute.
    done : the cycle its last result row has been written.
    busy : from ``start`` to ``done``.
    port0..3 : L2 ports: x reader, weight reader, old-output reader, row writer.
    """

    N_PORTS = 4

    def __init__(self, *, params: RtlParams):
        check_params(params)
        hw = params.hw
        W = params.line_bytes
        R, C = hw.array_rows, hw.array_cols
        if W % R or R & (R - 1):
            raise ValueError(f"{hw.name}: array_rows = {R} must be a power of two dividing the "
                             f"line of {W} bytes")
        if C > W // 4:
            raise ValueError(f"{hw.name}: array_cols = {C} int32 results must fit one line "
                             f"of {W} bytes")
        self.params = params
        g = self.geometry = Geometry(params=params)
        self.buffers = TileBuffers(geometry=g)
        self.filler = TileFiller(params=params, geometry=g)
        self.feeder = Feeder(geometry=g)
        self.array = SystolicArray(rows=g.R, cols=g.C, tag_bits=tag_layout(g).size)
        self.accumulator = Accumulator(geometry=g)
        self.writeback = Writeback(params=params, geometry=g)
        port = MemPort(params.l2_addr_bits, params.line_bytes)
        members = {"start": In(1), "word": In(isa.INSTR_BITS), "done": Out(1), "busy": Out(1)}
        for i in range(self.N_PORTS):
            members[f"port{i}"] = Out(port)
        super().__init__(members)

    def port(self, i: int):
        return getattr(self, f"port{i}")

    def elaborate(self, platform):
        g = self.geometry
        m = Module()
        m.submodules.buffers = buffers = self.buffers
        m.submodules.filler = filler = self.filler
        m.submodules.feeder = feeder = self.feeder
        m.submodules.array = array = self.array
        m.submodules.accumulator = acc = self.accumulator
        m.submodules.writeback = wb = self.writeback
        m.submodules.groups = groups = fifo.SyncFIFOBuffered(width=group_layout(g).size,
                                                             depth=2)

        op = Signal(op_layout())
        for name in OP_FIELDS:
            m.d.comb += getattr(op, name).eq(field(self.word, "MATMUL", name))
        held = Signal(op_layout())
        with m.If(self.start):
            m.d.sync += held.eq(op)
        for unit in (filler, feeder, wb):
            m.d.comb += [unit.op.eq(held), unit.start.eq(self.start)]

        for i, side in enumerate((filler.x_port, filler.w_port, wb.acc_port, wb.out_port)):
            wiring.connect(m, wiring.flipped(self.port(i)), side)
        wiring.connect(m, buffers.x_write, filler.x_write)
        wiring.connect(m, buffers.w_write, filler.w_write)
        wiring.connect(m, buffers.x_read, feeder.x_read)
        wiring.connect(m, buffers.w_read, feeder.w_read)
        if g.mx:
            wiring.connect(m, buffers.e_write, filler.e_write)
            wiring.connect(m, buffers.e_read, feeder.e_read)
        wiring.connect(m, filler.tiles, feeder.tiles)
        m.d.comb += [filler.release.eq(feeder.release),
                     array.mode.eq(held.mode), array.load.eq(feeder.load),
                     array.feed.eq(feeder.feed), acc.result.eq(array.result),
                     wb.group_done.eq(acc.group_done), feeder.half_done.eq(wb.half_done)]
        wiring.connect(m, feeder.groups, groups.w_stream)
        m.d.comb += [wb.groups.valid.eq(groups.r_stream.valid),
                     wb.groups.payload.eq(groups.r_stream.payload),
                     groups.r_stream.ready.eq(wb.groups.ready)]
        wiring.connect(m, acc.read, wb.acc)

        running = Signal()
        with m.If(self.start):
            m.d.sync += running.eq(1)
        finished = running & wb.finished & wb.idle & ~self.start
        with m.If(finished):
            m.d.sync += running.eq(0)
        m.d.comb += [self.busy.eq(running), self.done.eq(finished)]
        return m
