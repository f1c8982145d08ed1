"""The modern cells: LRU, minGRU, minLSTM and the orthogonal (expRNN) RNN.

The registered variants get tests/test_cells.py's oracles (scan == a Python loop,
jit == eager, finite differences, their numpy equations). Here: the other variants
against the loop, and closed forms: ``W = expm(A - A^T)`` is orthogonal for any A;
the LRU's ``||dh_{T-1}/dh_t|| = max|lambda|^(T-1-t)``; the linear orthogonal RNN's
carry Jacobian has every singular value 1; the min-RNNs' carry Jacobian is diagonal
with entries in (0, 1).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import B, F, H, T, close, loop, random_carry

import rnnlab
from rnnlab.cells.lru import eigenvalues
from rnnlab.cells.orthogonal import recurrent_matrix

# Options the registry's entries do not set.
VARIANTS = {
    "lru-output-2": functools.partial(rnnlab.lru, output_size=2),
    "lru-r_min-0.5": functools.partial(rnnlab.lru, r_min=0.5, max_phase=0.5),
    "mingru-identity": functools.partial(rnnlab.mingru, candidate_activation="identity"),
    "minlstm-identity": functools.partial(rnnlab.minlstm, candidate_activation="identity"),
    "orthogonal-identity": functools.partial(rnnlab.orthogonal, nonlinearity="identity"),
    "orthogonal-tanh": functools.partial(rnnlab.orthogonal, nonlinearity="tanh",
                                         recurrent_init="cayley"),
}


def _cell(name, hidden_size=H, **options):
    """A variant above or a registered cell."""
    if name in VARIANTS:
        return VARIANTS[name](hidden_size, **options)
    return rnnlab.registry.get(name, hidden_size, **options)


def _setup(name, dtype=jnp.float32, hidden_size=H, num_steps=T, seed=0):
    k_params, k_xs, k_carry = jax.random.split(jax.random.key(seed), 3)
    cell = _cell(name, hidden_size, param_dtype=dtype)
    params = cell.init(k_params, F)
    xs = jax.random.normal(k_xs, (num_steps, B, F), dtype)
    return cell, params, xs, random_carry(cell, params, (B,), k_carry)


@pytest.mark.parametrize("name", VARIANTS)
def test_variants_scan_equals_python_loop(name):
    cell, params, xs, carry = _setup(name)
    got = jax.jit(lambda p, x, c: rnnlab.scan(cell, p, x, carry=c, mode="auto"))(
        params, xs, carry)
    close(got, loop(cell, params, xs, carry))
    out = 2 if name == "lru-output-2" else H
    assert got[1].shape == (T, B, out) and jnp.issubdtype(got[1].dtype, jnp.floating)


def test_lru_params_are_real_and_carry_is_complex(x64):
    for dtype, complex_dtype in ((jnp.float32, jnp.complex64), (jnp.float64, jnp.complex128)):
        cell = rnnlab.lru(H, param_dtype=dtype)
        params = jax.eval_shape(functools.partial(cell.init, input_size=F), jax.random.key(0))
        assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(params))
        carry = jax.eval_shape(functools.partial(cell.initial_carry, batch_shape=(B,)), params)
        assert carry.dtype == complex_dtype
        assert jax.eval_shape(eigenvalues, params).dtype == complex_dtype


def test_lru_init_on_the_ring():
    r_min, r_max, max_phase = 0.4, 0.8, math.pi / 10
    cell = rnnlab.lru(64, r_min=r_min, r_max=r_max, max_phase=max_phase)
    params = jax.jit(cell.init, static_argnums=1)(jax.random.key(0), F)
    lam = eigenvalues(params)
    assert jnp.all(jnp.abs(lam) >= r_min - 1e-6) and jnp.all(jnp.abs(lam) <= r_max + 1e-6)
    assert jnp.all(jnp.angle(lam) >= 0) and jnp.all(jnp.angle(lam) <= max_phase + 1e-6)
    np.testing.assert_allclose(
        jnp.exp(params.gamma_log), jnp.sqrt(1 - jnp.abs(lam) ** 2), rtol=1e-5
    )
    # |lambda| < 1 whatever nu_log (up to rounding): stable by construction
    lam = eigenvalues(params._replace(nu_log=params.nu_log - 20))
    assert jnp.all(jnp.abs(lam) <= 1 + 1e-6)


def test_lru_jacobian_decays_as_max_modulus_power(x64):
    """dh_{T-1}/dh_t = diag(lambda^(T-1-t)), so its norm is max|lambda|^(T-1-t)."""
    num_steps = 8
    cell, params, xs, _ = _setup("lru", jnp.float64, num_steps=num_steps)
    xs = xs[:, 0]  # one sequence: h is [N]
    h = cell.initial_carry(params) + 0.1j

    def run_from(h, t):  # h_t -> h_{T-1}
        for s in range(t + 1, num_steps):
            h, _ = cell.step(params, h, xs[s])
        return h

    rho = jnp.max(jnp.abs(eigenvalues(params)))
    starts = (0, 3, num_steps - 1)
    jacobians = jax.jit(
        lambda h: [jax.jacrev(run_from, holomorphic=True)(h, t) for t in starts]
    )(h)
    for t, jac in zip(starts, jacobians, strict=True):
        k = num_steps - 1 - t
        np.testing.assert_allclose(jnp.linalg.norm(jac, 2), rho**k, rtol=1e-10)
        np.testing.assert_allclose(jac, jnp.diag(eigenvalues(params) ** k), atol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_orthogonal_matrix_is_orthogonal_for_any_A(scale):
    cell = rnnlab.orthogonal(8)
    params = cell.init(jax.random.key(0), F)
    A = scale * jax.random.normal(jax.random.key(1), (8, 8))
    W = jax.jit(recurrent_matrix)(params._replace(A=A))
    np.testing.assert_allclose(W @ W.T, jnp.eye(8), atol=1e-5)
    np.testing.assert_allclose(jnp.linalg.det(W), 1.0, atol=1e-5)


@pytest.mark.parametrize("recurrent_init", ["henaff", "cayley", "identity"])
def test_orthogonal_inits(recurrent_init):
    cell = rnnlab.orthogonal(5, recurrent_init=recurrent_init)  # odd: one unit is fixed
    params = cell.init(jax.random.key(0), F)
    W = jax.jit(recurrent_matrix)(params)
    np.testing.assert_allclose(W @ W.T, jnp.eye(5), atol=1e-6)
    if recurrent_init == "identity":
        np.testing.assert_allclose(W, jnp.eye(5), atol=1e-7)


def test_orthogonal_linear_jacobian_has_unit_singular_values():
    """With phi = identity, dh_t/dh_{t-1} = W^T: every singular value is 1, at one
    step and through several."""
    cell, params, xs, _ = _setup("orthogonal-identity", hidden_size=6)
    params = params._replace(A=jax.random.normal(jax.random.key(2), params.A.shape))
    h = jax.random.normal(jax.random.key(3), (6,))

    def run(h):
        for t in range(T):
            h, _ = cell.step(params, h, xs[t, 0])
        return h

    one_step = jax.jacrev(lambda h: cell.step(params, h, xs[0, 0])[0])
    for jac in jax.jit(lambda h: (one_step(h), jax.jacrev(run)(h)))(h):
        np.testing.assert_allclose(jnp.linalg.svd(jac, compute_uv=False), 1.0, atol=1e-5)


def test_orthogonal_prepare_gives_the_same_step():
    cell, params, xs, carry = _setup("orthogonal")
    prepared = cell.prepare(params)
    assert isinstance(prepared, rnnlab.OrthogonalWeights)
    np.testing.assert_allclose(prepared.W, recurrent_matrix(params), rtol=1e-6)
    close(cell.step(prepared, carry, xs[0]), cell.step(params, carry, xs[0]), tol=1e-6)


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_min_rnn_carry_jacobian_is_diagonal_in_unit_interval(name):
    cell, params, xs, carry = _setup(name)
    jac = jax.jacrev(lambda h: cell.step(params, h, xs[0, 0])[0])(carry[0])
    diag = jnp.diag(jac)
    np.testing.assert_array_equal(jac - jnp.diag(diag), 0.0)
    assert jnp.all(diag > 0) and jnp.all(diag < 1)
    a, _ = cell.coefficients(params, xs[0, 0])
    np.testing.assert_allclose(diag, a, rtol=1e-6)


def test_minlstm_is_a_convex_combination():
    """f' + i' = 1: with the identity candidate, h_t = f' h_{t-1} + (1 - f') h~_t."""
    cell = rnnlab.minlstm(H, candidate_activation="identity")
    params = cell.init(jax.random.key(0), F)
    x = jax.random.normal(jax.random.key(1), (B, F))
    k_h = (x @ params.W_x + params.b[None])[:, 2 * H :]
    a, b = cell.coefficients(params, x)
    np.testing.assert_allclose(b, (1 - a) * k_h, rtol=1e-5, atol=1e-7)


def test_registry_entries():
    assert set(rnnlab.registry.names("parallel")) >= {"lru", "mingru", "minlstm"}
    assert "orthogonal" in rnnlab.registry.names("modern")
    assert "orthogonal" not in rnnlab.registry.names("parallel")
    for name in ("lru", "mingru", "minlstm"):
        assert rnnlab.has_parallel_form(rnnlab.registry.get(name, H))
    lru = rnnlab.registry.get("lru", H)
    params = lru.init(jax.random.key(0), F)
    bound = rnnlab.registry.entry("lru").decay_bound(params)
    np.testing.assert_allclose(bound, jnp.max(jnp.abs(eigenvalues(params))))


def test_bad_options_and_inputs_raise():
    with pytest.raises(ValueError, match="r_min"):
        rnnlab.lru(H, r_min=0.99, r_max=0.9)
    with pytest.raises(ValueError, match="max_phase"):
        rnnlab.lru(H, max_phase=0.0)
    with pytest.raises(ValueError, match="candidate_activation"):
        rnnlab.mingru(H, candidate_activation="relu")
    with pytest.raises(ValueError, match="nonlinearity"):
        rnnlab.orthogonal(H, nonlinearity="relu")
    with pytest.raises(ValueError, match="recurrent_init"):
        rnnlab.orthogonal(H, recurrent_init="orthogonal")
    for name in ("lru", "minlstm", "orthogonal-identity"):
        cell = _cell(name)
        params = cell.init(jax.random.key(0), F)
        with pytest.raises(ValueError, match="input features"):
            cell.step(params, cell.initial_carry(params), jnp.ones((F + 1,)))
