"""Argument checks shared by every layer: each error names the argument, what was expected and
what was received. Shapes are static under ``jit``, so these checks cost nothing at run time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from rnnlab.cell import Array, Carry, Cell, Params


def check_cell(cell: Any, name: str = "cell") -> None:
    """Raises TypeError unless ``cell`` has callable init/initial_carry/step."""
    required = Cell._fields[:3]
    missing = [f for f in required if not callable(getattr(cell, f, None))]
    if missing:
        raise TypeError(
            f"{name} must have callable attributes {required} (the rnnlab Cell "
            f"protocol); received {type(cell).__name__} lacking {tuple(missing)}."
        )


def check_float_input(x: Any, name: str) -> None:
    """Raises TypeError unless ``x`` has a real floating dtype."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must have a real floating dtype; received dtype {dtype}.")


def check_input_size(x: Array, expected: int, name: str = "x") -> None:
    """Raises ValueError unless ``x.shape[-1] == expected``."""
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
    """Returns ``value`` if it is a positive int (not a bool), else raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int; received {value!r}.")
    return value


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


def add_bias(y: Array, b: Array) -> Array:
    """``y + b`` for ``y [..., H]`` and ``b [H]``, with the broadcast written out.

    Spelling the leading singleton axes keeps cells valid under
    ``jax_numpy_rank_promotion="raise"``, which users (and our tests) turn on to
    catch accidental broadcasting.
    """
    return y + b.reshape((1,) * (y.ndim - b.ndim) + b.shape)
