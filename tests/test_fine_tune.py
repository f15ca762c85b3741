"""+experiment=fine_tune: fastai's Learner.fine_tune from pretrained weights, step by step."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from lightning_sota.training.optim import adam
from lightning_sota.training.schedule import pretrained_fine_tune

from .conftest import results, train_here

BATCHES, EPOCHS, FREEZE, BASE_LR = 5, 3, 1, 4e-3


def fastai_fine_tune() -> tuple[list[list[float]], list[float], list[list[bool]]]:
    """fastai's own fine_tune(EPOCHS, BASE_LR, FREEZE) on a model of three parameter groups:
    each step's lr per group, momentum, and which groups' convolutions train."""
    pytest.importorskip("fastai.callback.schedule")
    from fastai.callback.core import Callback
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.torch_core import params

    class Record(Callback):
        def __init__(self):
            self.lrs, self.moms, self.trains = [], [], []

        def before_step(self):
            self.lrs.append([h["lr"] for h in self.opt.hypers])
            self.moms.append(self.opt.hypers[0]["mom"])
            self.trains.append([m[0].weight.requires_grad for m in (self.model[0], self.model[1])])

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)),
        nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        nn.Linear(4, 2),
    )
    items = list(zip(torch.rand(BATCHES * 4, 3, 8, 8), torch.randint(0, 2, (BATCHES * 4,)), strict=True))
    dls = DataLoaders.from_dsets(items, items, bs=4, device="cpu")
    record = Record()
    learn = Learner(
        dls,
        model,
        loss_func=nn.CrossEntropyLoss(),
        splitter=lambda m: [params(m[0]), params(m[1]), params(m[2])],
        cbs=[record],
    )
    with learn.no_logging(), learn.no_bar():
        learn.fine_tune(EPOCHS, base_lr=BASE_LR, freeze_epochs=FREEZE)
    return record.lrs, record.moms, record.trains


def test_each_groups_lr_at_each_step_is_fastais():
    """Over both stages: the frozen cycle (slice(base_lr), pct_start 0.99), the halving and the
    unfrozen cycle over even_mults(base_lr/2/lr_mult, base_lr/2); the stem and body held fixed
    while frozen except their BatchNorms, which train at their group's lr, as fastai's train_bn."""
    want_lrs, want_moms, want_trains = fastai_fine_tune()
    optimizer = adam(timm.create_model("resnet18d", num_classes=2))
    schedule = pretrained_fine_tune(
        optimizer, [(BATCHES, EPOCHS + FREEZE)], base_lr=BASE_LR, freeze_epochs=FREEZE
    )
    assert len(want_lrs) == BATCHES * (EPOCHS + FREEZE)
    # fastai locates a step within its cycle in float32 (combine_scheds' cumsum): agreement to 1e-6
    for step, (lrs, mom, trains) in enumerate(zip(want_lrs, want_moms, want_trains, strict=True)):
        for group in optimizer.param_groups:
            split, norm = group["split"], group["norm"]
            frozen = split < 2 and not trains[split]
            want = 0.0 if frozen and not norm else lrs[split]
            assert group["lr"] == pytest.approx(want, rel=1e-6, abs=1e-18), (step, split, norm)
            assert group["betas"][0] == pytest.approx(mom, rel=1e-6), step
        optimizer.step()
        schedule.step()
    assert want_trains[0] == [False, False] and want_trains[-1] == [True, True]  # both stages seen


def test_frozen_epochs_must_leave_some_to_train():
    optimizer = adam(timm.create_model("resnet18d", num_classes=2))
    with pytest.raises(ValueError, match="schedule.freeze_epochs=2: the run has 2 epochs"):
        pretrained_fine_tune(optimizer, [(BATCHES, 2)], freeze_epochs=2)


@pytest.mark.slow
def test_fine_tune_from_a_run_of_ours_onto_another_folder(trained_run, image_folder, tmp_path):
    """The documented way in: a run's weights (10 Imagenette classes) onto a 3-class folder: a
    new classifier, the run's normalization, one frozen epoch and then the scale's."""
    train_here(
        "+experiment=fine_tune",
        "scale=smoke",
        f"model.pretrained={trained_run}",
        f"data.root={image_folder}",
        "data.download=false",
        tmp=tmp_path,
    )
    res = results(tmp_path / "run")
    assert res["pretrained"] == str(trained_run) and res["experiment"] == "fine_tune"
    assert res["epochs"] == 2 + 1 and len(res["dataset"]["classes"]) == 3
    assert res["normalize"] == results(trained_run)["normalize"]
    assert all(row["train_loss"] is not None for row in res["history"])


@pytest.mark.parametrize("stop", [3, 9], ids=["frozen", "unfrozen"])
def test_a_resume_in_either_stage_continues_exactly(stop):
    """What Lightning does on resume: a new optimizer and schedule, their states loaded; every
    group's lr from then on is the uninterrupted run's (the freeze is the step count's, not a
    flag of the parameters)."""
    model = timm.create_model("resnet18d", num_classes=2)

    def fresh():
        optimizer = adam(model)
        return optimizer, pretrained_fine_tune(
            optimizer, [(BATCHES, 3)], base_lr=BASE_LR, freeze_epochs=FREEZE
        )

    def lrs(optimizer, schedule, steps: int) -> list[list[float]]:
        seen = []
        for _ in range(steps):
            seen.append([g["lr"] for g in optimizer.param_groups])
            optimizer.step()
            schedule.step()
        return seen

    whole = lrs(*fresh(), 3 * BATCHES)
    first = fresh()
    lrs(*first, stop)
    again = fresh()
    again[0].load_state_dict(first[0].state_dict())
    again[1].load_state_dict(first[1].state_dict())
    assert lrs(*again, 3 * BATCHES - stop) == whole[stop:]
    assert (0.0 in whole[stop]) == (stop < FREEZE * BATCHES)  # the stage the resume lands in
