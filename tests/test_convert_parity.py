"""Whole PyTorch and Keras layers, PyTorch and Keras not imported.

PyTorch: ``nn.RNN``/``nn.LSTM``/``nn.GRU`` of any ``num_layers`` and ``bidirectional``
(and ``proj_size`` for the LSTM) against a numpy transcription of PyTorch's documented
equations (gate order (i, f, g, o), ``x W_ih^T + b_ih + h W_hh^T + b_hh``; GRU (r, z, n)
with ``r * (W_hn h + b_hn)``; packed sequences: the backward direction starts at each
sequence's last valid step, padded outputs are 0). State dicts are made here with
PyTorch's key names and shapes. Keras: below, against Keras' equations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import close

import rnnlab
from rnnlab import convert, layers

GATES = {"lstm": 4, "gru": 3, "elman": 1}
FACTORY = {"lstm": rnnlab.lstm, "gru": rnnlab.gru, "elman": rnnlab.elman}
Tn, Bn, Fn, Hn = 6, 3, 2, 4


def _sig(x):
    return 1 / (1 + np.exp(-x))


def torch_state_dict(kind, num_layers, bidirectional, seed=0):
    rng = np.random.default_rng(seed)
    G, D = GATES[kind], 2 if bidirectional else 1
    sd = {}
    for k in range(num_layers):
        for suffix in ("", "_reverse")[:D]:
            in_size = Fn if k == 0 else D * Hn
            sd[f"weight_ih_l{k}{suffix}"] = rng.normal(0, 0.5, (G * Hn, in_size))
            sd[f"weight_hh_l{k}{suffix}"] = rng.normal(0, 0.5, (G * Hn, Hn))
            sd[f"bias_ih_l{k}{suffix}"] = rng.normal(0, 0.5, (G * Hn,))
            sd[f"bias_hh_l{k}{suffix}"] = rng.normal(0, 0.5, (G * Hn,))
    return sd


def torch_cell(kind, w_ih, w_hh, b_ih, b_hh, x, state):
    """One step of PyTorch's documented cell equations; ``state`` is h, or (h, c)."""
    if kind == "elman":
        h = np.tanh(x @ w_ih.T + b_ih + state @ w_hh.T + b_hh)
        return h, h
    if kind == "lstm":
        h, c = state
        gi, gf, gg, go = np.split(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh, 4, -1)
        c = _sig(gf) * c + _sig(gi) * np.tanh(gg)
        h = _sig(go) * np.tanh(c)
        return (h, c), h
    xr, xz, xn = np.split(x @ w_ih.T + b_ih, 3, -1)
    hr, hz, hn = np.split(state @ w_hh.T + b_hh, 3, -1)
    r, z = _sig(xr + hr), _sig(xz + hz)
    n = np.tanh(xn + r * hn)
    h = (1 - z) * n + z * state
    return h, h


def torch_module(kind, sd, xs, lengths, num_layers, bidirectional, h0, c0=None):
    """PyTorch's module on packed sequences: outputs [T, B, D*H] and h_n (, c_n)."""
    D = 2 if bidirectional else 1
    hn, cn = np.zeros_like(h0), None if c0 is None else np.zeros_like(c0)
    inp = xs
    for k in range(num_layers):
        out = np.zeros((Tn, Bn, D * Hn))
        for d in range(D):
            sfx = "_reverse" if d else ""
            w = [sd[f"{n}_l{k}{sfx}"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            i = k * D + d
            for b in range(Bn):
                state = h0[i, b] if c0 is None else (h0[i, b], c0[i, b])
                steps = range(lengths[b] - 1, -1, -1) if d else range(lengths[b])
                for t in steps:
                    state, y = torch_cell(kind, *w, inp[t, b], state)
                    out[t, b, d * Hn:(d + 1) * Hn] = y
                if c0 is None:
                    hn[i, b] = state
                else:
                    hn[i, b], cn[i, b] = state
        inp = out
    return inp, hn, cn


@pytest.mark.parametrize("kind, num_layers, bidirectional", [
    ("lstm", 2, True), ("gru", 2, True), ("elman", 3, False), ("lstm", 1, False),
    ("gru", 1, True),
])
def test_whole_module_equals_pytorch_equations(kind, num_layers, bidirectional):
    sd = torch_state_dict(kind, num_layers, bidirectional)
    rng = np.random.default_rng(1)
    D = 2 if bidirectional else 1
    xs = rng.normal(size=(Tn, Bn, Fn))
    lengths = np.array([Tn, 3, 1])
    h0 = rng.normal(0, 0.5, (num_layers * D, Bn, Hn))
    c0 = rng.normal(0, 0.5, h0.shape) if kind == "lstm" else None
    want_y, want_h, want_c = torch_module(kind, sd, xs, lengths, num_layers, bidirectional,
                                          h0, c0)

    params = convert.from_torch_rnn({k: v.astype(np.float32) for k, v in sd.items()}, kind)
    carry = convert.carries_from_torch(kind, h0.astype(np.float32),
                                       None if c0 is None else c0.astype(np.float32),
                                       bidirectional=bidirectional)
    finals, ys = layers.rnn(FACTORY[kind](Hn), params, jnp.asarray(xs, jnp.float32),
                            bidirectional=bidirectional, carry=carry,
                            lengths=jnp.asarray(lengths))
    close(ys, want_y, tol=1e-5)
    got = convert.carries_to_torch(kind, finals, bidirectional=bidirectional)
    if kind == "lstm":
        close(got, (want_h, want_c), tol=1e-5)
    else:
        close(got, want_h, tol=1e-5)
    # And back: the same state dict (LSTM/RNN biases summed into bias_ih).
    back = convert.to_torch_rnn(params, kind, bidirectional=bidirectional)
    assert set(back) == set(sd)
    for key in sd:
        if kind != "gru" and key.startswith("bias_ih"):
            close(back[key], sd[key] + sd[key.replace("bias_ih", "bias_hh")], tol=1e-5)
        elif kind != "gru" and key.startswith("bias_hh"):
            close(back[key], np.zeros_like(sd[key]))
        else:
            close(back[key], sd[key].astype(np.float32), tol=1e-6)


def test_carries_are_built_by_keyword_so_h_and_c_cannot_swap():
    h0 = np.ones((2, Bn, Hn))
    c0 = np.zeros((2, Bn, Hn))
    (fwd, bwd), = convert.carries_from_torch("lstm", h0, c0, bidirectional=True)
    assert np.all(fwd.h == 1) and np.all(fwd.c == 0) and np.all(bwd.h == 1)
    with pytest.raises(ValueError, match="c_0"):
        convert.carries_from_torch("lstm", h0)
    with pytest.raises(ValueError, match="c_0"):
        convert.carries_from_torch("gru", h0, c0)
    with pytest.raises(ValueError, match="h_0"):
        convert.carries_from_torch("gru", np.ones((3, Bn, Hn)), bidirectional=True)


def test_interlayer_dropout_only_with_a_key():
    sd = torch_state_dict("gru", 2, False)
    params = convert.from_torch_rnn({k: v.astype(np.float32) for k, v in sd.items()}, "gru")
    cell, xs = rnnlab.gru(Hn), jnp.ones((Tn, Bn, Fn))
    _, plain = layers.rnn(cell, params, xs)
    _, zero_p = layers.rnn(cell, params, xs, dropout=0.0, key=jax.random.key(0))
    _, dropped = layers.rnn(cell, params, xs, dropout=0.5, key=jax.random.key(0))
    _, again = layers.rnn(cell, params, xs, dropout=0.5, key=jax.random.key(0))
    close(zero_p, plain)
    close(dropped, again)  # deterministic given the key
    assert not np.allclose(dropped, plain)
    # The mask sits between the layers: the bottom layer's output times mask/(1-p) feeds
    # layer 1 (checked by running the two layers by hand with the same mask).
    _, y0 = rnnlab.scan(cell, params[0], xs)
    keep = jax.random.bernoulli(jax.random.fold_in(jax.random.key(0), 1), 0.5, y0.shape)
    _, want = rnnlab.scan(cell, params[1], jnp.where(keep, y0 / 0.5, 0))
    close(dropped, want)
    with pytest.raises(ValueError, match="dropout"):
        layers.rnn(cell, params, xs, dropout=1.0)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_projected_lstm_equals_pytorch_equations(bidirectional):
    """nn.LSTM(proj_size=P): h_t = W_hr (o * tanh(c_t)), h of size P (PyTorch's docs)."""
    P, K, D = 3, 2, 2 if bidirectional else 1
    rng = np.random.default_rng(4)
    sd = {}
    for k in range(K):
        for sfx in ("", "_reverse")[:D]:
            sd[f"weight_ih_l{k}{sfx}"] = rng.normal(0, 0.5, (4 * Hn, Fn if k == 0 else D * P))
            sd[f"weight_hh_l{k}{sfx}"] = rng.normal(0, 0.5, (4 * Hn, P))
            sd[f"bias_ih_l{k}{sfx}"] = rng.normal(0, 0.5, (4 * Hn,))
            sd[f"bias_hh_l{k}{sfx}"] = rng.normal(0, 0.5, (4 * Hn,))
            sd[f"weight_hr_l{k}{sfx}"] = rng.normal(0, 0.5, (P, Hn))
    xs = rng.normal(size=(Tn, Bn, Fn))
    lengths = np.array([Tn, 2, 5])
    h0 = rng.normal(0, 0.5, (K * D, Bn, P))
    c0 = rng.normal(0, 0.5, (K * D, Bn, Hn))
    hn, cn, inp = np.zeros_like(h0), np.zeros_like(c0), xs
    for k in range(K):
        out = np.zeros((Tn, Bn, D * P))
        for d in range(D):
            sfx, i = ("_reverse" if d else ""), k * D + d
            w_ih, w_hh, b_ih, b_hh, w_hr = (sd[f"{n}_l{k}{sfx}"] for n in (
                "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"))
            for b in range(Bn):
                h, c = h0[i, b], c0[i, b]
                for t in (range(lengths[b] - 1, -1, -1) if d else range(lengths[b])):
                    gi, gf, gg, go = np.split(inp[t, b] @ w_ih.T + b_ih + h @ w_hh.T + b_hh, 4)
                    c = _sig(gf) * c + _sig(gi) * np.tanh(gg)
                    h = w_hr @ (_sig(go) * np.tanh(c))
                    out[t, b, d * P:(d + 1) * P] = h
                hn[i, b], cn[i, b] = h, c
        inp = out
    params = convert.from_torch_rnn({k: v.astype(np.float32) for k, v in sd.items()}, "lstm")
    carry = convert.carries_from_torch("lstm", h0.astype(np.float32), c0.astype(np.float32),
                                       bidirectional=bidirectional)
    finals, ys = layers.rnn(rnnlab.lstmp(Hn, P), params, jnp.asarray(xs, jnp.float32),
                            bidirectional=bidirectional, carry=carry,
                            lengths=jnp.asarray(lengths))
    close(ys, inp, tol=1e-5)
    close(convert.carries_to_torch("lstm", finals, bidirectional=bidirectional), (hn, cn),
          tol=1e-5)
    with pytest.raises(ValueError, match="weight_hr"):
        convert.from_torch_rnn(sd, "gru")


# ----------------------------------------------------------------------------- Keras


def keras_layer(kind, weights, xs, mask, reset_after=True):
    """Keras 3's SimpleRNN/LSTM/GRU (return_sequences=True, return_state=True) from its
    documented equations: kernel [F, G*H], recurrent_kernel [H, G*H]; LSTM gates
    (i, f, c, o); GRU gates (z, r, h), ``h = z * h_prev + (1 - z) * hh``. At a masked
    step the states are carried and the output repeats the previous output."""
    K, R, b = weights
    H = R.shape[0]
    h = np.zeros((xs.shape[1], H))
    c = np.zeros_like(h)
    y_prev = np.zeros_like(h)
    ys = []
    for t in range(xs.shape[0]):
        x = xs[t]
        if kind == "elman":
            h_new = np.tanh(x @ K + h @ R + b)
            c_new, y = c, h_new
        elif kind == "lstm":
            i, f, g, o = np.split(x @ K + h @ R + b, 4, -1)
            c_new = _sig(f) * c + _sig(i) * np.tanh(g)
            h_new = _sig(o) * np.tanh(c_new)
            y = h_new
        else:
            Kz, Kr, Kh = np.split(K, 3, -1)
            Rz, Rr, Rh = np.split(R, 3, -1)
            bi, bh = (b[0], b[1]) if reset_after else (b, np.zeros_like(b))
            biz, bir, bih = np.split(bi, 3)
            bhz, bhr, bhh = np.split(bh, 3)
            z = _sig(x @ Kz + biz + h @ Rz + bhz)
            r = _sig(x @ Kr + bir + h @ Rr + bhr)
            if reset_after:
                hh = np.tanh(x @ Kh + bih + r * (h @ Rh + bhh))
            else:
                hh = np.tanh(x @ Kh + bih + (r * h) @ Rh)
            h_new = z * h + (1 - z) * hh
            c_new, y = c, h_new
        m = mask[t][:, None]
        h, c = np.where(m, h_new, h), np.where(m, c_new, c)
        y = np.where(m, y, y_prev)
        y_prev = y
        ys.append(y)
    return np.stack(ys), h, c


@pytest.mark.parametrize("kind, reset_after", [
    ("elman", True), ("lstm", True), ("gru", True), ("gru", False),
])
def test_from_keras_equals_keras_equations(kind, reset_after):
    rng = np.random.default_rng(2)
    G = GATES[kind]
    bias_shape = (2, G * Hn) if kind == "gru" and reset_after else (G * Hn,)
    weights = [rng.normal(0, 0.5, (Fn, G * Hn)), rng.normal(0, 0.5, (Hn, G * Hn)),
               rng.normal(0, 0.5, bias_shape)]
    xs = rng.normal(size=(Tn, Bn, Fn))
    lengths = np.array([Tn, 4, 1])
    mask = np.arange(Tn)[:, None] < lengths[None, :]
    want_y, want_h, want_c = keras_layer(kind, weights, xs, mask, reset_after)

    cell, params = convert.from_keras_cell([w.astype(np.float32) for w in weights], kind)
    final, ys = rnnlab.scan(cell, params, jnp.asarray(xs, jnp.float32),
                            lengths=jnp.asarray(lengths))
    # Equal at every valid step; rnnlab writes zeros where Keras repeats the last output.
    close(jnp.where(mask[..., None], ys, 0), np.where(mask[..., None], want_y, 0), tol=1e-5)
    assert np.all(np.asarray(ys)[~mask] == 0)
    if kind == "lstm":
        close(final, rnnlab.LSTMCarry(c=want_c, h=want_h), tol=1e-5)
    else:
        close(final, want_h, tol=1e-5)
    back = convert.to_keras(params, kind, reset_after=reset_after)
    for got, w in zip(back, weights, strict=True):
        close(got, w.astype(np.float32), tol=1e-6)


def test_keras_errors_name_the_argument():
    with pytest.raises(ValueError, match="get_weights"):
        convert.from_keras([np.zeros((2, 4))], "elman")
    with pytest.raises(ValueError, match="shape"):
        convert.from_keras([np.zeros((2, 8)), np.zeros((4, 8)), np.zeros(8)], "lstm")
    params = convert.from_keras([np.zeros((2, 12)), np.zeros((4, 12)), np.ones((2, 12))], "gru")
    with pytest.raises(ValueError, match="b_h"):
        convert.to_keras(params, "gru", reset_after=False)
