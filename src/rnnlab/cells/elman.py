"""The Elman (vanilla) RNN and the IRNN."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnlab import initializers
from rnnlab.cell import Cell, affine_cell
from rnnlab.validation import (
    add_bias,
    check_batch_shape,
    check_choice,
    check_input_size,
    check_positive_int,
)

Array = jax.Array

NONLINEARITIES: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
}


class ElmanParams(NamedTuple):
    W_x: Array  # [F, H] input weights
    W_h: Array  # [H, H] recurrent weights
    b: Array  # [H] bias


def elman(
    hidden_size: int,
    *,
    nonlinearity: str = "tanh",
    recurrent_init: str | initializers.Initializer = "orthogonal",
    input_init: str | initializers.Initializer = "lecun_normal",
    bias_init: str | initializers.Initializer = "zeros",
    param_dtype=jnp.float32,
) -> Cell:
    r"""Elman's simple recurrent network (Elman 1990).

    .. math::
        h_t = \phi(x_t W_x + h_{t-1} W_h + b), \qquad y_t = h_t

    with :math:`\phi` = tanh or ReLU. Row-vector convention: ``x @ W`` (as in
    flax's ``Dense``; PyTorch stores the transposes).

    Params (:class:`ElmanParams`): ``W_x [F, H]``, ``W_h [H, H]``, ``b [H]``.
    Carry: ``h [*batch, H]``, zeros initially.

    Args:
      hidden_size: H.
      nonlinearity: ``"tanh"`` or ``"relu"``.
      recurrent_init: initialiser for ``W_h`` (name or callable). The default
        ``"orthogonal"`` gives spectral radius 1; pass
        ``initializers.orthogonal(scale=rho)`` for radius ``rho``, or
        ``initializers.spectral_normal(g)`` for the random ``N(0, g^2/H)`` ensemble.
      input_init: initialiser for ``W_x``.
      bias_init: initialiser for ``b``.
      param_dtype: dtype of the parameters (and so of the carry).

    References:
      Elman, "Finding structure in time", Cognitive Science 1990.
    """
    check_positive_int(hidden_size, "hidden_size")
    check_choice(nonlinearity, tuple(NONLINEARITIES), "nonlinearity")
    act = NONLINEARITIES[nonlinearity]
    w_h_init = initializers.get(recurrent_init, "recurrent_init")
    w_x_init = initializers.get(input_init, "input_init")
    b_init = initializers.get(bias_init, "bias_init")

    def init(key, input_size: int) -> ElmanParams:
        check_positive_int(input_size, "input_size")
        k_x, k_h, k_b = jax.random.split(key, 3)
        return ElmanParams(
            W_x=w_x_init(k_x, (input_size, hidden_size), param_dtype),
            W_h=w_h_init(k_h, (hidden_size, hidden_size), param_dtype),
            b=b_init(k_b, (hidden_size,), param_dtype),
        )

    def initial_carry(params: ElmanParams, batch_shape=()) -> Array:
        batch_shape = check_batch_shape(batch_shape)
        return jnp.zeros(batch_shape + params.W_h.shape[:1], params.W_h.dtype)

    def preactivation(params: ElmanParams, x: Array, h: Array) -> Array:
        check_input_size(x, params.W_x.shape[0])
        if params.W_x.shape[0] == 1:
            # One input feature: x W_x is an outer product, and two matmuls beat one
            # over [x, h] on CPU (docs/performance.md).
            return add_bias(x @ params.W_x, params.b) + h @ params.W_h
        # One matmul over [x, h] rather than two (see rnnlab.lstm).
        xh = jnp.concatenate([x, h], axis=-1)
        return add_bias(xh @ jnp.concatenate([params.W_x, params.W_h], axis=0), params.b)

    def pointwise(z: Array, h: Array) -> tuple[Array, Array]:
        h = act(z)
        return h, h

    return affine_cell(init, initial_carry, preactivation, pointwise, hidden=lambda h: h)


def irnn(
    hidden_size: int,
    *,
    recurrent_scale: float = 1.0,
    input_std: float = 0.001,
    param_dtype=jnp.float32,
) -> Cell:
    r"""IRNN: a ReLU Elman RNN with identity recurrent weights (Le et al. 2015).

    .. math:: h_t = \mathrm{relu}(x_t W_x + h_{t-1} W_h + b), \quad W_h(0) = s I,\ b(0) = 0

    Params and carry as :func:`elman`. ``W_x`` is drawn from
    ``N(0, input_std^2)`` (the paper uses 0.001).

    Args:
      hidden_size: H.
      recurrent_scale: s, the scale of the identity (Le et al. also try 0.01 I
        for the "np-RNN"-like small-init baseline).
      input_std: standard deviation of the input weights.
      param_dtype: dtype of the parameters.

    References:
      Le, Jaitly & Hinton, "A Simple Way to Initialize Recurrent Networks of
      Rectified Linear Units", arXiv:1504.00941, 2015.
    """
    return elman(
        hidden_size,
        nonlinearity="relu",
        recurrent_init=initializers.identity(recurrent_scale),
        input_init=initializers.normal(input_std),
        bias_init="zeros",
        param_dtype=param_dtype,
    )
