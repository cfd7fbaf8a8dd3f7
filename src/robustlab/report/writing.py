"""Writing the report, into `directory/report/`:
- results.csv — one line per row: accuracies, intervals, audit flags, trust, costs;
- REPORT.md — the matrix (rows: defenses; columns: clean, each attack, worst case; cells: accuracy % ± half
  the 95% interval, with the audit's verdict), costs, EOT-free numbers of randomized predictors (labelled),
  seeds, certificates, escalation, the threat-model check, and the answer (`report/answer.py`);
- heatmap.png and curves.png; and a TensorBoard run (HParams table and the markdown as text) in tensorboard/.

The files depend only on the metrics.json files (no dates, sorted order), so re-running a finished sweep
writes an identical report.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from robustlab.evaluation.audit import LETTERS
from robustlab.evaluation.plots import curves_grid, heatmap_figure, save_figure
from robustlab.evaluation.record import CERTIFIED, CLEAN, STILL_FLAGGED, TRUSTED, WORST_CASE
from robustlab.evaluation.statistics import half_width
from robustlab.evaluation.tensorboard import FINAL, accuracy_metrics, write_hparams
from robustlab.report.answer import answer
from robustlab.report.reading import NoResults, read_records, select_versions
from robustlab.report.reference import reference_section
from robustlab.report.rows import Row, attack_columns, certified_column, certified_value, collect_rows
from robustlab.report.tables import percent, table
from robustlab.report.threats import threat_models_section

INTRODUCTION = (
    "Accuracy (%) on the first n test images (clean: the whole test split), ± half its 95% interval (Wilson "
    "on one seed; over several seeds, the mean, its interval holding image and seed noise: section "
    "\"Over seeds\"); seeds per row: {seeds}. ⚑ marks the gradient-masking audit's flags for the row (letters "
    "below): such a number is likely an overestimate, so the cell is attacked again with each flag's remedy "
    "(section Escalation) and shows the lower number, marked *escalated*, or *still flagged* where a flag has "
    "no remedy. Randomized predictors are attacked with EOT; mixtures exactly (expected loss and accuracy over "
    "members) and by ARC (columns arc, arc_l2), which their worst case includes.\n\n")


def write_report(directory: str | Path, versions: str = "refuse") -> dict[str, Path]:
    """Write the report over `directory`'s metrics.json files; `versions` says what to do with results of
    different evaluation code (`reading.select_versions`)."""
    directory = Path(directory)
    records, skipped = read_records(directory)
    records, left_out = select_versions(records, versions)
    if not records:
        raise NoResults(f"no result under {directory} was evaluated by the code installed now (--versions "
                        f"{versions}); left out: {', '.join(left_out)}")
    rows = collect_rows(records)
    output = directory / "report"
    output.mkdir(parents=True, exist_ok=True)
    paths = {"csv": output / "results.csv", "markdown": output / "REPORT.md", "heatmap": output / "heatmap.png",
             "curves": output / "curves.png", "tensorboard": output / "tensorboard"}
    write_csv(rows, paths["csv"])
    text = markdown(rows, left_out, skipped)
    paths["markdown"].write_text(text)
    write_figures(rows, paths["heatmap"], paths["curves"], directory.name)
    write_tensorboard(rows, text, paths["tensorboard"])
    return paths


def markdown(rows: list[Row], left_out: list[str] | None = None, skipped: list[str] | None = None) -> str:
    seeds = sorted({len(row.seeds) for row in rows})
    parts = ["# Attack × defense matrix\n\n", INTRODUCTION.format(seeds=", ".join(map(str, seeds))),
             "Built from:\n\n" + "\n".join(provenance_lines(rows)) + "\n\n"]
    if left_out:
        parts.append("Left out, evaluated by other versions of the code: " + ", ".join(left_out) + "\n\n")
    if skipped:
        parts.append("Skipped:\n\n" + "".join(f"- {line}\n" for line in skipped) + "\n")
    parts += [matrix_table(rows), threat_models_section(rows), reference_section(rows), cost_sections(rows),
              without_eot_section(rows)]
    if any(len(row.seeds) > 1 for row in rows):
        parts.append(seeds_section(rows))
    if certified_column(rows):
        parts.append(certification_section(rows))
    if any(row.escalations for row in rows):
        parts.append(escalation_section(rows))
    parts += [threat_model_section(rows), "\n## Audit flags\n\n"]
    for name, letter in LETTERS.items():
        flagged = [row.label for row in rows if row.audit.get(name, {}).get("flagged")]
        parts.append(f"- **{letter}** `{name}`: {', '.join(flagged) if flagged else 'none'}\n")
    parts += ["\n## Answer\n\n", answer(rows)]
    return "".join(parts)


def with_interval(row: Row, name: str) -> str:
    """"64.4 ±3.0": the accuracy (mean over seeds) and half its 95% interval's width, in points."""
    value = row.clean_acc if name == CLEAN else row.robust_acc.get(name)
    summary = row.summary.get(name)
    if value is None or summary is None:
        return percent(value)
    return f"{100 * value:.1f} ±{100 * half_width(summary.interval):.1f}"


def trust_mark(row: Row) -> str:
    """The audit column: "trusted", or the flags and whether escalation settled them ("not audited" if no audit)."""
    if not row.audit:
        return "not audited"
    if not row.flags:
        return TRUSTED
    return f"⚑{row.flags} {row.trust or STILL_FLAGGED}"


def matrix_table(rows: list[Row]) -> str:
    columns, certified = attack_columns(rows), certified_column(rows)
    header = ["defense", "clean", *columns, *certified, "audit", "train s"]
    lines = [[row.label, with_interval(row, CLEAN), *(with_interval(row, name) for name in columns),
              *(percent(certified_value(row)) for _ in certified), trust_mark(row),
              "–" if row.train_seconds is None else f"{row.train_seconds:.0f}"] for row in rows]
    return table(header, lines, "l" + "r" * (len(header) - 1))


def cost_sections(rows: list[Row]) -> str:
    """Attack milliseconds per image; forward + backward passes per image (the same on any machine)."""
    attacks = [name for name in attack_columns(rows) if name != WORST_CASE]
    header, align = ["defense", *attacks], "l" + "r" * len(attacks)
    text = "\n## Cost: attack milliseconds per image\n\n" + table(header, [
        [row.label, *(f"{row.attack_ms_per_image[name]:.2f}" if name in row.attack_ms_per_image else "–"
                      for name in attacks)] for row in rows], align)
    if any(row.attack_passes_per_image for row in rows):
        text += "\n## Cost: forward + backward passes per image (the same on any machine)\n\n" + table(header, [
            [row.label, *(f"{row.attack_passes_per_image[name]['forward']:.0f} + "
                          f"{row.attack_passes_per_image[name]['backward']:.0f}"
                          if name in row.attack_passes_per_image else "–" for name in attacks)] for row in rows], align)
    return text


def without_eot_section(rows: list[Row]) -> str:
    randomized = [row for row in rows if row.robust_acc_without_eot]
    if not randomized:
        return ""
    attacks = [name for name in attack_columns(rows) if any(name in row.robust_acc_without_eot for row in randomized)]
    return ("\n## Randomized predictors attacked WITHOUT EOT (for comparison only; not robust accuracy)\n\n"
            "The attacks of `eval.compare_without_eot` (by default PGD-20 of each norm, `pgd_linf` and `pgd_l2`; "
            "`true`: every attack) ran again with one draw per gradient; – : not compared.\n\n"
            + table(["defense", *attacks], [[row.label, *(percent(row.robust_acc_without_eot.get(name))
                                                          for name in attacks)] for row in randomized],
                    "l" + "r" * len(attacks)))


def provenance_lines(rows: list[Row]) -> list[str]:
    """Which code versions and devices the report is built from (sorted, so a rebuild is byte-identical)."""
    versions: dict[str, int] = {}
    devices: dict[str, int] = {}
    for row in rows:
        for source, code in row.evaluation_code.items():
            record = row.provenance[source]
            revision = record.get("git_commit", record.get("package_sha256", "unrecorded"))[:12] + \
                ("+uncommitted changes" if record.get("git_dirty") else "")
            version = (f"evaluation code {code} (robustlab {record.get('robustlab', '?')}, source {revision}, "
                       f"PyTorch {record.get('torch', '?')})")
            versions[version] = versions.get(version, 0) + 1
            device = f"{record.get('device', 'unrecorded')}, {record.get('precision') or 'unrecorded'} precision"
            devices[device] = devices.get(device, 0) + 1
    return [*(f"- {version}: {count} result(s)" for version, count in sorted(versions.items())),
            *(f"- device {device}: {count} result(s)" for device, count in sorted(devices.items()))]


def threat_model_section(rows: list[Row]) -> str:
    """How many images each attack returned outside its threat model (they counted as not broken)."""
    checked = [row for row in rows if row.threat_model]
    if not checked:
        return ""
    text = ("\n## Threat model\n\nEvery image an attack returned was checked: finite, in [0, 1] and inside its "
            "ε-ball (‖x′ − x‖ ≤ ε·(1 + 1e-5) + 1e-6 in the attack's norm); one outside counts as not broken. ")
    violating = [[row.label, name, check["violations"], f"{check['largest_perturbation']:.4g}"]
                 for row in checked for name, check in sorted(row.threat_model.items()) if check["violations"]]
    text += "These did not:\n\n" + table(["defense", "attack", "images outside", "largest perturbation"], violating,
                                          "llrr") if violating else \
        f"Every attack stayed inside its threat model ({len(checked)} row(s) checked).\n"
    changed = [[row.label, name, ", ".join(f"{what} ({count} batch(es))" for what, count in check["changed"].items())]
               for row in checked for name, check in sorted(row.threat_model.items()) if check.get("changed")]
    if changed:
        text += ("\nThese attacks changed what an attack may not (the images or labels they were given, the model's "
                 "parameters, buffers, mode, hooks or gradients, or returned no batch like their input); the "
                 "evaluation undid it and scored the untouched copies:\n\n"
                 + table(["defense", "attack", "changed"], changed, "lll"))
    left_out = sorted({name for row in checked for name, check in row.threat_model.items()
                       if not check.get("in_worst_case", True)})
    if left_out:
        text += (f"\nLeft out of the worst case, in their own columns only (their budget is not inside the dataset's "
                 f"L∞ and L2 balls): {', '.join(left_out)}.\n")
    return text


def escalation_section(rows: list[Row]) -> str:
    """Each escalated result: its flags, the worst case before and after, each remedy, and the cost."""
    lines = []
    for row in rows:
        for escalation in row.escalations:
            remedies = ", ".join(remedy_summary(name, result) for name, result in escalation["remedies"].items()) \
                or "none"
            lines.append([row.label, escalation["flags"], escalation["trust"],
                          f"{percent(escalation['original'])} → {percent(escalation['robust_acc'].get(WORST_CASE))}",
                          remedies, ", ".join(escalation.get("not_escalated") or []) or "–",
                          f"{escalation['seconds']:.1f}"])
    return ("\n## Escalation\n\nA flagged cell is attacked again with its flags' remedies (e: 5× the steps and 5 "
            "restarts; c: from FGSM's point; g: EOT; d, f: BPDA, a transfer attack from an undefended surrogate, "
            "Square with 5× the queries); the table shows the lower number. a, b and h have no remedy: such a "
            "cell stays *still flagged* and is left out of the answer.\n\n"
            "Attacks that no remedy strengthens (not a PGD of the suite: a user's attack, say) are listed as *not "
            "escalated*: their numbers stand as measured.\n\n"
            "A remedy attacks only the images that the attack it strengthens left standing (one already broken "
            "stays broken): its accuracy is on those images, *of* how many there were.\n\n"
            + table(["defense", "flags", "trust", "worst case before → after (%)", "remedies (accuracy %)",
                     "not escalated", "seconds"], lines, "lllrllr"))


def remedy_summary(name: str, result: dict) -> str:
    """`name accuracy% of k` (k: the images it attacked; a record from before escalation skipped the broken ones
    has no count, its remedies attacked every image), and its images outside the threat model, if any."""
    attacked = f" of {result['attacked']}" if "attacked" in result else ""
    outside = result.get("threat_model_violations") or 0
    return f"{name} {percent(result['accuracy'])}{attacked}" + (f" ({outside} outside its threat model, counted "
                                                               "as not broken)" if outside else "")


def seeds_section(rows: list[Row]) -> str:
    """Per row and column: mean, standard deviation over seeds, seeds, and the 95% interval."""
    names = [CLEAN, *attack_columns(rows)]
    lines = []
    for row in rows:
        parts = []
        for name in names:
            summary = row.summary.get(name)
            parts.append("–" if summary is None else
                         f"{100 * summary.mean:.1f} ±{100 * summary.std:.1f} ({summary.seeds}) "
                         f"[{100 * summary.interval[0]:.1f}, {100 * summary.interval[1]:.1f}]")
        lines.append([row.label, ", ".join(map(str, row.seeds)), *parts])
    return ("\n## Over seeds\n\nMean ± standard deviation over the training seeds (number of seeds), then the 95% "
            "interval: the hull of the Wilson interval of every seed's images pooled and the t-interval of the mean "
            "over seeds.\n\n" + table(["defense", "seeds", *names], lines, "ll" + "r" * len(names)))


def certification_section(rows: list[Row]) -> str:
    """The certified rows: their certificates' settings, certified accuracy at ε₂, the check, and the cost."""
    lines = [[row.label, f"{c['sigma']:g}", c["n_samples"], f"{c['n0']} / {c['n']}", f"{c['alpha']:g}",
              f"{percent(c['certified_acc'])} (ε₂ = {c['eps_l2']:g})", percent(c["abstained"]),
              c["soundness"]["checked"], len(c["soundness"]["flipped"]), f"{c['ms_per_image']:.1f}",
              c["forward_passes_per_image"]] for row in rows if (c := row.certification)]
    return ("\n## Certified robustness (randomized smoothing, L2)\n\n"
            f"`{CERTIFIED}` is the accuracy certified at the dataset's ε₂ (Cohen et al. 2019's CERTIFY; each "
            "certificate holds with probability 1 − α): a lower bound on robust accuracy against any L2 attack "
            "of that size. The check attacks every certified image inside its radius; a change of class raises "
            "flag h. Curves: certified vs attacked accuracy per radius (curves.png).\n\n"
            + table(["defense", "σ", "images", "n0 / n", "α", "certified at ε₂", "abstained", "checked",
                     "changed class", "ms per image", "passes per image"], lines, "l" + "r" * 10))


def write_csv(rows: list[Row], path: Path) -> None:
    columns, certified = attack_columns(rows), certified_column(rows)
    attacks, spread = [name for name in columns if name != WORST_CASE], [CLEAN, *columns]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["dataset", "model", "defense", "clean_acc", *columns, *certified, "audit_flags", "trust",
                         "randomized", "n_eval", "seeds", "train_seconds",
                         *(f"attack_ms_per_image/{name}" for name in attacks),
                         *(f"{name}/{part}" for name in spread for part in ("low", "high", "std")),
                         *(f"attack_{direction}_passes_per_image/{name}" for name in attacks
                           for direction in ("forward", "backward"))])
        for row in rows:
            summaries = [row.summary.get(name) for name in spread]
            writer.writerow([row.dataset, row.model, row.defense, f"{row.clean_acc:.4f}",
                             *(f"{row.robust_acc[name]:.4f}" if name in row.robust_acc else "" for name in columns),
                             *("" if certified_value(row) is None else f"{certified_value(row):.4f}"
                               for _ in certified),
                             row.flags, row.trust, row.randomized, row.n_eval, len(row.seeds),
                             "" if row.train_seconds is None else f"{row.train_seconds:.1f}",
                             *(f"{row.attack_ms_per_image[name]:.3f}" if name in row.attack_ms_per_image else ""
                               for name in attacks),
                             *(value for summary in summaries for value in
                               (("", "", "") if summary is None else
                                (f"{summary.interval[0]:.4f}", f"{summary.interval[1]:.4f}", f"{summary.std:.4f}"))),
                             *(f"{row.attack_passes_per_image[name][direction]:.2f}"
                               if name in row.attack_passes_per_image else ""
                               for name in attacks for direction in ("forward", "backward"))])


def write_figures(rows: list[Row], heatmap: Path, curves: Path, title: str) -> None:
    """The matrix as a heatmap (flags on the attacked cells), and every row's robustness curves."""
    attacks, certified = attack_columns(rows), certified_column(rows)
    columns = [CLEAN, *attacks, *certified]
    values = [[row.clean_acc, *(row.robust_acc.get(name) for name in attacks),
               *(certified_value(row) for _ in certified)] for row in rows]
    marks = [["" if name == CLEAN else row.flags for name in columns] for row in rows]
    save_figure(heatmap_figure([row.label for row in rows], columns, values, marks,
                               title=f"accuracy (%) — {title}"), heatmap)
    save_figure(curves_grid({row.label + (f"  ⚑{row.flags}" if row.flags else ""): row.curves
                             for row in rows if row.curves}), curves)


def write_tensorboard(rows: list[Row], text: str, directory: Path) -> None:
    """The report as text, and one HParams run per row (its choices and flags; its final numbers)."""
    from torch.utils.tensorboard import SummaryWriter

    if directory.exists():
        shutil.rmtree(directory)  # one summary per report, not one more per re-run
    writer = SummaryWriter(str(directory))
    writer.add_text("report", text)
    for index, row in enumerate(rows):
        metrics = {**accuracy_metrics(row.clean_acc, row.robust_acc, row.certification),
                   f"{FINAL}/audit_flags": float(len(row.flags))}
        run = SummaryWriter(str(directory / f"{index:03d}-{row.dataset}-{row.model}-{row.defense}"))
        write_hparams(run, {"dataset": row.dataset, "model": row.model, "defense": row.defense,
                            "flags": row.flags or "none"}, metrics, step=0)
        run.close()
    writer.close()
