r"""Training any cell on a :mod:`rnnlab.tasks` problem, several seeds in one program.

The model is a cell followed by a linear readout, applied to the output of
each sequence's last valid step (per-sequence tasks) or to every step's
output (per-step tasks):

.. math:: \hat y = y_{t^*} W + b, \qquad (c_t, y_t) = \mathrm{step}(\theta, c_{t-1}, x_t).

One training step samples a fresh batch from the task, takes the gradient of
the task's loss, logs the loss, the global gradient norm (before clipping) and
the parameter norm (both scaled, :func:`global_norm`: finite whenever the
entries are), and applies an optax update (optionally after
:func:`clip_by_global_norm`). Seeds are a leading axis: :func:`make_train_fns`
returns functions that are ``jax.vmap``-ed over it, so S seeds train in one
compiled program. Everything random is a pure function of ``(seed, step)``::

    k_params, k_data, k_eval = jax.random.split(jax.random.key(seed), 3)
    batch_at_step = task.sample(jax.random.fold_in(k_data, step), B, T)

so a run resumed from a checkpoint sees exactly the data an uninterrupted run
sees, and reaches the same numbers. A cell from :mod:`rnnlab.transforms`
(zoneout, variational dropout; its carry a :class:`~rnnlab.transforms.TransformCarry`)
trains with its transform on: each step's carry is drawn with
``jax.random.fold_in(transform_key(seed), step)``; evaluation passes no key
(dropout off, zoneout its expectation). A seed whose loss, gradient or updated
parameters become non-finite is frozen at its last finite parameters and
flagged ``diverged`` with the step; the other seeds carry on, computing exactly
what they would without it. Its history holds the non-finite values of that
step and NaN afterwards (it no longer trains); :func:`divergence_reports`
turns the flags into readable records.

The seed axis is split across every visible device with ``jax.sharding``
(:mod:`rnnlab.distributed`): :func:`train` pads the seeds to a multiple of the
device count, places the state with ``NamedSharding(mesh, P("seeds"))`` and runs
the jitted chunks partitioned over the mesh; on one device this is the plain
single-device program.

Example::

    cfg = rnnlab.train.TrainConfig(seq_len=50, learning_rate=1e-3, clip_norm=1.0)
    state, history = rnnlab.train.train(rnnlab.lstm(64), rnnlab.tasks.get("adding"),
                                        cfg, seeds=(0, 1, 2), num_steps=2000)
    history["loss"].shape   # (3, 2000)   [S, steps]
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnlab import distributed, initializers
from rnnlab.cell import Array, Params
from rnnlab.sequence import scan
from rnnlab.tasks import Batch, Task
from rnnlab.transforms import TransformCarry
from rnnlab.validation import add_bias, check_cell

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": optax.adam,
    "adamw": optax.adamw,
    "rmsprop": optax.rmsprop,
    "sgd": optax.sgd,
}

HISTORY_KEYS = ("loss", "grad_norm", "param_norm")

SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (per seed).

    Attributes:
      seq_len: T, passed to ``task.sample``.
      batch_size: sequences per step.
      optimizer: a key of :data:`OPTIMIZERS` (``adam``, ``adamw``, ``rmsprop``, ``sgd``).
      learning_rate: the optimizer's step size.
      clip_norm: :func:`clip_by_global_norm` threshold (optax's, with a scaled
        norm), or None for no clipping.
      eval_batch_size: fresh sequences for :func:`evaluate`-style scoring; for a
        task with a fixed held-out set (``task.evaluation``, e.g.
        :func:`rnnlab.tasks.from_arrays`) the whole set is scored, this many
        sequences at a time.
      unroll: passed to ``jax.lax.scan`` over time.
      schedule: ``"constant"`` (the default) or ``"cosine"``: the learning rate
        decays from ``learning_rate`` to 0 over ``decay_steps`` steps
        (``optax.cosine_decay_schedule``).
      decay_steps: the cosine schedule's length (usually the run's number of
        steps); required by ``schedule="cosine"``.
    """

    seq_len: int = 100
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    clip_norm: float | None = 1.0
    eval_batch_size: int = 512
    unroll: int = 1
    schedule: str = "constant"
    decay_steps: int | None = None

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {tuple(OPTIMIZERS)}; received {self.optimizer!r}."
            )
        for name in ("seq_len", "batch_size", "eval_batch_size", "unroll"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int; received {v!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0; received {self.learning_rate!r}.")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0 or None; received {self.clip_norm!r}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}; received {self.schedule!r}.")
        d = self.decay_steps
        if self.schedule == "cosine" and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
            raise ValueError(
                f"decay_steps must be a positive int when schedule='cosine'; received {d!r}."
            )


class Readout(NamedTuple):
    W: Array  # [H, O]
    b: Array  # [O]


class ModelParams(NamedTuple):
    cell: Params  # the cell's own params
    readout: Readout


def apply_readout(
    readout: Readout, ys: Array, *, per_step: bool, lengths: Array | None = None
) -> Array:
    r"""The model's outputs from the cell's: :math:`\hat y = y_{t^*} W + b`.

    Args:
      readout: the linear readout.
      ys: ``[T, B, H]``, the cell's output at every step.
      per_step: a per-step task (every step is read) or a per-sequence one
        (only the last valid step ``t^* = lengths - 1``, or ``T - 1``).
      lengths: ``[B]`` valid lengths of right-padded sequences, or None.

    Returns:
      ``[B, O]`` (per sequence) or ``[T, B, O]`` (per step).
    """
    if not per_step:
        if lengths is None:
            ys = ys[-1]
        else:
            idx = (lengths - 1)[None, :, None]  # [1, B, 1]
            ys = jnp.take_along_axis(ys, idx, axis=0)[0]  # [B, H]
    return add_bias(ys @ readout.W, readout.b)


class TrainState(NamedTuple):
    """Everything a run needs to continue; every leaf has a leading seed axis [S, ...]
    when produced by :class:`TrainFns`.

    Attributes:
      params: :class:`ModelParams`.
      opt_state: the optax state.
      step: int32, steps taken.
      diverged: bool, whether a non-finite loss, gradient entry or update was
        met (then the params are frozen at their last finite value); a huge
        but finite gradient is not divergence.
      diverged_step: int32, the step at which that happened, -1 if never.
    """

    params: ModelParams
    opt_state: Any
    step: Array
    diverged: Array
    diverged_step: Array


class TrainFns(NamedTuple):
    """Compiled functions for one (cell, task, config), all vmapped over seeds.

    Attributes:
      init: ``init(seeds [S] int) -> TrainState``, stacked over seeds (runs eagerly).
      train_chunk: ``train_chunk(state, seeds, num_steps) -> (state, logs)`` with
        ``logs[k] [S, num_steps]`` for ``k`` in :data:`HISTORY_KEYS`; jitted,
        ``num_steps`` static.
      evaluate: ``evaluate(params, seeds) -> dict`` of ``[S]`` arrays ``loss``,
        ``metric``, ``success`` on ``cfg.eval_batch_size`` fresh sequences, or on
        the task's fixed held-out set ``task.evaluation`` when it has one.
      apply: ``apply(params, inputs, lengths=None, key=None) -> outputs`` for one
        seed; ``key`` reaches a transformed cell's ``initial_carry`` (None: off).
      optimizer: the optax transformation.
      mesh: the one-axis ``("seeds",)`` device mesh ``train_chunk`` and
        ``evaluate`` are partitioned over; their ``[S, ...]`` inputs need S a
        multiple of its device count (:func:`train` and :func:`evaluate` pad).
    """

    init: Callable[[Array], TrainState]
    train_chunk: Callable[[TrainState, Array, int], tuple[TrainState, dict]]
    evaluate: Callable[[ModelParams, Array], dict]
    apply: Callable[..., Array]
    optimizer: optax.GradientTransformation
    mesh: Any = None


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """``optax.chain(clip_by_global_norm(cfg.clip_norm), OPTIMIZERS[cfg.optimizer](lr))``,
    ``lr`` a constant or a cosine schedule (``cfg.schedule``)."""
    lr = cfg.learning_rate
    if cfg.schedule == "cosine":
        lr = optax.cosine_decay_schedule(cfg.learning_rate, cfg.decay_steps)
    opt = OPTIMIZERS[cfg.optimizer](lr)
    if cfg.clip_norm is None:
        return opt
    return optax.chain(clip_by_global_norm(cfg.clip_norm), opt)


def global_norm(tree: Any) -> Array:
    r"""The 2-norm of all of a pytree's entries together, taken scaled.

    :math:`m \, (\sum_i (x_i / m)^2)^{1/2}` with :math:`m = \max_i |x_i|`: finite
    whenever the entries are and the norm is representable (``optax.tree.norm``
    squares first and returns ``inf`` once the norm passes ~1.8e19 in float32,
    with every entry finite), 0 for zeros, ``inf``/NaN if an entry is.
    """
    leaves = [jnp.abs(x) for x in jax.tree.leaves(tree)]
    if not leaves:
        return jnp.zeros((), jnp.float32)
    m = jnp.max(jnp.stack([jnp.max(x) for x in leaves]))
    usable = (m > 0) & jnp.isfinite(m)
    safe = jnp.where(usable, m, 1.0)
    total = sum(jnp.sum(jnp.square(x / safe.astype(x.dtype))) for x in leaves)
    return jnp.where(usable, m * jnp.sqrt(total), m)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """``optax.clip_by_global_norm`` with the norm of :func:`global_norm`.

    Updates whose global norm exceeds ``max_norm`` are rescaled to norm
    ``max_norm``, computed as ``(g / m) * (max_norm / ||g / m||)`` so that a huge
    but finite gradient is clipped, not turned into zeros (optax's norm of such
    a gradient is ``inf``, its scale ``max_norm / inf = 0``). Non-finite entries
    stay non-finite, for the divergence test to see.
    """

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        leaves = [jnp.abs(x) for x in jax.tree.leaves(updates)]
        if not leaves:
            return updates, state
        m = jnp.max(jnp.stack([jnp.max(x) for x in leaves]))
        safe = jnp.where((m > 0) & jnp.isfinite(m), m, 1.0)
        scaled_norm = jnp.sqrt(sum(jnp.sum(jnp.square(x / safe.astype(x.dtype)))
                                   for x in leaves))
        clip = m * scaled_norm > max_norm  # False for a zero (or NaN) norm
        factor = jnp.where(clip, max_norm / jnp.where(clip, scaled_norm, 1.0), 1.0)
        updates = jax.tree.map(
            lambda g: jnp.where(clip, (g / safe.astype(g.dtype)) * factor.astype(g.dtype), g),
            updates)
        return updates, state

    return optax.GradientTransformation(init, update)


def seed_keys(seed: Array) -> tuple[Array, Array, Array]:
    """``(k_params, k_data, k_eval)`` for one integer seed."""
    k_params, k_data, k_eval = jax.random.split(jax.random.key(seed), 3)
    return k_params, k_data, k_eval


def transform_key(seed: Array) -> Array:
    """The key of a transformed cell's masks for one integer seed (step ``s`` uses
    ``fold_in(transform_key(seed), s)``): the fourth of ``split(key(seed), 4)``, whose
    first three are :func:`seed_keys`' (threefry is partitionable), so no key is reused."""
    return jax.random.split(jax.random.key(seed), 4)[3]


def draws_carry_key(cell: Any, input_size: int) -> bool:
    """Whether :func:`make_train_fns` passes ``cell.initial_carry`` a key in training:
    the cell's carry is a :class:`rnnlab.transforms.TransformCarry`."""
    params = jax.eval_shape(lambda k: cell.init(k, input_size), jax.random.key(0))
    carry = jax.eval_shape(lambda p: cell.initial_carry(p, ()), params)
    return isinstance(carry, TransformCarry)


def make_train_fns(
    cell: Any, task: Task, cfg: TrainConfig, *, devices: Sequence[Any] | None = None
) -> TrainFns:
    """Builds the model, its pure train step and evaluation, vmapped over seeds.

    ``train_chunk`` and ``evaluate`` are jitted with ``in_shardings`` and
    ``out_shardings`` ``NamedSharding(mesh, P("seeds"))``, so their vmapped
    programs are partitioned along the seed axis across ``devices``.

    Args:
      cell: any object with the Cell protocol.
      task: a :class:`rnnlab.tasks.Task`.
      cfg: the :class:`TrainConfig`.
      devices: the devices to split the seeds across (default: all of
        ``jax.devices()``, every host's).

    Returns:
      :class:`TrainFns`.

    Raises:
      ValueError: ``cfg.seq_len`` is too short for ``task`` (checked here, not
        at the first step).
    """
    check_cell(cell)
    if cfg.seq_len < max(2, task.min_T):
        raise ValueError(
            f"seq_len (T) must be >= {max(2, task.min_T)} for task {task.name!r}; "
            f"received {cfg.seq_len}."
        )
    optimizer = make_optimizer(cfg)
    keyed = draws_carry_key(cell, task.input_size)
    readout_init = initializers.get("lecun_normal")

    def init_params(key: Array) -> ModelParams:
        k_cell, k_out = jax.random.split(key)
        cell_params = cell.init(k_cell, task.input_size)
        x = jnp.zeros((task.input_size,), jnp.float32)
        y = jax.eval_shape(lambda p: cell.step(p, cell.initial_carry(p, ()), x)[1], cell_params)
        hidden = y.shape[-1]
        readout = Readout(
            W=readout_init(k_out, (hidden, task.output_size), jnp.float32),
            b=jnp.zeros((task.output_size,), jnp.float32),
        )
        return ModelParams(cell_params, readout)

    def apply(params: ModelParams, inputs: Array, lengths: Array | None = None,
              key: Array | None = None) -> Array:
        """``inputs [T, B, F] -> outputs [B, O]`` (per sequence) or ``[T, B, O]`` (per step);
        ``key`` turns a transformed cell's transform on (None: off)."""
        carry = None if key is None else cell.initial_carry(params.cell, inputs.shape[1:-1],
                                                            key=key)
        _, ys = scan(cell, params.cell, inputs, carry=carry, lengths=lengths,
                     unroll=cfg.unroll)  # [T, B, H]
        return apply_readout(params.readout, ys, per_step=task.per_step, lengths=lengths)

    def loss_fn(params: ModelParams, batch: Batch, key: Array | None) -> Array:
        return task.loss(apply(params, batch.inputs, batch.lengths, key), batch)

    def init_one(seed: Array) -> TrainState:
        k_params, _, _ = seed_keys(seed)
        params = init_params(k_params)
        return TrainState(
            params=params,
            opt_state=optimizer.init(params),
            step=jnp.zeros((), jnp.int32),
            diverged=jnp.zeros((), bool),
            diverged_step=jnp.full((), -1, jnp.int32),
        )

    def step_one(state: TrainState, k_data: Array,
                 k_transform: Array | None) -> tuple[TrainState, dict]:
        batch = task.sample(jax.random.fold_in(k_data, state.step), cfg.batch_size, cfg.seq_len)
        k_carry = None if k_transform is None else jax.random.fold_in(k_transform, state.step)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, k_carry)
        grad_norm = global_norm(grads)  # before clipping; finite when every entry is
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # Diverged: a non-finite loss, gradient entry, update entry or updated parameter.
        finite = jnp.isfinite(loss) & jnp.all(jnp.array(
            [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves((grads, updates, params))]))
        keep = finite & ~state.diverged
        # A diverged seed is frozen at its last finite params, so NaNs never spread.
        params, opt_state = jax.tree.map(
            lambda new, old: jnp.where(keep, new, old),
            (params, opt_state), (state.params, state.opt_state),
        )
        newly = ~finite & ~state.diverged
        new_state = TrainState(
            params=params,
            opt_state=opt_state,
            step=state.step + 1,
            diverged=state.diverged | ~finite,
            diverged_step=jnp.where(newly, state.step, state.diverged_step),
        )
        logs = {"loss": loss, "grad_norm": grad_norm, "param_norm": global_norm(params)}
        # A frozen seed no longer trains: NaN keeps its later history from
        # passing for training progress (the step it diverged at is kept).
        logs = {k: jnp.where(state.diverged, jnp.nan, v) for k, v in logs.items()}
        return new_state, logs

    def chunk_one(state: TrainState, seed: Array, num_steps: int):
        _, k_data, _ = seed_keys(seed)
        k_transform = transform_key(seed) if keyed else None
        state, logs = jax.lax.scan(lambda s, _: step_one(s, k_data, k_transform), state, None,
                                   length=num_steps)
        return state, logs  # logs[k]: [num_steps]

    def evaluate_one(params: ModelParams, seed: Array) -> dict:
        if task.evaluation is not None:  # a fixed held-out set: score all of it
            batch = task.evaluation
            outputs = _apply_in_chunks(apply, params, batch, cfg.eval_batch_size, task.per_step)
        else:
            _, _, k_eval = seed_keys(seed)
            batch = task.sample(k_eval, cfg.eval_batch_size, cfg.seq_len)
            outputs = apply(params, batch.inputs, batch.lengths)
        return {
            "loss": task.loss(outputs, batch),
            "metric": task.metric(outputs, batch),
            "success": task.success(outputs, batch),
        }

    def init(seeds: Array) -> TrainState:
        # Eager, one seed at a time: compiling an init (the QR of orthogonal
        # initialisers above all) under jit costs seconds; eager ops are cached.
        states = [init_one(int(s)) for s in np.asarray(seeds)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *states)

    mesh = distributed.seed_mesh(devices)
    by_seed = distributed.seed_sharding(mesh)
    train_chunk = jax.jit(
        jax.vmap(chunk_one, in_axes=(0, 0, None)), static_argnums=2,
        in_shardings=(by_seed, by_seed), out_shardings=by_seed,
    )
    evaluate = jax.jit(jax.vmap(evaluate_one), in_shardings=by_seed, out_shardings=by_seed)
    return TrainFns(init, train_chunk, evaluate, apply, optimizer, mesh)


def _apply_in_chunks(apply, params, batch: Batch, chunk: int, per_step: bool) -> Array:
    """``apply`` over a whole time-major batch, ``chunk`` sequences at a time (``lax.map``),
    so a large held-out set never holds every sequence's hidden states at once."""
    n = batch.inputs.shape[1]
    chunk = min(chunk, n)
    pad = -n % chunk
    inputs = jnp.pad(batch.inputs, ((0, 0), (0, pad), (0, 0)))  # [T, n + pad, F]
    lengths = None if batch.lengths is None else jnp.pad(batch.lengths, (0, pad),
                                                         constant_values=1)
    k = (n + pad) // chunk
    xs = jnp.moveaxis(inputs.reshape(inputs.shape[0], k, chunk, -1), 1, 0)  # [k, T, chunk, F]
    ls = None if lengths is None else lengths.reshape(k, chunk)
    out = jax.lax.map(lambda a: apply(params, a[0], a[1]), (xs, ls))
    if per_step:  # [k, T, chunk, O] -> [T, n, O]
        out = jnp.moveaxis(out, 0, 1).reshape(out.shape[1], k * chunk, -1)
        return out[:, :n]
    return out.reshape(k * chunk, -1)[:n]  # [k, chunk, O] -> [n, O]


# ----------------------------------------------------------------------------- driver


class TrainInterrupted(Exception):
    """Raised by a ``callback`` to stop :func:`train` after a checkpoint (as a kill would)."""


def _check_seeds(seeds: Sequence[int]) -> np.ndarray:
    seeds = np.asarray(seeds)
    if seeds.ndim != 1 or seeds.size == 0 or not np.issubdtype(seeds.dtype, np.integer):
        raise ValueError(f"seeds must be a non-empty sequence of ints; received {seeds!r}.")
    if len(set(seeds.tolist())) != seeds.size:
        raise ValueError(f"seeds must be distinct; received {seeds.tolist()}.")
    return seeds.astype(np.int32)


def train(
    cell: Any,
    task: Task,
    cfg: TrainConfig,
    seeds: Sequence[int],
    num_steps: int,
    *,
    chunk_size: int = 100,
    checkpoint_dir: str | Path | None = None,
    callback: Callable[[int, TrainState, dict], None] | None = None,
    fns: TrainFns | None = None,
) -> tuple[TrainState, dict]:
    """Trains ``len(seeds)`` models in one vmapped program for ``num_steps`` steps.

    Steps run in jitted chunks of ``chunk_size`` (a ``lax.scan`` over steps).
    Chunk boundaries are multiples of ``chunk_size`` from step 0, so an
    interrupted and resumed run executes the same compiled chunks as an
    uninterrupted one.

    Args:
      cell: any Cell.
      task: a :class:`rnnlab.tasks.Task`.
      cfg: the :class:`TrainConfig`.
      seeds: S distinct ints; seed ``s`` gives the init, data and eval keys.
      num_steps: total steps (>= 0).
      chunk_size: steps per compiled chunk, and the checkpoint interval.
      checkpoint_dir: if given, the state and the history so far are saved
        there with orbax after every chunk, and a run finding a checkpoint
        there resumes from it. The checkpoint holds the S real seeds only (no
        device padding), so a run may resume on a different number of devices.
      callback: ``callback(step, state, history)`` after each chunk (and its
        checkpoint); e.g. a progress bar. ``state`` is the device state, sharded
        over ``fns.mesh`` (leading axis S). Raising :class:`TrainInterrupted`
        stops the run, leaving the checkpoint.
      fns: reuse already built :class:`TrainFns` for this (cell, task, cfg) (saves
        a compile); ``cell`` may then be None.

    Returns:
      ``(state, history)``: the final :class:`TrainState` (leaves ``[S, ...]``,
      gathered from the devices) and ``history[k]`` numpy ``[S, num_steps]``
      for ``k`` in :data:`HISTORY_KEYS`.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be an int >= 0; received {num_steps!r}.")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; received {chunk_size!r}.")
    seeds_np = _check_seeds(seeds)
    fns = fns or make_train_fns(cell, task, cfg)
    num_seeds = seeds_np.size
    state = fns.init(jnp.asarray(seeds_np))
    history = {k: np.full((num_seeds, num_steps), np.nan, np.float32) for k in HISTORY_KEYS}

    manager = None
    if checkpoint_dir is not None:
        manager = _checkpoint_manager(checkpoint_dir)
        latest = manager.latest_step()
        if latest is not None:
            state, history = _restore(manager, latest, state, history)

    mesh = fns.mesh if fns.mesh is not None else distributed.seed_mesh()
    size = distributed.padded_size(num_seeds, mesh)

    def to_devices(tree):
        return distributed.shard_leading(distributed.pad_leading(tree, size), mesh)

    def real(tree):  # the S real seeds of a padded, sharded tree
        return tree if size == num_seeds else distributed.unpad_leading(tree, num_seeds)

    state = to_devices(distributed.to_host(state))
    seeds_dev = to_devices(seeds_np)
    step = int(distributed.to_host(state.step)[0])
    while step < num_steps:
        n = min(chunk_size - step % chunk_size, num_steps - step)
        state, logs = fns.train_chunk(state, seeds_dev, n)
        logs = distributed.unpad_leading(distributed.to_host(logs), num_seeds)
        for k in HISTORY_KEYS:
            history[k][:, step:step + n] = logs[k]
        step += n
        if manager is not None:
            _save(manager, step, distributed.unpad_leading(distributed.to_host(state), num_seeds),
                  history)
        if callback is not None:
            callback(step, real(state), history)
    if manager is not None:
        manager.close()
    final = distributed.unpad_leading(distributed.to_host(state), num_seeds)
    return jax.tree.map(jnp.asarray, final), history


def evaluate(fns: TrainFns, state: TrainState, seeds: Sequence[int]) -> dict[str, np.ndarray]:
    """Scores each seed's params on fresh sequences (or on ``task.evaluation``, the task's
    held-out set, when it has one): ``[S]`` arrays ``loss``, ``metric``,
    ``success``, plus ``diverged`` and ``diverged_step`` from the state."""
    seeds_np = _check_seeds(seeds)
    mesh = fns.mesh if fns.mesh is not None else distributed.seed_mesh()
    size = distributed.padded_size(seeds_np.size, mesh)
    params, seeds_dev = distributed.shard_leading(
        distributed.pad_leading(distributed.to_host((state.params, seeds_np)), size), mesh)
    out = fns.evaluate(params, seeds_dev)
    out = distributed.unpad_leading(distributed.to_host(out), seeds_np.size)
    out["diverged"] = np.asarray(distributed.to_host(state.diverged))
    out["diverged_step"] = np.asarray(distributed.to_host(state.diverged_step))
    return out


class DivergenceReport(NamedTuple):
    """One seed's divergence, as :func:`divergence_reports` finds it.

    Attributes:
      cell: the cell's name (as the caller knows it, e.g. its registry name).
      seed: the seed.
      step: the step at which its loss, gradient or updated parameters first
        became non-finite; its parameters are frozen at their values before
        that step's update (the last finite ones).
      loss_at_step: the loss at that step (maybe NaN/inf; None if not logged).
      last_finite_loss: the last finite training loss at or before ``step``
        (None if there was none).
      last_finite_step: the step of ``last_finite_loss`` (None if none).
    """

    cell: str
    seed: int
    step: int
    loss_at_step: float | None
    last_finite_loss: float | None
    last_finite_step: int | None

    def message(self) -> str:
        last = ("no finite loss before it" if self.last_finite_loss is None else
                f"last finite loss {self.last_finite_loss:.6g} at step {self.last_finite_step}")
        return (f"{self.cell}: seed {self.seed} diverged at step {self.step} (non-finite loss, "
                f"gradient or update; loss there {self.loss_at_step}); {last}; its parameters are "
                f"frozen at their last finite values and the other seeds trained on.")


def divergence_reports(
    state: TrainState, history: dict, seeds: Sequence[int], cell: str = "cell"
) -> list[DivergenceReport]:
    """A :class:`DivergenceReport` for each diverged seed of a :func:`train` result.

    Args:
      state: the final state (leaves ``[S, ...]``).
      history: ``history["loss"] [S, num_steps]`` from :func:`train`.
      seeds: the S seeds, in order.
      cell: a name for messages.

    Returns:
      One report per diverged seed, in seed order (empty if none diverged).
    """
    diverged = np.asarray(distributed.to_host(state.diverged))
    at = np.asarray(distributed.to_host(state.diverged_step))
    loss = np.asarray(history["loss"])
    reports = []
    for i, seed in enumerate(_check_seeds(seeds).tolist()):
        if not diverged[i]:
            continue
        step = int(at[i])
        upto = loss[i, : step + 1]
        finite = np.flatnonzero(np.isfinite(upto))
        last = int(finite[-1]) if finite.size else None
        reports.append(DivergenceReport(
            cell=cell, seed=seed, step=step,
            loss_at_step=float(upto[step]) if step < loss.shape[1] else None,
            last_finite_loss=None if last is None else float(upto[last]),
            last_finite_step=last,
        ))
    return reports


def clear_checkpoints(checkpoint_dir: str | Path) -> None:
    """Removes a run's checkpoints (once its results are safely written)."""
    shutil.rmtree(checkpoint_dir, ignore_errors=True)


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_manager(directory: str | Path):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def _save(manager, step: int, state: TrainState, history: dict) -> None:
    import orbax.checkpoint as ocp

    manager.save(step, args=ocp.args.StandardSave({"state": state, "history": history}))
    manager.wait_until_finished()


def _restore(manager, step: int, state: TrainState, history: dict):
    import orbax.checkpoint as ocp

    target = {"state": state, "history": history}
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype if isinstance(
            x, np.ndarray) else x.dtype), target)
    try:
        restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises various types on a structure/shape mismatch
        raise ValueError(
            f"the checkpoint in {manager.directory} does not match this run (different cell, "
            f"seeds, num_steps or optimizer?); remove it or use another checkpoint_dir. "
            f"Orbax said: {e}"
        ) from e
    state = jax.tree.unflatten(
        jax.tree.structure(state), [jnp.asarray(x) for x in jax.tree.leaves(restored["state"])]
    )
    history = {k: np.array(restored["history"][k]) for k in HISTORY_KEYS}
    return state, history
