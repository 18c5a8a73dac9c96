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


def _hf(**changes):
    """A small Llama config.json as a dict, with ``changes`` (None deletes a key)."""
    hf = {"model_type": "llama", "vocab_size": 64, "hidden_size": 128, "intermediate_size": 256,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "max_position_embeddings": 512, "rope_theta": 10000.0, "rms_norm_eps": 1e-5}
    for key, value in changes.items():
        if value is None:
            hf.pop(key, None)
        else:
            hf[key] = value
    return hf


@pytest.mark.parametrize(("changes", "message"), [
    ({"rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
     "rope_scaling .*llama3.* is not supported"),
    ({"rope_scaling": {"type": "linear", "factor": 4.0}}, "rope_scaling .*linear"),
    ({"model_type": "mistral", "sliding_window": 256}, "sliding_window 256 is shorter"),
    ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 128},
     "sliding_window 128 is shorter"),
    ({"attention_bias": True}, "attention_bias true is not supported"),
    ({"mlp_bias": True}, "mlp_bias true is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
    ({"quantization_config": {"quant_method": "gptq"}}, "field 'quantization_config'"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor 0.5"),
    ({"rms_norm_eps": "null"}, "rms_norm_eps is null"),
    ({"model_type": "qwen2", "head_dim": 64}, "head_dim 64 differs"),
])
def test_a_config_field_that_changes_the_numerics_is_honoured_or_refused(changes, message):
    hf = _hf(**{k: v for k, v in changes.items() if v != "null"})
    hf.update({k: None for k, v in changes.items() if v == "null"})
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_hf_dict(hf)


@pytest.mark.parametrize(("model_type", "changes", "expected"), [
    # transformers' defaults: rms_norm_eps 1e-6 for all three; absent key-value heads are
    # as many as the query heads (Llama), 32 (Qwen2), 8 (Mistral); null means "as many"
    ("llama", {"rms_norm_eps": None}, {"norm_eps": 1e-6}),
    ("qwen2", {"rms_norm_eps": None}, {"norm_eps": 1e-6, "qkv_bias": True}),
    ("mistral", {"rms_norm_eps": None, "sliding_window": "null"}, {"norm_eps": 1e-6}),
    ("llama", {"num_key_value_heads": None}, {"n_kv_heads": 4}),
    ("llama", {"num_key_value_heads": "null", "head_dim": "null"},
     {"n_kv_heads": 4, "head_dim": 32}),
    ("qwen2", {"num_attention_heads": 32, "hidden_size": 1024, "num_key_value_heads": None},
     {"n_kv_heads": 32}),
    ("mistral", {"num_attention_heads": 8, "num_key_value_heads": None}, {"n_kv_heads": 8}),
    ("llama", {"max_position_embeddings": None}, {"max_seq_len": 2048}),
    ("qwen2", {"max_position_embeddings": None, "sliding_window": 4096},
     {"max_seq_len": 32768}),                    # a window that use_sliding_window leaves off
    ("mistral", {"sliding_window": 4096, "max_position_embeddings": 4096},
     {"max_seq_len": 4096}),                     # a window as long as the context
    ("llama", {"rope_scaling": {"rope_type": "default"}, "head_dim": 64,
               "num_attention_heads": 2, "num_key_value_heads": 1}, {"head_dim": 64}),
])
def test_hf_defaults_and_nulls_follow_the_library(model_type, changes, expected):
    hf = _hf(model_type=model_type, **{k: v for k, v in changes.items() if v != "null"})
    hf.update({k: None for k, v in changes.items() if v == "null"})
    cfg = ModelConfig.from_hf_dict(hf)
    for field, value in expected.items():
        assert getattr(cfg, field) == value, field
