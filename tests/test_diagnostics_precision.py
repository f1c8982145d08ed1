"""rnnlab.diagnostics at the edges of floating point, and forward-mode sensitivity.

Oracles: closed forms (h = 0.5 h + x u gives ||dL/dh_t|| = 2 * 0.5^k exactly; a diagonal
recurrence's Lyapunov exponents are the logs of its coefficients), exact power-of-two
rescaling of the loss, the log of the ordinary norms where both are finite, and, for
``param_sensitivity``, ``jax.jacfwd`` of a Python loop and float64 central differences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELLS, LENGTHS, B, F, H, T, make_case
from jax.flatten_util import ravel_pytree

import rnnlab
from rnnlab import diagnostics

STACK = "stack(elman-tanh, lstm)"


def _by_cell(names, default):
    """Every name, those outside ``default`` marked slow (compiling dominates)."""
    return [n if n in default else pytest.param(n, marks=pytest.mark.slow) for n in names]


def _diagonal_cell(lam):
    """A user's own cell h_t = lam * h_{t-1} + x_t u (lam a vector: one unit each)."""
    lam = jnp.asarray(lam, jnp.float32)
    n = lam.shape[0]

    def init(key, input_size):
        return {"u": jax.random.normal(key, (input_size, n))}

    def initial_carry(params, batch_shape=()):
        return jnp.zeros((*batch_shape, n), params["u"].dtype)

    def step(params, h, x):
        h = lam.astype(h.dtype).reshape((1,) * (h.ndim - 1) + lam.shape) * h + x @ params["u"]
        return h, h

    return rnnlab.Cell(init, initial_carry, step)


def _last_output_loss(ys, final_carry):
    return jnp.sum(ys[-1])


# ----------------------------------------------------------------------------- no false zeros


def test_half_contraction_has_no_false_zeros():
    """The issue's reproduction: H = 4, T = 130, loss = sum of the last output. At t = T-1-k
    the norm is 2 * 0.5^k; squaring in float32 made every k >= 64 exactly 0."""
    num_steps = 130
    cell = _diagonal_cell(jnp.full(4, 0.5))
    params = cell.init(jax.random.key(0), F)
    xs = jax.random.normal(jax.random.key(1), (num_steps, F))
    norms, per_leaf = jax.jit(lambda p, x: (
        diagnostics.carry_grad_norms(cell, p, x, _last_output_loss),
        diagnostics.carry_grad_norms(cell, p, x, _last_output_loss, per_leaf=True)))(params, xs)
    k = np.arange(1, 126)
    want = 2.0 * 0.5 ** k.astype(np.float64)  # down to 4.7e-38 at k = 125
    for got in (norms, per_leaf):
        got = np.asarray(got, np.float64)[num_steps - 1 - k]
        np.testing.assert_allclose(got, want, rtol=1e-3)


def test_log_norms_at_depth_1000():
    """T = 1100 in float32: log=True gives ln 2 + k ln 0.5 (about -692.4 at k = 1000) to
    1e-4 relative, and equals log(carry_grad_norms) wherever that is finite."""
    num_steps = 1100
    cell = _diagonal_cell(jnp.full(4, 0.5))
    params = cell.init(jax.random.key(0), F)
    xs = jax.random.normal(jax.random.key(1), (num_steps, F))
    logs, norms = jax.jit(lambda p, x: (
        diagnostics.carry_grad_norms(cell, p, x, _last_output_loss, log=True),
        diagnostics.carry_grad_norms(cell, p, x, _last_output_loss)))(params, xs)
    assert logs.shape == (num_steps,) and logs.dtype == jnp.float32
    k = np.arange(1, num_steps)
    want = np.log(2.0) + k * np.log(0.5)
    got = np.asarray(logs, np.float64)[num_steps - 1 - k]
    np.testing.assert_allclose(got[k == 1000], -692.4540, rtol=1e-4)
    np.testing.assert_allclose(got[k >= 2], want[k >= 2], rtol=1e-4)
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)  # k = 1: ln 1 = 0
    assert logs[-1] == -np.inf  # y_{T-1} does not depend on c_{T-1}: the norm is exactly 0
    finite = np.asarray(norms) > 0
    np.testing.assert_allclose(np.asarray(logs)[finite], np.log(np.asarray(norms)[finite]),
                               atol=1e-4)


def _mixed_loss(ys, final_carry):
    ys = jnp.concatenate([y.reshape(-1) for y in jax.tree.leaves(ys)])
    weights = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype))
    final = sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in jax.tree.leaves(final_carry))
    return jnp.sum(jnp.sin(ys) * weights) + 0.3 * final


TINY = 2.0**-100  # multiplies every gradient exactly; their squares underflow float32


@pytest.mark.parametrize("name", _by_cell([*CELLS, STACK], ("lstm",)))
def test_every_cell_tiny_gradients_and_log_space(name):
    """For every cell, in float32: a loss scaled by 2^-100 gives norms scaled by exactly
    2^-100 (entries ~1e-31, whose squares underflow), per leaf too; log=True equals the
    log of the ordinary norms (total and per leaf, with and without lengths) and is
    shifted by exactly -100 ln 2 for the scaled loss."""
    if name == STACK:
        cell = rnnlab.stack([rnnlab.registry.get("elman-tanh", H), rnnlab.registry.get("lstm", H)])
        params = cell.init(jax.random.key(0), F)
        xs = jax.random.normal(jax.random.key(1), (T, B, F))
        carry = cell.initial_carry(params, (B,))
    else:
        _, cell, params, xs, carry = make_case(name)
    lengths = jnp.asarray(LENGTHS)

    def tiny_loss(ys, c):
        return TINY * _mixed_loss(ys, c)

    @jax.jit
    def run(params, xs, carry, lengths):
        f = diagnostics.carry_grad_norms
        return {
            "norms": f(cell, params, xs, _mixed_loss, carry=carry),
            "leaf": f(cell, params, xs, _mixed_loss, carry=carry, per_leaf=True),
            "tiny": f(cell, params, xs, tiny_loss, carry=carry),
            "tiny_leaf": f(cell, params, xs, tiny_loss, carry=carry, per_leaf=True),
            "log": f(cell, params, xs, _mixed_loss, carry=carry, log=True),
            "log_leaf": f(cell, params, xs, _mixed_loss, carry=carry, per_leaf=True, log=True),
            "log_tiny": f(cell, params, xs, tiny_loss, carry=carry, log=True),
            "masked": f(cell, params, xs, _mixed_loss, carry=carry, lengths=lengths),
            "log_masked": f(cell, params, xs, _mixed_loss, carry=carry, lengths=lengths,
                            log=True),
        }

    out = jax.tree.map(lambda a: np.asarray(a, np.float64), run(params, xs, carry, lengths))
    assert np.mean(out["norms"][:-1] > 0) > 0.5  # ReLU cells may have genuine zeros
    np.testing.assert_allclose(out["tiny"], TINY * out["norms"], rtol=1e-5)
    jax.tree.map(lambda t, n: np.testing.assert_allclose(t, TINY * n, rtol=1e-5),
                 out["tiny_leaf"], out["leaf"])

    def log_close(logs, norms):
        logs, norms = np.asarray(logs), np.asarray(norms)
        assert logs.shape == norms.shape
        np.testing.assert_array_equal(logs == -np.inf, norms == 0)
        np.testing.assert_allclose(logs[norms > 0], np.log(norms[norms > 0]), atol=1e-4)

    log_close(out["log"], out["norms"])
    jax.tree.map(log_close, out["log_leaf"], out["leaf"])
    log_close(out["log_masked"], out["masked"])
    finite = np.isfinite(out["log"])
    np.testing.assert_allclose(out["log_tiny"][finite], out["log"][finite] - 100 * np.log(2.0),
                               atol=1e-4)


def test_log_norms_under_vmap_and_jit():
    """vmap over seeds of the log norms == one call per seed, all in one jitted program."""
    cell = rnnlab.registry.get("elman-tanh", H)
    params = jax.vmap(lambda s: cell.init(jax.random.key(s), F))(jnp.arange(3))
    xs = jax.random.normal(jax.random.key(7), (T, B, F))

    def logs(p):
        return diagnostics.carry_grad_norms(cell, p, xs, _mixed_loss, log=True)

    @jax.jit
    def run(params):
        each = [logs(jax.tree.map(lambda a, s=s: a[s], params)) for s in range(3)]
        return jax.vmap(logs)(params), jnp.stack(each)

    batched, each = run(params)
    assert batched.shape == (3, T, B)
    np.testing.assert_allclose(batched, each, atol=1e-5)


def test_log_norms_explode_past_float32():
    """lam = 4 (exploding): the gradient at depth k is 4^k; the ordinary norm overflows
    to inf past k ~ 64, log=True stays exact (k ln 4 up to an offset)."""
    num_steps = 100
    cell = _diagonal_cell(jnp.full(2, 4.0))
    params = cell.init(jax.random.key(0), F)
    xs = jnp.zeros((num_steps, F))  # the state stays 0: only the carry path counts
    logs = jax.jit(lambda p, x: diagnostics.carry_grad_norms(
        cell, p, x, lambda ys, h: jnp.sum(h), log=True))(params, xs)
    k = np.arange(num_steps)
    np.testing.assert_allclose(np.asarray(logs)[num_steps - 1 - k],
                               0.5 * np.log(2.0) + k * np.log(4.0), rtol=1e-5)


# ----------------------------------------------------------------------------- Lyapunov start


def test_lyapunov_finds_the_largest_of_a_diagonal_cell():
    """The issue's case: lam = (0.9, 0.5, 0.2, 0.05, 1.3), T = 200, k = 3. A start at the
    first three coordinate axes returned (ln .9, ln .5, ln .2); the answer is
    (ln 1.3, ln .9, ln .5). The tolerance is the random frame's transient over 200 steps."""
    cell = _diagonal_cell([0.9, 0.5, 0.2, 0.05, 1.3])
    params = cell.init(jax.random.key(0), F)
    xs = jax.random.normal(jax.random.key(1), (200, F))
    got = diagnostics.lyapunov_exponents(cell, params, xs, 3)
    np.testing.assert_allclose(got, np.log([1.3, 0.9, 0.5]), atol=0.02)
    other = diagnostics.lyapunov_exponents(cell, params, xs, 3, key=jax.random.key(5))
    np.testing.assert_allclose(other, np.log([1.3, 0.9, 0.5]), atol=0.02)
    np.testing.assert_array_equal(got, diagnostics.lyapunov_exponents(cell, params, xs, 3))


def _gated_diagonal_cell(lam):
    """h_t = x_t (lam * h_{t-1}): an input of 0 annihilates every direction at once."""
    lam = jnp.asarray(lam, jnp.float32)
    return rnnlab.Cell(init=lambda key, f: {"lam": lam},
                       initial_carry=lambda p, batch_shape=(): jnp.ones(
                           batch_shape + lam.shape, lam.dtype),
                       step=lambda p, h, x: ((p["lam"] * h) * x[0], h))


def test_lyapunov_restarts_the_frame_after_a_zero_jacobian():
    """A zero Jacobian in the transient leaves QR's completion, the first coordinate axes,
    as the frame; on a diagonal cell they never leave their subspace and gave
    (ln .9, ln .5, ln .2) -- the fixed-start defect again. A restarted frame finds the
    largest."""
    cell = _gated_diagonal_cell([0.9, 0.5, 0.2, 0.05, 1.3])
    xs = jnp.ones((200, 1)).at[5, 0].set(0.0)
    got = diagnostics.lyapunov_exponents(cell, cell.init(None, 1), xs, 3, transient=10)
    np.testing.assert_allclose(got, np.log([1.3, 0.9, 0.5]), atol=2e-3)


def test_lyapunov_of_a_dead_relu_network_is_minus_infinity_not_nan():
    """An IRNN whose units are all off (bias -100) has zero Jacobians: every exponent is
    -inf, under jit and vmap too; a zero in the averaged steps gives -inf, not NaN."""
    cell = rnnlab.irnn(6)
    params = cell.init(jax.random.key(0), F)
    params = params._replace(b=jnp.full_like(params.b, -100.0))
    xs = jax.random.normal(jax.random.key(1), (2, 40, F))
    lyap = jax.jit(jax.vmap(
        lambda x: diagnostics.lyapunov_exponents(cell, params, x, 4, transient=5)))(xs)
    assert np.all(np.asarray(lyap) == -np.inf)
    cell = _gated_diagonal_cell([0.9, 0.5])
    xs = jnp.ones((50, 1)).at[30, 0].set(0.0)  # inside the averaged steps
    lyap = diagnostics.lyapunov_exponents(cell, cell.init(None, 1), xs, 2, transient=10)
    assert np.all(np.asarray(lyap) == -np.inf)


# ----------------------------------------------------------------------------- param_sensitivity


def _user_cell():
    return _diagonal_cell([0.9, 0.5, -0.3, 0.99])


def _sensitivity_case(name):
    """float64 cell, params, inputs [T, B, F], a random tangent. Call under x64."""
    if name == "user":
        cell = _user_cell()
    elif name == STACK:
        cell = rnnlab.stack([rnnlab.registry.get("elman-tanh", H), rnnlab.registry.get("lstm", H)])
    else:
        cell = rnnlab.registry.get(name, H)
    k_p, k_x, k_t = jax.random.split(jax.random.key(3), 3)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(k_p, F))
    xs = jax.random.normal(k_x, (T, B, F), jnp.float64)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(k_t, len(leaves))
    tangents = treedef.unflatten([jax.random.normal(k, a.shape, a.dtype)
                                  for k, a in zip(keys, leaves, strict=True)])
    return cell, params, xs, tangents


def _carries_by_loop(cell, params, xs):
    """Every step's carry from a Python loop over cell.step, stacked: [T, ...] per leaf."""
    carry = cell.initial_carry(params, xs.shape[1:-1])
    out = []
    for t in range(xs.shape[0]):
        carry, _ = cell.step(params, carry, xs[t])
        out.append(carry)
    return jax.tree.map(lambda *c: jnp.stack(c), *out)


def _norms(tree):
    """[T, B] norms over every carry leaf's feature axes (complex: |z|^2)."""
    sq = [jnp.sum(jnp.abs(a.reshape(a.shape[:2] + (-1,))) ** 2, axis=-1)
          for a in jax.tree.leaves(tree)]
    return jnp.sqrt(sum(sq))


@pytest.mark.parametrize("name", _by_cell([*CELLS, STACK, "user"], ("lstm", "user")))
def test_param_sensitivity_equals_jacfwd_and_finite_differences(x64, name):
    cell, params, xs, tangents = _sensitivity_case(name)

    @jax.jit
    def run(params, xs, tangents):
        flat, unravel = ravel_pytree(params)
        jac = jax.jacfwd(lambda v: _carries_by_loop(cell, unravel(v), xs))(flat)
        v = ravel_pytree(tangents)[0]
        directional = jax.tree.map(lambda j: jnp.tensordot(j, v.astype(j.dtype), axes=1), jac)
        h = 1e-6
        up = _carries_by_loop(cell, jax.tree.map(lambda p, v: p + h * v, params, tangents), xs)
        down = _carries_by_loop(cell, jax.tree.map(lambda p, v: p - h * v, params, tangents), xs)
        fd = jax.tree.map(lambda a, b: (a - b) / (2 * h), up, down)
        return (diagnostics.param_sensitivity(cell, params, xs, tangents),
                diagnostics.param_sensitivity(cell, params, xs, tangents, per_leaf=True),
                _norms(directional), _norms(fd),
                jax.tree.map(lambda a: _norms(a), directional))

    got, got_leaf, brute, fd, brute_leaf = run(params, xs, tangents)
    assert got.shape == (T, B) and got.dtype == jnp.float64
    np.testing.assert_allclose(got, brute, rtol=1e-10)
    np.testing.assert_allclose(got, fd, rtol=1e-6)
    assert np.all(np.asarray(got) > 0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10), got_leaf, brute_leaf)


def test_param_sensitivity_lengths_carry_and_closed_form():
    """Padded steps give 0 and valid ones equal the unpadded run; a given carry is held
    fixed; for h = lam h + x (one unit) along d/dlam, s_t = |sum_k k lam^(k-1) x_{t-k}|."""
    cell = rnnlab.registry.get("elman-tanh", H)
    params = cell.init(jax.random.key(0), F)
    xs = jax.random.normal(jax.random.key(1), (T, B, F))
    tangents = jax.tree.map(jnp.ones_like, params)
    lengths = jnp.asarray(LENGTHS)
    full, masked, given = jax.jit(lambda p, x, v, n: (
        diagnostics.param_sensitivity(cell, p, x, v),
        diagnostics.param_sensitivity(cell, p, x, v, lengths=n),
        diagnostics.param_sensitivity(cell, p, x, v, carry=cell.initial_carry(p, (B,)))))(
            params, xs, tangents, lengths)
    valid = np.arange(T)[:, None] < np.asarray(LENGTHS)[None]
    np.testing.assert_allclose(np.asarray(masked)[valid], np.asarray(full)[valid], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(masked)[~valid], 0.0)
    np.testing.assert_allclose(given, full, rtol=1e-6)

    lam = 0.8

    def init(key, input_size):
        return {"lam": jnp.asarray(lam)}

    def step(p, h, x):
        h = p["lam"] * h + x[..., 0:1]
        return h, h

    scalar = rnnlab.Cell(init, lambda p, b=(): jnp.zeros((*b, 1)), step)
    x = jax.random.normal(jax.random.key(2), (30, 1))
    got = diagnostics.param_sensitivity(scalar, {"lam": jnp.asarray(lam)}, x,
                                        {"lam": jnp.asarray(1.0)})
    xn = np.asarray(x[:, 0], np.float64)
    want = [abs(sum(k * lam ** (k - 1) * xn[t - k] for k in range(1, t + 1))) for t in range(30)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_param_sensitivity_errors():
    cell = rnnlab.registry.get("elman-tanh", H)
    params = cell.init(jax.random.key(0), F)
    xs = jnp.ones((T, B, F))
    with pytest.raises(ValueError, match="tangents must have the structure"):
        diagnostics.param_sensitivity(cell, params, xs, {"W": 1.0})
    bad = jax.tree.map(lambda a: jnp.ones(a.shape + (1,)), params)
    with pytest.raises(ValueError, match="tangents must have the leaf shapes"):
        diagnostics.param_sensitivity(cell, params, xs, bad)
    with pytest.raises(ValueError, match="xs must be"):
        diagnostics.param_sensitivity(cell, params, jnp.ones((F,)), params)


def test_scaled_norm_and_log_fit():
    x = jnp.array([[3e-30, 4e-30], [3e25, 4e25], [0.0, 0.0], [jnp.inf, 1.0]], jnp.float32)
    got = np.asarray(diagnostics.scaled_norm(x, axis=-1), np.float64)
    np.testing.assert_allclose(got[:2], [5e-30, 5e25], rtol=1e-6)
    assert got[2] == 0 and got[3] == np.inf
    d = jnp.arange(10.0)
    logs = jnp.log(3.0) + d * jnp.log(0.7)
    np.testing.assert_allclose(diagnostics.fit_decay_rate(logs.at[0].set(-jnp.inf), d, log=True),
                               0.7, rtol=1e-5)
