"""Score a trained checkpoint without training: accuracy on a split, and fastai TTA with --tta.

    lightning-sota-evaluate outputs/runs/sota/<time> [data.root=...] [--tta] [--split val|holdout]

The checkpoint's own config rebuilds the run's pieces: the data at the final phase's size and
validation batch size, the model and its weights, normalization, augmentation, TTA and
precision; Lightning's test loop scores them. So on the run's data it gives the run's val_acc,
and with --tta its tta_acc (the TTA draws are seeded). Overrides may move the data or the
device (checkpoint.FREE["evaluate"]), nothing else; a dataset whose classes differ from the
checkpoint's is refused. Writes ``eval.json`` into the run folder (beside ``checkpoints/``).
"""

from __future__ import annotations

import argparse
import logging
import time

from omegaconf import OmegaConf

from .checkpoint import FREE, restore, scoring_data
from .cli import one_line_errors
from .errors import ConfigError
from .files import write_json


def evaluate(target: str, overrides: list[str], tta: bool = False, split: str = "val") -> dict:
    run = restore(target, "evaluate", overrides)
    data = scoring_data(run)
    # train is not offered: its loader shuffles and drops the last partial batch
    if split not in ("val", "holdout") or (split == "holdout" and not len(data.holdout_index)):
        raise ConfigError(f"--split {split}: use val, or holdout (only for a run with data.holdout)")
    data.test_split = split
    tta_cb = run.tta() if tta else None
    trainer = run.trainer
    if tta_cb:
        trainer.callbacks.append(tta_cb)
    start = time.perf_counter()
    (scores,) = trainer.test(run.module, datamodule=data, verbose=False)
    index = data.val_index if split == "val" else data.holdout_index
    result = {
        "checkpoint": str(run.path),
        "split": split,
        "images": len(index),
        "data_root": str(data.root),
        "size": run.size,
        "precision": str(trainer.precision),
        "accuracy": round(scores["test_acc"], 5),
        "tta_acc": tta_cb.accuracy if tta_cb else None,
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(run.run_dir / "eval.json", result)
    return result


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="a run folder or a checkpoint file")
    parser.add_argument("overrides", nargs="*", help=f"key=value, for {', '.join(FREE['evaluate'])}")
    parser.add_argument("--tta", action="store_true", help="also fastai TTA (the run's tta config)")
    parser.add_argument("--split", default="val", help="val (default) or holdout")
    args = parser.parse_intermixed_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    result = evaluate(args.run, args.overrides, args.tta, args.split)
    print(OmegaConf.to_yaml(result).strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
