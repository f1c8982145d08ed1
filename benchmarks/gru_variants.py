"""Ways to split the GRU step's matmuls on CPU, each timed against ``rnnlab.scan`` in one process.

Every variant computes ``rnnlab.gru`` (``reset_after=True``: PyTorch's and flax's
form) from its :class:`rnnlab.GRUParams`; the weight blocks are cut before the
loop (XLA leaves slices inside a loop body there). Timed as in
``lstm_variants.py``: forward and forward+backward, interleaved rounds, with
PyTorch's ``nn.GRU`` and ``flax.linen.GRUCell`` alongside.

    python benchmarks/gru_variants.py              # small, medium, large; a minute or two
    python benchmarks/gru_variants.py --quick      # tiny, seconds (what the test runs)

Variants (``W_rz_x`` = the r and z blocks of ``W_x``, and so on):

- ``base``: ``rnnlab.scan`` over ``rnnlab.gru``: ``x @ W_rz_x + h @ W_rz_h``,
  ``x @ W_n_x``, ``h @ W_n_h`` (one matmul over ``[x, h]`` for r and z when F = 1).
- ``no-policy``: ``base`` without the step's ``checkpoint_policy`` (the backward pass
  keeps every gate's value and derivative factors instead of the three matmul results).
- ``joint``: ``[x, h] @ W_rz``, ``x @ W_n_x``, ``h @ W_n_h`` at every F (rnnlab's step
  until 2026-11-25; at the large size ``base`` took 0.61x its forward time on a 2-core
  CPU, ``results/speed_investigation.md`` section 8).
- ``two``: ``x @ W_x`` and ``h @ W_h`` over all three gates (the fused path's split).
- ``six``: one matmul per gate and input, as ``flax.linen.GRUCell``.
- ``flax``: ``flax.linen.RNN(GRUCell)`` itself, on the same weights
  (``rnnlab.convert.to_flax``, inside the timed call: a few weight copies per call).

The variants other than ``base`` are differentiated plainly, with no checkpoint policy: for
the effect of a layout alone on the forward+backward pass, compare them with ``no-policy``.

Writes ``gru_variants.json`` and ``gru_variants.md`` into ``benchmarks/results/``
(or ``--out``). Nothing here is asserted in tests except that the variants agree.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

import rnnlab
from rnnlab.cell import add_bias

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lstm_variants  # noqa: E402


def _blocks(params: rnnlab.GRUParams):
    """(W_x blocks r, z, n), (W_h blocks r, z, n), (b_x + b_h on r, z; b_x on n), b_h on n,
    cut from rnnlab's own prepared weights (``rnnlab.gru(H).prepare``)."""
    w = rnnlab.gru(params.W_h.shape[0]).prepare(params)
    (Wxr, Wxz), (Whr, Whz) = jnp.split(w.W_rz_x, 2, axis=-1), jnp.split(w.W_rz_h, 2, axis=-1)
    br, bz = jnp.split(w.b_rz, 2)
    return (Wxr, Wxz, w.W_n_x), (Whr, Whz, w.W_n_h), (br, bz, w.b_n_x), w.b_n_h


def _scan(body, params, xs):
    h0 = jnp.zeros(xs.shape[1:-1] + params.W_h.shape[:1], xs.dtype)
    return jax.lax.scan(body, h0, xs)[1]


def _update(r, z, gx_n, gh_n, h):
    n = jnp.tanh(gx_n + r * gh_n)
    h = (1.0 - z) * n + z * h
    return h, h


def base(params, xs):
    return rnnlab.scan(rnnlab.gru(params.W_h.shape[0]), params, xs)[1]


def joint(params, xs):
    (Wxr, Wxz, Wxn), (Whr, Whz, Whn), (br, bz, bn), bhn = _blocks(params)
    W_rz = jnp.concatenate([jnp.concatenate([Wxr, Wxz], -1), jnp.concatenate([Whr, Whz], -1)])
    b_rz = jnp.concatenate([br, bz])

    def body(h, x):
        rz = jax.nn.sigmoid(add_bias(jnp.concatenate([x, h], -1) @ W_rz, b_rz))
        r, z = jnp.split(rz, 2, axis=-1)
        return _update(r, z, add_bias(x @ Wxn, bn), add_bias(h @ Whn, bhn), h)

    return _scan(body, params, xs)


def two(params, xs):
    def body(h, x):
        gx = add_bias(x @ params.W_x, params.b_x)
        gh = add_bias(h @ params.W_h, params.b_h)
        gx_r, gx_z, gx_n = jnp.split(gx, 3, axis=-1)
        gh_r, gh_z, gh_n = jnp.split(gh, 3, axis=-1)
        return _update(jax.nn.sigmoid(gx_r + gh_r), jax.nn.sigmoid(gx_z + gh_z), gx_n, gh_n, h)

    return _scan(body, params, xs)


def six(params, xs):
    (Wxr, Wxz, Wxn), (Whr, Whz, Whn), (br, bz, bn), bhn = _blocks(params)

    def body(h, x):
        r = jax.nn.sigmoid(add_bias(x @ Wxr, br) + h @ Whr)
        z = jax.nn.sigmoid(add_bias(x @ Wxz, bz) + h @ Whz)
        return _update(r, z, add_bias(x @ Wxn, bn), add_bias(h @ Whn, bhn), h)

    return _scan(body, params, xs)


def _flax_model(H: int):
    import flax.linen as nn

    return nn.RNN(nn.GRUCell(H), time_major=True)


def flax(params, xs):
    """flax.linen.RNN(GRUCell) with rnnlab's weights (rnnlab.convert.to_flax)."""
    model = _flax_model(params.W_h.shape[0])
    return model.apply({"params": {"cell": rnnlab.convert.to_flax(params, "gru")}}, xs)


def no_policy(params, xs):
    cell = lstm_variants.without_policy(rnnlab.gru(params.W_h.shape[0]))
    return rnnlab.scan(cell, params, xs)[1]


VARIANTS: dict[str, Callable[[Any, Any], Any]] = {
    "base": base,
    "no-policy": no_policy,
    "joint": joint,
    "two": two,
    "six": six,
    "flax": flax,
}


@dataclasses.dataclass(frozen=True)
class GRUVariantsBenchmark(lstm_variants.LSTMVariantsBenchmark):
    """python benchmarks/gru_variants.py [--quick] — each split of the GRU step's matmuls
    against rnnlab's (and PyTorch's nn.GRU), min and median of interleaved rounds."""

    variants: tuple[str, ...] = dataclasses.field(
        default=tuple(VARIANTS), metadata={"help": f"of {tuple(VARIANTS)}"})

    CELL: ClassVar[str] = "gru"
    VARIANT_FNS: ClassVar[dict[str, Callable[[Any, Any], Any]]] = VARIANTS


def main(argv=None) -> None:
    lstm_variants.main(argv, GRUVariantsBenchmark)


if __name__ == "__main__":
    main()
