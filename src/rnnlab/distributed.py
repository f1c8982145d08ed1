r"""Seeds across devices with JAX's own SPMD: a ``Mesh``, a ``NamedSharding``, padding, gathering.

rnnlab's training and diagnostics are ``jax.vmap``-ed over a leading *seed*
axis ``[S, ...]``; seeds never talk to each other. Splitting that axis across
devices is therefore pure data parallelism: place every ``[S, ...]`` input with
``NamedSharding(mesh, P("seeds"))`` and ``jax.jit`` partitions the vmapped
program so that each device computes its own slice of seeds, with no
communication. On one device the mesh has one device and the same code runs
unchanged (and gives the same numbers, bit for bit).

When S does not divide the number of devices D, the seed axis is **padded** to
the next multiple of D by repeating the first seed's slice (:func:`pad_leading`);
the padded rows compute a copy of seed 0 and are dropped from every result
(:func:`unpad_leading`). Padding rather than using fewer devices keeps every
device busy with at most ``D - 1`` wasted rows, and repeating a real row
(rather than zeros) means the padding can never produce NaNs or divergence
flags of its own.

Several hosts (processes): call :func:`maybe_initialize_distributed` before
anything touches a device. :func:`jax.devices` then lists every process's
devices, the mesh spans all of them, inputs are built as global arrays
(:func:`shard_leading`: every process holds the full, deterministic ``[S, ...]``
host data and contributes its own devices' slices) and results are gathered to
every process (:func:`to_host`). Only process 0 writes files
(:func:`is_writer`, used by :class:`rnnlab.experiment.RunDir`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

SEED_AXIS = "seeds"

# Variables that say "this process is one of several". The coordinator address
# alone is enough for JAX; SLURM and Open MPI are only treated as multi-process
# when they launched more than one task (a plain `srun python ...` with one task
# should not wait for peers that will never come).
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")


def _multi_process_env(env: Mapping[str, str]) -> str | None:
    """Which launcher set up several processes (``"jax"``, ``"slurm"``, ``"ompi"``), or None."""
    if env.get("RNNLAB_DISTRIBUTED", "").lower() in ("0", "false", "no", "off"):
        return None
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "jax"
    if all(v in env for v in _SLURM_VARS) and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "ompi"
    return None


def maybe_initialize_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Calls :func:`jax.distributed.initialize` when launched as one of several processes.

    Call it first thing in a script's ``main``, before any JAX computation.
    It does nothing (and returns False) in a plain single-process run, so
    scripts call it unconditionally.

    Detection, in order (``RNNLAB_DISTRIBUTED=0`` turns it all off):

    - ``JAX_COORDINATOR_ADDRESS=host:port`` set: initialise with it, plus
      ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` when set (else JAX's own
      cluster auto-detection fills them in);
    - a SLURM job step with ``SLURM_NTASKS > 1``, or an Open MPI launch with
      ``OMPI_COMM_WORLD_SIZE > 1``: initialise with no arguments and let JAX
      auto-detect everything from the launcher's environment.

    Args:
      env: the environment to read (``os.environ`` if None; tests pass a dict).

    Returns:
      True if JAX's distributed runtime is (now) initialised.
    """
    if jax.distributed.is_initialized():
        return True
    env = os.environ if env is None else env
    launcher = _multi_process_env(env)
    if launcher is None:
        return False
    kwargs: dict[str, Any] = {}
    if launcher == "jax":
        kwargs["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
        if env.get("JAX_NUM_PROCESSES"):
            kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
        if env.get("JAX_PROCESS_ID"):
            kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
    return True


def is_writer() -> bool:
    """True in the process that writes results: process 0 (always, with a single process)."""
    return jax.process_index() == 0


def seed_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A one-axis mesh named ``"seeds"`` over ``devices`` (default: every device, all hosts)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must be non-empty.")
    return Mesh(np.asarray(devices, dtype=object), (SEED_AXIS,))


def seed_sharding(mesh: Mesh) -> NamedSharding:
    """``NamedSharding(mesh, P("seeds"))``: an array's leading axis split across the mesh."""
    return NamedSharding(mesh, PartitionSpec(SEED_AXIS))


def padded_size(n: int, mesh: Mesh) -> int:
    """The smallest multiple of the mesh's device count that is >= ``n``."""
    d = mesh.devices.size
    return -(-n // d) * d


def pad_leading(tree: Any, size: int) -> Any:
    """Pads every leaf's leading axis to ``size`` by repeating row 0 (see the module doc)."""

    def pad(x):
        n = np.shape(x)[0]
        if n == size:
            return x
        if n == 0:
            raise ValueError("cannot pad an empty seed axis.")
        reps = np.zeros(size - n, dtype=np.int32)
        if isinstance(x, np.ndarray):
            return np.concatenate([x, x[reps]], axis=0)
        return jax.numpy.concatenate([x, x[reps]], axis=0)

    return jax.tree.map(pad, tree)


def unpad_leading(tree: Any, size: int) -> Any:
    """Keeps the first ``size`` rows of every leaf (drops :func:`pad_leading`'s padding)."""
    return jax.tree.map(lambda x: x[:size], tree)


def _host(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        raise TypeError("typed PRNG key arrays cannot be placed with shard_leading; pass "
                        "jax.random.key_data(keys) and wrap_key_data inside the function.")
    return np.asarray(x)


def shard_leading(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf ``[S, ...]`` (S a multiple of the device count) split along its
    leading axis across ``mesh``.

    Each process passes the same full host data; with several processes this
    builds global arrays from it (:func:`jax.make_array_from_callback`), so it
    is correct on one host and on many.
    """
    sharding = seed_sharding(mesh)

    def put(x):
        x = _host(x)
        if x.ndim == 0 or x.shape[0] % mesh.devices.size:
            raise ValueError(
                f"shard_leading needs a leading axis that is a multiple of the {mesh.devices.size} "
                f"devices (pad_leading first); received shape {x.shape}.")
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
    """Every leaf as a numpy array holding the full (global) value, on every process."""

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(get, tree)


def shard_over_seeds(fn: Callable[..., Any], mesh: Mesh | None = None) -> Callable[..., Any]:
    """``jax.jit(fn)`` with every argument's and output's leading (seed) axis split across ``mesh``.

    ``fn`` must be vmapped (or otherwise elementwise) over the leading axis of
    every leaf of its arguments and outputs. The returned function takes host
    or device arrays with any leading size S, pads S to a multiple of the
    device count, runs the compiled program once, and returns numpy arrays
    with the padding dropped. It compiles once per padded input shape.

    Args:
      fn: ``fn(*args) -> outputs``, all leaves ``[S, ...]``.
      mesh: the mesh (default :func:`seed_mesh` over every device).

    Returns:
      ``g(*args) -> outputs`` as numpy arrays ``[S, ...]``.
    """
    mesh = seed_mesh() if mesh is None else mesh
    sharding = seed_sharding(mesh)
    compiled = jax.jit(fn, in_shardings=sharding, out_shardings=sharding)

    def call(*args):
        leaves = jax.tree.leaves(args)
        if not leaves:
            raise ValueError("shard_over_seeds needs at least one array argument.")
        n = np.shape(leaves[0])[0]
        args = shard_leading(pad_leading(to_host(args), padded_size(n, mesh)), mesh)
        return unpad_leading(to_host(compiled(*args)), n)

    call.mesh = mesh  # type: ignore[attr-defined]
    return call
