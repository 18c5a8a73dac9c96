"""Hardware descriptions: presets load, bad files are refused naming file, key, reason."""

import pytest

from arch.hardware import HardwareError, load_hardware, preset_names
from arch.isa import INSTR_BYTES


def test_presets_are_realistic_edge_points():
    assert {"edge-4x4", "edge-8x8", "edge-16x16", "edge-32x32"} <= set(preset_names())
    for name in preset_names():
        hw = load_hardware(name)
        assert 25 <= hw.dram_gbps <= 100, name
        assert hw.array_rows == hw.array_cols


def write(tmp_path, text):
    path = tmp_path / "hw.toml"
    base = load_hardware("edge-8x8").to_toml()
    path.write_text(base + text)
    return path


def test_unknown_key(tmp_path):
    with pytest.raises(HardwareError, match=r"hw\.toml: unknown key 'l3_bytes'"):
        load_hardware(write(tmp_path, "l3_bytes = 4\n"))


def test_missing_key(tmp_path):
    path = tmp_path / "hw.toml"
    text = "\n".join(line for line in load_hardware("edge-8x8").to_toml().splitlines()
                     if not line.startswith("clock_hz"))
    path.write_text(text)
    with pytest.raises(HardwareError, match=r"hw\.toml: missing key 'clock_hz'"):
        load_hardware(path)


@pytest.mark.parametrize(("line", "message"), [
    ("array_rows = 12", "array_rows = 12 must be a power of two"),
    ("dram_bytes_per_cycle = 0", r"dram_bytes_per_cycle = 0 is out of range \[1, 4096\]"),
    ("l2_bytes = 100", r"l2_bytes = 100 is out of range"),
    ("dram_bytes = 8589934592", r"dram_bytes = 8589934592 is out of range \[1048576, "
     r"4294967296\] \(the ISA's DRAM addresses are 32 bits\)"),
    ("prefetch = 3", "prefetch must be true or false"),
])
def test_out_of_range(tmp_path, line, message):
    path = tmp_path / "hw.toml"
    key = line.split()[0]
    lines = [ln for ln in load_hardware("edge-8x8").to_toml().splitlines()
             if not ln.startswith(key + " ")]
    path.write_text("\n".join(lines + [line]) + "\n")
    with pytest.raises(HardwareError, match=rf"hw\.toml: {message}"):
        load_hardware(path)


def test_unknown_preset():
    with pytest.raises(HardwareError, match="edge-3x3: no such hardware description"):
        load_hardware("edge-3x3")


def test_a_directory_is_refused_by_name(tmp_path):
    with pytest.raises(HardwareError, match="not a file"):
        load_hardware(tmp_path)


@pytest.mark.parametrize(("changes", "field"), [
    ({"dram_bytes_per_cycle": 16}, "array_cols = 16"),        # 16 int32 need a 64-byte line
    ({"array_rows": 128, "l2_port_bytes": 32}, "array_rows = 128"),   # the line is 64 bytes
    # an L2 narrower than a line: one bank of 16 bytes against edge-8x8's 32-byte line
    ({"l2_banks": 1, "l2_port_bytes": 16}, "l2_banks \\* l2_port_bytes = 1 \\* 16"),
])
def test_an_array_the_matmul_unit_cannot_build_is_refused(changes, field):
    base = "edge-8x8" if "l2_banks" in changes else "edge-16x16"
    with pytest.raises(HardwareError, match=field):
        load_hardware(base).replace(**changes)


@pytest.mark.parametrize("bytes_per_cycle", [1, 2, 4, 8, 16, 17, 32, 51, 100])
def test_the_line_holds_an_instruction_and_a_cycle_of_dram(bytes_per_cycle):
    """The line (DRAM word) is a power of two at least one cycle of DRAM bandwidth and at
    least one instruction wide: the controller fetches an instruction as one word (with
    16-byte words at 16 bytes per cycle or less, the RTL received half of every
    instruction and stopped with BAD_OPERAND where the ISA simulator ran)."""
    hw = load_hardware("edge-4x4").replace(dram_bytes_per_cycle=bytes_per_cycle,
                                           l2_port_bytes=32)
    W = hw.line_bytes
    assert W & (W - 1) == 0 and W >= INSTR_BYTES and W >= bytes_per_cycle
    assert W == INSTR_BYTES or W // 2 < bytes_per_cycle
