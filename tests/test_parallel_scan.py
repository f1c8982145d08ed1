"""rnnlab.scan(mode="parallel") against the sequential scan, for every parallel cell.

Oracles: the sequential ``jax.lax.scan`` over ``cell.step`` (forward and
gradients, float32 and float64, with ``lengths``, ``reverse``, batch-major
``time_axis=1`` and an explicit carry), and the log-space closed form of Feng
et al. (2024) for the minGRU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELLS, LENGTHS, B, F, H, T, random_carry

import rnnlab

#: The registered cells with a LinearForm (tagged "parallel" or not).
PARALLEL = tuple(n for n in CELLS if rnnlab.has_parallel_form(rnnlab.registry.get(n, H)))
LENGTHS = np.asarray(LENGTHS)
CONFIGS = {
    "plain": {},
    "reverse": {"reverse": True},
    "reverse-lengths": {"reverse": True, "lengths": LENGTHS},
    "batch-major-carry-lengths": {"time_axis": 1, "carry": "random", "lengths": LENGTHS},
}
# Every configuration in float32; in float64 (tight tolerance, with -m slow) the plain
# one and the one that exercises the most, which is also the one differentiated.
# Compiling, not running, is the cost here: see _results.
GRADIENT_CONFIG = "reverse-lengths"  # flips, masking and an explicit carry: all the paths
CONFIGS_F64 = ("plain", GRADIENT_CONFIG)
FORWARD_CASES = [(jnp.float32, c) for c in CONFIGS] + [(jnp.float64, c) for c in CONFIGS_F64]
TOL = {jnp.float32: dict(rtol=2e-5, atol=2e-6), jnp.float64: dict(rtol=1e-12, atol=1e-13)}


def _setup(name, dtype, seed=0):
    k_params, k_xs, k_carry = jax.random.split(jax.random.key(seed), 3)
    cell = rnnlab.registry.get(name, H, param_dtype=dtype)
    params = cell.init(k_params, F)
    xs = jax.random.normal(k_xs, (T, B, F), dtype)
    return cell, params, xs, random_carry(cell, params, (B,), k_carry)


def _kwargs(config, xs, carry):
    kw = dict(CONFIGS[config])
    if kw.get("carry") == "random":
        kw["carry"] = carry
    if kw.get("time_axis") == 1:
        xs = jnp.swapaxes(xs, 0, 1)
    return xs, kw


def _dtype_param(dtype, *rest):
    marks = (pytest.mark.slow,) if dtype == jnp.float64 else ()  # float64 copies: -m slow
    return pytest.param(dtype, *rest, id="-".join([jnp.dtype(dtype).name, *rest]), marks=marks)


@pytest.fixture
def enable_dtype(request):
    """Switches float64 on for the test when its ``dtype`` parameter asks for it."""
    if request.node.callspec.params["dtype"] == jnp.float64:
        request.getfixturevalue("x64")


# One compiled function per (cell, dtype) runs every configuration in both modes
# (and differentiates GRADIENT_CONFIG), so the tests below share six compilations.
@functools.cache
def _results(name, dtype):
    cell, params, xs, carry = _setup(name, dtype)
    w = jax.random.normal(jax.random.key(1), (T, B, H), dtype)  # a generic cotangent

    def loss(params, xs, carry, mode):
        kw = dict(CONFIGS[GRADIENT_CONFIG], carry=carry)
        c, ys = rnnlab.scan(cell, params, xs, mode=mode, **kw)
        return jnp.sum(w * ys) + jnp.sum(jnp.abs(c) ** 2), (c, ys)

    grad = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)

    @jax.jit
    def run(params, xs, carry):
        out = {}
        for mode in ("sequential", "parallel"):
            for config in CONFIGS if dtype == jnp.float32 else CONFIGS_F64:
                if config != GRADIENT_CONFIG:
                    xs_c, kw = _kwargs(config, xs, carry)
                    out[config, mode] = rnnlab.scan(cell, params, xs_c, mode=mode, **kw)
            out["grad", mode], out[GRADIENT_CONFIG, mode] = grad(params, xs, carry, mode)
        return out

    return run(params, xs, carry)


@pytest.mark.parametrize("dtype, config", [_dtype_param(*case) for case in FORWARD_CASES])
@pytest.mark.parametrize("name", PARALLEL)
def test_parallel_matches_sequential(name, config, dtype, enable_dtype):
    results = _results(name, dtype)
    c_seq, y_seq = results[config, "sequential"]
    c_par, y_par = results[config, "parallel"]
    assert y_par.shape == y_seq.shape and y_par.dtype == y_seq.dtype
    assert c_par.dtype == c_seq.dtype
    np.testing.assert_allclose(y_par, y_seq, **TOL[dtype])
    np.testing.assert_allclose(c_par, c_seq, **TOL[dtype])
    if "lengths" in CONFIGS[config]:  # padded outputs are exactly zero, as in sequential
        y = np.moveaxis(np.asarray(y_par), CONFIGS[config].get("time_axis", 0), 0)
        assert np.all(y[np.arange(T)[:, None] >= LENGTHS[None]] == 0)


@pytest.mark.parametrize("dtype", [_dtype_param(jnp.float32), _dtype_param(jnp.float64)])
@pytest.mark.parametrize("name", PARALLEL)
def test_parallel_gradients_match_sequential(name, dtype, enable_dtype):
    results = _results(name, dtype)
    g_seq, g_par = results["grad", "sequential"], results["grad", "parallel"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL[dtype]), g_par, g_seq)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g_par))


@pytest.mark.parametrize("name", PARALLEL)
def test_auto_picks_parallel(name):
    cell, params, xs, _ = _setup(name, jnp.float32)
    jaxpr = {
        mode: str(jax.make_jaxpr(functools.partial(rnnlab.scan, cell, mode=mode))(params, xs))
        for mode in ("auto", "parallel", "sequential")
    }
    assert jaxpr["auto"] == jaxpr["parallel"] != jaxpr["sequential"]


def test_bidirectional_parallel():
    cell, params, xs, _ = _setup("lru", jnp.float32)

    @jax.jit
    def run(params, xs):
        kw = dict(lengths=LENGTHS, merge=None)
        return {
            mode: rnnlab.bidirectional(cell, cell, (params, params), xs, mode=mode, **kw)[1]
            for mode in ("sequential", "parallel")
        }

    out = run(params, xs)
    for y_par, y_seq in zip(out["parallel"], out["sequential"], strict=True):
        np.testing.assert_allclose(y_par, y_seq, **TOL[jnp.float32])


@pytest.mark.parametrize("name", PARALLEL)
def test_parallel_empty_sequence(name):
    cell, params, _, carry = _setup(name, jnp.float32)
    xs = jnp.zeros((0, B, F))
    c_par, y_par = rnnlab.scan(cell, params, xs, carry=carry, mode="parallel")
    c_seq, y_seq = rnnlab.scan(cell, params, xs, carry=carry)
    assert y_par.shape == y_seq.shape == (0, B, H)
    np.testing.assert_array_equal(c_par, carry)


def test_parallel_is_an_error_without_the_parallel_form():
    cell = rnnlab.lstm(H)
    params = cell.init(jax.random.key(0), F)
    xs = jnp.ones((T, F))
    assert not rnnlab.has_parallel_form(cell)
    with pytest.raises(ValueError, match="needs a cell with a LinearForm"):
        rnnlab.scan(cell, params, xs, mode="parallel")
    with pytest.raises(ValueError, match="mode"):
        rnnlab.scan(cell, params, xs, mode="fast")
    # auto falls back to the sequential scan and changes nothing: the same program.
    jaxpr = {mode: str(jax.make_jaxpr(functools.partial(rnnlab.scan, cell, mode=mode))(params, xs))
             for mode in ("auto", "sequential")}
    assert jaxpr["auto"] == jaxpr["sequential"]


def test_parallel_survives_underflowing_gate_products():
    """Saturated gates make prod_s a_s underflow to 0 in float32 within a few steps;
    the linear-space scan never divides by it, so it stays exact and finite."""
    cell = rnnlab.mingru(H)
    params = cell.init(jax.random.key(0), F)
    params = params._replace(b=params.b.at[:H].set(40.0))  # a_t = sigmoid(-40) ~ 4e-18
    xs = jax.random.normal(jax.random.key(1), (8, B, F))

    def loss(p):
        ys = rnnlab.scan(cell, p, xs, mode="parallel")[1]
        return jnp.sum(ys), ys

    y_seq, (grads, y_par) = jax.jit(lambda p: (rnnlab.scan(cell, p, xs)[1],
                                               jax.grad(loss, has_aux=True)(p)))(params)
    np.testing.assert_allclose(y_par, y_seq, **TOL[jnp.float32])
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_min_rnns_match_log_space_closed_form(name, x64):
    r"""Feng et al.'s log-space form (Heinsen's scan), for :math:`h_{-1} = 0`:
    :math:`\log h_t = a^*_t + \mathrm{logcumsumexp}_{k \le t}(\log b_k - a^*_k)`,
    :math:`a^*_t = \sum_{s \le t} \log a_s`."""
    cell, params, xs, _ = _setup(name, jnp.float64)
    a, b = cell.coefficients(params, xs)  # b > 0: g keeps the candidate positive
    a_star = jnp.cumsum(jnp.log(a), axis=0)
    log_h = a_star + jax.lax.cumlogsumexp(jnp.log(b) - a_star, axis=0)
    _, ys = jax.jit(functools.partial(rnnlab.scan, cell, mode="parallel"))(params, xs)
    np.testing.assert_allclose(ys, jnp.exp(log_h), rtol=1e-12)


def test_linear_cell_builder_derives_step():
    """A hand-made LinearCell (a leaky integrator) runs in both modes."""

    def init(key, input_size):
        return {"a": jnp.full((2,), 0.9), "W": jnp.ones((input_size, 2))}

    def initial_carry(params, batch_shape=()):
        return jnp.zeros(tuple(batch_shape) + (2,))

    cell = rnnlab.linear_cell(
        init,
        initial_carry,
        lambda p, xs: (p["a"], xs @ p["W"]),
        lambda p, hs, xs: 2.0 * hs,
    )
    params = cell.init(None, 1)
    xs = jnp.ones((4, 1))
    expected = 2.0 * np.array([1.0, 1.9, 2.71, 3.439])[:, None] * np.ones((1, 2))
    both = jax.jit(lambda p, x: [rnnlab.scan(cell, p, x, mode=mode)[1]
                                 for mode in ("sequential", "parallel")])(params, xs)
    for ys in both:
        np.testing.assert_allclose(ys, expected, 1e-6)
