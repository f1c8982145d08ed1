r"""Synthetic long-range dependency problems, generated on device.

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
