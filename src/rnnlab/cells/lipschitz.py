"""The Lipschitz RNN."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnlab import initializers
from rnnlab.cell import Cell, affine_cell
from rnnlab.validation import add_bias, check_batch_shape, check_input_size, check_positive_int

Array = jax.Array


class LipschitzParams(NamedTuple):
    U: Array  # [F, H] input weights (the paper's U, transposed)
    M_A: Array  # [H, H] parametrises the linear part A_beta
    M_W: Array  # [H, H] parametrises the nonlinear part W_beta
    b: Array  # [H] bias


def structured(M: Array, beta: float, gamma: float) -> Array:
    r""":math:`(1-\beta)(M + M^\top) + \beta(M - M^\top) - \gamma I`, ``[H, H]``."""
    eye = jnp.eye(M.shape[0], dtype=M.dtype)
    return (1 - beta) * (M + M.T) + beta * (M - M.T) - gamma * eye


def lipschitz(
    hidden_size: int,
    *,
    beta: float = 0.75,
    gamma_A: float = 0.001,
    gamma_W: float = 0.001,
    epsilon: float = 0.03,
    recurrent_std: float = 0.1,
    input_init: str | initializers.Initializer = "lecun_normal",
    param_dtype=jnp.float32,
) -> Cell:
    r"""Lipschitz RNN (Erichson, Azencot, Queiruga, Hodgkinson & Mahoney 2021).

    The continuous-time system :math:`\dot h = A_\beta h + \tanh(W_\beta h + U x + b)`
    with

    .. math::
        A_\beta = (1-\beta)(M_A + M_A^\top) + \beta(M_A - M_A^\top) - \gamma_A I, \qquad
        W_\beta = (1-\beta)(M_W + M_W^\top) + \beta(M_W - M_W^\top) - \gamma_W I,

    discretised by forward Euler with step :math:`\epsilon` (the paper's eq. 6;
    column vectors as in the paper, ``h @ A.T`` in the code):

    .. math:: h_t = h_{t-1} + \epsilon A_\beta h_{t-1}
                    + \epsilon \tanh(W_\beta h_{t-1} + U x_t + b), \qquad y_t = h_t

    The symmetric part of :math:`A_\beta` has eigenvalues scaled by
    :math:`1-\beta`, so for :math:`\beta` near 1 and :math:`\gamma_A > 0` the
    linear part is (nearly) dissipative; the paper's Lipschitz bound is on the
    continuous system (its Theorem 1), not a per-step bound on the discrete
    Jacobian, so the registry gives no ``decay_bound``. Defaults are the paper's
    for sequential MNIST (:math:`\beta = 0.75`, :math:`\gamma = 0.001`,
    :math:`\epsilon = 0.03`).

    Params (:class:`LipschitzParams`): ``U [F, H]``, ``M_A, M_W [H, H]`` with
    entries :math:`\mathcal N(0, \sigma^2/H)`, ``b [H]`` zeros.
    Carry: ``h [*batch, H]``, zeros initially.

    Args:
      hidden_size: H.
      beta: :math:`\beta \in [0, 1]`, the weight of the antisymmetric part.
      gamma_A, gamma_W: the diagonal shifts :math:`\gamma_A, \gamma_W`.
      epsilon: the Euler step :math:`\epsilon > 0`.
      recurrent_std: :math:`\sigma`, the scale of ``M_A`` and ``M_W``.
      input_init: initialiser for ``U``.
      param_dtype: dtype of the parameters.

    References:
      Erichson, Azencot, Queiruga, Hodgkinson & Mahoney, "Lipschitz Recurrent
      Neural Networks", ICLR 2021, arXiv:2006.12070.
    """
    check_positive_int(hidden_size, "hidden_size")
    if not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1]; received {beta!r}.")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive; received {epsilon!r}.")
    H = hidden_size
    u_init = initializers.get(input_init, "input_init")

    def init(key, input_size: int) -> LipschitzParams:
        check_positive_int(input_size, "input_size")
        k_u, k_a, k_w = jax.random.split(key, 3)
        scale = recurrent_std / jnp.sqrt(H)
        return LipschitzParams(
            U=u_init(k_u, (input_size, H), param_dtype),
            M_A=scale * jax.random.normal(k_a, (H, H), param_dtype),
            M_W=scale * jax.random.normal(k_w, (H, H), param_dtype),
            b=jnp.zeros((H,), param_dtype),
        )

    def initial_carry(params: LipschitzParams, batch_shape=()) -> Array:
        batch_shape = check_batch_shape(batch_shape)
        return jnp.zeros(batch_shape + params.b.shape, params.b.dtype)

    def preactivation(params: LipschitzParams, x: Array, h: Array) -> tuple[Array, Array]:
        check_input_size(x, params.U.shape[0])
        A = structured(params.M_A, beta, gamma_A)
        W = structured(params.M_W, beta, gamma_W)
        return h @ A.T, add_bias(x @ params.U, params.b) + h @ W.T

    def pointwise(g: tuple[Array, Array], h: Array) -> tuple[Array, Array]:
        linear, inner = g
        h = h + epsilon * linear + epsilon * jnp.tanh(inner)
        return h, h

    return affine_cell(init, initial_carry, preactivation, pointwise, hidden=lambda h: h)
