"""The attack × defense report, built from the metrics.json files of a sweep alone."""

from robustlab.report.matrix import Cell, collect_cells, write_report
from robustlab.report.callback import ReportCallback

__all__ = ["Cell", "ReportCallback", "collect_cells", "write_report"]
