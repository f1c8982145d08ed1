"""How :func:`rnnlab.scan` evaluates a recurrence: one module per path.

Every path takes the same normalised problem from :func:`rnnlab.scan`: params
already prepared, inputs ``xs [T, *batch, F]`` time-major and in reading order
(a reversed scan arrives flipped), an initial carry, ``valid [T, *batch]``
(None when every step is valid) and optionally ``resets``. At an invalid step the carry
passes through unchanged and the outputs are zero (:mod:`rnnlab.modes.masking`). Each returns
``(final_carry, ys)`` with ``ys [T, *batch, ...]`` in the same order.

- :mod:`~rnnlab.modes.sequential`: one ``jax.lax.scan`` over ``cell.step``, for any cell.
- :mod:`~rnnlab.modes.parallel`: ``jax.lax.associative_scan`` over a :class:`rnnlab.LinearForm`.
- :mod:`~rnnlab.modes.fused`: a ``lax.scan`` over an :class:`rnnlab.AffineForm` with a
  whole-sequence derivative.
- :mod:`~rnnlab.modes.newton`: any cell's T steps solved as one system by (quasi-)Newton
  iterations, each a ``jax.lax.associative_scan``; returns a
  :class:`~rnnlab.modes.newton.NewtonInfo` too.

With ``resets [T, *batch]`` (already False at invalid steps), a step where it is
true starts from the initial carry instead of the previous one
(:func:`rnnlab.modes.masking.restart`).
"""
