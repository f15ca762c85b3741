"""results.json: the run's honest, machine-readable summary (DESIGN.md's output contract)."""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from lightning_sota.run.layout import read_checkpoint

if TYPE_CHECKING:
    from lightning_sota.run.build import Run

# What a finished run's results.json must hold for a report (and for skip_completed to skip it).
REQUIRED = ("experiment", "seed", "val_acc", "epochs", "train_seconds", "history")


def summarize(cfg: DictConfig, run: Run, train_seconds: float, test_seconds: float | None) -> dict:
    """What the fit of ``run`` (the config ``cfg``) measured; ``train_seconds`` is the whole fit
    with its validation passes, ``test_seconds`` the TTA pass (None without one)."""
    history, data = run.history.rows, run.data
    dataset = data.summary()
    accs = [row["val_acc"] for row in history if row["val_acc"] is not None]
    holdout = [row["holdout_acc"] for row in history if row.get("holdout_acc") is not None]
    step_seconds = max(train_seconds - run.history.val_seconds, 1e-9)
    held = dataset["holdout"]
    # Which images each accuracy was measured on; selection (sweeps, recipe tuning) reads
    # holdout_acc when there is one, so the val split stays a report.
    if dataset["valid_pct"]:
        seed = dataset["split_seed"]
        where = f"a random {dataset['valid_pct']:.0%} of {dataset['root']} (data.split_seed={seed})"
    else:
        where = "the dataset's validation folder"
    splits = {"val_acc": f"val: {where} ({dataset['val']} images)"}
    splits["tta_acc"] = splits["val_acc"]
    if held:
        splits["holdout_acc"] = (
            f"holdout: {held} train images, stratified by class, seed {dataset['holdout_seed']}, "
            "not trained on"
        )
    val_images = sum(row["val_images"] for row in history) + held * len(history)
    compiled = cfg.model.get("compile")
    return {
        "experiment": cfg.name,
        "seed": cfg.seed,
        "arch": cfg.model.arch,
        "phases": run.plan.as_list(),
        "epochs": run.plan.epochs,
        "val_acc": accs[-1] if accs else None,
        "tta_acc": run.tta.accuracy if run.tta else None,
        "best_val_acc": max(accs) if accs else None,
        "holdout_acc": holdout[-1] if holdout else None,
        "selected_on": "holdout_acc" if held else "val_acc",
        "splits": splits,
        "history": history,
        "train_seconds": round(train_seconds, 2),
        "cache_seconds": round(data.cache_seconds, 2),
        "test_seconds": None if test_seconds is None else round(test_seconds, 2),
        "train_images_per_second": round(run.history.train_images / step_seconds, 1),
        # the validation passes' rate (val and holdout images), for predict's to be read against
        "val_images_per_second": round(val_images / max(run.history.val_seconds, 1e-9), 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "precision": str(run.trainer.precision),
        "device": run.trainer.strategy.root_device.type,
        # DDP ranks: each phase's batch_size is the global batch, batch_size/world_size per rank
        "world_size": run.trainer.world_size,
        "cpu_tuning": run.module.cpu_tuning,
        # whether the training step ran as captured CUDA graphs, and why not (training/graphs.py)
        "cuda_graphs": run.module.graphs.report(),
        # where the weights started: false (initialised), true (timm's ImageNet weights) or a path
        "pretrained": cfg.model.get("pretrained", False),
        "normalize": run.module.normalize.stats(),
        "dataset": dataset,
        "provenance": run.provenance,
        "best_checkpoint": best_kept(run),
        **({"compile": {"mode": compiled, "graphs": compiled_graphs()}} if compiled else {}),
    }


def best_kept(run: Run) -> dict | None:
    """The best epoch checkpoint.save_top_k kept: its file (in the run folder), epoch, size and
    the metric it was chosen on, with what that metric measured (``chosen_on``: a val_* choice
    makes val_acc a selected, optimistic figure); None when the run keeps only last.ckpt."""
    chooser = next((c for c in run.trainer.checkpoint_callbacks if c.monitor), None)
    if chooser is None or not chooser.best_model_path:
        return None
    meta = read_checkpoint(Path(chooser.best_model_path))["lightning_sota"]
    monitor = meta["selection"]["monitor"]
    return {
        "file": str(Path(chooser.best_model_path).relative_to(run.trainer.default_root_dir)),
        "epoch": meta["epoch"],
        "size": meta["size"],
        "monitor": monitor,
        "mode": meta["selection"]["mode"],
        "value": meta["selection"]["value"],
        "chosen_on": "holdout" if monitor.startswith("holdout") else monitor.split("_")[0],
        "kept": len(chooser.best_k_models),
    }


def compiled_graphs() -> int:
    """Graphs torch.compile has built in this process (dynamo's own count): a few per run (train,
    validation, each new size); dozens would mean it recompiles batch after batch."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def is_complete(path: Path) -> bool:
    """A results.json that parses and has every field a report needs."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return all(data.get(k) is not None for k in REQUIRED)
