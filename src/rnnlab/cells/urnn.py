"""The unitary evolution RNN (uRNN)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnlab.cell import Cell
from rnnlab.validation import check_batch_shape, check_input_size, check_positive_int

Array = jax.Array


class URNNParams(NamedTuple):
    theta: Array  # [3, N] phases of the diagonal factors D1, D2, D3
    v_re: Array  # [2, N] real parts of the reflection vectors of R1, R2
    v_im: Array  # [2, N] imaginary parts
    V_re: Array  # [F, N] real part of the input matrix V
    V_im: Array  # [F, N] imaginary part
    b: Array  # [N] modReLU bias
    U: Array  # [2N, O] output weights on [Re h, Im h]
    b_o: Array  # [O] output bias


def _reflect(h: Array, v: Array) -> Array:
    """``(I - 2 v v^* / ||v||^2) h`` for ``h [..., N]``, ``v [N]``."""
    v = v.reshape((1,) * (h.ndim - 1) + v.shape)
    coef = jnp.sum(jnp.conj(v) * h, axis=-1, keepdims=True) / jnp.sum(jnp.abs(v) ** 2)
    return h - 2 * coef * v


def unitary_apply(params: URNNParams, h: Array, permutation: Array) -> Array:
    r""":math:`W h`, ``[..., N]``, with
    :math:`W = D_3 R_2 \mathcal F^{-1} D_2 \Pi R_1 \mathcal F D_1`."""
    d = jnp.exp(1j * params.theta.astype(h.real.dtype)).astype(h.dtype)
    lead = (1,) * (h.ndim - 1)
    v = jax.lax.complex(params.v_re, params.v_im).astype(h.dtype)
    h = h * d[0].reshape(lead + d.shape[1:])
    h = jnp.fft.fft(h, axis=-1, norm="ortho")
    h = _reflect(h, v[0])
    h = h[..., permutation]
    h = h * d[1].reshape(lead + d.shape[1:])
    h = jnp.fft.ifft(h, axis=-1, norm="ortho")
    h = _reflect(h, v[1])
    return h * d[2].reshape(lead + d.shape[1:])


def modrelu(z: Array, b: Array) -> Array:
    r""":math:`\mathrm{relu}(|z| + b)\, z / |z|` (0 at :math:`z = 0`), elementwise."""
    sq = jnp.square(z.real) + jnp.square(z.imag)
    nonzero = sq > 0
    r = jnp.sqrt(jnp.where(nonzero, sq, 1))  # a safe |z|: finite gradient at z = 0
    scale = jnp.where(nonzero, jax.nn.relu(r + b.reshape((1,) * (z.ndim - 1) + b.shape)) / r, 0)
    return z * scale


def urnn(
    hidden_size: int,
    *,
    output_size: int | None = None,
    permutation_seed: int = 0,
    bias_scale: float = 0.01,
    param_dtype=jnp.float32,
) -> Cell:
    r"""Unitary evolution RNN (Arjovsky, Shah & Bengio 2016): complex state, unitary recurrence.

    .. math::
        W &= D_3 R_2 \mathcal F^{-1} D_2 \Pi R_1 \mathcal F D_1 \\
        h_t &= \mathrm{modReLU}(W h_{t-1} + V^\top x_t;\ b), \qquad
        y_t = [\mathrm{Re}\, h_t, \mathrm{Im}\, h_t]\, U + b_o

    with :math:`D_j = \mathrm{diag}(e^{i\theta_j})`, reflections
    :math:`R_j = I - 2 v_j v_j^* / \|v_j\|^2`, the unitary DFT
    :math:`\mathcal F` (``norm="ortho"``), a fixed random permutation
    :math:`\Pi` (drawn from ``permutation_seed`` when the cell is built) and
    :math:`\mathrm{modReLU}(z; b) = \mathrm{relu}(|z| + b)\, z / |z|` (the
    paper's eqs. 6 and 8). W is unitary for every parameter value, so the
    linear part preserves norms exactly; the modReLU's tangential gain
    :math:`(|z| + b)/|z|` exceeds 1 where :math:`b > 0`, so there is no
    closed-form per-step bound below a data-dependent one, and the registry
    gives no ``decay_bound``. The output is the paper's real output layer.

    Params (:class:`URNNParams`), all real: ``theta [3, N]`` uniform in
    :math:`[-\pi, \pi]`, ``v_re, v_im [2, N]`` uniform in [-1, 1],
    ``V_re, V_im [F, N]`` with entries :math:`\mathcal N(0, 1/(2F))`,
    ``b [N]`` uniform in ``[-bias_scale, bias_scale]``, ``U [2N, O]`` with entries
    :math:`\mathcal N(0, 1/(2N))`, ``b_o [O]`` zeros.
    Carry: ``h [*batch, N]`` complex (complex64 for float32 params), zeros initially.

    Args:
      hidden_size: N, the number of complex units.
      output_size: O; ``hidden_size`` if None.
      permutation_seed: seed of the fixed permutation :math:`\Pi`.
      bias_scale: range of the modReLU bias at initialisation.
      param_dtype: real dtype of the parameters.

    References:
      Arjovsky, Shah & Bengio, "Unitary Evolution Recurrent Neural Networks",
      ICML 2016, arXiv:1511.06464.
    """
    check_positive_int(hidden_size, "hidden_size")
    N = hidden_size
    out = N if output_size is None else check_positive_int(output_size, "output_size")
    permutation = np.random.default_rng(permutation_seed).permutation(N)

    def init(key, input_size: int) -> URNNParams:
        check_positive_int(input_size, "input_size")
        k_t, k_vr, k_vi, k_Vr, k_Vi, k_b, k_u = jax.random.split(key, 7)
        std = 1.0 / jnp.sqrt(2.0 * input_size)
        return URNNParams(
            theta=jax.random.uniform(k_t, (3, N), param_dtype, -jnp.pi, jnp.pi),
            v_re=jax.random.uniform(k_vr, (2, N), param_dtype, -1.0, 1.0),
            v_im=jax.random.uniform(k_vi, (2, N), param_dtype, -1.0, 1.0),
            V_re=std * jax.random.normal(k_Vr, (input_size, N), param_dtype),
            V_im=std * jax.random.normal(k_Vi, (input_size, N), param_dtype),
            b=jax.random.uniform(k_b, (N,), param_dtype, -bias_scale, bias_scale),
            U=jax.random.normal(k_u, (2 * N, out), param_dtype) / jnp.sqrt(2.0 * N),
            b_o=jnp.zeros((out,), param_dtype),
        )

    def initial_carry(params: URNNParams, batch_shape=()) -> Array:
        batch_shape = check_batch_shape(batch_shape)
        dtype = jnp.result_type(params.b.dtype, jnp.complex64)
        return jnp.zeros(batch_shape + params.b.shape, dtype)

    def step(params: URNNParams, h: Array, x: Array) -> tuple[Array, Array]:
        check_input_size(x, params.V_re.shape[0])
        pre = unitary_apply(params, h, permutation) + jax.lax.complex(
            x @ params.V_re, x @ params.V_im).astype(h.dtype)
        h = modrelu(pre, params.b)
        y = jnp.concatenate([h.real, h.imag], axis=-1) @ params.U
        return h, y + params.b_o.reshape((1,) * (y.ndim - 1) + params.b_o.shape)

    return Cell(init, initial_carry, step)
