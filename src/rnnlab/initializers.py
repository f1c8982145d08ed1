"""Weight initialisers, chosen by option rather than hard-coded in the cells.

Everything here follows ``jax.nn.initializers``' signature
``init(key, shape, dtype) -> Array``; we re-export jax's own where they exist and
add the two that recurrent networks need and jax lacks (identity, and a normal
matrix scaled to a chosen spectral radius).

Strings accepted by the cells (``recurrent_init="orthogonal"``) resolve through
:func:`get`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

orthogonal = jax.nn.initializers.orthogonal  # orthogonal(scale=1.0): W/scale is orthogonal
glorot_uniform = jax.nn.initializers.glorot_uniform
glorot_normal = jax.nn.initializers.glorot_normal
lecun_normal = jax.nn.initializers.lecun_normal
lecun_uniform = jax.nn.initializers.lecun_uniform
he_normal = jax.nn.initializers.he_normal
normal = jax.nn.initializers.normal  # normal(stddev=0.01)
uniform = jax.nn.initializers.uniform
zeros = jax.nn.initializers.zeros
ones = jax.nn.initializers.ones
constant = jax.nn.initializers.constant


def identity(scale: float = 1.0) -> Initializer:
    """``scale * I`` for a square matrix (the IRNN's recurrent init, Le et al. 2015)."""

    def init(key, shape, dtype=jnp.float32):
        del key
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"identity init needs a square 2-D shape; received {shape}.")
        return scale * jnp.eye(shape[0], dtype=dtype)

    return init


def spectral_normal(radius: float = 1.0) -> Initializer:
    """Gaussian matrix with entries ``N(0, radius**2 / n)``.

    For large ``n`` its spectral radius tends to ``radius`` (circular law); this
    is the random-network ensemble of Pascanu et al. (2013) and of the
    Lyapunov-exponent literature (``J ~ N(0, g^2/N)``).
    """

    def init(key, shape, dtype=jnp.float32):
        n = shape[0]
        return radius / jnp.sqrt(n).astype(dtype) * jax.random.normal(key, shape, dtype)

    return init


_BY_NAME: dict[str, Callable[[], Initializer]] = {
    "orthogonal": orthogonal,
    "identity": identity,
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "lecun_normal": lecun_normal,
    "lecun_uniform": lecun_uniform,
    "he_normal": he_normal,
    "normal": normal,
    "spectral_normal": spectral_normal,
    "zeros": zeros,
}


def get(init: str | Initializer, name: str = "init") -> Initializer:
    """Resolves an initialiser given by name (default options) or returns it unchanged.

    Args:
      init: a callable ``(key, shape, dtype) -> Array`` or one of the names in
        :data:`NAMES`.
      name: the argument's name, for the error message.
    """
    if callable(init):
        return init
    if isinstance(init, str) and init in _BY_NAME:
        factory = _BY_NAME[init]
        # jax's zeros/ones are initialisers themselves; the rest are factories.
        return factory if init == "zeros" else factory()
    raise ValueError(
        f"{name} must be a callable (key, shape, dtype) -> Array or one of "
        f"{sorted(_BY_NAME)}; received {init!r}."
    )


NAMES = tuple(sorted(_BY_NAME))
