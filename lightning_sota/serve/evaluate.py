"""Score a trained checkpoint without training: accuracy on a split, top-5, per-class accuracy,
precision, recall and F1, calibration error and most_confused, and fastai TTA with --tta.

    lightning-sota-evaluate outputs/runs/sota/<time> [data.root=...] [--tta] [--split val|holdout]

The checkpoint's own config rebuilds the run's pieces: the data at the final phase's size and
validation batch size, the model and its weights, normalization, augmentation, TTA and
precision. So on the run's data it gives the run's val_acc, and with --tta (Lightning's test loop)
its tta_acc (the TTA draws are seeded). Overrides may move the data or the
device (checkpoint.FREE["evaluate"]), nothing else; a dataset whose classes differ from the
checkpoint's is refused. Writes ``eval.json`` into the run folder (beside ``checkpoints/``).
"""

from __future__ import annotations

import argparse
import logging
import time

from omegaconf import OmegaConf

from lightning_sota.cli import checkpoint_choice, one_line_errors
from lightning_sota.errors import ConfigError
from lightning_sota.files import write_json
from lightning_sota.report.interpret import predictions, scores
from lightning_sota.run import layout
from lightning_sota.run.checkpoint import FREE, restore, scoring_data


def evaluate(
    target: str, overrides: list[str], tta: bool = False, split: str = "val", which: str = "last"
) -> dict:
    run = restore(target, "evaluate", overrides, which=which)
    data = scoring_data(run, split)
    # train is not offered: its loader shuffles and drops the last partial batch
    if split not in ("val", "holdout") or (split == "holdout" and not len(data.holdout_index)):
        raise ConfigError(f"--split {split}: use val, or holdout (only for a run with data.holdout)")
    trainer = run.trainer
    start = time.perf_counter()
    # one pass over the whole split on the scoring device, in the run's precision
    data.place(trainer.strategy.root_device)
    run.module.to(trainer.strategy.root_device)
    logits, labels, _ = predictions(run.module, data, trainer, split)
    tta_cb = run.tta() if tta else None
    if tta_cb:  # fastai's TTA through Lightning's test loop (after the pass: its teardown moves the module)
        data.test_split = split
        trainer.callbacks.append(tta_cb)
        trainer.test(run.module, datamodule=data, verbose=False)
    result = {
        "checkpoint": str(run.path),
        "split": split,
        "images": len(labels),
        "data_root": str(data.root),
        "epoch": run.epoch,
        "size": run.size,
        "precision": str(trainer.precision),
        "accuracy": round((logits.argmax(1) == labels).float().mean().item(), 5),
        "tta_acc": tta_cb.accuracy if tta_cb else None,
        **scores(logits, labels, run.classes),
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(run.run_dir / layout.EVALUATION, result)
    return result


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="a run folder or a checkpoint file")
    checkpoint_choice(parser)
    parser.add_argument("overrides", nargs="*", help=f"key=value, for {', '.join(FREE['evaluate'])}")
    parser.add_argument("--tta", action="store_true", help="also fastai TTA (the run's tta config)")
    parser.add_argument("--split", default="val", help="val (default) or holdout")
    args = parser.parse_intermixed_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    result = evaluate(args.run, args.overrides, args.tta, args.split, args.checkpoint)
    print(OmegaConf.to_yaml(result).strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
