"""A small Imagenette-shaped dataset the tests make themselves: ``train/`` and ``val/`` with
Imagenette's ten class folders (so class names read ``tench`` ... ``parachute``), real JPEG and
PNG files of several sizes and modes (RGB, greyscale, palette, RGBA, CMYK), drawn
deterministically. Each class has its own hue and stripe direction, so a small model tells them
apart within a few steps. Made once per checkout in ``build/`` (seconds) and reused.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from lightning_sota.locks import exclusive

WNIDS = (
    "n01440764",
    "n02102040",
    "n02979186",
    "n03000684",
    "n03028079",
    "n03394916",
    "n03417042",
    "n03425413",
    "n03445777",
    "n03888257",
)
TRAIN, VAL = 20, 8  # images per class
# (width, height, mode, suffix), taken in turn: landscape 4:3, portrait, square, small, a panorama
# past the cache's 4:3 cap, and the modes a photo folder holds besides RGB.
KINDS = (
    (160, 120, "RGB", ".JPEG"),
    (120, 160, "RGB", ".JPEG"),
    (128, 128, "RGB", ".JPEG"),
    (64, 48, "L", ".JPEG"),
    (200, 96, "RGB", ".JPEG"),
    (144, 108, "P", ".png"),
    (120, 120, "RGBA", ".png"),
    (150, 112, "CMYK", ".JPEG"),
)
VERSION = 1  # bump when the drawing changes: the cached copy is then made anew


def draw(label: int, index: int, width: int, height: int) -> np.ndarray:
    """One image of class ``label``: its hue, stripes at its angle, a random phase, noise."""
    rng = np.random.default_rng([VERSION, label, index])
    hue = label / len(WNIDS) * 2 * np.pi
    colour = 150 + 90 * np.cos(hue + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]))
    angle = label * np.pi / len(WNIDS)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    stripes = np.sin(2 * np.pi * 4 * (x * np.cos(angle) + y * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
    pixels = colour[None, None] * (0.75 + 0.25 * stripes[..., None]) + rng.normal(0, 10, (height, width, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write(root: Path) -> None:
    for split, count in (("train", TRAIN), ("val", VAL)):
        for label, wnid in enumerate(WNIDS):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                width, height, mode, suffix = KINDS[(i + label) % len(KINDS)]
                image = Image.fromarray(draw(label, i + 1000 * (split == "val"), width, height))
                image.convert(mode).save(folder / f"{split}_{wnid}_{i:03d}{suffix}", quality=90)


def imagenette_like(build: Path) -> Path:
    """The dataset's folder under ``build``, made there first if it is not yet complete."""
    root = build / f"imagenette-like-v{VERSION}"
    done = root / ".complete"
    if done.is_file():
        return root
    build.mkdir(parents=True, exist_ok=True)
    with exclusive(build / f".imagenette-like-v{VERSION}.lock", "the tests' image set"):
        if not done.is_file():
            stage = build / f".imagenette-like-v{VERSION}.{os.getpid()}"
            shutil.rmtree(stage, ignore_errors=True)
            write(stage)
            (stage / ".complete").touch()
            shutil.rmtree(root, ignore_errors=True)  # an interrupted copy is never trusted
            stage.rename(root)
    return root
