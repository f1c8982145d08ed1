"""Recurrent cells, each three pure functions (see :class:`rnnlab.Cell`)."""

from rnnlab.cells.elman import ElmanParams as ElmanParams
from rnnlab.cells.elman import elman as elman
from rnnlab.cells.elman import irnn as irnn
from rnnlab.cells.gru import GRUParams as GRUParams
from rnnlab.cells.gru import gru as gru
from rnnlab.cells.lstm import LSTMCarry as LSTMCarry
from rnnlab.cells.lstm import LSTMParams as LSTMParams
from rnnlab.cells.lstm import lstm as lstm
from rnnlab.cells.stack import stack as stack
