"""Synthesis statistics per component, from the built-in Yosys, and Verilog emission."""

import json

from accel.cli import main
from arch.hardware import load_hardware
from rtl.common import RtlParams
from rtl.stats import synth_stats

# edge-4x4 with one vector lane at 64 MiB of DRAM, as the cost model synthesises its logic
# (sweeps.cost.logic_stats) for the sweep in tests/sweeps/test_sweeps.py, which finds it
# cached. (The vector unit's per-lane lookup tables are most of the netlist: converting
# it takes about half as long with one lane as with four.) The second design has a
# wider DRAM word (64 bytes against the smallest line's 32) and twice the L2. (Each
# Yosys run takes most of a minute: two designs are enough to see both scale.)
SMALL_HW = load_hardware("edge-4x4").replace(vector_lanes=1)
WIDE_HW = SMALL_HW.replace(name="edge-4x4-wide-one-lane", dram_bytes_per_cycle=64,
                           l2_port_bytes=16, l2_bytes=2 * SMALL_HW.l2_bytes)


def test_stats_cover_every_component_and_scale_with_l2():
    small = synth_stats(RtlParams(SMALL_HW, 64 << 20, macros=True))
    wide = synth_stats(RtlParams(WIDE_HW, 64 << 20, macros=True))
    for s, hw in ((small, SMALL_HW), (wide, WIDE_HW)):
        assert {"controller", "load", "store", "l2", "dram_arbiter"} <= set(s["components"])
        assert s["components"]["l2"]["macro_bits"] == 8 * hw.l2_bytes
        assert s["components"]["controller"]["flip_flop_bits"] > 0
        assert s["total"]["gate_equivalents"] > 10_000
    # A wider DRAM word makes the DMA engines bigger.
    assert wide["components"]["load"]["flip_flop_bits"] > small["components"]["load"][
        "flip_flop_bits"]


def test_cli_verilog_and_stats(tmp_path, capsys):
    # A hardware file, as users give their own (its statistics cached by the test above).
    hw_file = tmp_path / "wide.toml"
    hw_file.write_text(WIDE_HW.to_toml())
    assert main(["rtl", "verilog", "--hw", str(hw_file), "-o", str(tmp_path)]) == 0
    text = (tmp_path / "sim_top.v").read_text()
    assert "module sim_top" in text and "sram_macro" in text
    assert main(["rtl", "stats", "--hw", str(hw_file), "--json"]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out[out.index("{"):])
    assert stats["hardware"] == WIDE_HW.name and stats["total"]["cells"] > 0
