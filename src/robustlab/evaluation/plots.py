"""Figures for people who would rather look than read: robustness curves and the attack × defense heatmap."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from robustlab.files import write_atomically  # noqa: E402


def _draw_curves(axis: plt.Axes, curves: Mapping[str, Mapping], title: str, small: bool) -> None:
    """Accuracy vs ε, one line per attack; L2 and L∞ budgets share the axis as multiples of the default ε."""
    size = 7 if small else 10
    for name, curve in curves.items():
        default = curve["default_eps"] or 1.0
        axis.plot([eps / default for eps in curve["eps"]], [100 * a for a in curve["accuracy"]],
                  marker="." if small else "o", linewidth=1 if small else 2,
                  label=name if small else f"{name} (ε={default:g})")
    axis.set_xlabel("ε / default ε", fontsize=size)
    axis.set_ylabel("accuracy (%)", fontsize=size)
    axis.tick_params(labelsize=size)
    axis.set_ylim(-2, 102)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=6 if small else 9)
    axis.set_title(title, fontsize=8 if small else 9)


def curves_figure(curves: Mapping[str, Mapping], title: str = "") -> plt.Figure:
    """One run's robustness curves, drawn at the width TensorBoard shows an image by default (about 320 px)."""
    figure, axis = plt.subplots(figsize=(4.4, 3.3), dpi=72)
    _draw_curves(axis, curves, title, small=False)
    figure.tight_layout()
    return figure


def curves_grid(panels: Mapping[str, Mapping[str, Mapping]]) -> plt.Figure:
    """Several runs' robustness curves, one panel each (title → curves), four to a row."""
    columns = min(4, max(len(panels), 1))
    rows = max(math.ceil(len(panels) / columns), 1)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.8 * rows), squeeze=False)
    for axis, (title, curves) in zip(axes.flat, panels.items()):
        _draw_curves(axis, curves, title, small=True)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    figure.tight_layout()
    return figure


def heatmap_figure(rows: Sequence[str], columns: Sequence[str], values: Sequence[Sequence[float | None]],
                   flags: Sequence[Sequence[str]], title: str = "") -> plt.Figure:
    """Accuracy (%) per row × column, with the audit's flag letters under each number."""
    figure, axis = plt.subplots(figsize=(1.1 * len(columns) + 2.5, 0.5 * len(rows) + 1.6))
    shown = [[float("nan") if value is None else 100 * value for value in row] for row in values]
    image = axis.imshow(shown, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    axis.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=8)
    axis.set_yticks(range(len(rows)), rows, fontsize=8)
    for i, row in enumerate(shown):
        for j, value in enumerate(row):
            if value == value:  # not NaN
                text = f"{value:.1f}" + (f"\n⚑{flags[i][j]}" if flags[i][j] else "")
                axis.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if value < 60 else "black")
    figure.colorbar(image, ax=axis, label="accuracy (%)")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


def save_figure(figure: plt.Figure, path: str | Path) -> Path:
    """Write a PNG (written aside and renamed, so a killed run leaves no half image) and free the figure."""
    try:
        return write_atomically(path, lambda partial: figure.savefig(partial, dpi=120))
    finally:
        plt.close(figure)
