r"""A whole-sequence Pallas kernel: one launch runs all T steps of a cell.

XLA runs ``lax.scan`` as a ``while`` loop whose every iteration is at least one
kernel launch; on a GPU that costs microseconds per step whatever the step does,
which dominates at the hidden sizes most recurrent-network research uses. This
path writes the loop *inside* one ``pallas_call``: the params and the carry are
loaded once and stay in the kernel's memory, and each step reads ``xs[t]`` and
writes ``ys[t]`` (FlashRNN, Pöppel et al. 2024, does the same in CUDA/Triton).

The kernel's body is the cell's own ``step``, so the maths is written once and every
cell whose step uses operations Pallas lowers (matmuls, ``tanh``, ``sigmoid``,
elementwise products: the Elman, GRU and LSTM cells, and the diagonal linear cells)
runs unchanged; a cell with complex params or carry (the LRU) goes to the sequential
path, as Pallas kernels hold no complex numbers. On a CPU it runs in Pallas' interpret
mode, which evaluates the same kernel with ordinary JAX operations: that is how it is
tested without a GPU.

The derivative is a ``jax.custom_vjp``: the forward pass is the kernel, the backward
pass is the autodiff of the sequential path (:mod:`rnnlab.modes.sequential`)
recomputed from the saved inputs, so gradients are exactly those of ``mode="sequential"``
to rounding. A dedicated backward kernel would save that recomputation; none is written.

References:
  Pöppel, Beck & Hochreiter, "FlashRNN: Optimizing traditional RNNs on modern
  hardware", arXiv:2412.07752, 2024.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rnnlab.cell import Array, Carry, Params, checkpointed_step, prepare_params
from rnnlab.modes import sequential
from rnnlab.modes.masking import keep_valid, zero_invalid
from rnnlab.validation import check_carry, check_cell, check_float_input


def default_interpret() -> bool:
    """Interpret mode everywhere but on GPUs and TPUs, where Pallas compiles kernels."""
    return jax.default_backend() not in ("gpu", "tpu")


def _has_complex(*trees) -> bool:
    return any(jnp.iscomplexobj(leaf) for leaf in jax.tree.leaves(trees))


def _kernel_forward(step, params, carry, xs, mask, interpret: bool):
    """``(final_carry, ys)`` from one ``pallas_call`` looping over the T steps of ``xs``."""
    from jax.experimental import pallas as pl

    p_leaves, p_def = jax.tree.flatten(params)
    c_leaves, c_def = jax.tree.flatten(carry)
    y_struct = jax.eval_shape(lambda p, c, x: step(p, c, x)[1], params, carry, xs[0])
    y_leaves_struct, y_def = jax.tree.flatten(y_struct)
    num_steps = xs.shape[0]
    n_p, n_c, n_y = len(p_leaves), len(c_leaves), len(y_leaves_struct)
    has_mask = mask is not None

    def kernel(*refs):
        p_refs, refs = refs[:n_p], refs[n_p:]
        c_refs, refs = refs[:n_c], refs[n_c:]
        xs_ref, refs = refs[0], refs[1:]
        if has_mask:
            mask_ref, refs = refs[0], refs[1:]
        out_c_refs, ys_refs = refs[:n_c], refs[n_c:]
        # The params are read once and stay in the kernel's memory for all T steps.
        p = jax.tree.unflatten(p_def, [r[...] for r in p_refs])
        c0 = jax.tree.unflatten(c_def, [r[...] for r in c_refs])

        def body(t, c):
            new_c, y = step(p, c, xs_ref[t])
            if has_mask:
                v = mask_ref[t] > 0
                new_c, y = keep_valid(v, new_c, c), zero_invalid(v, y)
            for ref, leaf in zip(ys_refs, jax.tree.leaves(y), strict=True):
                ref[t] = leaf.astype(ref.dtype)
            return new_c

        final = jax.lax.fori_loop(0, num_steps, body, c0)
        for ref, leaf in zip(out_c_refs, jax.tree.leaves(final), strict=True):
            ref[...] = leaf.astype(ref.dtype)

    out_shape = [jax.ShapeDtypeStruct(c.shape, c.dtype) for c in c_leaves] + [
        jax.ShapeDtypeStruct((num_steps, *y.shape), y.dtype) for y in y_leaves_struct]
    inputs = [*p_leaves, *c_leaves, xs] + ([mask] if has_mask else [])
    outs = pl.pallas_call(kernel, out_shape=out_shape, interpret=interpret)(*inputs)
    assert len(outs) == n_c + n_y
    return jax.tree.unflatten(c_def, outs[:n_c]), jax.tree.unflatten(y_def, outs[n_c:])


def run(
    step: Callable[[Params, Carry, Array], tuple[Carry, Any]],
    params: Params,
    carry: Carry,
    xs: Array,
    valid: Array | None,
    *,
    interpret: bool | None = None,
) -> tuple[Carry, Any]:
    """The normalised problem (see :mod:`rnnlab.modes`) as one Pallas kernel.

    Args:
      step: the step to run in the kernel (and to differentiate, through the
        sequential path): ``cell.step`` or :func:`rnnlab.checkpointed_step` of it.
      params, carry, xs, valid: the normalised problem; ``valid [T, *batch]`` or None.
      interpret: run the kernel in Pallas' interpret mode; default
        :func:`default_interpret` (True but on GPUs and TPUs).
    """
    interpret = default_interpret() if interpret is None else bool(interpret)
    if xs.shape[0] == 0 or _has_complex(params, carry):
        # Nothing to launch, or complex numbers, which Pallas kernels do not hold
        # (the LRU's carry): the general path.
        return sequential.run(step, params, carry, xs, valid)
    # A float mask: custom_vjp wants a cotangent for every input, and a bool has none.
    mask = None if valid is None else valid.astype(xs.dtype)

    @jax.custom_vjp
    def f(params, carry, xs, mask):
        return _kernel_forward(step, params, carry, xs, mask, interpret)

    def reference(params, carry, xs, mask):
        return sequential.run(step, params, carry, xs, None if mask is None else mask > 0)

    def fwd(params, carry, xs, mask):
        return f(params, carry, xs, mask), (params, carry, xs, mask)

    def bwd(saved, cotangents):
        params, carry, xs, mask = saved
        _, vjp = jax.vjp(lambda p, c, x: reference(p, c, x, mask), params, carry, xs)
        grads = vjp(cotangents)
        return (*grads, None if mask is None else jnp.zeros_like(mask))

    f.defvjp(fwd, bwd)
    return f(params, carry, xs, mask)


def scan(
    cell: Any,
    params: Params,
    xs: Array,
    *,
    carry: Carry | None = None,
    interpret: bool | None = None,
) -> tuple[Carry, Any]:
    r"""``rnnlab.scan(cell, params, xs, carry=carry)`` evaluated as one Pallas kernel.

    .. math:: (c_t, y_t) = \mathrm{step}(\theta, c_{t-1}, x_t), \quad t = 0 \dots T-1

    Args:
      cell: any object with ``init``, ``initial_carry`` and ``step`` whose step Pallas
        can lower on the backend (in interpret mode: any step).
      params: the cell's parameters, from ``cell.init`` (``prepare`` is applied here).
      xs: inputs ``[T, *batch, F]``, time first; real floating dtype.
      carry: the initial carry; ``cell.initial_carry(params, batch_shape)`` if None.
      interpret: Pallas' interpret mode; default True but on GPUs and TPUs.

    Returns:
      ``(final_carry, ys)`` with ``ys [T, *batch, ...]``, equal to the sequential scan's
      to rounding; gradients are those of the sequential scan.

    Raises:
      TypeError: ``cell`` lacks the protocol or ``xs`` is not real floating.
      ValueError: ``xs`` has no feature axis or ``carry`` has the wrong shapes.
    """
    check_cell(cell)
    xs = jnp.asarray(xs)
    check_float_input(xs, "xs")
    if xs.ndim < 2:
        raise ValueError(f"xs must be [T, *batch, F] (at least 2 axes); received shape "
                         f"{xs.shape}.")
    batch_shape = xs.shape[1:-1]
    if carry is None:
        carry = cell.initial_carry(params, batch_shape)
    else:
        check_carry(cell, params, carry, batch_shape)
    return run(checkpointed_step(cell), prepare_params(cell, params), carry, xs, None,
               interpret=interpret)
