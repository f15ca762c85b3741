"""A checkpoint saved before the package moved into subpackages (2b99a8d: its config names the
flat modules' _target_s, data.phases, no resize.epochs_per_phase) still evaluates, with the same
accuracy and TTA accuracy its run reported, and still predicts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lightning_sota import load_run
from lightning_sota.run.checkpoint import moved_target, saved_config
from lightning_sota.run.layout import read_checkpoint
from lightning_sota.serve.evaluate import evaluate

from .imagenette_like import imagenette_like

DATA = Path(__file__).parent / "data"
OLD = DATA / "checkpoint-2b99a8d.ckpt"
RECORDED = json.loads((DATA / "checkpoint-2b99a8d.json").read_text())


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """The old checkpoint in a run folder of its own (evaluate writes eval.json beside it)."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(OLD, tmp_path / "run" / "checkpoints" / "last.ckpt")
    return tmp_path / "run"


def test_its_config_reads_in_todays_layout():
    raw = read_checkpoint(OLD)["lightning_sota"]["config"]
    assert raw["augment"]["_target_"] == "lightning_sota.augment.BatchAugment"  # as saved then
    assert "phases" in raw["data"]
    cfg = saved_config(read_checkpoint(OLD))
    assert cfg.augment._target_ == "lightning_sota.augment.augment.BatchAugment"
    assert cfg.optim._target_ == "lightning_sota.training.optim.ranger"
    assert "phases" not in cfg.data and cfg.resize.phases[-1].size == 32
    assert (
        moved_target("lightning_sota.cpu.CpuTuning.for_device") == "lightning_sota.cpu.CpuTuning.for_device"
    )


def test_it_evaluates_to_the_accuracy_its_run_reported(old_run, tmp_path):
    root = imagenette_like(Path(__file__).resolve().parent.parent / "build" / "test-data")
    where = [f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"]
    result = evaluate(str(old_run), where, tta=True)
    assert result["images"] == 80 and result["size"] == 32
    assert result["accuracy"] == pytest.approx(RECORDED["val_acc"], abs=1e-6)
    assert result["tta_acc"] == pytest.approx(RECORDED["tta_acc"], abs=1e-6)
    predictor = load_run(old_run)
    label, probs = predictor.predict(next((root / "val" / "n03888257").iterdir()))
    assert label in predictor.classes and float(probs.sum()) == pytest.approx(1, abs=1e-4)
