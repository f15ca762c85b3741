"""The config's schema: every group's keys with their types, choices and ranges, declared once.

The groups' dataclasses live in schema_data.py and schema_training.py, their shared fields in
fields.py. Each is stored in Hydra's ConfigStore as ``base_<group>`` (``base_<option>`` for optim
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
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_sota.config.rules import check_values, passes, rule
from lightning_sota.config.schema_data import (
    AugmentConf,
    DataConf,
    MixConf,
    ModelConf,
    NormalizeConf,
    ResizeConf,
    ScaleConf,
    TtaConf,
)
from lightning_sota.config.schema_training import (
    AdamConf,
    AdamWConf,
    CheckpointConf,
    CpuConf,
    EmaConf,
    FineTuneConf,
    FineTunePretrainedConf,
    GraphsConf,
    LambConf,
    LoggerConf,
    LossConf,
    OneCycleConf,
    RangerConf,
    SgdConf,
    TrainerConf,
)
from lightning_sota.errors import ConfigError


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
    checkpoint: Any = MISSING
    cpu: Any = MISSING
    graphs: Any = MISSING
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
    "checkpoint": CheckpointConf,
    "cpu": CpuConf,
    "graphs": GraphsConf,
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
