"""A training step that a CUDA graph can capture, shown on the CPU: no op of a step takes a
host number that changes from one step to the next (a graph would replay the first step's),
its draws come from generators seeded as torch.manual_seed seeds them, and what the loop logs
per step reads nothing back from the device."""

from __future__ import annotations

import pytest
import torch

from lightning_sota.run.build import build_module, cpu_tuning
from lightning_sota.run.plan import prepared_data
from lightning_sota.training.module import step_seed
from lightning_sota.training.step_ops import OpLog, changing

from .conftest import config, results, train_here

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "overrides", [["+experiment=sota"], ["+experiment=sota", "mix=mixup"]], ids=["sota", "mixup"]
)
def test_a_training_step_takes_no_host_number_that_changes(overrides, mini, tmp_path):
    """Two consecutive steps after RAdam's first five (its momentum steps), neither an epoch's
    first nor Lookahead's k-th, with the caches resident with the model (as on a GPU): the same
    ops with the same host arguments. Before: the fused kernel's lr * r_t and wd / r_t, six
    step-count fills and the batch's row (13 ops)."""
    where = [f"data.root={mini}", f"data.cache_dir={tmp_path}", "data.on_device=true", "~logger"]
    small = ["resize.phases=[{size:16,batch_size:4,epochs:1}]", "model.widen=0.0625"]
    cfg = config(*overrides, *where, *small)
    data, plan = prepared_data(cfg)
    data.place(CPU, upload=True)
    module = build_module(cfg, data.classes, cpu_tuning(cfg, CPU))
    module.plan = plan
    configured = module.configure_optimizers()
    optimizer, schedule = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    batches = iter(data.train_dataloader())
    module.on_train_epoch_start()  # as Lightning's loop starts the epoch
    logs = []
    for step in range(9):  # steps 8 and 9: past RAdam's five, before Lookahead's 12th
        log = OpLog()
        with log:
            batch = next(batches)
            module.on_train_batch_start(batch, step)
            loss = module.training_step(batch, step)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            module.after_step(loss, len(batch["label"]))  # on_train_batch_end's part
        schedule.step()  # between steps: a tensor lr is filled, outside what a graph captures
        logs.append(log)
    assert len(logs[-1].ops) > 1000 and changing(logs[-2], logs[-1]) == []


def test_seeding_draws_as_torch_manual_seed(mini, tmp_path):
    """Only the host's generator (and on a GPU the device's) is seeded, to the seed
    torch.manual_seed was given before: a run's draws are the same as before the change."""
    cfg = config("+experiment=sota", f"data.root={mini}", f"data.cache_dir={tmp_path}", "~logger", "seed=3")
    module = build_module(cfg, ["a", "b"], cpu_tuning(cfg, CPU))
    module.seed_draws(5)
    ours = torch.rand(4)
    torch.manual_seed(step_seed(3, 0, 0, 5))
    assert torch.equal(ours, torch.rand(4))


@pytest.mark.slow
def test_a_run_without_loggers_trains(mini, tmp_path):
    """``~logger``: no logger, and no callback that needs one (the learning rates are logged
    from the schedule's host values, when there is a logger to take them)."""
    train_here("+experiment=sota", "scale=smoke", "~logger", f"data.root={mini}", tmp=tmp_path)
    assert results(tmp_path / "run")["val_acc"] > 0
    assert not (tmp_path / "run" / "metrics.csv").exists()
