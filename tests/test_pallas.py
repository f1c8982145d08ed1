"""The whole-sequence Pallas kernel (rnnlab.modes.pallas) in interpret mode on CPU.

Oracles: the Python loop over ``cell.step`` and the per-sequence reference scan of
conftest for values (lengths via the normalised problem's ``valid``), and the sequential
scan's gradients, which the kernel's custom_vjp must reproduce through its own wiring
(params, initial carry and inputs all get cotangents).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import LENGTHS, T, close, loop, make_case, reference_scan

import rnnlab
from rnnlab.modes import masking, pallas

KERNEL_CELLS = ("elman-tanh", "gru", "lstm", "mingru", "minlstm")
# The diagonal linear cells' gradient checks repeat the same wiring: the slow set runs them.
GRAD_CELLS = ("elman-tanh", "gru", "lstm") + tuple(
    pytest.param(c, marks=pytest.mark.slow) for c in ("mingru", "minlstm"))


@pytest.mark.parametrize("name", KERNEL_CELLS)
def test_values_equal_python_loop(name):
    case = make_case(name)
    carry, ys = jax.jit(lambda p, x, c: pallas.scan(case.cell, p, x, carry=c, interpret=True))(
        case.params, case.xs, case.carry)
    close((carry, ys), loop(case.cell, case.params, case.xs, case.carry))


@pytest.mark.parametrize("name", GRAD_CELLS)
def test_gradients_equal_sequential(name):
    case = make_case(name)

    def loss(scan):
        def f(p, x, c):
            carry, ys = scan(case.cell, p, x, carry=c)
            return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(carry))
        return jax.jit(jax.grad(f, argnums=(0, 1, 2)))

    got = loss(lambda *a, **k: pallas.scan(*a, interpret=True, **k))(
        case.params, case.xs, case.carry)
    close(got, loss(rnnlab.scan)(case.params, case.xs, case.carry))
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(got))


def test_valid_mask_equals_reference_with_lengths():
    """run() over the normalised problem with ``valid``: padded steps keep the carry and
    output zeros, as the per-sequence reference does."""
    case = make_case("gru")
    lengths = jnp.asarray(LENGTHS)
    valid = masking.valid_steps(lengths, T)
    step = rnnlab.checkpointed_step(case.cell)
    got = jax.jit(lambda p, c, x: pallas.run(step, p, c, x, valid, interpret=True))(
        case.params, case.carry, case.xs)
    close(got, reference_scan(case.cell, case.params, case.xs, case.carry, lengths))

    def loss(run):
        return jax.grad(lambda p: jnp.sum(run(step, p, case.carry, case.xs, valid)[1] ** 2))

    close(loss(lambda *a: pallas.run(*a, interpret=True))(case.params),
          loss(rnnlab.modes.sequential.run)(case.params))


def test_vmap_over_params():
    case = make_case("lstm")
    keys = jax.random.split(jax.random.key(3), 2)
    params = jax.vmap(lambda k: case.cell.init(k, case.xs.shape[-1]))(keys)
    got = jax.vmap(lambda p: pallas.scan(case.cell, p, case.xs, interpret=True)[1])(params)
    want = jax.vmap(lambda p: rnnlab.scan(case.cell, p, case.xs)[1])(params)
    close(got, want)


def test_complex_cell_and_empty_sequence_take_the_general_path():
    case = make_case("lru")
    close(pallas.scan(case.cell, case.params, case.xs, carry=case.carry, interpret=True),
          rnnlab.scan(case.cell, case.params, case.xs, carry=case.carry))
    carry, ys = pallas.scan(case.cell, case.params, case.xs[:0], interpret=True)
    assert ys.shape[0] == 0


def test_default_interpret_on_cpu():
    assert pallas.default_interpret() == (jax.default_backend() not in ("gpu", "tpu"))


def test_clear_errors():
    case = make_case("elman-tanh")
    with pytest.raises(TypeError, match="xs"):
        pallas.scan(case.cell, case.params, np.zeros((T, 3, 2), np.int32))
    with pytest.raises(ValueError, match="xs"):
        pallas.scan(case.cell, case.params, jnp.zeros((T,)))
    with pytest.raises(ValueError):
        pallas.scan(case.cell, case.params, case.xs, carry=jnp.zeros((7,)))
    with pytest.raises(TypeError, match="cell"):
        pallas.scan(object(), case.params, case.xs)
