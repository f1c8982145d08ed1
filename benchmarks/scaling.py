"""Linear in T: forward+backward time per step at T = 1,000, 10,000 and 100,000.

A scan whose per-step output is small (hidden 32, batch 1: 128 bytes a step) must
cost the same per step at every T. XLA:CPU in jaxlib 0.11.1 and later (jax-ml/jax#40101)
rewrites the whole stacked output buffer when a loop writes a slice under 256 bytes
into it, which makes ``lax.scan`` quadratic in T; this script shows whether the
installed jaxlib does that to rnnlab's scans.

Rows, timed in interleaved rounds (every row and T once per round, median over rounds):

* ``canary``: a bare ``lax.scan`` with a scalar carry and stacked scalar outputs, the
  reproduction in the jax issue (forward only);
* ``<cell>``: ``rnnlab.scan`` of the cell, hidden 32, batch 1, forward+backward of
  ``mean(ys ** 2)`` with respect to the params and the inputs;
* ``<cell>-blocked``: the same scan run as an outer scan over blocks of ``block``
  steps, each an ``rnnlab.scan`` from the previous block's carry, so the outer loop
  writes one ``[block, 1, 32]`` slice (8 KiB at block 64) per iteration: a way to stay
  clear of the small-slice path should a jaxlib need it.

A row's ratio is the largest growth of its time per step from one T to the next; it is
flagged above ``tolerance``, and with ``--check`` the script then exits with status 1.
A linear scan gives a ratio of about 1 (below 1 where a fixed cost per call shows at
short T); a quadratic one about the ratio of consecutive lengths (10 with the defaults).

    python benchmarks/scaling.py                  # T = 1e3, 1e4, 1e5 (about a minute on 2 cores)
    python benchmarks/scaling.py --quick          # T = 1e2, 1e3, 1e4, seconds
    JAX_PLATFORMS=cpu python benchmarks/scaling.py --check   # the XLA:CPU backend of any jaxlib

Prints a table; ``--out DIR`` also writes ``scaling-<device>.json`` and ``.md`` there.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

import rnnlab
from rnnlab import experiment


@dataclasses.dataclass(frozen=True)
class ScalingBenchmark:
    """python benchmarks/scaling.py [--quick] [--check] — expect every row's time per step
    to stay flat across T (ratio about 1); a ratio near the ratio of consecutive lengths
    means the backend's loop is quadratic in T (jax-ml/jax#40101)."""

    cells: tuple[str, ...] = dataclasses.field(
        default=("elman-tanh", "gru", "lstm"), metadata={"help": "rnnlab.registry cells"})
    lengths: tuple[int, ...] = dataclasses.field(
        default=(1_000, 10_000, 100_000), metadata={"help": "sequence lengths T"})
    hidden_size: int = 32
    input_size: int = 1
    batch_size: int = 1
    block: int = dataclasses.field(
        default=64, metadata={"help": "steps per block of the -blocked rows (0: no such rows)"})
    rounds: int = dataclasses.field(default=5, metadata={"help": "interleaved timed rounds"})
    tolerance: float = dataclasses.field(
        default=3.0,
        metadata={"help": "largest allowed growth of the time per step between consecutive T"})
    check: bool = dataclasses.field(
        default=False, metadata={"help": "exit with status 1 if a row is flagged"})
    seed: int = 0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": dict(lengths=(100, 1_000, 10_000), rounds=3),
    }

    def __post_init__(self):
        for name in self.cells:
            rnnlab.registry.entry(name)  # raises on an unknown cell
        if len(self.lengths) < 2 or min(self.lengths) < 1:
            raise ValueError(f"lengths must be at least two positive ints; received "
                             f"{self.lengths}.")
        for name in ("hidden_size", "input_size", "batch_size", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; received {getattr(self, name)}.")
        if self.block < 0:
            raise ValueError(f"block must be >= 0; received {self.block}.")
        if not self.tolerance > 1:
            raise ValueError(f"tolerance must be > 1; received {self.tolerance}.")


def canary(T: int):
    """The jax issue's reproduction: stacked scalar outputs of a scalar-carry scan."""

    def f(c0):
        return jax.lax.scan(lambda c, _: (0.999 * c + 1.0, c), c0, None, length=T)[1]

    return jax.jit(f), (jnp.float32(0.5),)


def blocked_scan(cell, params, xs, block: int):
    """``rnnlab.scan(cell, params, xs)``'s outputs, evaluated ``block`` steps at a time."""
    T = xs.shape[0]
    main = (T // block) * block
    carry = cell.initial_carry(params, xs.shape[1:-1])
    head = xs[:main].reshape((T // block, block) + xs.shape[1:])

    def one(c, x_block):
        return rnnlab.scan(cell, params, x_block, carry=c)

    carry, ys = jax.lax.scan(one, carry, head)
    ys = ys.reshape((main,) + ys.shape[2:])
    if main < T:
        _, tail = rnnlab.scan(cell, params, xs[main:], carry=carry)
        ys = jnp.concatenate([ys, tail], axis=0)
    return ys


def cell_problem(cell, params, xs, block: int | None):
    """A jitted forward+backward of ``mean(ys ** 2)`` and its arguments."""

    def loss(p, x):
        ys = rnnlab.scan(cell, p, x)[1] if block is None else blocked_scan(cell, p, x, block)
        return jnp.mean(ys ** 2)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), (params, xs)


def problems(config: ScalingBenchmark) -> list[tuple[str, int, Any, tuple]]:
    """``(row, T, fn, args)`` for every row and T."""
    k_params, k_data = jax.random.split(jax.random.key(config.seed))
    out = [("canary", T, *canary(T)) for T in config.lengths]
    for i, name in enumerate(config.cells):
        cell = rnnlab.registry.get(name, config.hidden_size)
        params = cell.init(jax.random.fold_in(k_params, i), config.input_size)
        for T in config.lengths:
            xs = jax.random.normal(jax.random.fold_in(k_data, T),
                                   (T, config.batch_size, config.input_size))
            out.append((name, T, *cell_problem(cell, params, xs, None)))
            if config.block:
                out.append((f"{name}-blocked", T, *cell_problem(cell, params, xs, config.block)))
    return out


def run(config: ScalingBenchmark) -> list[dict[str, Any]]:
    """Times every row of ``config`` (see :func:`time_problems`)."""
    return time_problems(problems(config), rounds=config.rounds, tolerance=config.tolerance)


def time_problems(problems, *, rounds: int, tolerance: float) -> list[dict[str, Any]]:
    """Compiles every ``(row, T, fn, args)``, then times them all in interleaved rounds.

    Returns one dict per row: its ``timings`` (per T: median, time per step, compile
    time, every round's time), its ``ratio`` (the largest growth of the time per step
    from one T to the next, in the order given) and whether it is ``flagged``.
    """
    compiled = []
    for row, T, fn, args in problems:
        start = time.perf_counter()
        c = fn.lower(*args).compile()
        compile_s = time.perf_counter() - start
        jax.block_until_ready(c(*args))  # warm-up
        compiled.append((row, T, c, args, compile_s, []))
    for _ in range(rounds):
        for _, _, c, args, _, times in compiled:
            start = time.perf_counter()
            jax.block_until_ready(c(*args))
            times.append(time.perf_counter() - start)
    rows: dict[str, dict[str, Any]] = {}
    for row, T, _, _, compile_s, times in compiled:
        med = statistics.median(times)
        rows.setdefault(row, {"row": row, "timings": []})["timings"].append(dict(
            T=T, median_s=med, per_step_us=1e6 * med / T, compile_s=compile_s, times_s=times))
    for r in rows.values():
        per_step = [t["per_step_us"] for t in r["timings"]]
        # Consecutive lengths, so that a fixed per-call cost at the shortest T cannot hide growth.
        r["ratio"] = max(b / a for a, b in zip(per_step, per_step[1:], strict=False))
        r["flagged"] = bool(r["ratio"] > tolerance)
    return list(rows.values())


def markdown(config: ScalingBenchmark, env: dict[str, Any], rows) -> str:
    Ts = sorted(config.lengths)
    lines = [
        "# Time per step against T",
        "",
        f"Device: {env['device_kind']} ({env['backend']}); jax {env['jax']}, jaxlib "
        f"{env.get('jaxlib', '?')}; {env['cpu_count']} CPUs; {env['time_utc']}.",
        "",
        f"Hidden {config.hidden_size}, batch {config.batch_size}, input {config.input_size}, "
        f"float32; cells forward+backward, canary forward; median of {config.rounds} "
        f"interleaved rounds. Ratio = the largest growth of the time per step from one T "
        f"to the next (quadratic in T: about {Ts[-1] // Ts[-2]}); flagged above "
        f"{config.tolerance:g}.",
        "",
        "| row | " + " | ".join(f"T={T} (us/step)" for T in Ts) + " | ratio | flagged |",
        "|---|" + "---:|" * len(Ts) + "---:|---|",
    ]
    for r in rows:
        cells = " | ".join(f"{t['per_step_us']:.3f}" for t in r["timings"])
        lines.append(f"| {r['row']} | {cells} | {r['ratio']:.2f} | "
                     f"{'QUADRATIC?' if r['flagged'] else 'no'} |")
    lines += ["", "Command: `" + " ".join(["python", *sys.argv]) + "`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    config, ns = experiment.parse_config(ScalingBenchmark, argv,
                                         prog="python benchmarks/scaling.py")
    config = dataclasses.replace(config, lengths=tuple(sorted(config.lengths)))
    env = experiment.environment_info()
    print(f"device: {env['device_kind']} ({env['backend']}), jax {env['jax']}, "
          f"jaxlib {env.get('jaxlib', '?')}", flush=True)
    rows = run(config)
    text = markdown(config, env, rows)
    print(text)
    if ns.out:
        out = Path(ns.out)
        stem = "scaling-" + ("cpu" if env["backend"] == "cpu" else env["backend"])
        stem += f"-{ns.preset}" if ns.preset else ""
        experiment.atomic_write_json(out / f"{stem}.json",
                                     {"config": config, "environment": env, "results": rows})
        experiment.atomic_write_text(out / f"{stem}.md", text)
        print(f"wrote {out / (stem + '.md')} and {out / (stem + '.json')}")
    flagged = [r["row"] for r in rows if r["flagged"]]
    if flagged:
        print(f"flagged (time per step grows with T): {', '.join(flagged)}", file=sys.stderr)
    return 1 if (flagged and config.check) else 0


if __name__ == "__main__":
    sys.exit(main())
