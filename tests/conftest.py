"""Fixtures that write real image files: JPEG folders in the official layout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_sota.config import compose_config
from lightning_sota.locks import exclusive, usable_cpus

ROOT = Path(__file__).resolve().parent.parent
# IMAGENETTE_MINI: another small split in the same layout (benchmarks/gpu_check.sh points it at
# the data pack on a GPU machine, where ../shared does not travel).
MINI = Path(os.environ.get("IMAGENETTE_MINI", ROOT.parent / "shared" / "data" / "imagenette-mini"))


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs one worker per core) each worker and the processes it
    starts get their share of the cores: two workers each spinning two OpenMP threads on two
    cores run many times slower than one."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        threads = max(1, usable_cpus() // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The README's commands first: they are the longest file (minutes, in order on one worker),
    and xdist's loadfile hands files out in collection order, so started last they would run on
    alone while the other workers sit idle. The sort is stable: every file keeps its order."""
    items.sort(key=lambda item: item.path.name != "test_readme.py")


def config(*overrides: str):
    """The config `python train.py <overrides>` composes (not resolved, no Hydra run)."""
    return compose_config(list(overrides))


# One colour per class so that a few steps of training can learn something.
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 220)]


def write_image(path: Path, size: tuple[int, int], colour, mode: str = "RGB", seed: int = 0) -> Path:
    """A real image file: a coloured gradient with noise, saved by suffix (JPEG, PNG, ...)."""
    w, h = size
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.6, 1.0, w)[None, :, None]
    arr = np.clip(np.array(colour)[None, None] * ramp + rng.normal(0, 12, (h, w, 3)), 0, 255)
    img = Image.fromarray(arr.astype(np.uint8))
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def make_folder(
    root: Path,
    classes=("cats", "dogs", "birds"),
    train: int = 12,
    val: int = 4,
    sizes=((200, 150), (150, 200), (120, 120)),
) -> Path:
    """train/ and val/ with one folder per class; landscape, portrait and square JPEGs."""
    for split, n in (("train", train), ("val", val)):
        for c, name in enumerate(classes):
            for i in range(n):
                write_image(
                    root / split / name / f"{i}.jpg", sizes[i % len(sizes)], COLOURS[c % 3], seed=i + 100 * c
                )
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "pets")


@pytest.fixture
def mini() -> Path:
    if not MINI.is_dir():
        pytest.fail(f"{MINI} is missing: the tests need ../shared/data/imagenette-mini")
    return MINI


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One `sota` smoke run on the mini set (TTA on): the checkpoint that evaluate, predict and
    export tests read. Its cache is the folder ``cache`` beside it. xdist's workers share one
    (the first builds it under a lock, in the folder above their own temporary folders)."""
    base = tmp_path_factory.getbasetemp()
    tmp = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "trained"
    tmp.mkdir(exist_ok=True)
    with exclusive(tmp / ".lock", "the trained smoke run"):
        if not (tmp / "run" / "results.json").is_file():
            train_smoke_run(tmp)
    return tmp / "run"


def train_smoke_run(tmp: Path) -> None:
    shutil.rmtree(tmp / "run", ignore_errors=True)  # a failed build's leftovers
    cmd = [
        sys.executable,
        "train.py",
        "+experiment=sota",
        "scale=smoke",
        f"data.root={MINI}",
        f"data.cache_dir={tmp / 'cache'}",
        f"hydra.run.dir={tmp / 'run'}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
