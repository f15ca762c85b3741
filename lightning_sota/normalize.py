"""fastai's Normalize.from_stats, on the device after augmentation."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """Per-channel (x - mean) / std; the identity when no statistics are given.

    The statistics are buffers, so they travel in the checkpoint with the weights."""

    def __init__(self, mean: list[float] | None = None, std: list[float] | None = None) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("normalize needs both mean and std, or neither")
        self.enabled = mean is not None
        self.register_buffer("mean", torch.tensor(mean or [0.0, 0, 0]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std or [1.0, 1, 1]).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std if self.enabled else x

    def stats(self) -> dict | None:
        if not self.enabled:
            return None
        return {
            "mean": [round(v, 6) for v in self.mean.flatten().tolist()],
            "std": [round(v, 6) for v in self.std.flatten().tolist()],
        }
