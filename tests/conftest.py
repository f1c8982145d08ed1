"""Shared test configuration, sizes, oracles and fixtures.

Accidental broadcasting fails loudly (``jax_numpy_rank_promotion="raise"``), and
float64 is switched on per test through the ``x64`` fixture rather than
globally, so that the default float32 path is the one most tests exercise.

Test modules import the shared pieces by name (pytest puts ``tests/`` on the
path)::

    from conftest import B, CELLS, F, H, LENGTHS, T, close, make_case, reference_scan

* sizes: ``T, B, F, H`` and ``LENGTHS`` (one valid length per sequence: full,
  partial, empty). All distinct, so a swapped axis fails a shape check.
* ``close`` (``chex.assert_trees_all_close`` with one tolerance) and ``equal``.
* oracles: ``loop`` (a Python loop over ``cell.step``) and ``reference_scan``
  (per-sequence loops with the padding and the reversal done by hand).
* ``CELLS`` (the registry's names at collection time) and ``make_case`` /
  the ``registered`` fixture: each registered cell's params, inputs and a random
  initial carry, built once per session.
* training: ``small_train_config()``, ``CHUNK`` and the ``elman_fns`` fixture, whose
  compiled training chunks the training tests share.
* hypothesis profiles ``dev`` (default: a few examples per test) and ``ci``
  (a real search, which ``tests/test_fuzz.py``'s slow test uses); both
  derandomised, so every run tests the same examples.

Compiling dominates these tiny programs: tests compare several results of one
jitted function rather than compiling each comparison apart.
"""

import functools
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from rnnlab import registry

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
# Compiled programs persist across runs of the suite (JAX's compilation cache, keyed by
# the program, the compile options, the device and the versions, so a changed program
# compiles afresh): a re-run skips most of the compiling (timings: docs/performance.md).
# In this process only: the experiments the tests start as processes, some to be killed
# mid-run, compile afresh (JAX writes a cache entry in place, so a kill can leave half of
# one). RNNLAB_TEST_COMPILE_CACHE=none runs without; the folder may be deleted any time.
_TEST_CACHE = os.environ.get("RNNLAB_TEST_COMPILE_CACHE",
                             str(Path(__file__).resolve().parents[1] / ".jax_cache"))
if _TEST_CACHE.lower() != "none" and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", _TEST_CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.03)
# The experiments' own default cache (~/.cache/rnnlab/jax) stays out of the suite.
os.environ.setdefault("RNNLAB_COMPILE_CACHE", "none")

# ----------------------------------------------------------------------------- hypothesis

# Derandomised: the examples are a function of the test's source, so a failure in CI
# is a failure on every machine. `ci` is the search the slow set runs; `dev` keeps the
# default run short. Choose one for every test with HYPOTHESIS_PROFILE=ci.
_HYPOTHESIS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=4, **_HYPOTHESIS)
settings.register_profile("ci", max_examples=200, **_HYPOTHESIS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# ----------------------------------------------------------------------------- sizes

T, B, F, H = 5, 3, 2, 4  # steps, sequences, input features, hidden units
LENGTHS = (5, 2, 0)  # [B] valid lengths: a full, a partial and an empty sequence
# At collection: cells registered later by a test are not here. A paper's setting of a
# cell is the same code as the cell's own entry (tested in its reference test).
CELLS = tuple(n for n in registry.names() if n not in registry.names("paper-setting"))


# ----------------------------------------------------------------------------- comparisons


def close(actual: Any, expected: Any, tol: float = 1e-5) -> None:
    """The trees have the same structure and shapes, and leaves equal to ``tol``
    (relative and absolute)."""
    chex.assert_trees_all_close(actual, expected, rtol=tol, atol=tol)


def equal(actual: Any, expected: Any) -> None:
    """The trees have the same structure and shapes, and leaves equal to the bit."""
    chex.assert_trees_all_equal(actual, expected)


# ----------------------------------------------------------------------------- oracles


def loop(cell, params, xs, carry):
    """``(final_carry, ys)`` of a Python loop over ``cell.step`` (``xs [T, *batch, F]``)."""
    ys = []
    for t in range(xs.shape[0]):
        carry, y = cell.step(params, carry, xs[t])
        ys.append(y)
    return carry, jax.tree.map(lambda *y: jnp.stack(y), *ys)


def reference_scan(cell, params, xs, carry=None, lengths=None, reverse=False):
    """What ``rnnlab.scan`` must give, without ``lax.scan`` or masking: one Python loop
    over ``cell.step`` per sequence, over its first ``lengths[b]`` steps (backwards for
    ``reverse``); padded outputs are zero and leave the carry alone.

    ``xs [T, *batch, F]`` time-major; returns numpy ``(final_carry, ys)``.
    """
    xs = np.asarray(xs)
    num_steps, batch = xs.shape[0], xs.shape[1:-1]
    if carry is None:
        carry = cell.initial_carry(params, batch)
    per_seq = jax.tree.map(lambda c: jax.ShapeDtypeStruct(c.shape[len(batch):], c.dtype), carry)
    x_struct = jax.ShapeDtypeStruct(xs.shape[-1:], xs.dtype)
    y_struct = jax.eval_shape(lambda c, x: cell.step(params, c, x)[1], per_seq, x_struct)
    ys = np.zeros((num_steps, *batch, *y_struct.shape), y_struct.dtype)
    finals = jax.tree.map(lambda c: np.array(c), carry)
    for idx in np.ndindex(*batch):
        n = num_steps if lengths is None else int(np.asarray(lengths)[idx])
        c = jax.tree.map(lambda a, idx=idx: a[idx], carry)
        for t in range(n - 1, -1, -1) if reverse else range(n):
            c, y = cell.step(params, c, xs[(t, *idx)])
            ys[(t, *idx)] = np.asarray(y)
        jax.tree.map(lambda f, v, idx=idx: f.__setitem__(idx, np.asarray(v)), finals, c)
    return finals, ys


# ----------------------------------------------------------------------------- cases


def cast(tree: Any, dtype: Any) -> Any:
    """Real floating leaves to ``dtype``, complex ones to its complex counterpart."""
    complex_dtype = jnp.result_type(dtype, jnp.complex64)

    def one(a):
        a = jnp.asarray(a)
        if jnp.issubdtype(a.dtype, jnp.complexfloating):
            return a.astype(complex_dtype)
        return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree.map(one, tree)


class Case(NamedTuple):
    name: str
    cell: Any
    params: Any
    xs: jax.Array  # [T, B, F]
    carry: Any  # a random initial carry for B sequences (no gradient trivially zero)


@functools.cache
def make_case(name: str, dtype: str = "float32", input_size: int = F, seed: int = 0) -> Case:
    """The registered cell ``name`` with H units, its params, inputs and a random carry,
    built once per session. Call under ``jax.enable_x64`` for ``dtype="float64"``."""
    k_params, k_xs, k_carry = jax.random.split(jax.random.key(seed), 3)
    cell = registry.get(name, H)
    params = cast(cell.init(k_params, input_size), dtype)
    xs = jax.random.normal(k_xs, (T, B, input_size), dtype)
    return Case(name, cell, params, xs, random_carry(cell, params, (B,), k_carry))


def random_carry(cell, params, batch_shape, key, scale=0.5):
    """A carry of the right structure, shapes and dtypes, with random entries."""
    zeros = cell.initial_carry(params, batch_shape)
    leaves, treedef = jax.tree.flatten(zeros)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([scale * jax.random.normal(k, z.shape, z.dtype)
                              for k, z in zip(keys, leaves, strict=True)])


@pytest.fixture(scope="session", params=CELLS)
def registered(request) -> Case:
    """Each registered cell's float32 :class:`Case`; a new cell gets every test using it."""
    return make_case(request.param)


# ----------------------------------------------------------------------------- training


def small_train_config():
    """The training config the training tests share: tiny, so that compiling dominates."""
    from rnnlab import train

    return train.TrainConfig(seq_len=5, batch_size=8, eval_batch_size=32, learning_rate=1e-2)


#: Steps per compiled chunk for the tests sharing ``elman_fns``: one chunk size, so the
#: compiled training programs (one per number of seeds) are shared too.
CHUNK = 10


@pytest.fixture(scope="session")
def elman_fns():
    """``train.make_train_fns(elman(8), adding, small_train_config())``, built once; its
    compiled chunks (one per number of seeds and chunk size) serve every test using it."""
    from rnnlab import cells, tasks, train

    return train.make_train_fns(cells.elman(8), tasks.get("adding"), small_train_config())


# ----------------------------------------------------------------------------- fixtures


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


# ----------------------------------------------------------------------------- the zoo's share

# The default run keeps two of the zoo's cells, a complex carry and a linear form (the
# first generation already covers affine forms and plain Cells); a test parametrised by
# any other zoo cell is marked slow and zoo: `python -m pytest -m zoo` runs them alone
# (349 tests, about 6 minutes on 2 cores); CI runs them with the rest of -m slow.
ZOO_BY_DEFAULT = ("urnn", "rglru")
_ZOO_SLOW = frozenset(registry.names("zoo")) - frozenset(ZOO_BY_DEFAULT)

# Alike, the first generation's option variants (the code of elman-tanh, lstm at other
# constants) and minLSTM (minGRU's scan and parallel form) keep only their equations test
# in the default run; every other test parametrised by one of them is slow.
VARIANTS = ("elman-relu", "irnn", "lstm-fb0", "minlstm")
_VARIANTS_SLOW = frozenset(VARIANTS)
_KEPT_FOR_VARIANTS = ("test_step_matches_numpy_equations",)


def pytest_collection_modifyitems(config, items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None:
            continue
        values = {v for v in callspec.params.values() if isinstance(v, str)}
        if values & _ZOO_SLOW:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.zoo)
        elif values & _VARIANTS_SLOW and item.originalname not in _KEPT_FOR_VARIANTS:
            item.add_marker(pytest.mark.slow)
