r"""Gradient-flow diagnostics: how much signal reaches the state from ``k`` steps away.

Three views of the same object, the product of step Jacobians
:math:`J_t = \partial c_t / \partial c_{t-1}`:

* :func:`carry_grad_norms`: :math:`\lVert \partial L / \partial c_t \rVert` for every
  step ``t``, for a loss of your choosing (what backpropagation through time
  actually delivers), in one backward pass.
* :func:`jacobian_norms`: :math:`\lVert J_{T-1} \cdots J_{t+1} \rVert_2` for every ``t``
  (the worst case over all losses), with optional singular-value spectra.
* :func:`lyapunov_exponents`: the asymptotic growth rates of those products,
  :math:`\lambda_i = \lim \frac1T \log \sigma_i(J_{T-1} \cdots J_0)`.

:func:`fit_decay_rate` turns norms measured at several distances into a
per-step decay factor (``< 1``: vanishing, ``> 1``: exploding).

All functions take any object following the :class:`rnnlab.Cell` protocol and
work under ``jax.jit`` and ``jax.vmap`` (bind the cell and the loss first, e.g.
``jax.jit(functools.partial(carry_grad_norms, cell, loss_fn=loss))``). Called
outside a jit, :func:`carry_grad_norms`, :func:`jacobian_norms` and
:func:`lyapunov_exponents` check their arguments, then run as one compiled program
per cell, loss function and option set, reused by the next call with the same
shapes (so keep the loss one named function: a fresh lambda each call compiles
afresh).

The state is every floating leaf of the carry; a complex leaf counts as its
real and imaginary parts (so norms use :math:`|z|^2` and Jacobians are those
of the real map :math:`\mathbb{R}^{2n} \to \mathbb{R}^{2n}`, which is right
whether or not the step is holomorphic). Integer leaves (e.g. a step counter)
are carried along but not differentiated.

References:
  Bengio, Simard & Frasconi, "Learning long-term dependencies with gradient
  descent is difficult", IEEE Transactions on Neural Networks 1994.
  Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural
  networks", ICML 2013.
  Vogt, Puelma Touzel, Shlizerman & Lajoie, "On Lyapunov exponents for RNNs:
  understanding information propagation using dynamical systems tools",
  Frontiers in Applied Mathematics and Statistics 2022.
  Engelken, Wolf & Abbott, "Lyapunov spectra of chaotic recurrent neural
  networks", Physical Review Research 2023.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from rnnlab import checks
from rnnlab.cell import Array, Carry, Cell, Params, checkpointed_step, prepare_params
from rnnlab.sequence import _check_lengths, scan
from rnnlab.validation import check_carry, check_cell, check_float_input

__all__ = [
    "carry_grad_norms",
    "fit_decay_rate",
    "jacobian_norms",
    "lyapunov_exponents",
    "param_sensitivity",
    "scaled_norm",
]


# ----------------------------------------------------------------------------
# Gradient norms through the carry: one backward pass.
# ----------------------------------------------------------------------------


def carry_grad_norms(
    cell: Any,
    params: Params,
    xs: Array,
    loss_fn: Callable[[Any, Carry], Array],
    *,
    carry: Carry | None = None,
    lengths: Array | None = None,
    per_leaf: bool = False,
    log: bool = False,
    resets: Array | None = None,
) -> Any:
    r"""Norm of the gradient of a loss with respect to the carry at every step.

    With :math:`(c_t, y_t) = \mathrm{step}(\theta, c_{t-1}, x_t)` and a scalar
    :math:`L = \ell(y_{0:T}, c_{T-1})`, returns for every ``t`` and sequence

    .. math::
        g_t = \Big\lVert \frac{\partial L}{\partial c_t} \Big\rVert_2
            = \Big\lVert \frac{\partial L}{\partial c_{T-1}} J_{T-1} \cdots J_{t+1}
              + \sum_{s > t} \frac{\partial L}{\partial y_s}
                \frac{\partial y_s}{\partial c_t} \Big\rVert_2,

    the total gradient flowing back into the state after step ``t`` (Bengio et
    al. 1994; Pascanu et al. 2013). All ``T`` gradients come from ONE backward
    pass: a zero perturbation :math:`\epsilon_t` is added to the carry after
    every step, :math:`c_t \leftarrow \mathrm{step}(\theta, c_{t-1}, x_t) +
    \epsilon_t`, and :math:`\partial L / \partial c_t = \partial L / \partial
    \epsilon_t` at :math:`\epsilon = 0`.

    ``y_t`` is computed by the same step as ``c_t`` (from :math:`c_{t-1}` and
    :math:`x_t`), so it is not a function of :math:`c_t`: a loss on ``y_t``
    reaches :math:`c_t` only through later steps. For cells whose output is
    the state (``y_t = h_t``), a loss on ``ys[-1]`` therefore gives
    :math:`g_{T-1} = 0`; put the loss on ``final_carry`` to include that step.

    Args:
      cell: any object following the :class:`rnnlab.Cell` protocol.
      params: the cell's parameters.
      xs: inputs ``[T, *batch, F]`` (time-major, as :func:`rnnlab.scan`).
      loss_fn: ``loss_fn(ys, final_carry) -> scalar``, with ``ys`` ``[T, *batch,
        H]`` and ``final_carry`` as returned by :func:`rnnlab.scan`. Sum (or
        average) over the batch yourself; each sequence's gradient is reported
        separately.
      carry: the initial carry; ``cell.initial_carry(params, batch_shape)`` if None.
      lengths: optional ``[*batch]`` valid lengths, with :func:`rnnlab.scan`'s
        semantics (padded steps leave the carry unchanged and output zeros).
        There is no state at a padded step, so its norm is 0.
      per_leaf: return one norm per carry leaf instead of their combination.
      log: return :math:`\ln g_t` computed in log space, so that nothing under-
        or overflows however deep the gradient vanishes or explodes (below).
      resets: optional ``[T, *batch]`` booleans, as in :func:`rnnlab.scan`: where
        ``resets[t]``, step t starts from the initial carry, so no gradient crosses
        it and the norm at t - 1 counts only what reaches it before the reset
        (0, or ``-inf`` with ``log=True``, if nothing does).

    Returns:
      ``[T, *batch]`` norms, reduced over each leaf's feature axes (every axis
      after the batch axes) and over the leaves:
      :math:`g_t = (\sum_{\text{leaves}} \sum_i |\partial L / \partial c_{t,i}|^2)^{1/2}`.
      With ``per_leaf=True``, a pytree shaped like the carry whose leaves are
      ``[T, *batch]`` norms (e.g. ``LSTMCarry(c=..., h=...)``); integer leaves
      get zeros. With ``log=True`` the same shapes hold :math:`\ln g_t`
      (``-inf`` where the norm is exactly 0: padded steps, integer leaves).

    Accuracy: the norm is taken scaled (each vector divided by its largest
    entry before squaring), so with ``log=False`` it is accurate to rounding
    for every norm down to the smallest normal number of the dtype
    (float32: 1.2e-38); smaller gradients flush to 0 in the backward pass
    itself. ``log=True`` runs a rescaled adjoint instead: the cotangent
    :math:`a_t = \partial L / \partial c_t` is kept as :math:`2^{e_t} u_t`,
    one integer exponent :math:`e_t` and a vector :math:`u_t` with largest
    entry in :math:`[1/2, 1)` per carry leaf and sequence, and
    :math:`a_{t-1} = J_t^\top a_t + K_t^\top \partial \ell/\partial y_t`
    (``J_t``, ``K_t`` the step's Jacobians in :math:`c_{t-1}`) is formed from
    one vector-Jacobian product per leaf and one for the loss's direct term,
    each normalised, and combined with exact power-of-two weights. The result
    :math:`\ln g_t = e_t \ln 2 + \ln \lVert u_t \rVert` is finite for any depth
    (e.g. :math:`-692.4` for :math:`2 \cdot 0.5^{1000}`). One forward pass records
    the carries; one backward pass re-linearises each step. It assumes, as every
    cell here does, that the step treats the sequences of a batch independently.

    Raises:
      TypeError: ``cell`` lacks the protocol, ``xs`` is not real floating, or
        ``loss_fn`` is not callable.
      ValueError: ``xs`` has no time and feature axes, the carry's leaves do not
        start with the batch shape, or ``loss_fn`` does not return a real scalar.

    References:
      Bengio, Simard & Frasconi, IEEE Trans. Neural Networks 1994.
      Pascanu, Mikolov & Bengio, ICML 2013.
    """
    check_cell(cell)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (ys, final_carry) -> scalar; got {loss_fn!r}.")
    xs = _check_xs(xs, min_ndim=2, what="[T, F] or [T, *batch, F]",
                   where="carry_grad_norms", params=params, carry=carry)
    carry = _initial_or_checked(cell, params, carry, xs.shape[1:-1])
    if lengths is not None:  # its values, before a jit makes them abstract
        _check_lengths(lengths, xs.shape[1:-1], xs.shape[0])
    return _carry_grad_norms_compiled(cell, params, xs, loss_fn, carry, lengths, per_leaf, log,
                                      resets)


def _compiled(impl: Callable, *static: str) -> Callable:
    """``impl`` (positional arguments) compiled as one program per value of its ``static``
    arguments (a cell, a loss function, flags); run as it is when one is not hashable.

    Called outside a jit, the code around a diagnostic's scans would otherwise run op by
    op, each op its own small compile (docs/performance.md); under a jit it is inlined.
    """
    jitted = jax.jit(impl, static_argnames=static)
    names = list(inspect.signature(impl).parameters)
    positions = [names.index(n) for n in static]

    @functools.wraps(impl)
    def call(*args):
        try:
            hash(tuple(args[i] for i in positions))
        except TypeError:
            return impl(*args)
        return jitted(*args)

    return call


def _carry_grad_norms(cell, params, xs, loss_fn, carry, lengths, per_leaf, log, resets):
    """:func:`carry_grad_norms` once its arguments are checked."""
    num_steps, batch_shape, num_features = xs.shape[0], xs.shape[1:-1], xs.shape[-1]
    leaves, treedef = jax.tree.flatten(carry)
    layout = _batched_layout(leaves, batch_shape)
    if log:
        return _log_carry_grad_norms(cell, params, xs, loss_fn, carry, lengths, per_leaf,
                                     resets)
    offsets = [0]
    for leaf_layout in layout:
        offsets.append(offsets[-1] + leaf_layout.size)
    # Perturbations ride along as extra input features, so that rnnlab.scan (and
    # its masking of padded steps) runs the model unchanged.
    eps_dtype = jnp.result_type(xs.dtype, *(lay.real_dtype for lay in layout if lay.size))
    eps = jnp.zeros((num_steps, *batch_shape, offsets[-1]), eps_dtype)

    # The cell's step under its checkpoint policy, as rnnlab.scan would run it.
    step = checkpointed_step(cell)

    def perturbed_step(p, c, x_and_eps):
        x = x_and_eps[..., :num_features].astype(xs.dtype)
        e = x_and_eps[..., num_features:]
        c, y = step(p, c, x)
        new_leaves = [
            leaf + _unflatten_features(e[..., lo:hi], lay, leaf.shape)
            if lay.size
            else leaf
            for leaf, lay, lo, hi in zip(
                treedef.flatten_up_to(c), layout, offsets[:-1], offsets[1:], strict=True
            )
        ]
        return treedef.unflatten(new_leaves), y

    wrapped = Cell(cell.init, _constant(carry), perturbed_step)

    step_params = prepare_params(cell, params)

    def loss_of_eps(eps):
        xs_and_eps = jnp.concatenate([xs.astype(eps_dtype), eps], axis=-1)
        final_carry, ys = scan(wrapped, step_params, xs_and_eps, lengths=lengths, resets=resets)
        loss = loss_fn(ys, final_carry)
        _check_scalar_loss(loss)
        return loss

    grads = jax.grad(loss_of_eps)(eps)  # [T, *batch, D]
    # Scaled norms: squaring entries below ~1e-19 would underflow float32 to 0.
    if not per_leaf:
        return scaled_norm(grads, axis=-1)
    return treedef.unflatten(
        [
            scaled_norm(grads[..., lo:hi], axis=-1)
            for lo, hi in zip(offsets[:-1], offsets[1:], strict=True)
        ]
    )


_carry_grad_norms_compiled = _compiled(_carry_grad_norms, "cell", "loss_fn", "per_leaf", "log")


def _log_carry_grad_norms(cell, params, xs, loss_fn, carry, lengths, per_leaf, resets):
    """``carry_grad_norms(..., log=True)``: the rescaled adjoint (see its docstring)."""
    num_steps, batch_shape = xs.shape[0], xs.shape[1:-1]
    step_params = prepare_params(cell, params)

    def recording_step(p, c, x):
        new_c, y = cell.step(p, c, x)
        return new_c, (c, y)

    recorder = Cell(cell.init, _constant(carry), recording_step)
    final_carry, (carries_in, ys) = scan(recorder, step_params, xs, lengths=lengths,
                                         resets=resets)

    # The loss's direct terms, in the real representation the backward pass uses.
    y_parts, y_fixed, y_meta = _split_real(ys)
    c_parts, c_fixed, c_meta = _split_real(final_carry)

    def loss_of_parts(yp, cp):
        loss = loss_fn(_join(y_meta, yp, y_fixed), _join(c_meta, cp, c_fixed))
        _check_scalar_loss(loss)
        return loss

    y_bar, c_bar = jax.grad(loss_of_parts, argnums=(0, 1))(y_parts, c_parts)
    in_parts, in_fixed, _ = _split_real(carries_in)

    # One sequence at a time (vmapped), so every sequence gets its own scales.
    n = math.prod(batch_shape)
    batch_ndim = len(batch_shape)

    def flat(a, lead):  # [*lead, *batch, ...] -> [*lead, N, ...]
        return a.reshape(a.shape[:lead] + (n,) + a.shape[lead + batch_ndim:])

    if lengths is None:
        valid = jnp.ones((num_steps, n), bool)
    else:
        valid = jnp.arange(num_steps)[:, None] < jnp.asarray(lengths).reshape(1, n)
    # A reset at step t: step t starts from the initial carry, so nothing reaches the
    # carry after step t-1 through it (scan has checked the array already).
    restart = (jnp.zeros((num_steps, n), bool) if resets is None
               else jnp.asarray(resets).reshape(num_steps, n) & valid)

    def step_parts(parts, fixed, x):
        new_c, y = cell.step(step_params, _join(c_meta, parts, fixed), x)
        return _split_real(new_c)[0], _split_real(y)[0]

    def one_sequence(in_parts, in_fixed, x, y_bar, c_bar, valid, restart):
        num_leaves = len(c_bar)

        def back(state, inputs):  # state represents a_t; returns a_{t-1}
            us, es = state
            c_parts, c_fixed, x, yb, ok, cut = inputs
            _, vjp = jax.vjp(lambda p: step_parts(p, c_fixed, x), c_parts)
            yu, ye = _normalise_jointly(yb)
            # Row r < L: leaf r's cotangent alone; row L: the loss's direct term.
            rows = num_leaves + 1
            ct_c = tuple(
                jnp.zeros((rows, *u.shape), u.dtype).at[r].set(u) for r, u in enumerate(us))
            ct_y = tuple(jnp.zeros((rows, *w.shape), w.dtype).at[num_leaves].set(w)
                         for w in yu)
            source_e = jnp.concatenate([es, ye[None]])  # [L + 1]
            (out,) = jax.vmap(vjp)((ct_c, ct_y))
            new_us, new_es = [], []
            for v in out:  # v: [L + 1, *leaf]
                vu, ve = jax.vmap(_normalise)(v)
                u, e = _combine(vu, source_e, ve)
                new_us.append(u)
                new_es.append(e)
            new_us = tuple(jnp.where(ok, a, b) for a, b in zip(new_us, us, strict=True))
            new_es = jnp.where(ok, jnp.stack(new_es), es)
            # No path crosses a reset: the cotangent is exactly zero (its log -inf), with
            # the zero vector's exponent, so it cannot set the scale of later sums.
            new_us = tuple(jnp.where(cut, jnp.zeros_like(a), a) for a in new_us)
            new_es = jnp.where(cut, _ZERO_EXPONENT, new_es)
            return (new_us, new_es), (new_us, new_es)

        start = [_normalise(b) for b in c_bar]
        state = (tuple(u for u, _ in start), jnp.stack([e for _, e in start]))
        inputs = (tuple(a[1:] for a in in_parts), tuple(a[1:] for a in in_fixed), x[1:],
                  tuple(a[1:] for a in y_bar), valid[1:], restart[1:])
        _, (us, es) = jax.lax.scan(back, state, inputs, reverse=True)
        # us[l] [T-1, ...] and es [T-1, L] represent a_0 .. a_{T-2}; then a_{T-1}.
        us = tuple(jnp.concatenate([a, u[None]]) for a, u in zip(us, state[0], strict=True))
        es = jnp.concatenate([es, state[1][None]])
        log_norms = jnp.stack(
            [_log_norm(u, es[:, i]) for i, u in enumerate(us)], axis=-1)  # [T, L]
        return jnp.where(valid[:, None], log_norms, -jnp.inf)

    per_seq = jax.vmap(one_sequence, in_axes=(1, 1, 1, 1, 0, 1, 1), out_axes=1)
    logs = per_seq(
        tuple(flat(a, 1) for a in in_parts), tuple(flat(a, 1) for a in in_fixed),
        flat(xs, 1), tuple(flat(a, 1) for a in y_bar), tuple(flat(a, 0) for a in c_bar), valid,
        restart,
    )  # [T, N, L]
    logs = logs.reshape((num_steps, *batch_shape, logs.shape[-1]))
    if not per_leaf:
        if logs.shape[-1] == 0:
            return jnp.full((num_steps, *batch_shape), -jnp.inf, xs.dtype)
        return 0.5 * jax.nn.logsumexp(2.0 * logs, axis=-1)
    treedef, kinds = c_meta
    columns = iter(range(logs.shape[-1]))
    out = []
    for kind in kinds:
        if kind == "fixed":
            out.append(jnp.full((num_steps, *batch_shape), -jnp.inf, logs.dtype))
        else:
            out.append(logs[..., next(columns)])
    return treedef.unflatten(out)


def scaled_norm(x: Array, axis: int | tuple[int, ...] = -1) -> Array:
    r"""The 2-norm :math:`\lVert x \rVert_2` along ``axis``, without under- or overflow.

    Computed as :math:`m \,\lVert x / m \rVert_2` with :math:`m = \max_i |x_i|`, so
    that it is accurate to rounding whenever :math:`m` is a normal number and
    finite whenever the result is representable; squaring first would turn
    every norm below ~1e-19 (float32) into 0 and every one above ~1.8e19 into
    ``inf``. Zero vectors give 0, an infinite entry ``inf`` and a NaN entry NaN.

    Args:
      x: any real or complex array.
      axis: the axis or axes reduced.

    Returns:
      The norms, real, with ``axis`` removed.
    """
    a = jnp.abs(x)
    m = jnp.max(a, axis=axis, keepdims=True)
    usable = (m > 0) & jnp.isfinite(m)
    r = jnp.sqrt(jnp.sum(jnp.square(a / jnp.where(usable, m, 1)), axis=axis))
    m = jnp.squeeze(m, axis)
    return jnp.where(jnp.squeeze(usable, axis), m * r, m)


# Exponent of an exactly zero vector in the rescaled adjoint: far below any real one.
_ZERO_EXPONENT = -(2**30)


def _pow2(e: Array, dtype: Any) -> Array:
    """``2**e`` for integer ``e`` as a product of two normal numbers, so exact in
    ``dtype`` wherever the result is normal (XLA on CPU flushes subnormals)."""
    e = jnp.clip(e, -300, 300)
    half = e // 2
    one = jnp.ones((), dtype)
    return jnp.ldexp(one, half) * jnp.ldexp(one, e - half)


def _normalise(v: Array) -> tuple[Array, Array]:
    """``v = 2**e * u`` with ``max|u|`` in [1/2, 1); a zero ``v`` gives ``(0, _ZERO_EXPONENT)``."""
    m = jnp.max(jnp.abs(v)) if v.size else jnp.zeros((), v.dtype)
    _, e = jnp.frexp(m)
    e = e.astype(jnp.int32)
    u = v / _pow2(e // 2, v.dtype) / _pow2(e - e // 2, v.dtype)
    return u, jnp.where(m == 0, _ZERO_EXPONENT, e)


def _normalise_jointly(parts: tuple[Array, ...]) -> tuple[tuple[Array, ...], Array]:
    """:func:`_normalise` with one exponent shared by several arrays."""
    if not parts:
        return (), jnp.asarray(_ZERO_EXPONENT, jnp.int32)
    m = jnp.max(jnp.stack([jnp.max(jnp.abs(p)) if p.size else jnp.zeros((), p.dtype)
                           for p in parts]))
    _, e = jnp.frexp(m)
    e = e.astype(jnp.int32)
    us = tuple(p / _pow2(e // 2, p.dtype) / _pow2(e - e // 2, p.dtype) for p in parts)
    return us, jnp.where(m == 0, _ZERO_EXPONENT, e)


def _combine(vu: Array, source: Array, own: Array) -> tuple[Array, Array]:
    """``sum_r 2**(source[r] + own[r]) * vu[r]`` normalised (``vu [R, ...]``,
    ``source, own [R]``); a row with either exponent zero adds nothing."""
    zero = (source == _ZERO_EXPONENT) | (own == _ZERO_EXPONENT)
    exponents = jnp.where(zero, _ZERO_EXPONENT, source + own)
    top = jnp.max(exponents)
    weights = _pow2(exponents - top, vu.dtype)  # exact powers of two in (0, 1]
    total = jnp.tensordot(weights, vu, axes=1)
    u, e = _normalise(total)
    return u, jnp.where(e == _ZERO_EXPONENT, _ZERO_EXPONENT, top + e)


def _log_norm(u: Array, e: Array) -> Array:
    """``ln ||2**e[t] * u[t]||_2`` for ``u [T, ...]``, ``e [T]``."""
    u = u.reshape(u.shape[0], -1)
    ln2 = jnp.log(jnp.asarray(2.0, u.dtype))
    if u.shape[1] == 0:
        return jnp.full(u.shape[:1], -jnp.inf, u.dtype)
    return e.astype(u.dtype) * ln2 + 0.5 * jnp.log(jnp.sum(jnp.square(u), axis=1))


def _split_real(tree: Any) -> tuple[tuple[Array, ...], tuple[Any, ...], Any]:
    """A pytree's floating leaves as real arrays (a complex leaf as ``[..., 2]``:
    real and imaginary parts), its other leaves, and what :func:`_join` needs."""
    leaves, treedef = jax.tree.flatten(tree)
    parts, fixed, kinds = [], [], []
    for leaf in leaves:
        dtype = jnp.result_type(leaf)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            parts.append(jnp.stack([jnp.real(leaf), jnp.imag(leaf)], axis=-1))
            kinds.append("complex")
        elif jnp.issubdtype(dtype, jnp.floating):
            parts.append(leaf)
            kinds.append("real")
        else:
            fixed.append(leaf)
            kinds.append("fixed")
    return tuple(parts), tuple(fixed), (treedef, tuple(kinds))


def _join(meta: Any, parts: tuple[Array, ...], fixed: tuple[Any, ...]) -> Any:
    """The inverse of :func:`_split_real` (any leading shape)."""
    treedef, kinds = meta
    parts, fixed = iter(parts), iter(fixed)
    out = []
    for kind in kinds:
        if kind == "fixed":
            out.append(next(fixed))
        elif kind == "complex":
            p = next(parts)
            out.append(jax.lax.complex(p[..., 0], p[..., 1]))
        else:
            out.append(next(parts))
    return treedef.unflatten(out)


# ----------------------------------------------------------------------------
# Products of step Jacobians along one trajectory.
# ----------------------------------------------------------------------------


def jacobian_norms(
    cell: Any,
    params: Params,
    xs: Array,
    *,
    carry: Carry | None = None,
    return_spectra: bool = False,
) -> Array | tuple[Array, Array]:
    r"""Spectral norm of :math:`\partial c_{T-1} / \partial c_t` for every step of one sequence.

    .. math::
        \frac{\partial c_{T-1}}{\partial c_t} = J_{T-1} J_{T-2} \cdots J_{t+1},
        \qquad J_s = \frac{\partial\, \mathrm{step}(\theta, c_{s-1}, x_s)}{\partial c_{s-1}},

    the factor that bounds every gradient reaching :math:`c_t` from the end of
    the sequence (Bengio et al. 1994; Pascanu et al. 2013: vanishing when its
    norm decays geometrically in ``T-1-t``, exploding when it grows). ``t = T-1``
    gives the identity (norm 1). The carry is flattened to a real vector of
    size ``D`` (complex leaves as real and imaginary parts).

    The product is accumulated backwards, :math:`P_{t-1} = P_t J_t` from
    :math:`P_{T-1} = I`, by ``D`` vector-Jacobian products per step (``jax.vjp``
    of the step with respect to the flattened carry, one per row of
    :math:`P_t`): :math:`O(T D)` memory and no ``[T, D, D]`` array. Each step's
    singular values come from one SVD.

    For a batch, ``jax.vmap`` over ``xs`` (and ``carry``).

    Args:
      cell: any object following the :class:`rnnlab.Cell` protocol.
      params: the cell's parameters.
      xs: one input sequence ``[T, F]`` (no batch axis).
      carry: the initial carry (unbatched); ``cell.initial_carry(params)`` if None.
      return_spectra: also return all singular values.

    Returns:
      ``norms [T]`` with ``norms[t]`` :math:`= \lVert \partial c_{T-1}/\partial
      c_t \rVert_2`; with ``return_spectra``, ``(norms [T], spectra [T, D])``,
      singular values in descending order (``spectra[:, 0] == norms``).

    Raises:
      TypeError: ``cell`` lacks the protocol or ``xs`` is not real floating.
      ValueError: ``xs`` is not ``[T, F]`` with ``T >= 1``, or the carry has no
        floating leaves.

    References:
      Bengio, Simard & Frasconi, IEEE Trans. Neural Networks 1994.
      Pascanu, Mikolov & Bengio, ICML 2013.
    """
    check_cell(cell)
    xs = _check_xs(xs, min_ndim=2, max_ndim=2, what="[T, F] (one sequence; vmap over a batch)",
                   where="jacobian_norms", params=params, carry=carry)
    carry = _initial_or_checked(cell, params, carry, ())
    vec0, _ = _state_vector(carry)
    if vec0.size == 0:
        raise ValueError("the carry has no floating leaves; there is no state to differentiate.")
    return _jacobian_norms_compiled(cell, params, xs, carry, return_spectra)


def _jacobian_norms(cell, params, xs, carry, return_spectra):
    """:func:`jacobian_norms` once its arguments are checked."""
    vec0, _ = _state_vector(carry)
    step_params = prepare_params(cell, params)
    # carries_in[t] = c_{t-1}, the carry that step t reads.
    _, carries_in = scan(_recording(cell, carry), step_params, xs)

    def back(P, c_prev_and_x):  # P = dc_{T-1}/dc_t  ->  dc_{T-1}/dc_{t-1}
        c_prev, x = c_prev_and_x
        v, rebuild = _state_vector(c_prev)

        def step_map(u):
            return _state_vector(cell.step(step_params, rebuild(u), x)[0])[0]

        _, vjp = jax.vjp(step_map, v)
        P_prev = jax.vmap(lambda row: vjp(row)[0])(P)
        return P_prev, jnp.linalg.svd(P, compute_uv=False)

    # A backward pass over the stored trajectory, not a run of the cell, so a
    # plain lax.scan; steps t = T-1 .. 1, then P_0 on its own (J_0 is not needed).
    eye = jnp.eye(vec0.size, dtype=vec0.dtype)
    rest = jax.tree.map(lambda a: a[1:], (carries_in, xs))
    P0, spectra_rest = jax.lax.scan(back, eye, rest, reverse=True)
    spectra = jnp.concatenate([jnp.linalg.svd(P0, compute_uv=False)[None], spectra_rest])
    norms = spectra[:, 0]
    return (norms, spectra) if return_spectra else norms


_jacobian_norms_compiled = _compiled(_jacobian_norms, "cell", "return_spectra")


def lyapunov_exponents(
    cell: Any,
    params: Params,
    xs: Array,
    k: int,
    *,
    carry: Carry | None = None,
    transient: int = 0,
    key: Array | None = None,
) -> Array:
    r"""The ``k`` largest Lyapunov exponents of the state dynamics driven by ``xs``.

    Standard QR (Benettin / Gram-Schmidt) algorithm: with :math:`Q_{-1}` a
    random orthonormal ``D x k`` frame (the Q factor of a Gaussian matrix drawn
    from ``key``) and :math:`J_t` the step Jacobian along the trajectory,

    .. math::
        Q_t R_t = J_t Q_{t-1} \quad (\text{reduced QR}), \qquad
        \lambda_i = \frac{1}{T - T_0} \sum_{t = T_0}^{T-1} \log |(R_t)_{ii}|,

    sorted descending (per step, in nats). :math:`\lambda_1 < 0` means
    perturbations of the state (and so gradients) shrink on average by
    :math:`e^{\lambda_1}` per step along this input; :math:`\sum_{i \le D}
    \lambda_i` is the mean :math:`\log |\det J_t|`. ``J_t Q`` is formed by ``k``
    Jacobian-vector products, never the full Jacobian. Use a long ``xs`` and a
    ``transient`` so that ``Q`` aligns with the leading directions first.

    The start is random, not the first ``k`` coordinate axes, because a frame
    spanning a subspace the Jacobians leave invariant (every diagonal cell: LRU,
    minGRU, minLSTM; any block of units decoupled from the rest) never leaves it
    and returns that subspace's exponents instead of the ``k`` largest. A random
    frame has a component along every direction with probability 1. For the same
    reason a column that a step annihilates (``J_t`` rank-deficient: ReLU units
    off, a gate at exactly 0) restarts from a fresh random direction (drawn from
    ``key`` folded with the step); that step's :math:`\log |(R_t)_{ii}|` is
    :math:`-\infty`, so an exponent is ``-inf`` exactly when the product of the
    Jacobians over the averaged steps has rank below its index (never NaN).

    Args:
      cell: any object following the :class:`rnnlab.Cell` protocol.
      params: the cell's parameters.
      xs: one input sequence ``[T, F]`` (no batch axis; vmap over a batch).
      k: how many exponents, ``1 <= k <= D`` (``D`` the size of the real
        flattened state).
      carry: the initial carry (unbatched); ``cell.initial_carry(params)`` if None.
      transient: :math:`T_0`, leading steps that evolve the state and ``Q`` but
        are left out of the average.
      key: the PRNG key of the initial frame; ``jax.random.key(0)`` if None, so
        that a call is deterministic.

    Returns:
      ``[k]`` exponents, largest first.

    Raises:
      TypeError: ``cell`` lacks the protocol, ``xs`` is not real floating, or
        ``k``/``transient`` are not ints.
      ValueError: ``xs`` is not ``[T, F]``, ``k`` is outside ``[1, D]``, or
        ``transient`` outside ``[0, T-1]``.

    References:
      Benettin, Galgani, Giorgilli & Strelcyn, "Lyapunov characteristic
      exponents for smooth dynamical systems...", Meccanica 1980.
      Vogt et al., "On Lyapunov exponents for RNNs", Front. Appl. Math. Stat. 2022.
      Engelken, Wolf & Abbott, "Lyapunov spectra of chaotic recurrent neural
      networks", Phys. Rev. Research 2023.
    """
    check_cell(cell)
    xs = _check_xs(xs, min_ndim=2, max_ndim=2, what="[T, F] (one sequence; vmap over a batch)",
                   where="lyapunov_exponents", params=params, carry=carry)
    num_steps = xs.shape[0]
    carry = _initial_or_checked(cell, params, carry, ())
    vec0, _ = _state_vector(carry)
    dim = vec0.size
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int; received {k!r}.")
    if not 1 <= k <= dim:
        raise ValueError(f"k must lie in [1, D] = [1, {dim}] (D = state size); received {k}.")
    if isinstance(transient, bool) or not isinstance(transient, int):
        raise TypeError(f"transient must be an int; received {transient!r}.")
    if not 0 <= transient < num_steps:
        raise ValueError(
            f"transient must lie in [0, T-1] = [0, {num_steps - 1}]; received {transient}."
        )
    return _lyapunov_exponents_compiled(cell, params, xs, k, carry, transient, key)


def _lyapunov_exponents(cell, params, xs, k, carry, transient, key):
    """:func:`lyapunov_exponents` once its arguments are checked."""
    vec0, _ = _state_vector(carry)
    dim = vec0.size

    def qr_step(p, state, x):
        c, Q, t = state
        v, rebuild = _state_vector(c)

        def step_map(u):
            return _state_vector(cell.step(p, rebuild(u), x)[0])[0]

        JQ = jax.vmap(lambda q: jax.jvp(step_map, (v,), (q,))[1], in_axes=1, out_axes=1)(Q)
        Q, R = jnp.linalg.qr(JQ)
        log_r = jnp.log(jnp.abs(jnp.diagonal(R)))
        # A direction this step annihilates (a zero column of R: a ReLU unit off,
        # a gate at 0) leaves QR's arbitrary completion, the coordinate axes, in
        # Q; they can span an invariant subspace, as the fixed start could. Such
        # columns restart from fresh random directions; the step's -inf stands.
        dead = log_r == -jnp.inf
        fresh = jax.random.normal(jax.random.fold_in(key, t), Q.shape, Q.dtype)
        restarted, _ = jnp.linalg.qr(jnp.where(dead, fresh, Q))
        Q = jnp.where(jnp.any(dead), restarted, Q)
        new_c, _ = cell.step(p, c, x)
        return (new_c, Q, t + 1), log_r

    if key is None:
        key = jax.random.key(0)
    frame, _ = jnp.linalg.qr(jax.random.normal(key, (dim, k), vec0.dtype))
    tracker = Cell(cell.init, _constant((carry, frame, jnp.zeros((), jnp.int32))), qr_step)
    _, log_r = scan(tracker, prepare_params(cell, params), xs)  # [T, k]
    exponents = jnp.mean(log_r[transient:], axis=0)
    return -jnp.sort(-exponents)


_lyapunov_exponents_compiled = _compiled(_lyapunov_exponents, "cell", "k", "transient")


# ----------------------------------------------------------------------------
# Sensitivity of the state to the parameters: one forward-mode pass.
# ----------------------------------------------------------------------------


def param_sensitivity(
    cell: Any,
    params: Params,
    xs: Array,
    tangents: Params,
    *,
    carry: Carry | None = None,
    lengths: Array | None = None,
    per_leaf: bool = False,
) -> Any:
    r"""Norm of the directional derivative of the carry along a parameter tangent, every step.

    .. math::
        s_t = \Big\lVert \frac{\partial c_t}{\partial \theta}\, v \Big\rVert_2
            = \Big\lVert \sum_{s \le t} J_t \cdots J_{s+1}
              \frac{\partial\, \mathrm{step}(\theta, c_{s-1}, x_s)}{\partial \theta} v
              \Big\rVert_2

    for the tangent :math:`v` (``tangents``), with :math:`c_{-1}` the initial
    carry (its dependence on :math:`\theta` counted when ``carry`` is None).
    All ``T`` values come from ONE forward-mode pass (``jax.jvp`` through
    :func:`rnnlab.scan`), with no backward pass and no stored trajectory. This
    is the quantity of the "curse of memory" (Zucchet & Orvieto 2024): for
    :math:`h_t = \lambda h_{t-1} + x_t` driven by white noise,
    :math:`\mathbb{E}\, s_t^2 \to (1 + \lambda^2) / (1 - \lambda^2)^3` along
    :math:`v = \partial / \partial \lambda`.

    Args:
      cell: any object following the :class:`rnnlab.Cell` protocol.
      params: the cell's parameters.
      xs: inputs ``[T, *batch, F]`` (time-major).
      tangents: a pytree shaped like ``params`` (same structure and leaf shapes),
        the direction :math:`v`; leaves are cast to the params' dtypes.
      carry: the initial carry, held fixed; ``cell.initial_carry(params,
        batch_shape)`` if None (differentiated along with the params).
      lengths: optional ``[*batch]`` valid lengths (:func:`rnnlab.scan`'s
        semantics); the norm at a padded step is 0.
      per_leaf: one norm per carry leaf instead of their combination.

    Returns:
      ``[T, *batch]`` norms (scaled, as :func:`scaled_norm`), or with
      ``per_leaf`` a pytree shaped like the carry of ``[T, *batch]`` norms
      (integer leaves get zeros). A complex leaf counts as its real and
      imaginary parts.

    Raises:
      TypeError: ``cell`` lacks the protocol or ``xs`` is not real floating.
      ValueError: ``xs`` has no time and feature axes, ``tangents`` is not shaped
        like ``params``, or the carry does not match the cell's.

    References:
      Zucchet & Orvieto, "Recurrent neural networks: vanishing and exploding
      gradients are not the end of the story", NeurIPS 2024.
    """
    check_cell(cell)
    xs = _check_xs(xs, min_ndim=2, what="[T, F] or [T, *batch, F]",
                   where="param_sensitivity", params=params, carry=carry)
    batch_shape = xs.shape[1:-1]
    if carry is not None:
        check_carry(cell, params, carry, batch_shape)
    tangents = _check_tangents(params, tangents)

    def emitting_step(p, c, x):
        new_c, _ = cell.step(p, c, x)
        return new_c, new_c

    def carries_of(p):
        c0 = cell.initial_carry(p, batch_shape) if carry is None else carry
        emitter = Cell(cell.init, _constant(c0), emitting_step)
        return scan(emitter, prepare_params(cell, p), xs, lengths=lengths)[1]

    carries, d_carries = jax.jvp(carries_of, (params,), (tangents,))
    num_steps = xs.shape[0]
    lead = 1 + len(batch_shape)

    def leaf_norm(c, dc):
        if not jnp.issubdtype(jnp.result_type(c), jnp.inexact):
            return jnp.zeros((num_steps, *batch_shape), xs.dtype)
        return scaled_norm(dc.reshape(dc.shape[:lead] + (-1,)), axis=-1)

    norms = jax.tree.map(leaf_norm, carries, d_carries)
    if per_leaf:
        return norms
    leaves = jax.tree.leaves(norms)
    return scaled_norm(jnp.stack(leaves), axis=0)


def _check_tangents(params: Params, tangents: Params) -> Params:
    p_leaves, p_def = jax.tree.flatten(params)
    t_leaves, t_def = jax.tree.flatten(tangents)
    if p_def != t_def:
        raise ValueError(
            f"tangents must have the structure of params {p_def}; received {t_def}.")
    out = []
    for p, t in zip(p_leaves, t_leaves, strict=True):
        if jnp.shape(p) != jnp.shape(t):
            raise ValueError(
                "tangents must have the leaf shapes of params "
                f"{[jnp.shape(x) for x in p_leaves]}; received {[jnp.shape(x) for x in t_leaves]}.")
        dtype = jnp.result_type(p)
        if jnp.issubdtype(dtype, jnp.inexact):
            out.append(jnp.asarray(t, dtype))
        else:  # integer params have no tangent space
            out.append(np.zeros(jnp.shape(p), jax.dtypes.float0))
    return jax.tree.unflatten(p_def, out)


# ----------------------------------------------------------------------------
# Fitting.
# ----------------------------------------------------------------------------


def fit_decay_rate(norms: Array, distances: Array, *, log: bool = False) -> Array:
    r"""Per-step decay factor from a least-squares fit of log-norm against distance.

    .. math::
        \log g = a + d \log r \quad\Rightarrow\quad
        \log r = \frac{\sum (d - \bar d)(\log g - \overline{\log g})}{\sum (d - \bar d)^2}

    ``r < 1``: gradients vanish by a factor ``r`` per step; ``r > 1``: they
    explode. Entries that are zero or not finite (padded steps, underflow) are
    left out of the fit.

    Args:
      norms: ``[N, ...]`` gradient or Jacobian norms, e.g. :func:`carry_grad_norms`'
        ``[T, *batch]`` (all entries are pooled into one fit; vmap for several).
      distances: the same shape, or ``[N]`` (broadcast along the trailing axes),
        e.g. ``T - 1 - jnp.arange(T)``.
      log: ``norms`` are natural logs of norms (e.g. ``carry_grad_norms(...,
        log=True)``); then every finite entry is used.

    Returns:
      The scalar per-step factor :math:`r = e^{\text{slope}}` (nan if fewer than
      two distinct distances have usable norms).
    """
    norms = jnp.asarray(norms)
    if not jnp.issubdtype(norms.dtype, jnp.floating):
        raise TypeError(f"norms must have a real floating dtype; received {norms.dtype}.")
    distances = jnp.asarray(distances, norms.dtype)
    if distances.shape != norms.shape:
        if distances.ndim == 1 and norms.ndim >= 1 and distances.shape[0] == norms.shape[0]:
            distances = jnp.broadcast_to(
                distances.reshape(distances.shape + (1,) * (norms.ndim - 1)), norms.shape
            )
        else:
            raise ValueError(
                f"distances must have the shape of norms {norms.shape} or be [N] with N = "
                f"norms.shape[0]; received shape {distances.shape}."
            )
    if log:
        return _fit_log_decay_rate(norms, distances)
    return _fit_decay_rate(norms, distances)


@jax.jit
def _fit_decay_rate(norms: Array, distances: Array) -> Array:
    usable = (norms > 0) & jnp.isfinite(norms)
    return _fit_log_decay_rate(jnp.log(jnp.where(usable, norms, 0.0)), distances)


@jax.jit
def _fit_log_decay_rate(log_norms: Array, distances: Array) -> Array:
    usable = jnp.isfinite(log_norms)
    weight = usable.astype(log_norms.dtype)
    log_norms = jnp.where(usable, log_norms, 0.0)
    count = jnp.sum(weight)
    d_mean = jnp.sum(weight * distances) / count
    l_mean = jnp.sum(weight * log_norms) / count
    d_centred = weight * (distances - d_mean)
    slope = jnp.sum(d_centred * (log_norms - l_mean)) / jnp.sum(d_centred * d_centred)
    return jnp.exp(slope)


# ----------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------


class _LeafLayout:
    """Where one carry leaf's perturbation lives among the extra input features."""

    def __init__(self, leaf: Any, batch_ndim: int):
        dtype = jnp.result_type(leaf)
        self.is_complex = bool(jnp.issubdtype(dtype, jnp.complexfloating))
        differentiable = bool(jnp.issubdtype(dtype, jnp.inexact))
        self.real_dtype = jnp.finfo(dtype).dtype if differentiable else None
        per_part = math.prod(jnp.shape(leaf)[batch_ndim:])
        self.size = (2 if self.is_complex else 1) * per_part if differentiable else 0


def _batched_layout(leaves: list[Any], batch_shape: tuple[int, ...]) -> list[_LeafLayout]:
    for leaf in leaves:
        if tuple(jnp.shape(leaf)[: len(batch_shape)]) != tuple(batch_shape):
            raise ValueError(
                f"every carry leaf must start with the inputs' batch shape {tuple(batch_shape)}; "
                f"received carry leaf shapes {[tuple(jnp.shape(x)) for x in leaves]}."
            )
    return [_LeafLayout(leaf, len(batch_shape)) for leaf in leaves]


def _unflatten_features(e: Array, layout: _LeafLayout, shape: tuple[int, ...]) -> Array:
    """``[*batch, size]`` features -> one leaf's ``[*batch, *feature]`` perturbation."""
    e = e.astype(layout.real_dtype)
    if layout.is_complex:
        half = layout.size // 2
        return jax.lax.complex(e[..., :half], e[..., half:]).reshape(shape)
    return e.reshape(shape)


def _state_vector(carry: Carry) -> tuple[Array, Callable[[Array], Carry]]:
    """The carry's floating leaves as one real vector, and the map back.

    Complex leaves contribute their real and imaginary parts; other leaves are
    not part of the vector and are restored unchanged by the map back.
    """
    leaves, treedef = jax.tree.flatten(carry)
    kinds = []
    parts = []
    for leaf in leaves:
        dtype = jnp.result_type(leaf)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            kinds.append("complex")
            parts.append((jnp.real(leaf), jnp.imag(leaf)))
        elif jnp.issubdtype(dtype, jnp.floating):
            kinds.append("real")
            parts.append(leaf)
        else:
            kinds.append("fixed")
    vec, unravel = ravel_pytree(parts)

    def rebuild(v: Array) -> Carry:
        new_parts = iter(unravel(v))
        out = []
        for leaf, kind in zip(leaves, kinds, strict=True):
            if kind == "fixed":
                out.append(leaf)
            elif kind == "complex":
                re, im = next(new_parts)
                out.append(jax.lax.complex(re, im))
            else:
                out.append(next(new_parts))
        return treedef.unflatten(out)

    return vec, rebuild


def _recording(cell: Any, carry: Carry) -> Cell:
    """A cell that behaves like ``cell`` from ``carry`` but outputs the carry it read."""

    def step(params, c, x):
        new_c, _ = cell.step(params, c, x)
        return new_c, c

    return Cell(cell.init, _constant(carry), step)


def _constant(carry: Carry) -> Callable[..., Carry]:
    """An ``initial_carry`` that returns ``carry`` (already checked against the cell's).

    The wrapping cells here start :func:`rnnlab.scan` from a given carry this
    way rather than through its ``carry`` argument: the carry has been checked
    once already, and the wrappers' own carries differ from the cell's.
    """

    def initial_carry(params, batch_shape=()):
        del params, batch_shape
        return carry

    return initial_carry


def _initial_or_checked(
    cell: Any, params: Params, carry: Carry | None, batch_shape: tuple[int, ...]
) -> Carry:
    """``cell.initial_carry(params, batch_shape)`` if ``carry`` is None, else ``carry``
    once its structure and shapes are checked against that."""
    if carry is None:
        return cell.initial_carry(params, batch_shape)
    check_carry(cell, params, carry, batch_shape)
    return carry


def _check_xs(
    xs: Any, *, min_ndim: int, what: str, max_ndim: int | None = None,
    where: str = "", params: Any = None, carry: Any = None,
) -> Array:
    xs = jnp.asarray(xs)
    check_float_input(xs, "xs")
    checks.check_finite_args(where, xs=xs, params=params, carry=carry)  # opt-in (rnnlab.checks)
    if xs.ndim < min_ndim or (max_ndim is not None and xs.ndim > max_ndim):
        raise ValueError(f"xs must be {what}; received shape {xs.shape}.")
    if xs.shape[0] == 0:
        raise ValueError(f"xs must have at least one time step; received shape {xs.shape}.")
    return xs


def _check_scalar_loss(loss: Any) -> None:
    shape, dtype = jnp.shape(loss), jnp.result_type(loss)
    if shape != () or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            "loss_fn must return a real floating scalar; it returned an array of shape "
            f"{shape} and dtype {dtype} (reduce over the batch, e.g. with jnp.sum)."
        )
