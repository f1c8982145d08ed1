"""The coupled oscillatory RNN (coRNN)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnlab import initializers
from rnnlab.cell import Cell, affine_cell
from rnnlab.validation import add_bias, check_batch_shape, check_input_size, check_positive_int

Array = jax.Array


class CoRNNParams(NamedTuple):
    V: Array  # [F, H] input weights
    W: Array  # [H, H] weights on the position y
    W_z: Array  # [H, H] weights on the velocity z (the paper's script W)
    b: Array  # [H] bias


class CoRNNCarry(NamedTuple):
    y: Array  # [*batch, H] position (the output)
    z: Array  # [*batch, H] velocity


def cornn(
    hidden_size: int,
    *,
    dt: float = 0.042,
    gamma: float = 2.7,
    epsilon: float = 4.7,
    recurrent_init: str | initializers.Initializer = "lecun_normal",
    input_init: str | initializers.Initializer = "lecun_normal",
    bias_init: str | initializers.Initializer = "zeros",
    param_dtype=jnp.float32,
) -> Cell:
    r"""Coupled oscillatory RNN (Rusch & Mishra 2021): a network of damped, driven oscillators.

    The second-order ODE :math:`y'' = \sigma(W y + \mathcal W y' + V u + b) - \gamma y
    - \epsilon y'`, discretised implicit-explicitly (IMEX) with step
    :math:`\Delta t`, in the row-vector convention:

    .. math::
        z_t &= z_{t-1} + \Delta t\,\big(\tanh(y_{t-1} W + z_{t-1} \mathcal W + x_t V + b)
               - \gamma\, y_{t-1} - \epsilon\, z_{t-1}\big) \\
        y_t &= y_{t-1} + \Delta t\, z_t, \qquad \text{output } y_t

    (the paper's eq. 3, the explicit form its code uses). The paper proves the
    hidden states bounded and the gradients bounded in :math:`\Delta t`,
    :math:`T` (no explosion) and a lower bound on the gradient that decays only
    polynomially in :math:`\Delta t` rather than exponentially in the distance,
    under :math:`\Delta t \ll 1`, :math:`\Delta t\,\gamma, \Delta t\,\epsilon \le 1`;
    neither is a per-step Jacobian bound, so the registry gives no ``decay_bound``.

    Defaults ``dt=0.042, gamma=2.7, epsilon=4.7`` are the paper's for
    sequential MNIST (the authors' adding-problem script defaults to ``dt=0.06,
    gamma=66, epsilon=15``; see docs/cells.md).

    Params (:class:`CoRNNParams`): ``V [F, H]``, ``W [H, H]``, ``W_z [H, H]``,
    ``b [H]``. Carry (:class:`CoRNNCarry`): ``y, z [*batch, H]``, zeros initially.

    Args:
      hidden_size: H.
      dt: the time step :math:`\Delta t > 0`.
      gamma: the restoring (spring) constant :math:`\gamma`.
      epsilon: the damping :math:`\epsilon`.
      recurrent_init: initialiser for ``W`` and ``W_z``.
      input_init: initialiser for ``V``.
      bias_init: initialiser for ``b``.
      param_dtype: dtype of the parameters.

    References:
      Rusch & Mishra, "Coupled Oscillatory Recurrent Neural Network (coRNN): An
      accurate and (gradient) stable architecture for learning long time
      dependencies", ICLR 2021, arXiv:2010.00951.
    """
    check_positive_int(hidden_size, "hidden_size")
    if not dt > 0:
        raise ValueError(f"dt must be positive; received {dt!r}.")
    H = hidden_size
    w_init = initializers.get(recurrent_init, "recurrent_init")
    v_init = initializers.get(input_init, "input_init")
    b_init = initializers.get(bias_init, "bias_init")

    def init(key, input_size: int) -> CoRNNParams:
        check_positive_int(input_size, "input_size")
        k_v, k_w, k_wz = jax.random.split(key, 3)
        k_b = jax.random.fold_in(key, 3)  # its own key: the weights' draws stay as they were
        return CoRNNParams(
            V=v_init(k_v, (input_size, H), param_dtype),
            W=w_init(k_w, (H, H), param_dtype),
            W_z=w_init(k_wz, (H, H), param_dtype),
            b=b_init(k_b, (H,), param_dtype),
        )

    def initial_carry(params: CoRNNParams, batch_shape=()) -> CoRNNCarry:
        batch_shape = check_batch_shape(batch_shape)
        zeros = jnp.zeros(batch_shape + params.W.shape[:1], params.W.dtype)
        return CoRNNCarry(y=zeros, z=zeros)

    def preactivation(params: CoRNNParams, x: Array, yz: Array) -> Array:
        check_input_size(x, params.V.shape[0])
        return add_bias(x @ params.V, params.b) + yz @ jnp.concatenate([params.W, params.W_z])

    def pointwise(g: Array, carry: CoRNNCarry) -> tuple[CoRNNCarry, Array]:
        z = carry.z + dt * (jnp.tanh(g) - gamma * carry.y - epsilon * carry.z)
        y = carry.y + dt * z
        return CoRNNCarry(y=y, z=z), y

    # The pre-activation reads both carry leaves, [y, z], through one matmul.
    return affine_cell(
        init, initial_carry, preactivation, pointwise,
        hidden=lambda c: jnp.concatenate([c.y, c.z], axis=-1),
    )
