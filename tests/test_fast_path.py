"""rnnlab.scan's fused derivative and checkpointed BPTT (remat) against the reference.

Oracles: the same cell differentiated by plain autodiff (``derivative="autodiff"``),
the scan without remat, and finite differences. Values and gradients, float32 and
float64, with every option of rnnlab.scan that changes the loop. Each comparison is
one compiled program per cell (compiling, not running, is the cost here).
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELLS, LENGTHS, B, F, H, T, cast, close, random_carry
from jax.test_util import check_grads

import rnnlab
from rnnlab import registry
from rnnlab.modes import fused

#: The registered cells with an AffineForm, so a new such cell gets every test below.
AFFINE = tuple(n for n in CELLS if rnnlab.cell.affine_form(registry.get(n, H)) is not None)
OPTIONS = {
    "plain": {},
    "reverse": {"reverse": True},
    "lengths": {"lengths": LENGTHS},
    "lengths-reverse": {"lengths": LENGTHS, "reverse": True},
    "time_axis": {"time_axis": 1},
    "carry": {"carry": "random"},
    # All of them at once: the default run's one case beside "plain".
    "all": {"lengths": LENGTHS, "reverse": True, "time_axis": 1, "carry": "random"},
}
FUSED = {"derivative": "fused"}
AUTODIFF = {"derivative": "autodiff"}


def _case(name, dtype="float32", seed=0):
    """A cell (registry name, or "gru-reset-before"), its params cast to ``dtype``,
    inputs [T, B, F] and a random carry."""
    cell = rnnlab.gru(H, reset_after=False) if name == "gru-reset-before" else (
        registry.get(name, H))
    k_p, k_x, k_c = jax.random.split(jax.random.key(seed), 3)
    params = cast(cell.init(k_p, F), dtype)
    xs = jax.random.normal(k_x, (T, B, F), dtype)
    return cell, params, xs, random_carry(cell, params, (B,), k_c)


def _kwargs(option, xs, carry):
    """rnnlab.scan's keyword arguments for ``option``, and xs laid out for them."""
    kwargs = dict(OPTIONS[option])
    if kwargs.get("time_axis") == 1:
        xs = jnp.swapaxes(xs, 0, 1)
    if kwargs.get("carry") == "random":
        kwargs["carry"] = carry
    if "lengths" in kwargs:
        kwargs["lengths"] = jnp.asarray(kwargs["lengths"])
    return xs, kwargs


def _loss(cell, kwargs, params, xs):
    carry, ys = rnnlab.scan(cell, params, xs, **kwargs)
    weights = jnp.sin(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
    return jnp.sum(weights * ys) + sum(jnp.sum(jnp.cos(c)) for c in jax.tree.leaves(carry))


# ----------------------------------------------------------------------------- choosing


@pytest.mark.parametrize("derivative, backend, remat, expected", [
    ("auto", "cpu", False, False), ("auto", "gpu", False, True), ("auto", "tpu", False, False),
    ("auto", "gpu", True, False), ("fused", "cpu", False, True), ("autodiff", "gpu", False, False),
])
def test_the_fused_derivative_is_chosen_per_call(monkeypatch, derivative, backend, remat,
                                                  expected):
    """derivative="auto" resolves by JAX's default backend (fused on GPUs, without remat);
    an explicit choice overrides it. Counted by wrapping the fused path (traced, not run)."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    calls = []
    original = fused.run
    monkeypatch.setattr(fused, "run", lambda *a, **k: calls.append(1) or original(*a, **k))
    cell, params, xs, _ = _case("lstm")
    jax.eval_shape(functools.partial(rnnlab.scan, cell, derivative=derivative, remat=remat),
                   params, xs)
    assert len(calls) == int(expected)


@pytest.mark.parametrize("name", CELLS)
def test_fused_runs_exactly_the_cells_with_an_affine_form(name):
    cell = registry.get(name, H)
    params = cell.init(jax.random.key(0), F)
    if name in AFFINE:  # traced: the fused path builds and keeps the carry's structure
        carry, ys = jax.eval_shape(functools.partial(rnnlab.scan, cell, **FUSED), params,
                                   jnp.ones((T, B, F)))
        assert jax.tree.structure(carry) == jax.tree.structure(cell.initial_carry(params, (B,)))
        assert ys.shape[:2] == (T, B)
    else:
        with pytest.raises(ValueError, match="derivative='fused' needs a cell with an AffineForm"):
            rnnlab.scan(cell, params, jnp.ones((T, B, F)), **FUSED)


def test_the_classic_cells_have_the_affine_form_and_others_do_not():
    assert set(AFFINE) >= {"elman-tanh", "elman-relu", "irnn", "lstm", "lstm-fb0", "gru"}
    for cell in (rnnlab.gru(H, reset_after=False), rnnlab.lru(H), rnnlab.orthogonal(H),
                 rnnlab.stack([rnnlab.lstm(H)])):
        assert rnnlab.cell.affine_form(cell) is None
        with pytest.raises(ValueError, match="derivative='fused' needs a cell with an AffineForm"):
            rnnlab.scan(cell, cell.init(jax.random.key(0), F), jnp.ones((T, B, F)), **FUSED)


def test_the_fused_derivative_rejects_remat_and_the_parallel_mode():
    cell, params, xs, _ = _case("lstm")
    with pytest.raises(ValueError, match="cannot be combined with remat"):
        rnnlab.scan(cell, params, xs, remat=True, **FUSED)
    lru = rnnlab.lru(H)
    with pytest.raises(ValueError, match="applies to the sequential path"):
        rnnlab.scan(lru, lru.init(jax.random.key(0), F), xs, mode="auto", **FUSED)
    with pytest.raises(ValueError, match="derivative must be one of"):
        rnnlab.scan(cell, params, xs, derivative="hand")


# ----------------------------------------------------------------------------- fused == autodiff


@functools.cache
def _fused_and_autodiff(name, dtype, options):
    """For each option and each derivative: the scan's values, the loss's gradients
    w.r.t. params and inputs (and the initial carry where given) and a forward-mode
    derivative, all in one compiled program. Call under x64 for float64."""
    cell, params, xs, carry = _case(name, dtype)

    @jax.jit
    def run(params, xs, carry):
        out = {}
        for option in options:
            x, kwargs = _kwargs(option, xs, carry)
            tangents = (jax.tree.map(jnp.ones_like, params), jnp.ones_like(x))
            for derivative in (FUSED, AUTODIFF):
                kw = {**kwargs, **derivative}
                res = {
                    "values": rnnlab.scan(cell, params, x, **kw),
                    "grad": jax.grad(functools.partial(_loss, cell, kw), argnums=(0, 1))(
                        params, x),
                    "jvp": jax.jvp(lambda p, x, kw=kw: rnnlab.scan(cell, p, x, **kw),
                                   (params, x), tangents),
                }
                if "carry" in kw:
                    res["grad_carry"] = jax.grad(
                        lambda c, kw=kw, x=x: _loss(cell, {**kw, "carry": c}, params, x))(
                        kw["carry"])
                out[option, derivative["derivative"]] = res
        return out

    return run(params, xs, carry)


def _fused_cases():
    # derivative="auto" is autodiff on CPU, where CI runs: the default run keeps float32
    # LSTM and GRU with no option and with all at once; the rest run with -m slow.
    for dtype in ("float32", "float64"):
        for name in AFFINE:
            for option in OPTIONS:
                fast = dtype == "float32" and name in ("lstm", "gru") and option in ("plain",
                                                                                    "all")
                marks = () if fast else (pytest.mark.slow,)
                yield pytest.param(name, option, dtype, marks=marks, id=f"{dtype}-{name}-{option}")


@pytest.mark.parametrize("name, option, dtype", list(_fused_cases()))
def test_fused_equals_autodiff(name, option, dtype):
    fast = dtype == "float32" and option in ("plain", "all")
    options = ("plain", "all") if fast else tuple(OPTIONS)
    tol = 1e-5 if dtype == "float32" else 1e-12
    with jax.enable_x64(dtype == "float64"):
        out = _fused_and_autodiff(name, dtype, options)
        got, want = out[option, "fused"], out[option, "autodiff"]
        assert set(got) == set(want) >= {"values", "grad", "jvp"}
        close(got, want, tol)
        assert all(float(np.abs(g).max()) > 0 for g in jax.tree.leaves(got["grad"]))


@pytest.mark.parametrize("name", ["lstm", pytest.param("gru", marks=pytest.mark.slow)])
def test_fused_under_jit_and_vmap_over_params(name):
    cell, _, xs, _ = _case(name)
    many = jax.vmap(cell.init, in_axes=(0, None))(jax.random.split(jax.random.key(3), 4), F)

    @jax.jit
    def grads(many, xs, lengths):
        out = []
        for derivative in (FUSED, AUTODIFF):
            loss = functools.partial(_loss, cell, {"lengths": lengths, "reverse": True,
                                                   **derivative})
            out.append(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1)), in_axes=(0, None))(
                many, xs))
        return out

    got, want = grads(many, xs, jnp.asarray(LENGTHS))
    close(got, want, 1e-5)


def test_fused_second_derivatives(x64):
    cell, params, xs, _ = _case("lstm", "float64")

    @jax.jit
    def hvps(params):
        out = []
        for derivative in (FUSED, AUTODIFF):
            g = jax.grad(lambda p, d=derivative: _loss(cell, d, p, xs))
            out.append(jax.jvp(g, (params,), (jax.tree.map(jnp.ones_like, params),))[1])
        return out

    got, want = hvps(params)
    close(got, want, 1e-10)


def test_fused_check_grads(x64):
    """Finite differences, float64, with lengths and an explicit carry."""
    cell, params, xs, carry = _case("gru", "float64")
    kwargs = {"lengths": jnp.asarray(LENGTHS), **FUSED}
    check_grads(jax.jit(lambda p, x, c: _loss(cell, {**kwargs, "carry": c}, p, x)),
                (params, xs, carry), order=1, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


def test_fused_reads_the_form_not_the_step():
    """A user's cell built with rnnlab.affine_cell gets the fused derivative, and its
    backward pass multiplies by R and A alone: no matmul produces a [rows, F + H] gradient
    of the concatenated [x, h] that the step's one matmul reads."""
    f_in = 5  # F + H = 9 is no other array's width here
    elman = rnnlab.elman(H)
    form = rnnlab.cell.affine_form(elman)
    cell = rnnlab.affine_cell(elman.init, elman.initial_carry, *form)
    params = cell.init(jax.random.key(0), f_in)
    xs = jax.random.normal(jax.random.key(1), (T, B, f_in))
    grad = jax.jit(jax.grad(lambda p: _loss(cell, FUSED, p, xs)))
    compiled = grad.lower(params).compile()
    hlo = compiled.as_text()
    wasteful = [line for line in hlo.splitlines()  # B or T*B rows
                if re.search(rf"= f32\[({B}|{T * B}),{f_in + H}\]\{{[0-9,]*\}} dot\(", line)]
    assert not wasteful, wasteful
    assert re.search(rf"= f32\[{B},{H}\]\{{[0-9,]*\}} dot\(", hlo)  # the loop's dg @ R^T
    want = jax.grad(lambda p: _loss(elman, AUTODIFF, p, xs))(params)
    close(compiled(params), want)


# ----------------------------------------------------------------------------- remat


def _remat_cases():
    # The default run: the LSTM (a checkpoint policy inside remat's chunks) and the LRU
    # (a complex carry) with every option at once; with -m slow every registered cell,
    # the GRU of the paper (prepare, no affine form) and the single options.
    for name in (*CELLS, "gru-reset-before"):
        for option in ("all", "plain", "lengths-reverse", "time_axis"):
            fast = name in ("lstm", "lru") and option == "all"
            yield pytest.param(name, option, marks=() if fast else (pytest.mark.slow,),
                               id=f"{name}-{option}")


@pytest.mark.parametrize("name, option", list(_remat_cases()))
def test_remat_equals_no_remat(name, option):
    cell, params, xs, carry = _case(name, seed=1)
    xs, kwargs = _kwargs(option, xs, carry)
    carry0 = kwargs.pop("carry", None)

    def loss(p, x, c, remat):
        carry, ys = rnnlab.scan(cell, p, x, carry=c, remat=remat, **kwargs)
        return jnp.sum(jnp.abs(ys) ** 2) + sum(jnp.sum(jnp.abs(c)) for c in jax.tree.leaves(carry))

    real_carry = carry0 is not None and not any(map(jnp.iscomplexobj, jax.tree.leaves(carry0)))
    argnums = (0, 1, 2) if real_carry else (0, 1)

    @jax.jit
    def run(params, xs, c):
        # ceil(sqrt 5) = 3 leaves a remainder; 2 too; 100 > T
        return [jax.value_and_grad(loss, argnums=argnums)(params, xs, c, remat)
                for remat in (False, True, 2, 100)]

    reference_, *rematted = run(params, xs, carry0)
    assert float(reference_[0]) > 0
    for got in rematted:
        close(got, reference_, 1e-5)


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
    cell, params, xs, _ = _case("lstm")
    for bad in (0, -2, 1.5, "yes"):
        with pytest.raises(ValueError, match="remat must be a bool or a positive int"):
            rnnlab.scan(cell, params, xs, remat=bad)
