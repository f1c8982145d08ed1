"""Every registered cell against outside references: a Python loop, per-sequence loops,
jit, finite differences, causality, and the cells' own equations written in numpy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from conftest import (
    CELLS,
    LENGTHS,
    B,
    F,
    H,
    T,
    close,
    equal,
    loop,
    make_case,
    random_carry,
    reference_scan,
)
from jax.test_util import check_grads

import rnnlab
from rnnlab import registry

# ----------------------------------------------------------------------------- every cell


@pytest.fixture(scope="module")
def compiled(registered):
    """One compiled program per cell computes what the tests below compare, and a
    second call with other values of the same shapes must not compile it again."""
    cell = registered.cell
    traces = []

    @jax.jit
    def run(params, xs, carry, lengths):
        traces.append(None)
        return {
            "default": rnnlab.scan(cell, params, xs),  # the cell's own initial carry
            "carry": rnnlab.scan(cell, params, xs, carry=carry),
            "one": rnnlab.scan(cell, params, xs[:, 1])[1],  # batch_shape ()
            "2d": rnnlab.scan(cell, params, jnp.stack([xs, 2 * xs], axis=2))[1],  # [T, B, 2, F]
            "options": rnnlab.scan(cell, params, jnp.swapaxes(xs, 0, 1), carry=carry,
                                   lengths=lengths, reverse=True, time_axis=1),
            "jacobian": jax.jacrev(lambda x: rnnlab.scan(cell, params, x)[1])(xs[:, 0]),
        }

    params, xs, carry = registered.params, registered.xs, registered.carry
    out = run(params, xs, carry, jnp.asarray(LENGTHS))
    run(jax.tree.map(lambda p: p + 0.01, params), 2 * xs, carry, jnp.asarray([1, 4, 3]))
    return out, len(traces)


def test_params_are_arrays_only(registered):
    leaves = jax.tree.leaves(registered.params)
    assert leaves
    for leaf in leaves:
        assert isinstance(leaf, jax.Array), type(leaf)


def test_output_and_carry_shapes(registered, compiled):
    out, _ = compiled
    carry, ys = out["default"]
    chex.assert_shape(ys, (T, B, None))
    assert jnp.issubdtype(ys.dtype, jnp.floating)
    init = registered.cell.initial_carry(registered.params, (B,))
    assert jax.tree.structure(carry) == jax.tree.structure(init)
    assert jax.tree.map(jnp.shape, carry) == jax.tree.map(jnp.shape, init)
    assert jax.tree.map(jnp.result_type, carry) == jax.tree.map(jnp.result_type, init)


def test_scan_equals_python_loop(registered, compiled):
    out, _ = compiled
    cell, params, xs = registered.cell, registered.params, registered.xs
    close(out["default"], loop(cell, params, xs, cell.initial_carry(params, (B,))))
    close(out["carry"], loop(cell, params, xs, registered.carry))


def test_single_sequence_and_many_batch_axes(compiled):
    out, _ = compiled
    ys = out["default"][1]
    close(out["one"], ys[:, 1])
    close(out["2d"][:, :, 0], ys)
    assert out["2d"].shape == (T, B, 2, ys.shape[-1])


def test_lengths_reverse_time_axis_and_carry_equal_per_sequence_loops(registered, compiled):
    out, _ = compiled
    carry, ys = out["options"]
    want_carry, want_ys = reference_scan(registered.cell, registered.params, registered.xs,
                                         registered.carry, LENGTHS, reverse=True)
    close(jnp.swapaxes(ys, 0, 1), want_ys)
    close(carry, want_carry)


def test_jit_equals_eager(registered, compiled):
    out, _ = compiled
    close(rnnlab.scan(registered.cell, registered.params, registered.xs, carry=registered.carry),
          out["carry"], tol=1e-6)


def test_causality(compiled):
    """dy_t/dx_s == 0 for s > t: no output sees the future."""
    out, _ = compiled
    jac = np.abs(np.asarray(out["jacobian"])).sum(axis=(1, 3))  # [T, H', T, F] -> [T, T]
    assert jac.shape == (T, T)
    assert np.all(jac[np.triu_indices(T, k=1)] == 0.0)
    # ...and outputs do see their own input (ReLU units may be dead at one step).
    assert np.diag(jac).sum() > 0


def test_no_recompilation_on_second_call(compiled):
    _, traces = compiled
    assert traces == 1


@pytest.mark.parametrize("name", CELLS)
def test_gradients_match_finite_differences(name, x64):
    """Forward and reverse mode against finite differences in float64, w.r.t. the params,
    the inputs and (for a real carry) the initial carry."""
    del x64
    _, cell, params, xs, carry = make_case(name, "float64")
    if name == "irnn":
        # Its tiny input weights put every ReLU pre-activation within a
        # finite-difference step of the kink; a positive bias moves them away.
        params = params._replace(b=params.b + 0.5)
    weights = jnp.sin(jnp.arange(T * B * H, dtype=jnp.float64))

    def loss(params, xs, carry):
        c, ys = rnnlab.scan(cell, params, xs, carry=carry)
        ys = ys.reshape(-1)
        return jnp.sum(weights[: ys.size] * ys) + sum(
            jnp.sum(jnp.abs(leaf) ** 2) for leaf in jax.tree.leaves(c))

    if any(jnp.iscomplexobj(leaf) for leaf in jax.tree.leaves(carry)):
        args, f = (params, xs), jax.jit(lambda p, x: loss(p, x, carry))  # check_grads: real only
    else:
        args, f = (params, xs, carry), jax.jit(loss)
    check_grads(f, args, order=1, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- equations


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _g(x):  # Feng et al.'s positive candidate activation
    return np.where(x >= 0, x + 0.5, _sigmoid(x))


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
    if name == "mingru":
        z, h_tilde = np.split(x @ p.W_x + p.b, 2, axis=-1)
        h = (1 - _sigmoid(z)) * h + _sigmoid(z) * _g(h_tilde)
        return h, h
    if name == "minlstm":
        f, i, h_tilde = np.split(x @ p.W_x + p.b, 3, axis=-1)
        f, i = _sigmoid(f), _sigmoid(i)
        h = f / (f + i) * h + i / (f + i) * _g(h_tilde)
        return h, h
    if name == "lru":
        lam = np.exp(-np.exp(p.nu_log) + 1j * np.exp(p.theta_log))
        h = lam * h + np.exp(p.gamma_log) * (x @ (p.B_re + 1j * p.B_im))
        return h, np.real(h @ (p.C_re + 1j * p.C_im)) + x @ p.D
    if name == "orthogonal":  # modReLU
        z = x @ p.U + h @ scipy.linalg.expm(p.A - p.A.T)
        h = np.sign(z) * np.maximum(np.abs(z) + p.b, 0)
        return h, h
    raise KeyError(name)


@pytest.mark.parametrize("name, input_size", [
    *((name, F) for name in ("elman-tanh", "elman-relu", "irnn", "lstm", "lstm-fb0", "gru",
                             "mingru", "minlstm", "lru", "orthogonal")),
    # One input feature: the Elman step's two-matmul branch, the GRU's joint [x, h] one.
    ("elman-tanh", 1), ("irnn", 1), ("gru", 1),
])
def test_step_matches_numpy_equations(name, input_size):
    _, cell, params, xs, carry = make_case(name, input_size=input_size)
    # Non-zero biases, so that the bias placement is tested too.
    params = jax.tree.map(lambda p: p + 0.1 * jnp.cos(jnp.arange(p.size).reshape(p.shape)), params)
    carry_np = jax.tree.map(lambda c: np.asarray(c, np.complex128 if jnp.iscomplexobj(c)
                                                 else np.float64), tuple(carry)
                            if isinstance(carry, tuple) else carry)
    for t in range(T):
        carry, y = cell.step(params, carry, xs[t])
        carry_np, y_np = _numpy_step(name, params, carry_np, np.asarray(xs[t], np.float64))
        close(np.asarray(y, np.float64), y_np)
    close(jax.tree.map(lambda c: np.asarray(c, np.result_type(c.dtype, np.float64)),
                       tuple(carry) if isinstance(carry, tuple) else carry), carry_np)


def test_gru_original_cho_form():
    cell = rnnlab.gru(H, reset_after=False)
    params = cell.init(jax.random.key(1), F)
    params = params._replace(b_x=params.b_x + 0.3, b_h=params.b_h - 0.2)
    xs = jax.random.normal(jax.random.key(2), (T, B, F))
    _, ys = loop(cell, params, xs, cell.initial_carry(params, (B,)))
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h = np.zeros((B, H))
    for t in range(T):
        x = np.asarray(xs[t], np.float64)
        gx = x @ p.W_x + p.b_x
        r = _sigmoid(gx[:, :H] + h @ p.W_h[:, :H] + p.b_h[:H])
        z = _sigmoid(gx[:, H:2 * H] + h @ p.W_h[:, H:2 * H] + p.b_h[H:2 * H])
        n = np.tanh(gx[:, 2 * H:] + (r * h) @ p.W_h[:, 2 * H:] + p.b_h[2 * H:])
        h = (1 - z) * n + z * h
        close(np.asarray(ys[t], np.float64), h)
    # ...and the two forms really differ.
    _, ys_after = loop(rnnlab.gru(H), params, xs, cell.initial_carry(params, (B,)))
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
    equal(cell.step(prepared, carry, xs[0]), cell.step(params, carry, xs[0]))

    def scanned(p):
        return jnp.sum(jnp.sin(rnnlab.scan(cell, p, xs)[1]))

    def looped(p):
        return jnp.sum(jnp.sin(loop(cell, p, xs, cell.initial_carry(p, (B,)))[1]))

    both = jax.jit(lambda p: (jax.value_and_grad(scanned)(p), jax.value_and_grad(looped)(p)))
    (got, want) = both(params)
    close(got, want, tol=1e-5)


# ----------------------------------------------------------------------------- initialisation


def test_lstm_forget_bias_and_chrono():
    p = rnnlab.lstm(H, forget_bias=2.5).init(jax.random.key(0), F)
    b_i, b_f, b_g, b_o = np.split(np.asarray(p.b), 4)
    np.testing.assert_array_equal(b_f, 2.5)
    np.testing.assert_array_equal(np.concatenate([b_i, b_g, b_o]), 0.0)
    t_max = 50.0
    p = rnnlab.lstm(64, chrono_tmax=t_max).init(jax.random.key(0), F)
    b_i, b_f, _, _ = np.split(np.asarray(p.b), 4)
    # Tallec & Ollivier: b_f = log U(1, T_max - 1), b_i = -b_f.
    assert np.all(b_f >= 0) and np.all(b_f <= np.log(t_max - 1) + 1e-6)
    np.testing.assert_allclose(b_i, -b_f)
    assert b_f.std() > 0.3  # spread over time-scales, not a constant


def test_irnn_init_is_identity():
    p = rnnlab.irnn(H, recurrent_scale=0.5).init(jax.random.key(0), F)
    np.testing.assert_array_equal(p.W_h, 0.5 * np.eye(H))
    np.testing.assert_array_equal(p.b, 0.0)
    assert 0 < float(jnp.std(p.W_x)) < 0.01


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
        assert np.all(np.isfinite(w))
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


def test_stack_of_user_and_library_cells_equals_layer_by_layer():
    """A user's own cell between two library cells: the stack's scan equals the layers'
    Python loops fed one into the next, outputs and per-layer final carries."""
    cells = [rnnlab.lstm(H), _user_cell(5), rnnlab.gru(3)]
    deep = rnnlab.stack(cells)
    params = deep.init(jax.random.key(0), F)
    xs = jax.random.normal(jax.random.key(1), (T, B, F))
    carry, ys = jax.jit(lambda p, x: rnnlab.scan(deep, p, x))(params, xs)
    h, want_carry = xs, []
    for cell, p in zip(cells, params, strict=True):
        c, h = loop(cell, p, h, cell.initial_carry(p, (B,)))
        want_carry.append(c)
    assert ys.shape == (T, B, 3)
    close(ys, h)
    close(carry, tuple(want_carry))


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
    _, want = loop(deep, params, xs, deep.initial_carry(params, (B,)))  # unprepared params
    close(ys, want)


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


def test_wrong_input_size_names_shapes(registered):
    cell, params = registered.cell, registered.params
    with pytest.raises(ValueError, match=rf"{F} input features.*\(2, 7\)"):
        cell.step(params, cell.initial_carry(params, (2,)), jnp.ones((2, 7)))
    with pytest.raises(ValueError, match=f"{F} input features"):
        rnnlab.scan(cell, params, jnp.ones((T, B, F + 3)))


def test_carry_of_the_wrong_batch_shape_is_named(registered):
    cell, params = registered.cell, registered.params
    bad = random_carry(cell, params, (B + 1,), jax.random.key(0))
    with pytest.raises(ValueError, match="carry must match"):
        rnnlab.scan(cell, params, registered.xs, carry=bad)
