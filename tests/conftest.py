"""Fixtures that write real image files (JPEG folders in the official layout), the tests'
Imagenette-shaped set, and the two ways the tests run the project's commands: ``train_here``,
train.py's job in the test's own process (as the Lightning-Hydra template's tests call
``train(cfg)``: no interpreter start, no imports again), and ``run_cli``, a command as a user
types it in a subprocess (``run_train`` for ``python train.py``), kept for one test of each entry
point and for the README's commands."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import platform
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from PIL import Image

from lightning_sota.config.compose import compose_config
from lightning_sota.locks import exclusive, usable_cpus
from lightning_sota.run import launch
from lightning_sota.run.train import main, run_job

from .imagenette_like import TRAIN, VAL, WNIDS, imagenette_like

ROOT = Path(__file__).resolve().parent.parent
# The mini set: tests/imagenette_like.py's images, drawn once per checkout into build/ (ignored by
# git). IMAGENETTE_MINI: another split of that shape (benchmarks/gpu_check.py takes one from the
# data pack on a GPU machine).
MINI = Path(os.environ.get("IMAGENETTE_MINI") or imagenette_like(ROOT / "build" / "test-data"))
TRAIN_IMAGES, VAL_IMAGES = len(WNIDS) * TRAIN, len(WNIDS) * VAL


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs one worker per core) each worker and the processes it
    starts get their share of the cores: two workers each spinning two OpenMP threads on two
    cores run many times slower than one."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        threads = max(1, usable_cpus() // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


# The files of a minute or more (processes started, runs), longest first: the README's commands
# (minutes, in order on one worker), then the ones `make test` measured next.
LONGEST = (
    "test_readme.py",
    "test_reliability.py",
    "test_gpu_check.py",
    "test_train.py",
    "test_experiments.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first: xdist's loadfile hands files out in collection order, so one
    started last would run on alone while the other workers sit idle. The sort is stable: every
    file keeps its order, the others theirs."""
    rank = {name: i for i, name in enumerate(LONGEST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST)))


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
    return MINI


# glibc's initial thresholds (malloc.h's DEFAULT_MMAP_THRESHOLD_MIN and DEFAULT_TRIM_THRESHOLD)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, GLIBC_THRESHOLD = -1, -3, 128 * 1024


def loggers() -> dict:
    """Every logger's level, handlers and switch, the root's included."""
    every = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
    every = [log for log in every if isinstance(log, logging.Logger)]  # not the placeholders
    return {log: (log.level, log.handlers[:], log.disabled) for log in every}


@contextlib.contextmanager
def restored() -> Iterator[None]:
    """The process as it was before the block, whatever ran in it: a run in this process seeds
    every RNG (Lightning's seed_everything, and its PL_* variables), sets cuDNN's flag, may set
    Hydra's runtime config, and on a CPU raises glibc's malloc thresholds for the process
    (lightning_sota/cpu/host_memory.py), which would keep every later test's peak heap mapped;
    Hydra's main sets up logging (train.log) and caches the run folder's time; evaluate quiets
    Lightning's logger."""
    environ, threads = dict(os.environ), torch.get_num_threads()
    rngs = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    benchmark, hydra, logs = torch.backends.cudnn.benchmark, HydraConfig.instance().cfg, loggers()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        random.setstate(rngs[0])
        np.random.set_state(rngs[1])
        torch.random.set_rng_state(rngs[2])
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark, HydraConfig.instance().cfg = benchmark, hydra
        for log, (level, handlers, disabled) in logs.items():
            for handler in set(log.handlers) - set(handlers):
                handler.close()
            log.setLevel(level)
            log.handlers[:], log.disabled = handlers, disabled
        launch.run_time.cache_clear()
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(M_MMAP_THRESHOLD, GLIBC_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, GLIBC_THRESHOLD)
            libc.malloc_trim(0)


@pytest.fixture(autouse=True)
def independent() -> Iterator[None]:
    """Every test starts from the process the one before it found."""
    with restored():
        yield


def train_here(
    *overrides: str | Path, tmp: Path, run_dir: Path | None = None, multirun: bool = False
) -> dict | None:
    """What ``python train.py <overrides>`` does once Hydra has composed its config
    (lightning_sota.run.train.run_job), in this process: the run in ``run_dir`` (default
    ``tmp/run``), its cache in ``tmp/cache``, no progress bar. A refusal raises the UserError the
    command prints in one line. Hydra's own part (the run folder's name, .hydra/, train.log, -m's
    launcher) is the subprocess tests' and the README's."""
    run_dir = run_dir or tmp / "run"
    typed = [f"data.cache_dir={tmp / 'cache'}", "trainer.enable_progress_bar=false", *map(str, overrides)]
    cfg = compose_config(typed)
    # what Hydra's run sets before the job, for the config's ${hydra:runtime.*} (the loggers'
    # folder, MLflow's store); `restored` puts the previous one back
    hydra = OmegaConf.create({"hydra": OmegaConf.structured(HydraConf)})
    hydra.hydra.runtime.output_dir, hydra.hydra.runtime.cwd = str(run_dir), os.getcwd()
    HydraConfig.instance().set_config(hydra)
    run_dir.mkdir(parents=True, exist_ok=True)  # as Hydra makes it
    return run_job(cfg, run_dir, typed, multirun)


def hydra_main(*argv: str | Path) -> int:
    """``python train.py <argv>`` through its Hydra main in this process, for what Hydra itself
    does before the job (--help, --cfg, its composition errors, the run folder it makes): the
    exit status; what it prints goes to capsys."""
    before = sys.argv
    sys.argv = [str(ROOT / "train.py"), *map(str, argv)]
    try:
        main()
    except SystemExit as exit:
        return 0 if exit.code is None else int(exit.code)
    finally:
        sys.argv = before
    return 0


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
            with restored():  # built before the first test that asks, outside its own fixture
                train_here("+experiment=sota", "scale=smoke", f"data.root={MINI}", tmp=tmp)
    return tmp / "run"
