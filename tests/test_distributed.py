"""Seeds across devices: a 4-device child process gives the single-device numbers; launching."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import CHUNK, ROOT, small_train_config

from rnnlab import distributed, experiment, tasks, train

ADDING = tasks.get("adding")
SMALL = small_train_config()
# Two chunks of the size the other training tests use, so that the single-device
# reference below runs programs they compile anyway (conftest's elman_fns).
STEPS = 2 * CHUNK

# Runs in a child whose XLA sees 4 CPU devices (the flag must be set before jax is imported).
CHILD = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    import rnnlab
    from rnnlab import distributed, tasks, train
    from rnnlab.train import TrainConfig

    assert len(jax.devices()) == 4, jax.devices()
    task = tasks.get("adding")
    cfg = %(cfg)s
    fns = train.make_train_fns(rnnlab.elman(8), task, cfg)
    seeds = (0, 1, 2)  # not a multiple of 4: padded to 4
    state, hist = train.train(None, task, cfg, seeds, %(steps)d, chunk_size=%(chunk)d, fns=fns)
    ev = train.evaluate(fns, state, seeds)
    out = {**hist, **{f"eval_{k}": v for k, v in ev.items()},
           "W": np.asarray(state.params.readout.W)}
    # The compiled chunk train() ran (same shapes: no new compile), outputs split over 4 devices.
    mesh = fns.mesh
    state = distributed.shard_leading(fns.init(np.arange(4)), mesh)
    state, logs = fns.train_chunk(state, distributed.shard_leading(np.arange(4), mesh),
                                  %(chunk)d)
    W = state.params.readout.W
    devices = {"loss": len(logs["loss"].sharding.device_set), "W": len(W.sharding.device_set),
               "W_shard_rows": sorted(s.data.shape[0] for s in W.addressable_shards)}
    # The gradient-norm experiment's helper, 5 rows padded to 8.
    f = distributed.shard_over_seeds(jax.vmap(lambda x: (x ** 2).sum(-1)))
    out["sq"] = f(np.arange(15.0).reshape(5, 3))
    np.savez(sys.argv[1], **out)
    print(json.dumps(devices))
    """
) % {"steps": STEPS, "chunk": CHUNK, "cfg": repr(SMALL)}


def _child_env(n_devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        env.pop(var, None)
    return env


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "child.npz"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(out)], capture_output=True, text=True, timeout=600,
        env=_child_env(4), cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out)), json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharded_training_equals_single_device(four_devices, elman_fns):
    numbers, devices = four_devices
    # The reference: the same code on this process's one device, a seed at a time.
    assert len(elman_fns.mesh.devices.flat) == 1
    seeds = (0, 1, 2)
    for i, seed in enumerate(seeds):
        state, hist = train.train(None, ADDING, SMALL, (seed,), STEPS, chunk_size=CHUNK,
                                  fns=elman_fns)
        ev = train.evaluate(elman_fns, state, (seed,))
        for k in train.HISTORY_KEYS:
            assert numbers[k].shape == (len(seeds), STEPS)
            np.testing.assert_allclose(numbers[k][i], hist[k][0], rtol=1e-5, atol=1e-6)
        for k, v in ev.items():
            np.testing.assert_allclose(numbers[f"eval_{k}"][i], v[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(numbers["W"][i], state.params.readout.W[0], rtol=1e-5,
                                   atol=1e-6)
    # Really on 4 devices: the compiled chunk's outputs hold one seed per device.
    assert devices == {"loss": 4, "W": 4, "W_shard_rows": [1, 1, 1, 1]}
    np.testing.assert_array_equal(numbers["sq"], (np.arange(15.0).reshape(5, 3) ** 2).sum(-1))


def test_padding_helpers():
    x = np.arange(6).reshape(3, 2)
    mesh = distributed.seed_mesh(jax.devices()[:1])
    assert distributed.padded_size(3, mesh) == 3
    assert distributed.padded_size(3, distributed.seed_mesh(jax.devices()[:1] * 4)) == 4
    padded = distributed.pad_leading({"x": x}, 4)["x"]
    np.testing.assert_array_equal(padded, [[0, 1], [2, 3], [4, 5], [0, 1]])
    np.testing.assert_array_equal(distributed.unpad_leading(padded, 3), x)
    placed = distributed.shard_leading(x, mesh)
    assert placed.sharding == distributed.seed_sharding(mesh)


def test_initialize_only_when_launched_as_several_processes(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    assert not distributed.maybe_initialize_distributed({})
    assert not distributed.maybe_initialize_distributed(  # a one-task SLURM step
        {"SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1",
         "SLURM_PROCID": "0", "SLURM_LOCALID": "0"})
    assert calls == []
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": "1"}
    assert distributed.maybe_initialize_distributed(env)
    assert calls[-1] == {"coordinator_address": "10.0.0.1:1234", "num_processes": 2,
                         "process_id": 1}
    assert distributed.maybe_initialize_distributed(
        {"SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2",
         "SLURM_PROCID": "0", "SLURM_LOCALID": "0"})
    assert calls[-1] == {}  # JAX's cluster auto-detection reads SLURM itself
    assert not distributed.maybe_initialize_distributed({**env, "RNNLAB_DISTRIBUTED": "0"})
    assert len(calls) == 2


def test_only_the_writer_writes(tmp_path):
    @experiment.dataclasses.dataclass(frozen=True)
    class Cfg:
        steps: int = 1

    reader = experiment.RunDir(tmp_path / "r", Cfg(), is_writer=False)
    reader.write_json("a.json", {"x": 1})
    reader.write_csv("b.csv", [{"x": 1}])
    reader.write_bytes("c.npz", b"")
    reader.mark_complete()
    assert not (tmp_path / "r").exists()
    writer = experiment.RunDir(tmp_path / "r", Cfg())  # default: process 0 writes
    assert writer.is_writer
    writer.write_json("a.json", {"x": 1})
    assert reader.read_json("a.json") == {"x": 1}  # readers still read
