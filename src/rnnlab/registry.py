"""Cells by name, so that experiments take a new cell with no edit.

A registry entry maps a name to a factory ``hidden_size -> Cell`` with its
options fixed, e.g. ``"lstm-fb0"`` is ``lstm(hidden_size, forget_bias=0.0)``.
Experiments loop over :func:`names`; a new cell joins every experiment by
calling :func:`register` once (the built-in cells register themselves below,
the modern ones in their own modules)::

    rnnlab.registry.register("my-cell", lambda hidden_size: my_cell(hidden_size),
                             description="my own cell")
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

from rnnlab.cell import Cell
from rnnlab.cells import elman, gru, irnn, lstm


class Entry(NamedTuple):
    factory: Callable[..., Cell]  # factory(hidden_size, **overrides) -> Cell
    description: str
    tags: frozenset[str]  # e.g. {"classic"}, {"modern", "parallel"}


_REGISTRY: dict[str, Entry] = {}


def register(
    name: str,
    factory: Callable[..., Cell],
    *,
    description: str = "",
    tags: tuple[str, ...] = (),
    overwrite: bool = False,
) -> None:
    """Adds a cell factory under ``name``.

    Args:
      name: the key used by experiments and command lines (e.g. ``"lstm-fb0"``).
      factory: ``factory(hidden_size, **options) -> Cell``.
      description: one line shown in experiment tables and ``--help``.
      tags: free-form labels experiments may filter on.
      overwrite: replace an existing entry instead of raising.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str; received {name!r}.")
    if not callable(factory):
        raise TypeError(f"factory must be callable; received {factory!r}.")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a cell named {name!r} is already registered; pass overwrite=True.")
    _REGISTRY[name] = Entry(factory, description, frozenset(tags))


def get(name: str, hidden_size: int, **options: Any) -> Cell:
    """Builds the registered cell ``name`` with ``hidden_size`` (and option overrides)."""
    return entry(name).factory(hidden_size, **options)


def entry(name: str) -> Entry:
    if name not in _REGISTRY:
        raise ValueError(f"cell must be one of {names()}; received {name!r}.")
    return _REGISTRY[name]


def names(tag: str | None = None) -> tuple[str, ...]:
    """Registered names, in registration order (optionally only those tagged ``tag``)."""
    return tuple(n for n, e in _REGISTRY.items() if tag is None or tag in e.tags)


register(
    "elman-tanh",
    functools.partial(elman, nonlinearity="tanh"),
    description="Elman RNN, tanh, orthogonal W_h",
    tags=("classic",),
)
register(
    "elman-relu",
    functools.partial(elman, nonlinearity="relu"),
    description="Elman RNN, ReLU, orthogonal W_h",
    tags=("classic",),
)
register("irnn", irnn, description="ReLU RNN, W_h = I (Le et al. 2015)", tags=("classic",))
register(
    "lstm-fb0",
    functools.partial(lstm, forget_bias=0.0),
    description="LSTM, forget bias 0",
    tags=("classic",),
)
register(
    "lstm", lstm, description="LSTM, forget bias 1 (Jozefowicz et al. 2015)", tags=("classic",)
)
register("gru", gru, description="GRU, reset after matmul (cuDNN form)", tags=("classic",))
