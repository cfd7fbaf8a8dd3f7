"""Each attack's cost in forward and backward passes per image matches a count by hand."""

from __future__ import annotations

import json

import torch
from conftest import TINY, run_script
from torch import nn

from robustlab.attacks import APGD, PGD
from robustlab.attacks.apgd import checkpoints
from robustlab.defenses import MixturePredictor
from robustlab.evaluation.passes import Passes, counting_passes


class Flat(nn.Module):
    """Logits [1, 0] whatever the image, through the image (so autograd runs) with a zero gradient: every
    image stays right, and APGD, whose loss never rises, halves its step at every checkpoint."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        touch = 0.0 * x.flatten(1).sum(dim=1)
        return torch.stack([1.0 + touch, touch], dim=1)


def count(attack, model, x, y) -> dict[str, float]:
    passes = Passes()
    with counting_passes(model, passes):
        attack(model, x, y)
    return passes.per_image(len(x))


def test_pgd_costs_one_forward_and_one_backward_per_step(standard_net, noisy_synthetic):
    x, y = noisy_synthetic.test_set.tensors[0][:10], noisy_synthetic.test_set.tensors[1][:10]
    assert count(PGD(eps=0.1, steps=7, eot_samples=1), standard_net, x, y) == {"forward": 7, "backward": 7}
    # Restarts: 2 × 7 steps, and each restart's end point scored (its loss, then its correctness: 2 forwards).
    assert count(PGD(eps=0.1, steps=7, restarts=2, eot_samples=1), standard_net, x, y) == \
        {"forward": 14 + 4, "backward": 14}
    # Automatic EOT first asks whether the predictor is randomized: 2 forwards of the first 8 images.
    assert count(PGD(eps=0.1, steps=7), standard_net, x, y) == {"forward": 7 + 16 / 10, "backward": 7}


def test_a_mixture_costs_one_pass_per_member(standard_net, noisy_synthetic):
    x, y = noisy_synthetic.test_set.tensors[0][:10], noisy_synthetic.test_set.tensors[1][:10]
    mixture = MixturePredictor([standard_net, standard_net], [0.5, 0.5])
    assert count(PGD(eps=0.1, steps=3, eot_samples=1), mixture, x, y) == {"forward": 6, "backward": 6}


def test_apgd_costs_match_its_schedule():
    """APGD-CE, 20 steps, on `Flat`: its correctness at the start (1 forward), the first gradient (1 + 1), one
    per step (20 + 20) and its final correctness (1 forward). `Flat` makes it restart from its best point at
    every checkpoint, and a restart costs no pass: the loss and gradient there were kept when it was found."""
    x, y = torch.rand(6, 1, 8, 8), torch.zeros(6, dtype=torch.long)
    assert len(checkpoints(20)) > 3
    assert count(APGD(eps=0.1, steps=20, eot_samples=1), Flat(), x, y) == {"forward": 1 + 1 + 20 + 1,
                                                                           "backward": 1 + 20}


def test_every_run_records_its_attacks_passes_per_image(tmp_path):
    result = run_script("train.py", *TINY, "trainer.max_epochs=1", "eval.audit.enabled=false",
                        f"hydra.run.dir={tmp_path}", output_root=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    passes = json.loads((tmp_path / "metrics.json").read_text())["attack_passes_per_image"]
    # 64 images in one batch (eval_batch_size 128): the steps, and the randomness probe (2 × 8 images) once.
    assert passes["fgsm"] == {"forward": 1 + 16 / 64, "backward": 1}
    assert passes["pgd_linf"] == passes["pgd_l2"] == {"forward": 20 + 16 / 64, "backward": 20}
