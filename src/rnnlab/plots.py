"""Figures of the experiments, drawn from saved numbers only.

Every function here takes the plain dicts/lists an experiment writes to its
results folder (never live JAX objects), so a figure can be redrawn from the
files without re-running anything (``--replot``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg"):
        # Experiments run headless more often than not; never try to open a window.
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cell_colors(names: Sequence[str]) -> dict[str, Any]:
    """A stable colour per cell name (tab10, then tab20 for many cells)."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _log10_field(curve: Mapping[str, Any], key: str) -> np.ndarray | None:
    """``curve["log_" + key]`` (natural logs; None = a norm exactly 0) as log10, or the
    log10 of ``curve[key]`` for results saved before log-space norms."""
    if curve.get("log_" + key) is not None:
        values = [-np.inf if v is None else v for v in curve["log_" + key]]
        return np.asarray(values, float) / np.log(10.0)
    if curve.get(key) is None:
        return None
    with np.errstate(divide="ignore"):
        return np.log10(np.asarray([np.nan if v is None else v for v in curve[key]], float))


#: log10 of float32's smallest normal number: squared-entry norms of float32
#: gradients (and float32 backprop itself) lose everything below it.
FLOAT32_TINY_LOG10 = float(np.log10(np.finfo(np.float32).tiny))


def gradient_norms_vs_distance(
    curves: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
    *,
    phases: Sequence[str] = ("init", "trained"),
    titles: Mapping[str, str] | None = None,
    suptitle: str = "",
):
    """Median ``log10 ||dL/dh_t||`` against the distance ``k = T-1-t``.

    Drawn on a linear axis of log10 values, so a norm of 1e-300 is as visible
    as one of 1e-3; float32's smallest normal number is drawn as a reference
    line. Where a median is exactly 0 (no path from the loss to that step) the
    curve ends in a cross, labelled; where it is NaN (a diverged seed) it ends
    in a circle.

    Args:
      curves: ``curves[cell][phase]`` holds equal-length lists ``distance`` and
        ``log_median``, ``log_q25``, ``log_q75`` (natural logs, None where the norm
        is 0) and optionally ``log_theory`` (a closed-form bound anchored at the
        first distance, drawn dotted); or, from older results, ``median``,
        ``q25``, ``q75`` and ``theory``.
      phases: one panel per phase, left to right.
      titles: panel titles by phase.
      suptitle: the figure title.

    Returns:
      The matplotlib figure.
    """
    plt = _pyplot()
    names = list(curves)
    colors = cell_colors(names)
    fig, axes = plt.subplots(
        1, len(phases), figsize=(6.2 * len(phases), 4.6), sharey=True, squeeze=False
    )
    # The y-range follows the measurements, not the bounds: a bound that grows
    # as r^k with r > 1 after training would otherwise squash every curve.
    measured = [_log10_field(curves[n][p], key) for n in names for p in phases
                if curves[n].get(p) for key in ("q25", "q75", "median")]
    values = np.concatenate([m for m in measured if m is not None] or [np.zeros(1)])
    values = values[np.isfinite(values)]
    span = (values.min(), values.max()) if values.size else (-1.0, 1.0)
    pad = max(0.5, 0.05 * (span[1] - span[0]))
    ylim = (span[0] - pad, span[1] + pad)
    marked_zero = marked_nan = False
    bounded: dict[str, None] = {}  # cells whose bound is drawn, in order
    for ax, phase in zip(axes[0], phases, strict=True):
        for name in names:
            c = curves[name].get(phase)
            if not c:
                continue
            d = np.asarray(c["distance"], float)
            med, q25, q75 = (_log10_field(c, key) for key in ("median", "q25", "q75"))
            ok = np.isfinite(med)
            ax.plot(d[ok], med[ok], color=colors[name], lw=1.8, label=name)
            band = ok & np.isfinite(q75)
            ax.fill_between(d[band], np.maximum(q25[band], ylim[0]), q75[band],
                            color=colors[name], alpha=0.18, lw=0)
            bad = np.flatnonzero(~ok)
            if bad.size:  # where the median leaves the measurable range, say how
                first = bad[0]
                x_end = d[first - 1] if first > 0 else d[first]
                y_end = med[first - 1] if first > 0 else ylim[0]
                is_zero = med[first] == -np.inf
                ax.plot([x_end], [y_end], "x" if is_zero else "o", color=colors[name], ms=8,
                        mfc="none")
                ax.annotate("exactly 0 beyond" if is_zero else "NaN beyond", (x_end, y_end),
                            textcoords="offset points", xytext=(4, -10), fontsize=7,
                            color=colors[name])
                marked_zero |= bool(is_zero)
                marked_nan |= not is_zero
            th = _log10_field(c, "theory")
            if th is not None:
                # Only the part inside the axes; the legend names each cell's bound.
                good = np.isfinite(th) & (th >= ylim[0]) & (th <= ylim[1])
                if good.any():
                    ax.plot(d[good], th[good], color=colors[name], lw=1.2, ls=":")
                    bounded.setdefault(name, None)
        if ylim[0] < FLOAT32_TINY_LOG10 < ylim[1]:
            ax.axhline(FLOAT32_TINY_LOG10, color="grey", lw=0.9, ls="--")
            ax.annotate("float32 smallest normal (1.2e-38): plain float32 norms end here",
                        (ax.get_xlim()[0], FLOAT32_TINY_LOG10), textcoords="offset points",
                        xytext=(4, 3), fontsize=7, color="grey")
        ax.set_ylim(*ylim)
        ax.set_xlabel("distance from the loss, k = T - 1 - t (steps)")
        ax.set_title((titles or {}).get(phase, phase))
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel(r"$\log_{10} \|\partial L / \partial h_t\|$ (median, IQR band)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    from matplotlib.lines import Line2D

    for name in bounded:
        handles.append(Line2D([], [], color=colors[name], ls=":", lw=1.2))
        labels.append(f"{name}: closed-form bound r^k")
    if marked_zero:
        handles.append(Line2D([], [], color="k", marker="x", ls="none"))
        labels.append("median norm exactly 0 beyond (no path to the loss)")
    if marked_nan:
        handles.append(Line2D([], [], color="k", marker="o", mfc="none", ls="none"))
        labels.append("median NaN beyond (diverged)")
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def phase_diagram(phase: Mapping[str, Sequence[float]], *, distance: int, title: str = ""):
    """Gradient decay and largest Lyapunov exponent against the recurrent gain.

    Args:
      phase: lists ``gain``, ``ratio_median``, ``ratio_q25``, ``ratio_q75``
        (``g(distance)/g(1)``), ``lyapunov_median``, ``lyapunov_q25``,
        ``lyapunov_q75``.
      distance: the distance at which the ratio was measured.
      title: the figure title.
    """
    plt = _pyplot()
    g = np.asarray(phase["gain"], float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.3))
    ax1.plot(g, phase["ratio_median"], "o-", color="C0", label="measured (median over seeds)")
    ax1.fill_between(g, phase["ratio_q25"], phase["ratio_q75"], color="C0", alpha=0.2, lw=0)
    ax1.plot(g, g ** (distance - 1), "k:", label=f"bound $\\rho^{{{distance - 1}}}$")
    ax1.axvline(1.0, color="grey", lw=0.8)
    ax1.set_yscale("log")
    ax1.set_xlabel(r"recurrent spectral radius $\rho$ (gain)")
    ax1.set_ylabel(f"$g({distance}) / g(1)$")
    ax1.set_title(f"gradient ratio over {distance - 1} steps")
    ax1.legend(frameon=False)
    ax1.grid(True, alpha=0.3)
    ax2.plot(g, phase["lyapunov_median"], "o-", color="C3", label="measured (median over seeds)")
    ax2.fill_between(g, phase["lyapunov_q25"], phase["lyapunov_q75"], color="C3", alpha=0.2, lw=0)
    ax2.plot(g, np.log(g), "k:", label=r"bound $\ln \rho$")
    ax2.axhline(0.0, color="grey", lw=0.8)
    ax2.axvline(1.0, color="grey", lw=0.8)
    ax2.set_xlabel(r"recurrent spectral radius $\rho$ (gain)")
    ax2.set_ylabel(r"largest Lyapunov exponent $\lambda_1$ (nats/step)")
    ax2.set_title(r"$\lambda_1 < 0$: gradients vanish; $\lambda_1 > 0$: they explode")
    ax2.legend(frameon=False)
    ax2.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _smooth(x: np.ndarray, window: int = 25) -> np.ndarray:
    """A running mean over ``window`` steps (at most a fifth of the curve)."""
    if len(x) == 0:
        return x
    window = max(1, min(window, len(x) // 5 or 1))
    return np.convolve(x, np.ones(window) / window, mode="valid")


def metric_vs_length(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    lengths: Sequence[int],
    baselines: Sequence[float],
    *,
    task: str,
    metric_name: str,
    baseline_formula: str,
    success_criterion: str,
    higher_is_better: bool,
):
    """Final metric and success rate over seeds against the sequence length T.

    Args:
      runs: ``runs[cell][i]``, the saved result at ``lengths[i]``: ``metric``
        (one per seed, dots), ``metric_mean`` (a line) and ``success_rate``.
      lengths: the lengths T, ascending.
      baselines: the task's memoryless baseline at each T, drawn dashed.
      task, metric_name, baseline_formula, success_criterion: the labels.
      higher_is_better: the metric's direction; a lower-is-better metric
        (an error) is drawn on a log scale.

    Returns:
      The matplotlib figure.
    """
    plt = _pyplot()
    Ts = list(lengths)
    names = list(runs)
    colors = cell_colors(names)
    fig, (ax_m, ax_s) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (cell, rs) in enumerate(runs.items()):
        # Cells often tie (e.g. every seed solved): each cell's points sit at its own small
        # offset along the log-T axis and have their own marker and dash, so none hides.
        x = np.asarray(Ts, float) * _OFFSET ** (i - (len(names) - 1) / 2)
        style = dict(color=colors[cell], marker=_MARKERS[i % len(_MARKERS)],
                     ls=_DASHES[i % len(_DASHES)], label=cell)
        mean = np.asarray([r["metric_mean"] for r in rs], float)  # None (NaN in JSON) -> NaN
        ax_m.plot(x, mean, **style)
        for xi, r in zip(x, rs, strict=True):
            metric = np.asarray(r["metric"], float)
            ax_m.plot([xi] * len(metric), metric, ".", color=colors[cell], alpha=0.4)
        ax_s.plot(x, [r["success_rate"] for r in rs], **style)
    label = f"baseline: {baseline_formula}"
    if len(set(baselines)) == 1:
        ax_m.axhline(baselines[0], color="k", ls="--", lw=1, label=label)
    else:
        ax_m.plot(Ts, baselines, "k--x", lw=1, label=label)
    ax_m.set(xscale="log", xlabel="T (sequence length)",
             ylabel=f"final {metric_name} on fresh sequences",
             title=f"{task}: final {metric_name} (line: mean; dots: seeds)")
    if not higher_is_better:
        ax_m.set_yscale("log")
    ax_s.set(xscale="log", xlabel="T (sequence length)", ylabel="fraction of seeds solved",
             ylim=(-0.05, 1.05), title=f"success: {success_criterion}")
    for ax in (ax_m, ax_s):
        ax.set_xticks(Ts, [str(T) for T in Ts])
        ax.xaxis.set_minor_locator(_null_locator())  # only the measured T are ticked
        ax.grid(alpha=0.3)
    # One legend for both panels, outside them, so it never covers a point.
    handles, labels = ax_m.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(len(labels), 5), fontsize=8, frameon=False)
    fig.text(0.5, -0.09 - 0.04 * ((len(labels) - 1) // 5),
             "cells are drawn slightly apart along T so that equal values stay visible",
             ha="center", fontsize=7, color="0.35")
    fig.tight_layout()
    return fig


def _null_locator():
    from matplotlib.ticker import NullLocator

    return NullLocator()


_OFFSET = 1.035  # the factor between neighbouring cells' points on the log-T axis
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
_DASHES = ("-", "--", "-.", ":")


def training_curves(
    losses: Mapping[str, Sequence[np.ndarray]],
    lengths: Sequence[int],
    *,
    loss_kind: str,
    baselines: Sequence[float] | None = None,
):
    """Training loss against step, one panel per sequence length T.

    Args:
      losses: ``losses[cell][i]``, the ``[S, steps]`` training loss at
        ``lengths[i]`` (NaN where not logged), drawn as the mean over seeds,
        smoothed.
      lengths: the lengths T, one panel each.
      loss_kind: the loss's name, for the label.
      baselines: the baseline loss at each T, drawn dashed; None draws none.

    Returns:
      The matplotlib figure.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(lengths), figsize=(4 * len(lengths), 3.5), squeeze=False)
    for i, (ax, T) in enumerate(zip(axes[0], lengths, strict=True)):
        for cell, loss in losses.items():
            ax.plot(_smooth(np.nanmean(np.asarray(loss[i], float), axis=0)), label=cell)
        ax.set(title=f"T = {T}", xlabel="step", yscale="log")
        if baselines is not None:
            ax.axhline(baselines[i], color="k", ls="--", lw=1, label="baseline")
            ax.set_ylim(top=5 * baselines[i])  # an early spike would hide the plateau
    axes[0][0].set_ylabel(f"train {loss_kind} (mean over seeds, smoothed)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def gradient_norm_clipping(
    runs: Sequence[tuple[float | None, np.ndarray]], *, clip_norm: float, title: str = ""
):
    """Global gradient norm (before clipping) against step, with and without clipping.

    Args:
      runs: ``(clip, grad_norm)`` pairs: the run's clipping threshold (None
        for none) and its ``[S, steps]`` gradient norms, drawn as seed 0 (thin)
        and the geometric mean over seeds, smoothed (thick).
      clip_norm: the clipping threshold, drawn dotted.
      title: the axes title.

    Returns:
      The matplotlib figure.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for clip, grad_norm in runs:
        g = np.asarray(grad_norm, float)
        label = "no clipping" if clip is None else f"clipped at {clip:g}"
        # Both runs often overlap: different colours and dashes, the mean drawn over the
        # thin per-seed trace, and the dashed curve on top so the solid one shows through.
        color, ls, z = ("C3", "-", 2) if clip is None else ("C0", "--", 3)
        ax.plot(g[0], lw=0.5, alpha=0.35, color=color, ls="-", zorder=1)
        ax.plot(np.exp(_smooth(np.nanmean(np.log(g), axis=0))), lw=2, color=color, ls=ls,
                zorder=z, label=f"{label}: geometric mean over seeds, smoothed")
    ax.plot([], [], lw=0.5, color="0.4", label="thin: seed 0, every step")
    ax.axhline(clip_norm, color="k", ls=":", lw=1, label=f"clip threshold {clip_norm:g}")
    ax.set(yscale="log", xlabel="training step", ylabel="global gradient norm (before clipping)",
           title=title or "gradient norm during training, with and without clipping")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2,
              frameon=False)
    fig.tight_layout()
    return fig
