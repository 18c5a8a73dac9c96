"""The cocotb bench of the assembled accelerator (run by ``rtl.sim.run_job``).

The job (a JSON file named by ``ACCEL_BENCH_JOB``) gives the DRAM image, the programs to
run (name and DRAM offset) and the DRAM ranges to read back. The bench loads the image
into the DRAM model's storage, then for each program sets ``pc``, pulses ``start`` and
awaits ``done`` or ``error`` — it never steps the accelerator from Python — and records
the counters. Finally it writes ``summary.json`` and one ``<name>.bin`` per range.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer

from compiler.isa import COUNTERS


def _storage(dut):
    return dut.dram.storage.macro.mem


@cocotb.test()
async def run_job(dut):
    job = json.loads(Path(os.environ["ACCEL_BENCH_JOB"]).read_text())
    W = job["line_bytes"]
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    cocotb.start_soon(Clock(dut.clk, 1, unit="ns").start())
    dut.start.value = 0
    dut.pc.value = 0
    await ClockCycles(dut.clk, 4)          # the model's power-on reset

    image = np.fromfile(job["image"], dtype=np.uint8)
    image = np.concatenate([image, np.zeros((-image.size) % W, np.uint8)])
    mem = _storage(dut)
    for i, line in enumerate(image.reshape(-1, W)):
        if line.any():
            mem[i].value = int.from_bytes(line.tobytes(), "little")

    results = []
    for name, offset in job["programs"]:
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
                 "counters": {c: int(getattr(dut, f"counter_{c}").value) for c in COUNTERS}}
        del finished
        results.append(entry)
        if not entry["done"]:
            break

    for name, (offset, size) in job["reads"].items():
        first, last = offset // W, (offset + size + W - 1) // W
        raw = bytearray()
        for i in range(first, last):
            raw += int(mem[i].value).to_bytes(W, "little")
        start = offset - first * W
        (out / f"{name}.bin").write_bytes(bytes(raw[start:start + size]))
    (out / "summary.json").write_text(json.dumps({"programs": results}))
