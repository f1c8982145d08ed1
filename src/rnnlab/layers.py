r"""Multi-layer, optionally bidirectional recurrent layers in one call, as ``torch.nn.LSTM``.

:func:`rnn` is PyTorch's ``nn.RNN``/``nn.LSTM``/``nn.GRU(num_layers=K,
bidirectional=..., dropout=p)`` over rnnlab cells: layer ``k`` reads the
outputs of layer ``k-1`` (both directions concatenated), with dropout between
layers when a key is given. Params come from
:func:`rnnlab.convert.from_torch_rnn`; initial states from
:func:`rnnlab.convert.carries_from_torch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from rnnlab.cell import Array
from rnnlab.sequence import bidirectional as _bidirectional
from rnnlab.sequence import scan as _scan


def rnn(
    cells: Any,
    params: Sequence[Any],
    xs: Array,
    *,
    bidirectional: bool = False,
    carry: Sequence[Any] | None = None,
    lengths: Array | None = None,
    time_axis: int = 0,
    dropout: float = 0.0,
    key: jax.Array | None = None,
    mode: str = "sequential",
) -> tuple[tuple[Any, ...], Array]:
    r"""Runs K stacked layers, each unidirectional or bidirectional, over ``xs``.

    .. math:: y^{(0)} = x, \quad y^{(k)}_t = [\overrightarrow{y}^{(k)}_t,
              \overleftarrow{y}^{(k)}_t] \text{ of the layer-}k\text{ scans over }
              \mathrm{dropout}(y^{(k-1)})

    Dropout (PyTorch's ``dropout=``) applies to every layer's outputs but the
    last, with inverted scaling, only when ``key`` is given: pass ``key=None``
    at evaluation. The backward direction of each sequence starts at its last
    valid step (PyTorch's packed sequences); padded outputs are zero.

    Args:
      cells: one cell for every layer and direction, or a sequence of K cells
        (or K ``(forward, backward)`` pairs when ``bidirectional``).
      params: K layer params, bottom first; each a ``(forward, backward)`` pair
        when ``bidirectional``.
      xs: ``[T, *batch, F]`` (time at ``time_axis``).
      bidirectional: whether each layer reads both ways.
      carry: optional K initial carries (pairs when bidirectional).
      lengths: optional ``[*batch]`` valid lengths.
      time_axis: the time axis of ``xs`` and of the outputs.
      dropout: the drop probability between layers, in ``[0, 1)``.
      key: PRNG key for the dropout masks; None disables dropout.
      mode: passed to :func:`rnnlab.scan`.

    Returns:
      ``(final_carries, ys)``: a tuple of K final carries (pairs when
      bidirectional), and the top layer's outputs ``[T, *batch, D*H]``.
    """
    params = tuple(params)
    K = len(params)
    if K == 0:
        raise ValueError("params must hold at least one layer; received an empty sequence.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); received {dropout!r}.")
    if isinstance(cells, Sequence) and not hasattr(cells, "step"):
        cells = tuple(cells)
        if len(cells) != K:
            raise ValueError(f"cells must hold one cell per layer ({K}); received {len(cells)}.")
    else:
        cells = (cells,) * K
    if carry is not None and len(carry) != K:
        raise ValueError(f"carry must hold one carry per layer ({K}); received {len(carry)}.")
    finals = []
    y = xs
    for k in range(K):
        if k and key is not None and dropout > 0:
            keep = jax.random.bernoulli(jax.random.fold_in(key, k), 1 - dropout, y.shape)
            y = jnp.where(keep, y / (1 - dropout), 0).astype(y.dtype)
        c = None if carry is None else carry[k]
        if bidirectional:
            cell = cells[k]
            fwd, bwd = (cell, cell) if hasattr(cell, "step") else tuple(cell)
            final, y = _bidirectional(fwd, bwd, params[k], y, carry=c, lengths=lengths,
                                      time_axis=time_axis, mode=mode)
        else:
            final, y = _scan(cells[k], params[k], y, carry=c, lengths=lengths,
                             time_axis=time_axis, mode=mode)
        finals.append(final)
    return tuple(finals), y
