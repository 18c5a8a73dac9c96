"""The cocotb bench of the assembled accelerator (run by ``rtl.sim.run_job``).

The job (a JSON file named by ``ACCEL_BENCH_JOB``) gives the programs to run (name and
DRAM offset). The DRAM image is already in the DRAM model's storage when the bench
starts, and its contents are written out when the simulation ends (the SRAM macro's
file backdoor, plusargs ``+dram_image=``/``+dram_dump=`` set by ``run_job``). For each
program the bench sets ``pc``, pulses ``start`` and awaits ``done`` or ``error`` — it
never steps the accelerator from Python — and records the counters and the program's
wall time in ``summary.json``.

Tested by tests/rtl/test_accelerator.py and tests/rtl/test_tiny_rtl.py (every Verilator
run goes through it).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer

from arch.isa import COUNTERS
from arch.uarch import RESET_CYCLES


@cocotb.test()
async def run_job(dut):
    job = json.loads(Path(os.environ["ACCEL_BENCH_JOB"]).read_text())
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    cocotb.start_soon(Clock(dut.clk, 1, unit="ns").start())
    dut.start.value = 0
    dut.pc.value = 0
    # The model's power-on reset (``RESET_CYCLES``), and one cycle more: the bench has always
    # waited one edge past the reset, so that what it sees is unchanged.
    await ClockCycles(dut.clk, RESET_CYCLES + 1)

    results = []
    for name, offset in job["programs"]:
        t0 = time.perf_counter()
        dut.pc.value = offset
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        await ClockCycles(dut.clk, 2)          # start is registered inside the model
        finished = await First(RisingEdge(dut.done), RisingEdge(dut.error),
                               Timer(job["max_cycles"], unit="ns"))   # one callback
        await RisingEdge(dut.clk)
        entry = {"name": name, "done": bool(dut.done.value), "error": bool(dut.error.value),
                 "error_code": int(dut.error_code.value),
                 "error_index": int(dut.error_index.value),
                 "timed_out": not (dut.done.value or dut.error.value),
                 "dram_busy_cycles": int(dut.dram_busy_cycles.value),
                 "counters": {c: int(getattr(dut, f"counter_{c}").value) for c in COUNTERS},
                 "wall_seconds": time.perf_counter() - t0}
        del finished
        results.append(entry)
        if not entry["done"]:
            break

    (out / "summary.json").write_text(json.dumps({"programs": results}))
