"""Score a trained checkpoint without training: accuracy on a split, and fastai TTA with --tta.

    python -m lightning_sota.evaluate outputs/runs/sota/<time> [data.root=...] [--tta] [--split val|holdout]

The checkpoint's own config rebuilds the run's pieces: the data at the final phase's size and
validation batch size, the model and its weights, normalization, augmentation, TTA and
precision; Lightning's test loop scores them. So on the run's data it gives the run's val_acc,
and with --tta its tta_acc (the TTA draws are seeded). Overrides may move the data or the
device (EVAL_FREE), nothing else; a dataset whose classes differ from the checkpoint's is
refused. Writes ``eval.json`` into the run folder (beside ``checkpoints/``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from .acquire import DataError
from .checks import ConfigError
from .results import write_json
from .train import build_module
from .tta import TestTimeAugmentation

# What an evaluation may change: where the data is and what computes, not what is scored.
EVAL_FREE = (
    "data.root",
    "data.cache_dir",
    "data.download",
    "data.base_url",
    "data.variant",
    "data.workers",
    "data.cache_workers",
    "data.val_batch_size",
    "trainer.accelerator",
    "trainer.precision",
)


def checkpoint_path(target: str) -> Path:
    """A run folder (its checkpoints/last.ckpt) or a checkpoint file."""
    path = Path(target)
    ckpt = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
    if not ckpt.is_file():
        raise ConfigError(f"{target}: no checkpoint there; give a run folder or its checkpoints/last.ckpt")
    return ckpt


def evaluate(target: str, overrides: list[str], tta: bool = False, split: str = "val") -> dict:
    ckpt_path = checkpoint_path(target)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if "lightning_sota" not in ckpt:
        raise ConfigError(f"{ckpt_path} is not a lightning-sota checkpoint (no run config in it)")
    meta = ckpt["lightning_sota"]
    cfg = OmegaConf.create(meta["config"])
    for override in overrides:
        key, sep, _ = override.partition("=")
        if not sep or key not in EVAL_FREE:
            raise ConfigError(
                f"{override}: evaluate scores the checkpoint as it was trained; only "
                f"{', '.join(EVAL_FREE)} may change"
            )
    cfg.merge_with_dotlist(overrides)
    phase = cfg.data.phases[-1]
    cfg.data.phases = [phase]  # the final size and batch size: the validation the run ended with
    data = instantiate(cfg.data)
    data.setup("fit")
    if data.classes != meta["classes"]:
        raise ConfigError(
            f"data.root={cfg.data.root} has classes {data.classes}, the checkpoint was trained on "
            f"{meta['classes']}: point data.root at the dataset it was trained on"
        )
    # train is not offered: its loader shuffles and drops the last partial batch
    if split not in ("val", "holdout") or (split == "holdout" and not len(data.holdout_index)):
        raise ConfigError(f"--split {split}: use val, or holdout (only for a run with data.holdout)")
    data.test_split = split
    module = build_module(cfg, data.classes)
    module.load_state_dict(ckpt["state_dict"])
    tta_cb = None
    if tta:
        tta_cb = instantiate(cfg.tta) if cfg.get("tta") else TestTimeAugmentation(seed=cfg.seed)
    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        logger=False,
        callbacks=[tta_cb] if tta_cb else [],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    (scores,) = trainer.test(module, datamodule=data, verbose=False)
    index = data.val_index if split == "val" else data.holdout_index
    result = {
        "checkpoint": str(ckpt_path),
        "split": split,
        "images": len(index),
        "data_root": str(data.root),
        "size": phase.size,
        "precision": str(trainer.precision),
        "accuracy": round(scores["test_acc"], 5),
        "tta_acc": tta_cb.accuracy if tta_cb else None,
        "seconds": round(time.perf_counter() - start, 2),
    }
    run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    write_json(run_dir / "eval.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="a run folder or a checkpoint file")
    parser.add_argument("overrides", nargs="*", help=f"key=value, for {', '.join(EVAL_FREE)}")
    parser.add_argument("--tta", action="store_true", help="also fastai TTA (the run's tta config)")
    parser.add_argument("--split", default="val", help="val (default) or holdout")
    args = parser.parse_intermixed_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    try:
        result = evaluate(args.run, args.overrides, args.tta, args.split)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(OmegaConf.to_yaml(result).strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
