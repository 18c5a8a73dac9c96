import json

import pytest

from models.config import PRESET_NAMES, ConfigError, ModelConfig, RopeScaling, preset


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
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
     "rope_scaling type 'dynamic' is not supported"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                       "original_max_position_embeddings": 4096}},
     "rope_scaling type 'yarn' is not supported"),
    ({"rope_scaling": {"type": "linear", "factor": 4.0, "attention_factor": 0.5}},
     "rope_scaling.attention_factor is not read by linear"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192}},
     "llama3 scaling needs low_freq_factor"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                       "high_freq_factor": 1.0, "original_max_position_embeddings": 8192}},
     "low_freq_factor \\(4.0\\) must be below high_freq_factor"),
    ({"rope_scaling": {"type": "linear", "factor": 0.5}}, "factor must be a number >= 1"),
    ({"rope_scaling": {"type": "linear", "rope_type": "llama3", "factor": 2.0}},
     "rope_scaling needs one rope_type"),
    ({"rope_scaling": [4.0]}, "rope_scaling must be an object"),
    ({"rope_theta": True}, "rope_theta must be a positive finite number, not true"),
    ({"rms_norm_eps": "1e-5"}, 'rms_norm_eps must be a positive finite number, not "1e-5"'),
    ({"tie_word_embeddings": "false"}, 'tie_word_embeddings must be true or false, not "false"'),
    ({"hidden_size": "64"}, 'hidden_size must be a positive integer, not "64"'),
    ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, not 0"),
    ({"model_type": ["llama"]}, "model_type must be a string"),
    ({"rope_scaling": {"type": ["linear"], "factor": 4}}, "rope_type must be a string"),
    ({"rope_scaling": {"type": "linear", "factor": float("inf")}}, "factor must be a number"),
    ({"num_key_value_heads": 3}, "num_key_value_heads \\(3\\) must divide num_attention_heads"),
    ({"model_type": "qwen2", "num_key_value_heads": None},
     "num_key_value_heads \\(32, qwen2's default when the key is absent\\) must divide"),
    ({"rope_interleaved": True}, "rope_interleaved true is not supported"),
    ({"hidden_size": 80, "num_attention_heads": 3, "num_key_value_heads": 1},
     "num_attention_heads \\(3\\) does not divide hidden_size \\(80\\) and no head_dim"),
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
    ({"model_type": "qwen2", "use_mrope": True}, "use_mrope true is not supported"),
    ({"vocab_size": 4_000_000_000}, "vocab_size 4000000000 exceeds 2147483647"),
    ({"layer_types": ["full_attention", "linear_attention"]},
     'layer_types\\[1\\] "linear_attention" is not supported'),
    ({"layer_types": ["full_attention"]}, "layer_types must be a list of num_hidden_layers"),
    ({"rope_parameters": {"rope_type": "default"}}, "rope_parameters has no rope_theta"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}, "rope_theta": 1e4},
     "rope_theta 10000.0 disagrees with rope_parameters"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0},
      "rope_theta": None},
     "rope_scaling type 'yarn' is not supported"),
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
    # an explicit head width need not divide the hidden size (q_dim 96 != d_model 80)
    ("llama", {"hidden_size": 80, "num_attention_heads": 3, "num_key_value_heads": 1,
               "head_dim": 32}, {"head_dim": 32, "q_dim": 96, "kv_dim": 32}),
    ("qwen2", {"head_dim": 64}, {"head_dim": 64, "q_dim": 256}),
    ("llama", {"rope_scaling": {"type": "linear", "factor": 4.0}},
     {"rope_scaling": RopeScaling("linear", 4.0)}),
    ("mistral", {"rope_scaling": {"rope_type": "llama3", "type": "llama3", "factor": 8.0,
                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192}},
     {"rope_scaling": RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)}),
])
def test_hf_defaults_and_nulls_follow_the_library(model_type, changes, expected):
    hf = _hf(model_type=model_type, **{k: v for k, v in changes.items() if v != "null"})
    hf.update({k: None for k, v in changes.items() if v == "null"})
    cfg = ModelConfig.from_hf_dict(hf)
    for field, value in expected.items():
        assert getattr(cfg, field) == value, field


# config.json as published on the Hugging Face Hub for each preset (the fields the toolkit
# reads plus the bookkeeping it passes over), at the revision the preset names.
PUBLISHED = {
    "llama-3.2-1b": {   # meta-llama/Llama-3.2-1B
        "architectures": ["LlamaForCausalLM"], "attention_bias": False,
        "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": 128001,
        "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
        "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False,
        "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
        "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128256},
    "sheared-llama-1.3b": {   # princeton-nlp/Sheared-LLaMA-1.3B (no rope_theta: default)
        "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
        "intermediate_size": 5504, "max_position_embeddings": 4096, "model_type": "llama",
        "num_attention_heads": 16, "num_hidden_layers": 24, "num_key_value_heads": 16,
        "pad_token_id": 0, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
        "tie_word_embeddings": False, "torch_dtype": "float32",
        "transformers_version": "4.28.1", "use_cache": True, "vocab_size": 32000},
    "tinyllama-1.1b": {   # TinyLlama/TinyLlama-1.1B-Chat-v1.0
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": 1,
        "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 2048,
        "initializer_range": 0.02, "intermediate_size": 5632,
        "max_position_embeddings": 2048, "model_type": "llama", "num_attention_heads": 32,
        "num_hidden_layers": 22, "num_key_value_heads": 4, "pretraining_tp": 1,
        "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.35.0", "use_cache": True, "vocab_size": 32000},
    "qwen2.5-0.5b": {   # Qwen/Qwen2.5-0.5B
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu",
        "hidden_size": 896, "initializer_range": 0.02, "intermediate_size": 4864,
        "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
        "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.40.1", "use_cache": True, "use_mrope": False,
        "use_sliding_window": False, "vocab_size": 151936},
    "llama-3-8b": {   # meta-llama/Meta-Llama-3-8B
        "architectures": ["LlamaForCausalLM"], "attention_bias": False,
        "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": 128001,
        "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
        "intermediate_size": 14336, "max_position_embeddings": 8192, "model_type": "llama",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
        "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.40.0.dev0", "use_cache": True, "vocab_size": 128256},
}


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_each_preset_is_its_published_config(name):
    from models.zoo import TRAINED, checkpoint_dir

    if name in TRAINED:      # the project's own models: their checkpoints' config.json
        published = json.loads((checkpoint_dir(name) / "config.json").read_text())
    else:
        published = PUBLISHED[name]
    assert ModelConfig.from_hf_dict(published, name=name) == preset(name)


def test_transformers_5s_spelling_of_a_published_config_is_the_same_model():
    """transformers 5 writes ``rope_parameters`` for ``rope_theta`` (and the scaling) and
    a ``layer_types`` list; Qwen2.5-0.5B's config.json so written is still the preset."""
    published = dict(PUBLISHED["qwen2.5-0.5b"])
    theta = published.pop("rope_theta")
    published.update(rope_parameters={"rope_type": "default", "rope_theta": theta},
                     layer_types=["full_attention"] * published["num_hidden_layers"],
                     sliding_window=None, transformers_version="5.0.0")
    assert ModelConfig.from_hf_dict(published, name="qwen2.5-0.5b") == preset("qwen2.5-0.5b")
    scaled = _hf(rope_theta=None, rope_parameters={"rope_type": "linear", "factor": 4.0,
                                                   "rope_theta": 10000.0})
    assert ModelConfig.from_hf_dict(scaled) == ModelConfig.from_hf_dict(
        _hf(rope_scaling={"rope_type": "linear", "factor": 4.0}))


def test_a_config_that_is_not_an_object_names_its_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[]")
    with pytest.raises(ConfigError, match=f"{path}: not a JSON object"):
        ModelConfig.from_hf_json(path)
