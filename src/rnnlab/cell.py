"""The cell protocol: a recurrent cell is three pure functions.

Like optax's ``GradientTransformation(init, update)``, a :class:`Cell` is a
NamedTuple of pure functions returned by a factory that closes over the cell's
hyper-parameters, so that ``jax.grad``/``jax.vmap`` only ever see arrays::

    cell = rnnlab.lstm(hidden_size=64)
    params = cell.init(key, input_size=8)                  # pytree of arrays
    carry = cell.initial_carry(params, batch_shape=(32,))  # pytree of arrays
    carry, y = cell.step(params, carry, x_t)               # x_t [32, 8] -> y [32, 64]

Any object with these three attributes works everywhere in rnnlab; it need not
be a :class:`Cell` instance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # a pytree of arrays
Carry = Any  # a pytree of arrays


class Cell(NamedTuple):
    """A recurrent cell as three pure functions.

    Attributes:
      init: ``init(key, input_size) -> params``: a pytree of arrays, nothing else.
      initial_carry: ``initial_carry(params, batch_shape=()) -> carry``: the state
        before the first step, for inputs of shape ``[*batch_shape, input_size]``.
      step: ``step(params, carry, x) -> (carry, y)``: one time step. ``x`` is
        ``[*batch_shape, input_size]``; the signature is that of a
        ``jax.lax.scan`` body once ``params`` is bound.
    """

    init: Callable[[PRNGKey, int], Params]
    initial_carry: Callable[..., Carry]
    step: Callable[[Params, Carry, Array], tuple[Carry, Array]]


class PreparedCell(NamedTuple):
    """A :class:`Cell` plus ``prepare``: loop-invariant work on the params, done once per scan.

    :func:`rnnlab.scan` runs ``step(prepare(params), ...)`` at every step, so
    whatever ``prepare`` does (a matrix exponential, re-arranging weight
    blocks for the step's matmuls) and its derivative happen once per call
    instead of once per step. ``step`` accepts both the params and the
    prepared params and gives the same results; call ``prepare`` yourself when
    you loop over ``step`` by hand.
    """

    init: Callable[[PRNGKey, int], Params]
    initial_carry: Callable[..., Carry]
    step: Callable[[Params, Carry, Array], tuple[Carry, Array]]
    prepare: Callable[[Params], Params]


def prepare_params(cell: Any, params: Params) -> Params:
    """``cell.prepare(params)`` if ``cell`` has a callable ``prepare`` (see
    :class:`PreparedCell`), else ``params`` unchanged."""
    prepare = getattr(cell, "prepare", None)
    return prepare(params) if callable(prepare) else params


def checkpointed_step(cell: Any) -> Callable[[Params, Carry, Array], tuple[Carry, Any]]:
    """``cell.step`` under ``jax.checkpoint`` with ``cell.step.checkpoint_policy``, if it has one.

    What :func:`rnnlab.scan` runs at every step; use it as the body of your
    own ``jax.lax.scan`` over a cell to get the same backward pass. The policy
    decides which of the step's intermediates the backward pass reads back
    from memory; it recomputes the rest from those. Values and derivatives are
    those of ``cell.step`` itself.

    ``prevent_cse=False``: inside ``lax.scan`` the recomputation cannot be
    merged with the forward pass anyway (JAX's advice for ``jax.checkpoint``
    in a scan), and ``True`` made the LSTM's forward+backward at T=100 B=32
    H=128 6% slower on a 2-core CPU. Outside a scan, e.g. in a Python loop
    over steps, XLA may merge them and store the intermediates after all.
    """
    policy = getattr(cell.step, "checkpoint_policy", None)
    if policy is None:
        return cell.step
    if not callable(policy):
        raise TypeError(
            "cell.step.checkpoint_policy must be a jax.checkpoint policy (a callable such "
            f"as jax.checkpoint_policies.dots_saveable) or None; received {policy!r}."
        )
    return jax.checkpoint(cell.step, policy=policy, prevent_cse=False)


def check_cell(cell: Any, name: str = "cell") -> None:
    """Raises TypeError unless ``cell`` has callable init/initial_carry/step."""
    missing = [f for f in Cell._fields if not callable(getattr(cell, f, None))]
    if missing:
        raise TypeError(
            f"{name} must have callable attributes {Cell._fields} (the rnnlab Cell "
            f"protocol); received {type(cell).__name__} lacking {tuple(missing)}."
        )


def check_float_input(x: Any, name: str) -> None:
    """Raises TypeError unless ``x`` has a real floating dtype."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must have a real floating dtype; received dtype {dtype}.")


def check_input_size(x: Array, expected: int, name: str = "x") -> None:
    """Raises ValueError unless ``x.shape[-1] == expected``.

    Shapes are static under ``jit``, so this check costs nothing at run time.
    """
    if x.ndim == 0 or x.shape[-1] != expected:
        raise ValueError(
            f"{name} must have {expected} input features in its last axis "
            f"(the input_size the params were initialised with); received shape {x.shape}."
        )


def check_batch_shape(batch_shape: Any) -> tuple[int, ...]:
    """Normalises ``batch_shape`` to a tuple of non-negative ints, or raises."""
    if isinstance(batch_shape, int):
        batch_shape = (batch_shape,)
    if not isinstance(batch_shape, Sequence) or not all(
        isinstance(d, int) and d >= 0 for d in batch_shape
    ):
        raise TypeError(
            f"batch_shape must be a tuple of non-negative ints; received {batch_shape!r}."
        )
    return tuple(batch_shape)


def check_choice(value: Any, choices: Sequence[Any], name: str) -> None:
    """Raises ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}; received {value!r}.")


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int; received {value!r}.")
    return value


def add_bias(y: Array, b: Array) -> Array:
    """``y + b`` for ``y [..., H]`` and ``b [H]``, with the broadcast written out.

    Spelling the leading singleton axes keeps cells valid under
    ``jax_numpy_rank_promotion="raise"``, which users (and our tests) turn on to
    catch accidental broadcasting.
    """
    return y + b.reshape((1,) * (y.ndim - b.ndim) + b.shape)


def check_carry(cell: Any, params: Params, carry: Carry, batch_shape: tuple[int, ...]) -> None:
    """Raises ValueError unless ``carry`` has the structure and shapes of
    ``cell.initial_carry(params, batch_shape)`` (checked abstractly: no computation)."""
    expected = jax.eval_shape(lambda p: cell.initial_carry(p, batch_shape), params)
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
