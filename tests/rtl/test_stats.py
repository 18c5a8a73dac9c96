"""Synthesis statistics per component, from the built-in Yosys, and Verilog emission."""

import json

from accel.cli import main
from arch.hardware import load_hardware
from rtl.common import RtlParams
from rtl.stats import synth_stats

# edge-4x4 with one vector lane: the vector unit's per-lane lookup tables are most of the
# netlist, and converting it takes about half as long with one lane as with four.
SMALL_HW = load_hardware("edge-4x4").replace(name="edge-4x4-one-lane", vector_lanes=1)


def test_stats_cover_every_component_and_scale_with_l2():
    # 64 MiB of DRAM, as `accel rtl stats` and the cost model take them: the cache is shared.
    # The second design has a wider DRAM word (64 bytes) and twice the L2. (Each Yosys
    # run takes minutes: two designs are enough to see both scale.)
    small_hw = SMALL_HW
    wide_hw = small_hw.replace(dram_bytes_per_cycle=64, l2_port_bytes=16,
                               l2_bytes=2 * small_hw.l2_bytes)
    small = synth_stats(RtlParams(small_hw, 64 << 20, macros=True))
    wide = synth_stats(RtlParams(wide_hw, 64 << 20, macros=True))
    for s, hw in ((small, small_hw), (wide, wide_hw)):
        assert {"controller", "load", "store", "l2", "dram_arbiter"} <= set(s["components"])
        assert s["components"]["l2"]["macro_bits"] == 8 * hw.l2_bytes
        assert s["components"]["controller"]["flip_flop_bits"] > 0
        assert s["total"]["gate_equivalents"] > 10_000
    # A wider DRAM word makes the DMA engines bigger.
    assert wide["components"]["load"]["flip_flop_bits"] > small["components"]["load"][
        "flip_flop_bits"]


def test_cli_verilog_and_stats(tmp_path, capsys):
    # A hardware file, as users give their own (its statistics cached by the test above).
    hw_file = tmp_path / "small.toml"
    hw_file.write_text(SMALL_HW.to_toml())
    assert main(["rtl", "verilog", "--hw", str(hw_file), "-o", str(tmp_path)]) == 0
    text = (tmp_path / "sim_top.v").read_text()
    assert "module sim_top" in text and "sram_macro" in text
    assert main(["rtl", "stats", "--hw", str(hw_file), "--json"]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out[out.index("{"):])
    assert stats["hardware"] == SMALL_HW.name and stats["total"]["cells"] > 0
