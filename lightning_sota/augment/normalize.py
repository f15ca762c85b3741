"""fastai's Normalize: given statistics (``Normalize.from_stats``) or, with ``from_batch``, the
statistics of the first training batch (what fastai does when no stats are given)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_sota.errors import ConfigError


class Normalize(nn.Module):
    """Per-channel (x - mean) / std on the device; the identity while no statistics are set.

    The statistics and whether they are set are buffers: they travel in the checkpoint."""

    def __init__(
        self, mean: list[float] | None = None, std: list[float] | None = None, from_batch: bool = False
    ) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise ConfigError("normalize needs both mean and std, or neither")
        self.from_batch = from_batch
        self.register_buffer("mean", torch.tensor(mean or [0.0, 0, 0]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std or [1.0, 1, 1]).view(1, 3, 1, 1))
        self.register_buffer("fitted", torch.tensor(mean is not None))
        # ``fitted`` as the host last read it: a buffer's value is read back only until it is
        # True (once, in practice), not at every step, where each read would wait for the GPU.
        self._known_fitted = False

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Per-channel statistics of the batch ``x`` (fastai: std + 1e-7); under DDP the ranks'
        statistics are averaged so every replica normalizes alike."""
        stats = torch.stack([x.float().mean((0, 2, 3)), x.float().std((0, 2, 3)) + 1e-7])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
            stats /= dist.get_world_size()
        self.mean.copy_(stats[0].view(1, 3, 1, 1))
        self.std.copy_(stats[1].view(1, 3, 1, 1))
        self.fitted.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        if self.from_batch and self.training and not self._known_fitted:
            if not self.fitted:
                self.fit(x)
            self._known_fitted = True
        return (x - self.mean) / self.std  # mean 0, std 1 until fitted: no branch on the device

    def stats(self) -> dict | None:
        if not self.fitted:
            return None
        return {
            "mean": [round(v, 6) for v in self.mean.flatten().tolist()],
            "std": [round(v, 6) for v in self.std.flatten().tolist()],
        }
