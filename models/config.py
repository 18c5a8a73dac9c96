"""Model configuration: one frozen dataclass for Llama-family decoders.

Contract
--------
``ModelConfig`` describes every shape the reference model, the compiler and the
performance model need. It validates itself on construction and raises
``ConfigError`` naming the offending field. Derived sizes are properties.

Presets carry the exact published shapes of the models the toolkit studies; ``tiny``
is the project's own character-level model (trained by ``accel train``). A config can
also be read from a Hugging Face ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class ConfigError(ValueError):
    """A model configuration that cannot describe a real model."""


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling for contexts beyond the pre-training length (Hugging Face's
    ``rope_scaling``), applied to the inverse frequencies by ``rope_inv_freq``.

    ``rope_type`` is one of ``ROPE_SCALING_TYPES``:

    * ``"linear"``: position interpolation (Chen et al. 2023, arXiv 2306.15595): every
      inverse frequency divided by ``factor``;
    * ``"llama3"``: Meta's Llama 3.1 scheme (``apply_scaling`` in meta-llama/llama-models;
      transformers' ``_compute_llama3_parameters``): wavelengths longer than
      ``original_max_position_embeddings / low_freq_factor`` are divided by ``factor``,
      shorter than ``original_max_position_embeddings / high_freq_factor`` kept, and those
      between interpolated smoothly.

    Neither changes the attention temperature. Raises ``ConfigError`` naming a missing or
    out-of-range field.
    """

    rope_type: str
    factor: float
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None

    def __post_init__(self):
        if self.rope_type not in ROPE_SCALING_TYPES:
            raise ConfigError(f"rope_scaling: rope_type {self.rope_type!r} is not supported "
                              f"(supported: {', '.join(ROPE_SCALING_TYPES)})")
        if not (isinstance(self.factor, (int, float)) and not isinstance(self.factor, bool)
                and math.isfinite(self.factor) and self.factor >= 1):
            raise ConfigError(f"rope_scaling: factor must be a number >= 1, "
                              f"not {self.factor!r}")
        for key in ROPE_SCALING_TYPES[self.rope_type]:
            value = getattr(self, key)
            if key == "factor":
                continue
            if value is None:
                raise ConfigError(f"rope_scaling: {self.rope_type} scaling needs {key}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 \
                    or not math.isfinite(value):
                raise ConfigError(f"rope_scaling: {key} must be a positive number, "
                                  f"not {value!r}")
        if self.rope_type == "llama3" and not self.low_freq_factor < self.high_freq_factor:
            raise ConfigError(f"rope_scaling: low_freq_factor ({self.low_freq_factor}) must be "
                              f"below high_freq_factor ({self.high_freq_factor})")

    def to_hf_dict(self) -> dict:
        return {"rope_type": self.rope_type,
                **{k: getattr(self, k) for k in ROPE_SCALING_TYPES[self.rope_type]}}


# The scaling types implemented and the fields each reads (transformers'
# ``_validate_*_rope_parameters`` require the same ones).
ROPE_SCALING_TYPES = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings"),
}


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None
                  ) -> np.ndarray:
    """``[head_dim/2]`` float64: RoPE's inverse frequency of each pair in radians per
    position, ``theta ** (-2i / head_dim)`` (Su et al. 2021, arXiv 2104.09864), then
    ``scaling``'s adjustment (see ``RopeScaling``). The one source of the frequencies of
    the float reference and of the integer model's phase table."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    old_len = scaling.original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    smooth = ((old_len / wavelen - scaling.low_freq_factor)
              / (scaling.high_freq_factor - scaling.low_freq_factor))
    interpolated = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    return np.where(wavelen < old_len / scaling.high_freq_factor, inv_freq,
                    np.where(wavelen > old_len / scaling.low_freq_factor,
                             inv_freq / scaling.factor, interpolated))


@dataclass(frozen=True)
class ModelConfig:
    """Shapes of a Llama-family decoder.

    Parameters
    ----------
    name : human-readable name.
    vocab_size : number of tokens.
    d_model : residual width (``hidden_size``).
    n_layers : decoder layers.
    n_heads : query heads.
    n_kv_heads : key/value heads (grouped-query attention when smaller than n_heads).
    head_dim : width of one head; usually ``d_model // n_heads``.
    d_ff : SwiGLU hidden width (``intermediate_size``).
    max_seq_len : longest sequence the model supports (``max_position_embeddings``).
    rope_theta : RoPE base frequency.
    rope_scaling : ``RopeScaling`` of the frequencies, or None.
    norm_eps : RMSNorm epsilon.
    tie_embeddings : the LM head reuses the embedding matrix.
    qkv_bias : the q/k/v projections have a bias (Qwen2).
    """

    name: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    max_seq_len: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False
    rope_scaling: RopeScaling | None = None

    def __post_init__(self):
        for field in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads",
                      "head_dim", "d_ff", "max_seq_len"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{self.name}: {field} must be a positive integer, "
                                  f"not {value!r}")
        if self.head_dim % 2 != 0:
            raise ConfigError(f"{self.name}: head_dim must be even for RoPE, "
                              f"not {self.head_dim}")
        if self.n_heads % self.n_kv_heads != 0:
            raise ConfigError(f"{self.name}: n_kv_heads ({self.n_kv_heads}) must divide "
                              f"n_heads ({self.n_heads})")
        if not self.rope_theta > 0:
            raise ConfigError(f"{self.name}: rope_theta must be positive, "
                              f"not {self.rope_theta!r}")
        if not self.norm_eps > 0:
            raise ConfigError(f"{self.name}: norm_eps must be positive, not {self.norm_eps!r}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ConfigError(f"{self.name}: rope_scaling must be a RopeScaling or None, "
                              f"not {self.rope_scaling!r}")

    @property
    def rope_inv_freq(self) -> np.ndarray:
        """``[head_dim/2]`` float64 radians per position (``rope_inv_freq``)."""
        return rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling)

    # -- derived sizes --------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def group_size(self) -> int:
        """Query heads sharing one key/value head."""
        return self.n_heads // self.n_kv_heads

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter tensor, by its Hugging Face name, with its shape (out, in)."""
        shapes = {"model.embed_tokens.weight": (self.vocab_size, self.d_model)}
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            shapes[p + "input_layernorm.weight"] = (self.d_model,)
            shapes[p + "self_attn.q_proj.weight"] = (self.q_dim, self.d_model)
            shapes[p + "self_attn.k_proj.weight"] = (self.kv_dim, self.d_model)
            shapes[p + "self_attn.v_proj.weight"] = (self.kv_dim, self.d_model)
            if self.qkv_bias:
                shapes[p + "self_attn.q_proj.bias"] = (self.q_dim,)
                shapes[p + "self_attn.k_proj.bias"] = (self.kv_dim,)
                shapes[p + "self_attn.v_proj.bias"] = (self.kv_dim,)
            shapes[p + "self_attn.o_proj.weight"] = (self.d_model, self.q_dim)
            shapes[p + "post_attention_layernorm.weight"] = (self.d_model,)
            shapes[p + "mlp.gate_proj.weight"] = (self.d_ff, self.d_model)
            shapes[p + "mlp.up_proj.weight"] = (self.d_ff, self.d_model)
            shapes[p + "mlp.down_proj.weight"] = (self.d_model, self.d_ff)
        shapes["model.norm.weight"] = (self.d_model,)
        if not self.tie_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, self.d_model)
        return shapes

    @property
    def n_params(self) -> int:
        total = 0
        for shape in self.param_shapes().values():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # -- Hugging Face interchange -------------------------------------------------------
    def to_hf_dict(self) -> dict:
        return {
            "architectures": ["Qwen2ForCausalLM" if self.qkv_bias else "LlamaForCausalLM"],
            "model_type": "qwen2" if self.qkv_bias else "llama",
            "_name_or_path": self.name,
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "intermediate_size": self.d_ff,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_seq_len,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.norm_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "attention_bias": self.qkv_bias,
            "hidden_act": "silu",
            "rope_scaling": self.rope_scaling and self.rope_scaling.to_hf_dict(),
        }

    @classmethod
    def from_hf_dict(cls, hf: dict, name: str | None = None,
                     where: str = "config.json") -> ModelConfig:
        """A config from a Hugging Face ``config.json`` (Llama, Qwen2 or Mistral), following
        the library's semantics (``LlamaConfig``, ``Qwen2Config``, ``MistralConfig``):
        absent keys take that class's defaults (``HF_DEFAULTS``); ``null`` means what the
        class makes of ``None`` (key-value heads: as many as the query heads; head width:
        ``hidden_size // heads``; no rope scaling; no window) and is refused elsewhere.
        Every key is honoured or refused: a field that would change the numerics and that
        the toolkit does not implement (``rope_scaling``, a sliding window shorter than the
        context, biases beyond Qwen2's q/k/v, an activation other than SiLU, ...) or that
        it does not know (``quantization_config``, ...) raises ``ConfigError`` naming it.
        The shape keys are required even where the library has defaults. Every value is
        checked against its type (``HF_TYPES``: a positive integer, a positive number, a
        boolean, a string) before it is used; messages begin with ``where`` (the file)."""
        if not isinstance(hf, dict):
            raise ConfigError(f"{where}: not a JSON object of configuration fields")
        hf = _fold_rope_parameters(hf, where)
        _check_types(hf, where)
        model_type = hf.get("model_type", "llama")
        if model_type not in HF_DEFAULTS:
            raise ConfigError(f"{where}: model_type {model_type!r} is not supported "
                              f"(supported: {', '.join(sorted(HF_DEFAULTS))})")
        unknown = sorted(set(hf) - HF_KEYS)
        if unknown:
            raise ConfigError(f"{where}: field {unknown[0]!r} is not one the toolkit "
                              f"implements or knows to be without effect on the numerics")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads"):
            if hf.get(key) is None:
                raise ConfigError(f"{where}: missing required key {key!r}")

        def get(key):
            value = hf.get(key, HF_DEFAULTS[model_type].get(key))
            if key in hf and value is None and key in _NOT_NULL:
                raise ConfigError(f"{where}: {key} is null (Hugging Face has no meaning "
                                  f"for a null {key}; leave it out for the default)")
            return value

        _refuse_unsupported(hf, model_type, get, where)
        if hf["vocab_size"] > INT32_MAX:
            raise ConfigError(f"{where}: vocab_size {hf['vocab_size']} exceeds {INT32_MAX}: "
                              f"token ids are int32 (the embedding gather's indices, ARGMAX)")
        scaling = _rope_scaling(get("rope_scaling"), where)
        n_heads = hf["num_attention_heads"]
        n_kv = get("num_key_value_heads")
        head_dim = get("head_dim")
        if n_kv is not None and n_heads % n_kv:
            default = "" if "num_key_value_heads" in hf else \
                f", {model_type}'s default when the key is absent"
            raise ConfigError(f"{where}: num_key_value_heads ({n_kv}{default}) must divide "
                              f"num_attention_heads ({n_heads})")
        if head_dim is not None and head_dim % 2:
            raise ConfigError(f"{where}: head_dim {head_dim} must be even for RoPE")
        return cls(
            name=name or hf.get("_name_or_path") or model_type,
            vocab_size=hf["vocab_size"],
            d_model=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=n_heads if n_kv is None else n_kv,
            head_dim=hf["hidden_size"] // n_heads if head_dim is None else head_dim,
            d_ff=hf["intermediate_size"],
            max_seq_len=get("max_position_embeddings"),
            rope_theta=float(get("rope_theta")),
            norm_eps=float(get("rms_norm_eps")),
            tie_embeddings=bool(get("tie_word_embeddings")),
            qkv_bias=model_type == "qwen2",
            rope_scaling=scaling,
        )

    @classmethod
    def from_hf_json(cls, path: str | Path, name: str | None = None) -> ModelConfig:
        path = Path(path)
        try:
            hf = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config.json") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(hf, name=name, where=str(path))


# The defaults of transformers' configuration classes for the keys the toolkit reads
# (LlamaConfig, Qwen2Config, MistralConfig). ``None`` for the key-value heads and head
# width means "as many as the query heads" and "hidden_size // heads", as there.
HF_DEFAULTS: dict[str, dict] = {
    "llama": {"num_key_value_heads": None, "head_dim": None, "max_position_embeddings": 2048,
              "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
              "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
              "rope_scaling": None},
    "qwen2": {"num_key_value_heads": 32, "max_position_embeddings": 32768,
              "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
              "hidden_act": "silu", "rope_scaling": None, "use_sliding_window": False,
              "sliding_window": 4096},
    "mistral": {"num_key_value_heads": 8, "head_dim": None,
                "max_position_embeddings": 4096 * 32, "rope_theta": 10000.0,
                "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "hidden_act": "silu",
                "sliding_window": 4096, "rope_scaling": None},
}
# Keys for which ``null`` means nothing to the classes (they keep a ``None`` that fails
# later); ``null`` heads, head width, rope scaling and window mean what ``None`` means.
_NOT_NULL = {"max_position_embeddings", "rope_theta", "rms_norm_eps",
                    "tie_word_embeddings", "hidden_act", "attention_bias", "mlp_bias",
                    "use_sliding_window"}
# Every key the toolkit reads, and the ones it knows do not change an inference's numbers
# (bookkeeping, training-only settings, token ids, dtype of the stored weights).
HF_KEYS = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
    "rope_theta", "rms_norm_eps", "tie_word_embeddings", "hidden_act", "attention_bias",
    "mlp_bias", "rope_scaling", "sliding_window", "use_sliding_window", "max_window_layers",
    "partial_rotary_factor", "model_type", "architectures", "_name_or_path",
    "transformers_version", "torch_dtype", "use_cache", "bos_token_id", "eos_token_id",
    "pad_token_id", "initializer_range", "attention_dropout", "pretraining_tp",
    "dtype", "is_llama_config", "rope_interleaved", "use_mrope", "layer_types",
    "rope_parameters",
}


# The type of every key's value (``null`` is judged by ``_NOT_NULL``): "int" a positive
# integer, "number" a positive finite number, "bool" true/false, "str" a string; keys not
# listed are read by no code here (bookkeeping: token ids, dtype, architectures, ...).
HF_TYPES = {
    "vocab_size": "int", "hidden_size": "int", "intermediate_size": "int",
    "num_hidden_layers": "int", "num_attention_heads": "int", "num_key_value_heads": "int",
    "head_dim": "int", "max_position_embeddings": "int", "rope_theta": "number",
    "rms_norm_eps": "number", "tie_word_embeddings": "bool", "hidden_act": "str",
    "attention_bias": "bool", "mlp_bias": "bool", "rope_scaling": "object",
    "sliding_window": "int", "use_sliding_window": "bool", "model_type": "str",
    "partial_rotary_factor": "number", "rope_interleaved": "bool", "use_mrope": "bool",
}
_TYPE_NAMES = {"int": "a positive integer", "number": "a positive finite number",
               "bool": "true or false", "str": "a string", "object": "an object"}


def _check_types(hf: dict, where: str) -> None:
    for key, kind in HF_TYPES.items():
        value = hf.get(key)
        if value is None:
            continue
        ok = {"int": lambda v: type(v) is int and v > 0,
              "number": lambda v: type(v) in (int, float) and math.isfinite(v) and v > 0,
              "bool": lambda v: type(v) is bool, "str": lambda v: type(v) is str,
              "object": lambda v: type(v) is dict}[kind](value)
        if not ok:
            raise ConfigError(f"{where}: {key} must be {_TYPE_NAMES[kind]}, not "
                              f"{json.dumps(value)}")


def _refuse_unsupported(hf: dict, model_type: str, get, where: str) -> None:
    """``ConfigError`` for a field that would change the numerics in a way the toolkit
    does not implement."""
    act = get("hidden_act")
    if act != "silu":
        raise ConfigError(f"{where}: hidden_act {act!r} is not supported "
                          "(only SwiGLU / 'silu')")
    if hf.get("use_mrope"):
        raise ConfigError(f"{where}: use_mrope true is not supported (multimodal RoPE "
                          f"sections, as Qwen2-VL's)")
    types = hf.get("layer_types")
    if types is not None:
        if not (isinstance(types, list) and len(types) == hf["num_hidden_layers"]):
            raise ConfigError(f"{where}: layer_types must be a list of num_hidden_layers "
                              f"({hf['num_hidden_layers']}) strings, not {json.dumps(types)}")
        kinds = ("full_attention", "sliding_attention")   # the window: sliding_window below
        odd = next((i for i, t in enumerate(types) if t not in kinds), None)
        if odd is not None:
            raise ConfigError(f"{where}: layer_types[{odd}] {json.dumps(types[odd])} is not "
                              f"supported (only {' and '.join(kinds)})")
    if hf.get("rope_interleaved"):
        raise ConfigError(f"{where}: rope_interleaved true is not supported (RoPE pairs "
                          f"i and i + head_dim/2, as Llama's rotate_half)")
    if hf.get("partial_rotary_factor", 1.0) not in (None, 1, 1.0):
        raise ConfigError(f"{where}: partial_rotary_factor "
                          f"{hf['partial_rotary_factor']!r} is not supported (1.0 only)")
    for key in ("attention_bias", "mlp_bias"):
        if model_type != "qwen2" and get(key):
            raise ConfigError(f"{where}: {key} true is not supported (the integer path "
                              f"has Qwen2's q/k/v biases only)")
    if get("head_dim") is None and hf["hidden_size"] % hf["num_attention_heads"]:
        raise ConfigError(f"{where}: num_attention_heads ({hf['num_attention_heads']}) "
                          f"does not divide hidden_size ({hf['hidden_size']}) and no head_dim "
                          f"is given")
    window = get("sliding_window")
    applies = get("use_sliding_window") if model_type == "qwen2" else model_type == "mistral"
    if applies and window is not None and window < get("max_position_embeddings"):
        raise ConfigError(f"{where}: sliding_window {window} is shorter than the context "
                          f"of {get('max_position_embeddings')} tokens (sliding-window "
                          f"attention is not supported)")


INT32_MAX = 2 ** 31 - 1


def _fold_rope_parameters(hf: dict, where: str) -> dict:
    """``hf`` with transformers 5's ``rope_parameters`` (``rope_theta`` and the scaling in
    one object: ``{"rope_type": "default", "rope_theta": 1e6}``) read as the keys it
    replaces, ``rope_theta`` and ``rope_scaling``; a config that gives both spellings is
    refused unless they agree."""
    rp = hf.get("rope_parameters")
    if rp is None:
        return hf
    if not isinstance(rp, dict):
        raise ConfigError(f"{where}: rope_parameters must be an object, not {json.dumps(rp)}")
    if "rope_theta" not in rp:
        raise ConfigError(f"{where}: rope_parameters has no rope_theta: {json.dumps(rp)}")
    out = {k: v for k, v in hf.items() if k != "rope_parameters"}
    out["rope_theta"] = rp["rope_theta"]
    out["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"} or None
    for key in ("rope_theta", "rope_scaling"):
        if hf.get(key) is not None and hf[key] != out[key]:
            raise ConfigError(f"{where}: {key} {json.dumps(hf[key])} disagrees with "
                              f"rope_parameters {json.dumps(rp)}")
    return out


def _rope_scaling(raw, where: str) -> RopeScaling | None:
    """A ``rope_scaling`` entry as transformers reads it (``rope_type``, or the older
    ``type``; ``"default"`` is no scaling); a type or key it does not implement is refused
    by name."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: rope_scaling must be an object or null, not {raw!r}")
    if any(type(raw.get(k, "")) is not str for k in ("rope_type", "type")):
        raise ConfigError(f"{where}: rope_scaling's rope_type must be a string, not "
                          f"{json.dumps(raw)}")
    kinds = {raw[k] for k in ("rope_type", "type") if k in raw}
    if len(kinds) != 1:
        raise ConfigError(f"{where}: rope_scaling needs one rope_type, not "
                          f"{json.dumps(raw)}")
    (kind,) = kinds
    if kind == "default":
        return None
    if kind not in ROPE_SCALING_TYPES:
        raise ConfigError(f"{where}: rope_scaling type {kind!r} is not supported "
                          f"(supported: {', '.join(ROPE_SCALING_TYPES)})")
    fields = ROPE_SCALING_TYPES[kind]
    unknown = sorted(set(raw) - {"rope_type", "type"} - set(fields))
    if unknown:
        raise ConfigError(f"{where}: rope_scaling.{unknown[0]} is not read by {kind} "
                          f"scaling (it reads {', '.join(fields)})")
    try:
        return RopeScaling(kind, **{k: raw.get(k) for k in fields})
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _presets() -> dict[str, ModelConfig]:
    """The published shapes of the models the toolkit studies (from their config.json)."""
    return {
        "llama-3.2-1b": ModelConfig(
            name="llama-3.2-1b", vocab_size=128256, d_model=2048, n_layers=16, n_heads=32,
            n_kv_heads=8, head_dim=64, d_ff=8192, max_seq_len=131072, rope_theta=500000.0,
            norm_eps=1e-5, tie_embeddings=True,
            rope_scaling=RopeScaling("llama3", factor=32.0, low_freq_factor=1.0,
                                     high_freq_factor=4.0,
                                     original_max_position_embeddings=8192)),
        "sheared-llama-1.3b": ModelConfig(
            name="sheared-llama-1.3b", vocab_size=32000, d_model=2048, n_layers=24,
            n_heads=16, n_kv_heads=16, head_dim=128, d_ff=5504, max_seq_len=4096,
            rope_theta=10000.0, norm_eps=1e-5),
        "tinyllama-1.1b": ModelConfig(
            name="tinyllama-1.1b", vocab_size=32000, d_model=2048, n_layers=22, n_heads=32,
            n_kv_heads=4, head_dim=64, d_ff=5632, max_seq_len=2048, rope_theta=10000.0,
            norm_eps=1e-5),
        "qwen2.5-0.5b": ModelConfig(
            name="qwen2.5-0.5b", vocab_size=151936, d_model=896, n_layers=24, n_heads=14,
            n_kv_heads=2, head_dim=64, d_ff=4864, max_seq_len=32768, rope_theta=1000000.0,
            norm_eps=1e-6, tie_embeddings=True, qkv_bias=True),
        "llama-3-8b": ModelConfig(
            name="llama-3-8b", vocab_size=128256, d_model=4096, n_layers=32, n_heads=32,
            n_kv_heads=8, head_dim=128, d_ff=14336, max_seq_len=8192, rope_theta=500000.0,
            norm_eps=1e-5),
        "tiny": ModelConfig(
            name="tiny", vocab_size=65, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
            head_dim=32, d_ff=384, max_seq_len=256, rope_theta=10000.0, norm_eps=1e-5),
        "tiny-bpe": ModelConfig(
            name="tiny-bpe", vocab_size=2048, d_model=128, n_layers=4, n_heads=4,
            n_kv_heads=1, head_dim=32, d_ff=384, max_seq_len=256, rope_theta=10000.0,
            norm_eps=1e-5, tie_embeddings=True),
    }


PRESET_NAMES = tuple(_presets())


def preset(name: str) -> ModelConfig:
    """The preset called ``name``; an unknown name lists the known ones."""
    presets = _presets()
    key = name.lower()
    if key not in presets:
        raise ConfigError(f"unknown model preset {name!r}; known presets: "
                          f"{', '.join(presets)}")
    return presets[key]
