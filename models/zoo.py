"""Where models come from: the packaged ``tiny`` checkpoint, local HF folders, presets.

Contract
--------
``load_model(spec, seed)`` accepts

* ``"tiny"`` or ``"tiny-bpe"`` (``TRAINED``) – the project's trained models, packaged
  under ``models/checkpoints/<name>`` with their tokenizers (a character table; a
  byte-level BPE of 2,048 tokens);
* a path to a Hugging Face style folder (``config.json`` + ``model.safetensors`` or its shards);
* any other preset name – deterministic random weights of that shape (``init_params``);

and returns a ``LoadedModel``; its tokenizer is the folder's ``tokenizer.json``
(``models.tokenizer.load_tokenizer``: a character table or a Hugging Face file), or None.
``model_config(spec)`` is the same choice without reading weights (timing-only compiles).
``check_prompt_ids(ids, cfg)`` refuses an empty prompt or an id outside the vocabulary.
Nothing is downloaded.

Tested by tests/models/test_integer.py and tests/models/test_train.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from models.config import ConfigError, ModelConfig, preset
from models.reference import Params, init_params
from models.tokenizer import CharTokenizer, HFTokenizer, load_tokenizer
from models.weights import CheckpointError, load_checkpoint

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
# The prompt when none is given: text for a model with a tokenizer (tiny is trained on
# Shakespeare), four token ids for one without (random weights, a folder without one).
DEFAULT_PROMPT, UNTOKENIZED_PROMPT = "ROMEO:", [1, 2, 3, 4]


@dataclass(frozen=True)
class LoadedModel:
    cfg: ModelConfig
    params: Params
    tokenizer: CharTokenizer | HFTokenizer | None
    source: str
    #: the text it was trained on (``accel train`` records it in ``train_log.json``), which
    #: calibration and evaluation read; None: the default corpus
    corpus: Path | None = None


TRAINED = ("tiny", "tiny-bpe")


def checkpoint_dir(name: str) -> Path:
    """The packaged checkpoint of one of the ``TRAINED`` models."""
    return CHECKPOINTS / name


def load_model(spec: str, seed: int = 0) -> LoadedModel:
    path = Path(spec)
    if spec in TRAINED:
        path = checkpoint_dir(spec)
        if not (path / "model.safetensors").exists():
            raise FileNotFoundError(f"{path}: the trained {spec} checkpoint is missing; "
                                    f"run `accel train --model {spec}` to create it")
    if path.is_dir():
        cfg, params = load_checkpoint(path, name=path.name)
        tok_file = path / "tokenizer.json"
        tokenizer = load_tokenizer(tok_file) if tok_file.exists() else None
        if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
            raise CheckpointError(f"{tok_file}: {tokenizer.vocab_size} tokens, more than "
                                  f"config.json's vocab_size of {cfg.vocab_size} (ids past "
                                  f"it would have no embedding)")
        return LoadedModel(cfg, params, tokenizer, str(path), trained_on(path))
    _refuse_missing_path(spec)
    cfg = preset(spec)
    return LoadedModel(cfg, init_params(cfg, seed), None, f"random init (seed {seed})")


def trained_on(folder: Path) -> Path | None:
    """The corpus ``accel train`` recorded in ``folder/train_log.json`` (None: no record,
    as in a Hugging Face checkpoint, or the default corpus)."""
    try:
        corpus = json.loads((folder / "train_log.json").read_text()).get("corpus")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return Path(corpus) if isinstance(corpus, str) and corpus else None


def has_tokenizer(spec: str) -> bool:
    """Whether ``load_model(spec)`` comes with a tokenizer (a folder's ``tokenizer.json``;
    a preset has none), known without loading the weights."""
    path = checkpoint_dir(spec) if spec in TRAINED else Path(spec)
    return path.is_dir() and (path / "tokenizer.json").exists()


def model_config(spec: str) -> ModelConfig:
    """The config ``load_model(spec)`` would return, read without the weights: a folder's
    ``config.json`` (``tiny``'s included) or a preset's shape."""
    path = checkpoint_dir(spec) if spec in TRAINED else Path(spec)
    if path.is_dir():
        try:
            return ModelConfig.from_hf_json(path / "config.json", name=path.name)
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
    _refuse_missing_path(spec)
    return preset(spec)


def _refuse_missing_path(spec: str) -> None:
    """A spec written as a path (it has a separator, or names a file) is not a preset."""
    path = Path(spec)
    if path.exists():
        raise CheckpointError(f"{spec}: not a checkpoint folder (a folder with config.json "
                              f"and its weights)")
    if "/" in spec or "\\" in spec:
        raise CheckpointError(f"{spec}: no such checkpoint folder")


def check_prompt_ids(ids: list[int], cfg: ModelConfig) -> list[int]:
    """``ids`` as ints; ``ValueError`` for an empty prompt or an id outside
    ``[0, cfg.vocab_size)``."""
    if not ids:
        raise ValueError("the prompt is empty")
    for i in ids:
        if not 0 <= int(i) < cfg.vocab_size:
            raise ValueError(f"prompt token id {int(i)} is outside the vocabulary of "
                             f"{cfg.name} (vocab_size {cfg.vocab_size})")
    return [int(i) for i in ids]
