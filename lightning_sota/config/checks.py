"""Reject invalid settings before any data is touched, each with a message that names the fix.

An option the config accepts is either honoured or refused here: nothing is silently ignored.
Honoured Trainer options that touch the plan: ``accumulate_grad_batches`` and
``limit_train_batches`` (the schedule is sized from them, module.py), ``gradient_clip_val``
(module.py), ``devices``/``num_nodes``/``strategy`` (the batches are sharded per rank, data.py).
"""

from __future__ import annotations

import inspect
import os

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_sota.cpu import Switch
from lightning_sota.errors import ConfigError
from lightning_sota.models.weights import check_pretrained

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


# Mixed precision computes in half precision under autocast and keeps fp32 weights, as fastai's
# to_fp16/to_bf16 do. The *-true precisions hold the weights themselves in 16 or 64 bits: Adam's
# small updates to bf16 weights are lost in training from scratch, and their default dtype
# would reach the augmentation's geometry, which is fp32 by design.
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16")
COMPILE_MODES = ("default", "lite", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_config(cfg: DictConfig) -> None:
    phases = cfg.resize.phases
    if not phases:
        raise ConfigError("resize.phases is empty: give at least one {size, batch_size, epochs}")
    for i, p in enumerate(phases):
        for key in ("size", "batch_size", "epochs"):
            if not isinstance(p[key], int) or p[key] <= 0:
                raise ConfigError(f"resize.phases[{i}].{key}={p[key]!r}: must be a positive integer")
    sizes = [p["size"] for p in phases]
    if sizes != sorted(sizes):
        raise ConfigError(
            f"resize.phases sizes {sizes} decrease: progressive resizing goes from small to large"
        )
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr={cfg.optim.lr}: must be > 0")
    if cfg.mix and cfg.mix.get("alpha", 1) <= 0:
        raise ConfigError(f"mix.alpha={cfg.mix.alpha}: must be > 0 (Beta(alpha, alpha))")
    eps = cfg.loss.get("label_smoothing", 0.0)
    if not 0 <= eps < 1:
        raise ConfigError(f"loss.label_smoothing={eps}: must be in [0, 1)")
    if not 0 < cfg.augment.min_scale <= 1:
        raise ConfigError(f"augment.min_scale={cfg.augment.min_scale}: must be in (0, 1]")
    valid_scale = cfg.augment.get("valid_scale", 1.0)
    if not 0 < valid_scale <= 1:
        raise ConfigError(f"augment.valid_scale={valid_scale}: use a side fraction in (0, 1]")
    if not 0 <= cfg.data.get("valid_pct", 0) < 1:
        raise ConfigError(f"data.valid_pct={cfg.data.valid_pct}: must be a fraction in [0, 1)")
    if not 0 <= cfg.data.get("holdout", 0) < 1:
        raise ConfigError(f"data.holdout={cfg.data.holdout}: must be a fraction in [0, 1)")
    if cfg.augment.pad_mode not in ("reflection", "border"):
        raise ConfigError(f"augment.pad_mode={cfg.augment.pad_mode!r}: use reflection (fastai's) or border")
    if cfg.tta and cfg.tta.n < 1:
        raise ConfigError(f"tta.n={cfg.tta.n}: must be >= 1")
    compile_mode = cfg.model.get("compile", False)
    if not isinstance(compile_mode, bool) and compile_mode not in COMPILE_MODES:
        modes = ", ".join(COMPILE_MODES)
        raise ConfigError(f"model.compile={compile_mode!r}: use true, false or a torch.compile mode: {modes}")
    check_switches(cfg)
    check_model(cfg.model)
    check_trainer(cfg)


# The annotations a switch of the project's own targets has, and what to write instead.
SWITCHES = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    bool | None: (lambda v: v is None or isinstance(v, bool), "true, false or null"),
    Switch: (lambda v: isinstance(v, bool) or v == "auto", "auto, true or false"),
}


def check_switches(cfg: DictConfig) -> None:
    """Every parameter the project's own ``_target_``s annotate as a switch gets a bool: a string
    such as ``model.blur_pool=no`` or ``tta.use_max=off`` is truthy and would silently turn the
    feature on."""

    def walk(node: dict, path: str) -> None:
        target = node.get("_target_")
        if isinstance(target, str) and target.startswith("lightning_sota."):
            for name, param in inspect.signature(get_object(target), eval_str=True).parameters.items():
                if name in node and param.annotation in SWITCHES:
                    valid, fix = SWITCHES[param.annotation]
                    value = OmegaConf.select(cfg, path + name)  # interpolations resolved
                    if not valid(value):
                        raise ConfigError(f"{path}{name}={value!r}: use {fix}")
        for key, child in node.items():
            if isinstance(child, dict):
                walk(child, f"{path}{key}.")

    # unresolved, so a node's interpolations (run directories) are read only where they are switches
    walk(OmegaConf.to_container(cfg, resolve=False), "")


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
        if isinstance(err.__cause__, ValueError):  # create_model's refusals name the fix
            raise ConfigError(str(err.__cause__)) from err
        raise


def check_trainer(cfg: DictConfig) -> None:
    trainer = cfg.trainer
    for key, fix in REFUSED_TRAINER.items():
        if key in trainer:
            raise ConfigError(f"trainer.{key} is not supported: {fix}")
    if trainer.get("use_distributed_sampler", False):
        raise ConfigError(
            "trainer.use_distributed_sampler=true: the datamodule shards every epoch per rank itself; "
            "remove it"
        )
    accumulate = trainer.get("accumulate_grad_batches", 1)
    if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches={accumulate!r}: must be an integer >= 1")
    limit = trainer.get("limit_train_batches", 1.0)
    if isinstance(limit, bool) or not (
        (isinstance(limit, int) and limit >= 1) or (isinstance(limit, float) and 0 < limit <= 1)
    ):
        raise ConfigError(
            f"trainer.limit_train_batches={limit!r}: must be a batch count >= 1 or a fraction in (0, 1]"
        )
    # unresolved: the default (an ls.fast_precision interpolation) is always one of them, and
    # resolving it would ask the GPU before the device checks below
    precision = str(OmegaConf.to_container(trainer, resolve=False).get("precision"))
    if not precision.startswith("${") and precision not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision} is not supported: the weights and the augmentation's "
            "geometry would be held in that precision; use bf16-mixed (bf16 compute on fp32 weights, "
            "the GPU default), 16-mixed or 32-true"
        )
    clip = trainer.get("gradient_clip_val") or 0
    if clip < 0:
        raise ConfigError(f"trainer.gradient_clip_val={clip}: must be >= 0")
    if clip and str(trainer.get("precision")) in ("16", "16-mixed") and cfg.optim.get("fused"):
        raise ConfigError(
            f"trainer.gradient_clip_val={clip} with precision 16-mixed: the fused optimizer unscales "
            "inside its step, too late to clip; use trainer.precision=bf16-mixed or optim.fused=false"
        )
    check_devices(trainer)


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
    if not isinstance(nodes, int) or nodes < 1:
        raise ConfigError(f"trainer.num_nodes={nodes!r}: must be an integer >= 1")
    if nodes > 1 and not cluster_launched():
        raise ConfigError(
            f"trainer.num_nodes={nodes} but no multi-node launcher started this process: run it "
            f"with srun (or hydra/launcher=slurm hydra.launcher.nodes={nodes}) or torchrun --nnodes={nodes}"
        )
