"""rnnlab.scan's sequence semantics, each checked against per-sequence references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnlab

T, B, F, H = 6, 3, 2, 4
LENGTHS = np.array([6, 2, 0])  # full, partial, empty


def close(a, b, tol=1e-5):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=tol, atol=tol), a, b)


@pytest.fixture(scope="module")
def lstm_case():
    cell = rnnlab.lstm(H)
    k_p, k_x = jax.random.split(jax.random.key(0))
    return cell, cell.init(k_p, F), jax.random.normal(k_x, (T, B, F))


def _one(tree, b):
    return jax.tree.map(lambda x: x[b], tree)


def test_lengths_mask_outputs_and_final_carry(lstm_case):
    cell, params, xs = lstm_case
    carry, ys = rnnlab.scan(cell, params, xs, lengths=jnp.asarray(LENGTHS))
    for b, n in enumerate(LENGTHS):
        want_carry, want_ys = rnnlab.scan(cell, params, xs[:n, b]) if n else (
            cell.initial_carry(params), jnp.zeros((0, H)))
        close(ys[:n, b], want_ys)
        np.testing.assert_array_equal(ys[n:, b], 0.0)
        close(_one(carry, b), want_carry)


def test_reverse_without_lengths_is_flip_scan_flip(lstm_case):
    cell, params, xs = lstm_case
    carry, ys = rnnlab.scan(cell, params, xs, reverse=True)
    want_carry, want_ys = rnnlab.scan(cell, params, xs[::-1])
    close(ys, want_ys[::-1])
    close(carry, want_carry)


def test_reverse_with_lengths_reads_each_sequence_from_its_end(lstm_case):
    cell, params, xs = lstm_case
    carry, ys = rnnlab.scan(cell, params, xs, lengths=jnp.asarray(LENGTHS), reverse=True)
    for b, n in enumerate(LENGTHS):
        if n == 0:
            np.testing.assert_array_equal(ys[:, b], 0.0)
            close(_one(carry, b), cell.initial_carry(params))
            continue
        want_carry, want_ys = rnnlab.scan(cell, params, xs[:n, b][::-1])
        close(ys[:n, b], want_ys[::-1])  # ys[t] is the output on reading xs[t]
        np.testing.assert_array_equal(ys[n:, b], 0.0)  # padding stays padding
        close(_one(carry, b), want_carry)


def test_time_axis_batch_major(lstm_case):
    cell, params, xs = lstm_case
    xs_bm = jnp.swapaxes(xs, 0, 1)  # [B, T, F]
    lengths = jnp.asarray(LENGTHS)
    for reverse in (False, True):
        carry_tm, ys_tm = rnnlab.scan(cell, params, xs, lengths=lengths, reverse=reverse)
        carry_bm, ys_bm = rnnlab.scan(cell, params, xs_bm, lengths=lengths, reverse=reverse,
                                      time_axis=1)
        assert ys_bm.shape == (B, T, H)
        close(ys_bm, jnp.swapaxes(ys_tm, 0, 1))
        close(carry_bm, carry_tm)
    # Negative axes count from the end, as in numpy.
    close(rnnlab.scan(cell, params, xs_bm, time_axis=-2), rnnlab.scan(cell, params, xs_bm,
                                                                      time_axis=1))


def test_explicit_carry_and_unroll(lstm_case):
    cell, params, xs = lstm_case
    carry0 = jax.tree.map(lambda z: z + 0.3, cell.initial_carry(params, (B,)))
    c1, ys1 = rnnlab.scan(cell, params, xs, carry=carry0)
    c2, ys2 = rnnlab.scan(cell, params, xs, carry=carry0, unroll=3)
    close((c1, ys1), (c2, ys2))
    # Starting from the carry half-way gives the second half of the outputs.
    c_half, _ = rnnlab.scan(cell, params, xs[:3], carry=carry0)
    close(rnnlab.scan(cell, params, xs[3:], carry=c_half)[1], ys1[3:])


def test_bidirectional(lstm_case):
    cell, params, xs = lstm_case
    bw = rnnlab.gru(5)
    p_bw = bw.init(jax.random.key(3), F)
    lengths = jnp.asarray(LENGTHS)
    (c_fw, c_bw), ys = rnnlab.bidirectional(cell, bw, (params, p_bw), xs, lengths=lengths)
    want_fw = rnnlab.scan(cell, params, xs, lengths=lengths)
    want_bw = rnnlab.scan(bw, p_bw, xs, lengths=lengths, reverse=True)
    close(ys, jnp.concatenate([want_fw[1], want_bw[1]], axis=-1))
    close((c_fw, c_bw), (want_fw[0], want_bw[0]))
    # Merge modes, with two cells of the same width.
    p2 = cell.init(jax.random.key(4), F)
    _, (y_f, y_b) = rnnlab.bidirectional(cell, cell, (params, p2), xs, merge=None)
    for merge, want in [("sum", y_f + y_b), ("mul", y_f * y_b), ("ave", (y_f + y_b) / 2)]:
        close(rnnlab.bidirectional(cell, cell, (params, p2), xs, merge=merge)[1], want)
    with pytest.raises(ValueError, match="merge"):
        rnnlab.bidirectional(cell, cell, (params, p2), xs, merge="max")
    with pytest.raises(ValueError, match="params must be a pair"):
        rnnlab.bidirectional(cell, cell, params, xs)


def test_vmap_over_params_is_many_seeds(lstm_case):
    cell, _, xs = lstm_case
    keys = jax.random.split(jax.random.key(7), 4)
    many = jax.vmap(cell.init, in_axes=(0, None))(keys, F)
    ys = jax.jit(jax.vmap(lambda p: rnnlab.scan(cell, p, xs)[1]))(many)
    for s, k in enumerate(keys):
        close(ys[s], rnnlab.scan(cell, cell.init(k, F), xs)[1])


def test_grad_through_checkpoint_and_vmap_lengths(lstm_case):
    cell, params, xs = lstm_case
    lengths = jnp.asarray(LENGTHS)

    def loss(p, xs):
        return jnp.sum(rnnlab.scan(cell, p, xs, lengths=lengths)[1] ** 2)

    g = jax.grad(loss)(params, xs)
    g_remat = jax.jit(jax.grad(jax.checkpoint(loss)))(params, xs)
    close(g, g_remat)
    # vmap over sequences (batch_shape () inside) == the batched call.
    ys_v = jax.vmap(lambda x, n: rnnlab.scan(cell, params, x, lengths=n)[1],
                    in_axes=(1, 0), out_axes=1)(xs, lengths)
    close(ys_v, rnnlab.scan(cell, params, xs, lengths=lengths)[1])
    # Traced lengths under jit: same answer as concrete ones.
    jitted = jax.jit(functools.partial(rnnlab.scan, cell, reverse=True))
    close(jitted(params, xs, lengths=lengths),
          rnnlab.scan(cell, params, xs, lengths=lengths, reverse=True))


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_with_names(lstm_case):
    cell, params, xs = lstm_case
    with pytest.raises(TypeError, match="xs must have a real floating dtype.*int32"):
        rnnlab.scan(cell, params, jnp.ones((T, B, F), jnp.int32))
    with pytest.raises(TypeError, match="xs must have a real floating dtype.*complex64"):
        rnnlab.scan(cell, params, jnp.ones((T, B, F), jnp.complex64))
    with pytest.raises(ValueError, match=r"xs must have a time axis.*\(2,\)"):
        rnnlab.scan(cell, params, jnp.ones((F,)))
    with pytest.raises(ValueError, match="3 input features|2 input features"):
        rnnlab.scan(cell, params, jnp.ones((T, B, F + 1)))
    bad_carry = cell.initial_carry(params, (B + 1,))
    with pytest.raises(ValueError, match=r"carry must match.*\(3,\).*\(4, 4\)"):
        rnnlab.scan(cell, params, xs, carry=bad_carry)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T\] = \[0, 6\].*7"):
        rnnlab.scan(cell, params, xs, lengths=jnp.array([7, 1, 1]))
    with pytest.raises(ValueError, match=r"lengths must lie in.*-1"):
        rnnlab.scan(cell, params, xs, lengths=jnp.array([-1, 1, 1]))
    with pytest.raises(ValueError, match=r"lengths must have the inputs' batch shape \(3,\)"):
        rnnlab.scan(cell, params, xs, lengths=jnp.array([1, 1]))
    with pytest.raises(TypeError, match="lengths must have an integer dtype"):
        rnnlab.scan(cell, params, xs, lengths=jnp.array([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="time_axis"):
        rnnlab.scan(cell, params, xs, time_axis=2)
    with pytest.raises(TypeError, match="Cell protocol"):
        rnnlab.scan(lambda x: x, params, xs)


def test_float64_inputs_with_float32_params_is_a_clear_error(lstm_case, x64):
    del x64
    cell, params, xs = lstm_case
    with pytest.raises(TypeError, match=r"xs \(dtype float64\).*float32.*Cast xs"):
        rnnlab.scan(cell, params, xs.astype(jnp.float64))
    params64 = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    _, ys = rnnlab.scan(cell, params64, xs.astype(jnp.float64))
    assert ys.dtype == jnp.float64


# ----------------------------------------------------------------------------- checkpoint policy
# The LSTM, GRU and minGRU carry a checkpoint_policy (rnnlab.checkpointed_step):
# the backward pass of rnnlab.scan keeps only their matmul results (minGRU: only the step's
# inputs) per step and recomputes the rest.

TP, BP, HP = 11, 3, 5  # T differs from every weight's leading size, so [T, ...] leaves are per-step


def _without_policy(cell):
    """The same cell without its checkpoint_policy: plain autodiff of the step."""
    return cell._replace(checkpoint_policy=None)


def _per_step_floats(cell, params, xs, **kwargs):
    """Floats per step and sequence that the backward pass of a scan keeps (the [T, ...]
    arrays that jax.vjp's closure holds)."""
    _, vjp = jax.vjp(lambda p: jnp.sum(rnnlab.scan(cell, p, xs, **kwargs)[1] ** 2), params)
    return sum(a.size for a in jax.tree.leaves(vjp) if a.shape[:1] == (TP,)) // (TP * BP)


# What the derivative needs per step, from the equations: the input x [F], the matmul
# results (LSTM: z [4H]; GRU: the r and z pre-activations [2H] and the n block's two
# [H]; minGRU recomputes its one matmul), the carry before the step (LSTM: h and c;
# GRU, minGRU: h), and the output the loss reads.
KEPT = {
    "lstm": lambda F, H: F + 4 * H + 2 * H + H,
    "gru": lambda F, H: F + 2 * H + 2 * H + H + H,
    "mingru": lambda F, H: F + H + H,  # nothing_saveable: the inputs x and h only
}


@pytest.mark.parametrize("F_", [1, 2])  # the GRU's step has one branch per case
@pytest.mark.parametrize("name", sorted(KEPT))
def test_backward_keeps_only_the_matmul_results(name, F_):
    cell = rnnlab.registry.get(name, HP)
    params = cell.init(jax.random.key(0), F_)
    xs = jax.random.normal(jax.random.key(1), (TP, BP, F_))
    assert _per_step_floats(cell, params, xs) == KEPT[name](F_, HP)
    # Without the policy JAX keeps each gate's value and the factors of its
    # derivative: more than the bound, so the check above can fail.
    assert _per_step_floats(_without_policy(cell), params, xs) > KEPT[name](F_, HP)
    # A stack keeps what its layers keep (each layer's step carries its policy).
    stacked = rnnlab.stack([cell, cell])
    two = stacked.init(jax.random.key(2), F_)
    assert _per_step_floats(stacked, two, xs) == KEPT[name](F_, HP) + KEPT[name](HP, HP) - HP


@pytest.mark.parametrize("name", ["lstm", "gru", "gru-reset-before", "mingru"])
def test_checkpoint_policy_keeps_values_and_derivatives(name):
    """Values, reverse-mode and forward-mode derivatives with the policy equal plain
    autodiff of the same step, with lengths and reverse, and under remat."""
    cell = rnnlab.gru(HP, reset_after=False) if name == "gru-reset-before" else (
        rnnlab.registry.get(name, HP))
    plain = _without_policy(cell)
    params = cell.init(jax.random.key(0), F)
    xs = jax.random.normal(jax.random.key(1), (TP, BP, F))
    tangents = (jax.tree.map(jnp.ones_like, params), jnp.ones_like(xs))
    for kwargs in ({}, {"lengths": jnp.asarray([TP, 4, 0]), "reverse": True}, {"remat": 3}):
        def loss(c, p, x, kwargs=kwargs):
            return jnp.sum(jnp.sin(rnnlab.scan(c, p, x, **kwargs)[1]))

        close(jax.value_and_grad(functools.partial(loss, cell), argnums=(0, 1))(params, xs),
              jax.value_and_grad(functools.partial(loss, plain), argnums=(0, 1))(params, xs))
        close(jax.jvp(functools.partial(loss, cell), (params, xs), tangents),
              jax.jvp(functools.partial(loss, plain), (params, xs), tangents))


def test_checkpointed_step_reads_the_policy_from_the_cell():
    elman = rnnlab.elman(HP)
    assert rnnlab.checkpointed_step(elman) is elman.step  # no policy: the step itself
    asked = []

    def policy(prim, *_, **__):  # records that the backward pass consulted it
        asked.append(prim)
        return False

    cell = elman._replace(checkpoint_policy=policy)
    params = cell.init(jax.random.key(0), F)
    xs = jax.random.normal(jax.random.key(1), (TP, BP, F))
    rnnlab.scan(cell, params, xs)
    assert not asked  # the forward pass alone does not linearise
    jax.grad(lambda p: jnp.sum(rnnlab.scan(cell, p, xs)[1]))(params)
    assert asked
    with pytest.raises(TypeError, match="checkpoint_policy must be a jax.checkpoint policy"):
        rnnlab.scan(elman._replace(checkpoint_policy="dots"), params, xs)


def test_a_policy_hung_on_the_step_still_works_with_a_warning():
    """The former protocol put the policy on the step function; a user cell written that
    way keeps its policy and is told about the field."""
    elman = rnnlab.elman(HP)
    asked = []

    def step(p, c, x):
        return elman.step(p, c, x)

    step.checkpoint_policy = lambda prim, *_, **__: asked.append(prim) or False
    cell = rnnlab.Cell(elman.init, elman.initial_carry, step)
    params = cell.init(jax.random.key(0), F)
    xs = jax.random.normal(jax.random.key(1), (TP, BP, F))
    with pytest.warns(DeprecationWarning, match="pass checkpoint_policy= to rnnlab.Cell"):
        jax.grad(lambda p: jnp.sum(rnnlab.scan(cell, p, xs)[1]))(params)
    assert asked
