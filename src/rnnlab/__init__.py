"""rnnlab: recurrent cells as pure JAX functions, and tools to study gradient flow through time.

Public API, re-exported by name::

    cell = rnnlab.lstm(hidden_size=64)
    params = cell.init(key, input_size=8)
    final_carry, ys = rnnlab.scan(cell, params, xs)   # xs [T, *batch, 8]
"""

from rnnlab import initializers as initializers
from rnnlab import registry as registry
from rnnlab.cell import Cell as Cell
from rnnlab.cells import ElmanParams as ElmanParams
from rnnlab.cells import GRUParams as GRUParams
from rnnlab.cells import LSTMCarry as LSTMCarry
from rnnlab.cells import LSTMParams as LSTMParams
from rnnlab.cells import elman as elman
from rnnlab.cells import gru as gru
from rnnlab.cells import irnn as irnn
from rnnlab.cells import lstm as lstm
from rnnlab.cells import stack as stack
from rnnlab.scan import bidirectional as bidirectional
from rnnlab.scan import scan as scan

__version__ = "0.1.0"
