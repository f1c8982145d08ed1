"""rnnlab.scan's fused derivative and checkpointed BPTT (remat) against the reference.

Oracles: the same cell differentiated by plain autodiff (``derivative="autodiff"``),
and the scan without remat. Values and gradients, float32 and float64, with every
option of rnnlab.scan that changes the loop.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import rnnlab
from rnnlab.modes import fused

T, B, F, H = 7, 3, 2, 5
LENGTHS = np.array([7, 3, 0])
AFFINE = {  # every registry cell with an AffineForm
    "lstm": lambda: rnnlab.lstm(H),
    "gru": lambda: rnnlab.gru(H),
    "elman": lambda: rnnlab.elman(H),
    "irnn": lambda: rnnlab.irnn(H),
}
OPTIONS = {
    "plain": {},
    "reverse": {"reverse": True},
    "lengths": {"lengths": LENGTHS},
    "lengths-reverse": {"lengths": LENGTHS, "reverse": True},
    "time_axis": {"time_axis": 1},
    "carry": {"carry": "random"},
}
FUSED = {"derivative": "fused"}
AUTODIFF = {"derivative": "autodiff"}


def close(a, b, tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=tol, atol=tol), a, b)


def _case(name, dtype, option):
    cell = AFFINE[name]()
    k_p, k_x, k_c = jax.random.split(jax.random.key(0), 3)
    params = jax.tree.map(lambda a: a.astype(dtype), cell.init(k_p, F))
    kwargs = dict(OPTIONS[option])
    shape = (B, T, F) if kwargs.get("time_axis") == 1 else (T, B, F)
    xs = jax.random.normal(k_x, shape, dtype)
    if kwargs.get("carry") == "random":
        zeros = cell.initial_carry(params, (B,))
        keys = jax.random.split(k_c, len(jax.tree.leaves(zeros)))
        kwargs["carry"] = jax.tree.unflatten(
            jax.tree.structure(zeros),
            [jax.random.normal(k, z.shape, dtype)
             for k, z in zip(keys, jax.tree.leaves(zeros), strict=True)],
        )
    if "lengths" in kwargs:
        kwargs["lengths"] = jnp.asarray(kwargs["lengths"])
    return cell, params, xs, kwargs


def _loss(cell, kwargs, params, xs):
    carry, ys = rnnlab.scan(cell, params, xs, **kwargs)
    weights = jnp.sin(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
    return jnp.sum(weights * ys) + sum(jnp.sum(jnp.cos(c)) for c in jax.tree.leaves(carry))


@pytest.mark.parametrize("derivative, backend, remat, expected", [
    ("auto", "cpu", False, False), ("auto", "gpu", False, True), ("auto", "tpu", False, False),
    ("auto", "gpu", True, False), ("fused", "cpu", False, True), ("autodiff", "gpu", False, False),
])
def test_the_fused_derivative_is_chosen_per_call(monkeypatch, derivative, backend, remat,
                                                  expected):
    """derivative="auto" resolves by JAX's default backend (fused on GPUs, without remat);
    an explicit choice overrides it. Counted by wrapping the fused path."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    calls = []
    original = fused.run
    monkeypatch.setattr(fused, "run", lambda *a, **k: calls.append(1) or original(*a, **k))
    cell = rnnlab.lstm(H)
    params = cell.init(jax.random.key(0), F)
    rnnlab.scan(cell, params, jnp.ones((T, B, F)), derivative=derivative, remat=remat)
    assert len(calls) == int(expected)


def test_the_affine_cells_have_the_form_and_others_do_not():
    for make in AFFINE.values():
        assert rnnlab.cell.affine_form(make()) is not None
    for cell in (rnnlab.gru(H, reset_after=False), rnnlab.lru(H), rnnlab.orthogonal(H),
                 rnnlab.stack([rnnlab.lstm(H)])):
        assert rnnlab.cell.affine_form(cell) is None
        with pytest.raises(ValueError, match="derivative='fused' needs a cell with an AffineForm"):
            rnnlab.scan(cell, cell.init(jax.random.key(0), F), jnp.ones((T, B, F)), **FUSED)


def test_the_fused_derivative_rejects_remat_and_the_parallel_mode():
    cell = rnnlab.lstm(H)
    params = cell.init(jax.random.key(0), F)
    with pytest.raises(ValueError, match="cannot be combined with remat"):
        rnnlab.scan(cell, params, jnp.ones((T, B, F)), remat=True, **FUSED)
    lru = rnnlab.lru(H)
    with pytest.raises(ValueError, match="applies to the sequential path"):
        rnnlab.scan(lru, lru.init(jax.random.key(0), F), jnp.ones((T, B, F)), mode="auto",
                    **FUSED)
    with pytest.raises(ValueError, match="derivative must be one of"):
        rnnlab.scan(cell, params, jnp.ones((T, B, F)), derivative="hand")


def _cases():
    # derivative="auto" is autodiff on CPU, where CI runs, so the default run keeps
    # float32 LSTM and GRU with every option; the rest run with -m slow.
    for dtype in ("float32", "float64"):
        for name in AFFINE:
            for option in OPTIONS:
                fast = dtype == "float32" and name in ("lstm", "gru")
                marks = () if fast else (pytest.mark.slow,)
                yield pytest.param(name, option, dtype, marks=marks, id=f"{dtype}-{name}-{option}")


@pytest.mark.parametrize("name, option, dtype", list(_cases()))
def test_fused_equals_autodiff(name, option, dtype):
    with jax.enable_x64(dtype == "float64"):
        dt = jnp.dtype(dtype)
        tol = 1e-5 if dt == jnp.float32 else 1e-12
        cell, params, xs, kwargs = _case(name, dt, option)
        fast, slow = {**kwargs, **FUSED}, {**kwargs, **AUTODIFF}
        close(rnnlab.scan(cell, params, xs, **fast), rnnlab.scan(cell, params, xs, **slow), tol)
        grad = jax.grad(_loss, argnums=(2, 3))
        close(grad(cell, fast, params, xs), grad(cell, slow, params, xs), tol)
        if "carry" in kwargs:  # gradient w.r.t. the initial carry too
            def by_carry(c, k):
                return _loss(cell, {**k, "carry": c}, params, xs)

            close(jax.grad(by_carry)(kwargs["carry"], fast),
                  jax.grad(by_carry)(kwargs["carry"], slow), tol)
        # Forward mode (the fused path is a custom_jvp).
        tangents = (jax.tree.map(jnp.ones_like, params), jnp.ones_like(xs))
        close(jax.jvp(lambda p, x: rnnlab.scan(cell, p, x, **fast), (params, xs), tangents),
              jax.jvp(lambda p, x: rnnlab.scan(cell, p, x, **slow), (params, xs), tangents), tol)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_fused_under_jit_and_vmap_over_params(name):
    cell, _, xs, _ = _case(name, jnp.float32, "plain")
    many = jax.vmap(cell.init, in_axes=(0, None))(jax.random.split(jax.random.key(3), 4), F)
    lengths = jnp.asarray(LENGTHS)

    def grads(derivative):
        loss = functools.partial(_loss, cell, {"lengths": lengths, "reverse": True, **derivative})
        return jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1)), in_axes=(0, None)))(
            many, xs)

    close(grads(FUSED), grads(AUTODIFF), 1e-5)


def test_fused_second_derivatives(x64):
    cell, params, xs, _ = _case("lstm", jnp.float64, "plain")

    def hvp(derivative):
        g = jax.grad(lambda p: _loss(cell, derivative, p, xs))
        return jax.jvp(g, (params,), (jax.tree.map(jnp.ones_like, params),))[1]

    close(hvp(FUSED), hvp(AUTODIFF), 1e-10)


def test_fused_check_grads(x64):
    cell, params, xs, kwargs = _case("gru", jnp.float64, "lengths")
    check_grads(
        lambda p, x: _loss(cell, {**kwargs, **FUSED}, p, x), (params, xs), order=1,
        modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


def test_fused_reads_the_form_not_the_step():
    """A user's cell built with rnnlab.affine_cell gets the fused derivative, and its
    backward pass multiplies by R and A alone: no matmul produces a [rows, F + H] gradient
    of the concatenated [x, h] that the step's one matmul reads."""
    elman = rnnlab.elman(H)
    form = rnnlab.cell.affine_form(elman)
    cell = rnnlab.affine_cell(elman.init, elman.initial_carry, *form)
    params = cell.init(jax.random.key(0), 4)
    xs = jax.random.normal(jax.random.key(1), (T, B, 4))
    close(rnnlab.scan(cell, params, xs, **FUSED), rnnlab.scan(elman, params, xs), 1e-5)
    grad = jax.jit(jax.grad(lambda p: _loss(cell, FUSED, p, xs)))
    hlo = grad.lower(params).compile().as_text()
    wasteful = [line for line in hlo.splitlines()
                if re.search(r"= f32\[(3|21),9\]\{[0-9,]*\} dot\(", line)]  # B or T*B rows
    assert not wasteful, wasteful
    assert re.search(r"= f32\[3,5\]\{[0-9,]*\} dot\(", hlo)  # the loop's dg @ R^T


# ----------------------------------------------------------------------------- remat


REMAT_CELLS = {
    "lstm": lambda: rnnlab.lstm(H),
    "gru-paper": lambda: rnnlab.gru(H, reset_after=False),
    "lru": lambda: rnnlab.lru(H),
}


@pytest.mark.parametrize(
    "option", ["lengths-reverse", pytest.param("plain", marks=pytest.mark.slow),
               pytest.param("time_axis", marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("name", REMAT_CELLS)
def test_remat_equals_no_remat(name, option):
    cell = REMAT_CELLS[name]()
    k_p, k_x = jax.random.split(jax.random.key(1))
    params = cell.init(k_p, F)
    kwargs = dict(OPTIONS[option])
    if "lengths" in kwargs:
        kwargs["lengths"] = jnp.asarray(kwargs["lengths"])
    xs = jax.random.normal(k_x, (B, T, F) if option == "time_axis" else (T, B, F))

    def loss(p, x, remat):
        carry, ys = rnnlab.scan(cell, p, x, remat=remat, **kwargs)
        return jnp.sum(jnp.abs(ys) ** 2) + sum(jnp.sum(jnp.abs(c)) for c in jax.tree.leaves(carry))

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
    reference_ = value_and_grad(params, xs, False)
    for remat in (True, 2, 100):  # ceil(sqrt 7) = 3 leaves a remainder; 2 too; 100 > T
        close(value_and_grad(params, xs, remat), reference_, 1e-5)


def test_remat_bounds_memory():
    """XLA's buffer plan for BPTT shrinks with remat (the point of it)."""
    cell = rnnlab.lstm(32)
    params = cell.init(jax.random.key(0), 1)
    xs = jnp.zeros((1024, 4, 1))

    def planned_bytes(remat):
        def loss(p, x):
            return jnp.sum(rnnlab.scan(cell, p, x, remat=remat)[0].h)

        mem = jax.jit(jax.grad(loss)).lower(params, xs).compile().memory_analysis()
        return mem.temp_size_in_bytes

    assert planned_bytes(True) < planned_bytes(False) / 4


def test_remat_rejects_bad_values():
    cell = rnnlab.lstm(H)
    params = cell.init(jax.random.key(0), F)
    with pytest.raises(ValueError, match="remat"):
        rnnlab.scan(cell, params, jnp.zeros((T, B, F)), remat=0)
