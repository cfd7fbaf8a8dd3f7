"""Square Attack's L1 moves ("Mind the box", Croce & Hein 2021), as the reference's `square.py` makes them.

The start tiles the image with blocks of side h // 5, each holding the L1 "eta" pattern (two rectangles of
opposite sign whose mass decays as 1/(distance + 1)⁴ from their centres) with a random sign per channel. A move
takes the mass of two random windows of side s (odd, at least 3): it empties the second and writes into the first
its old content (normalised) plus a new eta pattern of random sign, scaled so the window holds its old mass and
the budget left unused. Every proposal is projected onto the L1 ball ∩ [0, 1] (`norms.L1Ball.project_in_box`).
"""

from __future__ import annotations

import torch


def _rectangles(rows: int, columns: int, device: torch.device) -> torch.Tensor:
    """Nested rectangles around the centre, the k-th weighing 1/(k + 1)⁴, normalised to unit L1 mass."""
    delta = torch.zeros(rows, columns, device=device)
    top, left = rows // 2, columns // 2
    for k in range(max(rows // 2 + 1, columns // 2 + 1)):
        delta[max(top, 0):min(top + 2 * k + 1, rows), max(left, 0):min(left + 2 * k + 1, columns)] += 1.0 / (k + 1) ** 4
        top, left = top - 1, left - 1
    return delta / delta.abs().sum()


def eta(side: int, device: torch.device) -> torch.Tensor:
    """The side × side pattern: the upper half's rectangles positive, the lower half's negative, unit L1 mass,
    transposed with probability ½."""
    delta = torch.zeros(side, side, device=device)
    delta[:side // 2] = _rectangles(side // 2, side, device)
    delta[side // 2:] = -_rectangles(side - side // 2, side, device)
    delta = delta / delta.abs().sum()
    return delta.t() if torch.rand(()) > 0.5 else delta


def _signs(n: int, channels: int, like: torch.Tensor) -> torch.Tensor:
    return (torch.randint(0, 2, (n, channels, 1, 1), device=like.device) * 2 - 1).to(like.dtype)


def l1_start(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Blocks of side h // 5 tiling the image from its centre, each an eta pattern of random sign per channel."""
    n, channels, h, w = x.shape
    side = max(h // 5, 1)
    delta = torch.zeros_like(x)
    first = (h - side * 5) // 2
    for top in range(first, first + side * (h // side), side):
        for left in range(first, first + side * (w // side), side):
            if top + side <= h and left + side <= w:
                delta[:, :, top:top + side, left:left + side] += eta(side, x.device) * _signs(n, channels, x)
    return delta  # the reference projects this onto the ball as it is, whatever its mass


def random_windows(n: int, h: int, w: int, side: int, device: torch.device) -> torch.Tensor:
    """A random side × side window per image: an n × 1 × h × w mask."""
    top = torch.randint(0, h - side + 1, (n,), device=device).view(-1, 1, 1)
    left = torch.randint(0, w - side + 1, (n,), device=device).view(-1, 1, 1)
    rows, columns = torch.arange(h, device=device).view(1, h, 1), torch.arange(w, device=device).view(1, 1, w)
    return ((rows >= top) & (rows < top + side) & (columns >= left) & (columns < left + side)).unsqueeze(1)


def l1_move(delta: torch.Tensor, window: torch.Tensor, side: int, eps: float) -> torch.Tensor:
    """Move the mass of `window` and of a second random window of the same side into `window`: its old content
    normalised, plus a new eta pattern of random sign per channel, rescaled to the two windows' old mass plus the
    unused budget (the reference's formula, per channel). A window's entries, selected by its mask, come in the
    order of an n × c × side × side block."""
    n, channels, h, w = delta.shape
    other = random_windows(n, h, w, side, delta.device)
    first = window.expand_as(delta)
    inside = delta[first].view(n, channels, side, side)
    old_mass = inside.abs().sum(dim=(2, 3), keepdim=True)
    image_mass = delta.flatten(1).abs().sum(1).view(-1, 1, 1, 1)
    windows_mass = (delta * (window | other)).abs().sum(dim=(2, 3), keepdim=True)
    new = eta(side, delta.device) * _signs(n, channels, delta) + inside / (old_mass + 1e-12)
    new = new / (new.abs().sum(dim=(2, 3), keepdim=True) + 1e-12) \
        * ((eps - image_mass).clamp(min=0) / channels + windows_mass) * channels
    moved = delta.masked_fill(other.expand_as(delta), 0.0)
    moved[first] = new.reshape(-1).to(delta.dtype)
    return moved
