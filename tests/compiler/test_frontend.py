"""The frontend lowers the traced integer reference, and refuses what it cannot lower
with the primitive's name and the source line that produced it."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compiler.frontend import Lowering, lower_step
from compiler.ir import Attention, CompileError, Graph, MatMul, Output, Rope, new_tensor
from models.integer import quant_struct


def test_lowers_every_layer_from_the_trace(small_config):
    cfg = small_config(n_layers=3)
    graph = lower_step(cfg, quant_struct(cfg), start=5, n_tokens=2)
    kinds = [type(op) for op in graph.ops]
    assert kinds.count(Attention) == 3
    assert kinds.count(MatMul) == 3 * 7 + 1                      # 7 per layer + LM head
    assert [op.pos0 for op in graph.ops if isinstance(op, Rope)] == [5] * 6
    assert [op.kind for op in graph.ops if isinstance(op, Output)] == ["logits", "token"]


def test_unsupported_primitive_names_itself_and_the_source_line():
    def model(x):
        return jnp.exp(x)                                         # no exp on the accelerator

    x = new_tensor("x", (4, 8), "int32")
    jaxpr = jax.make_jaxpr(model)(jax.ShapeDtypeStruct((4, 8), jnp.float32))
    lw = Lowering(Graph("g", 0, 1))
    with pytest.raises(CompileError, match=r"cannot lower primitive 'exp' \(from .*"
                                           r"test_frontend.py:\d+"):
        lw.walk(jaxpr.jaxpr, [x])


def test_constant_subexpressions_are_evaluated():
    def positions(start):
        return start + jnp.arange(4, dtype=jnp.int32)

    jaxpr = jax.make_jaxpr(positions)(jnp.int32(7))
    lw = Lowering(Graph("g", 0, 1))
    from compiler.frontend import Known

    (out,) = lw.walk(jaxpr.jaxpr, [Known(np.int32(7))])
    np.testing.assert_array_equal(out.value, [7, 8, 9, 10])


def test_integer_constants_fold_with_numpy_as_jax_computes_them():
    """``_NUMPY_FOLDS`` (iota, add, sub, mul on integers, evaluated without compiling an
    XLA program per shape) give what JAX's own evaluation of the equation gives, dtype
    and wraparound included, on random shapes and operands at the edges of their range;
    a float equation is still folded by JAX."""
    from compiler.frontend import _NUMPY_FOLDS, Known

    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        for dtype in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32):
            info = np.iinfo(dtype)
            for _ in range(6):
                shape = tuple(int(d) for d in rng.integers(1, 5, int(rng.integers(1, 4))))
                dim = int(rng.integers(0, len(shape)))
                a = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
                b = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
                cases = [(partial(jax.lax.broadcasted_iota, dtype, shape, dim), ()),
                         *((lambda x, y, op=op: op(x, y), (a, b))
                           for op in (jax.lax.add, jax.lax.sub, jax.lax.mul))]
                for fn, args in cases:
                    closed = jax.make_jaxpr(fn)(*args)
                    (eqn,) = closed.jaxpr.eqns
                    assert eqn.primitive.name in _NUMPY_FOLDS
                    lw = Lowering(Graph("g", 0, 1))
                    (got,) = lw.fold(eqn, [Known(x) for x in args])
                    want = np.asarray(fn(*map(jnp.asarray, args)))
                    assert got.value.dtype == want.dtype and got.value.shape == want.shape
                    np.testing.assert_array_equal(got.value, want)
        x = np.float32([1.5, 2.25])
        (eqn,) = jax.make_jaxpr(jax.lax.add)(x, x).jaxpr.eqns
        (got,) = Lowering(Graph("g", 0, 1)).fold(eqn, [Known(x), Known(x)])
        np.testing.assert_array_equal(got.value, [3.0, 4.5])


def test_positions_beyond_context_are_refused(small_config):
    cfg = small_config()
    with pytest.raises(CompileError, match="exceed the model's context of 48"):
        lower_step(cfg, quant_struct(cfg), start=47, n_tokens=2)
