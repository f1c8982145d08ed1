"""The sLSTM of xLSTM: exponential gating with normaliser and stabiliser states."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnlab import initializers
from rnnlab.cell import Cell
from rnnlab.validation import (
    add_bias,
    check_batch_shape,
    check_choice,
    check_input_size,
    check_positive_int,
)

Array = jax.Array


class SLSTMParams(NamedTuple):
    W_x: Array  # [F, 4H] input weights, gate blocks (z, i, f, o)
    R: Array  # [4, K, H/K, H/K] block-diagonal recurrent weights, one block per gate and head
    b: Array  # [4H] bias, blocks (z, i, f, o)


class SLSTMCarry(NamedTuple):
    c: Array  # [*batch, H] cell state
    n: Array  # [*batch, H] normaliser state
    m: Array  # [*batch, H] stabiliser state (a running log-scale)
    h: Array  # [*batch, H] hidden state (the output)


def recurrent(params: SLSTMParams, h: Array) -> Array:
    """``h R`` with R block-diagonal over the heads: ``h [..., H] -> [..., 4H]``."""
    _, K, D, _ = params.R.shape
    hk = h.reshape(h.shape[:-1] + (K, D))
    out = jnp.einsum("...kd,gkde->...gke", hk, params.R)
    return out.reshape(h.shape[:-1] + (4 * K * D,))


def slstm(
    hidden_size: int,
    *,
    num_heads: int = 1,
    forget_gate: str = "sigmoid",
    forget_bias: float = 1.0,
    recurrent_init: str | initializers.Initializer = "orthogonal",
    input_init: str | initializers.Initializer = "lecun_normal",
    param_dtype=jnp.float32,
) -> Cell:
    r"""sLSTM (Beck et al. 2024, xLSTM): an LSTM with exponential gates, stabilised.

    .. math::
        [\tilde z, \tilde\imath, \tilde f, \tilde o] &= x_t W_x + h_{t-1} R + b \\
        \log f_t &= \log\sigma(\tilde f) \ \text{(sigmoid)} \quad\text{or}\quad
                    \tilde f \ \text{(exp)} \\
        m_t &= \max(\log f_t + m_{t-1},\ \tilde\imath) \\
        i'_t &= \exp(\tilde\imath - m_t), \qquad f'_t = \exp(\log f_t + m_{t-1} - m_t) \\
        c_t &= f'_t \odot c_{t-1} + i'_t \odot \tanh(\tilde z), \qquad
        n_t = f'_t \odot n_{t-1} + i'_t \\
        h_t &= \sigma(\tilde o) \odot c_t / n_t, \qquad y_t = h_t

    (the paper's eqs. 8-17). The stabiliser :math:`m_t` rescales :math:`c` and
    :math:`n` by the same factor :math:`e^{-m_t}`, so :math:`h_t` is what the
    unstabilised exponential gates :math:`i_t = e^{\tilde\imath}` give while no
    exponential overflows. With ``num_heads`` K > 1, ``R`` is block-diagonal:
    each head's units read only that head's previous hidden state.

    Params (:class:`SLSTMParams`): ``W_x [F, 4H]``, ``R [4, K, H/K, H/K]``
    (each block from ``recurrent_init``), ``b [4H]`` (forget block
    ``forget_bias``). Carry (:class:`SLSTMCarry`): ``c, n, m, h [*batch, H]``,
    zeros initially (at the first step :math:`n_1 = i'_1 > 0`).

    Args:
      hidden_size: H, a multiple of ``num_heads``.
      num_heads: K, the number of heads of the block-diagonal recurrence.
      forget_gate: ``"sigmoid"`` or ``"exp"`` (the paper allows both).
      forget_bias: initial forget-gate bias.
      recurrent_init: initialiser for each ``[H/K, H/K]`` block of ``R``.
      input_init: initialiser for ``W_x``.
      param_dtype: dtype of the parameters.

    References:
      Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp, Klambauer, Brandstetter &
      Hochreiter, "xLSTM: Extended Long Short-Term Memory", NeurIPS 2024,
      arXiv:2405.04517.
    """
    check_positive_int(hidden_size, "hidden_size")
    check_positive_int(num_heads, "num_heads")
    if hidden_size % num_heads:
        raise ValueError(
            f"hidden_size must be a multiple of num_heads; received hidden_size={hidden_size}, "
            f"num_heads={num_heads}."
        )
    check_choice(forget_gate, ("sigmoid", "exp"), "forget_gate")
    H, K = hidden_size, num_heads
    D = H // K
    r_init = initializers.get(recurrent_init, "recurrent_init")
    w_init = initializers.get(input_init, "input_init")

    def init(key, input_size: int) -> SLSTMParams:
        check_positive_int(input_size, "input_size")
        k_x, k_r = jax.random.split(key)
        W_x = jnp.concatenate(
            [w_init(k, (input_size, H), param_dtype) for k in jax.random.split(k_x, 4)], axis=1
        )
        R = jnp.stack([r_init(k, (D, D), param_dtype) for k in jax.random.split(k_r, 4 * K)])
        zeros = jnp.zeros((H,), param_dtype)
        return SLSTMParams(W_x=W_x, R=R.reshape(4, K, D, D),
                           b=jnp.concatenate([zeros, zeros, zeros + forget_bias, zeros]))

    def initial_carry(params: SLSTMParams, batch_shape=()) -> SLSTMCarry:
        batch_shape = check_batch_shape(batch_shape)
        zeros = jnp.zeros(batch_shape + (params.b.shape[0] // 4,), params.b.dtype)
        return SLSTMCarry(c=zeros, n=zeros, m=zeros, h=zeros)

    def step(params: SLSTMParams, carry: SLSTMCarry, x: Array) -> tuple[SLSTMCarry, Array]:
        check_input_size(x, params.W_x.shape[0])
        g = add_bias(x @ params.W_x, params.b) + recurrent(params, carry.h)
        z, i, f, o = jnp.split(g, 4, axis=-1)
        log_f = jax.nn.log_sigmoid(f) if forget_gate == "sigmoid" else f
        m = jnp.maximum(log_f + carry.m, i)
        i_s = jnp.exp(i - m)
        f_s = jnp.exp(log_f + carry.m - m)
        c = f_s * carry.c + i_s * jnp.tanh(z)
        n = f_s * carry.n + i_s
        h = jax.nn.sigmoid(o) * c / n
        return SLSTMCarry(c=c, n=n, m=m, h=h), h

    return Cell(init, initial_carry, step)
