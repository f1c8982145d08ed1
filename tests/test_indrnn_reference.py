"""IndRNN against a numpy transcription of the authors' PyTorch code (Sunnydreamrain/
IndRNN_pytorch, commit 9b9cb4cd6b42bfedb90605b51a962ea44443efdd), in its conventions:

* IndRNN_onlyrecurrent.py, IndRNNCell_onlyrecurrent.forward:
  ``relu(input + hx * weight_hh)`` over ``input [seq_len, batch, hidden]``, the input
  already projected by a separate layer; and cuda_IndRNN_onlyrecurrent.py's indrnn_fwd
  kernel, the same recurrence over flat columns ``col`` with ``weight_hh[col % hidden]``;
* utils.py, Linear_overtime_module: the projection ``fc(x) = x @ fc.weight^T + fc.bias``
  (Indrnn_plainnet.py puts a batch norm between it and the recurrence, left out here);
* pixelMNIST/Indrnn_mnist_train.py: ``U_bound = np.power(10, np.log10(MAG) / seq_len)``
  (= MAG^(1/T)) and ``clip_weight``, ``param.data.clamp_(-clip, clip)`` on every weight_hh
  before each forward (with --constrain_U); Indrnn_plainnet.py: ``U_lowbound =
  np.power(10, np.log10(1.0 / MAG) / seq_len)``, weight_hh drawn ``uniform_(0, U_bound)``,
  the last layer's ``uniform_(U_lowbound, U_bound)`` with --u_lastlayer_ini; the module's
  own default ``nn.init.uniform(weight, a=0, b=1)``.

Mapping: ``fc.weight = W_x^T``, ``fc.bias = b``, ``weight_hh = u``; rnnlab's
``recurrent_max`` is the code's U_bound. rnnlab clips inside the step where the code
projects the stored weight: the forwards agree (rnnlab at ``u`` is the code at
``clamp(u)``), the gradients only inside the bound (the last test)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnlab
from rnnlab import registry


def _relu(x):
    return np.maximum(x, 0.0)


def indrnn_onlyrecurrent(weight_hh, inputs, h0=None):
    """IndRNN_onlyrecurrent.forward: inputs [seq_len, batch, hidden] -> [seq_len, batch, hidden]."""
    if h0 is None:
        h0 = np.zeros(inputs.shape[-2:])
    outputs, hx_cell = [], h0
    for input_t in inputs:
        hx_cell = _relu(input_t + hx_cell * weight_hh[None, :])
        outputs.append(hx_cell)
    return np.stack(outputs, 0)


def indrnn_fwd_kernel(x, weight_hh, h0):
    """The CUDA kernel indrnn_fwd, one thread per column of the flat [len, batch*hidden]."""
    length, batch, hidden_size = x.shape
    ncols = batch * hidden_size
    xf, h = x.reshape(length, ncols), np.empty((length, ncols))
    for col in range(ncols):
        weight_hh_cur, cur = weight_hh[col % hidden_size], h0.reshape(ncols)[col]
        for row in range(length):
            cur = max(cur * weight_hh_cur + xf[row, col], 0.0)  # reluf
            h[row, col] = cur
    return h.reshape(length, batch, hidden_size)


def linear_overtime(fc_weight, fc_bias, x):
    """Linear_overtime_module.forward: x [seq_len, batch, input] through one nn.Linear."""
    y = x.reshape(-1, x.shape[-1]) @ fc_weight.T + fc_bias
    return y.reshape(x.shape[0], x.shape[1], -1)


def u_bound(MAG, seq_len):
    return np.power(10, (np.log10(MAG) / seq_len))


def u_lowbound(MAG, seq_len):
    return np.power(10, (np.log10(1.0 / MAG) / seq_len))


def clip_weight(weight_hh, clip):
    return np.clip(weight_hh, -clip, clip)  # param.data.clamp_(-clip, clip)


def _params(H, F, seed, u_low, u_high):
    k_w, k_u, k_b = jax.random.split(jax.random.key(seed), 3)
    return rnnlab.cells.IndRNNParams(
        W_x=jax.random.normal(k_w, (F, H), jnp.float64),
        u=jax.random.uniform(k_u, (H,), jnp.float64, u_low, u_high),
        b=0.3 * jax.random.normal(k_b, (H,), jnp.float64),
    )


def _reference(p, xs, clip=None):
    W_x, u, b = (np.asarray(a) for a in p)
    weight_hh = u if clip is None else clip_weight(u, clip)
    return indrnn_onlyrecurrent(weight_hh, linear_overtime(W_x.T, b, np.asarray(xs)))


@pytest.mark.parametrize("T, u_high", [(9, 1.0), (30, 1.05)])
def test_indrnn_equals_the_authors_recurrence(x64, T, u_high):
    """No constraint; u in [-0.5, u_high] so some units grow and relu gates others."""
    H, F, n = 6, 3, 4
    cell = rnnlab.indrnn(H, param_dtype=jnp.float64)
    p = _params(H, F, 0, -0.5, u_high)
    xs = jax.random.normal(jax.random.key(1), (T, n, F), jnp.float64)
    final, ys = rnnlab.scan(cell, p, xs)
    want = _reference(p, xs)
    np.testing.assert_allclose(np.asarray(ys), want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(final), want[-1], rtol=1e-12, atol=1e-14)
    inputs = linear_overtime(np.asarray(p.W_x).T, np.asarray(p.b), np.asarray(xs))
    kernel = indrnn_fwd_kernel(inputs, np.asarray(p.u), np.zeros((n, H)))
    np.testing.assert_allclose(kernel, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("MAG", [2.0, 10.0])
def test_recurrent_max_equals_clip_weight_then_forward(x64, MAG):
    """recurrent_max = U_bound(MAG, T): rnnlab at u equals the code at clamp(u, +-U_bound),
    with u set past the bound on both sides so the clip acts."""
    H, F, n, T = 8, 2, 3, 6
    bound = u_bound(MAG, T)
    np.testing.assert_allclose(bound, MAG ** (1 / T), rtol=1e-14)
    cell = rnnlab.indrnn(H, recurrent_max=bound, param_dtype=jnp.float64)
    u = bound * jnp.array([-1.5, -1.2, -0.6, 0.3, 0.9, 1.1, 1.4, -0.95])  # past it both sides
    p = _params(H, F, 2, 0.0, 1.0)
    p = p._replace(u=u, b=1.0 + p.b)  # a positive bias keeps the negative-u units active
    xs = jax.random.normal(jax.random.key(3), (T, n, F), jnp.float64)
    final, ys = rnnlab.scan(cell, p, xs)
    want = _reference(p, xs, clip=bound)
    np.testing.assert_allclose(np.asarray(ys), want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(final), want[-1], rtol=1e-12, atol=1e-14)
    assert not np.allclose(_reference(p, xs), want)  # unclipped, the code would differ


def test_initialisations_match_the_codes():
    """Default U(0, 1); recurrent_max=U_bound: uniform_(0, U_bound); with recurrent_min =
    U_lowbound: the last layer's uniform_(U_lowbound, U_bound)."""
    H, T, MAG = 20000, 100, 2.0
    lo, hi = u_lowbound(MAG, T), u_bound(MAG, T)
    np.testing.assert_allclose((lo, hi), ((1 / MAG) ** (1 / T), MAG ** (1 / T)), rtol=1e-14)
    for kw, (a, b) in [
        ({}, (0.0, 1.0)),
        (dict(recurrent_max=hi), (0.0, hi)),
        (dict(recurrent_max=hi, recurrent_min=lo), (lo, hi)),
    ]:
        u = np.asarray(rnnlab.indrnn(H, **kw).init(jax.random.key(0), 1).u, np.float64)
        assert a - 1e-6 <= u.min() and u.max() <= b + 1e-6
        np.testing.assert_allclose(u.mean(), (a + b) / 2, rtol=5e-3, atol=5e-3 * (b - a))
        np.testing.assert_allclose(u.std(), (b - a) / np.sqrt(12), rtol=2e-2)


def test_registry_clip_is_the_adding_bound_and_decay_bound_is_max_abs_clipped_u(x64):
    """indrnn-clip: the code's U_bound with MAG = 2, seq_len = 100 (the paper's adding
    problem, |u| in (0, 2^(1/T))); decay_bound = max |clamp(u)|."""
    entry = registry.entry("indrnn-clip")
    assert isinstance(entry.factory, functools.partial)
    bound = entry.factory.keywords["recurrent_max"]
    np.testing.assert_allclose(bound, u_bound(2, 100), rtol=1e-6)
    p = _params(5, 2, 4, 0.0, 1.0)._replace(u=jnp.array([-1.3, 0.2, 0.9, 1.2, -0.4]))
    np.testing.assert_allclose(float(entry.decay_bound(p)), bound, rtol=1e-6)
    small = p._replace(u=0.5 * p.u / jnp.max(jnp.abs(p.u)))
    np.testing.assert_allclose(float(entry.decay_bound(small)), 0.5, rtol=1e-6)
    free = registry.entry("indrnn").decay_bound(p)
    np.testing.assert_allclose(float(free), 1.3, rtol=1e-12)


def test_clip_gradient_differs_from_the_codes_projection(x64):
    """Inside the bound the gradient w.r.t. u is the code's; past it rnnlab's clip gives zero,
    where the code's projected weight, sitting on the bound, still gets its gradient (and can
    move back inside). Reference gradients by central differences at clamp(u)."""
    H, F, n, T, MAG = 6, 2, 3, 5, 10.0
    bound = u_bound(MAG, T)
    cell = rnnlab.indrnn(H, recurrent_max=bound, param_dtype=jnp.float64)
    p = _params(H, F, 5, -1.5 * bound, 1.5 * bound)
    xs = jax.random.normal(jax.random.key(6), (T, n, F), jnp.float64)
    g = np.asarray(jax.grad(lambda u: jnp.sum(rnnlab.scan(cell, p._replace(u=u), xs)[1]))(p.u))
    W_x, u, b = (np.asarray(a) for a in p)
    inputs = linear_overtime(W_x.T, b, np.asarray(xs))
    w0, delta, g_ref = clip_weight(u, bound), 1e-6, np.zeros(H)
    for j in range(H):
        e = np.eye(H)[j] * delta
        up, down = indrnn_onlyrecurrent(w0 + e, inputs), indrnn_onlyrecurrent(w0 - e, inputs)
        g_ref[j] = (up.sum() - down.sum()) / (2 * delta)
    inside = np.abs(u) < bound
    assert inside.any() and (~inside).any()
    np.testing.assert_allclose(g[inside], g_ref[inside], rtol=1e-6, atol=1e-8)
    assert np.all(g[~inside] == 0) and np.all(g_ref[~inside] != 0)


@pytest.mark.parametrize("T", [500, 100])
def test_indrnn_adding_entry_is_the_lasagne_adding_scripts_network(x64, T):
    """indrnn-adding: the Theano/Lasagne adding script (Sunnydreamrain/IndRNN_Theano_Lasagne,
    adding/adding.py, MAG = 2): two ReLU IndRNN layers, W_in N(0, 0.001^2), u uniform in
    (0, U_bound) then (U_lowbound, U_bound), zero biases; its forward is the second layer's
    recurrence over the first's outputs, each at clamp(u, U_bound)."""
    options = {"param_dtype": jnp.float64} | ({} if T == 500 else {"seq_len": T})
    hi, lo = u_bound(2, T), u_lowbound(2, T)
    H = 2000
    first, second = registry.get("indrnn-adding", H, **options).init(jax.random.key(1), 2)
    assert first.W_x.shape == (2, H) and second.W_x.shape == (H, H)
    for layer, low in ((first, 0.0), (second, lo)):
        u, W_x = np.asarray(layer.u), np.asarray(layer.W_x)
        assert low <= u.min() and u.max() <= hi
        np.testing.assert_allclose(u.mean(), (low + hi) / 2, atol=4 * (hi - low) / np.sqrt(12 * H))
        np.testing.assert_allclose(W_x.std(), 0.001, rtol=4 * (0.5 / W_x.size) ** 0.5)
        assert not np.any(np.asarray(layer.b))

    # The forward at weights drawn here, some |u| past the bound so that the clamp acts.
    H, n = 6, 3
    cell = registry.get("indrnn-adding", H, **options)
    p = tuple(_params(H, F, seed, -1.5 * hi, 1.5 * hi) for F, seed in ((2, 2), (H, 3)))
    xs = np.asarray(jax.random.uniform(jax.random.key(4), (T, n, 2), jnp.float64))
    _, ys = rnnlab.scan(cell, p, jnp.asarray(xs))
    h = xs
    for layer in p:
        W_x, u, b = (np.asarray(a) for a in layer)
        h = indrnn_onlyrecurrent(clip_weight(u, hi), linear_overtime(W_x.T, b, h))
    assert np.abs(h[-1]).max() > 1e-3  # the oracle's last output is not all zeros
    np.testing.assert_allclose(np.asarray(ys), h, rtol=1e-12, atol=1e-14)


def test_get_for_length_gives_the_entry_the_runs_T():
    """registry.get_for_length passes T to a factory that takes seq_len (so long_range.py
    --lengths 1000 runs indrnn-adding at |u| <= 2^(1/1000)) and builds any other as get."""
    T = 1000
    cell = registry.get_for_length("indrnn-adding", 3, T)
    first, second = cell.init(jax.random.key(0), 2)
    assert u_lowbound(2, T) <= float(jnp.min(second.u)) <= float(jnp.max(second.u)) <= u_bound(2, T)
    # from h = 1 with zero input and bias the first layer steps to relu(clip(u)) = 2^(1/T)
    p = (first._replace(u=jnp.full(3, 1.5)), second)
    (h, _), _ = cell.step(p, (jnp.ones(3), jnp.zeros(3)), jnp.zeros(2))
    np.testing.assert_allclose(np.asarray(h), u_bound(2, T), rtol=1e-6)
    a = registry.get_for_length("lstm", 4, T).init(jax.random.key(0), 2)
    b = registry.get("lstm", 4).init(jax.random.key(0), 2)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="received 'nope'"):
        registry.get_for_length("nope", 4, T)
