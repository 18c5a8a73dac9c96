"""The frontend lowers the traced integer reference, and refuses what it cannot lower
with the primitive's name and the source line that produced it."""

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


def test_positions_beyond_context_are_refused(small_config):
    cfg = small_config()
    with pytest.raises(CompileError, match="exceed the model's context of 48"):
        lower_step(cfg, quant_struct(cfg), start=47, n_tokens=2)
