"""Weight conversion between rnnlab's cells and ``flax.linen``'s or PyTorch's.

Three kinds of cell convert, named as rnnlab's factories: ``"lstm"``
(:func:`rnnlab.lstm`), ``"gru"`` (:func:`rnnlab.gru` with the default
``reset_after=True``) and ``"elman"`` (:func:`rnnlab.elman`, either
nonlinearity). Every conversion is exact in the function it computes::

    params = rnnlab.convert.from_flax(variables["params"], "lstm")
    rnnlab.scan(rnnlab.lstm(H), params, xs)  # == nn.RNN(nn.LSTMCell(H), time_major=True)

    params = rnnlab.convert.from_torch(state_dict, "gru", layer=1)   # numpy arrays
    state_dict = rnnlab.convert.to_torch(params, "gru", layer=1)

Layouts. rnnlab uses the row-vector convention ``x @ W_x`` with fused gate
blocks; flax keeps one ``Dense`` per gate (kernels ``[in, H]``); PyTorch
stores fused ``[gates*H, in]`` matrices, the transposes of ours. The gate
orders agree: LSTM (i, f, g, o), GRU (r, z, n).

Biases. Where the two sides hold different numbers of biases, the conversion
sums them on import (the sum is what the cell computes) and, on export, puts
the whole bias on one side and zeros on the other:

* PyTorch LSTM and RNN: ``b = bias_ih + bias_hh``; exported as
  ``bias_ih = b``, ``bias_hh = 0``.
* PyTorch GRU: ``b_x = bias_ih``, ``b_h = bias_hh`` both ways (same layout).
* flax GRUCell has biases on ``ir``, ``iz``, ``in`` and ``hn`` only: on import
  ``b_h``'s r and z blocks are zero; on export they are added to ``ir``'s and
  ``iz``'s biases (they enter the same sigmoid).
* flax LSTMCell's biases sit on the recurrent Dense layers ``hi, hf, hg, ho``;
  flax SimpleCell has one bias, on ``i``. Both map one-to-one to ``b``.

PyTorch is not imported: state dicts are mappings of key to numpy array
(``{k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}``).
A PyTorch ``bias=False`` module (no bias keys) imports with zero biases.

Carries: flax's LSTM carry ``(c, h)`` has the order of :class:`rnnlab.LSTMCarry`
(``LSTMCarry(*flax_carry)``); PyTorch's ``(h_0, c_0)`` of shape
``[layers*directions, B, H]`` is ``LSTMCarry(c=c_0[k], h=h_0[k])`` for layer ``k``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from rnnlab.cells.elman import ElmanParams
from rnnlab.cells.gru import GRUParams
from rnnlab.cells.lstm import LSTMParams

Params = Any


class _Kind(NamedTuple):
    gates: int  # number of [., H] gate blocks
    params_type: type  # rnnlab params NamedTuple
    from_flax: Callable[[Mapping[str, Any]], Params]
    to_flax: Callable[[Params], dict]
    torch_split_bias: bool  # whether rnnlab keeps PyTorch's two biases apart


# ----------------------------------------------------------------------------- flax


def _flax_kernel(flax_params: Mapping, name: str, shape: tuple[int | None, ...]) -> jnp.ndarray:
    return _get(flax_params, (name, "kernel"), shape, "flax_params")


def _flax_bias(flax_params: Mapping, name: str, shape: tuple[int | None, ...]) -> jnp.ndarray:
    return _get(flax_params, (name, "bias"), shape, "flax_params")


def _flax_sizes(flax_params: Mapping, first: str, hidden: str) -> tuple[int, int]:
    """Reads (F, H) off the first input kernel and a recurrent kernel."""
    H = _flax_kernel(flax_params, hidden, (None, None)).shape[1]
    F = _flax_kernel(flax_params, first, (None, H)).shape[0]
    return F, H


def _lstm_from_flax(fp: Mapping) -> LSTMParams:
    F, H = _flax_sizes(fp, "ii", "hi")
    gates = "ifgo"
    return LSTMParams(
        W_x=jnp.concatenate([_flax_kernel(fp, f"i{g}", (F, H)) for g in gates], axis=1),
        W_h=jnp.concatenate([_flax_kernel(fp, f"h{g}", (H, H)) for g in gates], axis=1),
        b=jnp.concatenate([_flax_bias(fp, f"h{g}", (H,)) for g in gates]),
    )


def _lstm_to_flax(p: LSTMParams) -> dict:
    F, H = _check_params(p, "lstm")
    W_x, W_h, b = (jnp.split(a, 4, axis=-1) for a in (p.W_x, p.W_h, p.b))
    out = {}
    for k, g in enumerate("ifgo"):
        out[f"i{g}"] = {"kernel": W_x[k]}
        out[f"h{g}"] = {"kernel": W_h[k], "bias": b[k]}
    return out


def _gru_from_flax(fp: Mapping) -> GRUParams:
    F, H = _flax_sizes(fp, "ir", "hr")
    gates = "rzn"
    zeros = jnp.zeros((H,), _flax_kernel(fp, "hr", (H, H)).dtype)
    return GRUParams(
        W_x=jnp.concatenate([_flax_kernel(fp, f"i{g}", (F, H)) for g in gates], axis=1),
        W_h=jnp.concatenate([_flax_kernel(fp, f"h{g}", (H, H)) for g in gates], axis=1),
        b_x=jnp.concatenate([_flax_bias(fp, f"i{g}", (H,)) for g in gates]),
        b_h=jnp.concatenate([zeros, zeros, _flax_bias(fp, "hn", (H,))]),
    )


def _gru_to_flax(p: GRUParams) -> dict:
    _check_params(p, "gru")
    W_x, W_h, b_x, b_h = (jnp.split(a, 3, axis=-1) for a in (p.W_x, p.W_h, p.b_x, p.b_h))
    return {
        "ir": {"kernel": W_x[0], "bias": b_x[0] + b_h[0]},
        "iz": {"kernel": W_x[1], "bias": b_x[1] + b_h[1]},
        "in": {"kernel": W_x[2], "bias": b_x[2]},
        "hr": {"kernel": W_h[0]},
        "hz": {"kernel": W_h[1]},
        "hn": {"kernel": W_h[2], "bias": b_h[2]},
    }


def _elman_from_flax(fp: Mapping) -> ElmanParams:
    F, H = _flax_sizes(fp, "i", "h")
    return ElmanParams(
        W_x=_flax_kernel(fp, "i", (F, H)),
        W_h=_flax_kernel(fp, "h", (H, H)),
        b=_flax_bias(fp, "i", (H,)),
    )


def _elman_to_flax(p: ElmanParams) -> dict:
    _check_params(p, "elman")
    return {"i": {"kernel": p.W_x, "bias": p.b}, "h": {"kernel": p.W_h}}


_KINDS: dict[str, _Kind] = {
    "lstm": _Kind(4, LSTMParams, _lstm_from_flax, _lstm_to_flax, torch_split_bias=False),
    "gru": _Kind(3, GRUParams, _gru_from_flax, _gru_to_flax, torch_split_bias=True),
    "elman": _Kind(1, ElmanParams, _elman_from_flax, _elman_to_flax, torch_split_bias=False),
}

FLAX_CELLS = {"lstm": "LSTMCell / OptimizedLSTMCell", "gru": "GRUCell", "elman": "SimpleCell"}
_FLAX_NAMES = {
    "lstm": ("ii", "if", "ig", "io", "hi", "hf", "hg", "ho"),
    "gru": ("ir", "iz", "in", "hr", "hz", "hn"),
    "elman": ("i", "h"),
}
KINDS = tuple(_KINDS)


def from_flax(flax_params: Mapping[str, Any], kind: str) -> Params:
    """Converts a ``flax.linen`` cell's params to rnnlab params.

    ================  ====================================  =====================
    ``kind``          flax cell (param names)               rnnlab params
    ================  ====================================  =====================
    ``"lstm"``        ``LSTMCell``, ``OptimizedLSTMCell``   :class:`LSTMParams`
                      (``ii..io`` kernels, ``hi..ho``
                      kernels and biases)
    ``"gru"``         ``GRUCell`` (``ir, iz, in`` with      :class:`GRUParams`
                      bias, ``hr, hz`` without, ``hn``
                      with)
    ``"elman"``       ``SimpleCell`` (``i`` with bias,      :class:`ElmanParams`
                      ``h`` without; ``residual=False``)
    ================  ====================================  =====================

    Args:
      flax_params: the cell's params, e.g. ``variables["params"]`` of the cell
        or ``variables["params"]["RNN_0"]["cell"]`` inside a model; a whole
        ``variables`` dict (with a ``"params"`` key) is accepted too. Kernels
        are ``[F, H]`` (input) and ``[H, H]`` (recurrent), biases ``[H]``.
      kind: ``"lstm"``, ``"gru"`` or ``"elman"``.

    Returns:
      Params for ``rnnlab.lstm(H)``, ``rnnlab.gru(H)`` (``reset_after=True``) or
      ``rnnlab.elman(H)`` that compute the same function as the flax cell.

    Raises:
      ValueError: unknown ``kind``, a missing param or a shape that disagrees.
    """
    spec = _kind(kind)
    if not isinstance(flax_params, Mapping):
        raise ValueError(
            f"flax_params must be a mapping of the {FLAX_CELLS[kind]}'s params; received "
            f"{type(flax_params).__name__}."
        )
    if "params" in flax_params:
        flax_params = flax_params["params"]
    missing = tuple(n for n in _FLAX_NAMES[kind] if n not in flax_params)
    if missing:
        raise ValueError(
            f"flax_params must hold the {FLAX_CELLS[kind]} params {_FLAX_NAMES[kind]} for "
            f"kind={kind!r}; missing {missing}, received keys {sorted(flax_params)}."
        )
    return spec.from_flax(flax_params)


def to_flax(params: Params, kind: str) -> dict[str, dict[str, jnp.ndarray]]:
    """Converts rnnlab params to the params of the matching ``flax.linen`` cell.

    The inverse of :func:`from_flax`; for a GRU, ``b_h``'s r and z blocks are
    added into flax's ``ir``/``iz`` biases (the cell computes the same).

    Args:
      params: :class:`LSTMParams`, :class:`GRUParams` or :class:`ElmanParams`.
      kind: ``"lstm"``, ``"gru"`` or ``"elman"``.

    Returns:
      A nested dict such as ``{"ii": {"kernel": [F, H]}, "hi": {"kernel": [H, H],
      "bias": [H]}, ...}``; apply with ``cell.apply({"params": p}, carry, x)``.

    Raises:
      ValueError: unknown ``kind`` or params of the wrong structure or shapes.
    """
    return _kind(kind).to_flax(params)


# ---------------------------------------------------------------------------- torch


def _torch_key(name: str, layer: int, reverse: bool, prefix: str) -> str:
    return f"{prefix}{name}_l{layer}{'_reverse' if reverse else ''}"


def from_torch(
    state_dict: Mapping[str, Any],
    kind: str,
    *,
    layer: int = 0,
    reverse: bool = False,
    prefix: str = "",
) -> Params:
    r"""Converts one layer and direction of a PyTorch ``nn.LSTM``/``nn.GRU``/``nn.RNN``.

    PyTorch stores ``weight_ih_l{k}`` ``[G*H, F]``, ``weight_hh_l{k}``
    ``[G*H, H]``, ``bias_ih_l{k}`` and ``bias_hh_l{k}`` ``[G*H]`` (``G`` = 4, 3,
    1; suffix ``_reverse`` for the backward direction), computing
    ``x W_ih^T + b_ih + h W_hh^T + b_hh``. So ``W_x = weight_ih^T``,
    ``W_h = weight_hh^T``; for the LSTM and RNN ``b = b_ih + b_hh``, for the GRU
    ``b_x = b_ih`` and ``b_h = b_hh`` (its ``b_hn`` sits inside ``r * (.)``).

    ``nn.RNN(nonlinearity="relu")`` converts the same way; build the cell as
    ``rnnlab.elman(H, nonlinearity="relu")``. A backward direction is run with
    ``rnnlab.scan(..., reverse=True)`` or as the second cell of
    :func:`rnnlab.bidirectional`.

    Args:
      state_dict: ``{key: numpy array}`` (convert tensors with ``.numpy()``).
      kind: ``"lstm"``, ``"gru"`` or ``"elman"`` (``nn.RNN``).
      layer: which layer ``k`` (the ``_l{k}`` in the keys).
      reverse: read the backward direction (keys ending ``_reverse``).
      prefix: prepended to every key, e.g. ``"encoder.rnn."`` for a submodule.

    Returns:
      :class:`LSTMParams`, :class:`GRUParams` or :class:`ElmanParams`.

    Raises:
      ValueError: unknown ``kind``, a missing key, a shape that disagrees, or an
        LSTM with ``proj_size > 0`` (``weight_hr``), which rnnlab lacks.
    """
    spec = _kind(kind)
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"state_dict must be a mapping of key to numpy array; received "
            f"{type(state_dict).__name__}."
        )
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 0:
        raise ValueError(f"layer must be a non-negative int; received {layer!r}.")

    def key(name):
        return _torch_key(name, layer, reverse, prefix)

    if key("weight_hr") in state_dict:
        raise ValueError(
            f"state_dict holds {key('weight_hr')!r}: LSTMs with proj_size > 0 are not "
            "supported by rnnlab.lstm."
        )
    G = spec.gates
    w_hh = _get(state_dict, (key("weight_hh"),), (None, None), "state_dict")
    H = w_hh.shape[1]
    w_hh = _get(state_dict, (key("weight_hh"),), (G * H, H), "state_dict")
    w_ih = _get(state_dict, (key("weight_ih"),), (G * H, None), "state_dict")
    has_b = [key(n) in state_dict for n in ("bias_ih", "bias_hh")]
    if all(has_b):
        b_ih = _get(state_dict, (key("bias_ih"),), (G * H,), "state_dict")
        b_hh = _get(state_dict, (key("bias_hh"),), (G * H,), "state_dict")
    elif not any(has_b):  # nn.LSTM(bias=False)
        b_ih = b_hh = jnp.zeros((G * H,), w_hh.dtype)
    else:
        missing = key("bias_hh") if has_b[0] else key("bias_ih")
        raise ValueError(
            f"state_dict must hold both biases of layer {layer} or neither (bias=False); "
            f"missing key {missing!r}."
        )
    W_x, W_h = w_ih.T, w_hh.T
    if spec.torch_split_bias:
        return spec.params_type(W_x, W_h, b_ih, b_hh)
    return spec.params_type(W_x, W_h, b_ih + b_hh)


def to_torch(
    params: Params,
    kind: str,
    *,
    layer: int = 0,
    reverse: bool = False,
    prefix: str = "",
) -> dict[str, np.ndarray]:
    """Converts rnnlab params to one layer and direction of a PyTorch state dict.

    The inverse of :func:`from_torch`. For the LSTM and RNN, whose rnnlab params
    hold one bias, ``bias_ih = b`` and ``bias_hh = 0``.

    Args:
      params: :class:`LSTMParams`, :class:`GRUParams` or :class:`ElmanParams`.
      kind: ``"lstm"``, ``"gru"`` or ``"elman"``.
      layer, reverse, prefix: as in :func:`from_torch`, naming the keys.

    Returns:
      ``{"weight_ih_l{k}": [G*H, F], "weight_hh_l{k}": [G*H, H],
      "bias_ih_l{k}": [G*H], "bias_hh_l{k}": [G*H]}`` of numpy arrays; load with
      ``module.load_state_dict({k: torch.from_numpy(v) ...}, strict=False)``.

    Raises:
      ValueError: unknown ``kind`` or params of the wrong structure or shapes.
    """
    spec = _kind(kind)
    _check_params(params, kind)
    if spec.torch_split_bias:
        b_ih, b_hh = params.b_x, params.b_h
    else:
        b_ih = params.b
        b_hh = jnp.zeros_like(b_ih)
    arrays = {
        "weight_ih": jnp.asarray(params.W_x).T,
        "weight_hh": jnp.asarray(params.W_h).T,
        "bias_ih": b_ih,
        "bias_hh": b_hh,
    }
    return {_torch_key(n, layer, reverse, prefix): np.asarray(a) for n, a in arrays.items()}


def from_torch_stack(
    state_dict: Mapping[str, Any],
    kind: str,
    *,
    num_layers: int | None = None,
    prefix: str = "",
) -> tuple[Params, ...]:
    """Converts a unidirectional multi-layer PyTorch RNN to :func:`rnnlab.stack` params.

    ``torch.nn.LSTM(F, H, num_layers=K)`` computes what
    ``rnnlab.stack([rnnlab.lstm(H)] * K)`` computes with these params.

    Args:
      state_dict: ``{key: numpy array}``.
      kind: ``"lstm"``, ``"gru"`` or ``"elman"``.
      num_layers: K; by default, every layer ``l0, l1, ...`` present.
      prefix: as in :func:`from_torch`.

    Returns:
      A tuple of K params, bottom layer first.

    Raises:
      ValueError: as :func:`from_torch`, and for a bidirectional state dict
        (its upper layers read both directions, so it is no stack: convert each
        layer with :func:`from_torch` and use :func:`rnnlab.bidirectional`).
    """
    _kind(kind)
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"state_dict must be a mapping of key to numpy array; received "
            f"{type(state_dict).__name__}."
        )
    if any(str(k).startswith(prefix) and str(k).endswith("_reverse") for k in state_dict):
        raise ValueError(
            "state_dict is bidirectional (has '_reverse' keys), which is not a stack; "
            "convert each layer and direction with from_torch and combine with "
            "rnnlab.bidirectional."
        )
    if num_layers is None:
        num_layers = 0
        while _torch_key("weight_ih", num_layers, False, prefix) in state_dict:
            num_layers += 1
        if num_layers == 0:
            raise ValueError(
                f"state_dict must hold key {_torch_key('weight_ih', 0, False, prefix)!r}; "
                f"received keys {sorted(state_dict)}."
            )
    elif isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers <= 0:
        raise ValueError(f"num_layers must be a positive int or None; received {num_layers!r}.")
    return tuple(from_torch(state_dict, kind, layer=k, prefix=prefix) for k in range(num_layers))


def to_torch_stack(
    params: Sequence[Params], kind: str, *, prefix: str = ""
) -> dict[str, np.ndarray]:
    """Converts :func:`rnnlab.stack` params to a multi-layer PyTorch state dict.

    Args:
      params: one params per layer, bottom first (all of ``kind``).
      kind: ``"lstm"``, ``"gru"`` or ``"elman"``.
      prefix: as in :func:`from_torch`.

    Returns:
      The keys of every layer ``l0 .. l{K-1}``, as :func:`to_torch`.
    """
    if not isinstance(params, (tuple, list)) or hasattr(params, "_fields"):
        raise ValueError(
            f"params must be a tuple of per-layer params (from rnnlab.stack); received "
            f"{type(params).__name__}."
        )
    out: dict[str, np.ndarray] = {}
    for k, p in enumerate(params):
        out.update(to_torch(p, kind, layer=k, prefix=prefix))
    return out


# -------------------------------------------------------------------------- helpers


def _kind(kind: Any) -> _Kind:
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {KINDS}; received {kind!r}.")
    return _KINDS[kind]


def _get(
    tree: Mapping, path: tuple[str, ...], shape: tuple[int | None, ...], name: str
) -> jnp.ndarray:
    """``tree[path[0]][path[1]]...`` as a jax array, checked against ``shape``.

    ``None`` in ``shape`` matches any size.
    """
    node: Any = tree
    for depth, part in enumerate(path):
        if not isinstance(node, Mapping) or part not in node:
            where = name + "".join(f"[{p!r}]" for p in path[:depth])
            keys = sorted(node) if isinstance(node, Mapping) else type(node).__name__
            raise ValueError(f"{where} must hold key {part!r}; received keys {keys}.")
        node = node[part]
    value = jnp.asarray(node)
    if value.ndim != len(shape) or any(
        s is not None and d != s for d, s in zip(value.shape, shape, strict=True)
    ):
        expected = tuple("?" if s is None else s for s in shape)
        where = name + "".join(f"[{p!r}]" for p in path)
        raise ValueError(f"{where} must have shape {expected}; received shape {value.shape}.")
    return value


def _check_params(params: Any, kind: str) -> tuple[int, int]:
    """Checks rnnlab params of ``kind`` (structure and shapes); returns (F, H)."""
    spec = _KINDS[kind]
    fields = spec.params_type._fields
    if not all(hasattr(params, f) for f in fields):
        raise ValueError(
            f"params must be {spec.params_type.__name__} with fields {fields} for "
            f"kind={kind!r}; received {type(params).__name__}."
        )
    G = spec.gates
    W_h = jnp.asarray(params.W_h)
    if W_h.ndim != 2 or W_h.shape[1] != G * W_h.shape[0]:
        raise ValueError(
            f"params.W_h must have shape (H, {G}*H) for kind={kind!r}; received shape {W_h.shape}."
        )
    H = W_h.shape[0]
    W_x = jnp.asarray(params.W_x)
    if W_x.ndim != 2 or W_x.shape[1] != G * H:
        raise ValueError(
            f"params.W_x must have shape (F, {G * H}) for kind={kind!r}; received "
            f"shape {W_x.shape}."
        )
    for f in fields[2:]:
        b = jnp.shape(getattr(params, f))
        if b != (G * H,):
            raise ValueError(
                f"params.{f} must have shape ({G * H},) for kind={kind!r}; received shape {b}."
            )
    return W_x.shape[0], H


# ----------------------------------------------------- whole PyTorch modules (issue 19)


def _torch_layout(state_dict: Mapping[str, Any], prefix: str) -> tuple[int, bool]:
    """(num_layers, bidirectional) read off the keys ``weight_ih_l{k}[_reverse]``."""
    num_layers = 0
    while _torch_key("weight_ih", num_layers, False, prefix) in state_dict:
        num_layers += 1
    if num_layers == 0:
        raise ValueError(
            f"state_dict must hold key {_torch_key('weight_ih', 0, False, prefix)!r}; "
            f"received keys {sorted(state_dict)}."
        )
    return num_layers, _torch_key("weight_ih", 0, True, prefix) in state_dict


def from_torch_rnn(
    state_dict: Mapping[str, Any], kind: str, *, prefix: str = ""
) -> tuple[Any, ...]:
    """Converts a whole PyTorch ``nn.LSTM``/``nn.GRU``/``nn.RNN`` state dict, any
    ``num_layers`` and ``bidirectional``, to params for :func:`rnnlab.layers.rnn`.

    ``torch.nn.LSTM(F, H, num_layers=K, bidirectional=True)`` computes what
    ``rnnlab.layers.rnn(rnnlab.lstm(H), params, xs, bidirectional=True)`` computes,
    outputs and final states (:func:`carries_to_torch` gives ``(h_n, c_n)``).
    The layout is read off the keys. An LSTM with ``proj_size = P > 0`` (keys
    ``weight_hr_l{k}``) gives :class:`rnnlab.cells.lstmp.LSTMPParams`, for the cell
    ``rnnlab.lstmp(H, P)``.

    Returns:
      K layer params, bottom first; each a ``(forward, backward)`` pair for a
      bidirectional module.
    """
    _kind(kind)
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"state_dict must be a mapping of key to numpy array; received "
            f"{type(state_dict).__name__}."
        )
    num_layers, bidir = _torch_layout(state_dict, prefix)
    one = _from_torch_lstmp if _torch_key("weight_hr", 0, False, prefix) in state_dict else (
        from_torch)
    if one is _from_torch_lstmp and kind != "lstm":
        raise ValueError(f"state_dict holds 'weight_hr' keys (proj_size > 0), which only "
                         f"kind='lstm' has; received kind={kind!r}.")
    if not bidir:
        return tuple(one(state_dict, kind, layer=k, prefix=prefix) for k in range(num_layers))
    return tuple(
        (one(state_dict, kind, layer=k, prefix=prefix),
         one(state_dict, kind, layer=k, reverse=True, prefix=prefix))
        for k in range(num_layers)
    )


def _from_torch_lstmp(state_dict, kind, *, layer, reverse=False, prefix=""):
    """One layer and direction of ``nn.LSTM(proj_size=P)`` as :class:`LSTMPParams`."""
    from rnnlab.cells.lstmp import LSTMPParams

    def key(name):
        return _torch_key(name, layer, reverse, prefix)

    w_hr = _get(state_dict, (key("weight_hr"),), (None, None), "state_dict")  # [P, H]
    P, H = w_hr.shape
    w_hh = _get(state_dict, (key("weight_hh"),), (4 * H, P), "state_dict")
    w_ih = _get(state_dict, (key("weight_ih"),), (4 * H, None), "state_dict")
    if key("bias_ih") in state_dict:
        b = (_get(state_dict, (key("bias_ih"),), (4 * H,), "state_dict")
             + _get(state_dict, (key("bias_hh"),), (4 * H,), "state_dict"))
    else:
        b = jnp.zeros((4 * H,), w_hh.dtype)
    return LSTMPParams(W_x=w_ih.T, W_h=w_hh.T, b=b, W_r=w_hr.T)


def to_torch_rnn(
    params: Sequence[Any], kind: str, *, bidirectional: bool, prefix: str = ""
) -> dict[str, np.ndarray]:
    """The inverse of :func:`from_torch_rnn`: a whole module's state dict."""
    out: dict[str, np.ndarray] = {}
    for k, p in enumerate(params):
        if bidirectional:
            out.update(to_torch(p[0], kind, layer=k, prefix=prefix))
            out.update(to_torch(p[1], kind, layer=k, reverse=True, prefix=prefix))
        else:
            out.update(to_torch(p, kind, layer=k, prefix=prefix))
    return out


def carries_from_torch(
    kind: str, h_0: Any, c_0: Any = None, *, bidirectional: bool = False
) -> tuple[Any, ...]:
    """PyTorch initial states ``[layers*directions, *batch, H]`` to carries for
    :func:`rnnlab.layers.rnn`.

    Row ``k * D + d`` is layer ``k``, direction ``d`` (0 forward), as in PyTorch. The
    LSTM's carry is built by keyword, ``LSTMCarry(c=c_0[i], h=h_0[i])``, because
    PyTorch's order ``(h_0, c_0)`` is the reverse of :class:`rnnlab.LSTMCarry`'s.

    Args:
      kind: ``"lstm"``, ``"gru"`` or ``"elman"``.
      h_0: ``[K*D, *batch, H]``.
      c_0: ``[K*D, *batch, H]`` for the LSTM; None otherwise. (With ``proj_size``
        P, ``h_0`` is ``[K*D, *batch, P]``.)
      bidirectional: D = 2 if True.

    Returns:
      K carries (``(forward, backward)`` pairs when bidirectional).
    """
    from rnnlab.cells.lstm import LSTMCarry

    _kind(kind)
    h_0 = jnp.asarray(h_0)
    if (kind == "lstm") != (c_0 is not None):
        raise ValueError(
            f"c_0 must be given for kind='lstm' and only then; received kind={kind!r} with "
            f"c_0 {'given' if c_0 is not None else 'None'}."
        )
    D = 2 if bidirectional else 1
    if h_0.ndim < 2 or h_0.shape[0] % D:
        raise ValueError(
            f"h_0 must have shape [layers*{D}, *batch, H]; received shape {h_0.shape}."
        )
    if c_0 is not None:
        c_0 = jnp.asarray(c_0)
        # All but the last axis: with proj_size, h is [.., P] and c is [.., H].
        if c_0.shape[:-1] != h_0.shape[:-1]:
            raise ValueError(
                f"c_0 must have shape [{h_0.shape[0]}, *batch, H] with h_0's leading axes "
                f"{h_0.shape[:-1]}; received shape {c_0.shape}."
            )

    def one(i):
        return h_0[i] if c_0 is None else LSTMCarry(c=c_0[i], h=h_0[i])

    K = h_0.shape[0] // D
    if not bidirectional:
        return tuple(one(k) for k in range(K))
    return tuple((one(2 * k), one(2 * k + 1)) for k in range(K))


def carries_to_torch(kind: str, carries: Sequence[Any], *, bidirectional: bool = False):
    """The inverse of :func:`carries_from_torch`: ``h_n`` (and ``(h_n, c_n)`` for the
    LSTM), ``[layers*directions, *batch, H]``."""
    _kind(kind)
    flat = [c for pair in carries for c in pair] if bidirectional else list(carries)
    if kind == "lstm":
        return jnp.stack([c.h for c in flat]), jnp.stack([c.c for c in flat])
    return jnp.stack(flat)


# ---------------------------------------------------------------------------- Keras (issue 19)

#: Keras' GRU blocks are (z, r, h); rnnlab's (r, z, n): the same permutation both ways.
_KERAS_GRU_ORDER = (1, 0, 2)


def _reorder(a: Any, order: tuple[int, ...]) -> jnp.ndarray:
    blocks = jnp.split(jnp.asarray(a), len(order), axis=-1)
    return jnp.concatenate([blocks[i] for i in order], axis=-1)


def keras_reset_after(weights: Sequence[Any]) -> bool:
    """Whether a Keras GRU's ``get_weights()`` is ``reset_after=True``: its bias is
    ``[2, 3H]`` (input and recurrent biases) rather than ``[3H]``."""
    return np.ndim(weights[2]) == 2


def from_keras(weights: Sequence[Any], kind: str) -> Params:
    r"""Converts a Keras 3 ``SimpleRNN``/``LSTM``/``GRU`` layer's ``get_weights()``.

    Keras keeps ``[kernel [F, G*H], recurrent_kernel [H, G*H], bias]`` in the
    row-vector convention, as rnnlab does. Gate orders: LSTM (i, f, c, o), the
    same as rnnlab's; GRU (z, r, h), permuted to rnnlab's (r, z, n). A GRU's bias
    is ``[2, 3H]`` for ``reset_after=True`` (Keras' default: input and recurrent
    biases, ``b_x, b_h``) and ``[3H]`` for ``reset_after=False`` (``b_x``, with
    ``b_h = 0``); build the cell with ``rnnlab.gru(H, reset_after=...)``
    (:func:`keras_reset_after`), or use :func:`from_keras_cell`. Keras' defaults
    (``activation="tanh"``, ``recurrent_activation="sigmoid"``) are assumed.

    Masking: with a right-padding mask Keras carries the state through masked
    steps (as ``rnnlab.scan(..., lengths=...)`` does, so the final states agree),
    but its ``return_sequences`` output repeats the last valid output at masked
    steps where rnnlab writes zeros.

    Args:
      weights: the list ``layer.get_weights()`` returns (numpy arrays).
      kind: ``"elman"`` (SimpleRNN), ``"lstm"`` or ``"gru"``.

    Returns:
      :class:`ElmanParams`, :class:`LSTMParams` or :class:`GRUParams`.
    """
    spec = _kind(kind)
    if not isinstance(weights, (list, tuple)) or len(weights) != 3:
        raise ValueError(
            "weights must be the list [kernel, recurrent_kernel, bias] of a Keras layer's "
            f"get_weights() (use_bias=True); received {type(weights).__name__}"
            + (f" of length {len(weights)}" if isinstance(weights, (list, tuple)) else "")
            + "."
        )
    G = spec.gates
    ws = dict(enumerate(weights))
    H = _get(ws, (1,), (None, None), "weights").shape[0]
    R = _get(ws, (1,), (H, G * H), "weights")
    K = _get(ws, (0,), (None, G * H), "weights")
    if kind != "gru":
        b = _get(ws, (2,), (G * H,), "weights")
        return spec.params_type(K, R, b)
    if keras_reset_after(weights):
        b = _get(ws, (2,), (2, G * H), "weights")
        b_x, b_h = b[0], b[1]
    else:
        b_x = _get(ws, (2,), (G * H,), "weights")
        b_h = jnp.zeros_like(b_x)
    o = _KERAS_GRU_ORDER
    return GRUParams(_reorder(K, o), _reorder(R, o), _reorder(b_x, o), _reorder(b_h, o))


def from_keras_cell(weights: Sequence[Any], kind: str, **options: Any) -> tuple[Any, Params]:
    """``(cell, params)``: :func:`from_keras` and the matching rnnlab cell (a GRU's
    ``reset_after`` read off its bias); ``options`` go to the factory (e.g.
    ``nonlinearity="relu"`` for a ReLU SimpleRNN)."""
    from rnnlab.cells import elman, gru, lstm

    params = from_keras(weights, kind)
    H = params.W_h.shape[0]
    if kind == "gru":
        return gru(H, reset_after=keras_reset_after(weights), **options), params
    return (lstm if kind == "lstm" else elman)(H, **options), params


def to_keras(params: Params, kind: str, *, reset_after: bool = True) -> list[np.ndarray]:
    """The inverse of :func:`from_keras`: the list for ``layer.set_weights``.

    For a GRU with ``reset_after=False`` Keras has no recurrent bias: ``b_h`` must be
    zero (it is after :func:`from_keras`), else a ValueError.
    """
    _check_params(params, kind)
    if kind != "gru":
        return [np.asarray(params.W_x), np.asarray(params.W_h), np.asarray(params.b)]
    o = _KERAS_GRU_ORDER  # its own inverse
    K, R = _reorder(params.W_x, o), _reorder(params.W_h, o)
    b_x, b_h = _reorder(params.b_x, o), _reorder(params.b_h, o)
    if reset_after:
        return [np.asarray(K), np.asarray(R), np.asarray(jnp.stack([b_x, b_h]))]
    if np.any(np.asarray(params.b_h) != 0):
        raise ValueError(
            "params.b_h must be zero for a Keras GRU with reset_after=False (it has one bias); "
            "received a non-zero b_h."
        )
    return [np.asarray(K), np.asarray(R), np.asarray(b_x)]
