"""Weights in the Hugging Face Llama layout: ``config.json`` + ``model.safetensors``.

Contract
--------
``save_checkpoint(folder, params, cfg)`` writes a folder that Hugging Face
``LlamaForCausalLM`` (or ``Qwen2ForCausalLM`` with QKV bias) would read;
``load_checkpoint(folder)`` reads it back as ``(cfg, params)``. Every tensor is checked
against the config: a missing, unexpected or misshapen tensor raises
``CheckpointError`` naming the tensor and both shapes. Nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from models.config import ConfigError, ModelConfig
from models.reference import Params, layer_shapes


class CheckpointError(ValueError):
    """A checkpoint that does not match its config or cannot be read."""


_LAYER_HF_NAMES = {
    "attn_norm": "input_layernorm.weight",
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "bq": "self_attn.q_proj.bias",
    "bk": "self_attn.k_proj.bias",
    "bv": "self_attn.v_proj.bias",
    "wo": "self_attn.o_proj.weight",
    "mlp_norm": "post_attention_layernorm.weight",
    "w_gate": "mlp.gate_proj.weight",
    "w_up": "mlp.up_proj.weight",
    "w_down": "mlp.down_proj.weight",
}


def to_hf_tensors(params: Params, cfg: ModelConfig, dtype=np.float32) -> dict[str, np.ndarray]:
    tensors = {"model.embed_tokens.weight": params["embed"], "model.norm.weight": params["norm"]}
    if not cfg.tie_embeddings:
        tensors["lm_head.weight"] = params["lm_head"]
    for i, layer in enumerate(params["layers"]):
        for name, value in layer.items():
            tensors[f"model.layers.{i}.{_LAYER_HF_NAMES[name]}"] = value
    return {k: np.ascontiguousarray(np.asarray(v, dtype=dtype)) for k, v in tensors.items()}


def from_hf_tensors(tensors: dict[str, np.ndarray], cfg: ModelConfig, where: str = "") -> Params:
    expected = cfg.param_shapes()
    prefix = f"{where}: " if where else ""
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{prefix}tensor {name!r} is missing (expected shape {shape})")
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(f"{prefix}tensor {name!r} has shape "
                                  f"{tuple(tensors[name].shape)}, but the config needs {shape}")
    extra = sorted(set(tensors) - set(expected) - {"lm_head.weight"})
    if extra:
        raise CheckpointError(f"{prefix}unexpected tensor {extra[0]!r} "
                              f"({len(extra)} tensors the config does not describe)")

    def get(name):
        return jnp.asarray(tensors[name], dtype=jnp.float32)

    layers = []
    for i in range(cfg.n_layers):
        layers.append({short: get(f"model.layers.{i}.{_LAYER_HF_NAMES[short]}")
                       for short in layer_shapes(cfg)})
    params = {"embed": get("model.embed_tokens.weight"), "layers": tuple(layers),
              "norm": get("model.norm.weight")}
    if not cfg.tie_embeddings:
        params["lm_head"] = get("lm_head.weight")
    return params


def save_checkpoint(folder: str | Path, params: Params, cfg: ModelConfig,
                    dtype=np.float32) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``folder``."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf = cfg.to_hf_dict()
    hf["torch_dtype"] = np.dtype(dtype).name
    (folder / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    save_file(to_hf_tensors(params, cfg, dtype), str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return folder


def load_checkpoint(folder: str | Path, name: str | None = None) -> tuple[ModelConfig, Params]:
    """Read a Hugging Face style folder; returns ``(cfg, params)`` in float32."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder does not exist")
    try:
        cfg = ModelConfig.from_hf_json(folder / "config.json", name=name or folder.name)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    weights = folder / "model.safetensors"
    if not weights.exists():
        raise CheckpointError(f"{folder}: model.safetensors is missing")
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{weights}: cannot read safetensors file ({e})") from None
    return cfg, from_hf_tensors(tensors, cfg, where=str(weights))
