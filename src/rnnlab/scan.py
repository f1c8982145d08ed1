r"""Running a cell over a sequence: one ``jax.lax.scan`` over time, or a parallel scan.

:func:`scan` is the only place that loops over time; everything else in rnnlab
(stacks, bidirectional layers, diagnostics, training, the Flax wrappers) calls it.

Cells whose carry obeys a diagonal *linear* recurrence in the carry,
:math:`h_t = a_t \odot h_{t-1} + b_t` with :math:`a_t, b_t` functions of
:math:`x_t` only (the LRU, minGRU, minLSTM), may also expose those coefficients
(the :class:`LinearCell` protocol); :func:`scan` then offers ``mode="parallel"``,
which evaluates all T states with ``jax.lax.associative_scan`` in
:math:`O(\log T)` sequential depth instead of T.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnlab import fused
from rnnlab.cell import (
    Array,
    Carry,
    Params,
    PRNGKey,
    check_carry,
    check_cell,
    check_choice,
    check_float_input,
    checkpointed_step,
    prepare_params,
)

MODES = ("sequential", "parallel", "auto")


class LinearCell(NamedTuple):
    r"""A cell whose carry follows a diagonal linear recurrence: the parallel-scan protocol.

    .. math::
        h_t = a_t \odot h_{t-1} + b_t, \qquad (a_t, b_t) = \mathrm{coefficients}(\theta, x_t),
        \qquad y_t = \mathrm{readout}(\theta, h_t, x_t)

    The first three fields are the :class:`rnnlab.Cell` protocol, so a
    ``LinearCell`` works everywhere a cell does (``step`` is the sequential
    form). The two extra fields let :func:`scan` with ``mode="parallel"``
    compute every step at once. Like the cell protocol this is duck-typed:
    :func:`scan` looks for callable ``coefficients`` and ``readout`` attributes
    (:func:`has_parallel_form`), not for this class. :func:`linear_cell` builds
    one from ``coefficients`` and ``readout`` alone, deriving ``step`` so that
    the two forms agree by construction.

    The carry must be a single array ``h [*batch, N]`` (real or complex).

    Attributes:
      init: as :class:`rnnlab.Cell`.
      initial_carry: as :class:`rnnlab.Cell`; returns ``h [*batch, N]``.
      step: as :class:`rnnlab.Cell`; must equal
        ``h = a * h_prev + b; y = readout(params, h, x)``.
      coefficients: ``coefficients(params, xs) -> (a, b)``, elementwise over
        the leading axes: ``xs [*lead, F]`` gives ``b [*lead, N]`` and ``a``
        of a shape broadcastable to ``b``'s (e.g. ``[N]`` for a time-invariant
        :math:`\lambda`). :func:`scan` calls it once with
        ``xs [T, *batch, F]``, so ``a_t, b_t`` may depend on ``x_t`` but never
        on the carry.
      readout: ``readout(params, hs, xs) -> ys``, elementwise over the leading
        axes: the outputs from the states after each step ``hs [*lead, N]``
        and the inputs ``xs [*lead, F]``.
    """

    init: Callable[[PRNGKey, int], Params]
    initial_carry: Callable[..., Array]
    step: Callable[[Params, Array, Array], tuple[Array, Array]]
    coefficients: Callable[[Params, Array], tuple[Array, Array]]
    readout: Callable[[Params, Array, Array], Any]


def linear_cell(
    init: Callable[[PRNGKey, int], Params],
    initial_carry: Callable[..., Array],
    coefficients: Callable[[Params, Array], tuple[Array, Array]],
    readout: Callable[[Params, Array, Array], Any],
) -> LinearCell:
    """Builds a :class:`LinearCell`, deriving its ``step`` from ``coefficients`` and ``readout``.

    Args:
      init, initial_carry, coefficients, readout: as the fields of :class:`LinearCell`.

    Returns:
      ``LinearCell(init, initial_carry, step, coefficients, readout)`` with
      ``step(params, h, x) = (h', readout(params, h', x))``,
      ``h' = a * h + b``, ``(a, b) = coefficients(params, x)``.
    """

    def step(params: Params, h: Array, x: Array) -> tuple[Array, Any]:
        a, b = coefficients(params, x)
        h = jnp.broadcast_to(a, b.shape) * h + b
        return h, readout(params, h, x)

    return LinearCell(init, initial_carry, step, coefficients, readout)


def has_parallel_form(cell: Any) -> bool:
    """Whether ``cell`` has the :class:`LinearCell` attributes ``coefficients`` and ``readout``."""
    return callable(getattr(cell, "coefficients", None)) and callable(
        getattr(cell, "readout", None)
    )


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
) -> tuple[Carry, Any]:
    r"""Runs ``cell`` over the time axis of ``xs`` with one ``jax.lax.scan`` (or a parallel scan).

    .. math:: (c_t, y_t) = \mathrm{step}(\theta, c_{t-1}, x_t), \quad t = 0 \dots T-1

    With ``mode="parallel"`` a :class:`LinearCell` is evaluated as
    :math:`h_t = a_t \odot h_{t-1} + b_t` by ``jax.lax.associative_scan`` over
    the pairs :math:`(a_t, b_t)` with the associative operator
    :math:`(a, b) \bullet (a', b') = (a' a,\ a' b + b')` (:math:`(a, b)` the
    earlier step), :math:`h_{-1}` folded into the first step's :math:`b`. This
    runs in linear space: it never divides by a cumulative product
    :math:`\prod_{s \le t} a_s`, so that product underflowing to zero over a
    long sequence is harmless (it is the exact forgetting of :math:`h_{-1}`);
    the log-space formulation of Feng et al. (2024) guards against exactly that
    division in its ``cumsum``/``logcumsumexp`` closed form, and is not needed
    here. The parallel form does :math:`O(T)` work (about twice the
    sequential's) in :math:`O(\log T)` depth and keeps every
    :math:`(a_t, b_t)` in memory (see ``benchmarks/parallel_scan.py``). Padded steps
    (``lengths``) get :math:`a_t = 1, b_t = 0`, so the carry passes through
    them unchanged, exactly as in the sequential path.

    A cell may have an optional ``prepare(params) -> params'`` attribute for
    work that depends only on the params (e.g. the matrix exponential of
    :func:`rnnlab.orthogonal`): the sequential path then runs
    ``step(prepare(params), ...)``, so that work (and its derivative) happens
    once per call rather than once per step. ``step`` must accept both forms
    and give the same results.

    A cell's ``step`` may also carry a ``checkpoint_policy`` attribute, a
    ``jax.checkpoint`` policy such as ``jax.checkpoint_policies.dots_saveable``
    (:func:`rnnlab.checkpointed_step`): the sequential path then wraps each step in
    ``jax.checkpoint`` with it, so that the backward pass keeps only what the
    policy saves (for :func:`rnnlab.lstm` and :func:`rnnlab.gru`, the matmul
    outputs; for :func:`rnnlab.mingru`, nothing but the step's inputs) and
    recomputes the rest of the step. Values and gradients are
    unchanged; the stored intermediates shrink (the LSTM's by about 40%), and
    on a 2-core CPU the forward+backward pass of those cells took
    0.63-1.03x the time (``benchmarks/results/speed_investigation.md`` section
    9). The fused derivative (:mod:`rnnlab.fused`, the default on GPUs) keeps
    its own residuals and does not read the policy.

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
      unroll: passed to ``jax.lax.scan`` (sequential mode only).
      mode: ``"sequential"`` (the default, and the behaviour of rnnlab before
        ``mode`` existed): one ``jax.lax.scan`` over ``cell.step``, for any
        cell. ``"parallel"``: ``jax.lax.associative_scan`` over the
        :class:`LinearCell` coefficients; a ValueError for cells without them.
        ``"auto"``: parallel if the cell has the parallel form
        (:func:`has_parallel_form`), else sequential. The default stays
        sequential so that existing calls compute exactly what they did (the
        parallel results differ by rounding) and because the parallel form
        holds all T coefficients in memory at once; which mode is faster
        depends on the device and the sizes (``benchmarks/parallel_scan.py``).
      remat: checkpointed backpropagation through time (sequential mode only).
        ``False`` (default): the backward pass keeps every step's
        intermediates, O(T) memory. An int ``k``: the steps run in chunks of
        ``k`` (a scan over chunks, each chunk a ``jax.checkpoint``-ed scan of
        ``k`` steps), so the backward pass stores only the carry at each
        chunk boundary and recomputes one chunk's intermediates at a time:
        memory O(T/k + k) carries for about one extra forward pass of compute.
        ``True``: ``k = ceil(sqrt(T))``, the memory-optimal choice. Values and
        gradients equal those without remat (same operations, recomputed).
        Memory still holds the inputs and outputs themselves.

    Returns:
      ``(final_carry, ys)``, ``ys`` with the time axis at ``time_axis``, e.g.
      ``[T, *batch, H]``.

    Raises:
      TypeError: ``cell`` lacks the protocol, ``xs`` is not real floating, or
        ``lengths`` is not integer.
      ValueError: shapes do not match (``xs`` rank, ``carry``, ``lengths``),
        concrete ``lengths`` fall outside ``[0, T]``, ``mode`` is unknown,
        ``remat`` is not a bool or positive int, or
        ``mode="parallel"`` for a cell without the parallel form.
    """
    check_cell(cell)
    check_choice(mode, MODES, "mode")
    parallel = has_parallel_form(cell)
    if mode == "parallel" and not parallel:
        raise ValueError(
            f"mode='parallel' needs a cell with the parallel form (callable "
            f"`coefficients` and `readout` attributes, see rnnlab.LinearCell: cells "
            f"whose carry is linear in itself, such as lru, mingru, minlstm); "
            f"received {type(cell).__name__} without them. Use mode='sequential' "
            f"or mode='auto'."
        )
    parallel = parallel and mode != "sequential"
    if isinstance(remat, bool) or remat is None:
        remat = bool(remat)
    elif not isinstance(remat, (int, np.integer)) or remat < 1:
        raise ValueError(f"remat must be a bool or a positive int; received {remat!r}.")
    xs = jnp.asarray(xs)
    check_float_input(xs, "xs")
    from rnnlab import checks  # opt-in NaN/Inf checks, a no-op unless turned on

    checks.check_finite_args("scan", xs=xs, params=params, carry=carry)
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
        check_carry(cell, params, carry, batch_shape)
    if not parallel and num_steps:
        _check_step_keeps_carry_dtype(cell, params, carry, xs)

    if parallel:
        if lengths is not None:
            lengths = _check_lengths(lengths, batch_shape, num_steps)
        carry, ys = _parallel_scan(cell, params, xs, carry, lengths, reverse)
        ys = jax.tree.map(lambda y: jnp.moveaxis(y, 0, time_axis), ys)
        return carry, ys

    gated = fused.get_gated(cell) if fused.enabled() and remat is False else None
    if gated is None:
        # Loop-invariant work on the params (e.g. a matrix exponential), done
        # once here: inside the body its derivative would be transposed at
        # every step of the backward pass.
        params = prepare_params(cell, params)
        step = checkpointed_step(cell)
    if gated is not None:
        # Same values as the loop below; a hand-written derivative whose weight
        # gradients are one matmul over all steps (rnnlab.fused).
        valid = None
        if lengths is not None:
            lengths = _check_lengths(lengths, batch_shape, num_steps)
            t = jnp.arange(num_steps).reshape((-1,) + (1,) * lengths.ndim)
            valid = t < lengths[None]  # [T, *batch]
        flip = (lambda a: jnp.flip(a, 0)) if lengths is None else (
            lambda a: _flip_valid(a, lengths))
        if reverse:
            xs = flip(xs)
        carry, ys = fused.gated_scan(gated, params, carry, xs, valid, unroll=unroll)
        if reverse:
            ys = jax.tree.map(flip, ys)
    elif lengths is None:
        carry, ys = _loop(
            lambda c, x: step(params, c, x), carry, xs,
            reverse=reverse, unroll=unroll, remat=remat,
        )
    else:
        lengths = _check_lengths(lengths, batch_shape, num_steps)
        if reverse:
            xs = _flip_valid(xs, lengths)

        def body(c, t_x):
            t, x = t_x
            new_c, y = step(params, c, x)
            valid = t < lengths  # [*batch]
            new_c = jax.tree.map(lambda n, o: jnp.where(_expand(valid, n), n, o), new_c, c)
            y = jax.tree.map(lambda v: jnp.where(_expand(valid, v), v, jnp.zeros_like(v)), y)
            return new_c, y

        carry, ys = _loop(
            body, carry, (jnp.arange(num_steps), xs), reverse=False, unroll=unroll, remat=remat
        )
        if reverse:
            ys = jax.tree.map(lambda y: _flip_valid(y, lengths), ys)

    ys = jax.tree.map(lambda y: jnp.moveaxis(y, 0, time_axis), ys)
    return carry, ys


def _loop(
    body: Callable, carry: Carry, xs: Any, *, reverse: bool, unroll: int | bool, remat: int | bool
) -> tuple[Carry, Any]:
    """``jax.lax.scan(body, carry, xs)``, optionally checkpointed in chunks (see ``scan``'s remat).

    With ``remat=k`` the first ``(T // k) * k`` steps run as an outer scan over
    ``T // k`` chunks, each a ``jax.checkpoint``-ed inner scan of ``k`` steps;
    the last ``T % k`` steps run as one more checkpointed scan (first, when
    ``reverse``), so any T works without padding the sequence.
    """
    num_steps = jax.tree.leaves(xs)[0].shape[0]
    if remat is False or num_steps == 0:
        return jax.lax.scan(body, carry, xs, reverse=reverse, unroll=unroll)
    k = max(1, int(np.ceil(np.sqrt(num_steps)))) if remat is True else int(remat)
    k = min(k, num_steps)
    num_chunks, rest = divmod(num_steps, k)
    main = num_chunks * k

    @jax.checkpoint
    def chunk(c, xs_chunk):
        return jax.lax.scan(body, c, xs_chunk, reverse=reverse, unroll=unroll)

    def run_main(c, xs_main):
        xs_main = jax.tree.map(lambda x: x.reshape((num_chunks, k) + x.shape[1:]), xs_main)
        c, ys = jax.lax.scan(chunk, c, xs_main, reverse=reverse)
        return c, jax.tree.map(lambda y: y.reshape((main,) + y.shape[2:]), ys)

    head = jax.tree.map(lambda x: x[:main], xs)
    if not rest:
        return run_main(carry, head)
    tail = jax.tree.map(lambda x: x[main:], xs)
    if reverse:
        carry, ys_tail = chunk(carry, tail)
        carry, ys_head = run_main(carry, head)
    else:
        carry, ys_head = run_main(carry, head)
        carry, ys_tail = chunk(carry, tail)
    ys = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), ys_head, ys_tail)
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
    mode: str = "sequential",
) -> tuple[tuple[Carry, Carry], Any]:
    r"""A bidirectional layer: ``forward`` reads the sequence left to right,
    ``backward`` right to left (each sequence from its own last valid step when
    ``lengths`` is given), and their outputs at each step are merged.

    .. math:: y_t = \mathrm{merge}(\overrightarrow{y}_t, \overleftarrow{y}_t)

    Args:
      forward, backward: cells (may be the same cell object with separate params).
      params: ``(forward_params, backward_params)``.
      xs, lengths, time_axis, unroll, mode: as in :func:`scan`.
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
    kwargs = dict(lengths=lengths, time_axis=time_axis, unroll=unroll, mode=mode)
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


def _parallel_scan(
    cell: Any, params: Params, xs: Array, h0: Array, lengths: Array | None, reverse: bool
) -> tuple[Array, Any]:
    """The parallel path of :func:`scan`; ``xs [T, *batch, F]`` time-major."""
    num_steps = xs.shape[0]
    if reverse:
        # Read each sequence backwards by reversing its valid part, running
        # forwards, and reversing the outputs back (the map is an involution).
        xs = jnp.flip(xs, 0) if lengths is None else _flip_valid(xs, lengths)
    a, b = cell.coefficients(params, xs)
    a = jnp.broadcast_to(a, b.shape)
    if lengths is not None:
        t = jnp.arange(num_steps).reshape((-1,) + (1,) * lengths.ndim)
        valid = t < lengths[None]  # [T, *batch]
        a = jnp.where(_expand(valid, a), a, jnp.ones_like(a))
        b = jnp.where(_expand(valid, b), b, jnp.zeros_like(b))
    if num_steps == 0:
        hs, final = b, h0
    else:
        hs = _linear_recurrence(a, b, h0)
        final = hs[-1]  # padded steps carry the last valid state to the end
    ys = cell.readout(params, hs, xs)
    if lengths is not None:
        ys = jax.tree.map(lambda y: jnp.where(_expand(valid, y), y, jnp.zeros_like(y)), ys)
    if reverse:
        ys = jax.tree.map(
            lambda y: jnp.flip(y, 0) if lengths is None else _flip_valid(y, lengths), ys
        )
    return final, ys


def _linear_recurrence(a: Array, b: Array, h0: Array) -> Array:
    """All states of ``h_t = a_t * h_{t-1} + b_t`` (``a, b [T, ...]``, ``h0 [...]``) at once."""
    b = b.at[0].add(a[0] * h0)  # fold the initial state into the first step

    def combine(earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        return a2 * a1, a2 * b1 + b2

    _, hs = jax.lax.associative_scan(combine, (a, b))
    return hs


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
