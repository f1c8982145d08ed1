"""Training a transformed cell: the transform is on in training with the key of
(seed, step), off in evaluation, and the run stays a pure function of (seed, step)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CHUNK, equal, small_train_config

from rnnlab import cells, distributed, tasks, train, transforms

ADDING = tasks.get("adding")
SMALL = small_train_config()
SEEDS = (0, 1)


def _run(fns, seeds=SEEDS, num_steps=2 * CHUNK):
    return train.train(None, ADDING, SMALL, seeds, num_steps, chunk_size=CHUNK, fns=fns)


def _equal_histories(a, b):
    for k in train.HISTORY_KEYS:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.fixture(scope="module")
def dropout_run():
    cell = transforms.variational_dropout(cells.elman(8), input_rate=0.5, recurrent_rate=0.5)
    fns = train.make_train_fns(cell, ADDING, SMALL)
    return (fns, *_run(fns))


def test_only_transformed_cells_draw_a_key():
    assert not train.draws_carry_key(cells.elman(8), 1)
    assert train.draws_carry_key(transforms.zoneout(cells.lstm(4), 0.1), 1)


def test_training_loss_uses_the_key_of_seed_and_step(dropout_run):
    """Step 0's logged loss is the loss with the masks of ``fold_in(transform_key(seed), 0)``
    (on the initial params), not the loss with the transform off."""
    fns, _, history = dropout_run
    seed = SEEDS[1]
    k_params, k_data, _ = train.seed_keys(seed)
    batch = ADDING.sample(jax.random.fold_in(k_data, 0), SMALL.batch_size, SMALL.seq_len)
    params = fns.init(jnp.asarray([seed])).params
    params = jax.tree.map(lambda x: x[0], params)

    @jax.jit
    def loss(key):
        return ADDING.loss(fns.apply(params, batch.inputs, batch.lengths, key), batch)

    on = loss(jax.random.fold_in(train.transform_key(seed), 0))
    np.testing.assert_allclose(history["loss"][1, 0], on, rtol=1e-6)
    assert not np.isclose(history["loss"][1, 0], loss(None))


def test_evaluation_has_dropout_off(dropout_run, elman_fns):
    fns, state, _ = dropout_run
    equal(train.evaluate(fns, state, SEEDS), train.evaluate(elman_fns, state, SEEDS))


def test_same_seed_same_run_and_resuming_draws_the_same_masks(dropout_run):
    """A second run, and a run continued from the state after CHUNK steps, draw the
    masks the first run drew; other seeds draw others."""
    fns, state, history = dropout_run
    again, h_again = _run(fns)
    _equal_histories(h_again, history)
    equal(jax.tree.map(np.asarray, again), jax.tree.map(np.asarray, state))
    half, _ = _run(fns, num_steps=CHUNK)
    size = distributed.padded_size(len(SEEDS), fns.mesh)
    half, seeds = distributed.shard_leading(
        distributed.pad_leading((half, np.asarray(SEEDS, np.int32)), size), fns.mesh)
    resumed, logs = fns.train_chunk(half, seeds, CHUNK)
    logs = distributed.unpad_leading(distributed.to_host(logs), len(SEEDS))
    np.testing.assert_array_equal(logs["loss"], history["loss"][:, CHUNK:])
    resumed = distributed.unpad_leading(distributed.to_host(resumed), len(SEEDS))
    equal(jax.tree.map(np.asarray, resumed), jax.tree.map(np.asarray, state))
    _, h_other_seeds = _run(fns, seeds=(2, 3))
    assert not np.allclose(h_other_seeds["loss"], history["loss"])


@pytest.mark.slow  # two more compiled training programs (one shared with test_train.py)
@pytest.mark.parametrize("make", [
    lambda c: transforms.zoneout(c, 0.0),
    lambda c: transforms.variational_dropout(c, input_rate=0.0, recurrent_rate=0.0),
], ids=["zoneout", "variational_dropout"])
def test_rate_0_trains_as_the_plain_cell(make, elman_fns, dropout_run):
    _, plain = _run(elman_fns)
    _, zero = _run(train.make_train_fns(make(cells.elman(8)), ADDING, SMALL))
    _equal_histories(zero, plain)
    assert not np.allclose(dropout_run[2]["loss"], plain["loss"])
