"""Per-step cost of ``lax.scan`` against hidden size, batch and ``unroll``.

The cost of one step is the slope of time against T: each configuration runs at
two lengths and ``(t(T_long) - t(T_short)) / (T_long - T_short)`` removes the fixed
cost of a call (dispatch, the loop's set-up). Rows:

* ``empty``: a scan whose step only adds one to a ``[B, H]`` carry, i.e. the loop's own
  cost per iteration, which a whole-sequence kernel would save;
* ``elman``: ``rnnlab.scan`` of the tanh RNN, hidden H, batch B, input H (one matmul
  and a tanh per step), forward only, or forward+backward with ``--backward``.

Every configuration is compiled first (compile time kept), then all are timed in
interleaved rounds (each configuration once per round), and the median per round is
reported, so a machine whose load changes during the run affects all alike.

    python benchmarks/overhead.py                 # H 32..512, B 1..128, unroll 1..16
    python benchmarks/overhead.py --quick         # seconds
    python benchmarks/overhead.py --backward --out /tmp/overhead

Prints a table per row kind (µs per step; ``unroll=k / unroll=1`` ratios); ``--out DIR``
writes ``overhead-<device>.json`` and ``.md``.
"""

from __future__ import annotations

import dataclasses
import itertools
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
class OverheadBenchmark:
    """python benchmarks/overhead.py [--quick] — expect the empty loop's cost per step to be
    the floor under every row (about a microsecond or less on a CPU, several on a GPU), and
    unrolling to pay most where the step is cheapest (small H and B)."""

    rows: tuple[str, ...] = dataclasses.field(
        default=("empty", "elman"), metadata={"help": "empty and/or elman"})
    hidden_sizes: tuple[int, ...] = (32, 128, 512)
    batch_sizes: tuple[int, ...] = (1, 16, 128)
    unrolls: tuple[int, ...] = (1, 2, 4, 8, 16)
    lengths: tuple[int, ...] = dataclasses.field(
        default=(1000, 5000), metadata={"help": "the two lengths whose difference gives the slope"})
    backward: bool = dataclasses.field(
        default=False, metadata={"help": "time forward+backward instead of forward"})
    rounds: int = dataclasses.field(default=7, metadata={"help": "interleaved timed rounds"})
    seed: int = 0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": dict(hidden_sizes=(32, 128), batch_sizes=(1, 16), unrolls=(1, 4, 16),
                      lengths=(500, 2500), rounds=3),
    }

    def __post_init__(self):
        if not self.rows or set(self.rows) - {"empty", "elman"}:
            raise ValueError(f"rows must be some of ('empty', 'elman'); received {self.rows}.")
        if len(self.lengths) != 2 or not 0 < self.lengths[0] < self.lengths[1]:
            raise ValueError(f"lengths must be two increasing positive ints; received "
                             f"{self.lengths}.")
        for name in ("hidden_sizes", "batch_sizes", "unrolls"):
            values = getattr(self, name)
            if not values or min(values) < 1:
                raise ValueError(f"{name} must be non-empty positive ints; received {values}.")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1; received {self.rounds}.")


def _function(row: str, H: int, unroll: int, backward: bool):
    cell = rnnlab.registry.get("elman-tanh", H)

    def forward(params, xs):
        if row == "empty":
            return jax.lax.scan(lambda c, x: (c + x, None), xs[0], xs, unroll=unroll)[0]
        return rnnlab.scan(cell, params, xs, unroll=unroll)[1]

    if not backward:
        return jax.jit(forward), cell

    def loss(params, xs):
        return jnp.mean(forward(params, xs) ** 2)

    return jax.jit(jax.grad(loss, argnums=(0, 1))), cell


def run(config: OverheadBenchmark) -> list[dict[str, Any]]:
    """One dict per (row, H, B, unroll): µs per step, and the timings behind it."""
    key = jax.random.key(config.seed)
    jobs = []
    for row, H, B, unroll in itertools.product(
            config.rows, config.hidden_sizes, config.batch_sizes, config.unrolls):
        fn, cell = _function(row, H, unroll, config.backward)
        params = cell.init(jax.random.fold_in(key, H), H)
        for T in config.lengths:
            xs = jax.random.normal(jax.random.fold_in(key, T), (T, B, H))
            start = time.perf_counter()
            compiled = fn.lower(params, xs).compile()
            compile_s = time.perf_counter() - start
            jax.block_until_ready(compiled(params, xs))  # warm-up
            jobs.append(dict(row=row, H=H, B=B, unroll=unroll, T=T, compiled=compiled,
                             args=(params, xs), compile_s=compile_s, times_s=[]))
    for _ in range(config.rounds):
        for job in jobs:
            start = time.perf_counter()
            jax.block_until_ready(job["compiled"](*job["args"]))
            job["times_s"].append(time.perf_counter() - start)
    T_short, T_long = config.lengths
    out = []
    for short, long in zip(jobs[::2], jobs[1::2], strict=True):
        m_short, m_long = (statistics.median(j["times_s"]) for j in (short, long))
        out.append(dict(
            row=short["row"], H=short["H"], B=short["B"], unroll=short["unroll"],
            per_step_us=1e6 * (m_long - m_short) / (T_long - T_short),
            per_call_us=1e6 * (m_short - T_short * (m_long - m_short) / (T_long - T_short)),
            median_s={T_short: m_short, T_long: m_long},
            compile_s={T_short: short["compile_s"], T_long: long["compile_s"]},
            times_s={T_short: short["times_s"], T_long: long["times_s"]}))
    return out


def markdown(config: OverheadBenchmark, env: dict[str, Any], rows) -> str:
    pass_ = "forward+backward" if config.backward else "forward"
    lines = [
        "# Per-step cost of the scan",
        "",
        f"Device: {env['device_kind']} ({env['backend']}); jax {env['jax']}, jaxlib "
        f"{env.get('jaxlib', '?')}; {env['cpu_count']} CPUs; {env['time_utc']}.",
        "",
        f"{pass_}, float32; µs per step = slope between T = {config.lengths[0]} and "
        f"{config.lengths[1]} of the medians of {config.rounds} interleaved rounds; in "
        "brackets, that time over unroll=1's.",
        "",
        "| row | H | B | " + " | ".join(f"unroll {u}" for u in config.unrolls) + " |",
        "|---|---:|---:|" + "---:|" * len(config.unrolls),
    ]
    by = {(r["row"], r["H"], r["B"], r["unroll"]): r["per_step_us"] for r in rows}
    for row, H, B in itertools.product(config.rows, config.hidden_sizes, config.batch_sizes):
        base = by[(row, H, B, config.unrolls[0])]
        # A slope at or below zero is a step too cheap to resolve: no ratio is shown.
        cells = [f"{by[(row, H, B, u)]:.3f}" + (f" ({by[(row, H, B, u)] / base:.2f})"
                                               if base > 0 else "") for u in config.unrolls]
        lines.append(f"| {row} | {H} | {B} | " + " | ".join(cells) + " |")
    lines += ["", "Command: `" + " ".join(["python", *sys.argv]) + "`", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    config, ns = experiment.parse_config(OverheadBenchmark, argv,
                                         prog="python benchmarks/overhead.py")
    env = experiment.environment_info()
    print(f"device: {env['device_kind']} ({env['backend']}), jax {env['jax']}, "
          f"jaxlib {env.get('jaxlib', '?')}", flush=True)
    rows = run(config)
    text = markdown(config, env, rows)
    print(text)
    if ns.out:
        out = Path(ns.out)
        stem = "overhead-" + ("cpu" if env["backend"] == "cpu" else env["backend"])
        stem += ("-backward" if config.backward else "") + (f"-{ns.preset}" if ns.preset else "")
        experiment.atomic_write_json(out / f"{stem}.json",
                                     {"config": config, "environment": env, "results": rows})
        experiment.atomic_write_text(out / f"{stem}.md", text)
        print(f"wrote {out / (stem + '.md')} and {out / (stem + '.json')}")


if __name__ == "__main__":
    main()
