"""The fast path: a decode step of a large model timed without compiling it.

Contract
--------
``decode_step(cfg, hw, position, prefetch)`` estimates one decode step at KV length
``position`` in well under a second for 1B-class models, and returns a ``StepEstimate``
(cycles, busy cycles of the load and compute engines, DRAM bytes). ``workload(cfg, hw,
prompt_len, output_len, prefetch)`` estimates a whole generation — the prefill of
``prompt_len`` tokens, then ``output_len`` decode steps — without timing every step.

Method (``docs/perf.md``). The step is the compiler's instruction stream at the
granularity of its *staging tiles*: the same tiling as ``compiler.backend`` (weight tiles
of ``backend.matmul_tiling``, parameter column chunks, KV chunks fetched by
``KV_PREFETCH``), each tile a load on the load engine followed by the compute
instructions that consume it, each costed by ``arch.occupancy`` on the instruction the
compiler would emit (so the per-instruction numbers are the RTL-calibrated ones). The
two engines then run as a pipeline over the tiles:

    load_begin[i]  = max(load_issued[i-1], compute_end[i - S])
    load_end[i]    = copier(load_begin[i], load_end[i-1], ...) # ``occupancy.Copies``
    compute_end[i] = max(compute_end[i-1], load_end[i]) + compute[i]

where ``S`` is how many tiles the load engine may run ahead: the staging ring's slots
with prefetch (the scheduler hoists loads as far as the ring allows, at most
``LOOKAHEAD`` loads); without prefetch each load waits for the compute before it
(``S = 1``: the program's natural order with its tokens serialises the two engines). A
load's rows follow the previous load's through the copier, as on the RTL. Every layer
is the same stream, so one layer is timed and repeated (the pipeline carries across
layer boundaries).

A workload's decode steps differ only in KV length, and a step's time is affine in the
KV length between changes of the KV chunking; ``workload`` times steps at a few sample
positions and integrates the piecewise-linear interpolation (``python -m
benchmarks.perf_model --only workload`` checks it against step-by-step timing).

Tested by tests/sweeps/test_perf_model.py (the fast path against the instruction-level
model).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache, partial

from arch.hardware import HardwareConfig
from arch.isa import make
from arch.occupancy import CALIBRATION, Copies, matmul_mode, occupancy
from arch.uarch import (
    DEFERRED,
    DISPATCH_LATENCY,
    ENGINE_START_CYCLES,
    FETCH_START,
    QUEUE_DEPTH,
)
from compiler.backend import (
    MAX_INFLIGHT_SLOTS,
    MIN_RING_BYTES,
    causal_blocks,
    matmul_tiling,
    mx_exps_rows,
    staging_tile_bytes,
)
from compiler.driver import prefill_chunk_sizes
from compiler.image import align
from compiler.ir import CompileError
from compiler.schedule import LOOKAHEAD
from models.config import ModelConfig
from models.integer import check_weight_format

DMA_END = CALIBRATION.dma_end


@dataclass(frozen=True)
class StepEstimate:
    cycles: int
    load_busy: int
    compute_busy: int
    dram_read_bytes: int
    macs: int

    def seconds(self, hw: HardwareConfig) -> float:
        return self.cycles / hw.clock_hz


def _cost(instr, hw) -> tuple[int, int, int, int]:
    """(engine cycles with overhead, DRAM bytes read, MACs, L2 lines) of one
    instruction."""
    occ = occupancy(instr, hw)
    return occ.cycles + ENGINE_START_CYCLES, occ.dram_read_bytes, occ.macs, occ.l2_lines


class _Stream:
    """Tiles in program order: (load, compute cycles, staged bytes), plus totals (DRAM
    bytes read, MACs, L2 lines moved); a load is its ``occupancy.Copies``, or 0 for
    none."""

    def __init__(self, hw: HardwareConfig, tile_bytes: int, rows: int = 1,
                 weights: str = "int8"):
        self.hw, self.tile_bytes, self.rows, self.weights = hw, tile_bytes, rows, weights
        self.tiles: list[tuple[int, int]] = []
        self.read = self.macs = self.l2 = 0

    def load(self, rows: int, row_bytes: int) -> Copies:
        occ = occupancy(make("DMA_LOAD", dram_addr=0, l2_addr=0, rows=rows,
                             row_bytes=row_bytes, dram_stride=row_bytes,
                             l2_stride=row_bytes), self.hw)
        self.read += occ.dram_read_bytes
        self.l2 += occ.l2_lines
        return occ.copies

    def compute(self, instr) -> int:
        cycles, _, macs, lines = _cost(instr, self.hw)
        self.macs += macs
        self.l2 += lines
        return cycles

    def add(self, load, compute: int, staged: int = 0) -> None:
        self.tiles.append((load, compute, staged))

    def staged_tile(self, shapes: dict, shape, rows: int, row_bytes: int, instr) -> None:
        """A load of ``rows x row_bytes`` then the compute instruction ``instr()`` that
        consumes it (none for ``instr=None``: a load whose reader comes with the next).
        An operation's tiles come in a few shapes: each shape is costed once (in
        ``shapes``, keyed by ``shape``) and repeated."""
        if shape not in shapes:
            read0, macs0, l20 = self.read, self.macs, self.l2
            shapes[shape] = (self.load(rows, row_bytes),
                             0 if instr is None else self.compute(instr()),
                             self.read - read0, self.macs - macs0, self.l2 - l20)
        else:
            self.read += shapes[shape][2]
            self.macs += shapes[shape][3]
            self.l2 += shapes[shape][4]
        self.add(shapes[shape][0], shapes[shape][1], rows * row_bytes)

    # -- the compiler's operations ------------------------------------------------------
    def matmul(self, m: int, k_total: int, n_total: int, weights: str | None = None) -> None:
        """A projection (weights in the stream's format) or, with ``weights``, another."""
        tiles, read, macs, lines = _matmul_tiles(self.hw, self.tile_bytes, m, k_total, n_total,
                                                 weights or self.weights)
        self.tiles.extend(tiles)
        self.read += read
        self.macs += macs
        self.l2 += lines

    def per_channel(self, mnemonic: str, cols: int, words_per_col: int, **fields) -> None:
        chunk = max(1, min(cols, self.tile_bytes // (4 * words_per_col)))
        shapes = {}                      # every chunk but the last has the same width
        for c0 in range(0, cols, chunk):
            c = min(chunk, cols - c0)
            self.staged_tile(shapes, c, 1, 4 * words_per_col * c,
                             lambda c=c: make(mnemonic, cols=c, **fields))

    def vector(self, instr) -> None:
        self.add(0, self.compute(instr))

    def requant(self, cols: int) -> None:
        self.per_channel("REQUANT", cols, 1, out_bits=0, per_channel=1, has_bias=0,
                         src_addr=0, dst_addr=0, param_addr=0, bias_addr=0, rows=self.rows,
                         src_stride=4 * cols, dst_stride=cols)

    def rmsnorm(self, d: int) -> None:
        self.vector(make("RMSNORM", src_addr=0, dst_addr=0, rows=self.rows, cols=d,
                         src_stride=2 * d,
                         dst_stride=d, mult=1, shift=0, eps=0))

    def attention(self, cfg: ModelConfig, position: int) -> None:
        """``rows`` query tokens at ``position .. position + rows - 1``: past keys and
        values in KV chunks, the new ones from L2; decode batches a KV head's query heads
        into the rows of one GEMV, prefill takes one head at a time."""
        T, hd, G, R = self.rows, cfg.head_dim, cfg.group_size, self.hw.array_rows
        S = position + T
        chunk = max(1, min(position, self.tile_bytes // hd)) if position else 0
        chunks = [min(chunk, position - c0) for c0 in range(0, position, chunk)] if position else []
        batches = ([min(R, G - g0) * T for g0 in range(0, G, R)] if T == 1 else [T] * G)

        def prefetch(n):
            occ = occupancy(make("KV_PREFETCH", pool_addr=0, table_addr=0, first_token=0,
                                 n_tokens=n, row_bytes=cfg.kv_dim, col_offset=0, col_bytes=hd,
                                 l2_addr=0), self.hw)
            self.read += occ.dram_read_bytes
            self.l2 += occ.l2_lines
            return occ.copies

        def mm(m, k, n, kn, acc=0):
            fields = dict(accumulate=acc, w_layout=kn, x_addr=0, w_addr=0, out_addr=0, m=m,
                          w_format=0, e_addr=0,
                          k=k, n=n, x_stride=k, w_stride=n if kn else k, out_stride=4 * n)
            return self.compute(make("MATMUL", mode=matmul_mode(self.hw, **fields), **fields))

        # a prefill chunk's query rows in causal blocks (``backend.causal_blocks``)
        blocks = causal_blocks(T, self.hw)

        def rows_of(m, r0, r1):
            return m if T == 1 else r1 - r0

        for _ in range(cfg.n_kv_heads):
            for n in chunks:
                self.add(prefetch(n), sum(mm(m, hd, n, 0) for m in batches), n * hd)
            self.add(0, sum(mm(rows_of(m, r0, r1), hd, r1, 0) for m in batches
                            for r0, r1 in blocks))
            for _ in range(G):
                for r0, r1 in blocks:
                    self.vector(make("SOFTMAX", src_addr=0, dst_addr=0, rows=r1 - r0,
                                     cols=position + r1, q_pos0=position + r0,
                                     src_stride=4 * S, dst_stride=S, mult=1, shift=0))
            for i, n in enumerate(chunks):
                self.add(prefetch(n), sum(mm(m, n, hd, 1, int(i > 0)) for m in batches),
                         n * hd)
            self.add(0, sum(mm(rows_of(m, r0, r1), r1, hd, 1, int(position > 0))
                            for m in batches for r0, r1 in blocks))
        self.add(self.load(1, 4), self.compute(make(
            "REQUANT", out_bits=0, per_channel=0, has_bias=0, src_addr=0, dst_addr=0,
            param_addr=0, bias_addr=0, rows=T, cols=cfg.q_dim, src_stride=4 * cfg.q_dim,
            dst_stride=cfg.q_dim)), 4)


def _matmul_instr(hw: HardwareConfig, fields: dict):
    return make("MATMUL", mode=matmul_mode(hw, **fields), **fields)


@lru_cache(maxsize=1024)
def _matmul_tiles(hw: HardwareConfig, tile_bytes: int, m: int, k_total: int, n_total: int,
                  weights: str = "int8"):
    """The tiles of one ``m x k_total x n_total`` matmul (its weights staged in tiles of
    ``backend.matmul_tiling``; MXINT4 weights as two loads, the packed elements and the
    block exponents, as ``backend.Generator.mx_matmul``), with its DRAM bytes and MACs;
    the same for every position, so cached."""
    mx = weights == "mxint4"
    nt, kt = matmul_tiling(n_total, k_total, tile_bytes, hw.array_cols, mx)
    s = _Stream(hw, tile_bytes)
    shapes = {}
    for n0 in range(0, n_total, nt):
        n = min(nt, n_total - n0)
        for k0 in range(0, k_total, kt):
            k = min(kt, k_total - k0)
            w_bytes = (k + 1) // 2 if mx else k
            fields = dict(accumulate=int(k0 > 0), w_layout=0, x_addr=0, w_addr=0, out_addr=0,
                          w_format=int(mx), e_addr=0, m=m, k=k, n=n, x_stride=k_total,
                          w_stride=w_bytes, out_stride=4 * n_total)
            instr = partial(_matmul_instr, hw, fields)
            if mx:
                s.staged_tile(shapes, ("w", n, k), n, w_bytes, None)
                s.staged_tile(shapes, (n, k, k0 > 0), *mx_exps_rows(n, k, k_total), instr)
            else:
                s.staged_tile(shapes, (n, k, k0 > 0), n, k, instr)
    return tuple(s.tiles), s.read, s.macs, s.l2


def decode_activation_bytes(cfg: ModelConfig) -> int:
    """The L2 the compiler's activation plan takes in a decode step: the RoPE table, then
    the largest set of live buffers (the logits' accumulators and int16 values with the
    residual and the normalised row, or the MLP's)."""
    d = cfg.d_model
    widest = max(cfg.vocab_size, cfg.d_ff, cfg.q_dim + 2 * cfg.kv_dim)
    return (align(2 * cfg.head_dim) + align(4 * widest) + align(2 * widest) + align(2 * d)
            + align(d))


def staging(cfg: ModelConfig, hw: HardwareConfig) -> tuple[int, int]:
    """``(tile_bytes, ring_bytes)`` of the compiler's staging ring in a decode step."""
    ring = hw.l2_bytes - align(decode_activation_bytes(cfg))
    if ring < MIN_RING_BYTES:
        raise CompileError(f"L2 too small: a decode step of {cfg.name} needs "
                           f"{decode_activation_bytes(cfg)} bytes of activations and "
                           f"{MIN_RING_BYTES} of staging, but l2_bytes = {hw.l2_bytes}")
    return staging_tile_bytes(ring), ring


def _core(hw: HardwareConfig) -> HardwareConfig:
    """``hw`` without what tiles do not depend on (the L2's size enters through
    ``tile_bytes``; prefetch through the pipeline), so that design points differing only
    in those share the cached tiles."""
    return hw.replace(l2_bytes=256 * hw.l2_banks * hw.l2_port_bytes, prefetch=True)


@lru_cache(maxsize=4096)
def _layer_tiles(cfg: ModelConfig, hw: HardwareConfig, position: int, tile_bytes: int,
                 allreduce: int = 0, rows: int = 1, weights: str = "int8"):
    """One layer's tiles, its projections' weights in format ``weights``; ``allreduce``
    cycles of a tensor-parallel allreduce after the attention output projection and after
    the MLP (0: a single device)."""
    s = _Stream(hw, tile_bytes, rows, weights)
    d, q, kv, ff, T = cfg.d_model, cfg.q_dim, cfg.kv_dim, cfg.d_ff, rows
    s.rmsnorm(d)
    for n in (q, kv, kv):
        s.matmul(T, d, n)
        s.requant(n)
    for heads in (cfg.n_heads, cfg.n_kv_heads):
        s.vector(make("ROPE", src_addr=0, dst_addr=0, rows=T, heads=heads,
                      head_dim=cfg.head_dim, pos0=position, freq_addr=0,
                      row_stride=heads * cfg.head_dim))
    s.attention(cfg, position)
    s.matmul(T, q, d)
    if allreduce:
        s.add(0, allreduce)
    s.per_channel("RESADD", d, 1, h_addr=0, acc_addr=0, param_addr=0, rows=T, h_stride=2 * d,
                  acc_stride=4 * d)
    s.rmsnorm(d)
    s.matmul(T, d, ff)
    s.requant(ff)
    s.matmul(T, d, ff)
    s.per_channel("SILU_MUL", ff, 2, gate_addr=0, up_addr=0, dst_addr=0, param_addr=0, rows=T,
                  gate_stride=4 * ff, up_stride=ff, dst_stride=ff)
    s.matmul(T, ff, d)
    if allreduce:
        s.add(0, allreduce)
    s.per_channel("RESADD", d, 1, h_addr=0, acc_addr=0, param_addr=0, rows=T, h_stride=2 * d,
                  acc_stride=4 * d)
    return tuple(s.tiles), s.read, s.macs, s.l2


@lru_cache(maxsize=256)
def _head_tiles(cfg: ModelConfig, hw: HardwareConfig, tile_bytes: int):
    s = _Stream(hw, tile_bytes)
    s.rmsnorm(cfg.d_model)
    s.matmul(1, cfg.d_model, cfg.vocab_size)            # the LM head: int8 in every format
    s.requant(cfg.vocab_size)
    s.vector(make("ARGMAX", src_addr=0, n=cfg.vocab_size, dst_addr=0))
    return tuple(s.tiles), s.read, s.macs, s.l2


def _pipeline(tiles, ring: int | None) -> tuple[int, int, int]:
    """The two engines over the tiles ``(load, compute cycles, staged bytes)``:
    ``(cycles, load busy, compute busy)``.

    With prefetch (``ring`` bytes of staging) a load may run ahead while its bytes fit the
    ring beside the loads not yet consumed (at most ``MAX_INFLIGHT_SLOTS`` of them), so
    it waits for the compute that frees the oldest bytes it needs. Loads hoisted that
    far precede, in program order, the compute instructions they run ahead of; dispatch
    is in order, so compute ``i`` is dispatched only once the load engine's queue
    (``QUEUE_DEPTH``) has taken the loads in front of it: it waits until the load
    ``QUEUE_DEPTH`` before the farthest one hoisted above it has begun. Without prefetch
    (``ring=None``) each load waits for the compute before it."""
    n = len(tiles)
    loads = [t[0] for t in tiles]
    computes = [t[1] for t in tiles]
    # reach[i]: the farthest tile whose load is hoisted above compute i
    if ring is None:
        reach = range(n)
    else:
        staged = [t[2] for t in tiles]
        reach, j, held = [0] * n, 0, 0
        for i in range(n):
            limit = i + (MAX_INFLIGHT_SLOTS if MAX_INFLIGHT_SLOTS < LOOKAHEAD else LOOKAHEAD) + 1
            if limit > n:
                limit = n
            while j < limit and held + staged[j] <= ring:
                held += staged[j]
                j += 1
            reach[i] = j - 1 if j - 1 > i else i
            if j > i:
                held -= staged[i]
            else:
                j = i + 1
    # A load begins ENGINE_START_CYCLES after its engine is free (IDLE, BEGIN); the engine is
    # free again once its rows are queued, and the load ends when the copier has written
    # them, after the loads before it (at most DEFERRED in flight).
    load_begin, load_end = [0] * n, [0] * n
    ends: list[float] = []                  # ends of the loads so far
    timed = -1
    engine_free = compute_end = freed = 0
    read_free = write_free = float("-inf")
    load_busy = covered = n_loads = 0
    for i in range(n):
        # Loads first hoisted above compute i (reach is nondecreasing) found their bytes
        # free once compute i - 1 had released its own (``freed``).
        r = reach[i]
        while timed < r:
            timed += 1
            ld = loads[timed]
            start = engine_free if engine_free > freed else freed
            load_begin[timed] = start
            if not ld:
                load_end[timed] = start
                continue
            begin = start + ENGINE_START_CYCLES
            issued, read_free, write_free = ld.after(begin, read_free, write_free)
            free = issued + 1
            end = write_free + DMA_END
            if n_loads >= DEFERRED and ends[n_loads - DEFERRED] + 2 > free:
                free = ends[n_loads - DEFERRED] + 2
            engine_free = free
            ends.append(end)
            n_loads += 1
            load_end[timed] = end
            load_busy += end - (begin if begin > covered else covered)
            covered = end
        start = compute_end
        if loads[i] and load_end[i] > start:
            start = load_end[i]
        gate = r - QUEUE_DEPTH
        if gate > i and load_begin[gate] > start:
            start = load_begin[gate]
        compute_end = freed = start + computes[i]
    return compute_end, load_busy, sum(computes)


def first_fetch_cycles(hw: HardwareConfig) -> int:
    """Cycles from start until the first instruction is dispatched (``arch.uarch``)."""
    return FETCH_START + hw.dram_latency_cycles + DISPATCH_LATENCY


@dataclass(frozen=True)
class Link:
    """The interconnect of tensor-parallel devices: bandwidth per direction, latency."""
    gbytes_per_s: float = 16.0
    latency_us: float = 2.0

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


def _l2_cycles(lines: int, hw: HardwareConfig) -> float:
    """The cycles the L2 needs to move ``lines`` lines: the pipeline above shares no L2
    between the engines (``sweeps.perf`` does, by port priority), so a step is at least
    this long where the L2 moves as few lines per cycle as the DRAM (edge-4x4)."""
    return lines / hw.l2_lines_per_cycle


def _layers(layer, head, n_layers: int, ring) -> tuple[float, int, int]:
    """``n_layers`` copies of a layer's tiles then the head, through the pipeline. Once
    the load engine's lead (at most the ring) is shorter than the layers already run,
    each further layer adds the same time: the pipeline is run on ``k`` and ``k + 1``
    layers and the difference repeated, which is exact once periodic and keeps the cost
    independent of the model's depth. (The compute engine's advance over one layer of a
    single run is not that difference: the head's loads, hoisted into the last layers,
    delay them.)"""
    staged = sum(t[2] for t in layer)
    k = 1 + (math.ceil((ring or 0) / staged) if staged else 0)
    if n_layers <= k + 1:
        return _pipeline(list(layer) * n_layers + list(head), ring)
    a = _pipeline(list(layer) * k + list(head), ring)
    b = _pipeline(list(layer) * (k + 1) + list(head), ring)
    extra = n_layers - k
    return tuple(x + extra * (y - x) for x, y in zip(a, b, strict=True))


def decode_step(cfg: ModelConfig, hw: HardwareConfig, position: int,
                prefetch: bool | None = None, devices: int = 1,
                link: Link = Link(), weights: str = "int8") -> StepEstimate:
    """One decode step at KV length ``position``, the projections' weights in format
    ``weights``; with ``devices > 1``, one device's step under tensor parallelism, the
    two allreduces per layer (int32 partial sums of the ``d_model`` outputs) on ``link``."""
    if position < 0 or position >= cfg.max_seq_len:
        raise ValueError(f"position {position} is outside [0, {cfg.max_seq_len}) for "
                         f"{cfg.name}")
    check_weight_format(shard(cfg, devices), weights)
    prefetch = hw.prefetch if prefetch is None else prefetch
    allreduce = math.ceil(link.allreduce_seconds(4 * cfg.d_model, devices) * hw.clock_hz)
    cfg = shard(cfg, devices)
    tile_bytes, ring = staging(cfg, hw)
    core = _core(hw)
    layer, layer_read, layer_macs, layer_l2 = _layer_tiles(cfg, core, position, tile_bytes,
                                                           allreduce, 1, weights)
    head, head_read, head_macs, head_l2 = _head_tiles(cfg, core, tile_bytes)
    cycles, load_busy, compute_busy = _layers(layer, head, cfg.n_layers,
                                              ring if prefetch else None)
    cycles = max(cycles, _l2_cycles(layer_l2 * cfg.n_layers + head_l2, hw))
    compute_busy -= 2 * allreduce * cfg.n_layers          # waiting on the link, not computing
    fill = first_fetch_cycles(hw)
    return StepEstimate(math.ceil(cycles + fill), load_busy, compute_busy,
                        layer_read * cfg.n_layers + head_read,
                        layer_macs * cfg.n_layers + head_macs)


def prefill_activation_bytes(cfg: ModelConfig, tokens: int, position: int) -> int:
    """The L2 a prefill chunk of ``tokens`` at ``position`` takes for activations: per
    token the widest accumulator and its int8/int16 result, the residual and the
    normalised row; one head's scores and probabilities; the last token's logits."""
    widest = max(cfg.d_ff, cfg.q_dim + 2 * cfg.kv_dim)
    per_token = 6 * widest + 3 * cfg.d_model
    scores = 5 * tokens * (position + tokens)
    return (align(2 * cfg.head_dim) + tokens * per_token + scores + 6 * cfg.vocab_size)


def prefill_chunks(cfg: ModelConfig, hw: HardwareConfig, n_tokens: int) -> list[tuple[int, int]]:
    """``(start, tokens)`` chunks: the largest of ``driver.prefill_chunk_sizes`` whose
    chunks' activations and the smallest staging ring fit L2 (``compiler.driver`` does
    the same)."""
    for chunk in prefill_chunk_sizes(n_tokens, hw):
        chunks = [(s0, min(chunk, n_tokens - s0)) for s0 in range(0, n_tokens, chunk)]
        if all(prefill_activation_bytes(cfg, t, s0) + MIN_RING_BYTES <= hw.l2_bytes
               for s0, t in chunks):
            return chunks
    raise CompileError(f"L2 too small: a one-token prefill chunk of {cfg.name} at "
                       f"position {n_tokens - 1} needs "
                       f"{prefill_activation_bytes(cfg, 1, n_tokens - 1)} bytes of "
                       f"activations and {MIN_RING_BYTES} of staging, but l2_bytes "
                       f"= {hw.l2_bytes}")


def prefill(cfg: ModelConfig, hw: HardwareConfig, n_tokens: int,
            prefetch: bool | None = None, devices: int = 1, link: Link = Link(),
            weights: str = "int8") -> StepEstimate:
    """The prefill of ``n_tokens`` prompt tokens, chunk by chunk (each matmul in the
    dataflow ``arch.occupancy.matmul_mode`` picks), then the head for the last token."""
    if not 1 <= n_tokens <= cfg.max_seq_len:
        raise ValueError(f"prompt length {n_tokens} is outside [1, {cfg.max_seq_len}]")
    check_weight_format(shard(cfg, devices), weights)
    prefetch = hw.prefetch if prefetch is None else prefetch
    local = shard(cfg, devices)
    chunks = prefill_chunks(cfg, hw, n_tokens)
    # A chunk's cost is affine in its start position (only attention depends on it):
    # time a few chunks of the same length and interpolate the others.
    full = [i for i, (_, t) in enumerate(chunks) if t == chunks[0][1]]
    timed = {i: None for i in _sample_positions(full[0], full[-1], 5)}
    timed[len(chunks) - 1] = None
    ring = None
    for i in sorted(timed):
        start, t = chunks[i]
        act = prefill_activation_bytes(local, t, start)
        ring = hw.l2_bytes - align(act)
        tile_bytes = staging_tile_bytes(ring)
        allreduce = math.ceil(link.allreduce_seconds(4 * cfg.d_model * t, devices)
                              * hw.clock_hz)
        layer, read, macs, lines = _layer_tiles(local, _core(hw), start, tile_bytes,
                                                allreduce, t, weights)
        head = (_head_tiles(local, _core(hw), tile_bytes) if i == len(chunks) - 1
                else ((), 0, 0, 0))
        cycles, load_busy, compute_busy = _layers(layer, head[0], cfg.n_layers,
                                                  ring if prefetch else None)
        cycles = max(cycles, _l2_cycles(lines * cfg.n_layers + head[3], hw))
        timed[i] = (cycles, load_busy, compute_busy, read * cfg.n_layers + head[1],
                    macs * cfg.n_layers + head[2])
    known = sorted(timed)
    total = [0.0] * 5
    for i in range(len(chunks)):
        if i in timed:
            row = timed[i]
        else:
            lo = max(k for k in known if k < i)
            hi = min(k for k in known if k > i and chunks[k][1] == chunks[i][1])
            w = (i - lo) / (hi - lo)
            row = [a + w * (b - a) for a, b in zip(timed[lo], timed[hi], strict=True)]
        total = [a + b for a, b in zip(total, row, strict=True)]
    cycles, load_busy, compute_busy, read, macs = total
    return StepEstimate(math.ceil(cycles + first_fetch_cycles(hw)), round(load_busy),
                        round(compute_busy), round(read), round(macs))


@dataclass(frozen=True)
class WorkloadEstimate:
    prompt_len: int
    output_len: int
    prefill_cycles: int
    decode_cycles: int
    samples: int                      # decode steps actually timed
    dram_read_bytes: int = 0

    @property
    def cycles(self) -> int:
        return self.prefill_cycles + self.decode_cycles

    def tokens_per_s(self, hw: HardwareConfig) -> float:
        """Generated tokens over the whole workload's time (prefill included)."""
        return self.output_len * hw.clock_hz / self.cycles if self.cycles else 0.0

    def ttft_s(self, hw: HardwareConfig) -> float:
        return self.prefill_cycles / hw.clock_hz

    def tpot_s(self, hw: HardwareConfig) -> float:
        steps = max(1, self.output_len - 1)
        return self.decode_cycles / steps / hw.clock_hz


def workload(cfg: ModelConfig, hw: HardwareConfig, prompt_len: int, output_len: int,
             prefetch: bool | None = None, devices: int = 1, link: Link = Link(),
             samples: int = 9, weights: str = "int8") -> WorkloadEstimate:
    """Prefill of ``prompt_len`` tokens (which yields the first output token), then
    ``output_len - 1`` decode steps, timed by sampling (``decode_total``), the
    projections' weights in format ``weights``."""
    if output_len < 1:
        raise ValueError(f"output length must be at least 1, not {output_len}")
    if prompt_len + output_len > cfg.max_seq_len:
        raise ValueError(f"prompt {prompt_len} + output {output_len} tokens exceed "
                         f"{cfg.name}'s max_seq_len {cfg.max_seq_len}")
    staging(shard(cfg, devices), hw)              # fails fast when decode does not fit
    pre = prefill(cfg, hw, prompt_len, prefetch, devices, link, weights)
    decode, timed = decode_total(cfg, hw, prompt_len, output_len - 1, prefetch, samples,
                                 devices, link, weights)
    return WorkloadEstimate(prompt_len, output_len, pre.cycles, decode, timed,
                            pre.dram_read_bytes)


def _sample_positions(first: int, last: int, samples: int) -> list[int]:
    if last - first + 1 <= samples:
        return list(range(first, last + 1))
    step = (last - first) / (samples - 1)
    return sorted({first + round(i * step) for i in range(samples)})


def decode_total(cfg: ModelConfig, hw: HardwareConfig, first: int, count: int,
                 prefetch: bool | None = None, samples: int = 9, devices: int = 1,
                 link: Link = Link(), weights: str = "int8") -> tuple[int, int]:
    """Cycles of decode steps at positions ``first .. first + count - 1``: steps timed at
    ``samples`` positions, the rest by linear interpolation between them. Returns
    ``(cycles, steps timed)``."""
    if count <= 0:
        return 0, 0
    last = first + count - 1
    xs = _sample_positions(first, last, samples)
    ys = [decode_step(cfg, hw, x, prefetch, devices, link, weights).cycles for x in xs]
    total = 0.0
    for (x0, y0), (x1, y1) in zip(zip(xs, ys, strict=True), zip(xs[1:], ys[1:], strict=True),
                                    strict=False):
        # positions x0 .. x1 - 1 on the segment (x1 is counted by the next one)
        n = x1 - x0
        total += n * y0 + (y1 - y0) * (n - 1) / 2
    total += ys[-1]
    return round(total), len(xs)
