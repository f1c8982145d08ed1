"""Opt-in NaN/Inf checks on the inputs of rnnlab's public functions.

Off by default (they cost a device-to-host copy of every input). Turn them on
for a whole session, a block, or a process::

    rnnlab.set_debug_checks(True)            # from now on
    with rnnlab.checking():                  # inside the block only
        rnnlab.scan(cell, params, xs)        # ValueError if xs holds a NaN
    RNNLAB_CHECK_FINITE=1 python script.py   # the environment variable

When on, :func:`rnnlab.scan` (and through it everything that scans: stacks,
bidirectional layers, training) and the :mod:`rnnlab.diagnostics` entry points
raise a ValueError naming the argument, the number of non-finite values and
the index of the first, before computing anything.

Under ``jax.jit``/``vmap``/``grad`` the inputs are tracers with no values, and
the checks **skip** them silently: a check that could only fail at run time
inside XLA would surface as an opaque runtime error rather than the
ValueError promised here. To check values inside a compiled program, use
``jax.experimental.checkify`` (``checkify.checkify(f, errors=checkify.float_checks)``)
or ``jax.config.update("jax_debug_nans", True)``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

ENV_VAR = "RNNLAB_CHECK_FINITE"

_enabled: bool | None = None  # None: follow the environment variable


def set_debug_checks(enabled: bool) -> None:
    """Turns the input checks on or off for this process (overrides ``RNNLAB_CHECK_FINITE``)."""
    global _enabled
    _enabled = bool(enabled)


def debug_checks_enabled() -> bool:
    """Whether the checks are on: :func:`set_debug_checks`, else ``RNNLAB_CHECK_FINITE``."""
    if _enabled is not None:
        return _enabled
    return os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def checking(enabled: bool = True) -> Iterator[None]:
    """A context in which the checks are on (or off, with ``enabled=False``)."""
    global _enabled
    previous = _enabled
    _enabled = bool(enabled)
    try:
        yield
    finally:
        _enabled = previous


def check_finite(tree: Any, name: str, *, where: str = "") -> None:
    """Raises ValueError if a concrete floating leaf of ``tree`` holds NaN or Inf.

    Runs whether or not the debug checks are on; traced leaves (under ``jit``)
    and non-floating leaves are skipped.

    Args:
      tree: an array or pytree of arrays.
      name: the argument's name, for the message.
      where: the function's name, for the message.
    """
    prefix = f"{where}: " if where else ""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if leaf is None or isinstance(leaf, jax.core.Tracer):
            continue
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not (
            jax.numpy.issubdtype(dtype, jax.numpy.floating)
            or jax.numpy.issubdtype(dtype, jax.numpy.complexfloating)
        ):
            continue
        try:
            values = np.asarray(leaf)
        except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
            continue
        if not np.issubdtype(values.dtype, np.complexfloating):
            values = values.astype(np.float64)  # bfloat16 and friends: plain numpy floats
        bad = ~np.isfinite(values)
        count = int(bad.sum())
        if count:
            first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))
            label = name + jax.tree_util.keystr(path)
            raise ValueError(
                f"{prefix}{label} contains {count} non-finite value(s) (NaN or Inf) out of "
                f"{values.size}; the first at index {first} is {values[first]}. (rnnlab's "
                f"debug checks are on: rnnlab.set_debug_checks(False) or unset {ENV_VAR} to "
                "turn them off.)"
            )


def check_finite_args(where: str, **args: Any) -> None:
    """:func:`check_finite` on each keyword argument, only when the debug checks are on."""
    if not debug_checks_enabled():
        return
    for name, value in args.items():
        check_finite(value, name, where=where)
