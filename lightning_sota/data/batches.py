"""A batch, gathered whole: from a split's presized cache in the host's memory map
(``CachedImages``) or from a copy resident on the accelerator (``DeviceImages``), in the batches of
indices each rank takes every epoch (``ShardedBatches``).

A batch is a dict: ``image`` uint8 [B, H, W, 3] straight from the cache (no decode, no per-item
Python), ``box``/``transposed`` (where the real pixels are), ``label`` and ``size``, the output
resolution the augmentation on the device must produce. Everything after the gather happens on
the device, in ``lightning_sota/augment/``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_sota.config.checks import check_batch_split
from lightning_sota.data.cache import ImageCache
from lightning_sota.errors import DataError


class CachedImages(Dataset):
    """Indexed by a whole list of indices: one numpy gather per batch."""

    def __init__(self, cache: ImageCache, labels: np.ndarray, size: int) -> None:
        self.cache, self.labels, self.size = cache, labels, size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices: list[int]) -> dict:
        idx = np.sort(np.asarray(indices))  # sorted: sequential reads from the memory map
        return {
            "index": torch.from_numpy(idx),
            "image": torch.from_numpy(self.cache.images[idx]),
            "box": torch.from_numpy(self.cache.boxes[idx]),
            "transposed": torch.from_numpy(self.cache.transposed[idx]),
            "label": torch.from_numpy(self.labels[idx]),
            "size": self.size,
        }


class DeviceImages:
    """A split's cache resident on the accelerator (data.on_device): a batch is one gather in
    device memory. Written by hand because on a GPU the host loader (a numpy gather, then pinning
    and copying each cached image on the main thread) bounds the step, while the full split's
    caches at the leaderboard's sizes take a small part of one GPU's memory (benchmarks/RESULTS.md)."""

    def __init__(self, images: CachedImages, device: torch.device, chunk: int = 512) -> None:
        cache = images.cache
        self.size, self.device = images.size, device
        self.images = torch.empty(cache.images.shape, dtype=torch.uint8, device=device)
        for start in range(0, len(cache), chunk):  # the memory map read in slices: bounded host memory
            part = torch.from_numpy(np.array(cache.images[start : start + chunk]))
            self.images[start : start + chunk].copy_(part)
        self.boxes = torch.from_numpy(np.array(cache.boxes)).to(device)
        self.transposed = torch.from_numpy(np.array(cache.transposed)).to(device)
        self.labels = torch.from_numpy(np.array(images.labels)).to(device)

    def gather(self, idx: torch.Tensor) -> dict:
        """The batch of the sorted image indices ``idx``, already on the device."""
        return {
            "index": idx,
            "image": self.images[idx],
            "box": self.boxes[idx],
            "transposed": self.transposed[idx],
            "label": self.labels[idx],
            "size": self.size,
        }


class DeviceBatches(Dataset):
    """One epoch's batches of a resident split, indexed by batch number. Their index lists go to
    the device as one matrix when the loader is made: a step's gather then reads nothing from
    the host (uploading each batch's pageable index list would make the host wait for the
    device at every step). The row is picked by a cursor on the device, which moves on by
    itself as the loader asks for the batches in order: no op of a step takes the batch number,
    so the gather can be captured in a CUDA graph (a row asked out of order moves it there)."""

    def __init__(self, images: DeviceImages, batches: list[list[int]]) -> None:
        self.images = images
        self.lengths = [len(b) for b in batches]  # the last validation batch may be short
        matrix = np.zeros((len(batches), max(self.lengths, default=0)), np.int64)
        for row, batch in zip(matrix, batches, strict=True):
            row[: len(batch)] = np.sort(batch)  # as CachedImages' order
        self.matrix = torch.from_numpy(matrix).to(images.device)
        self.cursor = torch.zeros(1, dtype=torch.int64, device=images.device)
        self.next = 0  # the row the cursor is at: known on the host, never read from the device

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict:
        if i != self.next:
            self.cursor.fill_(i)
        row = self.matrix.index_select(0, self.cursor)[0, : self.lengths[i]]
        self.cursor.add_(1)
        self.next = i + 1
        return self.images.gather(row)


def free_bytes(device: torch.device) -> int | None:
    """Memory free on ``device`` now: the GPU's, or the host's for the CPU; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def resident_device(on_device: bool | None, device: torch.device, need: int, free: int | None) -> bool:
    """Whether the caches (``need`` bytes) go to ``device``: data.on_device=null means on a GPU
    when they take at most half its free memory (the rest is the model's and the activations');
    true is honoured there or refused, false never."""
    fits = free is None or need <= free // 2
    if on_device is None:
        return device.type == "cuda" and fits
    if on_device and not fits:
        raise DataError(
            f"data.on_device=true: the caches take {need / 2**30:.1f} GiB, more than half of the "
            f"{free / 2**30:.1f} GiB free on {device}: set data.on_device=false to gather on the host"
        )
    return bool(on_device)


class ShardedBatches:
    """Batches of dataset indices for one epoch and one rank.

    Training: a shuffle seeded by (seed, epoch), the same on every rank, so a resumed run and
    every DDP rank agree without shared state, cut into global batches of ``batch_size`` (the
    last incomplete one dropped, as fastai trains); rank r takes the r-th of ``world`` equal
    slices of each. So ``batch_size`` is the recipe's global batch on any number of devices:
    the same steps per epoch, schedule and lr as on one. ``limit``: only the first batches.
    Validation: ``batch_size`` per rank, in order, every image exactly once overall.
    """

    def __init__(
        self,
        index: np.ndarray,
        batch_size: int,
        train: bool,
        seed: int,
        epoch: int,
        rank: int,
        world: int,
        limit: int | None = None,
    ) -> None:
        if train:
            check_batch_split([batch_size], world)
            order = np.random.default_rng([seed, epoch]).permutation(index)
            per_rank = batch_size // world
            # every rank the same count: the global batches' starts, then this rank's slice
            mine = range(rank * per_rank, (rank + 1) * per_rank)
            starts = range(0, len(order) - batch_size + 1, batch_size)
            self.batches = [order[i + mine.start : i + mine.stop].tolist() for i in starts][:limit]
        else:
            shard = index[rank::world]
            self.batches = [shard[i : i + batch_size].tolist() for i in range(0, len(shard), batch_size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)
