"""Ideas for a faster scanned LSTM on CPU, each timed against the plain scan in one process.

Every variant computes the same LSTM (rnnlab.lstm's params and equations) over
``[T, B, F]`` inputs; each is timed forward and forward+backward (gradient of
mean(ys^2) w.r.t. params and inputs) in interleaved rounds (``run.py``'s
``time_interleaved``), together with PyTorch's ``nn.LSTM`` when torch is
installed, so that every ratio comes from the same minutes of the same machine.

    python benchmarks/lstm_variants.py              # small, medium, large; minutes
    python benchmarks/lstm_variants.py --quick      # tiny, seconds (what the test runs)

Variants:

- ``base``: ``rnnlab.scan`` over ``rnnlab.lstm`` (one ``[x, h] @ W`` matmul per step;
  the backward pass keeps only its result z per step: the step's ``checkpoint_policy``).
- ``no-policy``: the same step without its ``checkpoint_policy``: the backward pass keeps
  every gate's value and derivative factors (13 arrays per step).
- ``pipelined``: step t's body also computes ``x_{t+1} @ W_x + b`` for the next step (in
  the loop, one step ahead, unlike ``hoisted``), which the runtime could overlap with
  step t's gate arithmetic.
- ``unroll2``, ``unroll4``: the same with ``lax.scan(unroll=k)``.
- ``hoisted``: ``x_t W_x + b`` for all t as one matmul before the loop, ``h W_h`` inside.
- ``one-tanh``: the four gate activations as one ``tanh`` over all 4H pre-activations
  (``sigmoid(x) = (1 + tanh(x / 2)) / 2``) instead of three sigmoids and a tanh.
- ``batch-split``: the batch stepped as two independent halves, two matmuls per step
  that XLA's runtime could run on both cores at once.
- ``custom-vjp``: a hand-written sequence VJP (``jax.custom_vjp``): the forward loop
  keeps only the activated gates and c; the backward loop computes only the gate
  gradients and ``dh @ W_h^T``; the weight and input gradients are single matmuls
  over all ``T * B`` rows after the loop (what cuDNN and oneDNN do). It has no
  forward-mode derivative, which is one reason rnnlab does not use it.
- ``custom-vjp-z``: the same idea with the residuals trimmed as in ``base``: the forward
  loop keeps z = ``[x, h] W + b``, c_{t-1} and h_{t-1} per step, the backward loop
  recomputes the gates from z, writes dz over z in the same buffer and multiplies by a
  pre-transposed ``W_h^T``. No forward-mode derivative either.
- ``custom-jvp-z``: the same residuals as a ``jax.custom_jvp`` of the sequence (so
  ``jax.jvp`` works, as in ``rnnlab.fused``): the tangents of all input and weight terms
  as one matmul each over ``T * B`` rows, a loop over the rest; reverse mode is JAX's
  transpose of it, recomputing the gates from z under ``jax.checkpoint``.
- ``split-xh``: ``x @ W_x + h @ W_h`` instead of one matmul over ``[x, h]``.
- ``split-gates``: eight matmuls, ``x @ W_x_g + h @ W_h_g`` per gate g, the gates never
  concatenated. (Splitting made the GRU's step faster on a 2-core CPU, where XLA then
  ran its matmuls on both cores: ``gru_variants.py``; for the LSTM it did not.)

The variants not built on ``rnnlab.scan`` (all but ``base``, ``unroll2`` and ``unroll4``)
and without a hand-written derivative (the three ``custom-*``) are differentiated plainly,
with no checkpoint policy: for the effect of a layout alone on the forward+backward pass,
compare them with ``no-policy``.

Writes ``lstm_variants.json`` and ``lstm_variants.md`` into ``benchmarks/results/``
(or ``--out``). Nothing here is asserted in tests except that the variants agree.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

import rnnlab
from rnnlab import experiment
from rnnlab.cell import add_bias, check_choice

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # noqa: E402
    PASSES,
    SIZES,
    _jax_passes,
    _jax_prepared,
    machine_info,
    prepare_torch,
    time_interleaved,
    torch_available,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------- variants
# Each is fn(params: rnnlab.LSTMParams, xs [T, B, F]) -> ys [T, B, H], zero initial carry.


def _gates(z, c):
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return c, jax.nn.sigmoid(o) * jnp.tanh(c)


def _zeros(params, xs):
    return jnp.zeros(xs.shape[1:-1] + params.W_h.shape[:1], xs.dtype)


def base(params, xs, unroll=1):
    return rnnlab.scan(rnnlab.lstm(params.W_h.shape[0]), params, xs, unroll=unroll)[1]


def hoisted(params, xs):
    gx = add_bias(xs @ params.W_x, params.b)  # [T, B, 4H], one matmul

    def body(carry, gx_t):
        c, h = _gates(gx_t + carry[1] @ params.W_h, carry[0])
        return (c, h), h

    z = _zeros(params, xs)
    return jax.lax.scan(body, (z, z), gx)[1]


def one_tanh(params, xs):
    H = params.W_h.shape[0]
    # a = alpha * tanh(alpha * z) + beta: sigmoid on the i, f, o blocks, tanh on g.
    alpha = jnp.asarray(np.repeat([0.5, 0.5, 1.0, 0.5], H), xs.dtype)
    beta = jnp.asarray(np.repeat([0.5, 0.5, 0.0, 0.5], H), xs.dtype)
    W = jnp.concatenate([params.W_x, params.W_h], axis=0)

    def body(carry, x):
        c, h = carry
        z = add_bias(jnp.concatenate([x, h], axis=-1) @ W, params.b)
        a = alpha[None] * jnp.tanh(alpha[None] * z) + beta[None]  # z is [B, 4H]
        i, f, g, o = jnp.split(a, 4, axis=-1)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (c, h), h

    z = _zeros(params, xs)
    return jax.lax.scan(body, (z, z), xs)[1]


def batch_split(params, xs):
    W = jnp.concatenate([params.W_x, params.W_h], axis=0)
    half = xs.shape[1] // 2

    def step(c, h, x):
        c, h = _gates(add_bias(jnp.concatenate([x, h], axis=-1) @ W, params.b), c)
        return c, h

    def body(carry, x):
        new = tuple(step(c, h, xx) for (c, h), xx in zip(carry, (x[:half], x[half:]), strict=True))
        return new, jnp.concatenate([new[0][1], new[1][1]], axis=0)

    z = _zeros(params, xs)
    return jax.lax.scan(body, ((z[:half], z[:half]), (z[half:], z[half:])), xs)[1]


def _vjp_forward_loop(params, xs, keep):
    W = jnp.concatenate([params.W_x, params.W_h], axis=0)

    def body(carry, x):
        c, h = carry
        z = add_bias(jnp.concatenate([x, h], axis=-1) @ W, params.b)
        i, f, g, o = jnp.split(z, 4, axis=-1)
        i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (c, h), ((h, jnp.concatenate([i, f, g, o], axis=-1), c) if keep else h)

    z = _zeros(params, xs)
    return jax.lax.scan(body, (z, z), xs)[1]


@jax.custom_vjp
def custom_vjp(params, xs):
    return _vjp_forward_loop(params, xs, keep=False)


def _custom_fwd(params, xs):
    ys, gates, cs = _vjp_forward_loop(params, xs, keep=True)
    return ys, (params, xs, ys, gates, cs)


def _gate_grads(i, f, g, o, c_prev, tanh_c, dc, dh):
    """One step of the hand-written backward loops: from the activated gates, c_{t-1},
    tanh(c_t) and the cotangents of c_t and h_t, the cotangent of c_{t-1} through the cell
    state and that of z_t (the pre-activations)."""
    dc = dc + dh * o * (1 - tanh_c * tanh_c)
    dz = jnp.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                          dc * i * (1 - g * g), dh * tanh_c * o * (1 - o)], axis=-1)
    return dc * f, dz


def _grads_after_loop(params, xs, h_prev, dzs):
    """The weight and input gradients from every step's dz at once: one matmul each over
    all ``T * B`` rows (what the custom derivatives move out of the loop)."""
    T, B, F = xs.shape
    dz = dzs.reshape(T * B, -1)
    grads = rnnlab.LSTMParams(W_x=xs.reshape(T * B, F).T @ dz,
                              W_h=h_prev.reshape(T * B, -1).T @ dz, b=dz.sum(0))
    return grads, (dz @ params.W_x.T).reshape(xs.shape)


def _custom_bwd(res, dys):
    params, xs, ys, gates, cs = res
    z = jnp.zeros_like(cs[0])
    c_prev = jnp.concatenate([z[None], cs[:-1]], axis=0)
    W_hT = params.W_h.T

    def body(carry, inp):
        dc, dh = carry
        dy, a, c, cp = inp
        i, f, g, o = jnp.split(a, 4, axis=-1)
        dc, dz = _gate_grads(i, f, g, o, cp, jnp.tanh(c), dc, dh + dy)
        return (dc, dz @ W_hT), dz

    _, dzs = jax.lax.scan(body, (z, z), (dys, gates, cs, c_prev), reverse=True)
    h_prev = jnp.concatenate([z[None], ys[:-1]], axis=0)
    return _grads_after_loop(params, xs, h_prev, dzs)


custom_vjp.defvjp(_custom_fwd, _custom_bwd)


def _z_forward_loop(params, xs):
    """The forward loop, also returning per step z = [x, h] W + b and the carry it read."""
    W = jnp.concatenate([params.W_x, params.W_h], axis=0)

    def body(carry, x):
        c, h = carry
        z = add_bias(jnp.concatenate([x, h], axis=-1) @ W, params.b)
        new_c, new_h = _gates(z, c)
        return (new_c, new_h), (new_h, z, c, h)

    z = _zeros(params, xs)
    return jax.lax.scan(body, (z, z), xs)[1]  # ys, zs, c_prev, h_prev


@jax.custom_vjp
def custom_vjp_z(params, xs):
    return _vjp_forward_loop(params, xs, keep=False)


def _custom_z_fwd(params, xs):
    ys, zs, c_prev, h_prev = _z_forward_loop(params, xs)
    return ys, (params, xs, zs, c_prev, h_prev)


def _custom_z_bwd(res, dys):
    params, xs, zs, c_prev, h_prev = res
    W_hT = params.W_h.T  # materialised once: the loop's dz @ W_h^T is then a plain matmul

    def body(carry, t):
        dc, dh, buf = carry
        z, cp, dy = (jax.lax.dynamic_index_in_dim(a, t, keepdims=False) for a in (buf, c_prev, dys))
        i, f, g, o = jnp.split(z, 4, axis=-1)
        i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
        dc, dz = _gate_grads(i, f, g, o, cp, jnp.tanh(f * cp + i * g), dc, dh + dy)
        # dz overwrites z in the same buffer: z_t is dead once read.
        return (dc, dz @ W_hT, jax.lax.dynamic_update_index_in_dim(buf, dz, t, 0)), None

    zero = jnp.zeros_like(c_prev[0])
    (_, _, dzs), _ = jax.lax.scan(body, (zero, zero, zs), jnp.arange(xs.shape[0]), reverse=True)
    return _grads_after_loop(params, xs, h_prev, dzs)


custom_vjp_z.defvjp(_custom_z_fwd, _custom_z_bwd)


@jax.custom_jvp
def custom_jvp_z(params, xs):
    return _vjp_forward_loop(params, xs, keep=False)


@custom_jvp_z.defjvp
def _custom_jvp_z_rule(primals, tangents):
    params, xs = primals
    d_params, d_xs = tangents
    ys, zs, c_prev, h_prev = _z_forward_loop(params, xs)
    T, B, F = xs.shape
    flat = lambda a: a.reshape(T * B, -1)  # noqa: E731
    # Every term of dz_t that does not involve the previous step's tangent, for all t at
    # once: reverse mode turns these into the weight and input gradients, one matmul each.
    d_pre = add_bias(flat(xs) @ d_params.W_x + flat(d_xs) @ params.W_x
                     + flat(h_prev) @ d_params.W_h, d_params.b).reshape(T, B, -1)

    # Recomputed from z_t and c_{t-1} in the backward loop, not stored per step.
    @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable,
                       prevent_cse=False)
    def linear_gates(z, cp, dz, dc):
        return jax.jvp(_gates, (z, cp), (dz, dc))[1]

    def body(carry, inp):
        dc, dh = carry
        z, cp, dp = inp
        dc, dh = linear_gates(z, cp, dp + dh @ params.W_h, dc)
        return (dc, dh), dh

    zero = _zeros(params, xs)
    return ys, jax.lax.scan(body, (zero, zero), (zs, c_prev, d_pre))[1]


def split_xh(params, xs):
    def body(carry, x):
        c, h = _gates(add_bias(x @ params.W_x + carry[1] @ params.W_h, params.b), carry[0])
        return (c, h), h

    z = _zeros(params, xs)
    return jax.lax.scan(body, (z, z), xs)[1]


def split_gates(params, xs):
    # Sliced before the loop: XLA leaves slices inside a loop body there.
    W_x = jnp.split(params.W_x, 4, axis=-1)
    W_h = jnp.split(params.W_h, 4, axis=-1)
    b = jnp.split(params.b, 4)

    def body(carry, x):
        c, h = carry
        i, f, g, o = (add_bias(x @ W_x[k] + h @ W_h[k], b[k]) for k in range(4))
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (c, h), h

    z = _zeros(params, xs)
    return jax.lax.scan(body, (z, z), xs)[1]


def without_policy(cell):
    """``cell`` with a step that carries no ``checkpoint_policy``: plain autodiff of the step,
    every gate's value and derivative factors kept per step (rnnlab's scan until the policy
    came in, 2026-11-25)."""
    return cell._replace(step=lambda p, c, x: cell.step(p, c, x))


def no_policy(params, xs):
    return rnnlab.scan(without_policy(rnnlab.lstm(params.W_h.shape[0])), params, xs)[1]


def pipelined(params, xs):
    """Step t's loop body also computes the next step's ``x_{t+1} @ W_x + b``, carried
    to step t+1, so that the runtime can overlap it with this step's gate arithmetic."""

    def project(x):
        return add_bias(x @ params.W_x, params.b)

    def body(carry, x_next):
        c, h, gx = carry
        c, h = _gates(gx + h @ params.W_h, c)
        return (c, h, project(x_next)), h

    z = _zeros(params, xs)
    # The last step's "next" input is a dummy: its projection is computed and dropped.
    xs_next = jnp.concatenate([xs[1:], xs[:1]], axis=0)
    return jax.lax.scan(body, (z, z, project(xs[0])), xs_next)[1]


VARIANTS: dict[str, Callable[[Any, Any], Any]] = {
    "base": base,
    "no-policy": no_policy,
    "pipelined": pipelined,
    "unroll2": lambda p, x: base(p, x, unroll=2),
    "unroll4": lambda p, x: base(p, x, unroll=4),
    "hoisted": hoisted,
    "one-tanh": one_tanh,
    "batch-split": batch_split,
    "custom-vjp": custom_vjp,
    "custom-vjp-z": custom_vjp_z,
    "custom-jvp-z": custom_jvp_z,
    "split-xh": split_xh,
    "split-gates": split_gates,
}


# ----------------------------------------------------------------------------- suite


@dataclasses.dataclass(frozen=True)
class LSTMVariantsBenchmark:
    """python benchmarks/lstm_variants.py [--quick] — each idea for a faster LSTM scan
    against the plain one (and PyTorch), min and median of interleaved rounds."""

    sizes: tuple[str, ...] = dataclasses.field(
        default=("small", "medium", "large"), metadata={"help": f"of {tuple(SIZES)}"})
    variants: tuple[str, ...] = dataclasses.field(
        default=tuple(VARIANTS), metadata={"help": f"of {tuple(VARIANTS)}"})
    torch: bool = dataclasses.field(
        default=True,
        metadata={"help": "also time PyTorch's nn.LSTM (nn.GRU) if torch is importable"})
    repeats: int = dataclasses.field(default=9, metadata={"help": "interleaved timed rounds"})
    warmup: int = dataclasses.field(default=2, metadata={"help": "untimed calls after compiling"})
    seed: int = 0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": dict(sizes=("tiny",), torch=False, repeats=2, warmup=1),
    }
    # What gru_variants.py's subclass replaces.
    CELL: ClassVar[str] = "lstm"
    VARIANT_FNS: ClassVar[dict[str, Callable[[Any, Any], Any]]] = VARIANTS

    def __post_init__(self):
        for s in self.sizes:
            check_choice(s, tuple(SIZES), "sizes")
        for v in self.variants:
            check_choice(v, tuple(self.VARIANT_FNS), "variants")
        if "base" not in self.variants:
            raise ValueError("variants must include 'base' (the ratios are to it).")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError("repeats >= 1 and warmup >= 0 are required.")


def run(config: LSTMVariantsBenchmark) -> list[dict[str, Any]]:
    use_torch = config.torch and torch_available()
    if use_torch:
        import os

        import torch

        torch.set_num_threads(len(os.sched_getaffinity(0)))
    rows = []
    for size in config.sizes:
        T, B, F, H = SIZES[size]
        key = jax.random.key(config.seed)
        params = getattr(rnnlab, config.CELL)(H).init(key, F)
        xs = jax.random.normal(jax.random.fold_in(key, 1), (T, B, F))
        calls: dict[str, dict[str, Callable[[], Any]]] = {p: {} for p in PASSES}
        for name in config.variants:
            for pass_, fn in _jax_passes(config.VARIANT_FNS[name], params, xs).items():
                calls[pass_][name] = _jax_prepared(fn, (params, xs))["call"]
        if use_torch:
            for pass_, prepared in prepare_torch(config.CELL, T, B, F, H, key).items():
                calls[pass_]["torch"] = prepared["call"]
        for pass_ in PASSES:
            timed = time_interleaved(calls[pass_], warmup=config.warmup, repeats=config.repeats)
            row = {"size": size, "T": T, "B": B, "F": F, "H": H, "pass": pass_, "times": timed}
            rows.append(row)
            base_min = timed["base"]["min_s"]
            print(f"{size:6s} {pass_:16s} " + "  ".join(
                f"{k} {1e3 * v['min_s']:.2f} ms ({v['min_s'] / base_min:.2f})"
                for k, v in timed.items()), flush=True)
    return rows


def markdown(config, env, machine, rows) -> str:
    names = list(rows[0]["times"]) if rows else []
    lines = [
        f"# {config.CELL.upper()} scan variants on CPU",
        "",
        f"Machine: {machine.get('cpu_model', '?')}, {machine['cores']} cores, load average "
        f"{', '.join(f'{x:.2f}' for x in machine.get('load_average', ()))}; "
        f"{env['device_kind']} ({env['backend']}); jax {env['jax']}, torch "
        f"{env.get('torch', 'absent')}; {env['time_utc']}.",
        "",
        f"float32; {config.repeats} interleaved rounds after {config.warmup} warm-up calls. "
        "Each cell: the minimum time in ms (what a quiet machine shows), and in brackets its "
        "ratio to `base`, the plain `rnnlab.scan` (< 1: the variant is faster). Medians are in "
        f"the JSON. Variants are described in `benchmarks/{config.CELL}_variants.py`.",
        "",
        "| size (T,B,F,H) | pass | " + " | ".join(names) + " |",
        "|---|---|" + "---:|" * len(names),
    ]
    for r in rows:
        base_min = r["times"]["base"]["min_s"]
        lines.append(f"| {r['size']} ({r['T']},{r['B']},{r['F']},{r['H']}) | {r['pass']} | "
                     + " | ".join(f"{1e3 * r['times'][n]['min_s']:.2f} "
                                  f"({r['times'][n]['min_s'] / base_min:.2f})" for n in names)
                     + " |")
    lines += ["", "Command: `" + " ".join(["python", *sys.argv]) + "`", ""]
    return "\n".join(lines)


def main(argv=None, benchmark: type[LSTMVariantsBenchmark] = LSTMVariantsBenchmark) -> None:
    name = f"{benchmark.CELL}_variants"
    config, ns = experiment.parse_config(benchmark, argv, prog=f"python benchmarks/{name}.py")
    env = experiment.environment_info()
    if config.torch and torch_available():
        import torch

        env["torch"] = torch.__version__
    machine = machine_info()
    rows = run(config)
    out = Path(ns.out) if ns.out else DEFAULT_OUT
    stem = f"{name}_quick" if ns.preset == "quick" else name
    experiment.atomic_write_json(out / f"{stem}.json", {"config": config, "environment": env,
                                                        "machine": machine, "results": rows})
    experiment.atomic_write_text(out / f"{stem}.md", markdown(config, env, machine, rows))
    print(f"wrote {out / (stem + '.md')} and {out / (stem + '.json')}")


if __name__ == "__main__":
    main()
