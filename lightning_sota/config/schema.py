"""The config's schema: every group's keys with their types, choices and ranges, declared once.

Each dataclass is stored in Hydra's ConfigStore as ``base_<group>`` (``base_<option>`` for optim
and schedule, whose options take different keys), and each option's YAML in conf/<group>/ lists
it first in its defaults (``- /base_augment``): the YAML holds the values (a field's default is
MISSING unless the key is optional), the schema what they may be. OmegaConf then refuses a wrong
type, an unknown choice or an unknown key while composing; the ranges (rules.py) are checked by
``validate`` right after, with keys added by ``+key=``. The trainer and logger groups are open:
Lightning's other options and users' loggers may be added; the trainer's options that the run's
plan reads are checked when given (``TrainerConf.ADDED``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_sota.config.rules import (
    Check,
    above,
    at_least,
    check_values,
    each,
    is_integer,
    passes,
    rule,
    within,
)
from lightning_sota.errors import ConfigError


class Choice(str, Enum):
    """A key's closed set of values, refused by OmegaConf when it is none of them. A member is
    the string the YAML holds (``==``, ``str()``, hashing), so the code compares it as one; a
    config leaving the process (a checkpoint's) is converted with ``enum_to_str=True``."""

    def __str__(self) -> str:
        return str(self.value)


def choice(name: str, *values: str) -> Any:
    return Choice(name, {v: v for v in values}, module=__name__, qualname=name)


Variant = choice("Variant", "160px", "320px", "full")
Pool = choice("Pool", "avg", "max", "max_blur")
Interpolation = choice("Interpolation", "bilinear", "nearest", "bicubic")
PadMode = choice("PadMode", "reflection", "border")
Crop = choice("Crop", "square", "image")
Reduction = choice("Reduction", "none")  # the module averages the per-image losses, or weighs them
TtaMode = choice("TtaMode", "augment", "flip")

POSITIVE = above(0)
POSITIVE_INT = passes(lambda v: is_integer(v) and v > 0, "must be a positive integer")
FRACTION = within(0, 1)
BELOW_ONE = within(0, 1, high_open=True)  # [0, 1)
SIDE = within(0, 1, low_open=True)  # (0, 1]
SWITCH = passes(lambda v: isinstance(v, bool) or v == "auto", "use auto, true or false")
BETAS = each(BELOW_ONE, length=2)
MOMS = each(FRACTION, length=3)
RGB = each(FRACTION, length=3)


def rising(phases: list) -> str | None:
    """Progressive resizing goes from small to large; sizes that are not integers are said by
    the phases' own checks."""
    if not phases:
        return "give at least one {size, batch_size, epochs}"
    sizes = [p["size"] for p in phases]
    if all(isinstance(s, int) for s in sizes) and sizes != sorted(sizes):
        return f"sizes {sizes} decrease: progressive resizing goes from small to large"
    return None


@dataclass
class Phase:
    size: int = rule(POSITIVE_INT)
    batch_size: int = rule(POSITIVE_INT)  # the global batch, split over the ranks
    epochs: int = rule(POSITIVE_INT)


@dataclass
class DataConf:
    _target_: str = MISSING
    root: str = MISSING
    variant: Variant = MISSING
    download: bool = MISSING
    base_url: str | None = MISSING
    presize: int | None = rule(POSITIVE)
    max_aspect: float = rule(at_least(1))
    cache_dir: str = MISSING
    cache_workers: int | None = rule(POSITIVE)
    workers: int = rule(at_least(0))
    on_device: bool | None = MISSING
    val_batch_size: int | None = rule(POSITIVE)
    seed: int = MISSING
    holdout: float = rule(BELOW_ONE)
    holdout_seed: int = MISSING
    valid_pct: float = rule(BELOW_ONE)
    split_seed: int = MISSING


# torch.compile's modes (model.compile: true is the default one)
COMPILE_MODES = ("default", "lite", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class ModelConf:
    _target_: str = MISSING
    arch: str = MISSING  # an xresnet or any timm name: checks.check_model builds it to know
    widen: float = rule(POSITIVE)
    blur_pool: bool = MISSING
    pool: Pool = MISSING
    act: str | None = MISSING
    sa: bool = MISSING
    channels_last: bool = MISSING
    compile: Any = rule(
        passes(
            lambda v: isinstance(v, bool) or v in COMPILE_MODES,
            f"use true, false or a torch.compile mode: {', '.join(COMPILE_MODES)}",
        )
    )
    # true: timm's ImageNet weights; a path: a weights file, run folder or checkpoint (checks.py)
    pretrained: Any = rule(
        passes(
            lambda v: isinstance(v, bool) or (isinstance(v, str) and v != ""),
            "use true, false or a weights file, run folder or checkpoint",
        )
    )


@dataclass
class NormalizeConf:
    _target_: str = MISSING
    mean: list[float] | None = rule(RGB)
    std: list[float] | None = rule(each(POSITIVE, length=3))
    from_batch: bool = False


@dataclass
class AugmentConf:
    _target_: str = MISSING
    min_scale: float = rule(SIDE)
    ratio: list[float] = rule(
        passes(
            lambda r: len(r) == 2 and 0 < r[0] <= r[1],
            "use [low, high] with 0 < low <= high, e.g. [0.75, 1.333]",
        )
    )
    p_flip: float = rule(FRACTION)
    max_rotate: float = rule(at_least(0))
    min_zoom: float = rule(POSITIVE)
    max_zoom: float = rule(POSITIVE)
    max_warp: float = rule(BELOW_ONE)
    p_affine: float = rule(FRACTION)
    max_lighting: float = rule(BELOW_ONE)
    p_lighting: float = rule(FRACTION)
    mode: Interpolation = MISSING
    pad_mode: PadMode = MISSING
    crop: Crop = MISSING
    valid_scale: float = rule(SIDE)


@dataclass
class ResizeConf:
    phases: list[Phase] = rule(rising)
    # experiment/sota.yaml's phases for each scale (scale name -> phases), picked by ls.pick
    budget: dict[str, list[Phase]] | None = None
    epochs_per_phase: int | None = rule(POSITIVE)  # debug: every phase runs this many epochs
    overfit_batches: int = rule(at_least(0))  # debug=overfit


@dataclass
class MixConf:
    _target_: str = MISSING
    alpha: float = rule(POSITIVE)  # Beta(alpha, alpha)


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
class AdamConf(OptimConf):
    betas: list[float] = rule(BETAS)
    eps: float = rule(POSITIVE)
    fused: bool = MISSING


@dataclass
class RangerConf(OptimConf):
    betas: list[float] = rule(BETAS)
    eps: float = rule(POSITIVE)


@dataclass
class TimmOptimConf(OptimConf):
    _convert_: str = MISSING
    opt: str = MISSING  # timm's optimizer name


@dataclass
class AdamWConf(TimmOptimConf):
    betas: list[float] = rule(BETAS)
    eps: float = rule(POSITIVE)
    foreach: bool = MISSING


@dataclass
class LambConf(TimmOptimConf):
    betas: list[float] = rule(BETAS)
    eps: float = rule(POSITIVE)


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
class TtaConf:
    _target_: str = MISSING
    n: int = rule(at_least(1))
    beta: float = rule(FRACTION)
    use_max: bool = MISSING
    mode: TtaMode = MISSING
    seed: int = MISSING


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
class ScaleConf:
    name: str = MISSING  # experiment/sota.yaml picks its phases by it
    size: int = rule(POSITIVE)
    batch_size: int = rule(POSITIVE)
    epochs: int = rule(POSITIVE)
    lr: float = rule(POSITIVE)
    progressive: list[Phase] = rule(rising)  # resize=progressive's phases


@dataclass
class RunConf:
    """The composed config's top level. Each group is typed by the schema its option lists; in
    the order the checks follow (``scale`` first: the groups interpolate it)."""

    name: str = MISSING
    seed: int = MISSING
    resume: str | None = MISSING
    skip_completed: bool = MISSING
    callbacks: dict[str, Any] = MISSING  # +callbacks.<name>._target_=...
    lr_find: Any = rule(passes(lambda v: isinstance(v, bool) or v == "only", "use true, false or only"))
    scale: Any = MISSING
    data: Any = MISSING
    model: Any = MISSING
    normalize: Any = MISSING
    augment: Any = MISSING
    resize: Any = MISSING
    mix: Any = None
    loss: Any = MISSING
    optim: Any = MISSING
    schedule: Any = MISSING
    tta: Any = None
    weight_averaging: Any = None
    trainer: Any = MISSING
    cpu: Any = MISSING
    logger: Any = None  # ~logger: none (a config composed outside a Hydra run has no run folder)


# The groups whose options share one schema, stored as base_<group>.
GROUPS: dict[str, type] = {
    "scale": ScaleConf,
    "data": DataConf,
    "model": ModelConf,
    "normalize": NormalizeConf,
    "augment": AugmentConf,
    "resize": ResizeConf,
    "mix": MixConf,
    "loss": LossConf,
    "tta": TtaConf,
    "weight_averaging": EmaConf,
    "trainer": TrainerConf,
    "cpu": CpuConf,
    "logger": LoggerConf,
}
# The groups whose options take different keys: a schema per option, stored as base_<option>.
OPTIONS: dict[str, dict[str, type]] = {
    "optim": {"adam": AdamConf, "adamw": AdamWConf, "lamb": LambConf, "ranger": RangerConf, "sgd": SgdConf},
    "schedule": {
        "one_cycle": OneCycleConf,
        "fine_tune": FineTuneConf,
        "fine_tune_pretrained": FineTunePretrainedConf,
    },
}


def structured(schema: type) -> DictConfig:
    """The schema as a config node; an open one takes keys it does not declare."""
    return OmegaConf.structured(schema, flags={"struct": False} if getattr(schema, "OPEN", False) else None)


def register() -> None:
    """Each schema as a config of no group (``/base_<name>`` in the YAML's defaults), so that
    neither --help nor an unknown option's message lists it among a group's options."""
    store = ConfigStore.instance()
    store.store(name="base_config", node=RunConf)
    for group, schema in GROUPS.items():
        store.store(name=f"base_{group}", node=structured(schema))
    for options in OPTIONS.values():
        for option, schema in options.items():
            store.store(name=f"base_{option}", node=structured(schema))


def typed(cfg: DictConfig) -> DictConfig:
    """A config not composed through the schemas (a checkpoint's) merged into them: the top
    level and the groups with one schema. Its optim and schedule are left as they are (which
    option's schema they had is not saved), and no command on a checkpoint may change them."""
    schema = OmegaConf.structured(RunConf)
    for group, kind in GROUPS.items():
        if cfg.get(group):
            schema[group] = structured(kind)
    return OmegaConf.merge(schema, cfg)


def validate(cfg: DictConfig) -> None:
    """The types (for a config not composed through the schemas) and every range, on the
    resolved values; the first problem raised as a one-line ConfigError."""
    try:
        check_values(cfg if OmegaConf.get_type(cfg) is RunConf else typed(cfg), RunConf)
    except OmegaConfBaseException as err:  # a wrong type, or a value an interpolation gives
        raise config_error(err) from err


def config_error(err: Exception) -> ConfigError:
    """Hydra's or OmegaConf's refusal in one line: the key OmegaConf names and its reason, or
    Hydra's message with a list's items joined (an unknown option and the group's options)."""
    cause = err if isinstance(err, OmegaConfBaseException) else err.__cause__
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:
        return ConfigError(f"{cause.full_key}: {str(cause).splitlines()[0]}")
    text = str(err).split("\nConfig search path:")[0]  # Hydra's where-it-looked, after its message
    sentences: list[str] = []
    for line in text.splitlines():
        if line.startswith("\t"):  # an item of the list the sentence before announces
            sentences[-1] += ("" if sentences[-1].endswith(":") else ",") + " " + line.strip()
        elif line.strip():
            sentences.append(line.strip())
    return ConfigError("; ".join(sentences))


register()
