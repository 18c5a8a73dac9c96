"""Weights in the Hugging Face Llama layout: ``config.json`` + safetensors.

Contract
--------
``save_checkpoint(folder, params, cfg)`` writes a folder that Hugging Face
``LlamaForCausalLM`` (or ``Qwen2ForCausalLM`` with QKV bias) would read;
``load_checkpoint(folder)`` reads it back as ``(cfg, params)``. The weights are one
``model.safetensors`` or shards listed by ``model.safetensors.index.json`` (its
``weight_map``: tensor name -> shard file), in float32, float16 or bfloat16 (read through
``ml_dtypes``), all converted to float32. Every tensor is checked against the config and
the index: a missing, unexpected or misshapen tensor, a tensor of another dtype (int8,
float8: a quantised checkpoint), a shard the index names that is missing, or a tensor in
a shard other than the one the index names raises ``CheckpointError`` naming the file and
the tensor, as does a tensor holding NaN or infinite values. Tensors transformers ignores
on loading (``*.rotary_emb.inv_freq``) are ignored. Nothing is ever downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from models.config import ConfigError, ModelConfig
from models.reference import Params, layer_shapes


class CheckpointError(ValueError):
    """A checkpoint that does not match its config or cannot be read."""


WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Floating-point formats a checkpoint may store its weights in.
WEIGHT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))


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
                    dtype=np.float32, shard_bytes: int | None = None) -> Path:
    """Write ``config.json`` and the weights into ``folder``: one ``model.safetensors``,
    or, with ``shard_bytes``, shards of at most that many bytes (a tensor larger than
    that gets a shard of its own) and their ``model.safetensors.index.json`` as
    transformers' ``save_pretrained(max_shard_size=...)`` writes them. ``dtype`` is one of
    ``WEIGHT_DTYPES``."""
    if np.dtype(dtype) not in WEIGHT_DTYPES:
        raise ValueError(f"dtype {np.dtype(dtype).name} is not one of "
                         f"{', '.join(d.name for d in WEIGHT_DTYPES)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf = cfg.to_hf_dict()
    hf["torch_dtype"] = np.dtype(dtype).name
    (folder / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    tensors = to_hf_tensors(params, cfg, dtype)
    if shard_bytes is None:
        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        return folder
    shards: list[dict[str, np.ndarray]] = [{}]
    for name, value in tensors.items():
        if shards[-1] and sum(v.nbytes for v in shards[-1].values()) + value.nbytes > shard_bytes:
            shards.append({})
        shards[-1][name] = value
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    index = {"metadata": {"total_size": sum(v.nbytes for v in tensors.values())},
             "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return folder


# safetensors' names of ``WEIGHT_DTYPES``; tensors HF ignores on loading (RoPE's inverse
# frequencies, which older Llama conversions stored: they are recomputed from the config).
_SAFETENSORS_DTYPES = {"F32", "F16", "BF16"}
_IGNORED = ("rotary_emb.inv_freq",)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        with safe_open(str(path), "np") as f:
            dtypes = {name: f.get_slice(name).get_dtype() for name in f.keys()}
        bad = sorted(n for n, d in dtypes.items() if d not in _SAFETENSORS_DTYPES
                     and not n.endswith(_IGNORED))
        if not bad:
            tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from None
    if bad:
        raise CheckpointError(f"{path}: tensor {bad[0]!r} is {dtypes[bad[0]]}; weights must "
                              f"be float32, float16 or bfloat16 (quantised checkpoints are "
                              f"not read)")
    tensors = {n: v for n, v in tensors.items() if not n.endswith(_IGNORED)}
    for name, value in tensors.items():
        if not np.all(np.isfinite(value.astype(np.float32))):
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or infinite values")
    return tensors


def read_weights(folder: Path) -> tuple[dict[str, np.ndarray], str]:
    """Every tensor of the folder's weights (one file or the shards of the index), with the
    name of the file to cite in errors about them."""
    index_path, single = folder / INDEX_FILE, folder / WEIGHTS_FILE
    if single.exists():               # transformers reads the single file first, too
        return _read_safetensors(single), str(single)
    if not index_path.exists():
        raise CheckpointError(f"{folder}: neither {WEIGHTS_FILE} nor {INDEX_FILE} is there")
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not all(
                isinstance(v, str) for v in weight_map.values()):
            raise TypeError
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{index_path}: not an index (a JSON object whose weight_map "
                              f"maps tensor names to shard files)") from None
    tensors: dict[str, np.ndarray] = {}
    for file in sorted(set(weight_map.values())):
        shard_path = folder / file
        if Path(file).name != file or not shard_path.exists():
            raise CheckpointError(f"{index_path}: shard {file!r} is missing")
        for name, value in _read_safetensors(shard_path).items():
            if weight_map.get(name) != file:
                raise CheckpointError(f"{shard_path}: tensor {name!r} is not in this shard "
                                      f"according to {INDEX_FILE}")
            tensors[name] = value
    listed = sorted(set(weight_map) - set(tensors))
    if listed:
        raise CheckpointError(f"{index_path}: tensor {listed[0]!r} is listed in shard "
                              f"{weight_map[listed[0]]!r}, which does not hold it")
    return tensors, str(index_path)


def load_checkpoint(folder: str | Path, name: str | None = None) -> tuple[ModelConfig, Params]:
    """Read a Hugging Face style folder; returns ``(cfg, params)`` in float32."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder does not exist")
    try:
        cfg = ModelConfig.from_hf_json(folder / "config.json", name=name or folder.name)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    tensors, where = read_weights(folder)
    return cfg, from_hf_tensors(tensors, cfg, where=where)
