"""Long expressive memory (LEM)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnlab import initializers
from rnnlab.cell import Cell
from rnnlab.validation import add_bias, check_batch_shape, check_input_size, check_positive_int

Array = jax.Array


class LEMParams(NamedTuple):
    V: Array  # [F, 4H] input weights, blocks (dt1, dt2, z, y)
    W: Array  # [H, 3H] weights on y_{t-1}, blocks (dt1, dt2, z)
    W_y: Array  # [H, H] weights on z_t in the y update
    b: Array  # [4H] bias, blocks as V


class LEMCarry(NamedTuple):
    y: Array  # [*batch, H] the fast state (the output)
    z: Array  # [*batch, H] the slow state


def lem(
    hidden_size: int,
    *,
    dt: float = 1.0,
    recurrent_init: str | initializers.Initializer = "lecun_normal",
    input_init: str | initializers.Initializer = "lecun_normal",
    param_dtype=jnp.float32,
) -> Cell:
    r"""Long expressive memory (Rusch, Mishra, Erichson & Mahoney 2022).

    A multiscale ODE discretised with learned, input-dependent time steps:

    .. math::
        \Delta_t &= \Delta t\, \sigma(x_t V_1 + y_{t-1} W_1 + b_1), \qquad
        \bar\Delta_t = \Delta t\, \sigma(x_t V_2 + y_{t-1} W_2 + b_2) \\
        z_t &= (1 - \Delta_t) \odot z_{t-1}
               + \Delta_t \odot \tanh(x_t V_z + y_{t-1} W_z + b_z) \\
        y_t &= (1 - \bar\Delta_t) \odot y_{t-1}
               + \bar\Delta_t \odot \tanh(x_t V_y + z_t W_y + b_y), \qquad \text{output } y_t

    (the paper's eq. 3). The y update reads the new :math:`z_t`, so the step is
    not affine in the carry and the cell has no fused form. The paper bounds the
    hidden states (:math:`|y|, |z| \le 1` for :math:`\Delta t \le 1` from zero),
    proves the gradients cannot explode (bounded by a polynomial in T) and that
    they decay at most polynomially in :math:`\Delta t`; none of these is a
    per-step Jacobian bound, so the registry gives no ``decay_bound``.

    Params (:class:`LEMParams`): ``V [F, 4H]``, ``W [H, 3H]``, ``W_y [H, H]``,
    ``b [4H]``. Carry (:class:`LEMCarry`): ``y, z [*batch, H]``, zeros initially.

    Args:
      hidden_size: H.
      dt: the maximal time step :math:`\Delta t \in (0, 1]` (the paper's code defaults to 1).
      recurrent_init: initialiser for each ``[H, H]`` block of ``W`` and ``W_y``.
      input_init: initialiser for each ``[F, H]`` block of ``V``.
      param_dtype: dtype of the parameters.

    References:
      Rusch, Mishra, Erichson & Mahoney, "Long Expressive Memory for Sequence
      Modeling", ICLR 2022, arXiv:2110.04744.
    """
    check_positive_int(hidden_size, "hidden_size")
    if not 0 < dt <= 1:
        raise ValueError(f"dt must be in (0, 1]; received {dt!r}.")
    H = hidden_size
    w_init = initializers.get(recurrent_init, "recurrent_init")
    v_init = initializers.get(input_init, "input_init")

    def init(key, input_size: int) -> LEMParams:
        check_positive_int(input_size, "input_size")
        k_v, k_w, k_wy = jax.random.split(key, 3)
        V = jnp.concatenate(
            [v_init(k, (input_size, H), param_dtype) for k in jax.random.split(k_v, 4)], axis=1
        )
        W = jnp.concatenate([w_init(k, (H, H), param_dtype) for k in jax.random.split(k_w, 3)],
                            axis=1)
        return LEMParams(V=V, W=W, W_y=w_init(k_wy, (H, H), param_dtype),
                         b=jnp.zeros((4 * H,), param_dtype))

    def initial_carry(params: LEMParams, batch_shape=()) -> LEMCarry:
        batch_shape = check_batch_shape(batch_shape)
        zeros = jnp.zeros(batch_shape + params.W_y.shape[:1], params.W_y.dtype)
        return LEMCarry(y=zeros, z=zeros)

    def step(params: LEMParams, carry: LEMCarry, x: Array) -> tuple[LEMCarry, Array]:
        check_input_size(x, params.V.shape[0])
        g1, g2, gz, gy = jnp.split(add_bias(x @ params.V, params.b), 4, axis=-1)
        r1, r2, rz = jnp.split(carry.y @ params.W, 3, axis=-1)
        dt1 = dt * jax.nn.sigmoid(g1 + r1)
        dt2 = dt * jax.nn.sigmoid(g2 + r2)
        z = (1 - dt1) * carry.z + dt1 * jnp.tanh(gz + rz)
        y = (1 - dt2) * carry.y + dt2 * jnp.tanh(gy + z @ params.W_y)
        return LEMCarry(y=y, z=z), y

    return Cell(init, initial_carry, step)
