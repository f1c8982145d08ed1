"""rnnlab: recurrent cells as pure JAX functions, and tools to study gradient flow through time.

Public API, re-exported by name::

    cell = rnnlab.lstm(hidden_size=64)
    params = cell.init(key, input_size=8)
    final_carry, ys = rnnlab.scan(cell, params, xs)   # xs [T, *batch, 8]

``rnnlab.wrappers`` (Flax Linen and NNX modules) and ``rnnlab.experiment`` (the
experiment scripts' plumbing) load on first use, so that ``import rnnlab``
imports neither flax nor the command-line machinery.
"""

import importlib
from typing import Any

from rnnlab import checks as checks
from rnnlab import convert as convert
from rnnlab import diagnostics as diagnostics
from rnnlab import distributed as distributed
from rnnlab import initializers as initializers
from rnnlab import registry as registry
from rnnlab import tasks as tasks
from rnnlab import train as train
from rnnlab.cell import AffineForm as AffineForm
from rnnlab.cell import Cell as Cell
from rnnlab.cell import LinearCell as LinearCell
from rnnlab.cell import LinearForm as LinearForm
from rnnlab.cell import PreparedCell as PreparedCell
from rnnlab.cell import affine_cell as affine_cell
from rnnlab.cell import checkpointed_step as checkpointed_step
from rnnlab.cell import has_parallel_form as has_parallel_form
from rnnlab.cell import linear_cell as linear_cell
from rnnlab.cells import AntisymmetricParams as AntisymmetricParams
from rnnlab.cells import CoRNNCarry as CoRNNCarry
from rnnlab.cells import CoRNNParams as CoRNNParams
from rnnlab.cells import ElmanParams as ElmanParams
from rnnlab.cells import GRUParams as GRUParams
from rnnlab.cells import GRUWeights as GRUWeights
from rnnlab.cells import IndRNNParams as IndRNNParams
from rnnlab.cells import LEMCarry as LEMCarry
from rnnlab.cells import LEMParams as LEMParams
from rnnlab.cells import LipschitzParams as LipschitzParams
from rnnlab.cells import LNLSTMParams as LNLSTMParams
from rnnlab.cells import LRUParams as LRUParams
from rnnlab.cells import LSTMCarry as LSTMCarry
from rnnlab.cells import LSTMParams as LSTMParams
from rnnlab.cells import LSTMPParams as LSTMPParams
from rnnlab.cells import MinGRUParams as MinGRUParams
from rnnlab.cells import MinLSTMParams as MinLSTMParams
from rnnlab.cells import OrthogonalParams as OrthogonalParams
from rnnlab.cells import OrthogonalWeights as OrthogonalWeights
from rnnlab.cells import RGLRUParams as RGLRUParams
from rnnlab.cells import S6Params as S6Params
from rnnlab.cells import SLSTMCarry as SLSTMCarry
from rnnlab.cells import SLSTMParams as SLSTMParams
from rnnlab.cells import URNNParams as URNNParams

# The gradient-stable cell zoo (issue 19).
from rnnlab.cells import antisymmetric as antisymmetric
from rnnlab.cells import cornn as cornn
from rnnlab.cells import elman as elman
from rnnlab.cells import gru as gru
from rnnlab.cells import indrnn as indrnn
from rnnlab.cells import irnn as irnn
from rnnlab.cells import lem as lem
from rnnlab.cells import lipschitz as lipschitz
from rnnlab.cells import lnlstm as lnlstm
from rnnlab.cells import lru as lru
from rnnlab.cells import lstm as lstm
from rnnlab.cells import lstmp as lstmp
from rnnlab.cells import mingru as mingru
from rnnlab.cells import minlstm as minlstm
from rnnlab.cells import orthogonal as orthogonal
from rnnlab.cells import rglru as rglru
from rnnlab.cells import s6 as s6
from rnnlab.cells import slstm as slstm
from rnnlab.cells import stack as stack
from rnnlab.cells import urnn as urnn
from rnnlab.checks import checking as checking
from rnnlab.checks import set_debug_checks as set_debug_checks
from rnnlab.modes.newton import NewtonOptions as NewtonOptions
from rnnlab.sequence import bidirectional as bidirectional
from rnnlab.sequence import scan as scan

#: The former name of the orthogonal cell's type: a :class:`Cell` with ``prepare``.
OrthogonalCell = PreparedCell

_LAZY_MODULES = ("wrappers", "experiment", "plots", "transforms", "layers", "datasets")


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f"rnnlab.{name}")
    raise AttributeError(f"module 'rnnlab' has no attribute {name!r}")


__version__ = "0.1.0"
