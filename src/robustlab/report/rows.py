"""Aggregating results: the evaluations of one training merged into a `Training`, the trainings of one
(dataset, model, defense) over their seeds into a `Row`; the columns they share.

One rule merges checks everywhere (`Measured.add_checks`): a flag raised by any evaluation or seed stays
raised, a result is as trusted as its least trusted part, threat-model violations add up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import fmean as mean
from typing import Any

from robustlab.evaluation.audit import flags, trust
from robustlab.evaluation.record import (
    CERTIFIED,
    CLEAN,
    ESCALATED,
    STILL_FLAGGED,
    TRUSTED,
    WORST_CASE,
    RunRecord,
    decode_per_image,
)
from robustlab.evaluation.statistics import SeedSummary, over_seeds
from robustlab.evaluation.threats import threat_column as norm_column
from robustlab.report.reading import distinct_attacks, distinct_names

TRUST_ORDER = ("", TRUSTED, ESCALATED, STILL_FLAGGED)  # a result is as trusted as its least trusted part
THREATS = {None: "the union of the threat models (any attack)", "linf": "L∞ attacks alone",
           "l2": "L2 attacks alone", "l1": "L1 attacks alone", "l0": "L0 attacks alone"}


@dataclass
class Measured:
    """What was measured on a (dataset, model, defense): by one training's evaluations, or by a row of them."""

    dataset: str
    model: str
    defense: str
    clean_acc: float
    robust_acc: dict[str, float] = field(default_factory=dict)
    audit: dict = field(default_factory=dict)
    # trusted, escalated (flagged, re-attacked with every remedy), still flagged (evaluation/escalation.py)
    trust: str = ""
    escalations: list[dict] = field(default_factory=list)  # the records' escalations that re-attacked
    curves: dict = field(default_factory=dict)
    certification: dict = field(default_factory=dict)  # a smoothed classifier's certificates (its record's)
    train_seconds: float | None = None
    attack_ms_per_image: dict[str, float] = field(default_factory=dict)
    attack_passes_per_image: dict[str, dict[str, float]] = field(default_factory=dict)  # forward, backward
    robust_acc_without_eot: dict[str, float] = field(default_factory=dict)
    randomized: bool = False
    n_eval: int = 0
    n_clean: int = 0
    norms: dict[str, str] = field(default_factory=dict)  # attack → its norm ("linf", "l2")
    sources: list[str] = field(default_factory=list)  # the metrics.json files merged in
    evaluation_code: dict[str, str] = field(default_factory=dict)  # source → hash of the code that evaluated it
    provenance: dict[str, dict] = field(default_factory=dict)  # source → its provenance record
    # Per attack: images returned outside its threat model (counted as not broken), the largest perturbation.
    threat_model: dict[str, dict] = field(default_factory=dict)
    # Per image, on the first n_eval test images: correctness under clean, each attack, the worst case (over
    # all attacks and per norm); a row's is the mean over seeds. Empty where a record predates it.
    per_image: dict[str, list[float]] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.dataset, self.model, self.defense

    @property
    def flags(self) -> str:
        """The audit's raised flags, as sorted letters."""
        return "".join(sorted(flags(self.audit)))

    def add_checks(self, other_audit: dict, other_trust: str, threat_model: dict[str, dict],
                   escalations: list[dict]) -> None:
        """Merge another evaluation's (or seed's) checks: a raised flag stays raised, the least trust wins,
        threat-model violations are summed and the largest perturbation kept."""
        for name, check in other_audit.items():
            if name not in self.audit or check["flagged"]:
                self.audit[name] = check
        self.trust = max(self.trust, other_trust, key=TRUST_ORDER.index)
        self.escalations += escalations
        for name, check in threat_model.items():
            kept = self.threat_model.setdefault(name, {"violations": 0, "largest_perturbation": 0.0, "changed": {},
                                                       "in_worst_case": True})
            kept["violations"] += int(check.get("violations", 0))
            kept["largest_perturbation"] = max(kept["largest_perturbation"],
                                               float(check.get("largest_perturbation") or 0))
            for what, batches in (check.get("changed") or {}).items():
                kept["changed"][what] = kept["changed"].get(what, 0) + int(batches)
            kept["in_worst_case"] = kept["in_worst_case"] and check.get("in_worst_case", True)

    def add_sources(self, other: Measured) -> None:
        self.sources += other.sources
        self.evaluation_code.update(other.evaluation_code)
        self.provenance.update(other.provenance)


@dataclass
class Training(Measured):
    """Every evaluation of one training (dataset, model, defense, seed)."""

    seed: Any = None

    def merge(self, record: RunRecord, source: str) -> None:
        """One more evaluation of this training (another attack, say). An escalated record counts with its
        escalated numbers (at most the original ones); per image, the least correctness of the evaluations."""
        escalation = record.escalation or {}
        robust_acc = {name: min(value, escalation.get("robust_acc", {}).get(name, value))
                      for name, value in record.robust_acc.items()}
        worst = min(self.robust_acc.get(WORST_CASE, 1.0), robust_acc.get(WORST_CASE, 1.0))
        self.robust_acc.update(robust_acc)
        if WORST_CASE in self.robust_acc:  # each run's worst case bounds all of its attacks, so the least does too
            self.robust_acc[WORST_CASE] = worst
        self.attack_ms_per_image.update(record.attack_ms_per_image)
        self.attack_passes_per_image.update(record.attack_passes_per_image or {})
        self.robust_acc_without_eot.update(record.robust_acc_without_eot or {})
        self.curves.update(record.curves or {})
        self.certification = record.certification or self.certification
        self.randomized = self.randomized or bool(record.randomized)
        self.n_eval = max(self.n_eval, int(record.n_eval or 0))
        self.n_clean = max(self.n_clean, int(record.n_clean or 0))
        escalated = [{**escalation, "source": source, "original": record.robust_acc.get(WORST_CASE)}] \
            if escalation.get("remedies") is not None else []
        self.add_checks(record.audit or {}, trust(record.audit or {}, escalation), record.threat_model or {}, escalated)
        self.norms.update({name: attack["norm"] for name, attack in (record.attacks or {}).items()
                           if isinstance(attack, dict) and attack.get("norm")})
        if record.train_seconds is not None:
            self.train_seconds = record.train_seconds
        self.sources.append(source)
        self.evaluation_code[source] = record.evaluation_code or "unrecorded"
        self.provenance[source] = record.provenance or {}
        for name, text in {**(record.per_image or {}), **escalation.get("per_image", {})}.items():
            values, kept = decode_per_image(text), self.per_image.get(name)
            self.per_image[name] = values if kept is None or len(kept) != len(values) else \
                [min(a, b) for a, b in zip(kept, values)]

    def add_threat_columns(self) -> None:
        """Per image, the worst case over clean and each norm's attacks alone: the evaluation's own column
        (`evaluation/threats.py`, attacks within the dataset's budget), else, for records that predate it, over
        every attack of that norm."""
        for norm in (norm for norm in THREATS if norm is not None):
            names = [name for name in self.per_image if self.norms.get(name) == norm]
            if names and CLEAN in self.per_image and threat_column(norm) not in self.per_image:
                self.per_image[threat_column(norm)] = [min(values) for values in
                                                       zip(*(self.per_image[name] for name in [CLEAN, *names]))]


@dataclass
class Row(Measured):
    """One row of the matrix: the trainings of a (dataset, model, defense) over their seeds. Accuracies are means
    over seeds, with `summary` (std, seeds, interval) beside them; curves and certificates are the first seed's."""

    seeds: list = field(default_factory=list)
    # Per (clean, attack, worst case): mean, std over seeds, seeds, 95% interval (statistics.over_seeds).
    summary: dict[str, SeedSummary] = field(default_factory=dict)
    label: str = ""  # the defense, prefixed with dataset and model only where the report holds several


def collect_rows(records: dict[str, RunRecord]) -> list[Row]:
    """The records merged per training (dataset, model, defense, seed), then aggregated over seeds into one row
    per (dataset, model, defense), labelled; sorted, deterministic."""
    trainings: dict[tuple, Training] = {}
    records = distinct_attacks(records)
    names = distinct_names(records)
    for source, record in records.items():
        key = (record.dataset, *names[source], record.seed)
        training = trainings.setdefault(key, Training(*key[:3], clean_acc=record.clean_acc, seed=record.seed))
        training.merge(record, source)
    groups: dict[tuple[str, str, str], list[Training]] = {}
    for key in sorted(trainings, key=lambda key: (key[:3], -1 if key[3] is None else key[3])):
        trainings[key].add_threat_columns()
        groups.setdefault(key[:3], []).append(trainings[key])
    rows = [aggregate(group) for _, group in sorted(groups.items())]
    for row in rows:
        row.label = "/".join([*([row.dataset] if len({r.dataset for r in rows}) > 1 else []),
                              *([row.model] if len({r.model for r in rows}) > 1 else []), row.defense])
    return rows


def aggregate(trainings: list[Training]) -> Row:
    """One row from the trainings of one (dataset, model, defense) with several seeds (or one)."""
    first = trainings[0]
    row = Row(first.dataset, first.model, first.defense, clean_acc=mean([t.clean_acc for t in trainings]),
              curves=first.curves, certification=first.certification, seeds=[t.seed for t in trainings])
    for training in trainings:
        row.add_checks(training.audit, training.trust, training.threat_model, training.escalations)
        row.add_sources(training)
        row.norms.update(training.norms)
        row.randomized = row.randomized or training.randomized
        row.n_eval, row.n_clean = max(row.n_eval, training.n_eval), max(row.n_clean, training.n_clean)
    for name in attack_columns(trainings):
        values = [t.robust_acc[name] for t in trainings if name in t.robust_acc]
        row.robust_acc[name] = mean(values)
        if row.n_eval:  # records without their image counts get no interval
            row.summary[name] = over_seeds(values, row.n_eval)
    if row.n_clean:
        row.summary[CLEAN] = over_seeds([t.clean_acc for t in trainings], row.n_clean)
    row.attack_ms_per_image = mean_over(trainings, "attack_ms_per_image")
    row.robust_acc_without_eot = mean_over(trainings, "robust_acc_without_eot")
    for name in sorted({name for t in trainings for name in t.attack_passes_per_image}):
        counted = [t.attack_passes_per_image[name] for t in trainings if name in t.attack_passes_per_image]
        row.attack_passes_per_image[name] = {direction: mean([passes[direction] for passes in counted])
                                             for direction in ("forward", "backward")}
    seconds = [t.train_seconds for t in trainings if t.train_seconds is not None]
    row.train_seconds = mean(seconds) if seconds else None
    images = [t.per_image for t in trainings]
    if all(images) and len({len(values) for per_seed in images for values in per_seed.values()}) == 1:
        common = set.intersection(*(set(per_seed) for per_seed in images))
        row.per_image = {name: [mean(values) for values in zip(*(per_seed[name] for per_seed in images))]
                         for name in sorted(common)}
    return row


def mean_over(trainings: list[Training], name: str) -> dict[str, float]:
    """Per key of the trainings' `name` dicts, the mean over the trainings that have it; sorted."""
    keys = sorted({key for training in trainings for key in getattr(training, name)})
    return {key: mean([getattr(t, name)[key] for t in trainings if key in getattr(t, name)]) for key in keys}


def attack_columns(rows: list) -> list[str]:
    """Attacks in first-seen order, the worst case last."""
    names: list[str] = []
    for row in rows:
        names += [name for name in row.robust_acc if name not in names and name != WORST_CASE]
    return names + ([WORST_CASE] if any(WORST_CASE in row.robust_acc for row in rows) else [])


def certified_column(rows: list[Row]) -> list[str]:
    """`certified_l2` (certified accuracy at ε₂, a lower bound) if any row was certified."""
    return [CERTIFIED] if any(row.certification for row in rows) else []


def certified_value(row: Row) -> float | None:
    return row.certification.get("certified_acc") if row.certification else None


def threat_column(norm: str | None) -> str:
    """The per-image column of the worst case over clean and the attacks of `norm` (None: every attack)."""
    return WORST_CASE if norm is None else norm_column(norm)
