r"""The fused path: a whole-sequence derivative for cells with an :class:`rnnlab.AffineForm`.

The values are those of the sequential path (the same step, built from the
form). The derivative is written out by hand as a ``jax.custom_jvp``, so
forward mode, reverse mode, ``vmap`` and higher derivatives all work. With
:math:`g_t = x_t A + h_{t-1} R + b` (all three functions of :math:`\theta`),

.. math::
    \dot g_t = \underbrace{\partial_\theta g(\theta, x_t, h_{t-1})\,\dot\theta
    + \dot x_t A}_{\text{all } t \text{ at once}} + \dot h_{t-1} R,

and only the last term depends on the previous step's tangent, so only it
stays in the loop. Transposed for reverse mode, the backward loop computes just
:math:`\partial L/\partial g_t` and :math:`\partial L/\partial c_{t-1}`; the
weight gradients (e.g. :math:`\sum_t [x_t, h_{t-1}]^\top \partial L/\partial g_t`)
and the input gradient become single matmuls over all ``T * batch`` rows after
the loop (as in cuDNN and PyTorch), instead of ``T`` small ones accumulated
inside it, which is what differentiating the plain scan gives.

``A`` and ``R`` are read off the pre-activation once per call as explicit
matrices (``jax.jacfwd`` at one point: the form is affine, so any point gives
them), so that the loop multiplies by ``R`` alone even when the cell computes
its pre-activation in one matmul over ``[x, h]``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import Literal

from rnnlab.cell import AffineForm, Array, Carry, Params
from rnnlab.modes.masking import keep_valid, zero_invalid


def run(
    form: AffineForm,
    params: Params,
    carry: Carry,
    xs: Array,
    valid: Array | None,
    *,
    unroll: int | bool = 1,
) -> tuple[Carry, Any]:
    """The form's step scanned with the whole-sequence derivative (see :mod:`rnnlab.modes`)."""
    masked = valid is not None
    if not masked:
        valid = jnp.ones(xs.shape[:-1], bool)
    return _scan(form, masked, unroll, params, carry, xs, valid)


def _step(form: AffineForm, params: Params, carry: Carry, x: Array) -> tuple[Carry, Any]:
    return form.pointwise(form.preactivation(params, x, form.hidden(carry)), carry)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _scan(form, masked, unroll, params, carry, xs, valid):
    def body(c, x_and_valid):
        x, v = x_and_valid
        new_c, y = _step(form, params, c, x)
        if masked:
            new_c, y = keep_valid(v, new_c, c), zero_invalid(v, y)
        return new_c, y

    return jax.lax.scan(body, carry, (xs, valid), unroll=unroll)


@_scan.defjvp
def _scan_jvp(form, masked, unroll, primals, tangents):
    params, carry, xs, valid = primals
    d_params, d_carry, d_xs, _ = tangents
    # The forward loop also returns, per step, the residuals of the pointwise
    # part's linearisation (gate values and their derivatives), so that the
    # tangent loop below is linear with no primal work left to recompute.
    linear_pointwise = []

    def body(c, x_and_valid):
        x, v = x_and_valid
        h = form.hidden(c)
        g = form.preactivation(params, x, h)
        (new_c, y), lin = jax.linearize(form.pointwise, g, c)
        # Every constant of the linear map (float or not, e.g. ReLU's mask)
        # leaves the loop as a per-step residual.
        closed = jax.make_jaxpr(lin)(g, c)
        linear_pointwise.append((closed.jaxpr, jax.tree.structure((new_c, y))))
        if masked:
            new_c, y = keep_valid(v, new_c, c), zero_invalid(v, y)
        return new_c, (y, h, closed.consts)

    final, (ys, hs_prev, residuals) = jax.lax.scan(body, carry, (xs, valid), unroll=unroll)
    lin_jaxpr, out_tree = linear_pointwise[-1]

    def lin(d_g_leaves, dc, res):
        flat = jax.core.eval_jaxpr(lin_jaxpr, res, *d_g_leaves, *jax.tree.leaves(dc))
        return jax.tree.unflatten(out_tree, flat)

    # A and R as matrices, from one point of the affine map (leaves [G_k, F] and
    # [G_k, H]); None for a pre-activation leaf that does not read x (or h).
    h0 = form.hidden(carry)
    x_row = jnp.zeros(xs.shape[-1:], xs.dtype)
    h_row = jnp.zeros(h0.shape[-1:], h0.dtype)
    A = _jacobian(lambda x: form.preactivation(params, x, h_row), x_row)
    R = _jacobian(lambda h: form.preactivation(params, x_row, h), h_row)

    # Everything that does not depend on the previous step's tangent, for all
    # steps at once: single large matmuls (and, transposed, the weight and
    # input gradients). The leading axes are flattened to one row axis, which
    # XLA:CPU contracts faster than several.
    rows = xs.shape[:-1]
    flat_xs, flat_dxs, flat_hs = (a.reshape((-1, a.shape[-1])) for a in (xs, d_xs, hs_prev))
    d_g_fixed = jax.jvp(
        lambda p: form.preactivation(p, flat_xs, flat_hs), (params,), (d_params,)
    )[1]
    d_g_fixed = [
        (d if a is None else d + flat_dxs @ a.T).reshape(rows + d.shape[-1:])
        for d, a in zip(jax.tree.leaves(d_g_fixed), A, strict=True)
    ]

    def tangent_body(dc, step_inputs):
        d_g, res, v = step_inputs
        dh = form.hidden(dc)
        d_g = [d if r is None else d + dh @ r.T for d, r in zip(d_g, R, strict=True)]
        new_dc, dy = lin(d_g, dc, res)
        if masked:
            new_dc, dy = keep_valid(v, new_dc, dc), zero_invalid(v, dy)
        return new_dc, dy

    d_final, d_ys = jax.lax.scan(
        tangent_body, d_carry, (d_g_fixed, residuals, valid), unroll=unroll
    )
    return (final, ys), (d_final, d_ys)


def _jacobian(fn, x: Array) -> list[Array | None]:
    """``jax.jacfwd(fn)(x)`` leaf by leaf, None for each output leaf that does not read ``x``."""
    reads = _reads_input(fn, x)
    jac = jax.tree.leaves(jax.jacfwd(fn)(x))
    return [j if r else None for j, r in zip(jac, reads, strict=True)]


def _reads_input(fn, x: Array) -> list[bool]:
    """For each output leaf of ``fn(x)``, whether it depends on ``x`` (read off the jaxpr).

    An equation with any input that depends on ``x`` is taken to make all its
    outputs depend on it, so the answer errs only towards True.
    """
    closed = jax.make_jaxpr(fn)(x)
    jaxpr = closed.jaxpr
    reading = set(jaxpr.invars)
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, Literal) and v in reading for v in eqn.invars):
            reading.update(eqn.outvars)
    return [not isinstance(v, Literal) and v in reading for v in jaxpr.outvars]
