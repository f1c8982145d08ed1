"""The layer-normalised LSTM."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnlab import initializers
from rnnlab.cell import Cell
from rnnlab.cells.lstm import LSTMCarry
from rnnlab.validation import add_bias, check_batch_shape, check_input_size, check_positive_int

Array = jax.Array


class LNLSTMParams(NamedTuple):
    W_x: Array  # [F, 4H] input weights, gate blocks (i, f, g, o)
    W_h: Array  # [H, 4H] recurrent weights, same blocks
    b: Array  # [4H] bias
    gain_x: Array  # [4H] LN gain on x W_x (alpha_2 in the paper)
    gain_h: Array  # [4H] LN gain on h W_h (alpha_1)
    gain_c: Array  # [H] LN gain on c_t (alpha_3)
    bias_c: Array  # [H] LN bias on c_t (beta_3)


def layer_norm(a: Array, gain: Array, bias: Array | None, eps: float) -> Array:
    r""":math:`g \odot (a - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta` over the last axis."""
    mu = jnp.mean(a, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(a - mu), axis=-1, keepdims=True)
    out = (a - mu) * jax.lax.rsqrt(var + eps)
    out = out * gain.reshape((1,) * (a.ndim - 1) + gain.shape)
    return out if bias is None else add_bias(out, bias)


def lnlstm(
    hidden_size: int,
    *,
    forget_bias: float = 1.0,
    eps: float = 1e-5,
    recurrent_init: str | initializers.Initializer = "orthogonal",
    input_init: str | initializers.Initializer = "lecun_normal",
    param_dtype=jnp.float32,
) -> Cell:
    r"""LSTM with layer normalisation (Ba, Kiros & Hinton 2016).

    .. math::
        [i, f, g, o] &= \mathrm{LN}(h_{t-1} W_h; \alpha_1) + \mathrm{LN}(x_t W_x; \alpha_2) + b \\
        c_t &= \sigma(f) \odot c_{t-1} + \sigma(i) \odot \tanh(g) \\
        h_t &= \sigma(o) \odot \tanh(\mathrm{LN}(c_t; \alpha_3, \beta_3)), \qquad y_t = h_t

    with :math:`\mathrm{LN}(a; \alpha, \beta) = \alpha \odot (a - \mu(a)) /
    \sqrt{\sigma^2(a) + \epsilon} + \beta` over the features (the paper's
    eqs. 20-22: the pre-activations are normalised over all 4H gates at once,
    each of the two terms without its own bias, since ``b`` holds it). Gate
    blocks in PyTorch's order (i, f, g, o), as :func:`rnnlab.lstm`.

    Params (:class:`LNLSTMParams`): ``W_x [F, 4H]``, ``W_h [H, 4H]``, ``b [4H]``
    (forget block ``forget_bias``), gains ``gain_x, gain_h [4H]`` and ``gain_c
    [H]`` ones, ``bias_c [H]`` zeros. Carry: :class:`rnnlab.LSTMCarry` ``(c, h)``.

    Args:
      hidden_size: H.
      forget_bias: initial forget-gate bias.
      eps: the normaliser's :math:`\epsilon`.
      recurrent_init: initialiser for each ``[H, H]`` block of ``W_h``.
      input_init: initialiser for ``W_x``.
      param_dtype: dtype of the parameters.

    References:
      Ba, Kiros & Hinton, "Layer Normalization", arXiv:1607.06450, 2016.
    """
    check_positive_int(hidden_size, "hidden_size")
    if not eps > 0:
        raise ValueError(f"eps must be positive; received {eps!r}.")
    H = hidden_size
    w_h_init = initializers.get(recurrent_init, "recurrent_init")
    w_x_init = initializers.get(input_init, "input_init")

    def init(key, input_size: int) -> LNLSTMParams:
        check_positive_int(input_size, "input_size")
        k_x, k_h = jax.random.split(key)
        W_h = jnp.concatenate(
            [w_h_init(k, (H, H), param_dtype) for k in jax.random.split(k_h, 4)], axis=1
        )
        W_x = jnp.concatenate(
            [w_x_init(k, (input_size, H), param_dtype) for k in jax.random.split(k_x, 4)], axis=1
        )
        zeros, ones = jnp.zeros((H,), param_dtype), jnp.ones((H,), param_dtype)
        return LNLSTMParams(
            W_x=W_x, W_h=W_h, b=jnp.concatenate([zeros, zeros + forget_bias, zeros, zeros]),
            gain_x=jnp.ones((4 * H,), param_dtype), gain_h=jnp.ones((4 * H,), param_dtype),
            gain_c=ones, bias_c=zeros,
        )

    def initial_carry(params: LNLSTMParams, batch_shape=()) -> LSTMCarry:
        batch_shape = check_batch_shape(batch_shape)
        zeros = jnp.zeros(batch_shape + params.W_h.shape[:1], params.W_h.dtype)
        return LSTMCarry(c=zeros, h=zeros)

    def step(params: LNLSTMParams, carry: LSTMCarry, x: Array) -> tuple[LSTMCarry, Array]:
        check_input_size(x, params.W_x.shape[0])
        z = (layer_norm(carry.h @ params.W_h, params.gain_h, None, eps)
             + layer_norm(x @ params.W_x, params.gain_x, None, eps))
        i, f, g, o = jnp.split(add_bias(z, params.b), 4, axis=-1)
        c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(layer_norm(c, params.gain_c, params.bias_c, eps))
        return LSTMCarry(c=c, h=h), h

    return Cell(init, initial_carry, step)
