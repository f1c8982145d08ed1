"""Predictability decides parallelisability: Newton iterations against the Lyapunov exponent.

``rnnlab.scan(mode="newton")`` (DEER) and ``mode="quasi-newton"`` (quasi-DEER) solve
the T steps of a recurrence as one system; each iteration is a parallel scan, so
what they cost is the number of iterations. Gonzalez et al. (NeurIPS 2025) show that
it is governed by the largest Lyapunov exponent lambda_1 of the dynamics: contracting
(predictable) systems converge in a few iterations that grow slowly with T, chaotic
ones need up to T. This script measures both on one set of inputs: for a tanh RNN
whose orthogonal W_h is scaled to each gain (the phase-diagram sweep of
vanishing_gradients.py) and for every registered cell at initialisation, the
iterations each mode takes at several T, against lambda_1 from
:func:`rnnlab.diagnostics.lyapunov_exponents` on the longest sequence.

Writes (results folder): ``iterations.csv`` (one row per cell/gain, seed, T, mode),
``summary.json`` (all numbers, medians), ``sweep.json`` and ``cells/<cell>.json``
(raw, for resuming), ``iterations_vs_lyapunov.{png,pdf}``. ``--replot FOLDER``
redraws the figure from the saved numbers.

References:
  Gonzalez, Kozachkov, Zoltowski, Clarkson & Linderman, "Predictability enables
  parallelization of nonlinear state space models", NeurIPS 2025.
  Lim et al., "Parallelizing non-linear sequential models over the sequence
  length", ICLR 2024.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

import rnnlab
from rnnlab import diagnostics, experiment, registry

EXPERIMENT = "parallel_newton"
MODES = ("newton", "quasi-newton")
SWEEP = "tanh-rnn"


@dataclasses.dataclass(frozen=True)
class Config:
    """python experiments/parallel_newton.py [--quick] (or --replot RESULTS_FOLDER)

    Newton (DEER) and quasi-Newton iterations to solve T steps, against the largest
    Lyapunov exponent lambda_1, for a tanh RNN over recurrent gains and for the
    registered cells at initialisation. Expect a knee at lambda_1 = 0. Below it (the
    tanh RNN up to a gain of about 0.9) Newton converges in 3-4 iterations whatever T;
    as lambda_1 approaches 0 and crosses it (gains 1.1-1.5; small, weakly driven
    networks are only weakly chaotic) the iterations climb and scale with T, towards
    the cap T at which the solve is exact anyway. The registered cells fall on the same
    curve: the gated ones (GRU, LSTMs) contract and take 3-4 iterations, the IRNN and
    orthogonal RNN sit at lambda_1 ~ 0 and take more as T grows, and the cells whose
    carry is linear in itself (LRU, minGRU, minLSTM) take one. Quasi-Newton (diagonal
    Jacobians) needs far more: with a dense W_h it reaches the cap already below
    lambda_1 = 0, and the LRU's complex diagonal is not diagonal in real coordinates.
    --quick (two cells, three gains, small sizes) is a smoke test.
    """

    cells: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"help": "registered cells at init; empty = all registered"})
    hidden_size: int = dataclasses.field(default=16, metadata={"help": "units per cell"})
    lengths: tuple[int, ...] = dataclasses.field(
        default=(32, 128, 512), metadata={"help": "sequence lengths T"})
    gains: tuple[float, ...] = dataclasses.field(
        default=(0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5),
        metadata={"help": "tanh RNN: spectral radii of the orthogonal W_h"})
    seeds: int = dataclasses.field(default=3, metadata={"help": "inits (and input sequences)"})
    input_scale: float = dataclasses.field(
        default=0.1, metadata={"help": "inputs are this times N(0, 1); strong drive saturates "
                               "tanh and hides the transition (as in vanishing_gradients.py)"})
    input_size: int = dataclasses.field(default=2, metadata={"help": "input features"})
    seed: int = dataclasses.field(default=0, metadata={"help": "first seed"})
    formats: tuple[str, ...] = dataclasses.field(
        default=("png", "pdf"), metadata={"help": "figure formats (png, pdf, svg)"})
    fast_compile: bool = experiment.fast_compile_field()

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": dict(cells=("lstm", "mingru"), hidden_size=8, lengths=(32, 64),
                      gains=(0.5, 1.0, 1.5), seeds=2, formats=("png",), fast_compile=True),
    }

    def __post_init__(self):
        for c in self.cells:
            registry.entry(c)  # raises naming the registered cells
        for name in ("hidden_size", "seeds", "input_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; received {getattr(self, name)}.")
        if not self.lengths or min(self.lengths) < 4:
            raise ValueError(f"lengths must be non-empty and each >= 4; received {self.lengths}.")
        if not self.gains or min(self.gains) <= 0:
            raise ValueError(f"gains must be positive numbers; received {self.gains}.")
        if self.input_scale < 0:
            raise ValueError(f"input_scale must be >= 0; received {self.input_scale}.")
        for f in self.formats:
            if f not in ("png", "pdf", "svg"):
                raise ValueError(f"formats must be among png, pdf, svg; received {f!r}.")

    @property
    def cell_names(self) -> tuple[str, ...]:
        return self.cells or registry.names()


# ----------------------------------------------------------------------------- measuring


def _inputs(cfg: Config) -> jax.Array:
    """``[S, T_max, F]``: one input sequence per seed, shared by every cell and gain."""
    key = jax.random.key(cfg.seed)
    return cfg.input_scale * jax.random.normal(
        key, (cfg.seeds, max(cfg.lengths), cfg.input_size))


def _measure(cell: Any, params: Any, xs: jax.Array, cfg: Config) -> dict:
    """lambda_1 and the iterations of each mode at each T; ``params``/``xs`` lead with
    the same batch axes (vmapped), ``xs [..., T_max, F]``."""
    t_max = xs.shape[-2]

    def lyapunov(p, x):
        return diagnostics.lyapunov_exponents(cell, p, x, 1, transient=t_max // 4)[0]

    def iterations(p, x, mode):
        # Exact solves by construction (the cap is T); "ignore" keeps a host callback out.
        info = rnnlab.scan(cell, p, x, mode=mode, return_info=True,
                           newton={"on_failure": "ignore"})[2]
        return info.iterations, info.converged

    def everything(p, x):
        out = {"lyapunov": lyapunov(p, x)}
        for T in cfg.lengths:
            for mode in MODES:
                out[f"iterations/{mode}/{T}"], out[f"converged/{mode}/{T}"] = iterations(
                    p, x[:T], mode)
        return out

    for _ in range(xs.ndim - 2):
        everything = jax.vmap(everything)
    # One program for every T and mode: compiling dominates at these sizes.
    return {k: np.asarray(v).tolist() for k, v in jax.jit(everything)(params, xs).items()}


def measure_sweep(cfg: Config) -> dict:
    """The tanh RNN with an orthogonal W_h scaled to each gain: ``[G, S]`` numbers."""
    cell = rnnlab.elman(cfg.hidden_size, nonlinearity="tanh", recurrent_init="orthogonal")
    keys = jax.random.split(jax.random.key(cfg.seed + 1), cfg.seeds)
    params = jax.vmap(cell.init, in_axes=(0, None))(keys, cfg.input_size)
    gains = jnp.asarray(cfg.gains, jnp.float32)
    params = jax.vmap(lambda g: params._replace(W_h=g * params.W_h))(gains)  # [G, S, ...]
    xs = jnp.broadcast_to(_inputs(cfg), (len(cfg.gains),) + _inputs(cfg).shape)
    return {"gain": list(cfg.gains), **_measure(cell, params, xs, cfg)}


def measure_cell(name: str, cfg: Config) -> dict:
    """A registered cell at initialisation: ``[S]`` numbers."""
    cell = registry.get(name, cfg.hidden_size)
    keys = jax.random.split(jax.random.key(cfg.seed + 2), cfg.seeds)
    params = jax.vmap(cell.init, in_axes=(0, None))(keys, cfg.input_size)
    return _measure(cell, params, _inputs(cfg), cfg)


# ----------------------------------------------------------------------------- output


def _rows(sweep: dict, cells: dict[str, dict], cfg: dict) -> list[dict]:
    rows = []
    groups = [(f"{SWEEP} gain {g}", g, {k: v[i] for k, v in sweep.items() if k != "gain"})
              for i, g in enumerate(sweep["gain"])] + [(n, None, c) for n, c in cells.items()]
    for label, gain, numbers in groups:
        for s, lyap in enumerate(numbers["lyapunov"]):
            for T in cfg["lengths"]:
                for mode in MODES:
                    rows.append(dict(system=label, gain=gain, seed=s, T=T, mode=mode,
                                     lyapunov=lyap,
                                     iterations=numbers[f"iterations/{mode}/{T}"][s],
                                     converged=numbers[f"converged/{mode}/{T}"][s]))
    return rows


def figure(summary: dict, cfg: dict):
    """Iterations against lambda_1, one panel per mode: the sweep as lines (one per T),
    the cells as markers, lambda_1 = 0 and each T's cap marked."""
    from rnnlab.plots import _pyplot

    plt = _pyplot()
    sweep, cells, lengths = summary["sweep"], summary["cells"], cfg["lengths"]
    colors = {T: plt.cm.viridis(i / max(1, len(lengths) - 1) * 0.85)
              for i, T in enumerate(lengths)}
    markers = dict(zip(cells, "sDv^<>pPXh*d", strict=False))
    fig, axes = plt.subplots(1, len(MODES), figsize=(12, 4.6), sharey=True)
    for ax, mode in zip(axes, MODES, strict=True):
        lyap = np.nanmedian(np.asarray(sweep["lyapunov"], float), axis=1)  # [G]
        for T in lengths:
            its = np.asarray(sweep[f"iterations/{mode}/{T}"], float)  # [G, S]
            order = np.argsort(lyap)
            ax.plot(lyap[order], np.median(its, axis=1)[order], "o-", color=colors[T], ms=4,
                    label=f"tanh RNN, T = {T}")
            ax.axhline(T, color=colors[T], ls=":", lw=1)
            for name, c in cells.items():
                if not np.isfinite(_median(c["lyapunov"])):
                    continue  # no finite exponent to place it at (see summary.json)
                ax.scatter(_median(c["lyapunov"]),
                           np.median(np.asarray(c[f"iterations/{mode}/{T}"], float)),
                           marker=markers[name], s=40, facecolor="none", edgecolor=colors[T],
                           zorder=3)
        ax.axvline(0.0, color="k", lw=1, ls="--")
        ax.text(0.0, 1.02, r"$\lambda_1 = 0$", transform=ax.get_xaxis_transform(),
                ha="center", fontsize=9)
        ax.set_yscale("log")
        ax.set_xlabel(r"largest Lyapunov exponent $\lambda_1$ (nats/step)")
        ax.set_title(f"mode = {mode!r}", pad=14)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("iterations to converge (median over seeds)")
    from matplotlib.lines import Line2D

    handles, labels = axes[0].get_legend_handles_labels()
    handles += [Line2D([], [], color="grey", ls=":", lw=1)]
    labels += ["cap = T (exact there)"]
    handles += [Line2D([], [], marker=markers[n], ls="", mfc="none", mec="k") for n in cells]
    labels += [f"{n} at init" for n in cells]
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(f"Newton iterations against predictability (H = {cfg['hidden_size']}, "
                 f"inputs {cfg['input_scale']} N(0, 1), {cfg['seeds']} seeds)")
    fig.tight_layout()
    return fig


def _median(values) -> float:
    """The median of the finite values (JSON null for a non-finite exponent), else NaN."""
    values = np.asarray(values, float)
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")


def write_outputs(run: experiment.RunDir, sweep: dict, cells: dict[str, dict], cfg: Config):
    cfg_dict = json.loads(json.dumps(experiment.to_jsonable(cfg)))
    run.write_csv("iterations.csv", _rows(sweep, cells, cfg_dict))
    medians = {name: {"lyapunov": _median(c["lyapunov"]),
                      **{f"{m}/{T}": _median(c[f"iterations/{m}/{T}"])
                         for m in MODES for T in cfg.lengths}} for name, c in cells.items()}
    run.write_json("summary.json", {"sweep": sweep, "cells": cells, "cell_medians": medians})
    replot(run.path)


def replot(path: Path) -> None:
    """Redraws the figure from the folder's ``summary.json`` and ``config.json`` alone."""
    path = Path(path)
    summary = json.loads((path / "summary.json").read_text())
    cfg = json.loads((path / "config.json").read_text())
    experiment.save_figure(figure(summary, cfg), path / "iterations_vs_lyapunov",
                           cfg.get("formats", ("png", "pdf")), close=True)


def print_summary(sweep: dict, cells: dict[str, dict], cfg: Config) -> None:
    heads = [f"{'N' if m == 'newton' else 'qN'} T={T}" for m in MODES for T in cfg.lengths]

    def row(label, numbers, index=None):
        pick = (lambda v: v[index]) if index is not None else (lambda v: v)
        return [label, _median(pick(numbers["lyapunov"]))] + [
            _median(pick(numbers[f"iterations/{m}/{T}"])) for m in MODES for T in cfg.lengths]

    rows = [row(f"tanh gain {g}", sweep, i) for i, g in enumerate(sweep["gain"])]
    rows += [row(n, c) for n, c in cells.items()]
    experiment.print_table("Iterations to converge (median over seeds) against lambda_1",
                           ["system", "lambda_1"] + heads, rows)


def main(argv=None) -> Path:
    folder = experiment.replot_folder(argv, prog="parallel_newton.py")
    if folder is not None:
        replot(folder)
        print(f"redrew the figure in {folder}")
        return folder
    cfg, ns = experiment.parse_config(Config, argv, prog="parallel_newton.py", replot=True)
    run = experiment.open_run_dir(EXPERIMENT, cfg, ns)
    start = time.perf_counter()
    names = cfg.cell_names
    with (experiment.compile_fast(cfg.fast_compile),
          experiment.progress("parallel newton", total=len(names) + 1) as advance):
        sweep = run.read_json("sweep.json")
        if sweep is None:
            advance(0, note="tanh RNN sweep")
            sweep = measure_sweep(cfg)
            run.write_json("sweep.json", sweep)
        advance(1, note="sweep")
        cells = {}
        for name in names:
            done = run.read_json(f"cells/{name}.json")
            if done is None:
                advance(0, note=name)
                done = measure_cell(name, cfg)
                run.write_json(f"cells/{name}.json", done)
            cells[name] = done
            advance(1, note=name)
    if run.is_writer:
        write_outputs(run, sweep, cells, cfg)
    run.mark_complete()
    print_summary(sweep, cells, cfg)
    print(f"wall time this session: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(f"results: {run.path}")
    return run.path


if __name__ == "__main__":
    main()
