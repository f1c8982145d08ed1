"""Parallel (associative) scan against the sequential lax.scan, for the linear cells.

For each cell x sequence length T x {forward, forward+backward} x {sequential,
parallel}: compile once (timed separately), warm up, then time ``repeats``
calls with ``jax.block_until_ready`` and report the median. Both modes run in
the same process on the same device, so their ratio is the comparison.

    python benchmarks/parallel_scan.py            # T = 256 ... 16384
    python benchmarks/parallel_scan.py --quick    # smoke test, seconds
    python benchmarks/parallel_scan.py --out /tmp/bench   # elsewhere than benchmarks/results

Writes ``parallel_scan-<device>.md`` and ``.json`` (``parallel_scan-cpu``,
``parallel_scan-gpu-h100``, ...; ``-quick`` for ``--quick``; config, environment,
every timing) into ``benchmarks/results/``, which holds the latest published run per
device, or into ``--out``. The crossover it measured is in docs/performance.md.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

import rnnlab
from rnnlab import experiment

MODES = ("sequential", "parallel")
PASSES = ("forward", "forward+backward")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass(frozen=True)
class ParallelScanBenchmark:
    """python benchmarks/parallel_scan.py [--quick] — expect the parallel scan's lead to grow
    with T on a GPU (depth O(log T) against T). On a CPU with few cores the parallel form's
    extra work (about twice the sequential one's) wins only at short T, if at all."""

    cells: tuple[str, ...] = dataclasses.field(
        default=("lru", "mingru", "minlstm"),
        metadata={"help": "rnnlab.registry cells with the parallel form"})
    lengths: tuple[int, ...] = dataclasses.field(
        default=(256, 1024, 4096, 16384), metadata={"help": "sequence lengths T"})
    batch_size: int = 16
    input_size: int = 64
    hidden_size: int = 64
    repeats: int = dataclasses.field(default=7, metadata={"help": "timed calls; median reported"})
    warmup: int = dataclasses.field(default=2, metadata={"help": "untimed calls after compiling"})
    seed: int = 0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": dict(lengths=(64, 256), batch_size=4, input_size=8, hidden_size=8,
                      repeats=3, warmup=1),
    }

    def __post_init__(self):
        if not self.cells or not self.lengths:
            raise ValueError("cells and lengths must be non-empty.")
        for name in self.cells:
            cell = rnnlab.registry.get(name, 1)  # raises on an unknown cell
            if not rnnlab.has_parallel_form(cell):
                raise ValueError(f"cell {name!r} has no parallel form (see rnnlab.LinearCell).")
        for name in ("batch_size", "input_size", "hidden_size", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; received {getattr(self, name)}.")
        if self.warmup < 0 or min(self.lengths) < 1:
            raise ValueError("warmup must be >= 0 and every length >= 1.")


def _function(cell: Any, pass_: str, mode: str):
    def forward(params, xs):
        return rnnlab.scan(cell, params, xs, mode=mode)[1]

    if pass_ == "forward":
        return jax.jit(forward)

    def loss(params, xs):
        return jnp.mean(forward(params, xs) ** 2)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def time_one(fn, args, *, warmup: int, repeats: int) -> dict[str, Any]:
    """Compile time, then the median of ``repeats`` timed calls after ``warmup`` calls."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return {"compile_s": compile_s, "median_s": statistics.median(times), "times_s": times}


def run(config: ParallelScanBenchmark) -> list[dict[str, Any]]:
    k_params, k_data = jax.random.split(jax.random.key(config.seed))
    rows = []
    for i, name in enumerate(config.cells):
        cell = rnnlab.registry.get(name, config.hidden_size)
        params = cell.init(jax.random.fold_in(k_params, i), config.input_size)
        for T in config.lengths:
            xs = jax.random.normal(
                jax.random.fold_in(k_data, T), (T, config.batch_size, config.input_size)
            )
            for pass_ in PASSES:
                row = {"cell": name, "T": T, "pass": pass_}
                for mode in MODES:
                    timing = time_one(
                        _function(cell, pass_, mode), (params, xs),
                        warmup=config.warmup, repeats=config.repeats,
                    )
                    row[mode] = timing
                row["speedup"] = row["sequential"]["median_s"] / row["parallel"]["median_s"]
                rows.append(row)
                print(
                    f"{name:8s} T={T:6d} {pass_:17s} sequential "
                    f"{1e3 * row['sequential']['median_s']:9.3f} ms  parallel "
                    f"{1e3 * row['parallel']['median_s']:9.3f} ms  speedup {row['speedup']:.2f}x",
                    flush=True,
                )
    return rows


def markdown(config: ParallelScanBenchmark, env: dict[str, Any], rows) -> str:
    lines = [
        "# Parallel vs sequential scan",
        "",
        f"Device: {env['device_kind']} ({env['backend']}); jax {env['jax']}, "
        f"jaxlib {env.get('jaxlib', '?')}, python {env['python']}; {env['cpu_count']} CPUs; "
        f"{env['time_utc']}.",
        "",
        f"Batch {config.batch_size}, input {config.input_size}, hidden "
        f"{config.hidden_size}, float32; median of {config.repeats} calls after "
        f"{config.warmup} warm-up calls; compile time measured separately. Speedup = "
        "sequential / parallel median time (> 1: parallel is faster).",
        "",
        "| cell | T | pass | sequential (ms) | parallel (ms) | speedup | "
        "compile seq (s) | compile par (s) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        seq, par = r["sequential"], r["parallel"]
        lines.append(
            f"| {r['cell']} | {r['T']} | {r['pass']} | {1e3 * seq['median_s']:.3f} | "
            f"{1e3 * par['median_s']:.3f} | {r['speedup']:.2f} | {seq['compile_s']:.2f} | "
            f"{par['compile_s']:.2f} |"
        )
    lines += ["", "Command: `" + " ".join(["python", *sys.argv]) + "`", ""]
    return "\n".join(lines)


def device_slug(backend: str, device_kind: str) -> str:
    """The device in a file name, as benchmarks/run.py names it: ``cpu``, ``gpu-h100``, ..."""
    if backend == "cpu":
        return "cpu"
    words = [w for w in re.split(r"[^a-z0-9]+", device_kind.lower()) if w]
    model = next((w for w in words if any(c.isdigit() for c in w)), "-".join(words))
    return f"{backend}-{model}" if model else backend


def main(argv=None) -> None:
    config, ns = experiment.parse_config(
        ParallelScanBenchmark, argv, prog="python benchmarks/parallel_scan.py"
    )
    env = experiment.environment_info()
    print(
        f"device: {env['device_kind']} ({env['backend']}), jax {env['jax']}, "
        f"jaxlib {env.get('jaxlib', '?')}, rnnlab {env.get('rnnlab', '?')}",
        flush=True,
    )
    rows = run(config)
    out = Path(ns.out) if ns.out else DEFAULT_OUT
    stem = "-".join(["parallel_scan", device_slug(env["backend"], env["device_kind"])]
                    + ([ns.preset] if ns.preset else []))
    experiment.atomic_write_json(
        out / f"{stem}.json", {"config": config, "environment": env, "results": rows}
    )
    experiment.atomic_write_text(out / f"{stem}.md", markdown(config, env, rows))
    print(f"wrote {out / (stem + '.md')} and {out / (stem + '.json')}")


if __name__ == "__main__":
    main()
