"""rnnlab.scan(mode="newton" | "quasi-newton") against the sequential scan.

Oracles: ``mode="sequential"`` (a ``jax.lax.scan`` over ``cell.step``) for values and
gradients (by autodiff through that scan), for the classic cells, a stack and a
user's own cell; the exactness argument (after k iterations the first k steps are
exact, so the default cap of T iterations always converges) checked by counting; a
chaotic tanh RNN in float64 against its sequential trajectory.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import LENGTHS, B, F, H, T, close, random_carry

import rnnlab
from rnnlab.modes.newton import NewtonNotConvergedWarning

LENGTHS = np.asarray(LENGTHS)
RESETS = np.zeros((T, B), bool)
RESETS[2, 0] = True
# Every normalisation at once: batch-major data, a reversed read within each length, an
# explicit carry and a reset; and the plain call.
CONFIGS = {
    "plain": {},
    "everything": {"time_axis": 1, "reverse": True, "lengths": LENGTHS, "carry": True,
                   "resets": RESETS.T},
}


class UserCarry(NamedTuple):
    h: jax.Array  # [..., H]
    m: jax.Array  # [..., 2]: a second, differently shaped leaf


def user_cell(hidden_size: int) -> rnnlab.Cell:
    """A cell written by hand, not registered, with a two-leaf carry: the protocol only."""

    def init(key, input_size):
        k1, k2, k3 = jax.random.split(key, 3)
        return {"W": jax.random.normal(k1, (input_size, hidden_size)) / np.sqrt(input_size),
                "U": jax.random.normal(k2, (hidden_size, hidden_size)) / np.sqrt(hidden_size),
                "V": jax.random.normal(k3, (hidden_size, 2)) / np.sqrt(hidden_size)}

    def initial_carry(params, batch_shape=()):
        return UserCarry(jnp.zeros((*batch_shape, hidden_size)), jnp.ones((*batch_shape, 2)))

    def step(params, carry, x):
        h = jnp.tanh(x @ params["W"] + carry.h @ params["U"]) * jax.nn.sigmoid(carry.m[..., :1])
        m = 0.9 * carry.m + 0.1 * jnp.sin(h @ params["V"])
        return UserCarry(h, m), h

    return rnnlab.Cell(init, initial_carry, step)


def _cell(name):
    if name == "stack":
        return rnnlab.stack([rnnlab.gru(H), rnnlab.elman(H)])
    if name == "user":
        return user_cell(H)
    return rnnlab.registry.get(name, H)


def _case(name, dtype=jnp.float32):
    cell = _cell(name)
    k_params, k_xs, k_carry, k_w = jax.random.split(jax.random.key(0), 4)
    params = jax.tree.map(lambda p: p.astype(dtype), cell.init(k_params, F))
    xs = jax.random.normal(k_xs, (T, B, F), dtype)
    return cell, params, xs, random_carry(cell, params, (B,), k_carry)


def _call(cell, params, xs, carry, config, **kw):
    kw = dict(CONFIGS[config], **kw)
    kw["carry"] = carry if kw.get("carry") else None
    if kw.get("time_axis") == 1:
        xs = jnp.swapaxes(xs, 0, 1)
    return rnnlab.scan(cell, params, xs, **kw)


@functools.cache
def _results(name, modes, dtype=jnp.float32, configs=("everything",)):
    """Values (and the NewtonInfo) in ``configs`` and the gradients in the last, for
    sequential and ``modes``, from one compiled function."""
    cell, params, xs, carry = _case(name, dtype)
    w = jax.random.normal(jax.random.key(1), (B, T, H), dtype)

    def loss(params, xs, carry, mode, config):
        kw = {} if mode == "sequential" else {"return_info": True}
        c, ys, *info = _call(cell, params, xs, carry, config, mode=mode, **kw)
        loss = jnp.sum(w * jnp.swapaxes(ys, 0, 1) if config == "plain" else w * ys)
        loss = loss + sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in jax.tree.leaves(c))
        return loss, (c, ys, *info)

    @jax.jit
    def run(params, xs, carry):
        out = {}
        for mode in ("sequential",) + modes:
            for config in configs[:-1]:
                out[config, mode] = _call(cell, params, xs, carry, config, mode=mode)
            grads, (c, ys, *info) = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(
                params, xs, carry, mode, configs[-1])
            out["grad", mode], out[configs[-1], mode] = grads, (c, ys)
            out["info", mode] = info
        return out

    return run(params, xs, carry)


# By default Newton for the Elman RNN, a stack (GRU under Elman) and a user's cell,
# quasi-Newton for the Elman RNN; with -m slow both modes for every cell the
# issue names and every registered cell, and float64 copies.
NAMED = ("elman-tanh", "lstm", "gru", "irnn", "orthogonal", "stack", "user")
DEFAULT = {("elman-tanh", "newton"), ("stack", "newton"), ("user", "newton"),
           ("elman-tanh", "quasi-newton")}
CASES = [
    pytest.param(n, (m,), id=f"{n}-{m}", marks=() if (n, m) in DEFAULT else pytest.mark.slow)
    for m in ("newton", "quasi-newton")
    for n in NAMED + tuple(c for c in rnnlab.registry.names() if c not in NAMED)
]


@pytest.mark.parametrize("name, modes", CASES)
def test_values_and_gradients_equal_sequential(name, modes):
    out = _results(name, modes)
    for mode in modes:
        close(out["everything", mode], out["everything", "sequential"], tol=2e-5)
        close(out["grad", mode], out["grad", "sequential"], tol=1e-4)
        (info,) = out["info", mode]
        assert 0 < int(info.iterations) <= T and bool(info.converged)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMED)
def test_float64_values_and_gradients_equal_sequential(name, x64):
    out = _results(name, ("newton", "quasi-newton"), jnp.float64, tuple(CONFIGS))
    for mode in ("newton", "quasi-newton"):
        for config in CONFIGS:
            close(out[config, mode], out[config, "sequential"], tol=1e-10)
        close(out["grad", mode], out["grad", "sequential"], tol=1e-9)


def _chaotic(dtype, steps):
    """A tanh RNN with an orthogonal W_h scaled to gain 2, weakly driven: lambda_1 > 0."""
    hidden = 8
    cell = rnnlab.elman(hidden, nonlinearity="tanh", recurrent_init="orthogonal")
    params = cell.init(jax.random.key(0), F)
    params = jax.tree.map(lambda p: p.astype(dtype), params._replace(W_h=2.0 * params.W_h))
    xs = 0.1 * jax.random.normal(jax.random.key(1), (steps, F), dtype)
    return cell, params, xs, 0.5 * jnp.ones(hidden, dtype)


@pytest.mark.parametrize("variants", [
    pytest.param((("newton", "newton", 0.0),), id="newton"),
    pytest.param((("quasi", "quasi-newton", 0.0), ("damped", "newton", 0.5)),
                 id="quasi-and-damped", marks=pytest.mark.slow),
])
def test_chaotic_tanh_rnn_gives_the_sequential_answer_or_says_it_did_not(variants, x64):
    cell, params, xs, c0 = _chaotic(jnp.float64, 32)
    lyap = rnnlab.diagnostics.lyapunov_exponents(cell, params, xs, 1, carry=c0, transient=8)
    assert float(lyap[0]) > 0  # the test is about a chaotic system

    @jax.jit
    def run(params, xs):
        seq = rnnlab.scan(cell, params, xs, carry=c0)
        solves = {name: rnnlab.scan(cell, params, xs, carry=c0, mode=mode, return_info=True,
                                    newton=rnnlab.NewtonOptions(damping=damping))
                  for name, mode, damping in variants}
        capped = rnnlab.scan(cell, params, xs, carry=c0, mode="newton", return_info=True,
                             newton=rnnlab.NewtonOptions(max_iterations=3, on_failure="ignore"))
        return seq, solves, capped

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default cap converges: no warning
        seq, solves, capped = jax.block_until_ready(run(params, xs))
    for c, ys, info in solves.values():
        assert bool(info.converged) and int(info.iterations) <= xs.shape[0]
        close((c, ys), seq, tol=1e-9)
    # A cap below what the solve needs: reported, never passed off as the answer.
    c, ys, info = capped
    assert not bool(info.converged) and int(info.iterations) == 3
    assert float(info.residual) > 8 * np.finfo(np.float64).eps  # the default tolerance
    assert np.all(np.isfinite(ys)) and float(jnp.max(jnp.abs(ys - seq[1]))) > 1e-3


def test_non_convergence_warns_or_is_nan_on_request():
    cell, params, xs, c0 = _chaotic(jnp.float32, 16)
    with pytest.warns(NewtonNotConvergedWarning, match="iteration cap .*3 iterations"):
        _, ys = rnnlab.scan(cell, params, xs, carry=c0, mode="newton",
                            newton={"max_iterations": 3})
        jax.block_until_ready(ys)
    _, ys = rnnlab.scan(cell, params, xs, carry=c0, mode="newton",
                        newton={"max_iterations": 3, "on_failure": "nan"})
    assert np.all(np.isnan(ys))


def test_every_iteration_makes_one_more_step_exact():
    """Picard iteration (damping=1) fixes exactly one more step per iteration on a
    non-contracting system, so it needs T iterations; Newton fewer; both exact."""
    cell, params, xs, c0 = _chaotic(jnp.float32, 12)
    seq = rnnlab.scan(cell, params, xs, carry=c0)
    runs = {d: rnnlab.scan(cell, params, xs, carry=c0, mode="newton", return_info=True,
                           newton={"damping": d}) for d in (0.0, 1.0)}
    for c, ys, _ in runs.values():
        close((c, ys), seq, tol=1e-5)
    assert int(runs[0.0][2].iterations) < int(runs[1.0][2].iterations) <= 12


def test_vmap_over_params_and_jit():
    cell, params, xs, _ = _case("elman-tanh")
    seeds = jax.vmap(cell.init, in_axes=(0, None))(jax.random.split(jax.random.key(3), 2), F)
    solve = jax.jit(jax.vmap(lambda p: rnnlab.scan(cell, p, xs, mode="newton")))
    expected = jax.vmap(lambda p: rnnlab.scan(cell, p, xs))(seeds)
    close(solve(seeds), expected)


def test_empty_sequence_and_other_batch_shapes():
    cell, params, xs, _ = _case("lstm")
    c, ys, info = rnnlab.scan(cell, params, xs[:0], mode="newton", return_info=True)
    assert ys.shape == (0, B, H) and int(info.iterations) == 0
    close(c, cell.initial_carry(params, (B,)))
    close(rnnlab.scan(cell, params, xs[:, 0], mode="quasi-newton"),  # no batch axis
          rnnlab.scan(cell, params, xs[:, 0]))
    xs_2d = jnp.stack([xs, 2 * xs], axis=2)  # [T, B, 2, F]: two batch axes
    close(rnnlab.scan(cell, params, xs_2d, mode="newton"), rnnlab.scan(cell, params, xs_2d))


def test_bad_options_are_clear_errors():
    cell, params, xs, _ = _case("elman-tanh")
    with pytest.raises(ValueError, match="derivative='fused' applies to the sequential path"):
        rnnlab.scan(cell, params, xs, mode="newton", derivative="fused")
    with pytest.raises(ValueError, match="remat applies to the sequential path"):
        rnnlab.scan(cell, params, xs, mode="newton", remat=2)
    with pytest.raises(ValueError, match="newton= and return_info= apply to mode='newton'"):
        rnnlab.scan(cell, params, xs, return_info=True)
    with pytest.raises(ValueError, match=r"newton.damping must lie in \[0, 1\]; received 2"):
        rnnlab.scan(cell, params, xs, mode="newton", newton={"damping": 2})
    with pytest.raises(ValueError, match="newton must have keys among"):
        rnnlab.scan(cell, params, xs, mode="newton", newton={"tolerance": 1e-3})
    with pytest.raises(ValueError, match="newton.on_failure must be one of"):
        rnnlab.scan(cell, params, xs, mode="newton", newton={"on_failure": "raise"})
    with pytest.raises(ValueError, match="newton.max_iterations must be a non-negative int"):
        rnnlab.scan(cell, params, xs, mode="newton", newton={"max_iterations": 1.5})

    counter = rnnlab.Cell(
        cell.init, lambda p, batch_shape=(): (cell.initial_carry(p, batch_shape),
                                              jnp.zeros(batch_shape, jnp.int32)),
        lambda p, c, x: ((cell.step(p, c[0], x)[0], c[1] + 1), cell.step(p, c[0], x)[1]))
    with pytest.raises(ValueError, match=r"each must be floating or complex.*int32"):
        rnnlab.scan(counter, params, xs, mode="newton")
