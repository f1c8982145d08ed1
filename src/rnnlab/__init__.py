"""rnnlab: recurrent cells as pure JAX functions, and tools to study gradient flow through time.

Public API, re-exported by name::

    cell = rnnlab.lstm(hidden_size=64)
    params = cell.init(key, input_size=8)
    final_carry, ys = rnnlab.scan(cell, params, xs)   # xs [T, *batch, 8]
"""

from rnnlab import checks as checks
from rnnlab import convert as convert
from rnnlab import diagnostics as diagnostics
from rnnlab import distributed as distributed
from rnnlab import experiment as experiment
from rnnlab import initializers as initializers
from rnnlab import registry as registry
from rnnlab import tasks as tasks
from rnnlab import train as train
from rnnlab import wrappers as wrappers
from rnnlab.cell import Cell as Cell
from rnnlab.cell import PreparedCell as PreparedCell
from rnnlab.cell import checkpointed_step as checkpointed_step
from rnnlab.cells import ElmanParams as ElmanParams
from rnnlab.cells import GRUParams as GRUParams
from rnnlab.cells import GRUWeights as GRUWeights
from rnnlab.cells import LRUParams as LRUParams
from rnnlab.cells import LSTMCarry as LSTMCarry
from rnnlab.cells import LSTMParams as LSTMParams
from rnnlab.cells import MinGRUParams as MinGRUParams
from rnnlab.cells import MinLSTMParams as MinLSTMParams
from rnnlab.cells import OrthogonalCell as OrthogonalCell
from rnnlab.cells import OrthogonalParams as OrthogonalParams
from rnnlab.cells import OrthogonalWeights as OrthogonalWeights
from rnnlab.cells import elman as elman
from rnnlab.cells import gru as gru
from rnnlab.cells import irnn as irnn
from rnnlab.cells import lru as lru
from rnnlab.cells import lstm as lstm
from rnnlab.cells import mingru as mingru
from rnnlab.cells import minlstm as minlstm
from rnnlab.cells import orthogonal as orthogonal
from rnnlab.cells import stack as stack
from rnnlab.checks import checking as checking
from rnnlab.checks import set_debug_checks as set_debug_checks
from rnnlab.scan import LinearCell as LinearCell
from rnnlab.scan import bidirectional as bidirectional
from rnnlab.scan import has_parallel_form as has_parallel_form
from rnnlab.scan import linear_cell as linear_cell
from rnnlab.scan import scan as scan

__version__ = "0.1.0"
