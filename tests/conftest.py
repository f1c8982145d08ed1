"""Shared test configuration.

Accidental broadcasting fails loudly (``jax_numpy_rank_promotion="raise"``), and
float64 is switched on per test through the ``x64`` fixture rather than
globally, so that the default float32 path is the one most tests exercise.
"""

import importlib.util
import os
import sys
from pathlib import Path

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


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def load_script():
    """``load_script("experiments/long_range.py")`` imports a script of the repository
    as a module, so tests can call its functions in-process."""

    def load(relative_path: str, name: str | None = None):
        path = ROOT / relative_path
        spec = importlib.util.spec_from_file_location(name or path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
        return module

    return load
