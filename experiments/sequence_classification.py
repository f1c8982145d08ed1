"""Real sequences: every cell on real classification data sets, beside the published numbers.

Each (data set, cell) trains several seeds (vmapped) on :func:`rnnlab.datasets.load` with
:mod:`rnnlab.train` (a cell reading left to right, its output at the last valid step ->
linear readout, Adam with cosine decay), and scores them on the whole test split. Test
accuracy is measured after every chunk (the learning curves), and the trained model's
gradient norm ||dL/dc_t|| is measured on real test sequences against the distance from the
last valid step. A finished run writes runs/<dataset>_<cell>/result.json; a run in progress
is checkpointed every chunk, so re-running the command (after kill -9 too) resumes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rnnlab
from rnnlab import datasets, diagnostics, distributed, experiment, train

EXPERIMENT = "sequence_classification"

#: (training steps, batch size) per data set: the budgets of the table in docs/data.md.
RECIPES: dict[str, tuple[int, int]] = {
    "mnist1d": (4000, 128),
    "mnist1d-shuffled": (4000, 128),
    "digits": (3000, 64),
    "digits-permuted": (3000, 64),
    "japanese-vowels": (1500, 32),
}


@dataclasses.dataclass(frozen=True)
class SequenceClassificationConfig:
    """python experiments/sequence_classification.py [--dataset mnist1d,japanese-vowels]
    [--cells gru,lstm] [--quick] (or --replot RESULTS_FOLDER)

    Expect (64 units, last valid step -> linear readout, Adam 3e-3 cosine, no clipping, 2
    seeds; mean test accuracy, 2-core CPU; table and figures in docs/data.md): the
    default run (about 5 minutes) gives on MNIST-1D gru 96.3%, lstm 95.1%, elman-tanh
    35.9% (the paper's bidirectional 6-unit GRU: 91%, its CNN 94%); on Japanese Vowels
    gru 97.4%, lstm 97.4%, elman-tanh 96.6%. With --dataset
    mnist1d-shuffled,digits,digits-permuted (about 9 minutes): shuffled MNIST-1D gru
    49.4%, lstm 48.0%, elman-tanh 35.3% (the paper's GRU: 57%); digits lstm 92.7%, gru
    91.1%, elman-tanh 82.0%; permuted digits gru 85.1%, lstm 84.0%, elman-tanh 83.2%.
    --quick is a smoke test whose numbers mean nothing.
    """

    datasets: tuple[str, ...] = dataclasses.field(
        default=("mnist1d", "japanese-vowels"),
        metadata={"help": "rnnlab.datasets names: " + ", ".join(RECIPES)})
    cells: tuple[str, ...] = dataclasses.field(
        default=("elman-tanh", "lstm", "gru"), metadata={"help": "rnnlab.registry cell names"})
    seeds: int = dataclasses.field(default=2, metadata={"help": "seeds per run, vmapped"})
    hidden_size: int = 64
    train_steps: int | None = dataclasses.field(
        default=None, metadata={"help": "steps per run; none: each data set's RECIPES entry"})
    train_batch_size: int | None = dataclasses.field(
        default=None, metadata={"help": "batch per step; none: each data set's RECIPES entry"})
    learning_rate: float = dataclasses.field(
        default=3e-3, metadata={"help": "Adam's peak rate, cosine-decayed to 0 over the run"})
    clip_norm: float | None = dataclasses.field(
        default=None, metadata={"help": "global-norm clip, none for none"})
    chunk_size: int = dataclasses.field(
        default=250, metadata={"help": "steps per compiled chunk, checkpoint and test point"})
    eval_batch_size: int = dataclasses.field(
        default=1000, metadata={"help": "test sequences scored at a time"})
    grad_sequences: int = dataclasses.field(
        default=64, metadata={"help": "test sequences for the gradient-norm curve"})
    fast_compile: bool = experiment.fast_compile_field()

    FLAG_ALIASES: ClassVar[dict[str, tuple[str, ...]]] = {
        "datasets": ("--dataset",), "train_steps": ("--steps",),
        "train_batch_size": ("--batch-size",)}
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": dict(datasets=("japanese-vowels",), cells=("gru",), seeds=2,
                      hidden_size=8, train_steps=40, train_batch_size=16, chunk_size=40,
                      grad_sequences=8, fast_compile=True),
    }

    def __post_init__(self):
        for d in self.datasets:
            if d not in RECIPES:
                raise ValueError(f"datasets must be names of {tuple(RECIPES)}; received {d!r}.")
        for c in self.cells:
            rnnlab.registry.entry(c)  # raises on an unknown cell
        if not self.datasets or not self.cells:
            raise ValueError("datasets and cells must be non-empty.")
        for name in ("seeds", "hidden_size", "chunk_size", "eval_batch_size", "grad_sequences"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; received {getattr(self, name)}.")
        for name in ("train_steps", "train_batch_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 or none; received {v}.")
        train.TrainConfig(learning_rate=self.learning_rate, clip_norm=self.clip_norm)

    def budget(self, dataset: str) -> tuple[int, int]:
        """(steps, batch size) of a run on ``dataset``."""
        steps, batch = RECIPES[dataset]
        return self.train_steps or steps, self.train_batch_size or batch


def run_specs(cfg: SequenceClassificationConfig) -> list[dict[str, Any]]:
    return [dict(key=f"{d}_{c}", dataset=d, cell=c) for d in cfg.datasets for c in cfg.cells]


def _train_config(cfg: SequenceClassificationConfig, dataset: str) -> train.TrainConfig:
    steps, batch = cfg.budget(dataset)
    return train.TrainConfig(batch_size=batch, optimizer="adam", learning_rate=cfg.learning_rate,
                             clip_norm=cfg.clip_norm, eval_batch_size=cfg.eval_batch_size,
                             schedule="cosine", decay_steps=steps)


def grad_norm_curve(cell: Any, params: train.ModelParams, ds: datasets.Dataset,
                    num: int) -> dict[str, np.ndarray]:
    r"""Mean :math:`\ln \lVert \partial L / \partial c_t \rVert` of a trained model on the
    first ``num`` test sequences, against the distance from each one's last valid step.

    ``L`` is the summed cross-entropy of the readout at the last valid step. Distance
    ``d = lengths - 1 - t``; at each ``d`` the mean is over the sequences that have a
    state there (``count``). ``d = 0`` is left out: the readout reads ``y_t``, which is
    computed from ``c_{t-1}``, so the final carry gets no gradient (see
    :func:`rnnlab.diagnostics.carry_grad_norms`).
    """
    xs = jnp.asarray(np.moveaxis(ds.x_test[:num], 1, 0))  # [T, B, F]
    labels = jnp.asarray(ds.y_test[:num])
    T, B = xs.shape[0], xs.shape[1]
    lengths = np.full(B, T) if ds.lengths_test is None else ds.lengths_test[:num]

    def loss_fn(ys, _carry):
        logits = train.apply_readout(params.readout, ys, per_step=False,
                                     lengths=jnp.asarray(lengths))
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

    # Plain norms (not log=True, which compiles slower): a trained model's stay far above
    # float32's smallest normal over these few dozen steps; exact zeros are left out below.
    g = np.asarray(diagnostics.carry_grad_norms(
        cell, params.cell, xs, loss_fn, lengths=None if ds.lengths_test is None else
        jnp.asarray(lengths)), np.float64)  # [T, B]
    with np.errstate(divide="ignore"):
        log_g = np.log(g)
    d = lengths[None, :] - 1 - np.arange(T)[:, None]  # [T, B]
    distances = np.arange(1, T)
    mean, count = np.full(T - 1, np.nan), np.zeros(T - 1, int)
    for k, dist in enumerate(distances):
        v = log_g[(d == dist) & np.isfinite(log_g)]
        count[k] = v.size
        if v.size:
            mean[k] = v.mean()
    return dict(distance=distances, mean_log_norm=mean, count=count)


def _reach(curve: dict) -> tuple[float, int]:
    """log10 of g(D)/g(1), D the largest distance that at least half the sequences reach."""
    counts = np.asarray(curve["count"])
    ok = np.flatnonzero(counts >= counts.max() / 2)
    D = int(np.asarray(curve["distance"])[ok[-1]])
    m = np.asarray(curve["mean_log_norm"])
    return float((m[ok[-1]] - m[0]) / math.log(10)), D


def run_one(cfg: SequenceClassificationConfig, spec: dict[str, Any], run_dir: experiment.RunDir,
            callback: Callable | None = None) -> dict[str, Any]:
    """Trains one (data set, cell) over all seeds; writes its curves and result."""
    ds = datasets.load(spec["dataset"])
    task, tcfg, seeds = ds.task(), _train_config(cfg, spec["dataset"]), list(range(cfg.seeds))
    steps, _ = cfg.budget(spec["dataset"])
    cell = rnnlab.registry.get(spec["cell"], cfg.hidden_size)
    fns = train.make_train_fns(cell, task, tcfg)
    rel = f"runs/{spec['key']}"
    curve_file = f"{rel}/test_curve.json"
    curve = run_dir.read_json(curve_file, default={"step": [], "accuracy": [], "loss": []})
    start = time.perf_counter()

    def on_chunk(step, state, history):
        ev = train.evaluate(fns, state, seeds)
        curve["step"].append(step)
        curve["accuracy"].append(ev["metric"].astype(float).tolist())
        curve["loss"].append(ev["loss"].astype(float).tolist())
        run_dir.write_json(curve_file, curve)
        if callback is not None:
            callback(step, state, history)

    state, history = train.train(cell, task, tcfg, seeds, steps, chunk_size=cfg.chunk_size,
                                 checkpoint_dir=run_dir.path / rel / "checkpoint",
                                 callback=on_chunk, fns=fns)
    ev = train.evaluate(fns, state, seeds)
    run_dir.write_npz(f"{rel}/history.npz", {k: history[k] for k in train.HISTORY_KEYS})
    grad = grad_norm_curve(cell, jax.tree.map(lambda a: a[0], state.params), ds,
                           cfg.grad_sequences)
    run_dir.write_npz(f"{rel}/grad_norms.npz", grad)
    drop, D = _reach(grad)
    reports = train.divergence_reports(state, history, seeds, cell=spec["key"])
    for r in reports:
        print(f"warning: {r.message()}", file=sys.stderr)
    acc, diverged = ev["metric"].astype(float), ev["diverged"].astype(bool)
    kept = acc[~diverged]
    result = dict(
        spec, seeds=seeds, steps=steps, batch_size=tcfg.batch_size, hidden_size=cfg.hidden_size,
        test_accuracy=acc.tolist(), test_loss=ev["loss"].astype(float).tolist(),
        test_accuracy_mean=float(kept.mean()) if kept.size else math.nan,
        test_accuracy_std=float(kept.std()) if kept.size else math.nan,
        baseline=task.baseline(None), diverged=diverged.tolist(),
        grad_log10_drop=drop, grad_distance=D,
        published=ds.published or {},
        train_seconds_this_session=time.perf_counter() - start)
    run_dir.write_json(f"{rel}/result.json", result)  # written last: "finished"
    if run_dir.is_writer:
        train.clear_checkpoints(run_dir.path / rel / "checkpoint")
    return result


def run(cfg: SequenceClassificationConfig, run_dir: experiment.RunDir,
        callback: Callable | None = None) -> list[dict[str, Any]]:
    """Runs (or resumes) every (data set, cell), then writes the summary and figures."""
    specs, results = run_specs(cfg), []
    total = sum(cfg.budget(s["dataset"])[0] for s in specs)
    with experiment.progress(EXPERIMENT, total=total) as advance:
        for spec in specs:
            key, seen, steps = spec["key"], [0], cfg.budget(spec["dataset"])[0]
            done = run_dir.read_json(f"runs/{key}/result.json")
            if done is not None:
                advance(steps, note=f"{key} (done)")
                results.append(done)
                continue

            def on_chunk(step, state, history, _key=key, _seen=seen):
                advance(step - _seen[0], note=_key)
                _seen[0] = step
                if callback is not None:
                    callback(step, state, history)

            results.append(run_one(cfg, spec, run_dir, on_chunk))
            advance(steps - seen[0], note=key)
    summarize(cfg, run_dir, results)
    run_dir.mark_complete()
    return results


SUMMARY_COLUMNS = ["dataset", "cell", "seeds", "test_accuracy_mean", "test_accuracy_std",
                   "steps", "batch_size", "hidden_size", "baseline", "diverged",
                   "grad_log10_drop", "grad_distance"]


def summarize(cfg: SequenceClassificationConfig, run_dir: experiment.RunDir,
              results: list[dict]) -> None:
    """Writes summary.csv/json and the figures, and prints the table."""
    rows = [dict({k: r[k] for k in SUMMARY_COLUMNS if k not in ("seeds", "diverged")},
                 seeds=len(r["seeds"]), diverged=int(np.sum(r["diverged"]))) for r in results]
    run_dir.write_csv("summary.csv", rows, SUMMARY_COLUMNS)
    run_dir.write_json("summary.json", results)
    if run_dir.is_writer:
        replot(run_dir.path)
    experiment.print_table(
        f"test accuracy (mean ± std over {cfg.seeds} seeds); gradient: log10 g(D)/g(1) on "
        "test sequences", ["dataset", "cell", "accuracy", "± std", "steps", "baseline",
                           "grad log10 drop", "D"],
        [[r["dataset"], r["cell"], r["test_accuracy_mean"], r["test_accuracy_std"], r["steps"],
          r["baseline"], r["grad_log10_drop"], r["grad_distance"]] for r in rows])


def replot(path: Path) -> None:
    """One figure per data set (training loss, test accuracy, gradient norm vs distance),
    drawn from the numbers saved in the results folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rnnlab import plots

    path = Path(path)

    def read_json(name):
        return json.loads((path / name).read_text())

    summary = read_json("summary.json")
    by_dataset: dict[str, list[dict]] = {}
    for r in summary:
        by_dataset.setdefault(r["dataset"], []).append(r)
    cells = list(dict.fromkeys(r["cell"] for r in summary))
    colors = plots.cell_colors(cells)
    for dataset, rs in by_dataset.items():
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for r in rs:
            c, rel = r["cell"], f"runs/{r['key']}"
            hist = np.load(path / rel / "history.npz")["loss"]  # [S, steps]
            window = max(1, hist.shape[1] // 40)
            kernel = np.ones(window) / window
            smooth = np.array([np.convolve(h, kernel, mode="valid") for h in hist])
            x = np.arange(smooth.shape[1]) + window
            axes[0].plot(x, np.nanmean(smooth, 0), color=colors[c], label=c)
            curve = read_json(f"{rel}/test_curve.json")
            acc = np.asarray(curve["accuracy"]) * 100  # [points, S]
            label = f"{c}: {100 * r['test_accuracy_mean']:.1f}%"
            axes[1].plot(curve["step"], acc.mean(1), "o-", ms=3, color=colors[c], label=label)
            if acc.shape[1] > 1:
                axes[1].fill_between(curve["step"], acc.min(1), acc.max(1), color=colors[c],
                                     alpha=0.2, lw=0)
            g = np.load(path / rel / "grad_norms.npz")
            keep = g["count"] >= max(1, g["count"].max() // 2)
            axes[2].plot(g["distance"][keep], g["mean_log_norm"][keep] / math.log(10),
                         color=colors[c], label=c)
        base = rs[0]["baseline"] * 100
        axes[1].axhline(base, color="gray", ls=":", label=f"majority class {base:.0f}%")
        published = rs[0].get("published") or {}
        # The paper's GRU where there is one (the table is in docs/data.md), else every entry.
        gru_only = any("GRU" in name for name in published)
        for name, value in published.items():
            if "GRU" in name:
                axes[1].axhline(100 * value, color="black", ls="--", lw=1,
                                label=f"paper's GRU {100 * value:.0f}%")
            elif not gru_only:
                axes[1].axhline(100 * value, color="black", ls="--", lw=1,
                                label=f"{name.split(' (')[0]} {100 * value:.1f}%")
        axes[0].set(yscale="log", xlabel="training step", ylabel="training cross-entropy",
                    title=f"{dataset}: training loss (smoothed, mean over seeds)")
        axes[1].set(xlabel="training step", ylabel="test accuracy (%)", ylim=(0, 100),
                    title="test accuracy (whole test split; band: seed range)")
        axes[2].set(xlabel="distance d from the last valid step",
                    ylabel=r"mean $\log_{10} \|\partial L / \partial c_{t}\|$",
                    title="trained model, test sequences (seed 0)")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        experiment.save_figure(fig, path / dataset, close=True)


def main(argv: list[str] | None = None, callback: Callable | None = None):
    folder = experiment.replot_folder(argv, prog="sequence_classification.py")
    if folder is not None:
        replot(folder)
        return None
    distributed.maybe_initialize_distributed()
    cfg, ns = experiment.parse_config(SequenceClassificationConfig, argv,
                                      prog="sequence_classification.py", replot=True)
    run_dir = experiment.open_run_dir(EXPERIMENT, cfg, ns)
    print(f"results: {run_dir.path}", file=sys.stderr)
    start = time.perf_counter()
    with experiment.compile_fast(cfg.fast_compile):
        run(cfg, run_dir, callback=callback)
    print(f"wall time this session: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return run_dir


if __name__ == "__main__":
    main()
