"""Save/load in the Hugging Face Llama safetensors layout, on a checkpoint the test writes."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from models.config import RopeScaling
from models.reference import init_params
from models.weights import (
    INDEX_FILE,
    WEIGHT_DTYPES,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)


@pytest.mark.parametrize("overrides", [{}, {"qkv_bias": True, "tie_embeddings": True}])
def test_round_trip(tmp_path, small_config, overrides):
    cfg = small_config(**overrides)
    params = init_params(cfg, seed=4)
    save_checkpoint(tmp_path, params, cfg)
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["hidden_size"] == cfg.d_model and hf["num_key_value_heads"] == cfg.n_kv_heads
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert tensors["model.layers.1.self_attn.k_proj.weight"].shape == (cfg.kv_dim, cfg.d_model)
    assert ("lm_head.weight" in tensors) == (not cfg.tie_embeddings)
    cfg2, params2 = load_checkpoint(tmp_path, name=cfg.name)
    assert cfg2 == cfg
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2), strict=True):
        np.testing.assert_array_equal(a, b)


def test_corrupt_file_is_reported(tmp_path, small_config):
    cfg = small_config()
    save_checkpoint(tmp_path, init_params(cfg), cfg)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shard_bytes", [None, 20_000])
def test_dtypes_and_shards_load_as_the_rounded_float32_weights(tmp_path, small_config, dtype,
                                                               shard_bytes):
    cfg = small_config(rope_scaling=RopeScaling("linear", 2.0), n_heads=3, n_kv_heads=1,
                       head_dim=32)
    params = init_params(cfg, seed=5)
    np_dtype = WEIGHT_DTYPES[["float32", "float16", "bfloat16"].index(dtype)]
    save_checkpoint(tmp_path, params, cfg, dtype=np_dtype, shard_bytes=shard_bytes)
    if shard_bytes:
        index = json.loads((tmp_path / INDEX_FILE).read_text())
        shards = set(index["weight_map"].values())
        assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    cfg2, params2 = load_checkpoint(tmp_path, name=cfg.name)
    assert cfg2 == cfg
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2), strict=True):
        expected = np.asarray(a).astype(np_dtype).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(b), expected)
        assert b.dtype == np.float32


def _sharded(tmp_path, small_config):
    cfg = small_config()
    save_checkpoint(tmp_path, init_params(cfg), cfg, shard_bytes=20_000)
    return json.loads((tmp_path / INDEX_FILE).read_text())


def test_a_missing_shard_is_named(tmp_path, small_config):
    index = _sharded(tmp_path, small_config)
    (tmp_path / index["weight_map"]["model.norm.weight"]).unlink()
    with pytest.raises(CheckpointError, match=r"index\.json: shard 'model-\d{5}-of-\d{5}\."
                                              r"safetensors' is missing"):
        load_checkpoint(tmp_path)


def test_a_tensor_in_the_wrong_shard_is_named(tmp_path, small_config):
    index = _sharded(tmp_path, small_config)
    name = "model.layers.1.mlp.down_proj.weight"
    assert index["weight_map"][name] != index["weight_map"]["model.embed_tokens.weight"]
    index["weight_map"][name] = index["weight_map"]["model.embed_tokens.weight"]
    (tmp_path / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"tensor '{name}' is (not in this shard|"
                                              f"listed in shard .*does not hold it)"):
        load_checkpoint(tmp_path)


def test_a_broken_index_and_no_weights_at_all_are_named(tmp_path, small_config):
    _sharded(tmp_path, small_config)
    (tmp_path / INDEX_FILE).write_text('{"metadata": {}}')
    with pytest.raises(CheckpointError, match="index.json: not an index"):
        load_checkpoint(tmp_path)
    (tmp_path / INDEX_FILE).unlink()
    with pytest.raises(CheckpointError, match="neither model.safetensors nor "
                                              "model.safetensors.index.json"):
        load_checkpoint(tmp_path)


def _set(name, value):
    return lambda t: t.update({name: value(t) if callable(value) else value})


@pytest.mark.parametrize(("edit", "message"), [
    (_set("model.layers.0.mlp.up_proj.weight", np.zeros((5, 7), np.float32)),
     r"model\.layers\.0\.mlp\.up_proj\.weight.*\(5, 7\).*\(96, 64\)"),
    (lambda t: t.pop("model.norm.weight"), "'model.norm.weight' is missing"),
    (_set("model.norm.weight", lambda t: t["model.norm.weight"].astype(np.int8)),
     "'model.norm.weight' is I8; weights must be"),
    (lambda t: t["model.layers.1.mlp.up_proj.weight"].__setitem__((3, 2), np.nan),
     "'model.layers.1.mlp.up_proj.weight' holds NaN"),
])
def test_a_bad_tensor_is_refused_by_name(tmp_path, small_config, edit, message):
    cfg = small_config()
    save_checkpoint(tmp_path, init_params(cfg), cfg)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path)


def test_rope_buffers_are_ignored(tmp_path, small_config):
    """Older Llama conversions store RoPE's inverse frequencies; transformers ignores them."""
    cfg = small_config()
    save_checkpoint(tmp_path, init_params(cfg), cfg)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    assert load_checkpoint(tmp_path, name=cfg.name)[0] == cfg


def test_the_single_file_is_read_before_an_index(tmp_path, small_config):
    """As transformers does: a folder with both reads model.safetensors."""
    cfg = small_config()
    save_checkpoint(tmp_path, init_params(cfg), cfg)
    (tmp_path / INDEX_FILE).write_text('{"weight_map": {"x": "missing.safetensors"}}')
    assert load_checkpoint(tmp_path, name=cfg.name)[0] == cfg
