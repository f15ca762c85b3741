"""Hydra entry point: compose the config, build every part with ``_target_``, fit, report."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.plugins.io import AsyncCheckpointIO

from .acquire import DataError
from .callbacks import History, ProgressiveResize
from .checks import ConfigError, check_batch_split, check_config, check_multirun
from .config import CONFIG_DIR
from .data import ImagenetteDataModule
from .host_memory import reuse_freed_host_memory
from .interpret import interpret
from .loggers import keep_rows_before, log_config
from .lr_find import find_lr
from .models import compiled_graphs
from .module import ImageClassifier, NonFiniteLossError
from .results import is_complete, summarize, write_json
from .show_batch import ShowBatch
from .tta import TestTimeAugmentation

log = logging.getLogger("lightning_sota")
# The loader gathers whole batches from a memory map in the main process on purpose.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# Lightning advertises its cloud logger at every Trainer start.
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(lambda r: "💡" not in r.getMessage())


@dataclass
class Run:
    """The parts of one run, built from its config."""

    data: ImagenetteDataModule
    module: ImageClassifier
    trainer: pl.Trainer
    history: History
    tta: TestTimeAugmentation | None


def build(cfg: DictConfig, run_dir: Path) -> Run:
    """Every part of a run. The Trainer comes first: Lightning validates its options (devices,
    strategy, precision, ...) in its constructor, so a bad one is refused before any data is read."""
    pl.seed_everything(cfg.seed, workers=True)
    data: ImagenetteDataModule = instantiate(cfg.data)
    history = History()
    tta: TestTimeAugmentation | None = instantiate(cfg.tta) if cfg.tta else None
    callbacks = [
        history,
        ProgressiveResize(),
        LearningRateMonitor(logging_interval="step"),
        # One file, checkpoints/last.ckpt, replaced (atomically, by Lightning) at every epoch end.
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", enable_version_counter=False),
        ShowBatch(run_dir / "show_batch.png"),
        *([tta] if tta else []),
        *([instantiate(cfg.weight_averaging)] if cfg.get("weight_averaging") else []),
        *(instantiate(c) for c in cfg.get("callbacks", {}).values()),
    ]
    loggers = [instantiate(c) for c in cfg.logger.values()]
    log_config(loggers, cfg)
    try:
        trainer: pl.Trainer = instantiate(
            cfg.trainer,
            max_epochs=data.epochs,
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
    check_batch_split([p.batch_size for p in data.phases], trainer.world_size)
    data.setup("fit")  # acquire and build the presize caches now: reported apart from the fit

    return Run(data, build_module(cfg, data.classes), trainer, history, tta)


def build_module(cfg: DictConfig, classes: list[str]) -> ImageClassifier:
    """The LightningModule of a config (a run's, or one saved in a checkpoint)."""
    return ImageClassifier(
        model=instantiate(cfg.model, num_classes=len(classes)),
        augment=instantiate(cfg.augment),
        normalize=instantiate(cfg.normalize),
        mix=instantiate(cfg.mix) if cfg.mix else None,
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optim),
        schedule=instantiate(cfg.schedule),
        num_classes=len(classes),
        channels_last=cfg.model.channels_last,
        classes=classes,
        config=OmegaConf.to_container(cfg, resolve=True),
        seed=cfg.seed,
    )


def train(cfg: DictConfig, run_dir: Path, ckpt_path: Path | None = None) -> dict | None:
    run = build(cfg, run_dir)
    data, module, trainer, history, tta = run.data, run.module, run.trainer, run.history, run.tta
    lr_found = None
    if cfg.lr_find and not ckpt_path:
        lr_found = find_lr(trainer, module, data, run_dir)
        log.info(
            "lr_find: valley suggests %.2e (optim.lr=%s); curve in lr_find.png",
            lr_found["suggestion"],
            cfg.optim.lr,
        )
        if trainer.is_global_zero:  # the whole curve's numbers beside its picture
            write_json(run_dir / "lr_find.json", lr_found)
        if cfg.lr_find == "only":
            return None
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    train_seconds = history.seconds_before + time.perf_counter() - start
    test_seconds = None
    if tta:
        start = time.perf_counter()
        trainer.test(module, datamodule=data, verbose=False)
        test_seconds = time.perf_counter() - start
    interpretation = {}
    if trainer.is_global_zero:  # one more pass over the whole val split, on rank 0 alone
        start = time.perf_counter()
        interpretation = interpret(module, data, trainer, history.rows, run_dir)
        interpretation["interpret_seconds"] = round(time.perf_counter() - start, 2)

    results = (
        summarize(
            name=cfg.name,
            seed=cfg.seed,
            arch=cfg.model.arch,
            phases=[vars(p) for p in data.phases],
            history=history.rows,
            train_seconds=train_seconds,
            cache_seconds=data.cache_seconds,
            test_seconds=test_seconds,
            tta_acc=tta.accuracy if tta else None,
            train_images=history.train_images,
            val_seconds=history.val_seconds,
            precision=str(trainer.precision),
            device=trainer.strategy.root_device.type,
            world_size=trainer.world_size,
            dataset=data.summary(),
            normalize=module.normalize.stats(),
        )
        | interpretation
        | ({"lr_find": {k: v for k, v in lr_found.items() if k not in ("lr", "loss")}} if lr_found else {})
        | (
            {"compile": {"mode": mode, "graphs": compiled_graphs()}}
            if (mode := cfg.model.get("compile"))
            else {}
        )
    )
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", results)
        log.info("val_acc %.4f in %.1f s (%s)", results["val_acc"], train_seconds, run_dir)
    return results


# What a resumed run may change: where things are, not what is trained.
RESUME_FREE = (
    "resume",
    "skip_completed",
    "data.root",
    "data.cache_dir",
    "data.download",
    "data.base_url",
    "data.workers",
    "data.cache_workers",
    "trainer.enable_progress_bar",
    # batch sizes are global (data.ShardedBatches): the steps and schedule do not depend on them
    "trainer.devices",
    "trainer.num_nodes",
    "logger",
)


def flat(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: one entry per leaf."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resumed_config(current: DictConfig, saved: dict, overrides: list[str]) -> DictConfig:
    """The interrupted run's own config. The command line may repeat the run's own settings or
    move its data and cache (RESUME_FREE); an override that changes the plan is refused, since
    the checkpoint's schedule and phases were made for the old one."""

    def free(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in RESUME_FREE)

    keys = [o.key_or_group for o in OverridesParser.create().parse_overrides(overrides)]
    if any(not free(k) for k in keys):
        planned = OmegaConf.masked_copy(current, [k for k in current if not free(k)])
        mine, theirs = flat(OmegaConf.to_container(planned, resolve=True)), flat(saved)
        changed = [
            k for k in sorted(mine.keys() | theirs.keys()) if not free(k) and mine.get(k) != theirs.get(k)
        ]
        if changed:  # name a key the user typed when there is one
            named = [k for k in changed if any(k == key or k.startswith(key + ".") for key in keys)]
            k = (named or changed)[0]
            more = f", and {len(changed) - 1} more" if len(changed) > 1 else ""
            raise ConfigError(
                f"resume={current.resume}: these overrides would change the run's config ({k}: "
                f"{theirs.get(k)!r} -> {mine.get(k)!r}{more}); a resumed run keeps its own: give resume= "
                "alone (data.root= and data.cache_dir= may move), or start a new run without resume="
            )
    cfg = OmegaConf.create(saved)
    for key in keys:
        if free(key) and key != "resume":
            OmegaConf.update(cfg, key, OmegaConf.select(current, key), merge=False)
    return cfg


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:
        return run(cfg)
    except (ConfigError, DataError, NonFiniteLossError) as err:  # the user's to fix: one line
        # One write, so one syscall: print() sends the newline on its own, and under DDP the ranks
        # share this stderr, so two ranks' lines could run into one.
        sys.stderr.write(f"error: {err}\n")
        sys.exit(2)


def run(cfg: DictConfig) -> float | None:
    reuse_freed_host_memory()  # a CPU step's buffers stay mapped: see host_memory.py
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    ckpt_path = None
    if cfg.resume:  # the interrupted run's own config, from its checkpoint, in its own folder
        ckpt_path = Path(cfg.resume) / "checkpoints" / "last.ckpt"
        if not ckpt_path.is_file():
            folder = Path(cfg.resume)
            made_now = {p.name for p in folder.iterdir()} == {".hydra", "train.log"} and [
                p.name for p in (folder / ".hydra").iterdir()
            ] == ["resumed"]
            if made_now:  # a mistyped folder, which Hydra has just created: leave no trace
                shutil.rmtree(folder)
            raise ConfigError(
                f"resume={cfg.resume}: no checkpoints/last.ckpt there, nothing to resume; "
                "start a new run without resume="
            )
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        cfg = resumed_config(cfg, ckpt["lightning_sota"]["config"], list(HydraConfig.get().overrides.task))
    check_config(cfg)
    check_multirun(cfg.trainer, HydraConfig.get().mode == RunMode.MULTIRUN)
    done = run_dir / "results.json"
    if cfg.skip_completed and is_complete(done):
        log.info("skipped: %s is complete", done)
        results = json.loads(done.read_text())
        return results[results.get("selected_on", "val_acc")]
    if ckpt_path:  # the steps after the checkpoint run again: their metrics.csv rows go
        keep_rows_before(run_dir, ckpt["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"])
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    results = train(cfg, run_dir, ckpt_path)
    if results is None:  # lr_find=only
        return None
    return results[results["selected_on"]]  # what a sweeper maximises: the holdout when there is one


if __name__ == "__main__":
    main()
