"""Task generators: shapes, marker placement, and the baselines computed numerically."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import B

from rnnlab import tasks


@pytest.mark.parametrize("name", tasks.names())
def test_sample_shapes_and_dtypes(name):
    task = tasks.get(name)
    T = max(task.min_T, 20)
    batch = task.sample(jax.random.key(0), B, T)
    total = task.total_length(T)
    assert batch.inputs.shape == (total, B, task.input_size)
    assert batch.inputs.dtype == jnp.float32
    if task.per_step:
        assert batch.targets.shape == (total, B)
    else:
        assert batch.targets.shape == (B,)
    expected = jnp.float32 if task.loss_kind == "mse" else jnp.int32
    assert batch.targets.dtype == expected
    if batch.lengths is not None:
        lengths = np.asarray(batch.lengths)
        assert lengths.shape == (B,) and lengths.min() >= T and lengths.max() <= total
        # Padding is all zeros.
        t = np.arange(total)[:, None]
        assert np.all(np.asarray(batch.inputs)[t >= lengths[None]] == 0)
    # The same key gives the same batch; another key another one.
    again = task.sample(jax.random.key(0), B, T)
    np.testing.assert_array_equal(batch.inputs, again.inputs)
    other = task.sample(jax.random.key(1), B, T)
    assert not np.array_equal(batch.inputs, other.inputs)


def test_adding_markers_and_target():
    T = 30
    batch = tasks.get("adding").sample(jax.random.key(1), 200, T)
    values, markers = np.asarray(batch.inputs[..., 0]), np.asarray(batch.inputs[..., 1])
    assert values.min() >= 0 and values.max() <= 1
    assert np.all(markers.sum(0) == 2)
    assert np.all(markers[: T // 2].sum(0) == 1) and np.all(markers[T // 2:].sum(0) == 1)
    np.testing.assert_allclose(batch.targets, (values * markers).sum(0), rtol=1e-6)


def test_adding_baseline_is_one_sixth():
    """Answering 1 gives MSE Var(v1 + v2) = 1/6 (Le et al. 2015)."""
    task, n = tasks.get("adding"), 20_000
    batch = task.sample(jax.random.key(2), n, 10)
    mse = float(task.metric(jnp.ones((n, 1)), batch))
    # std of (y - 1)^2 with y ~ triangular on [0, 2]: sqrt(E(y-1)^4 - 1/36) = sqrt(1/15 - 1/36)
    se = math.sqrt(1 / 15 - 1 / 36) / math.sqrt(n)
    assert task.baseline(10) == pytest.approx(1 / 6)
    assert abs(mse - 1 / 6) < 4 * se


def test_adding_hs_markers_and_target():
    T, n = 40, 100
    batch = tasks.get("adding-hs").sample(jax.random.key(3), n, T)
    x, m = np.asarray(batch.inputs[..., 0]), np.asarray(batch.inputs[..., 1])
    lengths = np.asarray(batch.lengths)
    assert np.abs(x).max() <= 1
    for b in range(n):
        marked = np.flatnonzero(m[:, b] == 1)
        assert len(marked) == 2
        assert marked[0] < T // 2 - 1 or marked[1] < T // 2 - 1  # X2 among the first T/2 - 1
        assert marked.min() < 10  # X1 among the first ten
        for end in (0, lengths[b] - 1):
            assert m[end, b] == (1 if end in marked else -1)
        assert np.sum(m[:, b] == -1) == 2 - (0 in marked)
        if 0 in marked:
            assert x[0, b] == 0  # "we set X1 to zero"
        np.testing.assert_allclose(batch.targets[b], 0.5 + x[marked, b].sum() / 4, rtol=1e-6)


def test_adding_hs_baseline():
    task, n, T = tasks.get("adding-hs"), 20_000, 20
    batch = task.sample(jax.random.key(4), n, T)
    mse = float(task.metric(jnp.full((n, 1), 0.5), batch))
    assert mse == pytest.approx(task.baseline(T), rel=0.04)  # ~5 standard errors
    assert task.baseline(100) == pytest.approx(1 / 24, rel=0.07)


def test_copy_structure_and_baseline():
    task, T = tasks.get("copy"), 12
    batch = task.sample(jax.random.key(5), B, T)
    tokens = np.argmax(np.asarray(batch.inputs), -1)  # [T + 20, B]
    targets = np.asarray(batch.targets)
    assert np.all((tokens[:10] >= 1) & (tokens[:10] <= 8))
    assert np.all(tokens[10:T + 9] == 0) and np.all(tokens[T + 9] == 9)
    assert np.all(tokens[T + 10:] == 0)
    assert np.all(targets[: T + 10] == 0)
    np.testing.assert_array_equal(targets[T + 10:], tokens[:10])
    # The memoryless predictor: blank until the delimiter, then uniform over 1-8.
    logits = np.full((T + 20, B, 9), -1e9, np.float32)
    logits[: T + 10, :, 0] = 0
    logits[T + 10:, :, 1:] = 0
    ce = float(task.metric(jnp.asarray(logits), batch))
    assert ce == pytest.approx(10 * math.log(8) / (T + 20), rel=1e-5)
    assert task.baseline(T) == pytest.approx(10 * math.log(8) / (T + 20))


def test_temporal_order_structure_and_chance():
    task, T, n = tasks.get("temporal-order"), 100, 2000
    batch = task.sample(jax.random.key(6), n, T)
    tokens = np.argmax(np.asarray(batch.inputs), -1)
    lengths, targets = np.asarray(batch.lengths), np.asarray(batch.targets)
    assert np.all(tokens[0] == 5)  # E
    assert np.all(tokens[lengths - 1, np.arange(n)] == 4)  # B, the trigger
    relevant = (tokens == 6) | (tokens == 7)  # X or Y
    assert np.all(relevant.sum(0) == 2)
    t1, t2 = (np.sort(np.argwhere(relevant.T)[:, 1].reshape(n, 2), axis=1)).T
    assert t1.min() >= 10 and t1.max() <= 20 and t2.min() >= 50 and t2.max() <= 60
    first, second = tokens[t1, np.arange(n)] - 6, tokens[t2, np.arange(n)] - 6
    np.testing.assert_array_equal(targets, 2 * first + second)
    # Chance: a constant answer is right a quarter of the time.
    logits = jnp.zeros((n, 4)).at[:, 0].set(1.0)
    acc = float(task.metric(logits, batch))
    assert abs(acc - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)
    assert task.baseline(T) == 0.25


def test_success_criteria():
    task = tasks.get("adding")
    batch = task.sample(jax.random.key(7), 64, 10)
    assert bool(task.success(batch.targets[:, None], batch))
    assert not bool(task.success(jnp.ones((64, 1)), batch))
    assert task.improves_on_baseline(0.01, 10) and not task.improves_on_baseline(0.166, 10)


def test_errors():
    with pytest.raises(ValueError, match="task must be one of"):
        tasks.get("no-such-task")
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="T must be an int >= 2"):
        tasks.get("adding").sample(key, 4, 1)
    with pytest.raises(ValueError, match="T must be an int >= 20"):
        tasks.get("adding-hs").sample(key, 4, 10)
    with pytest.raises(ValueError, match="batch_size"):
        tasks.get("copy").sample(key, 0, 10)
