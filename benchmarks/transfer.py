"""Transfer: fastai's fine_tune from a run of ours against the same epochs from scratch.

    python benchmarks/transfer.py --root /path/to/imagenette2-224 --out /tmp/transfer [--scale quick]

Imagenette's classes are cut in two: a source model trains on the first five
(``+experiment=normalize``), then ``+experiment=fine_tune model.pretrained=<that run>`` trains
on the other five (one frozen epoch, then the scale's epochs) against ``+experiment=normalize``
from scratch on them for as many epochs (the scale's plus one). Both use ImageNet statistics.
Prints each run's accuracy per epoch and its fit time; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def halves(root: Path, out: Path) -> tuple[Path, Path]:
    """Two datasets of symlinked class folders: the first five classes and the other five."""
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    folders = []
    for name, part in (("source", classes[:5]), ("target", classes[5:])):
        folder = out / name
        for split in ("train", "val"):
            (folder / split).mkdir(parents=True, exist_ok=True)
            for c in part:
                link = folder / split / c
                if not link.exists():
                    link.symlink_to(root / split / c)
        folders.append(folder)
    return folders[0], folders[1]


def train(out: Path, name: str, overrides: list[str]) -> dict:
    run = out / "runs" / name
    if not (run / "results.json").is_file():
        cmd = [
            sys.executable,
            "train.py",
            *overrides,
            f"hydra.run.dir={run}",
            "trainer.enable_progress_bar=false",
        ]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    res = json.loads((run / "results.json").read_text())
    res["run"] = str(run)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True, help="the full split: train/ and val/ of 10 classes")
    parser.add_argument("--out", required=True, help="the two halves, their caches and the runs")
    parser.add_argument("--scale", default="quick")
    args = parser.parse_args()
    out = Path(args.out)
    source, target = halves(Path(args.root), out)
    common = [f"scale={args.scale}", f"data.cache_dir={out / 'cache'}"]
    src = train(out, "source", ["+experiment=normalize", f"data.root={source}", *common])
    epochs = src["epochs"] + 1  # fine_tune's frozen epoch, then the scale's
    runs = {
        "source (first 5 classes)": src,
        "fine_tune from source": train(
            out,
            "fine_tune",
            ["+experiment=fine_tune", f"model.pretrained={src['run']}", f"data.root={target}", *common],
        ),
        "from scratch, same epochs": train(
            out,
            "scratch",
            ["+experiment=normalize", f"scale.epochs={epochs}", f"data.root={target}", *common],
        ),
    }
    print("| run | val_acc per epoch | final | fit s |")
    print("|---|---|---|---|")
    for name, res in runs.items():
        per_epoch = ", ".join(f"{row['val_acc']:.3f}" for row in res["history"])
        print(f"| {name} | {per_epoch} | {res['val_acc']:.4f} | {res['train_seconds']:.0f} |")


if __name__ == "__main__":
    main()
