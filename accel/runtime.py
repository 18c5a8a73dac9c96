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
read through its own token buffer, logits rows and block table. Both simulators run on
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
from dataclasses import dataclass

import numpy as np

from arch.isa import INT32_BYTES, ErrorCode, kv_row_addr
from compiler.asm import decode_program
from compiler.buildfolder import RunIntegrityError, read_only_regions
from compiler.driver import Build
from compiler.isasim import IsaSimulator
from compiler.semantics import AcceleratorError
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
    cfg, mmap = build.cfg, build.mmap
    if seq is None:
        prompt, new, entries, rows_per_seq, seq = build.prompt, build.max_new_tokens, 0, 0, 0
    else:
        sp = build.batch[seq]
        prompt, new = sp.prompt, sp.max_new_tokens
        entries = mmap["block_table"].size // (INT32_BYTES * len(build.batch))
        rows_per_seq = max(s.max_new_tokens for s in build.batch)
    n_prompt = len(prompt)
    positions = n_prompt + new
    kv_rows = positions if build.batch is None else positions - 1
    tok = mmap["tokens"].offset + seq * INT32_BYTES * (cfg.max_seq_len + 1)
    tokens = dram[tok:tok + INT32_BYTES * (positions + 1)].view("<i4")
    generated = [int(t) for t in tokens[n_prompt:positions]]
    lg = mmap["logits"]
    first = lg.offset + seq * rows_per_seq * 2 * cfg.vocab_size
    logits = dram[first:lg.end].view("<i2").reshape(-1, cfg.vocab_size)
    # the rows it computed, from its last prompt token's (a batched build keeps only those)
    logits = logits[n_prompt - 1:positions - 1] if build.batch is None else logits[:new]
    table_at = mmap["block_table"].offset + seq * INT32_BYTES * entries
    table = dram[table_at:mmap["block_table"].end].view("<i4")
    bt = build.hw.kv_block_tokens
    kv = {}
    for kind in ("k", "v"):
        layers = []
        for layer in range(cfg.n_layers):
            pool = mmap[f"kv:{layer}:{kind}"].offset
            starts = [kv_row_addr(pool, int(table[t // bt]), t, bt, cfg.kv_dim)
                      for t in range(kv_rows)]
            rows = np.stack([dram[a:a + cfg.kv_dim] for a in starts]).view(np.int8)
            layers.append(rows.reshape(kv_rows, cfg.n_kv_heads, cfg.head_dim))
        kv[kind] = np.stack(layers)
    return generated, logits.copy(), kv


def run_build(build: Build, sim: str = "isa", check_races: bool = True,
              waves: bool = False) -> RunResult | BatchRunResult:
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
    counters = {}
    for p in build.programs:
        simulator.counters = type(simulator.counters)()
        counters[p.name] = dict(simulator.run(program_from_dram(build, simulator.dram,
                                                                p.name)).values)
    dram = image_part(build, simulator.dram)
    return _result(build, dram, counters, time.perf_counter() - t0, None, simulator.l2)


def _result(build: Build, dram: np.ndarray, counters: dict, wall_seconds: float,
            program_seconds: dict | None, l2: np.ndarray) -> RunResult | BatchRunResult:
    if build.batch is None:
        tokens, logits, kv = read_results(build, dram)
        return RunResult(tokens, logits, kv, counters, dram, wall_seconds, program_seconds, l2)
    sequences = [RunResult(*read_results(build, dram, b), {}) for b in range(len(build.batch))]
    return BatchRunResult(sequences, counters, dram, wall_seconds, program_seconds, l2)


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
    programs = [(p.name, build.mmap[f"program:{p.name}"].offset) for p in build.programs]
    job = run_job(model, image, programs, {"dram": (0, params.dram_bytes)}, waves=waves)
    counters, busy_before = {}, 0
    for entry in job.programs:
        if entry["timed_out"]:
            raise RunTimeoutError(f"RTL program {entry['name']} did not finish within the "
                                  f"cycle limit (a deadlock?)")
        if entry["error"]:
            raise AcceleratorError(ErrorCode(entry["error_code"]), entry["error_index"],
                                   f"the RTL stopped in program {entry['name']}")
        counters[entry["name"]] = {**entry["counters"],
                                   "dram_busy_cycles": entry["dram_busy_cycles"] - busy_before}
        busy_before = entry["dram_busy_cycles"]
    dram = image_part(build, job.reads["dram"])
    seconds = {entry["name"]: entry["wall_seconds"] for entry in job.programs}
    return _result(build, dram, counters, job.wall_seconds, seconds, job.l2)


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
