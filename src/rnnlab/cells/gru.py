"""Gated recurrent unit."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from rnnlab import initializers
from rnnlab.cell import Cell, affine_cell
from rnnlab.validation import add_bias, check_batch_shape, check_input_size, check_positive_int

Array = jax.Array


class GRUParams(NamedTuple):
    W_x: Array  # [F, 3H] input weights, gate blocks in order (r, z, n)
    W_h: Array  # [H, 3H] recurrent weights, same block order
    b_x: Array  # [3H] input bias
    b_h: Array  # [3H] recurrent bias (only its n block differs from b_x when reset_after)


class GRUWeights(NamedTuple):
    """What the GRU's ``prepare`` makes of :class:`GRUParams`: the blocks each matmul reads.

    The r and z gates sum their input and recurrent parts in either form, so
    they share ``x @ W_rz_x + h @ W_rz_h`` (one matmul over ``[x, h]`` when
    there is a single input feature); the n block keeps its two parts apart
    (the reset gate multiplies the recurrent one).
    """

    W_rz_x: Array  # [F, 2H]: W_x's r and z blocks
    W_rz_h: Array  # [H, 2H]: W_h's r and z blocks
    W_n_x: Array  # [F, H]
    W_n_h: Array  # [H, H]
    b_rz: Array  # [2H]: b_x + b_h on the r and z blocks
    b_n_x: Array  # [H]
    b_n_h: Array  # [H]


#: The per-step values the GRU's backward pass reads back from memory (the
#: ``jax.checkpoint`` names in its step): the r and z pre-activations summed
#: over input and hidden, and the n block's two matmul results.
SAVED = ("rnnlab.gru.rz", "rnnlab.gru.n_x", "rnnlab.gru.n_h")
_RZ, _N_X, _N_H = SAVED


def prepare(params: GRUParams | GRUWeights) -> GRUWeights:
    """The GRU's :class:`GRUWeights` from its :class:`GRUParams` (identity on GRUWeights)."""
    if isinstance(params, GRUWeights):
        return params
    H = params.W_h.shape[0]
    return GRUWeights(
        W_rz_x=params.W_x[:, : 2 * H],
        W_rz_h=params.W_h[:, : 2 * H],
        W_n_x=params.W_x[:, 2 * H :],
        W_n_h=params.W_h[:, 2 * H :],
        b_rz=params.b_x[: 2 * H] + params.b_h[: 2 * H],
        b_n_x=params.b_x[2 * H :],
        b_n_h=params.b_h[2 * H :],
    )


def gru(
    hidden_size: int,
    *,
    reset_after: bool = True,
    recurrent_init: str | initializers.Initializer = "orthogonal",
    input_init: str | initializers.Initializer = "lecun_normal",
    param_dtype=jnp.float32,
) -> Cell:
    r"""Gated recurrent unit (Cho et al. 2014), in either of its two forms.

    .. math::
        r &= \sigma(x_t W_{xr} + b_{xr} + h_{t-1} W_{hr} + b_{hr}) \\
        z &= \sigma(x_t W_{xz} + b_{xz} + h_{t-1} W_{hz} + b_{hz}) \\
        n &= \tanh(x_t W_{xn} + b_{xn} + r \odot (h_{t-1} W_{hn} + b_{hn}))
             &&\text{(reset\_after=True: cuDNN, PyTorch, flax, Keras)} \\
        n &= \tanh(x_t W_{xn} + b_{xn} + (r \odot h_{t-1}) W_{hn} + b_{hn})
             &&\text{(reset\_after=False: Cho et al. 2014)} \\
        h_t &= (1 - z) \odot n + z \odot h_{t-1}, \qquad y_t = h_t

    **Default: ``reset_after=True``**, the cuDNN/PyTorch form (reset gate applied
    after the recurrent matmul), which is what ``torch.nn.GRU``,
    ``flax.linen.GRUCell`` and Keras' default compute, so weights move between
    them unchanged. ``reset_after=False`` is the original paper's form.

    Params (:class:`GRUParams`): ``W_x [F, 3H]``, ``W_h [H, 3H]``, ``b_x [3H]``,
    ``b_h [3H]``, blocks in PyTorch's order (reset, update, new).
    Carry: ``h [*batch, H]``, zeros initially.

    The cell's ``prepare(params)`` re-arranges the weight blocks into
    :class:`GRUWeights` (the r and z gates' blocks together, n's apart), which
    :func:`rnnlab.scan` does once per call; ``step`` takes either form. With
    ``reset_after=True`` the cell has an :class:`rnnlab.AffineForm`.

    Args:
      hidden_size: H.
      reset_after: which form (see above).
      recurrent_init: initialiser for each ``[H, H]`` block of ``W_h``.
      input_init: initialiser for ``W_x``.
      param_dtype: dtype of the parameters.

    References:
      Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder for
      Statistical Machine Translation", EMNLP 2014.
    """
    check_positive_int(hidden_size, "hidden_size")
    if not isinstance(reset_after, bool):
        raise TypeError(f"reset_after must be a bool; received {reset_after!r}.")
    H = hidden_size
    w_h_init = initializers.get(recurrent_init, "recurrent_init")
    w_x_init = initializers.get(input_init, "input_init")

    def init(key, input_size: int) -> GRUParams:
        check_positive_int(input_size, "input_size")
        k_x, k_h = jax.random.split(key)
        W_h = jnp.concatenate(
            [w_h_init(k, (H, H), param_dtype) for k in jax.random.split(k_h, 3)], axis=1
        )
        W_x = jnp.concatenate(
            [w_x_init(k, (input_size, H), param_dtype) for k in jax.random.split(k_x, 3)],
            axis=1,
        )
        zeros = jnp.zeros((3 * H,), param_dtype)
        return GRUParams(W_x=W_x, W_h=W_h, b_x=zeros, b_h=zeros)

    def initial_carry(params: GRUParams | GRUWeights, batch_shape=()) -> Array:
        batch_shape = check_batch_shape(batch_shape)
        W_n_h = params.W_n_h if isinstance(params, GRUWeights) else params.W_h
        return jnp.zeros(batch_shape + W_n_h.shape[:1], W_n_h.dtype)

    def rz_preactivation(w: GRUWeights, x: Array, h: Array) -> Array:
        if w.W_rz_x.shape[0] == 1:
            # One input feature: one matmul over [x, h]. With more, four independent
            # matmuls per step are faster on CPU, which runs them on both cores
            # (docs/performance.md). XLA hoists the weight concatenation out of the scan.
            a_rz = jnp.concatenate([x, h], axis=-1) @ jnp.concatenate(
                [w.W_rz_x, w.W_rz_h], axis=0
            )
        else:
            a_rz = x @ w.W_rz_x + h @ w.W_rz_h
        # The names mark what the backward pass keeps (SAVED, below).
        return add_bias(checkpoint_name(a_rz, _RZ), w.b_rz)  # [..., 2H]

    def n_x_preactivation(w: GRUWeights, x: Array) -> Array:
        return add_bias(checkpoint_name(x @ w.W_n_x, _N_X), w.b_n_x)  # [..., H]

    def update(z: Array, n: Array, h: Array) -> tuple[Array, Array]:
        h = (1.0 - z) * n + z * h
        return h, h

    # The backward pass keeps only the three matmul results per step and
    # recomputes the gates from them (rnnlab.checkpointed_step).
    policy = jax.checkpoint_policies.save_only_these_names(*SAVED)

    if not reset_after:
        # Cho et al.'s form: the reset gate acts before the n block's matmul, so the
        # pre-activations are not affine in h and the step stays whole.
        def step(params: GRUParams | GRUWeights, h: Array, x: Array) -> tuple[Array, Array]:
            w = prepare(params)
            check_input_size(x, w.W_n_x.shape[0])
            r, z = jnp.split(jax.nn.sigmoid(rz_preactivation(w, x, h)), 2, axis=-1)
            gh_n = checkpoint_name((r * h) @ w.W_n_h, _N_H)
            n = jnp.tanh(n_x_preactivation(w, x) + add_bias(gh_n, w.b_n_h))
            return update(z, n, h)

        return Cell(init, initial_carry, step, prepare=prepare, checkpoint_policy=policy)

    def preactivation(params: GRUParams | GRUWeights, x: Array, h: Array):
        w = prepare(params)
        check_input_size(x, w.W_n_x.shape[0])
        rz, n_x = rz_preactivation(w, x, h), n_x_preactivation(w, x)
        return rz, n_x, add_bias(checkpoint_name(h @ w.W_n_h, _N_H), w.b_n_h)

    def pointwise(g: tuple[Array, Array, Array], h: Array) -> tuple[Array, Array]:
        rz, n_x, n_h = g
        r, z = jnp.split(jax.nn.sigmoid(rz), 2, axis=-1)
        return update(z, jnp.tanh(n_x + r * n_h), h)

    return affine_cell(
        init, initial_carry, preactivation, pointwise, hidden=lambda h: h,
        prepare=prepare, checkpoint_policy=policy,
    )
