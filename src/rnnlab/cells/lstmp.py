"""The LSTM with a recurrent projection (PyTorch's ``proj_size``)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnlab import initializers
from rnnlab.cell import Cell
from rnnlab.cells.lstm import LSTMCarry
from rnnlab.validation import add_bias, check_batch_shape, check_input_size, check_positive_int

Array = jax.Array


class LSTMPParams(NamedTuple):
    W_x: Array  # [F, 4H] input weights, gate blocks (i, f, g, o)
    W_h: Array  # [P, 4H] recurrent weights on the projected state
    b: Array  # [4H] bias
    W_r: Array  # [H, P] projection


def lstmp(
    hidden_size: int,
    proj_size: int,
    *,
    forget_bias: float = 1.0,
    recurrent_init: str | initializers.Initializer = "lecun_normal",
    input_init: str | initializers.Initializer = "lecun_normal",
    param_dtype=jnp.float32,
) -> Cell:
    r"""LSTM with a projected hidden state (Sak et al. 2014; ``torch.nn.LSTM(proj_size=P)``).

    .. math::
        [i, f, g, o] &= x_t W_x + h_{t-1} W_h + b \\
        c_t &= \sigma(f) \odot c_{t-1} + \sigma(i) \odot \tanh(g) \\
        h_t &= (\sigma(o) \odot \tanh(c_t))\, W_r \in \mathbb R^P, \qquad y_t = h_t

    Params (:class:`LSTMPParams`): ``W_x [F, 4H]``, ``W_h [P, 4H]``, ``b [4H]``,
    ``W_r [H, P]`` (PyTorch's ``weight_hr`` transposed). Carry:
    :class:`rnnlab.LSTMCarry` with ``c [*batch, H]`` and ``h [*batch, P]``.

    Args:
      hidden_size: H, the cell state's size.
      proj_size: P, the hidden state's (and output's) size.
      forget_bias: initial forget-gate bias.
      recurrent_init: initialiser for ``W_h`` and ``W_r``.
      input_init: initialiser for ``W_x``.
      param_dtype: dtype of the parameters.

    References:
      Sak, Senior & Beaufays, "Long Short-Term Memory Based Recurrent Neural
      Network Architectures for Large Vocabulary Speech Recognition", arXiv:1402.1128, 2014.
    """
    check_positive_int(hidden_size, "hidden_size")
    check_positive_int(proj_size, "proj_size")
    H, P = hidden_size, proj_size
    w_h_init = initializers.get(recurrent_init, "recurrent_init")
    w_x_init = initializers.get(input_init, "input_init")

    def init(key, input_size: int) -> LSTMPParams:
        check_positive_int(input_size, "input_size")
        k_x, k_h, k_r = jax.random.split(key, 3)
        zeros = jnp.zeros((H,), param_dtype)
        return LSTMPParams(
            W_x=w_x_init(k_x, (input_size, 4 * H), param_dtype),
            W_h=w_h_init(k_h, (P, 4 * H), param_dtype),
            b=jnp.concatenate([zeros, zeros + forget_bias, zeros, zeros]),
            W_r=w_h_init(k_r, (H, P), param_dtype),
        )

    def initial_carry(params: LSTMPParams, batch_shape=()) -> LSTMCarry:
        batch_shape = check_batch_shape(batch_shape)
        H_, P_ = params.W_r.shape
        return LSTMCarry(c=jnp.zeros(batch_shape + (H_,), params.W_r.dtype),
                         h=jnp.zeros(batch_shape + (P_,), params.W_r.dtype))

    def step(params: LSTMPParams, carry: LSTMCarry, x: Array) -> tuple[LSTMCarry, Array]:
        check_input_size(x, params.W_x.shape[0])
        z = add_bias(x @ params.W_x + carry.h @ params.W_h, params.b)
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = (jax.nn.sigmoid(o) * jnp.tanh(c)) @ params.W_r
        return LSTMCarry(c=c, h=h), h

    return Cell(init, initial_carry, step)
