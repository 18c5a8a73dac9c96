"""Random-weight integer models of small shapes, compiled and run on the ISA simulator."""

import jax
import pytest

from models.evaluate import build_int_model
from models.reference import init_params
from models.zoo import LoadedModel


def make_int_model(cfg, seed=0, weights="int8"):
    params = init_params(cfg, seed)
    params = jax.tree.map(lambda a: a * 4 if a.ndim == 2 else a, params)
    return build_int_model(LoadedModel(cfg, params, None, "random"), weights=weights)


@pytest.fixture
def int_model():
    """A factory: ``int_model(cfg, seed=0, weights="int8")`` -> calibrated, quantised
    random-weight model."""
    return make_int_model
