"""S6 against a numpy transcription of Mamba's reference scan (state-spaces/mamba,
mamba_ssm/ops/selective_scan_interface.py: selective_scan_ref, with delta_bias and
delta_softplus=True; the (batch, channel, length) layout and its einsums kept) and of its
initialisation (mamba_ssm/modules/mamba_simple.py: S4D-real A, dt log-uniform in
[dt_min, dt_max], D = 1)."""

import jax
import jax.numpy as jnp
import numpy as np

import rnnlab


def selective_scan_ref(u, delta, A, B, C, D, delta_bias):
    """u, delta: (b, d, l); A: (d, n); B, C: (b, n, l); D, delta_bias: (d,)."""
    delta = np.logaddexp(0.0, delta + delta_bias[..., None])  # softplus
    deltaA = np.exp(np.einsum("bdl,dn->bdln", delta, A))
    deltaB_u = np.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    x = np.zeros(u.shape[:2] + A.shape[1:])
    ys = []
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(np.einsum("bdn,bn->bd", x, C[:, :, i]))
    y = np.stack(ys, axis=2)
    return y + u * D[..., None], x


def test_s6_equals_mambas_reference_scan(x64):
    H, N, F, T, batch = 3, 4, 2, 6, 2
    cell = rnnlab.s6(H, state_size=N, param_dtype=jnp.float64)
    p = cell.init(jax.random.key(0), F)
    p = p._replace(D=jnp.linspace(0.5, 1.5, H))
    xs = jax.random.normal(jax.random.key(1), (T, batch, F), jnp.float64)
    final, ys = rnnlab.scan(cell, p, xs)
    u = np.einsum("tbf,fh->bht", np.asarray(xs), np.asarray(p.W_in))     # (b, d, l)
    delta = np.einsum("bht,hk->bkt", u, np.asarray(p.W_dt))             # before the bias
    B = np.einsum("bht,hn->bnt", u, np.asarray(p.W_B))
    C = np.einsum("bht,hn->bnt", u, np.asarray(p.W_C))
    A = -np.exp(np.asarray(p.A_log))
    y, last = selective_scan_ref(u, delta, A, B, C, np.asarray(p.D), np.asarray(p.b_dt))
    np.testing.assert_allclose(np.asarray(ys), y.transpose(2, 0, 1), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(final), last.reshape(batch, H * N), rtol=1e-12,
                               atol=1e-14)


def test_s6_initialisation_is_mambas():
    H, N = 1000, 16
    p = rnnlab.s6(H, state_size=N).init(jax.random.key(0), 3)
    np.testing.assert_allclose(-np.exp(np.asarray(p.A_log)),
                               -np.broadcast_to(np.arange(1, N + 1.0), (H, N)), rtol=1e-6)
    dt = np.asarray(jax.nn.softplus(p.b_dt), np.float64)  # the initial step at W_dt u = 0
    assert 0.001 * (1 - 1e-4) <= dt.min() and dt.max() <= 0.1 * (1 + 1e-4)
    log_dt = np.log(dt)  # log-uniform: its quartiles split [log 0.001, log 0.1] evenly
    np.testing.assert_allclose(np.quantile(log_dt, [0.25, 0.5, 0.75]),
                               np.log(0.001) + np.array([0.25, 0.5, 0.75]) * np.log(100.0),
                               atol=0.2)  # ~3 sigma of a quartile of 1000 draws
    np.testing.assert_array_equal(np.asarray(p.D), 1.0)
