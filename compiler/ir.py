"""The compiler's intermediate representation: tensors and tensor operations.

Contract
--------
A ``Graph`` is what the frontend makes of one traced step (a prefill chunk or a decode
step): constants (``Param``: weights and requantisation parameters that live in DRAM),
activations (``Tensor``: values that live in L2, possibly views of one ``Buffer``) and
a list of operations in execution order. Operations are frozen dataclasses whose fields
name their operands; ``verify(graph)`` checks shapes and dtypes between passes.

Tested by tests/compiler/test_frontend.py.
"""

from __future__ import annotations

import itertools
import math
import typing
from dataclasses import dataclass, field

import numpy as np

from models.numerics import mx_blocks

# ``Param.dtype`` of MXINT4 weight elements (not a NumPy type: two per byte).
MXINT4 = "mxint4"


class CompileError(ValueError):
    """A model, shape or hardware configuration the compiler cannot handle."""


@dataclass(frozen=True)
class Param:
    """A constant that lives in DRAM: a weight matrix, a bias or requantisation words."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    value: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def nbytes(self) -> int:
        if self.dtype == MXINT4:           # [N, K] elements, two per byte (numerics.mx_pack)
            return self.shape[0] * ((self.shape[1] + 1) // 2)
        return int(math.prod(self.shape)) * np.dtype(self.dtype).itemsize

    @property
    def scalar(self) -> int:
        """The value of a one-element constant (0 when compiling without weights)."""
        if int(math.prod(self.shape)) != 1:
            raise CompileError(f"{self.name}: expected a scalar, got shape {self.shape}")
        return 0 if self.value is None else int(np.asarray(self.value).reshape(-1)[0])


_ids = itertools.count()


@dataclass(eq=False)
class Buffer:
    """Storage of one or more tensor views in L2."""

    name: str
    nbytes: int
    uid: int = field(default_factory=lambda: next(_ids))


@dataclass(frozen=True, eq=False)
class Tensor:
    """A row-major activation view: ``shape``/``dtype`` at ``offset`` bytes into ``buffer``."""

    buffer: Buffer
    shape: tuple[int, ...]
    dtype: str
    offset: int = 0

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        return int(math.prod(self.shape)) * self.itemsize

    @property
    def rows(self) -> int:
        """Leading dimension when viewed as a matrix [rows, cols]."""
        return self.shape[0] if len(self.shape) > 1 else 1

    @property
    def cols(self) -> int:
        return int(math.prod(self.shape[1:] if len(self.shape) > 1 else self.shape))

    @property
    def row_bytes(self) -> int:
        return self.cols * self.itemsize

    def view(self, shape: tuple[int, ...], offset: int = 0, dtype: str | None = None) -> Tensor:
        return Tensor(self.buffer, tuple(shape), dtype or self.dtype, self.offset + offset)


def new_tensor(name: str, shape: tuple[int, ...], dtype: str) -> Tensor:
    nbytes = int(math.prod(shape)) * np.dtype(dtype).itemsize
    return Tensor(Buffer(name, nbytes), tuple(shape), dtype)


@dataclass(frozen=True)
class ParamWords:
    """Requantisation parameters packed as parameter words (``arch.isa.PARAM_WORD``), per
    channel or one. With ``then``, a second set is interleaved: two words per column."""

    mult: Param
    shift: Param
    then: ParamWords | None = None

    @property
    def name(self) -> str:
        name = self.mult.name.rsplit(".", 1)[0]
        if self.then is not None:
            name += "+" + self.then.mult.name.rsplit(".", 1)[0]
        return name + ".words"

    @property
    def count(self) -> int:
        """Columns (1 when one word serves all columns)."""
        return int(math.prod(self.mult.shape))

    @property
    def words_per_column(self) -> int:
        return 1 if self.then is None else 2


# -- operations ----------------------------------------------------------------------

@dataclass(frozen=True)
class Embed:
    table: Param            # [vocab, d_model] int16
    start: int              # position of the first token in the token buffer
    out: Tensor             # [T, d_model] int16
    seq: int = 0            # the sequence whose token buffer it reads (a batch's index)


@dataclass(frozen=True)
class MatMul:
    x: Tensor               # [M, K] int8
    w: Param                # [N, K] int8, or MXINT4 elements (dtype MXINT4)
    out: Tensor             # [M, N] int32
    w_exps: Param | None = None   # MXINT4: [N, ceil(K / 32)] block exponents (numerics.mx_matmul)


@dataclass(frozen=True)
class Requant:
    src: Tensor             # [M, N] int32
    params: ParamWords
    bias: Param | None
    out: Tensor             # [M, N] int8 or int16


@dataclass(frozen=True)
class RmsNorm:
    src: Tensor             # [T, D] int16
    out: Tensor             # [T, D] int8
    mult: int
    shift: int
    eps: int


@dataclass(frozen=True)
class Rope:
    src: Tensor             # [T, heads, head_dim] int8
    out: Tensor
    pos0: int
    freq: Param             # [head_dim / 2] uint32


@dataclass(frozen=True)
class KvAppend:
    src: Tensor             # [T, n_kv, head_dim] int8
    layer: int
    kind: str               # "k" or "v"
    start: int
    seq: int = 0            # the sequence whose block table maps the rows


@dataclass(frozen=True)
class Attention:
    q: Tensor               # [T, n_heads, head_dim] int8 (after RoPE)
    k_new: Tensor           # [T, n_kv, head_dim] int8 (after RoPE)
    v_new: Tensor
    layer: int
    start: int              # position of the first new token; rows [0, start) are cached
    sm_mult: int
    sm_shift: int
    att_mult: int           # P @ V requantisation for a softmax row sum of 2**15
    att_shift: int          # (SOFTMAX's out_mult / out_shift)
    out: Tensor             # [T, n_heads * head_dim] int8
    seq: int = 0            # the sequence whose block table maps the cached rows
    packed: int = 0         # cached rows [0, packed) are compressed chunks (whole KV
    #                         blocks, read with KvFormat.CHUNKED); the rest int8 rows


@dataclass(frozen=True)
class SiluMul:
    gate: Tensor            # [T, F] int32
    up: Tensor              # [T, F] int8
    params: ParamWords      # per channel: the gate's words, then the output's
    out: Tensor             # [T, F] int8


@dataclass(frozen=True)
class ResAdd:
    h: Tensor               # [T, D] int16, updated in place
    acc: Tensor             # [T, D] int32
    params: ParamWords
    out: Tensor             # a view of h


@dataclass(frozen=True)
class Argmax:
    src: Tensor             # [V] int16
    out: Tensor             # [1] int32


@dataclass(frozen=True)
class LmHead:
    """The LM head of one row in column chunks of the vocabulary, for a logits row larger
    than L2 holds (``backend.chunk_lm_head`` makes it of a MatMul, Requant, Argmax and
    logits Output): each chunk's int32 accumulators, int16 logits (stored to the logits
    row in DRAM) and first maximum; then the first maximum over the chunks' maxima."""

    x: Tensor               # [1, D] int8
    w: Param                # [V, D] int8
    params: ParamWords      # the logits' requantisation
    columns: Param          # [V] int32: 0..V-1, each column's index, gathered by the maxima
    row: int                # the logits row in DRAM
    chunk_cols: int
    acc: Tensor             # [1, chunk_cols] int32
    logits: Tensor          # [1, chunk_cols] int16
    local: Tensor           # [n_chunks] int32: each chunk's argmax, within the chunk
    maxima: Tensor          # [n_chunks] int16: each chunk's maximum
    indices: Tensor         # [n_chunks] int32: each chunk's argmax, in the vocabulary
    best: Tensor            # [1] int32: the chunk holding the first maximum
    out: Tensor             # [1] int32: the next token
    seq: int = 0            # the sequence whose logits row it writes

    @property
    def chunks(self) -> list[tuple[int, int]]:
        """``(first column, columns)`` of each chunk."""
        V = self.w.shape[0]
        return [(c0, min(self.chunk_cols, V - c0)) for c0 in range(0, V, self.chunk_cols)]


@dataclass(frozen=True)
class Output:
    """Store a result to its DRAM region: ``logits`` rows or the ``next_token``."""

    src: Tensor
    kind: str               # "logits" or "token"
    row: int                # first logits row, or the token's position
    seq: int = 0            # the sequence whose logits rows or token buffer it writes


Op = Embed | MatMul | Requant | RmsNorm | Rope | KvAppend | Attention | SiluMul | ResAdd \
    | Argmax | LmHead | Output
OPS: tuple[type, ...] = typing.get_args(Op)      # every operation class of the IR


@dataclass
class Graph:
    """A step's operations: ``tokens`` tokens from position ``start`` of one sequence,
    or, for a batched decode step (``compiler.batching``), one token of each of
    ``tokens`` sequences at ``positions`` (``start`` is then the least)."""

    name: str
    start: int
    tokens: int
    ops: list = field(default_factory=list)
    positions: tuple[int, ...] | None = None

    def tensors_of(self, op) -> list[Tensor]:
        return [v for v in vars(op).values() if isinstance(v, Tensor)]


def verify(graph: Graph) -> None:
    """Shapes and dtypes agree between producers and consumers."""
    for op in graph.ops:
        kind = type(op).__name__
        if isinstance(op, MatMul):
            (m, k), (n, k2) = op.x.shape, op.w.shape
            mx = op.w.dtype == MXINT4
            if (k != k2 or op.out.shape != (m, n) or op.x.dtype != "int8"
                    or op.out.dtype != "int32" or mx != (op.w_exps is not None)
                    or (mx and op.w_exps.shape != (n, mx_blocks(k)))):
                raise CompileError(f"{graph.name}: bad MatMul {op.x.shape} x {op.w.shape}")
        elif isinstance(op, Requant):
            if op.src.shape != op.out.shape or op.src.dtype != "int32":
                raise CompileError(f"{graph.name}: bad Requant {op.src.shape} -> {op.out.shape}")
        elif isinstance(op, LmHead):
            n = len(op.chunks)
            if (op.x.shape != (1, op.w.shape[1]) or op.acc.shape != (1, op.chunk_cols)
                    or op.logits.shape != (1, op.chunk_cols) or op.maxima.shape != (n,)
                    or op.indices.shape != (n,) or op.local.shape != (n,)
                    or op.columns.shape != (op.w.shape[0],)):
                raise CompileError(f"{graph.name}: bad LmHead of {op.w.shape} in chunks of "
                                   f"{op.chunk_cols}")
        elif isinstance(op, RmsNorm | SiluMul | ResAdd):
            src = {RmsNorm: "src", SiluMul: "gate", ResAdd: "h"}[type(op)]
            src = getattr(op, src)
            if src.shape != op.out.shape:
                raise CompileError(f"{graph.name}: bad {kind} {src.shape} -> {op.out.shape}")
        for t in graph.tensors_of(op):
            if t.offset + t.nbytes > t.buffer.nbytes:
                raise CompileError(f"{graph.name}: {kind} view overruns buffer {t.buffer.name}")
