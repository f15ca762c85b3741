"""Step 5: MixUp and CutMix, fastai's semantics, on the normalized training batch only.

Each returns the mixed batch, the partner labels and λ, the weight of the original labels;
the module interpolates the two per-image losses by λ, so any loss (label smoothing included)
composes with either.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lightning_sota.errors import ConfigError


def mixed_loss(
    loss: Callable[[Tensor, Tensor], Tensor], logits: Tensor, y: Tensor, partner: Tensor, lam: Tensor
) -> Tensor:
    """fastai's mixed loss: per image λ·loss(own label) + (1-λ)·loss(partner's), averaged.
    ``loss`` must return one value per image (``reduction='none'``)."""
    return torch.lerp(loss(logits, partner), loss(logits, y), lam).mean()


class MixUp:
    """λ ~ Beta(α, α) per image, λ = max(λ, 1-λ); partner = a permutation of the batch."""

    def __init__(self, alpha: float = 0.4) -> None:
        if alpha <= 0:
            raise ConfigError(f"mix.alpha must be > 0, got {alpha}")
        self.alpha = alpha

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = len(x)
        # Drawn where the batch is: a draw on the host would be copied to the GPU at every step.
        # torch.full, not torch.tensor (a copy from the host), and no argument validation (a read
        # of the device).
        alpha = torch.full((), self.alpha, device=x.device)
        lam = torch.distributions.Beta(alpha, alpha, validate_args=False).sample((n,))
        lam = torch.maximum(lam, 1 - lam)
        perm = torch.randperm(n, device=x.device)
        mixed = torch.lerp(x[perm], x, lam.view(-1, 1, 1, 1).to(x.dtype))
        return mixed, y[perm], lam


class CutMix:
    """One λ ~ Beta(α, α) per batch; a box of area (1-λ) from the partner pasted into every image;
    λ then recomputed as the exact unpasted fraction (the box is clipped at the borders)."""

    def __init__(self, alpha: float = 1.0) -> None:
        if alpha <= 0:
            raise ConfigError(f"mix.alpha must be > 0, got {alpha}")
        self.alpha = alpha

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n, _, h, w = x.shape
        # Drawn on the host's generator: the box's bounds are Python ints, and no device is read.
        lam = torch.distributions.Beta(self.alpha, self.alpha).sample().item()
        cut = (1 - lam) ** 0.5
        cut_h, cut_w = int(h * cut), int(w * cut)
        cy, cx = torch.randint(h, ()).item(), torch.randint(w, ()).item()
        y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        perm = torch.randperm(n, device=x.device)
        mixed = x.clone()
        mixed[:, :, y1:y2, x1:x2] = x[perm][:, :, y1:y2, x1:x2]
        lam = 1 - (y2 - y1) * (x2 - x1) / (h * w)
        return mixed, y[perm], torch.full((n,), lam, device=x.device)
