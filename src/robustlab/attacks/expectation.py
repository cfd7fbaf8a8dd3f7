"""What an attack optimises and what accuracy means when the predictor is randomized.

A deterministic predictor has one output per input. A randomized one (noise injection, a random mixture)
has a distribution of outputs, and both the attack and the accuracy must be taken over that distribution,
never over one lucky draw:

- a *finite mixture* (any module with `weighted_members()`, e.g. `robustlab.defenses.MixturePredictor`) is
  handled exactly: the attack maximises the expected loss Σ α_k·CE(f_k(x), y) and accuracy is
  Σ α_k·1[f_k(x) = y];
- any other randomized predictor is handled by Expectation over Transformation (Athalye et al. 2018): the
  loss, its gradient and the accuracy are averaged over `draws` forward passes;
- a predictor that decides by a vote (any module with `vote(x)`, e.g. `robustlab.models.SmoothedClassifier`)
  is attacked by EOT through its forward pass, and scored by its vote: correct when the vote is the label
  (an abstention is never correct).

`is_randomized` tells the two kinds apart from deterministic predictors by looking at outputs only.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import nn

from robustlab.attacks.losses import cross_entropy
from robustlab.errors import is_integer, require

DEFAULT_EOT_DRAWS = 10


def draws_for(randomized: bool, accuracy_draws: int) -> int:
    """Forward passes an accuracy is averaged over: `accuracy_draws` for a randomized predictor (never one lucky
    draw), one for a deterministic one. Validation and the evaluation both count with it."""
    return accuracy_draws if randomized else 1


def weighted_members(model: nn.Module) -> list[tuple[float, nn.Module]] | None:
    # Looked up on the class: a missing attribute of a module instance costs an exception in
    # `nn.Module.__getattr__`, and attacks ask at every step.
    members = getattr(type(model), "weighted_members", None)
    return members(model) if callable(members) else None


def voting(model: nn.Module):
    """The predictor's deployed decision rule, `vote(x)` → a class per image (−1: abstain), or None."""
    vote = getattr(type(model), "vote", None)
    return vote.__get__(model) if callable(vote) else None


@torch.no_grad()
def is_randomized(model: nn.Module, x: torch.Tensor, probes: int = 8) -> bool:
    """Whether two forward passes on the same (first `probes`) inputs can differ."""
    if weighted_members(model) is not None:
        return True
    probe = x[:probes]
    return not torch.equal(model(probe), model(probe))


@torch.no_grad()
def randomness_per_sample(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the predictor draws its randomness for each image of a batch apart (noise injection, smoothing's
    noise), so that one pass over the batch repeated k times is k independent draws; a predictor drawing once per
    batch (the same noise for every image) answers copies of one image alike. Asked once per predictor."""
    known = _PER_SAMPLE.get(model)
    if known is None:
        # The random streams are left as they were: a result never depends on which batch asked first (DDP).
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            copies = model(x[:1].expand(4, *x.shape[1:]).contiguous())
        known = _PER_SAMPLE[model] = not all(torch.equal(copies[0], copy) for copy in copies[1:])
    return known


_PER_SAMPLE: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()
# At most this many images (draws × batch) in one forward pass of an EOT estimate. On the CPU, a pass larger than
# an attack's cache-sized chunk (256 images) is no faster than its parts (scripts/bench.py, EOT gradient): small
# batches gain, a whole chunk keeps one pass per draw. Elsewhere the cap only bounds memory.
EOT_BATCH_IMAGES = {"cpu": 256}
EOT_BATCH_IMAGES_ELSEWHERE = 4096


def draw_groups(draws: int, x: torch.Tensor) -> list[int]:
    """How many draws each forward pass over the batch `x` takes: as many as fit in the device's cap."""
    cap = EOT_BATCH_IMAGES.get(x.device.type, EOT_BATCH_IMAGES_ELSEWHERE)
    per_pass = max(1, cap // max(len(x), 1))
    return [min(per_pass, draws - start) for start in range(0, draws, per_pass)]


def per_example_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1,
                     loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy) -> torch.Tensor:
    """`loss(logits, y)` per example (cross-entropy by default), in expectation over the predictor's randomness.

    Several draws go through the predictor as one batch (the images repeated) where its randomness is per image
    (`randomness_per_sample`), else one pass per draw; either way `loss` is called once per draw, on that draw's
    logits, so a loss holding per-image tensors (a target, a direction) sees the shapes it expects."""
    members = weighted_members(model)
    if members is not None:
        return torch.stack([weight * loss(member(x), y) for weight, member in members]).sum(dim=0)
    return torch.stack([loss(logits, y) for logits in draw_logits(model, x, draws)]).mean(dim=0)


def draw_logits(model: nn.Module, x: torch.Tensor, draws: int) -> list[torch.Tensor]:
    """The logits of each of `draws` forward passes on `x`: one pass over the batch repeated where the randomness is
    per image (at most `draw_groups` draws a pass), else one pass per draw."""
    if draws == 1:
        return [model(x)]
    groups = draw_groups(draws, x) if randomness_per_sample(model, x) else [1] * draws
    repeated = (x if k == 1 else x.repeat(k, *([1] * (x.dim() - 1))) for k in groups)
    return [logits for batch in repeated for logits in model(batch).split(len(x))]


@torch.no_grad()
def expected_logits(model: nn.Module, x: torch.Tensor, draws: int = 1) -> torch.Tensor:
    """The logits in expectation over the predictor's randomness (a mixture's Σ α_k·f_k(x); else the mean of
    `draws` passes): what a targeted attack ranks the classes by."""
    members = weighted_members(model)
    if members is not None:
        return sum(weight * member(x) for weight, member in members)
    return torch.stack(draw_logits(model, x, draws)).mean(dim=0)


@torch.no_grad()
def expected_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1,
                     by_vote: bool = True) -> torch.Tensor:
    """Per example, the probability (exact, or averaged over `draws`) that the prediction is `y`; for a voting
    predictor, whether its vote is `y` (the vote's own draws replace `draws`), unless `by_vote` is false: then
    the probability that one forward pass is right, as for any randomized predictor."""
    vote = voting(model)
    if vote is not None and by_vote:
        return (vote(x) == y).float()
    members = weighted_members(model)
    if members is not None:
        return sum(weight * (member(x).argmax(1) == y).float() for weight, member in members)
    return torch.stack([(logits.argmax(1) == y).float() for logits in draw_logits(model, x, draws)]).mean(dim=0)


@torch.no_grad()
def predicted_classes(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the predictor answers for each image: its vote if it votes (−1: abstain), else the argmax of one pass."""
    vote = voting(model)
    return vote(x) if vote is not None else model(x).argmax(1)


def check_eot_samples(eot_samples: int | None) -> None:
    """The `eot_samples` argument every attack takes: draws per gradient or score, or None for automatic."""
    require(eot_samples is None or (is_integer(eot_samples) and eot_samples >= 1), "eot_samples", eot_samples,
            "an integer ≥ 1, or null to choose by detecting a randomized predictor")


def eot_draws(eot_samples: int | None, model: nn.Module, x: torch.Tensor) -> int:
    """The draws an attack averages over: `eot_samples` if set, else 10 for a randomized predictor, 1 otherwise."""
    if eot_samples is not None:
        return eot_samples
    return DEFAULT_EOT_DRAWS if is_randomized(model, x) else 1
