"""Frontend: trace the integer reference with ``jax.make_jaxpr`` and lower it to the IR.

Contract
--------
``trace_step(cfg, qm, start, n_tokens)`` traces ``models.integer.int_step`` for one step
(``n_tokens`` new tokens at positions ``start..``); ``qm`` may hold arrays or, to
compile without weights, ``jax.ShapeDtypeStruct`` leaves (``integer.quant_struct``).
``lower_step(...)`` walks the jaxpr equation by equation with a registry of rules keyed
by primitive (``LOWERINGS``); a ``jit`` equation is lowered by the rule registered for
its ``name`` in ``KERNELS`` (the named kernels of ``models/integer.py``) or, if there is
none, inlined. Equations whose inputs are all compile-time constants are evaluated.
Anything else is refused with a ``CompileError`` naming the primitive and the model
source line that produced it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np

from compiler.ir import (
    MXINT4,
    Argmax,
    Attention,
    CompileError,
    Embed,
    Graph,
    KvAppend,
    MatMul,
    Output,
    Param,
    ParamWords,
    Requant,
    ResAdd,
    RmsNorm,
    Rope,
    SiluMul,
    Tensor,
    new_tensor,
    verify,
)
from models.config import ModelConfig
from models.integer import int_step

# -- values the walk tracks besides Tensor and Param ---------------------------------

@dataclass(frozen=True)
class Known:
    """A value known at compile time (positions, masks, literals)."""

    value: np.ndarray


@dataclass(frozen=True)
class TokenIds:
    start: int
    count: int


@dataclass(frozen=True)
class KvCache:
    layer: int
    kind: str


@dataclass(frozen=True)
class KvUpdated:
    layer: int
    kind: str
    start: int
    new: Tensor


def trace_step(cfg: ModelConfig, qm, start: int, n_tokens: int, head: bool = True):
    """The closed jaxpr of one greedy step, and the dotted names of ``qm``'s leaves."""
    cache_row = jax.ShapeDtypeStruct((cfg.max_seq_len, cfg.n_kv_heads, cfg.head_dim), jnp.int8)
    cache = {"k": (cache_row,) * cfg.n_layers, "v": (cache_row,) * cfg.n_layers}
    tokens = jax.ShapeDtypeStruct((n_tokens,), jnp.int32)

    def step(qm, cache, tokens):
        return int_step(qm, cache, tokens, start, cfg, head)

    with jax.enable_x64(True):
        closed = jax.make_jaxpr(step)(qm, cache, tokens)
    paths = jax.tree_util.tree_flatten_with_path(qm)[0]
    names = [".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
             for path, _ in paths]
    values = [leaf if isinstance(leaf, np.ndarray | jax.Array) else None for _, leaf in paths]
    return closed, names, values


def _where(eqn) -> str:
    return jex.source_info_util.summarize(eqn.source_info)


class Lowering:
    """The state of one walk: the environment and the graph being built."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.env: dict = {}
        self.counter = 0

    # -- environment -------------------------------------------------------------------
    def read(self, var):
        if isinstance(var, jex.core.Literal):
            return Known(np.asarray(var.val))
        return self.env[var]

    def fresh(self, stem: str, shape, dtype) -> Tensor:
        self.counter += 1
        return new_tensor(f"{stem}{self.counter}", tuple(int(s) for s in shape), str(dtype))

    def emit(self, op) -> None:
        self.graph.ops.append(op)

    # -- walking -----------------------------------------------------------------------
    def walk(self, jaxpr, inputs: list) -> list:
        for var, value in zip(jaxpr.invars, inputs, strict=True):
            self.env[var] = value
        for eqn in jaxpr.eqns:
            args = [self.read(v) for v in eqn.invars]
            if all(isinstance(a, Known) for a in args):
                outs = self.fold(eqn, args)
            else:
                rule = LOWERINGS.get(eqn.primitive.name)
                if rule is None:
                    raise CompileError(f"cannot lower primitive {eqn.primitive.name!r} "
                                       f"(from {_where(eqn)})")
                try:
                    outs = rule(self, eqn, args)
                except CompileError as e:
                    if "(from " in str(e):
                        raise
                    raise CompileError(f"{e} (from {_where(eqn)})") from None
            for var, value in zip(eqn.outvars, outs, strict=True):
                self.env[var] = value
        return [self.read(v) for v in jaxpr.outvars]

    def fold(self, eqn, args: list[Known]) -> list[Known]:
        values = [np.asarray(a.value) for a in args]
        numpy = _NUMPY_FOLDS.get(eqn.primitive.name)
        if (numpy and all(v.dtype.kind in "iu" for v in values)
                and np.dtype(eqn.params.get("dtype", np.int32)).kind in "iu"
                and eqn.params.get("out_dtype") is None):
            return [Known(np.asarray(numpy(*values, **eqn.params)))]
        with jax.enable_x64(True):
            out = eqn.primitive.bind(*map(jnp.asarray, values), **eqn.params)
        outs = out if eqn.primitive.multiple_results else [out]
        return [Known(np.asarray(o)) for o in outs]


def _iota(*, dtype, shape, dimension, sharding):
    axis = [-1 if i == dimension else 1 for i in range(len(shape))]
    return np.broadcast_to(np.arange(shape[dimension], dtype=dtype).reshape(axis), shape)


def _mul(x, y, *, out_dtype):
    return np.multiply(x, y)


#: Constant integer equations evaluated with NumPy rather than dispatched to XLA, which
#: compiles a program for each new shape (a step's positions, ``start + iota(n_tokens)``,
#: cost tens of milliseconds at each chunk size the driver tries). NumPy's integer
#: arithmetic on operands of one dtype wraps as XLA's does (the jaxpr gives both
#: operands the same dtype); tests/compiler/test_frontend.py checks them against JAX.
_NUMPY_FOLDS: dict[str, Callable] = {"iota": _iota, "add": np.add, "sub": np.subtract,
                                     "mul": _mul}


# -- helpers for rules -----------------------------------------------------------------

def _tensor(value, what: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise CompileError(f"{what} must be a computed activation, got {type(value).__name__}")
    return value


def _param(value, what: str) -> Param:
    if not isinstance(value, Param):
        raise CompileError(f"{what} must be a model constant, got {type(value).__name__}")
    return value


def _scalar(value, what: str) -> int:
    if isinstance(value, Known):
        return int(np.asarray(value.value).reshape(-1)[0])
    return _param(value, what).scalar


def _positions(value, count: int) -> int:
    """The first position of a compile-time ``pos0 + arange(count)`` vector."""
    if not isinstance(value, Known):
        raise CompileError("token positions must be known at compile time")
    pos = np.asarray(value.value).reshape(-1)
    if pos.size != count or np.any(pos != pos[0] + np.arange(count)):
        raise CompileError(f"positions {pos.tolist()} are not consecutive")
    return int(pos[0])


# -- primitive rules -------------------------------------------------------------------

def _dot_general(lw: Lowering, eqn, args):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    x, w = args
    if lb or rb:
        raise CompileError("batched dot_general outside a named kernel is not supported")
    x = _tensor(x, "the left operand of a matmul")
    w = _param(w, "the right operand of a matmul")
    if len(x.shape) != 2 or len(w.shape) != 2 or tuple(lc) != (1,) or tuple(rc) != (1,):
        raise CompileError(f"matmul must be x[M,K] @ w[N,K].T, got {x.shape} and {w.shape} "
                           f"contracting {lc}, {rc}")
    if x.dtype != "int8" or w.dtype != "int8":
        raise CompileError(f"matmul operands must be int8, got {x.dtype} and {w.dtype}")
    out = lw.fresh("mm", (x.shape[0], w.shape[0]), "int32")
    lw.emit(MatMul(x, w, out))
    return [out]


def _k_mx_matmul(lw: Lowering, eqn, args):
    """``integer.mx_matmul``: a MatMul with MXINT4 weights (elements and block exponents)."""
    x, elems, shifts = args
    x = _tensor(x, "the left operand of a matmul")
    elems = _param(elems, "MXINT4 weight elements")
    shifts = _param(shifts, "MXINT4 block exponents")
    if len(x.shape) != 2 or x.dtype != "int8" or elems.shape[1] != x.shape[1]:
        raise CompileError(f"MXINT4 matmul must be int8 x[M,K] @ w[N,K].T, got {x.shape} "
                           f"{x.dtype} and {elems.shape}")
    w = Param(elems.name, elems.shape, MXINT4, elems.value)
    out = lw.fresh("mm", (x.shape[0], elems.shape[0]), "int32")
    lw.emit(MatMul(x, w, out, w_exps=shifts))
    return [out]


def _reshape(lw: Lowering, eqn, args):
    src = args[0]
    shape = tuple(int(s) for s in eqn.params["new_sizes"])
    if isinstance(src, Tensor):
        return [src.view(shape)]
    raise CompileError(f"reshape of a {type(src).__name__} is not supported")


def _slice(lw: Lowering, eqn, args):
    src = _tensor(args[0], "a sliced value")
    starts, limits = eqn.params["start_indices"], eqn.params["limit_indices"]
    strides = eqn.params.get("strides")
    if strides and any(s != 1 for s in strides):
        raise CompileError("strided slices are not supported")
    if any(s != 0 or e != d for s, e, d in zip(starts[1:], limits[1:], src.shape[1:],
                                               strict=True)):
        raise CompileError("only slices of whole rows are supported")
    row_bytes = src.nbytes // src.shape[0]
    shape = (limits[0] - starts[0],) + src.shape[1:]
    return [src.view(shape, offset=starts[0] * row_bytes)]


def _squeeze(lw: Lowering, eqn, args):
    src = _tensor(args[0], "a squeezed value")
    dims = eqn.params["dimensions"]
    return [src.view(tuple(s for i, s in enumerate(src.shape) if i not in dims))]


def _jit(lw: Lowering, eqn, args):
    name = eqn.params["name"]
    rule = KERNELS.get(name)
    if rule is not None:
        return rule(lw, eqn, args)
    return lw.walk(eqn.params["jaxpr"].jaxpr, args)


# -- kernel rules (the named kernels of models/integer.py) -----------------------------

def _k_embedding(lw: Lowering, eqn, args):
    table, tokens = args
    if not isinstance(tokens, TokenIds):
        raise CompileError("the embedding must read the step's input tokens")
    table = _param(table, "the embedding table")
    out = lw.fresh("embed", (tokens.count, table.shape[1]), table.dtype)
    lw.emit(Embed(table, tokens.start, out))
    return [out]


def _k_rmsnorm(lw: Lowering, eqn, args):
    h, mult, shift, eps = args
    h = _tensor(h, "the RMSNorm input")
    out = lw.fresh("norm", h.shape, "int8")
    lw.emit(RmsNorm(h, out, _scalar(mult, "mult"), _scalar(shift, "shift"), _scalar(eps, "eps")))
    return [out]


def _k_requant(lw: Lowering, eqn, args):
    acc, mult, shift, *bias = args
    out_dtype = str(eqn.outvars[0].aval.dtype)
    acc = _tensor(acc, "the requantised accumulators")
    params = ParamWords(_param(mult, "mult"), _param(shift, "shift"))
    out = lw.fresh("rq", acc.shape, out_dtype)
    lw.emit(Requant(acc, params, _param(bias[0], "bias") if bias else None, out))
    return [out]


def _k_rope(lw: Lowering, eqn, args):
    x, positions, freq = args
    x = _tensor(x, "the RoPE input")
    out = lw.fresh("rope", x.shape, "int8")
    lw.emit(Rope(x, out, _positions(positions, x.shape[0]), _param(freq, "the RoPE table")))
    return [out]


def _k_kv_write(lw: Lowering, eqn, args):
    cache, new, start = args
    if not isinstance(cache, KvCache):
        raise CompileError("kv_write must update a layer's input KV cache")
    new = _tensor(new, "the new KV rows")
    start = _scalar(start, "start")
    lw.emit(KvAppend(new, cache.layer, cache.kind, start))
    return [KvUpdated(cache.layer, cache.kind, start, new)]


def _k_attention(lw: Lowering, eqn, args):
    q, k, v, positions, sm_mult, sm_shift, att_mult, att_shift = args
    q = _tensor(q, "the attention queries")
    for cache in (k, v):
        if not isinstance(cache, KvUpdated):
            raise CompileError("attention must read KV caches updated by kv_write")
    T = q.shape[0]
    pos0 = _positions(positions, T)
    if k.start != pos0 or v.start != pos0 or k.layer != v.layer:
        raise CompileError("attention positions do not match the KV rows just written")
    out = lw.fresh("att", (T, q.shape[1] * q.shape[2]), "int8")
    lw.emit(Attention(q, k.new, v.new, k.layer, pos0, _scalar(sm_mult, "softmax mult"),
                      _scalar(sm_shift, "softmax shift"), _scalar(att_mult, "attention mult"),
                      _scalar(att_shift, "attention shift"), out))
    return [out]


def _k_silu_mul(lw: Lowering, eqn, args):
    gate, up, gate_mult, gate_shift, mult, shift = args
    gate = _tensor(gate, "the gate accumulators")
    out = lw.fresh("swiglu", gate.shape, "int8")
    out_words = ParamWords(_param(mult, "mult"), _param(shift, "shift"))
    words = ParamWords(_param(gate_mult, "mult"), _param(gate_shift, "shift"), out_words)
    if out_words.count != words.count:
        raise CompileError("SwiGLU gate and output parameters must both be per channel")
    lw.emit(SiluMul(gate, _tensor(up, "the up projection"), words, out))
    return [out]


def _k_residual_add(lw: Lowering, eqn, args):
    h, acc, mult, shift = args
    h = _tensor(h, "the residual")
    lw.emit(ResAdd(h, _tensor(acc, "the projection"),
                   ParamWords(_param(mult, "mult"), _param(shift, "shift")), h))
    return [h]


def _k_argmax(lw: Lowering, eqn, args):
    src = _tensor(args[0], "the argmax input")
    out = lw.fresh("token", (1,), "int32")
    lw.emit(Argmax(src, out))
    return [out]


Rule = Callable[[Lowering, object, list], list]

LOWERINGS: dict[str, Rule] = {
    "dot_general": _dot_general,
    "reshape": _reshape,
    "slice": _slice,
    "squeeze": _squeeze,
    "jit": _jit,
    "pjit": _jit,
}

KERNELS: dict[str, Rule] = {
    "embedding": _k_embedding,
    "rmsnorm": _k_rmsnorm,
    "requant": _k_requant,
    "rope": _k_rope,
    "kv_write": _k_kv_write,
    "attention": _k_attention,
    "silu_mul": _k_silu_mul,
    "residual_add": _k_residual_add,
    "argmax": _k_argmax,
    "mx_matmul": _k_mx_matmul,
}


def lower_step(cfg: ModelConfig, qm, start: int, n_tokens: int, head: bool = True,
               name: str | None = None, seq: int = 0) -> Graph:
    """The IR graph of one step: ``n_tokens`` tokens from position ``start``. With
    ``head`` (a decode step, a prompt's last prefill chunk) the step also computes the
    last token's logits (written at row ``start + n_tokens - 1`` of the logits region) and
    the next token; without it (an earlier prefill chunk) only the KV cache. ``seq``
    names the sequence of a batched build whose token buffer, block table and logits
    rows the step reads and writes (0 for a single sequence)."""
    if n_tokens <= 0:
        raise CompileError("a step needs at least one token")
    if start + n_tokens > cfg.max_seq_len:
        raise CompileError(f"positions {start}..{start + n_tokens - 1} exceed the model's "
                           f"context of {cfg.max_seq_len} tokens")
    closed, names, values = trace_step(cfg, qm, start, n_tokens, head)
    graph = Graph(name or f"step@{start}", start, n_tokens)
    lw = Lowering(graph)
    jaxpr = closed.jaxpr
    n_params = len(names)
    inputs: list = []
    for var, pname, value in zip(jaxpr.invars[:n_params], names, values, strict=True):
        aval = var.aval
        inputs.append(Param(pname, tuple(aval.shape), str(aval.dtype),
                            None if value is None else np.asarray(value)))
    caches = [KvCache(i, kind) for kind in ("k", "v") for i in range(cfg.n_layers)]
    inputs += caches + [TokenIds(start, n_tokens)]
    consts = [Known(np.asarray(c)) for c in closed.consts]
    for var, value in zip(jaxpr.constvars, consts, strict=True):
        lw.env[var] = value
    outs = lw.walk(jaxpr, inputs)
    new_caches = outs[2:] if head else outs
    if head:
        logits, token = outs[:2]
        graph.ops.append(Output(_tensor(logits, "the logits"), "logits", start + n_tokens - 1))
        graph.ops.append(Output(_tensor(token, "the next token"), "token", start + n_tokens))
    if not all(isinstance(c, KvUpdated) for c in new_caches):
        raise CompileError("every layer's KV cache must be updated by kv_write")
    if seq:
        graph.ops = [dataclasses.replace(op, seq=seq) if hasattr(op, "seq") else op
                     for op in graph.ops]
    verify(graph)
    return graph
