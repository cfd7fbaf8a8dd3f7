"""Escalation: a cell whose audit raised a flag is attacked again with that flag's remedy, until its number
can be trusted or says why it cannot.

The remedies run on the evaluation's images (the first `eval.n_samples` test images), on the deployed
predictor, with the settings of `eval.audit.escalation`:

- (e) more steps help: each PGD of the suite again with `steps_factor`× its steps and `restarts` restarts;
- (c) PGD weaker than FGSM: each PGD of the suite started from FGSM's point, with `steps_factor`× its steps
  (never weaker than that FGSM: the worse of the two points is kept per image);
- (g) randomized without EOT: each attack that ran with one draw, again with `eot_samples` draws per gradient;
- (d, f) black box beats white box, zero gradients: each PGD of the suite through the predictor's
  non-differentiable steps' stand-ins (BPDA), where it has any and the evaluation ran without; each PGD on an
  undefended surrogate, its examples scored on the predictor (a transfer attack; `surrogate`, or the newest
  finished `defense=none` training of the same dataset and model in `paths.checkpoint_store`, found by
  `builders.find_surrogate`); and Square under
  each norm with `square_queries_factor`× the audit's queries.

Flags a, b and h have no remedy. Each remedy strengthens one attack of the suite (the PGD of its norm, or the
attack it re-runs): that attack's escalated correctness is, per image, the minimum of its own and its
remedies', and the worst case is recomputed from them. So escalation lowers a number or keeps it, never
raises it, and a remedy attacks only the images its attack left standing: a broken one stays broken. Its
images are checked against that attack's threat model, as the evaluation checks every attack's; one outside
counts as not broken. The trust mark: "trusted" (no flag), "escalated" (every flag had a remedy, and they ran), "still
flagged" (a flag without a remedy). The record keeps the original numbers and, under `escalation`, the
escalated ones, each remedy's accuracy, and the cost (seconds, passes per image).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab.attacks.base import Attack, WorstSoFar, outside_threat_model
from robustlab.attacks.expectation import expected_correct
from robustlab.attacks.pgd import PGD
from robustlab.attacks.square import Square
from robustlab.errors import is_integer, require
from robustlab.evaluation.audit import LETTERS
from robustlab.evaluation.passes import Passes, counting_passes
from robustlab.evaluation.record import (
    CLEAN,
    ESCALATED,
    STILL_FLAGGED,
    WITHOUT_EOT,
    WORST_CASE,
    encode_per_image,
)
from robustlab.models.preprocessing import NonDifferentiable, backward_through_stand_ins

log = logging.getLogger(__name__)


REMEDIED = {LETTERS[name] for name in ("pgd_weaker_than_fgsm", "black_box_beats_white_box", "more_steps_help",
                                       "zero_gradients", "randomized_without_eot")}


def check_settings(settings: Mapping[str, Any] | None) -> None:
    """Refuse bad `eval.audit.escalation.*` values (plain, resolved; None: no escalation) before training."""
    if settings is None:
        return
    key = "eval.audit.escalation"
    require(isinstance(settings["enabled"], bool), f"{key}.enabled", settings["enabled"], "true or false")
    for name in ("steps_factor", "restarts", "eot_samples", "square_queries_factor"):
        value = settings[name]
        require(is_integer(value) and value >= 1, f"{key}.{name}", value, "an integer ≥ 1")
    surrogate = settings["surrogate"]
    require(surrogate is None or Path(str(surrogate)).is_file(), f"{key}.surrogate", surrogate,
            "null (the newest undefended training of this dataset and model), or an existing checkpoint file")


@dataclass
class Remedy:
    """One re-attack: its name, the attack of the suite it strengthens, and how it attacks a batch."""

    name: str
    flag: str
    strengthens: str
    attack: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    threat: Attack  # the suite's attack it strengthens: its images must lie in that attack's threat model
    bpda: bool | None = None  # None: as the evaluation


class FromFGSM(Attack):
    """PGD started from FGSM's point instead of a random one (remedy c); per image, the worse of the two."""

    def __init__(self, pgd: PGD) -> None:
        self.pgd, self.eps, self.norm, self.eot_samples = pgd, pgd.eps, pgd.norm, pgd.eot_samples
        self.fgsm = PGD(norm=pgd.norm, eps=pgd.eps, steps=1, step_size=pgd.eps, random_start=False,
                        eot_samples=pgd.eot_samples)

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
        start = self.fgsm.attack(model, x, y, draws)
        worst = WorstSoFar(start, self.pgd._score(model, start, y, draws))
        end = self.pgd.ascend(model, x, y, start, draws)
        worst.offer(end, self.pgd._score(model, end, y, draws))
        return worst.x


def remedies(flags: str, attacks: Mapping[str, Attack], rebuild: Callable[..., Any], settings: Mapping[str, Any],
             surrogate: nn.Module | None, stand_ins: bool, bpda: bool, square_queries: int) -> list[Remedy]:
    """The re-attacks for the raised `flags` (letters), given the suite's attacks; `rebuild(name, **changes)`:
    the suite's attack `name` built again from its config with `changes` (more steps, restarts); `settings`:
    `eval.audit.escalation`; `stand_ins`: whether the predictor has non-differentiable steps that BPDA can
    differentiate."""
    pgds = {name: attack for name, attack in attacks.items() if isinstance(attack, PGD) and attack.steps > 1}
    steps_factor, eot_samples, queries = (settings[key] for key in ("steps_factor", "eot_samples",
                                                                     "square_queries_factor"))
    found: list[Remedy] = []
    if "e" in flags:
        for name, attack in pgds.items():
            stronger = rebuild(name, steps=attack.steps * steps_factor, restarts=settings["restarts"])
            found.append(Remedy(f"{name}/steps×{steps_factor},restarts={settings['restarts']}", "e", name,
                                stronger, attack))
    if "c" in flags:
        for name, attack in pgds.items():
            longer = rebuild(name, steps=attack.steps * steps_factor)
            found.append(Remedy(f"{name}/from_fgsm", "c", name, FromFGSM(longer), attack))
    if "g" in flags:
        for name, suite_attack in attacks.items():
            if suite_attack.eot_samples == 1:
                found.append(Remedy(f"{name}/eot{eot_samples}", "g", name,
                                    suite_attack.with_eot_samples(eot_samples), suite_attack))
    if "d" in flags or "f" in flags:
        letter = "f" if "f" in flags else "d"
        if stand_ins and not bpda:
            found += [Remedy(f"{name}/bpda", letter, name, attack, attack, bpda=True) for name, attack in pgds.items()]
        if surrogate is not None:
            found += [Remedy(f"{name}/transfer", letter, name, transfer(attack, surrogate), attack)
                      for name, attack in pgds.items()]
        for norm in dict.fromkeys(attack.norm for attack in pgds.values()):
            name = next(name for name, attack in pgds.items() if attack.norm == norm)
            found.append(Remedy(f"square_{norm}/queries={square_queries * queries}", letter, name,
                                Square(eps=pgds[name].eps, norm=norm, queries=square_queries * queries), pgds[name]))
    return found


def has_stand_ins(predictor: nn.Module) -> bool:
    """Whether the predictor has a non-differentiable step with a stand-in (BPDA can differentiate it)."""
    return any(isinstance(module, NonDifferentiable) for module in predictor.modules())


def transfer(attack: Attack, surrogate: nn.Module) -> Callable:
    """The attack's examples crafted on `surrogate`, whatever predictor is passed."""
    return lambda predictor, x, y: attack(surrogate, x, y)


def escalate(predictor: nn.Module, x: torch.Tensor, y: torch.Tensor, draws, per_example: Mapping[str, torch.Tensor],
             flags: str, found: list[Remedy], bpda: bool, batch_size: int,
             budgets: Mapping[str, list[tuple[str, float]]] | None = None, worst_of: list[str] | None = None) -> dict:
    """Run the remedies on (x, y) and return the `escalation` record (module docstring). `budgets`: each suite
    attack's configured balls, which its remedies' images must lie in (default: what the attack declares);
    `worst_of`: the attacks the worst case combines (default: all)."""
    flags = "".join(sorted(flags))
    n = len(y)
    # The suite's passes (the single-draw copies of a randomized predictor's attacks are reported apart, and are
    # not part of its worst case)
    escalated = {name: values[:n].clone() for name, values in per_example.items()
                 if name != WORST_CASE and not name.endswith(WITHOUT_EOT) and len(values) >= n}
    results, started = {}, time.perf_counter()
    for remedy in found:
        torch.manual_seed(0)
        passes, remedy_started, parts, outside = Passes(), time.perf_counter(), [], 0
        # An image the strengthened attack already broke stays broken whatever the remedy does (the minimum):
        # only the images it left standing are attacked again.
        standing = (escalated[remedy.strengthens] > 0).nonzero().flatten()
        for start in range(0, len(standing), batch_size):
            index = standing[start:start + batch_size].to(x.device)
            xb, yb = x[index], y[index]
            through = bpda if remedy.bpda is None else remedy.bpda
            with torch.enable_grad(), backward_through_stand_ins(predictor, through), \
                    counting_passes(predictor, passes):
                x_adv = remedy.attack(predictor, xb, yb)
            balls = (budgets or {}).get(remedy.strengthens, remedy.threat.balls())
            bad, _ = outside_threat_model(balls, xb, x_adv)  # counts as not broken, as in the evaluation
            outside += int(bad.sum())
            x_adv = torch.where(bad.view(-1, *([1] * (xb.dim() - 1))), xb, x_adv)
            parts.append(expected_correct(predictor, x_adv, yb, draws).cpu())
        correct = torch.cat(parts) if parts else torch.zeros(0)
        before = float(escalated[remedy.strengthens].double().mean())
        column = escalated[remedy.strengthens].clone()
        column[standing] = torch.minimum(column[standing], correct.to(column.dtype))
        escalated[remedy.strengthens] = column
        results[remedy.name] = {"flag": remedy.flag, "strengthens": remedy.strengthens,
                                "attacked": len(standing), "threat_model_violations": outside,
                                "accuracy": float(correct.double().mean()) if len(standing) else 0.0,
                                "before": before, "after": float(column.double().mean()),
                                "seconds": time.perf_counter() - remedy_started, **passes.per_image(n)}
        log.info(f"escalation ({remedy.flag}): {remedy.name}: accuracy {results[remedy.name]['accuracy']:.3f} on the "
                 f"{len(standing)} image(s) {remedy.strengthens} left standing; "
                 f"{remedy.strengthens} {before:.3f} → {results[remedy.name]['after']:.3f}")
    attacked = [name for name in escalated if name != CLEAN]
    combined = [name for name in attacked if worst_of is None or name in worst_of]
    worst = torch.stack([escalated[name] for name in [CLEAN, *combined]]).min(dim=0).values
    without_remedy = "".join(letter for letter in flags if letter not in REMEDIED)
    trust = STILL_FLAGGED if without_remedy else ESCALATED
    return {"trust": trust, "flags": flags, "without_remedy": without_remedy,
            "robust_acc": {**{name: float(escalated[name].double().mean()) for name in attacked},
                           WORST_CASE: float(worst.double().mean())},
            "per_image": {**{name: encode_per_image(escalated[name]) for name in attacked},
                          WORST_CASE: encode_per_image(worst)},
            "remedies": results, "n_eval": n, "seconds": time.perf_counter() - started}
