"""One way back from a checkpoint, for resume, evaluate, predict and export: the file read and
checked, the run's own config with the overrides its command may apply, and its LightningModule
(model, augmentation, normalization) with the trained weights, built by the code that trained it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_sota.augment.tta import TestTimeAugmentation
from lightning_sota.config.schema import validate
from lightning_sota.data.datamodule import ImagenetteDataModule
from lightning_sota.errors import ConfigError
from lightning_sota.run import layout
from lightning_sota.run.build import build_module, cpu_tuning
from lightning_sota.run.plan import Plan, planned_phases
from lightning_sota.training.module import ImageClassifier

# What a command given a trained run may change: where its data is and what computes, never
# what was trained. A key covers everything under it (``cpu`` covers ``cpu.small_map_gemm``).
WHERE = (
    "data.root",
    "data.cache_dir",
    "data.download",
    "data.base_url",
    "data.workers",
    "data.cache_workers",
)
COMPUTE = ("trainer.accelerator", "trainer.precision", "cpu", "graphs")
FREE = {
    "resume": (
        *("resume", "skip_completed", "logger", "cpu", "graphs", "trainer.enable_progress_bar", *WHERE),
        # batch sizes are global (data.ShardedBatches): steps and schedule do not depend on these
        *("trainer.devices", "trainer.num_nodes"),
    ),
    "evaluate": (*WHERE, "data.variant", "data.val_batch_size", *COMPUTE),
    "predict": COMPUTE,
    "export": COMPUTE,
}


def covered(key: str, keys: tuple[str, ...]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in keys)


def flat(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: one entry per leaf."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def keep_plan(
    saved: DictConfig, proposed: DictConfig, typed: list[str], command: str, fix: str
) -> DictConfig:
    """The run's ``saved`` config, with what ``command`` may change taken from ``proposed`` (the
    config the command line composes) for the keys the user ``typed``. Repeating the run's own
    settings is fine; an override that would change anything else is refused, naming it."""
    free = FREE[command]
    for key in typed:  # key=value sets one setting: a group's node cannot be swapped for a value
        if OmegaConf.is_dict(OmegaConf.select(saved, key)) and not OmegaConf.is_dict(
            OmegaConf.select(proposed, key)
        ):
            raise ConfigError(f"{key}= is a group of settings: give its keys one by one ({key}.<key>=...)")
    if any(not covered(k, free) for k in typed):
        # top-level groups that are wholly free (loggers: Hydra-run paths) need not resolve
        planned = OmegaConf.masked_copy(proposed, [k for k in proposed if not covered(str(k), free)])
        mine = flat(OmegaConf.to_container(planned, resolve=True, enum_to_str=True))
        theirs = flat(OmegaConf.to_container(saved, resolve=True))
        keys = sorted(mine.keys() | theirs.keys())
        changed = [k for k in keys if not covered(k, free) and mine.get(k) != theirs.get(k)]
        if changed:  # name a key the user typed when there is one
            named = [k for k in changed if covered(k, tuple(typed))]
            k = (named or changed)[0]
            more = f", and {len(changed) - 1} more" if len(changed) > 1 else ""
            raise ConfigError(
                f"these overrides would change the run's config ({k}: {theirs.get(k)!r} -> {mine.get(k)!r}"
                f"{more}); {fix}"
            )
    cfg = saved.copy()
    for key in typed:
        if covered(key, free):
            OmegaConf.update(cfg, key, OmegaConf.select(proposed, key), merge=False)
    return cfg


def saved_config(ckpt: dict) -> DictConfig:
    """The run's resolved config as its checkpoint holds it, in today's layout (upgrade)."""
    return upgrade(OmegaConf.create(ckpt["lightning_sota"]["config"]))


# Where each module of the flat package (before 3ebfff8) went: a checkpoint saved then names its
# parts' classes by the old paths in its config's _target_s.
MOVED = {
    "acquire": "data.acquire",
    "cache": "data.cache",
    "data": "data.datamodule",
    "augment": "augment.augment",
    "normalize": "augment.normalize",
    "mix": "augment.mix",
    "tta": "augment.tta",
    "models": "models.xresnet",
    "layers": "models.layers",
    "weights": "models.weights",
    "module": "training.module",
    "optim": "training.optim",
    "schedule": "training.schedule",
    "callbacks": "training.callbacks",
    "weight_averaging": "training.weight_averaging",
    "loggers": "training.loggers",
}


def moved_target(target: str) -> str:
    """``lightning_sota.<module>.<name>`` of the flat package -> its path today."""
    parts = target.split(".")
    if len(parts) == 3 and parts[0] == "lightning_sota" and parts[1] in MOVED:
        return f"lightning_sota.{MOVED[parts[1]]}.{parts[2]}"
    return target


def upgrade(cfg: DictConfig) -> DictConfig:
    """A saved config made readable by today's code: moved ``_target_`` paths, the plan's keys
    where they live now (the phases and debug counts left ``data`` for ``resize``), and the keys
    added since with the values that behave as before."""
    if "cpu" not in cfg:  # written before lightning_sota/cpu/, which kept its switch in the model
        cfg.model.pop("small_map_gemm", None)
        cfg.cpu = {"_target_": "lightning_sota.cpu.CpuTuning.for_device", "_partial_": True}
    if "graphs" not in cfg:  # written before training/graphs.py: its runs stepped eagerly
        cfg.graphs = {"_target_": "lightning_sota.training.graphs.StepGraphs", "capture": False, "warmup": 3}

    def walk(node: DictConfig) -> None:
        for key in list(node.keys()):
            child = node[key]
            if key == "_target_" and isinstance(child, str):
                node[key] = moved_target(child)
            elif OmegaConf.is_dict(child):
                walk(child)
            elif OmegaConf.is_list(child):
                for item in child:
                    if OmegaConf.is_dict(item):
                        walk(item)

    walk(cfg)
    data = cfg.data
    data.pop("phases", None)  # resize.phases holds them
    for key in ("epochs_per_phase", "overfit_batches"):
        if key in data:
            cfg.resize[key] = data.pop(key)
    for key in ("budget_progressive", "sota_blur_pool"):  # sota's, now in experiment/sota.yaml
        cfg.scale.pop(key, None)
    # keys added since, as their defaults (conf/data/imagenette.yaml, conf/checkpoint/default.yaml)
    data.setdefault("dataset", "imagenette")
    data.setdefault("labels", "clean")
    if "checkpoint" not in cfg:
        cfg.checkpoint = {"save_top_k": 0, "monitor": "auto", "mode": "max", "patience": None}
    return cfg


@dataclass
class Restored:
    path: Path  # the checkpoint file
    run_dir: Path  # the run folder holding checkpoints/ (or the file's folder)
    config: DictConfig  # the run's resolved config, with the command's overrides merged
    classes: list[str]
    size: int  # the size its epoch trained and validated at (the final one, for the last epoch)
    phase: int  # that epoch's phase: its validation batch size
    epoch: int | None  # the epoch (None: a checkpoint saved before epochs were recorded)
    presize: int  # the cache's short side at that size, and its cap on the long side's ratio
    max_aspect: float
    trainer: pl.Trainer  # one device, the run's accelerator and precision: for scoring
    module: ImageClassifier  # weights loaded, in eval mode, built for the trainer's device

    def tta(self) -> TestTimeAugmentation:
        """The run's TTA, or fastai's default for a run trained without one."""
        tta = self.config.get("tta")
        return instantiate(tta) if tta else TestTimeAugmentation(seed=self.config.seed)


def restore(
    target: str | Path,
    command: str,
    overrides: list[str] = (),
    tune_process: bool = True,
    which: str = layout.LAST,
) -> Restored:
    """The run of ``target`` rebuilt from its checkpoint for ``command`` (evaluate, predict or
    export), with ``overrides`` (key=value) that FREE[command] allows. ``which``: a run folder's
    last checkpoint or its best kept one (``best``). ``tune_process=False`` (``load_run`` from a
    user's Python) leaves the process as it was: only the model is tuned."""
    path = layout.checkpoint_path(target, which=which)
    ckpt = layout.read_checkpoint(path)
    meta = ckpt["lightning_sota"]
    saved = saved_config(ckpt)
    dotlist = OmegaConf.from_dotlist(list(overrides))
    typed = list(flat(OmegaConf.to_container(dotlist)))
    fix = f"{command} uses the run as it was trained: only {', '.join(FREE[command])} may change"
    cfg = keep_plan(saved, OmegaConf.merge(saved, dotlist), typed, command, fix)
    validate(cfg)  # the overrides the command took, typed and in range as a run's
    # Scored eagerly whatever the run trained with: compiling costs more than scoring a folder,
    # and torch.export (ONNX) traces the plain module.
    OmegaConf.update(cfg, "model.compile", False)
    trainer = scoring_trainer(cfg)
    tuning = cpu_tuning(cfg, trainer.strategy.root_device)
    module = build_module(cfg, meta["classes"], tuning, weights=False, tune_process=tune_process)
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    return Restored(
        path=path,
        run_dir=layout.run_of(path),
        config=cfg,
        classes=list(meta["classes"]),
        size=meta["size"],
        phase=meta.get("phase", -1),  # a checkpoint saved before epochs recorded theirs: the last
        epoch=meta.get("epoch"),
        presize=meta["presize"],
        max_aspect=meta["max_aspect"],
        trainer=trainer,
        module=module,
    )


def scoring_data(run: Restored, split: str = "val") -> ImagenetteDataModule:
    """The run's data at its checkpoint's size and validation batch size (what that epoch's
    validation scored), set up: for ``val``, only the split scored (data.root's val/ or valid/, or data.root
    itself as one folder of class folders; no training cache); ``holdout`` is part of train. A
    dataset whose classes differ from the checkpoint's is refused."""
    cfg = run.config.data
    data = instantiate(cfg, sizes=[run.size], score_only=split == "val" and not cfg.get("valid_pct"))
    data.setup("fit")
    phase = planned_phases(run.config.resize)[run.phase]
    data.plan = Plan.make((phase,), len(data.train_index))  # the epoch's phase: its validation batches
    if data.classes != run.classes:
        raise ConfigError(
            f"data.root={cfg.root} has classes {data.classes}, the checkpoint was trained on "
            f"{run.classes}: point data.root at the dataset it was trained on"
        )
    return data


def scoring_trainer(cfg: DictConfig) -> pl.Trainer:
    """A one-device Trainer in the run's accelerator and precision, for scoring only: its
    precision plugin gives evaluate's test loop and predict's batches the run's autocast. Made
    quietly: the device lines Lightning prints for a fit would be noise before predict's output."""
    lightning = logging.getLogger("pytorch_lightning")
    level = lightning.level
    lightning.setLevel(logging.WARNING)
    try:
        return pl.Trainer(
            accelerator=cfg.trainer.accelerator,
            devices=1,
            precision=cfg.trainer.precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    finally:
        lightning.setLevel(level)
