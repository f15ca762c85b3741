"""results.json: the run's honest, machine-readable summary (DESIGN.md's output contract)."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import Any

# What a finished run's results.json must hold for a report (and for skip_completed to skip it).
REQUIRED = ("experiment", "seed", "val_acc", "epochs", "train_seconds", "history")


def write_json(path: Path, data: Any) -> None:
    """Write through a temporary name and rename: a killed run never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def summarize(
    *,
    name: str,
    seed: int,
    arch: str,
    phases: list[dict],
    history: list[dict],
    train_seconds: float,
    cache_seconds: float,
    test_seconds: float | None,
    tta_acc: float | None,
    train_images: int,
    val_seconds: float,
    precision: str,
    device: str,
    world_size: int,
    dataset: dict,
    normalize: dict | None,
) -> dict:
    accs = [row["val_acc"] for row in history if row["val_acc"] is not None]
    holdout = [row["holdout_acc"] for row in history if row.get("holdout_acc") is not None]
    step_seconds = max(train_seconds - val_seconds, 1e-9)
    held = dataset.get("holdout", 0)
    # Which images each accuracy was measured on; selection (sweeps, recipe tuning) reads
    # holdout_acc when there is one, so the val split stays a report.
    splits = {"val_acc": f"val: the official validation split ({dataset['val']} images)"}
    splits["tta_acc"] = splits["val_acc"]
    if held:
        splits["holdout_acc"] = (
            f"holdout: {held} train images, stratified by class, seed {dataset['holdout_seed']}, "
            "not trained on"
        )
    return {
        "experiment": name,
        "seed": seed,
        "arch": arch,
        "phases": phases,
        "epochs": sum(p["epochs"] for p in phases),
        "val_acc": accs[-1] if accs else None,
        "tta_acc": tta_acc,
        "best_val_acc": max(accs) if accs else None,
        "holdout_acc": holdout[-1] if holdout else None,
        "selected_on": "holdout_acc" if held else "val_acc",
        "splits": splits,
        "history": history,
        "train_seconds": round(train_seconds, 2),
        "cache_seconds": round(cache_seconds, 2),
        "test_seconds": None if test_seconds is None else round(test_seconds, 2),
        "train_images_per_second": round(train_images / step_seconds, 1),
        # the validation passes' rate (val and holdout images), for predict's to be read against
        "val_images_per_second": round(
            (sum(row["val_images"] for row in history) + held * len(history)) / max(val_seconds, 1e-9), 1
        ),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "precision": precision,
        "device": device,
        # DDP ranks: each phase's batch_size is the global batch, batch_size/world_size per rank
        "world_size": world_size,
        "normalize": normalize,
        "dataset": dataset,
    }


def is_complete(path: Path) -> bool:
    """A results.json that parses and has every field a report needs."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return all(data.get(k) is not None for k in REQUIRED)
