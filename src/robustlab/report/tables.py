"""Formatting shared by the report's views: one markdown table helper, percentages, image counts."""

from __future__ import annotations

from collections.abc import Sequence

ALIGN = {"l": "---", "r": "---:"}


def table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str) -> str:
    """A markdown table: `align` holds one letter per column, l(eft) or r(ight)."""
    if len(align) != len(header):
        raise ValueError(f"align {align!r} has {len(align)} letters for {len(header)} columns")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(ALIGN[letter] for letter in align) + "|"]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def count(images: float) -> str:
    """Images, or a sum of per-image differences (fractional for means over seeds or draws)."""
    return f"{images:.0f}" if abs(images - round(images)) < 1e-9 else f"{images:.1f}"
