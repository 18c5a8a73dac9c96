"""The fast path: a decode step of a large model timed without compiling it.

Contract
--------
``decode_step(cfg, hw, position, prefetch)`` estimates one decode step at KV length
``position`` in well under a second for 1B-class models, and returns a ``StepEstimate``
(cycles, busy cycles of the load and compute engines, DRAM bytes). ``workload(cfg, hw,
prompt_len, output_len, prefetch)`` estimates a whole generation — the prefill of
``prompt_len`` tokens, which yields the first output token, then ``output_len - 1``
decode steps — without timing every step.

Method (``docs/perf.md``). One mapping: nothing about tiling, chunking or L2 is derived
here. The step is the compiler's own plan of a one-layer copy of the model (every layer
lowers to the same stream): the front end's IR graph (``frontend.lower_step``, shapes
only), the LM head chunked and the prefill split as the driver does
(``driver.fit_head``, ``driver.prefill_graphs``), the L2 planned by ``backend.plan_l2``,
and each operation lowered by ``backend.Generator``'s own code, whose emitted
instructions ``_Timing`` costs with ``arch.occupancy`` (the RTL-calibrated numbers)
into *tiles*: a load and the compute instruction after it. A matmul's weight tiles come
from ``backend.matmul_tiles`` costed once per shape, so a 1B-class layer does not
build its thousands of instructions.

The tiles then run through a model of the two engines (``_schedule``, ``_pipeline``):
where ``compiler.schedule.hoist`` places each load (replayed in tile terms: the staging
ring as ``backend.Ring`` allocates it, ``LOOKAHEAD`` loads ahead, the KV pages a
prefetch shares with the step's ``KV_APPEND``), each load beginning when the load engine
is free, its dependency has ended and it has been dispatched, its rows through the
copier after the previous load's (``timing.Copies``), delayed by the DRAM lines that
instruction fetch and the store engine take and, iterated as ``sweeps.perf`` does, by
the L2 lines the compute engine's ports take over its interval and by the paced
compute streams it is held behind (``sweeps.perf._trapped``); each compute beginning
when the one before has ended and the loads it reads have. The layer's tiles are
repeated (the pipeline carries across layer boundaries), so the cost does not grow with
depth.

A workload's decode steps differ only in KV length, and a step's time is affine in the
KV length between changes of the KV chunking, but for a jump at each KV block boundary;
``workload`` times steps at a few positions, each in the middle of a block
(``decode_positions``), and integrates the piecewise-linear interpolation (``python -m
benchmarks.perf_model --only workload`` checks it against step-by-step timing).

Tested by tests/sweeps/test_perf_model.py (the fast path against the instruction-level
model).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cache, lru_cache
from types import SimpleNamespace

import numpy as np

from arch.hardware import HardwareConfig
from arch.isa import Engine, KvFormat, make
from arch.kernels import njit
from arch.matmul_timing import matmul_alignment
from arch.occupancy import (
    CALIBRATION,
    SEGMENT_FIELDS,
    CopiesTable,
    chunked_prefetch_occupancy,
    kv_budget_widths,
    load_data_delay,
    matmul_mode,
    occupancy,
    queue_after,
)
from arch.timing import MAX_STEPPED_BANKS
from arch.uarch import (
    DEFERRED,
    DISPATCH_LATENCY,
    ENGINE_START_CYCLES,
    FETCH_AHEAD,
    FETCH_START,
    KV_CHUNK_MAX_COLS,
    QUEUE_DEPTH,
)
from compiler.backend import (
    LOWERINGS,
    MAX_INFLIGHT_SLOTS,
    BuildContext,
    Generator,
    Ring,
    matmul_tiles,
    plan_l2,
    weight_tile_loads,
)
from compiler.driver import (
    MAX_BATCH,
    batched_decode_graph,
    dram_map,
    fit_head,
    head_scratch_bytes,
    packed_graph,
    param_sizes,
    prefill_graphs,
)
from compiler.frontend import lower_step
from compiler.ir import (
    Attention,
    Buffer,
    Embed,
    Graph,
    KvAppend,
    Output,
    ResAdd,
    RmsNorm,
    Rope,
    Tensor,
)
from compiler.schedule import LOOKAHEAD, PAGE
from models.config import ModelConfig
from models.integer import check_weight_format, quant_struct
from sweeps.perf import (
    CONTENTION_PASSES,
    _l2_span,
    _stolen_lines,
    _trapped_cycles,
    _usage_lines,
)

DMA_END = CALIBRATION.dma_end
LOAD_END = CALIBRATION.load_end


@dataclass(frozen=True)
class StepEstimate:
    cycles: int
    load_busy: int
    compute_busy: int
    dram_read_bytes: int
    macs: int
    kv_read_bytes: int = 0        # of dram_read_bytes: the KV prefetches' (past K and V)

    def seconds(self, hw: HardwareConfig) -> float:
        return self.cycles / hw.clock_hz


def _tile(load=0, compute: int = 0, staged: int = 0, extra: float = 0.0,
          compute_l2: int = 0, load_l2: int = 0,
          paced: tuple[int, int, int, int] = (0, 0, 0, 0)
          ) -> list:
    """A tile in ``_Tiles``' layout."""
    return [load, compute, staged, 0, 0, extra, 0.0, compute_l2, load_l2, 0, 0, *paced]


class _Tiles:
    """Tiles in program order, ``(load, compute cycles, staged bytes, reader, after,
    extra, stores, compute L2 lines, load L2 lines, after cycles)``, plus totals (DRAM bytes read,
    MACs, L2 lines moved). ``load``: the load's ``timing.Copies``, a ``CHUNKED`` KV
    prefetch's cycles (an int: it has no row copier), or 0 for none;
    ``staged``: its bytes in the staging ring; ``reader``: the tile that far ahead holds
    the first compute reading the load (0: the first compute at or after it); ``after``
    (negative): the load reads what the compute of the tile that far back produced (0:
    nothing); ``extra``: the DRAM cycles instruction fetch (a line per instruction) took
    since the last load, which delay this one's copier; ``stores``: the DRAM cycles of
    the store engine instructions that begin when this tile's compute ends; then the L2
    lines the compute and the load move; the place, among ``after``'s stores, of the
    ``KV_APPEND`` the load waits for (0: it waits for ``after``'s compute); and the store
    engine's instructions that begin when this tile's compute has ended and the store
    engine has taken the ones before, ``(copies, cycles)`` each (the program ends when
    the store engine has finished too: a batched decode step ends with two stores per
    sequence); and the compute's paced cycles and lines, its bursts' starts and the
    cycles it keeps one bank busy (``Occupancy.paced_cycles``, ``resumes``,
    ``camped_cycles``)."""

    def __init__(self, hw: HardwareConfig):
        self.hw = hw
        self.tiles: list = []                    # lists; the cached matmul tiles' tuples
        # each tile object once, in the order first added, and each tile's place there
        # (``_named`` names the objects, not the tens of thousands of tiles)
        self.objects: list = []
        self.index: list[int] = []
        self._places: dict[int, int] = {}       # id(object) -> its place
        self.block_memo: dict[tuple, dict] = {}  # ``_Timing.matmul``'s blocks, by shape
        self.read = self.macs = self.l2 = self.kv = 0
        self.pending = 0.0
        self.first_rope: int | None = None       # the tile of the first ROPE
        self.store_tile = -1                     # the tile the last store went to

    def place(self, tile) -> int:
        """``tile``'s place in ``objects`` (added there if new)."""
        k = self._places.get(id(tile))
        if k is None:
            k = self._places[id(tile)] = len(self.objects)
            self.objects.append(tile)
        return k

    def add(self, tile) -> None:
        self.tiles.append(tile)
        self.index.append(self.place(tile))

    def replace(self, i: int, tile) -> None:
        """Tile ``i`` is ``tile`` (a copy to be changed: the old one may recur)."""
        self.tiles[i] = tile
        self.index[i] = self.place(tile)

    def add_load(self, occ, staged: int, kv: bool = False) -> int:
        """A load engine instruction (``kv``: a KV prefetch, whose bytes are the past KV's)."""
        self.read += occ.dram_read_bytes
        self.kv += occ.dram_read_bytes if kv else 0
        self.l2 += occ.l2_lines
        self.pending += self.hw.dram_cycles_per_line
        # a row copier's ``Copies``; a chunked KV prefetch's cycles (``_run``)
        load = occ.copies if occ.copies is not None else occ.cycles if occ.after_copier else 0
        self.add(_tile(load, staged=staged, extra=self.pending, load_l2=occ.l2_lines))
        self.pending = 0.0
        return len(self.tiles) - 1

    def add_compute(self, instr) -> int:
        """``instr`` on the compute engine: in the tile of the load just before it if that
        has no compute yet, else a tile of its own."""
        occ = occupancy(instr, self.hw)
        self.macs += occ.macs
        self.l2 += occ.l2_lines
        self.pending += self.hw.dram_cycles_per_line
        cycles = occ.cycles + ENGINE_START_CYCLES
        last = self.tiles[-1] if self.tiles else None
        paced = (occ.paced_cycles, occ.paced_lines, occ.resumes, occ.camped_cycles)
        if type(last) is list and last[0] and not last[1]:
            last[1], last[7] = cycles, occ.l2_lines
            last[11], last[12], last[13], last[14] = paced
        else:
            self.add(_tile(compute=cycles, compute_l2=occ.l2_lines, paced=paced))
        return len(self.tiles) - 1

    def add_store(self, occ, producer: int) -> tuple[int, int]:
        """A store engine instruction, begun once the compute of tile ``producer`` has
        ended and the store engine has taken the one before (it runs them in program
        order): its DRAM lines and its copies (``timing.Copies``, timed by ``_run``'s
        store copier) go to the later of the two tiles. Returns that tile and the
        instruction's place among the tile's stores (from 1)."""
        self.pending += self.hw.dram_cycles_per_line
        tile = producer if producer > self.store_tile else self.store_tile
        self.store_tile = tile
        if not 0 <= tile < len(self.tiles):
            return tile, 0
        t = self.tiles[tile]
        t[6] += occ.dram_lines * self.hw.dram_cycles_per_line
        t[10] = (t[10] or ()) + ((occ.copies, occ.cycles),)
        return tile, len(t[10])

    def totals(self) -> tuple[int, int, int, int]:
        """DRAM bytes read, MACs, L2 lines moved, KV bytes read."""
        return self.read, self.macs, self.l2, self.kv


def _matmul_instr(hw: HardwareConfig, fields: dict):
    return make("MATMUL", mode=matmul_mode(hw, **fields), **fields)


@lru_cache(maxsize=16384)
def _matmul_tile(hw: HardwareConfig, m: int, k_total: int, n_total: int, n: int,
                 accumulate: bool, k: int, weights: str, x_addr: int, w_addr: int,
                 out_addr: int, e_addr: int, loads: tuple) -> tuple:
    """One weight tile of a matmul as ``backend.Generator.matmul`` streams it (its
    ``loads``, ``backend.weight_tile_loads``' with each offset modulo the line: one, or
    for MXINT4 weights the packed elements' and the block exponents', then its
    ``MATMUL``): ``(tiles, DRAM bytes read, MACs, L2 lines)``. The L2 addresses are taken
    as ``arch.matmul_timing.matmul_alignment`` reduces them (all the MATMUL's timing reads of
    them), so each is costed once; the loads go into the slots at ``w_addr`` and
    ``e_addr`` (the fast path's DRAM map puts each parameter at 0)."""
    mx = weights == "mxint4"
    cpl = hw.dram_cycles_per_line
    w_bytes = (k + 1) // 2 if mx else k
    fields = dict(accumulate=int(accumulate), w_layout=0, x_addr=x_addr, w_addr=w_addr,
                  out_addr=out_addr, w_format=int(mx), e_addr=e_addr, m=m, k=k, n=n,
                  x_stride=k_total, w_stride=w_bytes, out_stride=4 * n_total)
    mm = occupancy(_matmul_instr(hw, fields), hw)
    tiles, read, lines = [], 0, mm.l2_lines
    for i, ((dram_addr, rows, row_bytes, dram_stride), l2_addr) in enumerate(
            zip(loads, (w_addr, e_addr), strict=False)):
        occ = occupancy(make("DMA_LOAD", dram_addr=dram_addr, l2_addr=l2_addr, rows=rows,
                             row_bytes=row_bytes, dram_stride=dram_stride,
                             l2_stride=row_bytes), hw)
        last = i == len(loads) - 1        # the MATMUL goes with the last load's tile
        compute = mm.cycles + ENGINE_START_CYCLES if last else 0
        # the load's and the matmul's fetch lines go with the tile
        tiles.append(tuple(_tile(occ.copies, compute, rows * row_bytes, cpl * (1 + last),
                                 mm.l2_lines if last else 0, occ.l2_lines,
                                 (mm.paced_cycles, mm.paced_lines, mm.resumes,
                                  mm.camped_cycles) if last else (0, 0, 0, 0))))
        read += occ.dram_read_bytes
        lines += occ.l2_lines
    return tuple(tiles), read, mm.macs, lines


class _NoDram:
    """The memory map of a build without one: every region and parameter at 0, of size 0
    (the fast path times operations, whose DRAM addresses and pool sizes do not change
    their occupancy)."""

    def __getitem__(self, name):
        return SimpleNamespace(offset=0, size=0)


def _shares_a_page(c0: int, n: int, start: int, col_offset: int, col_bytes: int,
                   row_bytes: int, block_tokens: int, page: int = PAGE) -> bool:
    """Whether a ``KV_PREFETCH`` of tokens ``[c0, c0 + n)`` (columns ``col_offset`` to
    ``col_offset + col_bytes`` of each row) reads a 64-byte page that the step's
    ``KV_APPEND`` from token ``start`` writes: the scheduler (``compiler.schedule``, at
    that page granularity, a run of rows as one span) then keeps the prefetch after the
    append, so after the compute producing the appended rows. Only rows in ``start``'s
    block can share a page with it (blocks are whole pages)."""
    first = max(c0, start - start % block_tokens)
    last = min(c0 + n, start) - 1
    if last < first:
        return False
    read_end = (last % block_tokens) * row_bytes + col_offset + col_bytes
    return (read_end - 1) // page >= (start % block_tokens) * row_bytes // page


#: Whether ``_Timing.matmul`` takes a block of output channels from one timed before that
#: began alike, and repeats the blocks between two that begin alike at once, rather than
#: timing each (a test times both ways).
_REPLAY = True


class _Timing(Generator):
    """The back end's own lowerings (``backend.Generator``) with every instruction
    costed into tiles instead of encoded: the fast path times exactly what the compiler
    emits, except that a matmul's weight tiles come from ``_matmul_tile`` (the same
    ``backend.matmul_tiles`` and staging slots, each tile costed once per shape and
    alignment). One layer is timed and repeated: its staging slots are where the
    compiled program's first layer has them, not necessarily its later layers' (a
    MATMUL's fill depends on its operands' L2 banks, docs/perf.md)."""

    def __init__(self, cfg: ModelConfig, hw: HardwareConfig, graph: Graph,
                 core: HardwareConfig, program: tuple[int, int, int] | None,
                 kv_bits: float | None = None):
        super().__init__(BuildContext(hw, cfg, _NoDram(), True), "timing")
        plan, self.act_addr, self.temps = plan_l2(graph.ops, cfg, hw, graph.name)
        self.tile_bytes, self.ring_bytes, self.ring_base = program or (
            plan.tile_bytes, plan.ring_bytes, plan.ring_base)
        self.ring = Ring(self.ring_base, self.ring_base + self.ring_bytes)
        self.core = core
        self.kv_bits = kv_bits                     # a compressed cache's budget
        self.s = _Tiles(core)
        self.tile_of: dict[int, int] = {}          # instruction index -> tile
        self.load_tile: dict[int, int] = {}        # ring slot serial -> its load's tile
        self.writer: dict[int, int] = {}           # L2 address -> tile of its last writer
        self.appended: dict[tuple, tuple] = {}     # (sequence, KV kind) -> (producer tile,
        #                                            cycles)
        self.last_store = (0, 0)                   # (tile, place among its stores)
        self.n_instrs = 0
        self.tile_memo: dict[tuple, tuple] = {}    # _matmul_tile's, this hardware's

    def emit(self, mnemonic: str, **fields) -> int:
        instr = make(mnemonic, **fields)
        s, index = self.s, self.n_instrs
        self.n_instrs += 1
        if instr.engine == Engine.LOAD:
            staged = 0
            if mnemonic == "DMA_LOAD" and fields["l2_addr"] >= self.ring_base:
                staged = fields["rows"] * fields["row_bytes"]
            elif mnemonic == "KV_PREFETCH":
                staged = fields["n_tokens"] * fields["col_bytes"]
            if mnemonic == "KV_PREFETCH" and fields.get("kv_format") == KvFormat.CHUNKED:
                occ = chunked_prefetch_occupancy(instr, self.core, None, kv_bits=self.kv_bits)
            else:
                occ = occupancy(instr, self.core)
            # (a load's first reader is marked by ``use``; an embedding gather's is the
            # first compute after it: the layer's first RMSNORM, which reads every row)
            tile = s.add_load(occ, staged, mnemonic == "KV_PREFETCH")
        elif instr.engine == Engine.COMPUTE:
            tile = s.add_compute(instr)
            if mnemonic == "ROPE" and s.first_rope is None:
                s.first_rope = tile
            dst = fields.get("dst_addr", fields.get("out_addr"))
            if dst is not None:
                self.writer[dst] = tile
        else:                                     # the store engine
            producer = self.writer.get(fields.get("l2_addr"), len(s.tiles) - 1)
            occ = occupancy(instr, self.core)
            self.last_store = s.add_store(occ, producer)
            tile = len(s.tiles) - 1
        self.tile_of[index] = tile
        return index

    def load(self, dram_addr: int, rows: int, row_bytes: int, dram_stride: int):
        slot = super().load(dram_addr, rows, row_bytes, dram_stride)
        self.load_tile[slot.serial] = len(self.s.tiles) - 1
        return slot

    def kv_prefetch(self, layer: int, kind: str, first: int, count: int, col_offset: int,
                    seq: int = 0, kv_format: KvFormat = KvFormat.INT8):
        slot = super().kv_prefetch(layer, kind, first, count, col_offset, seq, kv_format)
        tile = len(self.s.tiles) - 1
        self.load_tile[slot.serial] = tile
        start = self.current.start
        if (seq, kind) in self.appended and _shares_a_page(
                first, count, start, col_offset, self.cfg.head_dim, self.cfg.kv_dim,
                self.hw.kv_block_tokens):
            producer, place = self.appended[seq, kind]
            self.s.tiles[tile][4] = producer - tile
            self.s.tiles[tile][9] = place
        return slot

    def use(self, slot, index: int) -> None:
        super().use(slot, index)
        j = self.load_tile.pop(slot.serial, None)           # its first reader
        if j is not None and j < len(self.s.tiles):
            self.s.tiles[j][3] = self.tile_of[index] - j

    def _op_kvappend(self, op: KvAppend) -> None:
        producer = self.writer.get(self.addr(op.src))
        super()._op_kvappend(op)
        if producer is not None:
            # the tile it begins after (its producer's, or the store before it's), and
            # its place among that tile's stores
            self.appended[op.seq, op.kind] = self.last_store

    def _op_attention(self, op: Attention) -> None:
        self.current = op
        super()._op_attention(op)

    def matmul(self, x_addr: int, x_stride: int, m: int, w, out_addr: int, out_stride: int,
               columns=None, w_exps=None) -> None:
        """``backend.Generator.matmul``'s tiles, their staging slots taken from the ring as
        it takes them, each tile costed by ``_matmul_tile``. A tile's cost depends on its
        shape and its addresses modulo the stripe; those of a block of output channels
        (one tile per piece of the reduction), on where the ring's pointer and the
        block's output offset modulo the stripe stand at its start, and on its weight
        loads' DRAM offsets modulo the line (and on the matmul's shape and input's
        alignment). Where a full block begins as an earlier one of this matmul did, the
        blocks in between recur until the last full one: they are repeated at once, the
        pointer left where it would be; a block that begins as one of any matmul of the
        step did (an LM head's chunks, projections of one shape) is that block's tiles
        again. Exact: ``tests/sweeps/test_perf_model.py`` times random models with and
        without (``_REPLAY``)."""
        c0, n_total = (0, w.shape[0]) if columns is None else columns
        k_total = w.shape[1]
        mx = w_exps is not None
        W = self.core.line_bytes
        weights = "mxint4" if mx else "int8"
        P = self.core.l2_stripe_bytes
        s, memo, ring = self.s, self.tile_memo, self.ring
        take = ring.take
        out, index, place = s.tiles, s.index, s.place
        read = macs = lines = count = 0
        first = len(out)
        plan = matmul_tiles(n_total, k_total, self.tile_bytes, self.hw, mx)
        # blocks of output channels, a tile per piece of the reduction each
        blocks = plan.blocks
        full = n_total // plan.nt                # all but a short last (the only one)
        seen: dict | None = {} if _REPLAY else None   # a full block's start -> what came before
        # the blocks timed before, of any matmul of this shape and input alignment
        timed = (s.block_memo.setdefault((m, k_total, n_total, mx, x_addr % P), {})
                 if _REPLAY else None)

        def weight_loads(n0: int, n: int, k0: int, k: int) -> tuple:
            # the loads as the back end emits them, from the weights' rows (a column
            # chunk's ``c0`` rows on) into their staging slots: their DRAM offsets modulo
            # the line, which a block of a split reduction may move (a weight row of
            # ``k_total`` bytes not a whole number of lines); a block's other pieces' move
            # with its first's
            return tuple((((c0 * k_total if j == 0 else 0) + offset) % W, *load)
                         for j, (offset, *load) in enumerate(
                             weight_tile_loads(n0, n, k0, k, k_total, mx)))

        pieces = plan.pieces
        b = 0
        while b < blocks:
            n0 = b * plan.nt
            n = min(plan.nt, n_total - n0)
            first_loads = weight_loads(n0, n, 0, pieces[0][1])
            state = (ring.ptr, (out_addr + 4 * n0) % P, first_loads)
            if seen is not None and b < full:
                before = seen.get(state)
                if before is None:
                    seen[state] = (b, len(out), read, macs, lines, count, ring.serial)
                else:
                    b0, tiles0, read0, macs0, lines0, count0, serial0 = before
                    reps = (full - b) // (b - b0)    # whole periods left before the last
                    out.extend(out[tiles0:] * reps)
                    index.extend(index[tiles0:] * reps)
                    read += reps * (read - read0)
                    macs += reps * (macs - macs0)
                    lines += reps * (lines - lines0)
                    count += reps * (count - count0)
                    ring.serial += reps * (ring.serial - serial0)
                    b += reps * (b - b0)
                    seen = None                  # the pointer is where it was: go on
                    continue
            known = timed.get((n, *state)) if timed is not None else None
            if known is not None:                # a block timed before: as it was
                tiles, places, t_read, t_macs, t_lines, t_count, ring.ptr, t_serial = known
                out.extend(tiles)
                index.extend(places)
                read, macs, lines, count = (read + t_read, macs + t_macs, lines + t_lines,
                                            count + t_count)
                ring.serial += t_serial
                b += 1
                continue
            begun = (len(out), read, macs, lines, count, ring.serial)
            for k0, k in pieces:
                loads = first_loads if k0 == 0 else weight_loads(n0, n, k0, k)
                addr = take(loads[0][1] * loads[0][2])
                e_addr = take(loads[1][1] * loads[1][2]) if mx else 0
                count += 1
                key = (m, k_total, n_total, n, k0 > 0, k, weights,
                       *matmul_alignment(x_addr + k0, addr, out_addr + 4 * n0, e_addr, mx,
                                         self.core), loads)
                found = memo.get(key)
                if found is None:    # (the shared cache hashes the hardware: once a shape)
                    found = memo[key] = _matmul_tile(self.core, *key)
                tiles, t_read, t_macs, t_lines = found
                out.extend(tiles)    # shared: only the first and last are copied (below)
                index.extend([place(t) for t in tiles])
                read += t_read
                macs += t_macs
                lines += t_lines
            if timed is not None:
                timed[n, *state] = (out[begun[0]:], index[begun[0]:],
                                              read - begun[1], macs - begun[2],
                                              lines - begun[3], count - begun[4], ring.ptr,
                                              ring.serial - begun[5])
            b += 1
        if len(out) > first:
            # the instruction fetch since the last load delays the first; a store after
            # the matmul may add to the last (``_Tiles.add_store``)
            s.replace(first, list(out[first]))
            out[first][5] += s.pending
            s.pending = 0.0
            if len(out) - 1 > first:
                s.replace(len(out) - 1, list(out[-1]))
        s.read += read
        s.macs += macs
        s.l2 += lines
        self.n_instrs += len(out) - first + count      # the loads and the MATMULs


# -- the compiler's plan of a step -----------------------------------------------------------

def clear_caches() -> None:
    """Forget every lowered graph, plan and tile (for timing the fast path cold)."""
    for f in (_struct, _lowered, _step_graph, _prefill_chunking, _plan, _prefill_l2,
              _matmul_tile, _check_dram, decode_step, matmul_tiles):
        f.cache_clear()


def _one_layer(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with one decoder layer: every layer's operations and L2 plan are the same,
    so one is lowered and timed, and repeated."""
    return cfg if cfg.n_layers == 1 else dataclasses.replace(cfg, n_layers=1)


@lru_cache(maxsize=16)
def _struct(cfg: ModelConfig, weights: str):
    return quant_struct(cfg, weights)


@lru_cache(maxsize=4096)
def _lowered(cfg: ModelConfig, weights: str, start: int, n_tokens: int, head: bool,
             seq: int = 0) -> Graph:
    """The front end's graph of a step of the one-layer model (shapes only), for sequence
    ``seq`` of a batch: the graph lowered at position 1 moved to ``start`` (``_moved``),
    which is the graph ``lower_step`` gives there (``tests/sweeps/test_perf_model.py``)
    without tracing the model again."""
    kind = "decode" if n_tokens == 1 and head and start else "prefill"
    name = f"{kind}@{start}"
    if start == 1 or 1 + n_tokens > cfg.max_seq_len:
        return lower_step(cfg, _struct(cfg, weights), start, n_tokens, head=head, name=name,
                          seq=seq)
    return _moved(_lowered(cfg, weights, 1, n_tokens, head, seq), start, name)


#: The fields of the IR's operations that hold a step's position (``lower_step``'s
#: ``start``, or ``start`` plus a number of tokens).
POSITION_FIELDS = {Embed: "start", Rope: "pos0", KvAppend: "start", Attention: "start",
                   Output: "row"}


def _moved(graph: Graph, start: int, name: str) -> Graph:
    """``graph`` (a step of one sequence) at position ``start``: every position field
    shifted alike, every buffer a new one (no two graphs share a buffer, as the front
    end's do not)."""
    delta, buffers = start - graph.start, {}

    def buffer(b: Buffer) -> Buffer:
        if b.uid not in buffers:
            buffers[b.uid] = Buffer(b.name, b.nbytes)
        return buffers[b.uid]

    ops = []
    for op in graph.ops:
        changes = {f.name: Tensor(buffer(v.buffer), v.shape, v.dtype, v.offset)
                   for f in dataclasses.fields(op)
                   if isinstance(v := getattr(op, f.name), Tensor)}
        field = POSITION_FIELDS.get(type(op))
        if field:
            changes[field] = getattr(op, field) + delta
        ops.append(dataclasses.replace(op, **changes))
    return Graph(name, start, graph.tokens, ops, graph.positions)


def _packed(hw: HardwareConfig, start: int, kv_bits: float | None) -> int:
    """The cached rows a step at ``start`` reads compressed: its full KV blocks with a
    compressed cache (``kv_bits``), none with int8's."""
    return 0 if kv_bits is None else start // hw.kv_block_tokens * hw.kv_block_tokens


@lru_cache(maxsize=1024)
def _step_graph(cfg: ModelConfig, weights: str, hw: HardwareConfig, start: int,
                n_tokens: int, head: bool, batch: int, packed: int = 0) -> Graph:
    """The graph the driver compiles: a step with its head fitted (``fit_head``), or a
    decode step of ``batch`` sequences at ``start`` (``driver.batched_decode_graph``);
    its attention reading cached rows ``[0, packed)`` compressed
    (``driver.packed_graph``). Memoised, as ``_lowered``: the DRAM check and the plan of
    a step fit its head once."""
    if batch > 1:
        graph = batched_decode_graph([_lowered(cfg, weights, start, 1, True, b)
                                      for b in range(batch)], cfg, hw,
                                     f"decode@{start}x{batch}")
    else:
        graph = _lowered(cfg, weights, start, n_tokens, head)
        graph = fit_head(graph, cfg, hw) if head else graph
    return packed_graph(graph, packed) if packed else graph


@lru_cache(maxsize=1024)
def _prefill_chunking(cfg: ModelConfig, weights: str, hw: HardwareConfig, n_tokens: int
                      ) -> tuple[tuple[int, int, bool], ...]:
    """``(start, tokens, head)`` of the chunks the driver splits a prefill into."""
    graphs = prefill_graphs(cfg, None, hw, n_tokens,
                            lambda start, n, head: _lowered(cfg, weights, start, n, head))
    return tuple((g.start, g.tokens, g.start + g.tokens == n_tokens) for g in graphs)


@dataclass(frozen=True)
class _Plan:
    """One program of the one-layer model as tiles: ``prefix`` (the RoPE table, the
    embedding gather), ``layer`` (repeated per layer) and ``head``; each part
    ``(tiles as _Cols, DRAM bytes read, MACs, L2 lines, KV prefetches' bytes read)``; the staging
    ring's bytes; each part's periodic runs; and each part's tiles that wait for a
    tensor-parallel allreduce (their cycles set by ``_allreduced``)."""

    prefix: tuple
    layer: tuple
    head: tuple
    ring_bytes: int
    repeats: tuple = ((), (), ())     # each part's periodic runs (``_repeats``)
    allreduces: tuple = ((), (), ())  # each part's allreduce tiles (``_allreduced``)


def _split(ops: list) -> tuple[list, list, list]:
    """A one-layer graph's operations as (before the layer, the layer, after it): the
    layer runs from its first RMSNorm to its last residual add."""
    first = next(i for i, op in enumerate(ops) if isinstance(op, RmsNorm))
    last = max(i for i, op in enumerate(ops) if isinstance(op, ResAdd))
    return ops[:first], ops[first:last + 1], ops[last + 1:]


@lru_cache(maxsize=4096)
def _plan(cfg: ModelConfig, weights: str, hw: HardwareConfig, start: int, n_tokens: int,
          head: bool, parallel: bool = False, program: tuple[int, int, int] | None = None,
          batch: int = 1, kv_bits: float | None = None) -> _Plan:
    """The tiles of a step of ``n_tokens`` at ``start`` of the one-layer ``cfg``: the
    graph the driver compiles (``fit_head`` chunks a head whose logits would leave the
    staging ring less than half of L2),
    planned by ``backend.plan_l2`` and lowered by the back end's own code (``_Timing``);
    with ``parallel`` (tensor parallelism), a tile waiting for the allreduce before each
    residual add, of a cycle until ``_allreduced`` gives it the link's (so that links
    share the plan). A prefill chunk is one graph of a program that ``_prefill_l2``
    plans: ``program`` is then its ``(tile_bytes, ring_bytes, ring_base)``, and only the
    first chunk loads the RoPE table. ``batch > 1``: a decode step of that many sequences
    at ``start`` (``_step_graph``). ``kv_bits``: a decode step reading the full KV blocks
    before ``start`` compressed at that budget (``occupancy.kv_budget_widths``), as
    ``driver.compile_generation`` compiles a compressed cache's."""
    graph = _step_graph(cfg, weights, hw, start, n_tokens, head, batch,
                        _packed(hw, start, kv_bits))
    timing = _Timing(cfg, hw, graph, _core(hw), program, kv_bits)
    prefix, layer, tail = _split(graph.ops)
    freq = next((op.freq for op in layer if isinstance(op, Rope)), None)
    parts, allreduces = [], []
    for ops in (prefix, layer, tail):
        timing.s, timing.writer = _Tiles(timing.core), {}
        allreduces.append([])
        if ops is prefix and (program is None or start == 0):
            # a program starts by fetching as far ahead as the fetch reads in flight and
            # the engines' queues allow: those lines go before the first loads'
            timing.s.pending += (FETCH_AHEAD + 2 * QUEUE_DEPTH) * hw.dram_cycles_per_line
            timing.load_rope_table(layer)
        for op in ops:
            if parallel and isinstance(op, ResAdd):
                allreduces[-1].append(len(timing.s.tiles))
                timing.s.add(_tile(compute=1))
            getattr(timing, LOWERINGS[type(op)].__name__)(op)   # overrides included
        parts.append(timing.s)
    prefix_tiles = parts[0].tiles
    if freq is not None and (program is None or start == 0):
        # the RoPE table is first read by the layer's first ROPE
        prefix_tiles[0][3] = len(prefix_tiles) + parts[1].first_rope
    cols, repeats = _columns(parts)
    return _Plan(*((c, *p.totals()) for c, p in zip(cols, parts, strict=True)),
                 timing.ring_bytes, repeats, tuple(map(tuple, allreduces)))


def _allreduced(plan: _Plan, cycles: int) -> _Plan:
    """``plan`` with its allreduce tiles taking ``cycles`` each (at least 1: a link's
    latency is positive); the cached plan is left as it is."""
    if not any(plan.allreduces):
        return plan
    parts = []
    for part, at in zip((plan.prefix, plan.layer, plan.head), plan.allreduces, strict=True):
        computes = part[0].computes.copy()
        computes[list(at)] = cycles
        parts.append((part[0].replace(computes=computes), *part[1:]))
    return dataclasses.replace(plan, prefix=parts[0], layer=parts[1], head=parts[2])


@lru_cache(maxsize=1024)
def _prefill_l2(cfg: ModelConfig, weights: str, hw: HardwareConfig, n_tokens: int
                ) -> tuple[int, int, int]:
    """``(tile_bytes, ring_bytes, ring_base)`` of a prefill program: one L2 plan over every chunk's
    operations, as ``backend.Generator.generate`` makes it."""
    ops = []
    for start, n, head in _prefill_chunking(cfg, weights, hw, n_tokens):
        graph = _lowered(cfg, weights, start, n, head)
        ops += (fit_head(graph, cfg, hw) if head else graph).ops
    plan, _, _ = plan_l2(ops, cfg, hw, "prefill")
    return plan.tile_bytes, plan.ring_bytes, plan.ring_base


@lru_cache(maxsize=1024)
def _check_dram(cfg: ModelConfig, weights: str, hw: HardwareConfig,
                steps: tuple[tuple[int, int, bool], ...], positions: int, programs: int,
                batch: int = 1, logits_rows: int = 1, kv_headers: bool = False) -> None:
    """Raise the compiler's ``CompileError`` when the DRAM image of ``programs`` programs
    made of the graphs ``steps`` (``(start, tokens, head)`` of the one-layer model, a
    decode step of ``batch`` sequences where ``tokens`` is 1 and ``start`` is past the
    prompt), with KV and logits for ``positions`` tokens, exceeds ``hw.dram_bytes``
    (``driver.dram_map``, with every layer's parameters). With ``batch > 1`` the image
    is a batched build's (``driver.compile_batch``): ``batch`` sequences' token buffers,
    tables and ``logits_rows`` logits rows, their blocks in one pool. ``kv_headers``: each
    pool ends in its compressed chunks' header area."""
    one = _one_layer(cfg)
    # (every argument given, as ``_plan`` gives them: the memo is keyed by the arguments
    # as passed, and a default left out fitted the step's head a second time)
    graphs = [_step_graph(one, weights, hw, s0, n, head, batch if n == 1 and s0 else 1, 0)
              for s0, n, head in steps]
    if batch == 1:
        dram_map(cfg, hw, param_sizes(graphs, cfg.n_layers), positions,
                 [f"program_{i}" for i in range(programs)], head_scratch_bytes(graphs),
                 kv_headers=kv_headers)
        return
    blocks = -(-positions // hw.kv_block_tokens)
    dram_map(cfg, hw, param_sizes(graphs, cfg.n_layers), positions,
             [f"program_{i}" for i in range(programs)], head_scratch_bytes(graphs), batch,
             blocks, batch * blocks, logits_rows, kv_headers=kv_headers)


def _core(hw: HardwareConfig) -> HardwareConfig:
    """``hw`` without what an instruction's occupancy does not depend on (the L2's size
    enters through ``tile_bytes``; prefetch through the pipeline), so that design points
    differing only in those share the cached tiles."""
    return hw.replace(l2_bytes=256 * hw.l2_banks * hw.l2_port_bytes, prefetch=True)


def _schedule(tiles: _Cols, ring: int | None):
    """Where ``compiler.schedule`` places each tile's load in the stream, in tile terms:
    ``(reach, place, dep, needs)``. ``place[j]``: the compute load ``j`` is placed above
    (dispatched after the computes before it); ``dep[j]``: the compute whose end it waits
    for (-1: none); ``reach[i]``: the farthest tile whose load is above compute ``i``;
    ``needs[i]``: the last load compute ``i`` reads (-1: none).

    Without prefetch (``ring=None``) every load stays in place and waits for the compute
    before it. With prefetch a load goes up to just after what it depends on
    (``schedule.hoist``): the load before it (loads keep their order); the compute that
    reads the staging slot it overwrites (the ring replayed as ``backend.Ring``
    allocates it: 64-byte aligned slots, round robin, wrapping to the base when a slot
    does not fit the end) and the reader of the slot ``MAX_INFLIGHT_SLOTS`` before; the
    compute it reads from (a tile's ``after``); and the first compute needing the load
    ``LOOKAHEAD`` loads earlier or a later one. It stays above its own consumer (its
    tile's compute, else the next one, or its ``reader``)."""
    return _placed(tiles.has_load, tiles.computes != 0, tiles.staged, tiles.reader,
                   tiles.after, -1 if ring is None else ring)


@njit
def _placed(loads, computes, staged, reader, after, ring):
    """``_schedule`` over the tiles' columns (``ring`` -1: no prefetch), compiled
    (numba): ``(reach, place, dep, needs)`` as arrays."""
    n = len(loads)
    consumer = np.full(n, n)
    nxt = n
    for j in range(n - 1, -1, -1):
        if computes[j]:
            nxt = j
        consumer[j] = j + reader[j] if reader[j] else nxt
    needs = np.full(n, -1)
    for j in range(n):
        if loads[j] and consumer[j] < n and needs[consumer[j]] < j:
            needs[consumer[j]] = j
    if ring < 0:
        return np.arange(n), np.arange(n), np.arange(-1, n - 1), needs
    # needed_by[r]: the first compute that reads load r or a later one (``hoist``'s)
    load_tiles = np.flatnonzero(loads)
    needed_by = np.full(len(load_tiles), n)
    first = n
    for r in range(len(load_tiles) - 1, -1, -1):
        c = consumer[load_tiles[r]]
        first = c if c < first else first
        needed_by[r] = first
    reach, place, dep = np.arange(n), np.arange(n), np.full(n, -1)
    _, starts, turns, _ = _ring_pointer(staged, ring, 0, True, False)
    prev = 0
    # the ring's live slots (turn, start, end, reader), from live_head on
    live = np.zeros((len(load_tiles) + 1, 4), np.int64)
    live_head = live_tail = 0
    slot_readers = np.zeros(len(load_tiles) + 1, np.int64)
    n_slots = 0
    lookahead = min(MAX_INFLIGHT_SLOTS, LOOKAHEAD)
    for r in range(len(load_tiles)):
        j = load_tiles[r]
        at, d = prev, -1
        if staged[j]:                         # a slot of the ring
            cycle, ptr = turns[j], starts[j]
            end = ptr + -(-staged[j] // 64) * 64
            while live_head < live_tail and live[live_head, 0] < cycle and (
                    live[live_head, 0] < cycle - 1 or live[live_head, 1] < end):
                reader_ = live[live_head, 3]
                live_head += 1
                d = reader_ if reader_ > d else d
            if n_slots >= MAX_INFLIGHT_SLOTS and slot_readers[n_slots - MAX_INFLIGHT_SLOTS] > d:
                d = slot_readers[n_slots - MAX_INFLIGHT_SLOTS]
            live[live_tail, 0], live[live_tail, 1] = cycle, ptr
            live[live_tail, 2], live[live_tail, 3] = end, consumer[j]
            live_tail += 1
            slot_readers[n_slots] = consumer[j]
            n_slots += 1
        if after[j] and j + after[j] > d:
            d = j + after[j]                      # the compute it reads from
        at = d + 1 if d + 1 > at else at
        if r >= lookahead and needed_by[r - lookahead] > at:
            at = needed_by[r - lookahead]
        at = j if at > j else at
        prev = place[j] = at
        dep[j] = d
        if reach[at] < j:                     # load j is above every compute from at on
            reach[at] = j
    for i in range(1, n):                     # nondecreasing: hoisted above i, above i + 1
        if reach[i] < reach[i - 1]:
            reach[i] = reach[i - 1]
    return reach, place, dep, needs


class _Cols:
    """Tiles (``_Tiles``' layout) as columns, a row per tile, which stacking, cutting and
    every pass of ``_pipeline`` read without walking the tiles one by one. A tile is
    ``unique``, its row among its plan's distinct tiles (``distinct``, a column each);
    a column is gathered from those on its first read, but where it is one of ``own``
    (a cut's shortened offsets, an allreduce's cycles). The columns (``NAMES``):
    ``kind`` (a load of kind 0: none, 1: a ``CHUNKED`` KV prefetch, its cycles in
    ``load_value``; 2: a row copier, its ``Copies``' row of ``distinct.table`` in
    ``load_value``), ``slot`` (the staged bytes field), ``staged`` (a load's bytes in
    the staging ring, 0 where there is no load), ``computes`` (cycles), ``reader``,
    ``after``, ``extra``, ``store_cycles``, ``compute_l2``, ``load_l2``, ``store_place``
    and ``paced`` (a row per tile: paced cycles, paced lines, resumes, camped cycles).
    ``distinct`` also holds the plan's ``CopiesTable`` (``table``) and each distinct
    tile's store engine instructions laid end to end (``start``, ``count``; ``rows``:
    the table's row or -1, ``cycles``)."""

    NAMES = ("kind", "load_value", "slot", "staged", "computes", "reader", "after",
             "extra", "store_cycles", "compute_l2", "load_l2", "store_place", "paced")
    __slots__ = ("unique", "distinct", "own", "_read")

    def __init__(self, distinct: SimpleNamespace, unique: np.ndarray,
                 own: dict | None = None):
        self.distinct, self.unique, self.own, self._read = distinct, unique, own or {}, {}

    def __getattr__(self, name: str) -> np.ndarray:
        if name not in _Cols.NAMES:
            raise AttributeError(name)
        column = self.own.get(name)
        if column is None:
            column = self._read.get(name)
            if column is None:
                column = self._read[name] = getattr(self.distinct, name)[self.unique]
        return column

    def __len__(self) -> int:
        return len(self.unique)

    @property
    def has_load(self) -> np.ndarray:
        return self.kind != 0

    def largest(self, name: str) -> int:
        """The largest value in column ``name`` (0 for no tiles), read off the distinct
        tiles present where the column is gathered."""
        if not len(self):
            return 0
        if name in self.own:
            return int(self.own[name].max())
        column = getattr(self.distinct, name)
        return int(column[np.bincount(self.unique, minlength=len(column)) > 0].max())

    def take(self, rows, **changed: np.ndarray) -> _Cols:
        """The tiles at ``rows`` (an index array), in that order, with the columns of
        ``changed`` given instead."""
        own = {name: column[rows] for name, column in self.own.items()}
        return _Cols(self.distinct, self.unique[rows], {**own, **changed})

    def replace(self, **changed: np.ndarray) -> _Cols:
        """These tiles with the columns of ``changed`` given instead."""
        return _Cols(self.distinct, self.unique, {**self.own, **changed})

    @staticmethod
    def concat(parts: list[_Cols]) -> _Cols:
        """The tiles of ``parts`` (of one plan: they share ``distinct``) end to end."""
        own = {name for part in parts for name in part.own}
        return _Cols(parts[0].distinct, np.concatenate([part.unique for part in parts]),
                     {name: np.concatenate([getattr(part, name) for part in parts])
                      for name in own})


def _named(tiles: _Tiles) -> tuple[np.ndarray, list]:
    """Each tile's name (equal where the tiles are) and one tile per name: tiles compare
    as numbers, the cached ``Copies`` and store tuples as objects (equal ones built apart
    count as different); each tile object is read once, however often it recurs (a
    cached matmul's tiles: ``_Tiles.objects``)."""
    names: dict = {}
    name_of, firsts = np.empty(len(tiles.objects), np.int64), []
    for u, t in enumerate(tiles.objects):
        name_of[u] = name = names.setdefault((id(t[0]), *t[1:10], id(t[10]), *t[11:]),
                                             len(names))
        if name == len(firsts):
            firsts.append(t)
    return name_of[np.array(tiles.index, np.int64)], firsts


def _columns(parts: list[_Tiles]) -> tuple[tuple[_Cols, ...], tuple]:
    """Each part's tiles (no longer changed) as ``_Cols``, sharing
    one table of their ``Copies``, and each part's periodic runs (``_repeats``): the
    distinct tiles are read (a step's tens of thousands of tiles are a few hundred
    distinct ones), then each column gathered by the tiles' names."""
    named = [_named(tiles) for tiles in parts]
    firsts = [t for _, f in named for t in f]
    cols = list(zip(*firsts, strict=True)) if firsts else [()] * 15
    loads = cols[0]
    stores = [s for t in cols[10] if t for s in t]
    table = CopiesTable([ld for ld in loads if ld and ld.__class__ is not int]
                        + [c for c, _ in stores])
    row = table.index
    kind = np.array([0 if not ld else 1 if ld.__class__ is int else 2 for ld in loads],
                    np.int64)
    count = np.array([len(t) if t else 0 for t in cols[10]], np.int64)
    slot = np.array(cols[2], np.int64)
    distinct = SimpleNamespace(
        table=table, count=count,
        start=np.concatenate(([0], np.cumsum(count)[:-1])).astype(np.int64),
        rows=np.array([-1 if c is None else row[id(c)] for c, _ in stores], np.int64),
        cycles=np.array([c for _, c in stores], np.float64),
        kind=kind,
        load_value=np.array([0 if not ld else ld if ld.__class__ is int else row[id(ld)]
                             for ld in loads], np.float64),
        slot=slot, staged=np.where(kind != 0, slot, 0), computes=np.array(cols[1], np.float64),
        reader=np.array(cols[3], np.int64), after=np.array(cols[4], np.int64),
        extra=np.array(cols[5], np.float64), store_cycles=np.array(cols[6], np.float64),
        compute_l2=np.array(cols[7], np.float64), load_l2=np.array(cols[8], np.float64),
        store_place=np.array(cols[9], np.int64),
        paced=np.array(cols[11:15], np.int64).reshape(4, -1).T.copy())
    out, at = [], 0
    for sig, f in named:
        out.append(_Cols(distinct, sig + at))
        at += len(f)
    return tuple(out), tuple(_repeats(sig, c.has_load) for (sig, _), c in zip(named, out,
                                                                              strict=True))


def _indices(tiles: _Cols, schedule) -> tuple:
    """``_run``'s reading of the tiles placed by ``schedule``, the same every pass: the
    arrays of ``_engines``' arguments but the waits, and the computes' total cycles. A
    tile's stores, ``(copies row or -1, cycles)`` each, are laid end to end
    (``store_at``)."""
    stores, kind, computes = tiles.distinct, tiles.kind, tiles.computes
    count = stores.count[tiles.unique]
    store_at = np.zeros(len(tiles) + 1, np.int64)
    np.cumsum(count, out=store_at[1:])
    gather = np.repeat(stores.start[tiles.unique] - store_at[:-1], count) + np.arange(
        store_at[-1])
    reach, place, dep, needs = schedule
    return ((stores.table.arrays, kind, tiles.load_value, computes, tiles.after, tiles.extra,
             tiles.store_cycles, tiles.store_place, store_at, stores.rows[gather],
             stores.cycles[gather], reach, place, dep, needs,
             np.concatenate(([0], np.cumsum(computes != 0))), np.cumsum(kind != 0) - 1,
             np.flatnonzero(kind), np.flatnonzero(computes)),
            int(computes.sum()))


def _run(tiles: _Cols, schedule, l2_waits, data_delay: int = 0, indices: tuple = ()
         ) -> tuple:
    """One pass of the two engines over the tiles placed by ``schedule``
    (``_schedule``'s), each load's copier also waiting ``l2_waits`` for the L2:
    ``((cycles, load busy, compute busy), copier write starts, load ends, compute begins,
    compute ends, load busy up to each tile)``, the last five arrays; ``indices``:
    ``_indices(tiles, schedule)``, where a caller runs several passes.

    A load begins when its engine is free, the compute it depends on has ended, and it
    has been dispatched: in order, so once the compute queue (``QUEUE_DEPTH``) has taken
    the computes before it (the one ``QUEUE_DEPTH`` before the last of them has begun). A
    compute begins when the one before it has ended and the loads it reads have ended;
    it is dispatched once the load engine's queue has taken the loads placed above it
    (the load ``QUEUE_DEPTH`` before the farthest one has begun). The engines are
    ``_engines``, compiled (numba): a 1B-class decode step runs them over some 3,000
    tiles, three times or more."""
    arrays, compute_busy = indices or _indices(tiles, schedule)
    end, load_busy, *timeline = _engines(*arrays, np.asarray(l2_waits, np.float64),
                                         float(data_delay))
    return ((end, load_busy, compute_busy), *timeline)


@njit
def _store_hold(stores, tail: int, s0: float, s1: float, read_from: float,
                read_free: float) -> tuple:
    """A store whose DRAM lines take the cycles ``s0`` to ``s1`` alone, among loads
    already timed whose reads run back to back from ``read_from`` to ``read_free``
    (``_engines`` times loads ahead of the computes that read them). The DRAM's
    round-robin gives the store a line between two of theirs, so the loads' reads over
    its cycles wait for them: ``held`` cycles, by which the load engine's next reads go
    later. Its lines in no load's reads (before ``read_from``) cost none; the rest of
    its cycles come after the held reads, an interval for the loads timed later to be
    charged, put in ``stores`` at ``tail`` (``_engines``' store intervals). Returns
    ``(held, tail)``, ``tail`` moved past that interval where there is one. (Charged
    only to the loads timed after it, seed 2043's step 8 of ``perf_calibration
    --random``, a prefill at 2 DRAM bytes a cycle, was 6.5% under the instruction-level
    model: ``test_fast_path_holds_loads_already_timed_behind_a_stores_lines``.)"""
    a = s0 if s0 > read_from else read_from
    b = s1 if s1 < read_free else read_free
    held, lo, hi = (0.0, s0, s1) if b <= a else (b - a, read_free + b - a,
                                                 read_free + b - a + s1 - b)
    if hi > lo:
        stores[tail, 0], stores[tail, 1] = lo, hi
        tail += 1
    return held, tail


@njit
def _engines(table, kind, load_value, computes, after, extra, store_cycles, store_place,
             store_at, store_row, store_value, reach, place, dep, needs, crank, rank,
             load_tile, comp_tile, l2_waits, data_delay):
    """``_run``'s pass (which says how the engines go) over the arrays of ``_indices``:
    ``(cycles, load busy, copier write starts, load ends, compute begins, compute ends,
    load busy up to each tile)``."""
    n = len(kind)
    n_stores = len(store_row)
    load_begin, load_end, write_start = np.zeros(n), np.zeros(n), np.zeros(n)
    compute_begin, compute_ends, busy_to = np.zeros(n), np.zeros(n), np.zeros(n)
    ends = np.zeros(len(load_tile) + 1)          # ends of the loads so far
    n_loads = 0
    # the load copier's command queue (``queue_after``)
    q_u, q_f = np.zeros(len(ends), np.int64), np.zeros((len(ends), SEGMENT_FIELDS))
    q_m, q_state = np.zeros(len(load_tile) + 1, np.int64), np.zeros(3, np.int64)
    # the store engine: its DRAM intervals (from stores_head on), its instructions' last
    # end, its copier's queue and its instructions in flight (DEFERRED at most)
    stores, stores_head, stores_tail = np.zeros((n + 1, 2)), 0, 0
    store_free = store_end = 0.0
    s_u, s_f = np.zeros(n_stores + 1, np.int64), np.zeros((n_stores + 1, SEGMENT_FIELDS))
    s_m, s_state = np.zeros(n_stores + 1, np.int64), np.zeros(3, np.int64)
    flight, flight_head, flight_tail = np.zeros(n_stores + 1), 0, 0
    s_read, s_write, store_free_at = -np.inf, -np.inf, -1.0
    store_ends = np.zeros(n_stores + 1)          # every store's end, as ``store_row``
    store_begins, n_begun = np.zeros(n_stores + 1), 0     # ... and begin, in order
    store_gate = -np.inf                         # dispatch gate after the stores so far
    gate_at = np.full(n, -np.inf)                # ... after each tile's
    timed, engine_free, compute_end = -1, -1.0, 0.0
    read_free = write_free = read_from = -np.inf   # read_from: where the reads to read_free began
    load_busy = covered = 0.0
    for i in range(n):
        r = reach[i]
        while timed < r:
            timed += 1
            if kind[timed] == 0:
                continue
            start = engine_free + 1             # popped once free, ready the cycle after
            d = dep[timed]
            if d >= 0:                          # a token's wait: the cycle after its end
                if store_place[timed] and d == timed + after[timed]:
                    ready = store_ends[store_at[d] + store_place[timed] - 1] + 1
                else:
                    ready = compute_ends[d] + 1
                start = ready if ready > start else start
            # a queue of computes, not tiles: the last above it is taken once the one
            # QUEUE_DEPTH before that has begun (``sweeps.perf._time``)
            g = crank[place[timed]] - 1 - QUEUE_DEPTH
            if g >= 0 and compute_begin[comp_tile[g]] > start:
                start = compute_begin[comp_tile[g]]
            # and once the store engine's queue has taken the stores above it
            g = place[timed] - 1
            if g >= 0 and gate_at[g] > start:
                start = gate_at[g]
            load_begin[timed] = begin = start
            if kind[timed] == 1:
                # a chunked KV prefetch has no row copier: it starts once the copier has
                # written the rows before it and ends after them, not deferred
                # (``sweeps.perf``'s engine model, ``Occupancy.after_copier``)
                prev = ends[n_loads - 1] if n_loads else -np.inf
                write_start[timed] = prev + 1 if prev + 1 > begin else begin
                end = write_start[timed] + load_value[timed]
                end = prev + 2 if prev + 2 > end else end
                engine_free = end + 1
            else:
                # the DRAM lines others took since the last load delay this one by what the
                # DRAM could not fit in the idle time between them
                idle = begin - (read_free if read_free > 0 else 0)
                x = extra[timed] - (idle if idle > 0 else 0)
                x = x if x > 0 else 0.0
                first = begin + data_delay          # its first line written, at the earliest
                write_start[timed] = first if first > write_free else write_free
                read_from = begin if begin > read_free else read_from   # after an idle DRAM
                issued, read_free, write_free = queue_after(
                    table, q_u, q_f, q_m, q_state, int(load_value[timed]), begin, read_free,
                    write_free)
                # and the store engine's lines over its interval
                while stores_head < stores_tail and stores[stores_head, 1] <= begin:
                    stores_head += 1
                for k in range(stores_head, stores_tail):
                    s0, s1 = stores[k, 0], stores[k, 1]
                    if s0 >= read_free:
                        break
                    x += (s1 if s1 < read_free else read_free) - (s0 if s0 > begin else begin)
                if x > 0:
                    read_free += x
                    write_free += x
                write_free += l2_waits[timed]
                free = issued + 2
                end = write_free + DMA_END + LOAD_END
                if n_loads >= DEFERRED and ends[n_loads - DEFERRED] + 2 > free:
                    free = ends[n_loads - DEFERRED] + 2
                engine_free = free
            ends[n_loads] = end
            n_loads += 1
            load_end[timed] = end
            load_busy += end - (begin if begin > covered else covered)
            covered = end
        # a compute's cycles include ENGINE_START_CYCLES from the end of the one before;
        # after waiting for a load, the cycle after the load ends
        start = compute_end
        j = needs[i]
        if j >= 0 and load_end[j] + 1 - ENGINE_START_CYCLES > start:
            start = load_end[j] + 1 - ENGINE_START_CYCLES
        # dispatched once the load engine's queue has taken the loads above it
        gate = rank[r] - QUEUE_DEPTH
        if gate >= 0 and load_tile[gate] > i and load_begin[load_tile[gate]] > start:
            start = load_begin[load_tile[gate]]
        if i and gate_at[i - 1] > start:          # ... and the store engine's the stores
            start = gate_at[i - 1]
        compute_begin[i] = start
        compute_end = start + computes[i]
        compute_ends[i] = compute_end
        busy_to[i] = load_busy
        if store_cycles[i]:
            s0 = compute_end if compute_end > store_free else store_free
            store_free = s0 + store_cycles[i]
            held, stores_tail = _store_hold(stores, stores_tail, s0, store_free, read_from,
                                            read_free)
            read_free += held
            write_free += held
        for q in range(store_at[i], store_at[i + 1]):
            # as a load: begun when its engine is free and the compute has ended
            begin = compute_end + 1 if compute_end > store_free_at else store_free_at + 1
            store_begins[n_begun] = begin
            n_begun += 1
            if store_row[q] < 0:
                e = begin + store_value[q]
                free = e + 1
            else:
                issued, s_read, s_write = queue_after(table, s_u, s_f, s_m, s_state,
                                                      store_row[q], begin, s_read, s_write)
                e = math.ceil(s_write) + DMA_END
                free = math.ceil(issued) + 2
                while flight_head < flight_tail and flight[flight_head] < free - 1:
                    flight_head += 1
                if flight_tail - flight_head == DEFERRED:
                    free = max(free, flight[flight_head] + 2)
                    flight_head += 1
                flight[flight_tail] = e
                flight_tail += 1
            store_free_at = free
            store_ends[q] = e
            store_end = e if e > store_end else store_end
        # an instruction after these in the stream is dispatched once the store engine's
        # queue has room: the store QUEUE_DEPTH before the last has begun
        if store_at[i + 1] > store_at[i] and n_begun > QUEUE_DEPTH:
            store_gate = store_begins[n_begun - 1 - QUEUE_DEPTH]
        gate_at[i] = store_gate
    end = compute_end if compute_end > store_end else store_end
    return end, load_busy, write_start, load_end, compute_begin, compute_ends, busy_to


def _pipeline(cols: _Cols, ring: int | None, l2_lines_per_cycle: float = 0,
              dram_lines_per_cycle: float = 1.0, data_delay: int = 0, line_bytes: int = 0,
              cuts: tuple = ()) -> tuple:
    """The two engines over the tiles placed by ``_schedule``: ``((cycles, load busy,
    compute busy), compute begins, compute ends, load busy up to each tile, the cuts'
    unsettled runs)``; with ``cuts`` (``_periodic``'s), of the tiles before their periodic
    runs were cut, the removed repeats' time added after each cut (``_extrapolate``). With
    ``l2_lines_per_cycle``, further passes let each load's copier wait for the L2 lines
    the compute engine's ports, first in priority, take over its interval (the last
    pass's): it needs at least ``(its lines + theirs) / l2_lines_per_cycle`` cycles
    (``sweeps.perf``'s rule and passes, each compute instruction taking its lines evenly
    from begin to end; a load's copier from ``data_delay`` after its begin, when its first
    data is in, at the earliest), and no faster than the paced compute streams it
    overlaps let it (``sweeps.perf._trapped``, from the first two passes' timelines, then
    held). No pass is needed where the busiest compute and a load at
    ``dram_lines_per_cycle`` fit the L2 together and no compute is paced slower than such
    a load. ``line_bytes``: the L2's line, for ``_caught_up`` (0: no load is taken to
    trail a gapped reader unheld)."""
    schedule = _schedule(cols, ring)
    indices = _indices(cols, schedule)
    # no wait is possible where the busiest compute and a load at the DRAM's line rate
    # fit the L2's lines per cycle together
    busy = (cols.computes != 0) & (cols.compute_l2 != 0)
    busiest = (cols.compute_l2[busy] / cols.computes[busy]).max() if busy.any() else 0.0
    # nor a stream a load's copier could be held behind (``sweeps.perf._trapped``)
    rate = min(1.0, dram_lines_per_cycle)
    # the paced computes: (tile, paced cycles, paced lines, resumes, camped cycles)
    at = np.flatnonzero((cols.paced[:, 0] != 0) | (cols.paced[:, 2] != 0))
    paced = np.column_stack((at, cols.paced[at])).reshape(-1, 5)
    trap = bool((1 - _stolen_each(paced, cols.computes[at], l2_lines_per_cycle or 1)
                 < rate).any())
    n_tiles = len(cols)
    if not l2_lines_per_cycle or (busiest + dram_lines_per_cycle <= l2_lines_per_cycle
                                  and not trap):
        return _extrapolate(cols, _run(cols, schedule, np.zeros(n_tiles), 0, indices),
                            cuts, schedule)
    # the loads a row copier moves (a chunked KV prefetch takes no part in the L2 rules)
    loading = np.flatnonzero((indices[0][1] == 2) & (cols.load_l2 != 0))
    waits = np.zeros(n_tiles, np.int64)
    held = np.zeros(n_tiles, np.int64)            # the waits behind paced streams
    shared = busiest + dram_lines_per_cycle > l2_lines_per_cycle
    if shared:                                    # (the lines as ints, as ``_Usage`` takes them)
        lines = cols.compute_l2.astype(np.int64)
        load_lines = cols.load_l2.astype(np.int64)
        using = busy.nonzero()[0]
    for n in range(CONTENTION_PASSES):         # as sweeps.perf.time_program's passes
        run = _run(cols, schedule, np.maximum(waits, held), data_delay, indices)
        _, write_start, load_end, compute_begin, compute_ends, _ = run
        # The waits behind paced streams from the first two passes' timelines, then
        # held (``_trapped`` walks each copier through the streams). The second
        # recompute is kept only where it moves them by 0.1% of the program's cycles:
        # elsewhere it would take a further pass for nothing.
        if n < 2:
            begins = compute_begin[at]
            ends = compute_ends[at]
            again_held = _trapped_waits(
                begins, ends, _stolen_each(paced, ends - begins, l2_lines_per_cycle),
                loading, write_start, load_end, waits, held, cols.load_l2,
                *_caught_up(paced, ends - begins, l2_lines_per_cycle, dram_lines_per_cycle,
                            cols, line_bytes))
            # (both rules over the whole program, its cut repeats counted: over the cut
            # tiles alone, a cut that removed more repeats made 0.1% of the cycles less)
            cycles = _uncut_cycles(run, cuts)
            if n == 1 and _uncut_sum(np.abs(again_held - held), cuts) <= cycles / 1000:
                again_held = held
            # A pass more moves the program by at most the waits it adds: none where they
            # come to under 0.1% of its cycles and nothing else makes a load wait.
            if n == 0 and not shared and _uncut_sum(again_held, cuts) <= cycles / 1000:
                break
        else:
            again_held = held
        again = waits.copy()
        if shared:
            _l2_waits(compute_begin, compute_ends, lines, using, loading, write_start,
                      load_end, load_lines, waits, held, float(l2_lines_per_cycle), again)
        if np.array_equal(again, waits) and np.array_equal(again_held, held):
            break
        waits, held = again, again_held
    return _extrapolate(cols, run, cuts, schedule)


@njit
def _l2_waits(begin, end, lines, using, loading, write_start, load_end, load_lines, waits,
              held, l2_lines_per_cycle, again):
    """``again`` with the wait of each of the ``loading`` loads' copiers for the L2 lines
    the ``using`` computes (each taking its ``lines`` evenly from ``begin`` to ``end``,
    ``sweeps.perf._Usage``'s rule without the units' ``l2_profile``) take over its
    interval: it needs at least ``(its lines + theirs) / l2_lines_per_cycle`` cycles
    (``_pipeline``'s rule, ``_usage_lines``), taken at its fixed point where a step from
    the last pass's interval would grow it (``sweeps.perf._l2_span``, the same
    arithmetic)."""
    m = len(using)
    starts, ends, rates, cum = np.empty(m), np.empty(m), np.empty(m), np.zeros(m + 1)
    for q in range(m):
        i = using[q]
        starts[q], ends[q] = begin[i], end[i]
        rates[q] = lines[i] / max(1.0, end[i] - begin[i])
        cum[q + 1] = cum[q] + rates[q] * (end[i] - begin[i])
    k_lo = k_hi = 0             # the intervals begun by lo and by hi, walked on from
    for j in loading:           # the last load's (``_begun``: the loads' times come in order)
        lo, hi = write_start[j], load_end[j]
        k_lo, k_hi = _begun(starts, lo, k_lo), _begun(starts, hi, k_hi)
        need = (load_lines[j] + _usage_lines(starts, ends, rates, cum, hi, k_hi)
                - _usage_lines(starts, ends, rates, cum, lo, k_lo)) / l2_lines_per_cycle
        if need > hi - lo + 1:   # growing: at its fixed point (``sweeps.perf._l2_span``)
            q = k_lo - 1
            while q >= 0 and ends[q] > lo:
                q -= 1
            # it is met by the end of the first compute past ``hi`` by which the L2 has
            # left the load its lines (the computes come one after another): only those
            # are walked
            at_lo = _usage_lines(starts, ends, rates, cum, lo, k_lo)
            r = q + 1
            while r < m - 1 and (ends[r] < hi or l2_lines_per_cycle * (ends[r] - lo)
                                 - (cum[r + 1] - at_lo) < load_lines[j]):
                r += 1
            need = _l2_span(starts[q + 1:r + 1], ends[q + 1:r + 1], rates[q + 1:r + 1], lo,
                            load_lines[j], l2_lines_per_cycle, hi - lo)
        wait = math.ceil(need - (hi - lo - max(waits[j], held[j])))
        again[j] = wait if wait > 0 else 0


@njit
def _begun(starts, t, k):
    """``np.searchsorted(starts, t, side="right")``, the intervals begun by ``t``
    (``starts`` sorted; ``k`` from 0 to ``len(starts)``, the count for an earlier time):
    walked forward from ``k`` where ``t`` is at or past ``starts[k - 1]``, else searched,
    so that the count never depends on the order the times come in (the loads' copier
    times come in order, and the walk is then a step or two a load)."""
    if k > 0 and starts[k - 1] > t:
        return np.searchsorted(starts, t, side="right")
    while k < len(starts) and starts[k] <= t:
        k += 1
    return k


@njit
def _stolen_each(paced, cycles, banks):
    """``sweeps.perf._stolen_lines`` of each paced compute (``_pipeline``'s ``paced``
    rows) over its ``cycles``."""
    out = np.empty(len(paced))
    for k in range(len(paced)):
        out[k] = _stolen_lines(paced[k, 1], paced[k, 2], paced[k, 3], cycles[k], banks,
                               paced[k, 4])
    return out


def _caught_up(paced, cycles, banks: float, dram_lines_per_cycle: float, cols: _Cols,
               line_bytes: int) -> tuple:
    """``_trapped_waits``' ``unpaced``, ``gapped`` and ``twice`` where the instruction-level
    model walks the loads' copiers through the units' L2 banks (``sweeps.perf._Banks``:
    more than one line-wide bank, at most ``MAX_STEPPED_BANKS``) and the paced streams
    are the readers' idle steps (``arch.matmul_timing``: a DRAM slower than a line a
    cycle; faster, they are a stepped copier's refusals); else all None. Each paced
    compute's stolen lines without its paced reader's (``_stolen_each`` of the stream with
    no paced cycles); whether that reader takes a line every other cycle
    (``paced_cycles`` at least ``2 paced_lines - 1``); whether each load writes each of
    its L2 lines twice or more (its L2 lines at least twice its staged bytes' lines: rows
    shorter than a line share every line; a load with nothing staged, a gather or the
    RoPE table, not)."""
    if (not 1 < banks <= MAX_STEPPED_BANKS or dram_lines_per_cycle >= 1
            or not line_bytes):
        return None, None, None
    unpaced = paced.copy()
    unpaced[:, 1:3] = 0
    gapped = (paced[:, 2] > 0) & (paced[:, 1] >= 2 * paced[:, 2] - 1)
    twice = (cols.staged > 0) & (cols.load_l2 >= 2 * cols.staged / line_bytes)
    return _stolen_each(unpaced, cycles, banks), gapped, twice


@njit
def _trapped_waits(begins, ends, stolen, loading, write_start, load_end, waits, held,
                   load_lines, unpaced=None, gapped=None, twice=None):
    """``held`` with each of the ``loading`` loads' wait behind the paced compute streams
    (``begins``, ``ends``, ``stolen``: ``sweeps.perf._trapped_cycles``' arrays) of the
    last pass's timeline: its copier, alone for its interval less its waits, moving its
    lines at the pace that gives. With ``unpaced``, ``gapped`` and ``twice``
    (``_caught_up``'s, where the instruction-level model walks the copiers through the
    units' banks), a load that writes each line twice or more loses to a reader that
    idles a cycle between lines only that stream's ``unpaced`` lines (``_trapped_cycles``).
    (The walk, ``sweeps.perf._bank_walk``, beside an attention ``P · V`` on edge-16x16
    whose reader takes a line every other cycle: loads of 48-byte rows, which write each
    64-byte line twice, lost 0 to 1 cycles each; charged the reader's resumes, 76 to
    107, the decode step was 2.24% long: ``python -m benchmarks.perf_model --only
    random``, its step 131.)"""
    out = held.copy()
    k = 0                       # the streams begun by the copier's start (``_begun``)
    for j in loading:
        alone = load_end[j] - write_start[j] - max(waits[j], held[j])
        k = _begun(begins, write_start[j], k)
        out[j] = math.ceil(_trapped_cycles(begins, ends, stolen, write_start[j], alone,
                                           load_lines[j] / max(1, alone), k, unpaced,
                                           gapped, twice is not None and twice[j]))
    return out


#: Loads in the repeats of a periodic run of tiles (a matmul's weight tiles; attention's
#: per-head block) past which the engines' queues (``QUEUE_DEPTH``), the schedule's
#: ``LOOKAHEAD`` and the loads in flight (``DEFERRED``) repeat what they did a repeat
#: before; ``SETTLE_FACTOR`` times as many repeats are stepped through before the rest
#: of the run is extrapolated (``_periodic``). Where the engines do not repeat yet, the
#: run is stepped through ``RESTEP_FACTOR`` times as far again, or as far as its loads'
#: drift says it settles (``_settle_repeats``), whichever is farther (``_timeline``).
KEEP_LOADS = 2 * LOOKAHEAD
#: Loads kept after a cut, so that a tile before the cut sees (through the loads
#: hoisted above it, at most ``LOOKAHEAD`` ahead) only repeats, as it would have.
TAIL_LOADS = LOOKAHEAD + 2
#: The longest block of tiles searched for repeats. (At 16, two 1B-class steps at 64 KiB
#: were stepped whole: Llama-3.2-1B's on edge-32x32, whose LM head repeats every 26
#: tiles, its staging slots' L2 alignments cycling, and TinyLlama-1.1B's on edge-16x16
#: at KV 1,091, whose down projection repeats every 30. ``python -m
#: benchmarks.perf_model --only slow`` prints the first's tiles.)
RUN_PERIOD = 32
#: Repeats the period is measured over (a repeat's time may alternate).
PERIOD_REPEATS = 4
#: Repeats of a block without loads kept after a cut (``SETTLE_FACTOR`` times as many
#: before it).
KEEP_REPEATS = KEEP_LOADS
#: The repeats stepped before a cut, as a multiple of those the queues need
#: (``KEEP_LOADS``' and at least ``PERIOD_REPEATS + 2``; ``KEEP_REPEATS``): a lead the
#: load engine built up before the run, with prefetch as far as the staging ring lets
#: it, drains over the run's first repeats while the compute engine works off the loads
#: already in, and repeats that advance alike before it has drained need not mean it
#: has. ``python -m benchmarks.perf_model --only cuts`` times 144 steps both ways
#: against stepping every tile: the pipeline ran 431 times at 1× (``_timeline`` runs it
#: again where a run had not settled by its cut) and 286 at 4×, and every step's cycles
#: came out as stepping every tile gives them, to 0.0001%, at both. (A Sheared-LLaMA-1.3B step
#: with MXINT4 weights and a 3-bit KV cache at 16 MiB, whose runs looked settled at 1×
#: and were not, once came out 0.03% long at 1×. The worst, 0.037%, was another error,
#: since mended: ``_pipeline``'s rules for stopping its contention passes compared the
#: waits with the cycles of the cut tiles, not of the whole program, ``_uncut_sum``.)
SETTLE_FACTOR = 4
#: How much farther a run not settled by its cut is stepped the next time, at least
#: (``_timeline``): each time at least four times as far, so that a run that never
#: settles is stepped through whole after a few pipeline runs.
RESTEP_FACTOR = 4


def _repeats(sig: np.ndarray, has_load: np.ndarray) -> tuple:
    """The long runs in a part's tiles (named by ``sig``, ``_named``'s) of a block of at
    most ``RUN_PERIOD`` tiles repeated: ``(first tile, block tiles, repeats, repeats to
    keep before a cut, after it)`` each, the repeats kept after the cut holding
    ``TAIL_LOADS`` loads (at least ``PERIOD_REPEATS``) and before it ``SETTLE_FACTOR``
    times those holding ``KEEP_LOADS`` (at least ``PERIOD_REPEATS + 2``); of a block
    without loads, ``KEEP_REPEATS`` after and ``SETTLE_FACTOR`` times as many before.
    Runs too short to cut are left out."""
    # (the constants as arguments: a compiled kernel freezes the globals it reads, and
    # ``benchmarks.perf_model --only cuts`` sets SETTLE_FACTOR)
    return tuple(map(tuple, _runs(sig, has_load, RUN_PERIOD, PERIOD_REPEATS, KEEP_LOADS,
                                  TAIL_LOADS, KEEP_REPEATS, SETTLE_FACTOR).tolist()))


@njit
def _runs(sig, has_load, RUN_PERIOD, PERIOD_REPEATS, KEEP_LOADS, TAIL_LOADS, KEEP_REPEATS,
          SETTLE_FACTOR):
    """``_repeats``' runs for the tiles' names (``sig``: equal where the tiles are),
    compiled (numba): ``(first tile, block tiles, repeats, kept before, kept after)``
    rows."""
    n = len(sig)
    runs = np.zeros((n // (2 * PERIOD_REPEATS + 3) + 1, 5), np.int64)
    n_runs = i = 0
    # per period, where its last scan stopped: every tile from the scan's start to there
    # matched the tile a period on, so a scan from a later tile up to there stops there
    # too (the runs too short to cut are not scanned again from each of their tiles)
    stop = np.full(RUN_PERIOD + 1, -1)
    while i < n - 1:
        found = False
        for p in range(1, RUN_PERIOD + 1):
            j = stop[p]
            if j < i:
                j = i
                while j + p < n and sig[j + p] == sig[j]:
                    j += 1
                stop[p] = j
            reps = (j - i) // p + 1
            if reps > 2 * PERIOD_REPEATS + 2:
                loads = has_load[i:i + p].sum()
                head = SETTLE_FACTOR * (max(PERIOD_REPEATS + 2, -(-KEEP_LOADS // loads))
                                        if loads else KEEP_REPEATS)
                tail = max(PERIOD_REPEATS, -(-TAIL_LOADS // loads)) if loads else KEEP_REPEATS
                if reps > head + tail:
                    runs[n_runs, 0], runs[n_runs, 1], runs[n_runs, 2] = i, p, reps
                    runs[n_runs, 3], runs[n_runs, 4] = head, tail
                    n_runs += 1
                    i += reps * p
                    found = True
                    break
        if not found:
            i += 1
    return runs[:n_runs]


def _periodic(tiles: _Cols, repeats: tuple, ring: int | None, keep: tuple = (),
              front: dict | None = None) -> tuple[_Cols, tuple, np.ndarray]:
    """``tiles`` with each run of ``repeats`` (``_repeats``') cut to the repeats it keeps
    before the cut (or ``front[its first tile]``) and after it: ``(tiles, cuts, index)``,
    ``cuts`` giving per cut ``(index of the last tile before it, the block's tiles,
    repeats removed, the run's first tile, the repeats kept before it, the repeats its
    period is measured over)``, ``index`` each tile's index in the cut tiles (-1:
    removed). A tile's ``reader`` and ``after`` offsets that span a cut are shortened by
    it; nothing is cut where a tile points into removed repeats or a tile of ``keep``
    would be removed. Where the staging ring holds fewer than ``2 * LOOKAHEAD + 2`` of a
    load's slots, the slot a load overwrites can decide where it is placed
    (``_schedule``), so a run with loads is cut only by whole periods of the ring's
    pointer (``_ring_period``): what follows it then finds the ring as it would have.
    The engines' period is then measured over whole periods of the pointer too (at
    least ``PERIOD_REPEATS`` repeats), on repeats past the ring's first turn in the
    run."""
    n, front, ptrs, staged = len(tiles), front or {}, None, tiles.staged
    slot = tiles.largest("slot")
    free = ring is None or ring >= (2 * LOOKAHEAD + 2) * -(-slot // 64) * 64
    runs = []
    for i, p, reps, head, tail in repeats:
        kept, window, q = front.get(i, head), PERIOD_REPEATS, 1
        if not free and staged[i:i + p].any():
            if ptrs is None:      # the pointer before each tile (``_ring_pointer``)
                ptrs = _ring_pointer(staged, ring, 0, False, True)[0]
            block = int((-(-staged[i:i + p] // 64) * 64).sum())
            back = -(-ring // block)              # repeats holding a turn of the ring
            q = _ring_period(ptrs, i, p, reps, back)
            window = q * -(-PERIOD_REPEATS // q) if q else 0
            kept = max(kept, back + window + 2)
        m = reps - kept - tail
        m = m - m % q if q else 0
        if m > 0:
            runs.append((i, kept, p, m, window))
    index = np.full(n, -1, np.int64)             # original index -> index in the cut tiles
    out, cuts, at, kept_ranges = 0, [], 0, []    # kept_ranges: the tiles kept, [a, b) each
    for first, kept, p, m, window in runs:
        begin = first + kept * p
        index[at:begin] = np.arange(out, out + begin - at)
        kept_ranges.append(np.arange(at, begin))
        out += begin - at
        cuts.append((out - 1, p, m, first, kept, window))
        at = begin + m * p
    index[at:n] = np.arange(out, out + n - at)
    kept_ranges.append(np.arange(at, n))
    if not cuts or any(index[k] < 0 for k in keep):
        return tiles, (), range(n)
    rows = np.concatenate(kept_ranges)
    shortened = {}
    for field in ("reader", "after"):
        offset = getattr(tiles, field)[rows]
        spans = np.flatnonzero(offset)
        target = index[rows[spans] + offset[spans]]
        if (target < 0).any():                  # points into removed repeats: do not cut
            return tiles, (), range(n)
        offset[spans] = target - spans
        shortened[field] = offset
    return tiles.take(rows, **shortened), tuple(cuts), index


@njit
def _ring_pointer(staged, ring, ptr, slots, before):
    """The staging ring as ``backend.Ring`` allocates it, replayed over the tiles' loads
    (``staged``: ``_Cols.staged``; 64-byte aligned slots, round robin, wrapping to the
    base when one does not fit the end) from the pointer at ``ptr``, compiled (numba):
    ``(before, starts, turns, end)``, the pointer before each tile (with ``before``,
    else empty), the start and turn of the ring of each tile's slot (0 where a tile
    takes none; with ``slots``, else empty), and where the pointer ends."""
    n = len(staged)
    at = np.zeros(n if before else 0, np.int64)
    starts, turns = np.zeros(n if slots else 0, np.int64), np.zeros(n if slots else 0, np.int64)
    turn = 0
    for j in range(n):
        if before:
            at[j] = ptr
        if staged[j]:
            nbytes = -(-staged[j] // 64) * 64
            if ptr + nbytes > ring:
                ptr, turn = 0, turn + 1
            if slots:
                starts[j], turns[j] = ptr, turn
            ptr += nbytes
    return at, starts, turns, ptr


def _ring_period(ptrs: list[int], i: int, p: int, reps: int, back: int) -> int:
    """The fewest repeats ``q`` of the ``p``-tile block at tile ``i`` (``reps`` of them)
    after which the ring's pointer (``ptrs``, ``_ring_pointer``'s) is where it was, from
    the repeat ``back`` on (past the ring's first turn in the run, where the pointer
    wrapped): the pointer at a repeat's start decides every slot the repeat takes, so
    from there the slots repeat every ``q`` repeats, and cutting a multiple of ``q``
    leaves every slot a later load takes, and the loads it overwrites, as they were.
    0: no such ``q`` in the run."""
    start = i + back * p
    return next((q for q in range(1, reps - back) if ptrs[start] == ptrs[start + q * p]), 0)


def _steady(series: tuple, e: int, p: int, window: int) -> bool:
    """Whether every time in ``series`` (arrays) advanced alike over ``window`` repeats
    of ``p`` tiles, for each tile of the two repeats up to tile ``e``."""
    a = window * p
    step = series[0][e] - series[0][e - a]
    tol = 1e-9 * abs(step) + 1e-6
    at = np.arange(e - 2 * p + 1, e + 1)
    return all(bool((np.abs(x[at] - x[at - a] - step) <= tol).all()) for x in series)


def _removed(upto: np.ndarray, cut: tuple) -> float:
    """What a cut's removed repeats add to ``upto`` (a running total at each tile of the
    cut tiles: compute ends, load busy, a sum): its repeats at the mean advance of the
    repeats its period is measured over (``cut``: ``_periodic``'s)."""
    e, p, m, _, _, w = cut
    return m * float(upto[e] - upto[e - w * p]) / w


def _uncut_cycles(run: tuple, cuts: tuple) -> float:
    """The cycles of a ``_run`` over tiles ``_periodic`` cut, each cut's removed repeats
    added (``_extrapolate``'s cycles)."""
    return run[0][0] + sum(_removed(run[4], cut) for cut in cuts)


def _uncut_sum(per_tile: np.ndarray, cuts: tuple) -> float:
    """The sum of ``per_tile`` (an int a tile of a cut run) with each cut's removed
    repeats counted as the mean of the repeats its period is measured over."""
    upto = np.cumsum(per_tile)
    return float(upto[-1] if len(upto) else 0) + sum(_removed(upto, cut) for cut in cuts)


def _extrapolate(tiles: _Cols, run: tuple, cuts: tuple, schedule: tuple) -> tuple:
    """``_pipeline``'s result from a ``_run`` over tiles ``_periodic`` cut, and the runs
    whose engines had not settled before their cut (``_steady``: every load's and
    compute's times advancing alike over the repeats its period is measured over,
    ``PERIOD_REPEATS`` or whole periods of a small ring's pointer, before it), as
    ``(first tile, repeats to step before the cut)``, the repeats ``_settle_repeats``'
    or 0. After each cut, the repeats removed at the period the engines kept over those
    repeats (the compute ends' and the load busy's advance) are added to the cycles, to
    the load and compute busy, and to every later compute's begin and end and load
    busy. ``schedule``: ``_schedule``'s, where the tiles were placed."""
    (cycles, load_busy, compute_busy), write_start, load_end, compute_begin, compute_ends, \
        busy_to = run
    if not cuts:
        return run[0], compute_begin, compute_ends, busy_to, ()
    unsteady = tuple((first, _settle_repeats(tiles, run, schedule, e, p, kept, w))
                     for e, p, _, first, kept, w in cuts
                     if not _steady((compute_ends, compute_begin, load_end, write_start), e, p,
                                    w))
    compute_begin, compute_ends, busy_to = compute_begin.copy(), compute_ends.copy(), \
        busy_to.copy()
    shift = busy = 0.0
    at = 0
    for cut in cuts:
        e, p, m = cut[:3]
        compute_begin[at:e + 1] += shift
        compute_ends[at:e + 1] += shift
        busy_to[at:e + 1] += busy
        at = e + 1
        shift += _removed(run[4], cut)
        busy += _removed(run[5], cut)
        compute_busy += m * int(tiles.computes[e - p + 1:e + 1].sum())
    compute_begin[at:] += shift
    compute_ends[at:] += shift
    busy_to[at:] += busy
    return ((cycles + shift, load_busy + busy, compute_busy), compute_begin, compute_ends,
            busy_to, unsteady)


def _settle_repeats(tiles: _Cols, run: tuple, schedule: tuple, e: int, p: int, kept: int,
                    w: int) -> int:
    """The repeats to step before the cut of a run not settled by it (at tile ``e``,
    ``kept`` repeats of ``p`` tiles stepped, its period measured over ``w``; ``run``:
    ``_run``'s, ``schedule``: ``_schedule``'s) where its computes advanced alike and
    its loads drift against them, or 0. Loads that fall behind by ``drift`` cycles a
    repeat are a lead the load engine built before the run draining: the computes wait
    for them once the least slack between a compute's begin and the end of the load it
    reads (``needs``) has gone, ``slack / drift`` repeats on. Loads that gain on the
    computes do so until the compute whose end a load waits for (``dep``: with prefetch,
    the one that frees its staging slot) holds them, ``slack / drift`` repeats on, the
    slack from that compute's end to a load's copier start (at least its begin, so the
    repeats are if anything too many: the run is then stepped a little farther, and
    settled). Stepped that far and ``kept`` more, the run is cut where the engines keep
    one pace; a result past the run's repeats leaves it uncut. A drift within
    ``_steady``'s tolerance is none (``_drift``). (``python -m benchmarks.perf_model
    --only slow``: Qwen2.5-0.5B's LM head on edge-4x4 at 1 MiB, 4,748 repeats, falls 4
    cycles a repeat behind with 15,854 cycles of slack at its 72nd, so the lead drains
    at about the 4,036th; stepped four times as far each time, the pipeline ran four
    times, now twice.)"""
    drift, slack = _drift(tiles, run, schedule, e, p, w)
    return kept + math.ceil(slack / drift) + kept if drift > 0 and slack > 0 else 0


def _drift(tiles: _Cols, run: tuple, schedule: tuple, e: int, p: int, w: int
           ) -> tuple[float, float]:
    """``_settle_repeats``' ``(drift, slack)`` of a run, both in cycles: how far its
    loads fall behind (or gain on) its computes a repeat, and the least slack they have
    until the computes wait (or until their gates hold them); ``(0, 0)`` where its
    computes did not advance alike, its block has no load, or its loads do not drift
    beyond ``_steady``'s tolerance."""
    _, write_start, load_end, compute_begin, compute_ends, _ = run
    if not _steady((compute_ends, compute_begin), e, p, w):
        return 0.0, 0.0
    _, _, dep, needs = schedule
    a = w * p
    at = np.arange(e - p + 1, e + 1)
    step = (compute_ends[e] - compute_ends[e - a]) / w
    tol = (1e-9 * abs(step * w) + 1e-6) / w            # ``_steady``'s, a repeat
    loads = at[tiles.has_load[at]]
    if not len(loads):
        return 0.0, 0.0
    drift = float(((load_end[loads] - load_end[loads - a]) / w).max() - step)
    if drift > tol:                             # behind: until the computes wait
        reads = needs[at]
        if not (reads >= 0).any():
            return 0.0, 0.0
        slack = (compute_begin[at][reads >= 0]
                 - (load_end[reads[reads >= 0]] + 1 - ENGINE_START_CYCLES)).min()
    else:                                       # ahead: until their gates hold them
        drift = float(step - ((write_start[loads] - write_start[loads - a]) / w).max())
        gates = dep[loads]
        if drift <= tol or not (gates >= 0).any():
            return 0.0, 0.0
        slack = (write_start[loads][gates >= 0] - (compute_ends[gates[gates >= 0]] + 1)).min()
    return drift, float(slack)


def _timeline(tiles: _Cols, repeats: tuple, ring: int | None, l2: tuple, keep: tuple = ()
              ) -> tuple:
    """``_pipeline`` over ``tiles`` with their periodic runs (``repeats``) cut
    (``_periodic``), each run whose engines had not settled by its cut stepped through
    again, ``RESTEP_FACTOR`` times as far or as far as ``_settle_repeats`` says it
    settles, whichever is farther, until every run has settled by its cut or is not cut:
    ``((cycles, load busy, compute busy), compute begins, compute ends, load busy up to
    each tile)``, indexed as ``tiles``' tiles of ``keep``, in that order."""
    front: dict = {}
    while True:
        cut, cuts, index = _periodic(tiles, repeats, ring, keep, front)
        totals, compute_begin, compute_ends, busy_to, unsteady = _pipeline(cut, ring, *l2,
                                                                           cuts=cuts)
        if not unsteady:
            return totals, [(float(compute_begin[index[k]]), float(compute_ends[index[k]]),
                             float(busy_to[index[k]])) for k in keep]
        for first, settled in unsteady:
            front[first] = max(settled, RESTEP_FACTOR * (
                front.get(first) or next(c[4] for c in cuts if c[3] == first)))


def first_fetch_cycles(hw: HardwareConfig) -> int:
    """Cycles from start until the first instruction is dispatched (``arch.uarch``)."""
    return FETCH_START + hw.dram_latency_cycles + DISPATCH_LATENCY


#: The slowest link and the longest latency a ``Link`` takes (1 MB/s, 1 s).
LINK_GBYTES_PER_S_MIN = 1e-3
LINK_LATENCY_US_MAX = 1e6


@dataclass(frozen=True)
class Link:
    """The interconnect of tensor-parallel devices: bandwidth per direction, latency.
    Raises ``ValueError`` for a bandwidth that is not a positive number, a latency that
    is negative, or either outside what an interconnect is (``LINK_GBYTES_PER_S_MIN``,
    ``LINK_LATENCY_US_MAX``: past them a step's cycles overflowed)."""
    gbytes_per_s: float = 16.0
    latency_us: float = 2.0

    def __post_init__(self):
        for name, kind in (("gbytes_per_s", "positive"), ("latency_us", "non-negative")):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value) or value < 0
                    or (kind == "positive" and value == 0)):
                raise ValueError(f"link {name} must be a {kind} number, not {value!r}")
        if self.gbytes_per_s < LINK_GBYTES_PER_S_MIN:
            raise ValueError(f"link gbytes_per_s must be at least {LINK_GBYTES_PER_S_MIN} "
                             f"(1 MB/s), not {self.gbytes_per_s!r}")
        if self.latency_us > LINK_LATENCY_US_MAX:
            raise ValueError(f"link latency_us must be at most {LINK_LATENCY_US_MAX:g} "
                             f"(1 s), not {self.latency_us!r}")

    def allreduce_seconds(self, nbytes: int, devices: int) -> float:
        """A ring allreduce: 2 (N - 1) steps, each moving 1/N of the data."""
        if devices <= 1:
            return 0.0
        steps = 2 * (devices - 1)
        return steps * (nbytes / devices / (self.gbytes_per_s * 1e9) + self.latency_us * 1e-6)


def shard(cfg: ModelConfig, devices: int) -> ModelConfig:
    """One device's part of every layer under tensor parallelism (Megatron-style: heads,
    the MLP's hidden units and the vocabulary split ``devices`` ways)."""
    if devices < 1:
        raise ValueError(f"devices must be at least 1, not {devices}")
    for field, value in (("n_kv_heads", cfg.n_kv_heads), ("n_heads", cfg.n_heads),
                         ("d_ff", cfg.d_ff)):
        if value % devices:
            raise ValueError(f"{cfg.name}: {field} = {value} does not split over {devices} "
                             f"devices")
    if devices == 1:
        return cfg
    return dataclasses.replace(cfg, name=f"{cfg.name}/tp{devices}",
                               n_heads=cfg.n_heads // devices,
                               n_kv_heads=cfg.n_kv_heads // devices,
                               d_ff=cfg.d_ff // devices,
                               vocab_size=-(-cfg.vocab_size // devices))


def _stacked(plan: _Plan, n: int) -> tuple[_Cols, tuple]:
    """The tiles of the plan's prefix, ``n`` copies of its layer and its head, and their
    periodic runs (``_repeats``')."""
    prefix, layer, head = plan.prefix[0], plan.layer[0], plan.head[0]
    at = [0] + [len(prefix) + c * len(layer) for c in range(n + 1)]
    repeats = tuple((first + offset, *rest)
                    for offset, runs in zip(at, (plan.repeats[0],) + (plan.repeats[1],) * n
                                            + (plan.repeats[2],), strict=True)
                    for first, *rest in runs)
    return _Cols.concat([prefix, *[layer] * n, head]), repeats


def _layers(plan: _Plan, n_layers: int, ring, l2: tuple = ()) -> tuple[float, int, int]:
    """The plan's prefix, ``n_layers`` copies of its layer's tiles, then its head, through
    the pipeline. Once the load engine's lead (at most the ring) is shorter than the
    layers already run, each further layer adds the same time: the pipeline runs ``k +
    1`` layers and the head, and the ``k``-th layer (whose loads the ring has reached
    and which the head's hoisted loads do not touch: they go into the last) is repeated
    for the layers not run, which keeps the cost independent of the model's depth. Where
    a small ring's pointer comes back to where a layer began only after ``q`` layers
    (``_layer_period``), blocks of ``q`` are repeated, the last but one of those run
    ending one; exact once the engines are periodic (docs/perf.md, "Layers")."""
    layer = plan.layer[0]
    staged = int(layer.slot.sum())
    # past the first layer and past the ring's reach (the load engine's lead)
    k = 1 + max(1, math.ceil((ring or 0) / staged) if staged else 1)
    if n_layers > k + 1:
        k, q = _layer_period(plan, ring, k)
    else:
        q = 1
    # the layers stepped: the block of q repeated ends with the last but one, and the
    # layers not run are whole blocks
    stepped = k + q + (n_layers - k - q) % q
    if n_layers <= stepped:
        return _timeline(*_stacked(plan, n_layers), ring, l2)[0]
    last = len(plan.prefix[0]) + (stepped - 1) * len(layer) - 1   # the block's last tile
    first = last - q * len(layer)
    totals, ((_, end0, busy0), (_, end1, busy1)) = _timeline(*_stacked(plan, stepped), ring,
                                                              l2, (first, last))
    blocks = (n_layers - stepped) // q
    cycles, load_busy, compute_busy = totals
    return (cycles + blocks * (end1 - end0), load_busy + blocks * (busy1 - busy0),
            compute_busy + blocks * q * int(layer.computes.sum()))


#: The most layers a block repeated by ``_layers`` may span, and the most layers past the
#: ring's reach it may begin after: where a small staging ring's pointer takes longer to
#: come back to where a layer began, one layer is repeated, which is not exact (``python
#: -m benchmarks.perf_model --only layers``).
LAYER_PERIOD_MAX = 2


def _layer_period(plan: _Plan, ring: int | None, k: int) -> tuple[int, int]:
    """``(k', q)``: the first layer (from 1; ``k`` at the earliest) and the fewest layers
    ``q`` after which the staging ring's pointer is where it was at the start of that
    layer, so that from there each block of ``q`` layers takes the slots the one before
    took, with ``k' + q`` the fewest: ``k'`` at most ``LAYER_PERIOD_MAX`` past ``k``,
    ``q`` at most ``LAYER_PERIOD_MAX``.
    ``(k, 1)`` where the ring is not small (``_periodic``'s test: a load's slot then does
    not place it) or no such block is found."""
    parts = (plan.prefix[0], plan.layer[0], plan.head[0])
    slot = max(part.largest("slot") for part in parts)
    if ring is None or ring >= (2 * LOOKAHEAD + 2) * -(-slot // 64) * 64:
        return k, 1
    # as ``_ring_pointer`` moves the pointer: where it ends after the prefix, then after
    # each layer
    starts = [_ring_pointer(plan.prefix[0].staged, ring, 0, False, False)[3]]
    layer = plan.layer[0].staged
    for _ in range(k - 1 + 2 * LAYER_PERIOD_MAX):
        starts.append(_ring_pointer(layer, ring, starts[-1], False, False)[3])
    return min(((j + 1, q) for j in range(k - 1, k + LAYER_PERIOD_MAX)
                for q in range(1, LAYER_PERIOD_MAX + 1) if starts[j] == starts[j + q]),
               key=sum, default=(k, 1))


def _time_plan(plan: _Plan, n_layers: int, hw: HardwareConfig, prefetch: bool
               ) -> tuple[float, float, float, int, int, int]:
    """``(cycles, load busy, compute busy, DRAM bytes read, MACs, KV bytes read)`` of a
    program of ``n_layers`` layers from its one-layer plan (no instruction fetch)."""
    cycles, load_busy, compute_busy = _layers(plan, n_layers, plan.ring_bytes if prefetch
                                              else None,
                                              (hw.l2_lines_per_cycle, 1 / hw.dram_cycles_per_line,
                                               load_data_delay(hw), hw.line_bytes))
    total = [p + n_layers * l_ + h for p, l_, h in zip(plan.prefix[1:], plan.layer[1:],
                                                       plan.head[1:], strict=True)]
    read, macs, _, kv = total
    return cycles, load_busy, compute_busy, read, macs, kv


def _plan_hw(hw: HardwareConfig) -> HardwareConfig:
    """``hw`` as far as the plan depends on it (not on prefetch: the pipeline does)."""
    return hw if hw.prefetch else hw.replace(prefetch=True)


@lru_cache(maxsize=256)
def decode_step(cfg: ModelConfig, hw: HardwareConfig, position: int,
                prefetch: bool | None = None, devices: int = 1,
                link: Link = Link(), weights: str = "int8", batch: int = 1,
                kv_bits: float | None = None) -> StepEstimate:
    """One decode step at KV length ``position``, the projections' weights in format
    ``weights``; with ``batch > 1``, one step of that many sequences each at
    ``position`` (one token each: ``driver.compile_batch``'s decode program, the weights
    read once); with ``devices > 1``, one device's step under tensor parallelism, the
    two allreduces per layer (int32 partial sums of the ``d_model`` outputs) on ``link``.
    ``kv_bits`` (2 to 8): a compressed KV cache (chunk-wise, LLMS), its full blocks read
    as ``CHUNKED`` prefetches whose channels average that many bits
    (``occupancy.kv_budget_widths``; ``driver.compile_timing_step`` builds the same step
    for the instruction-level model); None: the int8 cache.
    Raises ``CompileError`` where the compiler would: an L2 too small for the step, or a
    DRAM image (``driver.dram_map``) larger than ``hw.dram_bytes``; ``ValueError`` for a
    budget outside [2, 8]. Memoised (``clear_caches``)."""
    _check_count("position", position, 0)
    _check_batch(batch)
    _check_kv_bits(cfg, kv_bits)
    if batch > 1 and devices > 1:
        raise ValueError("a batched decode step is timed on one device (devices = 1)")
    if batch > 1 and position < 1:
        raise ValueError("a batched decode step follows its sequences' prompts: position "
                         "must be at least 1")
    if position >= cfg.max_seq_len:
        raise ValueError(f"position {position} is outside [0, {cfg.max_seq_len}) for "
                         f"{cfg.name}")
    check_weight_format(shard(cfg, devices), weights)
    prefetch = hw.prefetch if prefetch is None else prefetch
    allreduce = math.ceil(link.allreduce_seconds(4 * cfg.d_model, devices) * hw.clock_hz)
    local = shard(cfg, devices)
    _check_dram(local, weights, _plan_hw(hw), ((position, 1, True),), position + 2, 1, batch,
                2,           # a batched step's sequences: their prompt's row and this step's
                kv_bits is not None)
    plan = _allreduced(_plan(_one_layer(local), weights, _plan_hw(hw), position, 1, True,
                             devices > 1, batch=batch, kv_bits=kv_bits), allreduce)
    cycles, load_busy, compute_busy, read, macs, kv = _time_plan(plan, cfg.n_layers, hw,
                                                                 prefetch)
    compute_busy -= 2 * allreduce * cfg.n_layers          # waiting on the link, not computing
    return StepEstimate(math.ceil(cycles + first_fetch_cycles(hw)), load_busy, compute_busy,
                        read, macs, kv)


# Decode steps timed per workload (``decode_total``): a step's cycles are affine in its KV
# length but for a jump at each block boundary, so the positions are timed mid-block
# (``decode_positions``), four of them; and prefill chunks timed between the first and
# the last (``prefill``): within 0.06% of timing every chunk on three of ``python -m
# benchmarks.perf_model --only workload``'s prefills, +0.42% on its 256-chunk one.
DECODE_SAMPLES = 4
PREFILL_SAMPLES = 3


def prefill_chunks(cfg: ModelConfig, hw: HardwareConfig, n_tokens: int,
                   weights: str = "int8") -> list[tuple[int, int]]:
    """``(start, tokens)`` of the chunks the compiler splits a prefill of ``n_tokens``
    into (``driver.prefill_graphs``)."""
    _check_count("prompt length", n_tokens, 1)
    return [(s0, t) for s0, t, _ in _prefill_chunking(_one_layer(cfg), weights, _plan_hw(hw),
                                                      n_tokens)]


def prefill(cfg: ModelConfig, hw: HardwareConfig, n_tokens: int,
            prefetch: bool | None = None, devices: int = 1, link: Link = Link(),
            weights: str = "int8", samples: int = PREFILL_SAMPLES) -> StepEstimate:
    """The prefill of ``n_tokens`` prompt tokens, chunk by chunk as the compiler splits
    it (each matmul in the dataflow ``arch.occupancy.matmul_mode`` picks), then the head
    for the last token: the first and the last chunk timed, ``samples`` chunks between
    them, the others interpolated (``PREFILL_SAMPLES``). Raises ``CompileError`` where
    the compiler would (L2 or DRAM)."""
    _check_count("prompt length", n_tokens, 1)
    _check_count("samples", samples, 2)
    if n_tokens > cfg.max_seq_len:
        raise ValueError(f"prompt length {n_tokens} is outside [1, {cfg.max_seq_len}]")
    check_weight_format(shard(cfg, devices), weights)
    prefetch = hw.prefetch if prefetch is None else prefetch
    local = _one_layer(shard(cfg, devices))
    key_hw = _plan_hw(hw)
    chunks = _prefill_chunking(local, weights, key_hw, n_tokens)
    _check_dram(shard(cfg, devices), weights, key_hw, chunks, n_tokens + 1, 1)
    program = _prefill_l2(local, weights, key_hw, n_tokens)
    # A chunk's cost is affine in its start position (only attention depends on it)
    # past the first, which also loads the RoPE table and starts the program, and but
    # for the last, which also runs the LM head: time those two and a few chunks of the
    # same length between them, and interpolate the others.
    full = [i for i, (_, t, _) in enumerate(chunks[:-1]) if t == chunks[0][1]]
    timed = {0: None}
    if len(full) > 1:
        timed.update((i, None) for i in _sample_positions(full[1], full[-1], samples))
    timed[len(chunks) - 1] = None
    for i in sorted(timed):
        start, t, head = chunks[i]
        allreduce = math.ceil(link.allreduce_seconds(4 * cfg.d_model * t, devices)
                              * hw.clock_hz)
        plan = _plan(local, weights, key_hw, start, t, head, devices > 1, program)
        timed[i] = _time_plan(_allreduced(plan, allreduce), cfg.n_layers, hw, prefetch)
    known = sorted(timed)
    total = [0.0] * 6
    for i in range(len(chunks)):
        if i in timed:
            row = timed[i]
        else:
            lo = max(k for k in known if k < i)
            hi = min(k for k in known if k > i and chunks[k][1] == chunks[i][1]
                     and k < len(chunks) - 1)
            w = (i - lo) / (hi - lo)
            row = [a + w * (b - a) for a, b in zip(timed[lo], timed[hi], strict=True)]
        total = [a + b for a, b in zip(total, row, strict=True)]
    cycles, load_busy, compute_busy, read, macs, kv = total
    return StepEstimate(math.ceil(cycles + first_fetch_cycles(hw)), round(load_busy),
                        round(compute_busy), round(read), round(macs), round(kv))


@dataclass(frozen=True)
class WorkloadEstimate:
    prompt_len: int
    output_len: int
    prefill_cycles: int
    decode_cycles: int
    samples: int                      # decode steps actually timed
    dram_read_bytes: int = 0
    batch: int = 1                    # sequences served together

    @property
    def cycles(self) -> int:
        return self.prefill_cycles + self.decode_cycles

    def tokens_per_s(self, hw: HardwareConfig) -> float:
        """Generated tokens (of every sequence) over the whole workload's time (prefill
        included)."""
        return (self.batch * self.output_len * hw.clock_hz / self.cycles if self.cycles
                else 0.0)

    def ttft_s(self, hw: HardwareConfig) -> float:
        """Until every sequence has its first token: the batch's prefills, one after
        another."""
        return self.prefill_cycles / hw.clock_hz

    def tpot_s(self, hw: HardwareConfig) -> float:
        """A decode step: one token of each sequence."""
        steps = max(1, self.output_len - 1)
        return self.decode_cycles / steps / hw.clock_hz


def workload(cfg: ModelConfig, hw: HardwareConfig, prompt_len: int, output_len: int,
             prefetch: bool | None = None, devices: int = 1, link: Link = Link(),
             samples: int = DECODE_SAMPLES, weights: str = "int8", batch: int = 1,
             kv_bits: float | None = None) -> WorkloadEstimate:
    """Prefill of ``prompt_len`` tokens (which yields the first output token), then
    ``output_len - 1`` decode steps, timed by sampling (``decode_total``), the
    projections' weights in format ``weights``. With ``batch > 1``, that many sequences
    of the same lengths served together as ``driver.compile_batch`` runs them: each
    prefill in turn, then decode steps of the whole batch. With ``kv_bits``, a compressed
    KV cache at that budget (``decode_step``): the prompt's full blocks are compressed
    after the prefill, each later one once full. Raises ``CompileError`` where
    the compiler would: a decode step that does not fit L2, or the whole generation's
    DRAM image larger than ``hw.dram_bytes``."""
    _check_count("prompt length", prompt_len, 1)
    _check_count("output length", output_len, 1)
    _check_count("samples", samples, 2)
    _check_batch(batch)
    _check_kv_bits(cfg, kv_bits)
    if prompt_len + output_len > cfg.max_seq_len:
        raise ValueError(f"prompt {prompt_len} + output {output_len} tokens exceed "
                         f"{cfg.name}'s max_seq_len {cfg.max_seq_len}")
    # fails fast where the compiler would: a decode step that does not fit L2, or the
    # whole generation's DRAM image (compile_generation's) that does not fit DRAM
    if batch > 1 and devices > 1:
        raise ValueError("a batched decode step is timed on one device (devices = 1)")
    local = shard(cfg, devices)
    # the first decode step timed (planned as ``decode_step`` plans it, so that it is
    # planned once), or the one after the prompt; and the last, whose attention reads the
    # longest KV (its scores grow with it), as the compiler plans every step's L2
    last = prompt_len + output_len - 2
    positions = decode_positions(prompt_len, last, samples, hw.kv_block_tokens)
    _plan(_one_layer(local), weights, _plan_hw(hw), positions[0] if positions else prompt_len,
          1, True, devices > 1, batch=batch, kv_bits=kv_bits)
    if positions and last not in positions:
        _check_l2(_one_layer(local), weights, _plan_hw(hw), last, batch, kv_bits)
    _check_dram(local, weights, _plan_hw(hw),
                _prefill_chunking(_one_layer(local), weights, _plan_hw(hw), prompt_len)
                + ((prompt_len, 1, True),), prompt_len + output_len,
                batch + output_len - 1 if batch > 1 else output_len, batch, output_len,
                kv_bits is not None)
    pre = prefill(cfg, hw, prompt_len, prefetch, devices, link, weights)
    decode, timed = decode_total(cfg, hw, prompt_len, output_len - 1, prefetch, samples,
                                 devices, link, weights, batch, kv_bits)
    return WorkloadEstimate(prompt_len, output_len, batch * pre.cycles, decode, timed,
                            batch * pre.dram_read_bytes, batch)


def _check_l2(cfg: ModelConfig, weights: str, hw: HardwareConfig, position: int, batch: int,
              kv_bits: float | None) -> None:
    """Raise ``CompileError`` where the compiler's L2 plan (``backend.plan_l2``) of the
    decode step at ``position`` does not fit, as ``_plan`` would, without costing it."""
    graph = _step_graph(cfg, weights, hw, position, 1, True, batch,
                        _packed(hw, position, kv_bits))
    plan_l2(graph.ops, cfg, hw, graph.name)


def _check_batch(batch) -> None:
    """Refuse a batch that is not 1 to ``driver.MAX_BATCH`` sequences, naming it."""
    _check_count("batch", batch, 1)
    if batch > MAX_BATCH:
        raise ValueError(f"batch must be at most MAX_BATCH = {MAX_BATCH}, not {batch}")


def _check_kv_bits(cfg: ModelConfig, kv_bits) -> None:
    """Refuse a KV budget outside [2, 8] bits (``occupancy.kv_budget_widths``), or one for
    heads wider than a compressed chunk holds (``KV_CHUNK_MAX_COLS``), naming it."""
    if kv_bits is not None:
        try:
            kv_budget_widths(cfg.head_dim, kv_bits)
        except ValueError as e:
            raise ValueError(f"kv_bits: {e}") from None
        if cfg.head_dim > KV_CHUNK_MAX_COLS:
            raise ValueError(f"kv_bits: a compressed chunk holds 1 to {KV_CHUNK_MAX_COLS} "
                             f"channels (KV_CHUNK_MAX_COLS); {cfg.name}'s heads have "
                             f"head_dim = {cfg.head_dim}")


def _check_count(what: str, value, least: int) -> None:
    """Refuse a count that is not an integer of at least ``least``, naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{what} must be an integer of at least {least}, not {value!r}")


def _sample_positions(first: int, last: int, samples: int) -> list[int]:
    """``samples`` integers spread evenly from ``first`` to ``last`` (all of them if there
    are no more)."""
    if last - first + 1 <= samples:
        return list(range(first, last + 1))
    step = (last - first) / (samples - 1)
    return sorted({first + round(i * step) for i in range(samples)})


def decode_positions(first: int, last: int, samples: int, block_tokens: int) -> list[int]:
    """The decode positions ``decode_total`` times for the steps at ``first .. last``.

    A step at position ``p`` reads the KV blocks of the ``p`` tokens before it, so its
    cycles jump where ``p - 1`` enters a new block of ``block_tokens`` and rise by a
    little a position within the block (TinyLlama-1.1B at 2 MiB on edge-16x16: +18,577
    cycles, then about +181 a position). Where the range holds at least ``samples``
    whole blocks, one position is timed in each of ``samples`` blocks spread evenly from
    the first whole block to the last (in each whole block if there are fewer, but at
    least two), mid-block (the block's 8th and 9th of 16 positions in turn), so that the
    line through them passes through each block's mean rather than a side of its jump.
    A range of fewer than two whole blocks has ``samples`` positions spread evenly from
    ``first`` to ``last`` (every one if there are no more). Raises ``ValueError`` for
    fewer than 2 samples."""
    _check_count("samples", samples, 2)
    if last - first + 1 <= samples:
        return list(range(first, last + 1))
    lo = -(-(first - 1) // block_tokens)                  # the first whole block
    hi = last // block_tokens - 1                         # the last
    if hi - lo < 1:
        return _sample_positions(first, last, samples)
    n = min(samples, hi - lo + 1)
    mid = 1 + (block_tokens - 1) // 2                     # of block k: k * block_tokens + mid
    return [(lo + round(i * (hi - lo) / (n - 1))) * block_tokens + mid
            + (i % 2 if block_tokens > 1 else 0) for i in range(n)]


def decode_total(cfg: ModelConfig, hw: HardwareConfig, first: int, count: int,
                 prefetch: bool | None = None, samples: int = DECODE_SAMPLES, devices: int = 1,
                 link: Link = Link(), weights: str = "int8", batch: int = 1,
                 kv_bits: float | None = None) -> tuple[int, int]:
    """Cycles of decode steps at positions ``first .. first + count - 1`` (each of
    ``batch`` sequences at that position): steps timed at the ``samples`` positions of
    ``decode_positions``, the others on the piecewise-linear interpolation through them
    (extended past the first and the last along its end segments). Returns ``(cycles,
    steps timed)``."""
    _check_count("samples", samples, 2)
    if count <= 0:
        return 0, 0
    last = first + count - 1
    xs = decode_positions(first, last, samples, hw.kv_block_tokens)
    ys = [decode_step(cfg, hw, x, prefetch, devices, link, weights, batch, kv_bits).cycles
          for x in xs]
    if len(xs) == 1:
        return ys[0], 1
    total = 0.0
    for j in range(len(xs) - 1):
        # the positions a .. b on segment j: from the range's first (the first segment)
        # or x_j, to before x_(j+1) or to the range's last (the last segment)
        a = first if j == 0 else xs[j]
        b = last if j == len(xs) - 2 else xs[j + 1] - 1
        n = b - a + 1
        slope = (ys[j + 1] - ys[j]) / (xs[j + 1] - xs[j])
        total += n * ys[j] + slope * n * ((a + b) / 2 - xs[j])
    return round(total), len(xs)


@dataclass(frozen=True)
class SwitchEstimate:
    """Bringing an evicted context back (``context_switch``): seconds for each way."""
    context_tokens: int
    evicted_tokens: int               # the leading tokens whose KV is not in DRAM
    evicted_bytes: int                # their KV in the flash tier (as stored)
    reload_s: float                   # every evicted chunk read back from flash
    recompute_s: float                # the evicted tokens prefilled again
    pipelined_s: float                # the first recompute_tokens prefilled while the
    recompute_tokens: int             # rest are read back, the best split


def context_switch(cfg: ModelConfig, hw: HardwareConfig, context_tokens: int,
                   resident_tokens: int, kv_bytes_ratio: float = 1.0,
                   prefetch: bool | None = None, weights: str = "int8") -> SwitchEstimate:
    """The time to make a context of ``context_tokens`` whose last ``resident_tokens``
    kept their KV in DRAM ready to decode again, the KV of the others evicted to the
    flash tier (``hw.flash_bytes_per_s``, ``hw.flash_latency_ns``) in whole KV blocks,
    stored at ``kv_bytes_ratio`` of int8's bytes (chunk-wise compression,
    ``integer.KVCompression``; 1 for int8).

    LLMS's swapping-recompute pipeline (arXiv 2403.11805, section 3.3): the accelerator
    prefills the first ``k`` evicted tokens again (``prefill``: they need no other KV)
    while the host reads the KV of the other evicted tokens from flash into DRAM, so the
    context is back after ``max(prefill(k), latency + bytes(rest) / bandwidth)``; ``k``
    runs over whole blocks and the best is kept (by bisection: the first term grows with
    ``k``, the second falls). ``k = 0`` is reloading alone, every evicted token
    recomputing alone. Recomputed KV is the prefill's, not the compressed one evicted.
    The flash reads do not take DRAM bandwidth from the accelerator in this model.
    Raises ``ValueError`` for a count out of range and ``CompileError`` where
    ``prefill`` would."""
    _check_count("context length", context_tokens, 1)
    _check_count("resident tokens", resident_tokens, 0)
    if context_tokens > cfg.max_seq_len:
        raise ValueError(f"context length {context_tokens} is outside [1, {cfg.max_seq_len}]")
    if not 0 < kv_bytes_ratio <= 2:
        raise ValueError(f"kv_bytes_ratio must be in (0, 2], not {kv_bytes_ratio!r}")
    block = hw.kv_block_tokens
    evicted = min(context_tokens,
                  -(-max(0, context_tokens - resident_tokens) // block) * block)
    row_bytes = 2 * cfg.n_layers * cfg.kv_dim * kv_bytes_ratio

    def load_s(tokens: int) -> float:
        if tokens <= 0:
            return 0.0
        return hw.flash_latency_ns * 1e-9 + tokens * row_bytes / hw.flash_bytes_per_s

    @cache
    def recompute_s(tokens: int) -> float:
        if tokens <= 0:
            return 0.0
        return prefill(cfg, hw, tokens, prefetch, weights=weights).cycles / hw.clock_hz

    def split(k: int) -> float:
        return max(recompute_s(min(k, evicted)), load_s(evicted - k))

    lo, hi = 0, -(-evicted // block)          # in blocks; the crossing lies between
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if recompute_s(min(mid * block, evicted)) < load_s(evicted - mid * block):
            lo = mid
        else:
            hi = mid
    k = min((lo * block, min(hi * block, evicted)), key=split) if evicted else 0
    return SwitchEstimate(context_tokens, evicted, round(evicted * row_bytes),
                          load_s(evicted), recompute_s(evicted), split(k), k)
