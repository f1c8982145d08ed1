"""Shared test configuration.

Accidental broadcasting fails loudly (``jax_numpy_rank_promotion="raise"``), and
float64 is switched on per test through the ``x64`` fixture rather than
globally, so that the default float32 path is the one most tests exercise.
"""

import os

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
# XLA compilation dominates this suite's tiny programs; skipping most of XLA's
# optimisation passes cuts the suite's time by about a fifth. The tests compare
# against references with tolerances, so they hold at any optimisation level.
# The environment variable carries the setting into the experiments the tests
# run in subprocesses.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
jax.config.update(
    "jax_disable_most_optimizations", os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1"
)


@pytest.fixture
def x64():
    """Runs the test with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield
