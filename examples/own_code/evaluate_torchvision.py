"""Evaluate a torchvision-built network through robustlab's Python API: no config files, no training loop.

    python evaluate_torchvision.py [weights.pt] [evaluate.py overrides ...]

Builds torchvision's ResNet-18 for Fashion-MNIST's 1×28×28 images (its normalization as the first layer, so it
takes [0, 1] images), loads a state_dict if one is given, and prints the record's numbers. Any further argument
is an `evaluate.py` override (e.g. eval.n_samples=1000).
"""

import sys

import torch
import torchvision
from torch import nn

import robustlab
from robustlab.evaluation.audit import flags


class FashionResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=10)
        self.net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)  # grey images

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 0.2860) / 0.3530)


arguments = sys.argv[1:]
model = FashionResNet()
if arguments and arguments[0].endswith(".pt"):
    model.load_state_dict(torch.load(arguments.pop(0), weights_only=True))
record = robustlab.evaluate_model(model, dataset="fashion_mnist", attack="apgd_ce",
                                  overrides=["eval=quick", "eval.n_samples=100", "logger=none", *arguments],
                                  output_dir="outputs/api/resnet18", name="resnet18")
low, high = record.intervals["worst_case"]
print(f"clean {record.clean_acc:.3f}; worst case {record.robust_acc['worst_case']:.3f} [{low:.3f}, {high:.3f}] on "
      f"{record.n_eval} images; audit flags: {flags(record.audit) or 'none'}; "
      f"outside the threat model: {sum(c['violations'] for c in record.threat_model.values())}")
