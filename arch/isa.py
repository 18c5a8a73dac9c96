"""The accelerator's instruction set, declared once.

Contract
--------
``OPCODES`` declares every instruction: mnemonic, opcode, the engine that executes it,
and its operand fields with their widths, in encoding order. The encoder, the decoder,
the assembler and disassembler (``compiler/asm.py``), the ISA simulator, the reference
document ``docs/isa.md`` and the RTL decoder are all generated from or driven by this
declaration; nothing else restates a width or an opcode.

Encoding: every instruction is ``INSTR_BITS`` = 256 bits, stored little-endian as 32
bytes. Bits ``[0, 6)`` hold the opcode, ``[6, 9)`` the *wait* mask and ``[9, 12)`` the
*signal* mask (one bit per engine: load, compute, store), then the operand fields are
packed upwards from bit 12 in declaration order. Unused high bits are zero.

Dependency tokens: for every ordered pair of engines (A, B) there is a token counter.
An instruction of engine B whose wait mask has bit A set blocks until the (A -> B)
counter is non-zero and decrements it; after it completes, for each bit C of its
signal mask it increments the (B -> C) counter. The CONTROL engine's HALT waits for
every engine to drain.

Tested by tests/compiler/test_asm.py (encoding, decoding and the generated reference) and
tests/compiler/test_isasim.py.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from amaranth.lib import data, enum

from arch.uarch import KV_MAP_BLOCKS


class Engine(enum.IntEnum, shape=2):
    LOAD = 0
    COMPUTE = 1
    STORE = 2
    CONTROL = 3


ENGINES = (Engine.LOAD, Engine.COMPUTE, Engine.STORE)

INSTR_BITS = 256
INSTR_BYTES = INSTR_BITS // 8
OPCODE_BITS = 6
MASK_BITS = 3
HEADER_BITS = OPCODE_BITS + 2 * MASK_BITS

DRAM_ADDR_BITS = 32
L2_ADDR_BITS = 30

# KV_LIVE's block-owner map (below, "the block-owner map"): words of an instruction's size,
# one owner code a block.
KV_MAP_WORD_BYTES = INSTR_BYTES
KV_MAP_WORD_BLOCKS = KV_MAP_WORD_BYTES
KV_FREE = 0                                     # owner codes: no live sequence holds it,
KV_SHARED = 255                                 # several do; sequence s alone: s + 1
KV_MAX_OWNERS = KV_SHARED - 1                   # sequences a map can name


class ErrorCode(enum.IntEnum, shape=3):
    """Why the accelerator stopped in its error state (0: no error)."""

    NONE = 0
    INVALID_OPCODE = 1
    L2_OUT_OF_RANGE = 2
    DRAM_OUT_OF_RANGE = 3
    BAD_OPERAND = 4
    SELF_DEPENDENCY = 5
    BAD_BLOCK = 6           # a block-table entry outside the KV pool (or EVICTED, -1), or
    #                         naming a block its sequence does not hold (KV_LIVE)
    BAD_CHUNK = 7           # a compressed KV chunk's header that is not one (kv_chunk_fault)


class MatmulMode(enum.IntEnum, shape=1):
    GEMM = 0   # weight stationary per block, double-buffered: each weight serves 4R rows
    GEMV = 1   # a fresh weight block every cycle, no preload (the compiler picks the faster)


class WeightLayout(enum.IntEnum, shape=1):
    NK = 0     # w[n][k]: each row is one output channel (projection weights, keys)
    KN = 1     # w[k][n]: each row is one reduction step (values in P @ V)


class WeightFormat(enum.IntEnum, shape=1):
    INT8 = 0     # one int8 per weight
    MXINT4 = 1   # int4 elements in blocks of 32 along k sharing an E8M0 exponent
    #              (numerics.mx_matmul): 4.25 bits per weight


class ParamMode(enum.IntEnum, shape=2):
    """Which parameter word (``PARAM_WORD``) requantises an element of a REQUANT block."""

    TENSOR = 0    # one word for the whole block
    CHANNEL = 1   # one word per column (per output channel)
    ROW = 2       # one word per row, consecutive (SOFTMAX's row factors for P @ V)


class KvFormat(enum.IntEnum, shape=1):
    """How ``KV_PREFETCH`` reads the KV blocks it walks."""

    INT8 = 0      # token rows of int8, as KV_APPEND writes them
    CHUNKED = 1   # whole blocks compressed chunk-wise (kv_chunk_pack), expanded to int8


class OutBits(enum.IntEnum, shape=1):
    INT8 = 0
    INT16 = 1


OUT_BYTES = {OutBits.INT8: 1, OutBits.INT16: 2}

# Bytes per element of each operand type an instruction reads or writes in L2 (``Field.elem``).
ELEM_BYTES = {"int8": 1, "int16": 2, "int32": 4, "uint32": 4}

# MXINT4 weights: elements per block along k sharing one exponent (OCP Microscaling v1.0,
# block size 32); the longest reduction an MXINT4 MATMUL takes (its int32 sum is exact up
# to it: models.numerics.mx_matmul, which reads both from here); the bits of a block's
# exponent byte the matmul uses (its shift, 0..7; the byte's other bits are ignored).
MX_BLOCK = 32
MX_MAX_K = 8192
MX_SHIFT_BITS = 3


@dataclass(frozen=True)
class Field:
    name: str
    bits: int
    doc: str
    enum: type[enum.IntEnum] | None = None
    address: str | None = None          # "l2" or "dram" for address fields
    elem: str | None = None             # element type of the L2 operand (``ELEM_BYTES``)

    @property
    def elem_bytes(self) -> int:
        """Bytes per element of the operand this address field points at."""
        return ELEM_BYTES[self.elem]

    @property
    def max(self) -> int:
        return (1 << self.bits) - 1


@dataclass(frozen=True)
class OpSpec:
    mnemonic: str
    code: int
    engine: Engine
    fields: tuple[Field, ...]
    doc: str

    @cached_property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @cached_property
    def field_max(self) -> tuple[int, ...]:
        """Each field's largest value."""
        return tuple(f.max for f in self.fields)

    @cached_property
    def field_index(self) -> dict[str, int]:
        """Each field's position among the operands."""
        return {f.name: i for i, f in enumerate(self.fields)}

    def field(self, name: str) -> Field:
        """The declared field ``name``; ``KeyError`` if this instruction has none."""
        if name not in self.field_index:
            raise KeyError(f"{self.mnemonic} has no field {name!r}")
        return self.fields[self.field_index[name]]

    def layout(self) -> list[tuple[Field, int]]:
        """Each field with its bit offset in the instruction word."""
        out, offset = [], HEADER_BITS
        for f in self.fields:
            out.append((f, offset))
            offset += f.bits
        return out


def _l2(name, doc, elem=None):
    return Field(name, L2_ADDR_BITS, doc, address="l2", elem=elem)


def _enum(name, enum_type, doc):
    return Field(name, enum_type.as_shape().width, doc, enum=enum_type)


def _dram(name, doc):
    return Field(name, DRAM_ADDR_BITS, doc, address="dram")


def _n(name, bits, doc):
    return Field(name, bits, doc)


ROWS = _n("rows", 16, "number of rows")
COLS = _n("cols", 20, "elements per row")
MULT = _n("mult", 15, "requantisation multiplier mantissa (numerics.MULT_BITS)")
SHIFT = _n("shift", 6, "requantisation right shift")

OPCODES: tuple[OpSpec, ...] = (
    OpSpec("HALT", 0x01, Engine.CONTROL, (),
           "Stop fetching; finish when every engine has drained."),
    OpSpec("KV_LIVE", 0x02, Engine.CONTROL, (
        _dram("map_addr", "the block-owner map in DRAM, a multiple of KV_MAP_WORD_BYTES = "
              f"{INSTR_BYTES}"),
        _n("map_blocks", 16, f"blocks the map covers, at most KV_MAP_BLOCKS = {KV_MAP_BLOCKS}"),
    ), "Once every engine has drained, read the block-owner map (kv_map_pack: byte b is "
       f"block b's owner code: 0 free, s + 1 held by sequence s alone, {KV_SHARED} held by "
       f"several; ceil(map_blocks / {INSTR_BYTES}) words of {INSTR_BYTES} bytes) into the "
       "controller; until the program ends, a KV_PREFETCH or KV_APPEND block-table entry "
       "whose block's code is neither its seq + 1 nor shared (a free block, another "
       "sequence's, or one at or beyond map_blocks) stops with BAD_BLOCK (kv_map_allows). A "
       "program without KV_LIVE lets every walk touch every block in [0, pool_blocks). A "
       "misaligned map_addr or map_blocks > KV_MAP_BLOCKS stops with BAD_OPERAND, then a "
       "map past the DRAM's end with DRAM_OUT_OF_RANGE."),
    # -- load engine ------------------------------------------------------------------
    OpSpec("DMA_LOAD", 0x10, Engine.LOAD, (
        _dram("dram_addr", "source in DRAM"),
        _l2("l2_addr", "destination in L2"),
        ROWS,
        _n("row_bytes", 20, "bytes per row"),
        _n("dram_stride", 32, "bytes between rows in DRAM"),
        _n("l2_stride", 30, "bytes between rows in L2"),
    ), "2-D strided copy DRAM -> L2."),
    OpSpec("DMA_GATHER", 0x11, Engine.LOAD, (
        _dram("idx_addr", "int32 row indices in DRAM"),
        _dram("table_addr", "base of the table in DRAM"),
        _n("count", 16, "rows to gather"),
        _n("row_bytes", 20, "bytes per table row"),
        _l2("l2_addr", "destination in L2"),
        _n("l2_stride", 30, "bytes between rows in L2"),
    ), "Indexed gather DRAM -> L2: row i = table[idx[i]] (embedding lookup)."),
    OpSpec("KV_PREFETCH", 0x12, Engine.LOAD, (
        _dram("pool_addr", "base of this layer's K or V block pool in DRAM"),
        _dram("table_addr", "int32 block table of the sequence in DRAM"),
        _n("first_token", 20, "first token position to fetch"),
        _n("n_tokens", 20, "tokens to fetch"),
        _n("row_bytes", 20, "bytes per token row in the pool (kv_dim for int8)"),
        _n("col_offset", 20, "first byte of each row to fetch (one head: head * head_dim)"),
        _n("col_bytes", 20, "bytes of each row to fetch"),
        _l2("l2_addr", "destination in L2, col_bytes per token, packed"),
        _n("pool_blocks", 32, "blocks in the pool: an entry outside [0, pool_blocks) as an "
                              "unsigned int32 stops with BAD_BLOCK"),
        _n("seq", 8, "the sequence whose table this is: after a KV_LIVE, its blocks are "
                     "those the map gives owner code seq + 1, or shared"),
        _enum("kv_format", KvFormat, "INT8 rows, or CHUNKED: whole blocks compressed "
              "chunk-wise, one head's channels [col_offset, col_offset+col_bytes) a chunk "
              "(kv_chunk_addrs, kv_chunk_pack), expanded to int8 rows on the way into L2"),
    ), "Walk the block table and gather bytes [col_offset, col_offset+col_bytes) of the KV "
       "rows of tokens [first, first+n) into L2: token t lives at pool + table[t // B] * B * "
       "row_bytes + (t % B) * row_bytes, B = kv_block_tokens (kv_row_addr). CHUNKED: first "
       "and n are whole blocks, each block's chunk read from its header and code bytes "
       "(kv_chunk_addrs) and written as the same int8 rows; a header that is not one stops "
       "with BAD_CHUNK (kv_chunk_fault)."),
    # -- store engine -----------------------------------------------------------------
    OpSpec("DMA_STORE", 0x20, Engine.STORE, (
        _l2("l2_addr", "source in L2"),
        _dram("dram_addr", "destination in DRAM"),
        ROWS,
        _n("row_bytes", 20, "bytes per row"),
        _n("l2_stride", 30, "bytes between rows in L2"),
        _n("dram_stride", 32, "bytes between rows in DRAM"),
    ), "2-D strided copy L2 -> DRAM."),
    OpSpec("KV_APPEND", 0x21, Engine.STORE, (
        _l2("l2_addr", "source rows in L2, packed"),
        _dram("pool_addr", "base of this layer's K or V block pool in DRAM"),
        _dram("table_addr", "int32 block table of the sequence in DRAM"),
        _n("first_token", 20, "position of the first row"),
        _n("n_tokens", 20, "rows to write"),
        _n("row_bytes", 20, "bytes per token row"),
        _n("pool_blocks", 32, "blocks in the pool: an entry outside [0, pool_blocks) as an "
                              "unsigned int32 stops with BAD_BLOCK"),
        _n("seq", 8, "the sequence whose table this is (KV_PREFETCH's seq)"),
    ), "Scatter new KV rows into their blocks through the block table (inverse of "
       "KV_PREFETCH)."),
    OpSpec("STORE_COUNTERS", 0x22, Engine.STORE, (
        _dram("dram_addr", "destination of the counter block in DRAM"),
    ), "Write the performance counters (COUNTERS, 64 bits each) to DRAM."),
    # -- compute engine: the hybrid systolic array ------------------------------------
    OpSpec("MATMUL", 0x30, Engine.COMPUTE, (
        _enum("mode", MatmulMode, "GEMM (weight stationary) or GEMV (weight streaming)"),
        _n("accumulate", 1, "add into the existing int32 output instead of overwriting"),
        _enum("w_layout", WeightLayout, "NK: w[n][k]; KN: w[k][n]"),
        _l2("x_addr", "int8 activations x[m][k]", "int8"),
        _l2("w_addr", "weights: int8, or MXINT4 elements two per byte (w_format)", "int8"),
        _l2("out_addr", "int32 results out[m][n]", "int32"),
        _n("m", 16, "rows of x and out"),
        _n("k", 20, "reduction length"),
        _n("n", 20, "columns of out"),
        _n("x_stride", 20, "bytes between rows of x"),
        _n("w_stride", 20, "bytes between rows of w"),
        _n("out_stride", 20, "bytes between rows of out"),
        _enum("w_format", WeightFormat, "INT8, or MXINT4: w holds int4 elements two per byte "
              "(element k of a row in byte k / 2, the low nibble first; NK only) and e_addr "
              "their block exponents"),
        _l2("e_addr", "MXINT4 block exponents, (k + 31) / 32 bytes per row of w, rows "
                      "contiguous: each block's E8M0 exponent less its row's base; only the "
                      "low MX_SHIFT_BITS = 3 bits are used (numerics.mx_matmul)", "int8"),
    ), "out[i][j] (+)= sum_k x[i][k] * w(j, k), int8 x int8 (or MXINT4 blocks, each block's "
       "partial sum shifted left by its exponent) -> int32; the array tiles the whole "
       "product itself."),
    # -- compute engine: the vector unit ----------------------------------------------
    OpSpec("REQUANT", 0x31, Engine.COMPUTE, (
        _enum("out_bits", OutBits, "INT8 or INT16 result"),
        _enum("params", ParamMode, "TENSOR: one parameter word; CHANNEL: one per column; "
              "ROW: one per row (3 is refused)"),
        _n("has_bias", 1, "add an int32 bias per column before requantising"),
        _l2("src_addr", "int32 accumulators", "int32"),
        _l2("dst_addr", "int8/int16 results (OUT_BYTES[out_bits])"),
        _l2("param_addr", "parameter words (PARAM_WORD), as many as params says, "
                          "consecutive", "uint32"),
        _l2("bias_addr", "int32 bias per column", "int32"),
        ROWS, COLS,
        _n("src_stride", 20, "bytes between source rows"),
        _n("dst_stride", 20, "bytes between destination rows"),
    ), "numerics.requant on a 2-D block."),
    OpSpec("RMSNORM", 0x32, Engine.COMPUTE, (
        _l2("src_addr", "int16 residual rows", "int16"),
        _l2("dst_addr", "int8 normalised rows", "int8"),
        ROWS, COLS,
        _n("src_stride", 20, "bytes between source rows"),
        _n("dst_stride", 20, "bytes between destination rows"),
        MULT, SHIFT,
        _n("eps", 31, "epsilon in sum-of-squares units"),
    ), "numerics.rmsnorm, one row at a time."),
    OpSpec("ROPE", 0x33, Engine.COMPUTE, (
        _l2("src_addr", "int8 q or k rows [token][head][head_dim]", "int8"),
        _l2("dst_addr", "int8 rotated rows", "int8"),
        _n("rows", 16, "tokens"),
        _n("heads", 8, "heads per token"),
        _n("head_dim", 10, "elements per head"),
        _n("pos0", 20, "position of the first token"),
        _l2("freq_addr", "RoPE frequency table, head_dim / 2 words (numerics.rope_freq_table)",
            "uint32"),
        _n("row_stride", 20, "bytes between tokens, source and destination"),
    ), "numerics.rope: token r is at position pos0 + r."),
    OpSpec("SOFTMAX", 0x34, Engine.COMPUTE, (
        _l2("src_addr", "int32 scores", "int32"),
        _l2("dst_addr", "int8 probabilities, max-normalised (the row maximum is 127)", "int8"),
        ROWS, COLS,
        _n("q_pos0", 20, "key j is visible to row i when j <= q_pos0 + i"),
        _n("src_stride", 20, "bytes between source rows"),
        _n("dst_stride", 20, "bytes between destination rows"),
        MULT, SHIFT,
        _l2("scale_addr", "one parameter word (PARAM_WORD) per row, consecutive: the "
                          "requantisation of the row's P @ V (REQUANT params=ROW)", "uint32"),
        _n("out_mult", 15, "P @ V requantisation mantissa for a row sum of 2**15"),
        _n("out_shift", 5, "P @ V requantisation right shift for a row sum of 2**15"),
    ), "numerics.softmax with the causal mask: probabilities and each row's P @ V "
       "requantisation word."),
    OpSpec("SILU_MUL", 0x35, Engine.COMPUTE, (
        _l2("gate_addr", "int32 gate accumulators", "int32"),
        _l2("up_addr", "int8 up projection", "int8"),
        _l2("dst_addr", "int8 result", "int8"),
        _l2("param_addr", "per column two parameter words (PARAM_WORD): the gate's, then "
                          "the output's", "uint32"),
        ROWS, COLS,
        _n("gate_stride", 20, "bytes between gate rows"),
        _n("up_stride", 20, "bytes between up rows"),
        _n("dst_stride", 20, "bytes between destination rows"),
    ), "numerics.silu_mul with per-column gate and output requantisation."),
    OpSpec("RESADD", 0x36, Engine.COMPUTE, (
        _l2("h_addr", "int16 residual rows, updated in place", "int16"),
        _l2("acc_addr", "int32 projection accumulators", "int32"),
        _l2("param_addr", "per-column parameter words (PARAM_WORD)", "uint32"),
        ROWS, COLS,
        _n("h_stride", 20, "bytes between residual rows"),
        _n("acc_stride", 20, "bytes between accumulator rows"),
    ), "numerics.residual_add."),
    OpSpec("ARGMAX", 0x37, Engine.COMPUTE, (
        _l2("src_addr", "int16 logits", "int16"),
        _n("n", 20, "elements"),
        _l2("dst_addr", "int32 index of the first maximum", "int32"),
    ), "numerics.argmax."),
)

BY_MNEMONIC = {op.mnemonic: op for op in OPCODES}
BY_CODE = {op.code: op for op in OPCODES}

COUNTER_BITS = 64   # every performance counter, in the RTL and in STORE_COUNTERS' block
COUNTER_BYTES = COUNTER_BITS // 8

COUNTERS = (
    "cycles", "instructions",
    "load_busy", "load_stall", "compute_busy", "compute_stall", "store_busy", "store_stall",
    "dram_read_bytes", "dram_write_bytes", "prefetch_bytes", "array_macs",
)


# A requantisation parameter word (REQUANT, SILU_MUL, RESADD): stored as a 32-bit word in
# L2, the multiplier mantissa in its low 16 bits and the right shift above it.
PARAM_WORD = data.StructLayout({"mult": 16, "shift": 6})
PARAM_WORD_BYTES = ELEM_BYTES["uint32"]      # the element type of every param_addr


_PARAM_FIELDS = {name: (f.offset, f.width) for name, f in PARAM_WORD}


def pack_param(mult: int, shift: int) -> int:
    """One requantisation parameter word (``PARAM_WORD``) as an integer; ``ValueError``
    if a value does not fit its field. (The layout's offsets, as plain integer arithmetic:
    ``PARAM_WORD.const`` costs ~100 us a word, and a build packs tens of thousands.)"""
    word = 0
    for name, value in (("mult", int(mult)), ("shift", int(shift))):
        offset, width = _PARAM_FIELDS[name]
        if not 0 <= value < 1 << width:
            raise ValueError(f"parameter word: {name} = {value} does not fit {width} bits")
        word |= value << offset
    return word


# -- the paged KV cache's addressing (KV_PREFETCH, KV_APPEND) ----------------------------

INT32_BYTES = 4     # the words the DMA engines read: gather indices, block-table entries
BLOCK_TABLE_ENTRY_BYTES = INT32_BYTES    # one int32 block number per block


def kv_table_entry_addr(table_addr, token, block_tokens: int):
    """DRAM address of the block-table entry that holds ``token``'s block:
    ``table + 4 * (token // B)``, as shifts (``B`` = ``kv_block_tokens``, a power of two),
    so the RTL's DMA engines use it on Amaranth values as the ISA simulator does on ints."""
    shift = block_tokens.bit_length() - 1
    return table_addr + ((token >> shift) << (BLOCK_TABLE_ENTRY_BYTES.bit_length() - 1))


def kv_row_addr(pool_addr, block, token, block_tokens: int, row_bytes):
    """DRAM address of ``token``'s row in a KV pool, ``block`` being its block-table entry:
    block ``b`` holds ``B`` rows of ``row_bytes`` from ``pool + b * B * row_bytes``
    (``B`` = ``kv_block_tokens``, a power of two). Ints or Amaranth values."""
    return pool_addr + block * block_tokens * row_bytes + (token & (block_tokens - 1)) * row_bytes


# -- the block-owner map (KV_LIVE) ----------------------------------------------------
#
# A KV pool's blocks are shared by many sequences (vLLM's block manager): a block freed
# when its last sequence ended, or since given to another sequence, may still be named by
# a table that should not name it. The host writes, per program, who holds each block; a
# KV walk names its sequence (``seq``) and may touch only blocks it holds or that are
# shared. ``KV_LIVE`` reads the map into the controller in words of ``KV_MAP_WORD_BYTES``
# (aligned as instructions are, so a word never straddles a DRAM line).

# (KV_MAP_WORD_BYTES, the owner codes: at the top, the declaration's docs use them)


def kv_map_words(map_blocks: int) -> int:
    """The 32-byte words of a block-owner map covering ``map_blocks`` blocks."""
    return -(-map_blocks // KV_MAP_WORD_BLOCKS)


def kv_map_pack(owners: np.ndarray) -> np.ndarray:
    """The block-owner map ``uint8 [kv_map_words(n) * KV_MAP_WORD_BYTES]`` of ``owners``
    (``int [n]``, each block's owner code), zero-padded (free)."""
    owners = np.asarray(owners)
    if owners.ndim != 1 or ((owners < 0) | (owners > KV_SHARED)).any():
        raise ValueError(f"owner codes are one per block, 0 to {KV_SHARED}")
    out = np.zeros(kv_map_words(owners.size) * KV_MAP_WORD_BYTES, np.uint8)
    out[:owners.size] = owners
    return out


def kv_map_allows(map_bytes: np.ndarray, map_blocks: int, block: int, seq: int) -> bool:
    """Whether sequence ``seq``'s walk may touch block ``block`` (a block-table entry, as an
    unsigned int32) under the map ``map_bytes`` of ``map_blocks`` blocks: the block is in
    the map and its owner code is ``seq + 1`` or ``KV_SHARED``."""
    block &= 0xFFFF_FFFF
    return block < map_blocks and int(map_bytes[block]) in (seq + 1, KV_SHARED)


# -- compressed KV chunks (KV_PREFETCH with kv_format = CHUNKED) ------------------------
#
# A block of a layer's K or V pool, once full, may be stored compressed chunk-wise
# (LLMS, arXiv 2403.11805; the numerics are ``models.numerics.kv_chunk_compress``): each
# KV head of the block is one chunk, each of its channels one group of ``B`` codes (``B``
# = ``kv_block_tokens``) at 2, 4 or 8 bits with its own shift, the value being ``code <<
# shift``. The chunk of the head whose channels start at ``col_offset`` keeps its groups
# back to back, in channel order, from ``block_base + col_offset * B`` (inside the
# block's own bytes, which it never outgrows: ``B * bits / 8 <= B`` bytes a group), and
# one header byte a channel in the pool's header area, ``row_bytes`` bytes a block after
# the pool's ``pool_blocks`` blocks (``kv_chunk_addrs``). Header byte of channel ``c``:
#   bits [0, 2)  width code ``w``: ``2**w`` bits (1, 2, 3 for 2, 4, 8; 0 is no chunk),
#   bits [2, 5)  the shift, at most ``8 - bits``,
#   bit  7       set on the first channel of the chunk and on no other,
#   bits 5, 6    zero.
# A group's code ``n`` sits at bits ``[n * bits, (n + 1) * bits)`` of the group's bytes,
# little-endian, two's complement; a group takes ``ceil(B * bits / 8)`` bytes.

KV_WIDTH_CODES = {2: 1, 4: 2, 8: 3}     # a header's width field for each code width
KV_HEADER_SHIFT_LSB = 2
KV_HEADER_FIRST = 0x80                  # the chunk's first channel


def kv_chunk_addrs(pool_addr: int, pool_blocks: int, block: int, block_tokens: int,
                   row_bytes: int, col_offset: int) -> tuple[int, int]:
    """DRAM addresses of the compressed chunk of block ``block`` (its block-table entry)
    whose channels start at ``col_offset``: ``(codes, headers)``."""
    codes = pool_addr + block * block_tokens * row_bytes + col_offset * block_tokens
    headers = pool_addr + pool_blocks * block_tokens * row_bytes + block * row_bytes + col_offset
    return codes, headers


def kv_header_area_bytes(pool_blocks: int, row_bytes: int) -> int:
    """Bytes of a pool's header area (one byte a channel of every block)."""
    return pool_blocks * row_bytes


def kv_group_bytes(bits, block_tokens: int):
    """Bytes of one group: ``block_tokens`` codes of ``bits`` bits, rounded up to a byte."""
    return -(-block_tokens * bits // 8)


def kv_chunk_header(bits_H, shift_H) -> np.ndarray:
    """The header bytes ``uint8 [H]`` of a chunk whose channels have widths ``bits_H``
    (each 2, 4 or 8) and shifts ``shift_H``; ``ValueError`` for a width or shift the
    format cannot hold."""
    bits, shift = np.asarray(bits_H, np.int64), np.asarray(shift_H, np.int64)
    if bits.ndim != 1 or bits.shape != shift.shape or bits.size == 0:
        raise ValueError(f"a chunk header needs one width and one shift a channel, not "
                         f"{bits.shape} and {shift.shape}")
    if not np.isin(bits, list(KV_WIDTH_CODES)).all():
        raise ValueError(f"chunk widths must be in {tuple(KV_WIDTH_CODES)}, not "
                         f"{sorted(set(bits.tolist()) - set(KV_WIDTH_CODES))}")
    if ((shift < 0) | (shift > 8 - bits)).any():
        raise ValueError("a chunk shift must be in [0, 8 - bits]")
    code = np.log2(bits).astype(np.int64)
    out = (code | (shift << KV_HEADER_SHIFT_LSB)).astype(np.uint8)
    out[0] |= KV_HEADER_FIRST
    return out


def kv_header_byte_wrong(byte, first, select=np.where):
    """Whether ``byte`` cannot be a chunk's header byte for a channel that is (``first``)
    or is not the chunk's first: a width code 0 (never compressed), reserved bits set, a
    shift beyond ``8 - bits``, or the first-channel bit not saying ``first``. Ints,
    arrays or Amaranth values; ``select(c, a, b)`` chooses (``np.where``, ``Mux``): the
    one rule that ``kv_chunk_fault`` and the RTL's decompressor (``rtl/kv_chunks.py``)
    both apply."""
    code = byte & 3
    shift = (byte >> KV_HEADER_SHIFT_LSB) & 7
    limit = select(code == 1, 6, select(code == 2, 4, 0))          # 8 - bits
    return (code == 0) | ((byte & 0x60) != 0) | (shift > limit) | (((byte >> 7) & 1) != first)


def kv_chunk_fault(header_H: np.ndarray) -> str | None:
    """Why ``header_H`` (``uint8 [H]``, the bytes the engine reads for one chunk) is not
    a chunk's header (``BAD_CHUNK``), or None (``kv_header_byte_wrong`` of every byte:
    the first-channel bit on exactly the first, so that the instruction's columns are
    one compressed chunk)."""
    h = np.asarray(header_H, np.uint8).astype(np.int64)
    flagged = (h >> 7) & 1
    wrong = np.flatnonzero(kv_header_byte_wrong(h, flagged))
    if wrong.size:
        c = int(wrong[0])
        return f"channel {c}'s header byte 0x{int(h[c]):02x} is not a chunk header"
    if kv_header_byte_wrong(h, np.arange(h.size) == 0).any():
        return "the channels are not one compressed chunk (first-channel bits " \
               f"at {np.flatnonzero(flagged).tolist()})"
    return None


def kv_chunk_widths(header_H: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(bits [H], shift [H])`` of a valid chunk header."""
    h = np.asarray(header_H, np.uint8).astype(np.int64)
    return 1 << (h & 3), (h >> KV_HEADER_SHIFT_LSB) & 7


def kv_chunk_pack(codes_HxN, bits_H) -> np.ndarray:
    """The code bytes of a chunk: channel ``h``'s ``N`` codes (two's complement, in
    range of ``bits_H[h]`` bits) packed as one group, the groups back to back."""
    codes = np.asarray(codes_HxN, np.int64)
    out = []
    for row, b in zip(codes, np.asarray(bits_H, np.int64), strict=True):
        b = int(b)
        if ((row < -(1 << (b - 1))) | (row >= 1 << (b - 1))).any():
            raise ValueError(f"a code does not fit {b} bits")
        value = 0
        for n, c in enumerate(row.tolist()):
            value |= (c & ((1 << b) - 1)) << (n * b)
        out.append(np.frombuffer(value.to_bytes(kv_group_bytes(b, row.size), "little"),
                                 np.uint8))
    return np.concatenate(out) if out else np.zeros(0, np.uint8)


def kv_chunk_unpack(header_H, data, block_tokens: int) -> np.ndarray:
    """The int8 rows ``[block_tokens, H]`` a chunk expands to (``code << shift``), from
    its header bytes and its code bytes (at least the groups' total); the header must
    be valid (``kv_chunk_fault``)."""
    bits, shift = kv_chunk_widths(header_H)
    data = np.asarray(data, np.uint8)
    out = np.zeros((block_tokens, bits.size), np.int8)
    at = 0
    for h, (b, s) in enumerate(zip(bits.tolist(), shift.tolist(), strict=True)):
        n = kv_group_bytes(b, block_tokens)
        value = int.from_bytes(data[at:at + n].tobytes(), "little")
        at += n
        for t in range(block_tokens):
            c = (value >> (t * b)) & ((1 << b) - 1)
            c -= (c >> (b - 1)) << b
            out[t, h] = np.int8(c << s)
    return out


# -- the L2 operands of the compute instructions ------------------------------------------

@dataclass(frozen=True)
class L2Operand:
    """One L2 operand of a compute instruction: ``rows`` rows of ``row_bytes`` bytes,
    ``stride`` bytes apart, from ``addr``; ``write`` if the instruction writes it;
    ``present`` if it exists for these fields (REQUANT's bias only with ``has_bias``);
    ``implied`` if its bytes are another operand's (an accumulating MATMUL reads its own
    output), so it needs no range or overlap check of its own. The quantities are ints
    or Amaranth values, whichever the fields were."""

    key: str
    addr: object
    rows: object
    row_bytes: object
    stride: object
    write: bool = False
    present: object = True
    implied: bool = False


def _bytes(count, elem_bytes: int):
    """``count * elem_bytes`` as a shift (``elem_bytes`` is a power of two), for ints and
    Amaranth values alike."""
    return count << (elem_bytes.bit_length() - 1)


def compute_operands(mnemonic: str, f, select=lambda c, a, b: a if c else b
                     ) -> list[L2Operand]:
    """The L2 operands of compute instruction ``mnemonic``, in the order the hardware
    checks them: ``f(name)`` gives a field's value and ``select(c, a, b)`` chooses (an
    ``if`` for ints, ``Mux`` for Amaranth values). The one declaration that
    ``compiler.semantics.accesses`` (the ISA simulator, the scheduler, the verifier) and
    the RTL's operand check (``rtl/operand_check.py``) both read. Element sizes are the
    fields' ``elem`` (``OUT_BYTES`` for REQUANT's result)."""
    spec = BY_MNEMONIC[mnemonic]

    def n(name, count):             # bytes of ``count`` elements of operand ``name``
        return _bytes(count, spec.field(name).elem_bytes)

    def block(key, name, rows, cols, stride, write=False):
        return L2Operand(key, f(name), rows, n(name, cols), stride, write)

    if mnemonic == "MATMUL":
        nk = f("w_layout") == int(WeightLayout.NK)
        mx = f("w_format") == int(WeightFormat.MXINT4)
        out = block("out", "out_addr", f("m"), f("n"), f("out_stride"), True)
        blocks = (f("k") + (MX_BLOCK - 1)) >> (MX_BLOCK.bit_length() - 1)
        return [block("x", "x_addr", f("m"), f("k"), f("x_stride")),
                L2Operand("w", f("w_addr"), select(nk, f("n"), f("k")),
                          select(mx, (f("k") + 1) >> 1, n("w_addr", select(nk, f("k"), f("n")))),
                          f("w_stride")),
                L2Operand("e", f("e_addr"), f("n"), blocks, blocks, present=mx),
                out,
                L2Operand("acc", out.addr, out.rows, out.row_bytes, out.stride,
                          present=f("accumulate"), implied=True)]
    if mnemonic == "REQUANT":
        cols = f("cols")
        int8 = f("out_bits") == int(OutBits.INT8)
        by_row = f("params") == int(ParamMode.ROW)
        return [block("src", "src_addr", f("rows"), cols, f("src_stride")),
                L2Operand("param", f("param_addr"), select(by_row, f("rows"), 1),
                          n("param_addr", select(f("params") == int(ParamMode.CHANNEL), cols, 1)),
                          select(by_row, n("param_addr", 1), 0)),
                L2Operand("dst", f("dst_addr"), f("rows"),
                          select(int8, _bytes(cols, OUT_BYTES[OutBits.INT8]),
                                 _bytes(cols, OUT_BYTES[OutBits.INT16])),
                          f("dst_stride"), True),
                L2Operand("bias", f("bias_addr"), 1, n("bias_addr", cols), 0,
                          present=f("has_bias"))]
    if mnemonic in ("RMSNORM", "SOFTMAX"):
        out = [block("src", "src_addr", f("rows"), f("cols"), f("src_stride")),
               block("dst", "dst_addr", f("rows"), f("cols"), f("dst_stride"), True)]
        if mnemonic == "SOFTMAX":
            word = n("scale_addr", 1)
            out.append(L2Operand("scale", f("scale_addr"), f("rows"), word, word, True))
        return out
    if mnemonic == "ROPE":
        width = f("heads") * f("head_dim")
        return [block("src", "src_addr", f("rows"), width, f("row_stride")),
                L2Operand("freq", f("freq_addr"), 1, n("freq_addr", f("head_dim") >> 1), 0),
                block("dst", "dst_addr", f("rows"), width, f("row_stride"), True)]
    if mnemonic == "SILU_MUL":
        return [block("gate", "gate_addr", f("rows"), f("cols"), f("gate_stride")),
                block("up", "up_addr", f("rows"), f("cols"), f("up_stride")),
                L2Operand("param", f("param_addr"), 1, n("param_addr", f("cols") << 1), 0),
                block("dst", "dst_addr", f("rows"), f("cols"), f("dst_stride"), True)]
    if mnemonic == "RESADD":
        h = block("h", "h_addr", f("rows"), f("cols"), f("h_stride"))
        return [h, block("acc", "acc_addr", f("rows"), f("cols"), f("acc_stride")),
                L2Operand("param", f("param_addr"), 1, n("param_addr", f("cols")), 0),
                L2Operand("h_out", h.addr, h.rows, h.row_bytes, h.stride, True)]
    if mnemonic == "ARGMAX":
        return [L2Operand("src", f("src_addr"), 1, n("src_addr", f("n")), 0),
                L2Operand("dst", f("dst_addr"), 1, n("dst_addr", 1), 0, True)]
    raise KeyError(f"{mnemonic} is not a compute instruction with L2 operands")


_BLOCKS = ("REQUANT", "RMSNORM", "SOFTMAX", "SILU_MUL", "RESADD")


def operand_faults(mnemonic: str, f) -> list[tuple[object, str]]:
    """The ISA's refusals of an instruction's fields (``BAD_OPERAND``), checked in this
    order before its operands' ranges: ``(condition, message)``, the condition over
    ``f(name)`` (ints or Amaranth values), the message with ``{field}`` placeholders
    (and ``{mnemonic}``). Read by ``compiler.semantics.check`` and the RTL's operand
    check (``rtl/operand_check.py``); the DMA engines (``rtl/dma.py``) refuse the same
    misaligned int32 reads and counter blocks as they reach them.

    Alignment: the DMA engines read int32 indices and block-table entries as aligned
    words, and write the counter block as aligned 64-bit words."""
    if mnemonic == "DMA_GATHER":
        return [((f("count") > 0) & ((f("idx_addr") & (INT32_BYTES - 1)) != 0),
                 "DMA_GATHER idx_addr 0x{idx_addr:x} is not a multiple of 4")]
    if mnemonic in ("KV_PREFETCH", "KV_APPEND"):
        return [((f("n_tokens") > 0)
                 & ((f("table_addr") & (BLOCK_TABLE_ENTRY_BYTES - 1)) != 0),
                 "{mnemonic} table_addr 0x{table_addr:x} is not a multiple of 4")]
    if mnemonic == "KV_LIVE":
        return [((f("map_addr") & (KV_MAP_WORD_BYTES - 1)) != 0,
                 "KV_LIVE map_addr 0x{map_addr:x} is not a multiple of "
                 f"{KV_MAP_WORD_BYTES}"),
                (f("map_blocks") > KV_MAP_BLOCKS,
                 "KV_LIVE map_blocks = {map_blocks} exceeds " + f"KV_MAP_BLOCKS = "
                 f"{KV_MAP_BLOCKS}, the controller's map")]
    if mnemonic == "STORE_COUNTERS":
        return [((f("dram_addr") & (COUNTER_BYTES - 1)) != 0,
                 "STORE_COUNTERS dram_addr 0x{dram_addr:x} is not a multiple of 8")]
    if mnemonic == "MATMUL":
        return [((f("m") == 0) | (f("k") == 0) | (f("n") == 0),
                 "MATMUL with an empty dimension (m={m}, k={k}, n={n})"),
                ((f("w_format") == int(WeightFormat.MXINT4))
                 & (f("w_layout") == int(WeightLayout.KN)),
                 "MATMUL MXINT4 weights must be in the NK layout"),
                ((f("w_format") == int(WeightFormat.MXINT4)) & (f("k") > MX_MAX_K),
                 "MATMUL MXINT4 reduction k = {k} exceeds " + f"MX_MAX_K = {MX_MAX_K} (its "
                 "int32 sum would not be exact)")]
    if mnemonic == "ROPE":
        return [((f("head_dim") == 0) | ((f("head_dim") & 1) == 1),
                 "ROPE head_dim must be even and non-zero, got {head_dim}"),
                ((f("rows") == 0) | (f("heads") == 0),
                 "ROPE with no rows or heads (rows={rows}, heads={heads})")]
    if mnemonic == "ARGMAX":
        return [(f("n") == 0, "ARGMAX over no elements")]
    if mnemonic in _BLOCKS:
        out = [((f("rows") == 0) | (f("cols") == 0),
                "{mnemonic} with an empty block ({rows}x{cols})")]
        if mnemonic == "REQUANT":
            out.append((f("params") == 3, "REQUANT params = 3 is not a ParamMode"))
        if mnemonic == "SOFTMAX":
            out.append((f("q_pos0") >= f("cols"),
                        "SOFTMAX row 0 sees keys up to q_pos0 = {q_pos0}, beyond cols = {cols}"))
        return out
    return []


def opcodes_of(engine: Engine) -> tuple[OpSpec, ...]:
    """The instructions ``engine`` executes, in declaration order."""
    return tuple(op for op in OPCODES if op.engine == engine)


# -- instructions as values ----------------------------------------------------------

class IsaError(ValueError):
    """An instruction that cannot be encoded, decoded or parsed."""


@dataclass(frozen=True)
class Instruction:
    mnemonic: str
    operands: tuple[int, ...]
    wait: int = 0
    signal: int = 0

    @property
    def spec(self) -> OpSpec:
        return BY_MNEMONIC[self.mnemonic]

    @property
    def engine(self) -> Engine:
        return self.spec.engine

    def __getattr__(self, name: str) -> int:
        spec = BY_MNEMONIC.get(object.__getattribute__(self, "mnemonic"))
        index = None if spec is None else spec.field_index.get(name)
        if index is None:
            raise AttributeError(name)
        return self.operands[index]

    def fields(self) -> dict[str, int]:
        return dict(zip(self.spec.field_names, self.operands, strict=True))

    def replace(self, **changes) -> Instruction:
        wait = changes.pop("wait", self.wait)
        signal = changes.pop("signal", self.signal)
        values = self.fields()
        values.update(changes)
        return make(self.mnemonic, wait=wait, signal=signal, **values)


def _mask(engines) -> int:
    if isinstance(engines, int):
        return engines
    mask = 0
    for e in engines:
        mask |= 1 << int(e)
    return mask


def make(mnemonic: str, wait=0, signal=0, **fields) -> Instruction:
    """Build an instruction; every declared field must be given and fit its width.
    Raises ``IsaError`` naming the first fault: an unknown mnemonic, a mask that does not
    fit or names the instruction's own engine, an unknown field, then (in declaration
    order) a missing field or one that does not fit its width."""
    spec = BY_MNEMONIC.get(mnemonic)
    if spec is None:
        raise IsaError(f"unknown instruction {mnemonic!r}")
    wait, signal = _mask(wait), _mask(signal)
    if wait or signal:
        for label, mask in (("wait", wait), ("signal", signal)):
            if not 0 <= mask < (1 << MASK_BITS):
                raise IsaError(f"{mnemonic}: {label} mask {mask} does not fit {MASK_BITS} "
                               f"bits")
            if spec.engine == Engine.CONTROL and mask:
                raise IsaError(f"{mnemonic}: the control engine takes no {label} mask")
            if spec.engine != Engine.CONTROL and mask & (1 << int(spec.engine)):
                raise IsaError(f"{mnemonic}: {label} mask names its own engine "
                               f"({spec.engine.name.lower()})")
    try:
        operands = tuple(map(int, map(fields.__getitem__, spec.field_names)))
    except (KeyError, TypeError, ValueError):
        operands = None
    if (operands is None or len(fields) != len(operands)
            or (operands and min(operands) < 0)
            or not all(map(operator.le, operands, spec.field_max))):
        _check_fields(spec, fields)
    return Instruction(mnemonic, operands, wait, signal)


def _check_fields(spec: OpSpec, fields: dict) -> None:
    """Raise ``make``'s ``IsaError`` for the first field fault in ``fields``."""
    unknown = set(fields) - set(spec.field_names)
    if unknown:
        raise IsaError(f"{spec.mnemonic}: unknown field {sorted(unknown)[0]!r}")
    for f in spec.fields:
        if f.name not in fields:
            raise IsaError(f"{spec.mnemonic}: missing field {f.name!r}")
        value = int(fields[f.name])
        if not 0 <= value <= f.max:
            raise IsaError(f"{spec.mnemonic}: field {f.name} = {value} does not fit {f.bits} "
                           f"bits")


def _check_declaration() -> None:
    codes = [op.code for op in OPCODES]
    assert len(set(codes)) == len(codes), "duplicate opcode"
    assert all(0 < c < (1 << OPCODE_BITS) for c in codes)
    for op in OPCODES:
        used = HEADER_BITS + sum(f.bits for f in op.fields)
        assert used <= INSTR_BITS, f"{op.mnemonic} needs {used} bits"
        assert len(set(op.field_names)) == len(op.fields), op.mnemonic


_check_declaration()
