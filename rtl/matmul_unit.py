"""The matmul unit: ``MATMUL`` from L2 through tile buffers into the hybrid systolic array.

Contract
--------
``MatmulUnit(params)`` executes one ``MATMUL`` word at a time (``start`` with ``word``;
``done`` once the last result row is written), bit-exact with the ISA simulator
(``out[i][j] (+)= sum_k x[i][k] * w(j, k)``, int8 x int8 -> int32, wrapping), for both
modes, both weight layouts and any ``m``, ``k``, ``n`` (edges that do not divide the
array are padded: the x bytes beyond ``k`` are zeroed, the columns beyond ``n`` are
computed and not written).

The output is computed in *tiles*: ``MT = R`` rows of x, ``C`` output channels, ``KT``
bytes of the reduction (``KT = 8 W``). For each tile

1. the *filler* reads the x rows (row reader ``port0``) into the x buffer and the weights
   (row reader ``port1``) into ``C`` weight buffers, one per array column: ``NK`` weight
   rows land whole (a row per column); ``KN`` rows of ``C`` bytes are scattered, byte
   ``c`` to column ``c`` (the transpose); both buffers are double buffered, so the filler
   loads the next tile while the array computes this one. With fewer x rows than ``NK``
   weight rows (GEMV), the x reader also takes the last ``(nc - mt) // 2`` weight rows,
   so that a decode tile fills at about two lines per cycle;
2. the array consumes ``R``-byte chunks of the reduction: **GEMV** presents a fresh
   ``R x C`` weight block with each x row every cycle; **GEMM** shifts the block in
   (``R`` cycles), streams the rows, and drains the array before the next block;
3. the ``C`` int32 column results are added into per-row accumulators; after the last
   reduction tile each row is written (row writer ``port3``), first added to the old
   output (row reader ``port2``) when ``accumulate`` is set.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from arch import isa
from rtl.common import RtlParams, log2
from rtl.copier import RowCopier
from rtl.decode import field
from rtl.dram import MemPort
from rtl.systolic import SystolicArray


def tile_depth(params: RtlParams) -> int:
    """``KT``: bytes of the reduction per tile."""
    return 8 * params.line_bytes


class MatmulUnit(wiring.Component):
    N_PORTS = 4

    def __init__(self, params: RtlParams):
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
        port = MemPort(params.l2_addr_bits, params.line_bytes)
        members = {"start": In(1), "word": In(isa.INSTR_BITS), "done": Out(1), "busy": Out(1)}
        for i in range(self.N_PORTS):
            members[f"port{i}"] = Out(port)
        super().__init__(members)

    def port(self, i: int):
        return getattr(self, f"port{i}")

    def elaborate(self, platform):
        p, hw = self.params, self.params.hw
        W, R, C = p.line_bytes, hw.array_rows, hw.array_cols
        MT, KT = R, tile_depth(p)
        KB = KT // W                      # buffer lines per row per tile
        m = Module()
        xr = RowCopier(p, src_l2=True, dst_stream=True)
        wr = RowCopier(p, src_l2=True, dst_stream=True)
        ar = RowCopier(p, src_l2=True, dst_stream=True)
        ow = RowCopier(p, dst_l2=True, src_stream=True)
        m.submodules.x_reader, m.submodules.w_reader = xr, wr
        m.submodules.acc_reader, m.submodules.out_writer = ar, ow
        for i, side in enumerate((xr.src, wr.src, ar.src, ow.dst)):
            wiring.connect(m, wiring.flipped(self.port(i)), side)
        m.submodules.array = array = SystolicArray(rows=R, cols=C)

        m.submodules.xbuf = xbuf = memory.Memory(shape=8 * W, depth=2 * MT * KB, init=[])
        x_wp, x_rp = xbuf.write_port(), xbuf.read_port()
        wbufs, w_wps, w_rps = [], [], []
        for c in range(C):
            mem = memory.Memory(shape=8 * W, depth=2 * KB, init=[])
            m.submodules[f"wbuf{c}"] = mem
            wbufs.append(mem)
            w_wps.append(mem.write_port(granularity=8))
            w_rps.append(mem.read_port())

        word = Signal(isa.INSTR_BITS)

        def f(name):
            return field(word, "MATMUL", name)

        gemv = f("mode") == isa.MatmulMode.GEMV
        kn = f("w_layout") == isa.WeightLayout.KN
        M, K, N = f("m"), f("k"), f("n")

        def tile_walker(prefix):
            """Counters over the tiles (m0, n0, kt), and the statements that advance them."""
            m0 = Signal(16, name=f"{prefix}_m0")
            n0 = Signal(20, name=f"{prefix}_n0")
            kt = Signal(20, name=f"{prefix}_kt")
            last_kt = kt + KT >= K
            last_n = n0 + C >= N
            last = last_kt & last_n & (m0 + MT >= M)
            step = [kt.eq(Mux(last_kt, 0, kt + KT))]
            with_n = [n0.eq(Mux(last_kt, Mux(last_n, 0, n0 + C), n0))]
            with_m = [m0.eq(Mux(last_kt & last_n, m0 + MT, m0))]
            reset = [m0.eq(0), n0.eq(0), kt.eq(0)]
            kl = Signal(20, name=f"{prefix}_kl")
            mt = Signal(16, name=f"{prefix}_mt")
            nc = Signal(20, name=f"{prefix}_nc")
            m.d.comb += [kl.eq(Mux(last_kt, K - kt, KT)),
                         mt.eq(Mux(m0 + MT >= M, M - m0, MT)),
                         nc.eq(Mux(last_n, N - n0, C))]
            return dict(m0=m0, n0=n0, kt=kt, kl=kl, mt=mt, nc=nc, last_kt=last_kt, last=last,
                        advance=step + with_n + with_m, reset=reset)

        full = Signal(2)                  # buffer set holds a filled tile

        # ------------------------------------------------------------------ filler -----------
        ft = tile_walker("fill")
        fset = Signal()
        filling = Signal()
        x_cmd, w_cmd = Signal(16), Signal(20)
        x_row, x_beat = Signal(16), Signal(range(KB + 1))
        w_row, w_beat = Signal(20), Signal(range(KB + 1))
        w_rows = Mux(kn, ft["kl"], ft["nc"])
        # NK weight rows are as long as x rows: when the tile has fewer x rows than weight
        # rows (GEMV), the x reader takes the last ``x_w`` weight rows after its x rows,
        # so that the two readers share the tile and it fills about twice as fast.
        x_w = Signal(16)
        m.d.comb += x_w.eq(Mux(~kn & (ft["nc"] > ft["mt"]), (ft["nc"] - ft["mt"]) >> 1, 0))
        split = w_rows - x_w              # weight rows [0, split) on w_reader, the rest on x
        x_rows = ft["mt"] + x_w
        set_free = ~full.bit_select(fset, 1)
        issue_ok = filling & set_free

        def nk_row(r):
            return f("w_addr") + (ft["n0"] + r) * f("w_stride") + ft["kt"]

        m.d.comb += [
            xr.cmd.valid.eq(issue_ok & (x_cmd < x_rows)),
            xr.cmd.p.src.eq(Mux(x_cmd < ft["mt"],
                                f("x_addr") + (ft["m0"] + x_cmd) * f("x_stride") + ft["kt"],
                                nk_row(split + x_cmd - ft["mt"]))),
            xr.cmd.p.dst.eq(0), xr.cmd.p.n.eq(ft["kl"]),
            wr.cmd.valid.eq(issue_ok & (w_cmd < split)),
            wr.cmd.p.src.eq(Mux(kn, f("w_addr") + (ft["kt"] + w_cmd) * f("w_stride") + ft["n0"],
                                nk_row(w_cmd))),
            wr.cmd.p.dst.eq(0), wr.cmd.p.n.eq(Mux(kn, ft["nc"], ft["kl"])),
        ]
        with m.If(xr.cmd.valid & xr.cmd.ready):
            m.d.sync += x_cmd.eq(x_cmd + 1)
        with m.If(wr.cmd.valid & wr.cmd.ready):
            m.d.sync += w_cmd.eq(w_cmd + 1)

        def expand(mask):
            return Cat(*[Mux(mask[b], Const(0xFF, 8), Const(0, 8)) for b in range(W)])

        # x rows: beats land whole, bytes beyond the row zeroed (they pad the reduction).
        x_is_w = x_row >= ft["mt"]        # the x reader is past its x rows: weight rows
        m.d.comb += [xr.out.ready.eq(1),
                     x_wp.addr.eq(fset * (MT * KB) + x_row * KB + x_beat),
                     x_wp.data.eq(xr.out.p.data & expand(xr.out.p.mask)),
                     x_wp.en.eq(xr.out.valid & ~x_is_w)]
        with m.If(xr.out.valid):
            m.d.sync += [x_row.eq(Mux(xr.out.p.last, x_row + 1, x_row)),
                         x_beat.eq(Mux(xr.out.p.last, 0, x_beat + 1))]
        # Weight rows: NK rows land whole in their column's buffer; KN rows scatter.
        m.d.comb += wr.out.ready.eq(1)
        kk_line, kk_byte = w_row >> log2(W), w_row[:log2(W)]
        for c in range(C):
            with m.If(kn):
                m.d.comb += [w_wps[c].addr.eq(fset * KB + kk_line),
                             w_wps[c].data.eq(wr.out.p.data.word_select(c, 8).replicate(W)),
                             w_wps[c].en.eq(Mux(wr.out.valid, Const(1, W) << kk_byte, 0))]
            with m.Elif(c >= split):      # NK rows from the x reader
                m.d.comb += [w_wps[c].addr.eq(fset * KB + x_beat),
                             w_wps[c].data.eq(xr.out.p.data),
                             w_wps[c].en.eq(Mux(xr.out.valid & x_is_w
                                                & (x_row - ft["mt"] + split == c),
                                                (1 << W) - 1, 0))]
            with m.Else():
                m.d.comb += [w_wps[c].addr.eq(fset * KB + w_beat),
                             w_wps[c].data.eq(wr.out.p.data),
                             w_wps[c].en.eq(Mux(wr.out.valid & (w_row == c), (1 << W) - 1, 0))]
        with m.If(wr.out.valid):
            m.d.sync += [w_row.eq(Mux(wr.out.p.last, w_row + 1, w_row)),
                         w_beat.eq(Mux(wr.out.p.last, 0, w_beat + 1))]
        tile_filled = filling & (x_row == x_rows) & (w_row == split) & \
            (x_cmd == x_rows) & (w_cmd == split)
        with m.If(tile_filled):
            m.d.sync += [x_cmd.eq(0), w_cmd.eq(0), x_row.eq(0), w_row.eq(0), x_beat.eq(0),
                         w_beat.eq(0), fset.eq(~fset), *ft["advance"]]
            with m.If(ft["last"]):
                m.d.sync += filling.eq(0)

        # ------------------------------------------------------------------ compute ----------
        ct = tile_walker("comp")
        cset = Signal()
        computing = Signal()
        chunk = Signal(20)                # R-byte chunk of the reduction within the tile
        row = Signal(16)                  # x row being fed, or weight row being shifted in
        n_chunks = (ct["kl"] + R - 1) >> log2(R)
        chunk_line = (chunk * R) >> log2(W)
        m.d.comb += [x_rp.addr.eq(cset * (MT * KB) + row * KB + chunk_line)]
        m.d.comb += [rp.addr.eq(cset * KB + chunk_line) for rp in w_rps]

        st_feed, st_shift = Signal(), Signal()
        st_sel = Signal(range(max(2, W // R)))
        st_s = Signal(range(max(2, R)))
        m.d.sync += [st_feed.eq(0), st_shift.eq(0)]
        m.d.comb += [array.mode.eq(f("mode")), array.valid.eq(st_feed),
                     array.w_shift.eq(st_shift)]
        x_chunk = x_rp.data.word_select(st_sel, 8 * R)
        for r in range(R):
            m.d.comb += array.x[r].eq(x_chunk.word_select(r, 8))
        for c in range(C):
            w_chunk = w_rps[c].data.word_select(st_sel, 8 * R)
            m.d.comb += array.w_row[c].eq(w_chunk.word_select(st_s, 8))
            for r in range(R):
                m.d.comb += array.w_block[r][c].eq(w_chunk.word_select(r, 8))

        # Accumulators: one row of C int32 per x row of the tile.
        acc = Array(Array(Signal(signed(32), name=f"acc_{i}_{c}") for c in range(C))
                    for i in range(MT))
        out_i = Signal(16)
        outstanding = Signal(24)
        fed = st_feed
        got = array.out_valid
        m.d.sync += outstanding.eq(outstanding + fed - got)
        with m.If(got):
            for c in range(C):
                m.d.sync += acc[out_i][c].eq(acc[out_i][c] + array.out[c])
            m.d.sync += out_i.eq(Mux(out_i + 1 == ct["mt"], 0, out_i + 1))

        released = Signal()
        drain = Signal(range(R + C + 2))
        wb_cmd, wb_row = Signal(16), Signal(16)
        accumulate = f("accumulate")
        out_row_addr = f("out_addr") + (ct["m0"] + wb_cmd) * f("out_stride") + (ct["n0"] << 2)
        lanes_w = W // 4
        old = ar.out.p.data
        result = Cat(*[((Const(0, 32) if j >= C else acc[wb_row][j])
                        + Mux(accumulate, old.word_select(j, 32), 0))[:32] for j in range(lanes_w)])

        with m.FSM():
            with m.State("IDLE"):
                with m.If(computing):
                    m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(full.bit_select(cset, 1)):
                    m.d.sync += [chunk.eq(0), row.eq(0)]
                    m.next = "FEED"
            with m.State("FEED"):
                # GEMV: every (chunk, row) is one cycle of the array. GEMM: each chunk is
                # R shift cycles, then one cycle per row, then a drain.
                with m.If(gemv):
                    m.d.sync += [st_feed.eq(1), st_sel.eq(chunk[:max(1, log2(W // R))]
                                                          if W > R else 0)]
                    last_row = row + 1 == ct["mt"]
                    m.d.sync += row.eq(Mux(last_row, 0, row + 1))
                    with m.If(last_row):
                        m.d.sync += chunk.eq(chunk + 1)
                        with m.If(chunk + 1 == n_chunks):
                            m.next = "RELEASE"
                with m.Else():
                    m.d.sync += [st_shift.eq(1), st_s.eq(R - 1 - row),     # last row first
                                 st_sel.eq(chunk[:max(1, log2(W // R))] if W > R else 0)]
                    m.d.sync += row.eq(Mux(row + 1 == R, 0, row + 1))
                    with m.If(row + 1 == R):
                        m.next = "STREAM"
            with m.State("STREAM"):
                m.d.sync += [st_feed.eq(1),
                             st_sel.eq(chunk[:max(1, log2(W // R))] if W > R else 0)]
                m.d.sync += row.eq(Mux(row + 1 == ct["mt"], 0, row + 1))
                with m.If(row + 1 == ct["mt"]):
                    m.d.sync += drain.eq(0)
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                # The last x row must pass every PE before the next block shifts in.
                m.d.sync += drain.eq(drain + 1)
                with m.If(drain == R + C):
                    m.d.sync += chunk.eq(chunk + 1)
                    with m.If(chunk + 1 == n_chunks):
                        m.next = "RELEASE"
                    with m.Else():
                        m.next = "FEED"
            with m.State("RELEASE"):
                # The buffers of this tile are free for the filler.
                m.d.comb += released.eq(1)
                m.d.sync += cset.eq(~cset)
                with m.If(ct["last_kt"]):
                    m.next = "FLUSH"
                with m.Else():
                    m.d.sync += ct["advance"]
                    m.next = "WAIT"
            with m.State("FLUSH"):
                with m.If((outstanding == 0) & ~fed):
                    m.d.sync += [wb_cmd.eq(0), wb_row.eq(0)]
                    m.next = "WB_CMD"
            with m.State("WB_CMD"):
                nbytes = ct["nc"] << 2
                m.d.comb += [ow.cmd.valid.eq(ar.cmd.ready | ~accumulate),
                             ow.cmd.p.src.eq(0), ow.cmd.p.dst.eq(out_row_addr),
                             ow.cmd.p.n.eq(nbytes),
                             ar.cmd.valid.eq(accumulate & ow.cmd.ready),
                             ar.cmd.p.src.eq(out_row_addr), ar.cmd.p.dst.eq(0),
                             ar.cmd.p.n.eq(nbytes)]
                with m.If(ow.cmd.valid & ow.cmd.ready):
                    m.d.sync += wb_cmd.eq(wb_cmd + 1)
                    with m.If(wb_cmd + 1 == ct["mt"]):
                        m.next = "WB_DATA"
            with m.State("WB_DATA"):
                have = ar.out.valid | ~accumulate
                m.d.comb += [ow.inp.valid.eq(have), ow.inp.payload.eq(result),
                             ar.out.ready.eq(accumulate & ow.inp.ready)]
                with m.If(have & ow.inp.ready):
                    for c in range(C):
                        m.d.sync += acc[wb_row][c].eq(0)
                    m.d.sync += wb_row.eq(wb_row + 1)
                    with m.If(wb_row + 1 == ct["mt"]):
                        m.d.sync += ct["advance"]
                        with m.If(ct["last"]):
                            m.d.sync += computing.eq(0)
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "WAIT"

        # The filler fills a set, the compute side empties it (on leaving RELEASE's tile).
        set_fill = Mux(tile_filled, Const(1, 2) << fset, 0)
        clear = Mux(released, Const(1, 2) << cset, 0)
        m.d.sync += full.eq((full | set_fill) & ~clear)

        # ------------------------------------------------------------------ control ----------
        running = Signal()
        with m.If(self.start):
            m.d.sync += [word.eq(self.word), running.eq(1), filling.eq(1), computing.eq(1),
                         fset.eq(0), cset.eq(0), full.eq(0), out_i.eq(0),
                         *ft["reset"], *ct["reset"]]
        idle = ~filling & ~computing & ow.idle
        with m.If(running & idle & ~self.start):
            m.d.sync += running.eq(0)
        m.d.comb += [self.busy.eq(running), self.done.eq(running & idle & ~self.start)]
        return m
