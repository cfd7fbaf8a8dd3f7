"""Collect a directory's metrics.json files into the attack × defense matrix and write every view of it.

`write_report(directory)` writes, into `directory/report/`:
- results.csv — one line per evaluated cell and attack: accuracy, audit flags, costs;
- REPORT.md — the matrix (rows: defenses; columns: clean, each attack, worst case; cells: accuracy % with
  the audit's flag letters), costs, EOT-free numbers of randomized predictors (labelled), and the answer:
  the most effective defense by worst-case robust accuracy and the strongest attack against each defense;
- heatmap.png and curves.png; and a TensorBoard run (HParams table and the markdown as text) in tensorboard/.

The files depend only on the metrics.json files (no dates, sorted order), so re-running a finished sweep
writes an identical report.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import fmean as mean

from robustlab.errors import RobustlabError
from robustlab.evaluation.audit import LETTERS, flags
from robustlab.evaluation.certification import CERTIFIED
from robustlab.evaluation.escalation import ESCALATED, STILL_FLAGGED, TRUSTED
from robustlab.evaluation.plots import curves_grid, heatmap_figure, save_figure
from robustlab.evaluation.record import CLEAN, FILE_NAME, WORST_CASE, NotARecord, RunRecord, decode_per_image
from robustlab.evaluation.statistics import LEVEL, SeedSummary, half_width, over_seeds, paired_test
from robustlab.evaluation.tensorboard import FINAL, accuracy_metrics, write_hparams
from robustlab.provenance import module_digest

VERSIONS = ("refuse", "current", "mix")
TRUST_ORDER = ("", TRUSTED, ESCALATED, STILL_FLAGGED)  # a row is as trusted as its least trusted result  # what to do with results evaluated by different code


class MixedVersions(RobustlabError):
    """The directory holds results evaluated by different versions of the evaluation code."""


def version_conflicts(records: dict[str, RunRecord]) -> list[str]:
    """For each robustlab module that two results were evaluated with in different versions, one line naming
    the versions and the results (metrics.json paths) of each."""
    digests: dict[str, dict[str, list[str]]] = {}
    for source, record in sorted(records.items()):
        for module, digest in record.evaluation_modules.items():
            digests.setdefault(module, {}).setdefault(digest, []).append(source)
    lines = [f"  {module}: " + "; ".join(f"version {digest} in {', '.join(sources)}"
                                          for digest, sources in sorted(versions.items()))
             for module, versions in sorted(digests.items()) if len(versions) > 1]
    return lines


def is_current(record: RunRecord) -> bool:
    """Whether the result was evaluated by the code installed now (every module it recorded is unchanged)."""
    return all(module_digest(module) == digest for module, digest in record.evaluation_modules.items())


def select_versions(records: dict[str, RunRecord], versions: str) -> tuple[dict[str, RunRecord], list[str]]:
    """The results to report and the ones left out. `refuse`: all, or `MixedVersions` if their evaluation code
    differs; `current`: only those evaluated by the code installed now; `mix`: all, whatever their code."""
    if versions not in VERSIONS:
        raise ValueError(f"versions={versions!r}: expected one of {VERSIONS}")
    left_out = []
    if versions == "current":
        left_out = sorted(source for source, record in records.items() if not is_current(record))
        records = {source: record for source, record in records.items() if source not in left_out}
    elif versions == "refuse":
        conflicts = version_conflicts(records)
        if conflicts:
            raise MixedVersions("these results were evaluated by different versions of robustlab's evaluation "
                                "code, so their numbers are not comparable:\n" + "\n".join(conflicts) +
                                "\nRe-run them with the current code (a re-run sweep evaluates stale cells again and "
                                "skips current ones), then report the current results alone "
                                "(scripts/report.py --versions current), or mix them knowingly (--versions mix)")
    return records, left_out


def provenance_lines(cells: list[Cell]) -> list[str]:
    """Which code versions and devices the report is built from (sorted, so a rebuild is byte-identical)."""
    versions: dict[str, int] = {}
    devices: dict[str, int] = {}
    for cell in cells:
        for source, code in cell.evaluation_code.items():
            record = cell.provenance[source]
            revision = record.get("git_commit", record.get("package_sha256", "unrecorded"))[:12] + \
                ("+uncommitted changes" if record.get("git_dirty") else "")
            version = (f"evaluation code {code} (robustlab {record.get('robustlab', '?')}, source {revision}, "
                       f"PyTorch {record.get('torch', '?')})")
            versions[version] = versions.get(version, 0) + 1
            device = f"{record.get('device', 'unrecorded')}, {record.get('precision') or 'unrecorded'} precision"
            devices[device] = devices.get(device, 0) + 1
    return [*(f"- {version}: {count} result(s)" for version, count in sorted(versions.items())),
            *(f"- device {device}: {count} result(s)" for device, count in sorted(devices.items()))]


@dataclass
class Cell:
    """One row of the matrix: a trained (dataset, model, defense), with every attack evaluated on it."""

    dataset: str
    model: str
    defense: str
    clean_acc: float
    robust_acc: dict[str, float] = field(default_factory=dict)
    flags: str = ""
    trust: str = ""  # trusted, escalated (flagged, re-attacked with every remedy), still flagged (evaluation/escalation.py)
    escalations: list[dict] = field(default_factory=list)  # the records' escalations that re-attacked
    audit: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)
    train_seconds: float | None = None
    attack_ms_per_image: dict[str, float] = field(default_factory=dict)
    attack_passes_per_image: dict[str, dict[str, float]] = field(default_factory=dict)  # forward, backward
    robust_acc_without_eot: dict[str, float] = field(default_factory=dict)
    randomized: bool = False
    n_eval: int = 0
    certification: dict = field(default_factory=dict)  # a smoothed classifier's certificates (its record's)
    sources: list[str] = field(default_factory=list)
    evaluation_code: dict[str, str] = field(default_factory=dict)  # source → hash of the code that evaluated it
    provenance: dict[str, dict] = field(default_factory=dict)  # source → its provenance record
    n_clean: int = 0
    norms: dict[str, str] = field(default_factory=dict)  # attack → its norm ("linf", "l2")
    seeds: list = field(default_factory=list)  # the training seeds aggregated into this row
    # Per (clean, attack, worst case): mean, std over seeds, seeds, 95% interval (statistics.over_seeds).
    summary: dict[str, SeedSummary] = field(default_factory=dict)
    # Per image, on the first n_eval test images: correctness (mean over seeds) under clean, each attack, the
    # worst case; empty where a record predates per-image results.
    per_image: dict[str, list[float]] = field(default_factory=dict)
    # Per attack: images returned outside its threat model (counted as not broken), the largest perturbation.
    threat_model: dict[str, dict] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.dataset, self.model, self.defense


class NoResults(RobustlabError):
    """A directory without a single usable metrics.json."""


def read_records(directory: str | Path) -> tuple[dict[str, RunRecord], list[str]]:
    """Every usable metrics.json under `directory`, keyed by its path relative to `directory` and sorted, and
    one line for each thing skipped and why: a file that is not JSON (truncated), JSON that is not a robustlab
    record, a record from an older robustlab, a run directory without metrics.json (a run that did not end)."""
    directory = Path(directory)
    records, skipped = {}, []
    for path in sorted(directory.rglob(FILE_NAME)):
        source = str(path.relative_to(directory))
        try:
            values = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            skipped.append(f"{source}: not valid JSON, probably truncated ({error})")
            continue
        try:
            records[source] = RunRecord.from_dict(values)
        except NotARecord as error:
            skipped.append(f"{source}: {error}")
    for run_dir in sorted(path for path in directory.rglob("*") if path.is_dir() and "report" not in
                          path.relative_to(directory).parts):
        is_run = (run_dir / ".hydra").is_dir() or not any(run_dir.iterdir())
        if is_run and not (run_dir / FILE_NAME).exists():
            skipped.append(f"{run_dir.relative_to(directory)}/: a run directory without metrics.json "
                           "(the run did not finish)")
    if not records:
        raise NoResults(f"no robustlab results (metrics.json) under {directory}"
                        + "".join(f"\n  skipped {line}" for line in skipped))
    return records, skipped


def collect_cells(directory: str | Path, records: dict[str, RunRecord] | None = None) -> list[Cell]:
    """The metrics.json records under `directory` (or `records`): merged per training (dataset, model, defense,
    seed), then aggregated over seeds into one row per (dataset, model, defense); sorted, deterministic."""
    trainings: dict[tuple, Cell] = {}
    images: dict[tuple, dict[str, list[float]]] = {}
    records = distinct_attacks(read_records(directory)[0] if records is None else records)
    names = distinct_names(records)
    for source, record in records.items():
        key = (record.dataset, *names[source], record.seed)
        merge_record(trainings.setdefault(key, Cell(*key[:3], clean_acc=record.clean_acc)), record, source)
        escalated = (record.escalation or {}).get("per_image", {})
        for name, text in {**(record.per_image or {}), **escalated}.items():
            values, kept = decode_per_image(text), images.setdefault(key, {}).get(name)
            # Several evaluations of one training: per image, the least correctness (as the worst case is).
            images[key][name] = values if kept is None or len(kept) != len(values) else \
                [min(a, b) for a, b in zip(kept, values)]
    rows: dict[tuple[str, str, str], list[tuple]] = {}
    for key in sorted(trainings, key=lambda key: (key[:3], -1 if key[3] is None else key[3])):
        rows.setdefault(key[:3], []).append(key)
    for key, cell in trainings.items():
        add_threat_columns(cell, images.get(key, {}))
    return [aggregate([trainings[key] for key in keys], [key[3] for key in keys],
                      [images.get(key, {}) for key in keys]) for _, keys in sorted(rows.items())]


def distinct_names(records: dict[str, RunRecord]) -> dict[str, tuple[str, str]]:
    """Each result's (model, defense) row names: its record's, unless results of one name ran different classes
    (two users' classes named `Net`, say): then each is named with its `_target_` too, so that no row merges
    two different models or defenses. (Records from before targets were recorded keep their name.)"""
    targets: dict[tuple[str, str], set[str]] = {}
    for record in records.values():
        for group in ("model", "defense"):
            target = (record.targets or {}).get(group)
            if target:
                targets.setdefault((group, getattr(record, group)), set()).add(target)

    def name(record: RunRecord, group: str) -> str:
        label, target = getattr(record, group), (record.targets or {}).get(group)
        return f"{label} ({target})" if target and len(targets[(group, label)]) > 1 else label

    return {source: (name(record, "model"), name(record, "defense")) for source, record in records.items()}


ATTACK_KEYED = ("robust_acc", "robust_acc_without_eot", "defense_metrics", "curves", "attack_ms_per_image",
                "attack_passes_per_image", "attacks", "threat_model", "intervals", "per_image")


def distinct_attacks(records: dict[str, RunRecord]) -> dict[str, RunRecord]:
    """The records with each attack column named so that no column merges two different attacks: where results
    name different `_target_`s alike (a user's `pgd_linf` option beside robustlab's, say), each such attack is
    named with its `_target_` too."""
    targets: dict[str, set[str]] = {}
    for record in records.values():
        for name, config in (record.attacks or {}).items():
            if isinstance(config, dict) and config.get("_target_"):
                targets.setdefault(name, set()).add(config["_target_"])
    clashing = {name for name, found in targets.items() if len(found) > 1}
    if not clashing:
        return records

    def renamed(record: RunRecord) -> RunRecord:
        mapping = {name: f"{name} ({config['_target_']})" for name, config in (record.attacks or {}).items()
                   if name in clashing and isinstance(config, dict) and config.get("_target_")}
        changes = {key: {mapping.get(name, name): value for name, value in (getattr(record, key) or {}).items()}
                   for key in ATTACK_KEYED}
        if record.escalation:
            changes["escalation"] = {**record.escalation, **{key: {mapping.get(name, name): value for name, value in
                                                                   record.escalation.get(key, {}).items()}
                                                             for key in ("robust_acc", "per_image")}}
        return replace(record, **changes)

    return {source: renamed(record) for source, record in records.items()}


def merge_record(cell: Cell, record: RunRecord, source: str) -> None:
    """One more evaluation of the cell's training (another attack, say) into the cell. An escalated record
    counts with its escalated numbers (at most the original ones)."""
    escalation = record.escalation or {}
    robust_acc = {name: min(value, escalation.get("robust_acc", {}).get(name, value))
                  for name, value in record.robust_acc.items()}
    worst = min(cell.robust_acc.get(WORST_CASE, 1.0), robust_acc.get(WORST_CASE, 1.0))
    cell.robust_acc.update(robust_acc)
    if WORST_CASE in cell.robust_acc:  # each run's worst case bounds all of its attacks, so the least does too
        cell.robust_acc[WORST_CASE] = worst
    cell.attack_ms_per_image.update(record.attack_ms_per_image)
    cell.attack_passes_per_image.update(record.attack_passes_per_image or {})
    cell.robust_acc_without_eot.update(record.robust_acc_without_eot or {})
    for name, check in (record.audit or {}).items():  # a flag raised by any evaluation stays raised
        if name not in cell.audit or check["flagged"]:
            cell.audit[name] = check
    cell.curves.update(record.curves or {})
    cell.certification = record.certification or cell.certification
    cell.randomized = cell.randomized or bool(record.randomized)
    cell.n_eval = max(cell.n_eval, int(record.n_eval or 0))
    cell.n_clean = max(cell.n_clean, int(record.n_clean or 0))
    trust = escalation.get("trust") or (STILL_FLAGGED if flags(record.audit or {}) else TRUSTED if record.audit else "")
    cell.trust = max(cell.trust, trust, key=TRUST_ORDER.index)
    if escalation.get("remedies") is not None:
        cell.escalations.append({**escalation, "source": source, "original": record.robust_acc.get(WORST_CASE)})
    add_threat_model(cell, record.threat_model or {})
    cell.norms.update({name: attack["norm"] for name, attack in (record.attacks or {}).items()
                       if isinstance(attack, dict) and attack.get("norm")})
    if record.train_seconds is not None:
        cell.train_seconds = record.train_seconds
    cell.sources.append(source)
    cell.evaluation_code[source] = record.evaluation_code or "unrecorded"
    cell.provenance[source] = record.provenance or {}


def add_threat_model(cell: Cell, checks: dict[str, dict]) -> None:
    """Add a record's (or a training's) threat-model counts per attack: violations summed, the largest
    perturbation kept."""
    for name, check in checks.items():
        kept = cell.threat_model.setdefault(name, {"violations": 0, "largest_perturbation": 0.0})
        kept["violations"] += int(check.get("violations", 0))
        kept["largest_perturbation"] = max(kept["largest_perturbation"], float(check.get("largest_perturbation", 0)))


def aggregate(trainings: list[Cell], seeds: list, images: list[dict[str, list[float]]]) -> Cell:
    """One row from the cells of one (dataset, model, defense) trained with several seeds (or one): accuracies
    are means over seeds, with `summary` (std, seeds, interval) beside them; a flag of any seed stays raised;
    curves and certificates are the first seed's."""
    first = trainings[0]
    row = Cell(first.dataset, first.model, first.defense, clean_acc=mean([cell.clean_acc for cell in trainings]),
               curves=first.curves, certification=first.certification, seeds=seeds)
    for cell in trainings:
        for name, check in cell.audit.items():
            if name not in row.audit or check["flagged"]:
                row.audit[name] = check
        row.norms.update(cell.norms)
        row.trust = max(row.trust, cell.trust, key=TRUST_ORDER.index)
        row.escalations += cell.escalations
        row.randomized = row.randomized or cell.randomized
        row.n_eval, row.n_clean = max(row.n_eval, cell.n_eval), max(row.n_clean, cell.n_clean)
        row.sources += cell.sources
        add_threat_model(row, cell.threat_model)
        row.evaluation_code.update(cell.evaluation_code)
        row.provenance.update(cell.provenance)
    for name in attack_columns(trainings):
        values = [cell.robust_acc[name] for cell in trainings if name in cell.robust_acc]
        row.robust_acc[name] = mean(values)
        if row.n_eval:  # records without their image counts get no interval
            row.summary[name] = over_seeds(values, row.n_eval)
    if row.n_clean:
        row.summary[CLEAN] = over_seeds([cell.clean_acc for cell in trainings], row.n_clean)
    for field_name in ("attack_ms_per_image", "robust_acc_without_eot"):
        merged = {}
        for name in {name for cell in trainings for name in getattr(cell, field_name)}:
            merged[name] = mean([getattr(cell, field_name)[name] for cell in trainings if name in getattr(cell, field_name)])
        setattr(row, field_name, dict(sorted(merged.items())))
    for name in sorted({name for cell in trainings for name in cell.attack_passes_per_image}):
        counted = [cell.attack_passes_per_image[name] for cell in trainings if name in cell.attack_passes_per_image]
        row.attack_passes_per_image[name] = {direction: mean([passes[direction] for passes in counted])
                                             for direction in ("forward", "backward")}
    seconds = [cell.train_seconds for cell in trainings if cell.train_seconds is not None]
    row.train_seconds = mean(seconds) if seconds else None
    row.flags = "".join(sorted(flags(row.audit)))
    if all(images) and len({len(values) for per_seed in images for values in per_seed.values()}) == 1:
        common = set.intersection(*(set(per_seed) for per_seed in images))
        row.per_image = {name: [mean(values) for values in zip(*(per_seed[name] for per_seed in images))]
                         for name in sorted(common)}
    return row


def attack_columns(cells: list[Cell]) -> list[str]:
    """Attacks in first-seen order, the worst case last."""
    names: list[str] = []
    for cell in cells:
        names += [name for name in cell.robust_acc if name not in names and name != WORST_CASE]
    return names + ([WORST_CASE] if any(WORST_CASE in cell.robust_acc for cell in cells) else [])


def certified_column(cells: list[Cell]) -> list[str]:
    """`certified_l2` (certified accuracy at ε₂, a lower bound) if any row was certified."""
    return [CERTIFIED] if any(cell.certification for cell in cells) else []


def certified_value(cell: Cell) -> float | None:
    return cell.certification.get("certified_acc") if cell.certification else None


def row_label(cell: Cell, cells: list[Cell]) -> str:
    """The defense, prefixed with dataset and model only where the directory holds several."""
    parts = []
    if len({c.dataset for c in cells}) > 1:
        parts.append(cell.dataset)
    if len({c.model for c in cells}) > 1:
        parts.append(cell.model)
    return "/".join([*parts, cell.defense])


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _count(images: float) -> str:
    """Images, or a sum of per-image differences (fractional for means over seeds or draws)."""
    return f"{images:.0f}" if abs(images - round(images)) < 1e-9 else f"{images:.1f}"


def _with_interval(cell: Cell, name: str) -> str:
    """"64.4 ±3.0": the accuracy (mean over seeds) and half its 95% interval's width, in points."""
    value = cell.clean_acc if name == CLEAN else cell.robust_acc.get(name)
    summary = cell.summary.get(name)
    if value is None or summary is None:
        return _percent(value)
    return f"{100 * value:.1f} ±{100 * half_width(summary.interval):.1f}"


def write_csv(cells: list[Cell], path: Path) -> None:
    columns = attack_columns(cells)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        certified = certified_column(cells)
        spread = [CLEAN, *columns]
        writer.writerow(["dataset", "model", "defense", "clean_acc", *columns, *certified, "audit_flags", "trust", "randomized",
                         "n_eval", "seeds", "train_seconds", *(f"attack_ms_per_image/{name}" for name in columns
                                                              if name != WORST_CASE),
                         *(f"{name}/{part}" for name in spread for part in ("low", "high", "std")),
                         *(f"attack_{direction}_passes_per_image/{name}" for name in columns if name != WORST_CASE
                           for direction in ("forward", "backward"))])
        for cell in cells:
            summaries = [cell.summary.get(name) for name in spread]
            writer.writerow([cell.dataset, cell.model, cell.defense, f"{cell.clean_acc:.4f}",
                             *(f"{cell.robust_acc[name]:.4f}" if name in cell.robust_acc else "" for name in columns),
                             *("" if certified_value(cell) is None else f"{certified_value(cell):.4f}" for _ in certified),
                             cell.flags, cell.trust, cell.randomized, cell.n_eval, len(cell.seeds),
                             "" if cell.train_seconds is None else f"{cell.train_seconds:.1f}",
                             *(f"{cell.attack_ms_per_image[name]:.3f}" if name in cell.attack_ms_per_image else ""
                               for name in columns if name != WORST_CASE),
                             *(value for summary in summaries for value in
                               (("", "", "") if summary is None else
                                (f"{summary.interval[0]:.4f}", f"{summary.interval[1]:.4f}", f"{summary.std:.4f}"))),
                             *(f"{cell.attack_passes_per_image[name][direction]:.2f}"
                               if name in cell.attack_passes_per_image else ""
                               for name in columns if name != WORST_CASE for direction in ("forward", "backward"))])


def markdown(cells: list[Cell], left_out: list[str] = (), skipped: list[str] = ()) -> str:
    columns = attack_columns(cells)
    out = io.StringIO()
    out.write("# Attack × defense matrix\n\n")
    seeds = sorted({len(cell.seeds) for cell in cells})
    out.write("Accuracy (%) on the first n test images (clean: the whole test split), ± half its 95% interval (Wilson "
              "on one seed; over several seeds, the mean, its interval holding image and seed noise: section "
              f"\"Over seeds\"); seeds per row: {', '.join(map(str, seeds))}. ⚑ marks the gradient-masking "
              "audit's flags for the row (letters below): such a number is likely an overestimate, so the cell is "
              "attacked again with each flag's remedy (section Escalation) and shows the lower number, marked "
              "*escalated*, or *still flagged* where a flag has no remedy. Randomized "
              "predictors are attacked with EOT; mixtures exactly (expected loss and accuracy over members) and by ARC "
              "(columns arc, arc_l2), which their worst case includes.\n\n")
    out.write("Built from:\n\n" + "\n".join(provenance_lines(cells)) + "\n\n")
    if left_out:
        out.write("Left out, evaluated by other versions of the code: " + ", ".join(left_out) + "\n\n")
    if skipped:
        out.write("Skipped:\n\n" + "".join(f"- {line}\n" for line in skipped) + "\n")
    certified = certified_column(cells)
    header = ["defense", "clean", *columns, *certified, "audit", "train s"]
    out.write("| " + " | ".join(header) + " |\n|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|\n")
    for cell in cells:
        row = [row_label(cell, cells), _with_interval(cell, CLEAN), *(_with_interval(cell, name) for name in columns),
               *(_percent(certified_value(cell)) for _ in certified),
               trust_mark(cell),
               "–" if cell.train_seconds is None else f"{cell.train_seconds:.0f}"]
        out.write("| " + " | ".join(row) + " |\n")
    attacks = [name for name in columns if name != WORST_CASE]
    out.write("\n## Cost: attack milliseconds per image\n\n")
    out.write("| defense | " + " | ".join(attacks) + " |\n|---|" + "|".join(["---:"] * len(attacks)) + "|\n")
    for cell in cells:
        out.write(f"| {row_label(cell, cells)} | " + " | ".join(
            f"{cell.attack_ms_per_image[name]:.2f}" if name in cell.attack_ms_per_image else "–" for name in attacks)
            + " |\n")
    if any(cell.attack_passes_per_image for cell in cells):
        out.write("\n## Cost: forward + backward passes per image (the same on any machine)\n\n")
        out.write("| defense | " + " | ".join(attacks) + " |\n|---|" + "|".join(["---:"] * len(attacks)) + "|\n")
        for cell in cells:
            passes = cell.attack_passes_per_image
            out.write(f"| {row_label(cell, cells)} | " + " | ".join(
                f"{passes[name]['forward']:.0f} + {passes[name]['backward']:.0f}" if name in passes else "–"
                for name in attacks) + " |\n")
    randomized = [cell for cell in cells if cell.robust_acc_without_eot]
    if randomized:
        out.write("\n## Randomized predictors attacked WITHOUT EOT (for comparison only; not robust accuracy)\n\n")
        out.write("| defense | " + " | ".join(attacks) + " |\n|---|" + "|".join(["---:"] * len(attacks)) + "|\n")
        for cell in randomized:
            out.write(f"| {row_label(cell, cells)} | " + " | ".join(
                _percent(cell.robust_acc_without_eot.get(name)) for name in attacks) + " |\n")
    if any(len(cell.seeds) > 1 for cell in cells):
        out.write(seeds_section(cells, [CLEAN, *columns]))
    if certified:
        out.write(certification_section(cells))
    if any(cell.escalations for cell in cells):
        out.write(escalation_section(cells))
    out.write(threat_model_section(cells))
    out.write("\n## Audit flags\n\n")
    for name, letter in LETTERS.items():
        flagged = [row_label(cell, cells) for cell in cells if letter in cell.flags]
        out.write(f"- **{letter}** `{name}`: {', '.join(flagged) if flagged else 'none'}\n")
    out.write("\n## Answer\n\n")
    out.write(answer(cells))
    return out.getvalue()


def threat_model_section(cells: list[Cell]) -> str:
    """How many images each attack returned outside its threat model (they counted as not broken)."""
    checked = [cell for cell in cells if cell.threat_model]
    if not checked:
        return ""
    lines = ["\n## Threat model\n\nEvery image an attack returned was checked: finite, in [0, 1] and inside its "
             "ε-ball (‖x′ − x‖ ≤ ε·(1 + 1e-5) + 1e-6 in the attack's norm); one outside counts as not broken. "]
    violating = [(cell, name, check) for cell in checked for name, check in sorted(cell.threat_model.items())
                 if check["violations"]]
    if not violating:
        return "".join(lines) + f"Every attack stayed inside its threat model ({len(checked)} row(s) checked).\n"
    lines.append("These did not:\n\n| defense | attack | images outside | largest perturbation |\n|---|---|---:|---:|\n")
    lines += [f"| {row_label(cell, cells)} | {name} | {check['violations']} | {check['largest_perturbation']:.4g} |\n"
              for cell, name, check in violating]
    return "".join(lines)


def trust_mark(cell: Cell) -> str:
    """The audit column: "trusted", or the flags and whether escalation settled them ("not audited" if no audit)."""
    if not cell.audit:
        return "not audited"
    if not cell.flags:
        return TRUSTED
    return f"⚑{cell.flags} {cell.trust or STILL_FLAGGED}"


def escalation_section(cells: list[Cell]) -> str:
    """Each escalated result: its flags, the worst case before and after, each remedy, and the cost."""
    lines = ["\n## Escalation\n\nA flagged cell is attacked again with its flags' remedies (e: 5× the steps and 5 "
             "restarts; c: from FGSM's point; g: EOT; d, f: BPDA, a transfer attack from an undefended surrogate, "
             "Square with 5× the queries); the table shows the lower number. a, b and h have no remedy: such a "
             "cell stays *still flagged* and is left out of the answer.\n\n",
             "Attacks that no remedy strengthens (not a PGD of the suite: a user's attack, say) are listed as *not "
             "escalated*: their numbers stand as measured.\n\n",
             "| defense | flags | trust | worst case before → after (%) | remedies (accuracy %) | not escalated | "
             "seconds |\n|---|---|---|---:|---|---|---:|\n"]
    for cell in cells:
        for escalation in cell.escalations:
            remedies = ", ".join(f"{name} {_percent(result['accuracy'])}"
                                 for name, result in escalation["remedies"].items()) or "none"
            lines.append(f"| {row_label(cell, cells)} | {escalation['flags']} | {escalation['trust']} | "
                         f"{_percent(escalation['original'])} → {_percent(escalation['robust_acc'].get(WORST_CASE))} | "
                         f"{remedies} | {', '.join(escalation.get('not_escalated') or []) or '–'} | "
                         f"{escalation['seconds']:.1f} |\n")
    return "".join(lines)


def seeds_section(cells: list[Cell], names: list[str]) -> str:
    """Per row and column: mean, standard deviation over seeds, seeds, and the 95% interval."""
    lines = ["\n## Over seeds\n\nMean ± standard deviation over the training seeds (number of seeds), then the 95% "
             "interval: the hull of the Wilson interval of every seed's images pooled and the t-interval of the mean "
             "over seeds.\n\n",
             "| defense | seeds | " + " | ".join(names) + " |\n|---|---|" + "|".join(["---:"] * len(names)) + "|\n"]
    for cell in cells:
        parts = []
        for name in names:
            summary = cell.summary.get(name)
            parts.append("–" if summary is None else
                         f"{100 * summary.mean:.1f} ±{100 * summary.std:.1f} ({summary.seeds}) "
                         f"[{100 * summary.interval[0]:.1f}, {100 * summary.interval[1]:.1f}]")
        lines.append(f"| {row_label(cell, cells)} | {', '.join(map(str, cell.seeds))} | " + " | ".join(parts) + " |\n")
    return "".join(lines)


def certification_section(cells: list[Cell]) -> str:
    """The certified rows: their certificates' settings, certified accuracy at ε₂, the check, and the cost."""
    lines = ["\n## Certified robustness (randomized smoothing, L2)\n\n",
             f"`{CERTIFIED}` is the accuracy certified at the dataset's ε₂ (Cohen et al. 2019's CERTIFY; each "
             "certificate holds with probability 1 − α): a lower bound on robust accuracy against any L2 attack "
             "of that size. The check attacks every certified image inside its radius; a change of class raises "
             "flag h. Curves: certified vs attacked accuracy per radius (curves.png).\n\n",
             "| defense | σ | images | n0 / n | α | certified at ε₂ | abstained | checked | changed class | "
             "ms per image | passes per image |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"]
    for cell in cells:
        c = cell.certification
        if c:
            lines.append(f"| {row_label(cell, cells)} | {c['sigma']:g} | {c['n_samples']} | {c['n0']} / {c['n']} | "
                         f"{c['alpha']:g} | {_percent(c['certified_acc'])} (ε₂ = {c['eps_l2']:g}) | "
                         f"{_percent(c['abstained'])} | {c['soundness']['checked']} | "
                         f"{len(c['soundness']['flipped'])} | {c['ms_per_image']:.1f} | "
                         f"{c['forward_passes_per_image']} |\n")
    return "".join(lines)


THREATS = {None: "all attacks", "linf": "L∞ attacks alone", "l2": "L2 attacks alone"}


def threat_column(norm: str | None) -> str:
    """The per-image column of the worst case over clean and the attacks of `norm` (None: every attack)."""
    return WORST_CASE if norm is None else f"{WORST_CASE}/{norm}"


def add_threat_columns(cell: Cell, images: dict[str, list[float]]) -> None:
    """Per image, the worst case over clean and each norm's attacks alone (one training's per-image columns)."""
    for norm in (norm for norm in THREATS if norm is not None):
        names = [name for name in images if cell.norms.get(name) == norm]
        if names and CLEAN in images:
            images[threat_column(norm)] = [min(values) for values in zip(*(images[name] for name in [CLEAN, *names]))]


def answer(cells: list[Cell]) -> str:
    """The most effective defense by worst-case robust accuracy, over all attacks and per threat model, named
    only where it beats the runner-up per image at the 5% level (else the tied group); and the strongest
    attack against each defense."""
    ranked = [cell for cell in cells if WORST_CASE in cell.robust_acc]
    if not ranked:
        return "No cell has a worst-case column: evaluate with at least one attack.\n"
    lines = [most_effective(cells, ranked, norm) for norm in THREATS]
    lines.append("\n| defense | strongest attack | its accuracy (%) |\n|---|---|---:|\n")
    for cell in cells:
        attacks = {name: value for name, value in cell.robust_acc.items() if name != WORST_CASE}
        if attacks:
            # Ties go to the cheaper attack: the cheapest way to the lowest accuracy.
            name = min(sorted(attacks), key=lambda attack: (attacks[attack], cell.attack_ms_per_image.get(attack, 0.0)))
            lines.append(f"| {row_label(cell, cells)} | {name} | {_percent(attacks[name])} |\n")
    return "".join(lines)


def most_effective(cells: list[Cell], ranked: list[Cell], norm: str | None) -> str:
    """One threat model's answer: the best row (unflagged rows first) and its paired test against each other."""
    column = threat_column(norm)
    values = {row_label(cell, cells): (mean(cell.per_image[column]) if column in cell.per_image else
                                       cell.robust_acc[WORST_CASE] if norm is None else None) for cell in ranked}
    ranked = [cell for cell in ranked if values[row_label(cell, cells)] is not None]
    title = f"\n### {THREATS[norm][0].upper() + THREATS[norm][1:]}\n\n"
    if not ranked:
        return title + "No row has per-image results for these attacks.\n"
    honest = [cell for cell in ranked if cell.trust != STILL_FLAGGED] or ranked
    ordered = sorted(honest, key=lambda cell: (-values[row_label(cell, cells)], -cell.clean_acc, row_label(cell, cells)))
    best, others = ordered[0], ordered[1:]
    value = lambda cell: values[row_label(cell, cells)]  # noqa: E731
    note = " (among rows trusted or escalated)" if len(honest) < len(ranked) else ""
    seeds = f", {len(best.seeds)} seed(s)" if len(best.seeds) > 1 else ""
    tests = {}
    for other in others:
        a, b = best.per_image.get(column), other.per_image.get(column)
        if a is not None and b is not None:
            n = min(len(a), len(b))
            tests[row_label(other, cells)] = (paired_test(a[:n], b[:n]), n)
    if not others:
        return title + f"**Most effective defense: {row_label(best, cells)}** — worst-case robust accuracy " \
                       f"{_percent(value(best))}%{note}; no other row to compare.\n"
    runner_up = others[0]
    if len(tests) < len(others):
        return title + (f"**Highest worst-case robust accuracy: {row_label(best, cells)}** ({_percent(value(best))}%)"
                        f"{note}, ahead of {row_label(runner_up, cells)} ({_percent(value(runner_up))}%); not tested "
                        "per image: some results predate per-image correctness (re-run them).\n")
    tied = [other for other in others if tests[row_label(other, cells)][0].p_value >= LEVEL]
    if not tied:
        test, n = tests[row_label(runner_up, cells)]
        head = (f"**Most effective defense: {row_label(best, cells)}** — worst-case robust accuracy "
                f"{_percent(value(best))}%{seeds}, clean {_percent(best.clean_acc)}%{note}; it beats the runner-up, "
                f"{row_label(runner_up, cells)} ({_percent(value(runner_up))}%), per image at the 5% level "
                f"(p = {test.p_value:.2g}, {test.method}, {n} images).\n")
    else:
        group = [best, *tied]
        head = (f"**No single most effective defense**: {', '.join(row_label(cell, cells) for cell in group)} are tied "
                f"(worst-case robust accuracy {', '.join(_percent(value(cell)) + '%' for cell in group)}); "
                f"{row_label(best, cells)} is highest{note}, but no paired test against it reaches the 5% level.\n")
    table = ["\n| defense | worst case (%) | images where the best is right and it is not / the reverse | p-value | "
             "test |\n|---|---:|---:|---:|---|\n",
             f"| {row_label(best, cells)} (best) | {_percent(value(best))} | | | |\n"]
    for other in others:
        test, n = tests[row_label(other, cells)]
        table.append(f"| {row_label(other, cells)} | {_percent(value(other))} | {_count(test.a_better)} / {_count(test.b_better)} | "
                     f"{test.p_value:.2g} | {test.method}, {n} images |\n")
    return title + head + "".join(table)


def write_tensorboard(cells: list[Cell], text: str, directory: Path) -> None:
    """The report as text, and one HParams run per cell (its choices and flags; its final numbers)."""
    from torch.utils.tensorboard import SummaryWriter

    if directory.exists():
        shutil.rmtree(directory)  # one summary per report, not one more per re-run
    writer = SummaryWriter(str(directory))
    writer.add_text("report", text)
    for index, cell in enumerate(cells):
        metrics = {**accuracy_metrics(cell.clean_acc, cell.robust_acc, cell.certification),
                   f"{FINAL}/audit_flags": float(len(cell.flags))}
        run = SummaryWriter(str(directory / f"{index:03d}-{cell.dataset}-{cell.model}-{cell.defense}"))
        write_hparams(run, {"dataset": cell.dataset, "model": cell.model, "defense": cell.defense,
                            "flags": cell.flags or "none"}, metrics, step=0)
        run.close()
    writer.close()


def write_report(directory: str | Path, versions: str = "refuse") -> dict[str, Path]:
    """Write the report over `directory`'s metrics.json files; `versions` says what to do with results of
    different evaluation code (`select_versions`)."""
    directory = Path(directory)
    records, skipped = read_records(directory)
    records, left_out = select_versions(records, versions)
    if not records:
        raise NoResults(f"no result under {directory} was evaluated by the code installed now (--versions "
                        f"{versions}); left out: {', '.join(left_out)}")
    cells = collect_cells(directory, records)
    output = directory / "report"
    output.mkdir(parents=True, exist_ok=True)
    paths = {"csv": output / "results.csv", "markdown": output / "REPORT.md", "heatmap": output / "heatmap.png",
             "curves": output / "curves.png", "tensorboard": output / "tensorboard"}
    write_csv(cells, paths["csv"])
    text = markdown(cells, left_out, skipped)
    paths["markdown"].write_text(text)
    attacks = attack_columns(cells)
    columns = [CLEAN, *attacks, *certified_column(cells)]
    values = [[cell.clean_acc, *(cell.robust_acc.get(name) for name in attacks),
               *(certified_value(cell) for _ in certified_column(cells))] for cell in cells]
    flags = [["" if name == CLEAN else cell.flags for name in columns] for cell in cells]
    save_figure(heatmap_figure([row_label(cell, cells) for cell in cells], columns, values, flags,
                               title=f"accuracy (%) — {directory.name}"), paths["heatmap"])
    save_figure(curves_grid({row_label(cell, cells) + (f"  ⚑{cell.flags}" if cell.flags else ""): cell.curves
                             for cell in cells if cell.curves}), paths["curves"])
    write_tensorboard(cells, text, paths["tensorboard"])
    return paths
