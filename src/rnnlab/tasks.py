r"""Problems to train on: synthetic long-range dependency tasks generated on device,
and :func:`from_arrays`, a task made of your own arrays (real data sets:
:mod:`rnnlab.datasets`).

Each problem is a :class:`Task`: a description (sizes, loss kind, the
memoryless baseline and the success criterion) plus pure functions that make a
batch from a PRNG key and score a model's outputs. Batches are time-major, so
``rnnlab.scan(cell, params, batch.inputs)`` reads them directly::

    task = rnnlab.tasks.get("adding")
    batch = task.sample(jax.random.key(0), batch_size=32, T=100)
    batch.inputs.shape            # (100, 32, 2)   [T, B, F]
    task.baseline(100)            # 0.1667 = 1/6: the MSE of always answering 1

``sample`` is jitted with ``batch_size`` and ``T`` static, so a training step
that calls it inside its own ``jit`` generates its data on device.

Output conventions, shared by ``loss``, ``metric`` and ``success``:

- per-sequence tasks (``per_step=False``): ``outputs [B, output_size]``, the
  readout of each sequence's last valid step;
- per-step tasks (``per_step=True``): ``outputs [T, B, output_size]``.

Regression tasks have ``output_size == 1``; classification tasks output logits.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array


class Batch(NamedTuple):
    """One batch of a task, time-major.

    Attributes:
      inputs: ``[T_total, B, F]`` float32 (``T_total`` is the task's
        :meth:`Task.total_length` for the requested ``T``).
      targets: ``[B]`` float32 (sequence regression), ``[B]`` int32 (sequence
        classification) or ``[T_total, B]`` int32 (per-step classification).
      lengths: ``[B]`` int32 valid lengths of right-padded sequences, or None
        when every sequence fills ``T_total``.
    """

    inputs: Array
    targets: Array
    lengths: Array | None = None


class Task(NamedTuple):
    """A synthetic problem: what it is, how to sample it, how to score it.

    Attributes:
      name: registry key.
      description: one line.
      input_size: F, features per step.
      output_size: 1 for regression, the number of classes for classification.
      loss_kind: ``"mse"`` or ``"cross_entropy"``.
      per_step: targets at every step (True) or one per sequence (False).
      min_T: the smallest ``T`` the task is defined for.
      total_length: ``total_length(T) -> int``, the time axis of ``inputs``.
      baseline: ``baseline(T) -> float``, the value of ``metric`` reached by the
        best memoryless (input-ignoring or marker-ignoring) predictor.
      baseline_formula: that value's formula, for tables and plots.
      metric_name: what ``metric`` measures (e.g. ``"mse"``, ``"accuracy"``).
      higher_is_better: direction of ``metric``.
      success_criterion: the rule ``success`` applies, in words.
      sample: ``sample(key, batch_size, T) -> Batch``.
      loss: ``loss(outputs, batch) -> scalar``, the training objective.
      metric: ``metric(outputs, batch) -> scalar``, comparable to ``baseline``.
      success: ``success(outputs, batch) -> bool scalar``, whether the batch is
        solved by the criterion above.
      references: the papers the task comes from.
      evaluation: a fixed held-out :class:`Batch` (time-major, every sequence of
        the test split) that :mod:`rnnlab.train` scores instead of sampling
        fresh sequences, or None for synthetic tasks (see :func:`from_arrays`).
    """

    name: str
    description: str
    input_size: int
    output_size: int
    loss_kind: str
    per_step: bool
    min_T: int
    total_length: Callable[[int], int]
    baseline: Callable[[int], float]
    baseline_formula: str
    metric_name: str
    higher_is_better: bool
    success_criterion: str
    sample: Callable[[Array, int, int], Batch]
    loss: Callable[[Array, Batch], Array]
    metric: Callable[[Array, Batch], Array]
    success: Callable[[Array, Batch], Array]
    references: str = ""
    evaluation: Batch | None = None

    def improves_on_baseline(self, value: float, T: int, margin: float = 0.1) -> bool:
        """Whether ``value`` beats ``baseline(T)`` by more than ``margin`` (relative)."""
        b = self.baseline(T)
        return value > b * (1 + margin) if self.higher_is_better else value < b * (1 - margin)


# ----------------------------------------------------------------------------- helpers


def _check_sample_args(task_name: str, batch_size, T, min_T: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; received {batch_size!r}.")
    if isinstance(T, bool) or not isinstance(T, int) or T < max(2, min_T):
        raise ValueError(
            f"T must be an int >= {max(2, min_T)} for task {task_name!r}; received {T!r}."
        )


def _validated(task_name: str, min_T: int, generate: Callable[[Array, int, int], Batch]):
    """Jits ``generate`` with static sizes and checks the sizes first (free: they are ints)."""
    jitted = jax.jit(generate, static_argnums=(1, 2))

    @functools.wraps(generate)
    def sample(key: Array, batch_size: int, T: int) -> Batch:
        _check_sample_args(task_name, batch_size, T, min_T)
        return jitted(key, batch_size, T)

    return sample


def _mse(outputs: Array, batch: Batch) -> Array:
    return jnp.mean((outputs[..., 0] - batch.targets) ** 2)


def _cross_entropy(logits: Array, batch: Batch) -> Array:
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch.targets))


def _accuracy(logits: Array, batch: Batch) -> Array:
    return jnp.mean(jnp.argmax(logits, axis=-1) == batch.targets)


def _uniform_int(key: Array, shape: tuple[int, ...], low: Array | int, high: Array | int) -> Array:
    """Uniform integers in ``[low, high)`` with array-valued bounds."""
    u = jax.random.uniform(key, shape)
    return (low + jnp.floor(u * (high - low))).astype(jnp.int32)


# ------------------------------------------------------------------- adding (Le / Arjovsky)


def _adding_sample(key: Array, batch_size: int, T: int) -> Batch:
    k_val, k_first, k_second = jax.random.split(key, 3)
    half = T // 2
    values = jax.random.uniform(k_val, (T, batch_size))  # [T, B]
    first = jax.random.randint(k_first, (batch_size,), 0, half)  # [B]
    second = jax.random.randint(k_second, (batch_size,), half, T)  # [B]
    t = jnp.arange(T)[:, None]  # [T, 1]
    markers = ((t == first[None]) | (t == second[None])).astype(jnp.float32)  # [T, B]
    targets = jnp.sum(values * markers, axis=0)  # [B]
    inputs = jnp.stack([values, markers], axis=-1)  # [T, B, 2]
    return Batch(inputs, targets)


def adding() -> Task:
    r"""The adding problem in the form of Le et al. (2015) and Arjovsky et al. (2016).

    Each step carries two numbers: a value :math:`v_t \sim U[0, 1]` and a
    marker :math:`m_t \in \{0, 1\}`. Exactly two markers are 1, one at a
    uniformly random step of the first half (:math:`t_1 \in [0, \lfloor T/2
    \rfloor)`) and one of the second half (:math:`t_2 \in [\lfloor T/2
    \rfloor, T)`). The target, read after the last step, is

    .. math:: y = v_{t_1} + v_{t_2}.

    Baseline: answering the constant 1 (the best input-ignoring guess) gives
    :math:`\mathbb{E}(y - 1)^2 = \mathrm{Var}(v_{t_1} + v_{t_2}) = 2/12 = 1/6
    \approx 0.167`, the plateau on which a network that cannot carry the
    marked values across ~T/2 steps sits.

    Success (a convention of this library; the papers plot MSE curves):
    evaluation MSE < 0.01.

    Shapes: ``inputs [T, B, 2]`` (value, marker), ``targets [B]``; loss and
    metric are the MSE of ``outputs [B, 1]``.

    References:
      Le, Jaitly & Hinton, "A simple way to initialize recurrent networks of
      rectified linear units", arXiv:1504.00941, 2015.
      Arjovsky, Shah & Bengio, "Unitary evolution recurrent neural networks",
      ICML 2016.
    """
    return Task(
        name="adding",
        description="adding problem, U[0,1] values, one marker per half (Le 2015; Arjovsky 2016)",
        input_size=2,
        output_size=1,
        loss_kind="mse",
        per_step=False,
        min_T=2,
        total_length=lambda T: T,
        baseline=lambda T: 1.0 / 6.0,
        baseline_formula="Var(v1+v2) = 1/6 (always answer 1)",
        metric_name="mse",
        higher_is_better=False,
        success_criterion="evaluation MSE < 0.01",
        sample=_validated("adding", 2, _adding_sample),
        loss=_mse,
        metric=_mse,
        success=lambda outputs, batch: _mse(outputs, batch) < 0.01,
        references="Le et al. 2015; Arjovsky et al. 2016",
    )


# ----------------------------------------------------------------------------- adding (H&S 1997)


def _hs_total(T: int) -> int:
    return T + T // 10


def _hs_adding_sample(key: Array, batch_size: int, T: int) -> Batch:
    k_len, k_val, k_first, k_second = jax.random.split(key, 4)
    total = _hs_total(T)
    lengths = jax.random.randint(k_len, (batch_size,), T, total + 1)  # [B] in [T, T + T//10]
    values = jax.random.uniform(k_val, (total, batch_size), minval=-1.0, maxval=1.0)
    first = jax.random.randint(k_first, (batch_size,), 0, 10)  # one of the first ten pairs
    # The second marker: one of the first T/2 - 1 pairs that is not already marked.
    m = T // 2 - 1
    first_inside = first < m
    j = _uniform_int(k_second, (batch_size,), 0, m - first_inside.astype(jnp.int32))
    second = j + (first_inside & (j >= first)).astype(jnp.int32)
    t = jnp.arange(total)[:, None]  # [total, 1]
    marked = (t == first[None]) | (t == second[None])  # [total, B]
    ends = (t == 0) | (t == lengths[None] - 1)
    markers = jnp.where(marked, 1.0, jnp.where(ends, -1.0, 0.0))
    # "In the rare case where the first pair of the sequence gets marked, we set X1 to zero."
    values = jnp.where(marked & (t == 0), 0.0, values)
    valid = t < lengths[None]
    values = jnp.where(valid, values, 0.0)
    markers = jnp.where(valid, markers, 0.0)
    targets = 0.5 + jnp.sum(values * marked, axis=0) / 4.0  # [B]
    inputs = jnp.stack([values, markers], axis=-1).astype(jnp.float32)  # [total, B, 2]
    return Batch(inputs, targets.astype(jnp.float32), lengths.astype(jnp.int32))


def _hs_adding_baseline(T: int) -> float:
    m = T // 2 - 1
    p0 = 0.1 + 0.1 * sum(1.0 / (m - (i < m)) for i in range(1, 10))
    return (2.0 - p0) / 48.0


def _hs_adding_success(outputs: Array, batch: Batch) -> Array:
    correct = jnp.abs(outputs[..., 0] - batch.targets) < 0.04
    return jnp.mean(correct) >= 0.99


def adding_hs() -> Task:
    r"""The adding problem of Hochreiter & Schmidhuber (1997), Experiment 4.

    Each step is a pair: a value :math:`x_t \sim U[-1, 1]` and a marker in
    :math:`\{-1, 0, 1\}`. Sequence lengths are drawn uniformly from
    :math:`[T, T + \lfloor T/10 \rfloor]`. Exactly two pairs are marked with 1:
    first one of the first ten pairs (value :math:`X_1`), then one of the first
    :math:`T/2 - 1` pairs not yet marked (value :math:`X_2`). All other markers
    are 0 except those of the first and the last pair, which are -1 (unless
    marked). If the first pair is marked its value is set to zero. The target,
    read at the sequence end, is

    .. math:: y = 0.5 + \frac{X_1 + X_2}{4} \in [0, 1].

    A sequence is *processed correctly* if :math:`|\hat y - y| < 0.04`.

    Shorter sequences are right-padded with zeros to ``T + T//10`` steps and
    carry ``lengths``; the model must read its output at step ``lengths - 1``
    (``rnnlab.train`` does).

    Baseline: the constant 0.5 (the mean target) has MSE
    :math:`\mathbb{E}(X_1+X_2)^2/16 = (2 - p_0)/48`, where each non-zeroed value
    contributes :math:`\mathrm{Var}\,U[-1,1] = 1/3` and :math:`p_0` is the
    probability that a marked pair is the first pair (then its value is
    zero): :math:`p_0 = \tfrac{1}{10} + \tfrac{1}{10}\sum_{i=1}^{9} 1/(m - [i < m])`
    with :math:`m = \lfloor T/2 \rfloor - 1`, e.g. :math:`p_0 \approx 0.119`
    and MSE :math:`\approx 0.0392` for :math:`T = 100` (close to the
    :math:`1/24 \approx 0.042` of never zeroing).

    Success: at least 99% of the evaluation sequences processed correctly. (The
    paper stops training when the average training error is below 0.01 and
    the 2000 most recent sequences were all processed correctly.)

    Shapes: ``inputs [T + T//10, B, 2]``, ``targets [B]``, ``lengths [B]``;
    loss and metric are the MSE of ``outputs [B, 1]``.

    References:
      Hochreiter & Schmidhuber, "Long short-term memory", Neural Computation
      9(8), 1997, Section 5.4 (Experiment 4).
    """
    return Task(
        name="adding-hs",
        description="adding problem, U[-1,1] values, target 0.5+(X1+X2)/4 (H&S 1997 Exp. 4)",
        input_size=2,
        output_size=1,
        loss_kind="mse",
        per_step=False,
        min_T=20,
        total_length=_hs_total,
        baseline=_hs_adding_baseline,
        baseline_formula="(2 - p0)/48 ~ 1/24 (always answer 0.5)",
        metric_name="mse",
        higher_is_better=False,
        success_criterion=">= 99% of evaluation sequences with |error| < 0.04",
        sample=_validated("adding-hs", 20, _hs_adding_sample),
        loss=_mse,
        metric=_mse,
        success=_hs_adding_success,
        references="Hochreiter & Schmidhuber 1997, Exp. 4",
    )


# ----------------------------------------------------------------------------- copy memory


COPY_SYMBOLS = 10  # symbols to remember
COPY_CATEGORIES = 8  # symbols are drawn from {1, ..., 8}
_BLANK, _DELIMITER = 0, COPY_CATEGORIES + 1


def _copy_sample(key: Array, batch_size: int, T: int) -> Batch:
    n = COPY_SYMBOLS
    symbols = jax.random.randint(key, (n, batch_size), 1, COPY_CATEGORIES + 1)  # [10, B]
    blanks = jnp.full((T - 1, batch_size), _BLANK, jnp.int32)
    delimiter = jnp.full((1, batch_size), _DELIMITER, jnp.int32)
    tail = jnp.full((n, batch_size), _BLANK, jnp.int32)
    tokens = jnp.concatenate([symbols, blanks, delimiter, tail])  # [T + 20, B]
    targets = jnp.concatenate([jnp.full((T + n, batch_size), _BLANK, jnp.int32), symbols])
    inputs = jax.nn.one_hot(tokens, COPY_CATEGORIES + 2, dtype=jnp.float32)  # [T + 20, B, 10]
    return Batch(inputs, targets)


def _copy_recall_accuracy(logits: Array, batch: Batch) -> Array:
    n = COPY_SYMBOLS
    return jnp.mean(jnp.argmax(logits[-n:], axis=-1) == batch.targets[-n:])


def copy_memory() -> Task:
    r"""The copy-memory problem of Arjovsky et al. (2016).

    A sequence of length :math:`T + 20` over 10 tokens (0 blank, 1-8 symbols,
    9 delimiter): 10 symbols drawn uniformly from 1-8, then :math:`T - 1`
    blanks, the delimiter, and 10 blanks. The target is blank for the first
    :math:`T + 10` steps and then the 10 symbols in order. Inputs are one-hot
    (10 features); outputs are logits over 9 classes (blank and 1-8).

    Baseline: a memoryless network that answers blank until the delimiter and
    then the uniform distribution over the 8 symbols has mean cross-entropy

    .. math:: \frac{10 \ln 8}{T + 20}

    per step (averaged over all :math:`T + 20` steps, as in the paper).

    Success (a convention of this library): at least 99% of the recalled
    symbols correct (argmax over the last 10 steps).

    Shapes: ``inputs [T + 20, B, 10]``, ``targets [T + 20, B]`` int32; loss
    and metric are the mean cross-entropy of ``outputs [T + 20, B, 9]``.

    References:
      Arjovsky, Shah & Bengio, "Unitary evolution recurrent neural networks",
      ICML 2016, Section 4.1. (Hochreiter & Schmidhuber 1997 introduced the
      long-delay recall setting.)
    """
    return Task(
        name="copy",
        description="copy memory: recall 10 symbols from 8 after T blanks (Arjovsky 2016)",
        input_size=COPY_CATEGORIES + 2,
        output_size=COPY_CATEGORIES + 1,
        loss_kind="cross_entropy",
        per_step=True,
        min_T=2,
        total_length=lambda T: T + 2 * COPY_SYMBOLS,
        baseline=lambda T: COPY_SYMBOLS * math.log(COPY_CATEGORIES) / (T + 2 * COPY_SYMBOLS),
        baseline_formula="10 ln 8 / (T + 20)",
        metric_name="cross_entropy",
        higher_is_better=False,
        success_criterion=">= 99% of recalled symbols correct",
        sample=_validated("copy", 2, _copy_sample),
        loss=_cross_entropy,
        metric=_cross_entropy,
        success=lambda logits, batch: _copy_recall_accuracy(logits, batch) >= 0.99,
        references="Arjovsky et al. 2016",
    )


# ----------------------------------------------------------------------------- temporal order


# Alphabet of Experiment 6a: a b c d (distractors), B (end), E (start), X Y (relevant).
_TO_A, _TO_B, _TO_E, _TO_X = 0, 4, 5, 6
TEMPORAL_ORDER_ALPHABET = ("a", "b", "c", "d", "B", "E", "X", "Y")
TEMPORAL_ORDER_CLASSES = ("Q", "R", "S", "U")  # XX, XY, YX, YY


def _temporal_order_sample(key: Array, batch_size: int, T: int) -> Batch:
    k_len, k_dis, k_t1, k_t2, k_xy = jax.random.split(key, 5)
    total = _hs_total(T)
    lengths = jax.random.randint(k_len, (batch_size,), T, total + 1)  # [B] in [T, T + T//10]
    t1 = jax.random.randint(k_t1, (batch_size,), T // 10, T // 5 + 1)  # 10..20 for T = 100
    t2 = jax.random.randint(k_t2, (batch_size,), T // 2, T // 2 + T // 10 + 1)  # 50..60
    xy = jax.random.randint(k_xy, (2, batch_size), 0, 2)  # 0 = X, 1 = Y
    tokens = jax.random.randint(k_dis, (total, batch_size), _TO_A, _TO_A + 4)
    t = jnp.arange(total)[:, None]
    tokens = jnp.where(t == t1[None], _TO_X + xy[0][None], tokens)
    tokens = jnp.where(t == t2[None], _TO_X + xy[1][None], tokens)
    tokens = jnp.where(t == 0, _TO_E, tokens)
    tokens = jnp.where(t == lengths[None] - 1, _TO_B, tokens)
    inputs = jax.nn.one_hot(tokens, len(TEMPORAL_ORDER_ALPHABET), dtype=jnp.float32)
    inputs = jnp.where((t < lengths[None])[..., None], inputs, 0.0)
    targets = (2 * xy[0] + xy[1]).astype(jnp.int32)  # XX->Q, XY->R, YX->S, YY->U
    return Batch(inputs, targets, lengths.astype(jnp.int32))


def temporal_order() -> Task:
    r"""The temporal-order problem of Hochreiter & Schmidhuber (1997), Experiment 6a.

    Sequences over the alphabet {a, b, c, d, B, E, X, Y}, one-hot coded (8
    features). A sequence starts with E, ends with B (the trigger), and is
    otherwise random distractors from {a, b, c, d}, except at two steps
    :math:`t_1 \in [T/10, T/5]` and :math:`t_2 \in [T/2, T/2 + T/10]` which
    hold X or Y. Lengths are uniform in :math:`[T, T + T/10]`. With the
    paper's :math:`T = 100` this is exactly its setting: lengths 100-110,
    :math:`t_1 \in [10, 20]`, :math:`t_2 \in [50, 60]`. The class, read at the
    sequence end, is the temporal order of the two relevant symbols:

    .. math:: XX \to Q, \quad XY \to R, \quad YX \to S, \quad YY \to U.

    Baseline: a network that does not remember both symbols is at chance,
    25% accuracy (cross-entropy :math:`\ln 4`).

    Success: evaluation accuracy >= 99%. (The paper stops when the average
    training error is below 0.1 and the 2000 most recent sequences were
    classified correctly.)

    Shapes: ``inputs [T + T//10, B, 8]`` right-padded with zeros,
    ``targets [B]`` int32 in 0-3, ``lengths [B]``; the loss is the
    cross-entropy of ``outputs [B, 4]``, the metric its accuracy.

    References:
      Hochreiter & Schmidhuber, "Long short-term memory", Neural Computation
      9(8), 1997, Section 5.6 (Experiment 6a).
    """
    return Task(
        name="temporal-order",
        description="temporal order of X/Y at two far-apart steps, 4 classes (H&S 1997 Exp. 6a)",
        input_size=len(TEMPORAL_ORDER_ALPHABET),
        output_size=len(TEMPORAL_ORDER_CLASSES),
        loss_kind="cross_entropy",
        per_step=False,
        min_T=10,
        total_length=_hs_total,
        baseline=lambda T: 0.25,
        baseline_formula="chance = 1/4",
        metric_name="accuracy",
        higher_is_better=True,
        success_criterion="evaluation accuracy >= 0.99",
        sample=_validated("temporal-order", 10, _temporal_order_sample),
        loss=_cross_entropy,
        metric=_accuracy,
        success=lambda logits, batch: _accuracy(logits, batch) >= 0.99,
        references="Hochreiter & Schmidhuber 1997, Exp. 6a",
    )


# ----------------------------------------------------------------------------- your own arrays


KINDS = ("classification", "regression")


def pad_sequences(sequences, *, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads variable-length sequences with zeros into one array.

    Args:
      sequences: N arrays ``[T_i, F]`` (or ``[T_i]`` for one feature), ``T_i >= 1``.
      length: the padded length; default ``max(T_i)``.

    Returns:
      ``(x [N, length, F] float32, lengths [N] int32)``, ready for :func:`from_arrays`.
    """
    seqs = [np.asarray(s, np.float32) for s in sequences]
    if not seqs:
        raise ValueError("sequences must hold at least one sequence; received none.")
    seqs = [s[:, None] if s.ndim == 1 else s for s in seqs]
    bad = [i for i, s in enumerate(seqs) if s.ndim != 2 or s.shape[0] < 1]
    if bad:
        raise ValueError(f"sequences must be arrays [T_i >= 1, F]; sequence {bad[0]} has shape "
                         f"{seqs[bad[0]].shape}.")
    features = {s.shape[1] for s in seqs}
    if len(features) != 1:
        raise ValueError(f"sequences must share one feature count; received {sorted(features)}.")
    lengths = np.array([s.shape[0] for s in seqs], np.int32)
    length = int(lengths.max()) if length is None else length
    if lengths.max() > length:
        raise ValueError(f"length must be >= the longest sequence ({lengths.max()}); "
                         f"received {length}.")
    x = np.zeros((len(seqs), length, features.pop()), np.float32)
    for i, s in enumerate(seqs):
        x[i, : s.shape[0]] = s
    return x, lengths


def _check_x(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)) or \
            x.dtype == bool:
        raise TypeError(f"{name} must be a real numeric array; received dtype {x.dtype}.")
    if x.ndim == 2:  # [N, T]: one feature per step
        x = x[..., None]
    if x.ndim != 3 or min(x.shape) < 1:
        raise ValueError(f"{name} must be [N, T, F] (or [N, T] for one feature), batch-major, "
                         f"with N, T, F >= 1; received shape {x.shape}.")
    return x.astype(np.float32)


def _check_lengths(lengths, n: int, T: int, name: str) -> np.ndarray | None:
    if lengths is None:
        return None
    lengths = np.asarray(lengths)
    if lengths.shape != (n,) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"{name} must be [N] = [{n}] ints (one per sequence); received shape "
                         f"{lengths.shape}, dtype {lengths.dtype}.")
    if lengths.min() < 1 or lengths.max() > T:
        bad = int(np.flatnonzero((lengths < 1) | (lengths > T))[0])
        raise ValueError(f"{name} must lie in [1, T] = [1, {T}]; {name}[{bad}] = {lengths[bad]}.")
    return lengths.astype(np.int32)


def _valid_mask(n: int, T: int, lengths: np.ndarray | None) -> np.ndarray:
    if lengths is None:
        return np.ones((n, T), bool)
    return np.arange(T)[None, :] < lengths[:, None]  # [N, T]


def _check_finite_and_pad(x: np.ndarray, valid: np.ndarray, name: str) -> np.ndarray:
    bad = ~np.isfinite(x) & valid[..., None]
    if bad.any():
        i, t, f = (int(v[0]) for v in np.nonzero(bad))
        raise ValueError(f"{name} must be finite at every valid step; {name}[{i}, {t}, {f}] = "
                         f"{x[i, t, f]} ({int(bad.sum())} non-finite values in all).")
    # Padding is zeroed: a NaN there would reach the gradient through the masked branch.
    return np.where(valid[..., None], x, 0.0).astype(np.float32)


def _check_y(y, n: int, T: int, kind: str, per_step: bool, name: str) -> np.ndarray:
    y = np.asarray(y)
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise TypeError(f"{name} must be numeric; received dtype {y.dtype} (encode string "
                        "labels as ints, e.g. np.unique(y, return_inverse=True)[1]).")
    if y.shape[:1] != (n,):
        raise ValueError(f"{name} must have N = {n} entries along its first axis (one per "
                         f"sequence of the inputs); received shape {y.shape}.")
    if kind == "classification":
        expected = (n, T) if per_step else (n,)
        if y.shape != expected:
            raise ValueError(f"{name} must be [{', '.join(map(str, expected))}] class labels "
                             f"({'per step' if per_step else 'one per sequence'}); received "
                             f"shape {y.shape}.")
        if not np.issubdtype(y.dtype, np.integer):
            if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
                raise ValueError(f"{name} must hold integer class labels for classification; "
                                 f"received non-integer values of dtype {y.dtype}.")
        return y.astype(np.int64)
    if per_step and (y.ndim not in (2, 3) or y.shape[1] != T):
        raise ValueError(f"{name} must be [N, T] or [N, T, D] = [{n}, {T}, ...] per-step "
                         f"regression targets; received shape {y.shape}.")
    if not per_step and y.ndim not in (1, 2):
        raise ValueError(f"{name} must be [N] or [N, D] per-sequence regression targets; "
                         f"received shape {y.shape}.")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name} must be finite; it holds {int((~np.isfinite(y)).sum())} "
                         "non-finite values.")
    return y.astype(np.float32)


def _check_labels(y: np.ndarray, valid: np.ndarray | None, num_classes: int, name: str) -> None:
    seen = y if valid is None else y[valid]
    bad = (seen < 0) | (seen >= num_classes)
    if bad.any():
        v = seen[bad][0]
        raise ValueError(f"{name} must hold labels in [0, num_classes) = [0, {num_classes}); "
                         f"received {v} ({int(bad.sum())} labels out of range).")


def _time_major(x: np.ndarray, y: np.ndarray, lengths: np.ndarray | None, kind: str,
                per_step: bool) -> Batch:
    """Numpy batch-major arrays -> a time-major :class:`Batch` of jax arrays."""
    targets = np.moveaxis(y, 1, 0) if per_step else y  # [T, N(, D)] or [N(, D)]
    dtype = jnp.int32 if kind == "classification" else jnp.float32
    if per_step and kind == "classification" and lengths is not None:
        targets = np.where(_valid_mask(x.shape[0], x.shape[1], lengths).T, targets, 0)
    return Batch(jnp.asarray(np.moveaxis(x, 1, 0)), jnp.asarray(targets, dtype),
                 None if lengths is None else jnp.asarray(lengths, jnp.int32))


def _step_mask(batch: Batch) -> Array | None:
    """``[T, B]`` float mask of the valid steps, or None when every step is valid."""
    if batch.lengths is None:
        return None
    T = batch.inputs.shape[0]
    return (jnp.arange(T)[:, None] < batch.lengths[None, :]).astype(jnp.float32)


def _masked_mean(values: Array, batch: Batch, per_step: bool) -> Array:
    mask = _step_mask(batch) if per_step else None
    if mask is None:
        return jnp.mean(values)
    while mask.ndim < values.ndim:  # [T, B] -> [T, B, 1] for [T, B, D] values
        mask = mask[..., None]
    mask = jnp.broadcast_to(mask, values.shape)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _array_losses(kind: str, per_step: bool):
    """``(loss, metric)`` of an array task: over the valid steps only, for per-step targets."""
    if kind == "classification":
        def loss(logits, batch):
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch.targets)
            return _masked_mean(ce, batch, per_step)

        def metric(logits, batch):
            hit = (jnp.argmax(logits, axis=-1) == batch.targets).astype(jnp.float32)
            return _masked_mean(hit, batch, per_step)

        return loss, metric

    def mse(outputs, batch):
        pred = outputs if batch.targets.ndim == outputs.ndim else outputs[..., 0]
        return _masked_mean((pred - batch.targets) ** 2, batch, per_step)

    return mse, mse


def _baseline_value(kind: str, y: np.ndarray, y_eval: np.ndarray, valid: np.ndarray | None,
                    valid_eval: np.ndarray | None, num_classes: int) -> tuple[float, str]:
    """The metric of the best input-ignoring predictor fitted on the training targets."""
    seen = y if valid is None else y[valid]
    seen_eval = y_eval if valid_eval is None else y_eval[valid_eval]
    if kind == "classification":
        majority = int(np.argmax(np.bincount(seen.ravel(), minlength=num_classes)))
        return float(np.mean(seen_eval == majority)), "accuracy of the training majority class"
    mean = seen.reshape(seen.shape[0], -1).mean(0) if seen.ndim > 1 else seen.mean()
    return float(np.mean((seen_eval - mean) ** 2)), "MSE of the training mean"


def from_arrays(
    x,
    y,
    *,
    lengths=None,
    x_test=None,
    y_test=None,
    lengths_test=None,
    kind: str | None = None,
    per_step: bool | None = None,
    num_classes: int | None = None,
    name: str = "arrays",
    description: str = "",
    references: str = "",
) -> Task:
    r"""A :class:`Task` that trains on your arrays; :mod:`rnnlab.train` takes it unchanged.

    ``sample(key, batch_size, T)`` draws ``batch_size`` training sequences
    uniformly (without replacement within a batch; ``T`` is ignored: the arrays
    fix it), so with ``rnnlab.train``'s ``fold_in(k_data, step)`` every minibatch
    is a pure function of (seed, step): runs are reproducible and resume exactly,
    and vmapped seeds, checkpoints and divergence handling work as for the
    synthetic tasks. ``task.evaluation`` holds the whole held-out split
    (``x_test``; the training set when none is given), which
    :func:`rnnlab.train.evaluate` scores in full: ``metric`` is the accuracy
    (classification) or the MSE (regression).

    Classification trains on the cross-entropy of logits; regression on the
    MSE. With per-step targets and ``lengths``, loss and metric average over the
    valid steps only. The arrays are held by the task (as constants of the
    compiled programs), so they should fit in device memory.

    Args:
      x: inputs ``[N, T, F]`` batch-major (``[N, T]`` for one feature), right-padded
        when ``lengths`` is given (padding is ignored and zeroed; see
        :func:`pad_sequences`).
      y: targets. Classification: ints ``[N]`` (one label per sequence) or
        ``[N, T]`` (one per step). Regression: floats ``[N]`` or ``[N, D]`` per
        sequence, ``[N, T, D]`` (or ``[N, T]`` with ``per_step=True``) per step.
      lengths: ``[N]`` valid lengths in ``[1, T]``, or None (every sequence fills T).
      x_test, y_test, lengths_test: the held-out split, shaped alike (its T may
        differ from the training T).
      kind: ``"classification"`` or ``"regression"``; default: classification
        for integer ``y``, regression otherwise.
      per_step: targets at every step; default: ``y.ndim == 2`` for
        classification, ``y.ndim == 3`` for regression.
      num_classes: the number of classes; default ``max(y, y_test) + 1``.
      name, description, references: for tables and plots.

    Returns:
      A :class:`Task` with ``evaluation`` set. Its ``baseline`` is the metric
      of the best input-ignoring predictor fitted on the training targets (the
      majority class, or the mean), scored on the evaluation split; ``success``
      is beating it by 10% (relative), as :meth:`Task.improves_on_baseline`.

    Raises:
      ValueError: naming the argument, for shapes that do not match (``y`` vs
        ``x``, ``lengths`` vs ``x``, features of ``x_test`` vs ``x``), labels out
        of ``[0, num_classes)``, lengths out of ``[1, T]``, NaN or inf in ``x`` at
        a valid step or in regression targets, one of ``x_test`` and ``y_test``
        without the other.
      TypeError: naming the argument, for arrays of the wrong kind (e.g. string
        labels).
    """
    x = _check_x(x, "x")
    n, T, F = x.shape
    y_arr = np.asarray(y)
    if kind is None:
        integer = np.issubdtype(y_arr.dtype, np.integer) or y_arr.dtype == bool
        kind = "classification" if integer else "regression"
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None; received {kind!r}.")
    if per_step is None:
        per_step = y_arr.ndim == (2 if kind == "classification" else 3)
    lengths = _check_lengths(lengths, n, T, "lengths")
    valid = _valid_mask(n, T, lengths)
    x = _check_finite_and_pad(x, valid, "x")
    y_arr = _check_y(y_arr, n, T, kind, per_step, "y")
    if (x_test is None) != (y_test is None):
        raise ValueError("x_test and y_test must be given together; received "
                         f"{'x_test' if y_test is None else 'y_test'} alone.")
    if x_test is None:
        if lengths_test is not None:
            raise ValueError("lengths_test needs x_test and y_test; received lengths_test alone.")
        xt, yt, lt, vt, split = x, y_arr, lengths, valid, "training set (no x_test given)"
    else:
        xt = _check_x(x_test, "x_test")
        if xt.shape[2] != F:
            raise ValueError(f"x_test must have F = {F} features, as x; received shape "
                             f"{xt.shape}.")
        lt = _check_lengths(lengths_test, xt.shape[0], xt.shape[1], "lengths_test")
        vt = _valid_mask(xt.shape[0], xt.shape[1], lt)
        xt = _check_finite_and_pad(xt, vt, "x_test")
        yt = _check_y(y_test, xt.shape[0], xt.shape[1], kind, per_step, "y_test")
        split = f"{xt.shape[0]} held-out sequences"
    step_valid, step_valid_t = (valid, vt) if per_step else (None, None)
    if kind == "classification":
        if num_classes is None:
            num_classes = max(int(max(y_arr.max(), yt.max())) + 1, 2)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2; received {num_classes!r}.")
        _check_labels(y_arr, step_valid, num_classes, "y")
        _check_labels(yt, step_valid_t, num_classes, "y_test" if x_test is not None else "y")
        output_size = num_classes
    else:
        if num_classes is not None:
            raise ValueError(f"num_classes is for classification; received {num_classes!r} "
                             "with kind='regression'.")
        output_size = 1 if y_arr.ndim == (2 if per_step else 1) else int(y_arr.shape[-1])
    train_batch = _time_major(x, y_arr, lengths, kind, per_step)
    evaluation = _time_major(xt, yt, lt, kind, per_step)
    baseline, baseline_formula = _baseline_value(kind, y_arr, yt, step_valid, step_valid_t,
                                                 num_classes or 0)
    loss, metric = _array_losses(kind, per_step)
    higher = kind == "classification"

    def draw(key: Array, batch_size: int) -> Batch:
        idx = jax.random.choice(key, n, (batch_size,), replace=batch_size > n)
        return Batch(
            train_batch.inputs[:, idx],
            train_batch.targets[:, idx] if per_step else train_batch.targets[idx],
            None if train_batch.lengths is None else train_batch.lengths[idx],
        )

    jitted = jax.jit(draw, static_argnums=1)

    def sample(key: Array, batch_size: int, T: int | None = None) -> Batch:
        """``batch_size`` training sequences drawn by ``key`` (``T`` is ignored)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1; received {batch_size!r}.")
        return jitted(key, batch_size)

    def success(outputs: Array, batch: Batch) -> Array:
        m = metric(outputs, batch)
        return m > baseline * 1.1 if higher else m < baseline * 0.9

    what = f"{'per-step' if per_step else 'per-sequence'} {kind}"
    return Task(
        name=name,
        description=description or f"{what} on {n} sequences of T = {T}, F = {F}; "
                                   f"evaluated on the {split}",
        input_size=F,
        output_size=output_size,
        loss_kind="cross_entropy" if kind == "classification" else "mse",
        per_step=per_step,
        min_T=1,
        total_length=lambda _T=None: T,
        baseline=lambda _T=None: baseline,
        baseline_formula=baseline_formula,
        metric_name="accuracy" if kind == "classification" else "mse",
        higher_is_better=higher,
        success_criterion=f"evaluation {'accuracy' if higher else 'MSE'} "
                          f"{'above' if higher else 'below'} the baseline by 10%",
        sample=sample,
        loss=loss,
        metric=metric,
        success=success,
        references=references,
        evaluation=evaluation,
    )


# ----------------------------------------------------------------------------- registry


_REGISTRY: dict[str, Callable[[], Task]] = {}


def register(name: str, factory: Callable[[], Task], *, overwrite: bool = False) -> None:
    """Adds a task factory ``() -> Task`` under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str; received {name!r}.")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a task named {name!r} is already registered; pass overwrite=True.")
    # Cached, so that each task's jitted sampler is built (and compiled) once.
    _REGISTRY[name] = functools.cache(factory)


def get(name: str) -> Task:
    """The registered task ``name``; raises ValueError listing the known names."""
    if name not in _REGISTRY:
        raise ValueError(f"task must be one of {names()}; received {name!r}.")
    return _REGISTRY[name]()


def names() -> tuple[str, ...]:
    """Registered task names, in registration order."""
    return tuple(_REGISTRY)


register("adding", adding)
register("adding-hs", adding_hs)
register("copy", copy_memory)
register("temporal-order", temporal_order)
