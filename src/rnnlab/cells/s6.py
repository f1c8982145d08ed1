"""S6: Mamba's selective diagonal state-space recurrence."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnlab import initializers
from rnnlab.cell import Cell, linear_cell
from rnnlab.validation import add_bias, check_batch_shape, check_input_size, check_positive_int

Array = jax.Array


class S6Params(NamedTuple):
    W_in: Array  # [F, H] input projection to the H channels u_t
    W_dt: Array  # [H, H] step-size weights; [H, R] with dt_rank=R (Mamba's x_proj dt rows)
    b_dt: Array  # [H] step-size bias: softplus(b_dt) is the initial step
    W_B: Array  # [H, N] input-dependent B_t = u_t W_B
    W_C: Array  # [H, N] input-dependent C_t = u_t W_C
    A_log: Array  # [H, N] A = -exp(A_log)
    D: Array  # [H] skip
    # [R, H] with dt_rank=R (Mamba's dt_proj weight, transposed); None when W_dt is full rank.
    # Last and defaulted, so that the seven-field S6Params of full-rank cells stays valid.
    W_dt_proj: Array | None = None


def _lead(a: Array, rank: int) -> Array:
    """``a`` with leading singleton axes up to ``rank`` (broadcasts written out)."""
    return a.reshape((1,) * (rank - a.ndim) + a.shape)


def selective(params: S6Params, xs: Array) -> tuple[Array, Array, Array, Array]:
    r"""``(u, delta, B, C)`` for inputs ``xs [..., F]``: ``[..., H]``, ``[..., H]``,
    ``[..., N]``, ``[..., N]``."""
    u = xs @ params.W_in
    pre = u @ params.W_dt
    if params.W_dt_proj is not None:
        pre = pre @ params.W_dt_proj
    delta = jax.nn.softplus(add_bias(pre, params.b_dt))
    return u, delta, u @ params.W_B, u @ params.W_C


def s6(
    hidden_size: int,
    *,
    state_size: int = 16,
    dt_rank: int | None = None,
    dt_min: float = 0.001,
    dt_max: float = 0.1,
    input_init: str | initializers.Initializer = "lecun_normal",
    param_dtype=jnp.float32,
) -> Cell:
    r"""S6, the selective scan of Mamba (Gu & Dao 2023), as a cell.

    H channels, each with an N-dimensional diagonal state; the step size and
    the input and output maps depend on the input (the "selection"):

    .. math::
        u_t &= x_t W_{in} \in \mathbb R^H, \qquad
        \Delta_t = \mathrm{softplus}(u_t W_\Delta + b_\Delta) \in \mathbb R^H, \qquad
        B_t = u_t W_B,\ C_t = u_t W_C \in \mathbb R^N \\
        h_t[d, n] &= \exp(\Delta_t[d] A[d, n])\, h_{t-1}[d, n]
                     + \Delta_t[d]\, B_t[n]\, u_t[d], \qquad A = -\exp(A^{\log}) \\
        y_t[d] &= \textstyle\sum_n C_t[n]\, h_t[d, n] + D[d]\, u_t[d]

    This is Mamba's discretisation (zero-order hold for A, Euler for B, as in
    its reference ``selective_scan_ref``). The Mamba block around it (the
    convolution, the SiLU gate, the output projection) is left out; ``W_in``
    stands for its input projection so that any F works. ``W_dt`` is full rank
    by default; ``dt_rank=R`` factorises it as Mamba does,
    :math:`W_\Delta = W_{dt} W_{dt\,proj}` with ``W_dt [H, R]`` (the step-size rows
    of Mamba's ``x_proj``) and ``W_dt_proj [R, H]`` (its ``dt_proj``, initialised
    uniform in :math:`\pm R^{-1/2}` as there).
    The carry is linear in itself (:class:`rnnlab.LinearForm`), so
    ``mode="parallel"`` applies. Since :math:`\exp(\Delta A) \in (0, 1)`, the
    registry's ``decay_bound`` is 1.

    Initialisation as Mamba: ``A[d, n] = -(n + 1)`` (S4D-real),
    ``softplus(b_dt)`` log-uniform in ``[dt_min, dt_max]``, ``D = 1``.

    Params (:class:`S6Params`): ``W_in [F, H]``, ``W_dt [H, H]`` (``[H, R]``),
    ``b_dt [H]``, ``W_B, W_C [H, N]``, ``A_log [H, N]``, ``D [H]``, ``W_dt_proj``
    (None, or ``[R, H]`` with ``dt_rank=R``).
    Carry: ``h [*batch, H*N]`` (``[d, n]`` flattened, d major), zeros initially.

    Args:
      hidden_size: H, the number of channels (and of outputs).
      state_size: N, the state per channel (16 in Mamba).
      dt_rank: R, the rank of the step-size map (Mamba's ``dt_rank``, there
        ``ceil(d_model / 16)``), or None for a full-rank ``W_dt``.
      dt_min, dt_max: the range of the initial step size.
      input_init: initialiser for ``W_in``, ``W_dt``, ``W_B``, ``W_C``.
      param_dtype: dtype of the parameters.

    References:
      Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State
      Spaces", arXiv:2312.00752, 2023.
    """
    check_positive_int(hidden_size, "hidden_size")
    check_positive_int(state_size, "state_size")
    if dt_rank is not None:
        check_positive_int(dt_rank, "dt_rank")
    if not 0 < dt_min < dt_max:
        raise ValueError(
            f"dt_min and dt_max must satisfy 0 < dt_min < dt_max; received dt_min={dt_min!r}, "
            f"dt_max={dt_max!r}."
        )
    H, N = hidden_size, state_size
    w_init = initializers.get(input_init, "input_init")

    def init(key, input_size: int) -> S6Params:
        check_positive_int(input_size, "input_size")
        k_in, k_dt, k_b, k_c, k_bias = jax.random.split(key, 5)
        log_dt = jax.random.uniform(k_bias, (H,), param_dtype, math.log(dt_min), math.log(dt_max))
        dt = jnp.exp(log_dt)
        if dt_rank is None:
            W_dt, W_dt_proj = w_init(k_dt, (H, H), param_dtype), None
        else:
            k_dt, k_proj = jax.random.split(k_dt)  # full-rank draws stay as they were
            bound = dt_rank**-0.5
            W_dt = w_init(k_dt, (H, dt_rank), param_dtype)
            W_dt_proj = jax.random.uniform(k_proj, (dt_rank, H), param_dtype, -bound, bound)
        return S6Params(
            W_in=w_init(k_in, (input_size, H), param_dtype),
            W_dt=W_dt,
            b_dt=dt + jnp.log(-jnp.expm1(-dt)),  # the inverse of softplus
            W_B=w_init(k_b, (H, N), param_dtype),
            W_C=w_init(k_c, (H, N), param_dtype),
            A_log=jnp.log(jnp.broadcast_to(jnp.arange(1, N + 1, dtype=param_dtype), (H, N))),
            D=jnp.ones((H,), param_dtype),
            W_dt_proj=W_dt_proj,
        )

    def initial_carry(params: S6Params, batch_shape=()) -> Array:
        batch_shape = check_batch_shape(batch_shape)
        return jnp.zeros(batch_shape + (params.A_log.size,), params.A_log.dtype)

    def coefficients(params: S6Params, xs: Array) -> tuple[Array, Array]:
        check_input_size(xs, params.W_in.shape[0], "xs")
        u, delta, B, _ = selective(params, xs)
        rank = delta.ndim + 1
        A = -jnp.exp(params.A_log)
        a = jnp.exp(delta[..., :, None] * _lead(A, rank))
        b = (delta * u)[..., :, None] * B[..., None, :]
        lead = delta.shape[:-1]
        size = params.A_log.size  # not -1: a batch of size 0 must reshape too
        return a.reshape(lead + (size,)), b.reshape(lead + (size,))

    def readout(params: S6Params, hs: Array, xs: Array) -> Array:
        u, _, _, C = selective(params, xs)
        h = hs.reshape(hs.shape[:-1] + params.A_log.shape)
        return jnp.sum(h * C[..., None, :], axis=-1) + u * _lead(params.D, u.ndim)

    return linear_cell(init, initial_carry, coefficients, readout)
