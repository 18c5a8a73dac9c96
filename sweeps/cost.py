"""The cost model: a hardware description to die area, die cost and system cost.

Contract
--------
``area(hw, node)`` returns an ``AreaBreakdown`` in mm²: logic (the PE array, vector unit,
DMA, control: the synthesis statistics of the generated RTL, ``rtl.stats``, converted
from NAND2 equivalents by the node's gate density), small on-chip memories of the logic
(tile buffers, FIFOs, tables: as register-file bits), the L2 (SRAM density with
periphery) and the DRAM interface (PHY). ``cost(hw, node, dram_gbytes)`` adds the die
cost (wafer price over good dies per wafer, negative-binomial yield) and the DRAM.
Every constant is in ``NODES`` / ``DRAM_DOLLARS_PER_GB`` with its source, and in
``docs/cost.md``.

Logic statistics come from Yosys and take a minute or two per configuration; they are
cached under ``build/stats/`` and taken at a fixed L2 size (the L2 is SRAM macros, costed
from its capacity) — ``logic_stats(hw)``.

Tested by tests/sweeps/test_sweeps.py and tests/rtl/test_stats.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from arch.hardware import HardwareConfig


@dataclass(frozen=True)
class Node:
    """One technology node's constants (sources in docs/cost.md)."""

    name: str
    transistors_per_mm2: float     # peak logic density, millions
    logic_utilisation: float       # placed-cell fraction of the logic area
    sram_mm2_per_mbyte: float      # with periphery and banking
    regfile_factor: float          # register-file bit area over an SRAM bit
    phy_mm2_per_32gbps: float      # DRAM PHY + controller for 32 GB/s (an LPDDR4X x64)
    wafer_dollars: float           # 300 mm wafer
    defects_per_cm2: float         # D0 for the negative-binomial yield

    @property
    def nand2_per_mm2(self) -> float:
        """NAND2 gate equivalents per mm² (4 transistors each, at the utilisation)."""
        return self.transistors_per_mm2 * 1e6 / 4 * self.logic_utilisation


# SRAM: LLMCompass's 2.4 mm²/MB at 7 nm, scaled to the other nodes by the ratio of the
# published high-density bitcell areas (7 nm 0.027 µm², 16 nm 0.074 µm², 28 nm 0.127 µm²).
_SRAM_7NM = 2.4
NODES: dict[str, Node] = {
    "28nm": Node("28nm", 15.3, 0.7, _SRAM_7NM * 0.127 / 0.027, 2.0, 6.0, 2891.0, 0.05),
    "16nm": Node("16nm", 28.9, 0.7, _SRAM_7NM * 0.074 / 0.027, 2.0, 4.5, 3984.0, 0.07),
    "7nm": Node("7nm", 91.2, 0.7, _SRAM_7NM, 2.0, 3.5, 9346.0, 0.09),
}
DRAM_DOLLARS_PER_GB = 3.0          # LPDDR4X/LPDDR5 contract price, order of magnitude
WAFER_DIAMETER_MM = 300.0
YIELD_ALPHA = 3.0                  # negative-binomial clustering parameter


class CostError(ValueError):
    """A cost that cannot be computed (unknown node, bad parameter)."""


def node(name: str) -> Node:
    try:
        return NODES[name]
    except KeyError:
        raise CostError(f"unknown technology node {name!r} (known: "
                        f"{', '.join(NODES)})") from None


# -- logic statistics -------------------------------------------------------------------
def logic_stats(hw: HardwareConfig) -> dict:
    """Totals of the accelerator's logic (every component): NAND2 equivalents, flip-flop
    bits and memory bits outside the L2, from Yosys (``rtl.stats.synth_stats``, cached).
    The L2's size only changes its SRAM macros, and the clock, the DRAM's capacity and
    prefetch do not change the RTL at all, so the logic is synthesised with edge-4x4's
    values of those (its preset shares the cache): one Yosys run per logic
    configuration, whatever the clock or L2 axes of a sweep."""
    from arch.hardware import load_hardware
    from rtl.common import rtl_params
    from rtl.stats import synth_stats

    ref = load_hardware("edge-4x4")
    base = hw.replace(l2_bytes=ref.l2_bytes, prefetch=ref.prefetch, clock_hz=ref.clock_hz,
                      dram_bytes=ref.dram_bytes)
    comps = synth_stats(rtl_params(base))["components"]
    return {
        "gate_equivalents": sum(c["gate_equivalents"] for c in comps.values()),
        "flip_flop_bits": sum(c["flip_flop_bits"] for c in comps.values()),
        "memory_bits": sum(c["memory_bits"] for c in comps.values()),
        "by_component": {name: c["gate_equivalents"] for name, c in comps.items()},
    }


# -- area and cost ----------------------------------------------------------------------
@dataclass(frozen=True)
class AreaBreakdown:
    logic_mm2: float
    logic_memory_mm2: float
    l2_mm2: float
    phy_mm2: float

    @property
    def total_mm2(self) -> float:
        return self.logic_mm2 + self.logic_memory_mm2 + self.l2_mm2 + self.phy_mm2

    def as_dict(self) -> dict:
        return {"logic_mm2": self.logic_mm2, "logic_memory_mm2": self.logic_memory_mm2,
                "l2_mm2": self.l2_mm2, "phy_mm2": self.phy_mm2, "area_mm2": self.total_mm2}


def area(hw: HardwareConfig, node_name: str, stats: dict | None = None) -> AreaBreakdown:
    n = node(node_name)
    stats = logic_stats(hw) if stats is None else stats
    logic = stats["gate_equivalents"] / n.nand2_per_mm2
    sram_per_bit = n.sram_mm2_per_mbyte / (8 * 2 ** 20)
    memory = stats["memory_bits"] * sram_per_bit * n.regfile_factor
    l2 = l2_area_mm2(hw.l2_bytes, node_name)
    phy = n.phy_mm2_per_32gbps * max(hw.dram_gbps, 1.0) / 32.0
    return AreaBreakdown(logic, memory, l2, phy)


def l2_area_mm2(l2_bytes: int, node_name: str) -> float:
    """The L2's area: ``l2_bytes`` of SRAM at the node's density (with periphery and
    banking, ``Node.sram_mm2_per_mbyte``)."""
    return l2_bytes * 8 * (node(node_name).sram_mm2_per_mbyte / (8 * 2 ** 20))


def die_dollars(die_mm2: float, node_name: str) -> tuple[int, float, float]:
    """``(dies per wafer, yield, dollars)`` of a die of ``die_mm2``: the node's wafer cost
    over the good dies on it. ``CostError`` for a die a wafer does not hold."""
    n = node(node_name)
    dpw = dies_per_wafer(die_mm2)
    if dpw == 0:
        raise CostError(f"a die of {die_mm2:.0f} mm² does not fit a "
                        f"{WAFER_DIAMETER_MM:.0f} mm wafer")
    y = die_yield(die_mm2, n.defects_per_cm2)
    return dpw, y, n.wafer_dollars / (dpw * y)


def dies_per_wafer(die_mm2: float) -> int:
    """Gross dies on a wafer: the wafer area over the die area, less the partial dies
    at the edge (the usual ``pi d^2 / 4A - pi d / sqrt(2A)``)."""
    if die_mm2 <= 0:
        raise CostError(f"die area must be positive, not {die_mm2}")
    d = WAFER_DIAMETER_MM
    return max(0, int(math.pi * d * d / (4 * die_mm2) - math.pi * d / math.sqrt(2 * die_mm2)))


def die_yield(die_mm2: float, defects_per_cm2: float) -> float:
    """Negative-binomial yield ``(1 + A D0 / alpha)^-alpha``."""
    return (1 + die_mm2 / 100 * defects_per_cm2 / YIELD_ALPHA) ** -YIELD_ALPHA


@dataclass(frozen=True)
class CostBreakdown:
    area: AreaBreakdown
    dies_per_wafer: int
    yield_: float
    die_dollars: float
    dram_gbytes: float
    dram_dollars: float

    @property
    def total_dollars(self) -> float:
        return self.die_dollars + self.dram_dollars

    def as_dict(self) -> dict:
        return {**self.area.as_dict(), "dies_per_wafer": self.dies_per_wafer,
                "yield": self.yield_, "die_dollars": self.die_dollars,
                "dram_gbytes": self.dram_gbytes, "dram_dollars": self.dram_dollars,
                "cost_dollars": self.total_dollars}


def dram_capacity_gbytes(model_bytes: int) -> float:
    """The DRAM a device needs: the next power of two (>= 1 GB) holding the model."""
    gb = 1.0
    while gb * 2 ** 30 < model_bytes:
        gb *= 2
    return gb


def cost(hw: HardwareConfig, node_name: str, dram_gbytes: float,
         stats: dict | None = None) -> CostBreakdown:
    a = area(hw, node_name, stats)
    dpw, y, die = die_dollars(a.total_mm2, node_name)
    return CostBreakdown(a, dpw, y, die, dram_gbytes, dram_gbytes * DRAM_DOLLARS_PER_GB)
