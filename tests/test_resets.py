"""rnnlab.scan(..., resets=) against per-segment scans, for every mode.

Oracle: each sequence cut at its reset points by hand, each segment run by a
Python loop over ``cell.step`` from the initial carry (backwards for
``reverse``), the outputs put back in place (zeros at padding) and the final
carry taken from the segment read last. Written in jnp, so that its gradients
(through which nothing can cross a reset) are the reference gradients too.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELLS, LENGTHS, B, F, H, T, close, random_carry

import rnnlab

LENGTHS = np.asarray(LENGTHS)  # (5, 2, 0)
# [T, B]: sequence 0 restarts at 2 and again at 3 (a one-step segment) and at 0 (a
# no-op); sequence 1 at 1 and at 3 (padding: ignored); sequence 2 only in padding.
RESETS = np.zeros((T, B), bool)
RESETS[[0, 2, 3], 0] = True
RESETS[[1, 3], 1] = True
RESETS[4, 2] = True

CONFIGS = {
    "plain": {},
    "lengths": {"lengths": LENGTHS},
    "reverse-lengths-carry": {"reverse": True, "lengths": LENGTHS, "carry": True},
    "batch-major-carry": {"time_axis": 1, "carry": True},
}
GRADIENT_CONFIG = "reverse-lengths-carry"


def segment_reference(cell, params, xs, carry, resets, lengths=None, reverse=False):
    """``(final_carry, ys)`` of per-segment loops (``xs [T, B, F]``, ``carry`` batched)."""
    num_steps, batch = xs.shape[0], xs.shape[1]
    one = jax.tree.map(lambda c: c[0], carry)
    y_struct = jax.eval_shape(lambda c, x: cell.step(params, c, x)[1], one, xs[0, 0])
    finals, columns = [], []
    for b in range(batch):
        n = num_steps if lengths is None else int(lengths[b])
        c0 = jax.tree.map(lambda c, b=b: c[b], carry)
        starts = [0] + [t for t in range(1, n) if resets[t, b]]
        ys = [jnp.zeros(y_struct.shape, y_struct.dtype)] * num_steps
        final = c0
        for s, e in zip(starts, starts[1:] + [n], strict=True):
            c = c0
            for t in (range(e - 1, s - 1, -1) if reverse else range(s, e)):
                c, ys[t] = cell.step(params, c, xs[t, b])
            if (s == 0) if reverse else (e == n):
                final = c  # the segment read last
        finals.append(final)
        columns.append(jnp.stack(ys))
    return jax.tree.map(lambda *c: jnp.stack(c), *finals), jnp.stack(columns, axis=1)


def _modes(cell):
    modes = {"sequential": {}, "newton": {"mode": "newton"},
             "quasi-newton": {"mode": "quasi-newton"}}
    if rnnlab.has_parallel_form(cell):
        modes["parallel"] = {"mode": "parallel"}
    if getattr(cell, "affine", None) is not None:
        modes["fused"] = {"derivative": "fused"}
    return modes


def _call(cell, params, xs, carry, config, mode_kw, resets=RESETS):
    kw = dict(CONFIGS[config], **mode_kw)
    kw["carry"] = carry if kw.get("carry") else None
    if kw.get("time_axis") == 1:
        xs, resets = jnp.swapaxes(xs, 0, 1), resets.T
    c, ys = rnnlab.scan(cell, params, xs, resets=resets, **kw)
    return c, (jnp.swapaxes(ys, 0, 1) if kw.get("time_axis") == 1 else ys)


def _case(name):
    if name == "stack":
        cell = rnnlab.stack([rnnlab.elman(H), rnnlab.lstm(H)])
    else:
        cell = rnnlab.registry.get(name, H)
    k_params, k_xs, k_carry, k_w = jax.random.split(jax.random.key(0), 4)
    params = cell.init(k_params, F)
    xs = jax.random.normal(k_xs, (T, B, F))
    return cell, params, xs, random_carry(cell, params, (B,), k_carry)


def _loss(w, c, ys):
    return jnp.sum(w * ys) + sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in jax.tree.leaves(c))


@functools.cache
def _results(name, only=None):
    """Every mode (or those in ``only``) and config of one cell, and the gradients, from
    one compiled function."""
    cell, params, xs, carry = _case(name)
    modes = {m: kw for m, kw in _modes(cell).items() if only is None or m in only}
    w = jax.random.normal(jax.random.key(1), jax.eval_shape(
        lambda: rnnlab.scan(cell, params, xs)[1]).shape)

    def loss(params, xs, carry, mode_kw):
        c, ys = _call(cell, params, xs, carry, GRADIENT_CONFIG, mode_kw)
        return _loss(w, c, ys)

    @jax.jit
    def run(params, xs, carry):
        out = {(config, mode): _call(cell, params, xs, carry, config, kw)
               for mode, kw in modes.items() for config in CONFIGS}
        for mode, kw in modes.items():
            out[("grad", mode)] = jax.grad(loss, argnums=(0, 1, 2))(params, xs, carry, kw)
        out[("remat", "sequential")] = _call(cell, params, xs, carry, "lengths", {"remat": 2})
        return out

    out = run(params, xs, carry)
    refs = {}
    for config, kw in CONFIGS.items():
        c = carry if kw.get("carry") else cell.initial_carry(params, (B,))
        refs[config] = segment_reference(cell, params, xs, c, RESETS, kw.get("lengths"),
                                         kw.get("reverse", False))
    cfg = CONFIGS[GRADIENT_CONFIG]
    refs["grad"] = jax.jit(jax.grad(lambda p, x, c: _loss(w, *segment_reference(
        cell, p, x, c, RESETS, cfg["lengths"], cfg["reverse"])), argnums=(0, 1, 2)))(
        params, xs, carry)
    return modes, out, refs


# The default run: each path once (Elman: sequential, fused; minGRU: parallel; a stack
# of an Elman and an LSTM: a tuple carry; tests/test_newton.py runs Newton with resets);
# with -m slow, every registered cell and the stack in every mode that applies.
DEFAULT = {"elman-tanh": ("sequential", "fused"), "mingru": ("sequential", "parallel"),
           "stack": ("sequential",)}
NAMES = [pytest.param(n, DEFAULT[n], id=n) for n in DEFAULT] + [
    pytest.param(n, None, id=f"{n}-all-modes", marks=pytest.mark.slow)
    for n in ("stack",) + CELLS]


@pytest.mark.parametrize("name, only", NAMES)
def test_resets_match_per_segment_scans(name, only):
    modes, out, refs = _results(name, only)
    for mode in modes:
        for config in CONFIGS:
            close(out[config, mode], refs[config], tol=2e-5)
    close(out["remat", "sequential"], refs["lengths"], tol=2e-5)


@pytest.mark.parametrize("name, only", NAMES)
def test_gradients_match_per_segment_scans(name, only):
    modes, out, refs = _results(name, only)
    for mode in modes:
        close(out["grad", mode], refs["grad"], tol=1e-4)
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(refs["grad"]))


def test_no_gradient_crosses_a_reset():
    """d ys[t] / d xs[s] is exactly zero for s < reset <= t (sequential and Newton)."""
    cell, params, xs, _ = _case("elman-tanh")
    resets = np.zeros((T, B), bool)
    resets[2] = True

    @jax.jit
    def jacobians(xs):
        return [jax.jacrev(lambda x, m=m: rnnlab.scan(cell, params, x, resets=resets, mode=m)[1])(
            xs) for m in ("sequential", "newton")]

    for jac in jacobians(xs):
        # jac [T, B, H, T, B, F]: outputs from step 2 on, inputs before step 2.
        assert np.all(np.asarray(jac)[2:, :, :, :2] == 0)
        assert np.any(np.asarray(jac)[:2, :, :, :2] != 0)


def test_bidirectional_reads_the_same_segments_both_ways():
    cell, params, xs, _ = _case("elman-tanh")
    c0 = cell.initial_carry(params, (B,))
    (c_fw, c_bw), ys = rnnlab.bidirectional(cell, cell, (params, params), xs, lengths=LENGTHS,
                                            resets=RESETS, merge=None)
    ref_fw = segment_reference(cell, params, xs, c0, RESETS, LENGTHS)
    ref_bw = segment_reference(cell, params, xs, c0, RESETS, LENGTHS, reverse=True)
    close((c_fw, ys[0]), ref_fw)
    close((c_bw, ys[1]), ref_bw)


def test_wrappers_pass_resets_through():
    pytest.importorskip("flax")
    from flax import nnx

    cell, params, xs, _ = _case("elman-tanh")
    expected = rnnlab.scan(cell, params, xs, resets=RESETS)[1]
    linen = rnnlab.wrappers.LinenRNN(cell)
    variables = {"params": {"cell": params}}
    close(linen.apply(variables, xs, resets=RESETS), expected)
    nnx_rnn = rnnlab.wrappers.NNXRNN(cell, F, rngs=None, params=params)
    close(nnx_rnn(xs, resets=RESETS), expected)
    del nnx


def test_no_resets_is_all_false():
    cell, params, xs, _ = _case("elman-tanh")
    close(rnnlab.scan(cell, params, xs, resets=np.zeros((T, B), bool)),
          rnnlab.scan(cell, params, xs))


def test_bad_resets_are_clear_errors():
    cell, params, xs, _ = _case("elman-tanh")
    with pytest.raises(TypeError, match="resets must be a boolean array.*int"):
        rnnlab.scan(cell, params, xs, resets=RESETS.astype(int))
    with pytest.raises(ValueError, match=r"resets must have the shape .*\(5, 3\).*\(3, 5\)"):
        rnnlab.scan(cell, params, xs, resets=RESETS.T)
    with pytest.raises(ValueError, match=r"time_axis=1"):  # batch-major xs, time-major resets
        rnnlab.scan(cell, params, jnp.swapaxes(xs, 0, 1), resets=RESETS, time_axis=1)


@pytest.mark.parametrize("name", ["lstm", pytest.param("elman-tanh", marks=pytest.mark.slow)])
def test_carry_grad_norms_with_resets_equal_a_python_loop(name):
    # Oracle: perturb the carry after every step in a Python loop that restarts at each
    # reset, and differentiate; no gradient may cross a reset, log=True included.
    cell = rnnlab.registry.get(name, 3)
    params = cell.init(jax.random.key(0), 2)
    xs = jax.random.normal(jax.random.key(1), (9, 2, 2))
    resets = jnp.zeros((9, 2), bool).at[4, 0].set(True).at[6, 1].set(True)
    def loss(ys, final):
        return jnp.sum(ys ** 2) + jnp.sum(jax.tree.leaves(final)[0])

    c0 = cell.initial_carry(params, (2,))

    def loop_loss(eps):
        c, ys = c0, []
        for t in range(9):
            c = jax.tree.map(lambda i, a, r=resets[t][:, None]: jnp.where(r, i, a), c0, c)
            c, y = cell.step(params, c, xs[t])
            c = jax.tree.map(lambda a, e: a + e, c, eps[t])
            ys.append(y)
        return loss(jnp.stack(ys), c)

    eps = [jax.tree.map(jnp.zeros_like, c0) for _ in range(9)]
    grads = jax.grad(loop_loss)(eps)
    want = np.stack([np.sqrt(sum(np.sum(np.asarray(g) ** 2, axis=-1)
                                 for g in jax.tree.leaves(gt))) for gt in grads])
    got = rnnlab.diagnostics.carry_grad_norms(cell, params, xs, loss, resets=resets)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=0)
    assert got[3, 0] == 0 and got[5, 1] == 0  # the carry a reset discards
    logs = rnnlab.diagnostics.carry_grad_norms(cell, params, xs, loss, resets=resets, log=True)
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(logs, np.log(want), rtol=1e-4)
