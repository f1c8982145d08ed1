"""Validity masks and reading order, shared by every scan path."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rnnlab.cell import Array


def valid_steps(lengths: Array, num_steps: int) -> Array:
    """``valid [T, *batch]``: whether step t lies within each sequence's length."""
    t = jnp.arange(num_steps).reshape((-1,) + (1,) * lengths.ndim)
    return t < lengths[None]


def expand(mask: Array, like: Array) -> Array:
    """Appends singleton axes to a ``[*batch]`` mask to match ``like``'s rank."""
    return mask.reshape(mask.shape + (1,) * (jnp.ndim(like) - mask.ndim))


def keep_valid(valid: Array | None, new: Any, old: Any) -> Any:
    """``new`` where ``valid [*batch]``, ``old`` elsewhere, leaf by leaf (``new`` if None)."""
    if valid is None:
        return new
    return jax.tree.map(lambda n, o: jnp.where(expand(valid, n), n, o), new, old)


def zero_invalid(valid: Array | None, y: Any) -> Any:
    """``y`` where ``valid [*batch]``, zeros elsewhere, leaf by leaf (``y`` if None)."""
    if valid is None:
        return y
    return jax.tree.map(lambda v: jnp.where(expand(valid, v), v, jnp.zeros_like(v)), y)


def reading_order(x: Array, lengths: Array | None) -> Array:
    """Reverses each sequence of ``x [T, *batch, ...]`` within its first ``lengths`` steps.

    Step t of sequence b goes to step ``L_b - 1 - t`` for ``t < L_b``; padding
    stays where it is (the whole axis is flipped when ``lengths`` is None). The
    map is its own inverse, so it also takes the outputs back to input order.
    """
    if lengths is None:
        return jnp.flip(x, 0)
    t = jnp.arange(x.shape[0]).reshape((-1,) + (1,) * lengths.ndim)  # [T, 1...]
    idx = jnp.where(t < lengths[None], lengths[None] - 1 - t, t)  # [T, *batch]
    return jnp.take_along_axis(x, expand(idx, x), axis=0)


def restart(resets: Array | None, initial: Any, carry: Any) -> Any:
    """``initial`` where ``resets [*batch]``, ``carry`` elsewhere, leaf by leaf.

    The carry a step starts from: at a reset the sequence begins again from the
    initial carry, so nothing before the reset reaches the steps after it (nor
    their gradients anything before it).
    """
    if resets is None:
        return carry
    return jax.tree.map(lambda i, c: jnp.where(expand(resets, c), i, c), initial, carry)


def reading_order_resets(resets: Array, lengths: Array | None) -> Array:
    """The resets of a reversed read, in reading order.

    Read backwards, each segment (a reset starts one) is read from its last
    step to its first, so a backward read restarts at each segment's last step:
    step t ends a segment when step t + 1 starts the next. The last valid step
    ends the last segment; it comes first in reading order, where the scan
    starts from the initial carry anyway.
    """
    ends = jnp.concatenate([resets[1:], jnp.zeros_like(resets[:1])], axis=0)
    return reading_order(ends, lengths)
