"""The evaluation: which passes run on which images, per-image correctness, the worst case, the results.

`Evaluation` owns everything about attacking a trained predictor on the test split: the passes (clean, one
per attack, and the labelled single-draw copies on a randomized predictor), their loaders and loop, the
seeding that makes sharded runs agree, the per-image accumulation across DDP processes, and the worst case.
It takes a model and its defense, plain modules; in one process it loops over the batches itself. Only under
DDP does Lightning run the loop, to start and join the processes (`ShardedEvaluation`, which hands each
batch back to `step`).
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from robustlab.attacks.base import Attack, outside_threat_model, within_balls
from robustlab.attacks.expectation import (
    draws_for,
    expected_correct,
    is_randomized,
    predicted_classes,
    voting,
    weighted_members,
)
from robustlab.data.base import InMemoryImageDataModule
from robustlab.defenses.base import Defense, evaluation_mode
from robustlab.errors import require
from robustlab.evaluation.images import adversarial_figure
from robustlab.evaluation.integrity import ModelState, batch_changed
from robustlab.evaluation.passes import counting_passes
from robustlab.evaluation.progress import PassBar
from robustlab.evaluation.record import CLEAN, WITHOUT_EOT, WORST_CASE
from robustlab.evaluation.results import EvaluationResults, Share
from robustlab.evaluation.runtime import Runtime
from robustlab.evaluation.sharded import ShardedEvaluation
from robustlab.evaluation.statistics import wilson_interval
from robustlab.evaluation.tensorboard import VISUAL
from robustlab.evaluation.threats import NORM_NAMES, per_threat_model
from robustlab.models.preprocessing import backward_through_stand_ins

log = logging.getLogger(__name__)


class Evaluation:
    """Pass 0 is clean accuracy on the whole test split; pass k ≥ 1 runs the k-th attack on the first `n_eval`
    test images (all with -1), differentiating preprocessing steps through their stand-ins (BPDA) unless
    `bpda` is false. A randomized predictor's accuracy is averaged over `accuracy_draws` draws
    (exact for a mixture), and its attacks use EOT unless their config says otherwise. The attacks named in
    `compare_without_eot` (True: every attack; False or []: none) that would use EOT run again with one draw
    per gradient, reported apart (`robust_acc_without_eot`), never as the robust accuracy.

    What an attack returns is checked against `budgets` (each attack's configured balls, frozen here; default:
    what the attack declares now), measured from the engine's own copy of the clean images; the attack gets
    copies of the batch, and whatever it changes in them or in the model is named and undone before scoring
    (`integrity.py`). The worst case combines the attacks whose balls lie inside `threat_model` (the dataset's
    balls; None: every attack); the others are reported in their own columns only.
    """

    def __init__(self, attacks: Mapping[str, Attack], n_eval: int = 1000, image_grid: int = 8,
                 accuracy_draws: int = 10, compare_without_eot: bool | Sequence[str] = True,
                 class_names: list[str] | None = None, bpda: bool = True,
                 mixture_attacks: Mapping[str, Attack] | None = None,
                 budgets: Mapping[str, list[tuple[str, float]]] | None = None,
                 threat_model: list[tuple[str, float]] | None = None, save_adversarial: bool = False) -> None:
        require(isinstance(n_eval, int) and (n_eval >= 1 or n_eval == -1), "eval.n_samples", n_eval,
                "an integer ≥ 1, or -1 for the whole test split")
        self.suite = dict(attacks)
        self.mixture_attacks = dict(mixture_attacks or {})  # added when the predictor is a finite mixture (ARC)
        given = dict(budgets or {})
        self.budgets = {name: [(str(norm), float(eps)) for norm, eps in given.get(name, attack.balls())]
                        for name, attack in {**self.suite, **self.mixture_attacks}.items()}
        self.threat_model = None if threat_model is None else [(str(n), float(e)) for n, e in threat_model]
        self.save_adversarial = save_adversarial
        self.attacks = dict(self.suite)  # what `plan` decides runs: the suite, plus the mixture attacks
        self.n_eval, self.image_grid, self.class_names = n_eval, image_grid, class_names
        self.accuracy_draws = accuracy_draws
        require(isinstance(compare_without_eot, bool) or (not isinstance(compare_without_eot, str) and all(
            isinstance(name, str) for name in compare_without_eot)), "eval.compare_without_eot", compare_without_eot,
            "a list of attack names (e.g. [pgd_linf, pgd_l2]), true for every attack, or false for none")
        self.compare_without_eot: bool | frozenset[str] = (compare_without_eot if isinstance(compare_without_eot, bool)
                                                           else frozenset(compare_without_eot))
        require(isinstance(bpda, bool), "eval.bpda", bpda, "true or false")
        self.bpda = bpda  # attacks differentiate preprocessing steps through their stand-ins
        self.randomized = self.exact = False  # exact: a finite mixture, accuracy Σ α_k·acc_k without sampling
        self.votes = False  # the predictor decides by a vote (randomized smoothing): accuracy is its vote's
        self.passes: dict[str, Attack] = dict(self.attacks)
        self.data: Any = None  # the datamodule whose test split is evaluated
        self.image_step = 0
        self.share = Share.empty([])
        self.runtime = Runtime()  # where `run` evaluates: a single CPU process unless told otherwise
        self.bar: PassBar | None = None
        self.results: EvaluationResults | None = None

    # -- planning ---------------------------------------------------------------------------------
    def draws(self) -> int:
        """Forward passes that accuracy is averaged over (`expectation.draws_for`)."""
        return draws_for(self.randomized, self.accuracy_draws)

    def plan(self, predictor: nn.Module, probe: torch.Tensor) -> None:
        """Detect whether `predictor` is randomized (on a few test images) and fix the passes."""
        with evaluation_mode(predictor):
            self.randomized = is_randomized(predictor, probe)
        self.exact = weighted_members(predictor) is not None
        self.votes = voting(predictor) is not None
        self.attacks = {**self.suite, **(self.mixture_attacks if self.exact else {})}
        self.passes = dict(self.attacks)
        if self.randomized and not self.exact:
            for name, attack in self.attacks.items():
                if attack.eot_samples is None and self.compared_without_eot(name):  # EOT chosen automatically
                    self.passes[name + WITHOUT_EOT] = attack.with_eot_samples(1)

    def compared_without_eot(self, name: str) -> bool:
        """Whether attack `name` also runs with one draw on a randomized predictor (`compare_without_eot`)."""
        if isinstance(self.compare_without_eot, bool):
            return self.compare_without_eot
        return name in self.compare_without_eot

    def budget(self, name: str) -> list[tuple[str, float]]:
        """The balls pass `name`'s images must lie in: its attack's configured budget (a single-draw copy's is
        its attack's)."""
        return self.budgets[name.removesuffix(WITHOUT_EOT)]

    def in_worst_case(self, name: str) -> bool:
        """Whether attack `name`'s budget lies inside the worst case's threat model (every ball of it inside one of
        `threat_model`'s; an unbounded attack never does)."""
        if self.threat_model is None:
            return True
        return bool(self.budget(name)) and all(within_balls(ball, self.threat_model) for ball in self.budget(name))

    def pass_name(self, dataloader_idx: int) -> str:
        return CLEAN if dataloader_idx == 0 else list(self.passes)[dataloader_idx - 1]

    def running_accuracy(self, name: str) -> float | None:
        """The pass's accuracy on the images this process has evaluated so far (None before any)."""
        parts = [correct for _, correct in self.share.correct[name]]
        seen = sum(len(correct) for correct in parts)
        return float(sum(correct.sum() for correct in parts)) / seen if seen else None

    def loaders(self, rank: int, world_size: int, device: torch.device) -> list:
        """Loaders in pass order: the whole test split, then the first `n_eval` images once per attack pass,
        process `rank`'s share of their batches (`InMemoryImageDataModule.test_dataloader(indexed=True)`), the
        split resident on `device` where the dataset keeps it there."""
        limit = None if self.n_eval == -1 else self.n_eval
        shard = (rank, world_size)
        return [self.data.test_dataloader(indexed=True, shard=shard, device=device)] + \
            [self.data.test_dataloader(limit, indexed=True, shard=shard, device=device) for _ in self.passes]

    def run(self, model: nn.Module, defense: Defense, datamodule: InMemoryImageDataModule,
            runtime: Runtime | None = None,
            step: int = 0) -> EvaluationResults:
        """Plan on the first test images, then run the passes on `defense.wrap(model)` as it is (in eval mode,
        on the runtime's device and precision).

        `step`: where TensorBoard shows the adversarial images (the last training step, with the final numbers).
        """
        runtime = runtime or Runtime()
        datamodule.setup("test")
        available = len(datamodule.split("test"))
        if self.n_eval > available:
            log.info(f"evaluation: eval.n_samples={self.n_eval} but the test split has {available} images: "
                     f"attacking all {available}")
        self.model, self.defense, self.runtime = model, defense, runtime
        self.data, self.image_step = datamodule, step
        if runtime.trainer is not None:
            runtime.trainer.test(ShardedEvaluation(self), verbose=False)
            return self.finished()
        model.to(runtime.device), defense.to(runtime.device)
        predictor = defense.wrap(model)
        self.plan(predictor, datamodule.split("test").tensors[0][:8].to(runtime.device))
        with evaluation_mode(model, defense), torch.no_grad():
            self.start()
            for name, loader in zip([CLEAN, *self.passes], self.loaders(0, 1, runtime.device)):
                for batch_idx, (x, y, index) in enumerate(loader):
                    self.step((x.to(runtime.device), y.to(runtime.device), index), batch_idx, name, len(loader))
            self.finish()
        return self.finished()

    def finished(self) -> EvaluationResults:
        if self.results is None:
            raise RuntimeError("the evaluation's passes ended without results (finish was not called)")
        return self.results

    # -- the passes, batch by batch ---------------------------------------------------------------
    def start(self) -> None:
        self.bar = None
        self.share = Share.empty(list(self.passes))
        self.results = None
        self.seed = torch.initial_seed()  # the run's seed (pl.seed_everything), the same in every process

    def step(self, batch, batch_idx: int, name: str, batches: int) -> None:
        """Attack one batch (of `batches`) of pass `name` (none for the clean pass) and keep each image's
        correctness."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError("attacks need gradients: build the Trainer with inference_mode=False "
                               "(trainer.inference_mode=false)")
        x, y, index = batch
        bar = self._new_bar(name, batches) if batch_idx == 0 or self.bar is None else self.bar
        # The randomness of a batch (random starts, EOT and accuracy draws) depends on the run's seed, the pass
        # and the batch's first image only: the same numbers on one device or sharded over several processes.
        torch.manual_seed(zlib.crc32(f"{self.seed}/{name}/{int(index[0])}".encode()))
        predictor = self.defense.wrap(self.model)
        x_eval = x
        with self.runtime.autocast():
            if name != CLEAN:
                attack = self.passes[name]
                attack.progress = lambda fraction: bar.attack_progress(batch_idx, fraction)
                # The attack works on copies: `x` and `y`, the model's state, are what is scored.
                given_x, given_y, before = x.clone(), y.clone(), ModelState.of(predictor)
                started = time.perf_counter()
                try:
                    with torch.enable_grad(), backward_through_stand_ins(predictor, self.bpda), \
                            counting_passes(predictor, self.share.passes[name]):
                        x_eval = attack(predictor, given_x, given_y)
                finally:
                    attack.progress = None
                if x.is_cuda:
                    torch.cuda.synchronize(x.device)
                self.share.seconds[name] += time.perf_counter() - started
                self._undo_changes(name, predictor, before, {"input": batch_changed(given_x, x),
                                                             "labels": batch_changed(given_y, y)})
                x_eval = self._within_threat_model(name, x, x_eval)
                if self.save_adversarial and not name.endswith(WITHOUT_EOT):
                    self.share.adversarial.setdefault(name, []).append((index.cpu(), x_eval.detach().cpu()))
                for key, values in self.defense.test_metrics(self.model, x, x_eval).items():
                    self.share.defense_metrics.setdefault(name, {}).setdefault(key, []).extend(values.tolist())
            correct = expected_correct(predictor, x_eval, y, self.draws()).cpu()
            self.share.correct[name].append((index.cpu(), correct))
            if batch_idx == 0 and name != CLEAN and self.image_grid > 0:
                self._log_examples(name, predictor, x[:self.image_grid], x_eval[:self.image_grid],
                                   y[:self.image_grid])
        bar.batch_done(batch_idx, self.running_accuracy(name))

    def _new_bar(self, name: str, batches: int) -> PassBar:
        if self.bar is not None:
            self.bar.close()
        self.bar = PassBar(name, batches, enabled=self.runtime.progress and self.runtime.rank == 0)
        return self.bar

    def _undo_changes(self, name: str, predictor: nn.Module, before: ModelState, batch: dict[str, bool]) -> None:
        """Name what the attack changed (the copies of the batch it was given, the model's parameters, buffers,
        modes, hooks, gradients) under `threat_model.<name>.changed`, counted in batches, and put the model back."""
        in_model = before.changes(predictor)
        if in_model:
            before.restore(predictor)
        for what in [what for what, happened in batch.items() if happened] + in_model:
            self.share.count_change(name, what)

    def _within_threat_model(self, name: str, x: torch.Tensor, x_adv: Any) -> torch.Tensor:
        """The attack's images, each one outside its threat model (`attacks.base.outside_threat_model` against the
        pass's configured balls, from the clean images `x`: not finite, outside [0, 1] or outside the ε-ball)
        replaced by the clean image: it counts as not broken, and is counted under `threat_model`. An output
        that is no batch of images like `x` (another shape, or not a tensor) counts wholly so, and is named
        (`changed.output`); one of another dtype or device is checked as `x`'s."""
        share = self.share
        if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
            share.outside[name] = share.outside.get(name, 0) + len(x)
            share.count_change(name, "output")
            return x
        if x_adv.dtype != x.dtype or x_adv.device != x.device:
            share.count_change(name, "output")
            x_adv = x_adv.detach().to(device=x.device, dtype=x.dtype)
        bad, sizes = outside_threat_model(self.budget(name), x, x_adv)
        finite_images = torch.isfinite(x_adv.flatten(1)).all(dim=1)
        share.non_finite[name] = share.non_finite.get(name, 0) + int((~finite_images).sum())
        measured = sizes[finite_images & torch.isfinite(sizes)]
        if len(measured):
            share.largest[name] = max(share.largest.get(name, 0.0), float(measured.max()))
        share.outside[name] = share.outside.get(name, 0) + int(bad.sum())
        if not bad.any():
            return x_adv
        return torch.where(bad.view(-1, *([1] * (x.dim() - 1))), x, x_adv)

    def _log_examples(self, name: str, predictor: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                      y: torch.Tensor) -> None:
        """The pass's first images, labelled (rows, ε, true → predicted), in TensorBoard's Images tab."""
        experiment = next((logger.experiment for logger in self.runtime.loggers
                           if hasattr(getattr(logger, "experiment", None), "add_figure")), None)
        if experiment is None:
            return
        clean, adversarial = predicted_classes(predictor, x).cpu(), predicted_classes(predictor, x_adv).cpu()
        attack = self.passes[name]
        figure = adversarial_figure(x, x_adv, y.cpu(), clean, adversarial, class_names=self.class_names,
                                    title=f"{name}: {NORM_NAMES.get(attack.norm, attack.norm)} "
                                    + ("unbounded" if attack.eps is None else f"ε = {attack.eps:g}"))
        experiment.add_figure(f"{VISUAL}/adversarial_examples/{name}", figure, self.image_step)

    def finish(self) -> None:
        """Gather every process's share, in test-split order, and compute the results (worst case included)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        shares = [self.share.packed()]
        if torch.distributed.is_available() and torch.distributed.is_initialized() and self.runtime.world_size > 1:
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, shares[0])
            shares = gathered
        share = Share.combined(shares)
        per_example = {name: share.per_image(name) for name in share.correct}
        accuracy = {name: float(values.double().mean()) if len(values) else 0.0 for name, values in per_example.items()}
        counts = {name: len(values) for name, values in per_example.items()}
        covered = [name for name in self.attacks if self.in_worst_case(name)]
        if self.attacks:
            # Per example, robust only if robust to every attack of the threat model (and classified right to begin
            # with): the worst case over those attacks, at most each one's accuracy on every single image.
            columns = [per_example[name] for name in covered]
            n = min((len(per_example[name]) for name in self.attacks), default=0)
            worst = torch.stack([per_example[CLEAN][:n], *(column[:n] for column in columns)]).min(dim=0).values
            per_example[WORST_CASE] = worst
            accuracy[WORST_CASE], counts[WORST_CASE] = float(worst.double().mean()) if n else 0.0, n
        norm_columns, threats = per_threat_model(per_example, {name: self.budget(name) for name in covered},
                                            self.threat_model or [], counts.get(WORST_CASE, 0))
        reported = [CLEAN, *self.attacks, *([WORST_CASE] if self.attacks else [])]
        self.results = EvaluationResults(
            clean_acc=accuracy[CLEAN],
            n_clean=counts[CLEAN],
            robust_acc={name: accuracy[name] for name in reported[1:]},
            robust_acc_without_eot={name.removesuffix(WITHOUT_EOT): accuracy[name] for name in self.passes
                                    if name.endswith(WITHOUT_EOT)},
            n_eval={name: counts[name] for name in self.attacks},
            attack_ms_per_image={name: 1000.0 * share.seconds[name] / max(counts[name], 1) for name in self.attacks},
            attack_passes_per_image={name: share.passes[name].per_image(counts[name]) for name in self.attacks},
            randomized=self.randomized,
            accuracy_draws="exact" if self.exact else "vote" if self.votes else self.draws(),
            defense_metrics={name: {key: sum(values) / len(values) for key, values in metrics.items()}
                             for name, metrics in share.defense_metrics.items()},
            per_example={**per_example, **norm_columns},
            threats=threats,
            intervals={name: list(wilson_interval(accuracy[name], counts[name])) for name in reported},
            threat_model={name: {"violations": share.outside.get(name, 0),
                                 "non_finite": share.non_finite.get(name, 0),
                                 "largest_perturbation": share.largest.get(name, 0.0),
                                 "balls": [list(ball) for ball in self.budget(name)],
                                 "in_worst_case": name in covered,
                                 **({"changed": share.changed[name]} if share.changed.get(name) else {})}
                          for name in self.attacks},
            worst_case={"balls": None if self.threat_model is None else [list(ball) for ball in self.threat_model],
                        "attacks": covered, "left_out": [name for name in self.attacks if name not in covered]},
            adversarial=share.adversarial_images(),
        )
        for name, changed in share.changed.items():
            what = ", ".join(f"{kind} in {count} batch(es)" for kind, count in changed.items())
            log.warning(f"attack {name} changed what it may not ({what}); the evaluation scored the untouched copies")
        if self.results.worst_case["left_out"]:
            log.warning(f"worst case: over the attacks inside {self.threat_model}; left out, in their own columns "
                        f"only: {', '.join(self.results.worst_case['left_out'])}")
        for name, check in self.results.threat_model.items():
            if check["violations"]:
                log.warning(f"threat model: attack {name} returned {check['violations']} of {counts[name]} images "
                            f"outside its threat model {check['balls'] or 'finite, in [0, 1]'} (largest perturbation "
                            f"{check['largest_perturbation']:.4g}); they count as not broken")
