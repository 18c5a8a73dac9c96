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
  it (``_copier_behind``);
* stores from a full DRAM credit (``--only credit``), which holds a line and a cycle's
  bytes, so that on the RTL their first two lines go a cycle apart, then a line's
  bandwidth apart (the model's ``_store_dram_wait`` lets only the first go early:
  docs/perf.md, "Round 65"): on edge-16x16 at its 51 bytes a cycle, one-row ``DMA_STORE``s
  alone, rows of 40, 64, 1,000 and 4,084 bytes from and to 0, 8 and 20 bytes into their
  lines (``one_row_stores``); on edge-8x8 at 2 bytes a cycle, a one-token
  ``KV_APPEND`` of one and of eight lines after a load, the fetch reads long done
  (``appends_after_a_load``).

::

    python -m benchmarks.rtl_stores [--only stores credit]  # stores by default
"""

from __future__ import annotations

import json

from accel.args import ArgumentParser, run_command


def hardware() -> list:
    """The three configurations: ``sweeps.random_steps.rtl_hardware()``'s edge-8x8 at 64
    KiB, edge-4x4 and edge-8x8 at 2 bytes a cycle."""
    from sweeps.random_steps import rtl_hardware

    return [hw for hw in rtl_hardware() if hw.name in ("edge-8x8", "edge-4x4", "edge-8x8-2B")]


def one_row_stores() -> dict:
    """One-row ``DMA_STORE``s, ``{name: [instruction]}``: rows of 40, 64, 1,000 and 4,084
    bytes read from 0, 8 or 20 bytes into an L2 line at 8 KiB and written to as far into a
    DRAM line at 128 KiB."""
    import itertools

    from arch.isa import make

    return {f"store {n} from {s} to {d}": [make(
        "DMA_STORE", l2_addr=(8 << 10) + s, dram_addr=(1 << 17) + d, rows=1, row_bytes=n,
        l2_stride=n, dram_stride=n)]
        for n in (40, 64, 1000, 4084) for s, d in itertools.product((0, 8, 20), repeat=2)}


def appends_after_a_load(hw) -> dict:
    """A 2 KiB ``DMA_LOAD``, then a one-token ``KV_APPEND`` of one and of eight lines that
    waits for it (tests/sweeps/test_perf_model.py's
    ``test_a_stores_first_line_goes_on_the_drams_credit``), ``{name: instructions}``."""
    from arch.isa import Engine, make

    load = make("DMA_LOAD", dram_addr=1 << 17, l2_addr=8192, rows=1, row_bytes=2048,
                dram_stride=2048, l2_stride=2048, signal=1 << int(Engine.STORE))
    return {f"append of {n} after a load": [load, make(
        "KV_APPEND", l2_addr=2048, pool_addr=1 << 16, table_addr=1 << 15, first_token=100,
        n_tokens=1, row_bytes=n * hw.line_bytes, pool_blocks=7, seq=0,
        wait=1 << int(Engine.LOAD))] for n in (1, 8)}


def run(only: tuple[str, ...] = ("stores",)) -> list[dict]:
    from benchmarks.rtl_table_walks import run_programs
    from rtl.random_programs import store_programs
    from sweeps.random_steps import rtl_hardware

    runs = [(hw, store_programs(hw)) for hw in hardware()] if "stores" in only else []
    if "credit" in only:
        by_name = {hw.name: hw for hw in rtl_hardware()}
        runs += [(by_name["edge-16x16"], one_row_stores()),
                 (by_name["edge-8x8-2B"], appends_after_a_load(by_name["edge-8x8-2B"]))]
    rows = []
    for hw, programs in runs:
        for name, counters, timing in run_programs(hw, programs, prog="rtl_stores"):
            rows.append({"benchmark": "rtl_stores", "hw": hw.name, "program": name,
                         "rtl_store_busy": counters["store_busy"],
                         "model_store_busy": timing.busy["store"],
                         "rtl_cycles": counters["cycles"], "model_cycles": timing.cycles})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(prog="python -m benchmarks.rtl_stores",
                            description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=("stores", "credit"),
                        default=["stores"])
    args = parser.parse_args(argv)
    rows = run(tuple(args.only))
    for row in rows:
        print(json.dumps(row), flush=True)
    print(f"{'hw':<13}{'program':<28}{'store busy RTL':>15}{'model':>7}{'diff':>6}"
          f"{'cycles RTL':>12}{'model':>8}")
    for r in rows:
        print(f"{r['hw']:<13}{r['program']:<28}{r['rtl_store_busy']:>15,}"
              f"{r['model_store_busy']:>7,}{r['model_store_busy'] - r['rtl_store_busy']:>+6}"
              f"{r['rtl_cycles']:>12,}{r['model_cycles']:>8,}")
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.rtl_stores")
