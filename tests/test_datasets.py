"""rnnlab.datasets: the packages' own loaders, offline; shapes, padding, lengths, the fixed
permutations, and a short training run that beats chance. Skipped without the extra
(pip install -e ".[data]"); CI installs it."""

import numpy as np
import pytest

from rnnlab import datasets, train


def test_unknown_name_is_named():
    with pytest.raises(ValueError, match="name must be one of"):
        datasets.load("mnist")


def test_mnist1d_and_its_shuffled_variant():
    pytest.importorskip("mnist1d")
    state = np.random.get_state()
    ds = datasets.mnist1d(num_samples=200)
    sh = datasets.mnist1d(num_samples=200, shuffled=True)
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(state[1:], after[1:], strict=True))
    assert ds.x.shape == (160, 40, 1) and ds.x_test.shape == (40, 40, 1)
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int32 and ds.lengths is None
    assert set(np.unique(ds.y)) <= set(range(10)) and ds.num_classes == 10
    # The shuffled set is the same sequences with one fixed permutation of the 40 positions.
    np.testing.assert_array_equal(sh.y, ds.y)
    a, b = ds.x[..., 0], sh.x[..., 0]
    perm = np.array([int(np.argmin(np.abs(a[:20] - b[:20, [j]]).sum(0))) for j in range(40)])
    assert sorted(perm) == list(range(40)) and not np.array_equal(perm, np.arange(40))
    np.testing.assert_allclose(b, a[:, perm], atol=1e-6)
    np.testing.assert_allclose(sh.x_test[..., 0], ds.x_test[..., 0][:, perm], atol=1e-6)
    task = ds.task()
    assert task.evaluation.inputs.shape == (40, 40, 1)  # [T, N_test, F]


def test_digits_sequential_and_permuted():
    pytest.importorskip("sklearn")
    ds, pm = datasets.digits(), datasets.digits(permuted=True)
    assert ds.x.shape == (1347, 64, 1) and ds.x_test.shape == (450, 64, 1)
    total = np.bincount(ds.y) + np.bincount(ds.y_test)
    assert np.all(np.abs(np.bincount(ds.y_test) - 0.25 * total) <= 1)  # stratified
    perm = pm.permutation
    np.testing.assert_array_equal(perm, datasets.pixel_permutation(64, 0))  # fixed
    assert sorted(perm) == list(range(64))
    np.testing.assert_array_equal(pm.y, ds.y)
    np.testing.assert_allclose(pm.x, ds.x[:, perm], atol=1e-6)  # x_perm[:, t] = x[:, perm[t]]
    np.testing.assert_allclose(pm.x[:, np.argsort(perm)], ds.x, atol=1e-6)  # invertible
    from sklearn.datasets import load_digits

    raw = load_digits()
    # Each training sequence is one image read row by row (up to the affine scaling).
    flat = raw.images.reshape(-1, 64)
    for row, label in zip(ds.x[:3, :, 0], ds.y[:3], strict=True):
        match = [j for j in range(len(flat)) if np.corrcoef(flat[j], row)[0, 1] > 1 - 1e-6]
        assert match and raw.target[match[0]] == label


def test_japanese_vowels_padding_and_lengths():
    aeon_datasets = pytest.importorskip("aeon.datasets")
    ds = datasets.japanese_vowels()
    assert ds.x.shape == (270, 29, 12) and ds.x_test.shape == (370, 29, 12)
    assert ds.num_classes == 9 and np.all(np.bincount(ds.y) == 30)
    X, _ = aeon_datasets.load_classification("JapaneseVowels", split="train")
    np.testing.assert_array_equal(ds.lengths, [s.shape[1] for s in X])
    assert ds.lengths.min() >= 7 and ds.lengths_test.max() <= 29
    t = np.arange(29)[None, :]
    assert np.all(ds.x[t >= ds.lengths[:, None]] == 0)
    assert np.all(ds.x_test[t >= ds.lengths_test[:, None]] == 0)
    frames = np.concatenate([np.asarray(s).T for s in X])
    mean, std = frames.mean(0), frames.std(0)
    np.testing.assert_allclose(ds.x[5, : ds.lengths[5]], (np.asarray(X[5]).T - mean) / std,
                               rtol=1e-5, atol=1e-5)


def test_short_training_on_japanese_vowels_beats_chance():
    pytest.importorskip("aeon")
    import rnnlab

    task = datasets.load("japanese-vowels").task()
    cfg = train.TrainConfig(batch_size=32, learning_rate=1e-2, clip_norm=None,
                            eval_batch_size=370)
    fns = train.make_train_fns(rnnlab.gru(16), task, cfg)
    state, _ = train.train(None, task, cfg, (0,), 150, chunk_size=150, fns=fns)
    accuracy = float(train.evaluate(fns, state, (0,))["metric"][0])
    assert accuracy > 0.5  # chance 1/9; the majority-class baseline is task.baseline
    assert task.baseline(None) < 0.2
