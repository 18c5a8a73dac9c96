"""The performance model's figures: fast-path speed and accuracy, decode against the DRAM
roofline, prefetch speedup (one device and tensor parallel), prefill PE utilisation.

    python -m benchmarks.perf_model            # every section, one JSON line per figure
    python -m benchmarks.perf_model --only tp
    python -m benchmarks.perf_model --only random --random 500 [--seed S]

Sections:

* ``fast``: one decode step (KV length 511) of each 1B-class preset on edge-16x16 (16
  MiB, 4 MiB, 2 MiB, 768 KiB, 512 KiB, 256 KiB and 64 KiB of L2; and at KV length 1,100
  at 64 KiB) and on edge-4x4, edge-8x8 and edge-32x32 (64 KiB and 1 MiB) with the
  analytic fast path: wall time from cold caches
  (``cold_seconds``: the model's first lowering, a JAX trace, included) and of a step
  at another KV length once the model has been lowered (``wall_seconds``: what each
  further point of a sweep costs), tokens/s,
  and the fraction of the DRAM-bandwidth roofline (weights and KV bytes at
  ``dram_bytes_per_cycle``) reached.
* ``slow``: what the ``fast`` section's slowest steps spend their time on. Steps whose
  periodic runs settle late (edge-4x4: Qwen2.5-0.5B at 1 MiB, Sheared-LLaMA-1.3B and
  TinyLlama-1.1B at 64 KiB): each pipeline run's tiles with the loads' drift predicting
  where a run settles (``analytic._settle_repeats``) and with ``RESTEP_FACTOR`` alone,
  the drifts and slacks found, and cycles and load busy of both and of stepping every
  tile; the L2 wait, pass by pass, of the Qwen2.5-0.5B step's load that moved most at
  the last pass; the MATMULs that TinyLlama-1.1B's step at KV 1,100 at 64 KiB times
  afresh and their seconds; the tiles of Llama-3.2-1B's step on edge-32x32 at 64 KiB
  (each part's, and those the pipeline steps) and the seconds of its engines' pass.
* ``fidelity``: the fast path against the instruction-level model on compiled programs:
  decode steps (tiny, Sheared-LLaMA-1.3B and Qwen2.5-0.5B with 2 layers, on two L2
  sizes each, prefetch on and off) and prefills (tiny, 8 and 32 tokens; Sheared-LLaMA-1.3B
  with 2 layers, 128 tokens).
* ``random``: the fast path against the instruction-level model on ``--random N`` random
  steps (``sweeps.random_steps``: model shapes, hardware, bandwidths, prefetch, weight
  formats that nothing was tuned on), one row each, then the worst and mean absolute
  error.
* ``workload``: a workload's decode steps (qwen2.5-0.5b at 4 MiB: 64 steps after a
  448-token prompt, LISO's 127 after 1,024, SILO's first 255 after 128; TinyLlama-1.1B
  at 2 MiB, whose step jumps by 18,577 cycles at each KV block: LISO's) by sampling 2, 3,
  4 (the default, ``analytic.DECODE_SAMPLES``) and 9 positions mid-block
  (``analytic.decode_positions``) and interpolating, against timing every step; and
  prefills of 64–256 chunks (the first, the last and ``analytic.PREFILL_SAMPLES`` between
  them timed) against timing every chunk (Sheared-LLaMA-1.3B's 1,024-token prompt at
  256 KiB: 256 chunks, the worst found).
* ``cuts``: the periodic runs of tiles the fast path cuts short (``analytic._periodic``)
  against stepping through every tile: decode steps (int8, MXINT4, MXINT4 with a 3-bit
  KV cache) and prefills of the four 1B-class presets at 256 KiB (a staging ring of 9
  slots, cut by its pointer's period), 512 KiB, 2 MiB and 16 MiB of L2: the error in
  cycles and in load busy and the pipeline's runs (``analytic._timeline`` runs it again
  where a run had not settled by its cut), then the worst and the total; each also cut
  after a quarter of the repeats (``analytic.SETTLE_FACTOR`` 1, not 4).
* ``layers``: a decode step's layers past the first few extrapolated from one
  (``analytic._layers``) against stepping through every layer: the four 1B-class
  presets at 256 KiB, 2 MiB and 16 MiB of L2 (int8, MXINT4, batch 4, a 3-bit KV cache;
  prefetch on and off), the error in cycles (and in whole cycles), load busy and compute
  busy, then the worst and how many steps are exact and within a cycle.
* ``head``: the LM head's options where its logits crowd L2 (``driver.fit_head``,
  ``driver.batched_decode_graph``): for a decode step at KV 511 on edge-16x16 of
  Llama-3.2-1B (104, 108, 112 KiB of L2), TinyLlama-1.1B (56, 57 KiB) and
  Sheared-LLaMA-1.3B (64 KiB), and of 2 sequences of Llama-3.2-1B (1.5 MiB to 1.75 MiB)
  and of Sheared-LLaMA-1.3B (424 to 512 KiB), each option (the whole head, its column
  chunks from the largest) with the staging ring it leaves, its cycles (fast path) and
  whether the driver picks it.
* ``l2``: prefetch speedup of a decode step against L2 size, one device.
* ``tp``: Llama-3-8B decode under tensor parallelism on 4 and 8 devices (4 GiB of DRAM
  each: an int8 shard does not fit 2) across L2 sizes, prefetch on and off.
* ``prefill``: PE utilisation of the projection matmuls (those whose weights a DMA_LOAD
  staged) of a 128-token prefill of Sheared-LLaMA-1.3B (2 layers) on edge-16x16 (16 and
  4 MiB) and edge-8x8 (1 MiB), from the occupancy of the compiled program's MATMULs.
* ``density``: tokens/s/mm² of Sheared-LLaMA-1.3B on edge-16x16 (16 nm, prefetch on) for
  the long-input/short-output (1024/128) and short-input/long-output (128/1024)
  workloads at the default sweep's optima, as the sweep counts it (generated tokens over
  the whole die) and as an accelerator paper often does (every token processed, prompt
  included, over the core: logic, its memories and the L2, without the DRAM PHY), beside
  the hybrid-systolic-array paper's 247 / 117 (arXiv 2507.09010; MXINT4 weights).
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

from accel.args import ArgumentParser, run_command

ROOT = Path(__file__).resolve().parent.parent

SECTIONS = ("fast", "slow", "fidelity", "random", "workload", "cuts", "layers", "head",
            "l2", "tp", "prefill", "density")


def _emit(row: dict) -> dict:
    print(json.dumps({"benchmark": "perf_model", **row}), flush=True)
    return row


def fast() -> list[dict]:
    from arch.hardware import load_hardware
    from models.config import preset
    from sweeps import analytic

    rows = []
    names = ("sheared-llama-1.3b", "llama-3.2-1b", "tinyllama-1.1b", "qwen2.5-0.5b")
    # 16 MiB; edge-16x16's own 4 MiB; 2 MiB, the slowest L2 size to time until the
    # compiler evened out split reductions; 768 KiB, Llama-3.2-1B's slowest after the
    # engines were compiled; 512 KiB and 256 KiB; and 64 KiB, the smallest of the default
    # sweep, whose staging ring of about 10 KB makes the most tiles (docs/perf.md)
    cases = [("edge-16x16", l2_bytes, name, 511) for l2_bytes, name in itertools.product(
        (16 << 20, 4 << 20, 2 << 20, 768 << 10, 512 << 10, 256 << 10, 64 << 10), names)]
    # ... at 64 KiB at KV 1,100 (the LISO workload's decode), and the other arrays at 64
    # KiB and 1 MiB (the smallest L2 of the default sweep; array_shape.toml's smallest)
    cases += [("edge-16x16", 64 << 10, name, 1100) for name in names]
    cases += [(hw, l2_bytes, name, 511) for hw, l2_bytes, name in itertools.product(
        ("edge-4x4", "edge-8x8", "edge-32x32"), (64 << 10, 1 << 20), names)]
    for hw_name, l2_bytes, name, position in cases:
        hw = load_hardware(hw_name).replace(l2_bytes=l2_bytes)
        cfg = preset(name)
        analytic.clear_caches()
        gc.collect()
        t0 = time.perf_counter()
        analytic.decode_step(cfg, hw, position - 1)
        cold = time.perf_counter() - t0
        # a full collection now, not inside the timed step: one there walked every cached
        # plan of the configurations before (71 ms of a 0.15 s Sheared-LLaMA-1.3B step at
        # 2 MiB; a sweep pays it once per collection, over many steps)
        gc.collect()
        t0 = time.perf_counter()
        step = analytic.decode_step(cfg, hw, position)
        seconds = time.perf_counter() - t0
        bound = step.dram_read_bytes / hw.dram_bytes_per_cycle
        rows.append(_emit({
            "section": "fast", "model": name, "hw": hw.name, "l2_bytes": hw.l2_bytes,
            "position": position,
            "cold_seconds": round(cold, 3), "wall_seconds": round(seconds, 3),
            "cycles": step.cycles,
            "tokens_per_s": round(hw.clock_hz / step.cycles, 2),
            "dram_read_bytes": step.dram_read_bytes,
            "roofline_fraction": round(bound / step.cycles, 3)}))
    return rows


def slow() -> list[dict]:
    """The ``fast`` section's slowest steps and what their time goes to (docs/perf.md):
    the pipeline runs of steps whose periodic runs settle late, with the loads' drift's
    prediction (``analytic._settle_repeats``) and with ``RESTEP_FACTOR`` alone, both
    against stepping every tile; an L2 wait that grows every contention pass; the
    MATMULs and DMA instructions a new KV length at 64 KiB times afresh and the LM head's
    fitting; the MATMULs of a 1,024-token prefill
    and their tiles, timed alone; a first step in a fresh process with numba's cache of
    compiled kernels emptied and with it; the tiles of edge-32x32's step at
    64 KiB and the seconds of its engines' pass. Seconds are of the step with its calls
    logged (slower than ``fast``'s)."""
    import numpy as np

    from arch import occupancy
    from arch.hardware import load_hardware
    from models.config import preset
    from sweeps import analytic

    patched = ("_pipeline", "_drift", "_settle_repeats", "_periodic", "_l2_waits", "_run",
               "_columns", "fit_head")
    saved = {name: getattr(analytic, name) for name in patched}
    saved_mode, saved_dma = occupancy._matmul_mode, occupancy.dma_occupancy
    log: dict = {}

    def logged(name):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            out = saved[name](*args, **kwargs)
            log.setdefault(name, []).append((args, out, time.perf_counter() - t0))
            return out
        return call

    def step(hw, name, position, restep_only=False, every_tile=False):
        """A decode step at ``position`` after one at ``position - 1`` from cold caches
        (the ``fast`` section's ``wall_seconds``), with the calls above logged."""
        for n in patched:
            setattr(analytic, n, logged(n))

        def timed(name, f):
            def call(*args, **kwargs):
                t0 = time.perf_counter()
                out = f(*args, **kwargs)
                log.setdefault(name, []).append(time.perf_counter() - t0)
                return out
            return call
        occupancy._matmul_mode = timed("matmul_mode", saved_mode)
        occupancy.dma_occupancy = timed("dma_occupancy", saved_dma)
        if restep_only:
            analytic._settle_repeats = lambda *a: 0
        if every_tile:
            analytic._periodic = lambda tiles, repeats, ring, keep=(), front=None: (
                tiles, (), range(len(tiles)))
        log.clear()
        try:
            analytic.clear_caches()
            analytic._plan.cache_clear()
            analytic.decode_step(preset(name), hw, position - 1)
            gc.collect()
            log.clear()
            t0 = time.perf_counter()
            out = analytic.decode_step(preset(name), hw, position)
            seconds = time.perf_counter() - t0
        finally:
            for n in patched:
                setattr(analytic, n, saved[n])
            occupancy._matmul_mode, occupancy.dma_occupancy = saved_mode, saved_dma
            analytic.clear_caches()
        return out, seconds, {k: list(v) for k, v in log.items()}

    rows = []
    # Runs that settle late: each pipeline run's tiles, with the loads' drift predicting
    # where a run settles (``_settle_repeats``) and with RESTEP_FACTOR alone, and the
    # step against stepping every tile.
    for hw_name, l2_bytes, name in (("edge-4x4", 1 << 20, "qwen2.5-0.5b"),
                                    ("edge-4x4", 64 << 10, "sheared-llama-1.3b"),
                                    ("edge-4x4", 64 << 10, "tinyllama-1.1b")):
        hw = load_hardware(hw_name).replace(l2_bytes=l2_bytes)
        new, _, new_log = step(hw, name, 511)
        old, _, old_log = step(hw, name, 511, restep_only=True)
        every, _, _ = step(hw, name, 511, every_tile=True)
        rows.append(_emit({
            "section": "slow", "case": "settle", "model": name, "hw": hw.name,
            "l2_bytes": l2_bytes, "position": 511,
            "pipeline_tiles": [len(a[0]) for a, _, _ in new_log["_pipeline"]],
            "pipeline_tiles_restep_only": [len(a[0]) for a, _, _ in old_log["_pipeline"]],
            "cycles": new.cycles, "cycles_restep_only": old.cycles,
            "cycles_every_tile": every.cycles, "load_busy": new.load_busy,
            "load_busy_restep_only": old.load_busy, "load_busy_every_tile": every.load_busy,
            "settle_repeats": sorted({r for _, r, _ in new_log.get("_settle_repeats", [])
                                      if r}),
            # (drift, slack) in cycles of each run found drifting, ``analytic._drift``'s
            "drifts": sorted({(round(d, 3), round(s, 1))
                              for _, (d, s), _ in new_log.get("_drift", []) if d > 0})}))
        if name == "qwen2.5-0.5b":
            # the L2 waits of the first pipeline run, pass by pass: the load whose wait
            # moved most at the last pass
            waits = np.array([a[-1] for a, _, _ in new_log["_l2_waits"][:analytic.
                                                                        CONTENTION_PASSES]])
            j = int(np.argmax(np.abs(waits[-1] - waits[-2])))
            rows.append(_emit({
                "section": "slow", "case": "unsettled_wait", "model": name, "hw": hw.name,
                "l2_bytes": l2_bytes, "position": 511, "passes": len(waits), "load_tile": j,
                "wait_cycles_by_pass": waits[:, j].tolist()}))
    # a new KV length at 64 KiB: the MATMULs timed afresh and what they take
    hw = load_hardware("edge-16x16").replace(l2_bytes=64 << 10)
    _, seconds, log_kv = step(hw, "tinyllama-1.1b", 1100)
    rows.append(_emit({
        "section": "slow", "case": "new_kv_length", "model": "tinyllama-1.1b",
        "hw": hw.name, "l2_bytes": hw.l2_bytes, "position": 1100,
        "matmuls_timed": len(log_kv["matmul_mode"]),
        "matmuls_timed_seconds": round(sum(log_kv["matmul_mode"]), 3),
        # DMA instructions timed afresh (attention's KV prefetches at new places in their
        # pages), and the driver fitting the LM head's chunks to the step's activations
        "dma_timed": len(log_kv.get("dma_occupancy", [])),
        "dma_timed_seconds": round(sum(log_kv.get("dma_occupancy", [])), 4),
        "fit_head_seconds": round(sum(t for *_, t in log_kv.get("fit_head", [])), 4),
        "step_seconds": round(seconds, 3)}))
    rows += [_prefill_matmuls(), _first_step()]
    # edge-32x32 at 64 KiB: the tiles, and one engines' pass over the cut ones
    hw = load_hardware("edge-32x32").replace(l2_bytes=64 << 10)
    _, seconds, log_32 = step(hw, "llama-3.2-1b", 511)
    parts = log_32["_columns"][0][1][0]
    rows.append(_emit({
        "section": "slow", "case": "tiles", "model": "llama-3.2-1b", "hw": hw.name,
        "l2_bytes": hw.l2_bytes, "position": 511, "step_seconds": round(seconds, 3),
        "part_tiles": [len(c) for c in parts],
        "pipeline_tiles": [len(a[0]) for a, _, _ in log_32["_pipeline"]],
        "engine_pass_seconds": [round(t, 4) for *_, t in log_32["_run"]]}))
    return rows


def _prefill_matmuls() -> dict:
    """``slow``'s row of the MATMULs a 1,024-token prefill times and their tiles, timed
    again alone."""
    from arch import occupancy
    from arch.hardware import load_hardware
    from arch.matmul_timing import matmul_timeline
    from models.config import preset
    from sweeps import analytic

    # a 1,024-token prefill: the MATMULs it times (``matmul_timing.matmul_timeline``, compiled)
    # and their tiles, timed again alone
    cfg, hw = preset("tinyllama-1.1b"), load_hardware("edge-16x16").replace(l2_bytes=1 << 20)
    timed, saved_occupancy = [], occupancy._occupancy

    def logged_occupancy(instr, *args):
        if instr.mnemonic == "MATMUL":
            timed.append(instr)
        return saved_occupancy(instr, *args)
    occupancy._occupancy = logged_occupancy
    try:
        analytic.clear_caches()
        occupancy._cache.clear()
        analytic.prefill(cfg, hw, 1024)
    finally:
        occupancy._occupancy = saved_occupancy
        analytic.clear_caches()
    t0 = time.perf_counter()
    tiles = sum(len(matmul_timeline(instr, hw)[1]) for instr in timed)
    return _emit({
        "section": "slow", "case": "prefill_matmuls", "model": cfg.name, "hw": hw.name,
        "l2_bytes": hw.l2_bytes, "prefill_tokens": 1024, "matmuls": len(timed),
        "tiles": tiles, "seconds": round(time.perf_counter() - t0, 3)})


def _first_step() -> dict:
    """``slow``'s row of a first step in a fresh process, with numba's cache of compiled
    kernels emptied and with the project's."""
    from arch.hardware import load_hardware
    from models.config import preset
    from sweeps import analytic

    # the compiled kernels: a first step (a JAX trace and the kernels' loading) in a fresh
    # process with numba's cache emptied, and with the project's (``arch.kernels``)
    first_step = """
import atexit, shutil, sys, tempfile, time
import numba
import arch.kernels
if sys.argv[1] == "empty":
    numba.config.CACHE_DIR = tempfile.mkdtemp()
    atexit.register(shutil.rmtree, numba.config.CACHE_DIR, True)
from arch.hardware import load_hardware
from models.config import preset
from sweeps import analytic
hw = load_hardware("edge-16x16").replace(l2_bytes=1 << 20)
t0 = time.perf_counter()
analytic.decode_step(preset("qwen2.5-0.5b"), hw, 511)
print(time.perf_counter() - t0)
"""
    analytic.decode_step(preset("qwen2.5-0.5b"),              # the project's cache filled
                         load_hardware("edge-16x16").replace(l2_bytes=1 << 20), 511)
    seconds = {cache: float(subprocess.run([sys.executable, "-c", first_step, cache],
                                           check=True, capture_output=True, text=True,
                                           cwd=ROOT).stdout)
               for cache in ("empty", "project")}
    return _emit({
        "section": "slow", "case": "kernels", "model": "qwen2.5-0.5b", "hw": "edge-16x16",
        "l2_bytes": 1 << 20, "position": 511,
        "first_step_seconds_cache_emptied": round(seconds["empty"], 2),
        "first_step_seconds_cached": round(seconds["project"], 2)})


def workload() -> list[dict]:
    from arch.hardware import load_hardware
    from models.config import preset
    from sweeps.analytic import (
        DECODE_SAMPLES,
        PREFILL_SAMPLES,
        decode_step,
        decode_total,
        prefill,
        prefill_chunks,
    )

    rows = []
    # 64 steps after a 448-token prompt; LISO's decode range; the start of SILO's
    for name, l2, first, count in (("qwen2.5-0.5b", 4 << 20, 448, 64),
                                   ("qwen2.5-0.5b", 4 << 20, 1024, 127),
                                   ("qwen2.5-0.5b", 4 << 20, 128, 255),
                                   ("tinyllama-1.1b", 2 << 20, 1024, 127)):
        cfg, hw = preset(name), load_hardware("edge-16x16").replace(l2_bytes=l2)
        t0 = time.perf_counter()
        stepwise = sum(decode_step(cfg, hw, p).cycles for p in range(first, first + count))
        t1 = time.perf_counter()
        for samples in sorted({2, 3, 9, DECODE_SAMPLES}):
            decode_step.cache_clear()        # the steps above are memoised: time them again
            t2 = time.perf_counter()
            total, timed = decode_total(cfg, hw, first, count, samples=samples)
            t3 = time.perf_counter()
            rows.append(_emit({
                "section": "workload", "model": cfg.name, "hw": hw.name, "l2_bytes": l2,
                "first_position": first, "steps": count, "stepwise_cycles": stepwise,
                "sampled_cycles": total, "steps_timed": timed,
                "default": samples == DECODE_SAMPLES,
                "error_pct": round(100 * (total - stepwise) / stepwise, 4),
                "stepwise_seconds": round(t1 - t0, 2), "sampled_seconds": round(t3 - t2, 2)}))
    # prefills in many chunks: every chunk timed against the first, the last and
    # PREFILL_SAMPLES between them
    for name, l2, prompt in (("llama-3.2-1b", 1 << 20, 1024), ("llama-3.2-1b", 256 << 10, 512),
                             ("qwen2.5-0.5b", 1 << 20, 1024),
                             ("sheared-llama-1.3b", 256 << 10, 1024)):
        cfg, hw = preset(name), load_hardware("edge-16x16").replace(l2_bytes=l2)
        t0 = time.perf_counter()
        every = prefill(cfg, hw, prompt, samples=prompt).cycles
        t1 = time.perf_counter()
        sampled = prefill(cfg, hw, prompt).cycles
        t2 = time.perf_counter()
        rows.append(_emit({
            "section": "workload", "model": cfg.name, "hw": hw.name, "l2_bytes": l2,
            "prefill_tokens": prompt, "chunks": len(prefill_chunks(cfg, hw, prompt)),
            "every_chunk_cycles": every, "sampled_cycles": sampled,
            "chunks_timed": 2 + PREFILL_SAMPLES,
            "error_pct": round(100 * (sampled - every) / every, 4),
            "every_chunk_seconds": round(t1 - t0, 2), "sampled_seconds": round(t2 - t1, 2)}))
    return rows


def l2_sweep() -> list[dict]:
    from arch.hardware import load_hardware
    from models.config import preset
    from sweeps.analytic import decode_step

    cfg, base = preset("sheared-llama-1.3b"), load_hardware("edge-16x16")
    rows = []
    for l2 in (1 << 20, 2 << 20, 4 << 20, 16 << 20, 64 << 20, 128 << 20):
        hw = base.replace(l2_bytes=l2)
        on, off = decode_step(cfg, hw, 511, True), decode_step(cfg, hw, 511, False)
        rows.append(_emit({"section": "l2", "model": cfg.name, "hw": hw.name, "l2_bytes": l2,
                           "cycles_on": on.cycles, "cycles_off": off.cycles,
                           "speedup": round(off.cycles / on.cycles, 3),
                           "roofline_on": round(on.dram_read_bytes / hw.dram_bytes_per_cycle
                                                / on.cycles, 3)}))
    return rows


def tp() -> list[dict]:
    from arch.hardware import load_hardware
    from models.config import preset
    from sweeps.analytic import Link, decode_step

    cfg, link = preset("llama-3-8b"), Link()
    # 4 GiB of DRAM per device (the ISA's 32-bit reach): an int8 shard needs 4 devices
    base = load_hardware("edge-16x16").replace(dram_bytes=1 << 32)
    rows = []
    for devices in (4, 8):
        for l2 in (1 << 20, 4 << 20, 16 << 20, 64 << 20):
            hw = base.replace(l2_bytes=l2)
            on = decode_step(cfg, hw, 1000, True, devices, link)
            off = decode_step(cfg, hw, 1000, False, devices, link)
            allreduce = 2 * cfg.n_layers * link.allreduce_seconds(4 * cfg.d_model, devices)
            rows.append(_emit({
                "section": "tp", "model": cfg.name, "hw": hw.name, "devices": devices,
                "l2_bytes": l2, "link_gbytes_per_s": link.gbytes_per_s,
                "link_latency_us": link.latency_us, "ms_on": round(1e3 * on.seconds(hw), 3),
                "ms_off": round(1e3 * off.seconds(hw), 3),
                "allreduce_ms": round(1e3 * allreduce, 3),
                "speedup": round(off.cycles / on.cycles, 3)}))
    return rows


def fidelity() -> list[dict]:
    from arch.hardware import load_hardware
    from compiler.driver import compile_step
    from models.config import preset
    from models.integer import quant_struct
    from sweeps import analytic
    from sweeps.perf import time_program

    def two_layers(name):
        return dataclasses.replace(preset(name), n_layers=2)

    decode = [(preset("tiny"), "edge-8x8", l2, kv) for l2 in (64 << 10, 1 << 20)
              for kv in (6, 100)]
    decode += [(preset("tiny"), "edge-4x4", 256 << 10, kv) for kv in (6, 100)]
    decode += [(two_layers("sheared-llama-1.3b"), "edge-8x8", l2, 200)
               for l2 in (1 << 20, 8 << 20)]
    decode += [(two_layers("qwen2.5-0.5b"), "edge-16x16", l2, 900) for l2 in (2 << 20, 32 << 20)]
    # a staging ring of two slots at 64 KiB, where a decode step takes twice as long at
    # KV 1,096 as at 1,098 (the same DRAM bytes) in both models
    decode += [(dataclasses.replace(preset("tinyllama-1.1b"), n_layers=1), "edge-16x16",
                64 << 10, kv) for kv in (1096, 1098)]
    prefills = [(preset("tiny"), "edge-8x8", 64 << 10, t) for t in (8, 32)]
    prefills += [(preset("tiny"), "edge-4x4", 256 << 10, t) for t in (8, 32)]
    prefills += [(two_layers("sheared-llama-1.3b"), "edge-16x16", l2, 128)
                 for l2 in (4 << 20, 16 << 20)]
    rows = []
    for kind, cases in (("decode", decode), ("prefill", prefills)):
        for cfg, hw_name, l2, n in cases:
            hw = load_hardware(hw_name).replace(l2_bytes=l2)
            for prefetch in (False, True):
                if kind == "decode":
                    build = compile_step(cfg, quant_struct(cfg), hw, n, 1, prefetch=prefetch)
                    step = analytic.decode_step(cfg, hw, n, prefetch)
                else:
                    build = compile_step(cfg, quant_struct(cfg), hw, 0, n, prefetch=prefetch)
                    step = analytic.prefill(cfg, hw, n, prefetch)
                timing = time_program(build.programs[0].instrs, hw)
                exact, fast = timing.cycles, step.cycles
                rows.append(_emit({
                    "section": "fidelity", "kind": kind, "model": cfg.name,
                    "layers": cfg.n_layers, "hw": hw.name, "l2_bytes": l2,
                    "kv_length" if kind == "decode" else "tokens": n, "prefetch": prefetch,
                    "instruction_level_cycles": exact, "fast_path_cycles": fast,
                    "error_pct": round(100 * (fast - exact) / exact, 2),
                    "load_busy_error_pct": round(100 * (step.load_busy - timing.busy["load"])
                                                 / timing.busy["load"], 2),
                    "dram_utilisation": round(timing.dram_utilisation, 3)}))
    return rows


def random_set(n: int = 200, seed: int = 18) -> list[dict]:
    import numpy as np

    from compiler.driver import compile_step
    from models.integer import quant_struct
    from sweeps import analytic
    from sweeps.perf import time_program
    from sweeps.random_steps import random_step

    rng = np.random.default_rng(seed)
    rows, errors = [], []
    for case in range(n):
        step = random_step(rng)
        cfg, hw = step.cfg, step.hw
        build = compile_step(cfg, quant_struct(cfg, step.weights), hw, step.start, step.tokens,
                             prefetch=step.prefetch)
        exact = time_program(build.programs[0].instrs, hw).cycles
        fast = (analytic.decode_step(cfg, hw, step.start, step.prefetch, weights=step.weights)
                if step.tokens == 1 else
                analytic.prefill(cfg, hw, step.tokens, step.prefetch, weights=step.weights))
        error = 100 * (fast.cycles - exact) / exact
        errors.append(abs(error))
        rows.append(_emit({"section": "random", "case": case, "step": step.describe(),
                           "instruction_level_cycles": exact,
                           "fast_path_cycles": fast.cycles, "error_pct": round(error, 2)}))
    rows.append(_emit({"section": "random", "cases": n, "seed": seed,
                       "max_abs_error_pct": round(max(errors), 2),
                       "mean_abs_error_pct": round(sum(errors) / n, 3),
                       "within_1_pct": sum(e <= 1 for e in errors),
                       "within_2_pct": sum(e <= 2 for e in errors)}))
    return rows


def prefill() -> list[dict]:
    from arch.hardware import load_hardware
    from arch.occupancy import occupancy
    from benchmarks.rtl_prefill import projection_matmuls
    from compiler.driver import compile_step
    from models.config import preset
    from models.integer import quant_struct

    cfg = dataclasses.replace(preset("sheared-llama-1.3b"), n_layers=2)
    rows = []
    for name, l2 in (("edge-16x16", 16 << 20), ("edge-16x16", 4 << 20), ("edge-8x8", 1 << 20)):
        hw = load_hardware(name).replace(l2_bytes=l2)
        build = compile_step(cfg, quant_struct(cfg), hw, 0, 128)
        projections = projection_matmuls(build.programs[0].instrs)
        cycles = sum(occupancy(i, hw).cycles for i in projections)
        macs = sum(i.m * i.k * i.n for i in projections)
        rows.append(_emit({
            "section": "prefill", "model": cfg.name, "layers": cfg.n_layers, "hw": hw.name,
            "l2_bytes": l2, "tokens": 128, "chunks": build.programs[0].chunks,
            "projection_cycles": cycles, "pe_utilisation": round(macs / (cycles * hw.pes), 3),
            "modes": {m: sum(1 for i in projections if i.mode == v)
                      for m, v in (("GEMM", 0), ("GEMV", 1))}}))
    return rows


def density() -> list[dict]:
    from sweeps.runner import evaluate_group
    from sweeps.spec import DEFAULT_WORKLOADS as workloads
    from sweeps.spec import DEFAULTS

    paper = {"liso": 247, "silo": 117}
    rows = []
    for workload, l2 in (("liso", 1 << 20), ("silo", 256 << 10), ("liso", 4 << 20),
                         ("silo", 4 << 20)):
        point = {**DEFAULTS, "hw": "edge-16x16", "model": "sheared-llama-1.3b",
                 "node": "16nm", "devices": 1, "prefetch": True, "workload": workload,
                 "weights": "int8", "batch": 1, "l2_bytes": l2}
        r = evaluate_group([point], workloads)[0]
        w = workloads[workload]
        seconds = (r["prefill_cycles"] + r["decode_cycles"]) / 1e9
        core_mm2 = r["logic_mm2"] + r["logic_memory_mm2"] + r["l2_mm2"]
        all_tokens_per_s = (w["prompt"] + w["output"]) / seconds
        rows.append(_emit({
            "section": "density", "model": "sheared-llama-1.3b", "hw": "edge-16x16",
            "node": "16nm", "workload": workload, "l2_bytes": l2,
            "ttft_s": round(r["ttft_s"], 3), "tpot_ms": round(1e3 * r["tpot_s"], 2),
            "generated_tokens_per_s": round(r["tokens_per_s"], 2),
            "all_tokens_per_s": round(all_tokens_per_s, 1),
            "die_mm2": round(r["area_mm2"], 2), "core_mm2": round(core_mm2, 2),
            "logic_mm2": round(r["logic_mm2"], 3),
            "logic_memory_mm2": round(r["logic_memory_mm2"], 2),
            "generated_tokens_per_s_per_die_mm2": round(r["tokens_per_s_per_mm2"], 3),
            "all_tokens_per_s_per_core_mm2": round(all_tokens_per_s / core_mm2, 2),
            "paper_tokens_per_s_per_mm2": paper[workload]}))
    return rows


def cuts() -> list[dict]:
    from arch.hardware import load_hardware
    from models.config import preset
    from sweeps import analytic

    cut_runs, pipeline, factor = analytic._periodic, analytic._pipeline, analytic.SETTLE_FACTOR
    runs = [0]

    def counted(*args, **kwargs):
        runs[0] += 1
        return pipeline(*args, **kwargs)

    def every_tile(tiles, repeats, ring, keep=(), front=None):
        return tiles, (), range(len(tiles))

    def timed(kind, name, hw, x, prefetch, weights, kv_bits, periodic, settle):
        analytic._periodic, analytic._pipeline, analytic.SETTLE_FACTOR = (periodic, counted,
                                                                          settle)
        analytic._plan.cache_clear()            # the runs to cut are part of the plan
        analytic.decode_step.cache_clear()
        runs[0] = 0
        try:
            step = (analytic.decode_step(preset(name), hw, x, prefetch, weights=weights,
                                         kv_bits=kv_bits)
                    if kind == "decode"
                    else analytic.prefill(preset(name), hw, x, prefetch))
        finally:
            analytic._periodic, analytic._pipeline, analytic.SETTLE_FACTOR = (
                cut_runs, pipeline, factor)
        return step, runs[0]

    def pct(a, b):
        return round(100 * (a - b) / b, 4)

    rows = []
    # edge-16x16 from 256 KiB, and every array at 64 KiB, the default sweep's smallest L2
    # (the smallest staging rings: the longest runs of the most tiles)
    steps = (("decode", 130, True, "int8", None), ("decode", 1100, True, "int8", None),
             ("decode", 700, False, "int8", None), ("decode", 700, True, "mxint4", None),
             ("decode", 700, True, "mxint4", 3.0), ("prefill", 128, True, "int8", None),
             ("prefill", 1024, True, "int8", None))
    small = (("decode", 130, True, "int8", None), ("decode", 1000, True, "mxint4", None))
    configs = [("edge-16x16", l2, steps) for l2 in (256 << 10, 512 << 10, 2 << 20, 16 << 20)]
    configs += [(array, 64 << 10, small)
                for array in ("edge-4x4", "edge-8x8", "edge-16x16", "edge-32x32")]
    for name in ("llama-3.2-1b", "qwen2.5-0.5b", "tinyllama-1.1b", "sheared-llama-1.3b"):
        for array, l2, cases in configs:
            hw = load_hardware(array).replace(l2_bytes=l2)
            for kind, x, prefetch, weights, kv_bits in cases:
                case = (kind, name, hw, x, prefetch, weights, kv_bits)
                every, _ = timed(*case, every_tile, factor)
                cut, passes = timed(*case, cut_runs, factor)
                cut1, passes1 = timed(*case, cut_runs, 1)
                rows.append(_emit({
                    "section": "cuts", "model": name, "hw": hw.name, "l2_bytes": l2,
                    "step": kind, "position" if kind == "decode" else "prompt": x,
                    "prefetch": prefetch, "weights": weights, "kv_bits": kv_bits,
                    "cycles_error_pct": pct(cut.cycles, every.cycles),
                    "load_busy_error_pct": pct(cut.load_busy, every.load_busy),
                    "pipeline_runs": passes,
                    "settle_1x_cycles_error_pct": pct(cut1.cycles, every.cycles),
                    "settle_1x_pipeline_runs": passes1}))
    summary = {f"worst_{k}": max(abs(r[k]) for r in rows)
               for k in ("cycles_error_pct", "load_busy_error_pct",
                         "settle_1x_cycles_error_pct")}
    rows.append(_emit({"section": "cuts", "settle_factor": factor, **summary,
                       "decode_load_busy_worst_pct": max(abs(r["load_busy_error_pct"])
                                                         for r in rows
                                                         if r["step"] == "decode"),
                       "pipeline_runs": sum(r["pipeline_runs"] for r in rows),
                       "settle_1x_pipeline_runs": sum(r["settle_1x_pipeline_runs"]
                                                      for r in rows)}))
    return rows


def every_layer(plan, n_layers, ring, l2=()):
    """``analytic._layers`` without its extrapolation: every layer stepped through."""
    from sweeps import analytic

    return analytic._timeline(*analytic._stacked(plan, n_layers), ring, l2)[0]


def layers() -> list[dict]:
    from arch.hardware import load_hardware
    from models.config import preset
    from sweeps import analytic

    extrapolated = analytic._layers

    def step(*args, **kwargs):
        analytic.decode_step.cache_clear()
        return analytic.decode_step(*args, **kwargs)

    def pct(a, b):
        return round(100 * (a - b) / b, 4)

    rows = []
    for name, l2 in itertools.product(("sheared-llama-1.3b", "qwen2.5-0.5b", "tinyllama-1.1b",
                                       "llama-3.2-1b"), (256 << 10, 2 << 20, 16 << 20)):
        cfg, hw = preset(name), load_hardware("edge-16x16").replace(l2_bytes=l2)
        for variant, prefetch in itertools.product(
                ({}, {"weights": "mxint4"}, {"batch": 4}, {"kv_bits": 3.0}), (True, False)):
            args = (cfg, hw, 700, prefetch)
            fast = step(*args, **variant)
            analytic._layers = every_layer
            try:
                full = step(*args, **variant)
            finally:
                analytic._layers = extrapolated
            rows.append(_emit({
                "section": "layers", "model": name, "hw": hw.name, "l2_bytes": l2,
                "position": 700, "prefetch": prefetch, **variant,
                "cycles": full.cycles, "cycles_error": fast.cycles - full.cycles,
                "cycles_error_pct": pct(fast.cycles, full.cycles),
                "load_busy_error_pct": pct(fast.load_busy, full.load_busy),
                "compute_busy_error_pct": pct(fast.compute_busy, full.compute_busy)}))
    rows.append(_emit({"section": "layers", **{
        f"worst_{k}": max(abs(r[k]) for r in rows)
        for k in ("cycles_error_pct", "load_busy_error_pct", "compute_busy_error_pct")},
        "exact_steps": sum(r["cycles_error"] == 0 for r in rows),
        "within_a_cycle": sum(abs(r["cycles_error"]) <= 1 for r in rows), "steps": len(rows)}))
    return rows


def head() -> list[dict]:
    from arch.hardware import load_hardware
    from compiler import driver
    from compiler.backend import chunk_lm_head
    from compiler.batching import batch_graphs
    from compiler.ir import CompileError, LmHead
    from models.config import preset
    from sweeps import analytic

    fitted, batched = analytic.fit_head, analytic.batched_decode_graph
    cases = [("llama-3.2-1b", 1, kib) for kib in (104, 108, 112)]
    cases += [("tinyllama-1.1b", 1, kib) for kib in (56, 57)]
    cases += [("sheared-llama-1.3b", 1, 64)]
    cases += [("llama-3.2-1b", 2, kib) for kib in (1536, 1544, 1552, 1576, 1792)]
    cases += [("sheared-llama-1.3b", 2, kib) for kib in (424, 448, 456, 512)]
    rows = []
    for name, batch, kib in cases:
        cfg, hw = preset(name), load_hardware("edge-16x16").replace(l2_bytes=kib << 10)
        one = analytic._one_layer(cfg)
        graphs = [analytic._lowered(one, "int8", 511, 1, True, b) for b in range(batch)]
        chosen = (driver.batched_decode_graph(graphs, one, hw, "decode") if batch > 1
                  else driver.fit_head(graphs[0], one, hw))
        picked = [op.chunk_cols for op in chosen.ops if isinstance(op, LmHead)]
        for cols in [None, *driver.lm_head_chunk_sizes(cfg.vocab_size)][:6]:
            def option(gs, cols=cols):
                return [g if cols is None else chunk_lm_head(g, cols) for g in gs]
            graph = batch_graphs(option(graphs), "decode") if batch > 1 else option(graphs)[0]
            ring = driver._ring_bytes([graph], one, hw)
            analytic.fit_head = lambda g, c, h, cols=cols: option([g], cols)[0]
            analytic.batched_decode_graph = (
                lambda gs, c, h, n, cols=cols: batch_graphs(option(gs, cols), n))
            analytic.clear_caches()
            try:
                cycles = analytic.decode_step(cfg, hw, 511, batch=batch).cycles
            except CompileError:
                cycles = None
            finally:
                analytic.fit_head, analytic.batched_decode_graph = fitted, batched
            rows.append(_emit({
                "section": "head", "model": name, "hw": hw.name, "l2_bytes": hw.l2_bytes,
                "batch": batch, "head_cols": cols or cfg.vocab_size, "ring_bytes": ring,
                "cycles": cycles,
                "picked": picked == [op.chunk_cols for op in graph.ops
                                     if isinstance(op, LmHead)]}))
    analytic.clear_caches()
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(prog="python -m benchmarks.perf_model",
                            description=__doc__.split("\n\n")[0].rstrip(":"))
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--random", type=int, default=200, metavar="N",
                        help="random steps in the 'random' section (default 200)")
    parser.add_argument("--seed", type=int, default=18, metavar="S",
                        help="the 'random' section's draw (default 18)")
    args = parser.parse_args(argv)
    if args.random < 1:
        parser.error(f"--random must be at least 1, not {args.random}")
    if args.seed < 0:
        parser.error(f"--seed must be at least 0, not {args.seed}")
    runs = {"fast": fast, "slow": slow, "fidelity": fidelity,
            "random": lambda: random_set(args.random, args.seed),
            "workload": workload, "cuts": cuts, "layers": layers, "head": head, "l2": l2_sweep,
            "tp": tp,
            "prefill": prefill, "density": density}
    rows = []
    for name in args.only:
        rows += runs[name]()
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.perf_model")
