"""A denoiser in front of the classifier, trained on adversarial → clean pairs (e.g. Liao et al. 2018, with DnCNN)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.defenses.base import Defense, Stage, TrainingLoss, check_epochs, check_selection_metric, evaluation_mode
from robustlab.errors import require


def psnr(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB, for images in [0, 1] (capped at 100 dB for identical ones)."""
    mse = (image - reference).flatten(1).pow(2).mean(dim=1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).clamp(max=100.0)


class DenoiserDefense(Defense):
    """Two stages, each a Lightning fit:

    1. `classifier` — the classifier is trained with cross-entropy on clean images (or loaded from
       `classifier_checkpoint`, a robustlab checkpoint of the same model);
    2. `denoiser` — the classifier is frozen (eval mode, out of the optimizer) and `denoiser` learns to map
       `attack`'s adversarial examples against it back to the clean images (mean squared error).

    The deployed predictor is `denoiser → classifier`; attacks differentiate through both. The denoiser's
    loss is reconstruction of attacks on the frozen classifier (Liao et al. 2018), not the deployed predictor's.
    """

    def __init__(self, denoiser: nn.Module, attack: Callable, classifier_epochs: int | None = None,
                 denoiser_epochs: int | None = None, classifier_checkpoint: str | None = None,
                 selection_metric: str = "val/robust_acc") -> None:
        super().__init__()
        self.selection_metric = check_selection_metric(selection_metric)
        require(callable(attack), "attack", attack, "an attack config (an option of conf/attack)")
        self.attack = attack
        check_epochs(classifier_epochs=classifier_epochs, denoiser_epochs=denoiser_epochs)
        require(isinstance(denoiser, nn.Module), "denoiser", denoiser, "a model config (e.g. robustlab.models.DnCNN)")
        require(classifier_checkpoint is None or Path(str(classifier_checkpoint)).is_file(), "classifier_checkpoint",
                classifier_checkpoint, "the path of an existing robustlab checkpoint, or null to train the classifier")
        self.denoiser = denoiser
        self.classifier_epochs = classifier_epochs
        self.denoiser_epochs = denoiser_epochs
        self.classifier_checkpoint = classifier_checkpoint

    def stages(self) -> list[Stage]:
        return [Stage("classifier", self.classifier_epochs, "val/acc", self.classifier_checkpoint),
                Stage("denoiser", self.denoiser_epochs, self.selection_metric)]

    def trainable_parameters(self, model: nn.Module) -> Iterator[nn.Parameter]:
        yield from (model if self.stage == 0 else self.denoiser).parameters()

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> TrainingLoss:
        if self.stage == 0:
            logits = model(x)
            return TrainingLoss(F.cross_entropy(logits, y), logits)
        with evaluation_mode(model):
            x_adv = self.attack(model, x, y)
            denoised = self.denoiser(x_adv)
            with torch.no_grad():
                logits = model(denoised)
        return TrainingLoss(F.mse_loss(denoised, x), logits)

    def wrap(self, model: nn.Module) -> nn.Module:
        return model if self.stage == 0 else nn.Sequential(self.denoiser, model)

    def test_metrics(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            denoised = self.denoiser(x_adv)
        return {"psnr_adversarial": psnr(x_adv, x), "psnr_denoised": psnr(denoised, x)}
