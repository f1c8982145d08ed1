"""Cells by name, so that experiments take a new cell with no edit.

A registry entry maps a name to a factory ``hidden_size -> Cell`` with its
options fixed, e.g. ``"lstm-fb0"`` is ``lstm(hidden_size, forget_bias=0.0)``.
Experiments loop over :func:`names`; a new cell joins every experiment by
calling :func:`register` once (the built-in cells register themselves below,
the modern ones in their own modules)::

    rnnlab.registry.register("my-cell", lambda hidden_size: my_cell(hidden_size),
                             description="my own cell")
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnlab import initializers
from rnnlab.cell import Cell
from rnnlab.cells import elman, gru, irnn, lru, lstm, mingru, minlstm, orthogonal
from rnnlab.cells.lru import eigenvalues as _lru_eigenvalues
from rnnlab.validation import check_positive_int


class Entry(NamedTuple):
    factory: Callable[..., Cell]  # factory(hidden_size, **overrides) -> Cell
    description: str
    tags: frozenset[str]  # e.g. {"classic"}, {"modern", "parallel"}
    # decay_bound(params) -> r: a closed-form per-step bound on the state
    # Jacobian's norm, ||dc_{t+k}/dc_t|| <= r**k, drawn as the theory line in the
    # gradient-norm plots; None where no closed form exists.
    decay_bound: Callable[[Any], Any] | None = None


_REGISTRY: dict[str, Entry] = {}


def register(
    name: str,
    factory: Callable[..., Cell],
    *,
    description: str = "",
    tags: tuple[str, ...] = (),
    decay_bound: Callable[[Any], Any] | None = None,
    overwrite: bool = False,
) -> None:
    """Adds a cell factory under ``name``.

    Args:
      name: the key used by experiments and command lines (e.g. ``"lstm-fb0"``).
      factory: ``factory(hidden_size, **options) -> Cell``.
      description: one line shown in experiment tables and ``--help``.
      tags: free-form labels experiments may filter on.
      decay_bound: optional ``decay_bound(params) -> r`` with
        ``||dc_{t+k}/dc_t||_2 <= r**k`` in closed form (e.g. the spectral norm
        of ``W_h`` for an Elman RNN, since ``|phi'| <= 1``).
      overwrite: replace an existing entry instead of raising.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str; received {name!r}.")
    if not callable(factory):
        raise TypeError(f"factory must be callable; received {factory!r}.")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a cell named {name!r} is already registered; pass overwrite=True.")
    if decay_bound is not None and not callable(decay_bound):
        raise TypeError(f"decay_bound must be callable or None; received {decay_bound!r}.")
    _REGISTRY[name] = Entry(factory, description, frozenset(tags), decay_bound)


def get(name: str, hidden_size: int, **options: Any) -> Cell:
    """Builds the registered cell ``name`` with ``hidden_size`` (and option overrides)."""
    return entry(name).factory(hidden_size, **options)


def get_for_length(name: str, hidden_size: int, seq_len: int, **options: Any) -> Cell:
    """Builds ``name`` for sequences of ``seq_len`` steps.

    A factory with a ``seq_len`` parameter (a paper's setting whose constraint depends
    on T, such as ``indrnn-adding``'s ``|u| <= 2^(1/T)``) is given it; any other is
    built as by :func:`get`. The experiments build their cells this way.
    """
    factory = entry(name).factory
    if "seq_len" in inspect.signature(factory).parameters:
        options = {"seq_len": seq_len, **options}
    return factory(hidden_size, **options)


def entry(name: str) -> Entry:
    if name not in _REGISTRY:
        raise ValueError(f"cell must be one of {names()}; received {name!r}.")
    return _REGISTRY[name]


def names(tag: str | None = None) -> tuple[str, ...]:
    """Registered names, in registration order (optionally only those tagged ``tag``)."""
    return tuple(n for n, e in _REGISTRY.items() if tag is None or tag in e.tags)


def _spectral_norm_of_W_h(params) -> Any:
    # ||dh_t/dh_{t-1}|| = ||diag(phi') W_h^T|| <= ||W_h||_2 because |phi'| <= 1
    # for tanh and ReLU; equality for ReLU units that are all active.
    return jnp.linalg.norm(params.W_h, ord=2)


register(
    "elman-tanh",
    functools.partial(elman, nonlinearity="tanh"),
    description="Elman RNN, tanh, orthogonal W_h",
    tags=("classic",),
    decay_bound=_spectral_norm_of_W_h,
)
register(
    "elman-relu",
    functools.partial(elman, nonlinearity="relu"),
    description="Elman RNN, ReLU, orthogonal W_h",
    tags=("classic",),
    decay_bound=_spectral_norm_of_W_h,
)
register(
    "irnn",
    irnn,
    description="ReLU RNN, W_h = I (Le et al. 2015)",
    tags=("classic",),
    decay_bound=_spectral_norm_of_W_h,
)
register(
    "lstm-fb0",
    functools.partial(lstm, forget_bias=0.0),
    description="LSTM, forget bias 0",
    tags=("classic",),
)
register(
    "lstm", lstm, description="LSTM, forget bias 1 (Jozefowicz et al. 2015)", tags=("classic",)
)
register("gru", gru, description="GRU, reset after matmul (cuDNN form)", tags=("classic",))


def _lru_spectral_radius(params) -> Any:
    # dh_{t+k}/dh_t = diag(lambda**k): the bound is attained, max|lambda|**k.
    return jnp.max(jnp.abs(_lru_eigenvalues(params)))


def _one(params) -> Any:
    # ||W||_2 = 1 and |phi'| <= 1 (modReLU, tanh, identity), so ||dh_t/dh_{t-1}|| <= 1.
    return jnp.ones((), params.b.dtype)


register(
    "lru",
    lru,
    description="Linear recurrent unit, complex diagonal (Orvieto et al. 2023)",
    tags=("modern", "parallel"),
    decay_bound=_lru_spectral_radius,
)
register(
    "mingru",
    mingru,
    description="minGRU, input-only gates (Feng et al. 2024)",
    tags=("modern", "parallel"),
)
register(
    "minlstm",
    minlstm,
    description="minLSTM, input-only normalised gates (Feng et al. 2024)",
    tags=("modern", "parallel"),
)
register(
    "orthogonal",
    orthogonal,
    description="expRNN, W = expm(A - A^T), modReLU (Lezcano-Casado et al. 2019)",
    tags=("modern",),
    decay_bound=_one,
)

# ----------------------------------------------------------------------------- the zoo (issue 19)

from rnnlab.cells import (  # noqa: E402  (kept with the entries it serves)
    antisymmetric,
    cornn,
    indrnn,
    lem,
    lipschitz,
    lnlstm,
    rglru,
    s6,
    slstm,
    stack,
    urnn,
)


def _indrnn_bound(recurrent_max):
    def bound(params) -> Any:
        # dh_t/dh_{t-1} = diag(phi' u~), |phi'| <= 1: max|u~|**k, attained by active ReLUs.
        u = params.u if recurrent_max is None else jnp.clip(params.u, -recurrent_max,
                                                            recurrent_max)
        return jnp.max(jnp.abs(u))

    return bound


def _below_one(params) -> Any:
    # a_t in (0, 1) for every input (RG-LRU, S6): ||dh_t/dh_{t-1}|| = max a_t < 1.
    return jnp.ones((), jax.tree.leaves(params)[0].dtype)


register(
    "indrnn",
    indrnn,
    description="IndRNN, ReLU, elementwise recurrence (Li et al. 2018)",
    tags=("stable", "zoo"),
    decay_bound=_indrnn_bound(None),
)
register(
    "indrnn-clip",
    functools.partial(indrnn, recurrent_max=2.0 ** (1 / 100)),
    description="IndRNN, |u| <= 2^(1/100), the paper's constraint for T = 100",
    tags=("stable", "zoo"),
    decay_bound=_indrnn_bound(2.0 ** (1 / 100)),
)
register(
    "antisymmetric",
    antisymmetric,
    description="AntisymmetricRNN, W - W^T - gamma I, Euler (Chang et al. 2019)",
    tags=("stable", "zoo"),
)
register(
    "antisymmetric-gated",
    functools.partial(antisymmetric, gated=True),
    description="gated AntisymmetricRNN (Chang et al. 2019)",
    tags=("stable", "zoo"),
)
register(
    "cornn",
    cornn,
    description="coRNN, coupled damped oscillators, IMEX (Rusch & Mishra 2021)",
    tags=("stable", "zoo"),
)
register(
    "lem",
    lem,
    description="LEM, multiscale learned time steps (Rusch et al. 2022)",
    tags=("stable", "zoo"),
)
register(
    "lipschitz",
    lipschitz,
    description="Lipschitz RNN, A_beta h + tanh(W_beta h + Ux) (Erichson et al. 2021)",
    tags=("stable", "zoo"),
)
register(
    "urnn",
    urnn,
    description="uRNN, unitary D R F^-1 D P R F D, complex (Arjovsky et al. 2016)",
    tags=("stable", "zoo", "complex"),
)
register(
    "slstm",
    slstm,
    description="sLSTM, exponential gates, normaliser, stabiliser (Beck et al. 2024)",
    tags=("gated", "zoo"),
)
register(
    "lnlstm",
    lnlstm,
    description="LSTM with layer normalisation (Ba et al. 2016)",
    tags=("gated", "zoo"),
)
register(
    "rglru",
    rglru,
    description="RG-LRU, gated real diagonal (De et al. 2024, Griffin)",
    tags=("modern", "parallel", "zoo"),
    decay_bound=_below_one,
)
register(
    "s6",
    s6,
    description="S6, Mamba's selective diagonal SSM, N = 16 (Gu & Dao 2023)",
    tags=("modern", "parallel", "zoo"),
    decay_bound=_below_one,
)

# ----------------------------------------------------------------------------- papers' settings

# A paper's training setting of a cell above, for reproducing its numbers; the cell's
# code is the entry it names, so the test suite does not parametrise over these again.


def _uniform(bound: float):
    # U(+-bound), the uniform weight draw of the authors' scripts below.
    return functools.partial(jax.random.uniform, minval=-bound, maxval=bound)


def _lem_adding(hidden_size: int, **options: Any) -> Cell:
    # The authors' adding-problem script (tk-rusch/LEM, src/adding): dt = 0.0242 and
    # every weight uniform in +-1/sqrt(H), the input weights included (biases stay zero
    # here, where the script draws them alike).
    init = _uniform(hidden_size**-0.5)
    return lem(hidden_size, **{"dt": 0.0242, "recurrent_init": init, "input_init": init,
                               **options})


register(
    "lem-adding",
    _lem_adding,
    description="LEM, dt = 0.0242, weights U(+-1/sqrt(H)): the authors' adding-problem setting",
    tags=("stable", "zoo", "paper-setting"),
)


def _cornn_adding(hidden_size: int, **options: Any) -> Cell:
    # The authors' adding-problem script (tk-rusch/coRNN, adding/): its argparse defaults
    # dt = 0.06, gamma = 66, epsilon = 15, and torch's Linear default for the one i2h
    # layer over (input, z, y), weights and bias uniform in +-1/sqrt(fan-in) with fan-in
    # 2 + 2H for the adding problem's two inputs.
    init = _uniform((2 + 2 * hidden_size) ** -0.5)
    return cornn(hidden_size, **{"dt": 0.06, "gamma": 66.0, "epsilon": 15.0,
                                 "recurrent_init": init, "input_init": init,
                                 "bias_init": init, **options})


register(
    "cornn-adding",
    _cornn_adding,
    description="coRNN, dt 0.06, gamma 66, eps 15, U(+-1/sqrt(2+2H)): the authors' adding script",
    tags=("stable", "zoo", "paper-setting"),
)


def _indrnn_adding(hidden_size: int, *, seq_len: int = 500, **options: Any) -> Cell:
    # The authors' adding-problem script (Sunnydreamrain/IndRNN_Theano_Lasagne,
    # adding/adding.py, its defaults --seq_len 500 --MAG 2 --act relu --in2hidW 0.001):
    # two ReLU IndRNN layers, input weights N(0, 0.001^2), the first layer's u from
    # U(0, 2^(1/T)), the second's from U((1/2)^(1/T), 2^(1/T)), |u| <= 2^(1/T) in both
    # (a clip in the step here, a clamp of the stored u before each batch there), zero
    # biases (lasagne's default).
    check_positive_int(seq_len, "seq_len")
    bound, low = 2.0 ** (1 / seq_len), 0.5 ** (1 / seq_len)
    layer = functools.partial(indrnn, hidden_size, recurrent_max=bound,
                              input_init=initializers.normal(0.001), **options)
    return stack([layer(), layer(recurrent_min=low)])


register(
    "indrnn-adding",
    _indrnn_adding,
    description="2-layer IndRNN, |u| <= 2^(1/T), W_x ~ N(0, 0.001^2): the authors' adding script",
    tags=("stable", "zoo", "paper-setting"),
)
