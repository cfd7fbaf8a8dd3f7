"""The two threat models: the L-infinity and L2 balls around an image, in pixel units."""

from __future__ import annotations

import torch

from robustlab.errors import InvalidValue, is_number

_TINY = 1e-12


def _per_example_l2(t: torch.Tensor) -> torch.Tensor:
    """‖t_i‖₂ for each example, shaped to broadcast against `t`."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


class LinfBall:
    name = "linf"
    max_eps = 1.0  # images live in [0, 1]; a larger budget allows any image

    @staticmethod
    def project(delta: torch.Tensor, eps: float) -> torch.Tensor:
        return delta.clamp(-eps, eps)

    @staticmethod
    def random(like: torch.Tensor, eps: float) -> torch.Tensor:
        """A uniform sample from the ball."""
        return torch.empty_like(like).uniform_(-eps, eps)

    @staticmethod
    def ascent_direction(grad: torch.Tensor) -> torch.Tensor:
        """The steepest-ascent direction of unit L∞ norm."""
        return grad.sign()

    @staticmethod
    def size(delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).abs().amax(dim=1)


class L2Ball:
    name = "l2"
    max_eps = float("inf")

    @staticmethod
    def project(delta: torch.Tensor, eps: float) -> torch.Tensor:
        norms = _per_example_l2(delta)
        return delta * (eps / norms.clamp_min(_TINY)).clamp(max=1.0)

    @staticmethod
    def random(like: torch.Tensor, eps: float) -> torch.Tensor:
        """A uniform sample from the ball: a Gaussian direction, radius eps·u^(1/d)."""
        direction = torch.randn_like(like)
        direction = direction / _per_example_l2(direction).clamp_min(_TINY)
        dims = like[0].numel()
        radius = eps * torch.rand(like.shape[0], device=like.device, dtype=like.dtype) ** (1.0 / dims)
        return direction * radius.view(-1, *([1] * (like.dim() - 1)))

    @staticmethod
    def ascent_direction(grad: torch.Tensor) -> torch.Tensor:
        """The steepest-ascent direction of unit L2 norm."""
        return grad / _per_example_l2(grad).clamp_min(_TINY)

    @staticmethod
    def size(delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).norm(p=2, dim=1)


NORMS = {ball.name: ball for ball in (LinfBall, L2Ball)}


def ball(norm: str, eps: float) -> type[LinfBall] | type[L2Ball]:
    """The ball class for `norm`, after checking that `eps` is a budget it admits."""
    if norm not in NORMS:
        raise InvalidValue("norm", norm, f"one of {sorted(NORMS)}")
    chosen = NORMS[norm]
    if not is_number(eps) or not 0 <= eps <= chosen.max_eps:
        upper = "" if chosen.max_eps == float("inf") else f" and ≤ {chosen.max_eps:g}"
        raise InvalidValue("eps", eps, f"a number ≥ 0{upper} (pixel units, images in [0, 1])")
    return chosen


def project_image(x: torch.Tensor, x_adv: torch.Tensor, threat: type[LinfBall] | type[L2Ball], eps: float) -> torch.Tensor:
    """Project `x_adv` onto the ε-ball around `x`, then into [0, 1] (which never leaves the ball)."""
    return (x + threat.project(x_adv - x, eps)).clamp_(0.0, 1.0)
