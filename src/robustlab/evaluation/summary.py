"""The table a run ends with, on the console and in its log: clean accuracy and every attack's with their 95%
intervals, the worst case, per threat model (with the union and the average), the audit's flags and the trust
mark. The record holds the same numbers."""

from __future__ import annotations

from robustlab.evaluation.audit import flags, trust
from robustlab.evaluation.record import CLEAN, WORST_CASE, RunRecord
from robustlab.evaluation.threats import AVERAGE, NORM_NAMES, UNION


def results_table(record: RunRecord) -> str:
    """A few aligned lines: accuracy, 95% interval and images per row, then the audit's verdict."""
    rows = [(CLEAN, record.clean_acc, record.n_clean)]
    rows += [(name, accuracy, record.n_eval) for name, accuracy in record.robust_acc.items() if name != WORST_CASE]
    if WORST_CASE in record.robust_acc:
        rows.append(("worst case", record.robust_acc[WORST_CASE], record.n_eval))
    keys = {"worst case": WORST_CASE}
    width = max(len(name) for name, _, _ in rows)
    title = " / ".join(str(part) for part in (record.dataset, record.model, record.defense) if part)
    lines = [f"results: {title}", f"  {'':<{width}}  accuracy  95% interval   images"]
    for name, accuracy, count in rows:
        low, high = record.intervals.get(keys.get(name, name), (float("nan"), float("nan")))
        lines.append(f"  {name:<{width}}  {100 * accuracy:7.1f}%  [{100 * low:5.1f}, {100 * high:5.1f}]  {count:>6}")
    lines += threat_lines(record.threats or {})
    for name, accuracy in record.robust_acc_without_eot.items():
        lines.append(f"  {name} with one draw per gradient (not the robust accuracy): {100 * accuracy:.1f}%")
    escalated = (record.escalation or {}).get("robust_acc", {})
    if WORST_CASE in escalated:
        lines.append(f"  worst case after escalation: {100 * escalated[WORST_CASE]:.1f}%")
    if record.certification:
        lines.append(f"  certified (L2, ε = {record.certification['eps_l2']:g}): "
                     f"{100 * record.certification['certified_acc']:.1f}%")
    violations = {name: check["violations"] for name, check in record.threat_model.items() if check.get("violations")}
    if violations:
        lines.append("  outside the threat model (counted as not broken): "
                     + ", ".join(f"{name} {count}" for name, count in violations.items()))
    for name, check in record.threat_model.items():
        if check.get("changed"):
            lines.append(f"  {name} changed {', '.join(check['changed'])} (undone; the untouched copies were scored)")
    left_out = (record.worst_case or {}).get("left_out")
    if left_out:
        lines.append(f"  not in the worst case (another budget than the dataset's balls): {', '.join(left_out)}")
    for step, error in (record.errors or {}).items():
        lines.append(f"  {step} failed: {error}")
    raised = flags(record.audit or {})
    mark = trust(record.audit or {}, record.escalation or {})
    lines.append("  audit: " + (("flags " + raised if raised else "no flags") + f"; {mark}" if record.audit
                                else "not audited"))
    return "\n".join(lines)


def threat_lines(threats: dict) -> list[str]:
    """Per threat model its accuracy, interval, budget and strongest attack; then the union and the average."""
    if not threats:
        return []
    lines = ["  per threat model (robust to every attack of the norm):"]
    for key, summary in threats.items():
        low, high = summary["interval"]
        if key in (UNION, AVERAGE):
            what = "any attack of any threat model" if key == UNION else "mean of the threat models"
            label = f"{key} ({what})"
        else:
            unit = " pixels" if key == "l0" else ""
            label = f"{NORM_NAMES.get(key, key)} ε = {summary['eps']:g}{unit}, strongest {summary['strongest']}"
        lines.append(f"    {100 * summary['robust_acc']:5.1f}%  [{100 * low:5.1f}, {100 * high:5.1f}]  {label}")
    return lines
