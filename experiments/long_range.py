"""Long-range dependencies: which cells leave the memoryless baseline as T grows?

For each cell x sequence length T, several seeds (vmapped, one compiled program)
train for a fixed budget of steps on a task from :mod:`rnnlab.tasks`; the final
metric on fresh sequences is compared with the task's baseline. Each finished
(cell, T) run is written as it finishes; runs in progress are checkpointed with
orbax every ``chunk_size`` steps, so re-running the same command resumes where
an interrupted run stopped and skips finished runs.

    python experiments/long_range.py                  # the full grid
    python experiments/long_range.py --preset small   # same picture, faster
    python experiments/long_range.py --quick --out /tmp/lr   # smoke test, < 30 s

Seeds are split across every visible device (rnnlab.distributed); launched as
several processes (JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID, or
a multi-task SLURM/Open MPI job) it initialises jax.distributed and only
process 0 writes. A seed whose training diverges (non-finite loss, gradient or
update) is reported on stderr, frozen at its last finite parameters (saved in
last_good_params.npz beside its result), recorded as outcome "diverged", counted
as a failure in success_rate and left out of metric_mean.
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
from rnnlab import distributed, experiment, tasks, train

EXPERIMENT = "long_range"


@dataclasses.dataclass(frozen=True)
class LongRangeConfig:
    """python experiments/long_range.py [--preset small] — adding problem, 1500 Adam steps.

    Expect (measured, default config, 3 seeds): the tanh RNN and the IRNN sit on the 1/6
    baseline from T = 100 on (MSE 0.167-0.173), the LSTM leaves it up to T = 100 (MSE
    ~0.007, 2/3 seeds below 0.01) but not at T = 200 within the budget, and the GRU
    solves every T up to 400 (MSE 0.0007-0.003, 3/3 seeds). At T = 100 the tanh RNN's
    gradient norm stays around 0.5 with spikes to ~3, with or without clipping at 1.
    Wall time about 6 min for the default and 3 min for --preset small on a 2-core CPU
    shared with other jobs; --quick about 20 s of CPU time.
    """

    task: str = dataclasses.field(default="adding", metadata={"help": "a rnnlab.tasks name"})
    cells: tuple[str, ...] = dataclasses.field(
        default=("elman-tanh", "irnn", "lstm", "gru"),
        metadata={"help": "rnnlab.registry cell names"})
    lengths: tuple[int, ...] = dataclasses.field(
        default=(50, 100, 200, 400), metadata={"help": "sequence lengths T"})
    seeds: int = dataclasses.field(default=3, metadata={"help": "seeds per (cell, T), vmapped"})
    hidden_size: int = 32
    steps: int = dataclasses.field(default=1500, metadata={"help": "training steps per run"})
    batch_size: int = 32
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

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "small": dict(lengths=(25, 50, 100)),
        "quick": dict(cells=("elman-tanh", "lstm"), lengths=(10,), seeds=2, hidden_size=8,
                      steps=40, batch_size=8, eval_batch_size=64, chunk_size=20,
                      compare_clip_T=10),
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
        for name in ("seeds", "hidden_size", "batch_size", "eval_batch_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; received {getattr(self, name)}.")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0; received {self.steps}.")
        train.TrainConfig(optimizer=self.optimizer, learning_rate=self.learning_rate,
                          clip_norm=self.clip_norm)  # validates those fields


def run_specs(cfg: LongRangeConfig) -> list[dict[str, Any]]:
    """The (cell, T, clip) runs: the grid, then the clipping comparison (deduplicated)."""
    specs = [(c, T, cfg.clip_norm) for c in cfg.cells for T in cfg.lengths]
    if cfg.compare_clip_cell:
        for clip in (cfg.compare_clip_norm, None):
            specs.append((cfg.compare_clip_cell, cfg.compare_clip_T, clip))
    out, seen = [], set()
    for cell, T, clip in specs:
        key = f"{cell}_T{T}_" + ("noclip" if clip is None else f"clip{clip:g}")
        if key not in seen:
            seen.add(key)
            out.append(dict(key=key, cell=cell, T=T, clip_norm=clip))
    return out


def run_one(cfg: LongRangeConfig, spec: dict[str, Any], run_dir: experiment.RunDir,
            callback: Callable | None = None) -> dict[str, Any]:
    """Trains one (cell, T, clip) spec over all seeds; writes its history and result."""
    task = tasks.get(cfg.task)
    tcfg = train.TrainConfig(
        seq_len=spec["T"], batch_size=cfg.batch_size, optimizer=cfg.optimizer,
        learning_rate=cfg.learning_rate, clip_norm=spec["clip_norm"],
        eval_batch_size=cfg.eval_batch_size)
    cell = rnnlab.registry.get(spec["cell"], cfg.hidden_size)
    seeds = list(range(cfg.seeds))
    fns = train.make_train_fns(cell, task, tcfg)
    folder = run_dir.path / "runs" / spec["key"]
    start = time.perf_counter()
    state, history = train.train(
        cell, task, tcfg, seeds, cfg.steps, chunk_size=cfg.chunk_size,
        checkpoint_dir=folder / "checkpoint", callback=callback, fns=fns)
    ev = train.evaluate(fns, state, seeds)
    rows = [dict(step=t, seed=s, **{k: float(history[k][i, t]) for k in train.HISTORY_KEYS})
            for i, s in enumerate(seeds) for t in range(cfg.steps)]
    rel = folder.relative_to(run_dir.path)
    run_dir.write_csv(str(rel / "history.csv"), rows, ["step", "seed", *train.HISTORY_KEYS])
    baseline = task.baseline(spec["T"])
    metric = ev["metric"].astype(float)
    diverged = ev["diverged"].astype(bool)
    # A diverged seed is a failure whatever its frozen params score: it did not finish training.
    success = ev["success"].astype(bool) & ~diverged
    reports = train.divergence_reports(state, history, seeds, cell=spec["key"])
    for r in reports:
        print(f"warning: {r.message()}", file=sys.stderr)
    if reports:
        _save_last_good_params(run_dir, rel / "last_good_params.npz", state, reports, seeds)
    kept = metric[~diverged]
    result = dict(
        spec, task=cfg.task, seeds=seeds, metric_name=task.metric_name, baseline=baseline,
        baseline_formula=task.baseline_formula, success_criterion=task.success_criterion,
        metric=metric.tolist(), eval_loss=ev["loss"].astype(float).tolist(),
        success=success.tolist(),
        left_baseline=[task.improves_on_baseline(m, spec["T"]) for m in metric],
        diverged=diverged.tolist(),
        diverged_step=ev["diverged_step"].astype(int).tolist(),
        outcome=["diverged" if d else "success" if ok else "failure"
                 for d, ok in zip(diverged, success, strict=True)],
        divergence=[r._asdict() for r in reports],
        metric_mean=float(np.nanmean(kept)) if np.isfinite(kept).any() else math.nan,
        success_rate=float(np.mean(success)),
        history_steps=int(history["loss"].shape[1]),
        train_seconds_this_session=time.perf_counter() - start,
    )
    run_dir.write_json(str(rel / "result.json"), result)  # written last: "finished"
    if run_dir.is_writer:
        train.clear_checkpoints(folder / "checkpoint")
    return result


def _save_last_good_params(run_dir: experiment.RunDir, name, state, reports, seeds) -> None:
    """The diverged seeds' frozen (last finite) params, one array per leaf path."""
    import io

    rows = [seeds.index(r.seed) for r in reports]
    leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
    arrays = {jax.tree_util.keystr(path): np.asarray(x)[rows] for path, x in leaves}
    buf = io.BytesIO()
    np.savez(buf, seeds=np.asarray([r.seed for r in reports]), **arrays)
    run_dir.write_bytes(str(name), buf.getvalue())


def run(cfg: LongRangeConfig, run_dir: experiment.RunDir,
        callback: Callable | None = None) -> list[dict[str, Any]]:
    """Runs (or resumes) every spec, then writes the summary, figures and table.

    Args:
      cfg: the config.
      run_dir: the results folder.
      callback: passed to :func:`rnnlab.train.train` for every run (after the
        progress bar); raising :class:`rnnlab.train.TrainInterrupted` there
        stops the experiment as a kill would (tests use it).

    Returns:
      One result dict per spec.
    """
    specs = run_specs(cfg)
    results = []
    with experiment.progress(EXPERIMENT, total=len(specs) * cfg.steps) as advance:
        for spec in specs:
            done = run_dir.read_json(f"runs/{spec['key']}/result.json")
            if done is not None:
                advance(cfg.steps, note=f"{spec['key']} (done)")
                results.append(done)
                continue
            seen = [0]

            def on_chunk(step, state, history, _key=spec["key"], _seen=seen):
                advance(step - _seen[0], note=_key)
                _seen[0] = step
                if callback is not None:
                    callback(step, state, history)

            results.append(run_one(cfg, spec, run_dir, on_chunk))
            advance(cfg.steps - seen[0], note=spec["key"])
    summarize(cfg, run_dir, results)
    run_dir.mark_complete()
    return results


def summarize(cfg: LongRangeConfig, run_dir: experiment.RunDir, results: list[dict]) -> None:
    """Writes summary.csv/json, the figures, and prints the table."""
    cols = ["cell", "T", "clip_norm", "metric_mean", "baseline", "success_rate",
            "left_baseline_rate", "diverged"]
    rows = [dict(cell=r["cell"], T=r["T"], clip_norm=r["clip_norm"], metric_mean=r["metric_mean"],
                 baseline=r["baseline"], success_rate=r["success_rate"],
                 left_baseline_rate=float(np.mean(r["left_baseline"])),
                 diverged=int(np.sum(r["diverged"]))) for r in results]
    run_dir.write_csv("summary.csv", rows, cols)
    run_dir.write_json("summary.json", results)
    _plot(cfg, run_dir, results)
    task = tasks.get(cfg.task)
    experiment.print_table(
        f"{cfg.task}: final {task.metric_name} (mean over {cfg.seeds} seeds) after {cfg.steps} "
        f"steps; baseline {task.baseline_formula}",
        ["cell", "T", "clip", task.metric_name, "baseline", "success", "left baseline",
         "diverged"],
        [[r["cell"], r["T"], r["clip_norm"], r["metric_mean"], r["baseline"], r["success_rate"],
          r["left_baseline_rate"], r["diverged"]] for r in rows])


def _plot(cfg: LongRangeConfig, run_dir: experiment.RunDir, results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = tasks.get(cfg.task)
    grid = {(r["cell"], r["T"]): r for r in results if r["clip_norm"] == cfg.clip_norm}
    Ts = sorted(cfg.lengths)

    # Metric and success rate vs T, the baseline drawn.
    fig, (ax_m, ax_s) = plt.subplots(1, 2, figsize=(10, 4))
    for cell in cfg.cells:
        rs = [grid[(cell, T)] for T in Ts]
        line, = ax_m.plot(Ts, [r["metric_mean"] for r in rs], "o-", label=cell)
        for T, r in zip(Ts, rs, strict=True):
            ax_m.plot([T] * len(r["metric"]), r["metric"], ".", color=line.get_color(), alpha=0.4)
        ax_s.plot(Ts, [r["success_rate"] for r in rs], "o-", label=cell)
    baselines = [task.baseline(T) for T in Ts]
    label = f"baseline: {task.baseline_formula}"
    if len(set(baselines)) == 1:
        ax_m.axhline(baselines[0], color="k", ls="--", label=label)
    else:
        ax_m.plot(Ts, baselines, "k--x", label=label)
    ax_m.set(xscale="log", xlabel="T", ylabel=f"final {task.metric_name} (fresh sequences)",
             title=f"{cfg.task}: {task.metric_name} vs T")
    if not task.higher_is_better:
        ax_m.set_yscale("log")
    ax_s.set(xscale="log", xlabel="T", ylabel="success rate over seeds", ylim=(-0.05, 1.05),
             title=task.success_criterion)
    for ax in (ax_m, ax_s):
        ax.set_xticks(Ts, [str(T) for T in Ts])
        ax.minorticks_off()
    ax_m.legend(fontsize=8, loc="best", framealpha=0.6)
    fig.tight_layout()
    run_dir.save_figure(fig, "metric_vs_T")
    plt.close(fig)

    # Training curves: loss vs step, one panel per T.
    fig, axes = plt.subplots(1, len(Ts), figsize=(4 * len(Ts), 3.5), squeeze=False)
    for ax, T in zip(axes[0], Ts, strict=True):
        for cell in cfg.cells:
            loss = _history(run_dir, grid[(cell, T)]["key"], "loss", cfg)
            ax.plot(_smooth(np.nanmean(loss, axis=0)), label=cell)
        ax.set(title=f"T = {T}", xlabel="step", yscale="log")
        if task.metric_name == task.loss_kind:
            ax.axhline(task.baseline(T), color="k", ls="--", lw=1, label="baseline")
            ax.set_ylim(top=5 * task.baseline(T))  # an early spike would hide the plateau
    axes[0][0].set_ylabel(f"train {task.loss_kind} (mean over seeds, smoothed)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    run_dir.save_figure(fig, "training_curves")
    plt.close(fig)

    # Gradient norm with and without clipping.
    if cfg.compare_clip_cell:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in results:
            if r["cell"] == cfg.compare_clip_cell and r["T"] == cfg.compare_clip_T and (
                    r["clip_norm"] in (None, cfg.compare_clip_norm)):
                g = _history(run_dir, r["key"], "grad_norm", cfg)
                label = "no clipping" if r["clip_norm"] is None else f"clip {r['clip_norm']:g}"
                color = "C3" if r["clip_norm"] is None else "C0"
                ax.plot(g[0], lw=0.5, alpha=0.35, color=color)  # seed 0, every step
                ax.plot(np.exp(_smooth(np.nanmean(np.log(g), axis=0))), lw=2, color=color,
                        label=f"{label} (geometric mean over seeds, smoothed; thin: seed 0)")
        ax.axhline(cfg.compare_clip_norm, color="k", ls=":", lw=1, label="clip threshold")
        ax.set(yscale="log", xlabel="step", ylabel="global gradient norm (before clipping)",
               title=f"{cfg.compare_clip_cell}, {cfg.task}, T = {cfg.compare_clip_T}")
        ax.legend(fontsize=8)
        run_dir.save_figure(fig, "grad_norm_clipping")
        plt.close(fig)


def _history(run_dir: experiment.RunDir, key: str, column: str, cfg: LongRangeConfig):
    """``[S, steps]`` from a run's history.csv."""
    import csv

    with open(run_dir.path / "runs" / key / "history.csv") as f:
        rows = list(csv.DictReader(f))
    out = np.full((cfg.seeds, cfg.steps), np.nan)
    for row in rows:
        v = row[column]
        out[int(row["seed"]), int(row["step"])] = float(v) if v not in ("", "None") else np.nan
    return out


def _smooth(x: np.ndarray, window: int = 25) -> np.ndarray:
    if len(x) == 0:
        return x
    window = max(1, min(window, len(x) // 5 or 1))
    return np.convolve(x, np.ones(window) / window, mode="valid")


def main(argv: list[str] | None = None, callback: Callable | None = None) -> experiment.RunDir:
    distributed.maybe_initialize_distributed()
    cfg, ns = experiment.parse_config(LongRangeConfig, argv, prog="long_range.py")
    run_dir = experiment.open_run_dir(EXPERIMENT, cfg, ns)
    print(f"results: {run_dir.path}", file=sys.stderr)
    start = time.perf_counter()
    run(cfg, run_dir, callback=callback)
    print(f"wall time this session: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return run_dir


if __name__ == "__main__":
    main()
