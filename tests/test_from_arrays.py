"""rnnlab.tasks.from_arrays: batches drawn from the arrays, losses over valid steps only, the
held-out set scored whole, training/resume unchanged, and bad input named."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import equal

import rnnlab
from rnnlab import tasks, train

N, T, F, C = 23, 7, 3, 4  # sequences, steps, features, classes: all distinct


def _arrays(seed=0, n=N):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, T, F)).astype(np.float32)
    lengths = rng.integers(1, T + 1, size=n)
    y = rng.integers(0, C, size=n)
    return x, y, lengths


def test_sample_draws_rows_of_the_arrays_time_major_and_reproducibly():
    x, y, lengths = _arrays()
    x[0, lengths[0]:] = np.nan  # NaN in the padding is allowed and zeroed
    task = tasks.from_arrays(x, y, lengths=lengths)
    batch = task.sample(jax.random.key(0), 5, 999)  # T is ignored: the arrays fix it
    assert batch.inputs.shape == (T, 5, F) and batch.targets.shape == (5,)
    assert batch.lengths.shape == (5,) and batch.targets.dtype == jnp.int32
    rows = [_find_row(x, lengths, np.asarray(batch.inputs)[:, b]) for b in range(5)]
    assert len(set(rows)) == 5  # without replacement within a batch
    np.testing.assert_array_equal(batch.targets, y[rows])
    np.testing.assert_array_equal(batch.lengths, lengths[rows])
    inputs = np.asarray(batch.inputs)
    for b, i in enumerate(rows):
        assert np.all(inputs[lengths[i]:, b] == 0)  # padding zeroed
    equal(batch, task.sample(jax.random.key(0), 5, 5))  # a pure function of the key
    assert not np.array_equal(batch.targets, task.sample(jax.random.key(1), 5).targets) or \
        not np.array_equal(batch.inputs, task.sample(jax.random.key(1), 5).inputs)
    assert task.input_size == F and task.output_size == C and not task.per_step
    assert task.evaluation.inputs.shape == (T, N, F)  # no x_test: the training set
    assert task.total_length(100) == T


def _find_row(x, lengths, column):  # column [T, F]
    for i in range(len(x)):
        n = lengths[i]
        if np.array_equal(np.nan_to_num(x[i, :n]), column[:n]):
            return i
    raise AssertionError("the sampled sequence is no row of x")


def test_per_step_classification_loss_and_accuracy_count_valid_steps_only():
    x, _, lengths = _arrays(1)
    rng = np.random.default_rng(2)
    y = rng.integers(0, C, size=(N, T))
    task = tasks.from_arrays(x, y, lengths=lengths)
    assert task.per_step
    batch = task.evaluation
    logits = jax.random.normal(jax.random.key(3), (T, N, C))
    # numpy oracle: a loop over the valid steps of each sequence
    lg = np.asarray(logits, np.float64)
    ce, hit, count = 0.0, 0.0, 0
    for i in range(N):
        for t in range(lengths[i]):
            z = lg[t, i] - lg[t, i].max()
            ce += np.log(np.exp(z).sum()) - z[y[i, t]]
            hit += np.argmax(lg[t, i]) == y[i, t]
            count += 1
    np.testing.assert_allclose(task.loss(logits, batch), ce / count, rtol=1e-5)
    np.testing.assert_allclose(task.metric(logits, batch), hit / count, rtol=1e-6)


def test_regression_per_sequence_vector_and_per_step_scalar():
    x, _, lengths = _arrays(4)
    rng = np.random.default_rng(5)
    y = rng.normal(size=(N, 2))
    task = tasks.from_arrays(x, y)
    assert task.loss_kind == "mse" and task.output_size == 2 and not task.per_step
    out = jax.random.normal(jax.random.key(0), (N, 2))
    np.testing.assert_allclose(task.metric(out, task.evaluation),
                               np.mean((np.asarray(out) - y) ** 2), rtol=1e-5)
    assert task.baseline(T) == pytest.approx(np.mean((y - y.mean(0)) ** 2), rel=1e-5)
    ys = rng.normal(size=(N, T))
    task = tasks.from_arrays(x, ys, lengths=lengths, per_step=True)
    assert task.per_step and task.output_size == 1
    out = jax.random.normal(jax.random.key(1), (T, N, 1))
    err = (np.asarray(out)[..., 0] - ys.T) ** 2  # [T, N]
    valid = np.arange(T)[:, None] < lengths[None]
    np.testing.assert_allclose(task.loss(out, task.evaluation), err[valid].mean(), rtol=1e-5)


def test_pad_sequences():
    seqs = [np.ones((3, 2)), 2 * np.ones((1, 2)), 3 * np.ones((5, 2))]
    x, lengths = tasks.pad_sequences(seqs)
    assert x.shape == (3, 5, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(lengths, [3, 1, 5])
    assert np.all(x[0, 3:] == 0) and np.all(x[0, :3] == 1) and np.all(x[2] == 3)
    assert tasks.pad_sequences([np.arange(4.0)])[0].shape == (1, 4, 1)
    with pytest.raises(ValueError, match="length must be >= the longest"):
        tasks.pad_sequences(seqs, length=4)
    with pytest.raises(ValueError, match="one feature count"):
        tasks.pad_sequences([np.ones((2, 2)), np.ones((2, 3))])


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(y=np.zeros(N - 1, int)), ValueError, r"y must have N = 23 entries"),
    (dict(lengths=np.ones(N - 2, int)), ValueError, r"lengths must be \[N\] = \[23\]"),
    (dict(lengths=np.full(N, T + 1)), ValueError, r"lengths must lie in \[1, T\] = \[1, 7\]"),
    (dict(lengths=np.zeros(N, int)), ValueError, r"lengths\[0\] = 0"),
    (dict(y=np.full(N, C), num_classes=C), ValueError, r"y must hold labels in \[0, num_cla"),
    (dict(y=np.full(N, -1)), ValueError, r"y must hold labels in \[0"),
    (dict(x_nan=(2, 1, 0)), ValueError, r"x must be finite at every valid step; x\[2, 1, 0\]"),
    (dict(x_test=np.zeros((4, T, F))), ValueError, r"x_test and y_test must be given together"),
    (dict(x_test=np.zeros((4, T, F + 1)), y_test=np.zeros(4, int)), ValueError,
     r"x_test must have F = 3 features"),
    (dict(x_test=np.zeros((4, T, F)), y_test=np.full(4, 9), num_classes=C), ValueError,
     r"y_test must hold labels"),
    (dict(x_test=np.zeros((4, T, F)), y_test=np.zeros(5, int)), ValueError,
     r"y_test must have N = 4 entries"),
    (dict(y=np.array(["a"] * N)), TypeError, r"y must be numeric.*encode string labels"),
    (dict(x=np.zeros((N,)), y=np.zeros(N, int)), ValueError, r"x must be \[N, T, F\]"),
    (dict(y=np.zeros((N, T + 1), int)), ValueError, r"y must be \[23, 7\] class labels"),
    (dict(kind="ranking"), ValueError, r"kind must be one of"),
    (dict(y=np.full(N, np.nan)), ValueError, r"y must be finite"),
])
def test_bad_input_is_named(kwargs, error, match):
    x, y, lengths = _arrays()
    args = dict(x=x, y=y, lengths=lengths)
    if "x_nan" in kwargs:
        i, t, f = kwargs.pop("x_nan")
        x = x.copy()
        x[i, t, f] = np.nan
        args.update(x=x, lengths=np.full(N, T))
    args.update(kwargs)
    x, y = args.pop("x"), args.pop("y")
    with pytest.raises(error, match=match):
        tasks.from_arrays(x, y, **args)


# ----------------------------------------------------------------------------- training

CFG = train.TrainConfig(batch_size=16, learning_rate=2e-2, eval_batch_size=7,  # 7 ∤ 60
                        schedule="cosine", decay_steps=200)


def _learnable(seed, n):
    """Class = sign of the first feature at each sequence's last valid step: learnable only
    if the readout reads that step (the padding after it is random)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, T, F)).astype(np.float32)
    lengths = rng.integers(3, T + 1, size=n)
    return x, (x[np.arange(n), lengths - 1, 0] > 0).astype(int), lengths


@pytest.fixture(scope="module")
def learnable():
    x, y, lengths = _learnable(0, 200)
    xt, yt, lt = _learnable(1, 60)
    task = tasks.from_arrays(x, y, lengths=lengths, x_test=xt, y_test=yt, lengths_test=lt)
    fns = train.make_train_fns(rnnlab.gru(8), task, CFG)
    return task, fns, (xt, yt, lt)


def test_training_beats_chance_and_evaluate_scores_the_whole_test_set(learnable):
    task, fns, (xt, yt, lt) = learnable
    state, history = train.train(None, task, CFG, (0, 1), 200, chunk_size=100, fns=fns)
    ev = train.evaluate(fns, state, (0, 1))
    assert np.all(np.isfinite(history["loss"]))
    assert np.all(ev["metric"] > 0.8) and np.all(ev["success"])  # chance ~0.5
    for i in range(2):  # the chunked evaluation equals one apply over all 60 sequences
        params = jax.tree.map(lambda a, i=i: a[i], state.params)
        logits = fns.apply(params, jnp.asarray(np.moveaxis(xt, 1, 0)), jnp.asarray(lt))
        np.testing.assert_allclose(ev["metric"][i], np.mean(np.argmax(logits, -1) == yt),
                                   atol=1e-6)


@pytest.mark.slow  # the driver's resume is tested in test_train.py; this is the array task's
def test_resume_from_checkpoint_is_exact(learnable, tmp_path):
    task, fns, _ = learnable
    full, h_full = train.train(None, task, CFG, (0,), 30, chunk_size=10, fns=fns)

    def kill(step, state, history):
        if step == 20:
            raise train.TrainInterrupted

    with pytest.raises(train.TrainInterrupted):
        train.train(None, task, CFG, (0,), 30, chunk_size=10, checkpoint_dir=tmp_path,
                    callback=kill, fns=fns)
    resumed, h_resumed = train.train(None, task, CFG, (0,), 30, chunk_size=10,
                                     checkpoint_dir=tmp_path, fns=fns)
    equal(jax.tree.map(np.asarray, full), jax.tree.map(np.asarray, resumed))
    np.testing.assert_array_equal(h_full["loss"], h_resumed["loss"])


def test_cosine_schedule_matches_optax():
    with pytest.raises(ValueError, match="decay_steps must be a positive int"):
        train.TrainConfig(schedule="cosine")
    with pytest.raises(ValueError, match="schedule must be one of"):
        train.TrainConfig(schedule="linear")
    cfg = train.TrainConfig(optimizer="sgd", learning_rate=0.5, clip_norm=None,
                            schedule="cosine", decay_steps=4)
    opt = train.make_optimizer(cfg)
    params, grads = jnp.zeros(()), jnp.ones(())
    state, steps = opt.init(params), []
    for _ in range(5):
        updates, state = opt.update(grads, state, params)
        steps.append(float(-updates))
    expected = [float(optax.cosine_decay_schedule(0.5, 4)(k)) for k in range(5)]
    np.testing.assert_allclose(steps, expected, rtol=1e-6)
    assert steps[0] == pytest.approx(0.5) and steps[4] == pytest.approx(0.0, abs=1e-7)
