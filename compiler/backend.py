"""Back end: L2 planning, tiling and code generation from IR graphs to instructions.

Contract
--------
``generate(graphs, hw, ctx)`` turns the IR graphs of one program (a decode step, or the
chunks of a prefill) into a list of instructions in *natural order* (each load right
before its first use), plus extra ordering edges, without dependency tokens; the
scheduling pass (``compiler/schedule.py``) then hoists loads and inserts tokens.

L2 layout, per program:

* ``[0, freq)``: the RoPE frequency table, loaded once at the start;
* activations: every L2-resident tensor (and the attention temporaries) placed by
  liveness, first fit, 64-byte aligned;
* the rest is a ring of staging slots for everything streamed from DRAM: weight tiles,
  requantisation words, biases and past KV chunks. The ring size is the prefetch
  distance; at most ``MAX_INFLIGHT_SLOTS`` slots are outstanding, which bounds the
  dependency-token counters.

Tiling: a matmul streams weight tiles of ``n_t`` output channels by ``k_t`` inputs
(``k`` split with accumulation only when one row does not fit a slot); vector
operations with per-channel parameters go column chunk by column chunk; attention goes
KV head by KV head, past keys and values in chunks of tokens fetched by ``KV_PREFETCH``
through the block table, the current step's keys and values read from L2, a prefill
chunk's query rows in ``causal_blocks`` that skip the masked keys.

Tested by tests/compiler/test_pipeline.py (the generate pass) and
tests/compiler/test_isasim.py (every lowering, bit-exact against the integer reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np

from arch.hardware import HardwareConfig
from arch.isa import (
    BLOCK_TABLE_ENTRY_BYTES,
    INT32_BYTES,
    MX_BLOCK,
    PARAM_WORD_BYTES,
    Engine,
    Instruction,
    KvFormat,
    MatmulMode,
    OutBits,
    ParamMode,
    WeightFormat,
    WeightLayout,
    kv_header_area_bytes,
    make,
)
from arch.occupancy import matmul_mode
from compiler.image import MemoryMap, align
from compiler.ir import (
    OPS,
    Argmax,
    Attention,
    Buffer,
    CompileError,
    Embed,
    Graph,
    KvAppend,
    LmHead,
    MatMul,
    Output,
    Param,
    ParamWords,
    Requant,
    ResAdd,
    RmsNorm,
    Rope,
    SiluMul,
    Tensor,
    new_tensor,
)
from models.config import ModelConfig
from models.numerics import mx_blocks

MAX_INFLIGHT_SLOTS = 64
MIN_RING_BYTES = 4096
MIN_TILE_BYTES = 16 * 1024


def kv_pool_bytes(pool_blocks: int, block_tokens: int, row_bytes: int, headers: bool) -> int:
    """Bytes of one layer's K or V pool region (``driver.dram_map``): ``pool_blocks``
    blocks of ``block_tokens`` rows of ``row_bytes``, then, with ``headers`` (compressed
    KV chunks), their header area (``arch.isa.kv_header_area_bytes``)."""
    return pool_blocks * block_tokens * row_bytes + (
        kv_header_area_bytes(pool_blocks, row_bytes) if headers else 0)


def kv_pool_blocks(region_bytes: int, block_tokens: int, row_bytes: int, headers: bool) -> int:
    """The blocks a pool region of ``region_bytes`` holds (``kv_pool_bytes`` inverted)."""
    return region_bytes // kv_pool_bytes(1, block_tokens, row_bytes, headers)


@dataclass(frozen=True)
class BuildContext:
    """What code generation needs to know about the whole build."""

    hw: HardwareConfig
    cfg: ModelConfig
    mmap: MemoryMap
    prefetch: bool
    table_entries: int = 0     # a batched build: each sequence's block table entries,
    logits_rows: int = 0       # its logits rows, and the position of its first logits
    logits_first: tuple[int, ...] = ()     # row (``driver.dram_map``)
    kv_headers: bool = False   # each KV pool ends in its chunks' header area
    #                            (arch.isa.kv_chunk_addrs): compressed KV chunks

    def param_addr(self, p: Param | ParamWords) -> int:
        return self.mmap[f"param:{p.name}"].offset

    def pool_blocks(self, layer: int = 0, kind: str = "k") -> int:
        """The blocks of the K or V pool of ``layer`` (every pool has as many)."""
        return kv_pool_blocks(self.mmap[f"kv:{layer}:{kind}"].size, self.hw.kv_block_tokens,
                              self.cfg.kv_dim, self.kv_headers)

    def tokens_addr(self, seq: int) -> int:
        """Sequence ``seq``'s token buffer: ``max_seq_len + 1`` int32 ids."""
        return self.mmap["tokens"].offset + seq * INT32_BYTES * (self.cfg.max_seq_len + 1)

    def table_addr(self, seq: int) -> int:
        """Sequence ``seq``'s block table (``table_entries`` int32 entries each)."""
        return self.mmap["block_table"].offset + seq * BLOCK_TABLE_ENTRY_BYTES * self.table_entries

    def logits_addr(self, seq: int, row: int) -> int:
        """Where sequence ``seq``'s logits row of position ``row`` goes: in a single
        sequence's build, row ``row`` of the region; in a batched build, row ``row -
        logits_first[seq]`` of the sequence's ``logits_rows`` (only the rows it computes:
        its last prompt token's and each decode step's)."""
        first = self.logits_first[seq] if self.logits_first else 0
        return self.mmap["logits"].offset + (seq * self.logits_rows + row - first) * 2 * \
            self.cfg.vocab_size


@dataclass
class Slot:
    addr: int
    serial: int


class Ring:
    """Staging slots allocated round-robin in ``[base, end)``."""

    def __init__(self, base: int, end: int):
        self.base, self.end = base, end
        self.ptr = base
        self.serial = 0

    @property
    def size(self) -> int:
        return self.end - self.base

    def alloc(self, nbytes: int) -> Slot:
        serial = self.serial
        return Slot(self.take(nbytes), serial)

    def take(self, nbytes: int) -> int:
        """``alloc``'s slot address alone (the fast path stages thousands of weight tiles
        and builds no ``Slot``). Raises ``CompileError`` for a slot larger than the ring."""
        nbytes = align(nbytes)
        if nbytes > self.end - self.base:
            raise CompileError(f"a staging slot of {nbytes} bytes exceeds the L2 ring of "
                               f"{self.size} bytes")
        if self.ptr + nbytes > self.end:
            self.ptr = self.base
        addr = self.ptr
        self.ptr += nbytes
        self.serial += 1
        return addr


@dataclass
class Code:
    instrs: list[Instruction] = field(default_factory=list)
    after: dict[int, list[int]] = field(default_factory=dict)   # extra ordering edges
    l2_plan: dict = field(default_factory=dict)


# -- activation planning -----------------------------------------------------------------

def _attention_temps(op: Attention, cfg: ModelConfig) -> list[Buffer]:
    T, S = op.q.shape[0], op.start + op.q.shape[0]
    g = cfg.group_size
    return [Buffer(f"scores.l{op.layer}", 4 * g * T * S), Buffer(f"probs.l{op.layer}", g * T * S),
            Buffer(f"attacc.l{op.layer}", 4 * T * cfg.q_dim),
            Buffer(f"attrows.l{op.layer}", PARAM_WORD_BYTES * cfg.n_heads * T)]


def _param_mode(words: ParamWords) -> ParamMode:
    return ParamMode.CHANNEL if words.count > 1 else ParamMode.TENSOR


def plan_activations(ops: list, cfg: ModelConfig, base: int) -> tuple[dict[int, int], int, dict]:
    """Addresses of every buffer by liveness, first fit; returns (addr by uid, end, temps)."""
    first, last, buffers, temps = {}, {}, {}, {}
    for i, op in enumerate(ops):
        bufs = [t.buffer for t in vars(op).values() if isinstance(t, Tensor)]
        if isinstance(op, Attention):
            temps[id(op)] = _attention_temps(op, cfg)
            bufs += temps[id(op)]
        for b in bufs:
            buffers[b.uid] = b
            first.setdefault(b.uid, i)
            last[b.uid] = i
    # The buffers are placed in order of first use, so a placed buffer dead before this
    # one's first use is dead for every later one too: only the live ones are kept.
    placed: list[tuple[int, int, int]] = []        # (addr, end, last use)
    addr_of, top = {}, base
    for uid in sorted(buffers, key=lambda u: (first[u], -buffers[u].nbytes)):
        size = align(buffers[uid].nbytes)
        placed = [p for p in placed if p[2] >= first[uid]]
        addr = base
        for a, e, _ in sorted(placed):
            if addr + size <= a:
                break
            addr = max(addr, e)
        placed.append((addr, addr + size, last[uid]))
        addr_of[uid] = addr
        top = max(top, addr + size)
    return addr_of, top, temps


# -- code generation ---------------------------------------------------------------------

def staging_tile_bytes(ring_size: int) -> int:
    """The size of one staging slot: a 64th of the ring, at least ``MIN_TILE_BYTES``, at
    most half the ring."""
    return min(ring_size // 2, max(MIN_TILE_BYTES, ring_size // MAX_INFLIGHT_SLOTS))


def causal_block_rows(hw: HardwareConfig) -> int:
    """The query rows of a causal block: a GEMM tile's rows (``matmul_tile``)."""
    return hw.matmul_tile(MatmulMode.GEMM)[0]


def causal_blocks(rows: int, hw: HardwareConfig) -> list[tuple[int, int]]:
    """``[first, end)`` blocks of a prefill chunk's query rows for attention over its own
    keys: a block sees the new keys up to its last row, so the masked upper triangle is
    not computed. Blocks are ``causal_block_rows``, the granularity that ``driver``
    chunks prompts in, so a prompt's attention does the same work in one chunk as in
    several."""
    block = causal_block_rows(hw)
    return [(r0, min(rows, r0 + block)) for r0 in range(0, rows, block)]


def mx_exps_rows(n: int, k: int, k_total: int) -> tuple[int, int]:
    """``(rows, row_bytes)`` of the DMA_LOAD staging the block exponents of an MXINT4 tile
    of ``n`` weight rows and ``k`` of their ``k_total`` reduction elements: one row of
    ``n * ceil(k / 32)`` bytes when the tile spans whole rows (they are contiguous in
    DRAM and in L2), else ``n`` rows. A row of a few exponent bytes costs the DRAM a whole
    line: ``tiny``'s 4-byte rows read 8x the bytes as rows, and the load engine's stream of
    one-line reads delayed the store engine's KV_APPENDs on the RTL."""
    blocks = mx_blocks(k)
    return (1, n * blocks) if k == k_total else (n, blocks)


def matmul_tiling(n_total: int, k_total: int, tile_bytes: int, hw: HardwareConfig,
                  mxint4: bool = False) -> tuple[int, int]:
    """``(nt, kt)``: the weight tile of a matmul, ``nt`` output channels (a multiple of the
    array's columns where it can be) by ``kt`` inputs (``k`` is split, with accumulation,
    only when ``hw.array_cols`` rows of it do not fit a tile). With ``mxint4`` a row of
    ``k`` weights takes ``ceil(k / 2)`` bytes of the tile (its block exponents are staged
    in a slot of their own) and ``k`` is split only at block boundaries.

    A split ``k`` takes the fewest pieces that fit a tile, as even as the coarsest of
    these alignments that still fits lets them be (``alignments``): the L2's stripe (a
    line on each bank it reads in a cycle), where the pieces' activations then start on
    the bank the whole row's does; a line; else anywhere. Filling each tile to the brim
    instead leaves a short last piece, and pieces whose reads start across banks and
    lines: a 2,048-input projection split 1,854 + 194 where 1,024 + 1,024 fits."""
    cols = hw.array_cols

    def row_bytes(k: int) -> int:
        return (k + 1) // 2 if mxint4 else k
    if row_bytes(k_total) * min(cols, n_total) <= tile_bytes:
        nt = max(1, tile_bytes // row_bytes(k_total))
        return min(n_total, nt // cols * cols if nt >= cols else nt), k_total
    nt = min(cols, n_total)
    most = (max(MX_BLOCK, 2 * (tile_bytes // nt) // MX_BLOCK * MX_BLOCK) if mxint4
            else max(1, tile_bytes // nt))
    even = -(-k_total // -(-k_total // most))       # the fewest pieces, evened out
    # (the finest boundary, an input or a block, always fits: ``most`` is on it)
    return nt, next(kt for kt in (-(-even // b) * b for b in alignments(hw, mxint4))
                    if kt <= most)


def alignments(hw: HardwareConfig, mxint4: bool) -> tuple[int, ...]:
    """The boundaries, in inputs and coarsest first, that ``matmul_tiling`` tries to
    split a reduction at: the L2's stripe (``line_bytes`` on each of the
    ``l2_lines_per_cycle`` banks: activations are a byte an input), a line, then
    anywhere. MXINT4 tries, coarsest first, pieces whose exponents (a byte a block) are
    whole lines, so that each piece's exponent load moves whole lines; the stripe;
    pieces whose packed rows (half a byte an input) are whole lines; then any block
    boundary. Each is a power of two, so a piece on a coarser one is on every finer
    one."""
    line, stripe = hw.line_bytes, hw.l2_stripe_bytes
    if mxint4:
        return (*sorted({MX_BLOCK * line, stripe, 2 * line}, reverse=True), MX_BLOCK)
    return (stripe, line, 1)


@dataclass(frozen=True)
class MatmulTiles:
    """The weight tiles of an ``n_total x k_total`` matmul, ``nt`` output channels by
    ``kt`` inputs each (``matmul_tiling``), in the order the back end streams them: blocks
    of output channels outer, a tile per piece of the reduction inner. Iterating gives
    each tile's ``(n0, n, k0, k)``; ``block(b)`` the tiles of block ``b`` (made as they
    are read: an LM head's are tens of thousands, of which the fast path reads a few
    periods)."""

    n_total: int
    k_total: int
    nt: int
    kt: int

    @property
    def blocks(self) -> int:
        """Blocks of output channels (the last may be short)."""
        return -(-self.n_total // self.nt)

    @property
    def per(self) -> int:
        """Tiles per block: the reduction's pieces (the last may be short)."""
        return -(-self.k_total // self.kt)

    @cached_property
    def pieces(self) -> tuple[tuple[int, int], ...]:
        """``(k0, k)`` of each piece of the reduction, the same in every block."""
        return tuple((k0, min(self.kt, self.k_total - k0))
                     for k0 in range(0, self.k_total, self.kt))

    def block(self, b: int) -> list[tuple[int, int, int, int]]:
        """The ``(n0, n, k0, k)`` of block ``b``'s tiles (``0 <= b < blocks``)."""
        n0 = b * self.nt
        n = min(self.nt, self.n_total - n0)
        return [(n0, n, k0, k) for k0, k in self.pieces]

    def __iter__(self):
        for b in range(self.blocks):
            yield from self.block(b)

    def __len__(self) -> int:
        return self.blocks * self.per


@lru_cache(maxsize=256)
def matmul_tiles(n_total: int, k_total: int, tile_bytes: int, hw: HardwareConfig,
                 mxint4: bool = False) -> MatmulTiles:
    """The weight tiles of an ``n_total x k_total`` matmul of the size ``matmul_tiling``
    picks (``MatmulTiles``). Memoised (a chunked LM head's chunks share a shape)."""
    return MatmulTiles(n_total, k_total, *matmul_tiling(n_total, k_total, tile_bytes, hw,
                                                        mxint4))


def weight_tile_loads(n0: int, n: int, k0: int, k: int, k_total: int,
                      mxint4: bool = False) -> tuple[tuple[int, int, int, int], ...]:
    """The DRAM loads of a weight tile (``matmul_tiles``' ``(n0, n, k0, k)`` of an
    ``n_total x k_total`` matmul) as ``Generator.matmul`` emits them: ``(offset, rows, row
    bytes, DRAM stride)`` each, the offset in bytes from the weights' first byte. Int8
    weights are one load of ``n`` rows of ``k`` bytes a whole weight row apart; MXINT4
    weights the packed elements' (``ceil(k / 2)`` bytes a row) and then the block
    exponents' (``mx_exps_rows``; offset from the exponents' first byte)."""
    if not mxint4:
        return ((n0 * k_total + k0, n, k, k_total),)
    row_bytes, blocks = (k_total + 1) // 2, mx_blocks(k_total)
    return ((n0 * row_bytes + k0 // 2, n, (k + 1) // 2, row_bytes),
            (n0 * blocks + k0 // MX_BLOCK, *mx_exps_rows(n, k, k_total), blocks))


def column_chunk_plan(cols: int, words_per_col: int, per_channel: bool, tile_bytes: int,
                      extra_per_col: int = 0) -> list[tuple[int, int]]:
    """``(c0, c)`` column chunks of a vector operation with parameter words: with a word
    set per channel (``per_channel``), as many columns as their ``4 * words_per_col``
    bytes and ``extra_per_col`` staged bytes more fit a staging tile; else one chunk."""
    per_col = 4 * words_per_col + extra_per_col
    chunk = max(1, min(cols, tile_bytes // per_col)) if per_channel else cols
    return [(c0, min(chunk, cols - c0)) for c0 in range(0, cols, chunk)]


@dataclass(frozen=True)
class AttentionPlan:
    """How one layer's attention over ``rows`` query tokens at ``start`` is split:
    ``chunks``, ``(first token, tokens)`` of the past keys and values fetched per
    ``KV_PREFETCH`` (each as large as a staging tile allows); ``batches``,
    ``(first head, heads)`` of a KV head's query heads taken as the rows of one matmul
    (all of a group's heads up to the array's rows in decode, one head in prefill);
    ``blocks``, ``[r0, r1)`` causal blocks of the query rows (``causal_blocks``)."""

    chunks: tuple[tuple[int, int], ...]
    batches: tuple[tuple[int, int], ...]
    blocks: tuple[tuple[int, int], ...]
    packed: int = 0      # chunks below it are compressed (whole blocks, KvFormat.CHUNKED)


def attention_plan(rows: int, start: int, cfg: ModelConfig, hw: HardwareConfig,
                   tile_bytes: int, packed: int = 0) -> AttentionPlan:
    """Raises ``CompileError`` when compressed rows (``packed`` > 0) are asked for and a
    staging tile holds less than one KV block of a head."""
    hd, G, B = cfg.head_dim, cfg.group_size, hw.kv_block_tokens
    if packed % B or not 0 <= packed <= start:
        raise CompileError(f"compressed KV rows [0, {packed}) are not whole blocks of {B} "
                           f"tokens before position {start}")
    chunks = ()
    if packed:          # whole blocks, as many as a staging tile holds
        chunk = tile_bytes // hd // B * B
        if chunk == 0:
            raise CompileError(f"a staging tile of {tile_bytes} bytes holds less than one KV "
                               f"block ({B} tokens of head_dim {hd}) to decompress into")
        chunks = tuple((c0, min(chunk, packed - c0)) for c0 in range(0, packed, chunk))
    rest = start - packed
    if rest:
        chunk = max(1, min(rest, tile_bytes // hd))
        chunks += tuple((c0, min(chunk, start - c0)) for c0 in range(packed, start, chunk))
    if rows == 1:
        batches = tuple((g0, min(hw.array_rows, G - g0)) for g0 in range(0, G, hw.array_rows))
    else:
        batches = tuple((g, 1) for g in range(G))
    return AttentionPlan(chunks, batches, tuple(causal_blocks(rows, hw)), packed)


@dataclass(frozen=True)
class L2Plan:
    """A program's L2: the RoPE table in ``[0, freq_bytes)``, the activations up to
    ``act_end``, the staging ring ``[ring_base, l2_bytes)`` in slots of ``tile_bytes``."""

    freq_bytes: int
    act_end: int
    ring_base: int
    l2_bytes: int
    tile_bytes: int

    @property
    def ring_bytes(self) -> int:
        return self.l2_bytes - self.ring_base

    def to_json(self) -> dict:
        return {"freq": [0, self.freq_bytes], "activations": [self.freq_bytes, self.act_end],
                "ring": [self.ring_base, self.l2_bytes], "tile_bytes": self.tile_bytes}


def plan_l2(ops: list, cfg: ModelConfig, hw: HardwareConfig, program: str
            ) -> tuple[L2Plan, dict[int, int], dict]:
    """The L2 plan of a program's operations, with the address of every activation buffer
    (by uid) and each attention's temporaries (``plan_activations``). Raises
    ``CompileError`` when the ring would be smaller than ``MIN_RING_BYTES``."""
    freq_bytes = align(2 * cfg.head_dim)
    addr_of, act_end, temps = plan_activations(ops, cfg, freq_bytes)
    ring_base = align(act_end)
    ring_size = hw.l2_bytes - ring_base
    if ring_size < MIN_RING_BYTES:
        raise CompileError(
            f"L2 too small for the smallest legal tiling: {program} needs "
            f"{ring_base} bytes of activations and {MIN_RING_BYTES} bytes of staging, "
            f"but l2_bytes = {hw.l2_bytes}")
    return (L2Plan(freq_bytes, act_end, ring_base, hw.l2_bytes, staging_tile_bytes(ring_size)),
            addr_of, temps)


class Generator:
    def __init__(self, ctx: BuildContext, program: str):
        self.ctx = ctx
        self.hw = ctx.hw
        self.cfg = ctx.cfg
        self.program = program
        self.code = Code()
        self.slot_reader: dict[int, int] = {}

    # -- emission helpers --------------------------------------------------------------
    def emit(self, mnemonic: str, **fields) -> int:
        try:
            self.code.instrs.append(make(mnemonic, **fields))
        except ValueError as e:
            raise CompileError(f"{self.program}: cannot encode {mnemonic}: {e}") from None
        return len(self.code.instrs) - 1

    def use(self, slot: Slot, index: int) -> None:
        self.slot_reader[slot.serial] = index

    def load(self, dram_addr: int, rows: int, row_bytes: int, dram_stride: int) -> Slot:
        slot = self.ring.alloc(rows * row_bytes)
        index = self.emit("DMA_LOAD", dram_addr=dram_addr, l2_addr=slot.addr, rows=rows,
                          row_bytes=row_bytes, dram_stride=dram_stride, l2_stride=row_bytes)
        self._bound_inflight(slot, index)
        return slot

    def kv_prefetch(self, layer: int, kind: str, first: int, count: int, col_offset: int,
                    seq: int = 0, kv_format: KvFormat = KvFormat.INT8) -> Slot:
        hd = self.cfg.head_dim
        slot = self.ring.alloc(count * hd)
        pool = self.ctx.mmap[f"kv:{layer}:{kind}"]
        index = self.emit("KV_PREFETCH", pool_addr=pool.offset,
                          table_addr=self.ctx.table_addr(seq), first_token=first,
                          n_tokens=count, row_bytes=self.cfg.kv_dim, col_offset=col_offset,
                          col_bytes=hd, l2_addr=slot.addr, pool_blocks=self.ctx.pool_blocks(),
                          seq=seq, kv_format=kv_format)
        self._bound_inflight(slot, index)
        return slot

    def _bound_inflight(self, slot: Slot, index: int) -> None:
        old = slot.serial - MAX_INFLIGHT_SLOTS
        if old >= 0 and old in self.slot_reader:
            self.code.after.setdefault(index, []).append(self.slot_reader[old])

    def addr(self, t: Tensor) -> int:
        return self.act_addr[t.buffer.uid] + t.offset

    def emit_matmul(self, **fields) -> int:
        """A ``MATMUL`` in the dataflow the occupancy model times faster on this hardware
        (``arch.occupancy.matmul_mode``); int8 weights unless the fields say otherwise."""
        fields = {"w_format": WeightFormat.INT8, "e_addr": 0, **fields}
        return self.emit("MATMUL", mode=matmul_mode(self.hw, **fields), **fields)

    # -- whole program -------------------------------------------------------------------
    def generate(self, graphs: list[Graph]) -> Code:
        ops = [op for g in graphs for op in g.ops]
        plan, self.act_addr, self.temps = plan_l2(ops, self.cfg, self.hw, self.program)
        self.ring = Ring(plan.ring_base, self.hw.l2_bytes)
        self.tile_bytes = plan.tile_bytes
        self.code.l2_plan = plan.to_json()
        live = self.ctx.mmap.regions.get(f"kv_live:{self.program}")
        if live is not None:     # who holds each pool block (driver.block_owners), read first
            self.emit("KV_LIVE", map_addr=live.offset,
                      map_blocks=self.ctx.pool_blocks())
        self.load_rope_table(ops)
        for op in ops:
            LOWERINGS[type(op)](self, op)
        # The counters are written once every engine's last instruction has finished.
        last = {}
        for i, instr in enumerate(self.code.instrs):
            if instr.engine != Engine.CONTROL:
                last[instr.engine] = i
        index = self.emit("STORE_COUNTERS",
                          dram_addr=self.ctx.mmap[f"counters:{self.program}"].offset)
        self.code.after[index] = list(last.values())
        self.emit("HALT")
        return self.code

    def load_rope_table(self, ops: list) -> None:
        """The program's first instruction: the RoPE frequency table into ``[0, freq)``
        of L2, if an operation rotates."""
        freq = next((op.freq for op in ops if isinstance(op, Rope)), None)
        if freq is not None:
            self.emit("DMA_LOAD", dram_addr=self.ctx.param_addr(freq), l2_addr=0, rows=1,
                      row_bytes=freq.nbytes, dram_stride=freq.nbytes, l2_stride=freq.nbytes)

    # -- matmul --------------------------------------------------------------------------
    def matmul(self, x_addr: int, x_stride: int, m: int, w: Param, out_addr: int,
               out_stride: int, columns: tuple[int, int] | None = None,
               w_exps: Param | None = None) -> None:
        """``out = x . w^T`` over ``w``'s output channels, or over ``columns``
        (``(first, count)``) of them (int8 weights only), written from ``out_addr``;
        MXINT4 weights (``w_exps``, their block exponents) by ``mx_matmul``."""
        k_total = w.shape[1]
        c0, n_total = (0, w.shape[0]) if columns is None else columns
        if w_exps is not None:
            self.mx_matmul(x_addr, x_stride, m, w, w_exps, out_addr, out_stride)
            return
        base = self.ctx.param_addr(w) + c0 * k_total
        for n0, n, k0, k in matmul_tiles(n_total, k_total, self.tile_bytes, self.hw):
            (offset, *load), = weight_tile_loads(n0, n, k0, k, k_total)
            slot = self.load(base + offset, *load)
            index = self.emit_matmul(
                accumulate=int(k0 > 0), w_layout=WeightLayout.NK, x_addr=x_addr + k0,
                w_addr=slot.addr, out_addr=out_addr + 4 * n0, m=m, k=k, n=n,
                x_stride=x_stride, w_stride=k, out_stride=out_stride)
            self.use(slot, index)

    def mx_matmul(self, x_addr: int, x_stride: int, m: int, w: Param, w_exps: Param,
                  out_addr: int, out_stride: int) -> None:
        """``out = x . w^T`` with MXINT4 weights: per tile, the packed elements
        (``ceil(k / 2)`` bytes a row) and the block exponents (``ceil(k / 32)`` bytes a
        row, ``mx_exps_rows``) are staged by two loads; tiles split ``k`` at block
        boundaries."""
        n_total, k_total = w.shape
        base, e_base = self.ctx.param_addr(w), self.ctx.param_addr(w_exps)
        for n0, n, k0, k in matmul_tiles(n_total, k_total, self.tile_bytes, self.hw, True):
            (offset, *load), (e_offset, *e_load) = weight_tile_loads(n0, n, k0, k, k_total,
                                                                     True)
            elems = self.load(base + offset, *load)
            exps = self.load(e_base + e_offset, *e_load)
            index = self.emit_matmul(
                accumulate=int(k0 > 0), w_layout=WeightLayout.NK, x_addr=x_addr + k0,
                w_addr=elems.addr, out_addr=out_addr + 4 * n0, m=m, k=k, n=n,
                x_stride=x_stride, w_stride=(k + 1) // 2, out_stride=out_stride,
                w_format=WeightFormat.MXINT4, e_addr=exps.addr)
            self.use(elems, index)
            self.use(exps, index)

    def _op_matmul(self, op: MatMul) -> None:
        self.matmul(self.addr(op.x), op.x.row_bytes, op.x.rows, op.w, self.addr(op.out),
                    op.out.row_bytes, w_exps=op.w_exps)

    # -- vector operations with per-channel parameters ------------------------------------
    def column_chunks(self, words: ParamWords, cols: int, extra_per_col: int = 0,
                      col0: int = 0):
        """Yield ``(c0, c, slot)``: column chunks of a vector op with their parameter words
        loaded (``extra_per_col`` staging bytes per column are needed besides); the op's
        columns are the words' columns from ``col0``."""
        wpc = words.words_per_column
        for c0, c in column_chunk_plan(cols, wpc, words.count > 1, self.tile_bytes,
                                       extra_per_col):
            n_words = wpc if words.count == 1 else wpc * c
            first = 0 if words.count == 1 else wpc * (col0 + c0)
            slot = self.load(self.ctx.param_addr(words) + 4 * first, 1, 4 * n_words, 4 * n_words)
            yield c0, c, slot

    def _op_requant(self, op: Requant) -> None:
        src, dst = op.src, op.out
        out_bits = OutBits.INT8 if dst.dtype == "int8" else OutBits.INT16
        for c0, c, slot in self.column_chunks(op.params, src.cols, 4 if op.bias else 0):
            bias = None
            if op.bias is not None:
                bias = self.load(self.ctx.param_addr(op.bias) + 4 * c0, 1, 4 * c, 4 * c)
            index = self.emit("REQUANT", out_bits=out_bits, params=_param_mode(op.params),
                              has_bias=int(bias is not None),
                              src_addr=self.addr(src) + 4 * c0,
                              dst_addr=self.addr(dst) + dst.itemsize * c0, param_addr=slot.addr,
                              bias_addr=bias.addr if bias else 0, rows=src.rows, cols=c,
                              src_stride=src.row_bytes, dst_stride=dst.row_bytes)
            self.use(slot, index)
            if bias:
                self.use(bias, index)

    def _op_silumul(self, op: SiluMul) -> None:
        for c0, c, slot in self.column_chunks(op.params, op.gate.cols):
            index = self.emit("SILU_MUL", gate_addr=self.addr(op.gate) + 4 * c0,
                              up_addr=self.addr(op.up) + c0, dst_addr=self.addr(op.out) + c0,
                              param_addr=slot.addr, rows=op.gate.rows, cols=c,
                              gate_stride=op.gate.row_bytes, up_stride=op.up.row_bytes,
                              dst_stride=op.out.row_bytes)
            self.use(slot, index)

    def _op_resadd(self, op: ResAdd) -> None:
        for c0, c, slot in self.column_chunks(op.params, op.h.cols):
            index = self.emit("RESADD", h_addr=self.addr(op.h) + 2 * c0,
                              acc_addr=self.addr(op.acc) + 4 * c0, param_addr=slot.addr,
                              rows=op.h.rows, cols=c, h_stride=op.h.row_bytes,
                              acc_stride=op.acc.row_bytes)
            self.use(slot, index)

    # -- other vector operations ----------------------------------------------------------
    def _op_rmsnorm(self, op: RmsNorm) -> None:
        self.emit("RMSNORM", src_addr=self.addr(op.src), dst_addr=self.addr(op.out),
                  rows=op.src.rows, cols=op.src.cols, src_stride=op.src.row_bytes,
                  dst_stride=op.out.row_bytes, mult=op.mult, shift=op.shift, eps=op.eps)

    def _op_rope(self, op: Rope) -> None:
        T, heads, hd = op.src.shape
        self.emit("ROPE", src_addr=self.addr(op.src), dst_addr=self.addr(op.out), rows=T,
                  heads=heads, head_dim=hd, pos0=op.pos0, freq_addr=0, row_stride=heads * hd)

    def _op_argmax(self, op: Argmax) -> None:
        self.emit("ARGMAX", src_addr=self.addr(op.src), n=op.src.cols,
                  dst_addr=self.addr(op.out))

    def _op_lmhead(self, op: LmHead) -> None:
        """Each chunk: the matmul, the int16 logits (stored to the logits row), their first
        maximum; its index is stored to DRAM so that two gathers fetch the chunk's maximum
        (from the stored logits) and its column in the vocabulary (from ``op.columns``).
        Then the first maximum over the chunks' maxima picks the chunk, and a gather of
        the chunk's column by that index gives the token. Ties resolve as one ARGMAX over
        the whole row: the first column within a chunk, then the first chunk."""
        scratch = self.ctx.mmap["lm_head_scratch"].offset
        row = self.ctx.logits_addr(op.seq, op.row)
        columns = self.ctx.param_addr(op.columns)
        acc, logits = self.addr(op.acc), self.addr(op.logits)
        chunks = op.chunks
        for j, (c0, n) in enumerate(chunks):
            self.matmul(self.addr(op.x), op.x.row_bytes, 1, op.w, acc, 4 * n, (c0, n))
            for r0, r, slot in self.column_chunks(op.params, n, col0=c0):
                index = self.emit("REQUANT", out_bits=OutBits.INT16,
                                  params=_param_mode(op.params), has_bias=0,
                                  src_addr=acc + 4 * r0, dst_addr=logits + 2 * r0,
                                  param_addr=slot.addr, bias_addr=0, rows=1, cols=r,
                                  src_stride=4 * n, dst_stride=2 * n)
                self.use(slot, index)
            self.emit("DMA_STORE", l2_addr=logits, dram_addr=row + 2 * c0, rows=1,
                      row_bytes=2 * n, l2_stride=2 * n, dram_stride=2 * n)
            local = self.addr(op.local) + 4 * j
            self.emit("ARGMAX", src_addr=logits, n=n, dst_addr=local)
            self.emit("DMA_STORE", l2_addr=local, dram_addr=scratch + 4 * j, rows=1,
                      row_bytes=4, l2_stride=4, dram_stride=4)
            self.emit("DMA_GATHER", idx_addr=scratch + 4 * j, table_addr=row + 2 * c0,
                      count=1, row_bytes=2, l2_addr=self.addr(op.maxima) + 2 * j, l2_stride=2)
            self.emit("DMA_GATHER", idx_addr=scratch + 4 * j, table_addr=columns + 4 * c0,
                      count=1, row_bytes=4, l2_addr=self.addr(op.indices) + 4 * j,
                      l2_stride=4)
        k = len(chunks)
        best, indices = scratch + 4 * k, scratch + 4 * (k + 1)
        self.emit("ARGMAX", src_addr=self.addr(op.maxima), n=k, dst_addr=self.addr(op.best))
        self.emit("DMA_STORE", l2_addr=self.addr(op.best), dram_addr=best, rows=1,
                  row_bytes=4, l2_stride=4, dram_stride=4)
        self.emit("DMA_STORE", l2_addr=self.addr(op.indices), dram_addr=indices, rows=1,
                  row_bytes=4 * k, l2_stride=4 * k, dram_stride=4 * k)
        self.emit("DMA_GATHER", idx_addr=best, table_addr=indices, count=1, row_bytes=4,
                  l2_addr=self.addr(op.out), l2_stride=4)

    # -- data movement -------------------------------------------------------------------
    def _op_embed(self, op: Embed) -> None:
        self.emit("DMA_GATHER", idx_addr=self.ctx.tokens_addr(op.seq) + 4 * op.start,
                  table_addr=self.ctx.param_addr(op.table), count=op.out.rows,
                  row_bytes=op.out.row_bytes, l2_addr=self.addr(op.out),
                  l2_stride=op.out.row_bytes)

    def _op_kvappend(self, op: KvAppend) -> None:
        pool = self.ctx.mmap[f"kv:{op.layer}:{op.kind}"]
        self.emit("KV_APPEND", l2_addr=self.addr(op.src), pool_addr=pool.offset,
                  table_addr=self.ctx.table_addr(op.seq), first_token=op.start,
                  n_tokens=op.src.shape[0], row_bytes=self.cfg.kv_dim,
                  pool_blocks=self.ctx.pool_blocks(), seq=op.seq)

    def _op_output(self, op: Output) -> None:
        if op.kind == "logits":
            dram = self.ctx.logits_addr(op.seq, op.row)
            self.emit("DMA_STORE", l2_addr=self.addr(op.src), dram_addr=dram, rows=op.src.rows,
                      row_bytes=op.src.row_bytes, l2_stride=op.src.row_bytes,
                      dram_stride=op.src.row_bytes)
        else:
            self.emit("DMA_STORE", l2_addr=self.addr(op.src),
                      dram_addr=self.ctx.tokens_addr(op.seq) + 4 * op.row, rows=1,
                      row_bytes=4, l2_stride=4, dram_stride=4)

    # -- attention -------------------------------------------------------------------------
    def _op_attention(self, op: Attention) -> None:
        cfg, hw = self.cfg, self.hw
        T, hd, G = op.q.shape[0], cfg.head_dim, cfg.group_size
        start, S = op.start, op.start + op.q.shape[0]
        scores, probs, acc, row_words = (self.act_addr[b.uid] for b in self.temps[id(op)])
        q, k_new, v_new = self.addr(op.q), self.addr(op.k_new), self.addr(op.v_new)
        q_stride, kv_stride = cfg.q_dim, cfg.kv_dim
        plan = attention_plan(T, start, cfg, hw, self.tile_bytes, op.packed)
        chunks, batches, blocks = plan.chunks, plan.batches, plan.blocks

        def fmt(c0: int) -> KvFormat:
            return KvFormat.CHUNKED if c0 < plan.packed else KvFormat.INT8
        out_stride = 4 * (hd if T == 1 else q_stride)

        def rows(count: int) -> tuple[int, int]:
            """Rows of a batch of ``count`` heads, and the byte stride between query rows."""
            return count * T, (hd if T == 1 else q_stride)

        def block_rows(m: int, r0: int, r1: int) -> int:
            return m if T == 1 else r1 - r0

        for kv in range(cfg.n_kv_heads):
            # scores = q . K^T, past keys chunk by chunk, then the new keys from L2
            for c0, n in chunks:
                slot = self.kv_prefetch(op.layer, "k", c0, n, kv * hd, op.seq, fmt(c0))
                for g0, count in batches:
                    m, x_stride = rows(count)
                    head = kv * G + g0
                    index = self.emit_matmul(
                        accumulate=0, w_layout=WeightLayout.NK, x_addr=q + head * hd,
                        w_addr=slot.addr, out_addr=scores + 4 * (g0 * T * S + c0), m=m, k=hd,
                        n=n, x_stride=x_stride, w_stride=hd, out_stride=4 * S)
                    self.use(slot, index)
            # the new keys a block of query rows sees: those up to its last row
            for g0, count in batches:
                m, x_stride = rows(count)
                head = kv * G + g0
                for r0, r1 in blocks:
                    self.emit_matmul(
                        accumulate=0, w_layout=WeightLayout.NK,
                        x_addr=q + head * hd + r0 * x_stride, w_addr=k_new + kv * hd,
                        out_addr=scores + 4 * (g0 * T * S + r0 * S + start),
                        m=block_rows(m, r0, r1), k=hd, n=r1, x_stride=x_stride,
                        w_stride=kv_stride, out_stride=4 * S)
            for g in range(G):
                for r0, r1 in blocks:       # row words of head h, query row t: h * T + t
                    self.emit("SOFTMAX", src_addr=scores + 4 * (g * T * S + r0 * S),
                              dst_addr=probs + g * T * S + r0 * S, rows=r1 - r0,
                              cols=start + r1, q_pos0=start + r0, src_stride=4 * S,
                              dst_stride=S, mult=op.sm_mult, shift=op.sm_shift,
                              scale_addr=row_words + PARAM_WORD_BYTES * ((kv * G + g) * T + r0),
                              out_mult=op.att_mult, out_shift=op.att_shift)
            # out = P . V, past values chunk by chunk, then the new values from L2
            for c0, n in chunks:
                slot = self.kv_prefetch(op.layer, "v", c0, n, kv * hd, op.seq, fmt(c0))
                for g0, count in batches:
                    m, _ = rows(count)
                    head = kv * G + g0
                    index = self.emit_matmul(
                        accumulate=int(c0 > 0), w_layout=WeightLayout.KN,
                        x_addr=probs + g0 * T * S + c0, w_addr=slot.addr,
                        out_addr=acc + 4 * head * hd, m=m, k=n, n=hd, x_stride=S, w_stride=hd,
                        out_stride=out_stride)
                    self.use(slot, index)
            for g0, count in batches:
                m, _ = rows(count)
                head = kv * G + g0
                for r0, r1 in blocks:
                    self.emit_matmul(
                        accumulate=int(start > 0), w_layout=WeightLayout.KN,
                        x_addr=probs + g0 * T * S + r0 * S + start, w_addr=v_new + kv * hd,
                        out_addr=acc + 4 * head * hd + r0 * out_stride,
                        m=block_rows(m, r0, r1), k=r1, n=hd, x_stride=S, w_stride=kv_stride,
                        out_stride=out_stride)
        # each (query row, head) requantised by its own softmax row's word: the heads of
        # a decode step as the rows of one block, a prefill chunk head by head
        out, row_bytes = self.addr(op.out), hd if T == 1 else cfg.q_dim
        for h in range(1 if T == 1 else cfg.n_heads):
            self.emit("REQUANT", out_bits=OutBits.INT8, params=ParamMode.ROW, has_bias=0,
                      src_addr=acc + 4 * h * hd, dst_addr=out + h * hd,
                      param_addr=row_words + PARAM_WORD_BYTES * h * T, bias_addr=0,
                      rows=cfg.n_heads if T == 1 else T, cols=hd, src_stride=4 * row_bytes,
                      dst_stride=row_bytes)


# Each IR operation's lowering: one entry per operation class of ``compiler.ir.OPS``.
LOWERINGS = {
    Embed: Generator._op_embed, MatMul: Generator._op_matmul, Requant: Generator._op_requant,
    RmsNorm: Generator._op_rmsnorm, Rope: Generator._op_rope, KvAppend: Generator._op_kvappend,
    Attention: Generator._op_attention, SiluMul: Generator._op_silumul,
    ResAdd: Generator._op_resadd, Argmax: Generator._op_argmax, LmHead: Generator._op_lmhead,
    Output: Generator._op_output,
}
assert set(LOWERINGS) == set(OPS), "every IR operation needs exactly one lowering"


def generate(graphs: list[Graph], ctx: BuildContext, program: str) -> Code:
    return Generator(ctx, program).generate(graphs)



# -- the LM head in column chunks ---------------------------------------------------------

def lm_head_scratch_bytes(n_chunks: int) -> int:
    """DRAM words ``LmHead``'s lowering stores for the gathers: each chunk's argmax, the
    chunk holding the maximum, and each chunk's column."""
    return 4 * (2 * n_chunks + 1)


@lru_cache(maxsize=8)
def _column_indices(V: int) -> np.ndarray:
    """``0 .. V - 1`` (int32, read only): the LM head's column table, shared by every
    graph of a vocabulary (the fast path fits the head's chunks at each step)."""
    columns = np.arange(V, dtype=np.int32)
    columns.flags.writeable = False
    return columns


def chunk_lm_head(graph: Graph, chunk_cols: int) -> Graph:
    """``graph`` with its LM head (the MatMul, Requant, Argmax and logits Output of the last
    row) replaced by one ``LmHead`` in chunks of ``chunk_cols`` columns; the same graph
    when it has no head. The logits of the whole row then never sit in L2 at once."""
    argmax = next((op for op in graph.ops if isinstance(op, Argmax)), None)
    if argmax is None:
        return graph

    def op_on(kind, field: str, t: Tensor):
        """The operation of ``kind`` whose ``field`` is a view of ``t``'s buffer."""
        return next(op for op in graph.ops
                    if isinstance(op, kind) and getattr(op, field).buffer is t.buffer)

    requant = op_on(Requant, "out", argmax.src)
    matmul = op_on(MatMul, "out", requant.src)
    output = op_on(Output, "src", argmax.src)
    V = matmul.w.shape[0]
    if not 0 < chunk_cols < V:
        raise CompileError(f"{graph.name}: an LM head of {V} columns in chunks of {chunk_cols}")
    n = -(-V // chunk_cols)
    head = LmHead(
        x=matmul.x, w=matmul.w, params=requant.params,
        columns=Param(f"{matmul.w.name}.columns", (V,), "int32", _column_indices(V)),
        row=output.row, chunk_cols=chunk_cols,
        acc=new_tensor("lm_head.acc", (1, chunk_cols), "int32"),
        logits=new_tensor("lm_head.logits", (1, chunk_cols), "int16"),
        local=new_tensor("lm_head.local", (n,), "int32"),
        maxima=new_tensor("lm_head.maxima", (n,), "int16"),
        indices=new_tensor("lm_head.indices", (n,), "int32"),
        best=new_tensor("lm_head.best", (1,), "int32"), out=argmax.out, seq=output.seq)
    if requant.bias is not None:
        raise CompileError(f"{graph.name}: an LM head with a bias cannot be chunked")
    replaced = {id(requant), id(argmax), id(output)}
    ops = [head if op is matmul else op for op in graph.ops if id(op) not in replaced]
    return Graph(graph.name, graph.start, graph.tokens, ops)
