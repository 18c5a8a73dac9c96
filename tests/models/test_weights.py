"""Save/load in the Hugging Face Llama safetensors layout, on a checkpoint the test writes."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from models.reference import init_params
from models.weights import CheckpointError, load_checkpoint, save_checkpoint


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


def test_mismatched_tensor_names_tensor_and_shapes(tmp_path, small_config):
    cfg = small_config()
    save_checkpoint(tmp_path, init_params(cfg), cfg)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["model.layers.0.mlp.up_proj.weight"] = np.zeros((5, 7), np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.up_proj\.weight.*"
                                              r"\(5, 7\).*\(96, 64\)"):
        load_checkpoint(tmp_path)


def test_missing_tensor_is_named(tmp_path, small_config):
    cfg = small_config()
    save_checkpoint(tmp_path, init_params(cfg), cfg)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["model.norm.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="'model.norm.weight' is missing"):
        load_checkpoint(tmp_path)


def test_corrupt_file_is_reported(tmp_path, small_config):
    cfg = small_config()
    save_checkpoint(tmp_path, init_params(cfg), cfg)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        load_checkpoint(tmp_path)
