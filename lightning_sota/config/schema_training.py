"""The schema of what trains and runs the model: loss, optim, schedule, weight averaging,
trainer, cpu and logger (the groups of the same names in conf/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from omegaconf import MISSING

from lightning_sota.config.fields import BELOW_ONE, FRACTION, POSITIVE, POSITIVE_INT, SWITCH, choice
from lightning_sota.config.rules import Check, at_least, each, is_integer, passes, rule, within

SelectMode = choice("SelectMode", "max", "min")
Reduction = choice("Reduction", "none")  # the module averages the per-image losses, or weighs them
BETAS = each(BELOW_ONE, length=2)
MOMS = each(FRACTION, length=3)


@dataclass
class LossConf:
    _target_: str = MISSING
    reduction: Reduction = MISSING
    label_smoothing: float = rule(BELOW_ONE, default=0.0)


@dataclass
class OptimConf:
    _target_: str = MISSING
    _partial_: bool = MISSING  # the module calls it with the model (its parameter groups)
    lr: float = rule(POSITIVE)
    weight_decay: float = rule(at_least(0))


@dataclass
class AdamFamily(OptimConf):
    betas: list[float] = rule(BETAS)
    eps: float = rule(POSITIVE)


@dataclass
class AdamConf(AdamFamily):
    fused: bool = MISSING


@dataclass
class RangerConf(AdamFamily):
    pass


@dataclass
class TimmOptimConf(OptimConf):
    _convert_: str = MISSING
    opt: str = MISSING  # timm's optimizer name


@dataclass
class AdamWConf(TimmOptimConf, AdamFamily):
    foreach: bool = MISSING


@dataclass
class LambConf(TimmOptimConf, AdamFamily):
    pass


@dataclass
class SgdConf(TimmOptimConf):
    momentum: float = rule(BELOW_ONE)
    foreach: bool = MISSING


@dataclass
class OneCycleConf:
    _target_: str = MISSING
    _partial_: bool = MISSING  # the module calls it with the optimizer and the plan's steps
    lr_max: float = rule(POSITIVE)
    div: float = rule(POSITIVE)
    div_final: float = rule(POSITIVE)
    pct_start: float = rule(FRACTION)
    moms: list[float] | None = rule(MOMS)


@dataclass
class FineTuneConf(OneCycleConf):
    fine_tune_lr: float = rule(POSITIVE)


@dataclass
class FineTunePretrainedConf:
    _target_: str = MISSING
    _partial_: bool = MISSING
    base_lr: float = rule(POSITIVE)
    freeze_epochs: int = rule(POSITIVE)  # fewer than the run's epochs: checks.py
    lr_mult: float = rule(POSITIVE)
    pct_start: float = rule(FRACTION)
    div: float = rule(POSITIVE)
    div_final: float = rule(POSITIVE)
    moms: list[float] | None = rule(MOMS)


@dataclass
class EmaFunctionConf:
    _target_: str = MISSING
    decay: float = rule(within(0, 1, low_open=True, high_open=True))


@dataclass
class EmaConf:
    _target_: str = MISSING
    multi_avg_fn: EmaFunctionConf = MISSING


# Mixed precision computes in half precision under autocast and keeps fp32 weights, as fastai's
# to_fp16/to_bf16 do. The *-true precisions hold the weights themselves in 16 or 64 bits: Adam's
# small updates to bf16 weights are lost in training from scratch, and their default dtype
# would reach the augmentation's geometry, which is fp32 by design.
PRECISIONS = ("32-true", "32", 32, "bf16-mixed", "bf16", "16-mixed", "16", 16)


@dataclass
class TrainerConf:
    """Open: any other option of Lightning's Trainer may be added (``+trainer.<key>=``), which
    the Trainer's constructor checks; checks.REFUSED_TRAINER lists those the plan refuses."""

    OPEN: ClassVar[bool] = True

    _target_: str = MISSING
    accelerator: str = MISSING
    devices: Any = MISSING  # a count, a list of indices, -1 or auto: Lightning checks it
    # checked as typed: the default, ls.fast_precision, gives one of them, and resolving it would
    # ask the GPU before checks.check_devices has said whether there is one
    precision: Any = rule(
        passes(
            lambda v: not isinstance(v, bool) and v in PRECISIONS,
            "the weights and the augmentation's geometry would be held in that precision; use "
            "bf16-mixed (bf16 compute on fp32 weights, the GPU default), 16-mixed or 32-true",
        ),
        interpolated=False,
    )
    log_every_n_steps: int = rule(POSITIVE)
    benchmark: bool = MISSING
    enable_progress_bar: bool = MISSING
    enable_model_summary: bool = MISSING
    use_distributed_sampler: bool = rule(
        passes(lambda v: v is False, "the datamodule shards every epoch per rank itself; set it to false")
    )

    # The options the run's plan reads (plan.py, module.py, checks.py), checked when added.
    ADDED: ClassVar[dict[str, Check]] = {
        "accumulate_grad_batches": passes(lambda v: is_integer(v) and v >= 1, "must be an integer >= 1"),
        "limit_train_batches": passes(
            lambda v: (is_integer(v) and v >= 1) or (isinstance(v, float) and 0 < v <= 1),
            "must be a batch count >= 1 or a fraction in (0, 1]",
        ),
        "gradient_clip_val": passes(
            lambda v: (is_integer(v) or isinstance(v, float)) and v >= 0, "must be >= 0"
        ),
        "num_nodes": passes(lambda v: is_integer(v) and v >= 1, "must be an integer >= 1"),
        "sync_batchnorm": passes(lambda v: isinstance(v, bool), "use true or false"),
    }


@dataclass
class CpuConf:
    _target_: str = MISSING
    _partial_: bool = MISSING  # completed with the run's device
    small_map_gemm: Any = rule(SWITCH)
    reuse_host_memory: Any = rule(SWITCH)


@dataclass
class GraphsConf:
    _target_: str = MISSING
    capture: Any = rule(SWITCH)
    warmup: int = rule(POSITIVE_INT)  # eager steps of each batch shape before its capture


@dataclass
class CsvLoggerConf:
    _target_: str = MISSING
    save_dir: str | None = MISSING  # the Hydra run's folder: None where there is none (--cfg job)
    name: str = MISSING
    version: str = MISSING


@dataclass
class LoggerConf:
    """Open: every option logs metrics.csv; loggers of the user's may be added beside it."""

    OPEN: ClassVar[bool] = True

    csv: CsvLoggerConf = MISSING


@dataclass
class CheckpointConf:
    """conf/checkpoint: the best epochs kept beside last.ckpt, and early stopping
    (training/selection.py); which metrics may be monitored: checks.check_selection."""

    save_top_k: int = rule(at_least(0))
    monitor: str = MISSING
    mode: SelectMode = MISSING
    patience: int | None = rule(POSITIVE)
