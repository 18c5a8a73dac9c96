"""The L2 between the load engine's copier and the compute engine, on the RTL (Verilator):
a weight load beside one GEMV, the load's busy cycles against the performance model's
(``arch.matmul_timing._refusals``: the copier stepped through the unit's bank grants), on
the suite's edge-8x8 at 64 KiB, whose DRAM feeds a line a cycle (``python -m
benchmarks.rtl_pairs`` runs nine row lengths and prints the table); and on edge-4x4,
whose L2 moves one line a cycle, a load beside a compute that takes nearly all of it,
and a KV prefetch whose table read waits behind a held load's lines in the DRAM; a KV
prefetch's bursts beside attention's ``P · V`` on edge-8x8; on both,
stores beside the streams above them in the L2 and a load's DRAM reads."""

import numpy as np
import pytest

from accel.runtime import image_with_programs
from arch.hardware import load_hardware
from arch.isa import make
from rtl.common import rtl_params
from rtl.random_programs import (
    chained_prefetch_programs,
    filled_l2_programs,
    held_append_programs,
    held_prefetch_programs,
    prefetch_beside_programs,
    store_programs,
)
from rtl.sim import build_model, run_job
from sweeps.perf import time_program

pytestmark = pytest.mark.slow


def test_a_load_beside_a_gemv_loses_the_cycles_the_model_steps():
    """Beside GEMVs over 64 weight rows of 100 and 249 bytes, each row beginning in the
    line the one before ended in (read again), a 504-line load loses 30 or more cycles
    on the RTL; beside rows of 256 bytes, a few. The model's load busy is within 8
    cycles of the RTL's in each (before the copier was stepped through the grants it
    charged the idle steps alone and was 35 short beside the 249-byte rows)."""
    hw = load_hardware("edge-8x8").replace(l2_bytes=64 << 10)
    W = hw.line_bytes
    load = make("DMA_LOAD", dram_addr=1 << 16, l2_addr=32 << 10, rows=168, row_bytes=96,
                dram_stride=96, l2_stride=96)
    programs = {"load": [load]}
    for k in (100, 249, 256):
        gemv = make("MATMUL", mode=1, accumulate=0, w_layout=0, w_format=0, e_addr=0, m=1,
                    k=k, n=64, x_addr=W, w_addr=16 << 10, out_addr=8 << 10, x_stride=k,
                    w_stride=k, out_stride=256)
        programs[k] = [gemv, load]
    rtl, model = _busy(hw, programs)
    lost = {k: rtl[k] - rtl["load"] for k in (100, 249, 256)}
    assert min(lost[100], lost[249]) >= 30 and lost[256] <= 10, lost
    for name in programs:
        assert abs(model[name] - rtl[name]) <= 8, (name, model, rtl)


def test_a_load_beside_a_rope_trails_its_streams_bank_by_bank():
    """A ROPE over 27 tokens of 16 heads of 16 (a random prefill's on a 4 x 8 array,
    every head reading its token's frequency line again) moves 1.7 of edge-8x8's four
    L2 lines a cycle, yet a 504-line load beside it writes about one in five cycles:
    its copier, below the unit's ports, waits in each bank until the unit's streams move
    on, then finds them in the next (``vector_timing._copier_step``). On the RTL the
    load is busy 1,601 cycles, 611 alone; the model's is within 8 (taking the unit's
    lines as spread over the banks, it had the load not held: 611)."""
    hw = load_hardware("edge-8x8").replace(l2_bytes=64 << 10)
    load = make("DMA_LOAD", dram_addr=1 << 16, l2_addr=32 << 10, rows=168, row_bytes=96,
                dram_stride=96, l2_stride=96)
    rope = make("ROPE", src_addr=(16 << 10) + 2 * hw.line_bytes, dst_addr=8 << 10, rows=27,
                heads=16, head_dim=16, pos0=0, freq_addr=0, row_stride=256)
    rtl, model = _busy(hw, {"alone": [load], "beside": [rope, load]})
    assert rtl["beside"] > 2 * rtl["alone"], rtl
    for name in rtl:
        assert abs(model[name] - rtl[name]) <= 8, (name, model, rtl)


def _busy(hw, programs: dict, image_bytes: int = 1 << 17,
          engine: str = "load") -> tuple[dict, dict]:
    """``programs`` run on ``hw``'s RTL after a zero image (a block table of zeros) and
    timed by the model: each one's ``engine`` busy cycles, ``(rtl, model)``."""
    data, entries = image_with_programs(np.zeros(image_bytes, np.uint8),
                                        {str(k): p for k, p in programs.items()})
    job = run_job(build_model(rtl_params(hw, image_bytes=data.size)), data, entries, {})
    assert not any(e["timed_out"] or e["error"] for e in job.programs), job.programs
    rtl = {name: e["counters"][f"{engine}_busy"]
           for name, e in zip(programs, job.programs, strict=True)}
    model = {name: time_program(p + [make("HALT")], hw).busy[engine]
             for name, p in programs.items()}
    return rtl, model


def test_a_load_beside_a_compute_that_fills_the_l2_waits_for_its_end():
    """On edge-4x4 a REQUANT of int32 rows with per-column words takes 0.98 of the L2's
    one line a cycle (each operand half a line a beat), and a 28-line load beside it
    gets its lines only once the REQUANT is done: 1,181 busy cycles on the RTL, 115
    alone. The model's is within 8 (``sweeps.perf._l2_span``: the load's L2 wait at its
    fixed point; stepped a pass at a time, it stopped at 472)."""
    rtl, model = _busy(load_hardware("edge-4x4"), filled_l2_programs(), 1 << 18)
    assert rtl["beside"] > 5 * rtl["alone"], rtl
    for name in rtl:
        assert abs(model[name] - rtl[name]) <= 8, (name, model, rtl)


def test_a_kv_prefetchs_table_read_waits_behind_the_loads_lines_queued_in_the_dram():
    """Beside a GEMV on edge-4x4 a 256-line load's copier writes slower than the DRAM
    delivers, the DRAM's queue fills with its lines, and the block-table read of the
    ``KV_PREFETCH`` after it (on the load engine's own aux port) comes back only after
    them (``sweeps.perf._queued``, as for a store's). The model's load busy is within 10
    cycles of the RTL's prefetching 8 or 16 tokens (one KV block; without the queue's
    wait 86 and 83 short), and within 15 prefetching 32 or 64 (2 and 4 blocks, written
    in bursts between their table reads, ``sweeps.perf._burst_wait``, and since round 60
    walked through the lines the GEMV leaves, ``_prefetch_wait``: 2 over each; without
    either 41 and 63 short)."""
    hw = load_hardware("edge-4x4")
    rtl, model = _busy(hw, held_prefetch_programs(hw), 1 << 18)
    for name in rtl:
        bound = 10 if name.endswith((" 8", " 16")) else 15
        assert abs(model[name] - rtl[name]) <= bound, (name, model, rtl)


def test_a_kv_appends_later_table_reads_wait_behind_the_loads_lines_queued_in_the_dram():
    """A three-block ``KV_APPEND`` begun with a 256-line load beside a GEMV on edge-4x4:
    its first table read goes out before the load's lines fill the DRAM's queue, its
    second and third come back after them and after its own block before, and it is
    busy 854 cycles on the RTL, 305 alone. The model's is within 35
    (``sweeps.perf._later_table_waits``: 34 over, each later read's wait about 20 long;
    charged only its first read's wait it was 549 short); one block beside both within
    21 (still 20 short), the appends beside the load alone within 8 (3 short).
    Beside the GEMV alone the last block's rows, which end the append, are read in the
    L2 lines the GEMV leaves (``_last_block_l2_wait``): within 8 (three blocks: 23
    short with the GEMV's lines spread over the append's whole interval)."""
    hw = load_hardware("edge-4x4")
    rtl, model = _busy(hw, held_append_programs(hw), 1 << 18, engine="store")
    assert rtl["beside 3"] > 2 * rtl["alone 3"] and rtl["gemv 3"] > rtl["alone 3"] + 20, rtl
    for name in rtl:
        bound = {"beside 3": 35, "beside 1": 21}.get(name, 8)
        assert abs(model[name] - rtl[name]) <= bound, (name, model, rtl)


def test_a_kv_prefetchs_walk_takes_the_lines_a_gemv_leaves_it_cycle_by_cycle():
    """On edge-4x4 a GEMV of 128-byte weight rows takes the L2's one line 21 cycles
    running and leaves it 11; a ``KV_PREFETCH`` of 7 blocks beside it writes each block's
    two-line rows in the gaps, and each block's table read comes back behind the lines
    its copier has yet to take. The model walks the prefetch through the lines the GEMV
    leaves, cycle by cycle (``arch.occupancy.paced_walk``, the GEMV's grants
    ``Occupancy.l2_moves``): its load busy is within 3 cycles of the RTL's alone and
    beside the GEMV with one prefetch (before it, 331 over beside it: its lines were
    charged the GEMV's mean pace, ``sweeps.perf._burst_wait``), and within 30 with two,
    the second's first table read waiting behind the first's last lines in the DRAM's
    queue (``sweeps.perf._queued``, which spreads those lines evenly over the first's
    interval: 11 cycles late here; before, 494 over)."""
    hw = load_hardware("edge-4x4")
    rtl, model = _busy(hw, chained_prefetch_programs(hw), 1 << 18)
    assert rtl["beside 1"] > rtl["alone 1"] + 50, rtl
    for name in rtl:
        bound = 30 if name == "beside 2" else 3
        assert abs(model[name] - rtl[name]) <= bound, (name, model, rtl)


def test_a_kv_prefetchs_bursts_are_held_behind_p_v_and_the_blocks_after_them():
    """On edge-8x8 at 64 KiB a ``KV_PREFETCH`` over 5 KV blocks writes each block's
    one-line rows in a burst, a line a cycle; beside attention's ``P · V`` its copier is
    refused its bank in some bursts, and the next block's table read comes back behind
    them: 10 or more cycles longer on the RTL than alone. The model's load busy is
    within 3 cycles of the RTL's, alone and beside ``P · V`` and a GEMV
    (``sweeps.perf._bursts_trapped``; before it, 16 and 8 short beside them)."""
    hw = load_hardware("edge-8x8").replace(l2_bytes=64 << 10)
    rtl, model = _busy(hw, prefetch_beside_programs(hw), 1 << 18)
    wide = "KV_PREFETCH 5 blocks of 32 of 128 bytes"
    assert rtl["the same beside P · V"] >= rtl[wide] + 10, rtl
    for name in rtl:
        assert abs(model[name] - rtl[name]) <= 3, (name, model, rtl)


@pytest.mark.parametrize("name", ["edge-8x8", "edge-4x4"])
def test_a_store_is_held_by_the_streams_above_it_and_the_loads_dram_reads(name):
    """The logits ``DMA_STORE`` beside the ``ARGMAX`` reading the same rows loses 10 or
    more cycles on the RTL, on edge-8x8 at 64 KiB (a stream the copier trails bank by
    bank, ``sweeps.perf._trapped``) and on edge-4x4 (its L2 reads, the copier's read
    side, share the one line a cycle); beside the ``REQUANT`` writing them too, over 100.
    A ``KV_APPEND`` beside a load's DRAM reads loses a few. The model's store busy is
    within 6 cycles of the RTL's on each (before stores were trapped and their L2 and
    DRAM intervals were their copier's sides it was 12, 134 and 11 short beside the
    ``ARGMAX``, the ``REQUANT`` and on edge-4x4; ``python -m benchmarks.rtl_stores``)."""
    hw = load_hardware(name)
    if name == "edge-8x8":
        hw = hw.replace(l2_bytes=64 << 10)
    rtl, model = _busy(hw, store_programs(hw), 1 << 18, engine="store")
    assert rtl["argmax"] >= rtl["store"] + 10, rtl
    if "requant" in rtl:
        assert rtl["requant"] >= rtl["store"] + 100, rtl
        assert rtl["append + load"] > rtl["append"], rtl
    for program in rtl:              # (the load alone has no store: 0 on both)
        assert abs(model[program] - rtl[program]) <= 6, (program, model, rtl)
