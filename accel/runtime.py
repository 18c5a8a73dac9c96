"""The host runtime: run a build's programs in order and read the results back.

Contract
--------
``run_build(build, sim="isa"|"rtl")`` starts each program of the build in turn on a
backend that shares one DRAM across programs (the ISA simulator, or the Verilator model
of the RTL under cocotb, built once per configuration) and returns a ``RunResult``: the
generated tokens, the logits the device computed (one row per generated token: the last
prompt token's, then each decode step's), the KV cache gathered back through the
block table, each program's counters and the final DRAM. The instructions are fetched
from the DRAM image, as the hardware does. An RTL program that stops in the error state
raises ``AcceleratorError`` with its code and instruction index. A batched build
(``driver.compile_batch``) gives a ``BatchRunResult``: each sequence's ``RunResult``
read through its own token buffer, logits rows and block table right after its last
program (before a sequence that joins later reuses its blocks), and the DRAM and L2 at
the checkpoints where that happens (``segments``: the RTL runs a job up to each, the
next continuing from its DRAM and L2; ``same_run`` compares two runs at all of them).
Both simulators run on
the same simulated DRAM (``simulated_dram``: the image, then zeros up to the RTL's
power-of-two capacity), so they refuse the same addresses. After every run, on
every simulator, the regions no program may write (``buildfolder.read_only_regions``:
the constants, the block table, the programs) are compared with the image that went in;
a difference raises ``RunIntegrityError`` naming the region.
``same_dram(build, a, b, l2_a, l2_b)`` compares two final DRAM images, skipping the
counter blocks (each simulator writes its own counters there), and the two final L2s.

The host keeps nothing between steps: the device reads its input tokens from the token
buffer and writes the next token there itself.

Layering: the runtime stands above both the compiler (whose builds it runs) and the RTL
(whose Verilator model it drives); the verification ladder (``accel.ladder``) and the
command line stand on it. Tested by ``tests/compiler/test_isasim.py`` (ISA simulator
runs), ``tests/rtl/test_tiny_rtl.py`` (RTL runs) and ``tests/compiler/test_buildfolder.py``
(read-only regions).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from arch.isa import (
    INT32_BYTES,
    ErrorCode,
    kv_chunk_addrs,
    kv_chunk_header,
    kv_chunk_pack,
    kv_chunk_unpack,
    kv_row_addr,
    make,
)
from compiler.asm import decode_program, encode_program
from compiler.buildfolder import RunIntegrityError, read_only_regions
from compiler.driver import Build
from compiler.isasim import IsaSimulator
from compiler.semantics import AcceleratorError
from models import numerics as N
from rtl.common import rtl_dram_bytes, rtl_params, weights_refusal


class RunTimeoutError(RuntimeError):
    """An RTL program ran past the bench's cycle limit without finishing."""


@dataclass
class RunResult:
    tokens: list[int]                 # the generated tokens
    logits: np.ndarray                # [generated tokens, vocab] int16
    kv: dict[str, np.ndarray]         # "k"/"v": [n_layers, positions, n_kv_heads, head_dim] int8
    counters: dict[str, dict[str, int]]
    dram: np.ndarray | None = None    # the final DRAM image
    wall_seconds: float = 0.0
    program_seconds: dict[str, float] | None = None   # RTL: wall time of each program
    l2: np.ndarray | None = None      # the final L2 (the ISA simulator's; the RTL's banks)
    model_cycles: dict[str, int] | None = None   # ISA run with compressed KV: see run_build


@dataclass
class BatchRunResult:
    """A batched build's run: each sequence's ``RunResult`` (its tokens, logits rows and
    K/V rows; no counters of its own), and the run's counters, DRAM and L2."""

    sequences: list[RunResult]
    counters: dict[str, dict[str, int]]
    dram: np.ndarray
    wall_seconds: float = 0.0
    program_seconds: dict[str, float] | None = None
    l2: np.ndarray | None = None
    checkpoints: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    model_cycles: dict[str, int] | None = None


def check_read_only(build: Build, dram: np.ndarray) -> None:
    """Raise ``RunIntegrityError`` if ``dram`` (after a run) differs from the build's
    image in a read-only region."""
    for r in read_only_regions(build):
        differ = np.flatnonzero(dram[r.offset:r.end] != build.image.data[r.offset:r.end])
        if differ.size:
            raise RunIntegrityError(f"the run changed read-only DRAM: region {r.name}, "
                                    f"{differ.size} bytes from byte {r.offset + differ[0]}")


def program_from_dram(build: Build, dram: np.ndarray, name: str):
    region = build.mmap[f"program:{name}"]
    return decode_program(dram[region.offset:region.offset + region.size].tobytes())


def read_results(build: Build, dram: np.ndarray, seq: int | None = None
                 ) -> tuple[list[int], np.ndarray, dict]:
    """The generated tokens, the logits rows the device wrote and the K/V rows gathered
    through the block table, of the build's sequence or of a batched build's sequence
    ``seq`` (its K/V rows up to the last one written: its table covers no more)."""
    cfg, mmap, ctx = build.cfg, build.mmap, build.context
    if seq is None:
        prompt, new, seq = build.prompt, build.max_new_tokens, 0
    else:
        prompt, new = build.batch[seq].prompt, build.batch[seq].max_new_tokens
    n_prompt = len(prompt)
    positions = n_prompt + new
    kv_rows = positions if build.batch is None else positions - 1
    tok = ctx.tokens_addr(seq)
    tokens = dram[tok:tok + INT32_BYTES * (positions + 1)].view("<i4")
    generated = [int(t) for t in tokens[n_prompt:positions]]
    # the rows it computed: its last prompt token's, then each decode step's
    first = ctx.logits_addr(seq, n_prompt - 1)
    logits = dram[first:first + 2 * cfg.vocab_size * new].view("<i2").reshape(-1, cfg.vocab_size)
    table = _table(build, dram, seq)
    bt = build.hw.kv_block_tokens
    # with compressed KV, every block full by now is stored compressed (its rows written:
    # all but the last generated token's)
    packed = (positions - 1) // bt if build.kv is not None else 0
    kv = {}
    for kind in ("k", "v"):
        layers = []
        for layer in range(cfg.n_layers):
            pool = mmap[f"kv:{layer}:{kind}"].offset
            starts = [kv_row_addr(pool, int(table[t // bt]), t, bt, cfg.kv_dim)
                      for t in range(packed * bt, kv_rows)]
            rows = [_unpack_block(build, dram, layer, kind, int(table[j])) for j in range(packed)]
            rows += [dram[a:a + cfg.kv_dim].view(np.int8)[None] for a in starts]
            rows = np.concatenate(rows)[:kv_rows]
            layers.append(rows.reshape(kv_rows, cfg.n_kv_heads, cfg.head_dim))
        kv[kind] = np.stack(layers)
    return generated, logits.copy(), kv


def _table(build: Build, dram: np.ndarray, seq: int) -> np.ndarray:
    """Sequence ``seq``'s block table as the device reads it."""
    at = build.context.table_addr(seq)
    return dram[at:build.mmap["block_table"].end].view("<i4")


def _pool(build: Build, layer: int, kind: str) -> tuple[int, int]:
    """A compressed build's K or V pool of ``layer``: ``(address, blocks)``."""
    return build.mmap[f"kv:{layer}:{kind}"].offset, build.context.pool_blocks(layer, kind)


def _unpack_block(build: Build, dram: np.ndarray, layer: int, kind: str, block: int
                  ) -> np.ndarray:
    """The int8 rows ``[B, kv_dim]`` a compressed block expands to, head by head."""
    cfg, bt = build.cfg, build.hw.kv_block_tokens
    pool, blocks = _pool(build, layer, kind)
    heads = []
    for h in range(cfg.n_kv_heads):
        codes, headers = kv_chunk_addrs(pool, blocks, block, bt, cfg.kv_dim, h * cfg.head_dim)
        heads.append(kv_chunk_unpack(dram[headers:headers + cfg.head_dim],
                                     dram[codes:codes + cfg.head_dim * bt], bt))
    return np.concatenate(heads, axis=1)


def compress_blocks(build: Build, dram: np.ndarray, program) -> None:
    """The host's work after ``program`` in a build with compressed KV (``Build.kv``):
    each block it names (``Program.compress``) compressed in place in every layer's K
    and V pool, head by head (``numerics.kv_chunk_compress`` at the layer's channel
    tolerances), its codes and header bytes written where ``KV_PREFETCH`` reads them in
    ``KvFormat.CHUNKED`` (``arch.isa.kv_chunk_addrs``). LLMS compresses in software too
    (arXiv 2403.11805); the device only decompresses."""
    cfg, bt, kv = build.cfg, build.hw.kv_block_tokens, build.kv
    hd = cfg.head_dim
    for seq, first, end in program.compress:
        table = _table(build, dram, seq)
        for j in range(first, end):
            block = int(table[j])
            for layer in range(cfg.n_layers):
                for kind in ("k", "v"):
                    pool, blocks = _pool(build, layer, kind)
                    base = kv_row_addr(pool, block, 0, bt, cfg.kv_dim)
                    # a copy: the chunks overwrite the rows they are made from
                    rows = dram[base:base + bt * cfg.kv_dim].view(np.int8).reshape(bt, -1).copy()
                    tol = build.kv_tolerances[layer, kind]
                    for h in range(cfg.n_kv_heads):
                        group = rows[:, h * hd:(h + 1) * hd].T                   # [hd, B]
                        bits, shift, deq = N.kv_chunk_compress(group, kv.bits,
                                                               tol[h * hd:(h + 1) * hd], np)
                        data = kv_chunk_pack(deq.astype(np.int64) >> shift[:, None], bits)
                        codes, headers = kv_chunk_addrs(pool, blocks, block, bt, cfg.kv_dim,
                                                        h * hd)
                        dram[codes:codes + data.size] = data
                        dram[headers:headers + hd] = kv_chunk_header(bits, shift)


def image_with_programs(image, programs: dict) -> tuple:
    """A DRAM image with each named list of instructions (``HALT`` added) placed after it
    as a program of its own: ``(data, [(name, byte offset), ...])`` for ``run_job``."""
    blobs = {k: encode_program(list(v) + [make("HALT")]) for k, v in programs.items()}
    base = -(-image.size // 64) * 64
    data = np.zeros(base + sum(len(b) for b in blobs.values()), np.uint8)
    data[:image.size] = image
    entries, offset = [], base
    for name, blob in blobs.items():
        data[offset:offset + len(blob)] = np.frombuffer(blob, np.uint8)
        entries.append((name, offset))
        offset += len(blob)
    return data, entries


def run_build(build: Build, sim: str = "isa", check_races: bool = True,
              waves: bool = False) -> RunResult | BatchRunResult:
    """Run every program of ``build`` on the ISA simulator (``sim="isa"``) or the RTL
    (``"rtl"``, Verilator), the host compressing full KV blocks between programs where
    the build asks it to; the result holds the tokens, logits and K/V rows, each
    program's counters and the final DRAM and L2. An ISA run of a compressed-KV build
    also times each program on the DRAM the host left before it (``model_cycles``, the
    instruction-level model's cycles: a ``CHUNKED`` prefetch's code bytes come from the
    chunk headers). Raises ``ValueError`` (no weights, unknown simulator, weights the
    RTL cannot run) and ``AcceleratorError`` (a program the device stops)."""
    if build.image.data is None:
        raise ValueError("this build has no weights (compiled for timing only); it cannot run")
    if sim == "rtl":
        refusal = weights_refusal(rtl_params(build.hw), build.weights)
        if refusal:
            raise ValueError(f"{refusal}; run it with --sim isa or --sim perf")
        return _run_rtl(build, waves)
    if sim != "isa":
        raise ValueError(f"unknown simulator {sim!r} (available: isa, rtl)")
    t0 = time.perf_counter()
    simulator = IsaSimulator(build.hw, simulated_dram(build), check_races=check_races)
    counters, finished, checkpoints = {}, {}, {}
    model_cycles = {} if build.kv is not None else None
    done = finishing(build)
    ends = segments(build)[:-1] if build.batch is not None else []
    for i, p in enumerate(build.programs):
        simulator.counters = type(simulator.counters)()
        instrs = program_from_dram(build, simulator.dram, p.name)
        try:
            counters[p.name] = dict(simulator.run(instrs).values)
        except AcceleratorError as e:       # which program of the build, as the RTL's says
            raise AcceleratorError(e.code, e.index, f"{e.message} (in program {p.name})"
                                   ) from None
        if model_cycles is not None:      # the program wrote neither tables nor headers
            model_cycles[p.name] = _time_on(build, instrs, simulator.read_i32)
        if build.kv is not None:
            compress_blocks(build, simulator.dram, p)
        for b in done.get(i, ()):          # before a later sequence reuses its blocks
            finished[b] = read_results(build, simulator.dram, b)
        if i in ends:
            checkpoints[p.name] = (simulator.dram[:build.image.data.size].copy(),
                                   simulator.l2.copy())
    dram = image_part(build, simulator.dram)
    result = _result(build, dram, counters, time.perf_counter() - t0, None, simulator.l2,
                     finished, checkpoints)
    result.model_cycles = model_cycles
    return result


def _time_on(build: Build, instrs, read_i32) -> int:
    """The instruction-level model's cycles of a program on the DRAM ``read_i32`` reads
    (the simulator's, as the host left it): a ``CHUNKED`` prefetch is timed from the chunk
    headers the host wrote between programs (``arch.occupancy.chunked_prefetch_occupancy``),
    which the build's first image does not hold."""
    from sweeps.perf import time_program

    return time_program(instrs, build.hw, read_i32).cycles


def finishing(build: Build) -> dict[int, list[int]]:
    """A batched build's sequences by the index of their last program (empty for a
    single sequence's build): each is read back then, before a sequence that joins
    later writes into the blocks it freed."""
    last = {}
    for i, p in enumerate(build.programs):
        for b in p.sequences:
            last[b] = i
    out: dict[int, list[int]] = {}
    for b, i in sorted(last.items()):
        out.setdefault(i, []).append(b)
    return out


def _written_blocks(build: Build, i: int) -> set[int]:
    """The KV blocks program ``i`` of a batched build appends rows to."""
    p, bt = build.programs[i], build.hw.kv_block_tokens
    if p.kind == "prefill":
        (b,) = p.sequences
        sp = build.batch[b]
        return {sp.table[r // bt] for r in range(sp.cached, len(sp.prompt))}
    return {build.batch[b].table[pos // bt] for b, pos in zip(p.sequences, p.positions,
                                                              strict=True)}


def segments(build: Build) -> list[int]:
    """The last program of each RTL job a batched build runs in: a job ends where a
    sequence has finished whose blocks a later program writes, so that its results are
    read before they are overwritten; the last job ends with the build."""
    done, n = finishing(build), len(build.programs)
    ends = []
    for i in range(n - 1):
        freed = set().union(*(build.batch[b].table for b in done.get(i, ())))
        if freed and any(_written_blocks(build, j) & freed for j in range(i + 1, n)):
            ends.append(i)
    return ends + [n - 1]


def _result(build: Build, dram: np.ndarray, counters: dict, wall_seconds: float,
            program_seconds: dict | None, l2: np.ndarray, finished: dict | None = None,
            checkpoints: dict | None = None) -> RunResult | BatchRunResult:
    if build.batch is None:
        tokens, logits, kv = read_results(build, dram)
        return RunResult(tokens, logits, kv, counters, dram, wall_seconds, program_seconds, l2)
    sequences = [RunResult(*finished[b], {}) for b in range(len(build.batch))]
    return BatchRunResult(sequences, counters, dram, wall_seconds, program_seconds, l2,
                          checkpoints or {})


def same_run(build: Build, a: BatchRunResult, b: BatchRunResult) -> dict:
    """Two runs of a batched build compared as ``same_dram`` does, at the end and at each
    checkpoint (the DRAM and L2 after the programs ``segments`` ends a job at: where
    blocks a finished sequence freed are about to be written again)."""
    result = same_dram(build, a.dram, b.dram, a.l2, b.l2)
    if set(a.checkpoints) != set(b.checkpoints):
        raise ValueError("the two runs' checkpoints differ: not runs of the same build")
    for name in sorted(a.checkpoints):
        (dram_a, l2_a), (dram_b, l2_b) = a.checkpoints[name], b.checkpoints[name]
        at = same_dram(build, dram_a, dram_b, l2_a, l2_b)
        if not at["bit_exact"]:
            result.update(bit_exact=False, first_checkpoint_differing=name)
            break
    result["checkpoints_compared"] = len(a.checkpoints)
    return result


def simulated_dram(build: Build) -> np.ndarray:
    """The DRAM both simulators run a build on: its image, then zeros up to the RTL's
    DRAM capacity (``rtl.common.rtl_dram_bytes``), so that both refuse the same
    addresses as out of range."""
    data = build.image.data
    return np.concatenate([data, np.zeros(rtl_dram_bytes(data.size) - data.size, np.uint8)])


def image_part(build: Build, dram: np.ndarray) -> np.ndarray:
    """The image's part of a simulated DRAM after a run, checked: nothing written beyond
    the image and nothing changed in a read-only region (``RunIntegrityError``)."""
    size = build.image.data.size
    beyond = np.flatnonzero(dram[size:])
    if beyond.size:
        raise RunIntegrityError(f"the run wrote simulated DRAM beyond the image (from byte "
                                f"{size + int(beyond[0])})")
    check_read_only(build, dram[:size])
    return dram[:size]


def _run_rtl(build: Build, waves: bool) -> RunResult:
    from rtl.common import rtl_params
    from rtl.sim import build_model, run_job

    image = build.image.data
    params = rtl_params(build.hw, image_bytes=image.size)
    model = build_model(params, waves=waves)
    n = len(build.programs)
    checkpoint_at = set(segments(build)[:-1]) if build.batch is not None else set()
    # a job also ends where the host compresses KV blocks (``compress_blocks``)
    ends = sorted(checkpoint_at | {n - 1} | {i for i, p in enumerate(build.programs)
                                             if p.compress})
    done = finishing(build)
    counters, seconds, finished, checkpoints, wall, first = {}, {}, {}, {}, 0.0, 0
    l2 = None
    for last in ends:               # one job, or a batched build's jobs (``segments``),
        programs = [(p.name, build.mmap[f"program:{p.name}"].offset)   # each continuing
                    for p in build.programs[first:last + 1]]           # the last's DRAM, L2
        job = run_job(model, image, programs, {"dram": (0, params.dram_bytes)}, waves=waves,
                      l2=l2)
        busy_before = 0
        for entry in job.programs:
            if entry["timed_out"]:
                raise RunTimeoutError(f"RTL program {entry['name']} did not finish within "
                                      f"the cycle limit (a deadlock?)")
            if entry["error"]:
                raise AcceleratorError(ErrorCode(entry["error_code"]), entry["error_index"],
                                       f"the RTL stopped in program {entry['name']}")
            counters[entry["name"]] = {**entry["counters"], "dram_busy_cycles":
                                       entry["dram_busy_cycles"] - busy_before}
            busy_before = entry["dram_busy_cycles"]
            seconds[entry["name"]] = entry["wall_seconds"]
        image, l2, wall = job.reads["dram"].copy(), job.l2, wall + job.wall_seconds
        if build.kv is not None:
            compress_blocks(build, image, build.programs[last])
        for i in range(first, last + 1):
            for b in done.get(i, ()):
                finished[b] = read_results(build, image, b)
        if last in checkpoint_at:
            checkpoints[build.programs[last].name] = (image[:build.image.data.size].copy(), l2)
        first = last + 1
    dram = image_part(build, image)
    return _result(build, dram, counters, wall, seconds, l2, finished, checkpoints)


def same_dram(build: Build, a: np.ndarray, b: np.ndarray, l2_a: np.ndarray | None = None,
              l2_b: np.ndarray | None = None) -> dict:
    """Compare two final DRAM images outside the counter blocks (each simulator counts
    its own cycles there), and, when given, the two final L2s whole."""
    keep = np.ones(a.size, bool)
    for name, region in build.mmap.regions.items():
        if name.startswith("counters:"):
            keep[region.offset:region.offset + region.size] = False
    differ = np.flatnonzero((a != b) & keep)
    result = {"bit_exact": differ.size == 0, "bytes_compared": int(keep.sum()),
              "bytes_differing": int(differ.size),
              **({"first_difference": int(differ[0])} if differ.size else {})}
    if l2_a is not None and l2_b is not None:
        l2_differ = int(np.count_nonzero(l2_a != l2_b)) if l2_a.size == l2_b.size else -1
        result.update(l2_bytes_compared=int(l2_a.size), l2_bytes_differing=l2_differ)
        result["bit_exact"] &= l2_differ == 0
    return result
