"""The back end's matmul weight tiles (``backend.matmul_tiling``, ``matmul_tiles``)."""

from __future__ import annotations

import numpy as np
import pytest

from arch.hardware import load_hardware
from arch.isa import MX_BLOCK
from compiler.backend import alignments, matmul_tiles, matmul_tiling

HARDWARE = ("edge-4x4", "edge-8x8", "edge-16x16", "edge-32x32")


def _row_bytes(k: int, mxint4: bool) -> int:
    return (k + 1) // 2 if mxint4 else k


def test_random_matmuls_are_tiled_whole_in_the_fewest_even_aligned_pieces():
    rng = np.random.default_rng(0)
    hardware = [load_hardware(name) for name in HARDWARE]
    # a non-square array, an L2 of two lines a cycle, a DRAM of a few bytes a cycle
    hardware += [hardware[1].replace(array_rows=4), hardware[2].replace(l2_banks=8),
                 hardware[1].replace(dram_bytes_per_cycle=2)]
    for _ in range(3000):
        hw = hardware[int(rng.integers(len(hardware)))]
        mxint4 = bool(rng.random() < 0.4)
        n_total = int(rng.integers(1, 300))
        k_total = int(rng.integers(1, 9000))     # MXINT4's too: a last block may be short
        tile_bytes = int(rng.integers(hw.array_cols * 64, 70000))
        case = (n_total, k_total, tile_bytes, hw, mxint4)
        covered = np.zeros((n_total, k_total), dtype=np.int32)
        for n0, n, k0, k in matmul_tiles(*case):
            covered[n0:n0 + n, k0:k0 + k] += 1
            assert n * _row_bytes(k, mxint4) <= tile_bytes, case
            assert not mxint4 or k0 % MX_BLOCK == 0, case
        assert (covered == 1).all(), case
        nt, kt = matmul_tiling(*case)
        if kt == k_total:
            continue
        # split: into the fewest pieces, as one fewer would not fit a tile of ``nt`` rows
        pieces = -(-k_total // kt)
        if pieces > 1:
            fewer = -(-k_total // (pieces - 1))
            fewer = -(-fewer // MX_BLOCK) * MX_BLOCK if mxint4 else fewer
            assert nt * _row_bytes(fewer, mxint4) > tile_bytes, case
        most = (2 * (tile_bytes // nt) // MX_BLOCK * MX_BLOCK if mxint4
                else tile_bytes // nt)
        # as even as the coarsest alignment that still fits lets them be
        even = -(-k_total // pieces)
        align = next(a for a in alignments(hw, mxint4) if -(-even // a) * a <= most)
        assert kt == -(-even // align) * align, case
        # in particular, each piece's weight rows start on a line wherever that fits
        line = hw.line_bytes * (2 if mxint4 else 1)
        assert -(-even // line) * line > most or kt % line == 0, case


@pytest.mark.parametrize("hw, case, pieces", [
    # 2,048 inputs a tile holds 1,854 of: two halves, not 1,854 + 194
    ("edge-16x16", (32000, 2048, 16 * 1854, False), [1024, 1024]),
    # Sheared-LLaMA-1.3B's down projection at 4 MiB of L2 (rtl_layer_decode): on the stripe
    ("edge-16x16", (2048, 5504, 61860, False), [2816, 2688]),
    # MXINT4: pieces of 2,048 inputs, whose exponents (a byte a block) are a 64-byte line
    ("edge-16x16", (2048, 5632, 16384, True), [2048, 2048, 1536]),
    ("edge-16x16", (2048, 5632, 32768, True), [4096, 1536]),
    # where the stripe (128 bytes on edge-8x8) does not fit, a line (32) does
    ("edge-8x8", (64, 1030, 8 * 560, False), [544, 486]),
])
def test_a_split_reduction_is_evened_out_on_aligned_boundaries(hw, case, pieces):
    n_total, k_total, tile_bytes, mxint4 = case
    tiles = matmul_tiles(n_total, k_total, tile_bytes, load_hardware(hw), mxint4)
    assert [k for n0, _, _, k in tiles if n0 == 0] == pieces
