"""AntisymmetricRNN against numpy transcriptions of two public implementations; the authors
(Chang, Chen, Haber & Chi, ICLR 2019) published no code.

* plain cell: erichson/LipschitzRNN (the Lipschitz RNN authors' baseline, commit
  df6552e89fb9aacd086a93dadca624d2ce62ace3), models.py, RnnModels.forward with
  model='asymRNN': ``W = C - C^T - gamma I`` (once, at i == 0) and
  ``h <- h + eps * tanh(h @ W + E(x))``, row-vector states as in rnnlab, so ``C`` is
  rnnlab's ``W`` as it stands; ``E.weight = V^T``, ``E.bias = b``.
* plain and gated cells: MartinuzziFrancesco/torchrecurrent,
  torchrecurrent/cells/antisymmetricrnn_cell.py (stored version at commit
  012befd0c8aa5a770d82f1c2653aa42516cec16b), AntisymmetricRNNCell.forward and
  GatedAntisymmetricRNNCell.forward with _compute_asym: ``M = weight_hh - weight_hh^T -
  gamma I`` applied as ``state @ M^T`` (the paper's column-vector ``M h``), so
  ``weight_hh = W^T``; biases bias_ih and bias_hh, whose sum is rnnlab's ``b``; in the
  gated cell ``x @ weight_ih^T + bias_ih`` is chunked into (gate, candidate), bias_hh
  enters the candidate only, and gate and candidate share ``M``. rnnlab's blocks are
  (candidate, gate), so ``weight_ih = [V_gate^T; V_cand^T]``. The Julia package
  MartinuzziFrancesco/RecurrentLayers.jl (src/cells/antisymmetricrnn_cell.jl) computes the
  same two cells.

Both agree with the paper's equations (plain: h_t = h_{t-1} + eps tanh((W - W^T - gamma I)
h_{t-1} + V x_t + b); gated: z_t = sigma((W - W^T - gamma I) h_{t-1} + V_z x_t + b_z),
h_t = h_{t-1} + eps z_t * tanh((W - W^T - gamma I) h_{t-1} + V_h x_t + b_h)), which a third
transcription below, written from the paper in its column-vector form, checks too."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnlab


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def reference_lipschitzrnn_asym(E_weight, E_bias, C, x, *, gamma, eps):
    """erichson/LipschitzRNN, model='asymRNN'. x [batch, T, F]; returns h [batch, T, H]."""
    h = np.zeros((x.shape[0], C.shape[0]))
    hs = []
    for i in range(x.shape[1]):
        z = x[:, i, :] @ E_weight.T + E_bias
        if i == 0:
            W = C - C.T - gamma * np.eye(C.shape[0])
        h = h + eps * np.tanh(h @ W + z)
        hs.append(h)
    return np.stack(hs, axis=1)


def _compute_asym(weight_hh, gamma):
    return weight_hh - weight_hh.T - gamma * np.eye(weight_hh.shape[0])


def torchrecurrent_cell(weight_ih, weight_hh, bias_ih, bias_hh, inp, state, *, eps, gamma):
    """AntisymmetricRNNCell.forward (batched)."""
    recurrent_matrix = _compute_asym(weight_hh, gamma)
    pre_act = inp @ weight_ih.T + bias_ih + state @ recurrent_matrix.T + bias_hh
    return state + eps * np.tanh(pre_act)


def torchrecurrent_gated_cell(weight_ih, weight_hh, bias_ih, bias_hh, inp, state, *, eps, gamma):
    """GatedAntisymmetricRNNCell.forward (batched)."""
    weights_ih = inp @ weight_ih.T + bias_ih
    weight_ih_1, weight_ih_2 = np.split(weights_ih, 2, axis=1)
    recurrent_matrix = _compute_asym(weight_hh, gamma)
    pre_act = weight_ih_2 + state @ recurrent_matrix.T + bias_hh
    input_gate = _sigmoid(weight_ih_1 + state @ recurrent_matrix.T)
    return state + eps * input_gate * np.tanh(pre_act)


def torchrecurrent_layer(cell_fn, weights, xs, **kw):
    """The layer's loop over time (batch_first=False: xs [T, batch, F])."""
    state = np.zeros((xs.shape[1], weights[1].shape[0]))
    out = []
    for x in xs:
        state = cell_fn(*weights, x, state, **kw)
        out.append(state)
    return np.stack(out)


def paper_cell(W_h, V_h, b_h, xs, *, eps, gamma, V_z=None, b_z=None):
    """The paper's equations, column vectors: one sequence xs [T, F] -> h [T, H]."""
    M = W_h - W_h.T - gamma * np.eye(W_h.shape[0])
    h, out = np.zeros(W_h.shape[0]), []
    for x in xs:
        cand = np.tanh(M @ h + V_h @ x + b_h)
        h = h + eps * (cand if V_z is None else _sigmoid(M @ h + V_z @ x + b_z) * cand)
        out.append(h)
    return np.stack(out)


def _case(gated, eps, gamma, std, seed=0, H=5, F=3, T=11, batch=4):
    cell = rnnlab.antisymmetric(
        H, epsilon=eps, gamma=gamma, gated=gated, recurrent_std=std, param_dtype=jnp.float64
    )
    k_p, k_b, k_x = jax.random.split(jax.random.key(seed), 3)
    p = cell.init(k_p, F)
    p = p._replace(b=0.5 * jax.random.normal(k_b, p.b.shape, jnp.float64))
    xs = jax.random.normal(k_x, (T, batch, F), jnp.float64)
    return cell, p, xs


CASES = [(0.1, 0.01, 1.0), (0.7, 0.3, 2.0), (1.0, 0.0, 1.5)]  # (eps, gamma, recurrent_std)


@pytest.mark.parametrize("eps, gamma, std", CASES)
def test_plain_equals_the_lipschitzrnn_asymrnn(x64, eps, gamma, std):
    cell, p, xs = _case(False, eps, gamma, std)
    final, ys = rnnlab.scan(cell, p, xs)
    V, W, b = (np.asarray(a) for a in p)
    want = reference_lipschitzrnn_asym(
        V.T, b, W, np.swapaxes(np.asarray(xs), 0, 1), gamma=gamma, eps=eps
    )
    want = np.swapaxes(want, 0, 1)
    np.testing.assert_allclose(np.asarray(ys), want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(final), want[-1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("eps, gamma, std", CASES)
def test_plain_equals_torchrecurrent(x64, eps, gamma, std):
    cell, p, xs = _case(False, eps, gamma, std, seed=1)
    final, ys = rnnlab.scan(cell, p, xs)
    V, W, b = (np.asarray(a) for a in p)
    bias_hh = 0.25 * np.cos(np.arange(b.size))  # any split of b into bias_ih + bias_hh
    weights = (V.T, W.T, b - bias_hh, bias_hh)
    want = torchrecurrent_layer(torchrecurrent_cell, weights, np.asarray(xs), eps=eps, gamma=gamma)
    np.testing.assert_allclose(np.asarray(ys), want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(final), want[-1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("eps, gamma, std", CASES)
def test_gated_equals_torchrecurrent(x64, eps, gamma, std):
    cell, p, xs = _case(True, eps, gamma, std, seed=2)
    final, ys = rnnlab.scan(cell, p, xs)
    V, W, b = (np.asarray(a) for a in p)
    H = W.shape[0]
    V_cand, V_gate = V[:, :H], V[:, H:]  # rnnlab's blocks: (candidate, gate)
    b_cand, b_gate = b[:H], b[H:]
    bias_hh = 0.25 * np.cos(np.arange(H))  # the reference adds bias_hh to the candidate only
    weight_ih = np.concatenate([V_gate.T, V_cand.T], axis=0)  # [2H, F]: chunks (gate, candidate)
    bias_ih = np.concatenate([b_gate, b_cand - bias_hh])
    weights = (weight_ih, W.T, bias_ih, bias_hh)
    want = torchrecurrent_layer(
        torchrecurrent_gated_cell, weights, np.asarray(xs), eps=eps, gamma=gamma
    )
    np.testing.assert_allclose(np.asarray(ys), want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(final), want[-1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("gated", [False, True])
def test_both_equal_the_papers_equations(x64, gated):
    """Column vectors: the paper's W_h is rnnlab's W^T, V_h, V_z its V blocks transposed."""
    eps, gamma = 0.6, 0.2
    cell, p, xs = _case(gated, eps, gamma, 2.0, seed=3)
    _, ys = rnnlab.scan(cell, p, xs)
    V, W, b = (np.asarray(a) for a in p)
    H = W.shape[0]
    for k in range(xs.shape[1]):
        x_k = np.asarray(xs[:, k])
        if gated:
            want = paper_cell(
                W.T, V[:, :H].T, b[:H], x_k, eps=eps, gamma=gamma, V_z=V[:, H:].T, b_z=b[H:]
            )
        else:
            want = paper_cell(W.T, V.T, b, x_k, eps=eps, gamma=gamma)
        np.testing.assert_allclose(np.asarray(ys[:, k]), want, rtol=1e-12, atol=1e-14)
