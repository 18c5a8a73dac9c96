"""The hardware description: one frozen dataclass for every accelerator parameter.

Contract
--------
``HardwareConfig`` is the single description that the compiler, the ISA simulator, the
RTL generator, the performance model and the cost model all take. It validates every
field on construction (``HardwareError`` names the field and the reason). Presets live
as TOML files in ``configs/``; ``load_hardware(path_or_name)`` reads one and refuses
unknown keys, missing keys and out-of-range values with the file, the key and the reason.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from arch.isa import DRAM_ADDR_BITS, INSTR_BYTES, PARAM_WORD_BYTES, MatmulMode
from arch.uarch import GEMM_ROW_FACTOR, TILE_LINES

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class HardwareError(ValueError):
    """A hardware description that cannot be built."""


def _pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


@dataclass(frozen=True)
class HardwareConfig:
    """Parameters of the edge accelerator.

    Parameters
    ----------
    name : preset name.
    array_rows, array_cols : processing elements of the hybrid systolic array.
    vector_lanes : elements the vector unit processes per cycle.
    l2_bytes : L2 scratchpad capacity.
    l2_banks : SRAM banks of the L2.
    l2_port_bytes : bytes one bank reads or writes per cycle.
    dram_bytes_per_cycle : sustained DRAM bandwidth in bytes per accelerator cycle.
    dram_latency_cycles : cycles from a DRAM request to its first data.
    dram_bytes : DRAM address space the accelerator sees; at most 4 GiB, the reach of the
        ISA's 32-bit DRAM addresses (``isa.DRAM_ADDR_BITS``).
    clock_hz : accelerator clock.
    kv_block_tokens : tokens per block of the paged KV cache.
    prefetch : whether the compiler schedules loads ahead of use by default.
    token_counter_bits : width of each dependency-token counter.
    flash_bytes_per_s, flash_latency_ns : the system's flash-class storage tier, where the
        host swaps out the KV cache of inactive contexts (LLMS, arXiv 2403.11805):
        sequential read bandwidth and the time to its first data. Defaults: a phone's
        UFS 3.1 flash, about 2 GB/s sequential read (JESD220E, HS-G4 × 2 lanes, 2.9 GB/s
        raw) and about 100 µs to the first data. Only the performance model reads them
        (``sweeps.analytic.context_switch``); the accelerator has no port to the tier.
    """

    name: str
    array_rows: int
    array_cols: int
    vector_lanes: int
    l2_bytes: int
    l2_banks: int
    l2_port_bytes: int
    dram_bytes_per_cycle: int
    dram_latency_cycles: int
    dram_bytes: int
    clock_hz: int
    kv_block_tokens: int
    prefetch: bool = True
    token_counter_bits: int = 8
    flash_bytes_per_s: int = 2_000_000_000
    flash_latency_ns: int = 100_000

    def __post_init__(self):
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*",
                                                              self.name):
            raise HardwareError(f"name must be letters, digits, '.', '_' or '-' (it names "
                                f"build folders), not {self.name!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (not isinstance(value, int) or isinstance(value, bool)):
                raise HardwareError(f"{f.name} must be an integer, not {value!r}")
            if f.type == "bool" and not isinstance(value, bool):
                raise HardwareError(f"{f.name} must be true or false, not {value!r}")
        for field, lo, hi, pow2 in _RANGES:
            value = getattr(self, field)
            if not lo <= value <= hi:
                why = _RANGE_REASONS.get(field)
                raise HardwareError(f"{field} = {value} is out of range [{lo}, {hi}]"
                                    + (f" ({why})" if why else ""))
            if pow2 and not _pow2(value):
                raise HardwareError(f"{field} = {value} must be a power of two")
        if self.l2_bytes % (self.l2_banks * self.l2_port_bytes):
            raise HardwareError(f"l2_bytes = {self.l2_bytes} must be a multiple of "
                                f"l2_banks * l2_port_bytes = {self.l2_banks * self.l2_port_bytes}")
        W = self.line_bytes
        if (self.l2_banks * self.l2_port_bytes) % W:
            raise HardwareError(f"l2_banks * l2_port_bytes = {self.l2_banks} * "
                                f"{self.l2_port_bytes} must be a multiple of the line of {W} "
                                f"bytes (the line follows dram_bytes_per_cycle = "
                                f"{self.dram_bytes_per_cycle}): the L2 moves whole lines, "
                                f"its banks grouped line-wide")
        if W % self.array_rows:
            raise HardwareError(f"array_rows = {self.array_rows} must divide the line of {W} "
                                f"bytes (the line follows dram_bytes_per_cycle = "
                                f"{self.dram_bytes_per_cycle}): the matmul unit moves a "
                                f"tile's reduction in whole lines")
        if 4 * self.array_cols > W:
            raise HardwareError(f"array_cols = {self.array_cols}: a row of int32 results must "
                                f"fit one line of {W} bytes (the line follows "
                                f"dram_bytes_per_cycle = {self.dram_bytes_per_cycle}; "
                                f"{4 * self.array_cols} bytes need dram_bytes_per_cycle > "
                                f"{4 * self.array_cols // 2})")
        if self.l2_port_bytes < max(self.array_rows, self.array_cols) // 4:
            raise HardwareError(f"l2_port_bytes = {self.l2_port_bytes} cannot feed a "
                                f"{self.array_rows}x{self.array_cols} array (needs >= "
                                f"{max(self.array_rows, self.array_cols) // 4})")

    # -- derived -------------------------------------------------------------------------
    @property
    def pes(self) -> int:
        return self.array_rows * self.array_cols

    @property
    def dram_gbps(self) -> float:
        """DRAM bandwidth in GB/s at the configured clock."""
        return self.dram_bytes_per_cycle * self.clock_hz / 1e9

    @property
    def peak_macs_per_s(self) -> float:
        return self.pes * self.clock_hz

    @functools.cached_property
    def line_bytes(self) -> int:
        """``W``: one DRAM word and one L2 line, what every engine moves per cycle: the
        smallest power of two >= ``dram_bytes_per_cycle``, at least one instruction
        (``INSTR_BYTES`` = 32: the controller fetches one instruction per DRAM word; a
        16-byte word handed it half of each instruction). Below 32 bytes per cycle the
        DRAM takes more than one cycle per word (``rtl/dram.py``'s credits)."""
        w = INSTR_BYTES
        while w < self.dram_bytes_per_cycle:
            w *= 2
        return w

    @functools.cached_property
    def dram_cycles_per_line(self) -> float:
        """Cycles the DRAM takes per line: ``line_bytes / dram_bytes_per_cycle``, at least
        1 (the line is at least a cycle's bandwidth)."""
        return self.line_bytes / self.dram_bytes_per_cycle

    @property
    def vector_lanes_per_cycle(self) -> int:
        """Elements the vector unit takes per cycle: ``vector_lanes``, but at most one line
        of its widest operand stream per beat (SILU_MUL's two parameter words per column,
        ``2 * PARAM_WORD_BYTES`` = 8 bytes per element): ``min(vector_lanes, W / 8)``."""
        return max(1, min(self.vector_lanes, self.line_bytes // (2 * PARAM_WORD_BYTES)))

    def matmul_tile(self, mode: MatmulMode) -> tuple[int, int]:
        """``(rows, reduction_bytes)`` of one tile of the matmul unit (``rtl/matmul_unit.py``):
        GEMV ``array_rows`` x rows by ``TILE_LINES`` lines; GEMM ``GEMM_ROW_FACTOR`` times
        the rows by as many times fewer lines (``arch/uarch.py``)."""
        rows, lines = self.array_rows, TILE_LINES
        if mode == MatmulMode.GEMM:
            rows, lines = rows * GEMM_ROW_FACTOR, lines // GEMM_ROW_FACTOR
        return rows, lines * self.line_bytes

    @functools.cached_property
    def l2_lines_per_cycle(self) -> float:
        """Lines of ``line_bytes`` the L2's banks move per cycle in all: the RTL groups its
        banks into this many line-wide banks (a whole number, checked above)."""
        return self.l2_banks * self.l2_port_bytes // self.line_bytes

    @functools.cached_property
    def l2_stripe_bytes(self) -> int:
        """Bytes the L2's banks move in a cycle in all, a line on each line-wide bank:
        addresses a stripe apart fall on the same banks (a ``MATMUL``'s timing repeats
        modulo it, ``arch.occupancy``; the compiler splits reductions on it,
        ``backend.alignments``)."""
        return self.line_bytes * int(self.l2_lines_per_cycle)

    @property
    def l2_bank_bytes(self) -> int:
        return self.l2_bytes // self.l2_banks

    def replace(self, **changes) -> HardwareConfig:
        return dataclasses.replace(self, **changes)

    def to_toml(self) -> str:
        lines = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                lines.append(f"{f.name} = {'true' if value else 'false'}")
            elif isinstance(value, str):
                lines.append(f'{f.name} = "{value}"')
            else:
                lines.append(f"{f.name} = {value}")
        return "\n".join(lines) + "\n"


#: Fields of the system around the accelerator, which its RTL does not read (the key of a
#: built Verilator model leaves them out).
SYSTEM_FIELDS = ("flash_bytes_per_s", "flash_latency_ns")

#: field, minimum, maximum, must be a power of two
_RANGES = (
    ("array_rows", 2, 256, True),
    ("array_cols", 2, 256, True),
    ("vector_lanes", 1, 256, True),
    ("l2_bytes", 4 * 1024, 1024 * 1024 * 1024, False),
    ("l2_banks", 1, 256, True),
    ("l2_port_bytes", 1, 1024, True),
    ("dram_bytes_per_cycle", 1, 4096, False),
    ("dram_latency_cycles", 1, 100_000, False),
    ("dram_bytes", 1024 * 1024, 1 << DRAM_ADDR_BITS, False),
    ("clock_hz", 10_000_000, 10_000_000_000, False),
    ("kv_block_tokens", 1, 1024, True),
    ("token_counter_bits", 2, 16, False),
    ("flash_bytes_per_s", 1_000_000, 100_000_000_000, False),
    ("flash_latency_ns", 0, 1_000_000_000, False),
)

_RANGE_REASONS = {"dram_bytes": f"the ISA's DRAM addresses are {DRAM_ADDR_BITS} bits"}

_OPTIONAL = {f.name for f in dataclasses.fields(HardwareConfig)
             if f.default is not dataclasses.MISSING}


def hardware_from_dict(data: dict, where: str) -> HardwareConfig:
    """Build a ``HardwareConfig`` from parsed TOML; errors name ``where`` and the key."""
    known = {f.name for f in dataclasses.fields(HardwareConfig)}
    for key in data:
        if key not in known:
            raise HardwareError(f"{where}: unknown key {key!r} (known keys: "
                                f"{', '.join(sorted(known))})")
    for key in sorted(known - _OPTIONAL):
        if key not in data:
            raise HardwareError(f"{where}: missing key {key!r}")
    try:
        return HardwareConfig(**data)
    except HardwareError as e:
        raise HardwareError(f"{where}: {e}") from None


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_hardware(spec: str | Path) -> HardwareConfig:
    """Read a TOML hardware description, by path or by preset name (``edge-8x8``)."""
    path = Path(spec)
    if not path.exists() and not path.suffix:
        path = CONFIG_DIR / f"{spec}.toml"
    if not path.exists():
        raise HardwareError(f"{spec}: no such hardware description (presets: "
                            f"{', '.join(preset_names())})")
    if not path.is_file():
        raise HardwareError(f"{path}: not a file (a hardware description is a TOML file)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise HardwareError(f"{path}: not valid TOML ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HardwareError(f"{path}: cannot be read ({e})") from None
    return hardware_from_dict(data, str(path))
