"""rnnlab.scan's sequence semantics, each checked against per-sequence Python loops."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import LENGTHS, B, F, H, T, close, equal, loop, make_case, reference_scan

import rnnlab


@pytest.fixture(scope="module")
def lstm_case():
    return make_case("lstm")


@pytest.fixture(scope="module")
def lstm_runs(lstm_case):
    """The LSTM's scans with each option, compiled as one program."""
    cell = lstm_case.cell

    @jax.jit
    def run(params, xs, carry, lengths):
        scan = functools.partial(rnnlab.scan, cell, params)
        xs_bm = jnp.swapaxes(xs, 0, 1)  # [B, T, F]
        first_carry, _ = scan(xs[:3], carry=carry)
        return {
            "lengths": scan(xs, lengths=lengths),
            "reverse": scan(xs, reverse=True),
            "lengths-reverse": scan(xs, lengths=lengths, reverse=True),
            "batch-major": scan(xs_bm, lengths=lengths, time_axis=1),
            "batch-major-reverse": scan(xs_bm, lengths=lengths, reverse=True, time_axis=1),
            "negative-axis": scan(xs_bm, time_axis=-2),
            "carry": scan(xs, carry=carry),
            "carry-unroll": scan(xs, carry=carry, unroll=3),
            "second-half": scan(xs[3:], carry=first_carry),
        }

    return run(lstm_case.params, lstm_case.xs, lstm_case.carry, jnp.asarray(LENGTHS))


def test_lengths_mask_outputs_and_final_carry(lstm_case, lstm_runs):
    cell, params = lstm_case.cell, lstm_case.params
    carry, ys = lstm_runs["lengths"]
    want_carry, want_ys = reference_scan(cell, params, lstm_case.xs, lengths=LENGTHS)
    close(ys, want_ys)
    close(carry, want_carry)
    for b, n in enumerate(LENGTHS):  # padding is exactly zero, not merely small
        np.testing.assert_array_equal(ys[n:, b], 0.0)
    # The empty sequence keeps its initial carry.
    equal(jax.tree.map(lambda c: c[LENGTHS.index(0)], carry), cell.initial_carry(params))


@pytest.mark.parametrize("option", ["reverse", "lengths-reverse"])
def test_reverse_reads_each_sequence_from_its_end(lstm_case, lstm_runs, option):
    """ys[t] stays the output on reading xs[t]; with lengths, each sequence starts from
    its own last valid step and the padding stays padding."""
    cell, params, xs = lstm_case.cell, lstm_case.params, lstm_case.xs
    lengths = LENGTHS if "lengths" in option else None
    carry, ys = lstm_runs[option]
    want_carry, want_ys = reference_scan(cell, params, xs, lengths=lengths, reverse=True)
    close(ys, want_ys)
    close(carry, want_carry)
    if lengths is None:  # flip, scan, flip
        want_carry, want_ys = loop(cell, params, xs[::-1], cell.initial_carry(params, (B,)))
        close((carry, ys), (want_carry, want_ys[::-1]))
    else:
        for b, n in enumerate(LENGTHS):
            np.testing.assert_array_equal(ys[n:, b], 0.0)


def test_time_axis_batch_major(lstm_case, lstm_runs):
    for suffix in ("", "-reverse"):
        carry_tm, ys_tm = lstm_runs["lengths" + suffix]
        carry_bm, ys_bm = lstm_runs["batch-major" + suffix]
        assert ys_bm.shape == (B, T, H)
        close(ys_bm, jnp.swapaxes(ys_tm, 0, 1), tol=1e-6)
        close(carry_bm, carry_tm, tol=1e-6)
    # Negative axes count from the end, as in numpy: -2 of [B, T, F] is T.
    cell, params = lstm_case.cell, lstm_case.params
    want_carry, want_ys = loop(cell, params, lstm_case.xs, cell.initial_carry(params, (B,)))
    carry, ys = lstm_runs["negative-axis"]
    close((carry, jnp.swapaxes(ys, 0, 1)), (want_carry, want_ys))


def test_explicit_carry_and_unroll(lstm_case, lstm_runs):
    want = loop(lstm_case.cell, lstm_case.params, lstm_case.xs, lstm_case.carry)
    close(lstm_runs["carry"], want)
    close(lstm_runs["carry-unroll"], want)
    # Starting from the carry after three steps gives the rest of the outputs.
    close(lstm_runs["second-half"], (want[0], want[1][3:]))


def test_bidirectional(lstm_case):
    cell, params, xs = lstm_case.cell, lstm_case.params, lstm_case.xs
    bw = rnnlab.gru(5)
    p_bw = bw.init(jax.random.key(3), F)
    p2 = cell.init(jax.random.key(4), F)

    @jax.jit
    def run(lengths):
        out = {"gru": rnnlab.bidirectional(cell, bw, (params, p_bw), xs, lengths=lengths),
               "pair": rnnlab.bidirectional(cell, cell, (params, p2), xs, merge=None)[1]}
        for merge in ("sum", "mul", "ave"):
            out[merge] = rnnlab.bidirectional(cell, cell, (params, p2), xs, merge=merge)[1]
        return out

    out = run(jnp.asarray(LENGTHS))
    (c_fw, c_bw), ys = out["gru"]
    want_fw = reference_scan(cell, params, xs, lengths=LENGTHS)
    want_bw = reference_scan(bw, p_bw, xs, lengths=LENGTHS, reverse=True)
    assert ys.shape == (T, B, H + 5)
    close(ys, np.concatenate([want_fw[1], want_bw[1]], axis=-1))
    close((c_fw, c_bw), (want_fw[0], want_bw[0]))
    # Merge modes, with two cells of the same width.
    y_f, y_b = out["pair"]
    close(y_f, loop(cell, params, xs, cell.initial_carry(params, (B,)))[1])
    close(y_b, reference_scan(cell, p2, xs, reverse=True)[1])
    for merge, want in [("sum", y_f + y_b), ("mul", y_f * y_b), ("ave", (y_f + y_b) / 2)]:
        close(out[merge], want)
    with pytest.raises(ValueError, match="merge"):
        rnnlab.bidirectional(cell, cell, (params, p2), xs, merge="max")
    with pytest.raises(ValueError, match="params must be a pair"):
        rnnlab.bidirectional(cell, cell, params, xs)


def test_transformations(lstm_case):
    """vmap over params is many seeds; vmap over sequences (batch_shape () inside) is the
    batched call; jax.checkpoint around the scan changes no gradient; traced lengths
    under jit give what concrete (eager) ones give."""
    cell, params, xs = lstm_case.cell, lstm_case.params, lstm_case.xs
    keys = jax.random.split(jax.random.key(7), 4)
    many = jax.vmap(cell.init, in_axes=(0, None))(keys, F)

    def loss(p, lengths):
        return jnp.sum(rnnlab.scan(cell, p, xs, lengths=lengths)[1] ** 2)

    @jax.jit
    def run(many, params, lengths):
        return {
            "seeds": jax.vmap(lambda p: rnnlab.scan(cell, p, xs)[1])(many),
            "sequences": jax.vmap(lambda x, n: rnnlab.scan(cell, params, x, lengths=n)[1],
                                  in_axes=(1, 0), out_axes=1)(xs, lengths),
            "batched": rnnlab.scan(cell, params, xs, lengths=lengths)[1],
            "grad": jax.grad(loss)(params, lengths),
            "grad-checkpoint": jax.grad(jax.checkpoint(loss))(params, lengths),
            "reverse": rnnlab.scan(cell, params, xs, lengths=lengths, reverse=True),
        }

    out = run(many, params, jnp.asarray(LENGTHS))
    for s, k in enumerate(keys):
        p = cell.init(k, F)
        close(out["seeds"][s], loop(cell, p, xs, cell.initial_carry(p, (B,)))[1])
    close(out["sequences"], out["batched"], tol=1e-6)
    close(out["grad-checkpoint"], out["grad"], tol=1e-6)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(out["grad"]))
    close(out["reverse"], rnnlab.scan(cell, params, xs, lengths=jnp.asarray(LENGTHS),
                                      reverse=True), tol=1e-6)


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_with_names(lstm_case):
    cell, params, xs = lstm_case.cell, lstm_case.params, lstm_case.xs
    with pytest.raises(TypeError, match="xs must have a real floating dtype.*int32"):
        rnnlab.scan(cell, params, jnp.ones((T, B, F), jnp.int32))
    with pytest.raises(TypeError, match="xs must have a real floating dtype.*complex64"):
        rnnlab.scan(cell, params, jnp.ones((T, B, F), jnp.complex64))
    with pytest.raises(ValueError, match=rf"xs must have a time axis.*\({F},\)"):
        rnnlab.scan(cell, params, jnp.ones((F,)))
    with pytest.raises(ValueError, match=f"{F} input features"):
        rnnlab.scan(cell, params, jnp.ones((T, B, F + 1)))
    bad_carry = cell.initial_carry(params, (B + 1,))
    with pytest.raises(ValueError, match=rf"carry must match.*\({B},\).*\({B + 1}, {H}\)"):
        rnnlab.scan(cell, params, xs, carry=bad_carry)
    with pytest.raises(ValueError, match=rf"lengths must lie in \[0, T\] = \[0, {T}\].*{T + 1}"):
        rnnlab.scan(cell, params, xs, lengths=jnp.array([T + 1, 1, 1]))
    with pytest.raises(ValueError, match=r"lengths must lie in.*-1"):
        rnnlab.scan(cell, params, xs, lengths=jnp.array([-1, 1, 1]))
    with pytest.raises(ValueError, match=rf"lengths must have the inputs' batch shape \({B},\)"):
        rnnlab.scan(cell, params, xs, lengths=jnp.array([1, 1]))
    with pytest.raises(TypeError, match="lengths must have an integer dtype"):
        rnnlab.scan(cell, params, xs, lengths=jnp.array([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="time_axis"):
        rnnlab.scan(cell, params, xs, time_axis=2)
    with pytest.raises(TypeError, match="time_axis must be an int"):
        rnnlab.scan(cell, params, xs, time_axis=1.0)
    with pytest.raises(TypeError, match="Cell protocol"):
        rnnlab.scan(lambda x: x, params, xs)


def test_float64_inputs_with_float32_params_is_a_clear_error(lstm_case, x64):
    del x64
    cell, params, xs = lstm_case.cell, lstm_case.params, lstm_case.xs
    with pytest.raises(TypeError, match=r"xs \(dtype float64\).*float32.*Cast xs"):
        rnnlab.scan(cell, params, xs.astype(jnp.float64))
    # The fix the message names works: the step keeps float64 (checked without running it).
    params64 = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    carry, ys = jax.eval_shape(functools.partial(rnnlab.scan, cell), params64,
                               xs.astype(jnp.float64))
    assert ys.dtype == jnp.float64
    assert all(c.dtype == jnp.float64 for c in jax.tree.leaves(carry))


# ----------------------------------------------------------------------------- checkpoint policy
# The LSTM, GRU and minGRU carry a checkpoint_policy (rnnlab.checkpointed_step):
# the backward pass of rnnlab.scan keeps only their matmul results (minGRU: only the step's
# inputs) per step and recomputes the rest. T differs from B, from H and from every
# weight's leading size, so the [T, ...] residuals are exactly the per-step ones.


def _without_policy(cell):
    """The same cell without its checkpoint_policy: plain autodiff of the step."""
    return cell._replace(checkpoint_policy=None)


def _per_step_floats(cell, params, xs, **kwargs):
    """Floats per step and sequence that the backward pass of a scan keeps: the [T, ...]
    arrays that jax.vjp's closure holds (traced, not run)."""
    vjp = jax.eval_shape(
        lambda p: jax.vjp(lambda p: jnp.sum(rnnlab.scan(cell, p, xs, **kwargs)[1] ** 2), p)[1],
        params)
    return sum(a.size for a in jax.tree.leaves(vjp) if a.shape[:1] == (T,)) // (T * B)


# What the derivative needs per step, from the equations: the input x [F], the matmul
# results (LSTM: z [4H]; GRU: the r and z pre-activations [2H] and the n block's two
# [H]; minGRU recomputes its one matmul), the carry before the step (LSTM: h and c;
# GRU, minGRU: h), and the output the loss reads.
KEPT = {
    "lstm": lambda F, H: F + 4 * H + 2 * H + H,
    "gru": lambda F, H: F + 2 * H + 2 * H + H + H,
    "mingru": lambda F, H: F + H + H,  # nothing_saveable: the inputs x and h only
}


@pytest.mark.parametrize("F_", [1, 3])  # the GRU's step has one branch per case
@pytest.mark.parametrize("name", sorted(KEPT))
def test_backward_keeps_only_the_matmul_results(name, F_):
    cell = rnnlab.registry.get(name, H)
    params = cell.init(jax.random.key(0), F_)
    xs = jax.random.normal(jax.random.key(1), (T, B, F_))
    assert _per_step_floats(cell, params, xs) == KEPT[name](F_, H)
    # Without the policy JAX keeps each gate's value and the factors of its
    # derivative: more than the bound, so the check above can fail.
    assert _per_step_floats(_without_policy(cell), params, xs) > KEPT[name](F_, H)
    # A stack keeps what its layers keep (each layer's step carries its policy).
    stacked = rnnlab.stack([cell, cell])
    two = stacked.init(jax.random.key(2), F_)
    assert _per_step_floats(stacked, two, xs) == KEPT[name](F_, H) + KEPT[name](H, H) - H


def _policy_cases():
    yield "lstm"
    for name in ("gru", "gru-reset-before", "mingru"):  # the same check on the other policies
        yield pytest.param(name, marks=pytest.mark.slow)


@pytest.mark.parametrize("name", list(_policy_cases()))
def test_checkpoint_policy_keeps_values_and_derivatives(name):
    """Values, reverse-mode and forward-mode derivatives with the policy equal plain
    autodiff of the same step, with lengths and reverse, and under remat."""
    cell = rnnlab.gru(H, reset_after=False) if name == "gru-reset-before" else (
        rnnlab.registry.get(name, H))
    plain = _without_policy(cell)
    params = cell.init(jax.random.key(0), F)
    xs = make_case("lstm").xs
    tangents = (jax.tree.map(jnp.ones_like, params), jnp.ones_like(xs))
    options = ({}, {"lengths": jnp.asarray(LENGTHS), "reverse": True}, {"remat": 2})

    @jax.jit
    def run(params, xs):
        out = []
        for kwargs in options:
            for c in (cell, plain):
                def loss(p, x, c=c, kwargs=kwargs):
                    return jnp.sum(jnp.sin(rnnlab.scan(c, p, x, **kwargs)[1]))

                out.append((jax.value_and_grad(loss, argnums=(0, 1))(params, xs),
                            jax.jvp(loss, (params, xs), tangents)))
        return out

    out = run(params, xs)
    for with_policy, without in zip(out[::2], out[1::2], strict=True):
        close(with_policy, without)


def test_checkpointed_step_reads_the_policy_from_the_cell():
    elman = rnnlab.elman(H)
    assert rnnlab.checkpointed_step(elman) is elman.step  # no policy: the step itself
    asked = []

    def policy(prim, *_, **__):  # records that the backward pass consulted it
        asked.append(prim)
        return False

    cell = elman._replace(checkpoint_policy=policy)
    params = cell.init(jax.random.key(0), F)
    xs = jnp.ones((T, B, F))
    jax.make_jaxpr(lambda p: rnnlab.scan(cell, p, xs))(params)
    assert not asked  # the forward pass alone does not linearise
    jax.make_jaxpr(jax.grad(lambda p: jnp.sum(rnnlab.scan(cell, p, xs)[1])))(params)
    assert asked
    with pytest.raises(TypeError, match="checkpoint_policy must be a jax.checkpoint policy"):
        rnnlab.scan(elman._replace(checkpoint_policy="dots"), params, xs)


def test_a_policy_hung_on_the_step_still_works_with_a_warning():
    """The former protocol put the policy on the step function; a user cell written that
    way keeps its policy and is told about the field."""
    elman = rnnlab.elman(H)
    asked = []

    def step(p, c, x):
        return elman.step(p, c, x)

    step.checkpoint_policy = lambda prim, *_, **__: asked.append(prim) or False
    cell = rnnlab.Cell(elman.init, elman.initial_carry, step)
    params = cell.init(jax.random.key(0), F)
    xs = jnp.ones((T, B, F))
    with pytest.warns(DeprecationWarning, match="pass checkpoint_policy= to rnnlab.Cell"):
        jax.make_jaxpr(jax.grad(lambda p: jnp.sum(rnnlab.scan(cell, p, xs)[1])))(params)
    assert asked
