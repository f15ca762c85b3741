"""Classify images with a trained checkpoint: one JSON line per image, scored in batches.

    lightning-sota-predict outputs/runs/sota/<time> photo.jpg folder/ [--tta]

From Python: ``load_run(run folder or checkpoint).predict(image)`` -> (label, probabilities).

Each image goes through the run's own steps: decoded upright (phones store photos sideways with an
EXIF orientation tag) and presized as the cache does, the validation centre crop at the final
training size (or the run's TTA with --tta), the checkpoint's normalization and model, in the
run's precision. Loader workers decode the next batch while the model scores this one. Folders
are walked; an unreadable file is reported on stderr and skipped (exit status 1 if any was).
Throughput goes to stderr at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lightning_sota.cli import checkpoint_choice, one_line_errors
from lightning_sota.data.cache import load_image, place, stored_shape, upright_size
from lightning_sota.data.folders import IMAGE_SUFFIXES
from lightning_sota.locks import usable_cpus
from lightning_sota.run.checkpoint import restore

Item = str | Path | Image.Image | torch.Tensor


@contextlib.contextmanager
def opened(item: Item) -> Iterator[Image.Image]:
    """An image file opened, a PIL image as it is, or a uint8 image tensor ([3, H, W] as
    torchvision.io.decode_image gives it, or [H, W, 3]) as a PIL image."""
    if isinstance(item, str | Path):
        with Image.open(item) as img:
            yield img
    elif isinstance(item, Image.Image):
        yield item
    elif torch.is_tensor(item) and item.dtype == torch.uint8 and item.ndim == 3:
        yield Image.fromarray(
            (item.permute(1, 2, 0) if item.shape[0] in (1, 3) else item).squeeze(-1).numpy()
        )
    else:
        raise TypeError(f"not an image: {type(item).__name__} (a path, a PIL image or a uint8 image tensor)")


class Images(Dataset):
    """Images (files, PIL images or uint8 tensors) decoded as the cache decodes them: upright,
    short side at ``presize``, stored landscape. An unreadable one gives its error message instead
    of pixels."""

    def __init__(self, items: list[Item], presize: int, max_aspect: float) -> None:
        self.items, self.presize, self.max_aspect = items, presize, max_aspect

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | str, bool]:
        try:
            item = self.items[i]
            with opened(item) as img:
                short, long, transposed = stored_shape(upright_size(img), self.presize, self.max_aspect)
                # a file is decoded from its path, as the cache decodes it (libjpeg's draft scale)
                source = item if isinstance(item, str | Path) else img
                return i, load_image(source, short, long, transposed), transposed
        except Exception as err:  # any unreadable file is named and skipped, never fatal
            return i, f"{type(err).__name__}: {err}", False


def cache_batch(items: list[tuple[int, np.ndarray | str, bool]], size: int) -> dict:
    """Decoded images as one cache-style batch (data.CachedImages'): centred in a shared box,
    edge-padded, with their boxes; ``failed`` lists (index, error) of the unreadable ones."""
    good = [it for it in items if isinstance(it[1], np.ndarray)]
    height = max((arr.shape[0] for _, arr, _ in good), default=1)
    width = max((arr.shape[1] for _, arr, _ in good), default=1)
    image = np.empty((len(good), height, width, 3), np.uint8)
    box = np.zeros((len(good), 4), np.float32)
    for j, (_, arr, _) in enumerate(good):
        top, left = (height - arr.shape[0]) // 2, (width - arr.shape[1]) // 2
        place(image[j], arr, top, left)
        box[j] = (top, left, *arr.shape[:2])
    return {
        "index": torch.tensor([i for i, _, _ in good], dtype=torch.long),
        "image": torch.from_numpy(image),
        "box": torch.from_numpy(box),
        "transposed": torch.tensor([t for _, _, t in good], dtype=torch.bool),
        "size": size,
        "failed": [(i, msg) for i, msg, _ in items if isinstance(msg, str)],
    }


class Predictor:
    """A trained run, ready to classify: the checkpoint's module (model, normalization,
    augmentation) on the run's device and in its precision. ``load_run`` makes one.

    ``predict(item)`` -> (label, probabilities) for an image file, a PIL image or a uint8 image
    tensor; ``predict_batch(items)`` for many; ``predict_files`` streams files as the command line
    does. ``classes``, ``model`` (the torch network) and ``preprocess`` (an item -> the
    normalized [3, size, size] input the model takes) are there to use directly.
    ``tune_process``: the command line's own process takes the run's CPU allocator tuning; a
    user's Python that calls ``load_run`` keeps its own."""

    def __init__(
        self,
        checkpoint: str | Path,
        accelerator: str | None = None,
        precision: str | None = None,
        tune_process: bool = False,
        which: str = "last",
    ) -> None:
        chosen = {"accelerator": accelerator, "precision": precision}
        overrides = [f"trainer.{k}={v}" for k, v in chosen.items() if v]
        self.run = restore(checkpoint, "predict", overrides, tune_process, which)
        self.classes, self.size = self.run.classes, self.run.size
        self.device = self.run.trainer.strategy.root_device
        self.autocast = self.run.trainer.precision_plugin.val_step_context
        self.module = self.run.module.to(self.device)
        self.tta = self.run.tta()

    @property
    def model(self) -> torch.nn.Module:
        return self.module.model

    def loader(self, items: list[Item], batch_size: int = 64, workers: int | None = None) -> DataLoader:
        workers = min(4, usable_cpus()) if workers is None else workers
        return DataLoader(
            Images(items, self.run.presize, self.run.max_aspect),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=functools.partial(cache_batch, size=self.size),
            pin_memory=self.device.type == "cuda",
        )

    @torch.no_grad()
    def probs(self, batch: dict, tta: bool = False) -> torch.Tensor:
        """Class probabilities [B, C] (fp32) of a cache-style batch."""
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with self.autocast():
            centre = self.module.predict_probs(self.module.prepare(batch, train=False))
            return (self.tta.predict(self.module, batch, centre) if tta else centre).float()

    def predict_files(
        self, paths: list[Item], tta: bool = False, batch_size: int = 64, workers: int | None = None
    ) -> Iterator[tuple[Item, torch.Tensor | str]]:
        """(item, probabilities) per readable image, (item, error) per unreadable one, in order.
        TTA draws are seeded by the run's tta.seed, as evaluate's are."""
        with contextlib.ExitStack() as stack:
            if tta:
                cuda = [self.device] if self.device.type == "cuda" else []
                stack.enter_context(torch.random.fork_rng(devices=cuda))
                torch.manual_seed(self.tta.seed)
            for batch in self.loader(paths, batch_size, workers):
                results = dict(batch["failed"])
                if len(batch["index"]):
                    results |= dict(zip(batch["index"].tolist(), self.probs(batch, tta).cpu(), strict=True))
                for i in sorted(results):
                    yield paths[i], results[i]

    def predict_batch(
        self, items: list[Item], tta: bool = False, batch_size: int = 64
    ) -> list[tuple[str, torch.Tensor]]:
        """(label, probabilities over ``classes``) for each item; an unreadable one is an error."""
        workers = None if all(isinstance(i, str | Path) for i in items) else 0  # in memory already
        out = []
        for item, probs in self.predict_files(list(items), tta, batch_size, workers):
            if isinstance(probs, str):
                raise ValueError(f"{item if isinstance(item, str | Path) else type(item).__name__}: {probs}")
            out.append((self.classes[int(probs.argmax())], probs))
        return out

    def predict(self, item: Item, tta: bool = False) -> tuple[str, torch.Tensor]:
        """(label, probabilities over ``classes``) for one image file, PIL image or uint8 tensor."""
        return self.predict_batch([item], tta)[0]

    @torch.no_grad()
    def preprocess(self, item: Item) -> torch.Tensor:
        """The normalized [3, size, size] input ``model`` takes for ``item`` (on the CPU, fp32)."""
        batch = cache_batch([Images([item], self.run.presize, self.run.max_aspect)[0]], self.size)
        if batch["failed"]:
            raise ValueError(batch["failed"][0][1])
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        return self.module.prepare(batch, train=False)[0].float().cpu()


def load_run(
    run: str | Path, accelerator: str | None = None, precision: str | None = None, checkpoint: str = "last"
) -> Predictor:
    """A trained run (its folder or a checkpoint) to classify with, as fastai's load_learner:
    ``load_run(folder).predict("photo.jpg")`` -> (label, probabilities). ``checkpoint="best"``:
    the best epoch the run kept (checkpoint.save_top_k) instead of its last."""
    return Predictor(run, accelerator, precision, which=checkpoint)


def image_paths(paths: list[str]) -> list[Path]:
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(p)
    return found


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", help="a checkpoint file or a run folder")
    parser.add_argument("paths", nargs="+", help="image files or folders")
    checkpoint_choice(parser)
    parser.add_argument("--tta", action="store_true", help="the run's TTA (fastai's: 4 passes + centre)")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: up to 4)")
    parser.add_argument("--accelerator", default=None, help="cpu, gpu, ... (default: the run's, auto)")
    parser.add_argument("--precision", default=None, help="32-true, bf16-mixed, ... (default: the run's)")
    args = parser.parse_args(argv)
    predictor = Predictor(
        args.target, args.accelerator, args.precision, tune_process=True, which=args.checkpoint
    )
    paths = image_paths(args.paths)
    failed, start = 0, time.perf_counter()
    for path, probs in predictor.predict_files(paths, args.tta, args.batch_size, args.workers):
        if isinstance(probs, str):
            print(f"skipped {path}: {probs}", file=sys.stderr)
            failed += 1
            continue
        top = probs.topk(min(args.topk, len(probs)))
        line = {
            "path": str(path),
            "class": predictor.classes[int(top.indices[0])],
            "probability": round(float(top.values[0]), 5),
            "top5": [
                [predictor.classes[int(i)], round(float(v), 5)]
                for v, i in zip(top.values, top.indices, strict=True)
            ],
        }
        print(json.dumps(line), flush=True)
    seconds = time.perf_counter() - start
    done = len(paths) - failed
    rate = done / max(seconds, 1e-9)
    print(f"predicted {done} images in {seconds:.1f} s ({rate:.1f} images/s)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
