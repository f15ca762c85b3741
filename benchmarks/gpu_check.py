"""Everything a lent GPU should tell us, in one call (benchmarks/gpu_check.sh runs this).

    python benchmarks/gpu_check.py --out $OUT [--root <train/ and val/>] [--smoke]

Steps, each timed and recorded even when one fails: the device; the CUDA tests (`pytest -m
cuda`); host syncs per training step (torch.cuda.set_sync_debug_mode("warn")); loader (host
gather and data.on_device) and step images/s at 128 and 224 px (bf16 + channels_last, eager and
compiled, batch 64/128/256); `+experiment=sota scale=leaderboard` with the time to each epoch's
accuracy; the chapter's progressive resizing + TTA at 224 px (`+experiment=progressive_resize
scale=chapter tta=fastai`). A summary table is printed last and written to <out>/gpu_check.json.
`--smoke`: the same steps on the CPU at smoke scale (what the test suite runs), so the script is
known to work before a GPU is ever lent.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from throughput import loader_rate, pipeline, step_rate  # noqa: E402

from lightning_sota.data import ImagenetteDataModule  # noqa: E402
from lightning_sota.locks import usable_cpus  # noqa: E402

# The anchors the issue measures us against (../shared/REFERENCE.md, fastbook chapter 7).
ANCHORS = {
    "leaderboard_128px_5ep": "87.43% (xse_resnext50, Imagenette leaderboard)",
    "chapter_224px": "82.5% baseline, 86.3% progressive, 87.4% with TTA (fastbook ch. 7, random split)",
    "goal_h200": "5 epochs xresnet50 at 128 px, leaderboard accuracy, under 15 s of training",
}


def step(name: str, results: dict, fn: Callable[[], dict]) -> None:
    start = time.perf_counter()
    try:
        results[name] = {"ok": True, **fn()}
    except Exception as err:  # recorded, and the next step still runs
        results[name] = {
            "ok": False,
            "error": f"{type(err).__name__}: {err}",
            "trace": traceback.format_exc()[-2000:],
        }
    results[name]["seconds"] = round(time.perf_counter() - start, 1)
    print(
        f"[gpu_check] {name}: {json.dumps({k: v for k, v in results[name].items() if k != 'trace'})}",
        flush=True,
    )


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


def cuda_tests() -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
    if proc.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"pytest -m cuda: {last}\n{proc.stdout[-3000:]}")
    return {"summary": last}


def syncs_per_step(root: Path, cache: Path, size: int, bs: int, steps: int) -> dict:
    """Training steps of the real module on the GPU under sync debug mode: each warning is one
    place where the host waited for the device."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA"}
    from hydra.utils import instantiate

    from lightning_sota.build import build_module, cpu_tuning
    from lightning_sota.config import compose_config

    cfg = compose_config(["+experiment=sota", f"scale.size={size}", f"scale.batch_size={bs}", "~logger"])
    data = ImagenetteDataModule(root, [{"size": size, "batch_size": bs, "epochs": 1}], cache_dir=cache)
    data.setup("fit")
    module = build_module(cfg, data.classes, cpu_tuning(cfg, torch.device("cuda"))).cuda()
    module.log = lambda *args, **kwargs: None  # self.log needs Lightning's loop; the step is the same
    trainer = instantiate(cfg.trainer, accelerator="gpu", devices=1, logger=False, max_epochs=1)
    module.trainer = trainer  # the hooks read rank and epoch from it
    optimizer = module.optimizer_factory(module.model)
    batches = iter(data.train_dataloader())
    counts = []
    for i in range(steps + 1):
        batch = {k: v.cuda(non_blocking=True) if torch.is_tensor(v) else v for k, v in next(batches).items()}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            module.seed_draws(i)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = module.training_step(batch, i)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.set_sync_debug_mode("default")
        if i:  # the first step warms up (allocations, cuDNN's choices)
            counts.append(sum("synchroniz" in str(w.message) for w in caught))
    return {"syncs_per_step": counts, "where": sorted({str(w.message)[:120] for w in caught})[:8]}


def throughput(root: Path, cache: Path, sizes: list[int], batch_sizes: list[int], steps: int) -> dict:
    """Images/s of the loader (to the augmented, normalized batch) and of xresnet50's training
    step, eager at every batch size and compiled at the middle one (each compile takes about a
    minute of the script's ten); on the CPU (--smoke) the compiled step is left out: minutes of
    compiling for a figure that says nothing about a GPU."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda"
    rows = []
    for size in sizes:
        for bs in batch_sizes:
            xresnet50 = ["model.arch=xresnet50"]
            loaders = {}
            for on_device in (False, True):  # the host's memory-map gather, then data.on_device
                flag = f"data.on_device={str(on_device).lower()}"
                data, module = pipeline(str(root), size, bs, device, [*xresnet50, flag], str(cache))
                batches = max(2, min(30, data.train_batches(data.phases[0]) - 3))
                loaders[on_device] = loader_rate(data, module, batches)
            eager, _ = step_rate(data, module, bf16, steps)
            compiled, compile_seconds = (
                step_rate(
                    *pipeline(str(root), size, bs, device, [*xresnet50, "model.compile=true"], str(cache)),
                    bf16,
                    steps,
                )
                if bf16 and bs == batch_sizes[len(batch_sizes) // 2]
                else (None, None)
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
            print(f"[gpu_check] throughput {rows[-1]}", flush=True)
    return {"precision": "bf16-mixed" if bf16 else "32-true", "rows": rows}


def train_run(out: Path, name: str, overrides: list[str]) -> dict:
    """`python train.py` as a user runs it; per epoch: accuracy and the fit time until then."""
    run_dir = out / "runs" / name
    cmd = [
        sys.executable,
        "train.py",
        *overrides,
        f"hydra.run.dir={run_dir}",
        "trainer.enable_progress_bar=false",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    if proc.returncode:
        raise RuntimeError(f"train.py {' '.join(overrides)}: {proc.stderr[-2000:]}")
    res = json.loads((run_dir / "results.json").read_text())
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
    )
    return {
        "command": "python train.py " + " ".join(overrides),
        **{k: res[k] for k in keep},
        "epochs": epochs,
    }


def table(results: dict) -> str:
    lines = ["| step | ok | seconds | figures |", "|---|---|---|---|"]
    for name, r in results.items():
        if name in ("anchors",):
            continue
        figures = {
            k: v for k, v in r.items() if k not in ("ok", "seconds", "trace", "rows", "epochs", "where")
        }
        lines.append(f"| {name} | {r.get('ok')} | {r.get('seconds')} | {json.dumps(figures)[:160]} |")
        for row in r.get("rows", []):
            lines.append(f"|  | | | {json.dumps(row)} |")
        for row in r.get("epochs", []):
            lines.append(
                f"|  | | | epoch {row['epoch']} ({row['size']} px): val {row['val_acc']} at {row['at_s']} s |"
            )
    lines += [f"| anchor: {k} | | | {v} |" for k, v in ANCHORS.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="where the summary and the runs go")
    parser.add_argument(
        "--root", help="train/ and val/ (default: the unpacked data pack, or the mini set with --smoke)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="CPU, smoke scale, the mini set: the script's own test"
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(
        args.root
        or (ROOT.parent / "shared" / "data" / "imagenette-mini" if args.smoke else "/tmp/imagenette-pack")
    )
    cache = out / "cache"
    common = [f"data.root={root}", f"data.cache_dir={cache}"]
    if args.smoke:
        sizes, batch_sizes, steps = [32], [16], 1
        runs = {
            "sota_leaderboard": ["+experiment=sota", "scale=smoke", "trainer=cpu", *common],
            "chapter_progressive_tta": [
                "+experiment=progressive_resize",
                "scale=smoke",
                "tta=fastai",
                "trainer=cpu",
                *common,
            ],
        }
    else:
        sizes, batch_sizes, steps = [128, 224], [64, 128, 256], 30
        runs = {
            "sota_leaderboard": ["+experiment=sota", "scale=leaderboard", *common],
            "chapter_progressive_tta": [
                "+experiment=progressive_resize",
                "scale=chapter",
                "tta=fastai",
                *common,
            ],
        }
    results: dict = {}
    step("device", results, device_report)
    step("cuda_tests", results, cuda_tests)
    step("syncs", results, lambda: syncs_per_step(root, cache, sizes[0], batch_sizes[0], 5))
    step("throughput", results, lambda: throughput(root, cache, sizes, batch_sizes, steps))
    for name, overrides in runs.items():
        step(name, results, lambda o=overrides, n=name: train_run(out, n, o))
    results["anchors"] = ANCHORS
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    sys.exit(0 if all(r.get("ok", True) for k, r in results.items() if k != "anchors") else 1)


if __name__ == "__main__":
    main()
