"""The attack × defense report, built from the metrics.json files of a sweep alone: reading (`reading.py`),
aggregating into trainings and rows (`rows.py`), deciding the answer (`answer.py`), writing every view
(`writing.py`, with `tables.py`)."""

from robustlab.report.callback import ReportCallback
from robustlab.report.reading import read_records
from robustlab.report.rows import Row, collect_rows
from robustlab.report.writing import write_report

__all__ = ["ReportCallback", "Row", "collect_rows", "read_records", "write_report"]
