"""The sequential path: one ``jax.lax.scan`` over the cell's step, for any cell."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnlab.cell import Array, Carry, Params
from rnnlab.modes.masking import keep_valid, restart, zero_invalid


def run(
    step: Callable[[Params, Carry, Array], tuple[Carry, Any]],
    params: Params,
    carry: Carry,
    xs: Array,
    valid: Array | None,
    *,
    unroll: int | bool = 1,
    remat: int | bool = False,
    resets: Array | None = None,
) -> tuple[Carry, Any]:
    """``jax.lax.scan`` of ``step`` over ``xs [T, *batch, F]`` (see :mod:`rnnlab.modes`).

    Args:
      step: the step to run, e.g. :func:`rnnlab.checkpointed_step` of the cell.
      params, carry, xs, valid: the normalised problem.
      unroll: passed to ``jax.lax.scan``.
      remat: False, True (chunks of ``ceil(sqrt(T))`` steps) or a chunk length:
        see :func:`rnnlab.scan`.
      resets: optional ``[T, *batch]`` booleans (already False at invalid steps):
        where true, the step starts from ``carry`` instead of the previous carry.
    """
    if resets is not None:
        initial = carry

        def body(c, inputs):
            x, v, r = inputs
            c = restart(r, initial, c)
            new_c, y = step(params, c, x)
            return keep_valid(v, new_c, c), zero_invalid(v, y)

        return _loop(body, carry, (xs, valid, resets), unroll=unroll, remat=remat)
    if valid is None:
        return _loop(lambda c, x: step(params, c, x), carry, xs, unroll=unroll, remat=remat)

    def body(c, x_and_valid):
        x, v = x_and_valid
        new_c, y = step(params, c, x)
        return keep_valid(v, new_c, c), zero_invalid(v, y)

    return _loop(body, carry, (xs, valid), unroll=unroll, remat=remat)


def _loop(
    body: Callable, carry: Carry, xs: Any, *, unroll: int | bool, remat: int | bool
) -> tuple[Carry, Any]:
    """``jax.lax.scan(body, carry, xs)``, optionally checkpointed in chunks of ``k`` steps.

    With ``remat=k`` the first ``(T // k) * k`` steps run as an outer scan over
    ``T // k`` chunks, each a ``jax.checkpoint``-ed inner scan of ``k`` steps;
    the last ``T % k`` steps run as one more checkpointed scan, so any T works
    without padding. The backward pass stores only the carry at each chunk
    boundary and recomputes one chunk at a time.
    """
    num_steps = jax.tree.leaves(xs)[0].shape[0]
    if remat is False or num_steps == 0:
        return jax.lax.scan(body, carry, xs, unroll=unroll)
    k = max(1, int(np.ceil(np.sqrt(num_steps)))) if remat is True else int(remat)
    k = min(k, num_steps)
    num_chunks, rest = divmod(num_steps, k)
    main = num_chunks * k

    @jax.checkpoint
    def chunk(c, xs_chunk):
        return jax.lax.scan(body, c, xs_chunk, unroll=unroll)

    head = jax.tree.map(lambda x: x[:main].reshape((num_chunks, k) + x.shape[1:]), xs)
    carry, ys = jax.lax.scan(chunk, carry, head)
    ys = jax.tree.map(lambda y: y.reshape((main,) + y.shape[2:]), ys)
    if rest:
        carry, ys_tail = chunk(carry, jax.tree.map(lambda x: x[main:], xs))
        ys = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), ys, ys_tail)
    return carry, ys
