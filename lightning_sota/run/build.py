"""Every part of a run, built from its composed config with Hydra's ``instantiate``: for
training (``build_run``) and, through ``build_module`` and ``prepared_data``, for every command
that rebuilds a trained run from its checkpoint (checkpoint.py) or measures it (benchmarks/).
The run's Plan is made here, once, and handed to the parts that follow it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import AsyncCheckpointIO

from lightning_sota.augment.tta import TestTimeAugmentation
from lightning_sota.config.checks import check_batch_split, unsynced_batch_norm
from lightning_sota.cpu import CpuTuning
from lightning_sota.data.datamodule import ImagenetteDataModule
from lightning_sota.errors import ConfigError, UserError
from lightning_sota.report.interpret import Interpretation
from lightning_sota.report.show_batch import ShowBatch
from lightning_sota.run import layout
from lightning_sota.run.plan import Plan, build_data, make_plan, planned_phases
from lightning_sota.run.provenance import provenance
from lightning_sota.training.callbacks import History, LearningRates, ProgressiveResize, progress_bar
from lightning_sota.training.graphs import StepGraphs, blockers
from lightning_sota.training.loggers import log_config
from lightning_sota.training.module import ImageClassifier
from lightning_sota.training.selection import monitored, selection_callbacks

log = logging.getLogger(__name__)


def cpu_tuning(cfg: DictConfig, device: torch.device) -> CpuTuning:
    """Which of conf/cpu's speed-ups a run of ``cfg`` on ``device`` gets; one asked for where it
    cannot run is refused here."""
    return instantiate(cfg.cpu)(device)


def built(node: DictConfig, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)``; a refusal of the project's own code (a UserError: a
    value the schema cannot judge, such as a model.arch timm does not know) said in one line."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise


def build_parts(cfg: DictConfig) -> dict[str, Any]:
    """The module's parts besides the model, which needs the data's classes: the augmentation,
    normalization, mix, loss, and the optimizer's and schedule's factories."""
    return {
        "augment": built(cfg.augment),
        "normalize": built(cfg.normalize),
        "mix": built(cfg.mix) if cfg.mix else None,
        "loss": built(cfg.loss),
        "optimizer": built(cfg.optim),
        "schedule": built(cfg.schedule),
    }


def build_module(
    cfg: DictConfig,
    classes: list[str],
    tuning: CpuTuning,
    weights: bool = True,
    tune_process: bool = True,
    parts: dict[str, Any] | None = None,
) -> ImageClassifier:
    """The LightningModule of a config (a run's, or one saved in a checkpoint), its model (and,
    with ``tune_process``, this process) tuned by ``tuning``, which ``module.cpu_tuning`` records.
    ``weights=False``: not loaded from ``model.pretrained`` (a checkpoint's own weights follow).
    ``parts``: build_parts(cfg) made already (build_run makes them before the data)."""
    model = built(cfg.model, num_classes=len(classes), **({} if weights else {"pretrained": False}))
    module = ImageClassifier(
        model=model,
        **(parts or build_parts(cfg)),
        num_classes=len(classes),
        channels_last=cfg.model.channels_last,
        classes=classes,
        # plain strings for the schema's choices: the checkpoint loads with weights_only=True
        config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        seed=cfg.seed,
    )
    module.cpu_tuning = tuning.apply(model, process=tune_process)
    return module


@dataclass
class Run:
    """The parts of one training run."""

    plan: Plan
    data: ImagenetteDataModule
    module: ImageClassifier
    trainer: pl.Trainer
    history: History
    tta: TestTimeAugmentation | None
    interpretation: Interpretation
    show_batch: ShowBatch
    provenance: dict


def build_run(cfg: DictConfig, run_dir: Path, weights: bool = True) -> Run:
    """Every part of a run. Everything the config describes is built before any data is read,
    so a value a part refuses ends the run first: the module's parts, the callbacks, the loggers
    and the Trainer, whose constructor validates Lightning's options (devices, strategy, ...).
    The module comes last, its model sized for the data's classes and tuned for the Trainer's
    device (``weights``: see build_module)."""
    pl.seed_everything(cfg.seed, workers=True)
    phases = planned_phases(cfg.resize)
    parts = build_parts(cfg)
    data = build_data(cfg)
    history = History()
    interpretation = Interpretation(history, data, run_dir)
    show_batch = ShowBatch(run_dir / layout.SHOW_BATCH)
    tta: TestTimeAugmentation | None = built(cfg.tta) if cfg.tta else None
    callbacks = [
        history,
        ProgressiveResize(phases),
        LearningRates(),
        # One file, replaced (atomically, by Lightning) at every epoch end.
        ModelCheckpoint(
            dirpath=run_dir / layout.CHECKPOINTS, filename=layout.LAST, enable_version_counter=False
        ),
        show_batch,
        *selection_callbacks(cfg, run_dir),
        *([tta] if tta else []),
        *([built(cfg.weight_averaging)] if cfg.get("weight_averaging") else []),
        *(built(c) for c in cfg.get("callbacks", {}).values()),
        interpretation,  # after weight averaging's on_train_end, which puts the average in the model
        *([progress_bar()] if cfg.trainer.get("enable_progress_bar", True) else []),
    ]
    loggers = [built(c) for c in (cfg.logger or {}).values()]  # ~logger: none
    log_config(loggers, cfg)
    try:
        trainer: pl.Trainer = instantiate(
            cfg.trainer,
            max_epochs=sum(p.epochs for p in phases),
            callbacks=callbacks,
            logger=loggers,
            default_root_dir=str(run_dir),
            reload_dataloaders_every_n_epochs=1,
            num_sanity_val_steps=0,
            # Checkpoints are snapshotted, then written by a thread: the loop never waits on the disk.
            plugins=[AsyncCheckpointIO()],
        )
    except InstantiationException as err:  # Lightning's own refusal, or an unknown trainer.<key>
        raise ConfigError(f"trainer: {err.__cause__ or err}") from err
    batch_sizes = [p.batch_size for p in phases]
    check_batch_split(batch_sizes, trainer.world_size)
    note = unsynced_batch_norm(batch_sizes, trainer.world_size, cfg.trainer.get("sync_batchnorm", False))
    if note and trainer.is_global_zero:
        log.warning(note)
    tuning = cpu_tuning(cfg, trainer.strategy.root_device)  # refused here, before any data
    graphs: StepGraphs = built(cfg.graphs)  # decided again with the optimizer: configure_optimizers
    graphs.decide(blockers(trainer, parts["mix"], cfg.model.get("compile", False)))
    data.setup("fit")  # acquire and build the presize caches now: reported apart from the fit
    data.place(trainer.strategy.root_device, upload=True)  # and upload them, before the timed fit
    plan = make_plan(cfg, data)
    module = build_module(cfg, data.classes, tuning, weights, parts=parts)
    module.plan, module.serving, module.graphs = plan, data.serving(), graphs
    module.provenance = provenance()
    module.selection = {"monitor": monitored(cfg), "mode": str(cfg.checkpoint.mode)}
    return Run(plan, data, module, trainer, history, tta, interpretation, show_batch, module.provenance)
