"""The Flax wrappers only adapt: they compute exactly what rnnlab.scan computes,
they train, and they accept a cell written by the user."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import LENGTHS, B, F, H, T, close
from flax import linen as nn
from flax import nnx

import rnnlab
from rnnlab.wrappers import NNXRNN, LinenCell, LinenRNN


class H0Params(NamedTuple):
    W: jax.Array  # [F + H, H]
    h0: jax.Array  # [H] learned initial state


def learned_h0_cell(hidden_size):
    """A user's own cell: a tanh RNN with a learned initial state (not rnnlab's)."""

    def init(key, input_size):
        k_w, k_h = jax.random.split(key)
        W = jax.random.normal(k_w, (input_size + hidden_size, hidden_size)) * 0.5
        return H0Params(W=W, h0=jax.random.normal(k_h, (hidden_size,)))

    def initial_carry(params, batch_shape=()):
        return jnp.broadcast_to(params.h0, tuple(batch_shape) + params.h0.shape)

    def step(params, h, x):
        h = jnp.tanh(jnp.concatenate([x, h], axis=-1) @ params.W)
        return h, h

    return rnnlab.Cell(init, initial_carry, step)


@pytest.fixture(scope="module")
def xs():
    return np.random.default_rng(1).standard_normal((T, B, F)).astype(np.float32)


# ----------------------------------------------------------------------------- linen


@pytest.mark.parametrize("cell", [rnnlab.lstm(H), learned_h0_cell(H)], ids=["lstm", "user"])
def test_linen_rnn_equals_scan(cell, xs):
    rnn = LinenRNN(cell, return_carry=True)
    variables = rnn.init(jax.random.key(0), xs)
    assert set(variables) == {"params"} and set(variables["params"]) == {"cell"}
    params = variables["params"]["cell"]
    want = jax.eval_shape(lambda k: cell.init(k, F), jax.random.key(0))
    assert jax.tree.structure(params) == jax.tree.structure(want)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(lambda s: s.shape, want)
    # Options pass through: batch-major, lengths, reverse, given carry, ys only.
    xs_bm = jnp.swapaxes(xs, 0, 1)
    carry = jax.tree.map(lambda c: c + 0.3, cell.initial_carry(params, (B,)))
    kw = dict(carry=carry, lengths=jnp.asarray(LENGTHS), reverse=True)

    @jax.jit
    def both(variables):
        params = variables["params"]["cell"]
        return ((rnn.apply(variables, xs), rnnlab.scan(cell, params, xs)),
                (LinenRNN(cell, time_axis=1).apply(variables, xs_bm, **kw),
                 rnnlab.scan(cell, params, xs_bm, time_axis=1, **kw)[1]))

    for got, want in both(variables):
        close(got, want, tol=1e-6)


def test_linen_under_jit_and_flax_rnn(xs):
    cell = learned_h0_cell(H)
    rnn = LinenRNN(cell)
    variables = rnn.init(jax.random.key(0), xs)
    close(jax.jit(rnn.apply)(variables, xs), rnn.apply(variables, xs))

    # The per-step adapter inside flax's own nn.RNN (batch-major by default);
    # its carry must be the learned h0, read from the params.
    flax_rnn = nn.RNN(LinenCell(cell), return_carry=True)
    xs_bm = jnp.swapaxes(xs, 0, 1)
    fv = flax_rnn.init(jax.random.key(0), xs_bm)
    params = fv["params"]["cell"]["cell"]
    close(flax_rnn.apply(fv, xs_bm), rnnlab.scan(cell, params, xs_bm, time_axis=1))


def test_linen_errors(xs):
    with pytest.raises(TypeError, match="Cell protocol"):
        LinenRNN(object()).init(jax.random.key(0), xs)
    with pytest.raises(ValueError, match="time axis and a feature axis"):
        LinenRNN(rnnlab.lstm(H)).init(jax.random.key(0), xs[0, 0])


class _LinenModel(nn.Module):
    @nn.compact
    def __call__(self, xs):  # [B, T, F] -> [B, T]
        ys = LinenRNN(rnnlab.lstm(8), time_axis=1)(xs)
        return nn.Dense(1)(ys)[..., 0]


def _task(key):
    """A tiny regression: y_t = the running mean of x_t[0] * x_t[1]."""
    x = jax.random.normal(key, (16, 6, 2))  # [B, T, F]
    prod = x[..., 0] * x[..., 1]
    return x, jnp.cumsum(prod, axis=1) / jnp.arange(1, 7)[None]


def _train(loss_fn, params, steps=40):
    tx = optax.adam(3e-2)

    @jax.jit
    def update(params, opt_state):
        loss, g = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = tx.init(params), []
    for _ in range(steps):
        params, opt_state, loss = update(params, opt_state)
        losses.append(float(loss))
    return losses


def test_linen_model_trains():
    k_params, k_data = jax.random.split(jax.random.key(0))
    x, y = _task(k_data)
    model = _LinenModel()
    variables = jax.jit(model.init)(k_params, x)
    losses = _train(lambda v: jnp.mean((model.apply(v, x) - y) ** 2), variables)
    assert losses[-1] < 0.2 * losses[0], losses


# ------------------------------------------------------------------------------- nnx


@pytest.mark.parametrize("cell", [rnnlab.gru(H), learned_h0_cell(H)], ids=["gru", "user"])
def test_nnx_rnn_equals_scan(cell, xs):
    rnn = NNXRNN(cell, F, rngs=nnx.Rngs(0), return_carry=True)
    params = rnn.param_values()
    # Only the params are state: the cell and the options are static.
    assert len(jax.tree.leaves(nnx.state(rnn))) == len(jax.tree.leaves(params))
    close(rnn(xs), rnnlab.scan(cell, params, xs))
    close(rnn.initial_carry((B,)), cell.initial_carry(params, (B,)))

    lengths = jnp.array([5, 2, 0])
    kw = dict(lengths=lengths, reverse=True)
    close(rnn(xs, return_carry=False, **kw), rnnlab.scan(cell, params, xs, **kw)[1])


def test_nnx_under_jit_and_given_params(xs):
    cell = rnnlab.lstm(H)
    params = cell.init(jax.random.key(3), F)
    rnn = NNXRNN(cell, F, rngs=None, params=params, time_axis=1)
    xs_bm = jnp.swapaxes(xs, 0, 1)
    expected = rnnlab.scan(cell, params, xs_bm, time_axis=1)[1]
    close(nnx.jit(lambda m, x: m(x))(rnn, xs_bm), expected)
    close(rnn.param_values(), params)
    with pytest.raises(ValueError, match="rngs"):
        NNXRNN(cell, F, rngs=None)


class _NNXModel(nnx.Module):
    def __init__(self, rngs):
        self.rnn = NNXRNN(learned_h0_cell(8), 2, rngs=rngs, time_axis=1)
        self.readout = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, xs):  # [B, T, F] -> [B, T]
        return self.readout(self.rnn(xs))[..., 0]


def test_nnx_model_trains():
    k_data = jax.random.key(1)
    x, y = _task(k_data)
    model = _NNXModel(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def update(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(update(model, optimizer)) for _ in range(40)]
    assert losses[-1] < 0.2 * losses[0], losses


def test_linen_cell_keeps_the_checkpoint_policy(xs):
    """Inside flax's nn.RNN the step runs under its checkpoint policy, as in rnnlab.scan:
    the backward pass stores the same per-step arrays (for the LSTM: x, z, h and c, plus
    the outputs the loss reads), and the gradients are rnnlab.scan's."""
    cell = rnnlab.lstm(H)
    flax_rnn = nn.RNN(LinenCell(cell), time_major=True)
    variables = flax_rnn.init(jax.random.key(0), xs)
    params = variables["params"]["cell"]["cell"]

    def per_step(loss, p):  # traced, not run
        vjp = jax.eval_shape(lambda p: jax.vjp(loss, p)[1], p)
        return sorted(a.shape[1:] for a in jax.tree.leaves(vjp) if a.shape[:1] == (T,))

    def flax_loss(v):
        return jnp.sum(flax_rnn.apply(v, xs) ** 2)

    def scan_loss(p):
        return jnp.sum(rnnlab.scan(cell, p, xs)[1] ** 2)

    assert per_step(flax_loss, variables) == per_step(scan_loss, params)
    assert per_step(scan_loss, params) == sorted([(B, F), (B, 4 * H)] + [(B, H)] * 3)
    got, want = jax.jit(lambda v: (jax.grad(flax_loss)(v)["params"]["cell"]["cell"],
                                   jax.grad(scan_loss)(v["params"]["cell"]["cell"])))(variables)
    close(got, want, tol=1e-6)


def test_the_wrappers_pass_the_derivative_on(xs, monkeypatch):
    """derivative="fused" reaches rnnlab.scan from both wrappers (counted at the fused
    path), with values and gradients equal to autodiff's to rounding; an unknown choice is
    rnnlab.scan's error."""
    from rnnlab.modes import fused

    calls = []
    original = fused.run
    monkeypatch.setattr(fused, "run", lambda *a, **k: calls.append(1) or original(*a, **k))
    cell = rnnlab.lstm(H)
    module = LinenRNN(cell, derivative="fused")
    variables = module.init(jax.random.key(0), xs)
    params = variables["params"]["cell"]

    def scan_loss(p):
        return jnp.sum(rnnlab.scan(cell, p, xs, derivative="autodiff")[1] ** 2)

    rnn = NNXRNN(cell, input_size=F, rngs=None, params=params, derivative="fused")

    @jax.jit
    def run(variables):
        params = variables["params"]["cell"]
        counts = [len(calls)]
        linen = jax.value_and_grad(lambda v: jnp.sum(module.apply(v, xs) ** 2))(variables)
        counts.append(len(calls))
        nnx_ys = rnn(xs)
        counts.append(len(calls))
        assert counts == [0, 1, 2], counts  # the fused path traced once by each wrapper
        return {"linen": (linen[0], linen[1]["params"]["cell"]), "nnx": nnx_ys,
                "linen_ys": module.apply(variables, xs),
                "scan": jax.value_and_grad(scan_loss)(params),
                "scan_ys": rnnlab.scan(cell, params, xs, derivative="autodiff")[1]}

    calls.clear()
    out = run(variables)
    assert len(calls) == 3
    close(out["linen"], out["scan"], tol=1e-5)
    close(out["linen_ys"], out["scan_ys"], tol=1e-6)
    close(out["nnx"], out["scan_ys"], tol=1e-6)
    with pytest.raises(ValueError, match="derivative must be one of"):
        LinenRNN(cell, derivative="by-hand").init(jax.random.key(0), xs)
