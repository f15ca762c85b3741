"""A run folder's layout, named here once, and its checkpoint read back: every command that
takes a run (resume, evaluate, predict, export, model.pretrained) finds and reads it here."""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_sota.errors import ConfigError

CHECKPOINTS = "checkpoints"  # Lightning's ModelCheckpoint folder
LAST = "last"  # its file name: checkpoints/last.ckpt, replaced at every epoch end
BEST = "best"  # checkpoint.save_top_k's files: checkpoints/best-epoch=<e>-<metric>=<value>.ckpt
RESULTS = "results.json"
SHOW_BATCH = "show_batch.png"
LR_FIND_PLOT, LR_FIND_CURVE = "lr_find.png", "lr_find.json"
EVALUATION = "eval.json"


def last_checkpoint(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"{LAST}.ckpt"


def run_of(checkpoint: Path) -> Path:
    """The run folder holding ``checkpoint`` (or the file's own folder, for a loose file)."""
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else checkpoint.parent


def checkpoint_path(target: str | Path, key: str | None = None, which: str = LAST) -> Path:
    """A run folder's last checkpoint (``which="best"``: its best kept one), or a checkpoint
    file; ``key`` names the setting that gave ``target`` in the one-line refusal."""
    path = Path(target)
    if path.is_dir() and which == BEST:
        return best_checkpoint(path)
    ckpt = last_checkpoint(path) if path.is_dir() else path
    if not ckpt.is_file():
        where = f"{key}={target}" if key else str(target)
        raise ConfigError(f"{where}: no checkpoint there; give a run folder or its {CHECKPOINTS}/{LAST}.ckpt")
    return ckpt


def best_checkpoint(run_dir: Path) -> Path:
    """The best of the run's kept epochs, by the value and mode each file records."""
    found = []
    for path in sorted((run_dir / CHECKPOINTS).glob(f"{BEST}-*.ckpt")):
        chosen = read_checkpoint(path)["lightning_sota"]["selection"]
        sign = 1 if chosen["mode"] == "max" else -1
        found.append((sign * chosen["value"], -chosen["epoch"], path))  # a tie: the earlier epoch
    if not found:
        raise ConfigError(
            f"{run_dir}: no best checkpoints kept; train with checkpoint.save_top_k=2 (conf/checkpoint)"
        )
    return max(found)[2]


def read_checkpoint(path: Path) -> dict:
    """A lightning-sota checkpoint's contents (weights only: no pickled code runs)."""
    try:
        # mmap: tensors are read when used, so a look at the metadata reads no weights
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated, not a torch file, or a pickle we refuse to run
        raise ConfigError(
            f"{path} cannot be read as a checkpoint ({err}); give a run's {CHECKPOINTS}/{LAST}.ckpt"
        ) from err
    if not isinstance(ckpt, dict) or "lightning_sota" not in ckpt:
        raise ConfigError(f"{path} is not a lightning-sota checkpoint (no run config in it)")
    return ckpt
