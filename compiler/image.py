"""The DRAM image and its memory map.

Contract
--------
``MemoryMap`` places named regions (64-byte aligned) in the accelerator's DRAM. A
compiled build lays out: every model constant the programs read (``param:<name>``),
the token buffer (``tokens``: int32 per position; the host writes the prompt, the
device writes each generated token), the block table of the paged KV cache
(``block_table``: int32 logical block -> physical block), one K and one V block pool
per layer (``kv:<layer>:<k|v>``), the logits of every position (``logits``: int16 rows;
a batched build has a token buffer, block table and logits rows per sequence in these
regions, ``backend.BuildContext``),
a counter block per program (``counters:<program>``) and the programs themselves.

Read-only regions come first; ``rw_base`` is where the writable ones start, so the
compiler's dependency tracking only needs to watch ``[rw_base, size)``.

Tested by tests/compiler/test_pipeline.py and tests/compiler/test_buildfolder.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from arch.isa import pack_param
from compiler.ir import MXINT4, CompileError, Param, ParamWords
from models.numerics import mx_pack

ALIGN = 64


def align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


@dataclass(frozen=True)
class Region:
    name: str
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass
class MemoryMap:
    regions: dict[str, Region] = field(default_factory=dict)
    size: int = 0
    rw_base: int | None = None

    def add(self, name: str, size: int) -> Region:
        if name in self.regions:
            return self.regions[name]
        region = Region(name, self.size, int(size))
        self.regions[name] = region
        self.size = align(self.size + max(int(size), 1))
        return region

    def start_writable(self) -> None:
        self.rw_base = self.size

    def __getitem__(self, name: str) -> Region:
        return self.regions[name]

    def to_json(self) -> dict:
        return {"size": self.size, "rw_base": self.rw_base,
                "regions": {r.name: {"offset": r.offset, "size": r.size}
                            for r in self.regions.values()}}


def param_bytes(p: Param | ParamWords) -> np.ndarray | None:
    """The little-endian bytes a constant occupies in DRAM (None without weights)."""
    if isinstance(p, ParamWords):
        if p.mult.value is None:
            return None
        columns = []
        part: ParamWords | None = p
        while part is not None:
            mult = np.asarray(part.mult.value).reshape(-1)
            shift = np.asarray(part.shift.value).reshape(-1)
            columns.append([pack_param(m, s) for m, s in zip(mult, shift, strict=True)])
            part = part.then
        words = np.array(columns, "<i4").T.reshape(-1)          # interleaved per column
        return words.view(np.uint8)
    if p.value is None:
        return None
    if p.dtype == MXINT4:
        return mx_pack(np.asarray(p.value)).reshape(-1)
    return np.ascontiguousarray(np.asarray(p.value).astype(np.dtype(p.dtype).newbyteorder("<"))
                                ).reshape(-1).view(np.uint8)


def param_size(p: Param | ParamWords) -> int:
    return 4 * p.count * p.words_per_column if isinstance(p, ParamWords) else p.nbytes


def block_table(n_blocks: int, seed: int = 0) -> np.ndarray:
    """Logical -> physical KV blocks: a fixed permutation, so that reads really go
    through the table rather than happening to be contiguous."""
    return np.random.default_rng(seed).permutation(n_blocks).astype(np.int32)


class DramImage:
    """A byte array with the memory map's regions filled in."""

    def __init__(self, mmap: MemoryMap, with_data: bool = True):
        self.mmap = mmap
        self.data = np.zeros(mmap.size, np.uint8) if with_data else None
        self.small: dict[str, np.ndarray] = {}     # kept even without data (block table)

    def write(self, region: str, raw: np.ndarray, offset: int = 0, keep: bool = False) -> None:
        r = self.mmap[region]
        raw = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
        if offset + raw.size > r.size:
            raise CompileError(f"{raw.size} bytes do not fit region {region} ({r.size} bytes)")
        if keep:
            small = self.small.setdefault(region, np.zeros(r.size, np.uint8))
            small[offset:offset + raw.size] = raw
        if self.data is not None:
            self.data[r.offset + offset:r.offset + offset + raw.size] = raw

    def read_i32(self, addr: int) -> int:
        """An int32 of the image (from the kept regions when there is no data)."""
        if self.data is not None:
            return int(self.data[addr:addr + 4].view("<i4")[0]) if addr + 4 <= self.data.size else 0
        for name, small in self.small.items():
            r = self.mmap[name]
            if r.offset <= addr and addr + 4 <= r.offset + small.size:
                return int(small[addr - r.offset:addr - r.offset + 4].view("<i4")[0])
        return 0
