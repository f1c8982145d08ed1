"""Fuzzing ``rnnlab.scan`` over every registry cell: the right answer or a clear error.

Oracle: ``conftest.reference_scan``, a Python loop over ``cell.step`` run on one
sequence at a time, with the padding and the reversal done by hand (no
``lengths`` masking, no ``lax.scan``, no parallel scan). Hypothesis draws the
cell, sizes, batch shape (``()``, 1-D, 2-D, empty), length (including 0) and
per-sequence lengths (including 0 and T), dtype, ``reverse``, ``time_axis``, an
explicit initial carry, and ``mode`` for the cells with a parallel form.

Dtypes: float32; float64 under x64 with the params cast to float64 (the inits
make float32 params; float64 inputs with float32 params are a clear TypeError in
either mode); **bfloat16 inputs
compute**: they are promoted with the (float32) params by JAX's rules, so the
result equals the scan of the same inputs upcast to float32, exactly (checked
below). Integer inputs are a TypeError.

Budgets (conftest's hypothesis profiles, both derandomised): the default run
draws a few examples per test; ``-m slow`` runs the same property as a real
search, ``ci``'s 200 examples. Compiled scans are cached per option set and
shapes come from small sets, so examples share compilations.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELLS, close, reference_scan
from hypothesis import given, settings
from hypothesis import strategies as st

import rnnlab
from rnnlab import registry

BATCH_SHAPES = [(), (1,), (3,), (2, 2), (0,)]
PARALLEL = tuple(n for n in CELLS if rnnlab.has_parallel_form(registry.get(n, 1)))


@functools.cache
def _params(name: str, hidden: int, features: int, float64: bool = False):
    """The cell and its params; cast to float64 (call under x64) for float64 inputs."""
    cell = registry.get(name, hidden)
    params = cell.init(jax.random.key(hidden * 7 + features), features)
    if float64:  # the inits make float32; float64 inputs need float64 params
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    return cell, params


@functools.cache
def _jitted(name, hidden, features, reverse, time_axis, mode, x64):
    """One jitted scan per option set, reused across examples (x64 keys the cache too)."""
    cell, _ = _params(name, hidden, features)
    return jax.jit(lambda p, xs, carry, lengths: rnnlab.scan(
        cell, p, xs, carry=carry, lengths=lengths, reverse=reverse, time_axis=time_axis,
        mode=mode))


def _tol(dtype):
    return 1e-9 if dtype == jnp.float64 else 2e-5


@st.composite
def scan_cases(draw, name):
    batch = draw(st.sampled_from(BATCH_SHAPES))
    T = draw(st.sampled_from([0, 1, 2, 5]))
    # Time may sit before, among or after the batch axes (never the feature axis).
    rank = 2 + len(batch)
    size = int(np.prod(batch))
    return dict(
        name=name,
        hidden=draw(st.sampled_from([1, 3])),
        features=draw(st.sampled_from([1, 2])),
        batch=batch,
        T=T,
        lengths=draw(st.none() | st.lists(st.integers(0, T), min_size=size, max_size=size)),
        reverse=draw(st.booleans()),
        time_axis=draw(st.sampled_from(sorted({0, rank - 2, -2, -rank}))),
        mode=draw(st.sampled_from(["sequential", "parallel", "auto"] if name in PARALLEL
                                  else ["sequential", "auto"])),
        dtype=draw(st.sampled_from(["float32", "float64", "bfloat16"])),
        explicit_carry=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def _check_scan_equals_the_python_loop(case):
    x64 = case["dtype"] == "float64"
    with jax.enable_x64(x64):
        cell, params = _params(case["name"], case["hidden"], case["features"], x64)
        batch, T = case["batch"], case["T"]
        rng = np.random.default_rng(case["seed"])
        xs_tm = rng.normal(size=(T, *batch, case["features"])).astype(np.float64)
        xs_tm = jnp.asarray(xs_tm, getattr(jnp, case["dtype"]))
        lengths = None if case["lengths"] is None else jnp.asarray(
            np.asarray(case["lengths"], np.int32).reshape(batch))
        carry0 = cell.initial_carry(params, batch)
        if case["explicit_carry"]:
            carry0 = jax.tree.map(
                lambda c: c + jnp.asarray(0.3 * rng.normal(size=c.shape), c.real.dtype), carry0)
        xs = jnp.moveaxis(xs_tm, 0, case["time_axis"])
        fn = _jitted(case["name"], case["hidden"], case["features"], case["reverse"],
                     case["time_axis"], case["mode"], x64)
        given_carry = carry0 if case["explicit_carry"] else None
        carry, ys = fn(params, xs, given_carry, lengths)

        ref_xs = xs_tm.astype(jnp.float32) if case["dtype"] == "bfloat16" else xs_tm
        ref_carry, ref_ys = reference_scan(cell, params, ref_xs, carry0, lengths, case["reverse"])
        assert ys.dtype == ref_ys.dtype
        close(np.moveaxis(np.asarray(ys), case["time_axis"], 0), ref_ys, _tol(ref_xs.dtype))
        close(jax.tree.map(np.asarray, carry), ref_carry, _tol(ref_xs.dtype))
        if case["dtype"] == "bfloat16" and T and np.prod(batch):
            # bfloat16 inputs compute as their float32 upcast, exactly.
            up = fn(params, xs.astype(jnp.float32), given_carry, lengths)
            jax.tree.map(np.testing.assert_array_equal, (carry, ys), up)


# The default run fuzzes one cell of each kind of carry and form (a tuple carry, an affine
# form, a complex carry, a parallel form); test_cells checks every cell's scan against the
# loop at fixed options, and the slow set fuzzes every cell, here and in the search below.
FUZZED_BY_DEFAULT = ("elman-tanh", "lstm", "lru", "urnn")


@pytest.mark.parametrize("name", [
    n if n in FUZZED_BY_DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in CELLS])
@given(data=st.data())
def test_scan_equals_the_python_loop(name, data):
    """Every registered cell, the loaded profile's budget (conftest: a few examples)."""
    _check_scan_equals_the_python_loop(data.draw(scan_cases(name)))


@pytest.mark.slow
@settings(settings.get_profile("ci"))
@given(case=st.sampled_from(CELLS).flatmap(scan_cases))
def test_scan_equals_the_python_loop_search(case):
    """The same property as a real search: the ci profile's examples over all cells."""
    _check_scan_equals_the_python_loop(case)


@pytest.mark.parametrize("name", PARALLEL)
def test_parallel_mode_rejects_what_sequential_mode_rejects(name, x64):
    """A step that would change the carry's dtype is the same clear error in both modes."""
    del x64
    cell, params = _params(name, 3, 2)
    xs = jnp.ones((4, 2, 2), jnp.float64)
    with pytest.raises(TypeError, match="keeps the carry's dtype"):
        rnnlab.scan(cell, params, xs, mode="sequential")
    with pytest.raises(TypeError, match="keeps the carry's dtype"):
        jax.eval_shape(functools.partial(rnnlab.scan, cell, mode="parallel"), params, xs)


# ----------------------------------------------------------------------------- bad input

# What each kind of bad input must raise: the type and a pattern naming the argument.
BAD = {
    "int_xs": (TypeError, "xs must have a real floating dtype"),
    "rank1_xs": (ValueError, "xs must have a time axis and a feature axis"),
    "feature_time_axis": (ValueError, "time_axis must index a non-feature axis"),
    "time_axis_range": (ValueError, "time_axis must index a non-feature axis"),
    "wrong_features": (ValueError, "2 input features"),
    "lengths_shape": (ValueError, "lengths must have the inputs' batch shape"),
    "lengths_range": (ValueError, r"lengths must lie in \[0, T\]"),
    "lengths_float": (TypeError, "lengths must have an integer dtype"),
    "carry_shape": (ValueError, "carry must match"),
    "mode": (ValueError, "mode must be one of"),
    "parallel_mode": (ValueError, "mode='parallel' needs a cell with a LinearForm"),
    "remat": (ValueError, "remat must be a bool or a positive int"),
}


@st.composite
def bad_cases(draw):
    kind = draw(st.sampled_from(sorted(BAD)))
    names = [n for n in CELLS if n not in PARALLEL] if kind == "parallel_mode" else CELLS
    return draw(st.sampled_from(names)), kind, draw(st.sampled_from([(), (2,), (2, 2)]))


@settings(max_examples=30)
@given(case=bad_cases())
def test_invalid_inputs_raise_clear_errors(case):
    """Never an XLA crash nor a silent result: our exception, naming the argument."""
    name, kind, batch = case
    cell, params = _params(name, 3, 2)
    T = 3
    xs = jnp.ones((T, *batch, 2), jnp.float32)
    kwargs = {}
    if kind == "int_xs":
        xs = jnp.ones((T, *batch, 2), jnp.int32)
    elif kind == "rank1_xs":
        xs = jnp.ones((2,), jnp.float32)
    elif kind == "feature_time_axis":
        kwargs["time_axis"] = -1
    elif kind == "time_axis_range":
        kwargs["time_axis"] = xs.ndim + 1
    elif kind == "wrong_features":
        xs = jnp.ones((T, *batch, 5), jnp.float32)
    elif kind == "lengths_shape":
        kwargs["lengths"] = jnp.ones((*batch, 2), jnp.int32)
    elif kind == "lengths_range":
        kwargs["lengths"] = jnp.full(batch, T + 1, jnp.int32)
    elif kind == "lengths_float":
        kwargs["lengths"] = jnp.ones(batch, jnp.float32)
    elif kind == "carry_shape":
        kwargs["carry"] = cell.initial_carry(params, (*batch, 4))
    elif kind == "mode":
        kwargs["mode"] = "fast"
    elif kind == "parallel_mode":
        kwargs["mode"] = "parallel"
    elif kind == "remat":
        kwargs["remat"] = -2
    error, pattern = BAD[kind]
    with pytest.raises(error, match=pattern):
        rnnlab.scan(cell, params, xs, **kwargs)
