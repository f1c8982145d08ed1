"""Every registered cell against outside references: a Python loop, jit, finite
differences, causality, and the cells' own equations written in numpy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import rnnlab
from rnnlab import registry

T, B, F, H = 5, 2, 3, 4
CELLS = registry.names()


def _setup(name, dtype=jnp.float32, input_size=F):
    cell = registry.get(name, H)
    k_p, k_x = jax.random.split(jax.random.key(0))
    params = cell.init(k_p, input_size)
    params = jax.tree.map(lambda p: p.astype(dtype) if jnp.isrealobj(p) else p, params)
    xs = jax.random.normal(k_x, (T, B, input_size), dtype)
    return cell, params, xs


@pytest.fixture(scope="module", params=CELLS)
def case(request):
    return (request.param, *_setup(request.param))


def _loop(cell, params, xs, carry):
    ys = []
    for t in range(xs.shape[0]):
        carry, y = cell.step(params, carry, xs[t])
        ys.append(y)
    return carry, jnp.stack(ys)


def test_params_are_arrays_only(case):
    _, cell, params, _ = case
    for leaf in jax.tree.leaves(params):
        assert isinstance(leaf, jax.Array), type(leaf)


def test_output_shapes(case):
    _, cell, params, xs = case
    carry, ys = rnnlab.scan(cell, params, xs)
    assert ys.shape[:2] == (T, B)
    init = cell.initial_carry(params, (B,))
    assert jax.tree.map(jnp.shape, carry) == jax.tree.map(jnp.shape, init)


def test_scan_equals_python_loop(case):
    _, cell, params, xs = case
    carry0 = cell.initial_carry(params, (B,))
    want_carry, want_ys = _loop(cell, params, xs, carry0)
    got_carry, got_ys = rnnlab.scan(cell, params, xs)
    np.testing.assert_allclose(got_ys, want_ys, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 got_carry, want_carry)


def test_single_sequence_and_many_batch_axes(case):
    _, cell, params, xs = case
    _, ys_batched = rnnlab.scan(cell, params, xs)
    _, ys_one = rnnlab.scan(cell, params, xs[:, 1])  # batch_shape ()
    np.testing.assert_allclose(ys_one, ys_batched[:, 1], rtol=1e-5, atol=1e-6)
    xs_2d = jnp.stack([xs, 2 * xs], axis=2)  # [T, B, 2, F]
    _, ys_2d = rnnlab.scan(cell, params, xs_2d)
    np.testing.assert_allclose(ys_2d[:, :, 0], ys_batched, rtol=1e-5, atol=1e-6)


def test_jit_equals_eager(case):
    _, cell, params, xs = case
    eager = rnnlab.scan(cell, params, xs)
    jitted = jax.jit(functools.partial(rnnlab.scan, cell))(params, xs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 eager, jitted)


def test_causality(case):
    """dy_t/dx_s == 0 for s > t: no output sees the future."""
    _, cell, params, xs = case
    jac = jax.jacrev(lambda x: rnnlab.scan(cell, params, x)[1])(xs[:, 0])  # [T, H', T, F]
    jac = np.abs(np.asarray(jac)).sum(axis=(1, 3))  # [T, T]
    assert np.all(jac[np.triu_indices(T, k=1)] == 0.0)
    # ...and outputs do see their own input (ReLU units may be dead at one step).
    assert np.diag(jac).sum() > 0


@pytest.mark.parametrize("name", CELLS)
def test_gradients_match_finite_differences(name, x64):
    del x64
    cell, params, xs = _setup(name, jnp.float64)
    if name == "irnn":
        # Its tiny input weights put every ReLU pre-activation within a
        # finite-difference step of the kink; a positive bias moves them away.
        params = params._replace(b=params.b + 0.5)

    def loss(params, xs):
        _, ys = rnnlab.scan(cell, params, xs)
        return jnp.sum(jnp.sin(jnp.arange(ys.size).reshape(ys.shape)) * ys)

    check_grads(loss, (params, xs), order=1, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


def test_no_recompilation_on_second_call():
    cell, params, xs = _setup("lstm")
    traces = []

    @jax.jit
    def f(params, xs, lengths):
        traces.append(None)
        return rnnlab.scan(cell, params, xs, lengths=lengths)[1]

    f(params, xs, jnp.array([5, 3]))
    params2 = jax.tree.map(lambda p: p + 1.0, params)
    f(params2, 2 * xs, jnp.array([1, 4]))
    assert len(traces) == 1


# ----------------------------------------------------------------------------- equations


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _numpy_step(name, p, h, x):
    """Each cell's equations as written in its docstring, in float64 numpy."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    if name in ("elman-tanh", "elman-relu", "irnn"):
        z = x @ p.W_x + h @ p.W_h + p.b
        h = np.tanh(z) if name == "elman-tanh" else np.maximum(z, 0)
        return h, h
    if name in ("lstm", "lstm-fb0"):
        c, hh = h
        i, f, g, o = np.split(x @ p.W_x + hh @ p.W_h + p.b, 4, axis=-1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        hh = _sigmoid(o) * np.tanh(c)
        return (c, hh), hh
    if name == "gru":  # cuDNN form
        xr, xz, xn = np.split(x @ p.W_x + p.b_x, 3, axis=-1)
        hr, hz, hn = np.split(h @ p.W_h + p.b_h, 3, axis=-1)
        r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
        n = np.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        return h, h
    raise KeyError(name)


@pytest.mark.parametrize("name, input_size", [
    ("elman-tanh", F), ("elman-relu", F), ("irnn", F), ("lstm", F), ("lstm-fb0", F), ("gru", F),
    # One input feature: the Elman step's two-matmul branch, the GRU's joint [x, h] one.
    ("elman-tanh", 1), ("irnn", 1), ("gru", 1),
])
def test_step_matches_numpy_equations(name, input_size):
    cell, params, xs = _setup(name, input_size=input_size)
    # Non-zero biases, so that the bias placement is tested too.
    params = jax.tree.map(lambda p: p + 0.1 * jnp.cos(jnp.arange(p.size).reshape(p.shape)), params)
    carry = cell.initial_carry(params, (B,))
    carry_np = jax.tree.map(np.asarray, tuple(carry) if isinstance(carry, tuple) else carry)
    for t in range(T):
        carry, y = cell.step(params, carry, xs[t])
        carry_np, y_np = _numpy_step(name, params, carry_np, np.asarray(xs[t], np.float64))
        np.testing.assert_allclose(y, y_np, rtol=1e-5, atol=1e-6)


def test_gru_original_cho_form():
    cell = rnnlab.gru(H, reset_after=False)
    params = cell.init(jax.random.key(1), F)
    params = params._replace(b_x=params.b_x + 0.3, b_h=params.b_h - 0.2)
    xs = jax.random.normal(jax.random.key(2), (T, B, F))
    _, ys = rnnlab.scan(cell, params, xs)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h = np.zeros((B, H))
    for t in range(T):
        x = np.asarray(xs[t], np.float64)
        gx = x @ p.W_x + p.b_x
        r = _sigmoid(gx[:, :H] + h @ p.W_h[:, :H] + p.b_h[:H])
        z = _sigmoid(gx[:, H:2 * H] + h @ p.W_h[:, H:2 * H] + p.b_h[H:2 * H])
        n = np.tanh(gx[:, 2 * H:] + (r * h) @ p.W_h[:, 2 * H:] + p.b_h[2 * H:])
        h = (1 - z) * n + z * h
        np.testing.assert_allclose(ys[t], h, rtol=1e-5, atol=1e-6)
    # ...and the two forms really differ.
    _, ys_after = rnnlab.scan(rnnlab.gru(H), params, xs)
    assert not np.allclose(ys, ys_after, atol=1e-4)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_prepare_equals_unprepared_step(reset_after):
    """scan runs step(prepare(params)); a loop over step with the raw params must agree,
    values and gradients w.r.t. the raw params (which flow back through prepare)."""
    cell = rnnlab.gru(H, reset_after=reset_after)
    params = cell.init(jax.random.key(3), F)
    params = params._replace(b_x=params.b_x + 0.3, b_h=params.b_h - 0.2)
    xs = jax.random.normal(jax.random.key(4), (T, B, F))
    prepared = cell.prepare(params)
    assert isinstance(prepared, rnnlab.GRUWeights)
    assert cell.prepare(prepared) is prepared
    carry = cell.initial_carry(params, (B,))
    np.testing.assert_array_equal(cell.step(prepared, carry, xs[0])[1],
                                  cell.step(params, carry, xs[0])[1])

    def scanned(p):
        return jnp.sum(jnp.sin(rnnlab.scan(cell, p, xs)[1]))

    def looped(p):
        return jnp.sum(jnp.sin(_loop(cell, p, xs, cell.initial_carry(p, (B,)))[1]))

    np.testing.assert_allclose(scanned(params), looped(params), rtol=1e-6)
    for got, want in zip(jax.tree.leaves(jax.grad(scanned)(params)),
                         jax.tree.leaves(jax.grad(looped)(params)), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- initialisation


def test_lstm_forget_bias_and_chrono():
    p = rnnlab.lstm(H, forget_bias=2.5).init(jax.random.key(0), F)
    b_i, b_f, b_g, b_o = np.split(np.asarray(p.b), 4)
    np.testing.assert_array_equal(b_f, 2.5)
    np.testing.assert_array_equal(np.concatenate([b_i, b_g, b_o]), 0.0)
    t_max = 50.0
    p = rnnlab.lstm(64, chrono_tmax=t_max).init(jax.random.key(0), F)
    b_i, b_f, _, _ = np.split(np.asarray(p.b), 4)
    assert np.all(b_f >= 0) and np.all(b_f <= np.log(t_max - 1) + 1e-6)
    np.testing.assert_allclose(b_i, -b_f)
    assert b_f.std() > 0.3  # spread over time-scales, not a constant


def test_irnn_init_is_identity():
    p = rnnlab.irnn(H, recurrent_scale=0.5).init(jax.random.key(0), F)
    np.testing.assert_array_equal(p.W_h, 0.5 * np.eye(H))
    np.testing.assert_array_equal(p.b, 0.0)
    assert float(jnp.std(p.W_x)) < 0.01


@pytest.mark.parametrize("scale", [0.5, 1.0, 1.3])
def test_orthogonal_recurrent_init_sets_spectral_radius(scale):
    cell = rnnlab.elman(16, recurrent_init=rnnlab.initializers.orthogonal(scale=scale))
    W = np.asarray(cell.init(jax.random.key(0), F).W_h, np.float64)
    np.testing.assert_allclose(np.linalg.svd(W, compute_uv=False), scale, rtol=1e-5)
    np.testing.assert_allclose(np.abs(np.linalg.eigvals(W)), scale, rtol=1e-5)


def test_initializers_by_name():
    for name in rnnlab.initializers.NAMES:
        shape = (6, 6)
        w = rnnlab.initializers.get(name)(jax.random.key(0), shape, jnp.float32)
        assert w.shape == shape and w.dtype == jnp.float32
    W = rnnlab.initializers.spectral_normal(0.7)(jax.random.key(0), (400, 400), jnp.float32)
    np.testing.assert_allclose(np.std(np.asarray(W)) * np.sqrt(400), 0.7, rtol=0.02)


# ----------------------------------------------------------------------------- composition


def _user_cell(hidden_size):
    """A cell written the way a user would, in a few lines, with no rnnlab helpers."""

    def init(key, input_size):
        return {"w": jax.random.normal(key, (input_size, hidden_size)) * 0.5}

    def initial_carry(params, batch_shape=()):
        return jnp.zeros((*batch_shape, hidden_size))

    def step(params, h, x):
        h = 0.9 * h + jnp.tanh(x @ params["w"])
        return h, 2.0 * h

    return rnnlab.Cell(init, initial_carry, step)


def test_user_cell_works_with_scan_and_stack():
    cell = _user_cell(H)
    params = cell.init(jax.random.key(0), F)
    xs = jax.random.normal(jax.random.key(1), (T, B, F))
    _, ys = rnnlab.scan(cell, params, xs)
    _, want = _loop(cell, params, xs, cell.initial_carry(params, (B,)))
    np.testing.assert_allclose(ys, want, rtol=1e-5, atol=1e-6)


def test_stack_equals_layer_by_layer():
    cells = [rnnlab.lstm(H), _user_cell(5), rnnlab.gru(3)]
    deep = rnnlab.stack(cells)
    params = deep.init(jax.random.key(0), F)
    xs = jax.random.normal(jax.random.key(1), (T, B, F))
    carry, ys = rnnlab.scan(deep, params, xs)
    h = xs
    want_carry = []
    for cell, p in zip(cells, params, strict=True):
        c, h = rnnlab.scan(cell, p, h)
        want_carry.append(c)
    np.testing.assert_allclose(ys, h, rtol=1e-5, atol=1e-6)
    assert ys.shape == (T, B, 3)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 carry, tuple(want_carry))


# ----------------------------------------------------------------------------- bad input


def test_bad_cell_options_raise():
    with pytest.raises(ValueError, match="nonlinearity"):
        rnnlab.elman(H, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="hidden_size"):
        rnnlab.lstm(0)
    with pytest.raises(ValueError, match="chrono_tmax"):
        rnnlab.lstm(H, chrono_tmax=1.0)
    with pytest.raises(ValueError, match="recurrent_init"):
        rnnlab.gru(H, recurrent_init="nope")
    with pytest.raises(TypeError, match="reset_after"):
        rnnlab.gru(H, reset_after="yes")
    with pytest.raises(ValueError, match="input_size"):
        rnnlab.lstm(H).init(jax.random.key(0), -1)
    with pytest.raises(TypeError, match="batch_shape"):
        rnnlab.lstm(H).initial_carry(rnnlab.lstm(H).init(jax.random.key(0), F), (2.5,))
    with pytest.raises(ValueError, match="cell must be one of"):
        registry.get("transformer", H)
    with pytest.raises(ValueError, match="empty"):
        rnnlab.stack([])


@pytest.mark.parametrize("name", ["elman-tanh", "lstm", "gru"])
def test_wrong_input_size_names_shapes(name):
    cell, params, xs = _setup(name)
    with pytest.raises(ValueError, match=r"3 input features.*\(2, 7\)"):
        cell.step(params, cell.initial_carry(params, (2,)), jnp.ones((2, 7)))
    with pytest.raises(ValueError, match="3 input features"):
        rnnlab.scan(cell, params, jnp.ones((T, B, 5)))


def test_stack_passes_prepare_through():
    """A stack holding a cell with a `prepare` hook prepares each layer once per scan."""
    calls = []
    ortho = rnnlab.orthogonal(H)
    counted = ortho._replace(prepare=lambda p: calls.append(None) or ortho.prepare(p))
    deep = rnnlab.stack([rnnlab.gru(3), counted])
    params = deep.init(jax.random.key(0), F)
    xs = jax.random.normal(jax.random.key(1), (T, B, F))
    _, ys = rnnlab.scan(deep, params, xs)
    assert len(calls) == 1
    _, want = _loop(deep, params, xs, deep.initial_carry(params, (B,)))  # unprepared params
    np.testing.assert_allclose(ys, want, rtol=1e-5, atol=1e-6)
