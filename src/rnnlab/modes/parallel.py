r"""The parallel path: a :class:`rnnlab.LinearForm` evaluated by ``jax.lax.associative_scan``.

All T states of :math:`h_t = a_t \odot h_{t-1} + b_t` come from an associative
scan over the pairs :math:`(a_t, b_t)` with the operator
:math:`(a, b) \bullet (a', b') = (a' a,\ a' b + b')` (:math:`(a, b)` the
earlier step), in :math:`O(\log T)` depth and :math:`O(T)` work (about twice
the sequential's), keeping every :math:`(a_t, b_t)` in memory. It runs in
linear space and never divides by a cumulative product
:math:`\prod_{s \le t} a_s`, so that product underflowing to zero over a long
sequence is harmless: it is the exact forgetting of :math:`h_{-1}`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rnnlab.cell import Array, LinearForm, Params
from rnnlab.modes.masking import expand, zero_invalid


def run(
    form: LinearForm,
    params: Params,
    h0: Array,
    xs: Array,
    valid: Array | None,
    resets: Array | None = None,
) -> tuple[Array, Any]:
    r"""All steps of the linear recurrence at once (see :mod:`rnnlab.modes`).

    Invalid steps get :math:`a_t = 1, b_t = 0`, so the carry passes through them
    unchanged, exactly as in the sequential path. A reset at step t (``resets
    [T, *batch]``, already False at invalid steps) is a zero coefficient: the
    step reads the initial state instead of the previous one,
    :math:`h_t = 0 \cdot h_{t-1} + (a_t h_0 + b_t)`.
    """
    a, b = form.coefficients(params, xs)
    a = jnp.broadcast_to(a, b.shape)
    if resets is not None:
        r = expand(resets, a)
        b = jnp.where(r, a * h0[None] + b, b)
        a = jnp.where(r, jnp.zeros_like(a), a)
    if valid is not None:
        a = jnp.where(expand(valid, a), a, jnp.ones_like(a))
        b = jnp.where(expand(valid, b), b, jnp.zeros_like(b))
    if xs.shape[0] == 0:
        hs, final = b, h0
    else:
        hs = linear_recurrence(a, b, h0)
        final = hs[-1]  # padded steps carry the last valid state to the end
    return final, zero_invalid(valid, form.readout(params, hs, xs))


def linear_recurrence(a: Array, b: Array, h0: Array) -> Array:
    """All states of ``h_t = a_t * h_{t-1} + b_t`` (``a, b [T, ...]``, ``h0 [...]``) at once."""
    b = b.at[0].add(a[0] * h0)  # fold the initial state into the first step

    def combine(earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        return a2 * a1, a2 * b1 + b2

    _, hs = jax.lax.associative_scan(combine, (a, b))
    return hs
