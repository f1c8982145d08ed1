"""Training: it learns, vmapped seeds equal separate runs, resuming is exact, bad input fails."""


import jax
import numpy as np
import optax
import pytest
from conftest import CHUNK, equal, small_train_config

import rnnlab
from rnnlab import tasks, train

ADDING = tasks.get("adding")
SMALL = small_train_config()


def test_lstm_learns_adding_T10():
    """A tiny LSTM leaves the 1/6 plateau of the adding problem at T = 10 in 300 steps."""
    cfg = train.TrainConfig(seq_len=10, batch_size=32, eval_batch_size=256, learning_rate=1e-2)
    fns = train.make_train_fns(rnnlab.lstm(16), ADDING, cfg)
    state, history = train.train(None, ADDING, cfg, seeds=(0,), num_steps=300, chunk_size=300,
                                 fns=fns)
    ev = train.evaluate(fns, state, (0,))
    assert history["loss"].shape == (1, 300)
    assert np.all(np.isfinite(history["grad_norm"])) and np.all(history["param_norm"] > 0)
    assert float(ev["metric"][0]) < 0.02  # baseline 0.167
    assert not ev["diverged"][0]


def test_vmapped_seeds_equal_separate_runs(elman_fns):
    both, h_both = train.train(None, ADDING, SMALL, (3, 7), 2 * CHUNK, chunk_size=CHUNK,
                               fns=elman_fns)
    for i, seed in enumerate((3, 7)):
        one, h_one = train.train(None, ADDING, SMALL, (seed,), 2 * CHUNK, chunk_size=CHUNK,
                                 fns=elman_fns)
        for k in train.HISTORY_KEYS:
            np.testing.assert_allclose(h_both[k][i], h_one[k][0], rtol=1e-5, atol=1e-7)
        jax.tree.map(lambda a, b, i=i: np.testing.assert_allclose(a[i], b[0], rtol=1e-5,
                                                                  atol=1e-7), both, one)


def test_resume_from_checkpoint_is_exact(elman_fns, tmp_path):
    full, h_full = train.train(None, ADDING, SMALL, (0, 1), 3 * CHUNK, chunk_size=CHUNK,
                               fns=elman_fns)

    def kill_after_two_chunks(step, state, history):
        if step == 2 * CHUNK:
            raise train.TrainInterrupted

    ckpt = tmp_path / "ckpt"
    with pytest.raises(train.TrainInterrupted):
        train.train(None, ADDING, SMALL, (0, 1), 3 * CHUNK, chunk_size=CHUNK, checkpoint_dir=ckpt,
                    callback=kill_after_two_chunks, fns=elman_fns)
    steps_seen = []
    resumed, h_resumed = train.train(None, ADDING, SMALL, (0, 1), 3 * CHUNK, chunk_size=CHUNK,
                                     checkpoint_dir=ckpt, fns=elman_fns,
                                     callback=lambda step, *_: steps_seen.append(step))
    assert steps_seen == [3 * CHUNK]  # only the last chunk ran again
    equal(jax.tree.map(np.asarray, full), jax.tree.map(np.asarray, resumed))
    for k in train.HISTORY_KEYS:
        np.testing.assert_array_equal(h_full[k], h_resumed[k])


def test_divergence_is_recorded_not_raised(elman_fns):
    """A seed whose loss overflows is frozen and flagged; the other seed trains on."""
    seeds = jax.numpy.asarray([0, 1])
    state = elman_fns.init(seeds)
    W = state.params.readout.W.at[1].set(1e30)  # seed 1's outputs, hence loss, overflow
    state = state._replace(params=state.params._replace(readout=state.params.readout._replace(W=W)))
    start = jax.tree.map(np.asarray, state.params)
    state, logs = elman_fns.train_chunk(state, seeds, CHUNK)
    np.testing.assert_array_equal(state.diverged, [False, True])
    np.testing.assert_array_equal(state.diverged_step, [-1, 0])
    assert np.all(np.isfinite(logs["loss"][0])) and not np.isfinite(logs["loss"][1, 0])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[1], b[1]), state.params, start)
    assert not np.array_equal(state.params.readout.W[0], start.readout.W[0])


def test_bad_configs():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        train.TrainConfig(optimizer="lbfgs-ish")
    with pytest.raises(ValueError, match="seq_len"):
        train.TrainConfig(seq_len=0)
    with pytest.raises(ValueError, match="clip_norm"):
        train.TrainConfig(clip_norm=-1.0)
    with pytest.raises(ValueError, match=r"T\) must be >= 20"):
        train.make_train_fns(rnnlab.lstm(4), tasks.get("adding-hs"), train.TrainConfig(seq_len=10))
    with pytest.raises(ValueError, match="num_steps"):
        train.train(rnnlab.lstm(4), ADDING, SMALL, (0,), -1)
    with pytest.raises(ValueError, match="distinct"):
        train.train(rnnlab.lstm(4), ADDING, SMALL, (0, 0), 1)


# ----------------------------------------------------------------------------- huge gradients


def _irnn_sgd(clip_norm):
    """The issue's reproduction: irnn(16) on adding, T = 20, B = 8, SGD lr 0.3."""
    return train.TrainConfig(seq_len=20, batch_size=8, optimizer="sgd", learning_rate=0.3,
                             clip_norm=clip_norm, eval_batch_size=8)


@pytest.fixture(scope="module")
def irnn_at_step_8():
    """Seeds 0-7 trained 8 steps without clipping; seed 1's gradient at step 8 (finite
    entries, float64 norm ~2.9e24) and that step's logs."""
    cfg = _irnn_sgd(None)
    fns = train.make_train_fns(rnnlab.irnn(16), ADDING, cfg)
    seeds = jax.numpy.arange(8)
    state, _ = fns.train_chunk(fns.init(seeds), seeds, 8)
    after, logs = fns.train_chunk(state, seeds, 1)
    params = jax.tree.map(lambda a: a[1], state.params)
    _, k_data, _ = train.seed_keys(1)
    batch = ADDING.sample(jax.random.fold_in(k_data, 8), cfg.batch_size, cfg.seq_len)
    grads = jax.grad(lambda p: ADDING.loss(fns.apply(p, batch.inputs, batch.lengths), batch))(
        params)
    return after, logs, params, grads


@pytest.mark.slow  # the exact reproduction: 8 seeds trained to step 8 (~13 s)
def test_huge_finite_gradient_is_logged_and_not_divergence(irnn_at_step_8):
    after, logs, _, grads = irnn_at_step_8
    leaves = [np.asarray(g, np.float64) for g in jax.tree.leaves(grads)]
    assert all(np.all(np.isfinite(g)) for g in leaves)
    norm64 = np.sqrt(sum(np.sum(g**2) for g in leaves))
    assert norm64 > 1e24
    assert not np.isfinite(optax.tree.norm(grads))  # what the log used to hold
    assert np.isfinite(logs["loss"][1, 0]) and logs["loss"][1, 0] > 1e23
    np.testing.assert_allclose(logs["grad_norm"][1, 0], norm64, rtol=1e-4)
    np.testing.assert_allclose(train.global_norm(grads), norm64, rtol=1e-5)
    np.testing.assert_array_equal(after.diverged, np.zeros(8, bool))
    np.testing.assert_array_equal(after.diverged_step, np.full(8, -1))


@pytest.mark.slow  # shares the reproduction above
def test_clipping_clips_a_huge_finite_gradient(irnn_at_step_8):
    """optax's clip turns the 2.9e24 gradient into exact zeros (norm inf -> scale 0);
    rnnlab's clips it to norm 1, so the SGD update has norm lr = 0.3. For an ordinary
    gradient both clip alike."""
    _, _, params, grads = irnn_at_step_8
    opt = train.make_optimizer(_irnn_sgd(1.0))
    updates, _ = opt.update(grads, opt.init(params), params)
    leaves = [np.asarray(u, np.float64) for u in jax.tree.leaves(updates)]
    np.testing.assert_allclose(np.sqrt(sum(np.sum(u**2) for u in leaves)), 0.3, rtol=1e-5)
    zeros, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    assert all(np.all(np.asarray(z) == 0) for z in jax.tree.leaves(zeros))

    ordinary = jax.tree.map(lambda g: g * 1e-24, grads)  # norm ~2.9
    ours, _ = train.clip_by_global_norm(1.0).update(ordinary, optax.EmptyState())
    theirs, _ = optax.clip_by_global_norm(1.0).update(ordinary, optax.EmptyState())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-12),
                 ours, theirs)
    small = jax.tree.map(lambda g: g * 1e-26, grads)  # norm ~0.03: unchanged
    kept, _ = train.clip_by_global_norm(1.0).update(small, optax.EmptyState())
    jax.tree.map(np.testing.assert_array_equal, kept, small)
