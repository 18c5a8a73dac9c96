"""Shared fixtures: small configs and the packaged tiny model, built once per session."""

from __future__ import annotations

import pytest

from models.config import ModelConfig


def _small_config(**overrides) -> ModelConfig:
    base = dict(name="small", vocab_size=37, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                head_dim=16, d_ff=96, max_seq_len=48)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture
def small_config():
    """A factory of small model configs; keyword arguments override fields."""
    return _small_config


@pytest.fixture(scope="session")
def tiny_model():
    from models.zoo import load_model

    return load_model("tiny")


@pytest.fixture(scope="session")
def tiny_int(tiny_model):
    from models.evaluate import build_int_model

    return build_int_model(tiny_model)
