"""rnnlab.scan's fast derivative (rnnlab.fused) and checkpointed BPTT (remat) vs the reference.

Oracles: the plain ``lax.scan`` over the same step with the fast path hidden
(the step wrapped in a function without the ``gated`` attribute), and the scan
without remat. Values and gradients, float32 and float64, with every option of
rnnlab.scan that changes the loop.
"""

import functools
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import rnnlab
from rnnlab import fused

T, B, F, H = 7, 3, 2, 5
LENGTHS = np.array([7, 3, 0])
GATED = {  # every registry cell whose step has the fast path
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


@pytest.fixture
def fast_path(monkeypatch):
    """Turns the fast path on (by default it is on for GPUs only: rnnlab.fused.ENABLED)."""
    monkeypatch.setattr(fused, "ENABLED", True)


def reference(cell):
    """The same cell with the fast path hidden: its step without the ``gated`` attribute."""
    step = cell.step
    return rnnlab.Cell(cell.init, cell.initial_carry, lambda p, c, x: step(p, c, x))


def close(a, b, tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=tol, atol=tol), a, b)


def _case(name, dtype, option):
    cell = GATED[name]()
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


@pytest.mark.parametrize("setting, backend, expected", [
    (None, "cpu", False), (None, "gpu", True), (None, "tpu", False),
    (True, "cpu", True), (False, "gpu", False),
])
def test_the_fast_path_defaults_to_gpus_only(monkeypatch, setting, backend, expected):
    """ENABLED=None resolves by JAX's default backend; True/False override it. rnnlab.scan
    follows the resolved value (counted by wrapping fused.gated_scan)."""
    monkeypatch.setattr(fused, "ENABLED", setting)
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert fused.enabled() is expected
    calls = []
    original = fused.gated_scan
    monkeypatch.setattr(fused, "gated_scan", lambda *a, **k: calls.append(1) or original(*a, **k))
    cell = rnnlab.lstm(H)
    params = cell.init(jax.random.key(0), F)
    rnnlab.scan(cell, params, jnp.ones((T, B, F)))
    assert len(calls) == int(expected)


def test_the_cells_have_the_fast_path_and_wrappers_do_not():
    for make in GATED.values():
        assert fused.get_gated(make()) is not None
    assert fused.get_gated(reference(rnnlab.lstm(H))) is None
    assert fused.get_gated(rnnlab.gru(H, reset_after=False)) is None


def _cases():
    # The fast path is off on CPU, where CI runs (rnnlab.fused.ENABLED), so the default
    # run keeps float32 LSTM and GRU with every option; the rest run with -m slow.
    for dtype in ("float32", "float64"):
        for name in GATED:
            for option in OPTIONS:
                fast = dtype == "float32" and name in ("lstm", "gru")
                marks = () if fast else (pytest.mark.slow,)
                yield pytest.param(name, option, dtype, marks=marks, id=f"{dtype}-{name}-{option}")


@pytest.mark.parametrize("name, option, dtype", list(_cases()))
def test_fast_path_equals_reference(name, option, dtype, fast_path):
    with jax.enable_x64(dtype == "float64"):
        dt = jnp.dtype(dtype)
        tol = 1e-5 if dt == jnp.float32 else 1e-12
        cell, params, xs, kwargs = _case(name, dt, option)
        fast = rnnlab.scan(cell, params, xs, **kwargs)
        slow = rnnlab.scan(reference(cell), params, xs, **kwargs)
        close(fast, slow, tol)
        grad = jax.grad(_loss, argnums=(2, 3))
        g_fast = grad(cell, kwargs, params, xs)
        g_slow = grad(reference(cell), kwargs, params, xs)
        close(g_fast, g_slow, tol)
        if "carry" in kwargs:  # gradient w.r.t. the initial carry too
            def by_carry(c, k):
                return _loss(k, {**kwargs, "carry": c}, params, xs)

            close(jax.grad(by_carry)(kwargs["carry"], cell),
                  jax.grad(by_carry)(kwargs["carry"], reference(cell)), tol)
        # Forward mode (the fast path is a custom_jvp).
        tangents = (jax.tree.map(jnp.ones_like, params), jnp.ones_like(xs))
        close(jax.jvp(lambda p, x: rnnlab.scan(cell, p, x, **kwargs), (params, xs), tangents),
              jax.jvp(lambda p, x: rnnlab.scan(reference(cell), p, x, **kwargs),
                      (params, xs), tangents), tol)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_fast_path_under_jit_and_vmap_over_params(name, fast_path):
    cell, _, xs, _ = _case(name, jnp.float32, "plain")
    many = jax.vmap(cell.init, in_axes=(0, None))(jax.random.split(jax.random.key(3), 4), F)
    lengths = jnp.asarray(LENGTHS)

    def grads(c):
        loss = functools.partial(_loss, c, {"lengths": lengths, "reverse": True})
        return jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1)), in_axes=(0, None)))(
            many, xs)

    close(grads(cell), grads(reference(cell)), 1e-5)


def test_fast_path_second_derivatives(x64, fast_path):
    cell, params, xs, _ = _case("lstm", jnp.float64, "plain")

    def hvp(c):
        g = jax.grad(lambda p: _loss(c, {}, p, xs))
        return jax.jvp(g, (params,), (jax.tree.map(jnp.ones_like, params),))[1]

    close(hvp(cell), hvp(reference(cell)), 1e-10)


def test_fast_path_check_grads(x64, fast_path):
    cell, params, xs, kwargs = _case("gru", jnp.float64, "lengths")
    check_grads(
        lambda p, x: _loss(cell, kwargs, p, x), (params, xs), order=1, modes=("fwd", "rev"),
        atol=1e-5, rtol=1e-5)


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


# ----------------------------------------------------------------------------- benchmark


@pytest.mark.slow  # ~13 s: a subprocess that imports flax and compiles every framework
def test_benchmark_suite_runs_quick(tmp_path, load_script):
    """benchmarks/run.py --quick runs end to end (numbers are never asserted)."""
    module = load_script("benchmarks/run.py", name="rnnlab_bench_run")
    try:
        # torch is never imported by the tests: the suite runs without it here.
        module.main(["--quick", "--frameworks", "rnnlab,rnnlab-fused,flax,matmul-floor",
                     "--out", str(tmp_path)])
    finally:
        del sys.modules["rnnlab_bench_run"]
    assert (tmp_path / "suite_quick.md").exists()
    data = json.loads((tmp_path / "suite_quick.json").read_text())
    assert {(r["cell"], r["pass"]) for r in data["results"]} == {
        (c, p) for c in ("lstm", "gru", "elman") for p in ("forward", "forward+backward")}
    for row in data["results"]:
        for f in ("rnnlab", "rnnlab-fused", "flax", "matmul-floor"):
            assert 0 < row[f]["min_s"] <= row[f]["median_s"], (row["cell"], f)
        assert row["rnnlab/flax"] == row["rnnlab"]["median_s"] / row["flax"]["median_s"]


def test_interleaved_timing_orders_and_counts(load_script):
    """run.py's timer: every implementation gets `repeats` times, each round starts from a
    different one, and a slower call measures slower."""
    module = load_script("benchmarks/run.py", name="rnnlab_bench_run")
    try:
        order = []

        def call(name, seconds):
            def f():
                order.append(name)
                time.sleep(seconds)
            return f

        out = module.time_interleaved({"fast": call("fast", 0.001), "slow": call("slow", 0.02)},
                                      warmup=1, repeats=4)
    finally:
        del sys.modules["rnnlab_bench_run"]
    assert order == ["fast", "slow"] + ["fast", "slow", "slow", "fast"] * 2
    assert len(out["fast"]["times_s"]) == len(out["slow"]["times_s"]) == 4
    assert out["slow"]["min_s"] > out["fast"]["median_s"]
    assert out["fast"]["min_s"] <= out["fast"]["median_s"]
    assert out["slow"]["minor_faults_per_call"] >= 0


def _assert_variants_match(variants, reference, params, xs):
    """Each of ``variants`` (fn(params, xs) -> ys) gives ``reference``'s outputs and the
    gradients of a weighted sum of them w.r.t. params and inputs."""
    want_ys = reference(params, xs)
    weights = jnp.cos(jnp.arange(want_ys.size)).reshape(want_ys.shape)

    def loss(fn):
        return lambda p, x: jnp.sum(weights * fn(p, x))

    want_grads = jax.grad(loss(reference), argnums=(0, 1))(params, xs)
    for fn in variants:
        close(fn(params, xs), want_ys, 1e-5)
        close(jax.grad(loss(fn), argnums=(0, 1))(params, xs), want_grads, 1e-5)


@pytest.mark.slow  # ~20 s: the variants, each compiled forward and forward+backward
def test_lstm_variants_agree_and_run(tmp_path, load_script):
    """Every idea in benchmarks/lstm_variants.py computes the plain scan's values and
    gradients (the hand-written custom VJP included), and the script runs end to end."""
    module = load_script("benchmarks/lstm_variants.py", name="rnnlab_bench_variants")
    try:
        T_, B_, F_, H_ = 7, 4, 3, 5
        params = rnnlab.lstm(H_).init(jax.random.key(0), F_)
        params = params._replace(b=params.b + 0.1 * jnp.arange(4 * H_) / H_)
        xs = jax.random.normal(jax.random.key(1), (T_, B_, F_))
        _assert_variants_match(module.VARIANTS.values(), module.base, params, xs)
        # The custom JVP's reason to exist: forward mode, equal to the plain scan's.
        tangents = jax.tree.map(lambda a: jnp.sin(jnp.arange(a.size) + 1.0).reshape(a.shape),
                                (params, xs))
        close(jax.jvp(module.custom_jvp_z, (params, xs), tangents),
              jax.jvp(module.base, (params, xs), tangents), 1e-5)
        module.main(["--quick", "--out", str(tmp_path)])
    finally:
        del sys.modules["rnnlab_bench_variants"]
    assert (tmp_path / "lstm_variants_quick.md").exists()


@pytest.mark.slow  # ~10 s: five variants at two input sizes, forward and gradient
def test_gru_variants_agree_and_run(tmp_path, load_script):
    """Every split in benchmarks/gru_variants.py (flax's GRUCell on converted weights
    included) computes rnnlab.gru's values and gradients, with one input feature (the
    step's joint [x, h] branch) and with three, and the script runs end to end."""
    module = load_script("benchmarks/gru_variants.py", name="rnnlab_bench_gru_variants")
    try:
        T_, B_, H_ = 7, 4, 5
        cell = rnnlab.gru(H_)

        def python_loop(p, xs):  # the reference: a Python loop over the cell's step
            h, ys = cell.initial_carry(p, (B_,)), []
            for x in xs:
                h, y = cell.step(p, h, x)
                ys.append(y)
            return jnp.stack(ys)

        for F_ in (1, 3):
            params = cell.init(jax.random.key(0), F_)
            params = params._replace(b_x=params.b_x + 0.1,
                                     b_h=params.b_h - 0.2 * jnp.arange(3 * H_) / H_)
            xs = jax.random.normal(jax.random.key(1), (T_, B_, F_))
            _assert_variants_match(module.VARIANTS.values(), python_loop, params, xs)
        module.main(["--quick", "--out", str(tmp_path)])
    finally:
        del sys.modules["rnnlab_bench_gru_variants"]
    assert (tmp_path / "gru_variants_quick.md").exists()


def test_gated_step_builds_a_step_with_the_fast_path():
    elman = rnnlab.elman(H)
    form = fused.get_gated(elman)
    cell = rnnlab.Cell(elman.init, elman.initial_carry, fused.gated_step(form))
    assert fused.get_gated(cell) is form
    params = cell.init(jax.random.key(0), F)
    xs = jax.random.normal(jax.random.key(1), (T, B, F))
    close(rnnlab.scan(cell, params, xs), rnnlab.scan(elman, params, xs), 1e-5)
