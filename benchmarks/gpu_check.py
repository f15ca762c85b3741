"""Everything a lent GPU should tell us, in one call of about 500 s on one H200
(benchmarks/gpu_check.sh runs this).

    python benchmarks/gpu_check.py --out $OUT [--work /tmp/...] [--root <train/ and val/>] [--smoke]
        [--steps STEP ...]

Steps, each timed against its budget (BUDGET, seconds on one H200 with the full split) and
recorded even when one fails; gpu_check.json is rewritten after every step, so a call cut short
still brings back what it measured:
- device: torch, Python, the GPU.
- cuda_tests: ``pytest -m cuda tests/test_cuda.py`` (only the CUDA tests: the other test modules
  need packages the GPU machine lacks), on a split of the tests' mini set's shape taken from the
  data; among them, captured steps' losses against eager ones over 50 steps.
- syncs: ``+experiment=sota mix=mixup weight_averaging=ema debug=syncs`` at scale=leaderboard,
  30 batches an epoch: host waits per training step and validation batch through the run's own
  on-device data path (syncs.json).
- throughput: loader (host gather and data.on_device) and training-step images/s at 128 px,
  batch 128 and 256, bf16 + channels_last, eager, and compiled at 256.
- sota_leaderboard: ``+experiment=sota scale=leaderboard``, the goal (under 15 s of training),
  with the time to each epoch's accuracy; its step captured as CUDA graphs (graphs=auto:
  results.json's cuda_graphs says whether it was, and why not).
- sota_eager: the same run with ``graphs=off``, on the same card in the same call: the ratio.
- profile: ``debug=kernels`` (torch.profiler in the run) over 20 of sota's training steps at
  128 px, batch 64, with graphs=auto and graphs=off: kernels a step, wall ms a step, GPU busy %,
  the host's ATen calls a step (what the graphs take off the host).
At most 8 files come back in ``--out``, none in a subfolder: gpu_check.json, gpu_check.md (the
table), cuda_tests.txt, syncs.json, sota_leaderboard.json and sota_eager.json (their
results.json). Caches and run folders stay in ``--work``. ``--smoke``: the same steps on the CPU
at smoke scale on the tests' mini set (what the test suite runs), so the script is known to work
before a GPU is ever lent (sota_eager says it skipped: on a CPU both runs step eagerly).
``--steps``: only the steps named, in that order.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from throughput import loader_rate, pipeline, step_rate  # noqa: E402

from lightning_sota.data.folders import scan_split  # noqa: E402
from lightning_sota.files import write_json  # noqa: E402
from lightning_sota.locks import usable_cpus  # noqa: E402
from tests.imagenette_like import TRAIN, VAL, imagenette_like  # noqa: E402

# Seconds each step may take on one H200 (16 cores, the full split), its first calls' times
# rounded up (benchmarks/RESULTS.md; profile's, two short runs, is a guess, and cuda_tests has
# one more run): 500 in all.
BUDGET = {"device": 5, "cuda_tests": 100, "syncs": 60, "throughput": 75, "sota_leaderboard": 100,
          "sota_eager": 100, "profile": 60}  # fmt: skip
# The anchors the issue measures us against (https://github.com/fastai/imagenette's leaderboard,
# fastbook chapter 7).
ANCHORS = {
    "leaderboard_128px_5ep": "87.43% (xse_resnext50, Imagenette leaderboard)",
    "goal_h200": "sota at scale=leaderboard (xresnet50, 128 px) with under 15 s of training",
}


class Check:
    """The steps' results, written to ``out`` after each one."""

    def __init__(self, out: Path, smoke: bool) -> None:
        self.out, self.smoke, self.results = out, smoke, {}

    def step(self, name: str, fn: Callable[[], dict]) -> None:
        start = time.perf_counter()
        try:
            result = {"ok": True, **fn()}
        except Exception as err:  # recorded, and the next step still runs
            result = {
                "ok": False,
                "error": f"{type(err).__name__}: {err}",
                "trace": traceback.format_exc()[-2000:],
            }
        seconds = round(time.perf_counter() - start, 1)
        result |= {"seconds": seconds, "budget_s": BUDGET[name]}
        if not self.smoke:
            result["over_budget"] = seconds > BUDGET[name]
        self.results[name] = result
        write_json(self.out / "gpu_check.json", {**self.results, "anchors": ANCHORS})
        shown = {k: v for k, v in result.items() if k != "trace"}
        print(f"[gpu_check] {name}: {json.dumps(shown)[:1500]}", flush=True)

    def ok(self) -> bool:
        return all(r["ok"] for r in self.results.values())


def device_report() -> dict:
    report = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": usable_cpus(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report |= {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "bf16": torch.cuda.is_bf16_supported(),
        }
    return report


def mini_split(root: Path, work: Path) -> Path:
    """The tests' mini set's shape (TRAIN and VAL images a class, tests/imagenette_like.py) taken
    from ``root``, for the CUDA tests: written for that set, they would train on the whole split."""
    mini = work / "mini"
    shutil.rmtree(mini, ignore_errors=True)
    for split, n in (("train", TRAIN), ("val", VAL)):
        classes, files, labels = scan_split(root / split)
        taken = dict.fromkeys(range(len(classes)), 0)
        for file, label in zip(files, labels, strict=True):
            if taken[label] < n:
                taken[label] += 1
                (mini / split / classes[label]).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, mini / split / classes[label] / file.name)
    return mini


def cuda_tests(out: Path, mini: Path) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    env = {**os.environ, "IMAGENETTE_MINI": str(mini)}  # where the tests look for the mini set
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3 * BUDGET["cuda_tests"]
    )
    (out / "cuda_tests.txt").write_text(proc.stdout[-100_000:] + proc.stderr[-20_000:])
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
    if proc.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"pytest -m cuda: {last} (cuda_tests.txt)")
    return {"summary": last}


def train_run(work: Path, name: str, overrides: list[str], budget: int) -> tuple[Path, dict]:
    """`python train.py` as a user runs it, in ``work``; its run folder and results.json."""
    run_dir = work / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [
        sys.executable,
        "train.py",
        *overrides,
        f"hydra.run.dir={run_dir}",
        "trainer.enable_progress_bar=false",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3 * budget)
    if proc.returncode:
        raise RuntimeError(f"train.py {' '.join(overrides)}: {proc.stderr[-2000:]}")
    return run_dir, json.loads((run_dir / "results.json").read_text())


def syncs(work: Path, out: Path, overrides: list[str]) -> dict:
    run_dir, _ = train_run(work, "syncs", overrides, BUDGET["syncs"])
    shutil.copyfile(run_dir / "syncs.json", out / "syncs.json")
    report = json.loads((run_dir / "syncs.json").read_text())
    if "skipped" in report:
        return {"skipped": report["skipped"]}
    return {
        "epochs": [
            {
                "epoch": e["epoch"],
                "waits_per_train_step": round(e["train_waits"] / max(e["train_steps"], 1), 2),
                "waits_per_val_batch": round(e["val_waits"] / max(e["val_batches"], 1), 2),
                "background_waits": e["background_waits"],  # the checkpoint writer's, off the loop
            }
            for e in report["epochs"]
        ]
    }


def throughput(
    root: Path, cache: Path, size: int, batch_sizes: list[int], steps: int, compile_bs: int | None
) -> dict:
    """Images/s of the loader (to the augmented, normalized batch) and of xresnet50's training
    step, eager at every batch size and compiled at ``compile_bs`` (None: not compiled)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda"
    xresnet50 = ["model.arch=xresnet50"]
    rows = []
    for bs in batch_sizes:
        loaders = {}
        for on_device in (False, True):  # the host's memory-map gather, then data.on_device
            flag = f"data.on_device={str(on_device).lower()}"
            data, module = pipeline(str(root), size, bs, device, [*xresnet50, flag], str(cache))
            batches = max(2, min(30, data.plan.batches[0] - 3))
            loaders[on_device] = loader_rate(data, module, batches)
        eager, _ = step_rate(data, module, bf16, steps)
        compiled = compile_seconds = None
        if bs == compile_bs:
            overrides = [*xresnet50, "model.compile=true"]
            compiled, compile_seconds = step_rate(
                *pipeline(str(root), size, bs, device, overrides, str(cache)), bf16, steps
            )
        rows.append(
            {
                "size": size,
                "batch_size": bs,
                "loader_img_s": round(loaders[False]),
                "loader_on_device_img_s": round(loaders[True]),
                "step_img_s": round(eager, 1),
                "compiled_img_s": compiled and round(compiled, 1),
                "compile_s": compile_seconds and round(compile_seconds, 1),
            }
        )
    return {"precision": "bf16-mixed" if bf16 else "32-true", "rows": rows}


def leaderboard(work: Path, out: Path, overrides: list[str], name: str = "sota_leaderboard") -> dict:
    """The goal run; per epoch: accuracy and the fit time until then."""
    run_dir, res = train_run(work, name, overrides, BUDGET[name])
    shutil.copyfile(run_dir / "results.json", out / f"{name}.json")
    elapsed, epochs = 0.0, []
    for row in res["history"]:
        elapsed += row["seconds"]
        epochs.append(
            {"epoch": row["epoch"], "size": row["size"], "val_acc": row["val_acc"], "at_s": round(elapsed, 1)}
        )
    keep = (
        "val_acc",
        "tta_acc",
        "train_seconds",
        "cache_seconds",
        "train_images_per_second",
        "precision",
        "device",
        "cuda_graphs",
    )
    return {
        "command": "python train.py " + " ".join(overrides),
        **{k: res[k] for k in keep},
        "epochs": epochs,
    }


def profile(work: Path, overrides: list[str], smoke: bool) -> dict:
    """debug=kernels (lightning_sota/training/step_profile.py) over 20 of sota's training steps
    at the leaderboard's 128 px, batch 64, in the run itself: with graphs=auto and, on a GPU,
    graphs=off. Per run: kernels a step, wall ms a step, GPU busy %, the host's ATen calls."""
    rows = []
    for switch in ("auto",) if smoke else ("auto", "off"):
        name, budget = f"profile_graphs_{switch}", BUDGET["profile"] // 2
        run_dir, _ = train_run(work, name, [*overrides, f"graphs={switch}"], budget)
        for phase in json.loads((run_dir / "kernels.json").read_text())["phases"]:
            graphs = phase.pop("cuda_graphs")
            replayed, why_not = graphs["replayed_steps"], graphs["why"]
            rows.append({"graphs": switch, **phase, "why_not": why_not, "replayed": replayed})
    return {"rows": rows}


def table(results: dict) -> str:
    lines = ["| step | ok | seconds (budget) | figures |", "|---|---|---|---|"]
    for name, r in results.items():
        figures = {
            k: v
            for k, v in r.items()
            if k not in ("ok", "seconds", "budget_s", "trace", "rows", "epochs", "over_budget")
        }
        lines.append(
            f"| {name} | {r['ok']} | {r['seconds']} ({r['budget_s']}) | {json.dumps(figures)[:200]} |"
        )
        for row in r.get("rows", []):
            lines.append(f"|  | | | {json.dumps(row)} |")
        for row in r.get("epochs", []):
            lines.append(f"|  | | | {json.dumps(row)} |")
    lines += [f"| anchor: {k} | | | {v} |" for k, v in ANCHORS.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="where the (at most 8) files that come back go")
    parser.add_argument("--work", default="/tmp/lightning-sota-gpu-check", help="caches and run folders")
    parser.add_argument(
        "--root",
        help="train/ and val/ (default: the unpacked data pack, or the tests' mini set with --smoke)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="CPU, smoke scale, the tests' mini set: the script's own test"
    )
    parser.add_argument(
        "--steps", nargs="+", choices=list(BUDGET), default=list(BUDGET), help="default: every step"
    )
    args = parser.parse_args()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    if args.root:
        root = Path(args.root)
    elif args.smoke:  # the tests' mini set: IMAGENETTE_MINI, else the one they draw into build/
        root = Path(os.environ.get("IMAGENETTE_MINI") or imagenette_like(ROOT / "build" / "test-data"))
    else:
        root = Path("/tmp/imagenette-pack")
    cache = work / "cache"
    common = [f"data.root={root}", f"data.cache_dir={cache}"]
    if args.smoke:
        scale, size, batch_sizes, n_steps, compile_bs = ["scale=smoke", "trainer=cpu"], 32, [16], 1, None
    else:
        scale, size, batch_sizes, n_steps, compile_bs = ["scale=leaderboard"], 128, [128, 256], 30, 256
    probe = [
        "+experiment=sota",
        "mix=mixup",
        "weight_averaging=ema",
        "debug=syncs",
        # a GPU counts 30 steps an epoch; on the CPU (--smoke) nothing is counted: one step shows the path
        f"+trainer.limit_train_batches={1 if args.smoke else 30}",
    ]
    profiled = [
        "+experiment=sota",
        "debug=kernels",
        "tta=none",
        f"resize.phases=[{{size:{size},batch_size:{16 if args.smoke else 64},epochs:1}}]",
        f"+trainer.limit_train_batches={12 if args.smoke else 30}",  # the window: steps 10 to 30
    ]
    steps = {
        "device": device_report,
        "cuda_tests": lambda: cuda_tests(out, mini_split(root, work)),
        "syncs": lambda: syncs(work, out, [*probe, *scale, *common]),
        "throughput": lambda: throughput(root, cache, size, batch_sizes, n_steps, compile_bs),
        "sota_leaderboard": lambda: leaderboard(work, out, ["+experiment=sota", *scale, *common]),
        "sota_eager": lambda: (
            {"skipped": "on a CPU both runs step eagerly"}
            if args.smoke
            else leaderboard(work, out, ["+experiment=sota", "graphs=off", *scale, *common], "sota_eager")
        ),
        "profile": lambda: profile(work, [*profiled, *scale, *common], args.smoke),
    }
    check = Check(out, args.smoke)
    for name in args.steps:
        check.step(name, steps[name])
    (out / "gpu_check.md").write_text(table(check.results) + "\n")
    print(table(check.results))
    sys.exit(0 if check.ok() else 1)


if __name__ == "__main__":
    main()
