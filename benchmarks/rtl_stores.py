"""Stores beside the engines that slow them, on the RTL against the performance model.

The store engine's copier reads its rows from the L2 below the compute engine's ports and
writes them to the DRAM in its round-robin with instruction fetch and the load engine
(``sweeps.perf._contention``). Small programs (``rtl.random_programs.store_programs``,
operands from random steps' programs), one Verilator job a configuration:

* edge-8x8 at 64 KiB (four line-wide banks): the logits ``DMA_STORE`` alone, beside the
  ``ARGMAX`` that reads the same rows (a stream of a line every four cycles the copier
  trails bank by bank, ``sweeps.perf._trapped``), and beside the ``REQUANT`` that writes
  them as well; a one-token ``KV_APPEND`` alone and beside a 512-line load, whose DRAM
  reads take every other line from its writes;
* edge-4x4 (one line-wide bank): the logits store alone and beside its ``ARGMAX``: the
  store's L2 reads are its copier's read side, not the whole interval from its start;
* edge-8x8 at 2 DRAM bytes a cycle: a one-token ``KV_APPEND`` of one and of eight lines
  alone: its first line goes on the DRAM's credit (``sweeps.perf._store_dram_wait``),
  its table read a line's bandwidth after the last fetch read (``_request_wait``); two
  of eight lines beside a ``KV_PREFETCH`` whose table reads run ahead of its data, a
  client of their own (``_table_reads``); a 7-line ``DMA_STORE`` and the counters behind
  it (``_copier_behind``).

::

    python -m benchmarks.rtl_stores
"""

from __future__ import annotations

import json

from accel.args import ArgumentParser, run_command


def hardware() -> list:
    """The three configurations: ``sweeps.random_steps.rtl_hardware()``'s edge-8x8 at 64
    KiB, edge-4x4 and edge-8x8 at 2 bytes a cycle."""
    from sweeps.random_steps import rtl_hardware

    return [hw for hw in rtl_hardware() if hw.name in ("edge-8x8", "edge-4x4", "edge-8x8-2B")]


def run() -> list[dict]:
    from benchmarks.rtl_table_walks import run_programs
    from rtl.random_programs import store_programs

    rows = []
    for hw in hardware():
        for name, counters, timing in run_programs(hw, store_programs(hw), prog="rtl_stores"):
            rows.append({"benchmark": "rtl_stores", "hw": hw.name, "program": name,
                         "rtl_store_busy": counters["store_busy"],
                         "model_store_busy": timing.busy["store"],
                         "rtl_cycles": counters["cycles"], "model_cycles": timing.cycles})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(prog="python -m benchmarks.rtl_stores",
                            description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    rows = run()
    for row in rows:
        print(json.dumps(row), flush=True)
    print(f"{'hw':<13}{'program':<20}{'store busy RTL':>15}{'model':>7}{'diff':>6}"
          f"{'cycles RTL':>12}{'model':>8}")
    for r in rows:
        print(f"{r['hw']:<13}{r['program']:<20}{r['rtl_store_busy']:>15,}"
              f"{r['model_store_busy']:>7,}{r['model_store_busy'] - r['rtl_store_busy']:>+6}"
              f"{r['rtl_cycles']:>12,}{r['model_cycles']:>8,}")
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.rtl_stores")
