"""Deciding: the most effective defense by worst-case robust accuracy (over all attacks and per threat model),
named only where a paired test per image says it beats the runner-up; and the strongest attack per defense."""

from __future__ import annotations

from statistics import fmean as mean

from robustlab.evaluation.record import STILL_FLAGGED, WORST_CASE
from robustlab.evaluation.statistics import LEVEL, paired_test
from robustlab.report.rows import THREATS, Row, threat_column
from robustlab.report.tables import count, percent, table


def answer(rows: list[Row]) -> str:
    """The most effective defense over all attacks and per norm, and the strongest attack against each defense."""
    ranked = [row for row in rows if WORST_CASE in row.robust_acc]
    if not ranked:
        return "No row has a worst-case column: evaluate with at least one attack.\n"
    lines = [most_effective(ranked, norm) for norm in THREATS
             if norm in (None, "linf", "l2") or any(threat_column(norm) in row.per_image for row in ranked)]
    strongest = []
    for row in rows:
        attacks = {name: value for name, value in row.robust_acc.items() if name != WORST_CASE}
        if attacks:
            # Ties go to the cheaper attack: the cheapest way to the lowest accuracy.
            name = min(sorted(attacks), key=lambda attack: (attacks[attack], row.attack_ms_per_image.get(attack, 0.0)))
            strongest.append([row.label, name, percent(attacks[name])])
    lines.append("\n" + table(["defense", "strongest attack", "its accuracy (%)"], strongest, "llr"))
    return "".join(lines)


def worst_case(row: Row, norm: str | None) -> float | None:
    """The row's worst-case accuracy under `norm`'s attacks (None: all): from its per-image results, or, over all
    attacks, its worst-case column; None where a record predates per-image results."""
    column = threat_column(norm)
    if column in row.per_image:
        return mean(row.per_image[column])
    return row.robust_acc[WORST_CASE] if norm is None else None


def most_effective(ranked: list[Row], norm: str | None) -> str:
    """One threat model's answer: the best row (rows not still flagged first) and its paired test against each
    other row."""
    column = threat_column(norm)
    title = f"\n### {THREATS[norm][0].upper() + THREATS[norm][1:]}\n\n"
    values = {row.label: worst_case(row, norm) for row in ranked}
    ranked = [row for row in ranked if values[row.label] is not None]
    if not ranked:
        return title + "No row has per-image results for these attacks.\n"
    honest = [row for row in ranked if row.trust != STILL_FLAGGED] or ranked
    ordered = sorted(honest, key=lambda row: (-values[row.label], -row.clean_acc, row.label))  # type: ignore[operator]
    best, others = ordered[0], ordered[1:]
    note = " (among rows trusted or escalated)" if len(honest) < len(ranked) else ""
    seeds = f", {len(best.seeds)} seed(s)" if len(best.seeds) > 1 else ""
    if not others:
        return title + f"**Most effective defense: {best.label}** — worst-case robust accuracy " \
                       f"{percent(values[best.label])}%{note}; no other row to compare.\n"
    tests = {}
    for other in others:
        a, b = best.per_image.get(column), other.per_image.get(column)
        if a is not None and b is not None:
            n = min(len(a), len(b))
            tests[other.label] = (paired_test(a[:n], b[:n]), n)
    runner_up = others[0]
    if len(tests) < len(others):
        return title + (f"**Highest worst-case robust accuracy: {best.label}** ({percent(values[best.label])}%)"
                        f"{note}, ahead of {runner_up.label} ({percent(values[runner_up.label])}%); not tested "
                        "per image: some results predate per-image correctness (re-run them).\n")
    tied = [other for other in others if tests[other.label][0].p_value >= LEVEL]
    if not tied:
        test, n = tests[runner_up.label]
        head = (f"**Most effective defense: {best.label}** — worst-case robust accuracy "
                f"{percent(values[best.label])}%{seeds}, clean {percent(best.clean_acc)}%{note}; it beats the "
                f"runner-up, {runner_up.label} ({percent(values[runner_up.label])}%), per image at the 5% level "
                f"(p = {test.p_value:.2g}, {test.method}, {n} images).\n")
    else:
        group = [best, *tied]
        head = (f"**No single most effective defense**: {', '.join(row.label for row in group)} are tied "
                f"(worst-case robust accuracy {', '.join(percent(values[row.label]) + '%' for row in group)}); "
                f"{best.label} is highest{note}, but no paired test against it reaches the 5% level.\n")
    lines = [[f"{best.label} (best)", percent(values[best.label]), "", "", ""]]
    for other in others:
        test, n = tests[other.label]
        lines.append([other.label, percent(values[other.label]), f"{count(test.a_better)} / {count(test.b_better)}",
                      f"{test.p_value:.2g}", f"{test.method}, {n} images"])
    return title + head + "\n" + table(["defense", "worst case (%)", "images where the best is right and it is not "
                                        "/ the reverse", "p-value", "test"], lines, "lrrrl")
