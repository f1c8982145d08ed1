"""Fuzzing ``rnnlab.scan`` over every registry cell: the right answer or a clear error.

Oracle: a Python loop over ``cell.step`` run on one sequence at a time, with
the padding and the reversal done by hand (no ``lengths`` masking, no
``lax.scan``, no parallel scan). Hypothesis draws the cell, sizes, batch shape
(``()``, 1-D, 2-D, empty), length (including 0) and per-sequence lengths
(including 0 and T), dtype, ``reverse``, ``time_axis``, an explicit initial
carry, and ``mode`` for the cells with a parallel form.

Dtypes: float32; float64 under x64 with the params cast to float64 (the
inits make float32 params, and float64 inputs with float32 params are a
``lax.scan`` carry-type TypeError in sequential mode but compute in float64 in
parallel mode: an inconsistency in core, reported, not fixed here);
**bfloat16 inputs compute**: they are
promoted with the (float32) params by JAX's rules, so the result equals the
scan of the same inputs upcast to float32, exactly (checked below). Integer
inputs are a TypeError.

Examples are few (``max_examples``) and derandomized so that the suite is
deterministic; the compiled scans are cached per option set and shapes come
from small sets, so most examples reuse a compilation.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnnlab
from rnnlab import registry

CELLS = registry.names()  # at import: cells registered later by other tests are not fuzzed
BATCH_SHAPES = [(), (1,), (3,), (2, 2), (0,)]
FUZZ = settings(max_examples=5, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def _params(name: str, hidden: int, features: int, float64: bool = False):
    """The cell and its params; cast to float64 (call under x64) for float64 inputs."""
    cell = registry.get(name, hidden)
    params = cell.init(jax.random.key(hidden * 7 + features), features)
    if float64:  # the inits make float32; float64 inputs need float64 params (see the report)
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    return cell, params


@functools.cache
def _jitted(name, hidden, features, reverse, time_axis, mode, x64):
    """One jitted scan per option set, reused across examples (x64 keys the cache too)."""
    cell, _ = _params(name, hidden, features)
    return jax.jit(lambda p, xs, carry, lengths: rnnlab.scan(
        cell, p, xs, carry=carry, lengths=lengths, reverse=reverse, time_axis=time_axis,
        mode=mode))


def _reference(cell, params, xs_tm, carry0, lengths, reverse):
    """Per-sequence Python loop over ``cell.step``: ``xs_tm [T, *batch, F]`` time-major."""
    T, batch = xs_tm.shape[0], xs_tm.shape[1:-1]
    x_struct = jax.ShapeDtypeStruct(xs_tm.shape[-1:], xs_tm.dtype)
    c_struct = jax.tree.map(lambda c: jax.ShapeDtypeStruct(c.shape[len(batch):], c.dtype), carry0)
    y_struct = jax.eval_shape(lambda c, x: cell.step(params, c, x)[1], c_struct, x_struct)
    ys = np.zeros((T, *batch, *y_struct.shape), y_struct.dtype)
    finals = jax.tree.map(lambda c: np.array(c), carry0)
    for idx in np.ndindex(*batch):
        n = T if lengths is None else int(lengths[idx])
        c = jax.tree.map(lambda a, idx=idx: a[idx], carry0)
        for t in (range(n - 1, -1, -1) if reverse else range(n)):
            c, y = cell.step(params, c, xs_tm[(t, *idx)])
            ys[(t, *idx)] = np.asarray(y)
        jax.tree.map(lambda f, v, idx=idx: f.__setitem__(idx, np.asarray(v)), finals, c)
    return finals, ys


def _tol(dtype):
    return dict(rtol=1e-9, atol=1e-9) if dtype == jnp.float64 else dict(rtol=2e-5, atol=2e-5)


@st.composite
def scan_cases(draw, name):
    parallel = rnnlab.has_parallel_form(registry.get(name, 1))
    batch = draw(st.sampled_from(BATCH_SHAPES))
    T = draw(st.sampled_from([0, 1, 2, 5]))
    # Time may sit before, among or after the batch axes (never the feature axis).
    rank = 2 + len(batch)
    time_axis = draw(st.sampled_from(sorted({0, rank - 2, -2, -rank})))
    return dict(
        name=name,
        hidden=draw(st.sampled_from([1, 3])),
        features=draw(st.sampled_from([1, 2])),
        batch=batch,
        T=T,
        lengths=draw(st.none() | st.lists(st.integers(0, T), min_size=int(np.prod(batch)),
                                          max_size=int(np.prod(batch)))),
        reverse=draw(st.booleans()),
        time_axis=time_axis,
        mode=draw(st.sampled_from(["sequential", "parallel", "auto"] if parallel
                                  else ["sequential", "auto"])),
        dtype=draw(st.sampled_from(["float32", "float64", "bfloat16"])),
        explicit_carry=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


@pytest.mark.parametrize("name", CELLS)
@FUZZ
@given(data=st.data())
def test_scan_equals_the_python_loop(name, data):
    case = data.draw(scan_cases(name))
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
        carry, ys = fn(params, xs, carry0 if case["explicit_carry"] else None, lengths)

        ref_xs = xs_tm.astype(jnp.float32) if case["dtype"] == "bfloat16" else xs_tm
        ref_carry, ref_ys = _reference(cell, params, ref_xs, carry0,
                                       None if lengths is None else np.asarray(lengths),
                                       case["reverse"])
        tol = _tol(ref_xs.dtype)
        assert ys.shape == np.moveaxis(ref_ys, 0, case["time_axis"]).shape
        assert ys.dtype == ref_ys.dtype
        np.testing.assert_allclose(np.moveaxis(np.asarray(ys), case["time_axis"], 0), ref_ys,
                                   **tol)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, **tol),
                     carry, ref_carry)
        if case["dtype"] == "bfloat16" and T and np.prod(batch):
            # bfloat16 inputs compute as their float32 upcast, exactly.
            up = fn(params, xs.astype(jnp.float32), carry0 if case["explicit_carry"] else None,
                    lengths)
            jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), (carry, ys), up)


@st.composite
def bad_cases(draw):
    name = draw(st.sampled_from(CELLS))
    kind = draw(st.sampled_from(["int_xs", "rank1_xs", "feature_time_axis", "time_axis_range",
                                 "wrong_features", "lengths_shape", "lengths_range",
                                 "lengths_float", "carry_shape", "mode", "parallel_mode",
                                 "remat"]))
    return name, kind, draw(st.sampled_from([(), (2,), (2, 2)]))


@settings(FUZZ, max_examples=30)
@given(case=bad_cases())
def test_invalid_inputs_raise_clear_errors(case):
    name, kind, batch = case
    cell, params = _params(name, 3, 2)
    T = 3
    xs = jnp.ones((T, *batch, 2), jnp.float32)
    kwargs = {}
    expected = ValueError
    if kind == "int_xs":
        xs, expected = jnp.ones((T, *batch, 2), jnp.int32), TypeError
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
        kwargs["lengths"], expected = jnp.ones(batch, jnp.float32), TypeError
    elif kind == "carry_shape":
        kwargs["carry"] = cell.initial_carry(params, (*batch, 4))
    elif kind == "mode":
        kwargs["mode"] = "fast"
    elif kind == "parallel_mode":
        if rnnlab.has_parallel_form(cell):
            return
        kwargs["mode"] = "parallel"
    elif kind == "remat":
        kwargs["remat"] = -2
    # Never an XLA crash nor a silent result: the exception is one of ours, with a message.
    with pytest.raises((ValueError, TypeError)) as info:
        rnnlab.scan(cell, params, xs, **kwargs)
    assert isinstance(info.value, expected) or kind == "wrong_features", (kind, info.value)
    assert len(str(info.value)) > 20
