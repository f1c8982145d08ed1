"""Lipschitz RNN against a numpy transcription of the authors' code (erichson/LipschitzRNN,
commit df6552e89fb9aacd086a93dadca624d2ce62ace3, models.py: RnnModels.forward with
model='LipschitzRNN', and LipschitzRNN_ODE with torchdiffeq's fixed-grid Euler step over
[0, eps]), kept in its conventions: row-vector states, ``h @ A`` and ``h @ W`` with

    A = beta (B - B^T) + (1 - beta) (B + B^T) - gamma I,   W = likewise from C,
    h <- h + eps * alpha * h @ A + eps * tanh(h @ W + E(x)),   E(x) = x @ E.weight^T + E.bias,

one ``gamma`` for both matrices and ``alpha = 1`` outside its ablation study.

rnnlab writes the paper's column-vector form, ``h @ A_beta(M_A)^T``; since
``A_beta(M)^T = A_beta(M^T)``, the reference's ``B`` is rnnlab's ``M_A^T`` and ``C`` is
``M_W^T``; ``E.weight = U^T`` and ``E.bias = b``. The code draws ``B, C`` with standard
deviation ``init_std / n_units`` (tools.py, gaussian_init_), rnnlab with
``recurrent_std / sqrt(H)``: initialisation only, so the test sets its own scales.
rnnlab offers no RK2 (the code's LipschitzRNN_ODE with torchdiffeq's 'midpoint', the
default of its driver.py) and no LipschitzRNN_gated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnlab
from rnnlab.cells.lipschitz import structured


def reference_matrices(B, C, beta, gamma):
    """RnnModels.forward at i == 0 (model='LipschitzRNN')."""
    eye = np.eye(B.shape[0])
    A = beta * (B - B.T) + (1 - beta) * (B + B.T) - gamma * eye
    W = beta * (C - C.T) + (1 - beta) * (C + C.T) - gamma * eye
    return A, W


def reference_lipschitz(E_weight, E_bias, B, C, x, *, beta, gamma, eps, alpha=1.0):
    """x [batch, T, F] (the code's x[:, i, :]). Returns every step's h, [batch, T, H]."""
    A, W = reference_matrices(B, C, beta, gamma)
    h = np.zeros((x.shape[0], B.shape[0]))
    hs = []
    for i in range(x.shape[1]):
        z = x[:, i, :] @ E_weight.T + E_bias
        h = h + eps * alpha * (h @ A) + eps * np.tanh(h @ W + z)
        hs.append(h)
    return np.stack(hs, axis=1)


def reference_lipschitz_ode_euler(E_weight, E_bias, B, C, x, *, beta, gamma, eps):
    """model='LipschitzRNN_ODE', solver='euler': odeint(func, h, [0, eps])[-1], one step
    h + eps * func(0, h) with func(t, h) = h @ A + tanh(h @ W + z)."""
    A, W = reference_matrices(B, C, beta, gamma)

    def func(h, z):
        return h @ A + np.tanh(h @ W + z)

    h = np.zeros((x.shape[0], B.shape[0]))
    hs = []
    for i in range(x.shape[1]):
        z = x[:, i, :] @ E_weight.T + E_bias
        h = h + eps * func(h, z)
        hs.append(h)
    return np.stack(hs, axis=1)


def _case(beta, gamma, eps, std, seed=0, H=6, F=3, T=12, batch=4):
    cell = rnnlab.lipschitz(
        H,
        beta=beta,
        gamma_A=gamma,
        gamma_W=gamma,
        epsilon=eps,
        recurrent_std=std,
        param_dtype=jnp.float64,
    )
    k_p, k_b, k_x = jax.random.split(jax.random.key(seed), 3)
    p = cell.init(k_p, F)
    p = p._replace(b=0.5 * jax.random.normal(k_b, (H,), jnp.float64))
    xs = jax.random.normal(k_x, (T, batch, F), jnp.float64)  # rnnlab: time-major
    return cell, p, xs


def _reference_args(p):
    q = {k: np.asarray(v) for k, v in p._asdict().items()}
    return q["U"].T, q["b"], q["M_A"].T, q["M_W"].T  # E.weight, E.bias, B, C


@pytest.mark.parametrize(
    "beta, gamma, eps, std",
    [
        (0.75, 0.001, 0.03, 3.0),  # the paper's MNIST setting, larger weights
        (0.6, 0.2, 0.3, 2.0),  # non-default everything, so a swapped constant fails
        (0.0, 0.5, 0.5, 0.8),  # symmetric only
        (1.0, 0.05, 0.25, 2.0),  # antisymmetric only
    ],
)
def test_lipschitz_equals_the_authors_euler_loop(x64, beta, gamma, eps, std):
    cell, p, xs = _case(beta, gamma, eps, std)
    final, ys = rnnlab.scan(cell, p, xs)
    x_bf = np.swapaxes(np.asarray(xs), 0, 1)  # the reference reads [batch, T, F]
    want = reference_lipschitz(*_reference_args(p), x_bf, beta=beta, gamma=gamma, eps=eps)
    np.testing.assert_allclose(np.swapaxes(np.asarray(ys), 0, 1), want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(final), want[:, -1], rtol=1e-12, atol=1e-14)
    # The ODE path with torchdiffeq's Euler is the same recurrence.
    ode = reference_lipschitz_ode_euler(*_reference_args(p), x_bf, beta=beta, gamma=gamma, eps=eps)
    np.testing.assert_allclose(ode, want, rtol=1e-12, atol=1e-14)


def test_lipschitz_matrices_equal_the_references_transposed(x64):
    """Our A_beta(M), W_beta(M) are the reference's A, W built from M^T, transposed; the two
    gammas land on their own matrix (the reference has one gamma for both)."""
    H, beta, g_a, g_w = 5, 0.3, 0.07, 0.4
    rng = np.random.default_rng(0)
    M_A, M_W = rng.normal(size=(H, H)), rng.normal(size=(H, H))
    A_ref, _ = reference_matrices(M_A.T, M_W.T, beta, g_a)
    _, W_ref = reference_matrices(M_A.T, M_W.T, beta, g_w)
    np.testing.assert_allclose(
        np.asarray(structured(jnp.asarray(M_A), beta, g_a)).T, A_ref, rtol=1e-13, atol=1e-14
    )
    np.testing.assert_allclose(
        np.asarray(structured(jnp.asarray(M_W), beta, g_w)).T, W_ref, rtol=1e-13, atol=1e-14
    )


def test_lipschitz_gammas_separately_against_the_reference_loop(x64):
    """gamma_A != gamma_W: the reference's loop with A from gamma_A and W from gamma_W."""
    H, F, T, n = 5, 2, 10, 3
    beta, g_a, g_w, eps = 0.4, 0.3, 0.02, 0.4
    cell = rnnlab.lipschitz(
        H,
        beta=beta,
        gamma_A=g_a,
        gamma_W=g_w,
        epsilon=eps,
        recurrent_std=2.0,
        param_dtype=jnp.float64,
    )
    p = cell.init(jax.random.key(4), F)
    xs = jax.random.normal(jax.random.key(5), (T, n, F), jnp.float64)
    _, ys = rnnlab.scan(cell, p, xs)
    E_w, E_b, B, C = _reference_args(p)
    A, _ = reference_matrices(B, C, beta, g_a)
    _, W = reference_matrices(B, C, beta, g_w)
    h, want = np.zeros((n, H)), []
    for x in np.asarray(xs):  # the reference's update line, matrices as above
        h = h + eps * (h @ A) + eps * np.tanh(h @ W + x @ E_w.T + E_b)
        want.append(h)
    np.testing.assert_allclose(np.asarray(ys), np.stack(want), rtol=1e-12, atol=1e-14)
