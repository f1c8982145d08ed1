"""S6 against a numpy transcription of Mamba's reference scan (state-spaces/mamba,
mamba_ssm/ops/selective_scan_interface.py: selective_scan_ref, with delta_bias and
delta_softplus=True; the (batch, channel, length) layout and its einsums kept) and of its
initialisation (mamba_ssm/modules/mamba_simple.py: S4D-real A, dt log-uniform in
[dt_min, dt_max], D = 1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
    u = np.einsum("tbf,fh->bht", np.asarray(xs), np.asarray(p.W_in))  # (b, d, l)
    delta = np.einsum("bht,hk->bkt", u, np.asarray(p.W_dt))  # before the bias
    B = np.einsum("bht,hn->bnt", u, np.asarray(p.W_B))
    C = np.einsum("bht,hn->bnt", u, np.asarray(p.W_C))
    A = -np.exp(np.asarray(p.A_log))
    y, last = selective_scan_ref(u, delta, A, B, C, np.asarray(p.D), np.asarray(p.b_dt))
    np.testing.assert_allclose(np.asarray(ys), y.transpose(2, 0, 1), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        np.asarray(final), last.reshape(batch, H * N), rtol=1e-12, atol=1e-14
    )


def test_s6_initialisation_is_mambas():
    H, N = 1000, 16
    p = rnnlab.s6(H, state_size=N).init(jax.random.key(0), 3)
    np.testing.assert_allclose(
        -np.exp(np.asarray(p.A_log)), -np.broadcast_to(np.arange(1, N + 1.0), (H, N)), rtol=1e-6
    )
    dt = np.asarray(jax.nn.softplus(p.b_dt), np.float64)  # the initial step at W_dt u = 0
    assert 0.001 * (1 - 1e-4) <= dt.min() and dt.max() <= 0.1 * (1 + 1e-4)
    log_dt = np.log(dt)  # log-uniform: its quartiles split [log 0.001, log 0.1] evenly
    np.testing.assert_allclose(
        np.quantile(log_dt, [0.25, 0.5, 0.75]),
        np.log(0.001) + np.array([0.25, 0.5, 0.75]) * np.log(100.0),
        atol=0.2,
    )  # ~3 sigma of a quartile of 1000 draws
    np.testing.assert_array_equal(np.asarray(p.D), 1.0)


def test_s6_low_rank_step_size_equals_mambas_x_proj_dt_proj(x64):
    """With dt_rank=R, Mamba computes x_dbl = x_proj(u), splits it into (dt [R], B [N],
    C [N]) and takes dt = dt_proj.weight @ dt (mamba_simple.py, Mamba.forward's slow path);
    our W_dt [H, R], W_B, W_C are x_proj's rows transposed and W_dt_proj [R, H] dt_proj's."""
    H, N, R, F, T, batch = 5, 3, 2, 2, 6, 2
    cell = rnnlab.s6(H, state_size=N, dt_rank=R, param_dtype=jnp.float64)
    p = cell.init(jax.random.key(0), F)
    assert p.W_dt.shape == (H, R) and p.W_dt_proj.shape == (R, H)
    xs = jax.random.normal(jax.random.key(1), (T, batch, F), jnp.float64)
    final, ys = rnnlab.scan(cell, p, xs)
    x_proj = np.concatenate([np.asarray(p.W_dt).T, np.asarray(p.W_B).T, np.asarray(p.W_C).T])
    dt_proj = np.asarray(p.W_dt_proj).T  # [H, R], nn.Linear's [out, in]
    u = np.einsum("tbf,fh->bht", np.asarray(xs), np.asarray(p.W_in))  # (b, d, l)
    x_dbl = np.einsum("bdl,kd->blk", u, x_proj).reshape(batch * T, R + 2 * N)  # (b l) k
    dt, B, C = np.split(x_dbl, [R, R + N], axis=-1)
    delta = (dt_proj @ dt.T).reshape(H, batch, T).transpose(1, 0, 2)  # "d (b l) -> b d l"
    B = B.reshape(batch, T, N).transpose(0, 2, 1)
    C = C.reshape(batch, T, N).transpose(0, 2, 1)
    A = -np.exp(np.asarray(p.A_log))
    y, last = selective_scan_ref(u, delta, A, B, C, np.asarray(p.D), np.asarray(p.b_dt))
    np.testing.assert_allclose(np.asarray(ys), y.transpose(2, 0, 1), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        np.asarray(final), last.reshape(batch, H * N), rtol=1e-12, atol=1e-14
    )
    _, ys_par = rnnlab.scan(cell, p, xs, mode="parallel")
    np.testing.assert_allclose(np.asarray(ys_par), np.asarray(ys), rtol=1e-12, atol=1e-14)


def test_s6_low_rank_initialisation_is_mambas():
    """dt_proj uniform in +-R^-1/2 (Mamba's dt_init="random", dt_scale=1); full rank is the
    default and draws as before the option existed."""
    R = 4
    p = rnnlab.s6(64, dt_rank=R).init(jax.random.key(0), 3)
    w = np.asarray(p.W_dt_proj)
    assert w.shape == (R, 64) and np.abs(w).max() <= R**-0.5
    assert np.abs(w).max() > 0.95 * R**-0.5  # spread over the whole interval, not a corner
    full = rnnlab.s6(64).init(jax.random.key(0), 3)
    assert full.W_dt.shape == (64, 64) and full.W_dt_proj is None
    np.testing.assert_array_equal(full.W_in, p.W_in)  # the other draws do not move


def test_s6_dt_rank_must_be_positive():
    with pytest.raises(ValueError, match="dt_rank"):
        rnnlab.s6(4, dt_rank=0)
