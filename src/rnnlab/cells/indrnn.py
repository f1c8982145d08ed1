"""The independently recurrent neural network (IndRNN)."""

from __future__ import annotations

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

_ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh}


class IndRNNParams(NamedTuple):
    W_x: Array  # [F, H] input weights
    u: Array  # [H] elementwise recurrent weights
    b: Array  # [H] bias


def recurrent_weights(params: IndRNNParams, recurrent_max: float | None) -> Array:
    """``u`` clipped to ``[-recurrent_max, recurrent_max]`` (unchanged for None), ``[H]``."""
    if recurrent_max is None:
        return params.u
    return jnp.clip(params.u, -recurrent_max, recurrent_max)


def indrnn(
    hidden_size: int,
    *,
    nonlinearity: str = "relu",
    recurrent_max: float | None = None,
    recurrent_min: float = 0.0,
    input_init: str | initializers.Initializer = "lecun_normal",
    param_dtype=jnp.float32,
) -> Cell:
    r"""IndRNN: each unit recurs on itself only (Li et al. 2018).

    .. math::
        h_t = \phi(x_t W_x + \tilde u \odot h_{t-1} + b), \qquad
        \tilde u = \mathrm{clip}(u, -u_{\max}, u_{\max}), \qquad y_t = h_t

    Because the recurrence is elementwise,
    :math:`\partial h_t / \partial h_{t-1} = \mathrm{diag}(\phi'_t \tilde u)`, and
    with :math:`|\phi'| \le 1` (ReLU, tanh)
    :math:`\|\partial h_{t+k} / \partial h_t\|_2 \le \max_j |\tilde u_j|^k`
    (attained by active ReLU units). The paper's constraint keeps gradients from
    exploding over T steps by :math:`|u_j| \le \gamma^{1/T}`; pass
    ``recurrent_max=gamma ** (1 / T)`` (the paper uses :math:`\gamma = 2` for ReLU).
    We apply it as a clip in the step rather than as the authors' code does (it
    clamps the stored ``u`` before every batch), so the constraint holds for any
    optimiser. The forward pass is the same; the gradient is not: an entry past
    the bound gets zero gradient here and stays there, whereas the clamped weight
    sits on the bound, still gets the gradient there and can move back inside. To
    train as the code does, clamp after each update,
    ``params._replace(u=jnp.clip(params.u, -m, m))``, and build the cell without
    ``recurrent_max``.

    Params (:class:`IndRNNParams`): ``W_x [F, H]``, ``u [H]`` drawn from
    ``U[recurrent_min, recurrent_max or 1]``, ``b [H]`` zeros.
    Carry: ``h [*batch, H]``, zeros initially.

    Args:
      hidden_size: H.
      nonlinearity: ``"relu"`` (the paper's) or ``"tanh"``.
      recurrent_max: the bound :math:`u_{\max} > 0` on ``|u|``, or None (no clip).
      recurrent_min: lower end of ``u``'s uniform initialisation (the paper's
        long-memory setting initialises ``|u| >= (1/2)^{1/T}``).
      input_init: initialiser for ``W_x``.
      param_dtype: dtype of the parameters.

    References:
      Li, Li, Cook, Zhu & Gao, "Independently Recurrent Neural Network (IndRNN):
      Building A Longer and Deeper RNN", CVPR 2018, arXiv:1803.04831.
    """
    check_positive_int(hidden_size, "hidden_size")
    check_choice(nonlinearity, tuple(_ACTIVATIONS), "nonlinearity")
    if recurrent_max is not None and not recurrent_max > 0:
        raise ValueError(f"recurrent_max must be positive or None; received {recurrent_max!r}.")
    high = 1.0 if recurrent_max is None else float(recurrent_max)
    if not 0.0 <= recurrent_min <= high:
        raise ValueError(
            f"recurrent_min must be in [0, {high}] (recurrent_max, or 1); received "
            f"{recurrent_min!r}."
        )
    act = _ACTIVATIONS[nonlinearity]
    w_x_init = initializers.get(input_init, "input_init")

    def init(key, input_size: int) -> IndRNNParams:
        check_positive_int(input_size, "input_size")
        k_x, k_u = jax.random.split(key)
        return IndRNNParams(
            W_x=w_x_init(k_x, (input_size, hidden_size), param_dtype),
            u=jax.random.uniform(k_u, (hidden_size,), param_dtype, recurrent_min, high),
            b=jnp.zeros((hidden_size,), param_dtype),
        )

    def initial_carry(params: IndRNNParams, batch_shape=()) -> Array:
        batch_shape = check_batch_shape(batch_shape)
        return jnp.zeros(batch_shape + params.u.shape, params.u.dtype)

    def preactivation(params: IndRNNParams, x: Array, h: Array) -> Array:
        check_input_size(x, params.W_x.shape[0])
        u = recurrent_weights(params, recurrent_max)
        return add_bias(x @ params.W_x, params.b) + h * u.reshape((1,) * (h.ndim - 1) + u.shape)

    def pointwise(z: Array, h: Array) -> tuple[Array, Array]:
        h = act(z)
        return h, h

    return affine_cell(init, initial_carry, preactivation, pointwise, hidden=lambda h: h)
