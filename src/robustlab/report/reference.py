"""Which attack the strongest numbers came from, and A3 against the reference, standard AutoAttack, image by image.

`eval=matrix`'s strongest column is A3 (`attack=a3`); `eval=reference` also runs AutoAttack (`attack=autoattack`:
standard on a deterministic predictor, rand on a randomized one) on the same images. Where a row has both, the
report compares them per image: each one's robust accuracy, the union's (an image stands only if both fail), the
images that only one of them breaks, and each one's passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean as mean

from robustlab.report.rows import Row
from robustlab.report.tables import count, percent, table

BUDGETED, REFERENCE = "a3", "autoattack"  # the columns of eval=matrix's strongest attack and of the reference


@dataclass(frozen=True)
class Comparison:
    """Two attacks on the same images, from their per-image correctness (1 standing, 0 broken; a randomized
    predictor's expected correctness in between)."""

    images: int
    budgeted: float  # robust accuracy under A3
    reference: float  # under AutoAttack
    union: float  # under both: per image, the lower correctness
    reference_only: float  # images AutoAttack breaks and A3 misses (a randomized predictor's: expected)
    budgeted_only: float  # the reverse


def compare(budgeted: list[float], reference: list[float]) -> Comparison:
    pairs = list(zip(budgeted, reference))
    return Comparison(len(pairs), mean(budgeted[:len(pairs)]), mean(reference[:len(pairs)]),
                      mean(min(a, b) for a, b in pairs), sum(max(a - b, 0.0) for a, b in pairs),
                      sum(max(b - a, 0.0) for a, b in pairs))


def passes(row: Row, name: str) -> float | None:
    """Forward + backward passes per image of attack `name` on `row`."""
    counted = row.attack_passes_per_image.get(name)
    return None if counted is None else counted["forward"] + counted["backward"]


def reference_section(rows: list[Row]) -> str:
    """Which evaluation the worst case rests on, and the per-image comparison where a row has both attacks."""
    with_reference = [row for row in rows if REFERENCE in row.robust_acc]
    with_budgeted = [row for row in rows if BUDGETED in row.robust_acc]
    if not with_reference and not with_budgeted:
        return ""
    text = "\n## The strongest attack and the reference\n\n"
    if with_budgeted:
        text += (f"The worst case rests on every column, A3 (`{BUDGETED}`, eval=matrix's strongest) included. ")
    if not with_reference:
        return text + "Standard AutoAttack was not run on any row (`eval=reference` runs it next to A3).\n"
    text += ("AutoAttack (`autoattack`, standard on a deterministic predictor, rand on a randomized one) was run on: "
             f"{', '.join(row.label for row in with_reference)}.\n")
    lines = []
    for row in with_reference:
        if BUDGETED not in row.per_image or REFERENCE not in row.per_image:
            continue
        c = compare(row.per_image[BUDGETED], row.per_image[REFERENCE])
        a3_passes, reference_passes = passes(row, BUDGETED), passes(row, REFERENCE)
        ratio = f"{reference_passes / a3_passes:.1f}×" if a3_passes and reference_passes else "–"
        lines.append([row.label, c.images, percent(c.budgeted), percent(c.reference), percent(c.union),
                      f"{count(c.reference_only)} ({100 * c.reference_only / c.images:.1f}%)",
                      count(c.budgeted_only), f"{a3_passes:.0f}" if a3_passes else "–",
                      f"{reference_passes:.0f}" if reference_passes else "–", ratio])
    if lines:
        text += "\nImage by image, on the same images:\n\n" + table(
            ["defense", "images", "A3 (%)", "AutoAttack (%)", "union (%)", "broken by AutoAttack only",
             "by A3 only", "A3 passes / image", "AutoAttack passes / image", "AutoAttack / A3 passes"],
            lines, "lrrrrrrrrr")
    return text
