"""How gradients vanish or explode through time, for every registered cell.

Writes into one results folder (printed at the end):
  gradient_norms.{png,pdf}   log10 ||dL/dh_t|| against the distance T-1-t, at init
                             and after a short training run on the adding problem
                             (Arjovsky et al. 2016, Fig. 4), median and IQR over
                             seeds x sequences, closed-form bounds dotted. Norms are
                             measured in log space (carry_grad_norms(log=True)), so
                             no curve stops at float32's underflow; a norm that is
                             exactly 0 (no path to the loss) is marked as such;
  phase_diagram.{png,pdf}    tanh RNN: gradient ratio over a fixed distance and
                             the largest Lyapunov exponent against the recurrent
                             spectral radius (Pascanu et al. 2013);
  gradient_norms.csv, phase_diagram.csv, summary.json, cells/<cell>.json (raw
  numbers; log_* fields are natural logs, null where the norm is exactly 0),
  norms_<cell>.npz (every log-norm: log_<phase> [seed, T, sequence]),
  config.json, environment.json, COMPLETE.
Re-running the same command resumes: cells already measured are skipped.
Seeds (and the phase diagram's gains) are split across every visible device
(rnnlab.distributed); with several processes only process 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import rnnlab
from rnnlab import diagnostics, distributed, experiment, plots, registry, tasks, train

EXPERIMENT = "vanishing_gradients"
DEFAULT_GAINS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5)


@dataclasses.dataclass(frozen=True)
class Config:
    """python experiments/vanishing_gradients.py [--quick] (or --replot RESULTS_FOLDER)

    Per-step gradient norms ||dL/dh_t|| (in log space, so they are seen at any depth)
    against the distance k = T-1-t for every
    registered cell, at initialisation and after a short training run on the adding
    problem, plus a tanh-RNN phase diagram. Expect at initialisation the tanh RNN's
    norm to fall geometrically with distance (tanh saturates although its orthogonal
    W_h has radius 1), the LSTM with forget bias 1 to keep it far longer than with
    forget bias 0, minGRU/minLSTM to lose it fastest, and the IRNN, the orthogonal
    RNN and the LRU to keep it within an order of magnitude over 100 steps; the table's
    g100/g1 is a number however small (e.g. 1e-70), never "underflow". The short
    training leaves every cell on the adding baseline, steepens the tanh RNN's decay
    and flattens the GRU's. In the phase diagram lambda_1 follows ln(rho) below
    rho = 1 and turns positive just above it, and g(k)/g(1) crosses 1 a little
    further up. --quick (two cells, tiny sizes, compiled fast) is a smoke test; its
    start-up with and without the compile cache is in docs/performance.md.
    """

    cells: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"help": "cells to compare: registry names, registry tags (classic, "
                              "modern, stable, gated, parallel, zoo, ...) or all; empty = every "
                              "registered cell outside the zoo (a figure stays legible)"}
    )
    hidden_size: int = dataclasses.field(default=32, metadata={"help": "units per cell"})
    seq_len: int = dataclasses.field(default=150, metadata={"help": "T, the sequence length"})
    seeds: int = dataclasses.field(
        default=4, metadata={"help": "independent inits, vmapped in one program"}
    )
    batch_size: int = dataclasses.field(
        default=16, metadata={"help": "sequences per seed on which norms are measured"}
    )
    task: str = dataclasses.field(
        default="adding", metadata={"help": f"training task, one of {tasks.names()}"}
    )
    train_steps: int = dataclasses.field(
        default=300, metadata={"help": "training steps before the 'trained' panel (0 skips it)"}
    )
    train_batch_size: int = dataclasses.field(default=32, metadata={"help": "batch per step"})
    optimizer: str = dataclasses.field(default="adam", metadata={"help": "optax optimizer"})
    learning_rate: float = dataclasses.field(default=1e-3, metadata={"help": "step size"})
    clip_norm: float | None = dataclasses.field(
        default=1.0, metadata={"help": "global-norm gradient clipping; none to disable"}
    )
    gains: tuple[float, ...] = dataclasses.field(
        default=DEFAULT_GAINS,
        metadata={"help": "phase diagram: recurrent spectral radii of the tanh RNN"},
    )
    phase_distance: int = dataclasses.field(
        default=50, metadata={"help": "phase diagram: distance k at which g(k)/g(1) is read"}
    )
    phase_input_scale: float = dataclasses.field(
        default=0.1,
        metadata={
            "help": "phase diagram: inputs scaled by this; strong drive saturates tanh "
            "and hides the transition at radius 1 (Rajan et al. 2010)"
        },
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "first seed; seeds are consecutive"})
    formats: tuple[str, ...] = dataclasses.field(
        default=("png", "pdf"), metadata={"help": "figure formats (png, pdf, svg)"}
    )
    fast_compile: bool = experiment.fast_compile_field()

    PRESETS = {
        # Two cells only, and fast compiling: compiling each cell's programs is most
        # of the wall time at this size.
        "quick": dict(
            cells=("elman-tanh", "lstm"),
            hidden_size=16,
            seq_len=40,
            seeds=2,
            batch_size=4,
            train_steps=20,
            gains=(0.5, 1.0, 1.5),
            phase_distance=20,
            formats=("png",),
            fast_compile=True,
        ),
    }

    def __post_init__(self):
        tags = {t for n in registry.names() for t in registry.entry(n).tags}
        for c in self.cells:
            if c != "all" and c not in tags:
                registry.entry(c)  # raises naming the registered cells
        tasks.get(self.task)
        for name in ("hidden_size", "seeds", "batch_size", "train_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; received {getattr(self, name)}.")
        if self.seq_len < 3:
            raise ValueError(f"seq_len must be >= 3; received {self.seq_len}.")
        if self.train_steps < 0:
            raise ValueError(f"train_steps must be >= 0; received {self.train_steps}.")
        if not 2 <= self.phase_distance < self.seq_len:
            raise ValueError(
                f"phase_distance must lie in [2, seq_len) = [2, {self.seq_len}); "
                f"received {self.phase_distance}."
            )
        if self.phase_input_scale < 0:
            raise ValueError(f"phase_input_scale must be >= 0; received {self.phase_input_scale}.")
        if not self.gains or min(self.gains) <= 0:
            raise ValueError(f"gains must be positive numbers; received {self.gains}.")
        for f in self.formats:
            if f not in ("png", "pdf", "svg"):
                raise ValueError(f"formats must be among png, pdf, svg; received {f!r}.")

    @property
    def cell_names(self) -> tuple[str, ...]:
        """The cells to measure: names as given, tags and "all" expanded, in order."""
        if not self.cells:
            return tuple(n for n in registry.names() if n not in registry.names("zoo"))
        out: list[str] = []
        for c in self.cells:
            group = registry.names() if c == "all" else registry.names(c) or (c,)
            out += [n for n in group if n not in out]
        return tuple(out)


# ----------------------------------------------------------------------------- measuring


def _norms_fn(cell, task, cfg: Config):
    """``(cell_params [S], readout [S], key_data [S]) -> log_norms [S, T, B]``: one compiled
    program, its seeds split across the devices (numpy out)."""

    def one(cell_params, readout, key_data):
        batch = task.sample(jax.random.wrap_key_data(key_data), cfg.batch_size, cfg.seq_len)

        def loss_fn(ys, _final_carry):
            outputs = train.apply_readout(readout, ys, per_step=task.per_step,
                                          lengths=batch.lengths)
            # Per-sequence losses summed, so each sequence's gradient is its own.
            return task.loss(outputs, batch) * cfg.batch_size

        return diagnostics.carry_grad_norms(
            cell, cell_params, batch.inputs, loss_fn, lengths=batch.lengths, log=True)

    return distributed.shard_over_seeds(jax.vmap(one))


def _log_quantiles(values: np.ndarray, qs, axis: int) -> np.ndarray:
    """Quantiles of log-norms; an interpolation touching -inf (a norm exactly 0) is -inf."""
    with np.errstate(invalid="ignore"):
        out = np.quantile(values, qs, axis=axis)
    return np.where(np.isnan(out) & ~np.any(np.isnan(values), axis=axis), -np.inf, out)


def _summarise(log_norms: np.ndarray, bound: np.ndarray | None) -> dict:
    """log_norms [S, T, B] -> per-distance median/IQR for k = 1..T-1 (k = T-1-t).

    ``log_*`` are natural logs; ``median``, ``q25``, ``q75`` their exponentials (0
    below float64's range)."""
    log_norms = np.asarray(log_norms, np.float64)
    T = log_norms.shape[1]
    by_distance = np.moveaxis(log_norms[:, ::-1], 1, 0).reshape(T, -1)[1:]  # [T-1, S*B]
    distance = np.arange(1, T)
    q25, median, q75 = _log_quantiles(by_distance, [0.25, 0.5, 0.75], axis=1)
    rate = diagnostics.fit_decay_rate(jnp.asarray(median), jnp.asarray(distance), log=True)
    out = {"distance": distance.tolist(), "log_median": median.tolist(),
           "log_q25": q25.tolist(), "log_q75": q75.tolist(),
           "median": np.exp(median).tolist(), "q25": np.exp(q25).tolist(),
           "q75": np.exp(q75).tolist(),
           "zero_fraction": np.mean(by_distance == -np.inf, axis=1).tolist(),
           "decay_per_step": float(rate), "theory": None, "log_theory": None}
    if bound is not None:
        r = float(np.median(bound))
        log_theory = median[0] + (distance - 1.0) * np.log(r)
        out["log_theory"] = log_theory.tolist()
        out["theory"] = np.exp(log_theory).tolist()
        out["bound_rate"] = r
    return out


def _log_ratio(summary: dict, k: int) -> float:
    """ln(g(k)/g(1)) of the medians (NaN if k is out of range or g(1) is not positive)."""
    # JSON holds -inf (a norm exactly 0) as null.
    med = [-np.inf if v is None else v for v in summary.get("log_median", [])]
    if not med:  # a results folder from before log-space norms
        lin = summary["median"]
        return float(np.log(lin[k - 1] / lin[0])) if k - 1 < len(lin) and lin[0] > 0 else np.nan
    if k - 1 >= len(med) or not np.isfinite(med[0]):
        return float("nan")
    return float(med[k - 1] - med[0])


def _ratio(summary: dict, k: int) -> float | str:
    """g(k)/g(1) of the medians: a float, or a string such as '1e-400' beyond float64."""
    lr = _log_ratio(summary, k)
    if np.isnan(lr):
        return float("nan")
    if lr == -np.inf:
        return "0 (no path)"
    if lr > -700:
        return float(np.exp(lr))
    return f"1e{lr / np.log(10):.1f}"


def measure_cell(name: str, cfg: Config, run: experiment.RunDir) -> dict:
    """Gradient norms of one cell at init and after training; writes cells/<name>.json."""
    task, cell = tasks.get(cfg.task), registry.get_for_length(name, cfg.hidden_size, cfg.seq_len)
    entry = registry.entry(name)
    tcfg = train.TrainConfig(
        seq_len=cfg.seq_len, batch_size=cfg.train_batch_size, optimizer=cfg.optimizer,
        learning_rate=cfg.learning_rate, clip_norm=cfg.clip_norm, eval_batch_size=256)
    seeds = np.arange(cfg.seed, cfg.seed + cfg.seeds, dtype=np.int32)
    fns = train.make_train_fns(cell, task, tcfg)
    norms_fn = _norms_fn(cell, task, cfg)
    k_measure = jax.random.fold_in(jax.random.key(cfg.seed), 0x6E6F726D)  # "norm"
    keys = jax.random.key_data(jax.random.split(k_measure, cfg.seeds))

    def measure(state):
        log_norms = np.asarray(norms_fn(state.params.cell, state.params.readout, keys))
        bound = None if entry.decay_bound is None else np.asarray(
            jax.vmap(entry.decay_bound)(state.params.cell))
        return log_norms, _summarise(log_norms, bound)

    raw, result = {}, {}
    raw["init"], result["init"] = measure(fns.init(jnp.asarray(seeds)))
    if cfg.train_steps:
        state, history = train.train(cell, task, tcfg, seeds, cfg.train_steps, fns=fns)
        raw["trained"], result["trained"] = measure(state)
        ev = train.evaluate(fns, state, seeds)
        for report in train.divergence_reports(state, history, seeds.tolist(), cell=name):
            print(f"warning: {report.message()}", file=sys.stderr)
        result["training"] = {
            "final_loss": history["loss"][:, -1].tolist(), "eval_metric": ev["metric"].tolist(),
            "baseline": task.baseline(cfg.seq_len), "metric_name": task.metric_name,
            "diverged": ev["diverged"].tolist()}
    result["description"] = entry.description
    run.write_npz(f"norms_{name}.npz", {f"log_{phase}": v for phase, v in raw.items()})
    run.write_json(f"cells/{name}.json", result)
    return result


def phase_diagram(cfg: Config) -> dict:
    """tanh RNN with orthogonal W_h scaled to each gain: g(k)/g(1) and lambda_1, vmapped."""
    task = tasks.get(cfg.task)
    cell = rnnlab.elman(cfg.hidden_size, nonlinearity="tanh", recurrent_init="orthogonal")
    k, T = cfg.phase_distance, cfg.seq_len

    def over_gains_one_device(gains):
        # Drawn inside the one compiled program (replicated on every device): eager
        # draws would each compile their own small program first.
        k_params, k_data, k_readout = jax.random.split(jax.random.key(cfg.seed + 1), 3)
        params = jax.vmap(cell.init, in_axes=(0, None))(
            jax.random.split(k_params, cfg.seeds), task.input_size)
        # A fixed random projection, not a trained readout: the probe of an untrained RNN.
        readout = jax.random.normal(k_readout, (cfg.hidden_size,)) / np.sqrt(cfg.hidden_size)
        batches = cfg.phase_input_scale * jax.vmap(
            lambda key: task.sample(key, cfg.batch_size, cfg.seq_len).inputs
        )(jax.random.split(k_data, cfg.seeds))  # [S, T, B, F]

        def one(gain, p, xs):
            p = p._replace(W_h=gain * p.W_h)
            log_norms = diagnostics.carry_grad_norms(
                cell, p, xs, lambda ys, c: jnp.sum(ys[-1] @ readout), log=True)  # [T, B]
            lyap = diagnostics.lyapunov_exponents(cell, p, xs[:, 0], 1, transient=T // 4)[0]
            return log_norms[T - 1 - k] - log_norms[T - 2], lyap

        over_seeds = jax.vmap(one, in_axes=(None, 0, 0))
        return jax.vmap(over_seeds, in_axes=(0, None, None))(gains, params, batches)

    # The gains are split across the devices.
    over_gains = distributed.shard_over_seeds(over_gains_one_device)
    log_ratio, lyap = over_gains(jnp.asarray(cfg.gains, jnp.float32))
    out = {"gain": list(cfg.gains), "distance": k}
    log_ratio = np.asarray(log_ratio, np.float64).reshape(len(cfg.gains), -1)  # [G, S*B]
    for key, arr in (("log_ratio", log_ratio), ("lyapunov", np.asarray(lyap))):  # [G, S]
        q25, med, q75 = _log_quantiles(arr, [0.25, 0.5, 0.75], axis=1)
        out.update({f"{key}_median": med.tolist(), f"{key}_q25": q25.tolist(),
                    f"{key}_q75": q75.tolist()})
    for q in ("median", "q25", "q75"):  # float64 holds these ratios at the phase distances
        out[f"ratio_{q}"] = np.exp(out[f"log_ratio_{q}"]).tolist()
    return out


# ----------------------------------------------------------------------------- output


def write_outputs(run: experiment.RunDir, results: dict, phase: dict) -> None:
    """The CSVs and summary.json, then the figures drawn from them."""
    rows = []
    for name, res in results.items():
        for ph in ("init", "trained"):
            if ph not in res:
                continue
            s = res[ph]
            rows += [dict(cell=name, phase=ph, distance=d, log_median=s["log_median"][i],
                          log_q25=s["log_q25"][i], log_q75=s["log_q75"][i],
                          log_theory=None if s["log_theory"] is None else s["log_theory"][i],
                          zero_fraction=s["zero_fraction"][i])
                     for i, d in enumerate(s["distance"])]
    run.write_csv("gradient_norms.csv", rows)
    run.write_csv("phase_diagram.csv", [{k: v[i] for k, v in phase.items() if isinstance(v, list)}
                                        for i in range(len(phase["gain"]))])
    run.write_json("summary.json", {"cells": results, "phase_diagram": phase})
    replot(run.path)


def replot(path: Path) -> None:
    """Redraws both figures from the folder's ``summary.json`` and ``config.json`` alone."""
    run_path = Path(path)
    summary = json.loads((run_path / "summary.json").read_text())
    cfg = json.loads((run_path / "config.json").read_text())
    formats = cfg.get("formats", ("png", "pdf"))
    curves = summary["cells"]
    phases = ["init"] + (["trained"] if any("trained" in c for c in curves.values()) else [])
    fig = plots.gradient_norms_vs_distance(
        curves, phases=phases, titles={
            "init": "at initialisation",
            "trained": f"after {cfg['train_steps']} training steps ({cfg['task']})"},
        suptitle=f"Gradient norm through time, T = {cfg['seq_len']}, H = {cfg['hidden_size']}, "
        f"{cfg['seeds']} seeds x {cfg['batch_size']} sequences")
    experiment.save_figure(fig, run_path / "gradient_norms", formats, close=True)
    fig = plots.phase_diagram(
        summary["phase_diagram"], distance=summary["phase_diagram"]["distance"],
        title=f"tanh RNN, orthogonal W_h scaled to radius rho, H = {cfg['hidden_size']}")
    experiment.save_figure(fig, run_path / "phase_diagram", formats, close=True)


def print_summary(results: dict, phase: dict) -> None:
    rows = []
    for name, res in results.items():
        row = [name]
        for ph in ("init", "trained"):
            s = res.get(ph)
            row += [s["decay_per_step"], _ratio(s, 50), _ratio(s, 100)] if s else ["-", "-", "-"]
        tr = res.get("training")
        row += [float(np.median(tr["eval_metric"])), tr["baseline"]] if tr else ["-", "-"]
        rows.append(row)
    experiment.print_table(
        "Gradient norm ||dL/dh_t|| against distance k (median over seeds x sequences)",
        ["cell", "init r/step", "init g50/g1", "init g100/g1", "trained r/step",
         "trained g50/g1", "trained g100/g1", "eval metric", "baseline"], rows)
    experiment.print_table(
        f"tanh RNN phase diagram: g({phase['distance']})/g(1) and lambda_1 against gain",
        ["gain", "ratio (median)", "lambda_1 (median)", "ln gain"],
        [[g, r, l, float(np.log(g))] for g, r, l in zip(
            phase["gain"], phase["ratio_median"], phase["lyapunov_median"], strict=True)])


def main(argv=None) -> Path:
    distributed.maybe_initialize_distributed()
    folder = experiment.replot_folder(argv, prog="vanishing_gradients.py")
    if folder is not None:
        replot(folder)
        print(f"redrew the figures in {folder}")
        return folder
    cfg, ns = experiment.parse_config(Config, argv, prog="vanishing_gradients.py", replot=True)
    run = experiment.open_run_dir(EXPERIMENT, cfg, ns)
    names, results = cfg.cell_names, {}
    with (experiment.compile_fast(cfg.fast_compile),
          experiment.progress("vanishing gradients", total=len(names) + 1) as advance):
        for name in names:
            done = run.read_json(f"cells/{name}.json")
            if done is None:
                advance(0, note=f"{name}: measuring and training")
                done = measure_cell(name, cfg, run)
            results[name] = done
            advance(1, note=name)
        phase = run.read_json("phase.json")
        if phase is None:
            advance(0, note="phase diagram")
            phase = phase_diagram(cfg)
            run.write_json("phase.json", phase)
        advance(1, note="done")
    if run.is_writer:  # write_outputs replots from the written summary.json
        write_outputs(run, results, phase)
    run.mark_complete()
    print_summary(results, phase)
    print(f"results: {run.path}")
    return run.path


if __name__ == "__main__":
    main()
