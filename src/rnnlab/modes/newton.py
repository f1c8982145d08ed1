r"""The Newton paths: any cell's recurrence solved as one system of T equations, in parallel.

The states of :math:`s_t = f(s_{t-1}, x_t)` (the carry flattened to a real
vector of size D per sequence; :math:`s_{-1}` the initial carry) are the root
of :math:`F(s)_t = s_t - f(s_{t-1}, x_t)`. Newton's method linearises
:math:`f` at the current guess :math:`s^{(k)}`, and each iteration is then a
*linear* recurrence, which ``jax.lax.associative_scan`` evaluates in
:math:`O(\log T)` depth (DEER, Lim et al. 2024). Written around the values
:math:`g_t = f(s^{(k)}_{t-1}, x_t)`, with :math:`J_t = \partial f / \partial
s_{t-1}` at :math:`s^{(k)}_{t-1}` and the residual :math:`r_t = g_t -
s^{(k)}_t`,

.. math::
    s^{(k+1)}_t = g_t + \delta_t, \qquad
    \delta_t = J_t (\delta_{t-1} + r_{t-1}), \quad \delta_0 = 0 .

Where the residuals of the first steps are exactly zero the corrections are
exactly zero too, so each iteration makes at least one more step exact:
after at most T iterations the states are those of the sequential scan, step
by step, for any :math:`J_t`. That is why the default iteration cap, T, always
gives the sequential answer, and why the variants below keep that guarantee:

* ``"newton"``: the full :math:`D \times D` Jacobians from ``jax.jacfwd`` of
  the step (DEER); quadratic convergence near the solution.
* ``"quasi-newton"``: their diagonals only (quasi-DEER, Gonzalez et al. 2024):
  an elementwise recurrence, :math:`O(D)` instead of :math:`O(D^3)` per step
  in the scan, usually more iterations. (The diagonal is read off the same D
  Jacobian-vector products.)
* ``damping`` :math:`\beta \in [0, 1]`: :math:`J_t \to (1-\beta) J_t`, from
  Newton (0) to the Picard/Jacobi iteration :math:`s^{(k+1)}_t = g_t` (1),
  which converges in exactly as many iterations as the longest chain of
  non-contracting steps and never amplifies an error. It bounds the products
  of Jacobians that make undamped Newton overshoot on chaotic dynamics; this
  is the purpose of ELK's trust region (Gonzalez et al. 2024) but not its
  Kalman-smoother solve.

A correction that is not finite (products of Jacobians overflowing on a
chaotic system) is replaced elementwise by :math:`g_t` (a Picard step), which
keeps the guarantee; so a solve is never NaN unless the cell's own step is.

The derivative is not taken through the iterations. At the solution, the
implicit-function theorem gives the cotangent of the states as one
transposed linear recurrence in reverse time,
:math:`\lambda_t = \bar s_t + J_{t+1}^\top \lambda_{t+1}`, evaluated by the
same associative scan with the full Jacobians (for both variants, so the
gradient is exact), and then one vector-Jacobian product of the step over all
T steps at once gives the params', inputs' and initial carry's gradients
(``jax.custom_vjp``: reverse mode; forward mode is not defined).

References:
  Lim, Zhu, Selfridge & Kasim, "Parallelizing non-linear sequential models
  over the sequence length" (DEER), ICLR 2024.
  Gonzalez, Warrington, Smith & Linderman, "Towards scalable and stable
  parallelization of nonlinear RNNs" (quasi-DEER, ELK), NeurIPS 2024.
  Gonzalez et al., "Predictability enables parallelization of nonlinear state
  space models", NeurIPS 2025.
  Danieli et al., "ParaRNN: unlocking parallel training of nonlinear RNNs for
  large language models", 2025.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnlab.cell import Array, Carry, Params
from rnnlab.modes.parallel import linear_recurrence
from rnnlab.validation import check_choice

ON_FAILURE = ("warn", "nan", "ignore")


class NewtonOptions(NamedTuple):
    """Options of ``rnnlab.scan(..., mode="newton" | "quasi-newton", newton=NewtonOptions(...))``.

    Attributes:
      tol: the solve stops when every step's scaled residual
        ``|s_t - f(s_{t-1}, x_t)| / (1 + |f(s_{t-1}, x_t)|)`` is at most ``tol``;
        None: 8 ulps of the carry's dtype (about 1e-6 in float32, 2e-15 in float64).
      max_iterations: the iteration cap; None: T, which always gives the
        sequential answer (see :mod:`rnnlab.modes.newton`). A smaller cap may
        stop before convergence; ``on_failure`` says what happens then.
      damping: ``beta`` in [0, 1]: the Jacobians scaled by ``1 - beta`` in the
        iterations (0: Newton, 1: Picard iteration), for chaotic or stiff
        dynamics. The derivative is exact at any value.
      on_failure: when the cap is reached without convergence: ``"warn"`` (a
        :class:`NewtonNotConvergedWarning` from the host, also under ``jit``),
        ``"nan"`` (the states and outputs become NaN), or ``"ignore"`` (return
        the last iterate; read ``return_info``).
    """

    tol: float | None = None
    max_iterations: int | None = None
    damping: float = 0.0
    on_failure: str = "warn"


class NewtonInfo(NamedTuple):
    """How a Newton solve went (``rnnlab.scan(..., return_info=True)``).

    Attributes:
      iterations: ``[]`` int32, Newton iterations made (0 when the initial
        guess already solved the system, e.g. T = 0).
      residual: ``[]`` the largest scaled residual
        :math:`|s_t - f(s_{t-1}, x_t)| / (1 + |f(s_{t-1}, x_t)|)` of the states returned.
      converged: ``[]`` bool, ``residual <= tol``.
    """

    iterations: Array
    residual: Array
    converged: Array


class NewtonNotConvergedWarning(RuntimeWarning):
    """A Newton solve reached its iteration cap before its tolerance."""


def check_options(options: Any) -> NewtonOptions:
    """``options`` as a :class:`NewtonOptions` (None: the defaults), or a clear error."""
    if options is None:
        return NewtonOptions()
    if isinstance(options, dict):
        unknown = set(options) - set(NewtonOptions._fields)
        if unknown:
            raise ValueError(
                f"newton must have keys among {NewtonOptions._fields}; received {sorted(unknown)}."
            )
        options = NewtonOptions(**options)
    if not isinstance(options, NewtonOptions):
        raise TypeError(
            f"newton must be a rnnlab.NewtonOptions, a dict of its fields or None; "
            f"received {type(options).__name__}."
        )
    tol = options.tol
    if tol is not None and not (isinstance(tol, (int, float)) and tol >= 0):
        raise ValueError(f"newton.tol must be a non-negative float or None; received {tol!r}.")
    cap = options.max_iterations
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, np.integer))
                            or cap < 0):
        raise ValueError(
            f"newton.max_iterations must be a non-negative int or None; received {cap!r}."
        )
    if not (isinstance(options.damping, (int, float)) and 0.0 <= options.damping <= 1.0):
        raise ValueError(f"newton.damping must lie in [0, 1]; received {options.damping!r}.")
    check_choice(options.on_failure, ON_FAILURE, "newton.on_failure")
    return options


def check_carry_leaves(carry: Carry) -> None:
    """Raises ValueError unless every carry leaf is floating or complex (Newton solves for all)."""
    bad = [str(jnp.result_type(c)) for c in jax.tree.leaves(carry)
           if not jnp.issubdtype(jnp.result_type(c), jnp.inexact)]
    if bad:
        raise ValueError(
            "mode='newton'/'quasi-newton' solve for every carry leaf, so each must be floating "
            f"or complex; received a carry with leaves of dtype {bad}. Use mode='sequential'."
        )


def run(
    step: Callable[[Params, Carry, Array], tuple[Carry, Any]],
    params: Params,
    carry: Carry,
    xs: Array,
    valid: Array | None,
    resets: Array | None = None,
    *,
    quasi: bool = False,
    options: NewtonOptions | None = None,
) -> tuple[Carry, Any, NewtonInfo]:
    """The recurrence solved by (quasi-)Newton iterations (see :mod:`rnnlab.modes`).

    Returns ``(final_carry, ys, info)``: the normalised problem's answer and a
    :class:`NewtonInfo`.
    """
    options = check_options(options)
    check_carry_leaves(carry)
    num_steps, batch_shape = xs.shape[0], xs.shape[1:-1]
    layout = _Layout(carry, len(batch_shape))
    rows = math.prod(batch_shape)
    c0 = layout.flatten_batched(carry, rows)  # [R, D]
    xs_r = xs.reshape((num_steps, rows, xs.shape[-1]))
    valid_r = (jnp.ones((num_steps, rows), bool) if valid is None
               else valid.reshape((num_steps, rows)))
    resets_r = (jnp.zeros((num_steps, rows), bool) if resets is None
                else resets.reshape((num_steps, rows)))
    problem = _Problem(step, layout, quasi, options)

    if num_steps == 0:
        _, y_struct = jax.eval_shape(
            lambda c, x: step(params, c, x), carry, jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype))
        ys = jax.tree.map(lambda s: jnp.zeros((0,) + s.shape, s.dtype), y_struct)
        zero = jnp.zeros((), c0.dtype)
        return carry, ys, NewtonInfo(jnp.zeros((), jnp.int32), zero, jnp.ones((), bool))

    states, iterations, residual = _solve(problem, params, c0, xs_r, valid_r, resets_r)
    tol = problem.tol(c0.dtype)
    info = NewtonInfo(iterations, residual, residual <= tol)
    if options.on_failure == "warn":
        jax.debug.callback(functools.partial(_warn, tol=tol, steps=num_steps),
                           info.converged, iterations, residual)
    _, ys = _rows(problem, params, _previous(states, c0), xs_r, c0, valid_r, resets_r)
    if options.on_failure == "nan":
        states = jnp.where(info.converged, states, jnp.nan)
        ys = jax.tree.map(lambda y: jnp.where(info.converged, y, jnp.nan), ys)
    ys = jax.tree.map(lambda y: y.reshape((num_steps,) + batch_shape + y.shape[2:]), ys)
    final = layout.unflatten_batched(states[-1], batch_shape)
    return final, ys, info


def _warn(converged, iterations, residual, *, tol, steps):
    if not bool(np.all(converged)):
        warnings.warn(
            f"the Newton solve stopped at its iteration cap ({int(np.max(iterations))} "
            f"iterations for T = {steps} steps) with residual {float(np.max(residual)):.3g} "
            f"> tol = {tol:.3g}; "
            "the result is not the sequential answer. Raise newton.max_iterations (T always "
            "converges), add damping, or use mode='sequential'.",
            NewtonNotConvergedWarning, stacklevel=2,
        )


# ----------------------------------------------------------------------------- the system


class _Layout:
    """The carry of one sequence as a real vector ``[D]``: each leaf's features in order,
    a complex leaf as its real parts then its imaginary parts."""

    def __init__(self, carry: Carry, batch_ndim: int):
        leaves, self.treedef = jax.tree.flatten(carry)
        self.shapes = [tuple(jnp.shape(leaf))[batch_ndim:] for leaf in leaves]
        self.dtypes = [jnp.result_type(leaf) for leaf in leaves]
        self.complex = [jnp.issubdtype(d, jnp.complexfloating) for d in self.dtypes]
        self.dtype = jnp.result_type(*[jnp.finfo(d).dtype for d in self.dtypes])
        self.sizes = [math.prod(s) * (2 if c else 1) for s, c in zip(self.shapes, self.complex,
                                                                    strict=True)]
        self.size = sum(self.sizes)

    def flatten(self, carry: Carry) -> Array:
        parts = []
        for leaf, is_complex in zip(self.treedef.flatten_up_to(carry), self.complex, strict=True):
            leaf = jnp.ravel(leaf)
            parts += [jnp.real(leaf), jnp.imag(leaf)] if is_complex else [leaf]
        return jnp.concatenate([p.astype(self.dtype) for p in parts])

    def unflatten(self, vec: Array) -> Carry:
        leaves, start = [], 0
        for shape, dtype, is_complex, size in zip(self.shapes, self.dtypes, self.complex,
                                                  self.sizes, strict=True):
            part = vec[start:start + size]
            start += size
            if is_complex:
                half = size // 2
                part = jax.lax.complex(part[:half], part[half:])
            leaves.append(part.astype(dtype).reshape(shape))
        return self.treedef.unflatten(leaves)

    def flatten_batched(self, carry: Carry, rows: int) -> Array:
        leaves = self.treedef.flatten_up_to(carry)
        flat = [jnp.reshape(c, (rows,) + s) for c, s in zip(leaves, self.shapes, strict=True)]
        return jax.vmap(self.flatten)(self.treedef.unflatten(flat))

    def unflatten_batched(self, vecs: Array, batch_shape: tuple[int, ...]) -> Carry:
        carry = jax.vmap(self.unflatten)(vecs)
        return jax.tree.map(lambda c: c.reshape(batch_shape + c.shape[1:]), carry)


class _Problem(NamedTuple):
    step: Callable
    layout: _Layout
    quasi: bool
    options: NewtonOptions

    def tol(self, dtype: Any) -> float:
        return 8 * float(jnp.finfo(dtype).eps) if self.options.tol is None else self.options.tol


def _one(problem: _Problem, params, s_prev, x, c0, v, r):
    """One step of one sequence on state vectors: resets, the cell's step, padding."""
    s_in = jnp.where(r, c0, s_prev)
    new_c, y = problem.step(params, problem.layout.unflatten(s_in), x)
    s_new = problem.layout.flatten(new_c)
    return jnp.where(v, s_new, s_in), jax.tree.map(lambda a: jnp.where(v, a, 0), y)


def _rows(problem, params, s_prev, xs, c0, valid, resets):
    """Every step of every sequence at once: ``s_prev [T, R, D]`` -> ``(s [T, R, D], ys)``."""
    one = functools.partial(_one, problem, params)
    per_row = jax.vmap(jax.vmap(one))
    return per_row(s_prev, xs, jnp.broadcast_to(c0[None], s_prev.shape), valid, resets)


def _jacobians(problem, params, s_prev, xs, c0, valid, resets, *, full: bool):
    """``J_t = d s_t / d s_{t-1}`` at ``s_prev``: ``[T, R, D, D]`` (or diagonals ``[T, R, D]``)."""
    def state(s, x, c, v, r):
        return _one(problem, params, s, x, c, v, r)[0]

    jac = jax.vmap(jax.vmap(jax.jacfwd(state)))(
        s_prev, xs, jnp.broadcast_to(c0[None], s_prev.shape), valid, resets)
    return jac if full else jnp.diagonal(jac, axis1=-2, axis2=-1)


def _previous(states: Array, c0: Array) -> Array:
    """``s_{t-1}`` for every t: the initial state, then all states but the last."""
    return jnp.concatenate([c0[None], states[:-1]], axis=0)


def _linear_full(A: Array, b: Array) -> Array:
    """All states of ``h_t = A_t h_{t-1} + b_t`` from ``h_{-1} = 0`` (``A [T, R, D, D]``)."""
    def combine(earlier, later):
        A1, b1 = earlier
        A2, b2 = later
        return A2 @ A1, (A2 @ b1[..., None])[..., 0] + b2

    return jax.lax.associative_scan(combine, (A, b))[1]


def _linear(J: Array, b: Array, *, full: bool) -> Array:
    if full:
        return _linear_full(J, b)
    return linear_recurrence(J, b, jnp.zeros_like(b[0]))


def _scaled_residual(g: Array, s: Array) -> Array:
    return jnp.max(jnp.abs(g - s) / (1 + jnp.abs(g)))


# ----------------------------------------------------------------------------- the solve


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _solve(problem, params, c0, xs, valid, resets):
    return _iterate(problem, params, c0, xs, valid, resets)


def _iterate(problem, params, c0, xs, valid, resets):
    num_steps = xs.shape[0]
    cap = num_steps if problem.options.max_iterations is None else problem.options.max_iterations
    tol = problem.tol(c0.dtype)
    keep = 1.0 - problem.options.damping
    args = (xs, c0, valid, resets)

    def values(s):
        return _rows(problem, params, _previous(s, c0), *args)[0]

    def cond(state):
        k, _, _, residual = state
        return (k < cap) & ~(residual <= tol)  # a NaN residual keeps iterating, to the cap

    def body(state):
        k, s, g, _ = state
        J = _jacobians(problem, params, _previous(s, c0), *args, full=not problem.quasi)
        if keep != 1.0:
            J = keep * J
        r = g - s
        r_prev = jnp.concatenate([jnp.zeros_like(r[:1]), r[:-1]], axis=0)
        Jr = (J @ r_prev[..., None])[..., 0] if not problem.quasi else J * r_prev
        delta = _linear(J, Jr, full=not problem.quasi)
        candidate = g + delta
        new_s = jnp.where(jnp.isfinite(candidate), candidate, g)
        new_g = values(new_s)
        return k + 1, new_s, new_g, _scaled_residual(new_g, new_s)

    s = jnp.broadcast_to(c0[None], (num_steps,) + c0.shape)  # the initial guess: no change
    g = values(s)
    init = (jnp.zeros((), jnp.int32), s, g, _scaled_residual(g, s))
    k, s, _, residual = jax.lax.while_loop(cond, body, init)
    return s, k, residual


def _solve_fwd(problem, params, c0, xs, valid, resets):
    states, k, residual = _iterate(problem, params, c0, xs, valid, resets)
    return (states, k, residual), (params, c0, xs, valid, resets, states)


def _solve_bwd(problem, saved, cotangents):
    params, c0, xs, valid, resets, states = saved
    s_bar = cotangents[0]
    J = _jacobians(problem, params, _previous(states, c0), xs, c0, valid, resets, full=True)
    # lambda_t = s_bar_t + J_{t+1}^T lambda_{t+1}: in flipped time, a forward recurrence
    # whose coefficient at flipped step u is J_{T-u}^T (the first one multiplies zero).
    J_T = jnp.swapaxes(J, -1, -2)
    A = jnp.flip(jnp.concatenate([J_T[1:], jnp.zeros_like(J_T[:1])], axis=0), 0)
    lam = jnp.flip(_linear_full(A, jnp.flip(s_bar, 0)), 0)

    def system(p, c, x):
        return _rows(problem, p, _previous(states, c), x, c, valid, resets)[0]

    _, vjp = jax.vjp(system, params, c0, xs)
    d_params, d_c0, d_xs = vjp(lam)
    return d_params, d_c0, d_xs, None, None


_solve.defvjp(_solve_fwd, _solve_bwd)
