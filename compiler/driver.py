"""The compiler driver: a model, a hardware description and a prompt to a build folder.

Contract
--------
``compile_generation(...)`` compiles a greedy generation: one *prefill* program for the
prompt (in chunks if its activations do not fit L2) and one *decode* program per
further token, all sharing one DRAM image and memory map. ``compile_step(...)`` compiles
a single step (``n_tokens`` tokens at position ``start``), with or without weights; a
build without weights has a memory map, programs and a manifest but no DRAM data, for
timing large models. ``compile_batch(...)`` compiles many sequences sharing one paged KV
pool, as the host planned them (``SequencePlan``: prompt, tokens, block table, shared
prefix; ``BatchStep``: a prefill of one sequence or a decode step of several, one
program each; ``check_batch`` refuses a plan the device would run wrongly);
``compile_batch_timing_step`` one batched decode step without weights.
``Build.save(folder)`` writes a build folder
(``compiler.buildfolder``): a program file and a listing per program, the DRAM image,
and ``manifest.json`` with the memory map, each program's place in DRAM, instruction
counts per opcode, the DRAM bytes each program will move and the hash of every file.

Tested by tests/compiler/test_isasim.py, tests/compiler/test_buildfolder.py and
tests/compiler/test_batching.py.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from arch.hardware import HardwareConfig
from arch.isa import (
    BLOCK_TABLE_ENTRY_BYTES,
    COUNTER_BYTES,
    COUNTERS,
    INSTR_BYTES,
    INT32_BYTES,
    KV_FREE,
    KV_MAX_OWNERS,
    KV_SHARED,
    Instruction,
    WeightFormat,
    kv_chunk_header,
    kv_map_pack,
)
from arch.occupancy import kv_budget_widths
from arch.uarch import KV_MAP_BLOCKS
from compiler.backend import (
    MIN_RING_BYTES,
    MIN_TILE_BYTES,
    BuildContext,
    causal_block_rows,
    chunk_lm_head,
    kv_pool_blocks,
    kv_pool_bytes,
    lm_head_scratch_bytes,
    plan_activations,
)
from compiler.batching import batch_graphs
from compiler.frontend import lower_step
from compiler.image import DramImage, MemoryMap, align, block_table, param_bytes, param_size
from compiler.ir import Argmax, Attention, CompileError, Embed, Graph, LmHead, Param, ParamWords
from compiler.pipeline import PASSES, PassContext, ProgramIR, run_passes
from compiler.semantics import accesses, flat
from models.config import ModelConfig


@dataclass
class Program:
    name: str
    kind: str                  # "prefill" or "decode"
    start: int
    n_tokens: int
    instrs: list[Instruction]
    l2_plan: dict
    chunks: list[int] = field(default_factory=list)
    sequences: list[int] = field(default_factory=list)    # a batched build: the program's
    positions: list[int] = field(default_factory=list)    # sequences, each one's position
    # compressed KV: after the program the host compresses blocks [first, end) of
    # sequence seq's block table, (seq, first, end) each (``Build.kv``)
    compress: list[tuple[int, int, int]] = field(default_factory=list)

    def opcode_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(i.mnemonic for i in self.instrs).items()))


@dataclass
class Build:
    cfg: ModelConfig
    hw: HardwareConfig
    prefetch: bool
    mmap: MemoryMap
    image: DramImage
    programs: list[Program]
    prompt: list[int]
    max_new_tokens: int
    batch: tuple[SequencePlan, ...] | None = None    # a batched build's sequences
    # chunk-wise KV compression (``models.integer.KVCompression``): full blocks are
    # compressed by the host after the programs ``Program.compress`` names and read back
    # by ``KV_PREFETCH`` in ``KvFormat.CHUNKED``; each layer's K and V channel
    # tolerances (``KVCompression.tolerances``), int64 ``[kv_dim]`` by ``(layer, kind)``
    kv: object | None = None
    kv_tolerances: dict | None = None

    @property
    def context(self) -> BuildContext:
        """Where each sequence's buffers are (``build_context``)."""
        return build_context(self.hw, self.cfg, self.mmap, self.prefetch, self.batch,
                             self.kv is not None)

    @property
    def weights(self) -> str:
        """The projection weights' format: ``mxint4`` if a ``MATMUL`` streams MXINT4
        weights, else ``int8`` (``arch.isa.WeightFormat``)."""
        mx = any(i.mnemonic == "MATMUL" and i.w_format == WeightFormat.MXINT4
                 for p in self.programs for i in p.instrs)
        return WeightFormat.MXINT4.name.lower() if mx else WeightFormat.INT8.name.lower()

    def program_bytes(self, p: Program) -> dict[str, int]:
        """DRAM bytes a program reads and writes (static, from its instructions)."""
        read = write = 0
        for instr in p.instrs:
            for a in flat(accesses(instr, self.hw, self.image.read_i32)):
                if a.space == "dram":
                    if a.write:
                        write += a.nbytes
                    else:
                        read += a.nbytes
        return {"dram_read_bytes": read, "dram_write_bytes": write}

    def manifest(self) -> dict:
        programs = []
        for p in self.programs:
            programs.append({
                "name": p.name, "kind": p.kind, "start": p.start, "n_tokens": p.n_tokens,
                "prefill_chunks": p.chunks, "dram_offset": self.mmap[f"program:{p.name}"].offset,
                **({"sequences": p.sequences, "positions": p.positions} if p.sequences else {}),
                "instructions": len(p.instrs), "opcodes": p.opcode_counts(),
                **self.program_bytes(p), "l2_plan": p.l2_plan})
        return {
            "model": self.cfg.to_hf_dict(), "model_name": self.cfg.name,
            "hardware": {k: getattr(self.hw, k) for k in self.hw.__dataclass_fields__},
            "prefetch": self.prefetch, "with_weights": self.image.data is not None,
            "weights": self.weights,
            "prompt": self.prompt, "max_new_tokens": self.max_new_tokens,
            "counters": list(COUNTERS), "memory_map": self.mmap.to_json(), "programs": programs,
            "host_runtime": "The host writes the prompt tokens and the block table into the "
                            "image, then starts each program in turn at its dram_offset and "
                            "waits for HALT; the device gathers its own input tokens and "
                            "writes each next token and the logits back to DRAM, so the host "
                            "keeps nothing between steps except the order of the programs.",
        }

    def save(self, folder: str | Path, extra_files: dict[str, Path] | None = None) -> Path:
        """Write the build folder (``compiler.buildfolder.save_build``)."""
        from compiler.buildfolder import save_build

        if self.batch is not None:
            raise CompileError("a batched build runs in memory (accel verify --batch); it "
                               "cannot be saved as a build folder")
        if self.kv is not None:
            raise CompileError("a build with compressed KV chunks runs in memory (accel "
                               "verify --kv-tolerance); it cannot be saved as a build folder")
        return save_build(self, folder, extra_files)


# -- building --------------------------------------------------------------------------

def _ring_bytes(graphs: list[Graph], cfg: ModelConfig, hw: HardwareConfig) -> int:
    """The bytes of L2 the graphs' activations leave to the staging ring (negative when
    they do not fit at all; ``backend.plan_l2``)."""
    ops = [op for g in graphs for op in g.ops]
    _, end, _ = plan_activations(ops, cfg, align(2 * cfg.head_dim))
    return hw.l2_bytes - align(end)


def _fits(graphs: list[Graph], cfg: ModelConfig, hw: HardwareConfig,
          ring_bytes: int = MIN_RING_BYTES) -> bool:
    """The graphs' activations leave at least ``ring_bytes`` of L2 to the staging ring."""
    return _ring_bytes(graphs, cfg, hw) >= ring_bytes


def prefill_chunk_sizes(n_prompt: int, hw: HardwareConfig):
    """The chunk sizes a prefill of ``n_prompt`` tokens tries, largest first: the whole
    prompt, then halving, rounded down to a multiple of the causal block
    (``backend.causal_block_rows``) while at least one block, so that every chunking of a
    prompt splits its attention into the same blocks and a larger chunk only saves the
    weights' reloads."""
    block = causal_block_rows(hw)
    chunk = n_prompt
    yield chunk
    while chunk > 1:
        chunk = max(1, chunk // 2)
        if chunk >= block:
            chunk -= chunk % block
        yield chunk


def lm_head_chunk_sizes(vocab_size: int):
    """The column chunks an LM head that does not fit L2 tries, largest first: the
    vocabulary in 2, 4, 8, ... parts, each a multiple of 64 columns (so that every chunk
    starts on a 128-byte boundary of the logits row), down to 64."""
    parts, size = 2, vocab_size
    while size > 64:
        size = align(-(-vocab_size // parts), 64)
        if size < vocab_size:
            yield size
        parts *= 2


def fit_head(graph: Graph, cfg: ModelConfig, hw: HardwareConfig) -> Graph:
    """``graph``, or the graph with its LM head in column chunks
    (``backend.chunk_lm_head``): of the whole head, then the chunks from the largest,
    the first as ``_roomiest`` picks (a graph without an LM head is returned as it is).
    The whole head is not kept merely because it fits: Llama-3.2-1B's 128,256 logits at
    768 KiB of L2 left the staging ring about 10 KB, and its decode step 22.5 tokens/s
    against 39.3 at 512 KiB, where the head was chunked (``python -m
    benchmarks.perf_model --only fast``)."""
    if (not any(isinstance(op, Argmax) for op in graph.ops)
            or _fits([graph], cfg, hw, hw.l2_bytes // 2)):
        return graph
    return _roomiest([graph] + [chunk_lm_head(graph, size)
                                for size in lm_head_chunk_sizes(cfg.vocab_size)], cfg, hw)


def _roomiest(options: list[Graph], cfg: ModelConfig, hw: HardwareConfig) -> Graph:
    """The first of ``options`` that leaves half of L2 to the staging ring (the weights'
    tiles, which the rest of the step streams through it, stay as large as the other
    activations allow), else the first of those leaving the largest ring (where that is
    under ``MIN_RING_BYTES``, the caller's check refuses it). Taking the first option that
    fits at all instead left Llama-3.2-1B's decode step at 108 KiB of L2 a 7,936-byte ring
    and 54.3 M cycles, against 25.5 M at 104 and 112 KiB (``python -m
    benchmarks.perf_model --only head``)."""
    rings = []
    for g in options:
        rings.append(_ring_bytes([g], cfg, hw))
        if rings[-1] >= hw.l2_bytes // 2:
            return g
    return options[rings.index(max(rings))]


def head_scratch_bytes(graphs: list[Graph]) -> int:
    """DRAM bytes of the chunked LM heads' scratch words (0 without one)."""
    chunks = [len(op.chunks) for g in graphs for op in g.ops if isinstance(op, LmHead)]
    return lm_head_scratch_bytes(max(chunks)) if chunks else 0


def prefill_graphs(cfg: ModelConfig, qm, hw: HardwareConfig, n_prompt: int,
                   lower=None, first: int = 0, seq: int = 0) -> list[Graph]:
    """Prefill of prompt positions ``[first, n_prompt)`` (``first > 0``: the rows before
    are in the KV cache already, a shared prefix) as chunks whose activations fit L2 (the
    whole prompt when it fits), each chunk's graph from ``lower(start, tokens, head)`` (by
    default ``lower_step`` on ``qm`` for sequence ``seq``; the fast path passes its
    cached lowering)."""
    if lower is None:
        def lower(start, n, head):
            return lower_step(cfg, qm, start, n, head=head, name=f"prefill@{start}", seq=seq)
    for chunk in prefill_chunk_sizes(n_prompt - first, hw):
        # the last chunk first (its attention reads the longest KV): a chunk size that
        # does not fit is mostly refused without lowering the others
        graphs = []
        for start in reversed(range(first, n_prompt, chunk)):
            n = min(chunk, n_prompt - start)
            graphs.append(fit_head(lower(start, n, start + n == n_prompt), cfg, hw))
            if chunk > 1 and not _fits([graphs[-1]], cfg, hw):
                break
        else:
            return graphs[::-1]
    raise AssertionError("unreachable: a chunk of 1 is always returned")


def param_sizes(graphs: list[Graph], n_layers: int | None = None) -> dict[str, int]:
    """DRAM bytes of each parameter ``graphs`` read, by name. With ``n_layers``, the graphs
    are of a one-layer copy of the model (the fast path's): its ``layers.0.*`` parameters
    stand for every layer's, under the names the whole model's graphs give them."""
    sizes = {name: param_size(p) for name, p in _collect_params(graphs).items()}
    if n_layers is None:
        return sizes
    layer = "layers.0."
    out = {k: v for k, v in sizes.items() if not k.startswith(layer)}
    for i in range(n_layers):
        out.update({f"layers.{i}.{k[len(layer):]}": v for k, v in sizes.items()
                    if k.startswith(layer)})
    return out


def _collect_params(graphs: list[Graph]) -> dict[str, Param | ParamWords]:
    found: dict[str, Param | ParamWords] = {}
    for g in graphs:
        for op in g.ops:
            for value in vars(op).values():
                if isinstance(value, Param | ParamWords):
                    found.setdefault(value.name, value)
    return found


def dram_map(cfg: ModelConfig, hw: HardwareConfig, param_sizes: dict[str, int],
             positions: int, program_names: list[str], head_scratch: int = 0,
             sequences: int = 1, table_entries: int | None = None,
             pool_blocks: int | None = None, logits_rows: int | None = None,
             kv_headers: bool = False) -> MemoryMap:
    """The DRAM image's memory map: the parameters (bytes by name), then the writable
    regions (tokens, block table, KV pools for ``positions`` tokens, logits rows, the LM
    head's scratch, each program's counters). A batched build has ``sequences`` token
    buffers, block tables of ``table_entries`` entries and ``logits_rows`` logits rows
    (the rows a sequence computes), one after the other in each region
    (``BuildContext.tokens_addr`` and its siblings), and K/V pools of ``pool_blocks``
    blocks shared by all. With ``kv_headers`` (compressed KV chunks) each pool ends in
    its header area, a byte a channel of every block (``arch.isa.kv_chunk_addrs``). Raises
    ``CompileError`` when it exceeds ``hw.dram_bytes``, naming the parts."""
    mmap = MemoryMap()
    for name, size in param_sizes.items():
        mmap.add(f"param:{name}", size)
    mmap.start_writable()
    mmap.add("tokens", sequences * INT32_BYTES * (cfg.max_seq_len + 1))    # int32 token ids
    n_blocks = -(-positions // hw.kv_block_tokens)
    entries = n_blocks if table_entries is None else table_entries
    mmap.add("block_table", sequences * BLOCK_TABLE_ENTRY_BYTES * entries)
    pool_blocks = n_blocks if pool_blocks is None else pool_blocks
    pool = kv_pool_bytes(pool_blocks, hw.kv_block_tokens, cfg.kv_dim, kv_headers)
    for layer in range(cfg.n_layers):
        for kind in ("k", "v"):
            mmap.add(f"kv:{layer}:{kind}", pool)
    logits = sequences * 2 * cfg.vocab_size * (positions if logits_rows is None else logits_rows)
    mmap.add("logits", logits)
    if head_scratch:
        mmap.add("lm_head_scratch", head_scratch)
    for name in program_names:
        mmap.add(f"counters:{name}", COUNTER_BYTES * len(COUNTERS))
    if mmap.size > hw.dram_bytes:
        parts = {"weights": mmap.rw_base, "KV cache": 2 * cfg.n_layers * pool,
                 "logits rows": logits}
        hint = ("the weights alone do not fit" if mmap.rw_base > hw.dram_bytes else
                "a timing-only step at an earlier position, --decode-at, needs fewer")
        raise CompileError(f"the DRAM image needs {mmap.size:,} bytes, more than "
                           f"dram_bytes = {hw.dram_bytes:,} ("
                           + ", ".join(f"{k} {v:,}" for k, v in parts.items())
                           + f"; {hint})")
    return mmap


def _layout(cfg: ModelConfig, hw: HardwareConfig, params: dict, positions: int,
            program_names: list[str], with_data: bool, head_scratch: int = 0,
            kv_headers: bool = False) -> tuple[MemoryMap, DramImage]:
    mmap = dram_map(cfg, hw, {name: param_size(p) for name, p in params.items()}, positions,
                    program_names, head_scratch, kv_headers=kv_headers)
    n_blocks = -(-positions // hw.kv_block_tokens)
    image = DramImage(mmap, with_data)
    _write_params(image, params)
    image.write("block_table", block_table(n_blocks), keep=True)
    return mmap, image


def _write_params(image: DramImage, params: dict) -> None:
    """Each constant's bytes into its region (nothing for a build without weights)."""
    for name, p in params.items():
        raw = param_bytes(p)
        if raw is not None:
            image.write(f"param:{name}", raw)


def build_context(hw: HardwareConfig, cfg: ModelConfig, mmap: MemoryMap, prefetch: bool,
                  batch: tuple[SequencePlan, ...] | None = None,
                  kv_headers: bool = False) -> BuildContext:
    """Where a build's programs find each sequence's token buffer, block table and
    logits rows (``BuildContext``): for a batched build, ``batch``'s tables of the
    ``block_table`` region's equal share and the logits rows each sequence computes
    (its last prompt token's, then each decode step's), as ``dram_map`` laid them out.
    The compiler emits with it, and the runtime reads the results back with it."""
    if batch is None:
        return BuildContext(hw, cfg, mmap, prefetch, kv_headers=kv_headers)
    entries = mmap["block_table"].size // (BLOCK_TABLE_ENTRY_BYTES * len(batch))
    return BuildContext(hw, cfg, mmap, prefetch, entries,
                        max(sp.max_new_tokens for sp in batch),
                        tuple(len(sp.prompt) - 1 for sp in batch), kv_headers)


def _finish(cfg, hw, prefetch, mmap, image, named_graphs, prompt, max_new_tokens,
            batch: tuple[SequencePlan, ...] | None = None, kv: KvPlan | None = None,
            kv_headers: bool = False) -> Build:
    """Each program through the pipeline's passes (``compiler.pipeline``), then the
    programs placed after the data and, with weights, written into the image. The KV
    pools end in a header area with ``kv`` or ``kv_headers``."""
    context = PassContext(hw, prefetch, image, build_context(hw, cfg, mmap, prefetch, batch,
                                                             kv is not None or kv_headers))
    passes = PASSES if image.data is not None else PASSES[:-1]      # no bytes, no encode
    compiled = [run_passes(ProgramIR(name, kind, graphs), context, passes)
                for name, kind, graphs in named_graphs]
    programs = [Program(p.name, p.kind, p.graphs[0].start, sum(g.tokens for g in p.graphs),
                        p.instrs, p.code.l2_plan, [g.tokens for g in p.graphs],
                        *_batch_of(p.graphs, batch))
                for p in compiled]
    for p in programs:
        mmap.add(f"program:{p.name}", len(p.instrs) * INSTR_BYTES)
    if image.data is not None:
        data = np.zeros(mmap.size, np.uint8)
        data[:image.data.size] = image.data
        image.data = data
        for p in compiled:
            image.write(f"program:{p.name}", np.frombuffer(p.binary, np.uint8))
    if kv is not None:
        for p in programs:
            p.compress = kv.compress.get(p.name, [])
    return Build(cfg, hw, prefetch, mmap, image, programs, list(prompt), max_new_tokens, batch,
                 None if kv is None else kv.kv, None if kv is None else kv.tolerances)


@dataclass
class KvPlan:
    """A build's compressed KV chunks: the compression (``KVCompression``), each layer's
    K and V channel tolerances, and the blocks the host compresses after each program
    (``Program.compress``, by program name)."""
    kv: object
    tolerances: dict
    compress: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)

    def after(self, program: str, seq: int, first: int, end: int) -> None:
        if end > first:
            self.compress.setdefault(program, []).append((seq, first, end))


def kv_plan(cfg: ModelConfig, qm, hw: HardwareConfig, kv) -> KvPlan | None:
    """The ``KvPlan`` of compression ``kv`` (None for none). The device compresses whole KV
    blocks: ``CompileError`` unless ``kv.chunk_tokens == hw.kv_block_tokens``."""
    if kv is None:
        return None
    if kv.chunk_tokens != hw.kv_block_tokens:
        raise CompileError(f"compressed KV chunks of {kv.chunk_tokens} tokens: the device "
                           f"compresses whole KV blocks, kv_block_tokens = "
                           f"{hw.kv_block_tokens} on {hw.name}")
    import jax

    with jax.enable_x64(True):
        tolerances = {(i, kind): np.asarray(kv.tolerances(ql["kv_sens"][kind]), np.int64)
                      for i, ql in enumerate(qm["layers"]) for kind in ("k", "v")}
    return KvPlan(kv, tolerances)


def packed_graph(graph: Graph, packed: int) -> Graph:
    """A copy of ``graph`` with its attention reading cached rows ``[0, packed)`` as
    compressed chunks (``KvFormat.CHUNKED``)."""
    return replace(graph, ops=[replace(op, packed=packed) if isinstance(op, Attention) else op
                               for op in graph.ops])


def _batch_of(graphs: list[Graph], batch) -> tuple[list[int], list[int]]:
    """A batched build's program: its sequences and their positions (the first chunk's
    for a prefill); ``([], [])`` for a single sequence's."""
    if batch is None:
        return [], []
    g = graphs[0]
    seqs = [op.seq for op in g.ops if isinstance(op, Embed)]
    return seqs, list(g.positions) if g.positions is not None else [g.start]


def compile_generation(cfg: ModelConfig, qm, hw: HardwareConfig, prompt: list[int],
                       max_new_tokens: int, prefetch: bool | None = None,
                       kv=None) -> Build:
    """Prefill of ``prompt`` and ``max_new_tokens - 1`` decode steps (greedy). With
    ``kv`` (``models.integer.KVCompression``), each KV block is compressed by the host
    once full (after the prefill for the prompt's, after the decode step that fills it
    for later ones) and later steps read it with ``KvFormat.CHUNKED``, as
    ``integer.int_prefill`` and ``int_decode_step`` with ``kv`` compute (``kv_plan``)."""
    prefetch = hw.prefetch if prefetch is None else prefetch
    kvp = kv_plan(cfg, qm, hw, kv)
    B = hw.kv_block_tokens
    n_prompt = len(prompt)
    if n_prompt == 0:
        raise CompileError("the prompt is empty")
    if max_new_tokens < 1:
        raise CompileError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
    if n_prompt + max_new_tokens > cfg.max_seq_len:
        raise CompileError(f"the prompt ({n_prompt} tokens) plus {max_new_tokens} new tokens "
                           f"is longer than the model's context of {cfg.max_seq_len} tokens")
    bad = [t for t in prompt if not 0 <= t < cfg.vocab_size]
    if bad:
        raise CompileError(f"prompt token {bad[0]} is outside the vocabulary of {cfg.vocab_size}")
    named = [("prefill", "prefill", prefill_graphs(cfg, qm, hw, n_prompt))]
    for i in range(max_new_tokens - 1):
        start = n_prompt + i
        graph = fit_head(lower_step(cfg, qm, start, 1, name=f"decode@{start}"), cfg, hw)
        named.append((f"decode_{i:03d}", "decode",
                      [packed_graph(graph, start // B * B) if kvp else graph]))
        if kvp:
            kvp.after(f"decode_{i:03d}", 0, start // B, (start + 1) // B)
    if kvp:
        kvp.after("prefill", 0, 0, n_prompt // B)
    for name, _, graphs in named:
        if not _fits(graphs[:1], cfg, hw):
            raise CompileError(f"L2 too small for the smallest legal tiling: {name} at "
                               f"l2_bytes = {hw.l2_bytes}")
    params = _collect_params([g for _, _, gs in named for g in gs])
    with_data = not any(p.value is None for p in params.values() if isinstance(p, Param))
    positions = n_prompt + max_new_tokens
    mmap, image = _layout(cfg, hw, params, positions, [n for n, _, _ in named], with_data,
                          head_scratch_bytes([g for _, _, gs in named for g in gs]),
                          kvp is not None)
    image.write("tokens", np.asarray(prompt, "<i4"), keep=True)
    return _finish(cfg, hw, prefetch, mmap, image, named, prompt, max_new_tokens, kv=kvp)


def compile_step(cfg: ModelConfig, qm, hw: HardwareConfig, start: int, n_tokens: int = 1,
                 prefetch: bool | None = None) -> Build:
    """One step of ``n_tokens`` tokens at ``start`` (a decode step when ``n_tokens == 1``)."""
    return _compile_step(cfg, qm, hw, start, n_tokens, prefetch)


def _compile_step(cfg: ModelConfig, qm, hw: HardwareConfig, start: int, n_tokens: int,
                  prefetch: bool | None, kv_widths: np.ndarray | None = None) -> Build:
    """``compile_step``; with ``kv_widths`` (a decode step to time), its attention reads
    the full blocks before ``start`` compressed, every chunk header of every pool saying
    those widths (a build without weights: its codes are not written)."""
    prefetch = hw.prefetch if prefetch is None else prefetch
    if start < 0 or n_tokens < 1:
        raise CompileError(f"a step of {n_tokens} tokens at position {start}: the position "
                           f"must be at least 0 and the tokens at least 1")
    if start + n_tokens > cfg.max_seq_len:
        raise CompileError(f"positions up to {start + n_tokens - 1} are beyond the model's "
                           f"context of {cfg.max_seq_len} tokens")
    kind = "decode" if n_tokens == 1 else "prefill"
    graphs = ([fit_head(lower_step(cfg, qm, start, 1, name=f"decode@{start}"), cfg, hw)]
              if kind == "decode" else prefill_graphs(cfg, qm, hw, n_tokens))
    if kind == "prefill" and start:
        raise CompileError("a prefill step starts at position 0")
    B = hw.kv_block_tokens
    headers = kv_widths is not None
    if headers:
        graphs = [packed_graph(g, start // B * B) for g in graphs]
    params = _collect_params(graphs)
    with_data = not any(p.value is None for p in params.values() if isinstance(p, Param))
    name = "decode_000" if kind == "decode" else "prefill"
    mmap, image = _layout(cfg, hw, params, start + n_tokens + 1, [name], with_data,
                          head_scratch_bytes(graphs), headers)
    if headers:
        row = np.concatenate([kv_chunk_header(kv_widths, np.zeros_like(kv_widths))
                              for _ in range(cfg.n_kv_heads)])
        for layer in range(cfg.n_layers):
            for kv_kind in ("k", "v"):
                region = f"kv:{layer}:{kv_kind}"
                blocks = kv_pool_blocks(mmap[region].size, B, cfg.kv_dim, True)
                image.write(region, np.tile(row, blocks), blocks * B * cfg.kv_dim, keep=True)
    return _finish(cfg, hw, prefetch, mmap, image, [(name, kind, graphs)], [], 1,
                   kv_headers=headers)


def compile_timing_step(cfg: ModelConfig, hw: HardwareConfig, at: int | None = None,
                        prefetch: bool | None = None, weights: str = "int8",
                        kv_bits: float | None = None) -> Build:
    """One decode step of ``cfg`` at position ``at`` (default: half the context) without
    weights, its projection weights in format ``weights``: a build to time
    (``sweeps.perf.time_program`` with ``build.image.read_i32``), not to run. With
    ``kv_bits``, a compressed KV cache at that budget: the full blocks before ``at`` are
    read as compressed chunks whose headers give every chunk the widths
    ``occupancy.kv_budget_widths(head_dim, kv_bits)``, the stand-in the fast path times
    (``sweeps.analytic.decode_step(kv_bits=...)``). ``ValueError`` for a budget outside
    [2, 8] bits."""
    from models.integer import quant_struct

    at = cfg.max_seq_len // 2 if at is None else at
    try:
        widths = None if kv_bits is None else kv_budget_widths(cfg.head_dim, kv_bits)
    except ValueError as e:
        raise ValueError(f"kv_bits: {e}") from None
    return _compile_step(cfg, quant_struct(cfg, weights), hw, at, 1, prefetch, widths)


# -- many sequences: a batched build --------------------------------------------------------

# The most sequences one program decodes together (a toolkit limit, refused by name: each
# sequence adds its own attention, RoPE and outputs to the program and to the fast path).
MAX_BATCH = 256

@dataclass(frozen=True)
class SequencePlan:
    """One sequence of a batched build, as the host's block manager placed it
    (``accel.kv_blocks.plan_batch``): its prompt, the tokens it generates, its block
    table (the physical block of each logical block, int32 as the device reads it) and
    ``cached``, the leading prompt tokens whose K/V rows an earlier sequence's prefill
    wrote into blocks it shares (a shared prefix: its prefill starts there)."""

    prompt: tuple[int, ...]
    max_new_tokens: int
    table: tuple[int, ...]
    cached: int = 0

    @property
    def positions(self) -> int:
        return len(self.prompt) + self.max_new_tokens


@dataclass(frozen=True)
class BatchStep:
    """One program of a batched build: the prefill of one sequence, or one decode step of
    each sequence in ``seqs`` (one token each, weights read once for all)."""

    kind: str                   # "prefill" or "decode"
    seqs: tuple[int, ...]


def _row_key(plan: SequencePlan, seq: int, row: int):
    """What the K/V row ``row`` of a sequence depends on: its prompt up to that row, or,
    for a generated token's row, the sequence itself (the host cannot know the token)."""
    return tuple(plan.prompt[:row + 1]) if row < len(plan.prompt) else (seq, row)


def check_batch(sequences: tuple[SequencePlan, ...], schedule: tuple[BatchStep, ...],
                pool_blocks: int, block_tokens: int, vocab_size: int, max_seq_len: int
                ) -> None:
    """Refuse, with ``CompileError`` naming the sequence, program and row, a batch the
    device cannot run as asked: a bad prompt or length, a table too short or pointing
    outside the pool, a schedule that prefills a sequence other than once or decodes it
    before its prefill or more or fewer times than its tokens need, a sequence twice in
    one decode step, a table naming one block for two logical blocks, or a program that
    reads a K/V row whose contents are not the ones its sequence needs (a shared prefix
    not written yet, or overwritten by another sequence, before this program or by it:
    the schedule is replayed row by row, each program's appends before its reads, as the
    device runs a batched layer)."""
    if not sequences:
        raise CompileError("a batch of no sequences")
    for b, step in enumerate(schedule):
        if len(step.seqs) > MAX_BATCH:
            raise CompileError(f"program {b}: a decode step of {len(step.seqs)} sequences "
                               f"(at most MAX_BATCH = {MAX_BATCH})")
    for b, sp in enumerate(sequences):
        what = f"sequence {b}"
        if not sp.prompt:
            raise CompileError(f"{what}: the prompt is empty")
        bad = [t for t in sp.prompt if not 0 <= t < vocab_size]
        if bad:
            raise CompileError(f"{what}: prompt token {bad[0]} is outside the vocabulary of "
                               f"{vocab_size}")
        if sp.max_new_tokens < 1:
            raise CompileError(f"{what}: max_new_tokens must be at least 1, not "
                               f"{sp.max_new_tokens}")
        if sp.positions > max_seq_len:
            raise CompileError(f"{what}: the prompt ({len(sp.prompt)} tokens) plus "
                               f"{sp.max_new_tokens} new tokens is longer than the model's "
                               f"context of {max_seq_len} tokens")
        need = -(-(sp.positions - 1) // block_tokens)
        if len(sp.table) < need:
            raise CompileError(f"{what}: its block table has {len(sp.table)} entries, its "
                               f"{sp.positions - 1} K/V rows need {need}")
        outside = [e for e in sp.table if not 0 <= e < pool_blocks]
        if outside:
            raise CompileError(f"{what}: block table entry {outside[0]} is outside the pool "
                               f"of {pool_blocks} blocks")
        used = sp.table[:need]
        if len(set(used)) != len(used):
            twice = next(e for e in used if used.count(e) > 1)
            raise CompileError(f"{what}: its block table names block {twice} for two of "
                               f"its logical blocks")
        if not 0 <= sp.cached < len(sp.prompt):
            raise CompileError(f"{what}: cached = {sp.cached} is not below the prompt's "
                               f"{len(sp.prompt)} tokens")
    content: dict[tuple[int, int], tuple] = {}     # (physical block, row in it) ->
    #                                                (key, writer, program)
    written = [0] * len(sequences)                 # K/V rows each sequence has written
    prefilled: set[int] = set()

    def place(b: int, row: int) -> tuple[int, int]:
        return sequences[b].table[row // block_tokens], row % block_tokens

    for i, step in enumerate(schedule):
        where = f"program {i} ({step.kind} of sequences {list(step.seqs)})"
        if step.kind not in ("prefill", "decode") or not step.seqs or \
                len(set(step.seqs)) != len(step.seqs) or \
                (step.kind == "prefill" and len(step.seqs) != 1) or \
                any(not 0 <= b < len(sequences) for b in step.seqs):
            raise CompileError(f"{where}: not a prefill of one sequence or a decode step of "
                               f"distinct sequences of the batch")
        spans = {}
        for b in step.seqs:
            sp = sequences[b]
            if step.kind == "prefill":
                if b in prefilled:
                    raise CompileError(f"{where}: sequence {b} is prefilled twice")
                prefilled.add(b)
                spans[b] = (sp.cached, len(sp.prompt))
            else:
                if b not in prefilled:
                    raise CompileError(f"{where}: sequence {b} decodes before its prefill")
                spans[b] = (written[b], written[b] + 1)
                if written[b] + 1 > sp.positions - 1:
                    raise CompileError(f"{where}: sequence {b} has generated its "
                                       f"{sp.max_new_tokens} tokens already")
        # every sequence's rows are appended before any attention of the layer reads the
        # past rows (a decode step runs each operation for the whole batch), so a row
        # another sequence of the same program overwrites is read overwritten
        for b, (first, end) in spans.items():
            for row in range(first, end):
                content[place(b, row)] = (_row_key(sequences[b], b, row), b, i)
            written[b] = end
        for b, (first, _) in spans.items():
            for row in range(first):                       # the past rows it reads
                held = content.get(place(b, row))
                if held is None or held[0] != _row_key(sequences[b], b, row):
                    raise CompileError(
                        f"{where}: sequence {b} reads K/V row {row} from block "
                        f"{place(b, row)[0]}, which "
                        + ("no program has written" if held is None else
                           f"holds another row: sequence {held[1]} wrote it in program "
                           f"{held[2]}"))
    for b, sp in enumerate(sequences):
        if b not in prefilled or written[b] != sp.positions - 1:
            raise CompileError(f"sequence {b}: the schedule runs {written[b]} of its "
                               f"{sp.positions - 1} K/V rows (its prefill and "
                               f"{sp.max_new_tokens - 1} decode steps)")


def block_owners(sequences: tuple[SequencePlan, ...], schedule: tuple[BatchStep, ...],
                pool_blocks: int, block_tokens: int) -> list[np.ndarray]:
    """Per program of a batched build, ``uint8 [pool_blocks]``: who holds each block while
    it runs, as the host's block manager has it (vLLM's reference counts): every sequence
    from its prefill to its last program, through the rows it has written by the end of
    that program (its blocks are allocated on demand; a shared prefix is in its table).
    The owner code (``arch.isa``'s ``KV_LIVE`` map) is ``KV_FREE`` for a block no running
    sequence holds, ``s + 1`` for one sequence ``s`` alone, ``KV_SHARED`` for several. So a
    table naming a freed block, or another sequence's, stops with ``BAD_BLOCK``
    (``accel.kv_blocks.plan_batch`` frees a sequence's blocks after its last program)."""
    written = [0] * len(sequences)
    maps = []
    for step in schedule:
        for b in step.seqs:
            sp = sequences[b]
            written[b] = len(sp.prompt) if step.kind == "prefill" else written[b] + 1
        owners = np.full(pool_blocks, KV_FREE, np.uint8)
        for b, sp in enumerate(sequences):
            if written[b] and (written[b] < sp.positions - 1 or b in step.seqs):
                held = list(sp.table[:-(-written[b] // block_tokens)])
                mine = owners[held] == KV_FREE
                owners[held] = np.where(mine, min(b + 1, KV_SHARED), KV_SHARED)
        maps.append(owners)
    return maps


BATCH_HEAD_RING_BYTES = 4 * MIN_TILE_BYTES
"""The staging ring a batch's whole LM head must leave to be kept whole: four full-size
staging tiles (``backend.staging_tile_bytes``), where the whole head of 2 sequences of
Sheared-LLaMA-1.3B (decode at KV 511 on edge-16x16) starts to beat chunked heads: ring
62,208 bytes 33.8 M cycles, 70,400 bytes 32.9 M, chunked 33.5 M. A batch whose head is a
larger share of the weights wins below it (2 sequences of Llama-3.2-1B: ring 37,760
bytes 28.1 M, chunked 31.7 M) and a ring under two tiles loses for both (Llama-3.2-1B:
25,472 bytes 37.3 M). ``python -m benchmarks.perf_model --only head`` prints these."""


def batched_decode_graph(graphs: list[Graph], cfg: ModelConfig, hw: HardwareConfig,
                         name: str) -> Graph:
    """The decode steps ``graphs`` of a batch's sequences as one graph
    (``batching.batch_graphs``). A batch's whole LM head reads its weights once for every
    sequence, each chunked head once per sequence, so the whole head is kept wherever it
    leaves the staging ring ``BATCH_HEAD_RING_BYTES``, even under half of L2
    (Sheared-LLaMA-1.3B at 4 MiB, 12 and 16 sequences: 5.6% and 9.6% more cycles chunked,
    ``python -m benchmarks.batch_decode``); else the whole head or the chunks, as
    ``_roomiest`` picks."""
    merged = batch_graphs(graphs, name)
    if _fits([merged], cfg, hw, BATCH_HEAD_RING_BYTES):
        return merged
    return _roomiest([merged] + [batch_graphs([chunk_lm_head(g, size) for g in graphs], name)
                                 for size in lm_head_chunk_sizes(cfg.vocab_size)], cfg, hw)


def _batch_programs(cfg: ModelConfig, qm, hw: HardwareConfig,
                    sequences: tuple[SequencePlan, ...], schedule: tuple[BatchStep, ...],
                    kvp: KvPlan | None = None) -> list[tuple[str, str, list[Graph]]]:
    named, decoded = [], [0] * len(sequences)
    n_decode = 0
    B = hw.kv_block_tokens
    for step in schedule:
        if step.kind == "prefill":
            (b,) = step.seqs
            sp = sequences[b]
            graphs = prefill_graphs(cfg, qm, hw, len(sp.prompt), first=sp.cached, seq=b)
            if kvp:     # a shared prefix was compressed after its owner's prefill
                graphs = [packed_graph(g, sp.cached) for g in graphs]
                kvp.after(f"prefill_s{b}", b, sp.cached // B, len(sp.prompt) // B)
            named.append((f"prefill_s{b}", "prefill", graphs))
            continue
        name = f"decode_{n_decode:03d}"
        graphs = []
        for b in step.seqs:
            pos = len(sequences[b].prompt) + decoded[b]
            graph = lower_step(cfg, qm, pos, 1, name=f"decode@{pos}.s{b}", seq=b)
            graphs.append(packed_graph(graph, pos // B * B) if kvp else graph)
            if kvp:
                kvp.after(name, b, pos // B, (pos + 1) // B)
            decoded[b] += 1
        named.append((name, "decode", [batched_decode_graph(graphs, cfg, hw, name)]))
        n_decode += 1
    for name, _, graphs in named:
        if not _fits(graphs[:1], cfg, hw):
            raise CompileError(f"L2 too small for the smallest legal tiling: {name} at "
                               f"l2_bytes = {hw.l2_bytes}")
    return named


def compile_batch(cfg: ModelConfig, qm, hw: HardwareConfig,
                  sequences: list[SequencePlan] | tuple[SequencePlan, ...],
                  schedule: list[BatchStep] | tuple[BatchStep, ...], pool_blocks: int,
                  prefetch: bool | None = None, kv=None) -> Build:
    """Many sequences in one KV pool: a program per ``BatchStep`` of ``schedule`` (the
    prefill of a sequence, named ``prefill_s<b>``; a batched decode step,
    ``decode_<i>``), all sharing one DRAM image whose K/V pools hold ``pool_blocks``
    blocks and whose block tables are the sequences' (``SequencePlan.table``). The host
    decides the tables and the schedule (``accel.kv_blocks.plan_batch``: allocation on
    demand, prefix sharing, continuous batching); the compiler checks them
    (``check_batch``) and raises ``CompileError`` where the device could not run them.
    With ``kv``, compressed KV chunks as ``compile_generation``: a sequence's blocks are
    compressed after its prefill and after the decode step that fills each later one, a
    shared prefix once, by the sequence that filled it."""
    prefetch = hw.prefetch if prefetch is None else prefetch
    sequences, schedule = tuple(sequences), tuple(schedule)
    if pool_blocks < 1:
        raise CompileError(f"pool_blocks must be at least 1, not {pool_blocks}")
    check_batch(sequences, schedule, pool_blocks, hw.kv_block_tokens, cfg.vocab_size,
                cfg.max_seq_len)
    kvp = kv_plan(cfg, qm, hw, kv)
    B = hw.kv_block_tokens
    for b, sp in enumerate(sequences if kvp else ()):
        if sp.cached % B:
            raise CompileError(f"compressed KV: sequence {b} maps {sp.cached} prompt tokens of "
                               f"shared blocks, not whole blocks of {B}: its prefill would "
                               f"write row {sp.cached} into a shared block stored compressed")
    named = _batch_programs(cfg, qm, hw, sequences, schedule, kvp)
    owners = block_owners(sequences, schedule, pool_blocks, B)
    return _batch_build(cfg, hw, prefetch, named, sequences, pool_blocks, kvp, owners)


def _batch_build(cfg: ModelConfig, hw: HardwareConfig, prefetch: bool, named: list,
                 sequences: tuple[SequencePlan, ...], pool_blocks: int,
                 kvp: KvPlan | None = None, owners: list[np.ndarray] | None = None
                 ) -> Build:
    """A batched build of the programs ``named``: the memory map (``dram_map``: each
    sequence's buffers, ``pool_blocks`` blocks of K/V), the constants, each sequence's
    prompt and block table (unused entries ``EVICTED``, -1) in the image, the passes.
    ``owners``: each program's block owners (``block_owners``); with more than one sequence,
    or a block free, a program gets its map (region ``kv_live:<program>``), which it reads
    first (``KV_LIVE``). Raises ``CompileError`` for a map larger than the device's
    (``KV_MAP_BLOCKS``) or with more sequences than it can name (``KV_MAX_OWNERS``)."""
    graphs = [g for _, _, gs in named for g in gs]
    params = _collect_params(graphs)
    with_data = not any(p.value is None for p in params.values() if isinstance(p, Param))
    entries = max(len(sp.table) for sp in sequences)
    mmap = dram_map(cfg, hw, {name: param_size(p) for name, p in params.items()},
                    max(sp.positions for sp in sequences), [n for n, _, _ in named],
                    head_scratch_bytes(graphs), len(sequences), entries, pool_blocks,
                    max(sp.max_new_tokens for sp in sequences), kvp is not None)
    maps = {}
    for (name, _, _), held in zip(named, owners, strict=True) if owners is not None else ():
        if len(sequences) > 1 or not held.all():
            if pool_blocks > KV_MAP_BLOCKS:
                raise CompileError(f"{name}: a KV pool of {pool_blocks} blocks: the device's "
                                   f"block-owner map holds KV_MAP_BLOCKS = {KV_MAP_BLOCKS}")
            if len(sequences) > KV_MAX_OWNERS:
                raise CompileError(f"{name}: {len(sequences)} sequences in one build: the "
                                   f"device's block-owner map names at most KV_MAX_OWNERS = "
                                   f"{KV_MAX_OWNERS}")
            maps[name] = kv_map_pack(held)
            mmap.add(f"kv_live:{name}", maps[name].size)
    image = DramImage(mmap, with_data)
    _write_params(image, params)
    for name, packed in maps.items():
        image.write(f"kv_live:{name}", packed, keep=True)
    ctx = build_context(hw, cfg, mmap, prefetch, sequences, kvp is not None)
    tables = np.full((len(sequences), entries), -1, "<i4")
    for b, sp in enumerate(sequences):
        tables[b, :len(sp.table)] = sp.table
        image.write("tokens", np.asarray(sp.prompt, "<i4"),
                    offset=ctx.tokens_addr(b) - mmap["tokens"].offset, keep=True)
    image.write("block_table", tables, keep=True)
    return _finish(cfg, hw, prefetch, mmap, image, named, [], 0, sequences, kvp)


def compile_batch_timing_step(cfg: ModelConfig, hw: HardwareConfig, batch: int,
                              at: int | None = None, prefetch: bool | None = None,
                              weights: str = "int8") -> Build:
    """One decode step of ``batch`` sequences, each at position ``at`` (default: half the
    context) with its own blocks, without weights: a build to time (``sweeps.perf``),
    not to run. Raises ``CompileError`` as ``compile_batch`` does."""
    from models.integer import quant_struct

    at = cfg.max_seq_len // 2 if at is None else at
    if not 1 <= batch <= MAX_BATCH:
        raise CompileError(f"a batch of {batch} sequences (1 to MAX_BATCH = {MAX_BATCH})")
    if not 1 <= at < cfg.max_seq_len - 1:
        raise CompileError(f"a decode step at position {at}: it follows a prompt of at "
                           f"least one token and leaves a position for the next within "
                           f"the model's context of {cfg.max_seq_len} tokens")
    prefetch = hw.prefetch if prefetch is None else prefetch
    qm = quant_struct(cfg, weights)
    blocks = -(-(at + 1) // hw.kv_block_tokens)
    order = block_table(batch * blocks)
    graphs = [lower_step(cfg, qm, at, 1, name=f"decode@{at}.s{b}", seq=b) for b in range(batch)]
    named = [("decode_000", "decode", [batched_decode_graph(graphs, cfg, hw, "decode_000")])]
    if not _fits(named[0][2], cfg, hw):
        raise CompileError(f"L2 too small for the smallest legal tiling: a decode step of "
                           f"{batch} sequences at l2_bytes = {hw.l2_bytes}")
    # each sequence: a prompt of ``at`` tokens, this step its first decode step
    sequences = tuple(SequencePlan((0,) * at, 2, tuple(int(e) for e in
                                                        order[b * blocks:(b + 1) * blocks]))
                      for b in range(batch))
    return _batch_build(cfg, hw, prefetch, named, sequences, batch * blocks)
