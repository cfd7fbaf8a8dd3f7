"""Reading a directory's results: every usable metrics.json, what was skipped and why, which evaluation code
made each (the version policy), and names that keep different classes apart."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from robustlab.code_digests import module_digest
from robustlab.errors import RobustlabError
from robustlab.evaluation.record import FILE_NAME, SLURM_JOB_FILE, NotARecord, RunRecord

# What to do with results evaluated by different code: refuse to report them together, report the current
# ones alone, or mix them knowingly.
VERSIONS = ("refuse", "current", "mix")
# The record fields keyed by attack name (renamed together where two attacks share a name).
ATTACK_KEYED = ("robust_acc", "robust_acc_without_eot", "defense_metrics", "curves", "attack_ms_per_image",
                "attack_passes_per_image", "attacks", "threat_model", "intervals", "per_image")


class MixedVersions(RobustlabError):
    """The directory holds results evaluated by different versions of the evaluation code."""


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
        job = run_dir / SLURM_JOB_FILE
        is_run = (run_dir / ".hydra").is_dir() or job.is_file() or not any(run_dir.iterdir())
        if is_run and not (run_dir / FILE_NAME).exists():
            skipped.append(f"{run_dir.relative_to(directory)}/: a run directory without metrics.json "
                           f"(the run did not finish{slurm_job(job)})")
    if not records:
        raise NoResults(f"no robustlab results (metrics.json) under {directory}"
                        + "".join(f"\n  skipped {line}" for line in skipped))
    return records, skipped


def slurm_job(path: Path) -> str:
    """'; SLURM job <id>, log <file>' for a run directory a SLURM sweep submitted, else ''."""
    try:
        job = json.loads(path.read_text())
        return f"; SLURM job {job['job_id']}, log {job['stderr']}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def version_conflicts(records: dict[str, RunRecord]) -> list[str]:
    """For each robustlab module that two results were evaluated with in different versions, one line naming
    the versions and the results (metrics.json paths) of each."""
    digests: dict[str, dict[str, list[str]]] = {}
    for source, record in sorted(records.items()):
        for module, digest in record.evaluation_modules.items():
            digests.setdefault(module, {}).setdefault(digest, []).append(source)
    return [f"  {module}: " + "; ".join(f"version {digest} in {', '.join(sources)}"
                                        for digest, sources in sorted(versions.items()))
            for module, versions in sorted(digests.items()) if len(versions) > 1]


def is_current(record: RunRecord) -> bool:
    """Whether the result was evaluated by the code installed now (every module it recorded is unchanged)."""
    return all(module_digest(module) == digest for module, digest in record.evaluation_modules.items())


def select_versions(records: dict[str, RunRecord], versions: str) -> tuple[dict[str, RunRecord], list[str]]:
    """The results to report and the ones left out. `refuse`: all, or `MixedVersions` if their evaluation code
    differs; `current`: only those evaluated by the code installed now; `mix`: all, whatever their code."""
    if versions not in VERSIONS:
        raise ValueError(f"versions={versions!r}: expected one of {VERSIONS}")
    left_out: list[str] = []
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

        def rename(values: dict) -> dict:
            return {mapping.get(name, name): value for name, value in values.items()}

        changes = {key: rename(getattr(record, key) or {}) for key in ATTACK_KEYED}
        if record.escalation:
            changes["escalation"] = {**record.escalation, **{key: rename(record.escalation.get(key, {}))
                                                             for key in ("robust_acc", "per_image")}}
        return replace(record, **changes)  # type: ignore[arg-type]

    return {source: renamed(record) for source, record in records.items()}
