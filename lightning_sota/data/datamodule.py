"""Steps 1-3: the dataset on disk, its presized caches, and uint8 batches gathered from them.

A batch is a dict: ``image`` uint8 [B, H, W, 3] straight from the cache (no decode, no per-item
Python), ``box``/``transposed`` (where the real pixels are), ``label`` and ``size``, the output
resolution the augmentation on the device must produce. Everything after the gather happens on
the device, in ``augment.py``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_sota.config.checks import check_batch_split
from lightning_sota.data.acquire import has_splits, resolve_root, valid_folder
from lightning_sota.data.cache import ImageCache, build_cache
from lightning_sota.errors import DataError

log = logging.getLogger(__name__)

IMAGENETTE_CLASSES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
# fastai's chapter 7 presizes to 460 for 224 px training: room for crops, rotation and zoom.
PRESIZE_RATIO = 460 / 224


@dataclass(frozen=True)
class Phase:
    size: int
    batch_size: int
    epochs: int


def scan_split(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[Path], np.ndarray]:
    """Class folders (sorted) and their image files; non-image files are ignored."""
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"{folder} has no class folders: it must hold one folder of images per class")
    if classes is not None and found != classes:
        diff = sorted(set(found) ^ set(classes))
        raise DataError(
            f"the classes of {folder} differ from train/'s ({', '.join(diff)}): "
            "both splits need the same class folders"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(found):
        images = sorted(
            p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not images:
            raise DataError(f"class folder {folder / name} holds no images: add some or remove it")
        files += images
        labels += [label] * len(images)
    return found, files, np.asarray(labels, np.int64)


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
    device at every step)."""

    def __init__(self, images: DeviceImages, batches: list[list[int]]) -> None:
        self.images = images
        self.lengths = [len(b) for b in batches]  # the last validation batch may be short
        matrix = np.zeros((len(batches), max(self.lengths, default=0)), np.int64)
        for row, batch in zip(matrix, batches, strict=True):
            row[: len(batch)] = np.sort(batch)  # as CachedImages' order
        self.matrix = torch.from_numpy(matrix).to(images.device)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict:
        return self.images.gather(self.matrix[i, : self.lengths[i]])


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


class ImagenetteDataModule(pl.LightningDataModule):
    """Imagenette (or any train/ val/ folder of class folders) as presized uint8 batches.

    Training follows ``phases``: the epoch decides the size and batch size, so the Trainer must
    reload dataloaders every epoch (``reload_dataloaders_every_n_epochs=1``); validation runs
    at the current training size.
    """

    def __init__(
        self,
        root: str,
        phases: list,
        variant: str = "160px",
        download: bool = True,
        base_url: str | None = None,
        presize: int | None = None,
        max_aspect: float = 4 / 3,
        cache_dir: str = "outputs/cache",
        cache_workers: int | None = None,
        workers: int = 0,
        val_batch_size: int | None = None,
        seed: int = 0,
        holdout: float = 0.0,
        holdout_seed: int = 0,
        epochs_per_phase: int | None = None,
        overfit_batches: int = 0,
        on_device: bool | None = None,
        valid_pct: float = 0.0,
        split_seed: int = 42,
        score_only: bool = False,
    ) -> None:
        super().__init__()
        self.root_arg = root
        self.phases = [p if isinstance(p, Phase) else Phase(**p) for p in phases]
        if epochs_per_phase:  # debug=fdr|profiler: the whole plan, each phase briefly
            self.phases = [Phase(p.size, p.batch_size, epochs_per_phase) for p in self.phases]
        # debug=overfit: the same first `overfit_batches` shuffled batches every epoch, as
        # Lightning's trainer.overfit_batches, which would not know the phases' batch sizes
        self.overfit_batches = overfit_batches
        self.variant, self.download, self.base_url = variant, download, base_url
        self.presize, self.max_aspect = presize, max_aspect
        self.cache_dir, self.cache_workers, self.workers = cache_dir, cache_workers, workers
        self.val_batch_size = val_batch_size
        self.seed = seed
        self.holdout, self.holdout_seed = holdout, holdout_seed
        self.on_device = on_device
        # a single folder of class folders: valid_pct of it drawn (by split_seed) for validation
        self.valid_pct, self.split_seed = valid_pct, split_seed
        # evaluate: only the split to score (val/ or valid/, or root itself as one folder of
        # class folders), no train/ needed and no training cache built
        self.score_only = score_only
        self.resident: dict[tuple[str, int], DeviceImages] = {}
        self.placed_on: torch.device | None = None  # where batches are gathered: see place()
        self.epoch = 0
        self.test_split = "val"
        self.validate = True
        self.cache_seconds = 0.0
        self._ready = False

    # -- phases -----------------------------------------------------------------------------
    def phase_at(self, epoch: int) -> Phase:
        for phase in self.phases:
            if epoch < phase.epochs:
                return phase
            epoch -= phase.epochs
        return self.phases[-1]

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def train_batches(self, phase: Phase) -> int:
        """Training steps per epoch, the same on every rank and any number of ranks (global
        batches, ShardedBatches): drop_last (as fastai trains), then the Trainer's
        ``limit_train_batches`` the way Lightning applies it (int: at most that many; float:
        that fraction, rounded down)."""
        batches = len(self.train_index) // phase.batch_size
        if self.overfit_batches:
            batches = min(batches, self.overfit_batches)
        limit = self.trainer.limit_train_batches if self.trainer is not None else 1.0
        return min(batches, limit) if isinstance(limit, int) else int(batches * limit)

    def presize_for(self, size: int) -> int:
        return self.presize or round(size * PRESIZE_RATIO)

    def current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else self.epoch

    def current_phase(self) -> Phase:
        return self.phase_at(self.current_epoch())

    # -- data -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        if self.score_only:
            self.root = Path(self.root_arg).expanduser().resolve()
            if not self.root.is_dir():
                raise DataError(f"data.root={self.root} is not a folder: point it at the images to score")
            self.wnids, val_files, val_labels = scan_split(valid_folder(self.root) or self.root)
            train_files, train_labels = [], np.empty(0, np.int64)
        elif self.valid_pct:
            self.root = Path(self.root_arg).expanduser().resolve()
            self.wnids, (train_files, train_labels), (val_files, val_labels) = random_split(
                self.root, self.valid_pct, self.split_seed
            )
        else:
            kwargs = {"base_url": self.base_url} if self.base_url else {}
            self.root = resolve_root(self.root_arg, self.variant, self.download, **kwargs)
            self.wnids, train_files, train_labels = scan_split(self.root / "train")
            _, val_files, val_labels = scan_split(valid_folder(self.root), self.wnids)
        self.classes = [IMAGENETTE_CLASSES.get(w, w) for w in self.wnids]

        start = time.perf_counter()
        train_caches, val_caches = {}, {}
        for size in sorted({p.size for p in self.phases}):
            presize = self.presize_for(size)
            if train_files:
                train_caches[size] = build_cache(
                    train_files, presize, self.cache_dir, self.max_aspect, self.cache_workers
                )
            val_caches[size] = build_cache(
                val_files, presize, self.cache_dir, self.max_aspect, self.cache_workers
            )
        built = any(c.built for c in (*train_caches.values(), *val_caches.values()))
        self.cache_seconds = time.perf_counter() - start if built else 0.0

        # Undecodable files are left out everywhere, and named (results.json: dataset.skipped).
        bad = ~np.logical_and.reduce([c.ok for c in train_caches.values()] or [np.ones(0, bool)])
        bad_val = ~np.logical_and.reduce([c.ok for c in val_caches.values()])
        self.skipped = [str(f) for f, b in zip(train_files, bad, strict=True) if b]
        self.skipped += [str(f) for f, b in zip(val_files, bad_val, strict=True) if b]
        if self.skipped:
            log.warning("skipped %d unreadable images: %s", len(self.skipped), ", ".join(self.skipped))
        self.train_index = np.flatnonzero(~bad)
        self.val_index = np.flatnonzero(~bad_val)
        # Recipes are selected on a part of train, never on the val split they are reported on.
        self.train_index, self.holdout_index = stratified_split(
            self.train_index, train_labels, self.holdout, self.holdout_seed
        )
        self.train_files, self.val_files = train_files, val_files
        self.train_caches, self.val_caches = train_caches, val_caches
        self.train_labels, self.val_labels = train_labels, val_labels
        self._ready = True

    def images(self, split: str, size: int) -> CachedImages:
        """A split's cache at ``size``, indexed by lists of image indices."""
        if split == "val":
            return CachedImages(self.val_caches[size], self.val_labels, size)
        return CachedImages(self.train_caches[size], self.train_labels, size)

    def place(self, device: torch.device, upload: bool = False) -> None:
        """Decide, for all caches, whether batches are gathered on ``device`` (data.on_device) or
        from the host's memory map; with ``upload``, put every cache a fit reads there now
        (build_run does, so no timed epoch waits for an upload)."""
        caches = (*self.train_caches.values(), *self.val_caches.values())
        need = sum(c.images.nbytes + c.boxes.nbytes + c.transposed.nbytes for c in caches)
        self.on_device = resident_device(self.on_device, device, need, free_bytes(device))
        where = f"on {device}" if self.on_device else "from the host's memory map"
        log.info("batches gathered %s (caches: %.2f GiB)", where, need / 2**30)
        self.placed_on = device
        if upload and self.on_device:
            for size in self.train_caches:
                self.gathered("train", size)
                self.gathered("val", size)

    def gathered(self, split: str, size: int) -> CachedImages | DeviceImages:
        """Where ``_loader`` gathers a split's batches: on the device (each split and size
        uploaded once) or from the host's memory map."""
        if self.placed_on is None:  # no place() before: the Trainer's device, or the CPU without one
            self.place(self.trainer.strategy.root_device if self.trainer else torch.device("cpu"))
        if not self.on_device:
            return self.images(split, size)
        key = ("val" if split == "val" else "train", size)
        if key not in self.resident:
            self.resident[key] = DeviceImages(self.images(split, size), self.placed_on)
        return self.resident[key]

    def _loader(self, split: str, size: int, batch_size: int, whole: bool = False) -> DataLoader:
        """``train`` (shuffled, augmented), ``val`` (the reported split) or ``holdout`` (the
        selection split: held-out train images, scored like val); this rank's shard, or the
        ``whole`` split."""
        train = split == "train"
        index = {"train": self.train_index, "val": self.val_index, "holdout": self.holdout_index}[split]
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        if whole:
            rank, world = 0, 1
        overfit = train and self.overfit_batches
        epoch = 0 if overfit else self.current_epoch()
        batches = ShardedBatches(index, batch_size, train, self.seed, epoch, rank, world, overfit or None)
        images = self.gathered(split, size)
        if isinstance(images, DeviceImages):
            return DataLoader(DeviceBatches(images, batches.batches), batch_size=None)
        return DataLoader(
            images,
            sampler=batches,
            batch_size=None,  # the sampler yields whole batches: one gather each, no collate
            num_workers=self.workers,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        phase = self.current_phase()
        return self._loader("train", phase.size, phase.batch_size)

    def _scoring_loader(self, split: str) -> DataLoader:
        phase = self.current_phase()
        return self._loader(split, phase.size, self.val_batch_size or 2 * phase.batch_size)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The val split; with a holdout, the holdout too (dataloader_idx 1); none while
        ``validate`` is off (lr_find's steps, which Lightning would validate every epoch)."""
        if not self.validate:
            return []
        val = self._scoring_loader("val")
        return [val, self._scoring_loader("holdout")] if len(self.holdout_index) else val

    def test_dataloader(self) -> DataLoader:
        """The val split; ``test_split`` may name another (evaluate.py scores any)."""
        return self._scoring_loader(self.test_split)

    def whole_split_loader(self, split: str = "val") -> DataLoader:
        """Every image of ``split`` at the final training size, in order, on any one rank."""
        phase = self.phases[-1]
        return self._loader(split, phase.size, self.val_batch_size or 2 * phase.batch_size, whole=True)

    def summary(self) -> dict:
        return {
            "root": str(self.root),
            "train": len(self.train_index),
            "val": len(self.val_index),
            "holdout": len(self.holdout_index),
            "holdout_seed": self.holdout_seed if len(self.holdout_index) else None,
            "valid_pct": self.valid_pct or None,
            "split_seed": self.split_seed if self.valid_pct else None,
            "classes": self.classes,
            "skipped": self.skipped,
            "on_device": self.on_device,
        }


def random_split(
    root: Path, valid_pct: float, seed: int
) -> tuple[list[str], tuple[list[Path], np.ndarray], tuple[list[Path], np.ndarray]]:
    """fastai's RandomSplitter(valid_pct, seed) over one folder of class folders: classes,
    (train files, labels), (validation files, labels). The permutation is torch's, seeded, as
    fastai draws it (its file order comes from os.walk, ours is sorted)."""
    if has_splits(root):
        raise DataError(
            f"data.valid_pct={valid_pct} but {root} already has train/ and val/: remove data.valid_pct, "
            "or point data.root at a single folder of class folders"
        )
    if not root.is_dir():
        raise DataError(f"data.root={root} is not a folder: data.valid_pct splits a folder of class folders")
    classes, files, labels = scan_split(root)
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).numpy()
    cut = int(valid_pct * len(files))
    valid, train = np.sort(order[:cut]), np.sort(order[cut:])
    if not cut or not len(train):
        raise DataError(f"data.valid_pct={valid_pct} of {len(files)} images leaves a split empty")
    return classes, ([files[i] for i in train], labels[train]), ([files[i] for i in valid], labels[valid])


def stratified_split(
    index: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out): ``round(fraction · n)`` of each class's n images held out, drawn by
    ``seed`` alone (not the training seed: every run of a sweep selects on the same images)."""
    rng = np.random.default_rng(seed)
    held = [
        rng.permutation(members)[: round(fraction * len(members))]
        for members in (index[labels[index] == c] for c in np.unique(labels[index]))
    ]
    held_out = np.sort(np.concatenate(held)) if held else np.empty(0, np.int64)
    return np.setdiff1d(index, held_out), held_out


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
            starts = range(rank * per_rank, len(order) - batch_size + 1, batch_size)
            self.batches = [order[i : i + per_rank].tolist() for i in starts][:limit]
        else:
            shard = index[rank::world]
            self.batches = [shard[i : i + batch_size].tolist() for i in range(0, len(shard), batch_size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)
