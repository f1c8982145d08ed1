"""The antisymmetric RNN and its gated variant."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnlab import initializers
from rnnlab.cell import Cell, affine_cell
from rnnlab.validation import add_bias, check_batch_shape, check_input_size, check_positive_int

Array = jax.Array


class AntisymmetricParams(NamedTuple):
    V: Array  # [F, G*H] input weights; G = 1, or 2 when gated (blocks: candidate, gate)
    W: Array  # [H, H] the recurrent matrix is W - W^T - gamma I
    b: Array  # [G*H] bias, same blocks as V


def recurrent_matrix(params: AntisymmetricParams, gamma: float) -> Array:
    r""":math:`M = W - W^\top - \gamma I`, ``[H, H]`` (used as ``h @ M``)."""
    W = params.W
    return W - W.T - gamma * jnp.eye(W.shape[0], dtype=W.dtype)


def antisymmetric(
    hidden_size: int,
    *,
    epsilon: float = 0.1,
    gamma: float = 0.01,
    gated: bool = False,
    recurrent_std: float | None = None,
    input_init: str | initializers.Initializer = "lecun_normal",
    param_dtype=jnp.float32,
) -> Cell:
    r"""AntisymmetricRNN (Chang et al. 2019): forward Euler on a stable ODE.

    .. math::
        M &= W - W^\top - \gamma I \\
        h_t &= h_{t-1} + \epsilon \tanh(x_t V + h_{t-1} M + b)
            &&\text{(gated=False)} \\
        z_t &= \sigma(x_t V_z + h_{t-1} M + b_z), \quad
        h_t = h_{t-1} + \epsilon\, z_t \odot \tanh(x_t V_h + h_{t-1} M + b_h)
            &&\text{(gated=True)}

    The gate and the candidate share :math:`M`, as in the paper (its eq. 12).
    :math:`W - W^\top` has purely imaginary eigenvalues, so the ODE
    :math:`h' = \tanh(hM + \dots)` neither explodes nor vanishes; the diffusion
    :math:`\gamma > 0` makes the forward-Euler discretisation stable. The paper
    proves no per-step bound on the discrete Jacobian (it is
    :math:`I + \epsilon\,\mathrm{diag}(\cdot) M^\top`, whose norm may exceed 1
    slightly), so the registry gives no ``decay_bound``.

    Params (:class:`AntisymmetricParams`): ``V [F, G*H]``, ``W [H, H]`` with entries
    :math:`\mathcal N(0, \sigma^2/H)`, ``b [G*H]`` zeros; ``G = 2`` when gated,
    blocks (candidate, gate). Carry: ``h [*batch, H]``, zeros initially.

    Args:
      hidden_size: H.
      epsilon: the step size :math:`\epsilon > 0` (the paper searches 0.01 .. 1).
      gamma: the diffusion :math:`\gamma \ge 0` (the paper searches 0.001 .. 1).
      gated: the gated variant.
      recurrent_std: :math:`\sigma`, the scale of ``W``; 1 if None.
      input_init: initialiser for ``V``.
      param_dtype: dtype of the parameters.

    References:
      Chang, Chen, Haber & Chi, "AntisymmetricRNN: A Dynamical System View on
      Recurrent Neural Networks", ICLR 2019, arXiv:1902.09689.
    """
    check_positive_int(hidden_size, "hidden_size")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive; received {epsilon!r}.")
    if not gamma >= 0:
        raise ValueError(f"gamma must be non-negative; received {gamma!r}.")
    std = 1.0 if recurrent_std is None else float(recurrent_std)
    H, G = hidden_size, 2 if gated else 1
    v_init = initializers.get(input_init, "input_init")

    def init(key, input_size: int) -> AntisymmetricParams:
        check_positive_int(input_size, "input_size")
        k_v, k_w = jax.random.split(key)
        V = jnp.concatenate(
            [v_init(k, (input_size, H), param_dtype) for k in jax.random.split(k_v, G)], axis=1
        )
        W = std / jnp.sqrt(H) * jax.random.normal(k_w, (H, H), param_dtype)
        return AntisymmetricParams(V=V, W=W, b=jnp.zeros((G * H,), param_dtype))

    def initial_carry(params: AntisymmetricParams, batch_shape=()) -> Array:
        batch_shape = check_batch_shape(batch_shape)
        return jnp.zeros(batch_shape + params.W.shape[:1], params.W.dtype)

    def preactivation(params: AntisymmetricParams, x: Array, h: Array) -> Array:
        check_input_size(x, params.V.shape[0], "x")
        hM = h @ recurrent_matrix(params, gamma)
        if gated:
            hM = jnp.concatenate([hM, hM], axis=-1)
        return add_bias(x @ params.V, params.b) + hM  # [..., G*H]

    def pointwise(z: Array, h: Array) -> tuple[Array, Array]:
        if gated:
            cand, gate = jnp.split(z, 2, axis=-1)
            h = h + epsilon * jax.nn.sigmoid(gate) * jnp.tanh(cand)
        else:
            h = h + epsilon * jnp.tanh(z)
        return h, h

    return affine_cell(init, initial_carry, preactivation, pointwise, hidden=lambda h: h)
