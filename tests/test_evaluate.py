"""evaluate: a checkpoint re-scored without training gives its run's figures, or refuses."""

from __future__ import annotations

import json
import subprocess

import pytest

from .conftest import COLOURS, run_cli, write_image


def evaluate(*args) -> subprocess.CompletedProcess:
    return run_cli("python", "-m", "lightning_sota.serve.evaluate", *args, ok=None)


@pytest.mark.slow
def test_evaluate_reproduces_the_run_and_refuses_other_data(trained_run, tmp_path):
    run = trained_run
    cache = f"data.cache_dir={run.parent / 'cache'}"
    results = json.loads((run / "results.json").read_text())

    proc = evaluate(str(run), "--tta", cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scored = json.loads((run / "eval.json").read_text())
    assert scored["images"] == 200 and scored["size"] == results["phases"][-1]["size"]
    assert scored["accuracy"] == results["val_acc"]  # exactly: same pieces, same precision
    assert scored["tta_acc"] == results["tta_acc"]  # the TTA draws are seeded, not left to the RNG
    # the interpretation's scores, from the same predictions as the run's own
    for key in ("top5_acc", "per_class_acc", "per_class", "calibration_error", "most_confused"):
        assert scored[key] == results[key], key

    # other classes: one line naming both lists, nothing written over eval.json
    other = tmp_path / "other"
    for split in ("train", "val"):
        for c, colour in enumerate(COLOURS):
            write_image(other / split / f"n0{c}" / "a.JPEG", (40, 30), colour)
    before = (run / "eval.json").read_text()
    proc = evaluate(str(run / "checkpoints" / "last.ckpt"), f"data.root={other}", cache)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "classes" in proc.stderr and "data.root" in proc.stderr
    assert (run / "eval.json").read_text() == before
    # what would change the scoring is refused, by name
    proc = evaluate(str(run), "augment.min_scale=0.5", cache)
    assert (
        proc.returncode == 2
        and "augment.min_scale: 0.75 -> 0.5" in proc.stderr
        and proc.stderr.count("\n") == 1
    )
    proc = evaluate(str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "no checkpoint" in proc.stderr


@pytest.mark.slow
def test_evaluate_scores_a_folder_of_class_folders_without_a_train_split(trained_run, mini, tmp_path):
    """Any labelled folder: here the run's own val images as one folder of class folders, with no
    train/ beside them. Only their cache is built, and they score as the run's validation did."""
    folder = tmp_path / "to-score"
    folder.mkdir()
    for class_folder in (mini / "val").iterdir():
        (folder / class_folder.name).symlink_to(class_folder)
    cache = tmp_path / "cache"
    proc = evaluate(str(trained_run), f"data.root={folder}", f"data.cache_dir={cache}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    scored = json.loads((trained_run / "eval.json").read_text())
    results = json.loads((trained_run / "results.json").read_text())
    assert scored["images"] == 200 and scored["accuracy"] == results["val_acc"]
    built = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(built) == 1, built  # the scored split's cache alone, no training cache
