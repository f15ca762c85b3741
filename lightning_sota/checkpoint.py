"""One way back from a checkpoint, for evaluate, predict and export: the run's own config, its
classes and final size, and its LightningModule (model, augmentation, normalization) with the
trained weights, built by the same code that built the run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .checks import ConfigError
from .data import ImagenetteDataModule
from .module import ImageClassifier
from .train import build_module


@dataclass
class Restored:
    path: Path  # the checkpoint file
    run_dir: Path  # the run folder holding checkpoints/ (or the file's folder)
    config: DictConfig  # the run's resolved config, with any allowed overrides merged
    classes: list[str]
    size: int  # the final training size: what validation ran at
    presize: int  # the cache's short side at that size, and its cap on the long side's ratio
    max_aspect: float
    module: ImageClassifier  # weights loaded, in eval mode, on the CPU


def checkpoint_path(target: str | Path) -> Path:
    """A run folder (its checkpoints/last.ckpt) or a checkpoint file."""
    path = Path(target)
    ckpt = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
    if not ckpt.is_file():
        raise ConfigError(f"{target}: no checkpoint there; give a run folder or its checkpoints/last.ckpt")
    return ckpt


def restore(target: str | Path, overrides: list[str] = (), free: tuple[str, ...] = ()) -> Restored:
    """The run of ``target`` rebuilt from its checkpoint. ``overrides`` (key=value) may change only
    the keys in ``free``: where the data is and what computes, never what was trained."""
    path = checkpoint_path(target)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or a pickle we refuse to run
        raise ConfigError(
            f"{path} cannot be read as a checkpoint ({err}); give a run's checkpoints/last.ckpt"
        ) from err
    if not isinstance(ckpt, dict) or "lightning_sota" not in ckpt:
        raise ConfigError(f"{path} is not a lightning-sota checkpoint (no run config in it)")
    meta = ckpt["lightning_sota"]
    cfg = OmegaConf.create(meta["config"])
    for override in overrides:
        key, sep, _ = override.partition("=")
        if not sep or key not in free:
            raise ConfigError(
                f"{override}: a checkpoint is used as it was trained; only {', '.join(free)} may change"
            )
    cfg.merge_with_dotlist(list(overrides))
    # Scored eagerly whatever the run trained with: compiling costs more than scoring a folder,
    # and torch.export (ONNX) traces the plain module.
    OmegaConf.update(cfg, "model.compile", False)
    module = build_module(cfg, meta["classes"])
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return Restored(
        path, run_dir, cfg, list(meta["classes"]), meta["size"], meta["presize"], meta["max_aspect"], module
    )


def scoring_data(run: Restored) -> ImagenetteDataModule:
    """The run's data at its final size and validation batch size (what its last validation
    scored), set up; a dataset whose classes differ from the checkpoint's is refused."""
    cfg = run.config.data.copy()
    cfg.phases = [cfg.phases[-1]]
    data = instantiate(cfg)
    data.setup("fit")
    if data.classes != run.classes:
        raise ConfigError(
            f"data.root={cfg.root} has classes {data.classes}, the checkpoint was trained on "
            f"{run.classes}: point data.root at the dataset it was trained on"
        )
    return data


def scoring_trainer(cfg: DictConfig, callbacks: list[pl.Callback] = ()) -> pl.Trainer:
    """A one-device Trainer in the run's accelerator and precision, for scoring only: its
    precision plugin gives evaluate's test loop and predict's batches the run's autocast."""
    return pl.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        logger=False,
        callbacks=list(callbacks),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
