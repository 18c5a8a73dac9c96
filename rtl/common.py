"""Widths the RTL derives from the one hardware description.

Contract
--------
``RtlParams(hw, dram_bytes)`` holds every width the components use, derived from a
``HardwareConfig`` and nothing else (plus the simulated DRAM capacity):

* ``line_bytes`` (W): one DRAM word and one L2 line, the unit every engine moves per
  cycle; the smallest power of two >= ``dram_bytes_per_cycle`` (at least one 32-byte
  instruction, which the controller fetches as one word), so one line
  per cycle can saturate the DRAM;
* ``line_banks``: the L2's ``l2_banks`` banks of ``l2_port_bytes`` grouped into banks of
  one line each (``l2_banks * l2_port_bytes / W``), interleaved by line;
* address widths of DRAM words and L2 lines.

``rtl_params(hw, image_bytes)`` is the one place the toolkit builds them for a Verilator
model, a Verilog file or synthesis statistics: the simulated DRAM is the smallest power of
two that holds the image (at least 1 MiB; ``DEFAULT_DRAM_BYTES`` without an image), and
large memories are SRAM macro models. Unit tests of single components build their own.

Tested by tests/rtl/test_copier.py, tests/rtl/test_vector_unit.py and
tests/rtl/test_stats.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from arch.hardware import HardwareConfig
from arch.isa import MX_BLOCK


def next_pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def log2(n: int) -> int:
    assert n > 0 and n & (n - 1) == 0, n
    return n.bit_length() - 1


def tree_sum(terms, width: int | None = None):
    """The sum of Amaranth values ``terms`` as a balanced tree of adders: each level adds
    a bit to the widest operand, so ``n`` terms of ``b`` bits end in ``b + ceil(log2
    n)``. Python's ``sum`` is a left-deep chain, each adder a bit wider than the last
    (``b + n - 1`` at the end: an edge-32x32 popcount of a 128-byte line's mask ended in
    a 129-bit adder), which synthesis (``rtl.stats``: Yosys without width reduction)
    counts as built. ``width``: each partial sum kept to its low ``width`` bits, for a
    consumer that keeps only those (the sum modulo ``2 ** width`` is the same). Raises
    ``ValueError`` for no terms."""
    level = list(terms)
    if not level:
        raise ValueError("tree_sum of no terms")
    while len(level) > 1:
        pairs = [level[i] + level[i + 1] for i in range(0, len(level) - 1, 2)]
        if width is not None:
            pairs = [p[:width] for p in pairs]
        level = pairs + level[len(level) - len(level) % 2:]
    return level[0]


@dataclass(frozen=True)
class RtlParams:
    hw: HardwareConfig
    dram_bytes: int            # capacity of the simulated DRAM
    macros: bool = False       # large memories as SRAM macro models (Verilator builds)
    # the matmul unit's MXINT4 datapath; False gives an int8-only unit (for its area:
    # ``benchmarks.mxint4 --only synthesis``), which refuses MXINT4 MATMULs (BAD_OPERAND)
    mxint4: bool = True

    def __post_init__(self):
        if not isinstance(self.hw, HardwareConfig):
            raise TypeError(f"hw must be a HardwareConfig, not {self.hw!r}")
        if self.dram_bytes % self.line_bytes:
            raise ValueError(f"dram_bytes {self.dram_bytes} is not a multiple of "
                             f"{self.line_bytes}")

    @property
    def line_bytes(self) -> int:
        return self.hw.line_bytes

    @property
    def line_bits(self) -> int:
        return 8 * self.line_bytes

    @property
    def line_shift(self) -> int:
        return log2(self.line_bytes)

    @property
    def line_banks(self) -> int:
        return int(self.hw.l2_lines_per_cycle)

    @property
    def l2_lines(self) -> int:
        return self.hw.l2_bytes // self.line_bytes

    @property
    def bank_depth(self) -> int:
        return self.l2_lines // self.line_banks

    @property
    def dram_words(self) -> int:
        return self.dram_bytes // self.line_bytes

    @property
    def dram_addr_bits(self) -> int:
        return max(1, (self.dram_words - 1).bit_length())

    @property
    def l2_addr_bits(self) -> int:
        return max(1, (self.l2_lines - 1).bit_length())


def check_params(params) -> None:
    """What every component's keyword-only constructor checks first: ``TypeError`` unless
    ``params`` is an ``RtlParams``."""
    if not isinstance(params, RtlParams):
        raise TypeError(f"params must be RtlParams, not {params!r}")


# The simulated DRAM of a Verilog file or synthesis run with no image to hold: its width
# sets the DRAM address registers, so statistics are comparable between configurations.
DEFAULT_DRAM_BYTES = 64 << 20


def weights_refusal(params: RtlParams, weights: str) -> str | None:
    """Why the RTL of ``params`` cannot run projection weights of format ``weights``, or
    None. The matmul unit shifts each ``array_rows``-element chunk of the reduction by one
    MXINT4 block's exponent (``rtl/matmul_unit.py``), so MXINT4 needs ``array_rows <=
    MX_BLOCK`` and the MXINT4 datapath (``mxint4``); ``rtl.operand_check.unimplemented``
    stops such a ``MATMUL`` in hardware."""
    hw = params.hw
    if weights == "mxint4" and not params.mxint4:
        return f"{hw.name}: this RTL is built without the MXINT4 datapath (mxint4 = False)"
    if weights == "mxint4" and hw.array_rows > MX_BLOCK:
        return (f"{hw.name}: MXINT4 weights on the RTL need array_rows <= MX_BLOCK = "
                f"{MX_BLOCK} (each array-high chunk of the reduction takes one block's "
                f"exponent); this array has {hw.array_rows} rows")
    return None


def rtl_dram_bytes(image_bytes: int) -> int:
    """The simulated DRAM for an image of ``image_bytes``: a power of two, at least 1 MiB."""
    return max(1 << 20, next_pow2(image_bytes))


def rtl_params(hw: HardwareConfig, image_bytes: int | None = None) -> RtlParams:
    """The RTL's parameters for ``hw`` with SRAM macro models: a DRAM of
    ``rtl_dram_bytes(image_bytes)``, or ``DEFAULT_DRAM_BYTES`` without an image."""
    dram = DEFAULT_DRAM_BYTES if image_bytes is None else rtl_dram_bytes(image_bytes)
    return RtlParams(hw, dram_bytes=dram, macros=True)
