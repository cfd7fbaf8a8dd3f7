"""The two threat models: the L-infinity and L2 balls around an image, in pixel units."""

from __future__ import annotations

from collections.abc import Callable

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
        """A uniform sample from the ball, on a grid of 2¹⁶ levels per pixel: four pixels from each 64 random bits
        of the generator. On the CPU, `uniform_` spends one draw per pixel and costs about a tenth of a small
        model's adversarial-training step."""
        count = like.numel()
        bits = torch.empty((count + 3) // 4, dtype=torch.int64, device=like.device).random_(-2 ** 63, 2 ** 63 - 1)
        levels = bits.view(torch.int16)[:count].view(like.shape).to(like.dtype)  # uniform on [-2¹⁵, 2¹⁵)
        return levels.mul_(eps / 32768.0)

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


def project_image(x: torch.Tensor, x_adv: torch.Tensor, threat: type[LinfBall] | type[L2Ball],
                  eps: float) -> torch.Tensor:
    """Project `x_adv` onto the ε-ball around `x`, then into [0, 1] (which never leaves the ball)."""
    return (x + threat.project(x_adv - x, eps)).clamp_(0.0, 1.0)


def image_projector(x: torch.Tensor, threat: type[LinfBall] | type[L2Ball], eps: float
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    """`project_image(x, ·, threat, eps)` for an attack's many steps around the same `x`. Under L∞ the ball
    and [0, 1] are both boxes, so their intersection's bounds are computed once and each step is one clamp."""
    if threat is LinfBall:
        low, high = (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)
        return lambda x_adv: torch.clamp(x_adv, low, high)
    return lambda x_adv: project_image(x, x_adv, threat, eps)
