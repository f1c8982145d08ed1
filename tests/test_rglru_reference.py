"""RG-LRU against a numpy transcription of the reference code (google-deepmind/recurrentgemma,
recurrentgemma/jax/layers.py: rnn_param_init and RGLRU.__call__), written in its conventions:
a_param with a = exp(-softplus(a_param)), log_a = -8 * gate_a * softplus(a_param)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnlab


def _softplus(z):
    return np.logaddexp(0.0, z)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def reference_rglru(a_param, W_a, b_a, W_x, b_x, x):
    """One sequence [T, D] from a zero cache, past the segment's first token (the reference
    leaves that token un-normalised; rnnlab does not, see the cell's docstring)."""
    h = np.zeros(a_param.shape)
    ys = []
    for x_t in x:
        gate_x = _sigmoid(x_t @ W_x + b_x)
        gate_a = _sigmoid(x_t @ W_a + b_a)
        log_a = -8.0 * gate_a * _softplus(a_param)
        a, a_squared = np.exp(log_a), np.exp(2 * log_a)
        h = a * h + (x_t * gate_x) * np.sqrt(1 - a_squared)
        ys.append(h)
    return np.stack(ys)


@pytest.mark.parametrize("a_init", ["paper", "recurrentgemma"])
def test_rglru_equals_the_reference_recurrence(x64, a_init):
    """With W_u = I (the reference acts on its input directly) and a_param = -Lambda."""
    H, T = 5, 7
    cell = rnnlab.rglru(H, a_init=a_init, param_dtype=jnp.float64)
    p = cell.init(jax.random.key(0), H)
    k1, k2 = jax.random.split(jax.random.key(1))
    p = p._replace(W_u=jnp.eye(H), b_a=0.3 * jax.random.normal(k1, (H,)),
                   b_i=0.3 * jax.random.normal(k2, (H,)))
    x = np.asarray(jax.random.normal(jax.random.key(2), (T, H), jnp.float64))
    _, ys = rnnlab.scan(cell, p, jnp.asarray(x))
    want = reference_rglru(-np.asarray(p.Lambda), np.asarray(p.W_a), np.asarray(p.b_a),
                           np.asarray(p.W_i), np.asarray(p.b_i), x)
    np.testing.assert_allclose(np.asarray(ys), want, rtol=1e-12, atol=1e-14)


def test_rglru_initialisations():
    """paper: a^8 uniform in [0.9, 0.999]; recurrentgemma: the base a on the ring, a^2
    uniform in [0.81, 0.998] (its rnn_param_init, min_rad 0.9, max_rad 0.999)."""
    H = 20000
    paper = rnnlab.rglru(H).init(jax.random.key(0), 1)
    a8 = np.asarray(jax.nn.sigmoid(paper.Lambda), np.float64) ** 8
    assert 0.9 - 1e-5 <= a8.min() and a8.max() <= 0.999 + 1e-5
    np.testing.assert_allclose(a8.mean(), (0.9 + 0.999) / 2, rtol=2e-3)
    ring = rnnlab.rglru(H, a_init="recurrentgemma").init(jax.random.key(0), 1)
    a2 = np.asarray(jax.nn.sigmoid(ring.Lambda), np.float64) ** 2
    assert 0.81 - 1e-5 <= a2.min() and a2.max() <= 0.998 + 1e-5
    np.testing.assert_allclose(a2.mean(), (0.81 + 0.998) / 2, rtol=2e-3)
    np.testing.assert_allclose(np.quantile(a2, 0.25), 0.81 + 0.25 * (0.998 - 0.81), rtol=2e-3)
    with pytest.raises(ValueError, match="a_init"):
        rnnlab.rglru(4, a_init="ring")
