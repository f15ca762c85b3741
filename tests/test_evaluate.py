"""evaluate: a checkpoint re-scored without training gives its run's figures, or refuses."""

from __future__ import annotations

import json

import pytest
import yaml

from lightning_sota.serve.evaluate import main

from .conftest import COLOURS, VAL_IMAGES, run_cli, write_image


def evaluate(capsys, *args: str) -> tuple[int, str, str]:
    """``python -m lightning_sota.serve.evaluate <args>`` in this process: exit status, stdout, stderr."""
    try:
        code = main(list(args))
    except SystemExit as exit:
        code = exit.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_evaluate_reproduces_the_run_and_refuses_other_data(trained_run, tmp_path, capsys):
    run = trained_run
    cache = f"data.cache_dir={run.parent / 'cache'}"
    results = json.loads((run / "results.json").read_text())

    code, out, err = evaluate(capsys, str(run), "--tta", cache)
    assert code == 0, err[-3000:]
    scored = json.loads((run / "eval.json").read_text())
    assert yaml.safe_load(out) == scored  # what it prints is what it keeps
    assert scored["images"] == VAL_IMAGES and scored["size"] == results["phases"][-1]["size"]
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
    code, _, err = evaluate(capsys, str(run / "checkpoints" / "last.ckpt"), f"data.root={other}", cache)
    assert code == 2 and err.count("\n") == 1, err
    assert "classes" in err and "data.root" in err
    assert (run / "eval.json").read_text() == before
    # what would change the scoring is refused, by name
    code, _, err = evaluate(capsys, str(run), "augment.min_scale=0.5", cache)
    assert code == 2 and "augment.min_scale: 0.75 -> 0.5" in err and err.count("\n") == 1
    code, _, err = evaluate(capsys, str(tmp_path / "nowhere"))
    assert code == 2 and "no checkpoint" in err


@pytest.mark.slow
def test_evaluate_scores_a_folder_of_class_folders_without_a_train_split(trained_run, mini, tmp_path):
    """The command as a user runs it, in a process of its own, on any labelled folder: here the
    run's own val images as one folder of class folders, with no train/ beside them. Only their
    cache is built, and they score as the run's validation did."""
    folder = tmp_path / "to-score"
    folder.mkdir()
    for class_folder in (mini / "val").iterdir():
        (folder / class_folder.name).symlink_to(class_folder)
    cache = tmp_path / "cache"
    proc = run_cli(
        "python",
        "-m",
        "lightning_sota.serve.evaluate",
        trained_run,
        f"data.root={folder}",
        f"data.cache_dir={cache}",
    )
    scored = json.loads((trained_run / "eval.json").read_text())
    results = json.loads((trained_run / "results.json").read_text())
    assert yaml.safe_load(proc.stdout) == scored
    assert scored["images"] == VAL_IMAGES and scored["accuracy"] == results["val_acc"]
    built = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(built) == 1, built  # the scored split's cache alone, no training cache
