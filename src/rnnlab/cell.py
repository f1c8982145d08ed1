r"""The cell protocol: a recurrent cell is three pure functions, plus optional declared forms.

Like optax's ``GradientTransformation(init, update)``, a :class:`Cell` is a
NamedTuple of pure functions returned by a factory that closes over the cell's
hyper-parameters, so that ``jax.grad``/``jax.vmap`` only ever see arrays::

    cell = rnnlab.lstm(hidden_size=64)
    params = cell.init(key, input_size=8)                  # pytree of arrays
    carry = cell.initial_carry(params, batch_shape=(32,))  # pytree of arrays
    carry, y = cell.step(params, carry, x_t)               # x_t [32, 8] -> y [32, 64]

Any object with these three attributes works everywhere in rnnlab. Everything
else a cell may offer is an optional field of :class:`Cell`, declared here and
nowhere else; the runners (:func:`rnnlab.scan`, the diagnostics, the wrappers)
read them through the functions of this module:

* ``prepare``: loop-invariant work on the params, done once per scan
  (:func:`prepare_params`);
* ``checkpoint_policy``: what the backward pass keeps of each step
  (:func:`checkpointed_step`);
* ``linear``: a :class:`LinearForm`, the carry as a diagonal linear recurrence,
  for ``rnnlab.scan(..., mode="parallel")`` (:func:`linear_form`);
* ``affine``: an :class:`AffineForm`, the step as affine pre-activations and a
  pointwise update, for ``rnnlab.scan(..., derivative="fused")``
  (:func:`affine_form`).

Cells import this module; they never import the runners.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # a pytree of arrays
Carry = Any  # a pytree of arrays


class LinearForm(NamedTuple):
    r"""The carry follows a diagonal linear recurrence, so all T states can be computed at once.

    .. math::
        h_t = a_t \odot h_{t-1} + b_t, \qquad (a_t, b_t) = \mathrm{coefficients}(\theta, x_t),
        \qquad y_t = \mathrm{readout}(\theta, h_t, x_t)

    The carry is a single array ``h [*batch, N]`` (real or complex).

    Attributes:
      coefficients: ``coefficients(params, xs) -> (a, b)``, elementwise over
        the leading axes: ``xs [*lead, F]`` gives ``b [*lead, N]`` and ``a`` of
        a shape broadcastable to ``b``'s (e.g. ``[N]`` for a time-invariant
        :math:`\lambda`). Called once with ``xs [T, *batch, F]``, so ``a_t, b_t``
        may depend on ``x_t`` but never on the carry.
      readout: ``readout(params, hs, xs) -> ys``, elementwise over the leading
        axes: the outputs from the states after each step ``hs [*lead, N]``
        and the inputs ``xs [*lead, F]``.
    """

    coefficients: Callable[[Params, Array], tuple[Array, Array]]
    readout: Callable[[Params, Array, Array], Any]


class AffineForm(NamedTuple):
    r"""The step as pre-activations affine in the input and the hidden state, then a pointwise map.

    .. math::
        g_t = \mathrm{preactivation}(\theta, x_t, h_{t-1})
            = x_t A(\theta) + h_{t-1} R(\theta) + b(\theta),
        \qquad (c_t, y_t) = \mathrm{pointwise}(g_t, c_{t-1}), \qquad h_t = \mathrm{hidden}(c_t)

    The LSTM, the GRU (``reset_after=True``) and the Elman RNN have this form.
    Because ``A`` and ``R`` do not depend on the step, a runner can treat the
    matmuls of all steps at once: ``derivative="fused"`` computes the weight and
    input gradients as single matmuls over every step (:mod:`rnnlab.modes.fused`).

    Attributes:
      preactivation: ``preactivation(params, x [..., F], h [..., H]) -> g``, a
        pytree of ``[..., G_k]`` arrays, elementwise over the leading axes and
        affine in ``x`` and in ``h`` (each with a coefficient that depends on
        the params only). Compute it however is fastest (one matmul over
        ``[x, h]``, say).
      pointwise: ``pointwise(g, carry) -> (carry, y)``: no params, no matmul.
      hidden: ``hidden(carry) -> h``: the carry leaf the pre-activation reads.
    """

    preactivation: Callable[[Params, Array, Array], Any]
    pointwise: Callable[[Any, Carry], tuple[Carry, Any]]
    hidden: Callable[[Carry], Array]


class Cell(NamedTuple):
    """A recurrent cell: three pure functions, and the optional forms a runner may use.

    Attributes:
      init: ``init(key, input_size) -> params``: a pytree of arrays, nothing else.
      initial_carry: ``initial_carry(params, batch_shape=()) -> carry``: the state
        before the first step, for inputs of shape ``[*batch_shape, input_size]``.
      step: ``step(params, carry, x) -> (carry, y)``: one time step. ``x`` is
        ``[*batch_shape, input_size]``; the signature is that of a
        ``jax.lax.scan`` body once ``params`` is bound.
      prepare: optional ``prepare(params) -> params'``: work that depends on the
        params only (a matrix exponential, re-arranged weight blocks), which
        :func:`rnnlab.scan` does once per call instead of once per step. Every
        function of the cell accepts both ``params`` and ``prepare(params)``
        and gives the same results.
      checkpoint_policy: optional ``jax.checkpoint`` policy (e.g.
        ``jax.checkpoint_policies.save_only_these_names(...)``): what the
        backward pass keeps of each step; it recomputes the rest
        (:func:`checkpointed_step`). Values and derivatives are unchanged.
      linear: optional :class:`LinearForm`; ``step`` must equal it.
      affine: optional :class:`AffineForm`; ``step`` must equal it.

    :func:`linear_cell` and :func:`affine_cell` build a cell from its form,
    deriving ``step`` from it, so that the two cannot disagree.
    """

    init: Callable[[PRNGKey, int], Params]
    initial_carry: Callable[..., Carry]
    step: Callable[[Params, Carry, Array], tuple[Carry, Any]]
    prepare: Callable[[Params], Params] | None = None
    checkpoint_policy: Callable[..., Any] | None = None
    linear: LinearForm | None = None
    affine: AffineForm | None = None

    # The fields of the former LinearCell, kept so that code written against it runs.
    @property
    def coefficients(self) -> Callable[[Params, Array], tuple[Array, Array]] | None:
        """``linear.coefficients``, or None for a cell without a :class:`LinearForm`."""
        return None if self.linear is None else self.linear.coefficients

    @property
    def readout(self) -> Callable[[Params, Array, Array], Any] | None:
        """``linear.readout``, or None for a cell without a :class:`LinearForm`."""
        return None if self.linear is None else self.linear.readout


# ----------------------------------------------------------------------------- building cells


def linear_cell(
    init: Callable[[PRNGKey, int], Params],
    initial_carry: Callable[..., Array],
    coefficients: Callable[[Params, Array], tuple[Array, Array]],
    readout: Callable[[Params, Array, Array], Any],
    *,
    prepare: Callable[[Params], Params] | None = None,
    checkpoint_policy: Callable[..., Any] | None = None,
) -> Cell:
    """A :class:`Cell` with a :class:`LinearForm`, its ``step`` derived from the form.

    Returns:
      ``Cell(init, initial_carry, step, ..., linear=LinearForm(coefficients, readout))``
      with ``step(params, h, x) = (h', readout(params, h', x))``,
      ``h' = a * h + b``, ``(a, b) = coefficients(params, x)``.
    """

    def step(params: Params, h: Array, x: Array) -> tuple[Array, Any]:
        a, b = coefficients(params, x)
        h = jnp.broadcast_to(a, b.shape) * h + b
        return h, readout(params, h, x)

    return Cell(
        init, initial_carry, step, prepare=prepare, checkpoint_policy=checkpoint_policy,
        linear=LinearForm(coefficients, readout),
    )


def affine_cell(
    init: Callable[[PRNGKey, int], Params],
    initial_carry: Callable[..., Carry],
    preactivation: Callable[[Params, Array, Array], Any],
    pointwise: Callable[[Any, Carry], tuple[Carry, Any]],
    hidden: Callable[[Carry], Array],
    *,
    prepare: Callable[[Params], Params] | None = None,
    checkpoint_policy: Callable[..., Any] | None = None,
) -> Cell:
    """A :class:`Cell` with an :class:`AffineForm`, its ``step`` derived from the form.

    Returns:
      ``Cell(init, initial_carry, step, ..., affine=AffineForm(...))`` with
      ``step(params, c, x) = pointwise(preactivation(params, x, hidden(c)), c)``.
    """

    def step(params: Params, carry: Carry, x: Array) -> tuple[Carry, Any]:
        return pointwise(preactivation(params, x, hidden(carry)), carry)

    return Cell(
        init, initial_carry, step, prepare=prepare, checkpoint_policy=checkpoint_policy,
        affine=AffineForm(preactivation, pointwise, hidden),
    )


def PreparedCell(
    init: Callable[[PRNGKey, int], Params],
    initial_carry: Callable[..., Carry],
    step: Callable[[Params, Carry, Array], tuple[Carry, Any]],
    prepare: Callable[[Params], Params],
) -> Cell:
    """``Cell(init, initial_carry, step, prepare=prepare)``: the former name of a cell
    with ``prepare``."""
    return Cell(init, initial_carry, step, prepare=prepare)


def LinearCell(
    init: Callable[[PRNGKey, int], Params],
    initial_carry: Callable[..., Array],
    step: Callable[[Params, Array, Array], tuple[Array, Any]],
    coefficients: Callable[[Params, Array], tuple[Array, Array]],
    readout: Callable[[Params, Array, Array], Any],
) -> Cell:
    """``Cell(init, initial_carry, step, linear=LinearForm(coefficients, readout))``; the former
    name of a cell with a linear form (prefer :func:`linear_cell`, which derives ``step``)."""
    return Cell(init, initial_carry, step, linear=LinearForm(coefficients, readout))


# ----------------------------------------------------------------------------- reading cells


def prepare_params(cell: Any, params: Params) -> Params:
    """``cell.prepare(params)`` if the cell has ``prepare``, else ``params`` unchanged."""
    prepare = getattr(cell, "prepare", None)
    if prepare is None:
        return params
    if not callable(prepare):
        raise TypeError(f"cell.prepare must be callable or None; received {prepare!r}.")
    return prepare(params)


def checkpointed_step(cell: Any) -> Callable[[Params, Carry, Array], tuple[Carry, Any]]:
    """``cell.step`` under ``jax.checkpoint`` with ``cell.checkpoint_policy``, if it has one.

    What :func:`rnnlab.scan` runs at every step; use it as the body of your
    own ``jax.lax.scan`` over a cell to get the same backward pass. The policy
    decides which of the step's intermediates the backward pass reads back
    from memory; it recomputes the rest from those. Values and derivatives are
    those of ``cell.step`` itself.

    ``prevent_cse=False``: inside ``lax.scan`` the recomputation cannot be
    merged with the forward pass anyway (JAX's advice for ``jax.checkpoint``
    in a scan), and ``True`` was slower. Outside a scan, e.g. in a Python loop
    over steps, XLA may merge them and store the intermediates after all.
    """
    policy = getattr(cell, "checkpoint_policy", None)
    if policy is None:
        policy = getattr(cell.step, "checkpoint_policy", None)
        if policy is not None:
            warnings.warn(
                "a checkpoint_policy attribute on the step function is deprecated; pass "
                "checkpoint_policy= to rnnlab.Cell instead.", DeprecationWarning, stacklevel=2,
            )
    if policy is None:
        return cell.step
    if not callable(policy):
        raise TypeError(
            "cell.checkpoint_policy must be a jax.checkpoint policy (a callable such as "
            f"jax.checkpoint_policies.dots_saveable) or None; received {policy!r}."
        )
    return jax.checkpoint(cell.step, policy=policy, prevent_cse=False)


def linear_form(cell: Any) -> LinearForm | None:
    """The cell's :class:`LinearForm`, or None.

    An object written for the former duck-typed protocol (callable
    ``coefficients`` and ``readout`` attributes) has one too.
    """
    form = getattr(cell, "linear", None)
    if form is None:
        coefficients = getattr(cell, "coefficients", None)
        readout = getattr(cell, "readout", None)
        if callable(coefficients) and callable(readout):
            form = LinearForm(coefficients, readout)
    if form is not None and not (callable(form.coefficients) and callable(form.readout)):
        raise TypeError(f"cell.linear must be a LinearForm of two callables; received {form!r}.")
    return form


def affine_form(cell: Any) -> AffineForm | None:
    """The cell's :class:`AffineForm`, or None."""
    form = getattr(cell, "affine", None)
    if form is not None and not all(callable(f) for f in form):
        raise TypeError(f"cell.affine must be an AffineForm of three callables; received {form!r}.")
    return form


def has_parallel_form(cell: Any) -> bool:
    """Whether the cell has a :class:`LinearForm`, so that ``mode="parallel"`` applies."""
    return linear_form(cell) is not None
