"""Long-range dependencies: which cells leave the memoryless baseline as T grows?

Each (cell, T) trains several seeds (vmapped, split across the devices) for a fixed
budget on a :mod:`rnnlab.tasks` task and scores them on fresh sequences against the
task's baseline. A finished run writes runs/<key>/result.json; a run in progress is
checkpointed every ``chunk_size`` steps, so re-running the command resumes. A seed
whose training diverges is reported on stderr, frozen at its last finite params
(last_good_params.npz), recorded as outcome "diverged", counted as a failure in
success_rate and left out of metric_mean. With several processes only process 0 writes.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import numpy as np

import rnnlab
from rnnlab import distributed, experiment, plots, tasks, train

EXPERIMENT = "long_range"


@dataclasses.dataclass(frozen=True)
class LongRangeConfig:
    """python experiments/long_range.py [--preset small | --quick --out DIR]

    Expect, on the adding problem: the tanh RNN and the IRNN fall onto the memoryless
    baseline as T grows, the LSTM leaves it up to a longer T than they do, and the GRU
    leaves it at every T; the tanh RNN's gradient norm looks alike with and without
    clipping, mostly below the threshold with spikes above it. --preset small shows
    the same over shorter T; --quick is a smoke test whose numbers mean nothing.
    """

    task: str = dataclasses.field(default="adding", metadata={"help": "a rnnlab.tasks name"})
    cells: tuple[str, ...] = dataclasses.field(
        default=("elman-tanh", "irnn", "lstm", "gru"),
        metadata={"help": "rnnlab.registry cell names"})
    lengths: tuple[int, ...] = dataclasses.field(
        default=(50, 100, 200, 400), metadata={"help": "sequence lengths T"})
    seeds: int = dataclasses.field(default=3, metadata={"help": "seeds per (cell, T), vmapped"})
    hidden_size: int = 32
    train_steps: int = dataclasses.field(
        default=1500, metadata={"help": "training steps per run"})
    train_batch_size: int = dataclasses.field(default=32, metadata={"help": "batch per step"})
    optimizer: str = dataclasses.field(default="adam", metadata={"help": "adam|adamw|rmsprop|sgd"})
    learning_rate: float = 2e-3
    clip_norm: float | None = dataclasses.field(
        default=1.0, metadata={"help": "global-norm clip of the grid runs, none for none"})
    eval_batch_size: int = dataclasses.field(
        default=4096, metadata={"help": "fresh sequences per seed for the final metric"})
    chunk_size: int = dataclasses.field(
        default=100, metadata={"help": "steps per compiled chunk and per checkpoint"})
    compare_clip_cell: str | None = dataclasses.field(
        default="elman-tanh",
        metadata={"help": "cell trained with and without clipping for the gradient-norm plot"})
    compare_clip_T: int = 100
    compare_clip_norm: float = 1.0
    fast_compile: bool = experiment.fast_compile_field()

    # The flags this script had before both experiments named training steps alike.
    FLAG_ALIASES: ClassVar[dict[str, tuple[str, ...]]] = {
        "train_steps": ("--steps",), "train_batch_size": ("--batch-size",)}
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "small": dict(lengths=(25, 50, 100)),
        "quick": dict(cells=("elman-tanh", "lstm"), lengths=(10,), seeds=2, hidden_size=8,
                      train_steps=40, train_batch_size=8, eval_batch_size=64, chunk_size=20,
                      compare_clip_T=10, fast_compile=True),
    }

    def __post_init__(self):
        task = tasks.get(self.task)  # raises on an unknown task
        for c in self.cells + ((self.compare_clip_cell,) if self.compare_clip_cell else ()):
            rnnlab.registry.entry(c)  # raises on an unknown cell
        if not self.cells or not self.lengths:
            raise ValueError("cells and lengths must be non-empty.")
        min_T = max(2, task.min_T)
        for T in self.lengths + (self.compare_clip_T,):
            if T < min_T:
                raise ValueError(
                    f"lengths must be >= {min_T} for task {self.task!r}; received {T}.")
        for name in ("seeds", "hidden_size", "train_batch_size", "eval_batch_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; received {getattr(self, name)}.")
        if self.train_steps < 0:
            raise ValueError(f"train_steps must be >= 0; received {self.train_steps}.")
        train.TrainConfig(optimizer=self.optimizer, learning_rate=self.learning_rate,
                          clip_norm=self.clip_norm)  # validates those fields


def run_specs(cfg: LongRangeConfig) -> list[dict[str, Any]]:
    """The (cell, T, clip) runs: the grid, then the clipping comparison (deduplicated)."""
    specs = [(c, T, cfg.clip_norm) for c in cfg.cells for T in cfg.lengths]
    if cfg.compare_clip_cell:
        specs += [(cfg.compare_clip_cell, cfg.compare_clip_T, clip)
                  for clip in (cfg.compare_clip_norm, None)]
    out = {}
    for cell, T, clip in specs:
        key = f"{cell}_T{T}_" + ("noclip" if clip is None else f"clip{clip:g}")
        out.setdefault(key, dict(key=key, cell=cell, T=T, clip_norm=clip))
    return list(out.values())


def run_one(cfg: LongRangeConfig, spec: dict[str, Any], run_dir: experiment.RunDir,
            callback: Callable | None = None) -> dict[str, Any]:
    """Trains one (cell, T, clip) spec over all seeds; writes its history and result."""
    task, T, seeds = tasks.get(cfg.task), spec["T"], list(range(cfg.seeds))
    tcfg = train.TrainConfig(
        seq_len=T, batch_size=cfg.train_batch_size, optimizer=cfg.optimizer,
        learning_rate=cfg.learning_rate, clip_norm=spec["clip_norm"],
        eval_batch_size=cfg.eval_batch_size)
    cell = rnnlab.registry.get_for_length(spec["cell"], cfg.hidden_size, T)
    fns = train.make_train_fns(cell, task, tcfg)
    rel = f"runs/{spec['key']}"
    start = time.perf_counter()
    state, history = train.train(
        cell, task, tcfg, seeds, cfg.train_steps, chunk_size=cfg.chunk_size,
        checkpoint_dir=run_dir.path / rel / "checkpoint", callback=callback, fns=fns)
    ev = train.evaluate(fns, state, seeds)
    rows = [dict(step=t, seed=s, **{k: float(history[k][i, t]) for k in train.HISTORY_KEYS})
            for i, s in enumerate(seeds) for t in range(cfg.train_steps)]
    run_dir.write_csv(f"{rel}/history.csv", rows, ["step", "seed", *train.HISTORY_KEYS])
    metric, diverged = ev["metric"].astype(float), ev["diverged"].astype(bool)
    # A diverged seed is a failure whatever its frozen params score: it did not finish training.
    success = ev["success"].astype(bool) & ~diverged
    reports = train.divergence_reports(state, history, seeds, cell=spec["key"])
    for r in reports:
        print(f"warning: {r.message()}", file=sys.stderr)
    if reports:  # the diverged seeds' frozen params, one array per leaf path
        leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
        frozen = [seeds.index(r.seed) for r in reports]
        run_dir.write_npz(f"{rel}/last_good_params.npz", dict(
            seeds=np.asarray([r.seed for r in reports]),
            **{jax.tree_util.keystr(path): np.asarray(x)[frozen] for path, x in leaves}),
            compressed=False)
    kept = metric[~diverged]
    result = dict(
        spec, task=cfg.task, seeds=seeds, metric_name=task.metric_name, baseline=task.baseline(T),
        baseline_formula=task.baseline_formula, success_criterion=task.success_criterion,
        metric=metric.tolist(), eval_loss=ev["loss"].astype(float).tolist(),
        success=success.tolist(), left_baseline=[task.improves_on_baseline(m, T) for m in metric],
        diverged=diverged.tolist(), diverged_step=ev["diverged_step"].astype(int).tolist(),
        outcome=["diverged" if d else "success" if ok else "failure"
                 for d, ok in zip(diverged, success, strict=True)],
        divergence=[r._asdict() for r in reports],
        metric_mean=float(np.nanmean(kept)) if np.isfinite(kept).any() else math.nan,
        success_rate=float(np.mean(success)), history_steps=int(history["loss"].shape[1]),
        train_seconds_this_session=time.perf_counter() - start)
    run_dir.write_json(f"{rel}/result.json", result)  # written last: "finished"
    if run_dir.is_writer:
        train.clear_checkpoints(run_dir.path / rel / "checkpoint")
    return result


def run(cfg: LongRangeConfig, run_dir: experiment.RunDir,
        callback: Callable | None = None) -> list[dict[str, Any]]:
    """Runs (or resumes) every spec, then writes the summary, figures and table.

    ``callback`` goes to :func:`rnnlab.train.train` for every run (after the progress
    bar); raising :class:`rnnlab.train.TrainInterrupted` there stops the experiment as
    a kill would. Returns one result dict per spec.
    """
    specs, results = run_specs(cfg), []
    with experiment.progress(EXPERIMENT, total=len(specs) * cfg.train_steps) as advance:
        for spec in specs:
            key, seen = spec["key"], [0]
            done = run_dir.read_json(f"runs/{key}/result.json")
            if done is not None:
                advance(cfg.train_steps, note=f"{key} (done)")
                results.append(done)
                continue

            def on_chunk(step, state, history, _key=key, _seen=seen):
                advance(step - _seen[0], note=_key)
                _seen[0] = step
                if callback is not None:
                    callback(step, state, history)

            results.append(run_one(cfg, spec, run_dir, on_chunk))
            advance(cfg.train_steps - seen[0], note=key)
    summarize(cfg, run_dir, results)
    run_dir.mark_complete()
    return results


def summarize(cfg: LongRangeConfig, run_dir: experiment.RunDir, results: list[dict]) -> None:
    """Writes summary.csv/json, the figures, and prints the table."""
    cols = ["cell", "T", "clip_norm", "metric_mean", "baseline", "success_rate",
            "left_baseline_rate", "diverged"]
    rows = [dict({k: r[k] for k in cols[:6]}, left_baseline_rate=float(np.mean(r["left_baseline"])),
                 diverged=int(np.sum(r["diverged"]))) for r in results]
    run_dir.write_csv("summary.csv", rows, cols)
    run_dir.write_json("summary.json", results)
    if run_dir.is_writer:  # the figures read the histories the writer saved
        _plot(cfg, run_dir, results)
    task = tasks.get(cfg.task)
    experiment.print_table(
        f"{cfg.task}: final {task.metric_name} (mean over {cfg.seeds} seeds) after "
        f"{cfg.train_steps} steps; baseline {task.baseline_formula}",
        ["cell", "T", "clip", task.metric_name, "baseline", "success", "left baseline",
         "diverged"], [[r[c] for c in cols] for r in rows])


def _plot(cfg: LongRangeConfig, run_dir: experiment.RunDir, results: list[dict]) -> None:
    """The three figures, from the results and the saved training histories."""
    task = tasks.get(cfg.task)
    grid = {(r["cell"], r["T"]): r for r in results if r["clip_norm"] == cfg.clip_norm}
    Ts = sorted(cfg.lengths)
    baselines = [task.baseline(T) for T in Ts]
    fig = plots.metric_vs_length(
        {c: [grid[(c, T)] for T in Ts] for c in cfg.cells}, Ts, baselines, task=cfg.task,
        metric_name=task.metric_name, baseline_formula=task.baseline_formula,
        success_criterion=task.success_criterion, higher_is_better=task.higher_is_better)
    run_dir.save_figure(fig, "metric_vs_T", close=True)
    losses = {c: [_history(run_dir, grid[(c, T)]["key"], "loss", cfg) for T in Ts]
              for c in cfg.cells}
    fig = plots.training_curves(losses, Ts, loss_kind=task.loss_kind, baselines=(
        baselines if task.metric_name == task.loss_kind else None))
    run_dir.save_figure(fig, "training_curves", close=True)
    if cfg.compare_clip_cell:
        runs = [(r["clip_norm"], _history(run_dir, r["key"], "grad_norm", cfg)) for r in results
                if r["cell"] == cfg.compare_clip_cell and r["T"] == cfg.compare_clip_T
                and r["clip_norm"] in (None, cfg.compare_clip_norm)]
        fig = plots.gradient_norm_clipping(
            runs, clip_norm=cfg.compare_clip_norm,
            title=f"{cfg.compare_clip_cell}, {cfg.task}, T = {cfg.compare_clip_T}")
        run_dir.save_figure(fig, "grad_norm_clipping", close=True)


def replot(folder) -> None:
    """Redraws a results folder's figures from its summary.json and histories."""
    run_dir = experiment.RunDir.existing(folder)
    saved = dict(run_dir.config)
    for old, new in (("steps", "train_steps"), ("batch_size", "train_batch_size")):
        if old in saved:  # a folder written before the flags were renamed
            saved[new] = saved.pop(old)
    fields = {f.name: f for f in dataclasses.fields(LongRangeConfig)}
    cfg = LongRangeConfig(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in saved.items() if k in fields})
    results = run_dir.read_json("summary.json")
    if results is None:
        print(f"long_range.py: error: --replot: {folder} holds no summary.json (the run has "
              "not finished; re-run its command to resume it)", file=sys.stderr)
        raise SystemExit(2)
    _plot(cfg, run_dir, results)


def _history(run_dir: experiment.RunDir, key: str, column: str, cfg: LongRangeConfig):
    """``[S, steps]`` from a run's history.csv (NaN where it holds none)."""
    out = np.full((cfg.seeds, cfg.train_steps), np.nan)
    for row in run_dir.read_csv(f"runs/{key}/history.csv"):
        v = row[column]
        out[int(row["seed"]), int(row["step"])] = float(v) if v not in ("", "None") else np.nan
    return out


def main(argv: list[str] | None = None, callback: Callable | None = None) -> experiment.RunDir:
    distributed.maybe_initialize_distributed()
    folder = experiment.replot_folder(argv, prog="long_range.py")
    if folder is not None:
        replot(folder)
        print(f"redrew the figures in {folder}")
        return experiment.RunDir.existing(folder)
    cfg, ns = experiment.parse_config(LongRangeConfig, argv, prog="long_range.py", replot=True)
    run_dir = experiment.open_run_dir(EXPERIMENT, cfg, ns)
    print(f"results: {run_dir.path}", file=sys.stderr)
    start = time.perf_counter()
    with experiment.compile_fast(cfg.fast_compile):
        run(cfg, run_dir, callback=callback)
    print(f"wall time this session: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return run_dir


if __name__ == "__main__":
    main()
