"""One way back from a checkpoint, for resume, evaluate, predict and export: the file read and
checked, the run's own config with the overrides its command may apply, and its LightningModule
(model, augmentation, normalization) with the trained weights, built by the code that trained it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_sota.augment.tta import TestTimeAugmentation
from lightning_sota.config.checks import check_switches
from lightning_sota.data.datamodule import ImagenetteDataModule
from lightning_sota.errors import ConfigError
from lightning_sota.run.build import build_module, cpu_tuning
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
COMPUTE = ("trainer.accelerator", "trainer.precision", "cpu")
FREE = {
    "resume": (
        *("resume", "skip_completed", "logger", "cpu", "trainer.enable_progress_bar", *WHERE),
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
        mine = flat(OmegaConf.to_container(planned, resolve=True))
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


def checkpoint_path(target: str | Path) -> Path:
    """A run folder (its checkpoints/last.ckpt) or a checkpoint file."""
    path = Path(target)
    ckpt = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
    if not ckpt.is_file():
        raise ConfigError(f"{target}: no checkpoint there; give a run folder or its checkpoints/last.ckpt")
    return ckpt


def load_checkpoint(path: Path) -> dict:
    """A lightning-sota checkpoint's contents (weights only: no pickled code runs)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or a pickle we refuse to run
        raise ConfigError(
            f"{path} cannot be read as a checkpoint ({err}); give a run's checkpoints/last.ckpt"
        ) from err
    if not isinstance(ckpt, dict) or "lightning_sota" not in ckpt:
        raise ConfigError(f"{path} is not a lightning-sota checkpoint (no run config in it)")
    return ckpt


def saved_config(ckpt: dict) -> DictConfig:
    """The run's resolved config as its checkpoint holds it."""
    cfg = OmegaConf.create(ckpt["lightning_sota"]["config"])
    if "cpu" not in cfg:  # written before lightning_sota/cpu/, which kept its switch in the model
        cfg.model.pop("small_map_gemm", None)
        cfg.cpu = {"_target_": "lightning_sota.cpu.CpuTuning.for_device", "_partial_": True}
    return cfg


@dataclass
class Restored:
    path: Path  # the checkpoint file
    run_dir: Path  # the run folder holding checkpoints/ (or the file's folder)
    config: DictConfig  # the run's resolved config, with the command's overrides merged
    classes: list[str]
    size: int  # the final training size: what validation ran at
    presize: int  # the cache's short side at that size, and its cap on the long side's ratio
    max_aspect: float
    trainer: pl.Trainer  # one device, the run's accelerator and precision: for scoring
    module: ImageClassifier  # weights loaded, in eval mode, built for the trainer's device

    def tta(self) -> TestTimeAugmentation:
        """The run's TTA, or fastai's default for a run trained without one."""
        tta = self.config.get("tta")
        return instantiate(tta) if tta else TestTimeAugmentation(seed=self.config.seed)


def restore(target: str | Path, command: str, overrides: list[str] = ()) -> Restored:
    """The run of ``target`` rebuilt from its checkpoint for ``command`` (evaluate, predict or
    export), with ``overrides`` (key=value) that FREE[command] allows."""
    path = checkpoint_path(target)
    ckpt = load_checkpoint(path)
    meta = ckpt["lightning_sota"]
    saved = saved_config(ckpt)
    dotlist = OmegaConf.from_dotlist(list(overrides))
    typed = list(flat(OmegaConf.to_container(dotlist)))
    fix = f"{command} uses the run as it was trained: only {', '.join(FREE[command])} may change"
    cfg = keep_plan(saved, OmegaConf.merge(saved, dotlist), typed, command, fix)
    check_switches(cfg)
    # Scored eagerly whatever the run trained with: compiling costs more than scoring a folder,
    # and torch.export (ONNX) traces the plain module.
    OmegaConf.update(cfg, "model.compile", False)
    trainer = scoring_trainer(cfg)
    module = build_module(cfg, meta["classes"], cpu_tuning(cfg, trainer.strategy.root_device), weights=False)
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return Restored(
        path=path,
        run_dir=run_dir,
        config=cfg,
        classes=list(meta["classes"]),
        size=meta["size"],
        presize=meta["presize"],
        max_aspect=meta["max_aspect"],
        trainer=trainer,
        module=module,
    )


def scoring_data(run: Restored, split: str = "val") -> ImagenetteDataModule:
    """The run's data at its final size and validation batch size (what its last validation
    scored), set up: for ``val``, only the split scored (data.root's val/ or valid/, or data.root
    itself as one folder of class folders; no training cache); ``holdout`` is part of train. A
    dataset whose classes differ from the checkpoint's is refused."""
    cfg = run.config.data.copy()
    cfg.phases = [cfg.phases[-1]]
    data = instantiate(cfg, score_only=split == "val" and not cfg.get("valid_pct"))
    data.setup("fit")
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
