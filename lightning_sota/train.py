"""Hydra entry point: compose the config, build every part with ``_target_``, fit, report."""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.plugins.io import AsyncCheckpointIO

from .acquire import DataError
from .callbacks import History, ProgressiveResize
from .checks import ConfigError, check_config
from .data import ImagenetteDataModule
from .module import ImageClassifier, NonFiniteLossError
from .results import is_complete, summarize, write_json
from .tta import TestTimeAugmentation

log = logging.getLogger("lightning_sota")
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

# hydra.run.dir is `resume` when set, else a new timestamped folder. oc.select cannot say that: it
# falls back only for a missing key, and `resume: null` is present.
OmegaConf.register_new_resolver("ls.or", lambda value, default: default if value is None else value, replace=True)

# The loader gathers whole batches from a memory map in the main process on purpose.
warnings.filterwarnings("ignore", ".*does not have many workers.*")


def train(cfg: DictConfig, run_dir: Path, ckpt_path: Path | None = None) -> dict:
    pl.seed_everything(cfg.seed, workers=True)
    data: ImagenetteDataModule = instantiate(cfg.data)
    data.setup("fit")  # acquire and build the presize caches now: reported apart from the fit

    module = ImageClassifier(
        model=instantiate(cfg.model, num_classes=len(data.classes)),
        augment=instantiate(cfg.augment),
        normalize=instantiate(cfg.normalize),
        mix=instantiate(cfg.mix) if cfg.mix else None,
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optim),
        schedule=instantiate(cfg.schedule),
        num_classes=len(data.classes),
        channels_last=cfg.model.channels_last,
        classes=data.classes,
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    history = History()
    tta: TestTimeAugmentation | None = instantiate(cfg.tta) if cfg.tta else None
    callbacks = [
        history,
        ProgressiveResize(),
        LearningRateMonitor(logging_interval="step"),
        # One file, checkpoints/last.ckpt, replaced (atomically, by Lightning) at every epoch end.
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", enable_version_counter=False),
        *([tta] if tta else []),
    ]
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        max_epochs=data.epochs,
        callbacks=callbacks,
        logger=[instantiate(c) for c in cfg.logger.values()],
        default_root_dir=str(run_dir),
        reload_dataloaders_every_n_epochs=1,
        num_sanity_val_steps=0,
        # Checkpoints are snapshotted, then written by a thread: the loop never waits on the disk.
        plugins=[AsyncCheckpointIO()],
    )

    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    train_seconds = history.seconds_before + time.perf_counter() - start
    test_seconds = None
    if tta:
        start = time.perf_counter()
        trainer.test(module, datamodule=data, verbose=False)
        test_seconds = time.perf_counter() - start

    results = summarize(
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
        dataset=data.summary(),
        normalize=module.normalize.stats(),
    )
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", results)
        log.info("val_acc %.4f in %.1f s (%s)", results["val_acc"], train_seconds, run_dir)
    return results


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:
        return run(cfg)
    except (ConfigError, DataError, NonFiniteLossError) as err:  # the user's to fix: one line
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def run(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    ckpt_path = None
    if cfg.resume:  # the interrupted run's own config, from its checkpoint, in its own folder
        ckpt_path = Path(cfg.resume) / "checkpoints" / "last.ckpt"
        if not ckpt_path.is_file():
            raise ConfigError(
                f"resume={cfg.resume}: no checkpoints/last.ckpt there, nothing to resume; "
                "start a new run without resume="
            )
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)["lightning_sota"]["config"]
        cfg = OmegaConf.create(saved)
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # Hydra rewrote it with resume=
    check_config(cfg)
    done = run_dir / "results.json"
    if cfg.skip_completed and is_complete(done):
        log.info("skipped: %s is complete", done)
        return json.loads(done.read_text())["val_acc"]
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    return train(cfg, run_dir, ckpt_path)["val_acc"]


if __name__ == "__main__":
    main()
