"""A run's final numbers in TensorBoard, derived from its record (metrics.json) alone.

Each quantity has one tag, logged once, at the run's last training step so that it sits at the end of the
learning curves: `final/clean_acc`, `final/robust_acc/<attack>` (the worst case among them),
`final/attack_ms_per_image/<attack>`, `final/best_<selection metric>`, `final/train_seconds`,
`final/audit_flags`. The HParams summary lists the settings a researcher sweeps (`settings` of the record)
with those same tags as its metrics. The attack × defense report writes its HParams table the same way.
"""

from __future__ import annotations

from typing import Any

from torch.utils.tensorboard.summary import hparams as hparams_summaries

from robustlab.evaluation.audit import flags
from robustlab.evaluation.record import RunRecord


def final_metrics(record: RunRecord) -> dict[str, float]:
    """The record's final numbers under their `final/` tags (no value twice, no value missing)."""
    metrics = {"final/clean_acc": record.clean_acc}
    metrics.update({f"final/robust_acc/{name}": value for name, value in record.robust_acc.items()})
    metrics.update({f"final/attack_ms_per_image/{name}": value for name, value in record.attack_ms_per_image.items()})
    selection = record.selection or {}
    if selection.get("best") is not None:
        metrics[f"final/best_{selection['metric'].replace('/', '_')}"] = selection["best"]
    if record.train_seconds is not None:
        metrics["final/train_seconds"] = record.train_seconds
    metrics["final/audit_flags"] = float(len(flags(record.audit)))
    return {name: float(value) for name, value in metrics.items()}


def settings(record: RunRecord) -> dict[str, Any]:
    """What HParams shows as a run's settings: its choices, budgets, and the swept training settings."""
    chosen = {key: getattr(record, key) for key in ("dataset", "model", "defense", "attack", "seed", "epochs",
                                                      "n_eval")}
    chosen.update({f"eps_{norm}": value for norm, value in record.eps.items()})
    chosen.update(record.settings)
    return {key: "none" if value is None else value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in chosen.items()}


def write_hparams(writer, params: dict[str, Any], metrics: dict[str, float], step: int) -> None:
    """One HParams summary (a `SummaryWriter`'s), its metrics as scalars at `step`, each tag once."""
    file_writer = writer._get_file_writer()  # reopened if the Trainer's logger closed it at the end of testing
    for summary in hparams_summaries(params, metrics):
        file_writer.add_summary(summary)
    for name, value in metrics.items():
        writer.add_scalar(name, value, step)
    writer.flush()


def log_record(loggers, record: RunRecord, step: int) -> None:
    """The run's settings and final numbers into every TensorBoard logger of the Trainer."""
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "_get_file_writer"):  # a SummaryWriter (not a non-zero DDP rank's dummy)
            write_hparams(experiment, settings(record), final_metrics(record), step)
