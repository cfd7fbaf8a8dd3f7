"""An attack's cost in model passes: forward and backward passes per image, the same on any machine.

Milliseconds per image depend on the device; passes do not (AttackBench's convention). `counting_passes`
hooks the network that one prediction runs — the predictor, or each member of a finite mixture, which one
prediction runs once per member — and counts the images that go forward through it and the images whose
gradient comes back through its output. An EOT draw is a pass; so is a chunk of a batch.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from robustlab.attacks.expectation import weighted_members


@dataclass
class Passes:
    forward: int = 0  # images passed forward
    backward: int = 0  # images whose gradient was taken back through the network

    def per_image(self, images: int) -> dict[str, float]:
        return {"forward": self.forward / max(images, 1), "backward": self.backward / max(images, 1)}


@contextmanager
def counting_passes(predictor: nn.Module, passes: Passes):
    """Within the block, add every forward and backward pass through `predictor` (its members, for a mixture)
    to `passes`."""
    networks = [member for _, member in weighted_members(predictor) or []] or [predictor]

    def count(module: nn.Module, inputs, output) -> None:
        images = inputs[0].shape[0] if inputs and isinstance(inputs[0], torch.Tensor) else 0
        passes.forward += images
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(lambda grad: _count_backward(passes, images))

    handles = [network.register_forward_hook(count) for network in dict.fromkeys(networks)]
    try:
        yield passes
    finally:
        for handle in handles:
            handle.remove()


def _count_backward(passes: Passes, images: int) -> None:
    passes.backward += images
