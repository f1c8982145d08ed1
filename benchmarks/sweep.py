"""Sweep throughput: S seeds trained in one vmapped program, in seeds x steps per second.

The workload the experiments run: :func:`rnnlab.train.make_train_fns` builds the vmapped,
seed-sharded training chunk that ``experiments/long_range.py`` uses (adding problem,
Adam, gradient clipping at 1, data sampled inside the program), and this script times
``train_chunk(state, seeds, steps)`` for S seeds at once. PyTorch, when it is importable,
does the same sweep the usual way: a Python loop over S models (``nn.RNN``/``nn.LSTM``/
``nn.GRU`` and a linear readout; cuDNN on a GPU, oneDNN on a CPU), each taking one Adam
step with clipping on its own batch of the adding problem, generated on the device.

Workloads: ``small`` is long_range's small preset at its longest T (hidden 32, T 100,
batch 32); ``medium`` is the suite's medium width (hidden 128, T 100, batch 32). All
(workload, cell, S, framework) configurations are compiled and warmed up first, then
timed in interleaved rounds; medians are reported.

    python benchmarks/sweep.py                        # S = 1, 8, 64
    python benchmarks/sweep.py --seeds 1,8 --steps 5  # a shorter run
    python benchmarks/sweep.py --quick

Prints a table; ``--out DIR`` writes ``sweep-<device>.json`` and ``.md``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import jax
import numpy as np

import rnnlab
from rnnlab import experiment, tasks, train

WORKLOADS = {  # name: (hidden, T, batch)
    "small": (32, 100, 32),
    "medium": (128, 100, 32),
}
TORCH_CELLS = {"elman-tanh": "RNN", "lstm": "LSTM", "gru": "GRU"}


@dataclasses.dataclass(frozen=True)
class SweepBenchmark:
    """python benchmarks/sweep.py [--quick] — expect rnnlab's seeds x steps per second to grow
    with S (one program, wider matmuls) while a loop over models stays flat."""

    workloads: tuple[str, ...] = dataclasses.field(
        default=("small", "medium"), metadata={"help": f"of {tuple(WORKLOADS)}"})
    cells: tuple[str, ...] = dataclasses.field(
        default=("lstm", "gru"), metadata={"help": f"of {tuple(TORCH_CELLS)}"})
    seeds: tuple[int, ...] = dataclasses.field(
        default=(1, 8, 64), metadata={"help": "numbers of seeds S trained together"})
    steps: int = dataclasses.field(default=10, metadata={"help": "training steps per timed call"})
    rounds: int = dataclasses.field(default=3, metadata={"help": "interleaved timed rounds"})
    torch: bool = dataclasses.field(
        default=True, metadata={"help": "also time PyTorch when it is importable"})

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": dict(workloads=("small",), cells=("gru",), seeds=(1, 2), steps=2, rounds=2),
    }

    def __post_init__(self):
        for name, allowed in (("workloads", WORKLOADS), ("cells", TORCH_CELLS)):
            values = getattr(self, name)
            if not values or set(values) - set(allowed):
                raise ValueError(f"{name} must be some of {tuple(allowed)}; received {values}.")
        if not self.seeds or min(self.seeds) < 1:
            raise ValueError(f"seeds must be positive ints; received {self.seeds}.")
        for name in ("steps", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; received {getattr(self, name)}.")


def rnnlab_job(cell_name: str, workload: str, S: int, steps: int):
    """A function that runs ``steps`` training steps of S seeds (and its compile time)."""
    H, T, B = WORKLOADS[workload]
    cfg = train.TrainConfig(seq_len=T, batch_size=B, learning_rate=1e-3, clip_norm=1.0)
    fns = train.make_train_fns(rnnlab.registry.get(cell_name, H), tasks.get("adding"), cfg)
    seeds = np.arange(S)
    size = rnnlab.distributed.padded_size(S, fns.mesh)

    def place(tree):
        return rnnlab.distributed.shard_leading(
            rnnlab.distributed.pad_leading(rnnlab.distributed.to_host(tree), size), fns.mesh)

    state, seeds_dev = place(fns.init(seeds)), place(seeds)
    start = time.perf_counter()
    compiled = fns.train_chunk.lower(state, seeds_dev, steps).compile()
    compile_s = time.perf_counter() - start
    box = [state]

    def call():  # the state carries on, as in a sweep
        box[0] = jax.block_until_ready(compiled(box[0], seeds_dev)[0])

    return call, compile_s


def torch_job(cell_name: str, workload: str, S: int, steps: int):
    """The same sweep as a loop over S PyTorch models, on the GPU if there is one."""
    import torch

    H, T, B = WORKLOADS[workload]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    models = []
    for s in range(S):
        torch.manual_seed(s)
        rnn = getattr(torch.nn, TORCH_CELLS[cell_name])(2, H).to(device)
        head = torch.nn.Linear(H, 1).to(device)
        params = list(rnn.parameters()) + list(head.parameters())
        models.append((rnn, head, params, torch.optim.Adam(params, lr=1e-3)))
    gen = torch.Generator(device=device).manual_seed(0)

    def batch():  # the adding problem, [T, B, 2] inputs and [B] targets
        values = torch.rand(T, B, device=device, generator=gen)
        first = torch.randint(0, T // 2, (B,), device=device, generator=gen)
        second = torch.randint(T // 2, T, (B,), device=device, generator=gen)
        marks = torch.zeros(T, B, device=device)
        cols = torch.arange(B, device=device)
        marks[first, cols] = 1.0
        marks[second, cols] = 1.0
        return torch.stack([values, marks], -1), values[first, cols] + values[second, cols]

    def one_step(rnn, head, params, opt):
        x, y = batch()
        out, _ = rnn(x)
        loss = torch.mean((head(out[-1])[:, 0] - y) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    def call():
        for _ in range(steps):
            for model in models:
                one_step(*model)
        if device == "cuda":
            torch.cuda.synchronize()

    return call, 0.0


def run(config: SweepBenchmark) -> list[dict[str, Any]]:
    frameworks = ["rnnlab"]
    if config.torch and importlib.util.find_spec("torch") is not None:
        frameworks.append("torch")
    jobs = []
    for workload in config.workloads:
        for cell in config.cells:
            for S in config.seeds:
                for fw in frameworks:
                    make = rnnlab_job if fw == "rnnlab" else torch_job
                    call, compile_s = make(cell, workload, S, config.steps)
                    call()  # warm-up
                    jobs.append(dict(workload=workload, cell=cell, S=S, framework=fw,
                                     call=call, compile_s=compile_s, times_s=[]))
    for _ in range(config.rounds):
        for job in jobs:
            start = time.perf_counter()
            job["call"]()
            job["times_s"].append(time.perf_counter() - start)
    rows = []
    for job in jobs:
        med = statistics.median(job["times_s"])
        rows.append(dict({k: job[k] for k in ("workload", "cell", "S", "framework",
                                              "compile_s", "times_s")},
                         median_s=med, seed_steps_per_s=job["S"] * config.steps / med,
                         ms_per_seed_step=1e3 * med / (job["S"] * config.steps)))
    return rows


def markdown(config: SweepBenchmark, env: dict[str, Any], rows) -> str:
    by = {(r["workload"], r["cell"], r["S"], r["framework"]): r for r in rows}
    has_torch = any(r["framework"] == "torch" for r in rows)
    lines = [
        "# Sweep throughput",
        "",
        f"Device: {env['device_kind']} ({env['backend']}); jax {env['jax']}, jaxlib "
        f"{env.get('jaxlib', '?')}; {env['cpu_count']} CPUs; {env['time_utc']}."
        + ("" if has_torch else " PyTorch not importable: rnnlab only."),
        "",
        f"Adding problem, Adam, clip 1; {config.steps} steps per timed call, median of "
        f"{config.rounds} interleaved rounds. Throughput in seeds x steps per second.",
        "",
        "| workload (H, T, B) | cell | S | rnnlab (seed-steps/s) | ms per seed-step |"
        + (" torch (seed-steps/s) | ms per seed-step | rnnlab / torch throughput |"
           if has_torch else ""),
        "|---|---|---:|---:|---:|" + ("---:|---:|---:|" if has_torch else ""),
    ]
    for w in config.workloads:
        for c in config.cells:
            for S in config.seeds:
                r = by[(w, c, S, "rnnlab")]
                line = (f"| {w} {WORKLOADS[w]} | {c} | {S} | {r['seed_steps_per_s']:.1f} | "
                        f"{r['ms_per_seed_step']:.2f} |")
                if has_torch:
                    t = by[(w, c, S, "torch")]
                    line += (f" {t['seed_steps_per_s']:.1f} | {t['ms_per_seed_step']:.2f} | "
                             f"{r['seed_steps_per_s'] / t['seed_steps_per_s']:.2f} |")
                lines.append(line)
    lines += ["", "Command: `" + " ".join(["python", *sys.argv]) + "`", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    config, ns = experiment.parse_config(SweepBenchmark, argv, prog="python benchmarks/sweep.py")
    env = experiment.environment_info()
    print(f"device: {env['device_kind']} ({env['backend']}), jax {env['jax']}, "
          f"jaxlib {env.get('jaxlib', '?')}", flush=True)
    rows = run(config)
    text = markdown(config, env, rows)
    print(text)
    if ns.out:
        out = Path(ns.out)
        stem = "sweep-" + ("cpu" if env["backend"] == "cpu" else env["backend"])
        stem += f"-{ns.preset}" if ns.preset else ""
        experiment.atomic_write_json(out / f"{stem}.json", {
            "config": config, "environment": env,
            "results": [{k: v for k, v in r.items()} for r in rows]})
        experiment.atomic_write_text(out / f"{stem}.md", text)
        print(f"wrote {out / (stem + '.md')} and {out / (stem + '.json')}")


if __name__ == "__main__":
    main()
