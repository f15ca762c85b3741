"""fastai's chapter-7 recipe and ours on the same data, machine and budget, one after the other.

    python benchmarks/vs_fastai.py --root /tmp/imagenette2-224            # quick scale, both
    python benchmarks/vs_fastai.py --root ... --ours-only -- trainer.precision=32

Ours is `train.py +experiment=normalize scale=quick` (xresnet18, 64 px, 5 epochs, bs 64, lr 3e-3,
ImageNet normalization, fastai's aug_transforms, fit_one_cycle) plus fastai TTA. Prints both
fit wall times (the one-off cache build apart), accuracies, peak memory and the ratios.
Figures only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_fastai(args) -> dict:
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "fastai_chapter7.py"),
        "--root",
        args.root,
        "--arch",
        args.arch,
        "--size",
        str(args.size),
        "--epochs",
        str(args.epochs),
        "--bs",
        str(args.bs),
        "--lr",
        str(args.lr),
        "--seed",
        str(args.seed),
    ]
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_seconds"] = round(time.perf_counter() - start, 1)
    return res


def run_ours(args, extra: list[str]) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="vs_fastai-"))
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "+experiment=normalize",
        "scale=quick",
        f"data.root={args.root}",
        f"model.arch={args.arch}",
        f"scale.size={args.size}",
        f"scale.epochs={args.epochs}",
        f"scale.batch_size={args.bs}",
        f"scale.lr={args.lr}",
        f"seed={args.seed}",
        "tta=fastai",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res = json.loads((run_dir / "results.json").read_text())
    res["process_seconds"] = round(time.perf_counter() - start, 1)
    res["run_dir"] = str(run_dir)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", default=os.environ.get("IMAGENETTE_ROOT"), required="IMAGENETTE_ROOT" not in os.environ
    )
    parser.add_argument("--arch", default="xresnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ours-only", action="store_true")
    parser.add_argument("--fastai-only", action="store_true")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for our run (after --)")
    args = parser.parse_args()

    fastai = None if args.ours_only else run_fastai(args)
    if fastai:
        print(f"fastai: {json.dumps(fastai)}", flush=True)
    ours = None if args.fastai_only else run_ours(args, args.overrides)
    if ours:
        keep = (
            "val_acc",
            "tta_acc",
            "train_seconds",
            "cache_seconds",
            "test_seconds",
            "train_images_per_second",
            "precision",
            "process_seconds",
            "peak_rss_mib",
            "run_dir",
        )
        print(f"ours:   {json.dumps({k: ours[k] for k in keep})}", flush=True)
    if not (fastai and ours):
        return
    rows = [
        ("fit wall time (s)", fastai["fit_seconds"], ours["train_seconds"]),
        ("val accuracy", fastai["val_acc"], ours["val_acc"]),
        ("TTA accuracy", fastai["tta_acc"], ours["tta_acc"]),
        ("TTA time (s)", fastai["tta_seconds"], ours["test_seconds"]),
        ("cache build (s)", None, ours["cache_seconds"]),
        ("whole process (s)", fastai["process_seconds"], ours["process_seconds"]),
        ("peak RSS (MiB)", fastai["peak_rss_mib"], ours["peak_rss_mib"]),
    ]
    print(f"\n{args.arch}, {args.size} px, {args.epochs} epochs, bs {args.bs}, lr {args.lr}, {args.root}")
    print(f"{'':22}{'fastai':>10}{'ours':>10}")
    for name, a, b in rows:
        print(f"{name:22}{'-' if a is None else a:>10}{'-' if b is None else b:>10}")
    print(f"\nfit time ratio ours/fastai: {ours['train_seconds'] / fastai['fit_seconds']:.3f}")
    print(f"val accuracy difference ours-fastai: {100 * (ours['val_acc'] - fastai['val_acc']):+.2f} points")


if __name__ == "__main__":
    main()
