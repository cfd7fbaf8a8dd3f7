"""A run's record, metrics.json: its schema (`RunRecord`), the names of its columns, and reading and writing it.

One record per run directory, written last and atomically: its presence, with the run's fingerprint, marks
the run as finished. The report reads nothing else.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from robustlab.errors import RobustlabError
from robustlab.files import write_text_atomically

# Trust marks (evaluation/escalation.py) and the certified-accuracy column (evaluation/certification.py): words
# of the record that the report reads.
TRUSTED, ESCALATED, STILL_FLAGGED = "trusted", "escalated", "still flagged"
CERTIFIED = "certified_l2"
CLEAN = "clean"  # the clean pass over the whole test split
WORST_CASE = "worst_case"  # per image, the minimum correctness over the clean pass and every attack
WITHOUT_EOT = "/without_eot"  # suffix of a randomized predictor's single-draw pass, reported apart
FILE_NAME = "metrics.json"
SLURM_JOB_FILE = "slurm.json"  # in a run directory a SLURM sweep submitted: its job id and log files


class NotARecord(RobustlabError):
    """A JSON file that is not a robustlab run record (or lacks what the report needs)."""


@dataclass
class RunRecord:
    """Every field of metrics.json. The first six are what any reader needs; the rest may be missing from
    records of older robustlab versions (they read back as their defaults)."""

    dataset: str
    model: str
    defense: str
    clean_acc: float
    robust_acc: dict[str, float]  # per attack, and `worst_case`
    evaluation_modules: dict[str, str]  # each evaluation module's digest: the report refuses to mix versions
    attack: str | None = None
    seed: int | None = None
    eps: dict[str, float] = field(default_factory=dict)
    n_eval: int = 0  # images each attack ran on: the first n of the test split
    n_clean: int = 0
    randomized: bool = False
    accuracy_draws: int | str = 1  # draws accuracy is averaged over; "exact" for a mixture
    robust_acc_without_eot: dict[str, float] = field(default_factory=dict)  # randomized predictors only: apart
    defense_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    audit: dict[str, dict] = field(default_factory=dict)  # the gradient-masking checks (evaluation/audit.py)
    curves: dict[str, dict] = field(default_factory=dict)  # accuracy vs ε per attack on the audit's images
    # A smoothed classifier's certificates (evaluation/certification.py).
    certification: dict = field(default_factory=dict)
    escalation: dict = field(default_factory=dict)  # trust mark; a flagged cell's re-attacks (evaluation/escalation.py)
    attack_ms_per_image: dict[str, float] = field(default_factory=dict)
    attack_passes_per_image: dict[str, dict[str, float]] = field(default_factory=dict)  # forward, backward
    attacks: dict[str, dict] = field(default_factory=dict)  # each evaluated attack's config
    # Per attack, checked on every image it returned: how many were outside its threat model (not finite,
    # outside [0, 1] or the ε-ball; counted as not broken), the largest perturbation, its balls.
    threat_model: dict[str, dict] = field(default_factory=dict)
    # The worst case's threat model: its balls (null: every attack), the attacks it combines, those left out.
    worst_case: dict = field(default_factory=dict)
    # Per norm of the dataset's threat model (L∞, L2, L1, L0: accuracy, interval, attacks, the strongest), the
    # union over them (the worst case) and their average (evaluation/threats.py).
    threats: dict = field(default_factory=dict)
    # A late step that failed (audit, certification, escalation, TensorBoard, ...): its error. A record with
    # errors holds what was measured, and is not a finished run: the same command runs it again.
    errors: dict[str, str] = field(default_factory=dict)
    # Where a non-finite number was measured, written as null: the key and what it was ("inf", "nan").
    non_finite: dict[str, str] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)  # the model's and defense's `_target_` (the report's key)
    settings: dict[str, Any] = field(default_factory=dict)  # the swept settings, flat (TensorBoard's HParams)
    selection: dict | None = None  # the checkpoint's selection metric and its best value
    train_seconds: float | None = None
    epochs: int | None = None
    training_reused: bool | None = None
    resumed_from: str | None = None
    checkpoint: str | None = None
    training_fingerprint: str | None = None
    run_fingerprint: str | None = None
    training_code: str | None = None  # hashes of the code that made this result
    evaluation_code: str | None = None
    provenance: dict = field(default_factory=dict)
    tensorboard: str | None = None  # the run's TensorBoard directory (its training stages' in sub-directories)
    intervals: dict[str, list[float]] = field(default_factory=dict)  # 95% Wilson interval of clean, attacks, worst case
    # Per image, in test-split order, on the first n_eval images: correctness under clean, each attack and the
    # worst case ("1,0,0.5,…"; fractional for a randomized predictor), for paired comparisons across runs.
    per_image: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, values: Any) -> RunRecord:
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required[:-1] if not isinstance(values, dict) or name not in values]
        if missing:
            raise NotARecord(f"not a robustlab record (no {', '.join(missing)})")
        if required[-1] not in values:
            raise NotARecord("written by an older robustlab that did not record its code version; re-run it to "
                             "include it")
        return cls(**{key: values[key] for key in cls.keys() if key in values})

    @classmethod
    def keys(cls) -> list[str]:
        """The keys of metrics.json, in order."""
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict:
        values = asdict(self)
        return {key: values[key] for key in self.keys()}

    def write(self, directory: str | Path) -> Path:
        """`<directory>/metrics.json`, atomically (a killed run leaves no half file), valid JSON: a non-finite
        number is written as null, and named with what it was under `non_finite`."""
        found: dict[str, str] = {}
        values = _finite(self.to_dict(), "", found)
        values["non_finite"] = {**values.get("non_finite", {}), **found}
        self.non_finite = values["non_finite"]
        return write_text_atomically(Path(directory) / FILE_NAME, json.dumps(values, indent=2) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> RunRecord:
        return cls.from_dict(json.loads(Path(path).read_text()))


def encode_per_image(correct) -> str:
    """Per-image correctness (a tensor or sequence of numbers in [0, 1]) as one short line: "1,0,0.5"."""
    return ",".join(f"{float(value):.4f}".rstrip("0").rstrip(".") for value in correct)


def decode_per_image(text: str) -> list[float]:
    return [float(value) for value in text.split(",")] if text else []


def _finite(value: Any, key: str, found: dict[str, str]) -> Any:
    """`value` with each non-finite number replaced by None, and its key and value added to `found`."""
    if isinstance(value, float) and not math.isfinite(value):
        found[key] = str(value)
        return None
    if isinstance(value, dict):
        return {k: _finite(v, f"{key}.{k}" if key else str(k), found) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v, f"{key}[{i}]", found) for i, v in enumerate(value)]
    return value
