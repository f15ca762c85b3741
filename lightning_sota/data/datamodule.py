"""Steps 1-3 as a LightningDataModule: the dataset on disk (acquire.py, folders.py), its presized
caches (cache.py), and each epoch's loaders of uint8 batches gathered from them (batches.py), as
the run's plan (run/plan.py) says."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lightning_sota.data.acquire import resolve_root, valid_folder
from lightning_sota.data.batches import (
    CachedImages,
    DeviceBatches,
    DeviceImages,
    ShardedBatches,
    free_bytes,
    resident_device,
)
from lightning_sota.data.cache import build_cache
from lightning_sota.data.folders import CLASS_NAMES, noisy_labels, random_split, scan_split, stratified_split
from lightning_sota.errors import DataError
from lightning_sota.run.plan import Phase, Plan

log = logging.getLogger(__name__)

# fastai's chapter 7 presizes to 460 for 224 px training: room for crops, rotation and zoom.
PRESIZE_RATIO = 460 / 224


class ImagenetteDataModule(pl.LightningDataModule):
    """Imagenette (or any train/ val/ folder of class folders) as presized uint8 batches.

    ``setup`` builds a cache at each of ``sizes`` (the plan's training sizes). Training then
    follows the ``plan`` build_run hands it: the epoch decides the size and batch size, so the
    Trainer must reload dataloaders every epoch (``reload_dataloaders_every_n_epochs=1``);
    validation runs at the current training size.
    """

    def __init__(
        self,
        root: str,
        sizes: list[int],
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
        on_device: bool | None = None,
        valid_pct: float = 0.0,
        split_seed: int = 42,
        score_only: bool = False,
        dataset: str = "imagenette",
        labels: str = "clean",
    ) -> None:
        super().__init__()
        self.root_arg = root
        self.sizes = sorted(set(sizes))
        self.plan: Plan | None = None  # handed by build_run once the training split is known
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
        self.dataset, self.labels = dataset, labels  # labels: clean, or a Noisy Imagenette level
        self.resident: dict[tuple[str, int], DeviceImages] = {}
        self.placed_on: torch.device | None = None  # where batches are gathered: see place()
        self.epoch = 0
        self.test_split = "val"
        self.validate = True
        self.cache_seconds = 0.0
        self._ready = False

    # -- phases -----------------------------------------------------------------------------
    def presize_for(self, size: int) -> int:
        return self.presize or round(size * PRESIZE_RATIO)

    def current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else self.epoch

    def current_phase(self) -> Phase:
        return self.plan.phase_at(self.current_epoch())

    def serving(self) -> dict[int, dict]:
        """What a user of the trained weights needs to see images as validation did, for each
        phase's size (a checkpoint records its epoch's): the size, the cache's short side at it,
        and its cap on the long side's ratio."""
        return {
            size: {"size": size, "presize": self.presize_for(size), "max_aspect": self.max_aspect}
            for size in self.plan.sizes
        }

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
            if self.labels != "clean":
                raise DataError(
                    f"data.labels={self.labels} with data.valid_pct: the noisy labels are the imagenette2 "
                    "and imagewoof2 archives' (train/ and val/); use data.labels=clean"
                )
            self.wnids, (train_files, train_labels), (val_files, val_labels) = random_split(
                self.root, self.valid_pct, self.split_seed
            )
        else:
            kwargs = {"base_url": self.base_url} if self.base_url else {}
            self.root = resolve_root(
                self.root_arg, self.variant, self.download, dataset=self.dataset, **kwargs
            )
            self.wnids, train_files, train_labels = scan_split(self.root / "train")
            _, val_files, val_labels = scan_split(valid_folder(self.root), self.wnids)
            if self.labels != "clean":  # the training split's only (its holdout too): val stays clean
                train_labels = noisy_labels(self.root, self.dataset, self.labels, train_files, self.wnids)
        self.classes = [CLASS_NAMES.get(w, w) for w in self.wnids]

        start = time.perf_counter()
        train_caches, val_caches = {}, {}
        for size in self.sizes:
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
        # debug=overfit: every epoch the first batches of epoch 0's shuffle (limit_train_batches
        # is Lightning's to apply)
        overfit = self.plan.overfit if train else 0
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
        phase = self.plan.last
        return self._loader(split, phase.size, self.val_batch_size or 2 * phase.batch_size, whole=True)

    def summary(self) -> dict:
        return {
            "dataset": self.dataset,
            "labels": self.labels,  # clean, or noisy_<p>: p% of the training labels changed
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
