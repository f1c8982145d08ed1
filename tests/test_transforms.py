"""Zoneout and variational dropout against loops that apply the masks by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import B, F, H, T, close, loop

import rnnlab
from rnnlab import transforms


def _case(cell):
    params = cell.init(jax.random.key(0), F)
    xs = jax.random.normal(jax.random.key(1), (T, B, F))
    return params, xs


@pytest.mark.parametrize("make", [lambda c: transforms.zoneout(c, 0.3),
                                  lambda c: transforms.variational_dropout(
                                      c, input_rate=0.3, recurrent_rate=0.4)])
def test_off_without_a_key_and_deterministic_with_one(make):
    inner = rnnlab.lstm(H)
    cell = make(inner)
    params, xs = _case(inner)
    k = jax.random.key(7)
    a = rnnlab.scan(cell, params, xs, carry=cell.initial_carry(params, (B,), key=k))
    b = rnnlab.scan(cell, params, xs, carry=cell.initial_carry(params, (B,), key=k))
    c = rnnlab.scan(cell, params, xs, carry=cell.initial_carry(params, (B,),
                                                               key=jax.random.key(8)))
    close(a, b)
    assert not np.allclose(a[1], c[1])
    assert jax.tree.leaves(a[0].train)[0].dtype == bool


def test_variational_dropout_equals_masked_loop():
    inner = rnnlab.gru(H)
    cell = transforms.variational_dropout(inner, input_rate=0.3, recurrent_rate=0.5)
    params, xs = _case(inner)
    carry = cell.initial_carry(params, (B,), key=jax.random.key(3))
    final, ys = jax.jit(lambda p, x, c: rnnlab.scan(cell, p, x, carry=c))(params, xs, carry)
    m_x, m_h = transforms.dropout_masks(carry, (B, F), (B, H), jnp.float32, 0.3, 0.5)
    # The masks are per sequence: inverted scaling, the expected fraction dropped.
    assert set(np.unique(np.asarray(m_h)).round(4)) <= {0.0, 2.0}
    # Oracle: the GRU's numpy-free definition with the masks applied by hand.
    form = inner.affine
    h = inner.initial_carry(params, (B,))
    want = []
    for t in range(T):
        g = form.preactivation(params, xs[t] * m_x, h * m_h)
        h, y = form.pointwise(g, h)
        want.append(y)
    close(ys, jnp.stack(want))
    close(final.inner, h)
    # Evaluation (no key): the inner cell exactly.
    close(rnnlab.scan(cell, params, xs)[1], rnnlab.scan(inner, params, xs)[1])


def test_variational_masks_fraction_and_errors():
    carry = transforms.TransformCarry(None, jax.random.key_data(jax.random.key(0)),
                                      jnp.ones((), bool))
    _, m_h = transforms.dropout_masks(carry, (1,), (200, 50), jnp.float32, 0.0, 0.3)
    assert abs(float(jnp.mean(m_h == 0)) - 0.3) < 0.02
    with pytest.raises(ValueError, match="recurrent_rate"):
        transforms.variational_dropout(rnnlab.lem(H), recurrent_rate=0.1)
    with pytest.raises(ValueError, match="rate"):
        transforms.zoneout(rnnlab.lstm(H), 1.0)
    # Input dropout alone works for any cell.
    cell = transforms.variational_dropout(rnnlab.lem(H), input_rate=0.2)
    params, xs = _case(rnnlab.lem(H))
    rnnlab.scan(cell, params, xs, carry=cell.initial_carry(params, (B,), key=jax.random.key(0)))


def test_zoneout_equals_numpy_loop_in_training_and_evaluation():
    inner = rnnlab.lstm(H)
    rate = 0.4
    cell = transforms.zoneout(inner, rate)
    params, xs = _case(inner)
    carry = cell.initial_carry(params, (B,), key=jax.random.key(5))
    final, ys = rnnlab.scan(cell, params, xs, carry=carry)
    # Oracle: the same key sequence (split each step, fold_in per leaf), masks by hand.
    key = jax.random.key(5)
    c = inner.initial_carry(params, (B,))
    want = []
    for t in range(T):
        new, _ = inner.step(params, c, xs[t])
        key, k_mask = jax.random.split(key)
        keep_c = np.asarray(jax.random.bernoulli(jax.random.fold_in(k_mask, 0), rate, (B, H)))
        keep_h = np.asarray(jax.random.bernoulli(jax.random.fold_in(k_mask, 1), rate, (B, H)))
        c = rnnlab.LSTMCarry(c=np.where(keep_c, c.c, new.c), h=np.where(keep_h, c.h, new.h))
        want.append(c.h)
    close(ys, np.stack(want))
    close(final.inner, c)
    # Evaluation: the expectation rate * old + (1 - rate) * new.
    _, ys_eval = rnnlab.scan(cell, params, xs)
    c = inner.initial_carry(params, (B,))
    want = []
    for t in range(T):
        new, _ = inner.step(params, c, xs[t])
        c = jax.tree.map(lambda o, n: rate * o + (1 - rate) * n, c, new)
        want.append(c.h)
    close(ys_eval, jnp.stack(want))


def test_zoneout_rate_zero_is_the_inner_cell_and_gradients_flow():
    inner = rnnlab.elman(H)
    cell = transforms.zoneout(inner, 0.0)
    params, xs = _case(inner)
    carry = cell.initial_carry(params, (B,), key=jax.random.key(0))
    close(rnnlab.scan(cell, params, xs, carry=carry)[1], loop(inner, params, xs,
                                                               carry.inner)[1])
    g = jax.grad(lambda p: jnp.sum(rnnlab.scan(transforms.zoneout(inner, 0.5), p, xs,
                                               carry=carry)[1]))(params)
    assert all(jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(g))
