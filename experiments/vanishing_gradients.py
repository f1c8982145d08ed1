"""How gradients vanish or explode through time, for every registered cell.

    python experiments/vanishing_gradients.py            # ~2-3 min on a 2-core CPU
    python experiments/vanishing_gradients.py --quick    # < 20 s, a smoke test
    python experiments/vanishing_gradients.py --replot results/vanishing_gradients/run-XXXX

Writes into one results folder (printed at the end):
  gradient_norms.{png,pdf}   ||dL/dh_t|| against the distance T-1-t, at init and
                             after a short training run on the adding problem
                             (Arjovsky et al. 2016, Fig. 4), median and IQR over
                             seeds x sequences, closed-form bounds dotted;
  phase_diagram.{png,pdf}    tanh RNN: gradient ratio over a fixed distance and
                             the largest Lyapunov exponent against the recurrent
                             spectral radius (Pascanu et al. 2013);
  gradient_norms.csv, phase_diagram.csv, summary.json, cells/<cell>.json (raw
  numbers), norms_<cell>.npz (every norm: [phase, seed, T, sequence]),
  config.json, environment.json, COMPLETE.
Re-running the same command resumes: cells already measured are skipped.
Seeds (and the phase diagram's gains) are split across every visible device
(rnnlab.distributed); with several processes only process 0 writes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import rnnlab
from rnnlab import diagnostics, distributed, experiment, plots, registry, tasks, train
from rnnlab.validation import add_bias

EXPERIMENT = "vanishing_gradients"
DEFAULT_GAINS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5)


@dataclasses.dataclass(frozen=True)
class Config:
    """python experiments/vanishing_gradients.py — per-step gradient norms ||dL/dh_t||
    against the distance k = T-1-t for every registered cell, at initialisation and
    after a short training run on the adding problem, plus a tanh-RNN phase diagram.

    Expect (defaults, measured: 2 min 36 s on a 2-core CPU shared with other jobs):
    at init the tanh RNN decays by ~0.81 per step (g(100)/g(1) ~ 4e-10: its orthogonal
    W_h has radius 1, the loss of gradient is tanh saturation), the forget-bias-0 LSTM
    by ~0.74, the forget-bias-1 LSTM by ~0.92 (g(100)/g(1) ~ 1e-4), minGRU/minLSTM by
    ~0.6 (their carry Jacobian is diag(1 - z), z ~ 0.5 at init), while the IRNN, the
    orthogonal RNN (~1.0) and the LRU (~0.99) keep g(100)/g(1) within an order of
    magnitude. 300 steps on T = 150 leave every cell on the adding baseline (MSE
    ~0.167); training makes the tanh RNN vanish faster (~0.60/step) and the GRU
    slower (0.75 -> 0.92). Phase diagram: lambda_1 follows ln(rho) below 1 and crosses
    0 between rho = 1.0 and 1.1; g(50)/g(1) crosses 1 between 1.1 and 1.2.
    --quick (two cells, tiny sizes): about 20 s.
    """

    cells: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"help": "cells to compare, by registry name; empty = all registered"}
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

    PRESETS = {
        # Two cells, so that a smoke test stays under 20 s: compilation, about
        # 5 s per cell on a 2-core CPU, dominates at this size.
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
        ),
    }

    def __post_init__(self):
        for c in self.cells:
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
        return self.cells or registry.names()


# ----------------------------------------------------------------------------- measuring


def _norms_fn(cell, task, cfg: Config):
    """``(cell_params [S], readout [S], key_data [S]) -> norms [S, T, B]``: one compiled
    program, its seeds split across the devices (numpy out)."""

    def one(cell_params, readout, key_data):
        batch = task.sample(jax.random.wrap_key_data(key_data), cfg.batch_size, cfg.seq_len)

        def loss_fn(ys, final_carry):
            del final_carry
            outputs = add_bias(ys[-1] @ readout.W, readout.b)
            # Per-sequence losses summed, so each sequence's gradient is its own.
            return task.loss(outputs, batch) * cfg.batch_size

        return diagnostics.carry_grad_norms(
            cell, cell_params, batch.inputs, loss_fn, lengths=batch.lengths
        )

    return distributed.shard_over_seeds(jax.vmap(one))


def _summarise(norms: np.ndarray, bound: np.ndarray | None) -> dict:
    """norms [S, T, B] -> per-distance median/IQR for k = 1..T-1 (k = T-1-t)."""
    T = norms.shape[1]
    by_distance = np.moveaxis(norms[:, ::-1], 1, 0).reshape(T, -1)[1:]  # [T-1, S*B], k = 1..
    distance = np.arange(1, T)
    q25, median, q75 = np.quantile(by_distance, [0.25, 0.5, 0.75], axis=1)
    out = {
        "distance": distance.tolist(),
        "median": median.tolist(),
        "q25": q25.tolist(),
        "q75": q75.tolist(),
        "decay_per_step": float(
            diagnostics.fit_decay_rate(jnp.asarray(median), jnp.asarray(distance))
        ),
        "theory": None,
    }
    if bound is not None:
        r = float(np.median(bound))
        out["theory"] = (median[0] * r ** (distance - 1.0)).tolist()
        out["bound_rate"] = r
    return out


def _ratio(summary: dict, k: int) -> float:
    med = summary["median"]
    return float(med[k - 1] / med[0]) if k - 1 < len(med) and med[0] > 0 else float("nan")


def measure_cell(name: str, cfg: Config, run: experiment.RunDir) -> dict:
    """Gradient norms of one cell at init and after training; writes cells/<name>.json."""
    task = tasks.get(cfg.task)
    cell = registry.get(name, cfg.hidden_size)
    bound_fn = registry.entry(name).decay_bound
    tcfg = train.TrainConfig(
        seq_len=cfg.seq_len,
        batch_size=cfg.train_batch_size,
        optimizer=cfg.optimizer,
        learning_rate=cfg.learning_rate,
        clip_norm=cfg.clip_norm,
        eval_batch_size=256,
    )
    seeds = np.arange(cfg.seed, cfg.seed + cfg.seeds, dtype=np.int32)
    fns = train.make_train_fns(cell, task, tcfg)
    norms_fn = _norms_fn(cell, task, cfg)
    k_measure = jax.random.fold_in(jax.random.key(cfg.seed), 0x6E6F726D)  # "norm"
    keys = jax.random.key_data(jax.random.split(k_measure, cfg.seeds))

    def measure(state):
        norms = np.asarray(norms_fn(state.params.cell, state.params.readout, keys))
        bound = None
        if bound_fn is not None:
            bound = np.asarray(jax.vmap(bound_fn)(state.params.cell))
        return norms, _summarise(norms, bound)

    state = fns.init(jnp.asarray(seeds))
    norms_init, result = measure(state)
    result = {"init": result}
    raw = {"init": norms_init}
    if cfg.train_steps:
        state, history = train.train(cell, task, tcfg, seeds, cfg.train_steps, fns=fns)
        raw["trained"], result["trained"] = measure(state)
        ev = train.evaluate(fns, state, seeds)
        for report in train.divergence_reports(state, history, seeds.tolist(), cell=name):
            print(f"warning: {report.message()}", file=sys.stderr)
        result["training"] = {
            "final_loss": history["loss"][:, -1].tolist(),
            "eval_metric": ev["metric"].tolist(),
            "baseline": task.baseline(cfg.seq_len),
            "metric_name": task.metric_name,
            "diverged": ev["diverged"].tolist(),
        }
    result["description"] = registry.entry(name).description
    buf = io.BytesIO()
    np.savez_compressed(buf, **raw)
    run.write_bytes(f"norms_{name}.npz", buf.getvalue())
    run.write_json(f"cells/{name}.json", result)
    return result


def phase_diagram(cfg: Config) -> dict:
    """tanh RNN with orthogonal W_h scaled to each gain: g(k)/g(1) and lambda_1, vmapped."""
    task = tasks.get(cfg.task)
    cell = rnnlab.elman(cfg.hidden_size, nonlinearity="tanh", recurrent_init="orthogonal")
    k_params, k_data, k_readout = jax.random.split(jax.random.key(cfg.seed + 1), 3)
    params = jax.vmap(cell.init, in_axes=(0, None))(
        jax.random.split(k_params, cfg.seeds), task.input_size
    )
    readout = jax.random.normal(k_readout, (cfg.hidden_size,)) / np.sqrt(cfg.hidden_size)
    batches = cfg.phase_input_scale * jax.vmap(
        lambda k: task.sample(k, cfg.batch_size, cfg.seq_len).inputs
    )(jax.random.split(k_data, cfg.seeds))  # [S, T, B, F]
    gains = jnp.asarray(cfg.gains, jnp.float32)
    k = cfg.phase_distance
    T = cfg.seq_len

    def one(gain, p, xs):
        p = p._replace(W_h=gain * p.W_h)
        norms = diagnostics.carry_grad_norms(
            cell, p, xs, lambda ys, c: jnp.sum(ys[-1] @ readout)
        )  # [T, B]
        ratio = norms[T - 1 - k] / norms[T - 2]
        lyap = diagnostics.lyapunov_exponents(cell, p, xs[:, 0], 1, transient=T // 4)[0]
        return ratio, lyap

    over_seeds = jax.vmap(one, in_axes=(None, 0, 0))
    # The gains are split across the devices; params and batches are replicated.
    over_gains = distributed.shard_over_seeds(
        lambda g: jax.vmap(over_seeds, in_axes=(0, None, None))(g, params, batches))
    ratio, lyap = over_gains(gains)
    ratio = np.asarray(ratio).reshape(len(cfg.gains), -1)  # [G, S*B]
    lyap = np.asarray(lyap)  # [G, S]
    out = {"gain": list(cfg.gains), "distance": k}
    for key, arr in (("ratio", ratio), ("lyapunov", lyap)):
        q25, med, q75 = np.quantile(arr, [0.25, 0.5, 0.75], axis=1)
        out.update(
            {f"{key}_median": med.tolist(), f"{key}_q25": q25.tolist(), f"{key}_q75": q75.tolist()}
        )
    return out


# ----------------------------------------------------------------------------- output


def write_outputs(cfg: Config, run: experiment.RunDir, results: dict, phase: dict) -> None:
    rows = []
    for name, res in results.items():
        for ph in ("init", "trained"):
            if ph not in res:
                continue
            s = res[ph]
            for i, d in enumerate(s["distance"]):
                rows.append(
                    {
                        "cell": name,
                        "phase": ph,
                        "distance": d,
                        "median": s["median"][i],
                        "q25": s["q25"][i],
                        "q75": s["q75"][i],
                        "theory": None if s["theory"] is None else s["theory"][i],
                    }
                )
    run.write_csv("gradient_norms.csv", rows)
    run.write_csv(
        "phase_diagram.csv",
        [
            {k: phase[k][i] for k in phase if isinstance(phase[k], list)}
            for i in range(len(phase["gain"]))
        ],
    )
    summary = {"cells": results, "phase_diagram": phase}
    run.write_json("summary.json", summary)
    replot(run.path, cfg.formats)


def replot(path: Path, formats=("png", "pdf")) -> None:
    """Redraws both figures from ``summary.json`` alone."""
    run_path = Path(path)
    summary = json.loads((run_path / "summary.json").read_text())
    cfg = json.loads((run_path / "config.json").read_text())
    curves = summary["cells"]
    phases = ["init"] + (["trained"] if any("trained" in c for c in curves.values()) else [])
    titles = {
        "init": "at initialisation",
        "trained": f"after {cfg['train_steps']} training steps ({cfg['task']})",
    }
    fig = plots.gradient_norms_vs_distance(
        curves,
        phases=phases,
        titles=titles,
        suptitle=f"Gradient norm through time, T = {cfg['seq_len']}, H = {cfg['hidden_size']}, "
        f"{cfg['seeds']} seeds x {cfg['batch_size']} sequences",
    )
    experiment.save_figure(fig, run_path / "gradient_norms", formats)
    fig2 = plots.phase_diagram(
        summary["phase_diagram"],
        distance=summary["phase_diagram"]["distance"],
        title=f"tanh RNN, orthogonal W_h scaled to radius rho, H = {cfg['hidden_size']}",
    )
    experiment.save_figure(fig2, run_path / "phase_diagram", formats)


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
        [
            "cell",
            "init r/step",
            "init g50/g1",
            "init g100/g1",
            "trained r/step",
            "trained g50/g1",
            "trained g100/g1",
            "eval metric",
            "baseline",
        ],
        rows,
    )
    experiment.print_table(
        f"tanh RNN phase diagram: g({phase['distance']})/g(1) and lambda_1 against gain",
        ["gain", "ratio (median)", "lambda_1 (median)", "ln gain"],
        [
            [g, r, l, float(np.log(g))]
            for g, r, l in zip(
                phase["gain"], phase["ratio_median"], phase["lyapunov_median"], strict=True
            )
        ],
    )


def main(argv=None) -> Path:
    if argv is None:
        argv = sys.argv[1:]
    distributed.maybe_initialize_distributed()
    if argv[:1] == ["--replot"]:
        if len(argv) != 2:
            raise SystemExit("usage: vanishing_gradients.py --replot RESULTS_FOLDER")
        cfg = json.loads((Path(argv[1]) / "config.json").read_text())
        replot(Path(argv[1]), cfg.get("formats", ("png", "pdf")))
        print(f"redrew the figures in {argv[1]}")
        return Path(argv[1])
    cfg, ns = experiment.parse_config(Config, argv, prog="vanishing_gradients.py")
    run = experiment.open_run_dir(EXPERIMENT, cfg, ns)
    names = cfg.cell_names
    results = {}
    with experiment.progress("vanishing gradients", total=len(names) + 1) as advance:
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
        write_outputs(cfg, run, results, phase)
    run.mark_complete()
    print_summary(results, phase)
    print(f"results: {run.path}")
    return run.path


if __name__ == "__main__":
    main()
