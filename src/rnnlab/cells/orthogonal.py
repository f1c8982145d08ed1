"""An RNN with an exactly orthogonal recurrent matrix, parametrised by the matrix exponential."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnlab import initializers
from rnnlab.cell import Cell
from rnnlab.validation import check_batch_shape, check_choice, check_input_size, check_positive_int

Array = jax.Array

NONLINEARITIES = ("modrelu", "tanh", "identity")
RECURRENT_INITS = ("henaff", "cayley", "identity")


class OrthogonalParams(NamedTuple):
    A: Array  # [H, H] unconstrained; the recurrent matrix is expm(A - A^T)
    U: Array  # [F, H] input weights
    b: Array  # [H] bias (modReLU's threshold for nonlinearity="modrelu")


class OrthogonalWeights(NamedTuple):
    """What ``prepare`` makes of :class:`OrthogonalParams`: the matrix exponential done."""

    W: Array  # [H, H] orthogonal recurrent matrix expm(A - A^T)
    U: Array  # [F, H] input weights
    b: Array  # [H] bias


def recurrent_matrix(params: OrthogonalParams) -> Array:
    r"""The recurrent matrix :math:`W = \exp(A - A^\top)`, ``[H, H]``, orthogonal for any A."""
    return jax.scipy.linalg.expm(params.A - params.A.T)


def modrelu(z: Array, b: Array) -> Array:
    r"""modReLU for real inputs (Arjovsky et al. 2016): :math:`\mathrm{sign}(z)\,(|z| + b)_+`.

    Keeps the sign of each unit and shrinks (``b < 0``) or grows (``b > 0``)
    its magnitude; ``b = 0`` is the identity. ``z [..., H]``, ``b [H]``.
    """
    return jnp.sign(z) * jax.nn.relu(jnp.abs(z) + jnp.broadcast_to(b, z.shape))


def _skew_init(kind: str) -> Callable[[jax.Array, int, jnp.dtype], Array]:
    """A strictly upper-triangular A whose ``A - A^T`` is block-diagonal with
    2x2 blocks ``[[0, s], [-s, 0]]``, so ``expm(A - A^T)`` rotates each plane by s."""

    def init(key, n: int, dtype) -> Array:
        k = n // 2
        if kind == "identity":
            s = jnp.zeros((k,), dtype)
        elif kind == "henaff":  # angles uniform on [-pi, pi] (Henaff et al. 2016)
            s = jax.random.uniform(key, (k,), dtype, -math.pi, math.pi)
        else:  # "cayley": s = -sqrt((1 - cos u) / (1 + cos u)), u ~ U[0, pi/2]
            u = jax.random.uniform(key, (k,), dtype, 0.0, math.pi / 2)
            s = -jnp.sqrt((1.0 - jnp.cos(u)) / (1.0 + jnp.cos(u)))
        rows = 2 * jnp.arange(k)
        return jnp.zeros((n, n), dtype).at[rows, rows + 1].set(s)

    return init


def orthogonal(
    hidden_size: int,
    *,
    nonlinearity: str = "modrelu",
    recurrent_init: str = "henaff",
    input_init: str | initializers.Initializer = "he_normal",
    param_dtype=jnp.float32,
) -> Cell:
    r"""expRNN: an RNN whose recurrent matrix is the exponential of a skew-symmetric matrix.

    .. math::
        W = \exp(A - A^\top), \qquad h_t = \phi(x_t U + h_{t-1} W;\ b), \qquad y_t = h_t

    :math:`A - A^\top` is skew-symmetric, so :math:`W` is orthogonal
    (:math:`W W^\top = I`, :math:`\det W = 1`) for *any* unconstrained
    :math:`A`: gradient descent on :math:`A` never leaves the orthogonal group
    and no re-projection is needed (Lezcano-Casado & Martínez-Rubio 2019).
    :math:`W` is computed by ``jax.scipy.linalg.expm`` (:func:`recurrent_matrix`).
    Computed inside ``step``, its derivative would be transposed at every step
    of the backward pass (JAX does not hoist loop-invariant linear maps out of
    a scan's transpose), so the cell also has ``prepare(params) ->``
    :class:`OrthogonalWeights`, which :func:`rnnlab.scan` calls once before the
    loop, and ``step`` accepts either :class:`OrthogonalParams` (computing
    :math:`W` itself, for single steps) or :class:`OrthogonalWeights`. Call
    ``prepare`` yourself when you loop over ``step`` by hand.

    :math:`\phi` is one of

    - ``"modrelu"`` (default, as in expRNN):
      :math:`\phi(z; b) = \mathrm{sign}(z)\,\mathrm{relu}(|z| + b)`
      (:func:`modrelu`), ``b`` drawn from :math:`U[-0.01, 0.01]`;
    - ``"tanh"``: :math:`\tanh(z + b)`, ``b = 0`` initially;
    - ``"identity"``: :math:`z + b`, ``b = 0`` initially: a linear RNN whose
      carry Jacobian :math:`\partial h_t / \partial h_{t-1} = W^\top` has every
      singular value exactly 1, so gradients neither vanish nor explode.

    ``recurrent_init`` picks :math:`A` so that :math:`W` is block-diagonal with
    2x2 rotations by angles :math:`s_j` (a last unit of odd H is left fixed):
    ``"henaff"`` :math:`s_j \sim U[-\pi, \pi]` (Henaff et al. 2016, expRNN's
    default), ``"cayley"`` :math:`s_j = -\sqrt{(1-\cos u_j)/(1+\cos u_j)}`,
    :math:`u_j \sim U[0, \pi/2]` (Helfrich et al. 2018), or ``"identity"``
    (:math:`A = 0`, :math:`W = I`). :math:`A` is stored strictly upper
    triangular at init, but any :math:`A` is valid.

    Params (:class:`OrthogonalParams`): ``A [H, H]``, ``U [F, H]``, ``b [H]``.
    Carry: ``h [*batch, H]``, zeros initially.

    Returns a :class:`rnnlab.Cell` with ``prepare``.

    Args:
      hidden_size: H.
      nonlinearity: ``"modrelu"``, ``"tanh"`` or ``"identity"``.
      recurrent_init: ``"henaff"``, ``"cayley"`` or ``"identity"``.
      input_init: initialiser for ``U`` (expRNN uses He's normal).
      param_dtype: dtype of the parameters (and so of the carry).

    References:
      Lezcano-Casado & Martínez-Rubio, "Cheap Orthogonal Constraints in Neural
      Networks: A Simple Parametrization of the Orthogonal and Unitary Group",
      ICML 2019, arXiv:1901.08428.
      Arjovsky, Shah & Bengio, "Unitary Evolution Recurrent Neural Networks",
      ICML 2016 (modReLU).
      Henaff, Szlam & LeCun, "Recurrent Orthogonal Networks and Long-Memory
      Tasks", ICML 2016.
      Helfrich, Willmott & Ye, "Orthogonal Recurrent Neural Networks with
      Scaled Cayley Transform", ICML 2018.
    """
    check_positive_int(hidden_size, "hidden_size")
    check_choice(nonlinearity, NONLINEARITIES, "nonlinearity")
    check_choice(recurrent_init, RECURRENT_INITS, "recurrent_init")
    H = hidden_size
    a_init = _skew_init(recurrent_init)
    u_init = initializers.get(input_init, "input_init")

    def init(key, input_size: int) -> OrthogonalParams:
        check_positive_int(input_size, "input_size")
        k_a, k_u, k_b = jax.random.split(key, 3)
        if nonlinearity == "modrelu":
            b = jax.random.uniform(k_b, (H,), param_dtype, -0.01, 0.01)
        else:
            b = jnp.zeros((H,), param_dtype)
        return OrthogonalParams(
            A=a_init(k_a, H, param_dtype), U=u_init(k_u, (input_size, H), param_dtype), b=b
        )

    def initial_carry(params: OrthogonalParams, batch_shape=()) -> Array:
        batch_shape = check_batch_shape(batch_shape)
        return jnp.zeros(batch_shape + params.b.shape, params.b.dtype)

    def prepare(params: OrthogonalParams) -> OrthogonalWeights:
        return OrthogonalWeights(W=recurrent_matrix(params), U=params.U, b=params.b)

    def step(
        params: OrthogonalParams | OrthogonalWeights, h: Array, x: Array
    ) -> tuple[Array, Array]:
        check_input_size(x, params.U.shape[0])
        W = params.W if isinstance(params, OrthogonalWeights) else recurrent_matrix(params)
        z = x @ params.U + h @ W
        if nonlinearity == "modrelu":
            h = modrelu(z, params.b)
        else:
            z = z + jnp.broadcast_to(params.b, z.shape)
            h = jnp.tanh(z) if nonlinearity == "tanh" else z
        return h, h

    return Cell(init, initial_carry, step, prepare=prepare)
