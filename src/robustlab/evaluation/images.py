"""Labelled image grids for TensorBoard: clean, adversarial, and the perturbation made visible."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from robustlab.evaluation.plots import plt

DPI = 72  # TensorBoard shows an image at most a card wide (about 320 px): the figure is drawn at that size

UNCHANGED = 1e-6  # a largest perturbation below this is float rounding (one 8-bit grey level is 1/255)


def adversarial_figure(x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, clean_predicted: torch.Tensor,
                       adversarial_predicted: torch.Tensor, title: str, class_names: Sequence[str] | None = None
                       ) -> plt.Figure:
    """One row per image: its true class, then the clean image, the adversarial one (each titled with the
    predicted class, red when wrong; a negative class is an abstention) and the perturbation amplified by one
    factor k for the whole grid (grey is 0), so perturbation sizes compare across images. A grid whose images
    the attack left unchanged (no perturbation above `UNCHANGED`) says so instead of amplifying rounding."""
    x, x_adv = x.detach().float().cpu(), x_adv.detach().float().cpu()
    delta = x_adv - x
    largest = float(delta.abs().max())
    amplification = 0.5 / largest if largest > UNCHANGED else 0.0
    header = f"δ × {amplification:.3g}" if amplification else "δ = 0 (unchanged)"
    columns = [("clean", x, clean_predicted), ("adversarial", x_adv, adversarial_predicted),
               (header, 0.5 + amplification * delta, None)]
    name = (lambda k: "abstain" if k < 0 else class_names[k] if class_names else str(k))
    figure, axes = plt.subplots(len(x), 3, figsize=(4.4, 1.35 * len(x) + 0.7), dpi=DPI, squeeze=False)
    for row in range(len(x)):
        true = int(y[row])
        for column, (header, images, predicted) in enumerate(columns):
            axis = axes[row, column]
            image = images[row].clamp(0, 1).permute(1, 2, 0).numpy()
            axis.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if predicted is not None:
                guess = int(predicted[row])
                axis.set_title(f"→ {name(guess)}", fontsize=10, color="black" if guess == true else "red", pad=2)
            if row == 0:
                axis.set_xlabel(header, fontsize=10)
                axis.xaxis.set_label_position("top")
                axis.xaxis.labelpad = 16
        axes[row, 0].set_ylabel(name(true), fontsize=10)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return figure
