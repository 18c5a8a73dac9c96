"""Batched decode: the decode steps of several sequences as one graph that reads the
weights once.

Contract
--------
``batch_graphs(graphs, name)`` merges the decode-step graphs of ``B`` sequences
(``frontend.lower_step`` with ``n_tokens = 1``, each at its own position and with its
own ``seq`` index) into one graph:

* the operations that treat each token's row alone and read the same constants for
  every sequence (``ROW_WISE``: the projections, requantisation, RMSNorm, SwiGLU, the
  residual add) become one operation over ``B`` rows. A projection is then one
  ``[B, K] x [K, N]`` matmul, so its weights stream from DRAM once for the whole batch:
  vLLM's reason for batching decode (arXiv 2309.06180, section 2.3);
* the operations that depend on a sequence's position or its KV cache (``PER_SEQUENCE``:
  the embedding gather, RoPE, the KV append, attention, the outputs, the argmax) stay
  one per sequence, on that sequence's row.

Every activation buffer of the single-sequence graphs becomes one buffer of ``B`` rows,
sequence ``b``'s at row ``b``, so each sequence's values are where its own step would
compute them, and each row is computed by the same instructions on the same values:
the batch is bit-exact against running every sequence alone (the integer reference's
rows are independent in every ``ROW_WISE`` operation).

Raises ``CompileError`` when the graphs are not decode steps of one model (different
operations or constants), or a row-wise operation reads part of a buffer.

Tested by tests/compiler/test_batching.py.
"""

from __future__ import annotations

import dataclasses

from compiler.ir import (
    Argmax,
    Attention,
    Buffer,
    CompileError,
    Embed,
    Graph,
    KvAppend,
    LmHead,
    MatMul,
    Output,
    Requant,
    ResAdd,
    RmsNorm,
    Rope,
    SiluMul,
    Tensor,
)

ROW_WISE = (MatMul, Requant, RmsNorm, SiluMul, ResAdd)
PER_SEQUENCE = (Embed, Rope, KvAppend, Attention, Output, Argmax, LmHead)


class _Buffers:
    """Each single-sequence buffer's batched buffer: the buffer of the first graph at the
    same place stands for them all, ``B`` times its size."""

    def __init__(self, batch: int):
        self.batch = batch
        self.merged: dict[int, tuple[Buffer, int]] = {}    # uid -> (batched buffer, row)

    def map(self, tensors: list[Tensor], where: str) -> Buffer:
        first = tensors[0].buffer
        if first.uid not in self.merged:
            self.merged[first.uid] = (Buffer(f"{first.name}.x{self.batch}",
                                             first.nbytes * self.batch), 0)
        merged = self.merged[first.uid][0]
        for b, t in enumerate(tensors):
            if t.buffer.nbytes != first.nbytes:
                raise CompileError(f"{where}: buffer {t.buffer.name} of sequence {b} is "
                                   f"{t.buffer.nbytes} bytes, not {first.nbytes}")
            known = self.merged.setdefault(t.buffer.uid, (merged, b))
            if known != (merged, b):
                raise CompileError(f"{where}: buffer {t.buffer.name} of sequence {b} is "
                                   f"used where another sequence's is not")
        return merged

    def row(self, t: Tensor) -> Tensor:
        """A mapped view ``t`` of its sequence inside the batched buffer."""
        merged, b = self.merged[t.buffer.uid]
        return Tensor(merged, t.shape, t.dtype, b * t.buffer.nbytes + t.offset)


def _tensor_fields(op) -> list[str]:
    return [f.name for f in dataclasses.fields(op) if isinstance(getattr(op, f.name), Tensor)]


def _constants(op) -> dict:
    return {f.name: getattr(op, f.name) for f in dataclasses.fields(op)
            if not isinstance(getattr(op, f.name), Tensor)}


def batch_graphs(graphs: list[Graph], name: str) -> Graph:
    """One graph running the decode steps ``graphs`` (one per sequence, in batch order)."""
    if not graphs:
        raise CompileError(f"{name}: a batch of no sequences")
    if any(g.tokens != 1 for g in graphs):
        raise CompileError(f"{name}: only decode steps (one token each) are batched")
    shapes = {tuple(type(op) for op in g.ops) for g in graphs}
    if len(shapes) != 1:
        raise CompileError(f"{name}: the sequences' steps do not lower to the same operations")
    B = len(graphs)
    buffers = _Buffers(B)
    ops: list = []
    for i, group in enumerate(zip(*(g.ops for g in graphs), strict=True)):
        kind = type(group[0])
        where = f"{name}: operation {i} ({kind.__name__})"
        fields = _tensor_fields(group[0])
        if isinstance(group[0], ROW_WISE):
            if any(_constants(op) != _constants(group[0]) for op in group):
                raise CompileError(f"{where}: the sequences' constants differ")
            merged = {}
            for f in fields:
                ts = [getattr(op, f) for op in group]
                if any(t.offset or t.nbytes != t.buffer.nbytes or t.shape[0] != 1
                       for t in ts):
                    raise CompileError(f"{where}: {f} is not one whole row of its buffer")
                merged[f] = Tensor(buffers.map(ts, where), (B,) + ts[0].shape[1:],
                                   ts[0].dtype)
            ops.append(dataclasses.replace(group[0], **merged))
        elif isinstance(group[0], PER_SEQUENCE):
            for f in fields:
                buffers.map([getattr(op, f) for op in group], where)
            for op in group:
                ops.append(dataclasses.replace(
                    op, **{f: buffers.row(getattr(op, f)) for f in fields}))
        else:
            raise CompileError(f"{where}: not known to be row-wise or per sequence")
    return Graph(name, min(g.start for g in graphs), B, ops,
                 positions=tuple(g.start for g in graphs))
