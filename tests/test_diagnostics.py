"""Tests for rnnlab.diagnostics: one-pass gradient norms, Jacobian products, Lyapunov exponents.

Oracles: brute force (one ``jax.grad``/``jax.jacrev`` per step, through a
Python loop independent of :func:`rnnlab.scan`) in float64, and closed forms
(a linear recurrence with ``W = rho * orthogonal``; the IRNN with every unit
active; a diagonal complex recurrence; the fixed point of a contracting tanh
network; sum of all exponents = mean log|det J|).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    CELLS,
    LENGTHS,
    B,
    F,
    H,
    T,
    cast,
    close,
    loop,
    make_case,
    random_carry,
)
from jax.flatten_util import ravel_pytree

import rnnlab
from rnnlab import diagnostics

STACK = "stack(elman-tanh, lstm)"
CELL_NAMES = (*CELLS, STACK)


def _setup64(name, batch_shape=(B,), seed=0):
    """A float64 cell, params, inputs [T, *batch_shape, F] and a random initial carry
    (so no gradient is trivially zero). Call under x64."""
    if name != STACK and batch_shape == (B,) and seed == 0:
        _, cell, params, xs, carry = make_case(name, "float64")
        return cell, params, xs, carry
    k_params, k_xs, k_carry = jax.random.split(jax.random.key(seed), 3)
    cell = rnnlab.stack([rnnlab.registry.get("elman-tanh", H), rnnlab.registry.get("lstm", H)]
                        ) if name == STACK else rnnlab.registry.get(name, H)
    params = cast(cell.init(k_params, F), jnp.float64)
    xs = jax.random.normal(k_xs, (T, *batch_shape, F), jnp.float64)
    return cell, params, xs, random_carry(cell, params, batch_shape, k_carry)


def _loss(ys, final_carry):
    """Touches every output and the final carry, with unequal weights."""
    ys = jnp.concatenate([y.reshape(-1) for y in jax.tree.leaves(ys)])
    weights = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype))
    final = sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in jax.tree.leaves(final_carry))
    return jnp.sum(jnp.sin(ys) * weights) + 0.3 * final


def _expand(mask, like):
    return mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))


def _masked_step(cell, params, carry, x, valid):
    new_carry, y = cell.step(params, carry, x)
    if valid is None:
        return new_carry, y
    new_carry = jax.tree.map(lambda n, o: jnp.where(_expand(valid, n), n, o), new_carry, carry)
    return new_carry, jnp.where(_expand(valid, y), y, jnp.zeros_like(y))


def _brute_carry_grads(cell, params, xs, loss_fn, carry, lengths=None):
    """``[dL/dc_t for t]``: for each t, the loss as a function of c_t alone, run on from
    c_t by a Python loop (outputs up to t held fixed), differentiated once."""
    num_steps = xs.shape[0]

    def valid(t):
        return None if lengths is None else t < lengths

    grads, ys_before = [], []
    c = carry
    for t in range(num_steps):
        c, y = _masked_step(cell, params, c, xs[t], valid(t))
        ys_before.append(y)

        def loss_from(c_t, t=t, ys_head=tuple(ys_before)):
            ys = list(ys_head)
            for s in range(t + 1, num_steps):
                c_t, y = _masked_step(cell, params, c_t, xs[s], valid(s))
                ys.append(y)
            return loss_fn(jnp.stack(ys), c_t)

        grads.append(jax.grad(loss_from)(c))
    return grads


def _leaf_norm(g, batch_ndim):
    g = jnp.abs(g) ** 2
    return jnp.sum(g.reshape(g.shape[:batch_ndim] + (-1,)), axis=-1)


def _brute_norms(grads, batch_ndim):
    return jnp.stack(
        [jnp.sqrt(sum(_leaf_norm(g, batch_ndim) for g in jax.tree.leaves(gt))) for gt in grads]
    )


# ----------------------------------------------------------------------------
# Brute-force oracles
# ----------------------------------------------------------------------------


def _brute_jacobian_norms(cell, params, xs, carry):
    """``||d c_{T-1} / d c_t||_2`` by jax.jacrev of the composed map, one t at a time."""
    num_steps = xs.shape[0]
    norms, c = [], carry
    for t in range(num_steps):
        c, _ = cell.step(params, c, xs[t])
        vec, unravel = ravel_pytree(c)

        def to_end(v, t=t, unravel=unravel):
            c_t = unravel(v)
            for s in range(t + 1, num_steps):
                c_t, _ = cell.step(params, c_t, xs[s])
            return ravel_pytree(c_t)[0]

        norms.append(jnp.linalg.norm(jax.jacrev(to_end)(vec), ord=2))
    return jnp.stack(norms)


@pytest.mark.parametrize("name", CELL_NAMES)
def test_equal_brute_force(x64, name):
    """One-pass carry_grad_norms (combined and per leaf) == T separate gradients;
    jacobian_norms == jacrev of the composed steps. Oracles and diagnostics compile as
    one program (a brute force under jit is still T separate gradients)."""
    cell, params, xs, carry = _setup64(name)
    carry0 = jax.tree.map(lambda leaf: leaf[0], carry)
    real = not any(jnp.iscomplexobj(leaf) for leaf in jax.tree.leaves(carry0))
    several_leaves = len(jax.tree.leaves(carry0)) > 1  # per_leaf differs from the total

    @jax.jit
    def run(params, xs, carry, carry0):
        out = {
            "norms": diagnostics.carry_grad_norms(cell, params, xs, _loss, carry=carry),
            "brute": _brute_carry_grads(cell, params, xs, _loss, carry),
        }
        if several_leaves:
            out["per_leaf"] = diagnostics.carry_grad_norms(cell, params, xs, _loss, carry=carry,
                                                           per_leaf=True)
        if real:  # the ravel_pytree oracle is for real carries (complex: test_complex_carry)
            out["jacobian"] = diagnostics.jacobian_norms(cell, params, xs[:, 0], carry=carry0,
                                                         return_spectra=True)
            out["brute_jacobian"] = _brute_jacobian_norms(cell, params, xs[:, 0], carry0)
        return out

    out = run(params, xs, carry, carry0)
    got = out["norms"]
    assert got.shape == (T, B)
    assert got.dtype == jnp.float64
    close(got, _brute_norms(out["brute"], 1), tol=1e-10)
    assert np.all(np.asarray(got)[:-1] > 0)
    if several_leaves:  # the carry's structure, each leaf the norm of its gradient
        want_per_leaf = jax.tree.map(
            lambda *g: jnp.stack([jnp.sqrt(_leaf_norm(x, 1)) for x in g]), *out["brute"])
        close(out["per_leaf"], want_per_leaf, tol=1e-10)
        assert jax.tree.structure(out["per_leaf"]) == jax.tree.structure(carry)

    if not real:
        return
    norms, spectra = out["jacobian"]
    dim = ravel_pytree(carry0)[0].size
    assert norms.shape == (T,) and spectra.shape == (T, dim)
    close(norms, out["brute_jacobian"], tol=1e-10)
    np.testing.assert_allclose(spectra[-1], np.ones(dim), rtol=1e-12)
    np.testing.assert_array_equal(spectra[:, 0], norms)
    assert np.all(np.diff(np.asarray(spectra), axis=1) <= 0)


def test_carry_grad_norms_with_lengths(x64):
    cell, params, xs, carry = _setup64("elman-tanh")
    lengths = jnp.asarray(LENGTHS)

    @jax.jit
    def run(params, xs, carry, lengths):
        return (diagnostics.carry_grad_norms(cell, params, xs, _loss, carry=carry,
                                             lengths=lengths),
                _brute_norms(_brute_carry_grads(cell, params, xs, _loss, carry, lengths), 1))

    got, want = run(params, xs, carry, lengths)
    valid = np.arange(T)[:, None] < np.asarray(lengths)[None, :]
    close(np.asarray(got)[valid], np.asarray(want)[valid], tol=1e-10)
    # There is no state at a padded step: the carry passes through unchanged.
    np.testing.assert_array_equal(np.asarray(got)[~valid], 0.0)


def test_carry_grad_norms_runs_the_step_under_its_checkpoint_policy():
    """carry_grad_norms differentiates the LSTM's step as rnnlab.scan does, keeping only
    its matmul result per step: XLA plans less temporary memory than for the same step
    without the policy, and the norms are equal."""
    cell = rnnlab.lstm(H)
    plain = cell._replace(checkpoint_policy=None)
    params = cell.init(jax.random.key(0), F)
    xs = jax.random.normal(jax.random.key(1), (11, B, F))
    temp, norms = [], []
    for c in (cell, plain):
        f = jax.jit(lambda p, x, c=c: diagnostics.carry_grad_norms(c, p, x, _loss))
        analysis = f.lower(params, xs).compile().memory_analysis()
        if analysis is None:
            pytest.skip("this backend reports no memory analysis")
        temp.append(analysis.temp_size_in_bytes)
        norms.append(f(params, xs))
    assert temp[0] < temp[1]
    np.testing.assert_allclose(norms[0], norms[1], rtol=1e-6)


def _additive_loss(ys, final_carry):
    """A sum of identical per-sequence terms, so each sequence's gradient is its own."""
    final = sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(final_carry))
    return jnp.sum(jnp.sin(ys)) + 0.3 * final


def test_vmap_over_seeds_and_jit():
    """vmap over params (seeds) and over sequences equals one call per seed/sequence."""
    cell = rnnlab.registry.get("elman-tanh", H)
    params = jax.vmap(lambda s: cell.init(jax.random.key(s), F))(jnp.arange(3))
    xs = jax.random.normal(jax.random.key(7), (T, B, F))

    def norms(p):
        return diagnostics.carry_grad_norms(cell, p, xs, _additive_loss)

    def jac(p, x):
        return diagnostics.jacobian_norms(cell, p, x)

    @jax.jit
    def run(params):
        p0 = jax.tree.map(lambda a: a[0], params)
        return {
            "seeds": jax.vmap(norms)(params),
            "each_seed": jnp.stack([norms(jax.tree.map(lambda a, s=s: a[s], params))
                                    for s in range(3)]),
            "sequences": jax.vmap(jac, in_axes=(None, 1))(p0, xs),  # [B, T]
            "each_sequence": jnp.stack([jac(p0, xs[:, b]) for b in range(B)]),
        }

    out = run(params)
    assert out["seeds"].shape == (3, T, B) and out["sequences"].shape == (B, T)
    close(out["seeds"], out["each_seed"], tol=1e-5)
    close(out["sequences"], out["each_sequence"], tol=1e-6)


# ----------------------------------------------------------------------------
# Closed forms
# ----------------------------------------------------------------------------


class LinearParams(NamedTuple):
    W: jax.Array  # [H, H]
    U: jax.Array  # [F, H]


def linear_rnn(hidden_size, rho):
    """A user's own cell: h_t = h_{t-1} W + x_t U with W = rho * orthogonal."""

    def init(key, input_size):
        k_w, k_u = jax.random.split(key)
        W = jax.nn.initializers.orthogonal(scale=rho)(k_w, (hidden_size, hidden_size))
        return LinearParams(W=W, U=jax.random.normal(k_u, (input_size, hidden_size)))

    def initial_carry(params, batch_shape=()):
        return jnp.zeros((*batch_shape, hidden_size), params.W.dtype)

    def step(params, h, x):
        h = h @ params.W + x @ params.U
        return h, h

    return rnnlab.Cell(init, initial_carry, step)


def test_linear_recurrence_closed_form():
    rho, num_steps = 0.8, 12
    cell = linear_rnn(6, rho)
    params = cell.init(jax.random.key(0), F)
    xs = jax.random.normal(jax.random.key(1), (num_steps, F))  # one sequence, no batch axis
    decay = rho ** (num_steps - 1 - np.arange(num_steps))  # [T]
    # L = <v, h_{T-1}>: dL/dh_t = v W^{T-1-t}, of norm rho^(T-1-t) |v| = rho^(T-1-t).
    v = jnp.ones(6) / jnp.sqrt(6.0)

    @jax.jit
    def run(params, xs):
        grad_norms = diagnostics.carry_grad_norms(cell, params, xs, lambda ys, h: v @ h)
        return {
            "jacobian": diagnostics.jacobian_norms(cell, params, xs),
            "grad": grad_norms,  # default initial carry
            "rate": diagnostics.fit_decay_rate(grad_norms, num_steps - 1 - jnp.arange(num_steps)),
            "exponents": diagnostics.lyapunov_exponents(cell, params, xs, 3),
        }

    out = run(params, xs)
    np.testing.assert_allclose(out["jacobian"], decay, rtol=1e-5)
    np.testing.assert_allclose(out["grad"], decay, rtol=1e-5)
    np.testing.assert_allclose(out["rate"], rho, rtol=1e-5)
    # Every singular value of W is rho, so every exponent is ln rho.
    np.testing.assert_allclose(out["exponents"], np.full(3, np.log(rho)), rtol=1e-5)


def test_irnn_all_units_active_has_unit_jacobian():
    cell = rnnlab.irnn(6)
    params = cell.init(jax.random.key(0), F)
    params = params._replace(b=jnp.ones_like(params.b))  # pre-activations > 0: ReLU never clips
    xs = jax.random.uniform(jax.random.key(1), (10, F))
    (_, spectra), exponents = jax.jit(lambda p, x: (
        diagnostics.jacobian_norms(cell, p, x, return_spectra=True),
        diagnostics.lyapunov_exponents(cell, p, x, 6)))(params, xs)
    np.testing.assert_allclose(spectra, np.ones((10, 6)), rtol=1e-6)
    np.testing.assert_allclose(exponents, 0.0, atol=1e-6)


def diagonal_complex_rnn(lam):
    """A user's own cell with a complex state (LRU-like): h_t = lam * h_{t-1} + x_t B."""

    def init(key, input_size):
        k_re, k_im = jax.random.split(key)
        shape = (input_size, lam.shape[0])
        re, im = jax.random.normal(k_re, shape), jax.random.normal(k_im, shape)
        return {"B": jax.lax.complex(re, im)}

    def initial_carry(params, batch_shape=()):
        return jnp.zeros((*batch_shape, lam.shape[0]), jnp.complex64)

    def step(params, h, x):
        h = lam.reshape((1,) * (h.ndim - 1) + lam.shape) * h + x.astype(h.dtype) @ params["B"]
        return h, jnp.real(h)

    return rnnlab.Cell(init, initial_carry, step)


def test_complex_carry():
    moduli = jnp.array([0.9, 0.7, 0.5])
    lam = moduli * jnp.exp(1j * jnp.array([0.3, -1.2, 2.0]))
    cell = diagonal_complex_rnn(lam.astype(jnp.complex64))
    params = cell.init(jax.random.key(0), F)
    xs = jax.random.normal(jax.random.key(1), (8, B, F))
    decay = 0.9 ** (7 - np.arange(8))

    # |dL/dh_t|^2 sums |.|^2 over real and imaginary parts: L = |h_{T-1,0}|^2 / 2 gives
    # |dL/dh_t| = |lam_0|^(T-1-t) |h_{T-1,0}|.
    def loss(ys, h):
        return 0.5 * jnp.sum(jnp.abs(h[..., 0]) ** 2)

    long_xs = jax.random.normal(jax.random.key(2), (400, F))

    @jax.jit
    def run(params, xs):
        return {
            "jacobian": diagnostics.jacobian_norms(cell, params, xs[:, 0], return_spectra=True),
            # The random initial frame needs steps to align: a long input for the exponents.
            "exponents": diagnostics.lyapunov_exponents(cell, params, long_xs, 6),
            "grad": diagnostics.carry_grad_norms(cell, params, xs, loss),
        }

    out = run(params, xs)
    # As a real map each complex unit is a rotation scaled by |lam|.
    norms, spectra = out["jacobian"]
    assert spectra.shape == (8, 6)
    np.testing.assert_allclose(norms, decay, rtol=1e-5)
    want = np.repeat(np.log([0.9, 0.7, 0.5]), 2)
    np.testing.assert_allclose(out["exponents"], want, atol=0.01)
    np.testing.assert_allclose(np.sum(out["exponents"]), np.sum(want), rtol=1e-5)  # log|det J|
    h_end = np.abs(np.asarray(loop(cell, params, xs, cell.initial_carry(params, (B,)))[0])[:, 0])
    np.testing.assert_allclose(out["grad"], decay[:, None] * h_end[None, :], rtol=1e-5)


def test_lyapunov_contracting_tanh_network():
    """h_{t+1} = tanh(J h_t), J ~ N(0, g^2/N): h -> 0, the Jacobian -> J, and the
    largest exponent -> ln(spectral radius of J) ~ ln g."""
    g, n, num_steps = 0.5, 32, 300
    cell = rnnlab.elman(n, recurrent_init=rnnlab.initializers.spectral_normal(g))
    params = cell.init(jax.random.key(0), 1)
    xs = jnp.zeros((num_steps, 1))
    carry = jax.random.normal(jax.random.key(1), (n,))
    exponents = jax.jit(
        lambda p, c: diagnostics.lyapunov_exponents(cell, p, xs, 2, carry=c, transient=50)
    )(params, carry)
    moduli = np.sort(np.abs(np.linalg.eigvals(np.asarray(params.W_h, np.float64))))[::-1]
    # At the fixed point the exponents are ln|eigenvalues of J|, the largest ln(radius).
    np.testing.assert_allclose(exponents, np.log(moduli[:2]), atol=0.02)
    np.testing.assert_allclose(exponents[0], np.log(g), atol=0.15)  # circular law, N = 32


def test_lyapunov_sum_is_mean_log_det(x64):
    """Sum of the full spectrum = mean over the trajectory of log|det J_t|, exactly."""
    cell, params, xs, carry = _setup64("gru", batch_shape=())
    xs = jnp.concatenate([xs, xs[::-1]])  # 2T steps
    exponents = jax.jit(lambda p, x, c: diagnostics.lyapunov_exponents(cell, p, x, H, carry=c))(
        params, xs, carry)
    log_dets, c = [], carry
    for x in xs:
        jac = jax.jacfwd(lambda h, x=x: cell.step(params, h, x)[0])(c)
        log_dets.append(np.linalg.slogdet(np.asarray(jac))[1])
        c, _ = cell.step(params, c, x)
    np.testing.assert_allclose(jnp.sum(exponents), np.mean(log_dets), rtol=1e-10)
    assert np.all(np.diff(np.asarray(exponents)) <= 0)


# ----------------------------------------------------------------------------
# fit_decay_rate
# ----------------------------------------------------------------------------


def test_fit_decay_rate_recovers_factor_and_skips_zeros():
    d = jnp.arange(10.0)
    norms = jnp.stack([3.0 * 0.7**d, 0.7**d], axis=1)  # [10, 2]
    np.testing.assert_allclose(diagnostics.fit_decay_rate(norms[:, 0], d), 0.7, rtol=1e-5)
    # Pooled over sequences ([T, B] norms, [T] distances); a zero (padded step) is skipped.
    pooled = jnp.stack([0.7**d, 0.7**d], axis=1).at[0, 1].set(0.0)
    np.testing.assert_allclose(diagnostics.fit_decay_rate(pooled, d), 0.7, rtol=1e-5)


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["orthogonal", "gru"])
def test_diagnostics_prepare_once_and_match_unprepared(name):
    """Cells with rnnlab.scan's `prepare` hook get it once per diagnostic call, and the
    numbers equal those of the same cell without the hook (prepare inside every step)."""
    base = rnnlab.registry.get(name, H)
    calls = []
    counted = base._replace(prepare=lambda p: calls.append(None) or base.prepare(p))
    plain = rnnlab.Cell(base.init, base.initial_carry, base.step)  # no hook
    params = base.init(jax.random.key(0), F)
    xs = jax.random.normal(jax.random.key(1), (T, B, F))

    def loss(ys, carry):
        return jnp.sum(jnp.sin(ys))

    fns = [
        (diagnostics.carry_grad_norms, (xs, loss)),
        (diagnostics.jacobian_norms, (xs[:, 0],)),
        (diagnostics.lyapunov_exponents, (xs[:, 0], 2)),
    ]

    @jax.jit
    def run(params):
        out, prepared = [], []
        for fn, args in fns:  # prepare runs at trace time: count the calls of each
            calls.clear()
            out.append((fn(counted, params, *args), fn(plain, params, *args)))
            prepared.append(len(calls))
        assert prepared == [1, 1, 1], prepared
        return out

    for got, want in run(params):
        close(got, want, tol=1e-5)


def test_errors():
    cell = rnnlab.registry.get("elman-tanh", H)
    params = cell.init(jax.random.key(0), F)
    xs = jnp.ones((T, B, F))
    with pytest.raises(ValueError, match="xs must be"):
        diagnostics.carry_grad_norms(cell, params, jnp.ones((F,)), _loss)
    with pytest.raises(TypeError, match="real floating"):
        diagnostics.carry_grad_norms(cell, params, jnp.ones((T, B, F), jnp.int32), _loss)
    with pytest.raises(ValueError, match="scalar"):
        diagnostics.carry_grad_norms(cell, params, xs, lambda ys, c: ys)
    with pytest.raises(TypeError, match="loss_fn"):
        diagnostics.carry_grad_norms(cell, params, xs, None)
    with pytest.raises(ValueError, match="carry must match"):
        diagnostics.carry_grad_norms(cell, params, xs, _loss, carry=jnp.zeros((B + 1, H)))
    with pytest.raises(ValueError, match=r"\[T, F\]"):
        diagnostics.jacobian_norms(cell, params, xs)
    with pytest.raises(ValueError, match=r"\[T, F\]"):
        diagnostics.lyapunov_exponents(cell, params, xs, 1)
    for k in (0, H + 1):
        with pytest.raises(ValueError, match="k must lie"):
            diagnostics.lyapunov_exponents(cell, params, xs[:, 0], k)
    with pytest.raises(TypeError, match="k must be an int"):
        diagnostics.lyapunov_exponents(cell, params, xs[:, 0], 1.0)
    with pytest.raises(ValueError, match="transient"):
        diagnostics.lyapunov_exponents(cell, params, xs[:, 0], 1, transient=T)
    with pytest.raises(ValueError, match="distances"):
        diagnostics.fit_decay_rate(jnp.ones((T, B)), jnp.ones((B,)))
    with pytest.raises(TypeError, match="protocol"):
        diagnostics.jacobian_norms(object(), params, xs[:, 0])
    # lengths' values are checked before the diagnostic compiles itself, as scan checks them.
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T\]"):
        diagnostics.carry_grad_norms(cell, params, xs, _loss, lengths=jnp.full((B,), T + 1))


def test_called_outside_a_jit_a_diagnostic_compiles_once():
    """Called eagerly, a diagnostic is one compiled program per cell and loss: a second call
    with new values does not trace the step again; an unhashable cell runs uncompiled."""
    cell = rnnlab.registry.get("lstm", H)
    params = cell.init(jax.random.key(0), F)
    xs = jax.random.normal(jax.random.key(1), (T, B, F))
    traced = []

    def counting(p, c, x):
        traced.append(1)
        return cell.step(p, c, x)

    counted = cell._replace(step=counting)
    for call in (lambda p: diagnostics.carry_grad_norms(counted, p, xs, _loss),
                 lambda p: diagnostics.lyapunov_exponents(counted, p, xs[:, 0], 2)):
        first = call(params)
        before = len(traced)
        second = call(jax.tree.map(lambda a: a * 1.01, params))  # new values, same shapes
        assert len(traced) == before  # the compiled program ran; nothing was traced
        assert not np.allclose(np.asarray(first), np.asarray(second))

    class Unhashable:  # defines __eq__ and no __hash__, as a non-frozen dataclass does
        __hash__ = None

    runs = []
    double = diagnostics._compiled(lambda cell, x: runs.append(cell) or 2 * x, "cell")
    np.testing.assert_array_equal(double(Unhashable(), jnp.arange(3.0)), [0.0, 2.0, 4.0])
    assert isinstance(runs[-1], Unhashable)  # ran as it is, not under a jit
