"""TensorBoard as a researcher reads it: the logger, the tag groups, and a run's final numbers from its record.

Time Series sorts tag groups by name and opens the first two, so the groups are named to put the learning
curves there: `train/` (loss, acc, lr, epoch) and `val/`, then `verdict/` (the final numbers) and `visual/`
(labelled adversarial examples, robustness curves). Each final number has one tag, logged once, at the run's
last training step, so it sits at the end of the learning curves: `verdict/accuracy/clean`,
`verdict/accuracy/robust` (the worst case), `verdict/accuracy/under/<attack>`, `verdict/accuracy/certified_l2`
(a smoothed classifier's), each accuracy's 95% interval (`verdict/accuracy_interval/<clean|robust|under/<attack>>/
low` and `/high`), `verdict/attack_ms_per_image/<attack>`, the passes per image
(`verdict/attack_passes_per_image/<attack>/<forward|backward>`), a flagged run's escalated numbers
(`verdict/accuracy_escalated/...`, `verdict/escalation_seconds`), `verdict/certify_ms_per_image`,
`verdict/best_<selection metric>`, `verdict/train_seconds`, `verdict/audit_flags`, and per threat model
(`evaluation/threats.py`) `verdict/threat_model/<norm>` and the average over them `verdict/threat_model/average`,
each with its interval (`verdict/threat_model_interval/<norm|average>/low`, `/high`; the union is
`verdict/accuracy/robust`, the worst case). The HParams summary
lists the settings a researcher sweeps (`settings` of the record) with those same tags as its metrics; the
attack × defense report writes its HParams table the same way.
"""

from __future__ import annotations

from typing import Any

from torch.utils.tensorboard.summary import hparams as hparams_summaries

from robustlab.evaluation.audit import flags
from robustlab.evaluation.record import CLEAN, WORST_CASE, RunRecord
from robustlab.evaluation.threats import UNION

FINAL = "verdict"  # the group of a run's final numbers
VISUAL = "visual"  # the group of its figures


def accuracy_metrics(clean_acc: float, robust_acc: dict[str, float], certification: dict | None = None
                     ) -> dict[str, float]:
    """Accuracies under tags that sort first, so HParams shows them by default (it shows five metrics, by
    name): `accuracy/clean`, `accuracy/robust` (the worst case over the suite), `accuracy/under/<attack>`, and
    for a certified run `accuracy/certified_l2` (certified accuracy at ε₂)."""
    metrics = {f"{FINAL}/accuracy/clean": clean_acc}
    if certification:
        metrics[f"{FINAL}/accuracy/certified_l2"] = certification["certified_acc"]
    metrics.update({f"{FINAL}/accuracy/robust" if name == WORST_CASE else f"{FINAL}/accuracy/under/{name}": value
                    for name, value in robust_acc.items()})
    return metrics


def final_metrics(record: RunRecord) -> dict[str, float]:
    """The record's final numbers under their `verdict/` tags (no value twice, no value missing)."""
    metrics = accuracy_metrics(record.clean_acc, record.robust_acc, record.certification)
    for name, (low, high) in record.intervals.items():  # the 95% interval of each accuracy
        tag = "clean" if name == CLEAN else "robust" if name == WORST_CASE else f"under/{name}"
        metrics.update({f"{FINAL}/accuracy_interval/{tag}/low": low, f"{FINAL}/accuracy_interval/{tag}/high": high})
    for name, summary in (record.threats or {}).items():
        if name != UNION:  # the union is the worst case: `accuracy/robust`
            metrics[f"{FINAL}/threat_model/{name}"] = summary["robust_acc"]
            low, high = summary["interval"]
            metrics.update({f"{FINAL}/threat_model_interval/{name}/low": low,
                            f"{FINAL}/threat_model_interval/{name}/high": high})
    metrics.update({f"{FINAL}/attack_ms_per_image/{name}": value for name, value in record.attack_ms_per_image.items()})
    metrics.update({f"{FINAL}/attack_passes_per_image/{name}/{direction}": value
                    for name, passes in record.attack_passes_per_image.items() for direction, value in passes.items()})
    if record.certification:
        metrics[f"{FINAL}/certify_ms_per_image"] = record.certification["ms_per_image"]
    escalated = (record.escalation or {}).get("robust_acc", {})
    if escalated:  # a flagged run attacked again with its remedies: the lower numbers, and their cost
        metrics.update({f"{FINAL}/accuracy_escalated/{'robust' if name == WORST_CASE else f'under/{name}'}": value
                        for name, value in escalated.items()})
        metrics[f"{FINAL}/escalation_seconds"] = record.escalation["seconds"]
    selection = record.selection or {}
    if selection.get("best") is not None:
        metrics[f"{FINAL}/best_{selection['metric'].replace('/', '_')}"] = selection["best"]
    if record.train_seconds is not None:
        metrics[f"{FINAL}/train_seconds"] = record.train_seconds
    metrics[f"{FINAL}/audit_flags"] = float(len(flags(record.audit)))
    return {name: float(value) for name, value in metrics.items()}


def settings(record: RunRecord) -> dict[str, Any]:
    """What HParams shows as a run's settings: its choices, budgets, and the swept settings (`record.settings`).

    HParams ticks the first five settings by name, so the names put the run's identity first (attack, dataset,
    defense, then its budgets eps_l0, eps_l1, eps_l2, eps_linf: the first two ticked), then
    `evaluation.attack.*` (the evaluated attack's settings), model, n_eval,
    seed, and `training.*` (optimizer, lr, batch_size, max_epochs, the epochs trained, `training.defense.*`).
    """
    chosen = {key: getattr(record, key) for key in ("dataset", "model", "defense", "attack", "seed", "n_eval")}
    chosen.update({f"eps_{norm}": value for norm, value in record.eps.items()})
    chosen["training.epochs"] = record.epochs
    for key, value in record.settings.items():
        chosen[f"evaluation.{key}" if key.startswith("attack.") else f"training.{key}"] = value
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
