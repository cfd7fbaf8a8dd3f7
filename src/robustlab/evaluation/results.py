"""What an evaluation measured: per process, its `Share` (each image's correctness per pass, costs, checks),
gathered across DDP processes into test-split order; and the `EvaluationResults` the run's record is made of."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from robustlab.evaluation.passes import Passes
from robustlab.evaluation.record import CLEAN, WITHOUT_EOT, encode_per_image


@dataclass
class EvaluationResults:
    """What the passes measured; `runs.record_run` writes it into the run's record."""

    clean_acc: float
    n_clean: int
    robust_acc: dict[str, float]  # per attack, and the worst case
    robust_acc_without_eot: dict[str, float]
    n_eval: dict[str, int]
    attack_ms_per_image: dict[str, float]
    randomized: bool
    accuracy_draws: int | str  # "exact" for a mixture (Σ α_k·acc_k, no sampling); "vote" for a voting predictor
    defense_metrics: dict[str, dict[str, float]]
    per_example: dict[str, torch.Tensor]  # correctness per evaluated image, in test-split order
    intervals: dict[str, list[float]]  # clean, each attack, worst case: the 95% Wilson interval
    attack_passes_per_image: dict[str, dict[str, float]]  # forward and backward passes per image, per attack
    # Per attack: images outside its threat model (counted as not broken), of which not finite, the largest
    # perturbation of a finite image returned (in its first ball's norm), its configured balls, and what it
    # changed that it may not (`integrity.py`: in how many batches).
    threat_model: dict[str, dict] = field(default_factory=dict)
    # The worst case's threat model (its balls; None: every attack), the attacks it combines, those left out.
    worst_case: dict = field(default_factory=dict)
    # Per norm of the dataset's threat model, the union and the average (`threats.per_threat_model`).
    threats: dict = field(default_factory=dict)
    # With `eval.save_adversarial`: per attack, the scored images and their test-split indices.
    adversarial: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def record_fields(self) -> dict:
        """The fields of the run's record (`RunRecord`) that the evaluation measured; per-image results on the
        first n_eval images, the single-draw passes left out."""
        n_eval = max(self.n_eval.values(), default=0)
        return {"n_eval": n_eval, "n_clean": self.n_clean, "clean_acc": self.clean_acc, "robust_acc": self.robust_acc,
                "randomized": self.randomized, "accuracy_draws": self.accuracy_draws,
                "robust_acc_without_eot": self.robust_acc_without_eot, "defense_metrics": self.defense_metrics,
                "attack_ms_per_image": self.attack_ms_per_image,
                "attack_passes_per_image": self.attack_passes_per_image, "threat_model": self.threat_model,
                "worst_case": self.worst_case, "threats": self.threats, "intervals": self.intervals,
                "per_image": {name: encode_per_image(values[:n_eval]) for name, values in self.per_example.items()
                              if self.n_eval and not name.endswith(WITHOUT_EOT)}}


@dataclass
class Share:
    """What one process measured: per pass, its images' indices and correctness, attack seconds and passes,
    the defense's metrics, and the threat-model check (images outside, largest perturbation)."""

    correct: dict[str, list[tuple[torch.Tensor, torch.Tensor]]]
    seconds: dict[str, float]
    passes: dict[str, Passes]
    defense_metrics: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    outside: dict[str, int] = field(default_factory=dict)
    largest: dict[str, float] = field(default_factory=dict)
    non_finite: dict[str, int] = field(default_factory=dict)  # images returned with a NaN or an infinity
    changed: dict[str, dict[str, int]] = field(default_factory=dict)  # what an attack changed: batches
    adversarial: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)

    @classmethod
    def empty(cls, names: list[str]) -> Share:
        return cls({name: [] for name in [CLEAN, *names]}, {name: 0.0 for name in names},
                   {name: Passes() for name in names})

    def packed(self) -> Share:
        """The same, each pass's batches concatenated (what is sent between processes)."""
        correct = {name: [(torch.cat([i for i, _ in parts]) if parts else torch.zeros(0, dtype=torch.long),
                           torch.cat([c for _, c in parts]) if parts else torch.zeros(0))]
                   for name, parts in self.correct.items()}
        adversarial = {name: [(torch.cat([i for i, _ in parts]), torch.cat([x for _, x in parts]))]
                       for name, parts in self.adversarial.items() if parts}
        return Share(correct, self.seconds, self.passes, self.defense_metrics, self.outside, self.largest,
                     self.non_finite, self.changed, adversarial)

    @staticmethod
    def combined(shares: list[Share]) -> Share:
        """All processes' shares as one, each pass's images in test-split order."""
        first = shares[0]
        correct = {}
        for name in first.correct:
            indices = torch.cat([index for share in shares for index, _ in share.correct[name]])
            values = torch.cat([value for share in shares for _, value in share.correct[name]])
            correct[name] = [(indices.sort().values, values[indices.argsort()])]
        metrics: dict[str, dict[str, list[float]]] = {}
        for share in shares:
            for name, by_key in share.defense_metrics.items():
                for key, numbers in by_key.items():
                    metrics.setdefault(name, {}).setdefault(key, []).extend(numbers)
        return Share(correct, {name: sum(share.seconds[name] for share in shares) for name in first.seconds},
                     {name: Passes(sum(share.passes[name].forward for share in shares),
                                   sum(share.passes[name].backward for share in shares)) for name in first.passes},
                     metrics,
                     {name: sum(share.outside.get(name, 0) for share in shares)
                      for name in {name for share in shares for name in share.outside}},
                     {name: max(share.largest.get(name, 0.0) for share in shares)
                      for name in {name for share in shares for name in share.largest}},
                     {name: sum(share.non_finite.get(name, 0) for share in shares)
                      for name in {name for share in shares for name in share.non_finite}},
                     {name: {what: sum(share.changed.get(name, {}).get(what, 0) for share in shares)
                             for what in {what for share in shares for what in share.changed.get(name, {})}}
                      for name in {name for share in shares for name in share.changed}},
                     {name: [part for share in shares for part in share.adversarial.get(name, [])]
                      for name in {name for share in shares for name in share.adversarial}})

    def count_change(self, name: str, what: str) -> None:
        """One more batch in which attack `name` changed `what` (`integrity.py`; "output": no batch like its input)."""
        counts = self.changed.setdefault(name, {})
        counts[what] = counts.get(what, 0) + 1

    def adversarial_images(self) -> dict[str, dict[str, torch.Tensor]]:
        """A combined share's saved adversarial images per attack, in test-split order, with their indices."""
        found = {}
        for name, parts in self.adversarial.items():
            indices = torch.cat([index for index, _ in parts])
            images = torch.cat([x for _, x in parts])
            order = indices.argsort()
            found[name] = {"index": indices[order], "images": images[order]}
        return found

    def per_image(self, name: str) -> torch.Tensor:
        """A combined share's correctness per image of pass `name`."""
        return self.correct[name][0][1]
