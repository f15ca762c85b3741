"""Fixtures that write real image files (JPEG folders in the official layout), and the one way
the tests start the project's commands: ``run_cli`` (``run_train`` for ``python train.py``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_sota.config.compose import compose_config
from lightning_sota.locks import exclusive, usable_cpus

ROOT = Path(__file__).resolve().parent.parent
# IMAGENETTE_MINI: another small split in the same layout (benchmarks/gpu_check.py points it at
# a mini-shaped part of the data pack on a GPU machine, where ../shared does not travel).
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


def run_cli(
    *argv: str | Path, ok: bool | None = True, cwd: Path = ROOT, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """A command as a user types it (``python -m lightning_sota.serve.evaluate ...``; ``python`` is this
    interpreter), in a subprocess. ``ok``: it must exit 0 (True) or fail (False); None: either."""
    args = [sys.executable if a == "python" else str(a) for a in argv]
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if ok is not None:
        why = f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert (proc.returncode == 0) == ok, why
    return proc


def train_command(*overrides: str | Path, tmp: Path | None = None) -> list[str]:
    """``python train.py <overrides>``, the checkout's entry point. With ``tmp``, the run goes to
    ``tmp/run`` and its cache to ``tmp/cache`` (a user's run goes to outputs/: test_readme's)."""
    where = [f"hydra.run.dir={tmp / 'run'}", f"data.cache_dir={tmp / 'cache'}"] if tmp else []
    return [sys.executable, str(ROOT / "train.py"), *where, *map(str, overrides)]


def run_train(
    *overrides: str | Path, tmp: Path | None = None, ok: bool | None = True, **kwargs
) -> subprocess.CompletedProcess:
    """``train_command`` run to the end (run_cli's ``ok``, ``cwd``, ``env``, ``timeout``)."""
    return run_cli(*train_command(*overrides, tmp=tmp), ok=ok, **kwargs)


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


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
            shutil.rmtree(tmp / "run", ignore_errors=True)  # a failed build's leftovers
            run_train("+experiment=sota", "scale=smoke", f"data.root={MINI}", tmp=tmp)
    return tmp / "run"
