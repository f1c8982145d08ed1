"""Running a cell over a sequence: one ``jax.lax.scan`` over time.

:func:`scan` is the only place that loops over time; everything else in rnnlab
(stacks, bidirectional layers, diagnostics, training, the Flax wrappers) calls it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnlab.cell import Array, Carry, Params, check_cell, check_choice, check_float_input


def scan(
    cell: Any,
    params: Params,
    xs: Array,
    *,
    carry: Carry | None = None,
    lengths: Array | None = None,
    reverse: bool = False,
    time_axis: int = 0,
    unroll: int | bool = 1,
) -> tuple[Carry, Any]:
    r"""Runs ``cell`` over the time axis of ``xs`` with one ``jax.lax.scan``.

    .. math:: (c_t, y_t) = \mathrm{step}(\theta, c_{t-1}, x_t), \quad t = 0 \dots T-1

    Args:
      cell: any object with ``init``, ``initial_carry`` and ``step`` (a
        :class:`rnnlab.Cell` or your own).
      params: the cell's parameters, from ``cell.init``.
      xs: inputs ``[T, *batch, F]`` (or ``[*batch, T, F]``-style with
        ``time_axis``); real floating dtype.
      carry: the initial carry; ``cell.initial_carry(params, batch_shape)`` if
        None. Its shapes must equal those of ``initial_carry`` for the inputs'
        batch shape (nothing is broadcast).
      lengths: optional ``[*batch]`` integer valid lengths of right-padded
        sequences, each in ``[0, T]``. Outputs at padded steps are zero and the
        final carry is the carry after each sequence's last valid step (the
        initial carry for a length-0 sequence).
      reverse: run from the end of each sequence to its start. Outputs stay
        aligned with their inputs (``ys[t]`` is the output on reading
        ``xs[t]``). With ``lengths``, each sequence is read backwards from its
        own last valid step and the padding stays padding.
      time_axis: the axis of ``xs`` (and of the outputs) that is time; 1 for
        batch-major ``[B, T, F]`` data. The feature axis is always last.
      unroll: passed to ``jax.lax.scan``.

    Returns:
      ``(final_carry, ys)``, ``ys`` with the time axis at ``time_axis``, e.g.
      ``[T, *batch, H]``.

    Raises:
      TypeError: ``cell`` lacks the protocol, ``xs`` is not real floating, or
        ``lengths`` is not integer.
      ValueError: shapes do not match (``xs`` rank, ``carry``, ``lengths``) or
        concrete ``lengths`` fall outside ``[0, T]``.
    """
    check_cell(cell)
    xs = jnp.asarray(xs)
    check_float_input(xs, "xs")
    if xs.ndim < 2:
        raise ValueError(
            f"xs must have a time axis and a feature axis, e.g. [T, F] or [T, B, F]; "
            f"received shape {xs.shape}."
        )
    time_axis = _normalise_time_axis(time_axis, xs.ndim)
    xs = jnp.moveaxis(xs, time_axis, 0)
    num_steps, batch_shape = xs.shape[0], xs.shape[1:-1]

    if carry is None:
        carry = cell.initial_carry(params, batch_shape)
    else:
        _check_carry(cell, params, carry, batch_shape)

    if lengths is None:
        carry, ys = jax.lax.scan(
            lambda c, x: cell.step(params, c, x), carry, xs, reverse=reverse, unroll=unroll
        )
    else:
        lengths = _check_lengths(lengths, batch_shape, num_steps)
        if reverse:
            xs = _flip_valid(xs, lengths)

        def body(c, t_x):
            t, x = t_x
            new_c, y = cell.step(params, c, x)
            valid = t < lengths  # [*batch]
            new_c = jax.tree.map(lambda n, o: jnp.where(_expand(valid, n), n, o), new_c, c)
            y = jax.tree.map(lambda v: jnp.where(_expand(valid, v), v, jnp.zeros_like(v)), y)
            return new_c, y

        carry, ys = jax.lax.scan(body, carry, (jnp.arange(num_steps), xs), unroll=unroll)
        if reverse:
            ys = jax.tree.map(lambda y: _flip_valid(y, lengths), ys)

    ys = jax.tree.map(lambda y: jnp.moveaxis(y, 0, time_axis), ys)
    return carry, ys


MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def bidirectional(
    forward: Any,
    backward: Any,
    params: tuple[Params, Params],
    xs: Array,
    *,
    carry: tuple[Carry, Carry] | None = None,
    lengths: Array | None = None,
    time_axis: int = 0,
    unroll: int | bool = 1,
    merge: str | None = "concat",
) -> tuple[tuple[Carry, Carry], Any]:
    r"""A bidirectional layer: ``forward`` reads the sequence left to right,
    ``backward`` right to left (each sequence from its own last valid step when
    ``lengths`` is given), and their outputs at each step are merged.

    .. math:: y_t = \mathrm{merge}(\overrightarrow{y}_t, \overleftarrow{y}_t)

    Args:
      forward, backward: cells (may be the same cell object with separate params).
      params: ``(forward_params, backward_params)``.
      xs, lengths, time_axis, unroll: as in :func:`scan`.
      carry: ``(forward_carry, backward_carry)`` or None for the initial carries.
      merge: ``"concat"`` (last axis, forward first), ``"sum"``, ``"mul"``,
        ``"ave"``, or None to return the pair ``(y_forward, y_backward)``
        (Keras' ``merge_mode`` names).

    Returns:
      ``((forward_final_carry, backward_final_carry), ys)``. The backward final
      carry is its state after reading each sequence's first element.
    """
    check_choice(merge, MERGE_MODES, "merge")
    if not (isinstance(params, (tuple, list)) and len(params) == 2):
        raise ValueError(
            "params must be a pair (forward_params, backward_params); "
            f"received {type(params).__name__}"
            + (f" of length {len(params)}" if isinstance(params, (tuple, list)) else "")
            + "."
        )
    c_fw, c_bw = (None, None) if carry is None else carry
    kwargs = dict(lengths=lengths, time_axis=time_axis, unroll=unroll)
    c_fw, y_fw = scan(forward, params[0], xs, carry=c_fw, **kwargs)
    c_bw, y_bw = scan(backward, params[1], xs, carry=c_bw, reverse=True, **kwargs)
    if merge is None:
        ys = (y_fw, y_bw)
    elif merge == "concat":
        ys = jnp.concatenate([y_fw, y_bw], axis=-1)
    elif merge == "sum":
        ys = y_fw + y_bw
    elif merge == "mul":
        ys = y_fw * y_bw
    else:
        ys = 0.5 * (y_fw + y_bw)
    return (c_fw, c_bw), ys


def _normalise_time_axis(time_axis: Any, ndim: int) -> int:
    # The feature axis is always last, so time may be any other axis.
    if isinstance(time_axis, bool) or not isinstance(time_axis, (int, np.integer)):
        raise TypeError(f"time_axis must be an int; received {time_axis!r}.")
    axis = int(time_axis) + ndim if time_axis < 0 else int(time_axis)
    if not 0 <= axis < ndim - 1:
        raise ValueError(
            f"time_axis must index a non-feature axis of xs (in [{-ndim}, {ndim - 2}] "
            f"excluding the last) for xs of rank {ndim}; received {time_axis}."
        )
    return axis


def _check_carry(cell: Any, params: Params, carry: Carry, batch_shape: tuple[int, ...]) -> None:
    expected = jax.eval_shape(cell.initial_carry, params, batch_shape)
    exp_leaves, exp_def = jax.tree.flatten(expected)
    got_leaves, got_def = jax.tree.flatten(carry)
    exp_shapes = [tuple(e.shape) for e in exp_leaves]
    got_shapes = [tuple(jnp.shape(g)) for g in got_leaves]
    if exp_def != got_def or exp_shapes != got_shapes:
        raise ValueError(
            f"carry must match cell.initial_carry(params, batch_shape={batch_shape}) for "
            f"inputs of batch shape {batch_shape}: expected structure {exp_def} with "
            f"shapes {exp_shapes}; received structure {got_def} with shapes {got_shapes}."
        )


def _check_lengths(lengths: Any, batch_shape: tuple[int, ...], num_steps: int) -> Array:
    lengths = jnp.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"lengths must have an integer dtype; received dtype {lengths.dtype}.")
    if lengths.shape != tuple(batch_shape):
        raise ValueError(
            f"lengths must have the inputs' batch shape {tuple(batch_shape)} (one length "
            f"per sequence); received shape {lengths.shape}."
        )
    try:
        concrete = np.asarray(lengths)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        concrete = None  # traced under jit/vmap: cannot be checked for free
    if concrete is not None and concrete.size and (
        concrete.min() < 0 or concrete.max() > num_steps
    ):
        raise ValueError(
            f"lengths must lie in [0, T] = [0, {num_steps}]; received values in "
            f"[{concrete.min()}, {concrete.max()}]."
        )
    return lengths


def _expand(mask: Array, like: Array) -> Array:
    """Appends singleton axes to a ``[*batch]`` mask to match ``like``'s rank."""
    return mask.reshape(mask.shape + (1,) * (jnp.ndim(like) - mask.ndim))


def _flip_valid(x: Array, lengths: Array) -> Array:
    """Reverses each sequence of ``x [T, *batch, ...]`` within its first ``lengths`` steps.

    Step t of sequence b goes to step ``L_b - 1 - t`` for ``t < L_b``; padding
    stays where it is. The map is its own inverse.
    """
    t = jnp.arange(x.shape[0]).reshape((-1,) + (1,) * lengths.ndim)  # [T, 1...]
    idx = jnp.where(t < lengths[None], lengths[None] - 1 - t, t)  # [T, *batch]
    return jnp.take_along_axis(x, _expand(idx, x), axis=0)
