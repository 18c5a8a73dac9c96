"""Where models come from: the packaged ``tiny`` checkpoint, local HF folders, presets.

Contract
--------
``load_model(spec, seed)`` accepts

* ``"tiny"`` – the project's trained character-level model, packaged under
  ``models/checkpoints/tiny`` with its tokenizer;
* a path to a Hugging Face style folder (``config.json`` + ``model.safetensors`` or its shards);
* any other preset name – deterministic random weights of that shape (``init_params``);

and returns a ``LoadedModel``. Nothing is downloaded.

Tested by tests/models/test_integer.py and tests/models/test_train.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.config import ModelConfig, preset
from models.reference import Params, init_params
from models.tokenizer import CharTokenizer
from models.weights import load_checkpoint

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


@dataclass(frozen=True)
class LoadedModel:
    cfg: ModelConfig
    params: Params
    tokenizer: CharTokenizer | None
    source: str


def tiny_checkpoint_dir() -> Path:
    return CHECKPOINTS / "tiny"


def load_model(spec: str, seed: int = 0) -> LoadedModel:
    path = Path(spec)
    if spec == "tiny":
        path = tiny_checkpoint_dir()
        if not (path / "model.safetensors").exists():
            raise FileNotFoundError(f"{path}: the trained tiny checkpoint is missing; "
                                    "run `accel train` to create it")
    if path.is_dir():
        cfg, params = load_checkpoint(path, name=path.name)
        tok_file = path / "tokenizer.json"
        tokenizer = CharTokenizer.load(tok_file) if tok_file.exists() else None
        return LoadedModel(cfg, params, tokenizer, str(path))
    cfg = preset(spec)
    return LoadedModel(cfg, init_params(cfg, seed), None, f"random init (seed {seed})")
