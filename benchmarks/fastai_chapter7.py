"""fastai's own recipes on the official split, timed as fastbook runs them.

Both: DataBlock with GrandparentSplitter (train/ val/), item Resize(presize), batch
aug_transforms(size, min_scale=0.75) + Normalize(ImageNet), xresnet from fastai, then
Learner.tta().
  --recipe chapter      chapter 7: Adam, CrossEntropyLossFlat, fit_one_cycle(epochs, lr)
  --recipe leaderboard  the Imagenette leaderboard's 5-epoch style: xresnet with Mish, ranger,
                        LabelSmoothingCrossEntropy, fit_flat_cos(epochs, lr, wd=1e-2) (lr 8e-3
                        in vs_fastai.py; the leaderboard's self-attention and MaxBlurPool left out:
                        its 5-epoch recipe on a plain xresnet)
Prints one JSON line. Needs the `bench` extra (fastai).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from fastai.vision.all import (
    CategoryBlock,
    CrossEntropyLossFlat,
    DataBlock,
    GrandparentSplitter,
    ImageBlock,
    LabelSmoothingCrossEntropy,
    Learner,
    Mish,
    Normalize,
    Resize,
    accuracy,
    aug_transforms,
    get_image_files,
    imagenet_stats,
    parent_label,
    ranger,
    set_seed,
)
from fastai.vision.models.xresnet import xresnet18, xresnet34, xresnet50

ARCHS = {"xresnet18": xresnet18, "xresnet34": xresnet34, "xresnet50": xresnet50}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True)
    parser.add_argument("--recipe", default="chapter", choices=("chapter", "leaderboard"))
    parser.add_argument("--arch", default="xresnet18", choices=sorted(ARCHS))
    parser.add_argument(
        "--widen", type=float, default=1.0, help="XResNet(widen=): each stage's width times it"
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--presize", type=int, default=None, help="default: size x 460/224")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()

    set_seed(args.seed, reproducible=False)
    presize = args.presize or round(args.size * 460 / 224)
    block = DataBlock(
        blocks=(ImageBlock(), CategoryBlock()),
        get_items=get_image_files,
        get_y=parent_label,
        splitter=GrandparentSplitter(train_name="train", valid_name="val"),
        item_tfms=Resize(presize),
        batch_tfms=[*aug_transforms(size=args.size, min_scale=0.75), Normalize.from_stats(*imagenet_stats)],
    )
    dls = block.dataloaders(args.root, bs=args.bs)
    if args.recipe == "chapter":
        model, loss, opt = ARCHS[args.arch](n_out=dls.c, widen=args.widen), CrossEntropyLossFlat(), {}
    else:
        model = ARCHS[args.arch](n_out=dls.c, widen=args.widen, act_cls=Mish)
        loss, opt = LabelSmoothingCrossEntropy(), {"opt_func": ranger}
    learn = Learner(dls, model, loss_func=loss, metrics=accuracy, **opt)
    with learn.no_bar():
        start = time.perf_counter()
        if args.recipe == "chapter":
            learn.fit_one_cycle(args.epochs, args.lr)
        else:
            learn.fit_flat_cos(args.epochs, args.lr, wd=1e-2)
        fit_seconds = time.perf_counter() - start
        history = [float(v[2]) for v in learn.recorder.values]  # (train_loss, valid_loss, accuracy)
        tta_acc, tta_seconds = None, None
        if args.tta:
            start = time.perf_counter()
            preds, targs = learn.tta()
            tta_seconds = time.perf_counter() - start
            tta_acc = float(accuracy(preds, targs))
    print(
        json.dumps(
            {
                "recipe": args.recipe,
                "fit_seconds": round(fit_seconds, 1),
                "val_acc": round(history[-1], 5),
                "history": [round(v, 5) for v in history],
                "tta_acc": None if tta_acc is None else round(tta_acc, 5),
                "tta_seconds": None if tta_seconds is None else round(tta_seconds, 1),
                "train": len(dls.train_ds),
                "val": len(dls.valid_ds),
                "threads": torch.get_num_threads(),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
    )


if __name__ == "__main__":
    main()
