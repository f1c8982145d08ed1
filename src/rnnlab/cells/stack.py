"""Multi-layer cells: a stack of cells is itself a cell."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from rnnlab.cell import Cell, checkpointed_step, prepare_params
from rnnlab.validation import check_batch_shape, check_cell


def stack(cells: Sequence[Cell]) -> Cell:
    r"""Stacks cells into a deep RNN: layer k reads layer k-1's output at the same step.

    .. math:: y^{(0)}_t = x_t,\quad (c^{(k)}_t, y^{(k)}_t) =
              \mathrm{step}_k(c^{(k)}_{t-1}, y^{(k-1)}_t),\quad y_t = y^{(K)}_t

    Because the result is a :class:`~rnnlab.Cell`, it works with
    :func:`rnnlab.scan`, the diagnostics and the Flax wrappers unchanged, and
    its carry (a tuple, one entry per layer) is what the gradient diagnostics
    differentiate through. This is the layout of ``torch.nn.LSTM(num_layers=K)``.

    Params: a tuple with each layer's params. Carry: a tuple with each layer's carry.

    Args:
      cells: the layers, bottom first; any objects following the Cell protocol.
    """
    cells = tuple(cells)
    if not cells:
        raise ValueError("cells must hold at least one cell; received an empty sequence.")
    for k, c in enumerate(cells):
        check_cell(c, f"cells[{k}]")

    def init(key, input_size: int):
        params = []
        size = input_size
        for cell, k in zip(cells, jax.random.split(key, len(cells)), strict=True):
            p = cell.init(k, size)
            # The next layer's input size is this layer's output size, read off
            # abstractly so that any user cell works without declaring it.
            carry = jax.eval_shape(lambda p, c=cell: c.initial_carry(p, ()), p)
            _, y = jax.eval_shape(cell.step, p, carry, jax.ShapeDtypeStruct((size,), jnp.float32))
            size = y.shape[-1]
            params.append(p)
        return tuple(params)

    def initial_carry(params, batch_shape=()):
        batch_shape = check_batch_shape(batch_shape)
        return tuple(c.initial_carry(p, batch_shape) for c, p in zip(cells, params, strict=True))

    # Each layer's own checkpoint policy (rnnlab.checkpointed_step), so that a
    # stack of LSTMs keeps as little per step as one LSTM does.
    steps = tuple(checkpointed_step(c) for c in cells)

    def step(params, carry, x):
        new_carry = []
        y = x
        for layer_step, p, h in zip(steps, params, carry, strict=True):
            h, y = layer_step(p, h, y)
            new_carry.append(h)
        return tuple(new_carry), y

    def prepare(params):
        # Each layer's loop-invariant work (Cell.prepare), so that a stack of e.g.
        # orthogonal cells also does it once per call.
        return tuple(prepare_params(c, p) for c, p in zip(cells, params, strict=True))

    has_prepare = any(getattr(c, "prepare", None) is not None for c in cells)
    return Cell(init, initial_carry, step, prepare=prepare if has_prepare else None)
