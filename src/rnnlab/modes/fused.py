r"""The fused path: whole-sequence matmuls for cells with an :class:`rnnlab.AffineForm`.

The form's pre-activations are :math:`g_t = x_t A + h_{t-1} R + b` with
:math:`A, R, b` functions of :math:`\theta` only. This path reads them off the
form once per call as explicit matrices (``jax.jacfwd`` at one point: the map
is affine, so any point gives them), and each step makes two matmuls,
:math:`x_t A` and :math:`h_{t-1} R`, before the pointwise update, whatever
matmuls the cell's own step makes. (Projecting every step's input in one matmul
before the loop was slower on CPU, docs/performance.md.) The values equal the
sequential path's to rounding (the sums are associated differently).

The derivative is written out by hand as a ``jax.custom_jvp``, so forward mode,
reverse mode, ``vmap`` and higher derivatives all work:

.. math::
    \dot g_t = \underbrace{\partial_\theta g(\theta, x_t, h_{t-1})\,\dot\theta
    + \dot x_t A}_{\text{all } t \text{ at once}} + \dot h_{t-1} R,

and only the last term depends on the previous step's tangent, so only it
stays in the loop. Transposed for reverse mode, the backward loop computes just
:math:`\partial L/\partial g_t` and :math:`\partial L/\partial c_{t-1}`; the
weight gradients (e.g. :math:`\sum_t [x_t, h_{t-1}]^\top \partial L/\partial g_t`)
and the input gradient become single matmuls over all ``T * batch`` rows after
the loop, instead of ``T`` small ones accumulated inside it, which is what
differentiating the plain scan gives.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.extend.core import Literal

from rnnlab.cell import AffineForm, Array, Carry, Params
from rnnlab.modes.masking import keep_valid, restart, zero_invalid
from rnnlab.validation import add_bias


def run(
    form: AffineForm,
    params: Params,
    carry: Carry,
    xs: Array,
    valid: Array | None,
    *,
    unroll: int | bool = 1,
    resets: Array | None = None,
) -> tuple[Carry, Any]:
    """The form scanned with whole-sequence matmuls and derivative (see :mod:`rnnlab.modes`).

    ``resets [T, *batch]`` (optional, already False at invalid steps): where
    true, the step starts from ``carry`` instead of the previous carry.
    """
    masked = valid is not None
    if not masked:
        valid = jnp.ones(xs.shape[:-1], bool)
    has_resets = resets is not None
    if not has_resets:
        resets = jnp.zeros(xs.shape[:-1], bool)
    return _scan(form, (masked, has_resets), unroll, params, carry, xs, valid, resets)


class _Maps(NamedTuple):
    """The affine pre-activation ``g = x A + h R + b`` as joined matrices.

    ``A [F, Gx]`` holds side by side the columns of the leaves that read ``x``,
    with their constant terms in ``b_x [Gx]``; ``R [H, Gh]`` those of the leaves
    that read ``h``, with ``b_h [Gh]`` holding the constant terms of the leaves
    that read ``h`` only. So each step makes two matmuls and two bias adds,
    whatever the number of leaves. ``b`` keeps every leaf's constant term.
    """

    A: Array | None
    b_x: Array | None
    R: Array | None
    b_h: Array | None
    b: list[Array]
    reads_x: list[bool]
    reads_h: list[bool]
    treedef: Any

    def split(self, joined: Array, reads: list[bool]) -> list[Array | None]:
        """A joined product cut back into leaves (None for the leaves it does not hold)."""
        out, start = [], 0
        for leaf, r in zip(self.b, reads, strict=True):
            size = leaf.shape[-1] if r else 0
            out.append(joined[..., start:start + size] if r else None)
            start += size
        return out


def _maps(form: AffineForm, params: Params, x_row: Array, h_row: Array) -> _Maps:
    def pre_x(x):
        return form.preactivation(params, x, h_row)

    def pre_h(h):
        return form.preactivation(params, x_row, h)

    b, treedef = jax.tree.flatten(pre_x(x_row))  # at x = 0, h = 0: the constant term
    reads_x, reads_h = _reads_input(pre_x, x_row), _reads_input(pre_h, h_row)
    jac_x = jax.tree.leaves(jax.jacfwd(pre_x)(x_row))  # each [G_k, F]
    jac_h = jax.tree.leaves(jax.jacfwd(pre_h)(h_row))  # each [G_k, H]
    leaves = list(zip(jac_x, jac_h, b, reads_x, reads_h, strict=True))
    A = [jx.T for jx, _, _, rx, _ in leaves if rx]  # each [F, G_k]
    b_x = [c for _, _, c, rx, _ in leaves if rx]
    R = [jh.T for _, jh, _, _, rh in leaves if rh]  # each [H, G_k]
    b_h = [jnp.zeros_like(c) if rx else c for _, _, c, rx, rh in leaves if rh]

    def join(parts):
        return jnp.concatenate(parts, axis=-1) if parts else None

    return _Maps(A=join(A), b_x=join(b_x), R=join(R), b_h=join(b_h), b=b, reads_x=reads_x,
                 reads_h=reads_h, treedef=treedef)


def _matmul(a: Array, w: Array) -> Array:
    # One row axis: XLA:CPU contracts it faster than several (docs/performance.md).
    return (a.reshape((-1, a.shape[-1])) @ w).reshape(a.shape[:-1] + w.shape[-1:])


def _preactivation(maps: _Maps, x: Array | None, h: Array | None, *, bias: bool) -> list:
    """``x A + h R (+ b)`` leaf by leaf; ``x`` or ``h`` None leaves that term out."""
    x_part = h_part = [None] * len(maps.b)
    if x is not None and maps.A is not None:
        joined = _matmul(x, maps.A)
        x_part = maps.split(add_bias(joined, maps.b_x) if bias else joined, maps.reads_x)
    if h is not None and maps.R is not None:
        joined = _matmul(h, maps.R)
        h_part = maps.split(add_bias(joined, maps.b_h) if bias else joined, maps.reads_h)
    out = []
    for xp, hp, b in zip(x_part, h_part, maps.b, strict=True):
        if xp is None and hp is None:
            rows = (x if x is not None else h).shape[:-1]
            out.append(jnp.broadcast_to(b, rows + b.shape) if bias else None)
        else:
            out.append(hp if xp is None else xp if hp is None else xp + hp)
    return out


def _zero_rows(xs: Array, carry: Carry, form: AffineForm) -> tuple[Array, Array]:
    h0 = form.hidden(carry)
    return jnp.zeros(xs.shape[-1:], xs.dtype), jnp.zeros(h0.shape[-1:], h0.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _scan(form, flags, unroll, params, carry, xs, valid, resets):
    masked, has_resets = flags
    maps = _maps(form, params, *_zero_rows(xs, carry, form))

    def body(c, step_inputs):
        x, v, r = step_inputs
        if has_resets:
            c = restart(r, carry, c)
        g = _preactivation(maps, x, form.hidden(c), bias=True)
        new_c, y = form.pointwise(jax.tree.unflatten(maps.treedef, g), c)
        if masked:
            new_c, y = keep_valid(v, new_c, c), zero_invalid(v, y)
        return new_c, y

    return jax.lax.scan(body, carry, (xs, valid, resets), unroll=unroll)


@_scan.defjvp
def _scan_jvp(form, flags, unroll, primals, tangents):
    masked, has_resets = flags
    params, carry, xs, valid, resets = primals
    d_params, d_carry, d_xs, _, _ = tangents
    maps = _maps(form, params, *_zero_rows(xs, carry, form))
    # The forward loop also returns, per step, the residuals of the pointwise
    # part's linearisation (gate values and their derivatives), so that the
    # tangent loop below is linear with no primal work left to recompute.
    linear_pointwise = []

    def body(c, step_inputs):
        x, v, r = step_inputs
        if has_resets:
            c = restart(r, carry, c)
        h = form.hidden(c)
        g = jax.tree.unflatten(maps.treedef, _preactivation(maps, x, h, bias=True))
        (new_c, y), lin = jax.linearize(form.pointwise, g, c)
        # Every constant of the linear map (float or not, e.g. ReLU's mask)
        # leaves the loop as a per-step residual.
        closed = jax.make_jaxpr(lin)(g, c)
        linear_pointwise.append((closed.jaxpr, jax.tree.structure((new_c, y))))
        if masked:
            new_c, y = keep_valid(v, new_c, c), zero_invalid(v, y)
        return new_c, (y, h, closed.consts)

    final, (ys, hs_prev, residuals) = jax.lax.scan(
        body, carry, (xs, valid, resets), unroll=unroll
    )
    lin_jaxpr, out_tree = linear_pointwise[-1]

    # Everything that does not depend on the previous step's tangent, for all
    # steps at once: single large matmuls (and, transposed, the weight and
    # input gradients), over one row axis.
    rows = xs.shape[:-1]
    flat_xs, flat_hs = (a.reshape((-1, a.shape[-1])) for a in (xs, hs_prev))
    d_g_fixed = jax.tree.leaves(jax.jvp(
        lambda p: form.preactivation(p, flat_xs, flat_hs), (params,), (d_params,)
    )[1])
    d_x_part = _preactivation(maps, d_xs, None, bias=False)
    d_g_fixed = [
        (d if dx is None else d + dx.reshape((-1, dx.shape[-1]))).reshape(rows + d.shape[-1:])
        for d, dx in zip(d_g_fixed, d_x_part, strict=True)
    ]

    def tangent_body(dc, step_inputs):
        d_g, res, v, r = step_inputs
        if has_resets:
            dc = restart(r, d_carry, dc)
        d_h_part = _preactivation(maps, None, form.hidden(dc), bias=False)
        d_g = [d if dh is None else d + dh for d, dh in zip(d_g, d_h_part, strict=True)]
        flat = jax.core.eval_jaxpr(lin_jaxpr, res, *d_g, *jax.tree.leaves(dc))
        new_dc, dy = jax.tree.unflatten(out_tree, flat)
        if masked:
            new_dc, dy = keep_valid(v, new_dc, dc), zero_invalid(v, dy)
        return new_dc, dy

    d_final, d_ys = jax.lax.scan(
        tangent_body, d_carry, (d_g_fixed, residuals, valid, resets), unroll=unroll
    )
    return (final, ys), (d_final, d_ys)


def _reads_input(fn, x: Array) -> list[bool]:
    """For each output leaf of ``fn(x)``, whether it depends on ``x`` (read off the jaxpr).

    An equation with any input that depends on ``x`` is taken to make all its
    outputs depend on it, so the answer errs only towards True.
    """
    jaxpr = jax.make_jaxpr(fn)(x).jaxpr
    reading = set(jaxpr.invars)
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, Literal) and v in reading for v in eqn.invars):
            reading.update(eqn.outvars)
    return [not isinstance(v, Literal) and v in reading for v in jaxpr.outvars]
