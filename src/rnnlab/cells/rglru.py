"""The real-gated linear recurrent unit (RG-LRU) of Griffin / Hawk."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnlab import initializers
from rnnlab.cell import Cell, linear_cell
from rnnlab.validation import add_bias, check_batch_shape, check_input_size, check_positive_int

Array = jax.Array


class RGLRUParams(NamedTuple):
    W_u: Array  # [F, H] input projection (the paper's x_t is u_t = x_t W_u)
    W_a: Array  # [F, H] recurrence-gate weights
    b_a: Array  # [H]
    W_i: Array  # [F, H] input-gate weights
    b_i: Array  # [H]
    Lambda: Array  # [H] a = sigmoid(Lambda), the base decay


def log_decay(params: RGLRUParams, xs: Array, c: float) -> Array:
    r""":math:`\log a_t = -c\, r_t\, \mathrm{softplus}(-\Lambda)`, ``[..., H]``."""
    r = jax.nn.sigmoid(add_bias(xs @ params.W_a, params.b_a))
    softplus = jax.nn.softplus(-params.Lambda)
    return -c * r * softplus.reshape((1,) * (r.ndim - 1) + softplus.shape)


def rglru(
    hidden_size: int,
    *,
    c: float = 8.0,
    a_min: float = 0.9,
    a_max: float = 0.999,
    a_init: str = "paper",
    input_init: str | initializers.Initializer = "lecun_normal",
    param_dtype=jnp.float32,
) -> Cell:
    r"""RG-LRU (De et al. 2024, Griffin/Hawk): a gated diagonal linear recurrence.

    .. math::
        u_t &= x_t W_u, \qquad r_t = \sigma(x_t W_a + b_a), \qquad i_t = \sigma(x_t W_i + b_i) \\
        a_t &= a^{c r_t} = \exp(-c\, r_t\, \mathrm{softplus}(-\Lambda)),
              \qquad a = \sigma(\Lambda) \\
        h_t &= a_t \odot h_{t-1} + \sqrt{1 - a_t^2} \odot (i_t \odot u_t), \qquad y_t = h_t

    (the paper's eqs. 1-4, :math:`c = 8`). The paper's RG-LRU acts on its
    block's D-dimensional input directly, with block-diagonal gate weights; we
    add the projection ``W_u`` so that any F works (``W_u = I`` with F = H is
    the paper's), and the gates read ``x`` with dense weights. The carry is
    linear in itself, so the cell has a :class:`rnnlab.LinearForm` and runs under
    ``mode="parallel"``. Since :math:`0 < a_t < 1`,
    :math:`\|\partial h_{t+k}/\partial h_t\|_2 < 1` for every input: the
    registry's ``decay_bound`` is 1.

    ``Lambda`` is initialised so that :math:`a^c` is uniform in
    ``[a_min, a_max]`` (``a_init="paper"``: the paper's section 2.4 says so, with
    [0.9, 0.999]). The reference code (google-deepmind/recurrentgemma,
    ``recurrentgemma/jax/layers.py``: ``rnn_param_init``, ``RGLRU``) instead puts
    the *base* :math:`a` on a ring, :math:`a^2` uniform in
    ``[a_min^2, a_max^2]``, so that at a gate of 1/2 the step decay
    :math:`a^{c/2}` is far smaller; ``a_init="recurrentgemma"`` does that. Its
    ``a_param`` is our ``-Lambda`` (:math:`a = e^{-\mathrm{softplus}(a_{param})}
    = \sigma(\Lambda)`), and its ``-8 * gate_a * softplus(a_param)`` is our
    :math:`\log a_t`. Kept different on purpose: the reference skips the
    :math:`\sqrt{1-a_t^2}` factor at a segment's first token (here the first step
    is normalised like the others, with or without ``resets``), clips the
    gradient of that square root at 1000 (for bfloat16), and its gates are
    block-diagonal maps of the block's own input.

    Params (:class:`RGLRUParams`): ``W_u, W_a, W_i [F, H]``, ``b_a, b_i [H]``,
    ``Lambda [H]``. Carry: ``h [*batch, H]``, zeros initially.

    Args:
      hidden_size: H.
      c: the gate's exponent scale (8 in the paper).
      a_min, a_max: the range of :math:`a^c` at initialisation, ``0 < a_min < a_max < 1``
        (of :math:`a` itself with ``a_init="recurrentgemma"``).
      a_init: ``"paper"`` (:math:`a^c` uniform) or ``"recurrentgemma"`` (the reference
        code's ring: :math:`a^2` uniform).
      input_init: initialiser for ``W_u``, ``W_a`` and ``W_i``.
      param_dtype: dtype of the parameters.

    References:
      De, Smith, Fernando, Botev, Cristian-Muraru, Gu, Haroun, Berrada, Chen,
      Srinivasan, Desjardins, Doucet, Budden, Teh, Pascanu, de Freitas & Gulcehre,
      "Griffin: Mixing Gated Linear Recurrences with Local Attention for
      Efficient Language Models", arXiv:2402.19427, 2024.
    """
    check_positive_int(hidden_size, "hidden_size")
    if not 0 < a_min < a_max < 1:
        raise ValueError(
            f"a_min and a_max must satisfy 0 < a_min < a_max < 1; received a_min={a_min!r}, "
            f"a_max={a_max!r}."
        )
    if not c > 0:
        raise ValueError(f"c must be positive; received {c!r}.")
    if a_init not in ("paper", "recurrentgemma"):
        raise ValueError(
            f"a_init must be 'paper' or 'recurrentgemma'; received {a_init!r}.")
    H = hidden_size
    w_init = initializers.get(input_init, "input_init")

    def init(key, input_size: int) -> RGLRUParams:
        check_positive_int(input_size, "input_size")
        k_u, k_a, k_i, k_l = jax.random.split(key, 4)
        if a_init == "paper":
            ac = jax.random.uniform(k_l, (H,), param_dtype, a_min, a_max)
            log_a = jnp.log(ac) / c
        else:
            u = jax.random.uniform(k_l, (H,), param_dtype)
            log_a = 0.5 * jnp.log(u * (a_max**2 - a_min**2) + a_min**2)
        # Lambda = logit(a) = log a - log(1 - a), with log(1 - a) = log(-expm1(log a)).
        Lambda = log_a - jnp.log(-jnp.expm1(log_a))
        zeros = jnp.zeros((H,), param_dtype)
        return RGLRUParams(
            W_u=w_init(k_u, (input_size, H), param_dtype),
            W_a=w_init(k_a, (input_size, H), param_dtype), b_a=zeros,
            W_i=w_init(k_i, (input_size, H), param_dtype), b_i=zeros,
            Lambda=Lambda,
        )

    def initial_carry(params: RGLRUParams, batch_shape=()) -> Array:
        batch_shape = check_batch_shape(batch_shape)
        return jnp.zeros(batch_shape + params.Lambda.shape, params.Lambda.dtype)

    def coefficients(params: RGLRUParams, xs: Array) -> tuple[Array, Array]:
        check_input_size(xs, params.W_u.shape[0], "xs")
        log_a = log_decay(params, xs, c)
        i = jax.nn.sigmoid(add_bias(xs @ params.W_i, params.b_i))
        # sqrt(1 - a^2) = sqrt(-expm1(2 log a)): accurate as a -> 1.
        return jnp.exp(log_a), jnp.sqrt(-jnp.expm1(2 * log_a)) * i * (xs @ params.W_u)

    def readout(params: RGLRUParams, hs: Array, xs: Array) -> Array:
        return hs

    return linear_cell(init, initial_carry, coefficients, readout)
