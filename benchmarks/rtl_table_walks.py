"""Table walks and the loads beside them, on the RTL against the performance model.

Five sets of small programs, one Verilator job a configuration, after a DRAM image
holding only a block table (timing does not depend on the values):

* ``alone``: a ``KV_PREFETCH`` over 1 and 4 KV blocks, and over 5 blocks reading 16
  bytes of each 64-byte row (whose table reads come back behind the block before's
  lines, ``arch.occupancy._answer_behind``), a ``KV_APPEND`` over 3 and a 5-row
  ``DMA_GATHER``, each alone, on every configuration of
  ``sweeps.random_steps.rtl_hardware()``: each block-table entry or index is an int32
  read on the engine's aux port, ``Calibration.int_read`` cycles past the DRAM latency;
* ``queued`` (edge-4x4): a 256-line weight load beside a GEMV, which holds its copier,
  then a ``KV_PREFETCH`` of 8 to 64 tokens: its table reads wait behind the load's lines
  in the DRAM's queue (``sweeps.perf._queued``);
* ``chained`` (edge-4x4): one and two ``KV_PREFETCH``es of 7 blocks of two-line rows,
  alone and beside a GEMV that takes the L2 21 cycles running and leaves it 11: the
  model walks each prefetch through the lines the GEMV leaves, cycle by cycle
  (``arch.occupancy.paced_walk``; docs/perf.md, "Round 60"), each block's table read
  coming back behind the lines its copier has yet to take. The second prefetch's first
  table read, behind the first's last lines in the DRAM's queue (``sweeps.perf._queued``),
  is the gap left;
* ``filled`` (edge-4x4): a 28-line load beside a REQUANT that takes 0.98 of the L2's
  line a cycle: the load waits for it (``sweeps.perf._l2_span``);
* ``beside`` (the 4 x 8 array and edge-8x8 at 64 KiB): a ``KV_PREFETCH`` over 5 blocks
  alone and beside a compute instruction that starts with it, attention's ``P · V`` (KN
  weights) beside one-line rows, a GEMV beside 16 of each 64-byte row: each block's rows
  come in a burst, in which the copier is refused its bank beside a paced stream, and
  the next block's table read comes back behind the burst (``sweeps.perf._bursts_trapped``;
  before it the model was 16 and 8 cycles short here, its rules seeing the prefetch's
  mean rate, at which it loses nothing). And two other shapes beside the ``P · V``: 64
  of each 128-byte row (two lines a row), where the rule charges twice the RTL's loss
  (an open gap), and 32 of each 64-byte row from byte 32.

::

    python -m benchmarks.rtl_table_walks
    python -m benchmarks.rtl_table_walks --only alone --hw edge-8x8 edge-16x16
"""

from __future__ import annotations

import json

from accel.args import ArgumentParser, run_command

SECTIONS = ("alone", "queued", "chained", "filled", "beside")


def run_programs(hw, programs: dict, table_tokens: int = 16,
                 prog: str = "rtl_table_walks") -> list[tuple[str, dict, object]]:
    """``programs`` (name: instructions) on ``hw``'s RTL after an image whose block table
    at 32 KiB maps block i to i: ``(name, RTL counters, model timing)`` each; a program
    that does not finish stops ``prog`` with one line naming it."""
    import numpy as np

    from accel.runtime import image_with_programs
    from arch.isa import make
    from rtl.common import rtl_params
    from rtl.sim import build_model, run_job
    from sweeps.perf import time_program

    image = np.zeros(1 << 18, np.uint8)
    image[1 << 15:(1 << 15) + 4 * table_tokens] = np.arange(table_tokens,
                                                          dtype="<i4").view(np.uint8)
    data, entries = image_with_programs(image, programs)
    job = run_job(build_model(rtl_params(hw, image_bytes=data.size)), data, entries, {})
    out = []
    for (name, program), run in zip(programs.items(), job.programs, strict=True):
        if not run["done"]:
            raise SystemExit(f"{prog}: {hw.name}: program {name} did not finish "
                             f"(error code {run['error_code']})")
        timing = time_program(list(program) + [make("HALT")], hw,
                              lambda a: int(data[a:a + 4].view("<i4")[0]))
        out.append((name, run["counters"], timing))
    return out


def _prefetch(tokens: int, col_bytes: int = 32, row_bytes: int = 128):
    from arch.isa import make

    return make("KV_PREFETCH", pool_addr=1 << 16, table_addr=1 << 15, first_token=0,
                n_tokens=tokens, row_bytes=row_bytes, col_offset=0, col_bytes=col_bytes,
                l2_addr=48 << 10, pool_blocks=16, seq=0, kv_format=0)


def alone(hw_names: list[str]) -> list[dict]:
    from arch.isa import make
    from sweeps.random_steps import rtl_hardware

    rows = []
    for hw in rtl_hardware():
        if hw_names and hw.name not in hw_names:
            continue
        B = hw.kv_block_tokens
        walks = {
            "KV_PREFETCH 1 block": [_prefetch(B // 2)],
            "KV_PREFETCH 4 blocks": [_prefetch(3 * B + 5)],
            # one-line rows the copier writes slower than the DRAM delivers them: each
            # table read comes back behind the block before's lines
            "KV_PREFETCH 5 blocks, 16 of 64 bytes": [_prefetch(5 * B, 16, 64)],
            "KV_APPEND 3 blocks": [make("KV_APPEND", l2_addr=16 << 10, pool_addr=1 << 16,
                                        table_addr=1 << 15, first_token=5, n_tokens=2 * B + 3,
                                        row_bytes=64, pool_blocks=16, seq=0)],
            "DMA_GATHER 5 rows": [make("DMA_GATHER", idx_addr=1 << 15, table_addr=1 << 16,
                                       count=5, row_bytes=100, l2_addr=16 << 10,
                                       l2_stride=100)]}
        for name, counters, timing in run_programs(hw, walks):
            rows.append({"benchmark": "rtl_table_walks", "section": "alone", "hw": hw.name,
                         "program": name, "rtl_cycles": counters["cycles"],
                         "model_cycles": timing.cycles,
                         "model_minus_rtl": timing.cycles - counters["cycles"]})
    return rows


def queued() -> list[dict]:
    from arch.hardware import load_hardware
    from rtl.random_programs import held_prefetch_programs

    hw = load_hardware("edge-4x4")
    return _rows("queued", hw, held_prefetch_programs(hw))


def chained() -> list[dict]:
    from arch.hardware import load_hardware
    from rtl.random_programs import chained_prefetch_programs

    hw = load_hardware("edge-4x4")
    return _rows("chained", hw, chained_prefetch_programs(hw))


def filled() -> list[dict]:
    from arch.hardware import load_hardware
    from rtl.random_programs import filled_l2_programs

    return _rows("filled", load_hardware("edge-4x4"), filled_l2_programs())


def beside() -> list[dict]:
    from rtl.random_programs import prefetch_beside_programs
    from sweeps.random_steps import rtl_hardware

    rows = []
    for hw in rtl_hardware()[:3:2]:                  # edge-8x8 at 64 KiB, the 4 x 8 array
        rows += _rows("beside", hw, prefetch_beside_programs(hw, other_shapes=True))
    return rows


def _rows(section: str, hw, programs: dict) -> list[dict]:
    return [{"benchmark": "rtl_table_walks", "section": section, "hw": hw.name,
             "program": name, "rtl_load_busy": counters["load_busy"],
             "model_load_busy": timing.busy["load"],
             "model_minus_rtl": timing.busy["load"] - counters["load_busy"]}
            for name, counters, timing in run_programs(hw, programs)]


def main(argv: list[str] | None = None) -> list[dict]:
    from sweeps.random_steps import rtl_hardware

    parser = ArgumentParser(prog="python -m benchmarks.rtl_table_walks",
                            description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=SECTIONS, nargs="+", default=list(SECTIONS))
    parser.add_argument("--hw", nargs="+", default=[],
                        help="with alone: configurations of rtl_hardware() by name")
    args = parser.parse_args(argv)
    names = [hw.name for hw in rtl_hardware()]
    for name in args.hw:
        if name not in names:
            parser.error(f"--hw {name}: not one of {', '.join(names)}")
    rows = []
    for section in args.only:
        part = {"alone": lambda: alone(args.hw), "queued": queued, "chained": chained,
                "filled": filled, "beside": beside}[section]()
        for row in part:
            print(json.dumps(row), flush=True)
        rows += part
    print(f"{'section':<8}{'hw':<13}{'program':<38}{'RTL':>8}{'model':>8}{'diff':>6}")
    for r in rows:
        rtl = r.get("rtl_cycles", r.get("rtl_load_busy"))
        model = r.get("model_cycles", r.get("model_load_busy"))
        print(f"{r['section']:<8}{r['hw']:<13}{r['program']:<38}{rtl:>8,}{model:>8,}"
              f"{r['model_minus_rtl']:>+6}")
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.rtl_table_walks")
