"""The threat models: the L∞, L2, L1 and L0 balls around an image, in pixel units, each intersected with [0, 1].

- L∞ and L2: the dense balls (Madry et al. 2018).
- L1: the sparse ball of "Mind the box" (Croce & Hein 2021): its projection is onto the L1 ball *intersected* with
  the [0, 1] box, exactly (projecting onto the ball, then clipping, leaves part of the budget unused).
- L0: at most ε pixels changed, each to any value in [0, 1]; a pixel is all its channels (Croce & Hein 2019,
  Croce et al. 2022). ε is a count of pixels.
"""


from __future__ import annotations

from collections.abc import Callable

import torch

from robustlab.errors import InvalidValue, is_number

_TINY = 1e-12


def _per_example_l2(t: torch.Tensor) -> torch.Tensor:
    """‖t_i‖₂ for each example, shaped to broadcast against `t`."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


class Ball:
    """What every ball provides: `project` (onto the ball alone), `random` (a perturbation drawn from it),
    `ascent_direction`, `size` (per image, in its norm), and, written here once for the balls they suit,
    `project_in_box` and `start`."""

    name = ""
    max_eps = float("inf")

    @staticmethod
    def project(delta: torch.Tensor, eps: float) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def random(like: torch.Tensor, eps: float) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def ascent_direction(grad: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def size(delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def project_in_box(cls, x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
        """The image x + δ′, δ′ the projection of `delta` onto the ball, then into [0, 1] (which never leaves
        the ball)."""
        return (x + cls.project(delta, eps)).clamp_(0.0, 1.0)

    @classmethod
    def start(cls, x: torch.Tensor, eps: float) -> torch.Tensor:
        """A random image of the ball around `x`, in [0, 1]: a uniform point of the ball, clamped (clamping moves
        each feature towards x, itself in [0, 1], so the point stays in the ball)."""
        return (x + cls.random(x, eps)).clamp_(0.0, 1.0)


class LinfBall(Ball):
    """The L∞ ball: every feature within ε of the image."""

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


class L2Ball(Ball):
    """The L2 ball: the perturbation's Euclidean length at most ε."""

    name = "l2"

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


def _per_example_l1(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).abs().sum(dim=1).view(-1, *([1] * (t.dim() - 1)))


def l1_box_threshold(magnitude: torch.Tensor, room: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Per row, the λ ≥ 0 with Σᵢ clamp(mᵢ − λ, 0, rᵢ) = ε (0 where the sum at λ = 0 is at most ε): the
    threshold of the projection onto {‖δ‖₁ ≤ ε} ∩ box. The sum is piecewise linear and non-increasing in λ, its
    kinks at mᵢ − rᵢ (feature i starts shrinking from its bound) and mᵢ (it reaches 0): sorted, the sum at every
    kink is a cumulative sum, and λ lies on the first segment where it drops to ε (one sort per row, exact)."""
    low, high = (magnitude - room).clamp(min=0), magnitude
    kinks = torch.cat([low, high], dim=1)
    change = torch.cat([-torch.ones_like(low), torch.ones_like(high)], dim=1)  # the slope's change at each kink
    kinks, order = kinks.sort(dim=1)
    slope = change.gather(1, order).cumsum(1)  # the sum's slope just after each kink (≤ 0)
    total0 = torch.minimum(magnitude, room).sum(1, keepdim=True)  # the sum at λ = 0
    widths = torch.diff(kinks, dim=1, prepend=torch.zeros_like(kinks[:, :1]))
    before = torch.cat([torch.zeros_like(slope[:, :1]), slope[:, :-1]], dim=1)  # the slope on each segment
    at_kinks = total0 + (before * widths).cumsum(1)  # the sum at each kink
    segment = (at_kinks > eps).sum(1, keepdim=True)  # kinks passed before the sum reaches ε
    index = (segment - 1).clamp(min=0)
    start = torch.where(segment > 0, kinks.gather(1, index), torch.zeros_like(eps))
    value = torch.where(segment > 0, at_kinks.gather(1, index), total0)
    rate = torch.where(segment > 0, slope.gather(1, index), before[:, :1])
    lam = start + (value - eps) / (-rate).clamp_min(1e-300)
    return torch.where(total0 > eps, lam, torch.zeros_like(lam))


class L1Ball(Ball):
    """The L1 ball intersected with [0, 1] ("Mind the box", Croce & Hein 2021). Its steepest-ascent step is
    sparse: the features of largest gradient only (SLIDE, Tramèr & Boneh 2019; the attacks choose how many)."""

    name = "l1"

    @staticmethod
    def project(delta: torch.Tensor, eps: float) -> torch.Tensor:
        """The projection onto the L1 ball alone (soft thresholding), without the box."""
        magnitude = delta.flatten(1).abs().double()
        room = torch.full_like(magnitude, float("inf"))
        lam = l1_box_threshold(magnitude, room, torch.full_like(magnitude[:, :1], float(eps)))
        return (delta.sign() * (magnitude - lam).clamp(min=0).view(delta.shape).to(delta.dtype))

    @staticmethod
    def project_in_box(x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
        """x + δ′ for δ′ the Euclidean projection of `delta` onto {‖δ‖₁ ≤ ε, x + δ ∈ [0, 1]}: per feature
        δ′ᵢ = sign(δᵢ)·clamp(|δᵢ| − λ, 0, roomᵢ), roomᵢ how far feature i can move that way inside [0, 1], λ the
        threshold that spends the budget exactly (`l1_box_threshold`), computed in double precision."""
        flat, base = delta.flatten(1).double(), x.flatten(1).double()
        room = torch.where(flat > 0, 1 - base, base).clamp(min=0)
        magnitude = flat.abs()
        lam = l1_box_threshold(magnitude, room, torch.full_like(flat[:, :1], float(eps)))
        moved = flat.sign() * torch.minimum((magnitude - lam).clamp(min=0), room)
        return (base + moved).clamp(0, 1).to(x.dtype).view(x.shape)

    @staticmethod
    def random(like: torch.Tensor, eps: float) -> torch.Tensor:
        """A uniform sample from the ball: a Laplace direction of unit L1 norm, radius eps·u^(1/d)."""
        direction = torch.empty_like(like).exponential_() * (torch.randint_like(like, 0, 2) * 2 - 1)
        direction = direction / _per_example_l1(direction).clamp_min(_TINY)
        dims = like[0].numel()
        radius = eps * torch.rand(like.shape[0], device=like.device, dtype=like.dtype) ** (1.0 / dims)
        return direction * radius.view(-1, *([1] * (like.dim() - 1)))

    @staticmethod
    def ascent_direction(grad: torch.Tensor, share: float = 0.01) -> torch.Tensor:
        """The steepest-ascent direction of unit L1 norm over the `share` of features with the largest gradient
        (at least one): their signs, each 1/count (the L1 ball's vertices move one feature; SLIDE spreads the
        step over the top ones)."""
        flat = grad.flatten(1).abs()
        count = max(1, min(flat.shape[1], round(share * flat.shape[1])))
        threshold = flat.topk(count, dim=1).values[:, -1:]
        chosen = (flat >= threshold) & (flat > 0)
        signs = grad.sign() * chosen.view(grad.shape)
        return signs / _per_example_l1(signs).clamp_min(1.0)

    @staticmethod
    def movable_ascent(x_adv: torch.Tensor, grad: torch.Tensor, share: float) -> torch.Tensor:
        """`ascent_direction` over the features that can still move the gradient's way inside [0, 1] (SLIDE's
        step: a feature at 0 whose gradient points down, or at 1 pointing up, is left out)."""
        blocked = ((x_adv <= 0) & (grad < 0)) | ((x_adv >= 1) & (grad > 0))
        return L1Ball.ascent_direction(grad.masked_fill(blocked, 0), share)

    @staticmethod
    def size(delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).abs().sum(dim=1)


def _pixels(delta: torch.Tensor) -> torch.Tensor:
    """Per image and pixel, whether the pixel changed (any channel); features for a batch that is not N×C×H×W."""
    changed = delta != 0
    return changed.any(dim=1).flatten(1) if delta.dim() == 4 else changed.flatten(1)


class L0Ball(Ball):
    """At most ε pixels changed, each to any value in [0, 1] (a pixel: all its channels)."""

    name = "l0"

    @staticmethod
    def project(delta: torch.Tensor, eps: float) -> torch.Tensor:
        """Keep the ⌊ε⌋ pixels of largest change (summed over channels), without the box."""
        return L0Ball._keep(delta, delta.pow(2), eps)

    @staticmethod
    def _keep(delta: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
        """`delta` on the ⌊ε⌋ pixels of largest `gain` (summed over channels), 0 elsewhere."""
        k = int(eps)
        per_pixel = gain.sum(dim=1).flatten(1) if delta.dim() == 4 else gain.flatten(1)
        if k >= per_pixel.shape[1]:
            return delta
        keep = torch.zeros_like(per_pixel, dtype=torch.bool)
        if k > 0:
            keep.scatter_(1, per_pixel.topk(k, dim=1).indices, True)
        mask = keep.view(delta.shape[0], 1, *delta.shape[2:]) if delta.dim() == 4 else keep.view(delta.shape)
        return delta * mask

    @staticmethod
    def project_in_box(x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
        """x + δ′ for δ′ the projection of `delta` onto {at most ⌊ε⌋ pixels changed, x + δ ∈ [0, 1]} (Croce &
        Hein 2019's `project_L0_box`): each pixel's change clipped into the box, the pixels kept where clipping
        loses least against dropping the change, ‖δ‖² − ‖δ − clip(δ)‖²."""
        clipped = (x + delta).clamp(0, 1) - x
        gain = delta.pow(2) - (delta - clipped).pow(2)
        return x + L0Ball._keep(clipped, gain, eps)

    @staticmethod
    def random(like: torch.Tensor, eps: float) -> torch.Tensor:
        """⌊ε⌋ random pixels per image, each channel moved by a uniform amount in [−1, 1]."""
        noise = torch.rand_like(like) * 2 - 1
        return L0Ball._keep(noise, torch.rand_like(like), eps)

    @staticmethod
    def start(x: torch.Tensor, eps: float) -> torch.Tensor:
        """The reference's random start: a uniform random image, projected (the ⌊ε⌋ pixels that change most)."""
        return L0Ball.project_in_box(x, torch.rand_like(x) - x, eps)

    @staticmethod
    def ascent_direction(grad: torch.Tensor) -> torch.Tensor:
        """The gradient scaled to unit L1 norm (PGD-L0, Croce & Hein 2019: a dense step, then the projection
        picks the pixels)."""
        return grad / _per_example_l1(grad).clamp_min(_TINY)

    @staticmethod
    def size(delta: torch.Tensor) -> torch.Tensor:
        return _pixels(delta).sum(dim=1).to(delta.dtype)


NORMS: dict[str, type[Ball]] = {ball.name: ball for ball in (LinfBall, L2Ball, L1Ball, L0Ball)}
DENSE = ("linf", "l2")  # the norms every attack of the seed work supports


def ball(norm: str, eps: float, supported: tuple[str, ...] = tuple(NORMS)) -> type[Ball]:
    """The ball class for `norm` (one of `supported`: the attack's), after checking that `eps` is a budget it
    admits (L0: a whole number of pixels)."""
    if norm not in supported:
        raise InvalidValue("norm", norm, f"one of {', '.join(supported)}")
    chosen = NORMS[norm]
    if not is_number(eps) or not 0 <= eps <= chosen.max_eps:
        upper = "" if chosen.max_eps == float("inf") else f" and ≤ {chosen.max_eps:g}"
        raise InvalidValue("eps", eps, f"a number ≥ 0{upper} (pixel units, images in [0, 1])")
    if chosen is L0Ball and float(eps) != int(eps):
        raise InvalidValue("eps", eps, "a whole number of pixels ≥ 0 (the L0 budget)")
    return chosen


def project_image(x: torch.Tensor, x_adv: torch.Tensor, threat: type[Ball], eps: float) -> torch.Tensor:
    """Project `x_adv` onto the ε-ball around `x` intersected with [0, 1] (`project_in_box` of the ball)."""
    return threat.project_in_box(x, x_adv - x, eps)


def image_projector(x: torch.Tensor, threat: type[Ball], eps: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """`project_image(x, ·, threat, eps)` for an attack's many steps around the same `x`. Under L∞ the ball
    and [0, 1] are both boxes, so their intersection's bounds are computed once and each step is one clamp."""
    if threat is LinfBall:
        low, high = (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)
        return lambda x_adv: torch.clamp(x_adv, low, high)
    return lambda x_adv: project_image(x, x_adv, threat, eps)
