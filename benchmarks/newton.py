"""Newton (DEER) and quasi-Newton (quasi-DEER) scans against the sequential lax.scan.

For each cell x hidden size H x sequence length T x {forward, forward+backward} x
{sequential, newton, quasi-newton}: compile once (timed separately), warm up, then
time ``repeats`` calls with ``jax.block_until_ready`` and report the median, and the
Newton iterations each solve took (``return_info=True``, outside the timing). All
modes run in the same process on the same device, so their ratios are the comparison.

    python benchmarks/newton.py                  # T = 64 ... 16384, H = 8, 32, 64
    python benchmarks/newton.py --quick          # smoke test, seconds
    python benchmarks/newton.py --out /tmp/bench # elsewhere than benchmarks/results

Full Newton keeps T x B Jacobians of H x H (and the associative scan a few copies):
a configuration whose Jacobians would exceed ``--max-jacobian-gb`` is skipped for
``newton`` and marked so. Writes ``newton-<device>.md`` and ``.json`` (``-quick`` for
``--quick``) into ``benchmarks/results/`` or ``--out``. docs/performance.md ("Newton
modes") says what it measured.
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

MODES = ("sequential", "newton", "quasi-newton")
PASSES = ("forward", "forward+backward")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass(frozen=True)
class NewtonBenchmark:
    """python benchmarks/newton.py [--quick] — expect the sequential scan to win on a CPU
    with few cores at every size (each Newton iteration does about as much work as a whole
    sequential pass, more for full Jacobians, and there are several), quasi-Newton to beat
    Newton as H grows (O(H) against O(H^3) per step in the scan) despite more iterations,
    and iterations to stay far below T for these contracting cells at initialisation. On a
    wide device the Newton modes' O(log T) depth can pay off at long T."""

    cells: tuple[str, ...] = dataclasses.field(
        default=("elman-tanh", "gru"), metadata={"help": "rnnlab.registry cells"})
    lengths: tuple[int, ...] = dataclasses.field(
        default=(64, 256, 1024, 4096, 16384), metadata={"help": "sequence lengths T"})
    hidden_sizes: tuple[int, ...] = dataclasses.field(
        default=(8, 32, 64), metadata={"help": "hidden sizes H"})
    batch_size: int = 4
    input_size: int = 8
    repeats: int = dataclasses.field(default=5, metadata={"help": "timed calls; median reported"})
    warmup: int = dataclasses.field(default=1, metadata={"help": "untimed calls after compiling"})
    max_jacobian_gb: float = dataclasses.field(
        default=2.0, metadata={"help": "skip full Newton where T*B*H*H float32s exceed this"})
    seed: int = 0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": dict(cells=("elman-tanh",), lengths=(64, 256), hidden_sizes=(8,),
                      batch_size=2, repeats=3, warmup=1),
    }

    def __post_init__(self):
        if not self.cells or not self.lengths or not self.hidden_sizes:
            raise ValueError("cells, lengths and hidden_sizes must be non-empty.")
        for name in self.cells:
            rnnlab.registry.entry(name)  # raises naming the registered cells
        for name in ("batch_size", "input_size", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; received {getattr(self, name)}.")
        if self.warmup < 0 or min(self.lengths) < 1 or min(self.hidden_sizes) < 1:
            raise ValueError("warmup must be >= 0, every length and hidden size >= 1.")


def _function(cell: Any, pass_: str, mode: str):
    # The solves are exact; "ignore" keeps a host callback out of the timed program.
    kw = {} if mode == "sequential" else {"newton": {"on_failure": "ignore"}}

    def forward(params, xs):
        return rnnlab.scan(cell, params, xs, mode=mode, **kw)[1]

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


def iterations(cell: Any, params: Any, xs: Any, mode: str) -> dict[str, Any]:
    _, _, info = jax.jit(lambda p, x: rnnlab.scan(
        cell, p, x, mode=mode, return_info=True, newton={"on_failure": "ignore"}))(params, xs)
    return {"iterations": int(info.iterations), "residual": float(info.residual),
            "converged": bool(info.converged)}


def run(config: NewtonBenchmark) -> list[dict[str, Any]]:
    k_params, k_data = jax.random.split(jax.random.key(config.seed))
    rows = []
    for i, name in enumerate(config.cells):
        for H in config.hidden_sizes:
            cell = rnnlab.registry.get(name, H)
            params = cell.init(jax.random.fold_in(k_params, i), config.input_size)
            for T in config.lengths:
                xs = jax.random.normal(
                    jax.random.fold_in(k_data, T), (T, config.batch_size, config.input_size))
                dim = sum(leaf.size for leaf in jax.tree.leaves(cell.initial_carry(params)))
                jacobian_gb = 4 * T * config.batch_size * dim * dim / 1e9
                modes = [m for m in MODES if m != "newton" or jacobian_gb <= config.max_jacobian_gb]
                solves = {m: iterations(cell, params, xs, m) for m in modes if m != "sequential"}
                for pass_ in PASSES:
                    row = {"cell": name, "H": H, "T": T, "pass": pass_, "state_size": dim,
                           **{f"{m} solve": s for m, s in solves.items()}}
                    for mode in modes:
                        row[mode] = time_one(_function(cell, pass_, mode), (params, xs),
                                             warmup=config.warmup, repeats=config.repeats)
                    for mode in modes[1:]:
                        row[f"sequential/{mode}"] = (row["sequential"]["median_s"]
                                                     / row[mode]["median_s"])
                    if "newton" not in modes:
                        row["newton"] = {"skipped": f"Jacobians {jacobian_gb:.1f} GB"}
                    rows.append(row)
                    print(_line(row), flush=True)
    return rows


def _ms(timing: dict[str, Any]) -> str:
    return f"{1e3 * timing['median_s']:.2f}" if "median_s" in timing else "skipped"


def _iters(row: dict[str, Any], mode: str) -> str:
    solve = row.get(f"{mode} solve")
    return "-" if solve is None else str(solve["iterations"]) + ("" if solve["converged"] else "!")


def _line(row: dict[str, Any]) -> str:
    return (f"{row['cell']:10s} H={row['H']:3d} T={row['T']:6d} {row['pass']:17s} "
            + "  ".join(f"{m} {_ms(row[m])} ms" for m in MODES)
            + f"  iterations newton {_iters(row, 'newton')} quasi {_iters(row, 'quasi-newton')}")


def markdown(config: NewtonBenchmark, env: dict[str, Any], rows) -> str:
    lines = [
        "# Newton and quasi-Newton vs sequential scan",
        "",
        f"Device: {env['device_kind']} ({env['backend']}); jax {env['jax']}, "
        f"jaxlib {env.get('jaxlib', '?')}, python {env['python']}; {env['cpu_count']} CPUs; "
        f"{env['time_utc']}.",
        "",
        f"Batch {config.batch_size}, input {config.input_size}, float32, cells at "
        f"initialisation; median of {config.repeats} calls after {config.warmup} warm-up "
        "calls; compile time measured separately. Ratio = sequential / mode median time "
        "(> 1: the Newton mode is faster). Iterations: Newton iterations to converge (the "
        "default cap is T; ! marks a solve that did not converge).",
        "",
        "| cell | H | T | pass | sequential (ms) | newton (ms) | quasi-newton (ms) | "
        "seq/newton | seq/quasi | iterations newton | iterations quasi |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = {m: f"{r[f'sequential/{m}']:.3f}" if f"sequential/{m}" in r else "-"
                 for m in MODES[1:]}
        lines.append(
            f"| {r['cell']} | {r['H']} | {r['T']} | {r['pass']} | {_ms(r['sequential'])} | "
            f"{_ms(r['newton'])} | {_ms(r['quasi-newton'])} | {ratio['newton']} | "
            f"{ratio['quasi-newton']} | {_iters(r, 'newton')} | {_iters(r, 'quasi-newton')} |")
    lines += ["", "Command: `" + " ".join(["python", *sys.argv]) + "`", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    # The device slug as benchmarks/parallel_scan.py writes it (cpu, gpu-h100, ...).
    from importlib import util

    spec = util.spec_from_file_location("_parallel_scan", Path(__file__).with_name(
        "parallel_scan.py"))
    parallel_scan = util.module_from_spec(spec)
    sys.modules[spec.name] = parallel_scan  # its dataclass looks its module up by name
    spec.loader.exec_module(parallel_scan)

    config, ns = experiment.parse_config(NewtonBenchmark, argv, prog="python benchmarks/newton.py")
    env = experiment.environment_info()
    print(f"device: {env['device_kind']} ({env['backend']}), jax {env['jax']}, "
          f"jaxlib {env.get('jaxlib', '?')}, rnnlab {env.get('rnnlab', '?')}", flush=True)
    rows = run(config)
    out = Path(ns.out) if ns.out else DEFAULT_OUT
    stem = "-".join(["newton", parallel_scan.device_slug(env["backend"], env["device_kind"])]
                    + ([ns.preset] if ns.preset else []))
    experiment.atomic_write_json(
        out / f"{stem}.json", {"config": config, "environment": env, "results": rows})
    experiment.atomic_write_text(out / f"{stem}.md", markdown(config, env, rows))
    print(f"wrote {out / (stem + '.md')} and {out / (stem + '.json')}")


if __name__ == "__main__":
    main()
