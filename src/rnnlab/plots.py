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


def gradient_norms_vs_distance(
    curves: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
    *,
    phases: Sequence[str] = ("init", "trained"),
    titles: Mapping[str, str] | None = None,
    suptitle: str = "",
):
    """Median ``||dL/dh_t||`` (log scale) against the distance ``k = T-1-t``.

    Args:
      curves: ``curves[cell][phase]`` holds equal-length lists ``distance``,
        ``median``, ``q25``, ``q75`` and optionally ``theory`` (a closed-form
        bound anchored at the first distance, drawn dotted).
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
    measured = [
        np.asarray(curves[n][p][key], float)
        for n in names for p in phases if curves[n].get(p) for key in ("q25", "q75", "median")
    ]
    values = np.concatenate(measured) if measured else np.array([1.0])
    values = values[(values > 0) & np.isfinite(values)]
    ylim = (values.min() / 3, values.max() * 3) if values.size else None
    for ax, phase in zip(axes[0], phases, strict=True):
        for name in names:
            c = curves[name].get(phase)
            if not c:
                continue
            d = np.asarray(c["distance"], float)
            med = np.asarray(c["median"], float)
            ok = med > 0
            ax.plot(d[ok], med[ok], color=colors[name], lw=1.8, label=name)
            ax.fill_between(
                d[ok],
                np.asarray(c["q25"], float)[ok],
                np.asarray(c["q75"], float)[ok],
                color=colors[name],
                alpha=0.18,
                lw=0,
            )
            if c.get("theory") is not None:
                th = np.asarray(c["theory"], float)
                good = th > 0
                ax.plot(d[good], th[good], color=colors[name], lw=1.2, ls=":")
        ax.set_yscale("log")
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_xlabel("distance from the loss, k = T - 1 - t (steps)")
        ax.set_title((titles or {}).get(phase, phase))
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel(r"$\|\partial L / \partial h_t\|$ (median, IQR band)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if any(curves[n].get(p, {}).get("theory") is not None for n in names for p in phases):
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="k", ls=":", lw=1.2))
        labels.append("closed-form bound r^k")
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
    ax2.set_title("vanishing below 0, exploding above")
    ax2.legend(frameon=False)
    ax2.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
