import json

import pytest

from models.config import PRESET_NAMES, ConfigError, ModelConfig, preset


def test_presets_have_published_shapes():
    sheared = preset("sheared-llama-1.3b")
    shape = (sheared.d_model, sheared.n_layers, sheared.n_heads, sheared.d_ff)
    assert shape == (2048, 24, 16, 5504)
    llama1b = preset("llama-3.2-1b")
    assert (llama1b.n_kv_heads, llama1b.vocab_size, llama1b.tie_embeddings) == (8, 128256, True)
    qwen = preset("qwen2.5-0.5b")
    assert qwen.qkv_bias and qwen.group_size == 7
    # Parameter counts match the published sizes.
    assert 1.23e9 < llama1b.n_params < 1.24e9
    assert 1.34e9 < sheared.n_params < 1.35e9
    assert 1.09e9 < preset("tinyllama-1.1b").n_params < 1.11e9
    assert 0.49e9 < qwen.n_params < 0.50e9
    assert 8.0e9 < preset("llama-3-8b").n_params < 8.1e9


def test_unknown_preset_is_refused_with_the_known_names():
    with pytest.raises(ConfigError, match="unknown model preset 'gpt-5'.*tiny"):
        preset("gpt-5")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("n_heads", 3, "n_heads \\(3\\) must divide d_model"),
    ("n_kv_heads", 3, "n_kv_heads \\(3\\) must divide n_heads"),
    ("d_model", 0, "d_model must be a positive integer"),
    ("n_layers", -1, "n_layers must be a positive integer"),
    ("vocab_size", 2.5, "vocab_size must be a positive integer"),
    ("head_dim", 15, "head_dim must be even"),
    ("rope_theta", 0.0, "rope_theta must be positive"),
])
def test_impossible_shapes_name_the_field(small_config, field, value, message):
    with pytest.raises(ConfigError, match=message):
        small_config(**{field: value})


def test_hf_config_round_trip(tmp_path):
    for name in PRESET_NAMES:
        cfg = preset(name)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(cfg.to_hf_dict()))
        assert ModelConfig.from_hf_json(path, name=name) == cfg


def test_hf_config_missing_key_is_named(tmp_path):
    hf = preset("tiny").to_hf_dict()
    del hf["intermediate_size"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(hf))
    with pytest.raises(ConfigError, match="intermediate_size"):
        ModelConfig.from_hf_json(path)
