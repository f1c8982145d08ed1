"""Long short-term memory."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from rnnlab import initializers
from rnnlab.cell import Cell, affine_cell
from rnnlab.validation import add_bias, check_batch_shape, check_input_size, check_positive_int

Array = jax.Array


class LSTMParams(NamedTuple):
    W_x: Array  # [F, 4H] input weights, gate blocks in order (i, f, g, o)
    W_h: Array  # [H, 4H] recurrent weights, same block order
    b: Array  # [4H] bias, same block order


class LSTMCarry(NamedTuple):
    c: Array  # [*batch, H] cell state
    h: Array  # [*batch, H] hidden state (the output)


#: The one per-step value the LSTM's backward pass reads back from memory (the
#: ``jax.checkpoint`` name in its step): the matmul result ``[x, h] @ [W_x; W_h]``.
SAVED = ("rnnlab.lstm.z",)


def lstm(
    hidden_size: int,
    *,
    forget_bias: float = 1.0,
    chrono_tmax: float | None = None,
    recurrent_init: str | initializers.Initializer = "orthogonal",
    input_init: str | initializers.Initializer = "lecun_normal",
    param_dtype=jnp.float32,
) -> Cell:
    r"""LSTM with a forget gate (Hochreiter & Schmidhuber 1997; Gers et al. 2000).

    .. math::
        [i, f, g, o] &= x_t W_x + h_{t-1} W_h + b \\
        c_t &= \sigma(f) \odot c_{t-1} + \sigma(i) \odot \tanh(g) \\
        h_t &= \sigma(o) \odot \tanh(c_t), \qquad y_t = h_t

    The four gates are fused into one ``[., 4H]`` matmul, blocks in PyTorch's
    order (input, forget, cell, output).

    Params (:class:`LSTMParams`): ``W_x [F, 4H]``, ``W_h [H, 4H]``, ``b [4H]``.
    Carry (:class:`LSTMCarry`): ``c [*batch, H]``, ``h [*batch, H]``, zeros initially.

    Args:
      hidden_size: H.
      forget_bias: initial value of the forget-gate bias. 1.0 by default
        (Jozefowicz et al. 2015); 0.0 gives the "textbook" LSTM whose memory
        decays by ~1/2 per step at initialisation.
      chrono_tmax: if given, chrono initialisation (Tallec & Ollivier 2018):
        ``b_f ~ log(U[1, chrono_tmax - 1])`` and ``b_i = -b_f``, so that the
        memory time-scales span ``[1, chrono_tmax]``. Overrides ``forget_bias``.
      recurrent_init: initialiser for each ``[H, H]`` block of ``W_h``.
      input_init: initialiser for ``W_x``.
      param_dtype: dtype of the parameters.

    References:
      Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural Computation 1997.
      Gers, Schmidhuber & Cummins, "Learning to forget", Neural Computation 2000.
      Jozefowicz, Zaremba & Sutskever, "An Empirical Exploration of Recurrent
      Network Architectures", ICML 2015.
      Tallec & Ollivier, "Can recurrent neural networks warp time?", ICLR 2018.
    """
    check_positive_int(hidden_size, "hidden_size")
    if chrono_tmax is not None and not chrono_tmax > 2:
        raise ValueError(f"chrono_tmax must be > 2 (or None); received {chrono_tmax!r}.")
    H = hidden_size
    w_h_init = initializers.get(recurrent_init, "recurrent_init")
    w_x_init = initializers.get(input_init, "input_init")

    def init(key, input_size: int) -> LSTMParams:
        check_positive_int(input_size, "input_size")
        k_x, k_h, k_b = jax.random.split(key, 3)
        # One initialiser call per gate block, so that e.g. each [H, H] recurrent
        # block is itself orthogonal (as in flax and Keras).
        W_h = jnp.concatenate(
            [w_h_init(k, (H, H), param_dtype) for k in jax.random.split(k_h, 4)], axis=1
        )
        W_x = jnp.concatenate(
            [w_x_init(k, (input_size, H), param_dtype) for k in jax.random.split(k_x, 4)],
            axis=1,
        )
        if chrono_tmax is None:
            b_f = jnp.full((H,), forget_bias, param_dtype)
            b_i = jnp.zeros((H,), param_dtype)
        else:
            b_f = jnp.log(
                jax.random.uniform(k_b, (H,), param_dtype, minval=1.0, maxval=chrono_tmax - 1)
            )
            b_i = -b_f
        zeros = jnp.zeros((H,), param_dtype)
        return LSTMParams(W_x=W_x, W_h=W_h, b=jnp.concatenate([b_i, b_f, zeros, zeros]))

    def initial_carry(params: LSTMParams, batch_shape=()) -> LSTMCarry:
        batch_shape = check_batch_shape(batch_shape)
        zeros = jnp.zeros(batch_shape + params.W_h.shape[:1], params.W_h.dtype)
        return LSTMCarry(c=zeros, h=zeros)

    def preactivation(params: LSTMParams, x: Array, h: Array) -> Array:
        check_input_size(x, params.W_x.shape[0])
        # One matmul over [x, h] rather than two: faster on CPU at our sizes
        # (docs/performance.md). XLA hoists the weight concatenation out of the scan.
        xh = jnp.concatenate([x, h], axis=-1)
        z = xh @ jnp.concatenate([params.W_x, params.W_h], axis=0)
        # The one value the backward pass keeps per step (SAVED, checkpoint_policy below).
        return add_bias(checkpoint_name(z, SAVED[0]), params.b)  # [..., 4H]

    def pointwise(z: Array, carry: LSTMCarry) -> tuple[LSTMCarry, Array]:
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return LSTMCarry(c=c, h=h), h

    # The backward pass keeps only z per step and recomputes the gates from it;
    # plain autodiff would store every gate's value and derivative factors.
    return affine_cell(
        init, initial_carry, preactivation, pointwise, hidden=lambda carry: carry.h,
        checkpoint_policy=jax.checkpoint_policies.save_only_these_names(*SAVED),
    )
