"""Shared test configuration.

Accidental broadcasting fails loudly (``jax_numpy_rank_promotion="raise"``), and
float64 is switched on per test through the ``x64`` fixture rather than
globally, so that the default float32 path is the one most tests exercise.
"""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    """Runs the test with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield
