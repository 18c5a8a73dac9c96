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
instructions that consume it, each costed by ``sweeps.occupancy`` on the instruction the
compiler would emit (so the per-instruction numbers are the RTL-calibrated ones). The
two engines then run as a pipeline over the tiles:

    load_end[i]    = max(load_end[i-1], compute_end[i - S]) + load[i]
    compute_end[i] = max(compute_end[i-1], load_end[i]) + compute[i]

where ``S`` is how many tiles the load engine may run ahead: the staging ring's slots
with prefetch (the scheduler hoists loads as far as the ring allows); without prefetch
each load waits for the compute before it (``S = 1``: the program's natural order with
its tokens serialises the two engines). Every layer is the same stream, so one layer is
timed and repeated (the pipeline carries across layer boundaries).

A workload's decode steps differ only in KV length, and a step's time is affine in the
KV length between changes of the KV chunking; ``workload`` times steps at a few sample
positions and integrates the piecewise-linear interpolation (``benchmarks.perf_fast``
checks it against step-by-step timing).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache

from compiler.asm import make
from compiler.backend import MAX_INFLIGHT_SLOTS, MIN_RING_BYTES, MIN_TILE_BYTES, matmul_tiling
from compiler.hardware import HardwareConfig
from compiler.image import align
from compiler.ir import CompileError
from models.config import ModelConfig
from sweeps.occupancy import occupancy
from sweeps.perf import QUEUE_DEPTH

ENGINE_OVERHEAD = 2        # IDLE and BEGIN around every instruction (sweeps.perf)


@dataclass(frozen=True)
class StepEstimate:
    cycles: int
    load_busy: int
    compute_busy: int
    dram_read_bytes: int
    macs: int

    def seconds(self, hw: HardwareConfig) -> float:
        return self.cycles / hw.clock_hz


def _cost(instr, hw) -> tuple[int, int, int]:
    """(engine cycles with overhead, DRAM bytes read, MACs) of one instruction."""
    occ = occupancy(instr, hw)
    return occ.cycles + ENGINE_OVERHEAD, occ.dram_read_bytes, occ.macs


class _Stream:
    """Tiles in program order: (load cycles, compute cycles), plus totals."""

    def __init__(self, hw: HardwareConfig, tile_bytes: int):
        self.hw, self.tile_bytes = hw, tile_bytes
        self.tiles: list[tuple[int, int]] = []
        self.read = self.macs = 0

    def load(self, rows: int, row_bytes: int) -> int:
        cycles, read, _ = _cost(make("DMA_LOAD", dram_addr=0, l2_addr=0, rows=rows,
                                     row_bytes=row_bytes, dram_stride=row_bytes,
                                     l2_stride=row_bytes), self.hw)
        self.read += read
        return cycles

    def compute(self, instr) -> int:
        cycles, _, macs = _cost(instr, self.hw)
        self.macs += macs
        return cycles

    def add(self, load: int, compute: int, staged: int = 0) -> None:
        self.tiles.append((load, compute, staged))

    # -- the compiler's operations ------------------------------------------------------
    def matmul(self, m: int, k_total: int, n_total: int) -> None:
        mode = 1 if m <= self.hw.array_rows else 0
        nt, kt = matmul_tiling(n_total, k_total, self.tile_bytes, self.hw.array_cols)
        for n0 in range(0, n_total, nt):
            n = min(nt, n_total - n0)
            for k0 in range(0, k_total, kt):
                k = min(kt, k_total - k0)
                mm = make("MATMUL", mode=mode, accumulate=int(k0 > 0), w_layout=0, x_addr=0,
                          w_addr=0, out_addr=0, m=m, k=k, n=n, x_stride=k_total, w_stride=k,
                          out_stride=4 * n_total)
                self.add(self.load(n, k), self.compute(mm), n * k)

    def per_channel(self, mnemonic: str, cols: int, words_per_col: int, **fields) -> None:
        chunk = max(1, min(cols, self.tile_bytes // (4 * words_per_col)))
        for c0 in range(0, cols, chunk):
            c = min(chunk, cols - c0)
            instr = make(mnemonic, cols=c, **fields)
            self.add(self.load(1, 4 * words_per_col * c), self.compute(instr),
                     4 * words_per_col * c)

    def vector(self, instr) -> None:
        self.add(0, self.compute(instr))

    def requant(self, cols: int) -> None:
        self.per_channel("REQUANT", cols, 1, out_bits=0, per_channel=1, has_bias=0,
                         src_addr=0, dst_addr=0, param_addr=0, bias_addr=0, rows=1,
                         src_stride=4 * cols, dst_stride=cols)

    def rmsnorm(self, d: int) -> None:
        self.vector(make("RMSNORM", src_addr=0, dst_addr=0, rows=1, cols=d, src_stride=2 * d,
                         dst_stride=d, mult=1, shift=0, eps=0))

    def attention(self, cfg: ModelConfig, position: int) -> None:
        hd, G, R = cfg.head_dim, cfg.group_size, self.hw.array_rows
        S = position + 1
        chunk = max(1, min(position, self.tile_bytes // hd)) if position else 0
        chunks = [min(chunk, position - c0) for c0 in range(0, position, chunk)] if position else []
        batches = [min(R, G - g0) for g0 in range(0, G, R)]

        def prefetch(n):
            occ = occupancy(make("KV_PREFETCH", pool_addr=0, table_addr=0, first_token=0,
                                 n_tokens=n, row_bytes=cfg.kv_dim, col_offset=0, col_bytes=hd,
                                 l2_addr=0), self.hw)
            self.read += occ.dram_read_bytes
            return occ.cycles + ENGINE_OVERHEAD

        def mm(m, k, n, kn, acc=0):
            return self.compute(make("MATMUL", mode=1 if m <= R else 0, accumulate=acc,
                                     w_layout=kn, x_addr=0, w_addr=0, out_addr=0, m=m, k=k,
                                     n=n, x_stride=k, w_stride=n if kn else k,
                                     out_stride=4 * n))

        for _ in range(cfg.n_kv_heads):
            for n in chunks:
                self.add(prefetch(n), sum(mm(g, hd, n, 0) for g in batches), n * hd)
            self.add(0, sum(mm(g, hd, 1, 0) for g in batches))
            for _ in range(G):
                self.vector(make("SOFTMAX", src_addr=0, dst_addr=0, rows=1, cols=S, q_pos0=S - 1,
                                 src_stride=4 * S, dst_stride=S, mult=1, shift=0))
            for i, n in enumerate(chunks):
                self.add(prefetch(n), sum(mm(g, n, hd, 1, int(i > 0)) for g in batches),
                         n * hd)
            self.add(0, sum(mm(g, 1, hd, 1, int(position > 0)) for g in batches))
        self.add(self.load(1, 4), self.compute(make(
            "REQUANT", out_bits=0, per_channel=0, has_bias=0, src_addr=0, dst_addr=0,
            param_addr=0, bias_addr=0, rows=1, cols=cfg.q_dim, src_stride=4 * cfg.q_dim,
            dst_stride=cfg.q_dim)), 4)


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
    tile = min(ring // 2, max(MIN_TILE_BYTES, ring // MAX_INFLIGHT_SLOTS))
    return tile, ring


@lru_cache(maxsize=4096)
def _layer_tiles(cfg: ModelConfig, hw: HardwareConfig, position: int, tile_bytes: int,
                 allreduce: int = 0):
    """One layer's tiles; ``allreduce`` cycles of a tensor-parallel allreduce after the
    attention output projection and after the MLP (0: a single device)."""
    s = _Stream(hw, tile_bytes)
    d, q, kv, ff = cfg.d_model, cfg.q_dim, cfg.kv_dim, cfg.d_ff
    s.rmsnorm(d)
    for n in (q, kv, kv):
        s.matmul(1, d, n)
        s.requant(n)
    for heads in (cfg.n_heads, cfg.n_kv_heads):
        s.vector(make("ROPE", src_addr=0, dst_addr=0, rows=1, heads=heads,
                      head_dim=cfg.head_dim, pos0=position, freq_addr=0,
                      row_stride=heads * cfg.head_dim))
    s.attention(cfg, position)
    s.matmul(1, q, d)
    if allreduce:
        s.add(0, allreduce)
    s.per_channel("RESADD", d, 1, h_addr=0, acc_addr=0, param_addr=0, rows=1, h_stride=2 * d,
                  acc_stride=4 * d)
    s.rmsnorm(d)
    s.matmul(1, d, ff)
    s.requant(ff)
    s.matmul(1, d, ff)
    s.per_channel("SILU_MUL", ff, 2, gate_addr=0, up_addr=0, dst_addr=0, param_addr=0, rows=1,
                  gate_stride=4 * ff, up_stride=ff, dst_stride=ff)
    s.matmul(1, ff, d)
    if allreduce:
        s.add(0, allreduce)
    s.per_channel("RESADD", d, 1, h_addr=0, acc_addr=0, param_addr=0, rows=1, h_stride=2 * d,
                  acc_stride=4 * d)
    return tuple(s.tiles), s.read, s.macs


@lru_cache(maxsize=256)
def _head_tiles(cfg: ModelConfig, hw: HardwareConfig, tile_bytes: int):
    s = _Stream(hw, tile_bytes)
    s.rmsnorm(cfg.d_model)
    s.matmul(1, cfg.d_model, cfg.vocab_size)
    s.requant(cfg.vocab_size)
    s.vector(make("ARGMAX", src_addr=0, n=cfg.vocab_size, dst_addr=0))
    return tuple(s.tiles), s.read, s.macs


def _pipeline(tiles, ring: int | None) -> tuple[float, int, int]:
    """The two engines over the tiles ``(load cycles, compute cycles, staged bytes)``.

    With prefetch (``ring`` bytes of staging) a load may run ahead while its bytes fit the
    ring beside the loads not yet consumed (at most ``MAX_INFLIGHT_SLOTS`` of them), so
    it waits for the compute that frees the oldest bytes it needs. Loads hoisted that
    far precede, in program order, the compute instructions they run ahead of; dispatch
    is in order, so compute ``i`` is dispatched only once the load engine's queue
    (``QUEUE_DEPTH``) has taken the loads in front of it: it waits until the load
    ``QUEUE_DEPTH`` before the farthest one hoisted above it has begun. Without prefetch
    (``ring=None``) each load waits for the compute before it."""
    n = len(tiles)
    load_begin, load_end, done = [0] * n, [0] * n, [0] * n
    # reach[i]: the farthest tile whose load is hoisted above compute i
    reach, j, held = [0] * n, 0, 0
    for i in range(n):
        if ring is not None:
            while j < n and j - i < MAX_INFLIGHT_SLOTS and held + tiles[j][2] <= ring:
                held += tiles[j][2]
                j += 1
            reach[i] = max(i, j - 1)
            held -= tiles[i][2] if j > i else 0
            j = max(j, i + 1)
        else:
            reach[i] = i
    timed = -1
    prev_load_end = compute_end = 0
    load_busy = compute_busy = 0
    for i, (load, compute, _) in enumerate(tiles):
        while timed < reach[i]:
            timed += 1
            t = tiles[timed]
            # the load's slot is free once every compute it is hoisted above has released
            # its bytes: the compute just before the first one it is hoisted over
            first = timed
            while first > 0 and reach[first - 1] >= timed:
                first -= 1
            start = max(prev_load_end, done[first - 1] if first > 0 and first - 1 < i else 0)
            load_begin[timed], load_end[timed] = start, start + t[0]
            if t[0]:
                prev_load_end = load_end[timed]
                load_busy += t[0]
        start = max(compute_end, load_end[i] if load else 0)
        gate = reach[i] - QUEUE_DEPTH
        if gate > i:
            start = max(start, load_begin[gate])
        compute_end = start + compute
        compute_busy += compute
        done[i] = compute_end
    return compute_end, load_busy, compute_busy


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


def decode_step(cfg: ModelConfig, hw: HardwareConfig, position: int,
                prefetch: bool | None = None, devices: int = 1,
                link: Link = Link()) -> StepEstimate:
    """One decode step at KV length ``position``; with ``devices > 1``, one device's step
    under tensor parallelism, the two allreduces per layer (int32 partial sums of the
    ``d_model`` outputs) on ``link``."""
    if position < 0 or position >= cfg.max_seq_len:
        raise ValueError(f"position {position} is outside [0, {cfg.max_seq_len}) for "
                         f"{cfg.name}")
    prefetch = hw.prefetch if prefetch is None else prefetch
    allreduce = math.ceil(link.allreduce_seconds(4 * cfg.d_model, devices) * hw.clock_hz)
    cfg = shard(cfg, devices)
    tile_bytes, ring = staging(cfg, hw)
    layer, layer_read, layer_macs = _layer_tiles(cfg, hw, position, tile_bytes, allreduce)
    head, head_read, head_macs = _head_tiles(cfg, hw, tile_bytes)
    tiles = layer * cfg.n_layers + head
    cycles, load_busy, compute_busy = _pipeline(tiles, ring if prefetch else None)
    compute_busy -= 2 * allreduce * cfg.n_layers          # waiting on the link, not computing
    fill = hw.dram_latency_cycles + 4           # the first instruction fetch
    return StepEstimate(math.ceil(cycles + fill), load_busy, compute_busy,
                        layer_read * cfg.n_layers + head_read,
                        layer_macs * cfg.n_layers + head_macs)


@dataclass(frozen=True)
class WorkloadEstimate:
    prompt_len: int
    output_len: int
    prefill_cycles: int
    decode_cycles: int
    samples: int                      # decode steps actually timed

    def tokens_per_s(self, hw: HardwareConfig) -> float:
        return self.output_len * hw.clock_hz / self.decode_cycles if self.decode_cycles else 0.0


def _sample_positions(first: int, last: int, samples: int) -> list[int]:
    if last - first + 1 <= samples:
        return list(range(first, last + 1))
    step = (last - first) / (samples - 1)
    return sorted({first + round(i * step) for i in range(samples)})


def decode_total(cfg: ModelConfig, hw: HardwareConfig, first: int, count: int,
                 prefetch: bool | None = None, samples: int = 9) -> tuple[int, int]:
    """Cycles of decode steps at positions ``first .. first + count - 1``: steps timed at
    ``samples`` positions, the rest by linear interpolation between them. Returns
    ``(cycles, steps timed)``."""
    if count <= 0:
        return 0, 0
    last = first + count - 1
    xs = _sample_positions(first, last, samples)
    ys = [decode_step(cfg, hw, x, prefetch).cycles for x in xs]
    total = 0.0
    for (x0, y0), (x1, y1) in zip(zip(xs, ys, strict=True), zip(xs[1:], ys[1:], strict=True),
                                    strict=False):
        # positions x0 .. x1 - 1 on the segment (x1 is counted by the next one)
        n = x1 - x0
        total += n * y0 + (y1 - y0) * (n - 1) / 2
    total += ys[-1]
    return round(total), len(xs)
