r"""Running a cell over a sequence: :func:`scan` and :func:`bidirectional`.

:func:`scan` is the only place that loops over time; everything else in rnnlab
(stacks, bidirectional layers, diagnostics, training, the Flax wrappers) calls
it. It validates and normalises its arguments once, picks a path from
:mod:`rnnlab.modes` and calls it. ``docs/sequences.md`` explains the options at
length.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnlab import checks
from rnnlab.cell import (
    Array,
    Carry,
    Params,
    affine_form,
    checkpointed_step,
    has_parallel_form,
    linear_form,
    prepare_params,
)
from rnnlab.modes import fused, parallel, sequential
from rnnlab.modes import newton as newton_mode
from rnnlab.modes.masking import reading_order, reading_order_resets, valid_steps
from rnnlab.modes.newton import NewtonInfo, NewtonOptions
from rnnlab.validation import check_carry, check_cell, check_choice, check_float_input

MODES = ("sequential", "parallel", "auto", "newton", "quasi-newton")
NEWTON_MODES = ("newton", "quasi-newton")
DERIVATIVES = ("auto", "autodiff", "fused")
MERGE_MODES = ("concat", "sum", "mul", "ave", None)


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
    mode: str = "sequential",
    remat: int | bool = False,
    derivative: str = "auto",
    resets: Array | None = None,
    newton: NewtonOptions | None = None,
    return_info: bool = False,
) -> tuple[Carry, Any] | tuple[Carry, Any, NewtonInfo]:
    r"""Runs ``cell`` over the time axis of ``xs``.

    .. math:: (c_t, y_t) = \mathrm{step}(\theta, c_{t-1}, x_t), \quad t = 0 \dots T-1

    Args:
      cell: any object with ``init``, ``initial_carry`` and ``step``.
      params: the cell's parameters, from ``cell.init``.
      xs: inputs ``[T, *batch, F]`` (time at ``time_axis``); real floating dtype.
      carry: the initial carry; ``cell.initial_carry(params, batch_shape)`` if
        None. Its shapes must be those of ``initial_carry`` (nothing is broadcast).
      lengths: optional ``[*batch]`` ints in ``[0, T]``, the valid lengths of
        right-padded sequences: padded steps leave the carry unchanged and output
        zeros, so the final carry is each sequence's carry after its last valid step.
      reverse: read each sequence from its last valid step to its first;
        ``ys[t]`` stays the output on reading ``xs[t]``.
      time_axis: the time axis of ``xs`` and of the outputs (1 for ``[B, T, F]``).
      unroll: passed to ``jax.lax.scan``.
      mode: ``"sequential"`` (one ``jax.lax.scan`` over ``step``, any cell),
        ``"parallel"`` (``jax.lax.associative_scan`` over the cell's
        :class:`rnnlab.LinearForm`), ``"auto"`` (parallel where the cell has
        that form), or ``"newton"`` / ``"quasi-newton"`` (any cell: the T steps
        solved as one system by Newton iterations, each a parallel linear
        recurrence, with full or diagonal Jacobians of ``step``;
        :mod:`rnnlab.modes.newton`). All agree to rounding; the Newton modes
        once converged, which the default iteration cap guarantees.
      remat: checkpointed backpropagation through time: False, an int ``k``
        (the backward pass keeps the carry every ``k`` steps and recomputes each
        chunk), or True (``k = ceil(sqrt(T))``). Same values and gradients.
      derivative: how the sequential path is evaluated and differentiated:
        ``"autodiff"`` (JAX differentiates the scan of ``checkpointed_step(cell)``),
        ``"fused"`` (the cell's :class:`rnnlab.AffineForm` with a whole-sequence
        derivative: the weight and input gradients as single matmuls after the
        loop), or ``"auto"`` (``"fused"`` on GPUs for cells with
        that form and no ``remat``, where it was measured faster; else
        ``"autodiff"``). The two agree to rounding.
      resets: optional booleans ``[T, *batch]`` (time at ``time_axis``, like
        ``xs``): where ``resets[t]`` is true, the step at ``t`` starts from the
        initial carry (``carry``, or ``cell.initial_carry``) instead of the
        previous carry, so each sequence is cut into segments scanned
        independently; no value or gradient crosses a reset. With ``reverse``
        the segments are the same, each read from its end. Resets at padded
        steps are ignored.
      newton: a :class:`rnnlab.NewtonOptions` (or a dict of its fields) for the
        Newton modes: tolerance, iteration cap, damping, what to do on failure.
      return_info: Newton modes only: also return a :class:`rnnlab.modes.newton.NewtonInfo`
        (iterations made, final residual, converged).

    Returns:
      ``(final_carry, ys)``, ``ys`` with the time axis at ``time_axis``;
      ``(final_carry, ys, info)`` with ``return_info=True``.

    Raises:
      TypeError: ``cell`` lacks the protocol, ``xs`` is not real floating, or
        ``lengths`` is not integer.
      ValueError: a shape does not match, concrete ``lengths`` fall outside
        ``[0, T]``, an option is unknown, or the cell lacks the form a
        ``mode``/``derivative`` asks for.
    """
    check_cell(cell)
    remat = _check_remat(remat)
    path = _path(cell, mode, derivative, remat)
    if path in NEWTON_MODES:
        newton_options = newton_mode.check_options(newton)
    elif newton is not None or return_info:
        raise ValueError(
            f"newton= and return_info= apply to mode='newton' or 'quasi-newton'; received "
            f"them with mode={mode!r}."
        )
    xs = jnp.asarray(xs)
    check_float_input(xs, "xs")
    checks.check_finite_args("scan", xs=xs, params=params, carry=carry)  # opt-in
    time_axis = _check_time_axis(time_axis, xs)
    if resets is not None:
        resets = jnp.moveaxis(_check_resets(resets, xs.shape[:-1], time_axis), time_axis, 0)
    xs = jnp.moveaxis(xs, time_axis, 0)
    num_steps, batch_shape = xs.shape[0], xs.shape[1:-1]
    if carry is None:
        carry = cell.initial_carry(params, batch_shape)
    else:
        check_carry(cell, params, carry, batch_shape)
    if num_steps:
        _check_step_keeps_carry_dtype(cell, params, carry, xs)
    if lengths is not None:
        lengths = _check_lengths(lengths, batch_shape, num_steps)
    valid = None if lengths is None else valid_steps(lengths, num_steps)
    if resets is not None:
        if reverse:
            resets = reading_order_resets(resets, lengths)
        if valid is not None:
            resets = resets & valid  # padding is padding: it never restarts the carry
    if reverse:
        xs = reading_order(xs, lengths)
    # Loop-invariant work on the params (e.g. a matrix exponential), done once here:
    # inside the loop its derivative would be transposed at every step.
    params = prepare_params(cell, params)

    info = None
    if path == "parallel":
        carry, ys = parallel.run(linear_form(cell), params, carry, xs, valid, resets)
    elif path == "fused":
        carry, ys = fused.run(affine_form(cell), params, carry, xs, valid, unroll=unroll,
                              resets=resets)
    elif path in NEWTON_MODES:
        carry, ys, info = newton_mode.run(cell.step, params, carry, xs, valid, resets,
                                     quasi=path == "quasi-newton", options=newton_options)
    else:
        step = checkpointed_step(cell)
        carry, ys = sequential.run(step, params, carry, xs, valid, unroll=unroll, remat=remat,
                                   resets=resets)

    if reverse:
        ys = jax.tree.map(lambda y: reading_order(y, lengths), ys)
    ys = jax.tree.map(lambda y: jnp.moveaxis(y, 0, time_axis), ys)
    return (carry, ys, info) if return_info else (carry, ys)


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
    mode: str = "sequential",
    remat: int | bool = False,
    derivative: str = "auto",
    resets: Array | None = None,
    newton: NewtonOptions | None = None,
) -> tuple[tuple[Carry, Carry], Any]:
    r"""A bidirectional layer: ``forward`` reads the sequence left to right,
    ``backward`` right to left (each sequence from its own last valid step when
    ``lengths`` is given), and their outputs at each step are merged.

    .. math:: y_t = \mathrm{merge}(\overrightarrow{y}_t, \overleftarrow{y}_t)

    Args:
      forward, backward: cells (may be the same cell object with separate params).
      params: ``(forward_params, backward_params)``.
      xs, lengths, time_axis, unroll, mode, remat, derivative, resets, newton: as in
        :func:`scan` (with ``resets``, both directions read the same segments).
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
    kwargs = dict(lengths=lengths, time_axis=time_axis, unroll=unroll, mode=mode, remat=remat,
                  derivative=derivative, resets=resets, newton=newton)
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


# ----------------------------------------------------------------------------- checks


def _path(cell: Any, mode: str, derivative: str, remat: int | bool) -> str:
    """Which path of :mod:`rnnlab.modes` runs: ``"parallel"``, ``"fused"`` or ``"sequential"``."""
    check_choice(mode, MODES, "mode")
    check_choice(derivative, DERIVATIVES, "derivative")
    if mode == "parallel" and not has_parallel_form(cell):
        raise ValueError(
            f"mode='parallel' needs a cell with a LinearForm (a carry that is linear in "
            f"itself, such as lru, mingru, minlstm; see rnnlab.LinearForm); received "
            f"{type(cell).__name__} without one. Use mode='sequential' or mode='auto'."
        )
    if mode in NEWTON_MODES:
        if derivative == "fused":
            raise ValueError(
                f"derivative='fused' applies to the sequential path; received it with "
                f"mode={mode!r}, whose derivative is its own (the implicit-function theorem)."
            )
        if remat is not False:
            raise ValueError(
                f"remat applies to the sequential path; received remat={remat!r} with "
                f"mode={mode!r}, whose backward pass keeps T Jacobians and no chunks."
            )
        return mode
    if mode == "parallel" or (mode == "auto" and has_parallel_form(cell)):
        if derivative == "fused":
            raise ValueError(
                "derivative='fused' applies to the sequential path; received it with "
                f"mode={mode!r}, which runs the parallel path for this cell."
            )
        return "parallel"
    has_affine = affine_form(cell) is not None
    if derivative == "fused":
        if not has_affine:
            raise ValueError(
                "derivative='fused' needs a cell with an AffineForm (such as lstm, gru, "
                f"elman; see rnnlab.AffineForm); received {type(cell).__name__} without one."
            )
        if remat is not False:
            raise ValueError(
                f"derivative='fused' keeps its own residuals and cannot be combined with "
                f"remat; received remat={remat!r}. Use derivative='autodiff' with remat."
            )
        return "fused"
    # The fused derivative is the faster one on GPUs only (docs/performance.md).
    if derivative == "auto" and has_affine and remat is False and jax.default_backend() == "gpu":
        return "fused"
    return "sequential"


def _check_resets(resets: Any, shape: tuple[int, ...], time_axis: int) -> Array:
    resets = jnp.asarray(resets)
    if resets.dtype != jnp.bool_:
        raise TypeError(
            f"resets must be a boolean array (True where a step starts from the initial "
            f"carry); received dtype {resets.dtype}."
        )
    if resets.shape != tuple(shape):
        raise ValueError(
            f"resets must have the shape of xs without its feature axis, {tuple(shape)} "
            f"(time at time_axis={time_axis}, like xs); received shape {resets.shape}."
        )
    return resets


def _check_remat(remat: Any) -> int | bool:
    if isinstance(remat, bool) or remat is None:
        return bool(remat)
    if not isinstance(remat, (int, np.integer)) or remat < 1:
        raise ValueError(f"remat must be a bool or a positive int; received {remat!r}.")
    return int(remat)


def _check_time_axis(time_axis: Any, xs: Array) -> int:
    # The feature axis is always last, so time may be any other axis.
    if xs.ndim < 2:
        raise ValueError(
            f"xs must have a time axis and a feature axis, e.g. [T, F] or [T, B, F]; "
            f"received shape {xs.shape}."
        )
    if isinstance(time_axis, bool) or not isinstance(time_axis, (int, np.integer)):
        raise TypeError(f"time_axis must be an int; received {time_axis!r}.")
    axis = int(time_axis) + xs.ndim if time_axis < 0 else int(time_axis)
    if not 0 <= axis < xs.ndim - 1:
        raise ValueError(
            f"time_axis must index a non-feature axis of xs (in [{-xs.ndim}, {xs.ndim - 2}] "
            f"excluding the last) for xs of rank {xs.ndim}; received {time_axis}."
        )
    return axis


def _check_step_keeps_carry_dtype(cell: Any, params: Params, carry: Carry, xs: Array) -> None:
    # lax.scan needs the carry's dtype fixed; a step that promotes it (float64
    # inputs into float32 params, say) would fail deep inside JAX with a message
    # about scan bodies. Tracing one step abstractly costs no computation.
    new_carry, _ = jax.eval_shape(lambda c, x: cell.step(params, c, x), carry, xs[0])
    old = [jnp.result_type(c) for c in jax.tree.leaves(carry)]
    new = [c.dtype for c in jax.tree.leaves(new_carry)]
    if old != new:
        raise TypeError(
            f"xs (dtype {xs.dtype}) and params must give a step that keeps the carry's dtype: "
            f"the carry has dtypes {[str(d) for d in old]} but cell.step returns "
            f"{[str(d) for d in new]}. Cast xs to the params' dtype (or the params to "
            f"xs's, e.g. jax.tree.map(lambda p: p.astype(xs.dtype), params))."
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
