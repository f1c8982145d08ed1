r"""A hand-written sequence derivative for gated cells: weight gradients as one GEMM after the loop.

Cells whose step has the shape

.. math::
    g^x_t = \mathrm{input}(\theta, x_t), \quad g^h_t = \mathrm{recurrent}(\theta, h_{t-1}),
    \quad (c_t, y_t) = \mathrm{pointwise}(g^x_t, g^h_t, c_{t-1}),

with :math:`h_{t-1}` = ``hidden(c_{t-1})`` (the LSTM, the GRU with ``reset_after``,
the Elman RNN) attach a :class:`GatedRecurrence` to their ``step`` function as
``step.gated``; with :data:`ENABLED`, :func:`rnnlab.scan` then runs
:func:`gated_scan`, whose values equal (up to rounding) those of the plain
``lax.scan`` over ``step`` and whose derivative is written out by hand (a
``jax.custom_jvp``, so forward mode, reverse mode, ``vmap`` and higher
derivatives all work):

.. math::
    \dot g^x_t = \partial_\theta \mathrm{input}\,\dot\theta + \partial_x \mathrm{input}\,\dot x_t,
    \qquad \dot g^h_t = \underbrace{\partial_\theta \mathrm{recurrent}(\theta, h_{t-1})\,
    \dot\theta}_{\text{all } t \text{ at once}} + \partial_h \mathrm{recurrent}\,\dot h_{t-1}.

Only the last term depends on the previous step's tangent, so only it stays in
the loop. Transposed for reverse mode, the backward loop computes just
:math:`\partial L/\partial g_t` and :math:`\partial L/\partial c_{t-1}`; the
weight gradients :math:`\sum_t h_{t-1}^\top \partial L/\partial g^h_t` and
:math:`\sum_t x_t^\top \partial L/\partial g^x_t` and the input gradient become
single matmuls over all ``T * batch`` rows after the loop (as in cuDNN and
PyTorch), instead of ``T`` small ones accumulated inside it, which is what
differentiating the plain scan gives.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnlab.cell import Array, Carry, Params

#: Whether rnnlab.scan takes this path for cells that offer it: True, False, or
#: None (the default) for "when JAX's default backend is a GPU" (TPUs are not
#: measured, so they keep the plain derivative until someone does).
#:
#: Measured (benchmarks/results/suite*.md): on a 2-core AMD EPYC CPU the
#: hand-written derivative took 1.0-1.7x the time of differentiating the plain
#: scan (XLA:CPU's per-step matmuls are already efficient at these sizes, and
#: the extra passes over the stored residuals cost more than the large
#: weight-gradient matmuls save). On an H100 it was the faster one: forward+
#: backward 1.1-1.65x faster for the LSTM and GRU at every suite size, where
#: each step of the plain derivative launches its own small weight-gradient
#: matmuls (benchmarks/results/suite_gpu_h100*.md). Values and gradients are
#: equal either way (tests/test_fast_path.py, run on both devices).
ENABLED: bool | None = None


def enabled() -> bool:
    """Whether :func:`rnnlab.scan` takes the fast path now (:data:`ENABLED` resolved)."""
    if ENABLED is None:
        return jax.default_backend() == "gpu"
    return bool(ENABLED)


class GatedRecurrence(NamedTuple):
    """The three pieces of a gated step (see the module docstring); elementwise over leading axes.

    Attributes:
      input: ``input(params, x [..., F]) -> gx [..., G]``, e.g. ``x W_x + b``.
      recurrent: ``recurrent(params, h [..., H]) -> gh [..., G']``, e.g. ``h W_h``;
        must be affine in ``h`` (its derivative in ``h`` is taken once).
      pointwise: ``pointwise(gx, gh, carry) -> (carry, y)``: no params, no matmul.
      hidden: ``hidden(carry) -> h``: the carry leaf the recurrent matmul reads.
    """

    input: Callable[[Params, Array], Array]
    recurrent: Callable[[Params, Array], Array]
    pointwise: Callable[[Array, Array, Carry], tuple[Carry, Any]]
    hidden: Callable[[Carry], Array]


def gated_step(form: GatedRecurrence) -> Callable[[Params, Carry, Array], tuple[Carry, Any]]:
    """The cell's ``step`` built from ``form``, with ``step.gated = form`` for the scan to find."""

    def step(params, carry, x):
        return form.pointwise(
            form.input(params, x), form.recurrent(params, form.hidden(carry)), carry
        )

    step.gated = form
    return step


def get_gated(cell: Any) -> GatedRecurrence | None:
    """``cell.step.gated`` if the cell's step carries a :class:`GatedRecurrence`, else None.

    The attribute lives on ``step`` (not on the cell) so that any wrapper that
    replaces the step, e.g. ``diagnostics.carry_grad_norms``' perturbed step,
    falls back to the reference path by construction.
    """
    form = getattr(getattr(cell, "step", None), "gated", None)
    return form if isinstance(form, GatedRecurrence) else None


def _where(valid: Array | None, new: Any, old: Any) -> Any:
    if valid is None:
        return new
    return jax.tree.map(
        lambda n, o: jnp.where(valid.reshape(valid.shape + (1,) * (n.ndim - valid.ndim)), n, o),
        new,
        old,
    )


def gated_scan(
    form: GatedRecurrence,
    params: Params,
    carry: Carry,
    xs: Array,
    valid: Array | None = None,
    *,
    unroll: int | bool = 1,
) -> tuple[Carry, Any]:
    """``lax.scan`` of the step over ``xs [T, *batch, F]``, forwards in time, fast derivative.

    Args:
      form: the cell's pieces.
      params, carry: as :func:`rnnlab.scan`.
      xs: time-major inputs ``[T, *batch, F]``.
      valid: optional ``[T, *batch]`` bool; at an invalid step the carry is
        unchanged and the output is zero (the masking of :func:`rnnlab.scan`).
      unroll: passed to ``jax.lax.scan``.

    Returns:
      ``(final_carry, ys)`` with ``ys [T, *batch, ...]``.
    """
    if valid is None:
        valid = jnp.ones(xs.shape[:-1], bool)
        masked = False
    else:
        masked = True
    return _gated_scan(form, masked, unroll, params, carry, xs, valid)


def _primal_loop(form, masked, unroll, params, carry, xs, valid):
    """The plain scan over the step, masked by ``valid`` if ``masked``."""

    def body(c, x_v):
        x, v = x_v
        gx = form.input(params, x)
        gh = form.recurrent(params, form.hidden(c))
        new_c, y = form.pointwise(gx, gh, c)
        if masked:
            new_c = _where(v, new_c, c)
            y = _where(v, y, jax.tree.map(jnp.zeros_like, y))
        return new_c, y

    return jax.lax.scan(body, carry, (xs, valid), unroll=unroll)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _gated_scan(form, masked, unroll, params, carry, xs, valid):
    return _primal_loop(form, masked, unroll, params, carry, xs, valid)


@_gated_scan.defjvp
def _gated_scan_jvp(form, masked, unroll, primals, tangents):
    params, carry, xs, valid = primals
    d_params, d_carry, d_xs, _ = tangents
    # The forward loop also returns, per step, the residuals of the pointwise
    # part's linearisation (gate values and their derivatives), so that the
    # tangent loop below is linear with no primal work left to recompute.
    linear_pointwise = []

    def body(c, x_v):
        x, v = x_v
        gx = form.input(params, x)
        gh = form.recurrent(params, form.hidden(c))
        (new_c, y), lin = jax.linearize(form.pointwise, gx, gh, c)
        # Every constant of the linear map (float or not, e.g. ReLU's mask)
        # leaves the loop as a per-step residual.
        closed = jax.make_jaxpr(lin)(gx, gh, c)
        residuals = closed.consts
        linear_pointwise.append((closed.jaxpr, jax.tree.structure((new_c, y))))
        if masked:
            new_c = _where(v, new_c, c)
            y = _where(v, y, jax.tree.map(jnp.zeros_like, y))
        return new_c, (y, form.hidden(c), residuals)

    final, (ys, hs_prev, residuals) = jax.lax.scan(body, carry, (xs, valid), unroll=unroll)
    lin_jaxpr, out_tree = linear_pointwise[-1]

    def lin(d_gx, d_gh, dc, *res):
        flat = jax.core.eval_jaxpr(lin_jaxpr, res, d_gx, d_gh, *jax.tree.leaves(dc))
        return jax.tree.unflatten(out_tree, flat)

    # Everything that does not depend on the previous step's tangent, for all
    # steps at once: single large matmuls (and, transposed, the weight and
    # input gradients).
    # Leading axes flattened to one: XLA:CPU runs [T*B, K]^T [T*B, N] about
    # twice as fast as the same contraction over two axes.
    flat_xs, flat_dxs, flat_hs = (
        a.reshape((-1, a.shape[-1])) for a in (xs, d_xs, hs_prev)
    )
    d_gxs = jax.jvp(form.input, (params, flat_xs), (d_params, flat_dxs))[1]
    d_ghs = jax.jvp(lambda p: form.recurrent(p, flat_hs), (params,), (d_params,))[1]
    d_gxs = d_gxs.reshape(xs.shape[:-1] + d_gxs.shape[-1:])
    d_ghs = d_ghs.reshape(hs_prev.shape[:-1] + d_ghs.shape[-1:])
    # recurrent is affine in h: its derivative in h is the same at every point.
    _, recurrent_h = jax.linearize(lambda h: form.recurrent(params, h), form.hidden(carry))

    def tangent_body(dc, step_in):
        d_gx, d_gh, res, v = step_in
        new_dc, dy = lin(d_gx, d_gh + recurrent_h(form.hidden(dc)), dc, *res)
        if masked:
            new_dc = _where(v, new_dc, dc)
            dy = _where(v, dy, jax.tree.map(jnp.zeros_like, dy))
        return new_dc, dy

    d_final, d_ys = jax.lax.scan(
        tangent_body, d_carry, (d_gxs, d_ghs, residuals, valid), unroll=unroll
    )
    return (final, ys), (d_final, d_ys)
