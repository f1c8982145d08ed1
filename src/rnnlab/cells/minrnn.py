"""minGRU and minLSTM: gated RNNs whose gates read only the input (Feng et al. 2024)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnlab import initializers
from rnnlab.cell import Cell, linear_cell
from rnnlab.validation import (
    check_batch_shape,
    check_choice,
    check_input_size,
    check_positive_int,
)

Array = jax.Array


def g(x: Array) -> Array:
    r"""Feng et al.'s positive candidate activation, continuous and increasing.

    .. math:: g(x) = x + \tfrac12 \ (x \ge 0), \qquad g(x) = \sigma(x) \ (x < 0)
    """
    return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


CANDIDATE_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "g": g,
    "identity": lambda x: x,
}


class MinGRUParams(NamedTuple):
    W_x: Array  # [F, 2H] input weights, blocks in order (z, h~)
    b: Array  # [2H] bias, same block order


class MinLSTMParams(NamedTuple):
    W_x: Array  # [F, 3H] input weights, blocks in order (f, i, h~)
    b: Array  # [3H] bias, same block order


def _block_init(params_cls, num_blocks: int, H: int, w_init, b_init, param_dtype):
    """``init(key, F) -> params_cls(W_x [F, n*H], b [n*H])``, one initialiser call per block."""

    def init(key, input_size: int):
        check_positive_int(input_size, "input_size")
        k_x, k_b = jax.random.split(key)
        W_x = jnp.concatenate(
            [w_init(k, (input_size, H), param_dtype) for k in jax.random.split(k_x, num_blocks)],
            axis=1,
        )
        return params_cls(W_x=W_x, b=b_init(k_b, (num_blocks * H,), param_dtype))

    return init


def _affine(x: Array, W: Array, b: Array) -> Array:
    y = x @ W
    return y + jnp.broadcast_to(b, y.shape)  # explicit: rank promotion is an error here


def _zeros_carry(num_blocks: int) -> Callable[..., Array]:
    def initial_carry(params, batch_shape=()) -> Array:
        batch_shape = check_batch_shape(batch_shape)
        return jnp.zeros(batch_shape + (params.b.shape[0] // num_blocks,), params.b.dtype)

    return initial_carry


def _identity_readout(params, hs: Array, xs: Array) -> Array:
    del params, xs
    return hs


def mingru(
    hidden_size: int,
    *,
    candidate_activation: str = "g",
    input_init: str | initializers.Initializer = "lecun_normal",
    bias_init: str | initializers.Initializer = "zeros",
    param_dtype=jnp.float32,
) -> Cell:
    r"""minGRU: a GRU whose update gate and candidate read only the input (Feng et al. 2024).

    .. math::
        z_t &= \sigma(x_t W_z + b_z), \qquad \tilde h_t = g(x_t W_h + b_h) \\
        h_t &= (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t, \qquad y_t = h_t

    The carry enters linearly, :math:`h_t = a_t \odot h_{t-1} + b_t` with
    :math:`a_t = 1 - z_t = \sigma(-x_t W_z - b_z)` (computed as such, so it
    does not round to 0 when :math:`z_t \to 1`) and :math:`b_t = z_t \odot
    \tilde h_t`, so the cell has a :class:`rnnlab.LinearForm` and runs under
    ``rnnlab.scan(..., mode="parallel")``. The carry Jacobian
    :math:`\partial h_t / \partial h_{t-1} = \mathrm{diag}(a_t)` is diagonal with
    entries in (0, 1).

    With ``candidate_activation="g"`` (the paper's log-space version)
    :math:`\tilde h_t > 0`; ``"identity"`` is the paper's plain version. The
    parallel scan of rnnlab works in linear space for both (see
    :func:`rnnlab.scan`), so no positivity is needed of the carry.

    Params (:class:`MinGRUParams`): ``W_x [F, 2H]``, ``b [2H]``, blocks (z, h~).
    Carry: ``h [*batch, H]``, zeros initially. The paper's code passes its
    initial state through :math:`g` (so zeros become :math:`g(0) = 1/2`) only
    because its log-space scan needs :math:`h_0 > 0`; we need no such thing and
    start from zeros, like every other rnnlab cell. Pass ``carry=`` to
    :func:`rnnlab.scan` for another start.

    Args:
      hidden_size: H.
      candidate_activation: ``"g"`` (:func:`g`, default) or ``"identity"``.
      input_init: initialiser for ``W_x`` (each ``[F, H]`` block).
      bias_init: initialiser for ``b``.
      param_dtype: dtype of the parameters (and so of the carry).

    References:
      Feng, Tung, Ahmed, Bengio & Hajimirsadeghi, "Were RNNs All We Needed?",
      arXiv:2410.01201, 2024.
    """
    check_positive_int(hidden_size, "hidden_size")
    check_choice(candidate_activation, tuple(CANDIDATE_ACTIVATIONS), "candidate_activation")
    act = CANDIDATE_ACTIVATIONS[candidate_activation]
    H = hidden_size
    w_init = initializers.get(input_init, "input_init")
    b_init = initializers.get(bias_init, "bias_init")

    init = _block_init(MinGRUParams, 2, H, w_init, b_init, param_dtype)

    def coefficients(params: MinGRUParams, xs: Array) -> tuple[Array, Array]:
        check_input_size(xs, params.W_x.shape[0], "xs")
        k_z, k_h = jnp.split(_affine(xs, params.W_x, params.b), 2, axis=-1)
        return jax.nn.sigmoid(-k_z), jax.nn.sigmoid(k_z) * act(k_h)

    # The backward pass keeps only each step's inputs and recomputes the rest, the
    # input matmul included: it does not depend on the carry, so its recomputation
    # is off the critical path (docs/performance.md; minLSTM was slower with it).
    return linear_cell(
        init, _zeros_carry(2), coefficients, _identity_readout,
        checkpoint_policy=jax.checkpoint_policies.nothing_saveable,
    )


def minlstm(
    hidden_size: int,
    *,
    candidate_activation: str = "g",
    input_init: str | initializers.Initializer = "lecun_normal",
    bias_init: str | initializers.Initializer = "zeros",
    param_dtype=jnp.float32,
) -> Cell:
    r"""minLSTM: an LSTM with input-only normalised gates and one state (Feng et al. 2024).

    .. math::
        f_t &= \sigma(x_t W_f + b_f), \quad i_t = \sigma(x_t W_i + b_i), \quad
        \tilde h_t = g(x_t W_h + b_h) \\
        f'_t &= \frac{f_t}{f_t + i_t}, \quad i'_t = \frac{i_t}{f_t + i_t} \\
        h_t &= f'_t \odot h_{t-1} + i'_t \odot \tilde h_t, \qquad y_t = h_t

    Since :math:`f' + i' = 1`, :math:`h_t` is a convex combination of
    :math:`h_{t-1}` and :math:`\tilde h_t` (the paper's time-independent
    scale). The normalised gates are computed without a division, as
    :math:`f'_t = \sigma(d_t)`, :math:`i'_t = \sigma(-d_t)` with
    :math:`d_t = \log f_t - \log i_t = \mathrm{softplus}(-x_t W_i - b_i) -
    \mathrm{softplus}(-x_t W_f - b_f)`.
    Linear in the carry (:math:`a_t = f'_t`, :math:`b_t = i'_t \odot \tilde h_t`),
    so the cell has a :class:`rnnlab.LinearForm`.

    Params (:class:`MinLSTMParams`): ``W_x [F, 3H]``, ``b [3H]``, blocks (f, i, h~).
    Carry: ``h [*batch, H]``, zeros initially (see :func:`mingru` on why not
    :math:`g(0)`).

    Args:
      hidden_size: H.
      candidate_activation: ``"g"`` (:func:`g`, default) or ``"identity"``.
      input_init: initialiser for ``W_x`` (each ``[F, H]`` block).
      bias_init: initialiser for ``b``.
      param_dtype: dtype of the parameters (and so of the carry).

    References:
      Feng, Tung, Ahmed, Bengio & Hajimirsadeghi, "Were RNNs All We Needed?",
      arXiv:2410.01201, 2024.
    """
    check_positive_int(hidden_size, "hidden_size")
    check_choice(candidate_activation, tuple(CANDIDATE_ACTIVATIONS), "candidate_activation")
    act = CANDIDATE_ACTIVATIONS[candidate_activation]
    H = hidden_size
    w_init = initializers.get(input_init, "input_init")
    b_init = initializers.get(bias_init, "bias_init")

    init = _block_init(MinLSTMParams, 3, H, w_init, b_init, param_dtype)

    def coefficients(params: MinLSTMParams, xs: Array) -> tuple[Array, Array]:
        check_input_size(xs, params.W_x.shape[0], "xs")
        k_f, k_i, k_h = jnp.split(_affine(xs, params.W_x, params.b), 3, axis=-1)
        d = jax.nn.softplus(-k_i) - jax.nn.softplus(-k_f)
        return jax.nn.sigmoid(d), jax.nn.sigmoid(-d) * act(k_h)

    return linear_cell(init, _zeros_carry(3), coefficients, _identity_readout)
