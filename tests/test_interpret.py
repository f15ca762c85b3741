"""Interpretation: scores against hand counts, top losses against the images they name."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_sota.augment.augment import BatchAugment
from lightning_sota.augment.normalize import Normalize
from lightning_sota.data.datamodule import ImagenetteDataModule
from lightning_sota.report import interpret
from lightning_sota.run.plan import Phase, Plan
from lightning_sota.training.module import ImageClassifier


def test_accuracies_match_a_hand_count():
    classes = ["a", "b", "c", "d", "e", "f"]
    labels = torch.tensor([0, 0, 1, 1, 2, 5])
    # rank of the true class in each row: 1st, 2nd, 1st, 6th, 5th, 3rd
    logits = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5],
            [8.0, 9, 1, 2, 3, 4],
            [1.0, 9, 2, 3, 4, 5],
            [6.0, 1, 5, 4, 3, 2],
            [6.0, 5, 2, 4, 3, 1],
            [6.0, 5, 1, 2, 3, 4],
        ]
    )
    got = interpret.scores(logits, labels, classes)
    assert got["top5_acc"] == pytest.approx(5 / 6, abs=1e-5)  # all but the 6th-ranked
    assert got["per_class_acc"] == {"a": 0.5, "b": 0.5, "c": 0.0, "d": 0.0, "e": 0.0, "f": 0.0}
    # predicted [a, b, b, a, a, a] for [a, a, b, b, c, f]: a is predicted 4 times, right once
    assert got["per_class"]["a"] == {"precision": 0.25, "recall": 0.5, "f1": pytest.approx(1 / 3, abs=1e-5)}
    assert got["per_class"]["b"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert got["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    # fastai's most_confused: (actual, predicted, count), most frequent first
    assert got["most_confused"] == [["a", "b", 1], ["b", "a", 1], ["c", "a", 1], ["f", "a", 1]]


def test_calibration_error_is_the_gap_between_confidence_and_accuracy():
    """Four predictions of confidence 0.75 (logits ln 3 and 0), half of them right: one bin, ECE
    |0.75 - 0.5|."""
    logits = torch.tensor([[math.log(3), 0.0]] * 4)
    got = interpret.scores(logits, torch.tensor([0, 0, 1, 1]), ["x", "y"])
    assert got["calibration_error"] == pytest.approx(0.25, abs=1e-5)


def test_top_losses_show_the_images_they_name(tmp_path, mini, monkeypatch):
    data = ImagenetteDataModule(str(mini), [32], download=False, cache_dir=tmp_path / "cache")
    data.setup("fit")
    data.plan = Plan.make((Phase(32, 16, 1),), len(data.train_index))
    module = ImageClassifier(
        model=nn.Identity(),
        augment=BatchAugment(),
        normalize=Normalize(),
        loss=nn.CrossEntropyLoss(reduction="none"),
        optimizer=None,
        schedule=None,
        num_classes=10,
        classes=data.classes,
    )
    n = len(data.val_index)
    labels = torch.as_tensor(data.val_labels[data.val_index])
    logits = torch.zeros(n, 10)
    logits[torch.arange(n), labels] = 5.0  # confident and right: small losses
    worst = [n - 10, 7, n // 2]  # out of index order, worst first
    for rank, i in enumerate(worst):
        logits[i] = 0.0
        logits[i, (labels[i] + 1) % 10] = 30.0 - rank  # confidently wrong
    shown = {}
    monkeypatch.setattr(interpret, "save_grid", lambda images, titles, *a: shown.update(x=images, t=titles))
    interpret.plot_top_losses(
        module, data, logits, labels, torch.as_tensor(data.val_index), tmp_path / "t.png", k=3
    )
    for j, i in enumerate(worst):
        alone = module.augment(data.images("val", 32)[[int(data.val_index[i])]], train=False)[0]
        assert torch.equal(shown["x"][j], alone)
        predicted, actual = data.classes[(labels[i] + 1) % 10], data.classes[labels[i]]
        assert shown["t"][j].startswith(f"{predicted} / {actual}\n"), shown["t"][j]
        assert shown["t"][j].endswith(" / 1.00")  # the wrong class holds all the probability


def test_interpretation_runs_on_the_strategys_device_before_teardown(tmp_path, mini, monkeypatch):
    """Lightning's teardown moves the module off its device after fit and test (to the CPU; here,
    to make the move visible on a CPU machine, its network to the meta device, where no number
    survives).
    The interpretation pass must still run on ``trainer.strategy.root_device`` with the trained
    weights, and its figures reach results.json."""
    from pytorch_lightning.strategies import Strategy

    from lightning_sota.run.train import train

    from .conftest import VAL_IMAGES, config

    teardown = Strategy.teardown

    def to_meta(self):
        teardown(self)
        if self.lightning_module is not None:
            self.lightning_module.model.to("meta")

    monkeypatch.setattr(Strategy, "teardown", to_meta)
    seen = []
    predictions = interpret.predictions
    monkeypatch.setattr(
        interpret,
        "predictions",
        lambda module, data, trainer: (
            seen.append((module.device, trainer.strategy.root_device)) or predictions(module, data, trainer)
        ),
    )
    cfg = config(
        "+experiment=normalize",
        "scale=smoke",
        "scale.epochs=1",
        f"data.root={mini}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"logger.csv.save_dir={tmp_path}",
        "trainer.enable_progress_bar=false",
    )
    res = train(cfg, tmp_path)
    assert seen == [(torch.device("cpu"), torch.device("cpu"))]
    assert next(iter(res["per_class_acc"].values())) is not None and 0 <= res["top5_acc"] <= 1
    # the pass scored the trained model: its top-1 is the run's val_acc, within one image
    assert abs(sum(res["per_class_acc"].values()) / 10 - res["val_acc"]) <= 1 / VAL_IMAGES + 1e-6
    assert (tmp_path / "confusion_matrix.png").is_file() and (tmp_path / "results.json").is_file()
