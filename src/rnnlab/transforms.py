r"""Cell transforms: a cell in, a cell out. Zoneout and variational (per-sequence) dropout.

How a key reaches a pure step: the transformed cell's carry,
:class:`TransformCarry` ``(inner, key, train)``, holds the raw key data and a
training flag beside the inner cell's carry. ``initial_carry(params,
batch_shape, key=None)`` puts them there: with a key the transform is on
(training); without one (the default, so that :func:`rnnlab.scan` and the
diagnostics work unchanged) it is off, as at evaluation::

    cell = rnnlab.transforms.variational_dropout(rnnlab.lstm(64), recurrent_rate=0.25)
    carry = cell.initial_carry(params, (batch,), key=k_dropout)   # training
    _, ys = rnnlab.scan(cell, params, xs, carry=carry)
    _, ys = rnnlab.scan(cell, params, xs)                         # evaluation

Variational dropout keeps the key fixed, so every step redraws the same masks
(one mask per sequence, Gal & Ghahramani 2016); zoneout splits the key at each
step, so each step draws a fresh mask (Krueger et al. 2017). Params are the
inner cell's, unchanged. The key and the flag are not differentiable leaves
(uint32 and bool): differentiate with respect to the inner carry only.
Dropout between stacked layers (PyTorch's ``dropout=``) is
:func:`rnnlab.layers.rnn`'s ``dropout``/``key``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnlab.cell import Cell, affine_form, checkpointed_step, prepare_params
from rnnlab.validation import check_cell

Array = jax.Array


class TransformCarry(NamedTuple):
    inner: Any  # the inner cell's carry
    key: Array  # [2] uint32: raw key data (jax.random.key_data), zeros when off
    train: Array  # [] bool: whether the transform is on


def _check_rate(rate: Any, name: str) -> float:
    if not (isinstance(rate, (int, float)) and 0.0 <= rate < 1.0):
        raise ValueError(f"{name} must be a float in [0, 1); received {rate!r}.")
    return float(rate)


def _initial(cell: Any):
    def initial_carry(params, batch_shape=(), key=None) -> TransformCarry:
        inner = cell.initial_carry(params, batch_shape)
        if key is None:
            data = jnp.zeros_like(jax.random.key_data(jax.random.key(0)))
            return TransformCarry(inner, data, jnp.zeros((), bool))
        if jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        return TransformCarry(inner, jnp.asarray(key, jnp.uint32), jnp.ones((), bool))

    return initial_carry


def _keep_mask(key: Array, rate: float, shape: tuple[int, ...], dtype: Any) -> Array:
    """Inverted-dropout mask: ``1/(1-rate)`` where kept, 0 where dropped."""
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return jnp.where(keep, 1.0 / (1.0 - rate), 0.0).astype(dtype)


def dropout_masks(carry: TransformCarry, x_shape, h_shape, dtype, input_rate: float,
                  recurrent_rate: float) -> tuple[Array, Array]:
    """The per-sequence masks ``(m_x [*batch, F], m_h [*batch, H])`` that
    :func:`variational_dropout` applies (ones when the carry's ``train`` is False)."""
    key = jax.random.wrap_key_data(carry.key)
    k_x, k_h = jax.random.split(key)
    m_x = _keep_mask(k_x, input_rate, x_shape, dtype) if input_rate else jnp.ones(x_shape, dtype)
    m_h = (_keep_mask(k_h, recurrent_rate, h_shape, dtype) if recurrent_rate
           else jnp.ones(h_shape, dtype))
    on = carry.train
    return jnp.where(on, m_x, jnp.ones_like(m_x)), jnp.where(on, m_h, jnp.ones_like(m_h))


def variational_dropout(cell: Any, *, input_rate: float = 0.0,
                        recurrent_rate: float = 0.0) -> Cell:
    r"""Variational dropout: one mask per sequence on the inputs and on the recurrent state.

    .. math:: g_t = (x_t \odot m_x) A + (h_{t-1} \odot m_h) R + b, \qquad
              m \sim \mathrm{Bernoulli}(1 - p) / (1 - p), \text{ fixed over } t

    (Gal & Ghahramani 2016; Keras' ``dropout``/``recurrent_dropout``). The
    recurrent mask multiplies the hidden state the pre-activation reads (the
    cell's :class:`rnnlab.AffineForm` ``hidden``), not the state passed on, so an
    LSTM's cell state is never dropped. One mask is shared by all gates (Gal's
    "tied" variant; Keras draws one per gate). ``recurrent_rate > 0`` needs a cell
    with an affine form; input dropout works for any cell. Off without a key
    (see the module docstring).

    Args:
      cell: the inner cell.
      input_rate: drop probability of each input feature, in [0, 1).
      recurrent_rate: drop probability of each hidden unit, in [0, 1).

    Returns:
      A :class:`rnnlab.Cell` with the inner params and a :class:`TransformCarry`.

    References:
      Gal & Ghahramani, "A Theoretically Grounded Application of Dropout in
      Recurrent Neural Networks", NeurIPS 2016, arXiv:1512.05287.
    """
    check_cell(cell)
    input_rate = _check_rate(input_rate, "input_rate")
    recurrent_rate = _check_rate(recurrent_rate, "recurrent_rate")
    form = affine_form(cell)
    if recurrent_rate and form is None:
        raise ValueError(
            "recurrent_rate > 0 needs a cell with an AffineForm (the hidden state its "
            "pre-activation reads: elman, lstm, gru, ...); received a cell without one. "
            "Use input_rate only, or zoneout."
        )
    inner_step = checkpointed_step(cell)

    def step(params, carry: TransformCarry, x):
        inner = carry.inner
        if form is None:
            m_x, _ = dropout_masks(carry, x.shape, (0,), x.dtype, input_rate, 0.0)
            new_inner, y = inner_step(params, inner, x * m_x)
        else:
            h = form.hidden(inner)
            m_x, m_h = dropout_masks(carry, x.shape, h.shape, x.dtype, input_rate,
                                     recurrent_rate)
            g = form.preactivation(params, x * m_x, h * m_h.astype(h.dtype))
            new_inner, y = form.pointwise(g, inner)
        return carry._replace(inner=new_inner), y

    prepare = None if getattr(cell, "prepare", None) is None else (
        lambda params: prepare_params(cell, params))
    return Cell(cell.init, _initial(cell), step, prepare=prepare)


def zoneout(cell: Any, rate: float) -> Cell:
    r"""Zoneout: each unit of the carry keeps its previous value with probability ``rate``.

    .. math:: c_t = d_t \odot c_{t-1} + (1 - d_t) \odot \tilde c_t, \qquad
              d_t \sim \mathrm{Bernoulli}(\text{rate}) \text{ per step and unit}

    where :math:`\tilde c_t` is the inner step's new carry, for every floating
    carry leaf (an LSTM's c and h alike, one rate). At evaluation (no key) the
    expectation: :math:`c_t = \text{rate}\, c_{t-1} + (1 - \text{rate})\, \tilde c_t`
    (Krueger et al.). Where the inner step's output is one of its carry leaves
    (Elman, LSTM, GRU, most cells here) the output is that leaf after zoneout, as in
    the paper; otherwise it is the inner output.

    Args:
      cell: the inner cell.
      rate: the zoneout probability, in [0, 1).

    References:
      Krueger, Maharaj, Kramár, Pezeshki, Ballas, Ke, Goyal, Bengio, Courville &
      Pal, "Zoneout: Regularizing RNNs by Randomly Preserving Hidden
      Activations", ICLR 2017, arXiv:1606.01305.
    """
    check_cell(cell)
    rate = _check_rate(rate, "rate")
    # The plain step, not checkpointed_step: jax.checkpoint would return new objects
    # and hide which carry leaf the output is.
    inner_step = cell.step

    def step(params, carry: TransformCarry, x):
        new_inner, y = inner_step(params, carry.inner, x)
        k_next, k_mask = jax.random.split(jax.random.wrap_key_data(carry.key))
        old_leaves, treedef = jax.tree.flatten(carry.inner)
        new_leaves = treedef.flatten_up_to(new_inner)
        out = []
        for i, (old, new) in enumerate(zip(old_leaves, new_leaves, strict=True)):
            if not jnp.issubdtype(new.dtype, jnp.inexact):
                out.append(new)
                continue
            keep_old = jax.random.bernoulli(jax.random.fold_in(k_mask, i), rate, new.shape)
            train_value = jnp.where(keep_old, old, new)
            eval_value = (rate * old + (1 - rate) * new).astype(new.dtype)
            value = jnp.where(carry.train, train_value, eval_value)
            # The output is the zoned-out leaf when the inner step returned that leaf itself.
            if y is new:
                y = value
            out.append(value)
        key = jnp.where(carry.train, jax.random.key_data(k_next), carry.key)
        return TransformCarry(jax.tree.unflatten(treedef, out), key, carry.train), y

    prepare = None if getattr(cell, "prepare", None) is None else (
        lambda params: prepare_params(cell, params))
    return Cell(cell.init, _initial(cell), step, prepare=prepare)
