"""Figures for people who would rather look than read: robustness curves and the attack × defense heatmap."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from robustlab.files import write_atomically  # noqa: E402


def curves_figure(curves: Mapping[str, Mapping], title: str = "") -> plt.Figure:
    """Accuracy vs ε, one line per attack; L2 and L∞ budgets share the axis as multiples of the default ε."""
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for name, curve in curves.items():
        default = curve["default_eps"] or 1.0
        axis.plot([eps / default for eps in curve["eps"]], [100 * a for a in curve["accuracy"]], marker="o",
                  label=f"{name} (ε={default:g})")
    axis.set_xlabel("ε / default ε")
    axis.set_ylabel("accuracy (%)")
    axis.set_ylim(-2, 102)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    axis.set_title(title, fontsize=9)
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
