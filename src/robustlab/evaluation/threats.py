"""Robust accuracy per threat model, their union and their average (MultiRobustBench's two summaries).

Per norm of the dataset's threat model, an image counts as robust if it is classified right clean and under every
attack whose balls are all of that norm (inside the dataset's budget): the column `worst_case/<norm>`, led by its
strongest attack. The union is the worst case over every attack of any of the threat models (an image broken by
any of them is broken; attacks over several balls at once, such as MSD, count here only); the average is the mean
of the per-norm accuracies.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from robustlab.attacks.base import within_balls
from robustlab.evaluation.record import CLEAN, WORST_CASE
from robustlab.evaluation.statistics import wilson_interval

UNION, AVERAGE = "union", "average"
NORM_NAMES = {"linf": "L∞", "l2": "L2", "l1": "L1", "l0": "L0"}


def threat_column(norm: str) -> str:
    """The per-image column of the worst case over clean and the attacks of `norm` alone."""
    return f"{WORST_CASE}/{norm}"


def per_threat_model(per_example: Mapping[str, torch.Tensor], budgets: Mapping[str, list[tuple[str, float]]],
                     threat_model: list[tuple[str, float]], n: int) -> tuple[dict[str, torch.Tensor], dict]:
    """The per-image columns of each norm of `threat_model` that some attack of `budgets` (attack → its balls,
    every one of them covered by `threat_model`) evaluated, and the summary: per norm its accuracy, interval,
    attacks and strongest attack; the union (the worst case's column) and the average, each with its interval."""
    columns: dict[str, torch.Tensor] = {}
    summary: dict = {}
    for norm, eps in threat_model:
        names = [name for name, balls in budgets.items() if balls and name in per_example
                 and all(ball[0] == norm and within_balls(ball, threat_model) for ball in balls)]
        if not names:
            continue
        stacked = torch.stack([per_example[CLEAN][:n], *(per_example[name][:n] for name in names)])
        columns[threat_column(norm)] = stacked.min(dim=0).values
        accuracy = float(columns[threat_column(norm)].double().mean()) if n else 0.0
        strongest = min(names, key=lambda name: float(per_example[name][:n].double().mean()))
        summary[norm] = {"eps": eps, "robust_acc": accuracy, "interval": list(wilson_interval(accuracy, n)),
                         "attacks": names, "strongest": strongest}
    if WORST_CASE in per_example and summary:
        union = float(per_example[WORST_CASE][:n].double().mean()) if n else 0.0
        summary[UNION] = {"robust_acc": union, "interval": list(wilson_interval(union, n))}
        average = torch.stack(list(columns.values())).double().mean(dim=0)
        mean = float(average.mean()) if n else 0.0
        summary[AVERAGE] = {"robust_acc": mean, "interval": list(wilson_interval(mean, n)),
                            "norms": [norm for norm in summary if norm not in (UNION, AVERAGE)]}
    return columns, summary
