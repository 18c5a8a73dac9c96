"""Benchmark: what building a Verilator model of the accelerator costs.

For each hardware description, builds ``SimTop`` from scratch into a temporary folder
(nothing cached) with the suite's DRAM size and prints one JSON line: the seconds
Amaranth takes to convert it to Verilog, the seconds of the whole build (Verilator and
the C++ compiler on every core included), and the sizes of the Verilog and of Verilator's
C++. These are the set-up cost of every RTL test module on a fresh clone::

    python -m benchmarks.rtl_build                      # edge-4x4 and edge-8x8
    python -m benchmarks.rtl_build --hw edge-16x16
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from accel.args import ArgumentParser, run_command


def main(argv: list[str] | None = None) -> list[dict]:
    from arch.hardware import load_hardware
    from rtl.common import RtlParams
    from rtl.random_programs import DRAM_BYTES
    from rtl.sim import build_model

    parser = ArgumentParser(prog="python -m benchmarks.rtl_build")
    parser.add_argument("--hw", nargs="*", default=["edge-4x4", "edge-8x8"])
    args = parser.parse_args(argv)
    rows = []
    for name in args.hw:
        hw = load_hardware(name)
        with tempfile.TemporaryDirectory() as tmp:
            model = build_model(RtlParams(hw, DRAM_BYTES), build_root=Path(tmp))
            verilog = model.directory / "verilog" / "sim_top.v"
            cpp = sum(f.stat().st_size for f in (model.directory / "sim_build").glob("*.cpp"))
            row = {"bench": "rtl_build", "hw": name,
                   "verilog_seconds": round(model.verilog_seconds, 1),
                   "build_seconds": round(model.build_seconds, 1),
                   "verilog_bytes": verilog.stat().st_size, "cpp_bytes": cpp}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.rtl_build")
