"""Classify images with a trained checkpoint: one JSON line per image.

    python -m lightning_sota.predict outputs/runs/sota/<time>/checkpoints/last.ckpt photo.jpg folder/ [--tta]

Each image goes through the training pipeline's own steps: presized as the cache does, the
validation centre crop at the final training size (or fastai TTA with --tta), the checkpoint's
normalization, the model. Folders are walked; an unreadable file is reported on stderr and
skipped (exit status 1 if any was).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image

from .augment import BatchAugment
from .cache import load_image, stored_shape
from .data import IMAGE_SUFFIXES
from .models import create_model
from .normalize import Normalize
from .tta import combine


class Predictor:
    """A model, its normalization and its input size, rebuilt from a checkpoint."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu") -> None:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
        meta = ckpt["lightning_sota"]
        self.classes, self.size = meta["classes"], meta["size"]
        self.presize, self.max_aspect = meta["presize"], meta["max_aspect"]
        model_cfg = {k: v for k, v in meta["model"].items() if k != "_target_"}
        self.model = create_model(**{**model_cfg, "num_classes": len(self.classes)})
        weights = {
            k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")
        }
        self.model.load_state_dict(weights)
        stats = meta["normalize"] or {}
        self.normalize = Normalize(stats.get("mean"), stats.get("std"))
        aug_cfg = {k: v for k, v in meta["config"].get("augment", {}).items() if k != "_target_"}
        self.augment = BatchAugment(**aug_cfg)
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.normalize.to(self.device)

    def batch(self, path: Path) -> dict:
        """One image as a one-item cache batch."""
        with Image.open(path) as img:
            size = img.size
        short, long, transposed = stored_shape(size, self.presize, self.max_aspect)
        image = torch.from_numpy(load_image(path, short, long, transposed).copy())[None]
        return {
            "image": image.to(self.device),
            "box": torch.tensor([[0.0, 0.0, short, long]], device=self.device),
            "transposed": torch.tensor([transposed], device=self.device),
            "size": self.size,
        }

    @torch.no_grad()
    def probs(self, path: Path, tta: bool = False, n: int = 4, beta: float = 0.25) -> torch.Tensor:
        batch = self.batch(path)

        def run(train: bool) -> torch.Tensor:
            return self.model(self.normalize(self.augment(batch, train))).float().softmax(1)[0]

        centre = run(False)
        if not tta:
            return centre
        return combine(torch.stack([run(True) for _ in range(n)])[:, None], centre[None], beta)[0]


def image_paths(paths: list[str]) -> list[Path]:
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(p)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint")
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--tta", action="store_true", help="fastai TTA: 4 augmented passes + the centre")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        predictor = Predictor(args.checkpoint, args.device)
    except (OSError, KeyError, RuntimeError) as err:
        print(f"error: cannot load {args.checkpoint} as a lightning-sota checkpoint: {err}", file=sys.stderr)
        return 2
    failed = 0
    for path in image_paths(args.paths):
        try:
            probs = predictor.probs(path, tta=args.tta)
        except Exception as err:  # an unreadable image is named and skipped, never fatal
            print(f"skipped {path}: {err}", file=sys.stderr)
            failed += 1
            continue
        top = probs.topk(min(args.topk, len(probs)))
        best = int(top.indices[0])
        line = {
            "path": str(path),
            "class": predictor.classes[best],
            "probability": round(float(top.values[0]), 5),
            "top5": [
                [predictor.classes[int(i)], round(float(v), 5)]
                for v, i in zip(top.values, top.indices, strict=True)
            ],
        }
        print(json.dumps(line), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
