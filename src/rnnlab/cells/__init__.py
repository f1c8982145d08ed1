"""Recurrent cells, each three pure functions (see :class:`rnnlab.Cell`)."""

from rnnlab.cells.elman import ElmanParams as ElmanParams
from rnnlab.cells.elman import elman as elman
from rnnlab.cells.elman import irnn as irnn
from rnnlab.cells.gru import GRUParams as GRUParams
from rnnlab.cells.gru import GRUWeights as GRUWeights
from rnnlab.cells.gru import gru as gru
from rnnlab.cells.lru import LRUParams as LRUParams
from rnnlab.cells.lru import lru as lru
from rnnlab.cells.lstm import LSTMCarry as LSTMCarry
from rnnlab.cells.lstm import LSTMParams as LSTMParams
from rnnlab.cells.lstm import lstm as lstm
from rnnlab.cells.minrnn import MinGRUParams as MinGRUParams
from rnnlab.cells.minrnn import MinLSTMParams as MinLSTMParams
from rnnlab.cells.minrnn import mingru as mingru
from rnnlab.cells.minrnn import minlstm as minlstm
from rnnlab.cells.orthogonal import OrthogonalParams as OrthogonalParams
from rnnlab.cells.orthogonal import OrthogonalWeights as OrthogonalWeights
from rnnlab.cells.orthogonal import orthogonal as orthogonal
from rnnlab.cells.stack import stack as stack
