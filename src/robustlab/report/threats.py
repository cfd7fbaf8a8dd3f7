"""The report's table of defenses × threat models: per norm, the union and the average (MultiRobustBench's
summaries), each from the rows' per-image columns (`evaluation/threats.py`) with its 95% interval."""

from __future__ import annotations

from statistics import fmean as mean

from robustlab.evaluation.statistics import half_width, wilson_interval
from robustlab.evaluation.threats import NORM_NAMES
from robustlab.report.rows import THREATS, Row, threat_column
from robustlab.report.tables import percent, table

NORMS = [norm for norm in THREATS if norm is not None]


def cell(values: list[float] | None) -> str:
    """"64.4 ±3.0": the mean of per-image correctness and half its 95% Wilson interval, in points."""
    if not values:
        return "–"
    accuracy = mean(values)
    return f"{100 * accuracy:.1f} ±{100 * half_width(wilson_interval(accuracy, len(values))):.1f}"


def average_column(row: Row, norms: list[str]) -> list[float] | None:
    """Per image, the mean over the row's threat models of its correctness under each (None: no norm column)."""
    columns = [row.per_image[threat_column(norm)] for norm in norms if threat_column(norm) in row.per_image]
    return [mean(values) for values in zip(*columns)] if columns else None


def threat_models_section(rows: list[Row]) -> str:
    """Clean, each threat model's robust accuracy (its strongest attacks together), the union (any attack of any
    threat model) and the average over the threat models; empty where no row has per-norm columns."""
    norms = [norm for norm in NORMS if any(threat_column(norm) in row.per_image for row in rows)]
    if not norms:
        return ""
    header = ["defense", "clean", *(NORM_NAMES[norm] for norm in norms), "union", "average"]
    lines = [[row.label, percent(row.clean_acc), *(cell(row.per_image.get(threat_column(norm))) for norm in norms),
              cell(row.per_image.get(threat_column(None))), cell(average_column(row, norms))] for row in rows]
    return ("\n## Threat models\n\nRobust accuracy (%) per threat model (an image counts if every attack of that "
            "norm within the dataset's budget leaves it right), the union (right under every attack of every threat "
            "model) and the average over the threat models (MultiRobustBench), ± half the 95% interval; – : not "
            "evaluated.\n\n" + table(header, lines, "l" + "r" * (len(header) - 1)))
