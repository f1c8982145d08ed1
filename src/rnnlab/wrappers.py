"""Flax wrappers: any object following the :class:`rnnlab.Cell` protocol as a
``flax.linen`` or ``flax.nnx`` module.

They hold no maths: parameters come from ``cell.init``, sequences go through
:func:`rnnlab.scan`, and the cell (its hyper-parameters) is static, never state::

    class Model(nn.Module):                      # linen
        @nn.compact
        def __call__(self, xs):                  # xs [T, B, F]
            ys = LinenRNN(rnnlab.lstm(32))(xs)   # [T, B, 32]
            return nn.Dense(1)(ys)

    rnn = NNXRNN(rnnlab.lstm(32), input_size=8, rngs=nnx.Rngs(0))   # nnx
    ys = rnn(xs)

In linen the cell's params live, whole, in one param named ``"cell"``:
``variables["params"]["LinenRNN_0"]["cell"]`` is e.g. an :class:`rnnlab.LSTMParams`,
usable directly with :func:`rnnlab.scan` and :mod:`rnnlab.convert`. In nnx every
leaf of the params pytree is an ``nnx.Param`` (state paths such as
``params/W_x``), and :meth:`NNXRNN.param_values` gives back the plain pytree.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from rnnlab.cell import Array, Carry, Params, checkpointed_step
from rnnlab.sequence import scan
from rnnlab.validation import check_batch_shape, check_cell


def _input_size(xs: Any) -> int:
    shape = jnp.shape(xs)
    if len(shape) < 2:
        raise ValueError(
            f"xs must have a time axis and a feature axis, e.g. [T, F] or [T, B, F]; "
            f"received shape {shape}."
        )
    return shape[-1]


def _run(module: Any, params: Params, xs, carry, lengths, reverse, return_carry,
         resets=None) -> Any:
    """:func:`rnnlab.scan` with a wrapper's options, call-time overrides first (both wrappers)."""
    final_carry, ys = scan(
        module.cell,
        params,
        xs,
        carry=carry,
        lengths=lengths,
        resets=resets,
        reverse=module.reverse if reverse is None else reverse,
        time_axis=module.time_axis,
        unroll=module.unroll,
        mode=module.mode,
        derivative=module.derivative,
    )
    return_carry = module.return_carry if return_carry is None else return_carry
    return (final_carry, ys) if return_carry else ys


class LinenRNN(nn.Module):
    """Runs a cell over a sequence inside a ``flax.linen`` model.

    ``__call__`` is :func:`rnnlab.scan` with the cell's params held by the
    module (created with ``cell.init(key, F)``, F read off the inputs' last axis).

    Attributes:
      cell: any object with ``init``, ``initial_carry`` and ``step`` (static).
      time_axis: the time axis of the inputs and outputs (0: ``[T, *batch, F]``;
        1 for batch-major ``[B, T, F]``). Note: ``flax.linen.RNN`` defaults to
        batch-major; rnnlab to time-major.
      reverse: run each sequence from its end (outputs stay aligned with inputs).
      return_carry: return ``(final_carry, ys)`` rather than ``ys``.
      unroll: passed to ``jax.lax.scan``.
      mode: ``"sequential"``, ``"parallel"`` or ``"auto"``, as in :func:`rnnlab.scan`.
      derivative: ``"auto"``, ``"autodiff"`` or ``"fused"``, as in :func:`rnnlab.scan`.
    """

    cell: Any
    time_axis: int = 0
    reverse: bool = False
    return_carry: bool = False
    unroll: int | bool = 1
    mode: str = "sequential"
    derivative: str = "auto"

    @nn.compact
    def __call__(
        self,
        xs: Array,
        *,
        carry: Carry | None = None,
        lengths: Array | None = None,
        reverse: bool | None = None,
        return_carry: bool | None = None,
        resets: Array | None = None,
    ) -> Any:
        """Runs the cell over ``xs``.

        Args:
          xs: inputs ``[T, *batch, F]`` (time at ``time_axis``).
          carry: initial carry; ``cell.initial_carry(params, batch_shape)`` if None.
          lengths: optional ``[*batch]`` valid lengths (see :func:`rnnlab.scan`).
          resets: optional booleans shaped like ``xs`` without its feature axis:
            where true the step starts from the initial carry (see :func:`rnnlab.scan`).
          reverse: overrides the attribute.
          return_carry: overrides the attribute.

        Returns:
          ``ys`` ``[T, *batch, H]``, or ``(final_carry, ys)`` with ``return_carry``.
        """
        check_cell(self.cell)
        params = self.param("cell", self.cell.init, _input_size(xs))
        return _run(self, params, xs, carry, lengths, reverse, return_carry, resets)


class LinenCell(nn.RNNCellBase):
    """One step of a cell as a ``flax.linen`` RNN cell, for ``flax.linen.RNN``.

    ``nn.RNN(LinenCell(rnnlab.lstm(32)))`` behaves like ``nn.RNN(nn.LSTMCell(32))``
    (flax's batch-major default, flax's ``seq_lengths``/``keep_order``), with
    the cell's params in one param named ``"cell"``. Prefer :class:`LinenRNN`
    unless flax's RNN machinery is wanted. The step runs under its checkpoint
    policy (:func:`rnnlab.checkpointed_step`), as in :func:`rnnlab.scan`.

    The carry comes from ``cell.initial_carry(params, batch_shape)``. When the
    params do not exist yet (during ``init``, or on an unbound module) it is
    zeros of that carry's shapes and dtypes instead, which differs only for a
    cell whose initial carry depends on its parameter values.

    Attributes:
      cell: any object with ``init``, ``initial_carry`` and ``step`` (static).
    """

    cell: Any

    @nn.compact
    def __call__(self, carry: Carry, inputs: Array) -> tuple[Carry, Array]:
        """One step: ``inputs [*batch, F]`` -> ``(carry, y [*batch, H])``."""
        check_cell(self.cell)
        params = self.param("cell", self.cell.init, jnp.shape(inputs)[-1])
        # The step under its checkpoint policy, as rnnlab.scan runs it, so that
        # flax's scan differentiates it the same way (rnnlab.checkpointed_step).
        return checkpointed_step(self.cell)(params, carry, inputs)

    @nn.nowrap
    def initialize_carry(self, rng: Any, input_shape: tuple[int, ...]) -> Carry:
        """The initial carry for inputs of shape ``[*batch, F]`` (``rng`` is unused)."""
        del rng  # the Cell protocol's initial carry is deterministic
        check_cell(self.cell)
        batch_shape = check_batch_shape(tuple(input_shape[:-1]))
        if self.scope is not None and self.has_variable("params", "cell"):
            return self.cell.initial_carry(self.get_variable("params", "cell"), batch_shape)
        input_size = int(input_shape[-1])
        abstract_params = jax.eval_shape(
            lambda key: self.cell.init(key, input_size), jax.random.key(0)
        )
        abstract_carry = jax.eval_shape(
            lambda p: self.cell.initial_carry(p, batch_shape), abstract_params
        )
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract_carry)

    @property
    def num_feature_axes(self) -> int:
        return 1


class NNXRNN(nnx.Module):
    """Runs a cell over a sequence as a ``flax.nnx`` module.

    Each leaf of ``cell.init(rngs.params(), input_size)`` becomes an
    ``nnx.Param`` in the same pytree structure (attribute ``params``), so
    ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` trains them; the cell itself is
    a static attribute.

    Args:
      cell: any object with ``init``, ``initial_carry`` and ``step``.
      input_size: F, the inputs' feature size.
      rngs: ``nnx.Rngs``; one key is drawn from its ``params`` stream.
      time_axis, reverse, return_carry, unroll, mode, derivative: defaults for
        ``__call__``, as in :class:`LinenRNN`.
      params: use these params (e.g. from :mod:`rnnlab.convert`) instead of
        calling ``cell.init``; ``rngs`` may then be None.
    """

    def __init__(
        self,
        cell: Any,
        input_size: int,
        *,
        rngs: nnx.Rngs | None,
        time_axis: int = 0,
        reverse: bool = False,
        return_carry: bool = False,
        unroll: int | bool = 1,
        mode: str = "sequential",
        params: Params | None = None,
        derivative: str = "auto",
    ):
        check_cell(cell)
        if params is None:
            if rngs is None:
                raise ValueError("rngs must be an nnx.Rngs when params is None; received None.")
            params = cell.init(rngs.params(), input_size)
        self.cell = nnx.static(cell)
        self.input_size = nnx.static(input_size)
        self.time_axis = nnx.static(time_axis)
        self.reverse = nnx.static(reverse)
        self.return_carry = nnx.static(return_carry)
        self.unroll = nnx.static(unroll)
        self.mode = nnx.static(mode)
        self.derivative = nnx.static(derivative)
        self.params = nnx.data(jax.tree.map(nnx.Param, params))

    def param_values(self) -> Params:
        """The cell's params as a plain pytree of arrays (e.g. :class:`rnnlab.LSTMParams`)."""
        return jax.tree.map(lambda v: v[...], self.params, is_leaf=_is_variable)

    def initial_carry(self, batch_shape: tuple[int, ...] = ()) -> Carry:
        """``cell.initial_carry(params, batch_shape)``."""
        return self.cell.initial_carry(self.param_values(), batch_shape)

    def __call__(
        self,
        xs: Array,
        *,
        carry: Carry | None = None,
        lengths: Array | None = None,
        reverse: bool | None = None,
        return_carry: bool | None = None,
        resets: Array | None = None,
    ) -> Any:
        """Runs the cell over ``xs``; arguments and result as :meth:`LinenRNN.__call__`."""
        return _run(self, self.param_values(), xs, carry, lengths, reverse, return_carry,
                    resets)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)
