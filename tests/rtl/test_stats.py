"""Synthesis statistics per component, from the built-in Yosys, and Verilog emission."""

import json

from accel.cli import VERILOG_FILES, main
from arch.hardware import load_hardware
from rtl.common import RtlParams
from rtl.stats import memory_bits, synth_stats

# edge-4x4 with one vector lane at 64 MiB of DRAM, as the cost model synthesises its logic
# (sweeps.cost.logic_stats) for the sweep in tests/sweeps/test_sweeps.py, which finds it
# cached. Each conversion and Yosys run takes tens of seconds, so the suite synthesises
# this one design; ``accel rtl stats --hw FILE`` prints any other's.
SMALL_HW = load_hardware("edge-4x4").replace(vector_lanes=1)


def test_stats_cover_every_component():
    s = synth_stats(RtlParams(SMALL_HW, 64 << 20, macros=True))
    assert {"controller", "load", "store", "l2", "dram_arbiter", "compute"} <= set(s["components"])
    # the L2 is its SRAM macros, whole; every other component is logic
    assert s["components"]["l2"]["macro_bits"] == 8 * SMALL_HW.l2_bytes
    assert all(c["macro_bits"] == 0 for name, c in s["components"].items() if name != "l2")
    for name in ("controller", "load", "store", "compute"):
        assert s["components"][name]["flip_flop_bits"] > 0, name
    assert s["total"]["gate_equivalents"] > 10_000
    # the whole is the sum of its components
    assert s["total"]["flip_flop_bits"] == sum(c["flip_flop_bits"]
                                               for c in s["components"].values())


def test_cli_verilog_and_stats(tmp_path, capsys):
    # A hardware file, as users give their own (its statistics cached by the test above).
    hw_file = tmp_path / "small.toml"
    hw_file.write_text(SMALL_HW.to_toml())
    # a folder holding only the files it writes (an earlier run's: written again; one
    # conversion, ~15 s, instead of two) -- a folder of other files is refused
    out = tmp_path / "verilog"
    out.mkdir()
    for name in VERILOG_FILES:
        (out / name).write_text("// an earlier run's\n")
    assert main(["rtl", "verilog", "--hw", str(hw_file), "-o", str(out)]) == 0
    text = (out / "sim_top.v").read_text()
    assert "module sim_top" in text and "sram_macro" in text
    assert "module sram_macro" in (out / "sram_macro.v").read_text()
    assert main(["rtl", "stats", "--hw", str(hw_file), "--json"]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out[out.index("{"):])
    assert stats["hardware"] == SMALL_HW.name and stats["total"]["cells"] > 0


def test_a_rom_counts_once_a_read_port_and_a_ram_once():
    """``memory_bits`` of Yosys ``$mem_v2`` cells (parameters as Yosys writes them: binary
    strings): a ROM of 1,024 x 16 bits read by 8 lanes is 8 ROMs; a RAM with a write port
    and 3 read ports is its bits once."""
    def cell(wr_ports, rd_ports):
        return {"parameters": {"WIDTH": format(16, "032b"), "SIZE": format(1024, "032b"),
                               "WR_PORTS": format(wr_ports, "032b"),
                               "RD_PORTS": format(rd_ports, "032b")}}

    assert memory_bits(cell(0, 8)) == 8 * 16 * 1024
    assert memory_bits(cell(1, 3)) == 16 * 1024
