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

Then the same steady-state sensitivity for registered cells at initialisation, across
their memory time-scale tau (lambda = 1 - 1/tau is the per-step retention at init):

  lstm   forget-gate bias b_f = logit(1 - 1/tau)         (forget gate f = 1 - 1/tau)
  gru    update-gate bias b_z = logit(1 - 1/tau)         (h = (1-z) n + z h, z = 1 - 1/tau)
  lru    every |lambda| = 1 - 1/tau, gamma = sqrt(1-|lambda|^2)   (phases as at init)

along two tangents, each of norm sqrt(H) and reported per unit (s_t^2 / H): "memory",
all ones on the parameter that sets tau (b_f, b_z, nu_log), and "W_h", a random
direction of the recurrent matrix (LSTM, GRU). The reference lines are the scalar
recurrence's closed forms at lambda = 1 - 1/tau: plain, sigmoid-parametrised
(lambda = sigmoid(b), the gates' case: times (lambda (1-lambda))^2) and the LRU's
(exp, with the input scaled by a fixed gamma = sqrt(1-lambda^2): its gamma_log is a
parameter of its own, so a tangent along nu_log leaves it; -> 1/2).

Writes curse_of_memory.{png,pdf}, curse_of_memory_cells.{png,pdf},
curse_of_memory.csv, curse_of_memory_cells.csv, summary.json, config.json,
environment.json and COMPLETE into one results folder (printed at the end).
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
CELLS = ("lstm", "gru", "lru")
DEFAULT_TAUS = (2.0, 5.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


@dataclasses.dataclass(frozen=True)
class Config:
    """python experiments/curse_of_memory.py [--quick] (or --replot RESULTS_FOLDER)

    Expect the measured E (dh/dtheta)^2 to follow each closed form within Monte-Carlo
    noise (a few per cent): the plain recurrence's sensitivity to lambda grows as
    (1-lambda)^-3 (about 1e8 at lambda = 0.999), input normalisation reduces it to
    (1-lambda)^-2, the exponential parametrisation alone to (1-lambda)^-1, and both
    together keep it bounded (-> 1/4), which is why the LRU uses both.

    The registered cells at initialisation (second figure, x = memory time-scale tau):
    the LRU, set to |lambda| = 1 - 1/tau, stays on its bounded closed form along nu_log
    (-> 1/2 times the mean |B|^2 of its random input matrix). The LSTM
    inherits the curse: its cell state adds i*g un-normalised, and its sensitivity,
    both to the forget bias and along a random direction of W_h, grows faster than
    tau (about 100-fold from tau = 10 to 100). The GRU's falls with tau: its update
    h = z h + (1-z) n is a convex combination, an input normalisation by 1 - lambda,
    and its gate a sigmoid parameter. --quick (lambda <= 0.99, T = 2000; tau <= 100)
    runs in seconds.
    """

    lambdas: tuple[float, ...] = dataclasses.field(
        default=DEFAULT_LAMBDAS, metadata={"help": "recurrence coefficients, in (0, 1)"})
    seq_len: int = dataclasses.field(
        default=20000, metadata={"help": "T; the second half is the steady-state average"})
    batch_size: int = dataclasses.field(default=64, metadata={"help": "independent sequences"})
    seed: int = dataclasses.field(default=0, metadata={"help": "the noise's seed"})
    cells: tuple[str, ...] = dataclasses.field(
        default=CELLS, metadata={"help": f"registered cells to sweep, among {', '.join(CELLS)}"})
    taus: tuple[float, ...] = dataclasses.field(
        default=DEFAULT_TAUS, metadata={"help": "the cells' memory time-scales, each > 1"})
    cell_seq_len: int = dataclasses.field(
        default=10000, metadata={"help": "T for the cells; keep it above 5 * max(taus)"})
    hidden_size: int = dataclasses.field(default=16, metadata={"help": "the cells' H"})
    formats: tuple[str, ...] = dataclasses.field(
        default=("png", "pdf"), metadata={"help": "figure formats (png, pdf, svg)"})
    fast_compile: bool = experiment.fast_compile_field()

    PRESETS = {"quick": dict(lambdas=(0.5, 0.8, 0.9, 0.95, 0.98, 0.99), seq_len=2000,
                             taus=(2.0, 10.0, 100.0), cell_seq_len=1500, formats=("png",),
                             fast_compile=True)}

    def __post_init__(self):
        if not self.lambdas or not all(0 < v < 1 for v in self.lambdas):
            raise ValueError(f"lambdas must lie in (0, 1); received {self.lambdas}.")
        if self.seq_len < 4:
            raise ValueError(f"seq_len must be >= 4; received {self.seq_len}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; received {self.batch_size}.")
        unknown = [c for c in self.cells if c not in CELLS]
        if unknown:
            raise ValueError(f"cells must be among {', '.join(CELLS)}; received {unknown}.")
        if not self.taus or not all(t > 1 for t in self.taus):
            raise ValueError(f"taus must all be > 1; received {self.taus}.")
        if self.cell_seq_len < 4:
            raise ValueError(f"cell_seq_len must be >= 4; received {self.cell_seq_len}.")
        if self.hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1; received {self.hidden_size}.")


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


def sigmoid_closed_form(lam: np.ndarray) -> np.ndarray:
    """The plain form with lambda = sigmoid(b), sensitivity to b: times (lambda(1-lambda))^2."""
    lam = np.asarray(lam, np.float64)
    return (lam * (1 - lam)) ** 2 * closed_form("plain", lam)


def lru_closed_form(lam: np.ndarray) -> np.ndarray:
    """The LRU along nu_log: lambda = exp(-exp(nu)) with the input scaled by gamma =
    sqrt(1-l^2) held fixed (gamma_log is its own parameter), so the exp form times
    1 - l^2: (l ln l)^2 (1+l^2)/(1-l^2)^2, bounded (-> 1/2)."""
    lam = np.asarray(lam, np.float64)
    return closed_form("exp", lam) * (1 - lam**2)


def memory_cell(name: str, tau: float, hidden_size: int, key: jax.Array):
    """(cell, params, {tangent name: tangent}) of a registered cell whose per-step
    retention at initialisation is ``1 - 1/tau`` (see the module docstring)."""
    H, lam = hidden_size, 1.0 - 1.0 / tau
    logit = float(np.log(lam / (1 - lam)))
    k_init, k_dir = jax.random.split(key)
    if name == "lstm":
        cell = rnnlab.lstm(H, forget_bias=logit)
        params = cell.init(k_init, 1)
        memory = {"b": jnp.zeros_like(params.b).at[H:2 * H].set(1.0)}
    elif name == "gru":
        cell = rnnlab.gru(H)
        params = cell.init(k_init, 1)
        params = params._replace(b_x=params.b_x.at[H:2 * H].set(logit))
        memory = {"b_x": jnp.zeros_like(params.b_x).at[H:2 * H].set(1.0)}
    elif name == "lru":
        cell = rnnlab.lru(H)
        params = cell.init(k_init, 1)
        params = params._replace(
            nu_log=jnp.full_like(params.nu_log, np.log(-np.log(lam))),
            gamma_log=jnp.full_like(params.gamma_log, 0.5 * np.log1p(-lam**2)))
        memory = {"nu_log": jnp.ones_like(params.nu_log)}
    else:
        raise ValueError(f"unknown cell {name!r}; expected one of {CELLS}.")

    def along(fields):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return zeros._replace(**fields)

    tangents = {"memory": along(memory)}
    if hasattr(params, "W_h"):
        direction = jax.random.normal(k_dir, params.W_h.shape, params.W_h.dtype)
        direction = direction * np.sqrt(H) / jnp.linalg.norm(direction)
        tangents["W_h"] = along({"W_h": direction})
    return cell, params, tangents


def measure_cell(cfg: Config, name: str) -> dict[str, list[float]]:
    """Per tangent, per tau: the mean over the second half of the steps and the
    sequences of s_t^2 / H."""
    H, T = cfg.hidden_size, cfg.cell_seq_len
    key = jax.random.key(cfg.seed)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (T, cfg.batch_size, 1))
    built = [memory_cell(name, tau, H, jax.random.fold_in(key, 2)) for tau in cfg.taus]
    cell = built[0][0]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[b[1] for b in built])
    out = {}
    for tangent in built[0][2]:
        ts = jax.tree.map(lambda *a: jnp.stack(a), *[b[2][tangent] for b in built])

        def one(p, v):
            s = diagnostics.param_sensitivity(cell, p, xs, v)  # [T, B]
            return jnp.mean(jnp.square(s[T // 2:])) / H

        out[tangent] = np.asarray(jax.jit(jax.vmap(one))(stacked, ts), np.float64).tolist()
    return out


def replot_cells(run_path: Path, summary: dict, cfg: dict) -> None:
    """The registered cells' figure: per-unit sensitivity against tau."""
    from rnnlab.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    taus = np.asarray(summary["taus"], np.float64)
    fine = np.geomspace(taus.min(), taus.max(), 400)
    lam = 1 - 1 / fine
    for curve, style, label in (
            (closed_form("plain", lam), ":", r"plain $\lambda$: $(1+\lambda^2)/(1-\lambda^2)^3$"),
            (sigmoid_closed_form(lam), "-.", r"$\lambda=\sigma(b)$, w.r.t. $b$"),
            (lru_closed_form(lam), "--", r"LRU w.r.t. $\nu$, fixed $\gamma=\sqrt{1-\lambda^2}$")):
        ax.plot(fine, curve, color="0.45", ls=style, lw=1.1, label=label)
    markers = {"memory": "o-", "W_h": "s--"}
    for i, (name, per_tangent) in enumerate(summary["cells"].items()):
        for tangent, values in per_tangent.items():
            what = {"memory": r"the parameter setting $\tau$", "W_h": r"a random $W_h$ direction"}
            ax.plot(taus, values, markers[tangent], color=f"C{i}", ms=4, lw=1.3,
                    label=f"{name}, along {what[tangent]}")
    ax.set(xscale="log", yscale="log",
           xlabel=r"memory time-scale $\tau$ at init ($\lambda = 1 - 1/\tau$)",
           ylabel=r"steady-state $E\,\|\partial h_t/\partial\theta\, v\|^2 / H$",
           title=f"registered cells at initialisation (H = {cfg['hidden_size']}, "
                 f"T = {cfg['cell_seq_len']}, B = {cfg['batch_size']}, unit white noise)")
    ax.title.set_fontsize(9)
    ax.legend(frameon=False, fontsize=7, loc="upper left")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    experiment.save_figure(fig, run_path / f"{EXPERIMENT}_cells", cfg.get("formats", ("png",)),
                           close=True)


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
    if "cells" in summary:  # folders written before the cells' part have only the first
        replot_cells(run_path, summary, cfg)


def main(argv=None) -> Path:
    folder = experiment.replot_folder(argv, prog="curse_of_memory.py")
    if folder is not None:
        replot(folder)
        print(f"redrew the figures in {folder}")
        return folder
    cfg, ns = experiment.parse_config(Config, argv, prog="curse_of_memory.py")
    run = experiment.open_run_dir(EXPERIMENT, cfg, ns)
    with experiment.compile_fast(cfg.fast_compile):
        measured = {p: measure(cfg, p).tolist() for p in PARAMETRISATIONS}
        lam = np.asarray(cfg.lambdas)
        theory = {p: closed_form(p, lam).tolist() for p in PARAMETRISATIONS}
        rows = [dict(parametrisation=p, lam=float(v), measured=measured[p][i],
                     closed_form=theory[p][i])
                for p in PARAMETRISATIONS for i, v in enumerate(lam)]
        run.write_csv("curse_of_memory.csv", rows)
        cells = {}
        for name in cfg.cells:
            cells[name] = measure_cell(cfg, name)
            print(f"curse of memory: measured {name}", flush=True)
    run.write_csv("curse_of_memory_cells.csv", [
        dict(cell=name, tangent=tangent, tau=float(tau), per_unit=values[i])
        for name, per_tangent in cells.items() for tangent, values in per_tangent.items()
        for i, tau in enumerate(cfg.taus)])
    run.write_json("summary.json", {"lambdas": list(cfg.lambdas), "measured": measured,
                                    "closed_form": theory, "taus": list(cfg.taus),
                                    "cells": cells})
    if run.is_writer:
        replot(run.path)
    run.mark_complete()
    experiment.print_table(
        "E (dh/dtheta)^2: measured / closed form", ["lambda", *PARAMETRISATIONS],
        [[float(v), *(f"{measured[p][i]:.4g} / {theory[p][i]:.4g}" for p in PARAMETRISATIONS)]
         for i, v in enumerate(lam)])
    experiment.print_table(
        "registered cells: steady-state E ||dh/dtheta v||^2 / H", ["cell, tangent", *(
            f"tau={t:g}" for t in cfg.taus)],
        [[f"{name}, {tangent}", *(f"{v:.3g}" for v in values)]
         for name, per_tangent in cells.items() for tangent, values in per_tangent.items()])
    print(f"results: {run.path}")
    return run.path


if __name__ == "__main__":
    main()
