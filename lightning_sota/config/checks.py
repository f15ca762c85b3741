"""Reject invalid settings before any data is touched, each with a message that names the fix:
the rules that span several keys or need this machine. Each key's type, choices and range are
the schema's (schema.py), checked first.

An option the config accepts is either honoured or refused here: nothing is silently ignored.
Honoured Trainer options that touch the plan: ``accumulate_grad_batches`` and
``limit_train_batches`` (the schedule is sized from them, module.py), ``gradient_clip_val``
(module.py), ``devices``/``num_nodes``/``strategy`` (the batches are sharded per rank, data.py).
"""

from __future__ import annotations

import os

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from lightning_sota.config.schema import validate
from lightning_sota.errors import ConfigError, UserError
from lightning_sota.models.weights import check_pretrained
from lightning_sota.run.plan import planned_phases
from lightning_sota.training.schedule import check_freeze_epochs
from lightning_sota.training.selection import METRICS

PHASES_FIX = "epochs come from the phases: set scale.epochs (resize=fixed) or scale.progressive.N.epochs"
WHOLE_SPLIT = "val_acc and tta_acc are scored on the whole validation split every epoch: remove it"
SET_BY_TRAIN = "train.py sets it for every run"
# Trainer options that would cut the plan short, score part of the validation split, or that
# train.py passes itself (Hydra's instantiate would let its value win silently).
REFUSED_TRAINER = {
    "max_epochs": PHASES_FIX,
    "min_epochs": PHASES_FIX,
    "max_steps": PHASES_FIX,
    "min_steps": PHASES_FIX,
    "max_time": "a run ends with its one-cycle schedule: pick a smaller scale or fewer epochs instead",
    "fast_dev_run": "it would stop after one epoch of the phases: use debug=fdr (each phase, one batch)",
    "overfit_batches": "it would not follow the phases' batch sizes: use debug=overfit",
    "check_val_every_n_epoch": WHOLE_SPLIT,
    "val_check_interval": WHOLE_SPLIT,
    "limit_val_batches": WHOLE_SPLIT,
    "limit_test_batches": WHOLE_SPLIT,
    "num_sanity_val_steps": SET_BY_TRAIN,
    "reload_dataloaders_every_n_epochs": SET_BY_TRAIN + " (the phases change the loaders)",
    "default_root_dir": "runs go to Hydra's folder: set hydra.run.dir",
    "callbacks": SET_BY_TRAIN,
    "logger": "choose logger=csv, tensorboard, wandb or mlflow",
    "enable_checkpointing": "the last checkpoint is written every epoch for resume=",
    "plugins": SET_BY_TRAIN,
}


def check_config(cfg: DictConfig) -> None:
    """The schema's types and ranges (schema.validate), then the rules that span several keys
    or need this machine: the model built on the meta device, the trainer's options against the
    plan, the devices against the machine, the frozen epochs against the run's."""
    validate(cfg)
    check_model(cfg.model)
    check_trainer(cfg)
    check_selection(cfg)
    if "freeze_epochs" in cfg.schedule:  # fine_tune_pretrained
        check_freeze_epochs(cfg.schedule.freeze_epochs, sum(p.epochs for p in planned_phases(cfg.resize)))


def check_model(model: DictConfig) -> None:
    """Build the model on the meta device (no memory, no initialisation work), so an unknown arch
    or a ``widen`` it cannot take is refused in one line before any data is read."""
    check_pretrained(
        model.arch,
        model.get("pretrained", False),
        model.get("widen", 1),
        model.get("act"),
        model.get("sa", False),
    )
    try:
        with torch.device("meta"):
            instantiate(model, num_classes=10, pretrained=False)  # the weights: not needed to check
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):  # create_model's refusals name the fix
            raise err.__cause__ from None
        raise


def check_trainer(cfg: DictConfig) -> None:
    trainer = cfg.trainer
    for key, fix in REFUSED_TRAINER.items():
        if key in trainer:
            raise ConfigError(f"trainer.{key} is not supported: {fix}")
    clip = trainer.get("gradient_clip_val") or 0
    if clip and str(trainer.precision) in ("16", "16-mixed") and cfg.optim.get("fused"):
        raise ConfigError(
            f"trainer.gradient_clip_val={clip} with precision 16-mixed: the fused optimizer unscales "
            "inside its step, too late to clip; use trainer.precision=bf16-mixed or optim.fused=false"
        )
    check_devices(trainer)


def check_selection(cfg: DictConfig) -> None:
    """checkpoint.monitor: a metric the run logs once an epoch (a holdout's with data.holdout)."""
    monitor = str(cfg.checkpoint.monitor)
    if monitor == "auto":
        return
    if monitor not in METRICS:
        raise ConfigError(
            f"checkpoint.monitor={monitor}: a run logs {', '.join(METRICS)}; use one of them or auto"
        )
    if monitor.startswith("holdout") and not cfg.data.get("holdout"):
        raise ConfigError(
            f"checkpoint.monitor={monitor} without a holdout: set data.holdout=0.1, or monitor val_acc"
        )


def check_multirun(trainer: DictConfig, multirun: bool) -> None:
    """Lightning starts the other DDP ranks by running the command again: under Hydra's -m each
    rank would run the whole sweep (Lightning issue #15689). SLURM and torchrun start the ranks
    themselves, and ddp_spawn/ddp_fork start them inside the job."""
    strategy = str(trainer.get("strategy", "auto"))
    relaunches = strategy.startswith("ddp") and not any(k in strategy for k in ("spawn", "fork", "notebook"))
    if multirun and relaunches and not cluster_launched():
        raise ConfigError(
            f"trainer.strategy={strategy} under -m: Lightning's launcher would run the whole sweep "
            "again in every rank; run the jobs one by one, or sweep with hydra/launcher=slurm "
            "(or under torchrun), or use trainer.strategy=ddp_spawn"
        )


def check_batch_split(batch_sizes: list[int], world: int) -> None:
    """A phase's batch_size is the global batch (data.ShardedBatches): it must split evenly."""
    for batch_size in batch_sizes:
        if batch_size % world:
            raise ConfigError(
                f"batch_size={batch_size} does not split over {world} ranks: batch sizes are global "
                f"(each rank takes batch_size/{world}); make every phase's batch_size a multiple of {world}"
            )


def unsynced_batch_norm(batch_sizes: list[int], world: int, synced: bool) -> str | None:
    """The line to say when each DDP rank normalizes batches of under 32 images with BatchNorm
    statistics of its own (noisy statistics: a known loss of accuracy); None otherwise."""
    per_rank = min(batch_sizes) // world
    if world == 1 or synced or per_rank >= 32:
        return None
    return (
        f"each of the {world} ranks trains on batches of {per_rank} images (batch sizes are global) "
        "with BatchNorm statistics of its own: set trainer.sync_batchnorm=true, or larger batch sizes"
    )


def cluster_launched() -> bool:
    """True under a launcher that starts and connects every node's ranks: SLURM's srun,
    torchrun, LSF, MPI, or MASTER_ADDR/MASTER_PORT set by hand or by Kubeflow."""
    from lightning_fabric.plugins.environments import (
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    detected = (SLURMEnvironment, TorchElasticEnvironment, LSFEnvironment, MPIEnvironment)
    return {"MASTER_ADDR", "MASTER_PORT"} <= set(os.environ) or any(env.detect() for env in detected)


def check_devices(trainer: DictConfig) -> None:
    """What Lightning would find out only at fit time, after the data: or never (a multi-node
    job without its other nodes waits for them until the process-group timeout)."""
    accelerator = str(trainer.get("accelerator", "auto"))
    devices = trainer.get("devices", "auto")
    if accelerator in ("gpu", "cuda"):
        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise ConfigError(
                f"trainer.accelerator={accelerator} but this machine has no GPU: use trainer=cpu, "
                "or trainer=ddp_cpu for DDP across CPU processes"
            )
        if isinstance(devices, int) and devices > gpus:
            raise ConfigError(
                f"trainer.devices={devices} but {gpus} GPU(s) are visible: use trainer.devices={gpus} "
                "or -1 (all of them)"
            )
    nodes = trainer.get("num_nodes", 1)
    if nodes > 1 and not cluster_launched():
        raise ConfigError(
            f"trainer.num_nodes={nodes} but no multi-node launcher started this process: run it "
            f"with srun (or hydra/launcher=slurm hydra.launcher.nodes={nodes}) or torchrun --nnodes={nodes}"
        )
