"""fastai's recipes and ours on the same data, machine and budget, one after the other.

    python benchmarks/vs_fastai.py --root /tmp/imagenette2-224            # both pairs, quick scale
    python benchmarks/vs_fastai.py --root ... --pairs chapter --seeds 1 -- trainer.precision=32
    python benchmarks/vs_fastai.py --root ... --scale leaderboard --pairs mission --seeds 1

Each pair is fastai's recipe (benchmarks/fastai_chapter7.py, `--fastai-seeds` seeds, default one)
against ours (train.py, `--seeds` seeds), both at `--scale` (conf/scale: its model, size, epochs
and batch size give fastai's run too; quick: xresnet18, 64 px, 5 epochs, bs 64; leaderboard:
xresnet50, 128 px):
  chapter      fastai's chapter 7 (Adam, fit_one_cycle at 3e-3) vs `+experiment=normalize tta=fastai`
  leaderboard  fastai's leaderboard style (Mish, ranger, label smoothing, fit_flat_cos at 8e-3)
               vs `+experiment=sota`
  mission      fastai's chapter 7 vs both `normalize` and `sota` (the issue's mission scale:
               `--scale leaderboard`)
All end with fastai's TTA. `sota` runs its scale's own phases (progressive resizing inside the
fixed run's time); --arch/--widen/--size/--epochs/--bs change the fixed runs. Where our default
precision is not fp32, the chapter pair adds a like-for-like row: ours at trainer.precision=32, as
fastai trains. Prints fit wall times (the one-off cache build apart), accuracies, peak memory and
the ratios. Figures only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lightning_sota.config.compose import compose_config

ROOT = Path(__file__).resolve().parent.parent

OURS = {"normalize": ["+experiment=normalize", "tta=fastai"], "sota": ["+experiment=sota"]}
# pair -> (fastai's recipe and lr, our experiments)
PAIRS = {
    "chapter": ("chapter", 3e-3, ["normalize"]),
    "leaderboard": ("leaderboard", 8e-3, ["sota"]),
    "mission": ("chapter", 3e-3, ["normalize", "sota"]),
}


def scale_settings(scale: str) -> dict:
    """The model and fixed-run shape that `scale=<name>` gives train.py, for fastai's run."""
    cfg = compose_config([f"scale={scale}"])
    return {
        "arch": cfg.model.arch,
        "widen": cfg.model.widen,
        "size": cfg.scale.size,
        "epochs": cfg.scale.epochs,
        "bs": cfg.scale.batch_size,
    }


def run_fastai(args, recipe: str, lr: float, seed: int) -> dict:
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "fastai_chapter7.py"),
        f"--recipe={recipe}",
        f"--root={args.root}",
        f"--arch={args.arch}",
        f"--widen={args.widen}",
        f"--size={args.size}",
        f"--epochs={args.epochs}",
        f"--bs={args.bs}",
        f"--lr={lr}",
        f"--seed={seed}",
    ]
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_seconds"] = round(time.perf_counter() - start, 1)
    return res


def run_ours(args, overrides: list[str], seed: int) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="vs_fastai-"))
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        f"scale={args.scale}",
        *overrides,
        f"data.root={args.root}",
        *args.shape_overrides,
        f"seed={seed}",
        f"hydra.run.dir={run_dir}",
        *args.overrides,
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res = json.loads((run_dir / "results.json").read_text())
    res["process_seconds"] = round(time.perf_counter() - start, 1)
    res["run_dir"] = str(run_dir)
    keep = ("val_acc", "tta_acc", "train_seconds", "cache_seconds", "test_seconds")
    print(f"ours ({' '.join(overrides)}, seed {seed}): {json.dumps({k: res[k] for k in keep})}", flush=True)
    return res


def summary(runs: list[dict], key: str) -> str:
    """One seed: its value; more: mean ± sample std."""
    values = [r[key] for r in runs]
    if len(values) == 1:
        return f"{values[0]}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def seeds(runs: list[dict]) -> str:
    return f"{len(runs)} seed{'s' * (len(runs) > 1)}"


def table(name: str, fastai: list[dict], ours: list[dict], fp32: dict | None) -> None:
    """``name``: "pair: our experiment", as the ratio lines name it. Ratios and differences are
    between means over the seeds."""
    columns = [f"fastai ({seeds(fastai)})", f"ours ({seeds(ours)})"] + (["ours fp32"] if fp32 else [])
    rows = [
        ("fit wall time (s)", "fit_seconds", "train_seconds"),
        ("val accuracy", "val_acc", "val_acc"),
        ("TTA accuracy", "tta_acc", "tta_acc"),
        ("TTA time (s)", "tta_seconds", "test_seconds"),
        ("cache build (s)", None, "cache_seconds"),
        ("whole process (s)", "process_seconds", "process_seconds"),
        ("peak RSS (MiB)", "peak_rss_mib", "peak_rss_mib"),
    ]
    # ours may run its own phases (sota's progressive resizing): say what it ran
    phases = ", ".join(f"{p['epochs']}x{p['size']} px bs {p['batch_size']}" for p in ours[0]["phases"])
    print(f"\n{name}: fastai {fastai[0]['recipe']} recipe vs ours ({phases}; {ours[0]['precision']})")
    print(f"{'':20}" + "".join(f"{c:>22}" for c in columns))
    for label, theirs, mine in rows:
        cells = ["-" if theirs is None else summary(fastai, theirs), summary(ours, mine)]
        cells += [str(fp32[mine])] if fp32 else []
        print(f"{label:20}" + "".join(f"{c:>22}" for c in cells))
    fit = statistics.mean(r["train_seconds"] for r in ours)
    val = statistics.mean(r["val_acc"] for r in ours)
    tta = statistics.mean(r["tta_acc"] for r in ours)
    their_fit = statistics.mean(r["fit_seconds"] for r in fastai)
    their_val = statistics.mean(r["val_acc"] for r in fastai)
    their_tta = statistics.mean(r["tta_acc"] for r in fastai)
    print(f"fit time ratio ours/fastai ({name}): {fit / their_fit:.3f}")
    if fp32:
        print(f"fit time ratio ours fp32/fastai ({name}): {fp32['train_seconds'] / their_fit:.3f}")
    print(f"val accuracy difference ours-fastai ({name}): {100 * (val - their_val):+.2f} points")
    print(f"TTA accuracy difference ours-fastai ({name}): {100 * (tta - their_tta):+.2f} points")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", default=os.environ.get("IMAGENETTE_ROOT"), required="IMAGENETTE_ROOT" not in os.environ
    )
    parser.add_argument(
        "--pairs", default="chapter,leaderboard", help="comma-separated: chapter, leaderboard, mission"
    )
    parser.add_argument("--seeds", type=int, default=3, help="our seeds per pair, from --seed")
    parser.add_argument("--fastai-seeds", type=int, default=1, help="fastai's seeds per pair, from --seed")
    parser.add_argument("--scale", default="quick", help="conf/scale name (default: quick)")
    parser.add_argument("--arch", help="default: the scale's model")
    parser.add_argument("--widen", type=float, help="default: the scale's model.widen (smoke: 0.5)")
    parser.add_argument("--size", type=int, help="default: the scale's size")
    parser.add_argument("--epochs", type=int, help="default: the scale's epochs")
    parser.add_argument("--bs", type=int, help="default: the scale's batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ours-only", action="store_true", help="skip fastai's runs (no ratios)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for our runs (after --)")
    args = parser.parse_args()
    pairs = args.pairs.split(",")
    if unknown := set(pairs) - PAIRS.keys():
        parser.error(f"--pairs: unknown {sorted(unknown)}; choose from {sorted(PAIRS)}")

    # fastai runs the scale's shape; ours gets only the flags given (sota keeps its phases)
    given = {
        "arch": "model.arch",
        "widen": "model.widen",
        "size": "scale.size",
        "epochs": "scale.epochs",
        "bs": "scale.batch_size",
    }
    args.shape_overrides = [
        f"{key}={getattr(args, flag)}" for flag, key in given.items() if getattr(args, flag) is not None
    ]
    for flag, value in scale_settings(args.scale).items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    print(
        f"scale={args.scale}: {args.arch}{'' if args.widen == 1 else f' (widen {args.widen})'}, "
        f"{args.size} px, {args.epochs} epochs, bs {args.bs}, {args.root}",
        flush=True,
    )
    for name in pairs:
        recipe, lr, experiments = PAIRS[name]
        fastai = []
        for seed in [] if args.ours_only else range(args.seed, args.seed + args.fastai_seeds):
            fastai.append(run_fastai(args, recipe, lr, seed))
            print(f"fastai ({name}, seed {seed}): {json.dumps(fastai[-1])}", flush=True)
        for experiment in experiments:
            overrides = OURS[experiment]
            ours = [run_ours(args, overrides, args.seed + i) for i in range(args.seeds)]
            fp32 = None
            if experiment == "normalize" and "32" not in ours[0]["precision"]:
                fp32 = run_ours(args, [*overrides, "trainer.precision=32"], args.seed)
            if fastai:
                table(f"{name}: {experiment}", fastai, ours, fp32)


if __name__ == "__main__":
    main()
