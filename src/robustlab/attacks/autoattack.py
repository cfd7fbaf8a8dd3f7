"""AutoAttack (Croce & Hein 2020): the parameter-free ensemble reviewers ask for, as a per-example cascade.

- `standard`, for a deterministic predictor: APGD-CE → APGD-T (9 targets) → FAB-T (9 targets) → Square
  (5000 queries), 100 iterations each, every attack only on the points that the earlier ones left standing;
- `rand`, for a randomized predictor: APGD-CE → APGD-DLR, each averaging 20 draws per gradient (EOT); a
  finite mixture's expectation is exact instead.

`version: auto` picks `rand` when the predictor is randomized (`expectation.is_randomized`), else `standard`.

Under L1 ("Mind the box", Croce & Hein 2021), `standard` is composed as the reference's `set_version` does: APGD-CE
with 5 restarts and APGD-T with 5 targets, both with `large_reps` (budgets 3ε, 2ε, ε), then FAB-T (9 targets) and
Square under L1 (5000 queries).
"""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks.apgd import APGD
from robustlab.attacks.base import Attack
from robustlab.attacks.cascade import WorstCase
from robustlab.attacks.expectation import check_eot_samples, is_randomized
from robustlab.attacks.fab import FAB
from robustlab.attacks.norms import ball
from robustlab.attacks.square import Square
from robustlab.errors import is_integer, require

VERSIONS = ("auto", "standard", "rand")
RAND_EOT_DRAWS = 20  # AutoAttack's `rand` version


class AutoAttack(Attack):
    """The `standard` or `rand` cascade at budget `eps` under `norm` (`version`: auto, standard or rand).

    `steps`: iterations of each gradient attack (100 in AutoAttack); `square_queries`: Square's budget (5000);
    `eot_samples`: None keeps each version's own (1 for standard, 20 for rand); a number sets every attack's.
    """

    def __init__(self, eps: float, norm: str = "linf", version: str = "auto", steps: int = 100,
                 square_queries: int = 5000, eot_samples: int | None = None) -> None:
        ball(norm, eps, ("linf", "l2", "l1"))
        require(version in VERSIONS, "version", version, f"one of {', '.join(VERSIONS)}")
        require(is_integer(steps) and steps >= 1, "steps", steps, "an integer ≥ 1")
        require(is_integer(square_queries) and square_queries >= 1, "square_queries", square_queries, "an integer ≥ 1")
        check_eot_samples(eot_samples)
        self.eps, self.norm, self.version, self.steps = float(eps), norm, version, steps
        self.square_queries, self.eot_samples = square_queries, eot_samples
        self.cascades = {"standard": self._standard(), "rand": self._rand()}

    def _standard(self) -> WorstCase:
        draws = self.eot_samples
        if self.norm == "l1":
            return WorstCase({
                "apgd_ce": APGD(self.eps, self.norm, loss="ce", steps=self.steps, restarts=5, large_reps=True,
                                eot_samples=draws),
                "apgd_t": APGD(self.eps, self.norm, loss="dlr", steps=self.steps, targets=5, large_reps=True,
                               eot_samples=draws),
                "fab_t": FAB(self.eps, self.norm, steps=self.steps, targets=9, eot_samples=draws),
                "square": Square(self.eps, self.norm, queries=self.square_queries, eot_samples=draws)})
        return WorstCase({
            "apgd_ce": APGD(self.eps, self.norm, loss="ce", steps=self.steps, eot_samples=draws),
            "apgd_t": APGD(self.eps, self.norm, loss="dlr", steps=self.steps, targets=9, eot_samples=draws),
            "fab_t": FAB(self.eps, self.norm, steps=self.steps, targets=9, eot_samples=draws),
            "square": Square(self.eps, self.norm, queries=self.square_queries, eot_samples=draws)})

    def _rand(self) -> WorstCase:
        draws = RAND_EOT_DRAWS if self.eot_samples is None else self.eot_samples
        return WorstCase({
            "apgd_ce": APGD(self.eps, self.norm, loss="ce", steps=self.steps, eot_samples=draws),
            "apgd_dlr": APGD(self.eps, self.norm, loss="dlr", steps=self.steps, eot_samples=draws)})

    def chosen(self, model: nn.Module, x: torch.Tensor) -> str:
        """The version run on this predictor."""
        if self.version != "auto":
            return self.version
        return "rand" if is_randomized(model, x) else "standard"

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        if self.does_nothing():
            return x.clone()
        cascade = self.cascades[self.chosen(model, x)]
        cascade.progress = self.progress  # the cascade's attacks chunk and report progress themselves
        try:
            return cascade(model, x, y)
        finally:
            cascade.progress = None

    def with_eot_samples(self, eot_samples: int | None) -> AutoAttack:
        return AutoAttack(self.eps, self.norm, self.version, self.steps, self.square_queries, eot_samples)

    def __repr__(self) -> str:
        return (f"AutoAttack(version={self.version}, norm={self.norm}, eps={self.eps:g}, steps={self.steps}, "
                f"square_queries={self.square_queries}, eot_samples={self.eot_samples})")
