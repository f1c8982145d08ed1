"""The linear recurrent unit (LRU): a complex diagonal linear RNN."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnlab import initializers
from rnnlab.cell import Cell, linear_cell
from rnnlab.validation import check_batch_shape, check_input_size, check_positive_int

Array = jax.Array


class LRUParams(NamedTuple):
    nu_log: Array  # [N] log(-log|lambda|): |lambda| = exp(-exp(nu_log))
    theta_log: Array  # [N] log(arg lambda)
    gamma_log: Array  # [N] log of the input normalisation gamma
    B_re: Array  # [F, N] real part of the input matrix B
    B_im: Array  # [F, N] imaginary part of B
    C_re: Array  # [N, O] real part of the output matrix C
    C_im: Array  # [N, O] imaginary part of C
    D: Array  # [F, O] real skip (feed-through) matrix


def eigenvalues(params: LRUParams) -> Array:
    r""":math:`\lambda = \exp(-\exp(\nu^{\log}) + i \exp(\theta^{\log}))`, ``[N]`` complex."""
    return jnp.exp(jax.lax.complex(-jnp.exp(params.nu_log), jnp.exp(params.theta_log)))


def lru(
    hidden_size: int,
    *,
    output_size: int | None = None,
    r_min: float = 0.9,
    r_max: float = 0.999,
    max_phase: float = 2 * math.pi,
    skip_init: str | initializers.Initializer = "lecun_normal",
    param_dtype=jnp.float32,
) -> Cell:
    r"""Linear recurrent unit (Orvieto et al. 2023): a complex diagonal linear RNN.

    .. math::
        \lambda &= \exp(-\exp(\nu^{\log}) + i \exp(\theta^{\log})) \in \mathbb{C}^N,
        \qquad \gamma = \exp(\gamma^{\log}) \\
        h_t &= \lambda \odot h_{t-1} + \gamma \odot (x_t B), \qquad
        y_t = \mathrm{Re}(h_t C) + x_t D

    with :math:`h_t \in \mathbb{C}^N` and row-vector convention (``x @ B``).
    The exponential parametrisation keeps :math:`|\lambda| < 1` (stable) for
    any real :math:`\nu^{\log}`. The eigenvalues are initialised uniformly on
    the ring :math:`r_\min \le |\lambda| \le r_\max` with phase uniform in
    :math:`[0, \text{max\_phase}]`, and
    :math:`\gamma^{\log} = \log\sqrt{1 - |\lambda|^2}` so that white-noise
    inputs keep the state's scale whatever :math:`|\lambda|`. Because
    :math:`\partial h_{t+k} / \partial h_t = \mathrm{diag}(\lambda^k)`,
    gradients through the carry decay exactly as :math:`|\lambda|^k`.

    This is one LRU recurrence, not the paper's full block (which adds a
    normalisation, an MLP/GLU and a residual around it). The carry is linear in
    itself (:math:`a_t = \lambda`, :math:`b_t = \gamma \odot x_t B`), so the
    cell has a :class:`rnnlab.LinearForm` and runs under
    ``rnnlab.scan(..., mode="parallel")``.

    Params (:class:`LRUParams`), all real so that optimisers and ``jax.grad``
    see real leaves: ``nu_log, theta_log, gamma_log [N]``;
    ``B_re, B_im [F, N]`` with entries :math:`\mathcal N(0, 1/(2F))` (so
    :math:`\mathbb E|x B|^2` matches :math:`|x|^2/F`); ``C_re, C_im [N, O]``
    with entries :math:`\mathcal N(0, 1/N)`; ``D [F, O]``.
    Carry: ``h [*batch, N]`` complex (complex64 for float32 params, complex128
    for float64), zeros initially.

    Defaults: ``r_min=0.9, r_max=0.999`` are the paper's choice for its
    long-range tasks (its code defaults to the whole disk, 0 and 1);
    ``max_phase=2*pi`` is the full phase range of the paper's code, and the
    paper restricts it to :math:`\pi/10` for its longest task (PathX). The
    paper's ``D`` is a diagonal ``[H]`` skip with ``F = O = H``; ours is a full
    ``[F, O]`` matrix so that the output size is free.

    Args:
      hidden_size: N, the number of complex state units.
      output_size: O, the size of the real output; ``hidden_size`` if None.
      r_min, r_max: the ring of initial eigenvalue moduli, ``0 <= r_min < r_max <= 1``.
      max_phase: initial phases are uniform in ``[0, max_phase]``; positive.
      skip_init: initialiser for ``D``.
      param_dtype: float dtype of the parameters; the carry is its complex counterpart.

    References:
      Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu & De, "Resurrecting
      Recurrent Neural Networks for Long Sequences", ICML 2023, arXiv:2303.06349.
    """
    check_positive_int(hidden_size, "hidden_size")
    out = hidden_size if output_size is None else check_positive_int(output_size, "output_size")
    if not 0.0 <= r_min < r_max <= 1.0:
        raise ValueError(
            f"r_min and r_max must satisfy 0 <= r_min < r_max <= 1; received "
            f"r_min={r_min!r}, r_max={r_max!r}."
        )
    if not max_phase > 0.0:
        raise ValueError(f"max_phase must be positive; received {max_phase!r}.")
    N = hidden_size
    d_init = initializers.get(skip_init, "skip_init")

    def init(key, input_size: int) -> LRUParams:
        check_positive_int(input_size, "input_size")
        k_r, k_phase, k_b_re, k_b_im, k_c_re, k_c_im, k_d = jax.random.split(key, 7)
        # |lambda|^2 uniform on [r_min^2, r_max^2] makes lambda uniform on the ring.
        u = jax.random.uniform(k_r, (N,), param_dtype)
        nu_log = jnp.log(-0.5 * jnp.log(u * (r_max**2 - r_min**2) + r_min**2))
        # exp(theta_log) in [0, max_phase]; a u of exactly 0 would give log 0, so
        # draw u from (tiny, 1].
        tiny = jnp.finfo(param_dtype).tiny
        v = jax.random.uniform(k_phase, (N,), param_dtype, minval=tiny, maxval=1.0)
        theta_log = jnp.log(max_phase * v)
        gamma_log = 0.5 * jnp.log1p(-jnp.exp(-2.0 * jnp.exp(nu_log)))  # log sqrt(1-|l|^2)
        b_std = 1.0 / math.sqrt(2 * input_size)
        c_std = 1.0 / math.sqrt(N)
        return LRUParams(
            nu_log=nu_log,
            theta_log=theta_log,
            gamma_log=gamma_log,
            B_re=b_std * jax.random.normal(k_b_re, (input_size, N), param_dtype),
            B_im=b_std * jax.random.normal(k_b_im, (input_size, N), param_dtype),
            C_re=c_std * jax.random.normal(k_c_re, (N, out), param_dtype),
            C_im=c_std * jax.random.normal(k_c_im, (N, out), param_dtype),
            D=d_init(k_d, (input_size, out), param_dtype),
        )

    def initial_carry(params: LRUParams, batch_shape=()) -> Array:
        batch_shape = check_batch_shape(batch_shape)
        dtype = jnp.result_type(params.nu_log.dtype, jnp.complex64)
        return jnp.zeros(batch_shape + params.nu_log.shape, dtype)

    def coefficients(params: LRUParams, xs: Array) -> tuple[Array, Array]:
        check_input_size(xs, params.B_re.shape[0], "xs")
        gamma = jnp.exp(params.gamma_log)[None, :]  # [1, N]: scales B's columns
        b = jax.lax.complex(xs @ (params.B_re * gamma), xs @ (params.B_im * gamma))
        return eigenvalues(params), b

    def readout(params: LRUParams, hs: Array, xs: Array) -> Array:
        return hs.real @ params.C_re - hs.imag @ params.C_im + xs @ params.D

    return linear_cell(init, initial_carry, coefficients, readout)
