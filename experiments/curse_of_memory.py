"""The curse of memory (Zucchet & Orvieto, NeurIPS 2024), for a diagonal linear recurrence.

As a recurrence's memory grows (lambda -> 1), the hidden state's sensitivity to its
parameters explodes even when its gradients through time do not vanish or explode.
For h_t = lambda h_{t-1} + x_t driven by unit white noise this script measures the
steady-state E (dh_t/dtheta)^2 with rnnlab.diagnostics.param_sensitivity (one
forward-mode pass per run) and overlays the closed forms (docs/diagnostics.md):

  plain         theta = lambda,  h = lambda h + x                (1+l^2)/(1-l^2)^3
  normalised    theta = lambda,  h = lambda h + sqrt(1-l^2) x    1/(1-l^2)^2
  exp           theta = nu, lambda = exp(-exp(nu)), plain        (l ln l)^2 (1+l^2)/(1-l^2)^3
  exp+normalised  (the LRU's choice)                             (l ln l)^2/(1-l^2)^2

Writes curse_of_memory.{png,pdf}, curse_of_memory.csv, summary.json, config.json,
environment.json and COMPLETE into one results folder (printed at the end).
The registered cells' sensitivity across their memory time-scales is not measured yet.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import rnnlab
from rnnlab import diagnostics, experiment

EXPERIMENT = "curse_of_memory"
PARAMETRISATIONS = ("plain", "normalised", "exp", "exp+normalised")
DEFAULT_LAMBDAS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)


@dataclasses.dataclass(frozen=True)
class Config:
    """python experiments/curse_of_memory.py [--quick] (or --replot RESULTS_FOLDER)

    Expect the measured E (dh/dtheta)^2 to follow each closed form within Monte-Carlo
    noise (a few per cent): the plain recurrence's sensitivity to lambda grows as
    (1-lambda)^-3 (about 1e8 at lambda = 0.999), input normalisation reduces it to
    (1-lambda)^-2, the exponential parametrisation alone to (1-lambda)^-1, and both
    together keep it bounded (-> 1/4), which is why the LRU uses both. --quick
    (lambda <= 0.99, T = 2000) runs in seconds.
    """

    lambdas: tuple[float, ...] = dataclasses.field(
        default=DEFAULT_LAMBDAS, metadata={"help": "recurrence coefficients, in (0, 1)"})
    seq_len: int = dataclasses.field(
        default=20000, metadata={"help": "T; the second half is the steady-state average"})
    batch_size: int = dataclasses.field(default=64, metadata={"help": "independent sequences"})
    seed: int = dataclasses.field(default=0, metadata={"help": "the noise's seed"})
    formats: tuple[str, ...] = dataclasses.field(
        default=("png", "pdf"), metadata={"help": "figure formats (png, pdf, svg)"})

    PRESETS = {"quick": dict(lambdas=(0.5, 0.8, 0.9, 0.95, 0.98, 0.99), seq_len=2000,
                             formats=("png",))}

    def __post_init__(self):
        if not self.lambdas or not all(0 < v < 1 for v in self.lambdas):
            raise ValueError(f"lambdas must lie in (0, 1); received {self.lambdas}.")
        if self.seq_len < 4:
            raise ValueError(f"seq_len must be >= 4; received {self.seq_len}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; received {self.batch_size}.")


def closed_form(parametrisation: str, lam: np.ndarray) -> np.ndarray:
    """Steady-state E (dh_t/dtheta)^2 under unit white noise (docs/diagnostics.md)."""
    lam = np.asarray(lam, np.float64)
    q = lam**2
    base = 1 / (1 - q) ** 2 if "normalised" in parametrisation else (1 + q) / (1 - q) ** 3
    return (lam * np.log(lam)) ** 2 * base if parametrisation.startswith("exp") else base


def scalar_cell(parametrisation: str) -> rnnlab.Cell:
    """One unit: h_t = lambda h_{t-1} + b x_t, params {"theta": [1]} as the parametrisation."""

    def lam_of(theta):
        return jnp.exp(-jnp.exp(theta)) if parametrisation.startswith("exp") else theta

    def init(key, input_size):
        raise NotImplementedError("params are set by the experiment")

    def initial_carry(params, batch_shape=()):
        return jnp.zeros((*batch_shape, 1), params["theta"].dtype)

    def step(params, h, x):
        lam = lam_of(params["theta"]).reshape((1,) * (h.ndim - 1) + (1,))
        b = jnp.sqrt(1 - lam**2) if "normalised" in parametrisation else jnp.ones_like(lam)
        h = lam * h + b * x[..., :1]
        return h, h

    return rnnlab.Cell(init, initial_carry, step)


def measure(cfg: Config, parametrisation: str) -> np.ndarray:
    """Mean over the second half of the steps and the sequences of s_t^2, per lambda."""
    cell = scalar_cell(parametrisation)
    lam = jnp.asarray(cfg.lambdas, jnp.float32)
    theta = jnp.log(-jnp.log(lam)) if parametrisation.startswith("exp") else lam
    xs = jax.random.normal(jax.random.key(cfg.seed), (cfg.seq_len, cfg.batch_size, 1))

    def one(th):
        p = {"theta": th.reshape(1)}
        s = diagnostics.param_sensitivity(cell, p, xs, {"theta": jnp.ones(1)})  # [T, B]
        return jnp.mean(jnp.square(s[cfg.seq_len // 2:]))

    return np.asarray(jax.jit(jax.vmap(one))(theta), np.float64)


def replot(path: Path) -> None:
    """Redraws the figure from the folder's summary.json."""
    from rnnlab.plots import _pyplot

    run_path = Path(path)
    summary = json.loads((run_path / "summary.json").read_text())
    cfg = json.loads((run_path / "config.json").read_text())
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    lam = np.asarray(summary["lambdas"])
    fine = np.linspace(lam.min(), lam.max(), 400)
    for i, p in enumerate(PARAMETRISATIONS):
        ax.plot(1 - fine, closed_form(p, fine), color=f"C{i}", lw=1.2, ls=":")
        ax.plot(1 - lam, summary["measured"][p], "o", color=f"C{i}", label=p)
    ax.set(xscale="log", yscale="log", xlabel=r"$1 - \lambda$ (memory grows to the right)",
           ylabel=r"steady-state $E\,(\partial h_t / \partial \theta)^2$",
           title=f"curse of memory: measured (dots, T = {cfg['seq_len']}, "
                 f"B = {cfg['batch_size']}) and closed forms (dotted)")
    ax.invert_xaxis()
    ax.title.set_fontsize(9)
    ax.legend(frameon=False, fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    experiment.save_figure(fig, run_path / EXPERIMENT, cfg.get("formats", ("png",)), close=True)


def main(argv=None) -> Path:
    folder = experiment.replot_folder(argv, prog="curse_of_memory.py")
    if folder is not None:
        replot(folder)
        print(f"redrew the figure in {folder}")
        return folder
    cfg, ns = experiment.parse_config(Config, argv, prog="curse_of_memory.py")
    run = experiment.open_run_dir(EXPERIMENT, cfg, ns)
    measured = {p: measure(cfg, p).tolist() for p in PARAMETRISATIONS}
    lam = np.asarray(cfg.lambdas)
    theory = {p: closed_form(p, lam).tolist() for p in PARAMETRISATIONS}
    rows = [dict(parametrisation=p, lam=float(v), measured=measured[p][i], closed_form=theory[p][i])
            for p in PARAMETRISATIONS for i, v in enumerate(lam)]
    run.write_csv("curse_of_memory.csv", rows)
    run.write_json("summary.json", {"lambdas": list(cfg.lambdas), "measured": measured,
                                    "closed_form": theory})
    if run.is_writer:
        replot(run.path)
    run.mark_complete()
    experiment.print_table(
        "E (dh/dtheta)^2: measured / closed form", ["lambda", *PARAMETRISATIONS],
        [[float(v), *(f"{measured[p][i]:.4g} / {theory[p][i]:.4g}" for p in PARAMETRISATIONS)]
         for i, v in enumerate(lam)])
    print(f"results: {run.path}")
    return run.path


if __name__ == "__main__":
    main()
