"""The dataset's folders: one folder of images per class, read in a fixed order, and the splits
drawn from them (fastai's RandomSplitter, a stratified holdout)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from lightning_sota.data.acquire import has_splits
from lightning_sota.errors import DataError

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
# Imagewoof's ten dog breeds, by their ImageNet synsets' names
IMAGEWOOF_CLASSES = {
    "n02086240": "Shih-Tzu",
    "n02087394": "Rhodesian ridgeback",
    "n02088364": "beagle",
    "n02089973": "English foxhound",
    "n02093754": "Border terrier",
    "n02096294": "Australian terrier",
    "n02099601": "golden retriever",
    "n02105641": "Old English sheepdog",
    "n02111889": "Samoyed",
    "n02115641": "dingo",
}
CLASS_NAMES = {**IMAGENETTE_CLASSES, **IMAGEWOOF_CLASSES}


def noisy_labels(root: Path, dataset: str, labels: str, files: list[Path], wnids: list[str]) -> np.ndarray:
    """The training files' labels from the archive's ``noisy_<dataset>.csv`` (Noisy Imagenette:
    ``noisy_labels_<p>`` for p% of the training labels changed, by path), as class indices."""
    table = root / f"noisy_{dataset}.csv"
    if not table.is_file():
        raise DataError(
            f"data.labels={labels}: {root} has no noisy_{dataset}.csv (the imagenette2 and imagewoof2 "
            "archives carry it); use data.labels=clean, or point data.root at the archive's folder"
        )
    column = f"noisy_labels_{labels.removeprefix('noisy_')}"
    with open(table, newline="") as f:
        rows = {row["path"]: row[column] for row in csv.DictReader(f)}
    index = {wnid: i for i, wnid in enumerate(wnids)}
    found = []
    for file in files:
        wnid = rows.get(file.relative_to(root).as_posix())
        if wnid not in index:
            raise DataError(
                f"data.labels={labels}: noisy_{dataset}.csv gives {file.relative_to(root)} "
                f"{'no label' if wnid is None else 'the unknown class ' + wnid}: is it this dataset's table?"
            )
        found.append(index[wnid])
    return np.asarray(found, np.int64)


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


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
